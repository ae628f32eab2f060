// The ONNX importer: every kind of bad input gives a clear Status (no crash), and good input,
// including older opsets' forms, imports into the canonical IR.
#include "frontend/onnx/importer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <random>
#include <set>

#include "ir/graph.h"
#include "mixq/model.h"
#include "support/onnx_builder.h"
#include "support/status_matchers.h"
#include "support/test_util.h"

namespace mixq {
namespace {

using onnx_frontend::import_model_bytes;
using onnx_frontend::import_model_file;
using testing::Dims;
using testing::OnnxBuilder;
using testing::random_tensor;
using testing::status_is;

std::unique_ptr<ir::Graph> import_ok(const OnnxBuilder& b, const std::string& source = "test") {
  auto r = import_model_bytes(b.bytes(), source);
  EXPECT_TRUE(r.ok()) << r.status().to_string();
  return r.ok() ? std::move(r).value() : nullptr;
}

Model load_ok(const OnnxBuilder& b) {
  auto r = Model::from_bytes(b.bytes(), "test");
  if (!r.ok()) {
    ADD_FAILURE() << r.status().to_string();
    std::abort();  // every caller needs the model; a clear failure beats a crash later
  }
  return std::move(r).value();
}

std::vector<float> values(const Tensor& t) {
  return t.to_float_vector();
}

// --- files that are not ONNX models
// -----------------------------------------------------------------

TEST(ImporterErrors, MissingFileIsNotFoundAndNamesThePath) {
  testing::TempDir dir;
  const std::string path = dir.file("no_such_model.onnx");
  EXPECT_TRUE(status_is(import_model_file(path), StatusCode::kNotFound, {path, "does not exist"}));
  EXPECT_TRUE(status_is(Model::load(path), StatusCode::kNotFound, {path}));
}

TEST(ImporterErrors, DirectoryIsRefused) {
  testing::TempDir dir;
  EXPECT_TRUE(status_is(import_model_file(dir.path().string()), StatusCode::kInvalidArgument,
                        {dir.path().string(), "directory"}));
}

TEST(ImporterErrors, EmptyFileIsAParseError) {
  testing::TempDir dir;
  const std::string path = dir.file("empty.onnx");
  testing::write_file(path, "");
  EXPECT_TRUE(status_is(import_model_file(path), StatusCode::kParseError, {path, "empty"}));
}

TEST(ImporterErrors, TruncatedModelIsAParseErrorAtEveryLength) {
  const std::string full = testing::small_classifier().bytes();
  ASSERT_TRUE(import_model_bytes(full, "full").ok());
  // Cutting anywhere leaves either a half-written protobuf field, a model without its graph, or
  // a graph without its opset import: every one must be refused as malformed.
  std::set<size_t> cuts = {1,
                           2,
                           7,
                           10,
                           full.size() / 4,
                           full.size() / 3,
                           full.size() / 2,
                           full.size() - 40,
                           full.size() - 5,
                           full.size() - 1};
  for (size_t cut = 1; cut < full.size(); cut += 13) cuts.insert(cut);
  testing::TempDir dir;
  for (size_t cut : cuts) {
    SCOPED_TRACE("cut at " + std::to_string(cut) + " of " + std::to_string(full.size()));
    EXPECT_TRUE(status_is(import_model_bytes(full.substr(0, cut), "cut.onnx"),
                          StatusCode::kParseError, {"cut.onnx"}));
  }
  // And through a file, where the message names the file.
  const std::string path = dir.file("truncated.onnx");
  testing::write_file(path, full.substr(0, full.size() / 2));
  EXPECT_TRUE(status_is(import_model_file(path), StatusCode::kParseError, {path}));
  EXPECT_TRUE(status_is(Model::load(path), StatusCode::kParseError, {path}));
}

TEST(ImporterErrors, RandomBytesAreAParseError) {
  for (uint64_t seed : {1u, 2u, 3u, 4u, 5u, 17u, 99u, 12345u}) {
    std::mt19937_64 rng(seed);
    const size_t size = 1 + rng() % 4096;
    std::string bytes(size, '\0');
    for (char& c : bytes) c = char(rng() & 0xff);
    SCOPED_TRACE("seed " + std::to_string(seed) + ", " + std::to_string(size) + " bytes");
    EXPECT_TRUE(
        status_is(import_model_bytes(bytes, "noise.bin"), StatusCode::kParseError, {"noise.bin"}));
  }
  // Text is not a model either.
  EXPECT_TRUE(status_is(import_model_bytes("hello, this is not a protobuf\n", "hello.txt"),
                        StatusCode::kParseError, {"hello.txt"}));
}

TEST(ImporterErrors, ModelWithoutGraph) {
  onnx::ModelProto m;
  m.set_ir_version(8);
  m.add_opset_import()->set_version(13);
  std::string bytes;
  ASSERT_TRUE(m.SerializeToString(&bytes));
  EXPECT_TRUE(status_is(import_model_bytes(bytes, "nograph.onnx"), StatusCode::kParseError,
                        {"nograph.onnx", "graph"}));
}

// --- structurally broken graphs
// ---------------------------------------------------------------------

TEST(ImporterErrors, CycleNamesItsNodes) {
  OnnxBuilder b;
  b.input("x", {2, 3});
  b.output("a", {2, 3});
  b.node("Add", {"x", "b"}, {"a"}, "cycle_add");
  b.node("Relu", {"a"}, {"b"}, "cycle_relu");
  EXPECT_TRUE(status_is(import_model_bytes(b.bytes(), "cycle.onnx"), StatusCode::kInvalidArgument,
                        {"cycle.onnx", "cycle", "cycle_add", "cycle_relu"}));
}

TEST(ImporterErrors, DanglingInputNamesNodeAndValue) {
  OnnxBuilder b;
  b.input("x", {2, 3});
  b.output("y", {2, 3});
  b.node("Add", {"x", "ghost_value"}, {"y"}, "reads_a_ghost");
  EXPECT_TRUE(status_is(import_model_bytes(b.bytes(), "dangling.onnx"),
                        StatusCode::kInvalidArgument,
                        {"dangling.onnx", "reads_a_ghost", "ghost_value"}));
}

TEST(ImporterErrors, EveryUnsupportedOpIsListedWithItsNodes) {
  OnnxBuilder b;
  b.input("x", {1, 4});
  b.output("z", {1, 4});
  b.node("Relu", {"x"}, {"r"}, "fine_relu");
  b.node("Erf", {"r"}, {"e1"}, "erf_first");
  b.node("Erf", {"e1"}, {"e2"}, "erf_second");
  b.node("Hardmax", {"e2"}, {"h"}, "the_hardmax");
  b.node("Sign", {"h"}, {"s"}, "the_sign");
  b.node("FusedThing", {"s"}, {"z"}, "custom_node").domain("com.example");
  b.add_opset_import("com.example", 1);
  auto r = import_model_bytes(b.bytes(), "unsupported.onnx");
  ASSERT_TRUE(
      status_is(r, StatusCode::kUnsupported,
                {"unsupported.onnx", "5 node(s)", "Erf", "erf_first", "erf_second", "Hardmax",
                 "the_hardmax", "Sign", "the_sign", "com.example::FusedThing", "custom_node"}));
  // The supported op is not blamed.
  EXPECT_EQ(r.status().message().find("fine_relu"), std::string::npos) << r.status().message();
}

TEST(ImporterErrors, UnnamedUnsupportedNodeIsNamedByIndex) {
  OnnxBuilder b;
  b.input("x", {1, 4});
  b.output("y", {1, 4});
  b.node("Relu", {"x"}, {"r"});
  b.node("Erf", {"r"}, {"y"});
  EXPECT_TRUE(
      status_is(import_model_bytes(b.bytes(), "m"), StatusCode::kUnsupported, {"Erf", "#1"}));
}

TEST(ImporterErrors, OpNewerThanTheModelsOpsetIsUnsupported) {
  // HardSwish arrived in opset 14: an opset-13 model cannot use it.
  OnnxBuilder b(13);
  b.input("x", {1, 4});
  b.output("y", {1, 4});
  b.node("HardSwish", {"x"}, {"y"}, "hs");
  EXPECT_TRUE(
      status_is(import_model_bytes(b.bytes(), "m"), StatusCode::kUnsupported, {"HardSwish", "hs"}));
  b.opset(14);
  EXPECT_TRUE(import_model_bytes(b.bytes(), "m").ok());
}

OnnxBuilder relu_model(int opset) {
  OnnxBuilder b(opset);
  b.input("x", {1, 4});
  b.output("y", {1, 4});
  b.node("Relu", {"x"}, {"y"}, "relu");
  return b;
}

TEST(ImporterErrors, Opset18IsUnsupportedAndSaysWhichAre) {
  EXPECT_TRUE(status_is(import_model_bytes(relu_model(18).bytes(), "new.onnx"),
                        StatusCode::kUnsupported,
                        {"new.onnx", "opset 18",
                         std::to_string(onnx_frontend::kMinOpset) + " to " +
                             std::to_string(onnx_frontend::kMaxOpset)}));
  EXPECT_TRUE(import_model_bytes(relu_model(onnx_frontend::kMaxOpset).bytes(), "ok").ok());
}

TEST(ImporterErrors, Opset0IsUnsupportedAndSaysWhichAre) {
  EXPECT_TRUE(status_is(import_model_bytes(relu_model(0).bytes(), "zero.onnx"),
                        StatusCode::kUnsupported,
                        {"zero.onnx", "opset 0", "supports opsets 1 to 17"}));
}

TEST(ImporterErrors, NoDefaultOpsetImport) {
  OnnxBuilder b = relu_model(13);
  b.opset(-1);  // no ai.onnx import at all
  EXPECT_TRUE(status_is(import_model_bytes(b.bytes(), "noopset.onnx"), StatusCode::kParseError,
                        {"noopset.onnx", "opset"}));
}

TEST(ImporterErrors, InitializerRawDataSizeMismatchIsDataLoss) {
  OnnxBuilder b;
  b.input("x", {2, 3});
  b.output("y", {2, 3});
  b.initializer("bias.weight", random_tensor({2, 3}, 1));
  // Claim 2x4 floats over 2x3 floats of raw data.
  b.graph().mutable_initializer(0)->set_dims(1, 4);
  b.node("Add", {"x", "bias.weight"}, {"y"}, "add");
  EXPECT_TRUE(status_is(import_model_bytes(b.bytes(), "m.onnx"), StatusCode::kDataLoss,
                        {"bias.weight", "24 bytes", "f32[2,4]", "32"}));
}

TEST(ImporterErrors, InitializerTypedDataCountMismatchIsDataLoss) {
  OnnxBuilder b;
  b.input("x", {3});
  b.output("y", {3});
  onnx::TensorProto* t = b.graph().add_initializer();
  t->set_name("offsets");
  t->set_data_type(onnx::TensorProto::FLOAT);
  t->add_dims(3);
  t->add_float_data(1.5f);
  t->add_float_data(-2.5f);  // one value short
  b.node("Add", {"x", "offsets"}, {"y"}, "add");
  EXPECT_TRUE(status_is(import_model_bytes(b.bytes(), "m.onnx"), StatusCode::kDataLoss,
                        {"offsets", "2 values", "needs 3"}));
}

TEST(ImporterErrors, UnsupportedInitializerTypeNamesIt) {
  OnnxBuilder b;
  b.input("x", {2});
  b.output("y", {2});
  onnx::TensorProto* t = b.graph().add_initializer();
  t->set_name("doubles");
  t->set_data_type(onnx::TensorProto::DOUBLE);
  t->add_dims(2);
  t->add_double_data(1.0);
  t->add_double_data(2.0);
  b.node("Add", {"x", "doubles"}, {"y"}, "add");
  EXPECT_TRUE(status_is(import_model_bytes(b.bytes(), "m.onnx"), StatusCode::kUnsupported,
                        {"doubles", "double"}));
}

TEST(ImporterErrors, GraphOutputNobodyProduces) {
  OnnxBuilder b;
  b.input("x", {2, 3});
  b.output("y", {2, 3});
  b.output("from_nowhere", {2, 3});
  b.node("Relu", {"x"}, {"y"}, "relu");
  EXPECT_TRUE(status_is(import_model_bytes(b.bytes(), "m.onnx"), StatusCode::kInvalidArgument,
                        {"m.onnx", "from_nowhere", "produced by no node"}));
}

TEST(ImporterErrors, ValueWrittenTwice) {
  OnnxBuilder b;
  b.input("x", {2, 3});
  b.output("y", {2, 3});
  b.node("Relu", {"x"}, {"y"}, "first_writer");
  b.node("Sigmoid", {"x"}, {"y"}, "second_writer");
  EXPECT_TRUE(status_is(import_model_bytes(b.bytes(), "m.onnx"), StatusCode::kInvalidArgument,
                        {"'y'", "second_writer"}));
}

TEST(ImporterErrors, DuplicateInitializersAndInputs) {
  {
    OnnxBuilder b;
    b.input("x", {3});
    b.output("y", {3});
    b.initializer("w", random_tensor({3}, 1));
    b.initializer("w", random_tensor({3}, 2));
    b.node("Add", {"x", "w"}, {"y"}, "add");
    EXPECT_TRUE(status_is(import_model_bytes(b.bytes(), "m.onnx"), StatusCode::kParseError,
                          {"m.onnx", "two initializers", "'w'"}));
  }
  {
    OnnxBuilder b;
    b.input("x", {3});
    b.input("x", {3});
    b.output("y", {3});
    b.node("Relu", {"x"}, {"y"}, "relu");
    EXPECT_TRUE(status_is(import_model_bytes(b.bytes(), "m.onnx"), StatusCode::kParseError,
                          {"m.onnx", "graph input 'x'", "twice"}));
  }
}

TEST(ImporterErrors, UnsupportedInputElementType) {
  OnnxBuilder b;
  b.input("x", {3});
  b.output("y", {3});
  b.graph().mutable_input(0)->mutable_type()->mutable_tensor_type()->set_elem_type(
      onnx::TensorProto::DOUBLE);
  b.graph().mutable_output(0)->mutable_type()->mutable_tensor_type()->set_elem_type(
      onnx::TensorProto::DOUBLE);
  b.node("Relu", {"x"}, {"y"}, "relu");
  EXPECT_TRUE(status_is(import_model_bytes(b.bytes(), "m.onnx"), StatusCode::kUnsupported,
                        {"m.onnx", "'x'", "double"}));
}

TEST(ImporterErrors, BatchNormInTrainingMode) {
  OnnxBuilder b(13);
  b.input("x", {1, 2, 3, 3});
  b.output("y", {1, 2, 3, 3});
  for (const char* p : {"bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"})
    b.initializer(p, random_tensor({2}, 3, 0.5f, 1.5f));
  b.opset(14);
  b.node("BatchNormalization", {"x", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"},
         {"y"}, "/bn/BatchNormalization")
      .attr("training_mode", int64_t(1));
  EXPECT_TRUE(status_is(import_model_bytes(b.bytes(), "m.onnx"), StatusCode::kUnsupported,
                        {"/bn/BatchNormalization", "training mode", "eval"}));
}

// --- good input
// --------------------------------------------------------------------------------------

TEST(ImporterGood, SmallClassifierImportsWithTypesAndModules) {
  auto g = import_ok(testing::small_classifier());
  ASSERT_TRUE(g);
  EXPECT_EQ(g->opset, 13);
  EXPECT_EQ(g->producer, "mixq-tests");
  ASSERT_EQ(g->inputs().size(), 1u);
  EXPECT_EQ(g->inputs()[0]->name, "x");
  EXPECT_EQ(g->inputs()[0]->shape, (Shape{ir::kDynamicDim, 3, 8, 8}));
  ASSERT_EQ(g->node_count(), 5u);
  const std::vector<std::pair<std::string, std::string>> expected = {{"Conv", "conv1"},
                                                                     {"Relu", "relu"},
                                                                     {"GlobalAveragePool", "pool"},
                                                                     {"Flatten", ""},
                                                                     {"Gemm", "fc"}};
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(ir::op_name(g->nodes()[i]->op), expected[i].first) << i;
    EXPECT_EQ(g->nodes()[i]->module_name, expected[i].second) << g->nodes()[i]->name;
  }
  // Shape inference typed the intermediates, with the batch kept symbolic.
  const ir::Value* conv_out = g->find_value("conv_out");
  ASSERT_TRUE(conv_out);
  EXPECT_TRUE(conv_out->shape_known);
  EXPECT_EQ(conv_out->shape, (Shape{ir::kDynamicDim, 4, 8, 8}));
  // Attributes come through.
  const ir::Node* conv = g->find_node("/conv1/Conv");
  ASSERT_TRUE(conv);
  EXPECT_EQ(conv->attr_ints("pads"), (std::vector<int64_t>{1, 1, 1, 1}));
  EXPECT_EQ(g->find_node("/fc/Gemm")->attr_int("transB", 0), 1);
}

TEST(ImporterGood, LoadsFromAFile) {
  testing::TempDir dir;
  const std::string path = dir.file("model.onnx");
  testing::small_classifier().save(path);
  auto m = Model::load(path);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  ASSERT_EQ(m->outputs().size(), 1u);
  EXPECT_EQ(m->outputs()[0].name, "y");
  auto out = m->run_reference(m->random_inputs(2, 1));
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  EXPECT_EQ(out->at("y").shape(), (Shape{2, 10}));
}

TEST(ImporterGood, InitializersListedAsInputsStayConstants) {
  // IR version 3 style: every weight also appears among the graph inputs.
  OnnxBuilder b(9);
  b.ir_version(3);
  b.input("x", {"N", 3});
  b.output("y", {"N", 2});
  const Tensor w = random_tensor({2, 3}, 11);
  const Tensor c = random_tensor({2}, 12);
  b.initializer("fc.weight", w, /*also_input=*/true);
  b.initializer("fc.bias", c, /*also_input=*/true);
  b.node("Gemm", {"x", "fc.weight", "fc.bias"}, {"y"}, "Gemm_0").attr("transB", int64_t(1));
  auto g = import_ok(b);
  ASSERT_TRUE(g);
  ASSERT_EQ(g->inputs().size(), 1u);
  EXPECT_EQ(g->inputs()[0]->name, "x");
  const ir::Value* wv = g->find_value("fc.weight");
  ASSERT_TRUE(wv);
  EXPECT_TRUE(wv->is_constant());
  EXPECT_FALSE(g->is_graph_input(wv));
  EXPECT_EQ(g->nodes()[0]->module_name, "fc");  // from the weight's name

  Model m = load_ok(b);
  ASSERT_EQ(m.inputs().size(), 1u);
  EXPECT_EQ(m.inputs()[0].name, "x");
  const Tensor x = random_tensor({2, 3}, 13);
  auto out = m.run_reference({{"x", x}});
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  const Tensor& y = out->at("y");
  ASSERT_EQ(y.shape(), (Shape{2, 2}));
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) {
      float e = c.data<float>()[j];
      for (int k = 0; k < 3; ++k) e += x.data<float>()[i * 3 + k] * w.data<float>()[j * 3 + k];
      EXPECT_NEAR(y.data<float>()[i * 2 + j], e, 1e-5) << i << "," << j;
    }
}

// x[2,1,3,1] -> Squeeze(1,3) -> [2,3] -> Unsqueeze(0) -> [1,2,3], axes as attributes (opset 11)
// or as inputs (opset 13).
OnnxBuilder squeeze_model(int opset) {
  OnnxBuilder b(opset);
  b.input("x", {2, 1, 3, 1});
  b.output("y", {1, 2, 3});
  if (opset < 13) {
    b.node("Squeeze", {"x"}, {"s"}, "squeeze").attr("axes", {1, 3});
    b.node("Unsqueeze", {"s"}, {"y"}, "unsqueeze").attr("axes", {0});
  } else {
    b.initializer("squeeze_axes", Tensor::from_vector<int64_t>({2}, {1, 3}));
    b.initializer("unsqueeze_axes", Tensor::from_vector<int64_t>({1}, {0}));
    b.node("Squeeze", {"x", "squeeze_axes"}, {"s"}, "squeeze");
    b.node("Unsqueeze", {"s", "unsqueeze_axes"}, {"y"}, "unsqueeze");
  }
  return b;
}

TEST(ImporterGood, Opset11SqueezeUnsqueezeMatchOpset13) {
  const Tensor x = random_tensor({2, 1, 3, 1}, 21);
  Model old_model = load_ok(squeeze_model(11));
  Model new_model = load_ok(squeeze_model(13));
  auto a = old_model.run_reference({{"x", x}});
  auto b = new_model.run_reference({{"x", x}});
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  EXPECT_EQ(a->at("y").shape(), (Shape{1, 2, 3}));
  EXPECT_EQ(b->at("y").shape(), (Shape{1, 2, 3}));
  EXPECT_EQ(values(a->at("y")), values(x));
  EXPECT_EQ(values(a->at("y")), values(b->at("y")));

  // The importer moved the attribute to a constant input (the canonical form).
  auto g = import_ok(squeeze_model(11));
  ASSERT_TRUE(g);
  const ir::Node* sq = g->find_node("squeeze");
  ASSERT_TRUE(sq);
  EXPECT_FALSE(sq->has_attr("axes"));
  ASSERT_TRUE(sq->input(1) && sq->input(1)->is_constant());
  EXPECT_EQ(sq->input(1)->constant.to_int64_vector(), (std::vector<int64_t>{1, 3}));
}

OnnxBuilder clip_model(int opset, float lo, float hi) {
  OnnxBuilder b(opset);
  b.input("x", {"N", 16});
  b.output("y", {"N", 16});
  if (opset < 11) {
    b.node("Clip", {"x"}, {"y"}, "clip").attr("min", lo).attr("max", hi);
  } else {
    b.initializer("lo", Tensor::scalar<float>(lo));
    b.initializer("hi", Tensor::scalar<float>(hi));
    b.node("Clip", {"x", "lo", "hi"}, {"y"}, "clip");
  }
  return b;
}

TEST(ImporterGood, Opset10ClipAttributesMatchOpset13Inputs) {
  const float lo = -0.3f, hi = 0.45f;
  const Tensor x = random_tensor({3, 16}, 22);
  Model old_model = load_ok(clip_model(10, lo, hi));
  Model new_model = load_ok(clip_model(13, lo, hi));
  auto a = old_model.run_reference({{"x", x}});
  auto b = new_model.run_reference({{"x", x}});
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  const std::vector<float> got = values(a->at("y"));
  EXPECT_EQ(got, values(b->at("y")));
  int clipped_low = 0, clipped_high = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const float v = x.data<float>()[i];
    EXPECT_EQ(got[size_t(i)], std::min(std::max(v, lo), hi)) << i;
    clipped_low += v < lo;
    clipped_high += v > hi;
  }
  // The data exercises both bounds.
  EXPECT_GT(clipped_low, 0);
  EXPECT_GT(clipped_high, 0);
}

TEST(ImporterGood, Opset10ClipWithOnlyMaxLeavesMinOpen) {
  OnnxBuilder b(6);
  b.input("x", {8});
  b.output("y", {8});
  b.node("Clip", {"x"}, {"y"}, "clip").attr("max", 0.25f);
  Model m = load_ok(b);
  const Tensor x = random_tensor({8}, 23, -2.0f, 2.0f);
  auto out = m.run_reference({{"x", x}});
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  for (int64_t i = 0; i < 8; ++i)
    EXPECT_EQ(out->at("y").data<float>()[i], std::min(x.data<float>()[i], 0.25f)) << i;
}

TEST(ImporterGood, SymbolicBatchDimsComeThroughAsMinusOne) {
  OnnxBuilder b;
  b.input("images", {"batch", 3, 4, 4});
  b.input("mask", DType::kFloat32, {"batch", "seq"});
  b.output("y", {"batch", 3, 4, 4});
  b.output("m", DType::kFloat32, {"batch", "seq"});
  b.node("Relu", {"images"}, {"y"}, "relu");
  b.node("Sigmoid", {"mask"}, {"m"}, "sig");
  Model m = load_ok(b);
  ASSERT_EQ(m.inputs().size(), 2u);
  EXPECT_EQ(m.inputs()[0].shape, (Shape{-1, 3, 4, 4}));
  EXPECT_EQ(m.inputs()[1].shape, (Shape{-1, -1}));
  ASSERT_EQ(m.outputs().size(), 2u);
  EXPECT_EQ(m.outputs()[0].shape, (Shape{-1, 3, 4, 4}));
  EXPECT_EQ(m.outputs()[1].shape, (Shape{-1, -1}));
  for (int64_t batch : {1, 3}) {
    auto out = m.run_reference(
        {{"images", random_tensor({batch, 3, 4, 4}, 5)}, {"mask", random_tensor({batch, 7}, 6)}});
    ASSERT_TRUE(out.ok()) << out.status().to_string();
    EXPECT_EQ(out->at("y").shape(), (Shape{batch, 3, 4, 4}));
    EXPECT_EQ(out->at("m").shape(), (Shape{batch, 7}));
  }
}

TEST(ImporterGood, ConstantNodesBecomeConstants) {
  OnnxBuilder b;
  b.input("x", {2, 3});
  b.output("y", {2, 3});
  const Tensor c = random_tensor({3}, 31);
  b.node("Constant", {}, {"c"}, "const").attr("value", c);
  b.node("Add", {"x", "c"}, {"y"}, "add");
  auto g = import_ok(b);
  ASSERT_TRUE(g);
  EXPECT_EQ(g->node_count(), 1u);
  const ir::Value* cv = g->find_value("c");
  ASSERT_TRUE(cv && cv->is_constant());
  EXPECT_EQ(cv->constant.to_float_vector(), c.to_float_vector());
}

// --- module names
// ------------------------------------------------------------------------------------

TEST(ModuleNames, FromNodeNames) {
  using onnx_frontend::module_name_from_node_name;
  EXPECT_EQ(module_name_from_node_name("/layer1/layer1.0/conv1/Conv"), "layer1.0.conv1");
  EXPECT_EQ(module_name_from_node_name("/features/features.0/features.0.0/Conv"), "features.0.0");
  EXPECT_EQ(module_name_from_node_name("/fc/Gemm"), "fc");
  EXPECT_EQ(module_name_from_node_name("/Flatten"), "");
  EXPECT_EQ(module_name_from_node_name("Conv_12"), "");
  EXPECT_EQ(module_name_from_node_name(""), "");
  EXPECT_EQ(module_name_from_node_name("/layer4/layer4.1/downsample/downsample.0/Conv"),
            "layer4.1.downsample.0");
}

TEST(ModuleNames, FromParameterNames) {
  using onnx_frontend::module_name_from_parameter_name;
  EXPECT_EQ(module_name_from_parameter_name("layer1.0.conv1.weight"), "layer1.0.conv1");
  EXPECT_EQ(module_name_from_parameter_name("onnx::Conv_193"), "");
  EXPECT_EQ(module_name_from_parameter_name("fc.bias"), "fc");
  EXPECT_EQ(module_name_from_parameter_name("bn1.running_mean"), "bn1");
  EXPECT_EQ(module_name_from_parameter_name("weight"), "");
  EXPECT_EQ(module_name_from_parameter_name("encoder.scale_factor"), "");
}

TEST(ModuleNames, UnscopedNodeTakesItsModuleFromItsWeight) {
  OnnxBuilder b(11);
  b.input("x", {1, 3, 5, 5});
  b.output("y", {1, 2, 5, 5});
  b.initializer("conv1.weight", random_tensor({2, 3, 1, 1}, 41));
  b.node("Conv", {"x", "conv1.weight"}, {"y"}, "Conv_0");
  auto g = import_ok(b);
  ASSERT_TRUE(g);
  ASSERT_EQ(g->node_count(), 1u);
  EXPECT_EQ(g->nodes()[0]->name, "Conv_0");
  EXPECT_EQ(g->nodes()[0]->module_name, "conv1");
  // And the summary users see carries it.
  Model m = load_ok(b);
  ASSERT_EQ(m.summary().layers.size(), 1u);
  EXPECT_EQ(m.summary().layers[0].module, "conv1");
}

TEST(ModuleNames, UnnamedNodesGetUniqueNames) {
  OnnxBuilder b;
  b.input("x", {4});
  b.output("y", {4});
  b.node("Relu", {"x"}, {"a"});
  b.node("Relu", {"a"}, {"y"});
  auto g = import_ok(b);
  ASSERT_TRUE(g);
  ASSERT_EQ(g->node_count(), 2u);
  EXPECT_NE(g->nodes()[0]->name, g->nodes()[1]->name);
  EXPECT_FALSE(g->nodes()[0]->name.empty());
  EXPECT_TRUE(ir::verify(*g).ok());
}

// --- malformed but parseable nodes: an error, never a crash
// ------------------------------------------

onnx_frontend::ImportOptions without_shape_inference() {
  onnx_frontend::ImportOptions o;
  o.shape_inference = false;  // so the importer's own checks, not ONNX's, meet the bad node
  return o;
}

TEST(ImporterMalformed, ConstantWithoutOutput) {
  OnnxBuilder b;
  b.input("x", {3});
  b.output("y", {3});
  b.node("Constant", {}, {}, "const_no_output").attr("value", random_tensor({3}, 1));
  b.node("Relu", {"x"}, {"y"}, "relu");
  EXPECT_FALSE(import_model_bytes(b.bytes(), "m.onnx").ok());
  EXPECT_TRUE(status_is(import_model_bytes(b.bytes(), "m.onnx", "", without_shape_inference()),
                        StatusCode::kInvalidArgument, {"m.onnx", "const_no_output", "output"}));
}

TEST(ImporterMalformed, ConstantWithEmptyOutputName) {
  // Used to dereference a null value (segfault).
  OnnxBuilder b;
  b.input("x", {3});
  b.output("y", {3});
  b.node("Constant", {}, {""}, "const_empty_output").attr("value", random_tensor({3}, 1));
  b.node("Relu", {"x"}, {"y"}, "relu");
  for (bool infer : {true, false}) {
    onnx_frontend::ImportOptions o;
    o.shape_inference = infer;
    EXPECT_TRUE(status_is(import_model_bytes(b.bytes(), "m.onnx", "", o),
                          StatusCode::kInvalidArgument, {"const_empty_output", "output"}));
  }
}

TEST(ImporterMalformed, ConvWithOneInput) {
  OnnxBuilder b;
  b.input("x", {1, 3, 4, 4});
  b.output("y", {1, 3, 4, 4});
  b.node("Conv", {"x"}, {"y"}, "lonely_conv");
  for (bool infer : {true, false}) {
    onnx_frontend::ImportOptions o;
    o.shape_inference = infer;
    EXPECT_TRUE(status_is(import_model_bytes(b.bytes(), "m.onnx", "", o),
                          StatusCode::kInvalidArgument, {"lonely_conv", "1 inputs"}));
  }
}

TEST(ImporterMalformed, NodeWithoutOutputs) {
  OnnxBuilder b;
  b.input("x", {2, 4});
  b.output("y", {2, 4});
  b.node("Relu", {"x"}, {"y"}, "relu");
  b.node("Sigmoid", {"x"}, {}, "no_outputs");
  EXPECT_TRUE(status_is(import_model_bytes(b.bytes(), "m.onnx", "", without_shape_inference()),
                        StatusCode::kInvalidArgument, {"no_outputs", "0 outputs"}));
}

TEST(ImporterMalformed, ConstantValueOfTheWrongAttributeType) {
  OnnxBuilder b;
  b.input("x", {3});
  b.output("y", {3});
  b.node("Constant", {}, {"c"}, "odd_const").attr("value", int64_t(3));  // INT, not TENSOR
  b.node("Add", {"x", "c"}, {"y"}, "add");
  auto r = import_model_bytes(b.bytes(), "m.onnx");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("odd_const"), std::string::npos) << r.status().message();
}

// --- external data
// --------------------------------------------------------------------------------------

// x[3] + w[3] where w lives in `location` at `offset`; `length` "" leaves it out.
OnnxBuilder external_model(const std::string& location, const std::string& offset,
                           const std::string& length) {
  OnnxBuilder b;
  b.input("x", {3});
  b.output("y", {3});
  onnx::TensorProto* t = b.graph().add_initializer();
  t->set_name("w");
  t->set_data_type(onnx::TensorProto::FLOAT);
  t->add_dims(3);
  t->set_data_location(onnx::TensorProto::EXTERNAL);
  auto add = [&](const char* key, const std::string& value) {
    if (value.empty()) return;
    auto* kv = t->add_external_data();
    kv->set_key(key);
    kv->set_value(value);
  };
  add("location", location);
  add("offset", offset);
  add("length", length);
  b.node("Add", {"x", "w"}, {"y"}, "add");
  return b;
}

class ExternalData : public ::testing::Test {
 protected:
  void SetUp() override {
    // 16 bytes of something else, then the three floats.
    std::string bytes = "0123456789abcdef";
    bytes.append(reinterpret_cast<const char*>(w_.data()), sizeof(w_));
    testing::write_file(dir_.file("weights.bin"), bytes);
  }
  Expected<std::unique_ptr<ir::Graph>> import(const OnnxBuilder& b) {
    b.save(dir_.file("model.onnx"));
    return import_model_file(dir_.file("model.onnx"));
  }
  testing::TempDir dir_;
  const std::array<float, 3> w_ = {1.5f, -2.75f, 0.125f};
};

TEST_F(ExternalData, IsReadFromBesideTheModel) {
  auto g = import(external_model("weights.bin", "16", "12"));
  ASSERT_TRUE(g.ok()) << g.status().to_string();
  const ir::Value* w = (*g)->find_value("w");
  ASSERT_TRUE(w && w->is_constant());
  EXPECT_EQ(w->constant.to_float_vector(), std::vector<float>(w_.begin(), w_.end()));
}

TEST_F(ExternalData, Errors) {
  EXPECT_TRUE(status_is(import(external_model("weights.bin", "sixteen", "")),
                        StatusCode::kParseError, {"'w'", "offset", "sixteen"}));
  EXPECT_TRUE(status_is(import(external_model("weights.bin", "16", "12 bytes")),
                        StatusCode::kParseError, {"'w'", "length", "12 bytes"}));
  EXPECT_TRUE(status_is(import(external_model("weights.bin", "-4", "")), StatusCode::kParseError,
                        {"'w'", "offset", "-4"}));
  EXPECT_TRUE(status_is(import(external_model("weights.bin", "99999999999999999999", "")),
                        StatusCode::kParseError, {"'w'", "offset"}));
  EXPECT_TRUE(status_is(import(external_model("", "16", "")), StatusCode::kParseError,
                        {"'w'", "location"}));
  EXPECT_TRUE(status_is(import(external_model("../weights.bin", "16", "")),
                        StatusCode::kInvalidArgument, {"'w'", "../weights.bin", "relative"}));
  EXPECT_TRUE(status_is(import(external_model("/etc/passwd", "", "")), StatusCode::kInvalidArgument,
                        {"'w'", "/etc/passwd"}));
  EXPECT_TRUE(status_is(import(external_model("missing.bin", "", "")), StatusCode::kNotFound,
                        {"'w'", "missing.bin"}));
  EXPECT_TRUE(status_is(import(external_model("weights.bin", "16", "8")), StatusCode::kDataLoss,
                        {"'w'", "length 8", "12"}));
  EXPECT_TRUE(status_is(import(external_model("weights.bin", "20", "")), StatusCode::kDataLoss,
                        {"'w'", "too short"}));
}

}  // namespace
}  // namespace mixq
