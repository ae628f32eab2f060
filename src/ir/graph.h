// The IR: a Graph owns Values (typed, shaped edges, maybe constant, maybe quantised) and Nodes
// (one op each). Nothing here knows ONNX or any backend.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "ir/op.h"
#include "mixq/precision.h"
#include "mixq/status.h"
#include "mixq/tensor.h"

namespace mixq::ir {

// Dimension value for a symbolic (run-time) size, such as the batch.
inline constexpr int64_t kDynamicDim = -1;

// Quantisation parameters carried by a value: real = (q - zero_point) * scale.
// Per-tensor when scale has one element, else per channel along `axis`.
struct QuantParams {
  DType dtype = DType::kInt8;  // i8, u8 or f8e4m3
  std::vector<float> scale;
  std::vector<int32_t> zero_point;  // empty means zero
  int axis = 1;

  bool per_tensor() const { return scale.size() == 1; }
  int32_t zero_point_at(size_t i) const {
    return zero_point.empty() ? 0 : zero_point[zero_point.size() == 1 ? 0 : i];
  }
};

using Attribute = std::variant<int64_t, float, std::string, std::vector<int64_t>,
                               std::vector<float>, std::vector<std::string>, Tensor>;

class Node;

// Physical layout of a 4-D (or 3-D/5-D) activation; shapes stay logical (N, C, spatial...).
enum class Layout : uint8_t {
  kPlain,      // row-major as ONNX: NCHW
  kNHWC,       // channels last
  kBlocked8,   // nChw8c: channels in blocks of 8 (padded)
  kBlocked16,  // nChw16c
};
std::string_view layout_name(Layout layout);

class Value {
 public:
  std::string name;
  DType dtype = DType::kFloat32;
  Shape shape;  // kDynamicDim marks a symbolic dimension
  bool shape_known = false;
  Tensor constant;  // defined for initializers and folded constants
  std::optional<QuantParams> quant;
  Layout layout = Layout::kPlain;
  Node* producer = nullptr;

  bool is_constant() const { return constant.defined(); }
  bool has_static_shape() const;
};

class Node {
 public:
  OpKind op{};
  std::string name;            // unique within the graph
  std::string module_name;     // the framework module it came from ("layer1.0.conv1"), may be empty
  std::vector<Value*> inputs;  // nullptr marks an absent optional input
  std::vector<Value*> outputs;  // nullptr marks an absent optional output
  std::map<std::string, Attribute> attrs;
  std::optional<Precision> precision;  // set by the precision planner

  Value* input(size_t i) const { return i < inputs.size() ? inputs[i] : nullptr; }
  Value* output(size_t i) const { return i < outputs.size() ? outputs[i] : nullptr; }
  bool has_attr(const std::string& key) const { return attrs.count(key) != 0; }

  int64_t attr_int(const std::string& key, int64_t fallback) const;
  float attr_float(const std::string& key, float fallback) const;
  std::string attr_string(const std::string& key, const std::string& fallback) const;
  std::vector<int64_t> attr_ints(const std::string& key,
                                 const std::vector<int64_t>& fallback = {}) const;
  std::vector<float> attr_floats(const std::string& key,
                                 const std::vector<float>& fallback = {}) const;
  const Tensor* attr_tensor(const std::string& key) const;

  // "Conv 'layer1.0.conv1/Conv'" for messages.
  std::string describe() const;
};

class Graph {
 public:
  Graph() = default;
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

  std::string name;
  int opset = 0;
  std::string producer;

  // --- construction -----------------------------------------------------------------------------
  Value* add_value(std::string name, DType dtype, Shape shape, bool shape_known = true);
  Value* add_constant(std::string name, Tensor tensor);
  Node* add_node(OpKind op, std::string name, std::vector<Value*> inputs,
                 std::vector<Value*> outputs);
  // A name not used by any value yet, built from `base`.
  std::string unique_value_name(const std::string& base) const;
  std::string unique_node_name(const std::string& base) const;

  std::vector<Value*>& inputs() { return inputs_; }
  const std::vector<Value*>& inputs() const { return inputs_; }
  std::vector<Value*>& outputs() { return outputs_; }
  const std::vector<Value*>& outputs() const { return outputs_; }

  // --- access
  // ------------------------------------------------------------------------------------- Nodes in
  // their current order (topological after toposort()).
  std::vector<Node*> nodes() const;
  std::vector<Value*> values() const;
  size_t node_count() const { return nodes_.size(); }
  Value* find_value(const std::string& name) const;
  Node* find_node(const std::string& name) const;
  std::vector<Node*> consumers(const Value* value) const;
  bool is_graph_output(const Value* value) const;
  bool is_graph_input(const Value* value) const;

  // --- editing
  // ------------------------------------------------------------------------------------ Give a
  // value a new name (must be unused).
  void rename_value(Value* value, const std::string& new_name);
  // Point every use of `from` (node inputs and graph outputs) at `to`.
  void replace_all_uses(Value* from, Value* to);
  // Remove nodes (their outputs stay as values until remove_unused_values()).
  void remove_nodes(const std::vector<Node*>& nodes);
  // Drop values that no node, input or output refers to.
  void remove_unused_values();
  // Order nodes so that producers come before consumers; fails on a cycle, naming its nodes.
  Status toposort();

  std::unique_ptr<Graph> clone() const;

 private:
  std::vector<std::unique_ptr<Value>> values_;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::vector<Value*> inputs_;
  std::vector<Value*> outputs_;
  std::map<std::string, Value*> value_by_name_;
};

// Checks structure: arities, every input produced once, no cycle, outputs produced, unique names.
Status verify(const Graph& graph);

// Total MACs/FLOPs and parameter counts; used by `inspect`.
struct NodeCost {
  int64_t macs = 0;    // multiply-accumulates at batch 1 (symbolic dims counted as 1)
  int64_t flops = 0;   // floating-point operations (2 per MAC, 1 per elementwise op)
  int64_t params = 0;  // elements of constant inputs
};
NodeCost node_cost(const Node& node);

// A FusedConv chained with a second convolution (ops.def) as the two convolutions it runs: nodes
// of their own, the chained node's inputs and attributes split between them, and the value between
// them (its dtype, grid and shape from the kChain* attributes, the chained output's layout).
struct ConvChainParts {
  Node first, second;
  std::unique_ptr<Value> mid;
};
Expected<ConvChainParts> split_conv_chain(const Node& chained);

}  // namespace mixq::ir
