#include "ir/graph.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <unordered_map>
#include <unordered_set>

namespace mixq::ir {

bool Value::has_static_shape() const {
  if (!shape_known) return false;
  return std::all_of(shape.begin(), shape.end(), [](int64_t d) { return d >= 0; });
}

std::string_view layout_name(Layout layout) {
  switch (layout) {
    case Layout::kPlain:
      return "plain";
    case Layout::kNHWC:
      return "nhwc";
    case Layout::kBlocked8:
      return "nChw8c";
    case Layout::kBlocked16:
      return "nChw16c";
  }
  return "?";
}

// --- Node attributes
// ------------------------------------------------------------------------------

int64_t Node::attr_int(const std::string& key, int64_t fallback) const {
  auto it = attrs.find(key);
  if (it == attrs.end()) return fallback;
  if (auto* v = std::get_if<int64_t>(&it->second)) return *v;
  if (auto* f = std::get_if<float>(&it->second)) return int64_t(*f);
  return fallback;
}

float Node::attr_float(const std::string& key, float fallback) const {
  auto it = attrs.find(key);
  if (it == attrs.end()) return fallback;
  if (auto* v = std::get_if<float>(&it->second)) return *v;
  if (auto* i = std::get_if<int64_t>(&it->second)) return float(*i);
  return fallback;
}

std::string Node::attr_string(const std::string& key, const std::string& fallback) const {
  auto it = attrs.find(key);
  if (it == attrs.end()) return fallback;
  if (auto* v = std::get_if<std::string>(&it->second)) return *v;
  return fallback;
}

std::vector<int64_t> Node::attr_ints(const std::string& key,
                                     const std::vector<int64_t>& fallback) const {
  auto it = attrs.find(key);
  if (it == attrs.end()) return fallback;
  if (auto* v = std::get_if<std::vector<int64_t>>(&it->second)) return *v;
  if (auto* i = std::get_if<int64_t>(&it->second)) return {*i};
  return fallback;
}

std::vector<float> Node::attr_floats(const std::string& key,
                                     const std::vector<float>& fallback) const {
  auto it = attrs.find(key);
  if (it == attrs.end()) return fallback;
  if (auto* v = std::get_if<std::vector<float>>(&it->second)) return *v;
  if (auto* f = std::get_if<float>(&it->second)) return {*f};
  return fallback;
}

const Tensor* Node::attr_tensor(const std::string& key) const {
  auto it = attrs.find(key);
  if (it == attrs.end()) return nullptr;
  return std::get_if<Tensor>(&it->second);
}

std::string Node::describe() const {
  return std::string(op_name(op)) + " '" + name + "'";
}

// --- Graph construction
// ---------------------------------------------------------------------------

Value* Graph::add_value(std::string name, DType dtype, Shape shape, bool shape_known) {
  auto v = std::make_unique<Value>();
  v->name = std::move(name);
  v->dtype = dtype;
  v->shape = std::move(shape);
  v->shape_known = shape_known;
  Value* raw = v.get();
  if (!raw->name.empty()) value_by_name_[raw->name] = raw;
  values_.push_back(std::move(v));
  return raw;
}

Value* Graph::add_constant(std::string name, Tensor tensor) {
  Value* v = add_value(std::move(name), tensor.dtype(), tensor.shape(), true);
  v->constant = std::move(tensor);
  return v;
}

Node* Graph::add_node(OpKind op, std::string name, std::vector<Value*> inputs,
                      std::vector<Value*> outputs) {
  auto n = std::make_unique<Node>();
  n->op = op;
  n->name = std::move(name);
  n->inputs = std::move(inputs);
  n->outputs = std::move(outputs);
  for (Value* out : n->outputs)
    if (out) out->producer = n.get();
  Node* raw = n.get();
  nodes_.push_back(std::move(n));
  return raw;
}

std::string Graph::unique_value_name(const std::string& base) const {
  if (!value_by_name_.count(base)) return base;
  for (int i = 1;; ++i) {
    std::string candidate = base + "_" + std::to_string(i);
    if (!value_by_name_.count(candidate)) return candidate;
  }
}

std::string Graph::unique_node_name(const std::string& base) const {
  std::unordered_set<std::string> names;
  for (const auto& n : nodes_) names.insert(n->name);
  if (!names.count(base)) return base;
  for (int i = 1;; ++i) {
    std::string candidate = base + "_" + std::to_string(i);
    if (!names.count(candidate)) return candidate;
  }
}

// --- access
// ---------------------------------------------------------------------------------------

std::vector<Node*> Graph::nodes() const {
  std::vector<Node*> out;
  out.reserve(nodes_.size());
  for (const auto& n : nodes_) out.push_back(n.get());
  return out;
}

std::vector<Value*> Graph::values() const {
  std::vector<Value*> out;
  out.reserve(values_.size());
  for (const auto& v : values_) out.push_back(v.get());
  return out;
}

Value* Graph::find_value(const std::string& name) const {
  auto it = value_by_name_.find(name);
  return it == value_by_name_.end() ? nullptr : it->second;
}

Node* Graph::find_node(const std::string& name) const {
  for (const auto& n : nodes_)
    if (n->name == name) return n.get();
  return nullptr;
}

std::vector<Node*> Graph::consumers(const Value* value) const {
  std::vector<Node*> out;
  for (const auto& n : nodes_)
    if (std::find(n->inputs.begin(), n->inputs.end(), value) != n->inputs.end())
      out.push_back(n.get());
  return out;
}

bool Graph::is_graph_output(const Value* value) const {
  return std::find(outputs_.begin(), outputs_.end(), value) != outputs_.end();
}

bool Graph::is_graph_input(const Value* value) const {
  return std::find(inputs_.begin(), inputs_.end(), value) != inputs_.end();
}

// --- editing
// --------------------------------------------------------------------------------------

void Graph::rename_value(Value* value, const std::string& new_name) {
  auto it = value_by_name_.find(value->name);
  if (it != value_by_name_.end() && it->second == value) value_by_name_.erase(it);
  value->name = new_name;
  value_by_name_[new_name] = value;
}

void Graph::replace_all_uses(Value* from, Value* to) {
  for (auto& n : nodes_)
    for (auto& in : n->inputs)
      if (in == from) in = to;
  for (auto& out : outputs_)
    if (out == from) out = to;
}

void Graph::remove_nodes(const std::vector<Node*>& doomed) {
  std::unordered_set<const Node*> set(doomed.begin(), doomed.end());
  for (const auto& n : nodes_)
    if (set.count(n.get()))
      for (Value* out : n->outputs)
        if (out && out->producer == n.get()) out->producer = nullptr;
  std::erase_if(nodes_, [&](const std::unique_ptr<Node>& n) { return set.count(n.get()) != 0; });
}

void Graph::remove_unused_values() {
  std::unordered_set<const Value*> used(inputs_.begin(), inputs_.end());
  used.insert(outputs_.begin(), outputs_.end());
  for (const auto& n : nodes_) {
    used.insert(n->inputs.begin(), n->inputs.end());
    used.insert(n->outputs.begin(), n->outputs.end());
  }
  std::erase_if(values_, [&](const std::unique_ptr<Value>& v) {
    if (used.count(v.get())) return false;
    auto it = value_by_name_.find(v->name);
    if (it != value_by_name_.end() && it->second == v.get()) value_by_name_.erase(it);
    return true;
  });
}

Status Graph::toposort() {
  std::unordered_map<const Node*, size_t> pending;  // unresolved producer inputs per node
  std::unordered_map<const Value*, std::vector<Node*>> users;
  for (const auto& n : nodes_) {
    size_t count = 0;
    for (Value* in : n->inputs) {
      if (in && in->producer) {
        ++count;
        users[in].push_back(n.get());
      }
    }
    pending[n.get()] = count;
  }
  std::vector<Node*> ready;
  for (const auto& n : nodes_)
    if (pending[n.get()] == 0) ready.push_back(n.get());
  std::vector<Node*> order;
  order.reserve(nodes_.size());
  // Process in original order where possible for stable, readable output.
  std::unordered_map<const Node*, size_t> position;
  for (size_t i = 0; i < nodes_.size(); ++i) position[nodes_[i].get()] = i;
  auto by_position = [&](Node* a, Node* b) { return position[a] > position[b]; };
  std::make_heap(ready.begin(), ready.end(), by_position);
  while (!ready.empty()) {
    std::pop_heap(ready.begin(), ready.end(), by_position);
    Node* n = ready.back();
    ready.pop_back();
    order.push_back(n);
    for (Value* out : n->outputs) {
      if (!out) continue;
      auto it = users.find(out);
      if (it == users.end()) continue;
      for (Node* user : it->second) {
        if (--pending[user] == 0) {
          ready.push_back(user);
          std::push_heap(ready.begin(), ready.end(), by_position);
        }
      }
    }
  }
  if (order.size() != nodes_.size()) {
    std::string names;
    int listed = 0;
    for (const auto& n : nodes_) {
      if (pending[n.get()] == 0) continue;
      if (listed++ < 8) names += (names.empty() ? "" : ", ") + n->describe();
    }
    return InvalidArgument("the graph has a cycle through " + std::to_string(listed) +
                           " node(s): " + names);
  }
  std::vector<std::unique_ptr<Node>> sorted;
  sorted.reserve(nodes_.size());
  for (Node* n : order) {
    auto it = std::find_if(nodes_.begin(), nodes_.end(),
                           [&](const std::unique_ptr<Node>& p) { return p.get() == n; });
    sorted.push_back(std::move(*it));
  }
  nodes_ = std::move(sorted);
  return Status::Ok();
}

std::unique_ptr<Graph> Graph::clone() const {
  auto g = std::make_unique<Graph>();
  g->name = name;
  g->opset = opset;
  g->producer = producer;
  std::unordered_map<const Value*, Value*> vmap;
  vmap[nullptr] = nullptr;
  for (const auto& v : values_) {
    Value* c = g->add_value(v->name, v->dtype, v->shape, v->shape_known);
    c->constant = v->constant;  // constants are immutable once in the graph: share storage
    c->quant = v->quant;
    c->layout = v->layout;
    vmap[v.get()] = c;
  }
  for (const auto& n : nodes_) {
    std::vector<Value*> ins, outs;
    for (Value* in : n->inputs) ins.push_back(vmap.at(in));
    for (Value* out : n->outputs) outs.push_back(vmap.at(out));
    Node* c = g->add_node(n->op, n->name, std::move(ins), std::move(outs));
    c->module_name = n->module_name;
    c->attrs = n->attrs;
    c->precision = n->precision;
  }
  for (Value* in : inputs_) g->inputs_.push_back(vmap.at(in));
  for (Value* out : outputs_) g->outputs_.push_back(vmap.at(out));
  return g;
}

// --- verifier
// -------------------------------------------------------------------------------------

Status verify(const Graph& graph) {
  const auto nodes = graph.nodes();
  const auto values = graph.values();
  std::unordered_set<const Value*> known(values.begin(), values.end());
  std::unordered_map<const Value*, const Node*> producer;
  std::unordered_set<std::string> value_names, node_names;
  for (const Value* v : values) {
    if (v->name.empty()) return Internal("a value has no name");
    if (!value_names.insert(v->name).second)
      return InvalidArgument("two values are both named '" + v->name + "'");
  }
  for (const Node* n : nodes) {
    if (!node_names.insert(n->name).second)
      return InvalidArgument("two nodes are both named '" + n->name + "'");
    const OpInfo& info = op_info(n->op);
    const int nin = int(n->inputs.size()), nout = int(n->outputs.size());
    if (nin < info.min_inputs || nin > info.max_inputs)
      return InvalidArgument(
          n->describe() + " has " + std::to_string(nin) + " inputs; " + std::string(info.name) +
          " takes " + std::to_string(info.min_inputs) +
          (info.max_inputs == info.min_inputs
               ? ""
               : " to " + (info.max_inputs > 1000 ? std::string("any number")
                                                  : std::to_string(info.max_inputs))));
    if (nout < info.min_outputs || nout > info.max_outputs)
      return InvalidArgument(n->describe() + " has " + std::to_string(nout) + " outputs; " +
                             std::string(info.name) + " gives " + std::to_string(info.min_outputs) +
                             " to " + std::to_string(info.max_outputs));
    if (!n->outputs.empty() && n->outputs[0] == nullptr)
      return InvalidArgument(n->describe() + " has no first output");
    for (const Value* out : n->outputs) {
      if (!out) continue;
      if (!known.count(out)) return Internal(n->describe() + " writes a value not in the graph");
      if (out->is_constant())
        return InvalidArgument(n->describe() + " writes '" + out->name +
                               "', which is a constant (initializer)");
      if (!producer.emplace(out, n).second)
        return InvalidArgument("value '" + out->name + "' is written by both " +
                               producer[out]->describe() + " and " + n->describe());
      if (out->producer != n)
        return Internal("value '" + out->name + "' does not record its producer " + n->describe());
    }
  }
  std::unordered_set<const Value*> inputs(graph.inputs().begin(), graph.inputs().end());
  for (const Value* in : graph.inputs())
    if (producer.count(in))
      return InvalidArgument("graph input '" + in->name + "' is also written by " +
                             producer[in]->describe());
  for (const Node* n : nodes) {
    for (size_t i = 0; i < n->inputs.size(); ++i) {
      const Value* in = n->inputs[i];
      if (!in) continue;
      if (!known.count(in)) return Internal(n->describe() + " reads a value not in the graph");
      if (!in->is_constant() && !producer.count(in) && !inputs.count(in))
        return InvalidArgument(n->describe() + " input " + std::to_string(i) + " '" + in->name +
                               "' is dangling: no node, graph input or initializer provides it");
    }
  }
  for (const Value* out : graph.outputs()) {
    if (!out) return InvalidArgument("a graph output is missing");
    if (!out->is_constant() && !producer.count(out) && !inputs.count(out))
      return InvalidArgument("graph output '" + out->name + "' is produced by no node");
  }
  // Cycle check: Kahn over the producer relation.
  std::unordered_map<const Node*, int> pending;
  std::unordered_map<const Value*, std::vector<const Node*>> users;
  for (const Node* n : nodes) {
    int count = 0;
    for (const Value* in : n->inputs)
      if (in && producer.count(in)) {
        ++count;
        users[in].push_back(n);
      }
    pending[n] = count;
  }
  std::vector<const Node*> ready;
  for (const Node* n : nodes)
    if (pending[n] == 0) ready.push_back(n);
  size_t done = 0;
  while (!ready.empty()) {
    const Node* n = ready.back();
    ready.pop_back();
    ++done;
    for (const Value* out : n->outputs) {
      if (!out) continue;
      for (const Node* user : users[out])
        if (--pending[user] == 0) ready.push_back(user);
    }
  }
  if (done != nodes.size()) {
    std::string names;
    int listed = 0;
    for (const Node* n : nodes)
      if (pending[n] > 0 && listed++ < 8) names += (names.empty() ? "" : ", ") + n->describe();
    return InvalidArgument("the graph has a cycle through: " + names);
  }
  return Status::Ok();
}

// --- cost
// -----------------------------------------------------------------------------------------

NodeCost node_cost(const Node& node) {
  NodeCost cost;
  for (const Value* in : node.inputs)
    if (in && in->is_constant() && in->dtype != DType::kInt64) cost.params += in->constant.numel();
  auto numel_batch1 = [](const Value* v) -> int64_t {
    if (!v || !v->shape_known) return 0;
    int64_t n = 1;
    for (int64_t d : v->shape) n *= d < 0 ? 1 : d;
    return n;
  };
  const Value* out = node.output(0);
  const int64_t out_elems = numel_batch1(out);
  switch (node.op) {
    case OpKind::kConv:
    case OpKind::kFusedConv: {
      // C/group * kernel elements per output of a weights tensor [K, C/group, kernel...].
      auto per_output = [](const Value* w) -> int64_t {
        if (!w || !w->shape_known || w->shape.size() < 2) return 0;
        int64_t n = 1;
        for (size_t i = 1; i < w->shape.size(); ++i) n *= w->shape[i];
        return n;
      };
      // A fused max pool (execution fusion): the convolution computed pool_h * pool_w outputs for
      // each output (the rows and columns a floor drops not counted).
      auto pooled = [](const Node& n, const std::string& key) -> int64_t {
        const std::vector<int64_t> window = n.attr_ints(key, {});
        return window.size() == 2 ? window[0] * window[1] : 1;
      };
      if (node.op == OpKind::kFusedConv && node.input(4)) {
        // A chained second convolution (ops.def): the first's into the intermediate, then its.
        const std::vector<int64_t> mid = node.attr_ints(kChainMidShapeAttr, {});
        int64_t mid_elems = 0;
        if (mid.size() == 3) mid_elems = mid[0] * mid[1] * mid[2];
        cost.macs = mid_elems * pooled(node, "mixq.pool") * per_output(node.input(1)) +
                    out_elems * pooled(node, std::string(kChainThenPrefix) + "mixq.pool") *
                        per_output(node.input(4));
        cost.flops =
            2 * cost.macs + (node.input(2) ? mid_elems : 0) + (node.input(5) ? out_elems : 0);
        break;
      }
      const int64_t computed = out_elems * pooled(node, "mixq.pool");
      cost.macs = computed * per_output(node.input(1));
      cost.flops = 2 * cost.macs + (node.input(2) ? computed : 0);
      break;
    }
    case OpKind::kGemm:
    case OpKind::kFusedGemm:
    case OpKind::kMatMul: {
      const Value* a = node.input(0);
      if (a && a->shape_known && !a->shape.empty()) {
        int64_t k = a->shape.back();
        if (node.op == OpKind::kGemm && node.attr_int("transA", 0)) k = a->shape[0];
        // A fused layer's weights are [N, K] (its input may be 4-D, flattened by the layer).
        const Value* w = node.input(1);
        if (node.op == OpKind::kFusedGemm && w && w->is_constant() && w->constant.rank() == 2)
          k = w->constant.dim(1);
        cost.macs = out_elems * (k < 0 ? 1 : k);
        // A chained second layer (ops.def): rows x n1 x k, then rows x n2 x n1.
        const Value* w2 = node.input(4);
        if (node.op == OpKind::kFusedGemm && w2 && w2->is_constant() && w2->constant.rank() == 2 &&
            w2->constant.dim(0) > 0 && w && w->is_constant() && w->constant.rank() == 2) {
          const int64_t rows = out_elems / w2->constant.dim(0), n1 = w->constant.dim(0);
          cost.macs = rows * n1 * (k < 0 ? 1 : k) + rows * w2->constant.dim(0) * n1;
        }
      }
      cost.flops = 2 * cost.macs;
      break;
    }
    default:
      cost.flops = out_elems;
      break;
  }
  return cost;
}

Expected<ConvChainParts> split_conv_chain(const Node& chained) {
  const Value* x = chained.input(0);
  const std::optional<DType> mid_dtype =
      dtype_from_name(chained.attr_string(kChainMidDtypeAttr, ""));
  const std::vector<int64_t> mid_shape = chained.attr_ints(kChainMidShapeAttr, {});
  if (chained.op != OpKind::kFusedConv || !x || !chained.input(4) || !chained.output(0) ||
      !mid_dtype || mid_shape.size() != 3)
    return InvalidArgument(chained.describe() + ": a chained convolution needs the second's " +
                           "weights (input 4), " + kChainMidDtypeAttr + " and " +
                           kChainMidShapeAttr + " (C, H, W)");
  ConvChainParts c;
  c.mid = std::make_unique<Value>();
  Value& mid = *c.mid;
  mid.name = chained.name + "/chained";
  mid.dtype = *mid_dtype;
  mid.shape_known = x->shape_known && !x->shape.empty();
  if (mid.shape_known) mid.shape = {x->shape[0], mid_shape[0], mid_shape[1], mid_shape[2]};
  mid.layout = chained.output(0)->layout;
  if (chained.has_attr(kChainMidScaleAttr)) {
    QuantParams q;
    q.dtype = *mid_dtype;
    q.scale = {chained.attr_float(kChainMidScaleAttr, 0.0f)};
    if (!(q.scale[0] > 0.0f) || !std::isfinite(q.scale[0]))
      return InvalidArgument(chained.describe() + ": " + kChainMidScaleAttr + " must be positive");
    mid.quant = q;
  }
  c.first.op = c.second.op = OpKind::kFusedConv;
  c.first.name = chained.name;
  c.first.module_name = chained.module_name;
  c.first.inputs = {chained.inputs[0], chained.input(1), chained.input(2)};
  c.first.outputs = {c.mid.get()};
  c.second.name = chained.attr_string(kChainNameAttr, chained.name + " (second)");
  c.second.module_name = chained.attr_string(kChainModuleAttr, "");
  c.second.inputs = {c.mid.get(), chained.input(4), chained.input(5)};
  c.second.outputs = {chained.output(0)};
  c.first.precision = c.second.precision = chained.precision;
  const std::string then = kChainThenPrefix, own = kChainAttrPrefix;
  for (const auto& [key, value] : chained.attrs) {
    if (key.rfind(then, 0) == 0)
      c.second.attrs[key.substr(then.size())] = value;
    else if (key.rfind(own, 0) != 0)
      c.first.attrs[key] = value;
  }
  return c;
}

}  // namespace mixq::ir
