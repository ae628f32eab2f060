// Post-training calibration: the threshold searches on histograms with known answers, the
// observer's ranges, calibrate() on a small Conv->Relu->Gemm graph (ranges, batch splitting,
// input checks), the range cache and CalibrationData::from_path.
#include "quant/calibration.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include "mixq/io.h"
#include "runtime/interpreter.h"
#include "support/status_matchers.h"
#include "support/test_util.h"

namespace mixq::quant {
namespace {

using ir::kDynamicDim;
using ir::OpKind;
using testing::random_tensor;
using testing::status_is;
using testing::TempDir;

constexpr int kSigned = 128;    // one side of symmetric int8
constexpr int kUnsigned = 256;  // u8

Tensor gaussian_with_outliers(int64_t n, uint64_t seed, int outliers, float outlier_value) {
  Tensor t = Tensor::empty(DType::kFloat32, {n + outliers});
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  float* p = t.data<float>();
  for (int64_t i = 0; i < n; ++i) p[i] = dist(rng);
  for (int i = 0; i < outliers; ++i) p[n + i] = i % 2 ? -outlier_value : outlier_value;
  return t;
}

Observer observe(const Tensor& t) {
  Observer o;
  o.observe_minmax(t);
  o.start_histogram();
  o.observe_histogram(t);
  return o;
}

Range range_of(const Observer& o, CalibrationAlgorithm a, bool symmetric = true,
               double percentile = 99.99) {
  auto r = o.range(a, percentile, o.non_negative() ? kUnsigned : kSigned, symmetric);
  EXPECT_TRUE(r.ok()) << r.status().to_string();
  return r.ok() ? *r : Range{};
}

// --- thresholds on histograms --------------------------------------------------------------------

TEST(ThresholdPercentile, UniformHistogramGivesBoundTimesFraction) {
  const std::vector<double> h(kHistogramBins, 100.0);
  EXPECT_NEAR(threshold_percentile(h, 10.0f, 99.0), 9.9f, 1e-4);
  EXPECT_NEAR(threshold_percentile(h, 10.0f, 50.0), 5.0f, 1e-4);
  EXPECT_NEAR(threshold_percentile(h, 10.0f, 99.99), 9.999f, 1e-4);
  EXPECT_FLOAT_EQ(threshold_percentile(h, 10.0f, 100.0), 10.0f);
}

TEST(ThresholdPercentile, SkipsEmptyTail) {
  std::vector<double> h(kHistogramBins, 0.0);
  for (int b = 0; b < 1024; ++b) h[b] = 1;  // mass in the lower half only
  EXPECT_NEAR(threshold_percentile(h, 2.0f, 100.0 - 1e-9), 1.0f, 1e-3);
  EXPECT_NEAR(threshold_percentile(h, 2.0f, 50.0), 0.5f, 1e-3);
}

TEST(ThresholdEntropy, UniformHistogramKeepsTheWholeRange) {
  const std::vector<double> h(kHistogramBins, 1000.0);
  EXPECT_FLOAT_EQ(threshold_entropy(h, 4.0f, kSigned), 4.0f);
  EXPECT_FLOAT_EQ(threshold_entropy(h, 4.0f, kUnsigned), 4.0f);
}

TEST(ThresholdEntropy, ClipsAFewFarOutliers) {
  // A triangle over the first 256 bins and two lonely counts in the last bin.
  std::vector<double> h(kHistogramBins, 0.0);
  for (int b = 0; b < 256; ++b) h[b] = 1000.0 * (256 - b);
  h[kHistogramBins - 1] = 2;
  const float t = threshold_entropy(h, 2048.0f, kSigned);
  EXPECT_GE(t, 128.0f);
  EXPECT_LE(t, 300.0f);
}

// TensorRT's search written out directly, one candidate at a time: the implementation uses
// prefix sums and must pick the same threshold.
float entropy_by_definition(std::vector<double> h, float bound, int levels) {
  const int n = int(h.size());
  h[0] = std::min(h[0], h[1]);
  double total = 0, min_nonzero = INFINITY;
  for (double c : h) {
    total += c;
    if (c > 0) min_nonzero = std::min(min_nonzero, c);
  }
  double best = INFINITY;
  int best_i = n;
  for (int i = levels; i <= n; ++i) {
    std::vector<double> p(h.begin(), h.begin() + i);
    for (int k = i; k < n; ++k) p[size_t(i - 1)] += h[size_t(k)];
    std::vector<double> sum(size_t(levels), 0.0), count(size_t(levels), 0.0);
    double q_total = 0;
    for (int k = 0; k < i; ++k) {
      sum[size_t(k * levels / i)] += h[size_t(k)];
      if (p[size_t(k)] > 0) count[size_t(k * levels / i)] += 1;
      q_total += h[size_t(k)];
    }
    if (q_total <= 0) continue;
    double kl = 0;
    for (int k = 0; k < i; ++k) {
      if (p[size_t(k)] <= 0) continue;
      const int g = k * levels / i;
      double q = sum[size_t(g)] / count[size_t(g)] / q_total;
      if (q <= 0) q = 1e-4 * min_nonzero / total;
      const double pn = p[size_t(k)] / total;
      kl += pn * std::log(pn / q);
    }
    if (kl <= best * (1 + 1e-12)) {
      best = std::min(best, kl);
      best_i = i;
    }
  }
  return float(double(bound) * best_i / n);
}

TEST(ThresholdEntropy, MatchesTheDirectDefinition) {
  for (uint64_t seed : {1, 2, 3}) {
    for (int levels : {kSigned, kUnsigned}) {
      const Observer o = observe(gaussian_with_outliers(20000, seed, int(seed), 10.0f * seed));
      const float fast = threshold_entropy(o.histogram(), o.histogram_bound(), levels);
      const float direct = entropy_by_definition(o.histogram(), o.histogram_bound(), levels);
      EXPECT_NEAR(fast, direct, o.histogram_bound() / kHistogramBins * 1.01)
          << "seed " << seed << " levels " << levels;
    }
  }
}

TEST(ThresholdEntropy, HistogramNarrowerThanLevelsKeepsTheBound) {
  const std::vector<double> h(64, 1.0);
  EXPECT_FLOAT_EQ(threshold_entropy(h, 3.0f, kSigned), 3.0f);
}

TEST(ThresholdMse, UniformHistogramStaysNearTheTop) {
  const std::vector<double> h(kHistogramBins, 1000.0);
  const float t = threshold_mse(h, 1.0f, kSigned);
  EXPECT_GT(t, 0.97f);
  EXPECT_LE(t, 1.0f);
}

TEST(ThresholdMse, ClipsAFewFarOutliers) {
  // 10^6 values spread over [0, 100) and one at 2047.5: clipping it at t costs (2047.5 - t)^2,
  // keeping it costs every other value a coarser step, 10^6 (t / 127)^2 / 12. The optimum
  // balances the two near t = 2047.5 / (1 + 10^6 / (127^2 12)) = 332.
  std::vector<double> h(kHistogramBins, 0.0);
  for (int b = 0; b < 100; ++b) h[b] = 10000;
  h[kHistogramBins - 1] = 1;
  const float t = threshold_mse(h, 2048.0f, kSigned);
  EXPECT_NEAR(t, 332.0f, 3.0f);
}

// --- observer ------------------------------------------------------------------------------------

TEST(Observer, MinMaxAndHistogram) {
  Observer o = observe(Tensor::from_vector<float>({4}, {-3.0f, 1.0f, 0.5f, 2.0f}));
  EXPECT_EQ(o.min(), -3.0f);
  EXPECT_EQ(o.max(), 2.0f);
  EXPECT_FALSE(o.non_negative());
  EXPECT_EQ(o.count(), 4);
  EXPECT_EQ(o.histogram_bound(), 3.0f);
  ASSERT_EQ(o.histogram().size(), size_t(kHistogramBins));
  double total = 0;
  for (double c : o.histogram()) total += c;
  EXPECT_EQ(total, 4);
  EXPECT_EQ(o.histogram()[kHistogramBins - 1], 1);  // |-3| sits in the last bin
}

TEST(Observer, SymmetricAsymmetricAndUnsignedMinMax) {
  Observer s = observe(Tensor::from_vector<float>({3}, {-2.0f, 0.25f, 1.0f}));
  Range sym = range_of(s, CalibrationAlgorithm::kMinMax);
  EXPECT_EQ(sym.min, -2.0f);
  EXPECT_EQ(sym.max, 2.0f);
  Range asym = range_of(s, CalibrationAlgorithm::kMinMax, /*symmetric=*/false);
  EXPECT_EQ(asym.min, -2.0f);
  EXPECT_EQ(asym.max, 1.0f);

  Observer u = observe(Tensor::from_vector<float>({3}, {0.5f, 3.0f, 1.0f}));
  EXPECT_TRUE(u.non_negative());
  for (bool symmetric : {true, false}) {
    Range r = range_of(u, CalibrationAlgorithm::kMinMax, symmetric);
    EXPECT_EQ(r.min, 0.0f);
    EXPECT_EQ(r.max, 3.0f);
  }
}

TEST(Observer, AsymmetricRangesIncludeZero) {
  Observer o = observe(Tensor::from_vector<float>({2}, {-5.0f, -1.0f}));
  Range r = range_of(o, CalibrationAlgorithm::kMinMax, /*symmetric=*/false);
  EXPECT_EQ(r.min, -5.0f);
  EXPECT_EQ(r.max, 0.0f);
}

TEST(Observer, GaussianWithOutliers) {
  const Observer o = observe(gaussian_with_outliers(1000000, 7, 2, 50.0f));
  const Range minmax = range_of(o, CalibrationAlgorithm::kMinMax);
  EXPECT_EQ(minmax.max, 50.0f);
  EXPECT_EQ(minmax.min, -50.0f);
  const Range entropy = range_of(o, CalibrationAlgorithm::kEntropy);
  const Range mse = range_of(o, CalibrationAlgorithm::kMse);
  const Range pct = range_of(o, CalibrationAlgorithm::kPercentile, true, 99.9);
  for (const Range& r : {entropy, mse, pct}) {
    EXPECT_EQ(r.min, -r.max);
    EXPECT_GT(r.max, 3.0f);   // keeps the bulk of N(0, 1)
    EXPECT_LT(r.max, 25.0f);  // clips the outliers at 50
  }
  EXPECT_LT(entropy.max, 10.0f);
  // MSE balances the two outliers' clipping error against a finer step for the other 10^6
  // values: 2 (50 - t)^2 against 10^6 (t / 127)^2 / 12 puts the optimum near t = 14.
  EXPECT_NEAR(mse.max, 14.0f, 1.5f);
  EXPECT_NEAR(pct.max, 3.29f, 0.15f);  // two-sided 99.9% of N(0, 1)
}

TEST(Observer, UniformDataKeepsNearlyTheFullRange) {
  const Observer o = observe(random_tensor({200000}, 3, -1.0f, 1.0f));
  for (auto a : {CalibrationAlgorithm::kEntropy, CalibrationAlgorithm::kMse}) {
    const Range r = range_of(o, a);
    EXPECT_GT(r.max, 0.9f) << calibration_algorithm_name(a);
    EXPECT_LE(r.max, 1.0f) << calibration_algorithm_name(a);
  }
  EXPECT_NEAR(range_of(o, CalibrationAlgorithm::kPercentile, true, 99.0).max, 0.99f, 0.01f);
}

TEST(Observer, UnsignedValuesGetZeroBasedRanges) {
  Tensor t = random_tensor({100000}, 5, 0.0f, 4.0f);
  for (int64_t i = 0; i < t.numel(); i += 2) t.data<float>()[i] = 0;  // ReLU's spike
  const Observer o = observe(t);
  ASSERT_TRUE(o.non_negative());
  for (auto a : {CalibrationAlgorithm::kEntropy, CalibrationAlgorithm::kMse,
                 CalibrationAlgorithm::kPercentile, CalibrationAlgorithm::kMinMax}) {
    const Range r = range_of(o, a);
    EXPECT_EQ(r.min, 0.0f) << calibration_algorithm_name(a);
    EXPECT_GT(r.max, 3.5f) << calibration_algorithm_name(a);
    EXPECT_LE(r.max, 4.0f) << calibration_algorithm_name(a);
  }
}

TEST(Observer, PercentileClipsEachSideOfAnAsymmetricRange) {
  Tensor t = random_tensor({100000}, 11, -1.0f, 1.0f);
  t.data<float>()[0] = -50.0f;  // one negative outlier
  const Observer o = observe(t);
  const Range r = range_of(o, CalibrationAlgorithm::kPercentile, /*symmetric=*/false, 99.9);
  EXPECT_GT(r.min, -1.01f);
  EXPECT_LT(r.min, -0.9f);
  EXPECT_LE(r.max, 1.0f);
  EXPECT_GT(r.max, 0.9f);
  // Entropy and MSE fall back to minmax on each side for asymmetric ranges.
  const Range e = range_of(o, CalibrationAlgorithm::kEntropy, /*symmetric=*/false);
  EXPECT_EQ(e.min, -50.0f);
  EXPECT_EQ(e.max, o.max());
}

TEST(Observer, NanIsAnError) {
  Observer o;
  o.observe_minmax(Tensor::from_vector<float>({3}, {1.0f, NAN, -1.0f}));
  o.start_histogram();
  o.observe_histogram(Tensor::from_vector<float>({3}, {1.0f, NAN, -1.0f}));
  for (auto a : {CalibrationAlgorithm::kMinMax, CalibrationAlgorithm::kEntropy}) {
    EXPECT_TRUE(
        status_is(o.range(a, 99.99, kSigned).status(), StatusCode::kInvalidArgument, {"NaN"}));
  }
}

TEST(Observer, AllZeroValueGetsASmallNonZeroRange) {
  const Observer o = observe(Tensor::zeros(DType::kFloat32, {64}));
  for (auto a : {CalibrationAlgorithm::kEntropy, CalibrationAlgorithm::kMse,
                 CalibrationAlgorithm::kPercentile, CalibrationAlgorithm::kMinMax}) {
    const Range r = range_of(o, a);
    EXPECT_EQ(r.min, 0.0f);
    EXPECT_GT(r.max, 0.0f);
    EXPECT_LT(r.max, 1e-3f);
    EXPECT_TRUE(std::isnormal(r.max / 255.0f));  // a usable u8 scale
  }
}

TEST(Observer, HistogramAlgorithmsNeedTheSecondPass) {
  Observer o;
  o.observe_minmax(random_tensor({16}, 1));
  EXPECT_TRUE(o.range(CalibrationAlgorithm::kMinMax, 99.99, kSigned).ok());
  EXPECT_TRUE(status_is(o.range(CalibrationAlgorithm::kEntropy, 99.99, kSigned).status(),
                        StatusCode::kFailedPrecondition, {"histogram"}));
  Observer empty;
  EXPECT_FALSE(empty.range(CalibrationAlgorithm::kMinMax, 99.99, kSigned).ok());
}

TEST(CalibrationAlgorithm, NamesRoundTrip) {
  for (auto a : {CalibrationAlgorithm::kEntropy, CalibrationAlgorithm::kMinMax,
                 CalibrationAlgorithm::kPercentile, CalibrationAlgorithm::kMse})
    EXPECT_EQ(calibration_algorithm_from_name(calibration_algorithm_name(a)), a);
  EXPECT_EQ(calibration_algorithm_name(CalibrationAlgorithm::kEntropy), "entropy");
  EXPECT_EQ(calibration_algorithm_name(CalibrationAlgorithm::kMinMax), "minmax");
  EXPECT_EQ(calibration_algorithm_name(CalibrationAlgorithm::kPercentile), "percentile");
  EXPECT_EQ(calibration_algorithm_name(CalibrationAlgorithm::kMse), "mse");
  EXPECT_FALSE(calibration_algorithm_from_name("kl-ish").has_value());
}

// --- calibrate() ---------------------------------------------------------------------------------

// x[N,2,6,6] -> Conv "conv" (4 filters 3x3, pad 1) -> c -> Relu "relu" -> r -> Flatten "flat"
// -> f[N,144] -> Gemm "fc" (transB) -> y[N,3]
struct TinyNet {
  ir::Graph g;
  explicit TinyNet(uint64_t weight_seed = 1, int64_t batch = kDynamicDim) {
    ir::Value* x = g.add_value("x", DType::kFloat32, {batch, 2, 6, 6});
    ir::Value* w = g.add_constant("w", random_tensor({4, 2, 3, 3}, weight_seed));
    ir::Value* b = g.add_constant("b", random_tensor({4}, weight_seed + 1));
    ir::Value* c = g.add_value("c", DType::kFloat32, {batch, 4, 6, 6});
    ir::Value* r = g.add_value("r", DType::kFloat32, {batch, 4, 6, 6});
    ir::Value* f = g.add_value("f", DType::kFloat32, {batch, 144});
    ir::Value* w2 = g.add_constant("w2", random_tensor({3, 144}, weight_seed + 2));
    ir::Value* b2 = g.add_constant("b2", random_tensor({3}, weight_seed + 3));
    ir::Value* y = g.add_value("y", DType::kFloat32, {batch, 3});
    ir::Node* conv = g.add_node(OpKind::kConv, "conv", {x, w, b}, {c});
    conv->attrs["pads"] = std::vector<int64_t>{1, 1, 1, 1};
    conv->attrs["kernel_shape"] = std::vector<int64_t>{3, 3};
    g.add_node(OpKind::kRelu, "relu", {c}, {r});
    g.add_node(OpKind::kFlatten, "flat", {r}, {f})->attrs["axis"] = int64_t(1);
    g.add_node(OpKind::kGemm, "fc", {f, w2, b2}, {y})->attrs["transB"] = int64_t(1);
    g.inputs() = {x};
    g.outputs() = {y};
  }
};

const std::set<std::string> kValues = {"x", "c", "r", "y"};

std::vector<TensorMap> make_batches(int count, int64_t rows, uint64_t seed) {
  std::vector<TensorMap> batches;
  for (int i = 0; i < count; ++i)
    batches.push_back({{"x", random_tensor({rows, 2, 6, 6}, seed + uint64_t(i), -2.0f, 2.0f)}});
  return batches;
}

// The true extremes of every value over the batches, from the interpreter.
std::map<std::string, std::pair<float, float>> true_extremes(const ir::Graph& g,
                                                             const std::vector<TensorMap>& data) {
  std::map<std::string, std::pair<float, float>> out;
  runtime::InterpreterOptions opts;
  opts.keep_intermediates = true;
  auto update = [&](const std::string& name, const Tensor& t) {
    auto [it, fresh] = out.try_emplace(name, INFINITY, -INFINITY);
    for (float v : t.span<float>()) {
      it->second.first = std::min(it->second.first, v);
      it->second.second = std::max(it->second.second, v);
    }
  };
  for (const TensorMap& batch : data) {
    auto run = runtime::run_reference(g, batch, opts);
    EXPECT_TRUE(run.ok()) << run.status().to_string();
    if (!run.ok()) return out;
    update("x", batch.at("x"));
    for (const auto& [name, t] : *run) update(name, t);
  }
  return out;
}

CalibrationOptions options_for(CalibrationAlgorithm a, int64_t batch_size = 32) {
  CalibrationOptions o;
  o.algorithm = a;
  o.batch_size = batch_size;
  return o;
}

TEST(Calibrate, MinMaxCoversTheObservedExtremes) {
  TinyNet net;
  const auto batches = make_batches(2, 8, 100);
  const auto truth = true_extremes(net.g, batches);
  auto result = calibrate(net.g, kValues, {"y"}, CalibrationData::from_batches(batches),
                          options_for(CalibrationAlgorithm::kMinMax));
  ASSERT_TRUE(result.ok()) << result.status().to_string();
  EXPECT_EQ(result->samples, 16);
  EXPECT_FALSE(result->from_cache);
  ASSERT_EQ(result->ranges.size(), kValues.size());
  for (const auto& [name, range] : result->ranges) {
    const auto [lo, hi] = truth.at(name);
    EXPECT_LE(range.min, lo) << name;
    EXPECT_GE(range.max, hi) << name;
  }
  const float amax_c = std::max(-truth.at("c").first, truth.at("c").second);
  EXPECT_EQ(result->ranges.at("c").max, amax_c);  // symmetric
  EXPECT_EQ(result->ranges.at("c").min, -amax_c);
  EXPECT_EQ(result->ranges.at("r").min, 0.0f);  // non-negative
  EXPECT_EQ(result->ranges.at("r").max, truth.at("r").second);
  EXPECT_EQ(result->ranges.at("y").min, std::min(truth.at("y").first, 0.0f));  // asymmetric
  EXPECT_EQ(result->ranges.at("y").max, std::max(truth.at("y").second, 0.0f));
}

TEST(Calibrate, HistogramAlgorithmsStayWithinTheExtremes) {
  TinyNet net;
  const auto batches = make_batches(2, 8, 200);
  const auto truth = true_extremes(net.g, batches);
  for (auto a : {CalibrationAlgorithm::kEntropy, CalibrationAlgorithm::kPercentile,
                 CalibrationAlgorithm::kMse}) {
    auto result =
        calibrate(net.g, kValues, {}, CalibrationData::from_batches(batches), options_for(a, 5));
    ASSERT_TRUE(result.ok()) << result.status().to_string();
    for (const auto& [name, range] : result->ranges) {
      const auto [lo, hi] = truth.at(name);
      const float amax = std::max(-lo, hi);
      EXPECT_GT(range.max, 0.0f) << name << " " << calibration_algorithm_name(a);
      EXPECT_LE(range.max, amax) << name << " " << calibration_algorithm_name(a);
      EXPECT_GE(range.min, std::min(-amax, 0.0f)) << name;
      if (lo >= 0)
        EXPECT_EQ(range.min, 0.0f) << name;
      else
        EXPECT_EQ(range.min, -range.max) << name;
    }
  }
}

TEST(Calibrate, BatchSplittingDoesNotChangeTheResult) {
  TinyNet net;
  const auto two = make_batches(2, 8, 300);
  // The same 16 samples as one batch.
  Tensor all = Tensor::empty(DType::kFloat32, {16, 2, 6, 6});
  std::copy_n(two[0].at("x").data<float>(), 8 * 72, all.data<float>());
  std::copy_n(two[1].at("x").data<float>(), 8 * 72, all.data<float>() + 8 * 72);
  for (auto a : {CalibrationAlgorithm::kMinMax, CalibrationAlgorithm::kEntropy}) {
    auto reference = calibrate(net.g, kValues, {}, CalibrationData::from_batches({{{"x", all}}}),
                               options_for(a, 16));
    ASSERT_TRUE(reference.ok()) << reference.status().to_string();
    for (int64_t batch_size : {1, 3, 7, 100}) {
      auto split = calibrate(net.g, kValues, {}, CalibrationData::from_batches(two),
                             options_for(a, batch_size));
      ASSERT_TRUE(split.ok()) << split.status().to_string();
      EXPECT_EQ(split->samples, 16);
      for (const auto& [name, range] : reference->ranges) {
        EXPECT_EQ(split->ranges.at(name).min, range.min) << name << " batch " << batch_size;
        EXPECT_EQ(split->ranges.at(name).max, range.max) << name << " batch " << batch_size;
      }
    }
  }
}

TEST(Calibrate, MaxSamplesStopsEarly) {
  TinyNet net;
  const auto batches = make_batches(3, 8, 400);
  CalibrationOptions o = options_for(CalibrationAlgorithm::kMinMax, 3);
  o.max_samples = 10;
  auto result = calibrate(net.g, {"x"}, {}, CalibrationData::from_batches(batches), o);
  ASSERT_TRUE(result.ok()) << result.status().to_string();
  EXPECT_EQ(result->samples, 10);
  // Only the first 10 samples count: 8 of batch 0 and 2 of batch 1.
  const auto truth_first =
      true_extremes(net.g, {batches[0], {{"x", batches[1].at("x").slice_rows(0, 2)}}});
  const float amax = std::max(-truth_first.at("x").first, truth_first.at("x").second);
  EXPECT_EQ(result->ranges.at("x").max, amax);
}

TEST(Calibrate, StaticBatchModelTakesManySamplesOneAtATime) {
  TinyNet dynamic_net;
  TinyNet static_net(1, /*batch=*/1);
  const auto batches = make_batches(1, 6, 500);
  auto a = calibrate(dynamic_net.g, kValues, {}, CalibrationData::from_batches(batches),
                     options_for(CalibrationAlgorithm::kMinMax));
  auto b = calibrate(static_net.g, kValues, {}, CalibrationData::from_batches(batches),
                     options_for(CalibrationAlgorithm::kMinMax));
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  EXPECT_EQ(b->samples, 6);
  for (const auto& [name, range] : a->ranges) {
    EXPECT_EQ(b->ranges.at(name).min, range.min) << name;
    EXPECT_EQ(b->ranges.at(name).max, range.max) << name;
  }
}

TEST(Calibrate, UnnamedArrayMeansTheOnlyInput) {
  TinyNet net;
  auto batches = make_batches(1, 4, 600);
  auto named = calibrate(net.g, {"y"}, {}, CalibrationData::from_batches(batches),
                         options_for(CalibrationAlgorithm::kMinMax));
  auto unnamed =
      calibrate(net.g, {"y"}, {}, CalibrationData::from_batches({{{"", batches[0].at("x")}}}),
                options_for(CalibrationAlgorithm::kMinMax));
  ASSERT_TRUE(named.ok()) << named.status().to_string();
  ASSERT_TRUE(unnamed.ok()) << unnamed.status().to_string();
  EXPECT_EQ(named->ranges.at("y").max, unnamed->ranges.at("y").max);
}

TEST(Calibrate, UnnamedArrayForATwoInputModelIsAnError) {
  ir::Graph g;
  ir::Value* a = g.add_value("a", DType::kFloat32, {kDynamicDim, 4});
  ir::Value* b = g.add_value("b", DType::kFloat32, {kDynamicDim, 4});
  ir::Value* s = g.add_value("s", DType::kFloat32, {kDynamicDim, 4});
  g.add_node(OpKind::kAdd, "add", {a, b}, {s});
  g.inputs() = {a, b};
  g.outputs() = {s};
  auto r =
      calibrate(g, {"s"}, {}, CalibrationData::from_batches({{{"", random_tensor({2, 4}, 1)}}}),
                options_for(CalibrationAlgorithm::kMinMax));
  EXPECT_TRUE(
      status_is(r, StatusCode::kInvalidArgument, {"unnamed", "2 inputs", "'a'", "'b'", ".npz"}));
  // Named arrays work.
  auto ok = calibrate(g, {"s", "a"}, {},
                      CalibrationData::from_batches(
                          {{{"a", random_tensor({2, 4}, 1)}, {"b", random_tensor({2, 4}, 2)}}}),
                      options_for(CalibrationAlgorithm::kEntropy, 1));
  ASSERT_TRUE(ok.ok()) << ok.status().to_string();
  EXPECT_EQ(ok->ranges.size(), 2u);
}

TEST(Calibrate, BadCalibrationSets) {
  TinyNet net;
  const auto opts = options_for(CalibrationAlgorithm::kEntropy);
  auto run = [&](std::vector<TensorMap> batches) {
    return calibrate(net.g, kValues, {}, CalibrationData::from_batches(std::move(batches)), opts);
  };
  EXPECT_TRUE(status_is(calibrate(net.g, kValues, {}, CalibrationData(), opts),
                        StatusCode::kInvalidArgument, {"calibration set is empty"}));
  auto good = make_batches(1, 2, 1)[0];
  EXPECT_TRUE(status_is(run({good, {{"image", good.at("x")}}}), StatusCode::kInvalidArgument,
                        {"batch 1", "'image'", "'x'"}));
  EXPECT_TRUE(status_is(run({good, good, {{"x", good.at("x")}, {"extra", good.at("x")}}}),
                        StatusCode::kInvalidArgument, {"batch 2", "'extra'"}));
  EXPECT_TRUE(status_is(run({{}}), StatusCode::kInvalidArgument, {"batch 0", "'x'"}));
  EXPECT_TRUE(status_is(run({{{"x", random_tensor({2, 3, 6, 6}, 1)}}}),
                        StatusCode::kInvalidArgument,
                        {"batch 0", "'x'", "[2,3,6,6]", "[N,2,6,6]"}));
  EXPECT_TRUE(status_is(run({{{"x", random_tensor({2, 2, 6}, 1)}}}), StatusCode::kInvalidArgument,
                        {"'x'", "[2,2,6]", "[N,2,6,6]"}));
  EXPECT_TRUE(status_is(run({good, {{"x", good.at("x").to(DType::kFloat16)}}}),
                        StatusCode::kInvalidArgument, {"batch 1", "'x'", "f16", "f32"}));
  Tensor nan = random_tensor({3, 2, 6, 6}, 2);
  nan.data<float>()[2 * 72 + 5] = NAN;
  EXPECT_TRUE(status_is(run({good, {{"x", nan}}}), StatusCode::kInvalidArgument,
                        {"batch 1", "'x'", "NaN", "sample 2"}));
  Tensor inf = random_tensor({1, 2, 6, 6}, 3);
  inf.data<float>()[0] = INFINITY;
  EXPECT_TRUE(
      status_is(run({{{"x", inf}}}), StatusCode::kInvalidArgument, {"batch 0", "infinite"}));
}

TEST(Calibrate, BadValueNamesAndOptions) {
  TinyNet net;
  const auto data = CalibrationData::from_batches(make_batches(1, 2, 1));
  EXPECT_TRUE(
      status_is(calibrate(net.g, {"nope"}, {}, data, {}), StatusCode::kNotFound, {"'nope'"}));
  ir::Value* orphan = net.g.add_value("orphan", DType::kFloat32, {2});
  (void)orphan;
  EXPECT_TRUE(status_is(calibrate(net.g, {"orphan"}, {}, data, {}), StatusCode::kInvalidArgument,
                        {"'orphan'", "never computed"}));
  CalibrationOptions bad = options_for(CalibrationAlgorithm::kPercentile);
  bad.percentile = 120;
  EXPECT_TRUE(status_is(calibrate(net.g, {"y"}, {}, data, bad), StatusCode::kInvalidArgument,
                        {"percentile"}));
}

TEST(Calibrate, ObservesConstants) {
  TinyNet net;
  auto r = calibrate(net.g, {"w"}, {}, CalibrationData::from_batches(make_batches(1, 2, 1)),
                     options_for(CalibrationAlgorithm::kMinMax));
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  float amax = 0;
  for (float v : net.g.find_value("w")->constant.span<float>()) amax = std::max(amax, std::fabs(v));
  EXPECT_EQ(r->ranges.at("w").max, amax);
}

TEST(Calibrate, ProgressBarDrawsOneLine) {
  TinyNet net;
  CalibrationOptions o = options_for(CalibrationAlgorithm::kPercentile, 3);
  o.progress = true;
  ::testing::internal::CaptureStderr();
  auto r = calibrate(net.g, {"y"}, {}, CalibrationData::from_batches(make_batches(2, 4, 1)), o);
  const std::string err = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_NE(err.find("calibrating ["), std::string::npos) << err;
  EXPECT_NE(err.find("8/8 samples, pass 1/2"), std::string::npos) << err;
  EXPECT_NE(err.find("8/8 samples, pass 2/2"), std::string::npos) << err;
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
  EXPECT_EQ(err.back(), '\n');
}

// --- cache ---------------------------------------------------------------------------------------

TEST(CalibrationCache, RoundTripThroughCalibrate) {
  TempDir dir;
  TinyNet net;
  const auto data = CalibrationData::from_batches(make_batches(2, 4, 1));
  CalibrationOptions o = options_for(CalibrationAlgorithm::kEntropy);
  o.cache_path = dir.file("sub/cache.json");
  auto first = calibrate(net.g, kValues, {"y"}, data, o);
  ASSERT_TRUE(first.ok()) << first.status().to_string();
  EXPECT_FALSE(first->from_cache);
  ASSERT_TRUE(std::filesystem::exists(o.cache_path));
  auto second = calibrate(net.g, kValues, {"y"}, data, o);
  ASSERT_TRUE(second.ok()) << second.status().to_string();
  EXPECT_TRUE(second->from_cache);
  for (const auto& [name, range] : first->ranges) {
    EXPECT_EQ(second->ranges.at(name).min, range.min) << name;
    EXPECT_EQ(second->ranges.at(name).max, range.max) << name;
  }
  // Asymmetric-ness is part of the value set: another choice is another key.
  EXPECT_TRUE(status_is(calibrate(net.g, kValues, {}, data, o), StatusCode::kFailedPrecondition,
                        {"set of calibrated values"}));
}

TEST(CalibrationCache, SaveAndLoad) {
  TempDir dir;
  const std::string path = dir.file("c.json");
  EXPECT_TRUE(status_is(load_calibration_cache(path, "k"), StatusCode::kNotFound, {path}));
  const std::map<std::string, Range> ranges = {{"a", {-1.5f, 1.5f}}, {"b", {0.0f, 3.0e-7f}}};
  TinyNet net;
  const auto data = CalibrationData::from_batches(make_batches(1, 2, 1));
  const std::string key = calibration_cache_key(net.g, data, {}, {"a", "b"});
  ASSERT_TRUE(save_calibration_cache(path, key, ranges).ok());
  auto loaded = load_calibration_cache(path, key);
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  ASSERT_EQ(loaded->size(), 2u);
  EXPECT_EQ(loaded->at("a").min, -1.5f);
  EXPECT_EQ(loaded->at("b").max, 3.0e-7f);
  // The file is plain JSON with the documented fields; no temporary is left behind.
  std::ifstream in(path);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("\"mixq-calibration-cache\""), std::string::npos);
  EXPECT_NE(text.find("\"parts\""), std::string::npos);
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()),
                          std::filesystem::directory_iterator()),
            1);
}

TEST(CalibrationCache, KeyIsStableAndCoversEveryPart) {
  TinyNet net, same, other_weights(42);
  const auto batches = make_batches(1, 2, 1);
  const auto data = CalibrationData::from_batches(batches);
  const CalibrationOptions o;
  const std::string key = calibration_cache_key(net.g, data, o, {"c", "r"});
  EXPECT_EQ(key,
            calibration_cache_key(same.g, CalibrationData::from_batches(batches), o, {"r", "c"}));
  EXPECT_NE(key, calibration_cache_key(other_weights.g, data, o, {"c", "r"}));
  EXPECT_NE(key, calibration_cache_key(net.g, CalibrationData::from_batches(make_batches(1, 2, 2)),
                                       o, {"c", "r"}));
  CalibrationOptions pct;
  pct.algorithm = CalibrationAlgorithm::kPercentile;
  CalibrationOptions pct2 = pct;
  pct2.percentile = 99.9;
  EXPECT_NE(calibration_cache_key(net.g, data, pct, {"c"}),
            calibration_cache_key(net.g, data, pct2, {"c"}));
  EXPECT_NE(key, calibration_cache_key(net.g, data, o, {"c"}));
  // Batch size does not change the ranges, so it does not change the key.
  CalibrationOptions small = o;
  small.batch_size = 1;
  EXPECT_EQ(key, calibration_cache_key(net.g, data, small, {"c", "r"}));
  // An attribute change is a model change.
  same.g.find_node("flat")->attrs["axis"] = int64_t(2);
  EXPECT_NE(key, calibration_cache_key(same.g, data, o, {"c", "r"}));
}

TEST(CalibrationCache, MismatchSaysWhichPartDiffers) {
  TempDir dir;
  TinyNet net, other(42);
  const auto data = CalibrationData::from_batches(make_batches(1, 2, 1));
  const auto other_data = CalibrationData::from_batches(make_batches(1, 2, 9));
  CalibrationOptions o = options_for(CalibrationAlgorithm::kMinMax);
  o.cache_path = dir.file("cache.json");
  ASSERT_TRUE(calibrate(net.g, kValues, {}, data, o).ok());

  EXPECT_TRUE(status_is(calibrate(other.g, kValues, {}, data, o), StatusCode::kFailedPrecondition,
                        {o.cache_path, "model", "will not be used", "delete"}));
  auto data_changed = calibrate(net.g, kValues, {}, other_data, o);
  EXPECT_TRUE(status_is(data_changed, StatusCode::kFailedPrecondition,
                        {"calibration data", "will not be used"}));
  EXPECT_EQ(data_changed.status().message().find("model changed"), std::string::npos)
      << data_changed.status().message();
  CalibrationOptions mse = o;
  mse.algorithm = CalibrationAlgorithm::kMse;
  EXPECT_TRUE(status_is(calibrate(net.g, kValues, {}, data, mse), StatusCode::kFailedPrecondition,
                        {"algorithm", "minmax", "mse"}));
  EXPECT_TRUE(status_is(calibrate(net.g, {"c"}, {}, data, o), StatusCode::kFailedPrecondition,
                        {"set of calibrated values"}));
}

TEST(CalibrationCache, CorruptFilesAreDataLoss) {
  TempDir dir;
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir.file(name)) << text;
    return dir.file(name);
  };
  const std::string key = "0123456789abcdef-0123456789abcdef-minmax-0123456789abcdef";
  auto header = [&](const std::string& ranges) {
    return std::string(R"({"format": "mixq-calibration-cache", "version": 1, "key": ")") + key +
           R"(", "ranges": )" + ranges + "}";
  };
  std::string p = write("garbage.json", "not json at all {");
  EXPECT_TRUE(status_is(load_calibration_cache(p, key), StatusCode::kDataLoss, {p, "not"}));
  p = write("other.json", R"({"format": "something-else", "version": 1})");
  EXPECT_TRUE(status_is(load_calibration_cache(p, key), StatusCode::kDataLoss, {p, "format"}));
  p = write("version.json", R"({"format": "mixq-calibration-cache", "version": 7})");
  EXPECT_TRUE(status_is(load_calibration_cache(p, key), StatusCode::kDataLoss, {p, "version"}));
  p = write("inverted.json", header(R"({"a": [2.0, 1.0]})"));
  EXPECT_TRUE(status_is(load_calibration_cache(p, key), StatusCode::kDataLoss, {p, "'a'"}));
  p = write("nan.json", header(R"({"a": [null, 1.0]})"));
  EXPECT_TRUE(status_is(load_calibration_cache(p, key), StatusCode::kDataLoss, {p, "'a'"}));
  p = write("short.json", header(R"({"a": [1.0]})"));
  EXPECT_TRUE(status_is(load_calibration_cache(p, key), StatusCode::kDataLoss, {p, "'a'"}));
  p = write("ok.json", header(R"({"a": [-1.0, 1.0]})"));
  EXPECT_TRUE(load_calibration_cache(p, key).ok());
  // Through calibrate(): the corrupt cache is reported, not overwritten.
  TinyNet net;
  CalibrationOptions o = options_for(CalibrationAlgorithm::kMinMax);
  o.cache_path = write("broken.json", "{\"format\": ");
  EXPECT_TRUE(status_is(
      calibrate(net.g, {"y"}, {}, CalibrationData::from_batches(make_batches(1, 2, 1)), o),
      StatusCode::kDataLoss, {o.cache_path}));
}

// --- CalibrationData -----------------------------------------------------------------------------

TEST(CalibrationData, FromNpy) {
  TempDir dir;
  const Tensor t = random_tensor({5, 2, 6, 6}, 1);
  ASSERT_TRUE(save_npy(dir.file("x.npy"), t).ok());
  auto data = CalibrationData::from_path(dir.file("x.npy"));
  ASSERT_TRUE(data.ok()) << data.status().to_string();
  ASSERT_EQ(data->batches().size(), 1u);
  EXPECT_EQ(data->batches()[0].count(""), 1u);
  EXPECT_EQ(data->sample_count(), 5);
  EXPECT_EQ(data->source(), dir.file("x.npy"));
  // And it calibrates the single-input model.
  TinyNet net;
  auto r = calibrate(net.g, {"y"}, {}, *data, options_for(CalibrationAlgorithm::kMinMax));
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->samples, 5);
}

TEST(CalibrationData, FromNpz) {
  TempDir dir;
  ASSERT_TRUE(save_npz(dir.file("named.npz"),
                       {{"a", random_tensor({3, 4}, 1)}, {"b", random_tensor({3, 4}, 2)}})
                  .ok());
  auto named = CalibrationData::from_path(dir.file("named.npz"));
  ASSERT_TRUE(named.ok()) << named.status().to_string();
  ASSERT_EQ(named->batches().size(), 1u);
  EXPECT_EQ(named->batches()[0].count("a"), 1u);
  EXPECT_EQ(named->batches()[0].count("b"), 1u);
  EXPECT_EQ(named->sample_count(), 3);

  ASSERT_TRUE(save_npz(dir.file("positional.npz"), {{"arr_0", random_tensor({7, 4}, 1)}}).ok());
  auto positional = CalibrationData::from_path(dir.file("positional.npz"));
  ASSERT_TRUE(positional.ok()) << positional.status().to_string();
  EXPECT_EQ(positional->batches()[0].count(""), 1u);
  EXPECT_EQ(positional->sample_count(), 7);

  // A zip archive with no entries: only the end-of-central-directory record.
  std::ofstream(dir.file("empty.npz"), std::ios::binary)
      << std::string("PK\x05\x06", 4) << std::string(18, '\0');
  auto empty = CalibrationData::from_path(dir.file("empty.npz"));
  ASSERT_FALSE(empty.ok());
  EXPECT_NE(empty.status().message().find("empty.npz"), std::string::npos)
      << empty.status().message();
}

TEST(CalibrationData, FromFolderInNameOrder) {
  TempDir dir;
  const Tensor first = random_tensor({2, 2, 6, 6}, 1), second = random_tensor({3, 2, 6, 6}, 2);
  ASSERT_TRUE(save_npz(dir.file("batch_0.npz"), {{"x", first}}).ok());
  ASSERT_TRUE(save_npy(dir.file("batch_1.npy"), second).ok());
  std::ofstream(dir.file("README.txt")) << "not a batch";
  auto data = CalibrationData::from_path(dir.path().string());
  ASSERT_TRUE(data.ok()) << data.status().to_string();
  ASSERT_EQ(data->batches().size(), 2u);
  EXPECT_EQ(data->batches()[0].count("x"), 1u);
  EXPECT_EQ(data->batches()[1].count(""), 1u);
  EXPECT_EQ(data->sample_count(), 5);
  TinyNet net;
  auto r = calibrate(net.g, {"y"}, {}, *data, options_for(CalibrationAlgorithm::kEntropy, 2));
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->samples, 5);
}

TEST(CalibrationData, Errors) {
  TempDir dir;
  EXPECT_TRUE(status_is(CalibrationData::from_path(dir.file("missing.npy")), StatusCode::kNotFound,
                        {"missing.npy"}));
  std::filesystem::create_directory(dir.file("empty"));
  EXPECT_TRUE(status_is(CalibrationData::from_path(dir.file("empty")), StatusCode::kInvalidArgument,
                        {"empty", "no .npy or .npz"}));
  std::ofstream(dir.file("broken.npy")) << "this is not numpy";
  auto broken = CalibrationData::from_path(dir.file("broken.npy"));
  ASSERT_FALSE(broken.ok());
  EXPECT_NE(broken.status().message().find("broken.npy"), std::string::npos)
      << broken.status().message();
  std::ofstream(dir.file("data.csv")) << "1,2,3";
  EXPECT_TRUE(status_is(CalibrationData::from_path(dir.file("data.csv")),
                        StatusCode::kInvalidArgument, {"data.csv", ".npy"}));
  // A broken file inside a folder names that file.
  std::filesystem::create_directory(dir.file("folder"));
  ASSERT_TRUE(save_npy(dir.file("folder/a.npy"), random_tensor({1, 2}, 1)).ok());
  std::ofstream(dir.file("folder/b.npz")) << "zip? no";
  auto folder = CalibrationData::from_path(dir.file("folder"));
  ASSERT_FALSE(folder.ok());
  EXPECT_NE(folder.status().message().find("b.npz"), std::string::npos)
      << folder.status().message();
}

TEST(CalibrationData, FromBatchesCountsSamples) {
  auto data = CalibrationData::from_batches(make_batches(3, 4, 1));
  EXPECT_FALSE(data.empty());
  EXPECT_EQ(data.sample_count(), 12);
  EXPECT_TRUE(CalibrationData().empty());
  EXPECT_EQ(CalibrationData().sample_count(), 0);
}

}  // namespace
}  // namespace mixq::quant
