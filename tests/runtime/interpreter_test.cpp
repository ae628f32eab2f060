// The reference interpreter: input checking (names, dtypes, shapes, symbolic batch), per-node
// callbacks and intermediates.
#include "runtime/interpreter.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "support/status_matchers.h"
#include "support/test_util.h"

namespace mixq::runtime {
namespace {

using ir::kDynamicDim;
using ir::OpKind;
using testing::random_tensor;
using testing::status_is;

// image[N,3,4,4] * scale[1,3,1,1] -> m -> Relu -> r -> + bias[3,1,1] -> out
struct TwoInputGraph {
  ir::Graph g;
  Tensor bias = random_tensor({3, 1, 1}, 99);
  TwoInputGraph() {
    ir::Value* image = g.add_value("image", DType::kFloat32, {kDynamicDim, 3, 4, 4});
    ir::Value* scale = g.add_value("scale", DType::kFloat32, {1, 3, 1, 1});
    ir::Value* b = g.add_constant("bias", bias);
    ir::Value* m = g.add_value("m", DType::kFloat32, {kDynamicDim, 3, 4, 4});
    ir::Value* r = g.add_value("r", DType::kFloat32, {kDynamicDim, 3, 4, 4});
    ir::Value* out = g.add_value("out", DType::kFloat32, {kDynamicDim, 3, 4, 4});
    g.add_node(OpKind::kMul, "mul", {image, scale}, {m});
    g.add_node(OpKind::kRelu, "relu", {m}, {r});
    g.add_node(OpKind::kAdd, "add", {r, b}, {out});
    g.inputs() = {image, scale};
    g.outputs() = {out};
  }

  // What the graph computes, by hand.
  Tensor expected(const Tensor& image, const Tensor& scale) const {
    Tensor e = Tensor::empty(DType::kFloat32, image.shape());
    const int64_t n = image.dim(0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < 3; ++c)
        for (int64_t k = 0; k < 16; ++k) {
          const int64_t at = (i * 3 + c) * 16 + k;
          e.data<float>()[at] = std::max(image.data<float>()[at] * scale.data<float>()[c], 0.0f) +
                                bias.data<float>()[c];
        }
    return e;
  }
};

TensorMap good_inputs(int64_t batch) {
  return {{"image", random_tensor({batch, 3, 4, 4}, uint64_t(batch))},
          {"scale", random_tensor({1, 3, 1, 1}, 1000, 0.5f, 2.0f)}};
}

TEST(CheckInputs, AcceptsGoodInputs) {
  TwoInputGraph t;
  EXPECT_TRUE(check_inputs(t.g, good_inputs(2)).ok())
      << check_inputs(t.g, good_inputs(2)).to_string();
}

TEST(CheckInputs, UnknownInputNameListsTheModelsInputs) {
  TwoInputGraph t;
  TensorMap in = good_inputs(1);
  in["imagee"] = random_tensor({1, 3, 4, 4}, 1);
  EXPECT_TRUE(
      status_is(check_inputs(t.g, in), StatusCode::kNotFound, {"'imagee'", "'image'", "'scale'"}));
  EXPECT_TRUE(status_is(run_reference(t.g, in), StatusCode::kNotFound, {"'imagee'"}));
}

TEST(CheckInputs, AnIntermediateOrConstantIsNotAnInput) {
  TwoInputGraph t;
  TensorMap in = good_inputs(1);
  in["m"] = random_tensor({1, 3, 4, 4}, 2);
  EXPECT_TRUE(status_is(check_inputs(t.g, in), StatusCode::kNotFound, {"'m'", "'image'"}));
  in = good_inputs(1);
  in["bias"] = random_tensor({3, 1, 1}, 2);
  EXPECT_TRUE(status_is(check_inputs(t.g, in), StatusCode::kNotFound, {"'bias'"}));
}

TEST(CheckInputs, MissingInput) {
  TwoInputGraph t;
  TensorMap in = good_inputs(1);
  in.erase("scale");
  EXPECT_TRUE(
      status_is(check_inputs(t.g, in), StatusCode::kInvalidArgument, {"'scale'", "not given"}));
  EXPECT_TRUE(status_is(run_reference(t.g, {}), StatusCode::kInvalidArgument, {"not given"}));
}

TEST(CheckInputs, UndefinedTensor) {
  TwoInputGraph t;
  TensorMap in = good_inputs(1);
  in["scale"] = Tensor();
  EXPECT_TRUE(status_is(check_inputs(t.g, in), StatusCode::kInvalidArgument, {"'scale'"}));
}

TEST(CheckInputs, WrongDType) {
  TwoInputGraph t;
  TensorMap in = good_inputs(1);
  in["image"] = testing::random_int_tensor(DType::kInt32, {1, 3, 4, 4}, 3, -5, 5);
  EXPECT_TRUE(status_is(check_inputs(t.g, in), StatusCode::kInvalidArgument,
                        {"'image'", "i32", "expects f32"}));
  in["image"] = random_tensor({1, 3, 4, 4}, 3).to(DType::kFloat16);
  EXPECT_TRUE(
      status_is(run_reference(t.g, in), StatusCode::kInvalidArgument, {"'image'", "f16", "f32"}));
}

TEST(CheckInputs, WrongRank) {
  TwoInputGraph t;
  TensorMap in = good_inputs(1);
  in["image"] = random_tensor({3, 4, 4}, 4);
  EXPECT_TRUE(status_is(check_inputs(t.g, in), StatusCode::kInvalidArgument,
                        {"'image'", "[3,4,4]", "[N,3,4,4]"}));
  in["image"] = random_tensor({1, 1, 3, 4, 4}, 4);
  EXPECT_TRUE(status_is(check_inputs(t.g, in), StatusCode::kInvalidArgument,
                        {"'image'", "[1,1,3,4,4]", "[N,3,4,4]"}));
}

TEST(CheckInputs, WrongStaticDim) {
  TwoInputGraph t;
  TensorMap in = good_inputs(2);
  in["image"] = random_tensor({2, 5, 4, 4}, 5);
  EXPECT_TRUE(status_is(check_inputs(t.g, in), StatusCode::kInvalidArgument,
                        {"'image'", "[2,5,4,4]", "[N,3,4,4]"}));
  in = good_inputs(2);
  in["scale"] = random_tensor({1, 3, 1, 2}, 5);
  EXPECT_TRUE(status_is(check_inputs(t.g, in), StatusCode::kInvalidArgument,
                        {"'scale'", "[1,3,1,2]", "[1,3,1,1]"}));
  // The batch of a fully static input is checked too.
  in = good_inputs(2);
  in["scale"] = random_tensor({2, 3, 1, 1}, 5);
  EXPECT_TRUE(
      status_is(check_inputs(t.g, in), StatusCode::kInvalidArgument, {"'scale'", "[2,3,1,1]"}));
}

TEST(RunReference, SymbolicBatchAcceptsAnyBatchSize) {
  TwoInputGraph t;
  for (int64_t batch : {1, 2, 7}) {
    SCOPED_TRACE("batch " + std::to_string(batch));
    const TensorMap in = good_inputs(batch);
    auto out = run_reference(t.g, in);
    ASSERT_TRUE(out.ok()) << out.status().to_string();
    ASSERT_EQ(out->size(), 1u);
    const Tensor& y = out->at("out");
    EXPECT_EQ(y.shape(), (Shape{batch, 3, 4, 4}));
    const Tensor e = t.expected(in.at("image"), in.at("scale"));
    EXPECT_EQ(y.to_float_vector(), e.to_float_vector());
  }
}

TEST(RunReference, CallbackSeesEveryNodeInOrder) {
  TwoInputGraph t;
  const TensorMap in = good_inputs(2);
  std::vector<std::string> seen;
  std::vector<Shape> shapes;
  Tensor relu_out;
  InterpreterOptions options;
  options.on_node_output = [&](const ir::Node& node, std::span<const Tensor> outputs) {
    seen.push_back(node.name);
    EXPECT_EQ(outputs.size(), node.outputs.size());
    shapes.push_back(outputs.empty() ? Shape{} : outputs[0].shape());
    if (node.name == "relu") relu_out = outputs[0].clone();
    return Status::Ok();
  };
  auto out = run_reference(t.g, in, options);
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  EXPECT_EQ(seen, (std::vector<std::string>{"mul", "relu", "add"}));
  for (const Shape& s : shapes) EXPECT_EQ(s, (Shape{2, 3, 4, 4}));
  ASSERT_TRUE(relu_out.defined());
  for (int64_t i = 0; i < relu_out.numel(); ++i) EXPECT_GE(relu_out.data<float>()[i], 0.0f);
  // Relu's output plus the bias is the final output.
  const Tensor& y = out->at("out");
  for (int64_t i = 0; i < y.numel(); ++i)
    EXPECT_EQ(y.data<float>()[i], relu_out.data<float>()[i] + t.bias.data<float>()[(i / 16) % 3]);
}

TEST(RunReference, CallbackErrorStopsTheRun) {
  TwoInputGraph t;
  std::vector<std::string> seen;
  InterpreterOptions options;
  options.on_node_output = [&](const ir::Node& node, std::span<const Tensor>) {
    seen.push_back(node.name);
    if (node.name == "relu") return FailedPrecondition("observer full at " + node.name);
    return Status::Ok();
  };
  EXPECT_TRUE(status_is(run_reference(t.g, good_inputs(1), options),
                        StatusCode::kFailedPrecondition, {"observer full at relu"}));
  EXPECT_EQ(seen, (std::vector<std::string>{"mul", "relu"}));
}

TEST(RunReference, KeepIntermediates) {
  TwoInputGraph t;
  const TensorMap in = good_inputs(3);
  auto plain = run_reference(t.g, in);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->size(), 1u);
  EXPECT_EQ(plain->count("m"), 0u);

  InterpreterOptions options;
  options.keep_intermediates = true;
  auto all = run_reference(t.g, in, options);
  ASSERT_TRUE(all.ok()) << all.status().to_string();
  for (const char* name : {"m", "r", "out"}) EXPECT_EQ(all->count(name), 1u) << name;
  const Tensor& m = all->at("m");
  const Tensor& r = all->at("r");
  ASSERT_EQ(m.shape(), (Shape{3, 3, 4, 4}));
  int negatives = 0;
  for (int64_t i = 0; i < m.numel(); ++i) {
    const float expect_m =
        in.at("image").data<float>()[i] * in.at("scale").data<float>()[(i / 16) % 3];
    EXPECT_EQ(m.data<float>()[i], expect_m) << i;
    EXPECT_EQ(r.data<float>()[i], std::max(expect_m, 0.0f)) << i;
    negatives += expect_m < 0;
  }
  EXPECT_GT(negatives, 0);  // Relu had something to do
  EXPECT_EQ(all->at("out").to_float_vector(), plain->at("out").to_float_vector());
}

TEST(RunReference, GraphOutputThatIsAnInputOrIntermediateReadLater) {
  // An output that is also read by a later node must survive the freeing of dead values.
  ir::Graph g;
  ir::Value* x = g.add_value("x", DType::kFloat32, {4});
  ir::Value* a = g.add_value("a", DType::kFloat32, {4});
  ir::Value* b = g.add_value("b", DType::kFloat32, {4});
  g.add_node(OpKind::kNeg, "neg", {x}, {a});
  g.add_node(OpKind::kAbs, "abs", {a}, {b});
  g.inputs() = {x};
  g.outputs() = {a, b, x};
  const Tensor xt = random_tensor({4}, 8);
  auto out = run_reference(g, {{"x", xt}});
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  ASSERT_EQ(out->size(), 3u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(out->at("a").data<float>()[i], -xt.data<float>()[i]);
    EXPECT_EQ(out->at("b").data<float>()[i], std::abs(xt.data<float>()[i]));
    EXPECT_EQ(out->at("x").data<float>()[i], xt.data<float>()[i]);
  }
}

TEST(RunReference, KernelErrorsNameTheNode) {
  ir::Graph g;
  ir::Value* x = g.add_value("x", DType::kFloat32, {kDynamicDim, 4});
  ir::Value* w = g.add_constant("w", random_tensor({5, 3}, 1));
  ir::Value* y = g.add_value("y", DType::kFloat32, {kDynamicDim, 3});
  g.add_node(OpKind::kMatMul, "bad_matmul", {x, w}, {y});
  g.inputs() = {x};
  g.outputs() = {y};
  auto out = run_reference(g, {{"x", random_tensor({2, 4}, 2)}});
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("bad_matmul"), std::string::npos) << out.status().message();
}

}  // namespace
}  // namespace mixq::runtime
