#include "runtime/interpreter.h"

#include <unordered_map>

#include "backends/reference/reference.h"

namespace mixq::runtime {

Status check_inputs(const ir::Graph& graph, const TensorMap& inputs, const std::string& owner,
                    const std::string& batch_hint) {
  std::string expected_names;
  for (const ir::Value* in : graph.inputs())
    expected_names += (expected_names.empty() ? "'" : ", '") + in->name + "'";
  for (const auto& [name, tensor] : inputs) {
    const ir::Value* v = graph.find_value(name);
    if (!v || !graph.is_graph_input(v))
      return NotFound("the " + owner + " has no input named '" + name + "'; its inputs are " +
                      expected_names);
  }
  for (const ir::Value* in : graph.inputs()) {
    auto it = inputs.find(in->name);
    if (it == inputs.end()) return InvalidArgument("input '" + in->name + "' is not given");
    const Tensor& t = it->second;
    if (!t.defined()) return InvalidArgument("input '" + in->name + "' is empty");
    if (t.dtype() != in->dtype)
      return InvalidArgument("input '" + in->name + "' has dtype " +
                             std::string(dtype_name(t.dtype())) + "; the " + owner + " expects " +
                             std::string(dtype_name(in->dtype)));
    if (!in->shape_known) continue;
    bool match = t.rank() == int(in->shape.size());
    for (size_t i = 0; match && i < in->shape.size(); ++i)
      match = in->shape[i] < 0 || in->shape[i] == t.shape()[i];
    if (!match)
      return InvalidArgument("input '" + in->name + "' has shape " + shape_to_string(t.shape()) +
                             "; the " + owner + " expects " + shape_to_string(in->shape) +
                             " (N: " + batch_hint + ")");
  }
  return Status::Ok();
}

Expected<TensorMap> run_reference(const ir::Graph& graph, const TensorMap& inputs,
                                  const InterpreterOptions& options) {
  MIXQ_RETURN_IF_ERROR(check_inputs(graph, inputs));
  const auto nodes = graph.nodes();
  // Free each value after its last reader to bound memory on large models.
  std::unordered_map<const ir::Value*, size_t> last_use;
  for (size_t i = 0; i < nodes.size(); ++i)
    for (const ir::Value* in : nodes[i]->inputs)
      if (in) last_use[in] = i;
  std::unordered_map<const ir::Value*, Tensor> live;
  for (const ir::Value* in : graph.inputs()) live[in] = inputs.at(in->name);
  TensorMap result;
  auto lookup = [&](const ir::Value* v) -> Tensor {
    if (!v) return Tensor();
    if (v->is_constant()) return v->constant;
    auto it = live.find(v);
    return it == live.end() ? Tensor() : it->second;
  };
  std::vector<Tensor> args, outs;
  for (size_t i = 0; i < nodes.size(); ++i) {
    const ir::Node& node = *nodes[i];
    args.clear();
    for (const ir::Value* in : node.inputs) {
      Tensor t = lookup(in);
      if (in && !t.defined())
        return Internal(node.describe() + " reads '" + in->name + "' before it is computed");
      args.push_back(std::move(t));
    }
    MIXQ_RETURN_IF_ERROR(reference::run_node(node, args, outs));
    if (options.on_node_output) MIXQ_RETURN_IF_ERROR(options.on_node_output(node, outs));
    for (size_t k = 0; k < node.outputs.size(); ++k) {
      const ir::Value* out = node.outputs[k];
      if (!out) continue;
      if (options.keep_intermediates) result[out->name] = outs[k];
      live[out] = std::move(outs[k]);
    }
    for (const ir::Value* in : node.inputs) {
      if (!in || graph.is_graph_output(in) || graph.is_graph_input(in)) continue;
      auto it = last_use.find(in);
      if (it != last_use.end() && it->second == i) live.erase(in);
    }
  }
  for (const ir::Value* out : graph.outputs()) {
    Tensor t = lookup(out);
    if (!t.defined()) return Internal("graph output '" + out->name + "' was never computed");
    result[out->name] = t;
  }
  return result;
}

}  // namespace mixq::runtime

namespace mixq::runtime {

Status simplify_graph(ir::Graph& graph, const ir::SimplifyOptions& options) {
  auto evaluate = [](const ir::Node& node, std::span<const Tensor> inputs,
                     std::vector<Tensor>& outputs) {
    return reference::run_node(node, inputs, outputs);
  };
  auto refresh = [](ir::Node& node) {
    Status s = infer_node_shapes(node);  // best effort: a data-dependent shape stays as it was
    (void)s;
  };
  return ir::simplify(graph, evaluate, refresh, options);
}

Status infer_node_shapes(ir::Node& node) {
  std::vector<reference::TensorInfo> ins, outs;
  for (const ir::Value* in : node.inputs) {
    if (!in) {
      ins.push_back({});
      continue;
    }
    if (!in->shape_known)
      return Unsupported(node.describe() + ": the shape of input '" + in->name +
                         "' is unknown at build time");
    ins.push_back({true, in->dtype, in->shape, in->is_constant() ? &in->constant : nullptr});
  }
  MIXQ_RETURN_IF_ERROR(reference::infer_node(node, ins, outs));
  for (size_t k = 0; k < node.outputs.size(); ++k) {
    ir::Value* out = node.outputs[k];
    if (!out || !outs[k].present) continue;
    out->dtype = outs[k].dtype;
    out->shape = outs[k].shape;
    out->shape_known = true;
  }
  return Status::Ok();
}

Status infer_shapes(ir::Graph& graph, int64_t batch) {
  if (batch > 0) {
    for (ir::Value* in : graph.inputs())
      if (in->shape_known && !in->shape.empty() && in->shape[0] < 0) in->shape[0] = batch;
  }
  // Keeps going past a node it cannot infer (its outputs keep what they had), so one
  // data-dependent shape does not hide every later one; returns the first problem.
  Status first_error;
  for (ir::Node* node : graph.nodes()) {
    Status s = infer_node_shapes(*node);
    if (!s.ok() && first_error.ok()) first_error = s;
  }
  return first_error;
}

}  // namespace mixq::runtime
