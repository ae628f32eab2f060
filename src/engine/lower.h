// Lowering: from a simplified fp32 graph and a precision plan to the execution graph an engine
// runs. Each step is a pass over the IR:
//   absorb_qdq        Q/DQ pairs -> int8 requests and exact scales on values
//   fuse_layers       Conv/Gemm/MatMul + bias + residual Add + Relu/Clip -> FusedConv/FusedGemm
//   assign_precisions plan + defaults + backend.supports() -> node->precision (fallbacks reported)
//   quantize          ranges -> QuantParams on values, weights -> int8 constants
//   insert_reformats  explicit Reformat nodes wherever dtype, scale or layout changes
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "backends/backend.h"
#include "ir/graph.h"
#include "mixq/engine.h"
#include "quant/plan.h"

namespace mixq::engine {

using backends::QuantPolicy;

// Q/DQ nodes in the model become plan entries: the layer they wrap is requested in int8, the
// activation's scale/zero point and the weights' integer grid are recorded exactly, and the
// Q/DQ nodes leave the graph.
Status absorb_qdq(ir::Graph& graph, quant::PrecisionPlan& plan);

// Fuses epilogues into Conv and Gemm/MatMul where the plan does not ask the parts to run at
// different precisions. Fused nodes keep the first node's name and module; "mixq.fused" lists
// the absorbed nodes.
Status fuse_layers(ir::Graph& graph, const quant::PrecisionPlan& plan);

struct PrecisionAssignment {
  std::vector<LayerReport> layers;     // one per node, in order
  std::vector<std::string> fallbacks;  // human-readable, one per fallen-back layer
};

// Sets node->precision for every node. Explicit requests the backend cannot run fail the build
// (naming the layer and why) unless allow_fallback; the default precision applies to the layers
// that have a kernel at that precision, the rest run fp32 (reported).
Expected<PrecisionAssignment> assign_precisions(ir::Graph& graph, const quant::PrecisionPlan& plan,
                                                const backends::Backend& backend,
                                                Precision default_precision, bool allow_fallback);

// The non-constant values that need a range (inputs and outputs of quantised layers), split by
// whether they want symmetric ranges.
struct RangeNeeds {
  std::set<std::string> values;
  std::set<std::string> asymmetric;
};
RangeNeeds values_needing_ranges(const ir::Graph& graph, const quant::PrecisionPlan& plan);

// Gives quantised values their QuantParams (from exact Q/DQ parameters, else ranges), unifies
// the scales of Concat inputs, passes parameters through exact int8 ops (MaxPool, Reshape...),
// quantises the weights of int8 layers (per channel unless the plan says per tensor) and decides
// every value's dtype. Errors name a value without a range.
Status quantize(ir::Graph& graph, const quant::PrecisionPlan& plan,
                const std::map<std::string, quant::Range>& ranges, const QuantPolicy& policy);

// Inserts Reformat nodes where a consumer needs another dtype/quantisation/layout than the
// producer writes, and where graph outputs must be plain fp32. Afterwards every node's inputs
// are in the form its kernel expects.
Status insert_reformats(ir::Graph& graph, const backends::Backend& backend);

// Ops that run int8 exactly on int8 inputs (output parameters = input parameters) and follow
// their input's precision when the plan does not name them.
bool is_precision_follower(ir::OpKind op);
// Ops whose int8 kernels write with their input's parameters (followers, and average pools: the
// average of q is the quantised average) so input and output share one parameter set.
bool preserves_quantization(ir::OpKind op);
// Ops whose int8 form needs weights quantised (Conv, Gemm, MatMul and their fused forms).
bool is_weighted_layer(ir::OpKind op);

// Fusion helpers (fuse_layers, and the backends' Backend::fuse_for_execution):
// `v` is no graph output and is read by exactly one node, once; *consumer is set to that node.
bool single_consumer(const ir::Graph& graph, const ir::Value* v, ir::Node** consumer);
// Appends `absorbed`'s name to layer's "mixq.fused" list (what the build report shows).
void append_fused(ir::Node* layer, const ir::Node* absorbed);

}  // namespace mixq::engine
