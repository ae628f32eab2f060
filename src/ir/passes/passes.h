// Graph-to-graph passes. Each returns Ok when it changed nothing it should not have; `changed`
// reports whether it rewrote anything (passes run to a fixpoint in simplify()).
#pragma once

#include <functional>
#include <span>
#include <vector>

#include "ir/graph.h"

namespace mixq::ir {

// Computes one node on known tensors. The reference backend provides it (ir/ knows no backend).
using NodeEvaluator = std::function<Status(const Node& node, std::span<const Tensor> inputs,
                                           std::vector<Tensor>& outputs)>;

// Identity, and Dropout in inference (its mask unused), forward their input.
Status remove_identities(Graph& graph, bool* changed = nullptr);

// Evaluates nodes whose inputs are all constant, and shape arithmetic: Shape of a value with a
// static shape, and Shape -> Gather/Slice/Unsqueeze/Squeeze/Concat/Cast chains. Where such a
// chain carries the symbolic batch into a Reshape, the target becomes 0 (copy) or -1 (infer) so
// the Reshape no longer depends on run-time shape arithmetic. QuantizeLinear/DequantizeLinear are
// never folded: they carry the quantisation of Q/DQ models.
// `refresh_shapes`, when given, recomputes a node's output shapes from its inputs (the reference
// backend's shape functions); it runs on every node in order, so shapes that ONNX's inference
// could not know (behind an earlier fold) are known by the time a Reshape needs them.
using ShapeRefresher = std::function<void(Node& node)>;
Status fold_constants(Graph& graph, const NodeEvaluator& evaluate,
                      const ShapeRefresher& refresh_shapes = nullptr, bool* changed = nullptr);

// BatchNormalization after Conv or Gemm (whose output feeds nothing else) folds into the
// weights and bias of that layer.
Status fold_batchnorm(Graph& graph, bool* changed = nullptr);

// Removes nodes whose outputs nothing reads, then unused values.
Status remove_dead_nodes(Graph& graph, bool* changed = nullptr);

struct SimplifyOptions {
  bool fold_batchnorm = true;
};
// All of the above, to a fixpoint; verifies the result.
Status simplify(Graph& graph, const NodeEvaluator& evaluate, const ShapeRefresher& refresh_shapes,
                const SimplifyOptions& options = {});

// Makes `replacement` take the place of `value` (every reader and graph output). When `value` is
// a graph output, the name users see is kept by renaming `replacement`; where that is impossible
// (it is a constant, an input or another output) nothing changes and false is returned.
bool forward_value(Graph& graph, Value* value, Value* replacement);

}  // namespace mixq::ir
