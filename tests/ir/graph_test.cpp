// ir::Graph: the verifier's errors, toposort, deep clone, editing helpers, node costs.
#include "ir/graph.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <unordered_map>

#include "runtime/interpreter.h"
#include "support/status_matchers.h"
#include "support/test_util.h"

namespace mixq::ir {
namespace {

using testing::random_tensor;
using testing::status_is;

// x[2,3] -> Relu "relu" -> r -> Add "add" (+ const c) -> a -> Sigmoid "sig" -> y (output)
struct Chain {
  Graph g;
  Value *x, *c, *r, *a, *y;
  Node *relu, *add, *sig;
  Chain() {
    x = g.add_value("x", DType::kFloat32, {2, 3});
    c = g.add_constant("c", random_tensor({3}, 1));
    r = g.add_value("r", DType::kFloat32, {2, 3});
    a = g.add_value("a", DType::kFloat32, {2, 3});
    y = g.add_value("y", DType::kFloat32, {2, 3});
    relu = g.add_node(OpKind::kRelu, "relu", {x}, {r});
    add = g.add_node(OpKind::kAdd, "add", {r, c}, {a});
    sig = g.add_node(OpKind::kSigmoid, "sig", {a}, {y});
    g.inputs().push_back(x);
    g.outputs().push_back(y);
  }
};

TEST(GraphVerify, AcceptsAWellFormedGraph) {
  Chain ch;
  EXPECT_TRUE(verify(ch.g).ok()) << verify(ch.g).to_string();
}

TEST(GraphVerify, DuplicateValueNames) {
  Chain ch;
  Value* dup = ch.g.add_value("a", DType::kFloat32, {2, 3});
  ch.g.add_node(OpKind::kRelu, "relu2", {ch.x}, {dup});
  EXPECT_TRUE(status_is(verify(ch.g), StatusCode::kInvalidArgument, {"two values", "'a'"}));
}

TEST(GraphVerify, DuplicateNodeNames) {
  Chain ch;
  Value* v = ch.g.add_value("extra", DType::kFloat32, {2, 3});
  ch.g.add_node(OpKind::kTanh, "relu", {ch.x}, {v});
  EXPECT_TRUE(status_is(verify(ch.g), StatusCode::kInvalidArgument, {"two nodes", "'relu'"}));
}

TEST(GraphVerify, NodeWritingAConstant) {
  Chain ch;
  ch.g.add_node(OpKind::kNeg, "overwrites_weights", {ch.x}, {ch.c});
  EXPECT_TRUE(status_is(verify(ch.g), StatusCode::kInvalidArgument,
                        {"overwrites_weights", "'c'", "constant"}));
}

TEST(GraphVerify, ValueWrittenByTwoNodes) {
  Chain ch;
  ch.g.add_node(OpKind::kTanh, "second_writer", {ch.x}, {ch.r});
  // add_node pointed r's producer at the second writer; with the first writer still recorded
  // the verifier must report the double write (naming the value and both writers), not a
  // bookkeeping slip.
  ch.r->producer = ch.relu;
  EXPECT_TRUE(
      status_is(verify(ch.g), StatusCode::kInvalidArgument, {"'r'", "relu", "second_writer"}));
}

TEST(GraphVerify, DanglingInput) {
  Chain ch;
  Value* ghost = ch.g.add_value("ghost", DType::kFloat32, {2, 3});
  ch.add->inputs[1] = ghost;
  EXPECT_TRUE(status_is(verify(ch.g), StatusCode::kInvalidArgument,
                        {"Add 'add'", "input 1", "'ghost'", "dangling"}));
}

TEST(GraphVerify, GraphOutputProducedByNoNode) {
  Chain ch;
  ch.g.outputs().push_back(ch.g.add_value("orphan", DType::kFloat32, {2, 3}));
  EXPECT_TRUE(status_is(verify(ch.g), StatusCode::kInvalidArgument,
                        {"graph output 'orphan'", "produced by no node"}));
}

TEST(GraphVerify, GraphInputWrittenByANode) {
  Chain ch;
  Value* x2 = ch.g.add_value("x2", DType::kFloat32, {2, 3});
  ch.g.inputs().push_back(x2);
  ch.g.add_node(OpKind::kRelu, "writes_input", {ch.x}, {x2});
  EXPECT_TRUE(
      status_is(verify(ch.g), StatusCode::kInvalidArgument, {"graph input 'x2'", "writes_input"}));
}

TEST(GraphVerify, Cycle) {
  Graph g;
  Value* x = g.add_value("x", DType::kFloat32, {4});
  Value* p = g.add_value("p", DType::kFloat32, {4});
  Value* q = g.add_value("q", DType::kFloat32, {4});
  Value* out = g.add_value("out", DType::kFloat32, {4});
  g.add_node(OpKind::kAdd, "loop_add", {x, q}, {p});
  g.add_node(OpKind::kRelu, "loop_relu", {p}, {q});
  g.add_node(OpKind::kNeg, "after", {p}, {out});
  g.inputs().push_back(x);
  g.outputs().push_back(out);
  const Status s = verify(g);
  EXPECT_TRUE(status_is(s, StatusCode::kInvalidArgument, {"cycle", "loop_add", "loop_relu"}));
  EXPECT_TRUE(
      status_is(g.toposort(), StatusCode::kInvalidArgument, {"cycle", "loop_add", "loop_relu"}));
}

TEST(GraphVerify, SelfLoop) {
  Graph g;
  Value* x = g.add_value("x", DType::kFloat32, {4});
  Value* s = g.add_value("s", DType::kFloat32, {4});
  g.add_node(OpKind::kAdd, "self_feeding", {x, s}, {s});
  g.inputs().push_back(x);
  g.outputs().push_back(s);
  EXPECT_TRUE(status_is(verify(g), StatusCode::kInvalidArgument, {"cycle", "self_feeding"}));
}

TEST(GraphVerify, InputArity) {
  {
    Chain ch;
    ch.relu->inputs.push_back(ch.c);  // Relu takes exactly 1
    EXPECT_TRUE(status_is(verify(ch.g), StatusCode::kInvalidArgument,
                          {"Relu 'relu'", "2 inputs", "takes 1"}));
  }
  {
    Graph g;
    Value* x = g.add_value("x", DType::kFloat32, {1, 1, 4, 4});
    Value* y = g.add_value("y", DType::kFloat32, {1, 1, 4, 4});
    g.add_node(OpKind::kConv, "conv_without_weight", {x}, {y});
    g.inputs().push_back(x);
    g.outputs().push_back(y);
    EXPECT_TRUE(status_is(verify(g), StatusCode::kInvalidArgument,
                          {"conv_without_weight", "1 inputs", "takes 2 to 3"}));
  }
  {
    Chain ch;
    ch.add->inputs.pop_back();
    EXPECT_TRUE(status_is(verify(ch.g), StatusCode::kInvalidArgument,
                          {"Add 'add'", "1 inputs", "takes 2"}));
  }
}

TEST(GraphVerify, OutputArity) {
  Chain ch;
  ch.sig->outputs.push_back(ch.g.add_value("y2", DType::kFloat32, {2, 3}));
  ch.sig->outputs.back()->producer = ch.sig;
  EXPECT_TRUE(
      status_is(verify(ch.g), StatusCode::kInvalidArgument, {"Sigmoid 'sig'", "2 outputs"}));
}

TEST(GraphVerify, VariadicOpsTakeAnyNumber) {
  Graph g;
  std::vector<Value*> ins;
  for (int i = 0; i < 7; ++i) {
    ins.push_back(g.add_value("in" + std::to_string(i), DType::kFloat32, {2}));
    g.inputs().push_back(ins.back());
  }
  Value* y = g.add_value("y", DType::kFloat32, {2});
  g.add_node(OpKind::kSum, "sum", ins, {y});
  g.outputs().push_back(y);
  EXPECT_TRUE(verify(g).ok()) << verify(g).to_string();
}

// --- toposort
// ------------------------------------------------------------------------------------------

// Position of every node in the graph's current order.
std::unordered_map<const Node*, size_t> positions(const Graph& g) {
  std::unordered_map<const Node*, size_t> pos;
  const auto nodes = g.nodes();
  for (size_t i = 0; i < nodes.size(); ++i) pos[nodes[i]] = i;
  return pos;
}

bool producers_first(const Graph& g) {
  auto pos = positions(g);
  for (const Node* n : g.nodes())
    for (const Value* in : n->inputs)
      if (in && in->producer && pos.at(in->producer) >= pos.at(n)) return false;
  return true;
}

TEST(GraphToposort, ReordersAShuffledGraph) {
  // A diamond plus a chain, 12 nodes, added in shuffled order.
  for (uint64_t seed : {1u, 2u, 3u, 4u}) {
    Graph g;
    Value* x = g.add_value("x", DType::kFloat32, {4});
    g.inputs().push_back(x);
    std::vector<Value*> v(12);
    for (int i = 0; i < 12; ++i)
      v[size_t(i)] = g.add_value("v" + std::to_string(i), DType::kFloat32, {4});
    // node i reads v[i-1] (or x) and, for odd i >= 3, also v[i-3]
    std::vector<int> order(12);
    for (int i = 0; i < 12; ++i) order[size_t(i)] = i;
    std::shuffle(order.begin(), order.end(), std::mt19937_64(seed));
    for (int i : order) {
      Value* first = i == 0 ? x : v[size_t(i - 1)];
      if (i % 2 == 1 && i >= 3)
        g.add_node(OpKind::kAdd, "n" + std::to_string(i), {first, v[size_t(i - 3)]},
                   {v[size_t(i)]});
      else
        g.add_node(OpKind::kRelu, "n" + std::to_string(i), {first}, {v[size_t(i)]});
    }
    g.outputs().push_back(v[11]);
    ASSERT_TRUE(g.toposort().ok());
    EXPECT_TRUE(producers_first(g)) << "seed " << seed;
    // A chain has exactly one order.
    for (int i = 0; i < 12; ++i) EXPECT_EQ(g.nodes()[size_t(i)]->name, "n" + std::to_string(i));
    EXPECT_TRUE(verify(g).ok());
  }
}

TEST(GraphToposort, KeepsIndependentNodesInTheirOriginalOrder) {
  Graph g;
  Value* x = g.add_value("x", DType::kFloat32, {4});
  g.inputs().push_back(x);
  Value* a = g.add_value("a", DType::kFloat32, {4});
  Value* b = g.add_value("b", DType::kFloat32, {4});
  Value* c = g.add_value("c", DType::kFloat32, {4});
  g.add_node(OpKind::kAdd, "join", {a, b}, {c});
  g.add_node(OpKind::kTanh, "second", {x}, {b});
  g.add_node(OpKind::kRelu, "first", {x}, {a});
  g.outputs().push_back(c);
  ASSERT_TRUE(g.toposort().ok());
  ASSERT_EQ(g.node_count(), 3u);
  EXPECT_EQ(g.nodes()[0]->name, "second");
  EXPECT_EQ(g.nodes()[1]->name, "first");
  EXPECT_EQ(g.nodes()[2]->name, "join");
}

// --- clone
// ----------------------------------------------------------------------------------------------

TEST(GraphClone, IsDeep) {
  Chain ch;
  ch.g.name = "original";
  ch.g.opset = 13;
  ch.relu->module_name = "block.act";
  ch.add->attrs["note"] = std::string("kept");
  auto copy = ch.g.clone();
  ASSERT_TRUE(verify(*copy).ok());
  EXPECT_EQ(copy->name, "original");
  EXPECT_EQ(copy->opset, 13);
  ASSERT_EQ(copy->node_count(), 3u);
  EXPECT_EQ(copy->nodes()[0]->module_name, "block.act");
  EXPECT_EQ(copy->nodes()[1]->attr_string("note", ""), "kept");

  // Nothing in the copy points into the original.
  const auto orig_values = ch.g.values();
  for (const Node* n : copy->nodes()) {
    for (const Value* v : n->inputs)
      EXPECT_EQ(std::find(orig_values.begin(), orig_values.end(), v), orig_values.end());
    for (const Value* v : n->outputs) {
      EXPECT_EQ(std::find(orig_values.begin(), orig_values.end(), v), orig_values.end());
      EXPECT_EQ(v->producer, n);
    }
  }
  EXPECT_NE(copy->inputs()[0], ch.x);
  EXPECT_NE(copy->outputs()[0], ch.y);

  // Editing the copy leaves the original alone.
  Node* crelu = copy->find_node("relu");
  crelu->op = OpKind::kTanh;
  crelu->name = "renamed";
  crelu->attrs["alpha"] = 0.5f;
  copy->find_node("add")->attrs["note"] = std::string("changed");
  copy->rename_value(copy->find_value("r"), "r_new");
  copy->find_value("x")->shape = {7, 3};
  copy->remove_nodes({copy->find_node("sig")});
  copy->remove_unused_values();

  EXPECT_EQ(ch.relu->op, OpKind::kRelu);
  EXPECT_EQ(ch.relu->name, "relu");
  EXPECT_FALSE(ch.relu->has_attr("alpha"));
  EXPECT_EQ(ch.add->attr_string("note", ""), "kept");
  EXPECT_EQ(ch.r->name, "r");
  EXPECT_EQ(ch.g.find_value("r"), ch.r);
  EXPECT_EQ(ch.g.find_value("r_new"), nullptr);
  EXPECT_EQ(ch.x->shape, (Shape{2, 3}));
  EXPECT_EQ(ch.g.node_count(), 3u);
  EXPECT_EQ(ch.y->producer, ch.sig);
  EXPECT_TRUE(verify(ch.g).ok());

  // The original still runs to the same answer as before the clone was edited.
  const Tensor x = random_tensor({2, 3}, 5);
  auto out = runtime::run_reference(ch.g, {{"x", x}});
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  for (int i = 0; i < 6; ++i) {
    const float e = 1.0f / (1.0f + std::exp(-(std::max(x.data<float>()[i], 0.0f) +
                                              ch.c->constant.data<float>()[i % 3])));
    EXPECT_NEAR(out->at("y").data<float>()[i], e, 1e-6) << i;
  }
}

// --- editing helpers
// ------------------------------------------------------------------------------------

TEST(GraphEdit, ReplaceAllUsesCoversNodeInputsAndGraphOutputs) {
  Chain ch;
  ch.g.outputs().push_back(ch.r);
  Value* other = ch.g.add_value("other", DType::kFloat32, {2, 3});
  ch.g.replace_all_uses(ch.r, other);
  EXPECT_EQ(ch.add->inputs[0], other);
  EXPECT_EQ(ch.g.outputs()[1], other);
  EXPECT_TRUE(ch.g.consumers(ch.r).empty());
  EXPECT_EQ(ch.g.consumers(other), std::vector<Node*>{ch.add});
}

TEST(GraphEdit, RemoveUnusedValuesDropsOnlyUnreferencedOnes) {
  Chain ch;
  ch.g.add_value("lonely", DType::kFloat32, {1});
  ch.g.add_constant("unused_weight", random_tensor({3}, 2));
  ch.g.remove_unused_values();
  EXPECT_EQ(ch.g.find_value("lonely"), nullptr);
  EXPECT_EQ(ch.g.find_value("unused_weight"), nullptr);
  for (const char* name : {"x", "c", "r", "a", "y"}) EXPECT_NE(ch.g.find_value(name), nullptr);
}

TEST(GraphEdit, UniqueNames) {
  Chain ch;
  EXPECT_EQ(ch.g.unique_value_name("fresh"), "fresh");
  EXPECT_EQ(ch.g.unique_value_name("a"), "a_1");
  ch.g.add_value("a_1", DType::kFloat32, {1});
  EXPECT_EQ(ch.g.unique_value_name("a"), "a_2");
  EXPECT_EQ(ch.g.unique_node_name("relu"), "relu_1");
  EXPECT_EQ(ch.g.unique_node_name("new_node"), "new_node");
}

TEST(GraphEdit, RenameValueUpdatesLookup) {
  Chain ch;
  ch.g.rename_value(ch.a, "renamed");
  EXPECT_EQ(ch.g.find_value("renamed"), ch.a);
  EXPECT_EQ(ch.g.find_value("a"), nullptr);
  EXPECT_TRUE(verify(ch.g).ok());
}

// --- node attributes and costs
// --------------------------------------------------------------------------

TEST(NodeAttrs, TypedAccessWithFallbacks) {
  Node n;
  n.op = OpKind::kConv;
  n.name = "c";
  n.attrs["group"] = int64_t(2);
  n.attrs["alpha"] = 0.25f;
  n.attrs["pads"] = std::vector<int64_t>{1, 2, 3, 4};
  n.attrs["auto_pad"] = std::string("SAME_UPPER");
  EXPECT_EQ(n.attr_int("group", 1), 2);
  EXPECT_EQ(n.attr_int("missing", 9), 9);
  EXPECT_EQ(n.attr_float("alpha", 1.0f), 0.25f);
  EXPECT_EQ(n.attr_float("group", 0.0f), 2.0f);
  EXPECT_EQ(n.attr_ints("pads"), (std::vector<int64_t>{1, 2, 3, 4}));
  EXPECT_EQ(n.attr_ints("group"), (std::vector<int64_t>{2}));
  EXPECT_EQ(n.attr_string("auto_pad", "NOTSET"), "SAME_UPPER");
  EXPECT_EQ(n.attr_string("pads", "fallback"), "fallback");  // wrong type: fallback
  EXPECT_EQ(n.attr_tensor("pads"), nullptr);
  EXPECT_EQ(n.describe(), "Conv 'c'");
}

TEST(NodeCost, ConvAndGemm) {
  Graph g;
  Value* x = g.add_value("x", DType::kFloat32, {kDynamicDim, 3, 8, 8});
  Value* w = g.add_constant("w", random_tensor({4, 3, 3, 3}, 1));
  Value* b = g.add_constant("b", random_tensor({4}, 2));
  Value* y = g.add_value("y", DType::kFloat32, {kDynamicDim, 4, 8, 8});
  Node* conv = g.add_node(OpKind::kConv, "conv", {x, w, b}, {y});
  const NodeCost cc = node_cost(*conv);
  EXPECT_EQ(cc.params, 4 * 3 * 3 * 3 + 4);
  EXPECT_EQ(cc.macs, 4 * 8 * 8 * 27);
  EXPECT_EQ(cc.flops, 2 * cc.macs + 4 * 8 * 8);

  Value* a = g.add_value("a", DType::kFloat32, {kDynamicDim, 16});
  Value* wb = g.add_constant("wb", random_tensor({10, 16}, 3));
  Value* o = g.add_value("o", DType::kFloat32, {kDynamicDim, 10});
  Node* gemm = g.add_node(OpKind::kGemm, "gemm", {a, wb}, {o});
  const NodeCost gc = node_cost(*gemm);
  EXPECT_EQ(gc.params, 160);
  EXPECT_EQ(gc.macs, 160);
  EXPECT_EQ(gc.flops, 320);
}

// Execution fusion keeps the cost: a convolution that pools its output computed the pool's
// inputs; a chained convolution or linear layer counts both layers.
TEST(NodeCost, FusedPoolsAndChains) {
  Graph g;
  Value* x = g.add_value("x", DType::kFloat32, {kDynamicDim, 1, 28, 28});
  Value* w1 = g.add_constant("w1", random_tensor({20, 1, 5, 5}, 1));
  Value* w2 = g.add_constant("w2", random_tensor({50, 20, 5, 5}, 2));
  Value* pooled = g.add_value("p", DType::kFloat32, {kDynamicDim, 20, 12, 12});
  Node* conv = g.add_node(OpKind::kFusedConv, "conv", {x, w1}, {pooled});
  conv->attrs["mixq.pool"] = std::vector<int64_t>{2, 2};
  EXPECT_EQ(node_cost(*conv).macs, 20 * 24 * 24 * 25);

  Value* y = g.add_value("y", DType::kFloat32, {kDynamicDim, 50, 4, 4});
  Node* chain = g.add_node(OpKind::kFusedConv, "chain", {x, w1, nullptr, nullptr, w2}, {y});
  chain->attrs["mixq.pool"] = std::vector<int64_t>{2, 2};
  chain->attrs[std::string(kChainThenPrefix) + "mixq.pool"] = std::vector<int64_t>{2, 2};
  chain->attrs[kChainMidShapeAttr] = std::vector<int64_t>{20, 12, 12};
  EXPECT_EQ(node_cost(*chain).macs, 20 * 24 * 24 * 25 + 50 * 8 * 8 * 500);

  Value* h = g.add_value("h", DType::kFloat32, {kDynamicDim, 800});
  Value* fc1 = g.add_constant("fc1", random_tensor({500, 800}, 3));
  Value* fc2 = g.add_constant("fc2", random_tensor({10, 500}, 4));
  Value* o = g.add_value("o", DType::kFloat32, {kDynamicDim, 10});
  Node* head = g.add_node(OpKind::kFusedGemm, "head", {h, fc1, nullptr, nullptr, fc2}, {o});
  EXPECT_EQ(node_cost(*head).macs, 500 * 800 + 10 * 500);
  EXPECT_EQ(node_cost(*head).params, 500 * 800 + 10 * 500);
}

}  // namespace
}  // namespace mixq::ir
