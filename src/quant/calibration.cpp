#include "quant/calibration.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <unordered_map>

#include "runtime/interpreter.h"

namespace mixq {

std::string_view calibration_algorithm_name(CalibrationAlgorithm algorithm) {
  switch (algorithm) {
    case CalibrationAlgorithm::kEntropy:
      return "entropy";
    case CalibrationAlgorithm::kMinMax:
      return "minmax";
    case CalibrationAlgorithm::kPercentile:
      return "percentile";
    case CalibrationAlgorithm::kMse:
      return "mse";
  }
  return "unknown";
}

std::optional<CalibrationAlgorithm> calibration_algorithm_from_name(std::string_view name) {
  std::string lower(name);
  for (char& c : lower) c = char(std::tolower(static_cast<unsigned char>(c)));
  for (CalibrationAlgorithm a : {CalibrationAlgorithm::kEntropy, CalibrationAlgorithm::kMinMax,
                                 CalibrationAlgorithm::kPercentile, CalibrationAlgorithm::kMse})
    if (lower == calibration_algorithm_name(a)) return a;
  return std::nullopt;
}

}  // namespace mixq

namespace mixq::quant {
namespace {

// A value whose every element is (nearly) zero still needs a range with a usable scale.
constexpr float kZeroRange = 1e-6f;

// Calls f(float) for every element of `t`, converting non-f32 tensors first.
template <typename F>
void for_each_float(const Tensor& t, F&& f) {
  if (t.dtype() == DType::kFloat32) {
    for (float x : t.span<float>()) f(x);
    return;
  }
  const Tensor converted = t.to(DType::kFloat32);
  for (float x : converted.span<float>()) f(x);
}

// Bin 0 of |x| also holds the exact zeros (ReLU's spike). They quantise without error at any
// scale, so they must not pull the threshold: bin 0 counts no more than bin 1 (as NVIDIA's
// pytorch-quantization does before its entropy search).
std::vector<double> without_zero_spike(const std::vector<double>& histogram) {
  std::vector<double> h(histogram);
  if (h.size() > 1) h[0] = std::min(h[0], h[1]);
  return h;
}

std::string format_double(double v) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  return ec == std::errc() ? std::string(buf, end) : std::to_string(v);
}

}  // namespace

// --- Observer ------------------------------------------------------------------------------------

void Observer::observe_minmax(const Tensor& t) {
  float lo = min_, hi = max_;
  bool bad = false;
  for_each_float(t, [&](float x) {
    if (!std::isfinite(x)) {
      bad = true;
      return;
    }
    lo = std::min(lo, x);
    hi = std::max(hi, x);
  });
  min_ = lo;
  max_ = hi;
  has_nan_ = has_nan_ || bad;
  count_ += t.numel();
}

void Observer::start_histogram() {
  const float amax = count_ > 0 && min_ <= max_ ? std::max(std::fabs(min_), std::fabs(max_)) : 0;
  bound_ = amax > 0 ? amax : kZeroRange;
  histogram_.assign(kHistogramBins, 0.0);
}

void Observer::observe_histogram(const Tensor& t) {
  if (histogram_.empty()) start_histogram();
  const double per_unit = double(kHistogramBins) / double(bound_);
  double* h = histogram_.data();
  // Non-negative values: x == |x|, so one histogram of |x| serves both cases.
  for_each_float(t, [&](float x) {
    if (!std::isfinite(x)) {
      has_nan_ = true;
      return;
    }
    const double b = std::fabs(double(x)) * per_unit;
    const int bin = b >= kHistogramBins ? kHistogramBins - 1 : int(b);
    h[bin] += 1;
  });
}

Expected<Range> Observer::range(CalibrationAlgorithm algorithm, double percentile, int levels,
                                bool symmetric) const {
  if (has_nan_)
    return InvalidArgument("the observed data holds NaN or infinite values (" +
                           std::to_string(count_) + " elements observed)");
  if (count_ == 0 || min_ > max_) return FailedPrecondition("nothing was observed");
  if (algorithm == CalibrationAlgorithm::kPercentile && !(percentile > 0 && percentile <= 100))
    return InvalidArgument("percentile " + format_double(percentile) + " is outside (0, 100]");
  const bool unsigned_side = non_negative();
  const float amax = std::max(std::fabs(min_), std::fabs(max_));
  if (amax < kZeroRange) {
    if (unsigned_side) return Range{0, kZeroRange};
    return Range{-kZeroRange, kZeroRange};
  }
  // Asymmetric ranges always include 0 so that zero (padding, ReLU) stays exact.
  auto asymmetric = [](float lo, float hi) {
    return Range{std::min(lo, 0.0f), std::max(hi, 0.0f)};
  };
  if (algorithm == CalibrationAlgorithm::kMinMax) {
    if (unsigned_side) return Range{0, max_};
    if (symmetric) return Range{-amax, amax};
    return asymmetric(min_, max_);
  }
  // Entropy and MSE model one side of a symmetric (or unsigned) grid; for an asymmetric range of
  // a signed value they fall back to minmax on each side.
  if (!unsigned_side && !symmetric && algorithm != CalibrationAlgorithm::kPercentile)
    return asymmetric(min_, max_);
  if (histogram_.empty())
    return FailedPrecondition(std::string("the histogram pass did not run; ") +
                              std::string(calibration_algorithm_name(algorithm)) +
                              " calibration needs it");
  float t = bound_;
  switch (algorithm) {
    case CalibrationAlgorithm::kPercentile:
      t = threshold_percentile(histogram_, bound_, percentile);
      break;
    case CalibrationAlgorithm::kEntropy:
      t = threshold_entropy(histogram_, bound_, levels);
      break;
    case CalibrationAlgorithm::kMse:
      t = threshold_mse(histogram_, bound_, levels);
      break;
    case CalibrationAlgorithm::kMinMax:
      break;
  }
  // Never beyond what was seen, never below one bin (the scale must stay positive).
  t = std::min(std::max(t, bound_ / float(kHistogramBins)), amax);
  if (unsigned_side) return Range{0, t};
  if (symmetric) return Range{-t, t};
  // Percentile on an asymmetric signed value: the observer keeps one histogram of |x|, so the
  // |x| threshold clips each side (outliers on either side go, the sides share the threshold).
  return asymmetric(std::max(min_, -t), std::min(max_, t));
}

// --- thresholds ----------------------------------------------------------------------------------

float threshold_percentile(const std::vector<double>& histogram, float bound, double percentile) {
  double total = 0;
  for (double c : histogram) total += c;
  const size_t n = histogram.size();
  if (n == 0 || total <= 0 || percentile >= 100) return bound;
  const double width = double(bound) / double(n);
  const double target = total * std::max(percentile, 0.0) / 100.0;
  double cumulative = 0;
  for (size_t b = 0; b < n; ++b) {
    const double c = histogram[b];
    if (c > 0 && cumulative + c >= target) {
      // Assume the bin's mass is spread evenly over it.
      const double fraction = std::clamp((target - cumulative) / c, 0.0, 1.0);
      return float((double(b) + fraction) * width);
    }
    cumulative += c;
  }
  return bound;
}

// TensorRT's entropy calibrator: for each candidate i (in bins, from `levels` to all of them) the
// reference P is the first i bins with everything beyond folded into bin i-1; the candidate Q
// quantises the first i bins (without the outliers) into `levels` groups and expands each group
// back evenly over its non-empty bins (bins empty in P stay empty in Q). The threshold is the
// upper edge of the i with the least KL(P || Q); ties go to the larger i. Where Q is empty but P
// is not (the outliers' bin), Q is smoothed with a tiny epsilon as MXNet's and ONNX Runtime's
// versions do, so a candidate that clips a few outliers is scored, not ruled out.
float threshold_entropy(const std::vector<double>& histogram, float bound, int levels) {
  const int n = int(histogram.size());
  levels = std::max(levels, 2);
  if (n <= levels || !(bound > 0)) return bound;
  const std::vector<double> h = without_zero_spike(histogram);
  // Prefix sums make each candidate O(levels): counts, non-empty bins and p log p.
  std::vector<double> sum(size_t(n) + 1, 0.0), nonzero(size_t(n) + 1, 0.0);
  double min_nonzero = std::numeric_limits<double>::infinity();
  for (int b = 0; b < n; ++b) {
    const double c = h[size_t(b)];
    sum[size_t(b) + 1] = sum[size_t(b)] + c;
    nonzero[size_t(b) + 1] = nonzero[size_t(b)] + (c > 0 ? 1 : 0);
    if (c > 0) min_nonzero = std::min(min_nonzero, c);
  }
  const double total = sum[size_t(n)];
  if (!(total > 0)) return bound;
  std::vector<double> plogp(size_t(n) + 1, 0.0);  // sum of pn log pn over the first b bins
  for (int b = 0; b < n; ++b) {
    const double pn = h[size_t(b)] / total;
    plogp[size_t(b) + 1] = plogp[size_t(b)] + (pn > 0 ? pn * std::log(pn) : 0.0);
  }
  const double eps = 1e-4 * min_nonzero / total;  // one ten-thousandth of the smallest count

  double best = std::numeric_limits<double>::infinity();
  int best_i = n;
  for (int i = levels; i <= n; ++i) {
    const double outliers = total - sum[size_t(i)];
    const double q_total = sum[size_t(i)];
    if (!(q_total > 0)) continue;
    // KL(P||Q) = sum p log p - sum p log q; Q is constant over each group's non-empty bins.
    const double p_last = (h[size_t(i) - 1] + outliers) / total;
    double kl = plogp[size_t(i) - 1] + (p_last > 0 ? p_last * std::log(p_last) : 0.0);
    // Bin k belongs to group k * levels / i: group g starts at ceil(g * i / levels).
    size_t begin = 0;
    for (int g = 0; g < levels; ++g) {
      const size_t end = size_t((int64_t(g + 1) * i + levels - 1) / levels);
      if (end == begin) continue;
      const bool has_last = end == size_t(i);
      const double raw = sum[end] - sum[begin];
      double count = nonzero[end] - nonzero[begin];
      double p_group = raw / total;
      if (has_last && outliers > 0) {
        if (h[size_t(i) - 1] == 0) count += 1;  // the outliers make the last bin non-empty
        p_group += outliers / total;
      }
      if (count > 0 && p_group > 0) {
        const double q = raw > 0 ? raw / count / q_total : eps;
        kl -= p_group * std::log(q);
      }
      begin = end;
    }
    if (kl <= best) {
      best = kl;
      best_i = i;
    }
  }
  return float(double(bound) * best_i / n);
}

// Expected squared error of quantising with threshold t (a bin edge): values beyond t clip to t
// (error (x - t)^2, x at its bin's centre), values inside round to a grid of levels-1 steps over
// [0, t] (uniform rounding error step^2 / 12).
float threshold_mse(const std::vector<double>& histogram, float bound, int levels) {
  const int n = int(histogram.size());
  if (n == 0 || !(bound > 0)) return bound;
  const std::vector<double> h = without_zero_spike(histogram);
  const double width = double(bound) / n;
  const double steps = std::max(levels - 1, 1);
  double inside = 0;
  double best = std::numeric_limits<double>::infinity();
  int best_k = n;
  for (int k = 1; k <= n; ++k) {
    inside += h[size_t(k - 1)];
    const double t = k * width;
    double clip = 0;
    for (int b = k; b < n; ++b) {
      if (h[size_t(b)] <= 0) continue;
      const double d = (b + 0.5) * width - t;
      clip += h[size_t(b)] * d * d;
    }
    const double step = t / steps;
    const double error = clip + inside * step * step / 12.0;
    if (error < best) {
      best = error;
      best_k = k;
    }
  }
  return float(best_k * width);
}

// --- calibrate -----------------------------------------------------------------------------------

namespace {

std::string quoted_list(const std::vector<std::string>& names) {
  std::string s;
  for (const std::string& n : names) s += (s.empty() ? "'" : ", '") + n + "'";
  return s;
}

std::vector<std::string> input_names(const ir::Graph& graph) {
  std::vector<std::string> names;
  for (const ir::Value* v : graph.inputs()) names.push_back(v->name);
  return names;
}

// One reference run: rows [begin, end) of batch `batch` (end < 0: the whole batch, unsliced).
struct Chunk {
  size_t batch = 0;
  int64_t begin = 0, end = -1;
  int64_t samples = 1;
};

// The batch with the unnamed array of a .npy mapped to the model's single input.
Expected<runtime::TensorMap> resolve_names(const ir::Graph& graph, const TensorMap& batch,
                                           const std::string& where, const std::string& source) {
  auto unnamed = batch.find("");
  if (unnamed == batch.end()) return batch;
  if (graph.inputs().size() != 1)
    return InvalidArgument(where + " holds one unnamed array" +
                           (source.empty() ? "" : " (from '" + source + "')") +
                           ", but the model has " + std::to_string(graph.inputs().size()) +
                           " inputs (" + quoted_list(input_names(graph)) +
                           "): give an .npz with one array per input, named like the inputs");
  const std::string& name = graph.inputs()[0]->name;
  if (batch.size() > 1)
    return InvalidArgument(
        where + " holds an unnamed array and named ones; the model's only input is '" + name + "'");
  runtime::TensorMap resolved;
  resolved[name] = unnamed->second;
  return resolved;
}

// Index of the first NaN or infinity in a float tensor, or -1.
int64_t first_non_finite(const Tensor& t) {
  if (!dtype_is_float(t.dtype())) return -1;
  if (t.dtype() == DType::kFloat32) {
    const float* p = t.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i)
      if (!std::isfinite(p[i])) return i;
    return -1;
  }
  for (int64_t i = 0; i < t.numel(); ++i)
    if (!std::isfinite(t.get_as_double(i))) return i;
  return -1;
}

// Checks one batch against the graph inputs and appends its reference runs to `chunks`.
Status plan_batch(const ir::Graph& graph, size_t index, const runtime::TensorMap& batch,
                  const CalibrationOptions& options, int64_t& used, std::vector<Chunk>& chunks,
                  std::set<std::string>& sliced_names) {
  const std::string where = "calibration batch " + std::to_string(index);
  for (const auto& [name, tensor] : batch) {
    const ir::Value* v = graph.find_value(name);
    if (!v || !graph.is_graph_input(v))
      return InvalidArgument(where + " gives '" + name +
                             "', which is not a model input; the inputs are " +
                             quoted_list(input_names(graph)));
  }
  // Inputs with a symbolic leading dimension are split by rows; the others pass whole.
  int64_t rows = -1;
  std::string rows_from;
  int64_t fixed_rows = 0;  // a static leading dimension shared by every input (batch-1 exports)
  bool any_dynamic = false;
  for (const ir::Value* in : graph.inputs()) {
    auto it = batch.find(in->name);
    if (it == batch.end())
      return InvalidArgument(where + " does not give input '" + in->name +
                             "' (the model's inputs: " + quoted_list(input_names(graph)) + ")");
    const Tensor& t = it->second;
    if (!t.defined()) return InvalidArgument(where + ": input '" + in->name + "' is empty");
    if (t.dtype() != in->dtype)
      return InvalidArgument(where + ": input '" + in->name + "' has dtype " +
                             std::string(dtype_name(t.dtype())) + "; the model expects " +
                             std::string(dtype_name(in->dtype)));
    const bool dynamic_lead =
        !in->shape_known ? t.rank() >= 1 : (!in->shape.empty() && in->shape[0] < 0);
    if (dynamic_lead) any_dynamic = true;
    if (in->shape_known && !in->shape.empty() && in->shape[0] > 0)
      fixed_rows = fixed_rows == 0 || fixed_rows == in->shape[0] ? in->shape[0] : -1;
  }
  if (any_dynamic) fixed_rows = 0;
  for (const ir::Value* in : graph.inputs()) {
    const Tensor& t = batch.at(in->name);
    const bool sliced =
        any_dynamic ? (!in->shape_known ? t.rank() >= 1 : (!in->shape.empty() && in->shape[0] < 0))
                    : fixed_rows > 0 && in->shape_known && !in->shape.empty();
    if (in->shape_known) {
      bool match = t.rank() == int(in->shape.size());
      for (size_t d = 0; match && d < in->shape.size(); ++d) {
        if (in->shape[d] < 0) continue;
        if (d == 0 && sliced && fixed_rows > 0)
          match = t.shape()[0] > 0 && t.shape()[0] % fixed_rows == 0;
        else
          match = in->shape[d] == t.shape()[d];
      }
      if (!match) {
        std::string expected = shape_to_string(in->shape);
        if (!in->shape.empty() && in->shape[0] < 0)
          expected += " (N: any number of samples)";
        else if (fixed_rows > 0)
          expected += " (or a multiple of " + std::to_string(fixed_rows) + " samples)";
        return InvalidArgument(where + ": input '" + in->name + "' has shape " +
                               shape_to_string(t.shape()) + "; the model expects " + expected);
      }
    }
    if (sliced) {
      sliced_names.insert(in->name);
      if (rows >= 0 && t.shape()[0] != rows)
        return InvalidArgument(where + ": inputs '" + rows_from + "' and '" + in->name + "' hold " +
                               std::to_string(rows) + " and " + std::to_string(t.shape()[0]) +
                               " samples (first dimension); they must agree");
      rows = t.shape()[0];
      rows_from = in->name;
    }
    const int64_t bad = first_non_finite(t);
    if (bad >= 0) {
      const int64_t row_size = t.rank() >= 1 && t.shape()[0] > 0 ? t.numel() / t.shape()[0] : 0;
      return InvalidArgument(where + ": input '" + in->name + "' holds NaN or infinite values" +
                             (row_size > 0 && t.rank() >= 1
                                  ? " (first at sample " + std::to_string(bad / row_size) + ")"
                                  : std::string()));
    }
  }
  const int64_t limit = options.max_samples > 0 ? options.max_samples : -1;
  if (rows < 0) {  // nothing to split: one run over the whole batch
    chunks.push_back({index, 0, -1, 1});
    used += 1;
    return Status::Ok();
  }
  const int64_t step = fixed_rows > 0 ? fixed_rows : std::max<int64_t>(options.batch_size, 1);
  for (int64_t begin = 0; begin < rows; begin += step) {
    if (limit >= 0 && used >= limit) break;
    int64_t end = std::min(rows, begin + step);
    if (limit >= 0 && fixed_rows == 0) end = std::min(end, begin + (limit - used));
    chunks.push_back({index, begin, end, end - begin});
    used += end - begin;
  }
  return Status::Ok();
}

// "calibrating [=====>    ] 96/256 samples, pass 1/2", redrawn in place on stderr.
class ProgressBar {
 public:
  ProgressBar(bool on, int64_t total, int passes) : on_(on), total_(total), passes_(passes) {}
  ~ProgressBar() { finish(); }
  void update(int64_t done, int pass) {
    if (!on_) return;
    constexpr int kWidth = 30;
    const int filled = total_ > 0 ? int(kWidth * std::min(done, total_) / total_) : kWidth;
    std::string bar(size_t(filled), '=');
    if (filled < kWidth) bar += '>';
    bar.resize(kWidth, ' ');
    std::string line = "\rcalibrating [" + bar + "] " + std::to_string(done) + "/" +
                       std::to_string(total_) + " samples, pass " + std::to_string(pass) + "/" +
                       std::to_string(passes_);
    if (line == last_) return;
    std::fputs(line.c_str(), stderr);
    std::fflush(stderr);
    last_ = std::move(line);
    drawn_ = true;
  }
  void finish() {
    if (!on_ || !drawn_) return;
    std::fputs("\n", stderr);
    std::fflush(stderr);
    drawn_ = false;
  }

 private:
  bool on_;
  int64_t total_;
  int passes_;
  bool drawn_ = false;
  std::string last_;
};

}  // namespace

Expected<CalibrationResult> calibrate(const ir::Graph& graph, const std::set<std::string>& values,
                                      const std::set<std::string>& asymmetric_values,
                                      const CalibrationData& data,
                                      const CalibrationOptions& options,
                                      const GraphRunner& runner) {
  const auto start = std::chrono::steady_clock::now();
  if (data.empty()) return InvalidArgument("calibration set is empty");
  if (options.algorithm == CalibrationAlgorithm::kPercentile &&
      !(options.percentile > 0 && options.percentile <= 100))
    return InvalidArgument("calibration percentile " + format_double(options.percentile) +
                           " is outside (0, 100]");
  if (options.batch_size <= 0)
    return InvalidArgument("calibration batch size must be positive, got " +
                           std::to_string(options.batch_size));

  // Which values to observe, and how each one is reached.
  std::map<std::string, Observer> observers;
  std::unordered_map<const ir::Value*, Observer*> by_value;
  std::vector<std::pair<const ir::Value*, Observer*>> inputs_observed, constants_observed;
  for (const std::string& name : values) {
    const ir::Value* v = graph.find_value(name);
    if (!v) return NotFound("calibration: the model has no value named '" + name + "'");
    Observer* o = &observers[name];
    if (v->is_constant())
      constants_observed.emplace_back(v, o);
    else if (graph.is_graph_input(v))
      inputs_observed.emplace_back(v, o);
    else if (v->producer == nullptr)
      return InvalidArgument("calibration: value '" + name +
                             "' is never computed (no node produces it)");
    else
      by_value[v] = o;
  }

  // Check every sample before running anything.
  struct PlannedBatch {
    runtime::TensorMap inputs;
    std::set<std::string> sliced;  // inputs split by rows; the others pass whole
  };
  std::vector<PlannedBatch> batches(data.batches().size());
  std::vector<Chunk> chunks;
  int64_t total_samples = 0;
  for (size_t b = 0; b < data.batches().size(); ++b) {
    if (options.max_samples > 0 && total_samples >= options.max_samples) break;
    PlannedBatch& planned = batches[b];
    MIXQ_ASSIGN_OR_RETURN(planned.inputs,
                          resolve_names(graph, data.batches()[b],
                                        "calibration batch " + std::to_string(b), data.source()));
    MIXQ_RETURN_IF_ERROR(
        plan_batch(graph, b, planned.inputs, options, total_samples, chunks, planned.sliced));
  }

  if (chunks.empty())
    return InvalidArgument("calibration set is empty (its batches hold no samples)");

  CalibrationResult result;
  result.samples = total_samples;
  std::string key;
  if (!options.cache_path.empty()) {
    // The value set in the key also says which values are asymmetric: that changes the ranges.
    std::set<std::string> key_values;
    for (const std::string& name : values)
      key_values.insert(asymmetric_values.count(name) ? name + " (asymmetric)" : name);
    key = calibration_cache_key(graph, data, options, key_values);
    auto cached = load_calibration_cache(options.cache_path, key);
    if (cached.ok()) {
      for (const std::string& name : values) {
        auto it = cached->find(name);
        if (it == cached->end())
          return DataLoss("calibration cache '" + options.cache_path + "' lacks value '" + name +
                          "' although its key matches; delete the cache");
        result.ranges[name] = it->second;
      }
      result.from_cache = true;
      result.seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      return result;
    }
    if (cached.status().code() != StatusCode::kNotFound) return cached.status();
  }

  const bool histogram_pass = options.algorithm != CalibrationAlgorithm::kMinMax;
  const int passes = histogram_pass ? 2 : 1;
  ProgressBar progress(options.progress, total_samples, passes);
  for (int pass = 1; pass <= passes; ++pass) {
    auto observe = [pass](Observer& o, const Tensor& t) {
      if (pass == 1)
        o.observe_minmax(t);
      else
        o.observe_histogram(t);
    };
    if (pass == 2)
      for (auto& [name, o] : observers) o.start_histogram();
    for (auto& [v, o] : constants_observed) observe(*o, v->constant);
    runtime::InterpreterOptions run_options;
    run_options.on_node_output = [&](const ir::Node& node,
                                     std::span<const Tensor> outputs) -> Status {
      for (size_t k = 0; k < node.outputs.size() && k < outputs.size(); ++k) {
        if (!node.outputs[k]) continue;
        auto it = by_value.find(node.outputs[k]);
        if (it != by_value.end() && outputs[k].defined()) observe(*it->second, outputs[k]);
      }
      return Status::Ok();
    };
    int64_t done = 0;
    progress.update(0, pass);
    for (const Chunk& c : chunks) {
      runtime::TensorMap inputs;
      const PlannedBatch& batch = batches[c.batch];
      for (const auto& [name, t] : batch.inputs)
        inputs[name] = c.end >= 0 && batch.sliced.count(name) ? t.slice_rows(c.begin, c.end) : t;
      for (auto& [v, o] : inputs_observed) observe(*o, inputs.at(v->name));
      Status run = Status::Ok();
      if (runner) {
        run = runner(inputs, [&](const std::string& name, const Tensor& t) {
          auto it = observers.find(name);
          if (it != observers.end() && graph.find_value(name) &&
              !graph.is_graph_input(graph.find_value(name)))
            observe(it->second, t);
        });
      } else {
        auto ran = runtime::run_reference(graph, inputs, run_options);
        if (!ran.ok()) run = ran.status();
      }
      if (!run.ok())
        return run.with_context(
            "calibration batch " + std::to_string(c.batch) +
            (c.end >= 0 ? ", samples " + std::to_string(c.begin) + ".." + std::to_string(c.end - 1)
                        : std::string()));
      done += c.samples;
      progress.update(done, pass);
    }
    if (pass == 1) {
      std::vector<std::string> missing;
      for (const auto& [name, o] : observers)
        if (o.count() == 0) missing.push_back(name);
      if (!missing.empty())
        return InvalidArgument("calibration: " + quoted_list(missing) +
                               (missing.size() == 1 ? " was" : " were") +
                               " never computed while running the model");
    }
  }
  progress.finish();

  // Ranges; entropy and MSE searches take a while per value, so spread them over the cores.
  std::vector<std::pair<const std::string*, const Observer*>> entries;
  for (const auto& [name, o] : observers) entries.emplace_back(&name, &o);
  std::vector<Expected<Range>> ranges(entries.size(), Expected<Range>(Range{}));
#pragma omp parallel for schedule(dynamic)
  for (int64_t i = 0; i < int64_t(entries.size()); ++i) {
    const auto& [name, o] = entries[size_t(i)];
    const int levels = o->non_negative() ? 256 : 128;  // u8 grid or one side of symmetric s8
    ranges[size_t(i)] = o->range(options.algorithm, options.percentile, levels,
                                 asymmetric_values.count(*name) == 0);
  }
  for (size_t i = 0; i < entries.size(); ++i) {
    if (!ranges[i].ok())
      return ranges[i].status().with_context("calibration of value '" + *entries[i].first + "'");
    result.ranges[*entries[i].first] = *ranges[i];
  }
  if (!options.cache_path.empty())
    MIXQ_RETURN_IF_ERROR(save_calibration_cache(options.cache_path, key, result.ranges));
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

// --- cache ---------------------------------------------------------------------------------------

namespace {

constexpr const char* kCacheFormat = "mixq-calibration-cache";
constexpr int kCacheVersion = 1;

// 64-bit FNV-1a over a byte stream; integers are fed little-endian so the key is stable.
class Hasher {
 public:
  void bytes(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    uint64_t h = h_;
    for (size_t i = 0; i < n; ++i) {
      h ^= p[i];
      h *= 0x100000001b3ull;
    }
    h_ = h;
  }
  void u64(uint64_t v) {
    unsigned char b[8];
    for (int i = 0; i < 8; ++i) b[i] = static_cast<unsigned char>(v >> (8 * i));
    bytes(b, 8);
  }
  void i64(int64_t v) { u64(static_cast<uint64_t>(v)); }
  void f32(float v) { u64(float_bits(v)); }
  void str(std::string_view s) {
    u64(s.size());
    bytes(s.data(), s.size());
  }
  void shape(const Shape& s) {
    u64(s.size());
    for (int64_t d : s) i64(d);
  }
  void tensor(const Tensor& t) {
    if (!t.defined()) {
      str("<undefined>");
      return;
    }
    u64(static_cast<uint64_t>(t.dtype()));
    shape(t.shape());
    bytes(t.raw(), t.nbytes());
  }
  std::string hex() const {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h_));
    return buf;
  }

 private:
  uint64_t h_ = 0xcbf29ce484222325ull;
};

void hash_attribute(Hasher& h, const ir::Attribute& a) {
  h.u64(a.index());
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, int64_t>)
          h.i64(v);
        else if constexpr (std::is_same_v<T, float>)
          h.f32(v);
        else if constexpr (std::is_same_v<T, std::string>)
          h.str(v);
        else if constexpr (std::is_same_v<T, Tensor>)
          h.tensor(v);
        else {
          h.u64(v.size());
          for (const auto& x : v) {
            if constexpr (std::is_same_v<std::decay_t<decltype(x)>, int64_t>)
              h.i64(x);
            else if constexpr (std::is_same_v<std::decay_t<decltype(x)>, float>)
              h.f32(x);
            else
              h.str(x);
          }
        }
      },
      a);
}

void hash_value_ref(Hasher& h, const ir::Value* v) {
  if (!v) {
    h.str("<absent>");
    return;
  }
  h.str(v->name);
  h.u64(v->is_constant() ? 1 : 0);
  if (v->is_constant()) h.tensor(v->constant);
}

std::string model_hash(const ir::Graph& graph) {
  Hasher h;
  h.u64(graph.inputs().size());
  for (const ir::Value* in : graph.inputs()) {
    h.str(in->name);
    h.u64(static_cast<uint64_t>(in->dtype));
    h.shape(in->shape_known ? in->shape : Shape{-2});
  }
  const auto nodes = graph.nodes();
  h.u64(nodes.size());
  for (const ir::Node* node : nodes) {
    h.str(ir::op_name(node->op));
    h.str(node->name);
    h.u64(node->attrs.size());
    for (const auto& [k, a] : node->attrs) {
      h.str(k);
      hash_attribute(h, a);
    }
    h.u64(node->inputs.size());
    for (const ir::Value* v : node->inputs) hash_value_ref(h, v);
    h.u64(node->outputs.size());
    for (const ir::Value* v : node->outputs) h.str(v ? v->name : "<absent>");
  }
  h.u64(graph.outputs().size());
  for (const ir::Value* out : graph.outputs()) hash_value_ref(h, out);
  return h.hex();
}

std::string data_hash(const CalibrationData& data, const CalibrationOptions& options) {
  Hasher h;
  h.i64(options.max_samples > 0 ? options.max_samples : 0);
  h.u64(data.batches().size());
  for (const TensorMap& batch : data.batches()) {
    h.u64(batch.size());
    for (const auto& [name, t] : batch) {
      h.str(name);
      h.tensor(t);
    }
  }
  return h.hex();
}

std::string algorithm_part(const CalibrationOptions& options) {
  std::string s(calibration_algorithm_name(options.algorithm));
  if (options.algorithm == CalibrationAlgorithm::kPercentile)
    s += "=" + format_double(options.percentile);
  return s;
}

std::string values_hash(const std::set<std::string>& values) {
  Hasher h;
  h.u64(values.size());
  for (const std::string& v : values) h.str(v);  // std::set: already sorted
  return h.hex();
}

struct KeyParts {
  std::string model, data, algorithm, values;
};

// "<model>-<data>-<algorithm>-<values>"; the algorithm part may itself hold '-' ("1e-05").
std::optional<KeyParts> split_key(const std::string& key) {
  const size_t a = key.find('-');
  const size_t b = a == std::string::npos ? a : key.find('-', a + 1);
  const size_t c = key.rfind('-');
  if (a == std::string::npos || b == std::string::npos || c == std::string::npos || c <= b)
    return std::nullopt;
  return KeyParts{key.substr(0, a), key.substr(a + 1, b - a - 1), key.substr(b + 1, c - b - 1),
                  key.substr(c + 1)};
}

}  // namespace

std::string calibration_cache_key(const ir::Graph& graph, const CalibrationData& data,
                                  const CalibrationOptions& options,
                                  const std::set<std::string>& values) {
  return model_hash(graph) + "-" + data_hash(data, options) + "-" + algorithm_part(options) + "-" +
         values_hash(values);
}

Expected<std::map<std::string, Range>> load_calibration_cache(const std::string& path,
                                                              const std::string& key) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec))
    return NotFound("calibration cache '" + path + "' does not exist");
  std::ifstream in(path, std::ios::binary);
  if (!in) return IoError("cannot read calibration cache '" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return IoError("cannot read calibration cache '" + path + "'");
  const nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  const std::string what = "calibration cache '" + path + "'";
  if (j.is_discarded() || !j.is_object())
    return DataLoss(what + " is not a mixq calibration cache (not a JSON object); delete it");
  if (!j.contains("format") || !j["format"].is_string() ||
      j["format"].get<std::string>() != kCacheFormat)
    return DataLoss(what + " is not a mixq calibration cache (\"format\" is not \"" +
                    std::string(kCacheFormat) + "\"); delete it");
  if (!j.contains("version") || !j["version"].is_number_integer() ||
      j["version"].get<int64_t>() != kCacheVersion)
    return DataLoss(what + " has an unknown version (this mixq reads version " +
                    std::to_string(kCacheVersion) + "); delete it");
  if (!j.contains("key") || !j["key"].is_string())
    return DataLoss(what + " has no \"key\"; delete it");
  const std::string file_key = j["key"].get<std::string>();
  if (file_key != key) {
    std::vector<std::string> differs;
    const auto expected = split_key(key);
    const nlohmann::json parts =
        j.contains("parts") && j["parts"].is_object() ? j["parts"] : nlohmann::json::object();
    auto part = [&](const char* name) {
      return parts.contains(name) && parts[name].is_string() ? parts[name].get<std::string>()
                                                             : std::string();
    };
    if (expected) {
      if (part("model") != expected->model) differs.push_back("the model changed");
      if (part("data") != expected->data) differs.push_back("the calibration data changed");
      if (part("algorithm") != expected->algorithm)
        differs.push_back("the algorithm changed (cache: " +
                          (part("algorithm").empty() ? "unknown" : part("algorithm")) +
                          ", now: " + expected->algorithm + ")");
      if (part("values") != expected->values)
        differs.push_back("the set of calibrated values changed");
    }
    std::string reason;
    for (const std::string& d : differs) reason += (reason.empty() ? "" : "; ") + d;
    if (reason.empty()) reason = "its key is " + file_key + ", expected " + key;
    return FailedPrecondition(what + " does not match this calibration: " + reason +
                              "; the cache will not be used: delete it or choose another "
                              "cache path");
  }
  if (!j.contains("ranges") || !j["ranges"].is_object())
    return DataLoss(what + " has no \"ranges\" object; delete it");
  std::map<std::string, Range> ranges;
  for (const auto& [name, r] : j["ranges"].items()) {
    if (!r.is_array() || r.size() != 2 || !r[0].is_number() || !r[1].is_number())
      return DataLoss(what + ": the range of '" + name + "' is not [min, max]; delete the cache");
    const double lo = r[0].get<double>(), hi = r[1].get<double>();
    if (!std::isfinite(lo) || !std::isfinite(hi) || lo > hi)
      return DataLoss(what + ": the range of '" + name + "' is invalid ([" + format_double(lo) +
                      ", " + format_double(hi) + "]); delete the cache");
    ranges[name] = Range{float(lo), float(hi)};
  }
  return ranges;
}

Status save_calibration_cache(const std::string& path, const std::string& key,
                              const std::map<std::string, Range>& ranges) {
  nlohmann::json j;
  j["format"] = kCacheFormat;
  j["version"] = kCacheVersion;
  j["key"] = key;
  nlohmann::json parts = nlohmann::json::object();
  if (auto p = split_key(key)) {
    parts["model"] = p->model;
    parts["data"] = p->data;
    parts["algorithm"] = p->algorithm;
    parts["values"] = p->values;
  }
  j["parts"] = parts;
  nlohmann::json r = nlohmann::json::object();
  for (const auto& [name, range] : ranges)
    r[name] = nlohmann::json::array({double(range.min), double(range.max)});
  j["ranges"] = r;

  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path target(path);
  if (target.has_parent_path()) fs::create_directories(target.parent_path(), ec);
  const std::string tmp = path + ".tmp" + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return IoError("cannot write calibration cache '" + tmp + "'");
    out << j.dump(2) << "\n";
    out.close();
    if (!out) {
      fs::remove(tmp, ec);
      return IoError("cannot write calibration cache '" + tmp + "'");
    }
  }
  fs::rename(tmp, target, ec);
  if (ec) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    return IoError("cannot move calibration cache into place at '" + path + "': " + ec.message());
  }
  return Status::Ok();
}

}  // namespace mixq::quant
