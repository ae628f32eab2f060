#include "mixq/compare.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace mixq {

Expected<std::vector<LayerComparison>> compare_engine(const Model& model, const Engine& engine,
                                                      const TensorMap& inputs) {
  MIXQ_ASSIGN_OR_RETURN(TensorMap reference,
                        model.run_reference(inputs, /*keep_intermediates=*/true));
  MIXQ_ASSIGN_OR_RETURN(Context ctx, engine.create_context());
  ctx.capture({}, /*all=*/true);
  MIXQ_ASSIGN_OR_RETURN(InferenceResult result, ctx.infer(inputs));

  std::vector<LayerComparison> rows;
  for (const LayerReport& l : engine.report().layers) {
    auto got = result.captured.find(l.output);
    if (got == result.captured.end()) continue;
    auto ref = reference.find(l.output);
    if (ref == reference.end()) continue;
    const Tensor& r = ref->second;
    const Tensor& g = got->second;
    if (r.dtype() != DType::kFloat32 || g.dtype() != DType::kFloat32 || r.shape() != g.shape())
      continue;
    LayerComparison row;
    row.layer = l.name;
    row.output = l.output;
    row.op = l.op;
    row.module = l.module;
    row.precision = l.actual;
    row.elements = r.numel();
    double signal = 0, noise = 0;
    const float* rp = r.data<float>();
    const float* gp = g.data<float>();
    for (int64_t i = 0; i < r.numel(); ++i) {
      const double rv = rp[i], d = double(gp[i]) - rv;
      signal += rv * rv;
      noise += d * d;
      row.max_abs_error = std::max(row.max_abs_error, std::fabs(d));
      row.max_abs_reference = std::max(row.max_abs_reference, std::fabs(rv));
    }
    row.sqnr_db =
        noise == 0 ? std::numeric_limits<double>::infinity() : 10 * std::log10(signal / noise);
    rows.push_back(std::move(row));
  }
  return rows;
}

}  // namespace mixq
