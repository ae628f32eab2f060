// Post-training calibration: run the fp32 model (reference backend) over calibration samples,
// observe the values that need ranges, and turn the observations into ranges with one of the
// algorithms (minmax, percentile, entropy/KL as TensorRT's calibrator, MSE).
#pragma once

#include <cmath>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "ir/graph.h"
#include "mixq/engine.h"
#include "quant/plan.h"

namespace mixq::quant {

inline constexpr int kHistogramBins = 2048;

// Statistics of one value across calibration batches.
class Observer {
 public:
  // Pass 1: extremes.
  void observe_minmax(const Tensor& t);
  // Pass 2: histogram of |x| (signed values) or x (non-negative values) over [0, bound],
  // bound fixed after pass 1.
  void start_histogram();
  void observe_histogram(const Tensor& t);

  float min() const { return min_; }
  float max() const { return max_; }
  bool non_negative() const { return min_ >= 0; }
  const std::vector<double>& histogram() const { return histogram_; }
  float histogram_bound() const { return bound_; }
  int64_t count() const { return count_; }

  // The range for `algorithm`. Signed values get a symmetric range [-t, t] unless `symmetric`
  // is false (then [min, max] clipped by the same algorithm on each side where it applies).
  // `levels` is the number of quantisation levels on the histogram's side (128 for one side of
  // a symmetric int8 grid, 256 for u8).
  Expected<Range> range(CalibrationAlgorithm algorithm, double percentile, int levels,
                        bool symmetric = true) const;

 private:
  float min_ = INFINITY, max_ = -INFINITY;
  float bound_ = 0;
  int64_t count_ = 0;
  bool has_nan_ = false;
  std::vector<double> histogram_;
};

// Thresholds from a histogram of |x| over [0, bound] with kHistogramBins bins.
float threshold_percentile(const std::vector<double>& histogram, float bound, double percentile);
float threshold_entropy(const std::vector<double>& histogram, float bound, int levels);
float threshold_mse(const std::vector<double>& histogram, float bound, int levels);

struct CalibrationResult {
  std::map<std::string, Range> ranges;  // value name -> range
  bool from_cache = false;
  double seconds = 0;
  int64_t samples = 0;
};

// Runs the model on one batch and hands every requested value to `observe` by name. The default
// (no runner) is the reference backend; the builder passes an fp32 engine, much faster.
using ValueObserver = std::function<void(const std::string& name, const Tensor& value)>;
using GraphRunner = std::function<Status(const std::map<std::string, Tensor>& inputs,
                                         const ValueObserver& observe)>;

// Observes `values` (names in `graph`; graph inputs allowed) over `data` and computes ranges.
// `symmetric_values` lists the values that want symmetric ranges when signed.
// Errors: empty data, samples of the wrong shape or dtype or with NaN (naming the sample, the
// input and what was expected), a value that is never computed.
Expected<CalibrationResult> calibrate(const ir::Graph& graph, const std::set<std::string>& values,
                                      const std::set<std::string>& asymmetric_values,
                                      const CalibrationData& data,
                                      const CalibrationOptions& options,
                                      const GraphRunner& runner = nullptr);

// Cache: a JSON file keyed by model, data, algorithm (and its parameters) and the observed value
// set. A cache for another key is refused (kFailedPrecondition) with a message saying which part
// differs; a corrupt cache is refused as kDataLoss.
std::string calibration_cache_key(const ir::Graph& graph, const CalibrationData& data,
                                  const CalibrationOptions& options,
                                  const std::set<std::string>& values);
Expected<std::map<std::string, Range>> load_calibration_cache(const std::string& path,
                                                              const std::string& key);
Status save_calibration_cache(const std::string& path, const std::string& key,
                              const std::map<std::string, Range>& ranges);

}  // namespace mixq::quant
