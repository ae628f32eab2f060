// Precision plans: what the user asked for, per layer. Three ways in: NNI's calibration_config,
// mixq's native JSON plan, and Q/DQ nodes already in the model (qdq.h). Parsing resolves every
// name against the graph; a name that matches nothing is an error, never ignored.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "ir/graph.h"
#include "mixq/engine.h"
#include "mixq/precision.h"
#include "mixq/status.h"

namespace mixq::quant {

struct Range {
  float min = 0;
  float max = 0;
};

enum class WeightGranularity { kPerChannel, kPerTensor };

struct LayerRequest {
  std::optional<Precision> precision;
  std::optional<WeightGranularity> weights;  // default per channel
  std::optional<bool> symmetric;             // activations; default symmetric
  std::string source;                        // where the request came from, for messages
};

struct PrecisionPlan {
  // Plan-wide settings; unset means "use BuildOptions".
  std::optional<Precision> default_precision;
  std::optional<bool> allow_fallback;
  std::optional<CalibrationAlgorithm> calibration_algorithm;
  std::optional<double> percentile;

  // Resolved: node name -> request (only nodes the plan names).
  std::map<std::string, LayerRequest> layers;
  // Value name -> known range (QAT tracked ranges, explicit ranges, Q/DQ scales). These values
  // need no calibration.
  std::map<std::string, Range> value_ranges;
  // Value name -> exact quantisation (from Q/DQ models: the weights' integer grid, the
  // activations' scale and zero point). Takes precedence over ranges.
  std::map<std::string, ir::QuantParams> value_quant;
  // Config entries that were read and checked but that mixq derives itself (NNI's integer-grid
  // bounds and weight ranges): one line each, carried into the build report.
  std::vector<std::string> notes;
};

// Parses `json_text` as either a native plan (an object with "layers" and/or
// "default_precision") or an NNI calibration_config (an object keyed by module names), and
// resolves names against `graph`. Errors name the file (`source`), the key and what was
// expected; every unknown name is listed at once.
Expected<PrecisionPlan> parse_plan(const std::string& json_text, const std::string& source,
                                   const ir::Graph& graph);

// The nodes a config key names: a module name ("layer1.0.conv1"; also its repeated calls
// "relu_1"), a node name, or (native plans only) a glob over either.
std::vector<const ir::Node*> match_layers(const ir::Graph& graph, const std::string& key,
                                          bool allow_glob);

// NNI bit widths: 8 -> int8, 16 -> fp16, 32 -> fp32; anything else is an error.
std::optional<Precision> precision_from_bits(int64_t bits);

}  // namespace mixq::quant
