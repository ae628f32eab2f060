// Per-layer error of an engine against the fp32 reference run of the model it was built from
// (what `mixq compare` prints and the Python package's ModelSpeedup.compare returns).
#pragma once

#include <string>
#include <vector>

#include "mixq/engine.h"
#include "mixq/model.h"
#include "mixq/precision.h"
#include "mixq/status.h"

namespace mixq {

struct LayerComparison {
  std::string layer;   // engine layer (node name)
  std::string output;  // the value compared: the layer's output, by the model's name for it
  std::string op;
  std::string module;                      // framework module, when known
  Precision precision = Precision::kFP32;  // the precision the layer ran at
  double sqnr_db = 0;            // 10 log10(sum ref^2 / sum (got - ref)^2); +inf when equal
  double max_abs_error = 0;      // max |got - ref|
  double max_abs_reference = 0;  // max |ref|
  int64_t elements = 0;
};

// Runs `inputs` through the model's reference backend (keeping every intermediate value) and
// through the engine (capturing every value that survives in it), then compares, in the engine's
// layer order, each layer output that exists in both with the same shape. Layers whose output the
// engine cannot read back (blocked layouts) or that the reference does not compute as f32 are
// left out.
Expected<std::vector<LayerComparison>> compare_engine(const Model& model, const Engine& engine,
                                                      const TensorMap& inputs);

}  // namespace mixq
