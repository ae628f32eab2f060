// Runs an IR graph node by node on the reference backend: `mixq run`, calibration, `compare`,
// constant folding and the conformance tests all go through here.
#pragma once

#include <functional>
#include <map>
#include <span>
#include <string>

#include "ir/graph.h"
#include "ir/passes/passes.h"
#include "mixq/status.h"
#include "mixq/tensor.h"

namespace mixq::runtime {

using TensorMap = std::map<std::string, Tensor>;

struct InterpreterOptions {
  // Called after every node with its outputs (observers for calibration, per-layer compare).
  std::function<Status(const ir::Node& node, std::span<const Tensor> outputs)> on_node_output;
  // Keep every intermediate value in the result (by value name), not only graph outputs.
  bool keep_intermediates = false;
};

// Checks that `inputs` names every graph input (and nothing else) with the right dtype, rank and
// static dimensions. The message names the input and what was expected; `owner` ("model",
// "engine") is what expects it, `batch_hint` says what N may be ("any size").
Status check_inputs(const ir::Graph& graph, const TensorMap& inputs,
                    const std::string& owner = "model", const std::string& batch_hint = "any size");

// Runs the graph; returns the graph outputs by name (plus intermediates if asked).
Expected<TensorMap> run_reference(const ir::Graph& graph, const TensorMap& inputs,
                                  const InterpreterOptions& options = {});

}  // namespace mixq::runtime

namespace mixq::runtime {

// ir::simplify with the reference backend as the constant evaluator.
Status simplify_graph(ir::Graph& graph, const ir::SimplifyOptions& options = {});

// Fills every value's dtype and shape from the reference kernels' shape functions. With
// batch > 0, symbolic leading dimensions of the graph inputs are bound to `batch` first (on a
// graph meant for one batch size); otherwise they stay kDynamicDim.
Status infer_shapes(ir::Graph& graph, int64_t batch = 0);
// One node's output dtypes and shapes from its inputs'.
Status infer_node_shapes(ir::Node& node);

}  // namespace mixq::runtime
