// Graph passes: identity/dropout removal, BatchNorm folding, constant and shape folding, dead
// code. Every rewrite is checked against the reference output of the graph before the rewrite.
#include "ir/passes/passes.h"

#include <gtest/gtest.h>

#include <cmath>

#include "backends/reference/reference.h"
#include "runtime/interpreter.h"
#include "support/status_matchers.h"
#include "support/test_util.h"

namespace mixq::ir {
namespace {

using runtime::TensorMap;
using testing::max_relative_error;
using testing::random_tensor;

Status reference_evaluate(const Node& node, std::span<const Tensor> inputs,
                          std::vector<Tensor>& outputs) {
  return reference::run_node(node, inputs, outputs);
}

void refresh(Node& node) {
  (void)runtime::infer_node_shapes(node);
}

Tensor run1(const Graph& g, const TensorMap& inputs, const std::string& output) {
  auto r = runtime::run_reference(g, inputs);
  EXPECT_TRUE(r.ok()) << r.status().to_string();
  if (!r.ok() || !r->count(output)) return Tensor();
  return r->at(output);
}

size_t count_op(const Graph& g, OpKind op) {
  size_t n = 0;
  for (const Node* node : g.nodes()) n += node->op == op;
  return n;
}

Value* f32(Graph& g, const std::string& name, Shape shape) {
  return g.add_value(name, DType::kFloat32, std::move(shape));
}

bool has_nonzero(const Tensor& t) {
  for (int64_t i = 0; i < t.numel(); ++i)
    if (t.get_as_double(i) != 0.0) return true;
  return false;
}

// --- remove_identities
// -----------------------------------------------------------------------------

TEST(RemoveIdentities, KeepsTheGraphOutputNameWhenAnIdentityFeedsIt) {
  Graph g;
  Value* x = f32(g, "x", {2, 5});
  Value* r = f32(g, "r", {2, 5});
  Value* y = f32(g, "y", {2, 5});
  g.add_node(OpKind::kRelu, "relu", {x}, {r});
  g.add_node(OpKind::kIdentity, "identity", {r}, {y});
  g.inputs().push_back(x);
  g.outputs().push_back(y);
  const Tensor input = random_tensor({2, 5}, 1);
  const Tensor before = run1(g, {{"x", input}}, "y");

  bool changed = false;
  ASSERT_TRUE(remove_identities(g, &changed).ok());
  EXPECT_TRUE(changed);
  ASSERT_TRUE(verify(g).ok()) << verify(g).to_string();
  ASSERT_EQ(g.node_count(), 1u);
  EXPECT_EQ(g.nodes()[0]->op, OpKind::kRelu);
  ASSERT_EQ(g.outputs().size(), 1u);
  EXPECT_EQ(g.outputs()[0]->name, "y");
  EXPECT_EQ(g.nodes()[0]->outputs[0], g.outputs()[0]);
  const Tensor after = run1(g, {{"x", input}}, "y");
  ASSERT_TRUE(after.defined());
  EXPECT_EQ(after.to_float_vector(), before.to_float_vector());

  changed = false;
  ASSERT_TRUE(remove_identities(g, &changed).ok());
  EXPECT_FALSE(changed);
}

TEST(RemoveIdentities, RemovesAnIdentityBetweenNodes) {
  Graph g;
  Value* x = f32(g, "x", {3});
  Value* i = f32(g, "i", {3});
  Value* y = f32(g, "y", {3});
  g.add_node(OpKind::kIdentity, "identity", {x}, {i});
  Node* neg = g.add_node(OpKind::kNeg, "neg", {i}, {y});
  g.inputs().push_back(x);
  g.outputs().push_back(y);
  ASSERT_TRUE(remove_identities(g).ok());
  ASSERT_EQ(g.node_count(), 1u);
  EXPECT_EQ(neg->inputs[0], x);
  EXPECT_EQ(g.find_value("i"), nullptr);
  EXPECT_TRUE(verify(g).ok());
}

TEST(RemoveIdentities, KeepsAnIdentityFromGraphInputToGraphOutput) {
  // Both names are part of the interface: nothing can be renamed, so the node stays.
  Graph g;
  Value* x = f32(g, "x", {3});
  Value* y = f32(g, "y", {3});
  g.add_node(OpKind::kIdentity, "identity", {x}, {y});
  g.inputs().push_back(x);
  g.outputs().push_back(y);
  bool changed = false;
  ASSERT_TRUE(remove_identities(g, &changed).ok());
  EXPECT_FALSE(changed);
  EXPECT_EQ(g.node_count(), 1u);
  EXPECT_EQ(g.outputs()[0]->name, "y");
  EXPECT_EQ(g.inputs()[0]->name, "x");
  EXPECT_TRUE(verify(g).ok());
}

TEST(RemoveIdentities, RemovesInferenceDropout) {
  Graph g;
  Value* x = f32(g, "x", {2, 4});
  Value* r = f32(g, "r", {2, 4});
  Value* d = f32(g, "d", {2, 4});
  Value* y = f32(g, "y", {2, 4});
  Value* ratio = g.add_constant("ratio", Tensor::scalar<float>(0.5f));
  Value* training = g.add_constant("training_mode", Tensor::scalar<bool>(false));
  g.add_node(OpKind::kRelu, "relu", {x}, {r});
  g.add_node(OpKind::kDropout, "dropout", {r, ratio, training}, {d});
  g.add_node(OpKind::kSigmoid, "sigmoid", {d}, {y});
  g.inputs().push_back(x);
  g.outputs().push_back(y);
  bool changed = false;
  ASSERT_TRUE(remove_identities(g, &changed).ok());
  EXPECT_TRUE(changed);
  EXPECT_EQ(count_op(g, OpKind::kDropout), 0u);
  EXPECT_EQ(g.node_count(), 2u);
  EXPECT_EQ(g.find_node("sigmoid")->inputs[0], r);
  EXPECT_TRUE(verify(g).ok());
}

TEST(RemoveIdentities, KeepsDropoutWhoseMaskIsRead) {
  Graph g;
  Value* x = f32(g, "x", {2, 4});
  Value* d = f32(g, "d", {2, 4});
  Value* mask = g.add_value("mask", DType::kBool, {2, 4});
  g.add_node(OpKind::kDropout, "dropout", {x}, {d, mask});
  g.inputs().push_back(x);
  g.outputs().push_back(d);
  g.outputs().push_back(mask);
  ASSERT_TRUE(remove_identities(g).ok());
  EXPECT_EQ(count_op(g, OpKind::kDropout), 1u);
}

TEST(RemoveIdentities, KeepsDropoutInTrainingMode) {
  Graph g;
  Value* x = f32(g, "x", {2, 4});
  Value* d = f32(g, "d", {2, 4});
  Value* y = f32(g, "y", {2, 4});
  Value* training = g.add_constant("training_mode", Tensor::scalar<bool>(true));
  g.add_node(OpKind::kDropout, "dropout", {x, nullptr, training}, {d});
  g.add_node(OpKind::kRelu, "relu", {d}, {y});
  g.inputs().push_back(x);
  g.outputs().push_back(y);
  ASSERT_TRUE(remove_identities(g).ok());
  EXPECT_EQ(count_op(g, OpKind::kDropout), 1u);
}

// --- fold_batchnorm
// ----------------------------------------------------------------------------------

struct BnStats {
  Tensor gamma, beta, mean, var;
};

BnStats random_bn(int64_t channels, uint64_t seed) {
  return {random_tensor({channels}, seed, -1.5f, 1.5f),
          random_tensor({channels}, seed + 1, -1.0f, 1.0f),
          random_tensor({channels}, seed + 2, -0.5f, 0.5f),
          random_tensor({channels}, seed + 3, 0.05f, 2.0f)};
}

Node* add_bn(Graph& g, Value* x, Value* y, const BnStats& s, float epsilon,
             const std::string& name = "bn") {
  Node* bn = g.add_node(
      OpKind::kBatchNormalization, name,
      {x, g.add_constant(name + ".weight", s.gamma), g.add_constant(name + ".bias", s.beta),
       g.add_constant(name + ".running_mean", s.mean),
       g.add_constant(name + ".running_var", s.var)},
      {y});
  bn->attrs["epsilon"] = epsilon;
  return bn;
}

// Folds every BN of `g` (a copy) and checks that exactly `layers` layer nodes remain, no BN, and
// the output named `output` matches the unfolded graph's on `inputs`.
void expect_fold_preserves_output(const Graph& g, const TensorMap& inputs,
                                  const std::string& output, size_t nodes_after) {
  const Tensor expected = run1(g, inputs, output);
  ASSERT_TRUE(expected.defined());
  ASSERT_TRUE(has_nonzero(expected));
  auto folded = g.clone();
  bool changed = false;
  ASSERT_TRUE(fold_batchnorm(*folded, &changed).ok());
  EXPECT_TRUE(changed);
  ASSERT_TRUE(verify(*folded).ok()) << verify(*folded).to_string();
  EXPECT_EQ(count_op(*folded, OpKind::kBatchNormalization), 0u);
  EXPECT_EQ(folded->node_count(), nodes_after);
  EXPECT_NE(folded->find_value(output), nullptr) << "the output name must survive";
  const Tensor actual = run1(*folded, inputs, output);
  ASSERT_TRUE(actual.defined());
  ASSERT_EQ(actual.shape(), expected.shape());
  EXPECT_LE(max_relative_error(actual, expected), 1e-5);
  // The original graph is untouched by folding its clone.
  EXPECT_EQ(count_op(g, OpKind::kBatchNormalization), 1u);
}

Graph* conv_bn_graph(Graph& g, bool with_bias, uint64_t seed) {
  Value* x = f32(g, "x", {2, 3, 6, 6});
  Value* w = g.add_constant("conv.weight", random_tensor({5, 3, 3, 3}, seed, -0.5f, 0.5f));
  std::vector<Value*> ins = {x, w};
  if (with_bias) ins.push_back(g.add_constant("conv.bias", random_tensor({5}, seed + 10)));
  Value* c = f32(g, "c", {2, 5, 6, 6});
  Value* y = f32(g, "y", {2, 5, 6, 6});
  Node* conv = g.add_node(OpKind::kConv, "conv", ins, {c});
  conv->attrs["pads"] = std::vector<int64_t>{1, 1, 1, 1};
  conv->attrs["kernel_shape"] = std::vector<int64_t>{3, 3};
  add_bn(g, c, y, random_bn(5, seed + 20), 1e-3f);
  g.inputs().push_back(x);
  g.outputs().push_back(y);
  return &g;
}

TEST(FoldBatchNorm, ConvWithBias) {
  Graph g;
  conv_bn_graph(g, /*with_bias=*/true, 100);
  expect_fold_preserves_output(g, {{"x", random_tensor({2, 3, 6, 6}, 1)}}, "y", 1);
}

TEST(FoldBatchNorm, ConvWithoutBias) {
  Graph g;
  conv_bn_graph(g, /*with_bias=*/false, 200);
  expect_fold_preserves_output(g, {{"x", random_tensor({2, 3, 6, 6}, 2)}}, "y", 1);
  // The folded Conv gained a bias.
  auto folded = g.clone();
  ASSERT_TRUE(fold_batchnorm(*folded).ok());
  const Node* conv = folded->find_node("conv");
  ASSERT_TRUE(conv);
  ASSERT_EQ(conv->inputs.size(), 3u);
  ASSERT_TRUE(conv->input(2) && conv->input(2)->is_constant());
  EXPECT_EQ(conv->input(2)->constant.shape(), (Shape{5}));
}

TEST(FoldBatchNorm, GroupedConv) {
  Graph g;
  Value* x = f32(g, "x", {1, 4, 5, 5});
  Value* w = g.add_constant("conv.weight", random_tensor({6, 2, 3, 3}, 300, -0.5f, 0.5f));
  Value* c = f32(g, "c", {1, 6, 3, 3});
  Value* y = f32(g, "y", {1, 6, 3, 3});
  Node* conv = g.add_node(OpKind::kConv, "conv", {x, w}, {c});
  conv->attrs["group"] = int64_t(2);
  add_bn(g, c, y, random_bn(6, 301), 1e-5f);
  g.inputs().push_back(x);
  g.outputs().push_back(y);
  expect_fold_preserves_output(g, {{"x", random_tensor({1, 4, 5, 5}, 3)}}, "y", 1);
}

void gemm_bn_graph(Graph& g, int64_t trans_b, float alpha, float beta, bool with_c, uint64_t seed) {
  const int64_t m = 4, k = 6, n = 5;
  Value* a = f32(g, "a", {m, k});
  Value* b = g.add_constant("fc.weight",
                            trans_b ? random_tensor({n, k}, seed) : random_tensor({k, n}, seed));
  std::vector<Value*> ins = {a, b};
  if (with_c) ins.push_back(g.add_constant("fc.bias", random_tensor({n}, seed + 1)));
  Value* z = f32(g, "z", {m, n});
  Value* y = f32(g, "y", {m, n});
  Node* gemm = g.add_node(OpKind::kGemm, "gemm", ins, {z});
  gemm->attrs["transB"] = trans_b;
  gemm->attrs["alpha"] = alpha;
  gemm->attrs["beta"] = beta;
  add_bn(g, z, y, random_bn(n, seed + 2), 1e-5f);
  g.inputs().push_back(a);
  g.outputs().push_back(y);
}

TEST(FoldBatchNorm, GemmTransB1) {
  Graph g;
  gemm_bn_graph(g, 1, 1.0f, 1.0f, true, 400);
  expect_fold_preserves_output(g, {{"a", random_tensor({4, 6}, 4)}}, "y", 1);
}

TEST(FoldBatchNorm, GemmTransB0) {
  Graph g;
  gemm_bn_graph(g, 0, 1.0f, 1.0f, true, 500);
  expect_fold_preserves_output(g, {{"a", random_tensor({4, 6}, 5)}}, "y", 1);
}

TEST(FoldBatchNorm, GemmAlphaBetaTransB1) {
  Graph g;
  gemm_bn_graph(g, 1, 0.7f, 1.3f, true, 600);
  expect_fold_preserves_output(g, {{"a", random_tensor({4, 6}, 6)}}, "y", 1);
}

TEST(FoldBatchNorm, GemmAlphaBetaTransB0) {
  Graph g;
  gemm_bn_graph(g, 0, -1.25f, 0.5f, true, 700);
  expect_fold_preserves_output(g, {{"a", random_tensor({4, 6}, 7)}}, "y", 1);
}

TEST(FoldBatchNorm, GemmWithoutBiasAndBetaNotOne) {
  Graph g;
  gemm_bn_graph(g, 1, 1.5f, 2.0f, false, 800);
  expect_fold_preserves_output(g, {{"a", random_tensor({4, 6}, 8)}}, "y", 1);
}

TEST(FoldBatchNorm, NotFoldedWhenTheConvOutputHasAnotherConsumer) {
  Graph g;
  Value* x = f32(g, "x", {1, 3, 4, 4});
  Value* w = g.add_constant("conv.weight", random_tensor({2, 3, 1, 1}, 900));
  Value* c = f32(g, "c", {1, 2, 4, 4});
  Value* y1 = f32(g, "y1", {1, 2, 4, 4});
  Value* y2 = f32(g, "y2", {1, 2, 4, 4});
  g.add_node(OpKind::kConv, "conv", {x, w}, {c});
  add_bn(g, c, y1, random_bn(2, 901), 1e-5f);
  g.add_node(OpKind::kRelu, "relu", {c}, {y2});
  g.inputs().push_back(x);
  g.outputs() = {y1, y2};
  const TensorMap in = {{"x", random_tensor({1, 3, 4, 4}, 9)}};
  const Tensor e1 = run1(g, in, "y1"), e2 = run1(g, in, "y2");
  bool changed = false;
  ASSERT_TRUE(fold_batchnorm(g, &changed).ok());
  EXPECT_FALSE(changed);
  EXPECT_EQ(count_op(g, OpKind::kBatchNormalization), 1u);
  EXPECT_EQ(g.find_node("conv")->input(1), w) << "the weights must not be rewritten";
  EXPECT_EQ(run1(g, in, "y1").to_float_vector(), e1.to_float_vector());
  EXPECT_EQ(run1(g, in, "y2").to_float_vector(), e2.to_float_vector());
}

TEST(FoldBatchNorm, NotFoldedWhenTheConvOutputIsAGraphOutput) {
  Graph g;
  conv_bn_graph(g, true, 1000);
  g.outputs().push_back(g.find_value("c"));
  bool changed = false;
  ASSERT_TRUE(fold_batchnorm(g, &changed).ok());
  EXPECT_FALSE(changed);
  EXPECT_EQ(count_op(g, OpKind::kBatchNormalization), 1u);
}

TEST(FoldBatchNorm, NotFoldedAfterANonLinearLayer) {
  Graph g;
  Value* x = f32(g, "x", {1, 2, 3, 3});
  Value* r = f32(g, "r", {1, 2, 3, 3});
  Value* y = f32(g, "y", {1, 2, 3, 3});
  g.add_node(OpKind::kRelu, "relu", {x}, {r});
  add_bn(g, r, y, random_bn(2, 1100), 1e-5f);
  g.inputs().push_back(x);
  g.outputs().push_back(y);
  bool changed = false;
  ASSERT_TRUE(fold_batchnorm(g, &changed).ok());
  EXPECT_FALSE(changed);
  EXPECT_EQ(count_op(g, OpKind::kBatchNormalization), 1u);
}

// --- fold_constants
// ----------------------------------------------------------------------------------

TEST(FoldConstants, FoldsAnAllConstantSubgraph) {
  Graph g;
  const Tensor t1 = random_tensor({4}, 1), t2 = random_tensor({4}, 2), t3 = random_tensor({4}, 3);
  Value* x = f32(g, "x", {2, 4});
  Value* c1 = g.add_constant("c1", t1);
  Value* c2 = g.add_constant("c2", t2);
  Value* c3 = g.add_constant("c3", t3);
  Value* s = g.add_value("s", DType::kFloat32, {}, false);
  Value* p = g.add_value("p", DType::kFloat32, {}, false);
  Value* y = f32(g, "y", {2, 4});
  g.add_node(OpKind::kAdd, "const_add", {c1, c2}, {s});
  g.add_node(OpKind::kMul, "const_mul", {s, c3}, {p});
  Node* add = g.add_node(OpKind::kAdd, "add_x", {x, p}, {y});
  g.inputs().push_back(x);
  g.outputs().push_back(y);
  const TensorMap in = {{"x", random_tensor({2, 4}, 4)}};
  const Tensor before = run1(g, in, "y");

  bool changed = false;
  ASSERT_TRUE(fold_constants(g, reference_evaluate, refresh, &changed).ok());
  EXPECT_TRUE(changed);
  ASSERT_TRUE(verify(g).ok()) << verify(g).to_string();
  ASSERT_EQ(g.node_count(), 1u);
  EXPECT_EQ(g.nodes()[0], add);
  ASSERT_TRUE(p->is_constant());
  EXPECT_EQ(p->shape, (Shape{4}));
  for (int i = 0; i < 4; ++i)
    EXPECT_FLOAT_EQ(p->constant.data<float>()[i],
                    (t1.data<float>()[i] + t2.data<float>()[i]) * t3.data<float>()[i]);
  EXPECT_EQ(run1(g, in, "y").to_float_vector(), before.to_float_vector());
}

TEST(FoldConstants, NeverFoldsQuantizeDequantize) {
  Graph g;
  Value* x = f32(g, "x", {4});
  Value* w = g.add_constant("w", random_tensor({4}, 1));
  Value* scale = g.add_constant("scale", Tensor::scalar<float>(0.01f));
  Value* zp = g.add_constant("zp", Tensor::scalar<int8_t>(3));
  Value* q = g.add_value("q", DType::kInt8, {4});
  Value* dq = f32(g, "dq", {4});
  Value* y = f32(g, "y", {4});
  g.add_node(OpKind::kQuantizeLinear, "quant", {w, scale, zp}, {q});
  g.add_node(OpKind::kDequantizeLinear, "dequant", {q, scale, zp}, {dq});
  g.add_node(OpKind::kAdd, "add", {x, dq}, {y});
  g.inputs().push_back(x);
  g.outputs().push_back(y);
  ASSERT_TRUE(fold_constants(g, reference_evaluate, refresh).ok());
  EXPECT_EQ(count_op(g, OpKind::kQuantizeLinear), 1u);
  EXPECT_EQ(count_op(g, OpKind::kDequantizeLinear), 1u);
}

TEST(FoldConstants, EvaluatorErrorsCarryContext) {
  Graph g;
  Value* c = g.add_constant("c", random_tensor({3}, 1));
  Value* y = f32(g, "y", {3});
  g.add_node(OpKind::kRelu, "relu", {c}, {y});
  g.outputs().push_back(y);
  auto failing = [](const Node& node, std::span<const Tensor>, std::vector<Tensor>&) {
    return Internal(node.describe() + " exploded");
  };
  EXPECT_TRUE(testing::status_is(fold_constants(g, failing), StatusCode::kInternal,
                                 {"constant folding", "Relu 'relu'", "exploded"}));
}

// x[N,3,4,4] -> Shape -> Gather(0) -> Unsqueeze(0) -> Concat(., [-1]) -> Reshape(x, .) -> y[N,48]:
// torch.flatten(x, 1) as old exporters wrote it.
void shape_chain_graph(Graph& g, int64_t batch_dim) {
  Value* x = f32(g, "x", {batch_dim, 3, 4, 4});
  Value* s = g.add_value("s", DType::kInt64, {}, false);
  Value* b = g.add_value("b", DType::kInt64, {}, false);
  Value* b1 = g.add_value("b1", DType::kInt64, {}, false);
  Value* target = g.add_value("target", DType::kInt64, {}, false);
  Value* y = g.add_value("y", DType::kFloat32, {}, false);
  g.add_node(OpKind::kShape, "shape", {x}, {s});
  g.add_node(OpKind::kGather, "gather", {s, g.add_constant("zero", Tensor::scalar<int64_t>(0))},
             {b})
      ->attrs["axis"] = int64_t(0);
  g.add_node(OpKind::kUnsqueeze, "unsqueeze",
             {b, g.add_constant("axes", Tensor::from_vector<int64_t>({1}, {0}))}, {b1});
  g.add_node(OpKind::kConcat, "concat",
             {b1, g.add_constant("minus_one", Tensor::from_vector<int64_t>({1}, {-1}))}, {target})
      ->attrs["axis"] = int64_t(0);
  g.add_node(OpKind::kReshape, "reshape", {x, target}, {y});
  g.inputs().push_back(x);
  g.outputs().push_back(y);
}

TEST(FoldConstants, ShapeChainWithSymbolicBatchBecomesAConstantReshape) {
  Graph original;
  shape_chain_graph(original, kDynamicDim);
  ASSERT_TRUE(verify(original).ok());
  auto g = original.clone();
  ASSERT_TRUE(runtime::simplify_graph(*g).ok());
  EXPECT_EQ(count_op(*g, OpKind::kShape), 0u);
  EXPECT_EQ(count_op(*g, OpKind::kGather), 0u);
  EXPECT_EQ(count_op(*g, OpKind::kConcat), 0u);
  ASSERT_EQ(g->node_count(), 1u);
  const Node* reshape = g->nodes()[0];
  ASSERT_EQ(reshape->op, OpKind::kReshape);
  ASSERT_TRUE(reshape->input(1) && reshape->input(1)->is_constant());
  // The batch is copied from the input (0) and the rest inferred (-1).
  EXPECT_EQ(reshape->input(1)->constant.to_int64_vector(), (std::vector<int64_t>{0, -1}));
  EXPECT_EQ(g->outputs()[0]->name, "y");

  for (int64_t batch : {2, 5}) {
    SCOPED_TRACE("batch " + std::to_string(batch));
    const Tensor x = random_tensor({batch, 3, 4, 4}, uint64_t(batch));
    const Tensor expected = run1(original, {{"x", x}}, "y");
    const Tensor actual = run1(*g, {{"x", x}}, "y");
    ASSERT_TRUE(expected.defined() && actual.defined());
    EXPECT_EQ(expected.shape(), (Shape{batch, 48}));
    EXPECT_EQ(actual.shape(), (Shape{batch, 48}));
    EXPECT_EQ(actual.to_float_vector(), x.to_float_vector());
    EXPECT_EQ(actual.to_float_vector(), expected.to_float_vector());
  }
}

TEST(FoldConstants, ShapeChainWithStaticShapeFoldsCompletely) {
  Graph original;
  shape_chain_graph(original, 3);
  auto g = original.clone();
  ASSERT_TRUE(runtime::simplify_graph(*g).ok());
  ASSERT_EQ(g->node_count(), 1u);
  const Node* reshape = g->nodes()[0];
  ASSERT_EQ(reshape->op, OpKind::kReshape);
  ASSERT_TRUE(reshape->input(1)->is_constant());
  EXPECT_EQ(reshape->input(1)->constant.to_int64_vector(), (std::vector<int64_t>{3, -1}));
  const Tensor x = random_tensor({3, 3, 4, 4}, 77);
  const Tensor actual = run1(*g, {{"x", x}}, "y");
  EXPECT_EQ(actual.shape(), (Shape{3, 48}));
  EXPECT_EQ(actual.to_float_vector(), x.to_float_vector());
}

// --- remove_dead_nodes
// -------------------------------------------------------------------------------

TEST(RemoveDeadNodes, RemovesUnreadChainsAndTheirValues) {
  Graph g;
  Value* x = f32(g, "x", {3});
  Value* y = f32(g, "y", {3});
  Value* d1 = f32(g, "dead1", {3});
  Value* d2 = f32(g, "dead2", {3});
  Value* d3 = f32(g, "dead3", {3});
  g.add_node(OpKind::kRelu, "relu", {x}, {y});
  g.add_node(OpKind::kSigmoid, "dead_sigmoid", {x}, {d1});
  g.add_node(OpKind::kTanh, "dead_tanh", {d1}, {d2});
  g.add_node(OpKind::kAdd, "dead_add", {d2, g.add_constant("dead_c", random_tensor({3}, 1))}, {d3});
  g.inputs().push_back(x);
  g.outputs().push_back(y);
  bool changed = false;
  ASSERT_TRUE(remove_dead_nodes(g, &changed).ok());
  EXPECT_TRUE(changed);
  ASSERT_EQ(g.node_count(), 1u);
  EXPECT_EQ(g.nodes()[0]->name, "relu");
  for (const char* name : {"dead1", "dead2", "dead3", "dead_c"})
    EXPECT_EQ(g.find_value(name), nullptr) << name;
  EXPECT_NE(g.find_value("x"), nullptr);
  EXPECT_TRUE(verify(g).ok());

  changed = false;
  ASSERT_TRUE(remove_dead_nodes(g, &changed).ok());
  EXPECT_FALSE(changed);
}

TEST(RemoveDeadNodes, KeepsUnusedGraphInputs) {
  Graph g;
  Value* x = f32(g, "x", {3});
  Value* unused = f32(g, "unused_input", {3});
  Value* y = f32(g, "y", {3});
  g.add_node(OpKind::kRelu, "relu", {x}, {y});
  g.inputs() = {x, unused};
  g.outputs().push_back(y);
  ASSERT_TRUE(remove_dead_nodes(g).ok());
  EXPECT_EQ(g.inputs().size(), 2u);
  EXPECT_EQ(g.find_value("unused_input"), unused);
}

// --- simplify
// ----------------------------------------------------------------------------------------

TEST(Simplify, ConvBatchNormIdentityDropoutBecomesOneConv) {
  Graph g;
  Value* x = f32(g, "x", {kDynamicDim, 3, 6, 6});
  Value* w = g.add_constant("conv.weight", random_tensor({4, 3, 3, 3}, 1, -0.5f, 0.5f));
  Value* c = g.add_value("c", DType::kFloat32, {}, false);
  Value* b = g.add_value("b", DType::kFloat32, {}, false);
  Value* d = g.add_value("d", DType::kFloat32, {}, false);
  Value* y = g.add_value("y", DType::kFloat32, {}, false);
  g.add_node(OpKind::kConv, "conv", {x, w}, {c});
  add_bn(g, c, b, random_bn(4, 2), 1e-5f);
  g.add_node(OpKind::kDropout, "dropout", {b}, {d});
  g.add_node(OpKind::kIdentity, "identity", {d}, {y});
  g.inputs().push_back(x);
  g.outputs().push_back(y);
  const TensorMap in = {{"x", random_tensor({3, 3, 6, 6}, 3)}};
  const Tensor expected = run1(g, in, "y");
  auto s = g.clone();
  ASSERT_TRUE(runtime::simplify_graph(*s).ok());
  ASSERT_EQ(s->node_count(), 1u);
  EXPECT_EQ(s->nodes()[0]->op, OpKind::kConv);
  EXPECT_EQ(s->outputs()[0]->name, "y");
  const Tensor actual = run1(*s, in, "y");
  ASSERT_TRUE(actual.defined());
  EXPECT_LE(max_relative_error(actual, expected), 1e-5);

  // Without BN folding the BatchNormalization stays.
  auto keep_bn = g.clone();
  SimplifyOptions options;
  options.fold_batchnorm = false;
  ASSERT_TRUE(runtime::simplify_graph(*keep_bn, options).ok());
  EXPECT_EQ(count_op(*keep_bn, OpKind::kBatchNormalization), 1u);
  EXPECT_EQ(keep_bn->node_count(), 2u);
}

}  // namespace
}  // namespace mixq::ir
