// The CUDA backend on a GPU (its own executable, mixq_cuda_tests, CTest label "cuda"). Every test
// first asks for the backend: on a machine without a device it reports "skipped: no CUDA device".
//
// What is checked, against the reference backend (Model::run_reference, fp32):
//   * single-layer engines built with Builder for every precision: convolutions (3x3, 1x1,
//     stride 2, groups, depthwise, bias, relu, clip, residual) through cuDNN and linear layers
//     through cuBLASLt, at batch 1, 3 and the maximum (other batch sizes re-instantiate the plan);
//     three-layer blocks whose middle values stay int8/fp8/fp16 (quantised outputs, quantised
//     residuals);
//     fp32 <= 1e-4, tf32/fp16 <= 1e-2, bf16 <= 2e-2 of the largest reference magnitude; int8 >= 30
//     dB and fp8 >= 25 dB SQNR for one layer (e4m3 keeps 3 mantissa bits: rounding both operands
//     costs ~31.7 dB each, ~28.7 dB together, so 30 dB is out of reach by construction), 25 / 15 dB
//     for the three-layer blocks (six roundings in a row);
//   * the int8 linear layer exactly: int32 accumulation, checked against integers computed here;
//   * the own kernels: reformat between every dtype pair and NCHW <-> NHWC (direct kernel calls),
//     pooling, elementwise ops, concat and softmax (single-op engines);
//   * whole torchvision models (MIXQ_TORCHVISION_DIR, as tests/models uses) at fp32 and fp16;
//   * the engine file round trip on the GPU (same outputs, tuning choices recorded and reused).
// The binary needs nothing from the source tree at run time.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "backends/backend.h"
#include "engine/engine_impl.h"
#include "ir/graph.h"
#include "mixq/io.h"
#include "support/engine_file_util.h"
#include "support/engine_util.h"
#include "support/onnx_builder.h"
#include "support/test_util.h"

namespace mixq {
namespace {

using testing::append_conv_epilogue;
using testing::build_engine;
using testing::infer_once;
using testing::load_model;
using testing::OnnxBuilder;
using testing::random_calibration;
using testing::random_model_inputs;
using testing::random_tensor;
using testing::reference_outputs;

// Tuning is exercised by every build; keep it short unless the caller says otherwise.
const bool kTuningDefaults = [] {
  setenv("MIXQ_CUDA_TUNE_CONFIGS", "6", 0);
  setenv("MIXQ_CUDA_TUNE_SECONDS", "1", 0);
  return true;
}();

// "" when the backend starts; else why not.
const std::string& cuda_unavailable() {
  static const std::string why = [] {
    auto b = backends::make_backend("cuda");
    return b.ok() ? std::string() : b.status().message();
  }();
  return why;
}

// Skips the test on a machine without a device; a backend that cannot load for another reason
// (libraries missing) is a failure.
#define REQUIRE_CUDA()                                                        \
  do {                                                                        \
    const std::string& why_ = cuda_unavailable();                             \
    if (why_.find("no CUDA device") != std::string::npos)                     \
      GTEST_SKIP() << "skipped: no CUDA device";                              \
    ASSERT_TRUE(why_.empty()) << "the cuda backend does not start: " << why_; \
  } while (0)

constexpr int64_t kMaxBatch = 8;

// bf16 keeps 8 significant bits: rounding x and W moves each product by up to 2^-8, and a clip
// caps max |y| (the normaliser) below the magnitudes the products sum to, so 1e-2 is within a
// rounding or two of bf16's own resolution there (measured 1.006e-2 on an H200): 2e-2.
double tolerance(Precision p) {
  switch (p) {
    case Precision::kFP32:
      return 1e-4;
    case Precision::kTF32:
    case Precision::kFP16:
      return 1e-2;
    case Precision::kBF16:
      return 2e-2;
    default:
      return 0;
  }
}

double min_sqnr(Precision p, bool block) {
  if (p == Precision::kINT8) return block ? 25.0 : 30.0;
  return block ? 15.0 : 25.0;
}

bool quantized(Precision p) {
  return p == Precision::kINT8 || p == Precision::kFP8;
}

BuildOptions cuda_options(Precision default_precision = Precision::kFP32,
                          int64_t max_batch = kMaxBatch) {
  BuildOptions o;
  o.backend = "cuda";
  o.default_precision = default_precision;
  o.max_batch = max_batch;
  o.calibration.algorithm = CalibrationAlgorithm::kMinMax;  // stable on small random sets
  return o;
}

// For engines whose runs are compared bit for bit: only kernels that give the same bits on
// every run (the default takes the fastest, which may not).
BuildOptions deterministic_options(Precision default_precision = Precision::kFP32) {
  BuildOptions o = cuda_options(default_precision);
  o.deterministic = true;
  return o;
}

// A plan asking `precision` explicitly for the layers named (module names), so an unsupported
// layer fails the build instead of falling back.
std::string plan_for(const std::vector<std::string>& layers, Precision p,
                     const std::string& extra = "") {
  std::string s = R"({"layers": [)";
  for (size_t i = 0; i < layers.size(); ++i)
    s += std::string(i ? ", " : "") + R"({"match": ")" + layers[i] + R"(", "precision": ")" +
         std::string(precision_name(p)) + "\"" + extra + "}";
  return s + "]}";
}

struct CheckResult {
  BuildReport report;
  bool built = false;
  std::string error;
};

// Builds `model` with `plan` (quantised precisions: calibrated on 4 batches of the inputs'
// distribution), then compares with the reference at batch 1, 3 and the maximum.
CheckResult check_engine(const std::shared_ptr<const Model>& model, Precision precision,
                         const std::string& plan, bool block = false, float lo = -1.0f,
                         float hi = 1.0f) {
  CheckResult result;
  std::optional<CalibrationData> calibration;
  if (quantized(precision)) calibration = random_calibration(*model, 4, 8, 4242, lo, hi);
  auto engine = build_engine(model, cuda_options(), plan, calibration);
  if (!engine.ok()) {
    result.error = engine.status().to_string();
    return result;
  }
  result.built = true;
  result.report = engine->report();
  SCOPED_TRACE("engine layers:\n" + testing::describe_layers(engine->report()));
  for (int64_t batch : {int64_t(1), int64_t(3), kMaxBatch}) {
    SCOPED_TRACE("batch " + std::to_string(batch));
    const TensorMap inputs = random_model_inputs(*model, batch, 100 + uint64_t(batch), lo, hi);
    const TensorMap ref = reference_outputs(*model, inputs);
    const TensorMap got = infer_once(*engine, inputs);
    for (const auto& [name, expected] : ref) {
      auto it = got.find(name);
      if (it == got.end()) {
        ADD_FAILURE() << "the engine did not return output '" << name << "'";
        continue;
      }
      const Tensor& actual = it->second;
      EXPECT_EQ(actual.shape(), expected.shape()) << name;
      if (actual.shape() != expected.shape()) continue;
      if (quantized(precision)) {
        EXPECT_GE(testing::sqnr_db(actual, expected), min_sqnr(precision, block)) << name;
      } else {
        EXPECT_LE(testing::max_relative_error(actual, expected), tolerance(precision)) << name;
      }
    }
  }
  return result;
}

const std::vector<Precision> kPrecisions = {Precision::kFP32, Precision::kTF32, Precision::kFP16,
                                            Precision::kBF16, Precision::kINT8, Precision::kFP8};

std::string param_name(const std::string& name, Precision p) {
  return name + "_" + std::string(precision_name(p));
}

// --- convolutions (cuDNN) ------------------------------------------------------------------------

struct ConvCase {
  std::string name;
  int64_t cin, cout, h, w;
  int64_t k;
  int64_t stride = 1, pad = 1, group = 1;
  bool bias = true;
  std::string epilogue;  // "", "relu", "clip", "add", "add_relu"
};

std::shared_ptr<const Model> conv_model(const ConvCase& c, uint64_t seed) {
  OnnxBuilder b(13, "conv_" + c.name);
  const int64_t oh = (c.h + 2 * c.pad - c.k) / c.stride + 1,
                ow = (c.w + 2 * c.pad - c.k) / c.stride + 1;
  b.input("x", {"N", c.cin, c.h, c.w});
  const bool residual = c.epilogue.rfind("add", 0) == 0;
  if (residual) b.input("r", {"N", c.cout, oh, ow});
  b.output("y", {"N", c.cout, oh, ow});
  const float bound = 1.0f / std::sqrt(float(c.cin / c.group * c.k * c.k));
  b.initializer("layer.weight",
                random_tensor({c.cout, c.cin / c.group, c.k, c.k}, seed, -2 * bound, 2 * bound));
  std::vector<std::string> ins = {"x", "layer.weight"};
  if (c.bias) {
    b.initializer("layer.bias", random_tensor({c.cout}, seed + 1, -0.2f, 0.2f));
    ins.push_back("layer.bias");
  }
  const std::string out = c.epilogue.empty() ? "y" : "conv_out";
  b.node("Conv", ins, {out}, "/layer/Conv")
      .attr("kernel_shape", {c.k, c.k})
      .attr("strides", {c.stride, c.stride})
      .attr("pads", {c.pad, c.pad, c.pad, c.pad})
      .attr("group", c.group);
  append_conv_epilogue(b, c.epilogue, out, "/add/Add");
  return load_model(b, "conv_" + c.name);
}

std::vector<ConvCase> conv_cases() {
  return {
      {"k3_pad1_bias", 16, 32, 12, 12, 3},
      // RGB-like input: int8 / fp8 pad the input channels to cuDNN's multiple (4 / 16).
      {"stem_c3", 3, 16, 12, 12, 3},
      {"k1", 32, 16, 7, 7, 1, 1, 0},
      {"k3_stride2", 16, 16, 11, 11, 3, 2, 1},
      {"k1_stride2_no_bias", 16, 32, 8, 8, 1, 2, 0, 1, false},
      {"groups2", 32, 32, 9, 9, 3, 1, 1, 2},
      {"depthwise", 16, 16, 10, 10, 3, 1, 1, 16},
      {"relu", 16, 32, 12, 12, 3, 1, 1, 1, true, "relu"},
      {"clip", 16, 32, 12, 12, 3, 1, 1, 1, true, "clip"},
      {"residual_add", 16, 32, 12, 12, 3, 1, 1, 1, true, "add"},
      {"residual_add_relu", 32, 32, 8, 8, 3, 1, 1, 1, true, "add_relu"},
      {"residual_add_relu_stride2", 16, 32, 10, 10, 3, 2, 1, 1, false, "add_relu"},
  };
}

struct ConvParam {
  ConvCase c;
  Precision precision;
};

void PrintTo(const ConvParam& p, std::ostream* os) {
  *os << param_name(p.c.name, p.precision);
}

class CudaConv : public ::testing::TestWithParam<ConvParam> {};

TEST_P(CudaConv, MatchesReference) {
  REQUIRE_CUDA();
  const ConvParam& p = GetParam();
  testing::ScopedEnv cudnn_only("MIXQ_CUDA_CONV", "cudnn");  // the direct kernel: CudaDirectConv
  auto model = conv_model(p.c, 11);
  ASSERT_TRUE(model);
  const CheckResult r = check_engine(model, p.precision, plan_for({"layer"}, p.precision));
  if (!r.built) {
    // Grouped and depthwise int8/fp8 convolutions: cuDNN's tensor-core engines need channel
    // counts per group in multiples of 4 (int8) / 16 (fp8); the build must say so by layer.
    const int64_t per_group = p.c.cin / p.c.group;
    if (quantized(p.precision) && per_group % (p.precision == Precision::kINT8 ? 4 : 16) != 0) {
      EXPECT_NE(r.error.find("multiples of"), std::string::npos) << r.error;
      EXPECT_NE(r.error.find("layer"), std::string::npos) << r.error;
      GTEST_SKIP() << "not supported, as reported: " << r.error;
    }
    FAIL() << "build failed: " << r.error;
  }
  if (::testing::Test::HasFailure()) return;
  const LayerReport* conv = testing::find_layer(r.report, "FusedConv");
  ASSERT_NE(conv, nullptr) << testing::describe_layers(r.report);
  EXPECT_EQ(conv->actual, p.precision);
  EXPECT_NE(conv->implementation.find("cudnn"), std::string::npos) << conv->implementation;
  RecordProperty("implementation", conv->implementation);
  EXPECT_EQ(r.report.layers.size() - size_t(testing::count_op(r.report, "Reformat")), 1u)
      << "everything fuses into one convolution:\n"
      << testing::describe_layers(r.report);
}

std::vector<ConvParam> conv_params() {
  std::vector<ConvParam> v;
  for (const ConvCase& c : conv_cases())
    for (Precision p : kPrecisions) v.push_back({c, p});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Cudnn, CudaConv, ::testing::ValuesIn(conv_params()),
                         [](const ::testing::TestParamInfo<ConvParam>& i) {
                           return param_name(i.param.c.name, i.param.precision);
                         });

// A residual block: a = relu(convA(x)); b = relu(convB(a) + a); y = convC(b). With every conv at
// one precision, a and b stay in that format (int8/fp8: quantised outputs and a quantised
// residual in the fused chain; fp16/bf16: 16-bit storage).
std::shared_ptr<const Model> block_model(int64_t c, int64_t k, uint64_t seed) {
  OnnxBuilder b(13, "block");
  b.input("x", {"N", c, 8, 8});
  b.output("y", {"N", k, 8, 8});
  const float bound3 = 1.0f / std::sqrt(float(c * 9)), bound1 = 1.0f / std::sqrt(float(c));
  b.initializer("a.weight", random_tensor({c, c, 3, 3}, seed, -2 * bound3, 2 * bound3));
  b.initializer("a.bias", random_tensor({c}, seed + 1, -0.2f, 0.2f));
  b.initializer("b.weight", random_tensor({c, c, 3, 3}, seed + 2, -2 * bound3, 2 * bound3));
  b.initializer("b.bias", random_tensor({c}, seed + 3, -0.2f, 0.2f));
  b.initializer("c.weight", random_tensor({k, c, 1, 1}, seed + 4, -2 * bound1, 2 * bound1));
  b.node("Conv", {"x", "a.weight", "a.bias"}, {"a_out"}, "/a/Conv")
      .attr("kernel_shape", {3, 3})
      .attr("pads", {1, 1, 1, 1});
  b.node("Relu", {"a_out"}, {"a"}, "/a_relu/Relu");
  b.node("Conv", {"a", "b.weight", "b.bias"}, {"b_out"}, "/b/Conv")
      .attr("kernel_shape", {3, 3})
      .attr("pads", {1, 1, 1, 1});
  b.node("Add", {"b_out", "a"}, {"b_sum"}, "/b_add/Add");
  b.node("Relu", {"b_sum"}, {"bb"}, "/b_relu/Relu");
  b.node("Conv", {"bb", "c.weight"}, {"y"}, "/c/Conv").attr("kernel_shape", {1, 1});
  return load_model(b, "block");
}

class CudaBlock : public ::testing::TestWithParam<Precision> {};

TEST_P(CudaBlock, MatchesReference) {
  REQUIRE_CUDA();
  const Precision p = GetParam();
  auto model = block_model(32, 16, 31);
  ASSERT_TRUE(model);
  const CheckResult r = check_engine(model, p, plan_for({"a", "b", "c"}, p), /*block=*/true);
  ASSERT_TRUE(r.built) << r.error;
  EXPECT_EQ(testing::count_op(r.report, "FusedConv"), 3) << testing::describe_layers(r.report);
  RecordProperty("layers", testing::describe_layers(r.report));
  for (const LayerReport& l : r.report.layers)
    if (l.op == "FusedConv") EXPECT_EQ(l.actual, p) << l.name;
  // Only the input and the output change format: the block's values stay in the precision.
  EXPECT_LE(testing::count_op(r.report, "Reformat"), 2) << testing::describe_layers(r.report);
}

INSTANTIATE_TEST_SUITE_P(Cudnn, CudaBlock, ::testing::ValuesIn(kPrecisions),
                         [](const ::testing::TestParamInfo<Precision>& i) {
                           return std::string(precision_name(i.param));
                         });

// cuDNN's int8 / fp8 engines need output channel multiples (input channels are padded, see
// stem_c3); where none of our convolutions can take the layer either (they are ungrouped; the
// window form takes any channel counts), supports() says so and the build names the layer instead
// of running something else.
TEST(CudaConvSupport, RefusesInt8AndFp8WithOddOutputChannels) {
  REQUIRE_CUDA();
  auto model = conv_model({"g2_k6", 12, 6, 8, 8, 3, 1, 1, 2}, 5);  // 6 and 3 channels per group
  ASSERT_TRUE(model);
  for (Precision p : {Precision::kINT8, Precision::kFP8}) {
    auto engine = build_engine(model, cuda_options(), plan_for({"layer"}, p),
                               random_calibration(*model, 2, 4, 1));
    ASSERT_FALSE(engine.ok()) << precision_name(p);
    EXPECT_NE(engine.status().message().find("multiples of"), std::string::npos)
        << engine.status().to_string();
    EXPECT_NE(engine.status().message().find("layer"), std::string::npos)
        << engine.status().to_string();
  }
  // As the default precision it falls back to fp32 (reported), and runs.
  auto engine =
      build_engine(model, cuda_options(Precision::kINT8), "", random_calibration(*model, 2, 4, 1));
  ASSERT_TRUE(engine.ok()) << engine.status().to_string();
  const LayerReport* conv = testing::find_layer(engine->report(), "FusedConv");
  ASSERT_NE(conv, nullptr);
  EXPECT_EQ(conv->actual, Precision::kFP32);
  EXPECT_FALSE(conv->fallback_reason.empty());
}

// --- convolutions (our direct kernel) ------------------------------------------------------------

std::vector<ConvCase> direct_conv_cases() {
  return {
      {"stem_c3", 3, 64, 12, 12, 3},
      {"lenet_conv1_k6", 1, 6, 28, 28, 5, 1, 0},  // 6 output channels: int8/fp8 only run here
      {"lenet_conv2", 6, 16, 12, 12, 5, 1, 0, 1, true, "relu"},
      {"k48_stride2_relu", 4, 48, 11, 11, 3, 2, 1, 1, true, "relu"},  // three channel tiles
      {"k1_no_bias", 32, 16, 7, 7, 1, 1, 0, 1, false},
      {"clip", 8, 16, 9, 9, 3, 1, 1, 1, true, "clip"},
      {"residual_add_relu", 16, 16, 8, 8, 3, 1, 1, 1, true, "add_relu"},
      {"residual_add_stride2", 8, 16, 10, 10, 3, 2, 1, 1, false, "add"},
  };
}

// One of our convolutions, forced (MIXQ_CUDA_CONV=`implementation`), against the reference: the
// layer runs at the precision asked, through `expected` (in its implementation), epilogue fused.
void check_forced_conv(const ConvParam& p, uint64_t seed, const char* implementation,
                       const char* expected) {
  testing::ScopedEnv forced("MIXQ_CUDA_CONV", implementation);
  auto model = conv_model(p.c, seed);
  ASSERT_TRUE(model);
  const CheckResult r = check_engine(model, p.precision, plan_for({"layer"}, p.precision));
  ASSERT_TRUE(r.built) << r.error;
  const LayerReport* conv = testing::find_layer(r.report, "FusedConv");
  ASSERT_NE(conv, nullptr) << testing::describe_layers(r.report);
  EXPECT_EQ(conv->actual, p.precision);
  EXPECT_NE(conv->implementation.find(expected), std::string::npos) << conv->implementation;
  EXPECT_EQ(r.report.layers.size() - size_t(testing::count_op(r.report, "Reformat")), 1u)
      << "the epilogue fuses into the convolution:\n"
      << testing::describe_layers(r.report);
}

class CudaDirectConv : public ::testing::TestWithParam<ConvParam> {};

TEST_P(CudaDirectConv, MatchesReference) {
  REQUIRE_CUDA();
  check_forced_conv(GetParam(), 17, "direct", "direct conv");
}

std::vector<ConvParam> direct_conv_params() {
  std::vector<ConvParam> v;
  for (const ConvCase& c : direct_conv_cases())
    for (Precision p : kPrecisions)
      if (p != Precision::kTF32) v.push_back({c, p});  // TF32 stays with cuDNN's tensor cores
  return v;
}

INSTANTIATE_TEST_SUITE_P(Direct, CudaDirectConv, ::testing::ValuesIn(direct_conv_params()),
                         [](const ::testing::TestParamInfo<ConvParam>& i) {
                           return param_name(i.param.c.name, i.param.precision);
                         });

// --- convolutions (our implicit GEMM) -----------------------------------------------------------

std::vector<ConvCase> igemm_conv_cases() {
  return {
      {"c64_k64_add_relu", 64, 64, 16, 16, 3, 1, 1, 1, true, "add_relu"},   // ResNet's layer1
      {"c64_k48_stride2_relu", 64, 48, 11, 11, 3, 2, 1, 1, true, "relu"},   // a part channel block
      {"c128_k96_1x1_stride2", 128, 96, 8, 8, 1, 2, 0, 1, false},           // two channel blocks
      {"c64_k16_clip_7x7", 64, 16, 7, 7, 3, 1, 1, 1, true, "clip"},         // tiles past the image
      {"c192_k64_add_stride2", 192, 64, 10, 10, 3, 2, 1, 1, false, "add"},  // 3 or 6 chunks
      {"c256_k64_4x4", 256, 64, 4, 4, 3},                                   // eight images per tile
  };
}

class CudaIgemmConv : public ::testing::TestWithParam<ConvParam> {};

TEST_P(CudaIgemmConv, MatchesReference) {
  REQUIRE_CUDA();
  check_forced_conv(GetParam(), 19, "igemm", "implicit-gemm conv");
}

std::vector<ConvParam> igemm_conv_params() {
  std::vector<ConvParam> v;
  for (const ConvCase& c : igemm_conv_cases())
    for (Precision p : {Precision::kFP16, Precision::kBF16, Precision::kINT8, Precision::kFP8})
      v.push_back({c, p});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Igemm, CudaIgemmConv, ::testing::ValuesIn(igemm_conv_params()),
                         [](const ::testing::TestParamInfo<ConvParam>& i) {
                           return param_name(i.param.c.name, i.param.precision);
                         });

// --- convolutions (our staged-window form), alone and with an absorbed max pool
// -------------------

std::vector<ConvCase> window_conv_cases() {
  return {
      {"lenet_conv2_c20_k50_relu", 20, 50, 12, 12, 5, 1, 0, 1, true,
       "relu"},                                // channels fill words
      {"c1_k20_5x5", 1, 20, 28, 28, 5, 1, 0},  // element by element
      {"stem_c3_k64", 3, 64, 12, 12, 3},
      {"c8_k96_stride2_clip", 8, 96, 11, 11, 3, 2, 1, 1, true, "clip"},  // two channel groups
      {"residual_add_relu", 16, 16, 8, 8, 3, 1, 1, 1, true, "add_relu"},
      {"c6_k24_7x7_stride2_wide", 6, 24, 9, 150, 7, 2, 3},  // one 75-pixel row per band
  };
}

class CudaWindowConv : public ::testing::TestWithParam<ConvParam> {};

TEST_P(CudaWindowConv, MatchesReference) {
  REQUIRE_CUDA();
  check_forced_conv(GetParam(), 29, "window", "window conv");
}

std::vector<ConvParam> window_conv_params() {
  std::vector<ConvParam> v;
  for (const ConvCase& c : window_conv_cases())
    for (Precision p : {Precision::kFP16, Precision::kBF16, Precision::kINT8, Precision::kFP8})
      v.push_back({c, p});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Window, CudaWindowConv, ::testing::ValuesIn(window_conv_params()),
                         [](const ::testing::TestParamInfo<ConvParam>& i) {
                           return param_name(i.param.c.name, i.param.precision);
                         });

// x -> conv -> relu -> MaxPool(window, stride = window): the pool and the conversion of the fp32
// input are absorbed by the convolution (one step, "+maxpool" in its implementation, both named
// among its fused nodes) and the output matches the reference of the unfused model.
std::shared_ptr<const Model> conv_pool_model(const ConvCase& c, int64_t window, uint64_t seed) {
  OnnxBuilder b(13, "conv_pool_" + c.name);
  const int64_t oh = (c.h + 2 * c.pad - c.k) / c.stride + 1,
                ow = (c.w + 2 * c.pad - c.k) / c.stride + 1;
  b.input("x", {"N", c.cin, c.h, c.w});
  b.output("y", {"N", c.cout, oh / window, ow / window});
  const float bound = 1.0f / std::sqrt(float(c.cin * c.k * c.k));
  b.initializer("layer.weight",
                random_tensor({c.cout, c.cin, c.k, c.k}, seed, -2 * bound, 2 * bound));
  b.initializer("layer.bias", random_tensor({c.cout}, seed + 1, -0.2f, 0.2f));
  b.node("Conv", {"x", "layer.weight", "layer.bias"}, {"conv_out"}, "/layer/Conv")
      .attr("kernel_shape", {c.k, c.k})
      .attr("strides", {c.stride, c.stride})
      .attr("pads", {c.pad, c.pad, c.pad, c.pad});
  b.node("Relu", {"conv_out"}, {"relu_out"}, "/relu/Relu");
  b.node("MaxPool", {"relu_out"}, {"y"}, "/pool/MaxPool")
      .attr("kernel_shape", {window, window})
      .attr("strides", {window, window});
  return load_model(b, "conv_pool_" + c.name);
}

struct PoolParam {
  ConvCase c;
  int64_t window;
  Precision precision;
};

void PrintTo(const PoolParam& p, std::ostream* os) {
  *os << param_name(p.c.name, p.precision);
}

class CudaConvPool : public ::testing::TestWithParam<PoolParam> {};

TEST_P(CudaConvPool, PoolIsAbsorbedAndMatchesReference) {
  REQUIRE_CUDA();
  const PoolParam& p = GetParam();
  auto model = conv_pool_model(p.c, p.window, 31);
  ASSERT_TRUE(model);
  const CheckResult r = check_engine(model, p.precision, plan_for({"layer"}, p.precision));
  ASSERT_TRUE(r.built) << r.error;
  EXPECT_EQ(testing::count_op(r.report, "MaxPool"), 0) << testing::describe_layers(r.report);
  const LayerReport* conv = testing::find_layer(r.report, "FusedConv");
  ASSERT_NE(conv, nullptr) << testing::describe_layers(r.report);
  EXPECT_EQ(conv->actual, p.precision);
  EXPECT_NE(conv->implementation.find("window conv+bias+relu+maxpool"), std::string::npos)
      << conv->implementation;
  EXPECT_NE(std::find(conv->fused.begin(), conv->fused.end(), "/pool/MaxPool"), conv->fused.end())
      << testing::describe_layers(r.report);
  // The network input's conversion to the layer's type happens as the window is staged: the one
  // Reformat left writes the fp32 output.
  EXPECT_NE(std::find_if(conv->fused.begin(), conv->fused.end(),
                         [](const std::string& n) { return n.rfind("x/", 0) == 0; }),
            conv->fused.end())
      << testing::describe_layers(r.report);
  EXPECT_EQ(testing::count_op(r.report, "Reformat"), 1) << testing::describe_layers(r.report);
  EXPECT_NE(conv->implementation.find("fused input reformat and max pool"), std::string::npos)
      << conv->implementation;
}

std::vector<PoolParam> pool_params() {
  const std::vector<std::pair<ConvCase, int64_t>> cases = {
      {{"lenet_conv1", 1, 20, 28, 28, 5, 1, 0}, 2},
      {{"lenet_conv2", 20, 50, 12, 12, 5, 1, 0}, 2},
      {{"odd_9x9_pool2_k80", 8, 80, 9, 9, 3, 1, 1}, 2},  // floor drops a row and a column
      {{"pool3", 4, 16, 12, 12, 3, 1, 1}, 3},
  };
  std::vector<PoolParam> v;
  for (const auto& [c, window] : cases)
    for (Precision p : {Precision::kFP16, Precision::kBF16, Precision::kINT8, Precision::kFP8})
      v.push_back({c, window, p});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Window, CudaConvPool, ::testing::ValuesIn(pool_params()),
                         [](const ::testing::TestParamInfo<PoolParam>& i) {
                           return param_name(i.param.c.name, i.param.precision);
                         });

// An unknown MIXQ_CUDA_FUSION value fails the build and names the variable and its values.
TEST(CudaConvPool, UnknownFusionSettingIsAClearError) {
  REQUIRE_CUDA();
  testing::ScopedEnv bogus("MIXQ_CUDA_FUSION", "yes");
  auto model = conv_pool_model({"c16", 16, 32, 12, 12, 3, 1, 1}, 2, 35);
  ASSERT_TRUE(model);
  auto engine = build_engine(model, cuda_options(), plan_for({"layer"}, Precision::kFP16));
  ASSERT_FALSE(engine.ok());
  const std::string message = engine.status().message();
  EXPECT_NE(message.find("MIXQ_CUDA_FUSION is 'yes'; expected 0 or 1"), std::string::npos)
      << message;
}

// Asked for cuDNN, the pool stays a step of its own (cuDNN's graphs do not pool).
TEST(CudaConvPool, CudnnOnlyKeepsThePoolSeparate) {
  REQUIRE_CUDA();
  testing::ScopedEnv cudnn_only("MIXQ_CUDA_CONV", "cudnn");
  auto model = conv_pool_model({"c16", 16, 32, 12, 12, 3, 1, 1}, 2, 33);
  ASSERT_TRUE(model);
  const CheckResult r =
      check_engine(model, Precision::kFP16, plan_for({"layer"}, Precision::kFP16));
  ASSERT_TRUE(r.built) << r.error;
  EXPECT_EQ(testing::count_op(r.report, "MaxPool"), 1) << testing::describe_layers(r.report);
  const LayerReport* conv = testing::find_layer(r.report, "FusedConv");
  ASSERT_NE(conv, nullptr);
  EXPECT_NE(conv->implementation.find("cudnn"), std::string::npos) << conv->implementation;
}

// A LeNet-shaped network (x -> conv-relu-pool x2 -> flatten -> fc-relu -> fc): after execution
// fusion it runs as three steps (the pools and the input conversion absorbed by the window
// convolutions, which run as one chained step; the NHWC -> NCHW reorder and the flatten by fc1,
// whose weights' columns follow the NHWC order; int8 chains fc1 and fc2) and gives what the
// unfused engine (MIXQ_CUDA_FUSION=0) gives.
std::shared_ptr<const Model> lenet_model(uint64_t seed) {
  OnnxBuilder b(13, "lenet_shaped");
  b.input("x", {"N", 1, 28, 28});
  b.output("y", {"N", 10});
  b.initializer("conv1.weight", random_tensor({20, 1, 5, 5}, seed, -0.4f, 0.4f));
  b.initializer("conv1.bias", random_tensor({20}, seed + 1, -0.1f, 0.1f));
  b.initializer("conv2.weight", random_tensor({50, 20, 5, 5}, seed + 2, -0.09f, 0.09f));
  b.initializer("conv2.bias", random_tensor({50}, seed + 3, -0.1f, 0.1f));
  b.initializer("fc1.weight", random_tensor({500, 800}, seed + 4, -0.07f, 0.07f));
  b.initializer("fc1.bias", random_tensor({500}, seed + 5, -0.1f, 0.1f));
  b.initializer("fc2.weight", random_tensor({10, 500}, seed + 6, -0.09f, 0.09f));
  b.initializer("fc2.bias", random_tensor({10}, seed + 7, -0.1f, 0.1f));
  b.node("Conv", {"x", "conv1.weight", "conv1.bias"}, {"c1"}, "/conv1/Conv")
      .attr("kernel_shape", {5, 5});
  b.node("Relu", {"c1"}, {"r1"}, "/relu1/Relu");
  b.node("MaxPool", {"r1"}, {"p1"}, "/pool1/MaxPool")
      .attr("kernel_shape", {2, 2})
      .attr("strides", {2, 2});
  b.node("Conv", {"p1", "conv2.weight", "conv2.bias"}, {"c2"}, "/conv2/Conv")
      .attr("kernel_shape", {5, 5});
  b.node("Relu", {"c2"}, {"r2"}, "/relu2/Relu");
  b.node("MaxPool", {"r2"}, {"p2"}, "/pool2/MaxPool")
      .attr("kernel_shape", {2, 2})
      .attr("strides", {2, 2});
  b.node("Flatten", {"p2"}, {"f"}, "/Flatten").attr("axis", int64_t(1));
  b.node("Gemm", {"f", "fc1.weight", "fc1.bias"}, {"h"}, "/fc1/Gemm").attr("transB", int64_t(1));
  b.node("Relu", {"h"}, {"hr"}, "/relu3/Relu");
  b.node("Gemm", {"hr", "fc2.weight", "fc2.bias"}, {"y"}, "/fc2/Gemm").attr("transB", int64_t(1));
  return load_model(b, "lenet_shaped");
}

class CudaLenetFusion : public ::testing::TestWithParam<Precision> {};

TEST_P(CudaLenetFusion, RunsAsFewStepsAndMatchesTheUnfusedEngine) {
  REQUIRE_CUDA();
  const Precision p = GetParam();
  auto model = lenet_model(41);
  ASSERT_TRUE(model);
  const std::string plan = R"({"default_precision": ")" + std::string(precision_name(p)) + R"("})";
  std::optional<CalibrationData> calibration;
  if (quantized(p)) calibration = random_calibration(*model, 4, 8, 4242, -1.0f, 1.0f);
  auto fused = build_engine(model, cuda_options(), plan, calibration);
  ASSERT_TRUE(fused.ok()) << fused.status().to_string();
  std::optional<Expected<Engine>> unfused;
  {
    testing::ScopedEnv off("MIXQ_CUDA_FUSION", "0");
    unfused = build_engine(model, cuda_options(), plan, calibration);
  }
  ASSERT_TRUE(unfused->ok()) << unfused->status().to_string();
  const BuildReport& r = fused->report();
  // conv1 and conv2 are one chained step (window_chain); int8: fc1 and fc2 too (gemm_chain.cu).
  const size_t gemms = p == Precision::kINT8 ? 1 : 2, steps = 1 + gemms;
  EXPECT_EQ(testing::count_op(r, "FusedConv"), 1) << testing::describe_layers(r);
  const LayerReport* convs = testing::find_layer(r, "FusedConv");
  ASSERT_NE(convs, nullptr);
  EXPECT_NE(convs->implementation.find("window chain"), std::string::npos) << convs->implementation;
  for (const char* absorbed : {"/conv2/Conv", "/pool1/MaxPool", "/pool2/MaxPool"})
    EXPECT_NE(std::find(convs->fused.begin(), convs->fused.end(), absorbed), convs->fused.end())
        << absorbed << "\n"
        << testing::describe_layers(r);
  EXPECT_EQ(testing::count_op(r, "FusedGemm"), int(gemms)) << testing::describe_layers(r);
  EXPECT_EQ(r.layers.size(), steps) << testing::describe_layers(r);
  EXPECT_GE((*unfused)->report().layers.size(), 8u)
      << "MIXQ_CUDA_FUSION=0 keeps the pools, the conversion, the reorder and the flatten:\n"
      << testing::describe_layers((*unfused)->report());
  const LayerReport* fc1 = testing::find_layer(r, "FusedGemm");
  ASSERT_NE(fc1, nullptr);
  EXPECT_NE(std::find(fc1->fused.begin(), fc1->fused.end(), "/Flatten"), fc1->fused.end())
      << testing::describe_layers(r);
  if (p == Precision::kINT8) {
    EXPECT_NE(fc1->implementation.find("chained"), std::string::npos) << fc1->implementation;
    EXPECT_NE(std::find(fc1->fused.begin(), fc1->fused.end(), "/fc2/Gemm"), fc1->fused.end())
        << testing::describe_layers(r);
  }
  // Every layer at the precision asked, or a reported fallback (fp8's fc2: 10 outputs, cuBLASLt's
  // fp8 needs multiples of 16).
  for (const LayerReport& l : r.layers)
    EXPECT_TRUE(l.actual == p || !l.fallback_reason.empty()) << l.name;
  // The fused nodes' attributes travel in the engine file.
  auto bytes = fused->serialize();
  ASSERT_TRUE(bytes.ok()) << bytes.status().to_string();
  auto loaded = Engine::from_bytes(*bytes, "'lenet.mixq'");
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  EXPECT_EQ(loaded->report().layers.size(), steps) << testing::describe_layers(loaded->report());
  for (int64_t batch : {int64_t(3), kMaxBatch}) {
    SCOPED_TRACE("batch " + std::to_string(batch));
    const TensorMap inputs = random_model_inputs(*model, batch, 200 + uint64_t(batch), -1.0f, 1.0f);
    const Tensor got = infer_once(*fused, inputs).at("y");
    const Tensor want = infer_once(**unfused, inputs).at("y");
    const Tensor ref = reference_outputs(*model, inputs).at("y");
    ASSERT_EQ(got.shape(), (Shape{batch, 10}));
    ASSERT_EQ(got.shape(), want.shape());
    // The same arithmetic in other kernels: float sums in another order, the epilogue's roundings
    // at other places (one code at most, for int8 and fp8).
    if (quantized(p))
      EXPECT_GE(testing::sqnr_db(got, want), 30.0);
    else
      EXPECT_LE(testing::max_relative_error(got, want), tolerance(p));
    EXPECT_GE(testing::sqnr_db(got, ref), quantized(p) ? 10.0 : 30.0) << "against fp32";
    EXPECT_LE(testing::max_relative_error(infer_once(*loaded, inputs).at("y"), got), 1e-6)
        << "the loaded engine";
  }
}

INSTANTIATE_TEST_SUITE_P(Window, CudaLenetFusion,
                         ::testing::Values(Precision::kFP16, Precision::kBF16, Precision::kINT8,
                                           Precision::kFP8),
                         [](const ::testing::TestParamInfo<Precision>& i) {
                           return std::string(precision_name(i.param));
                         });

// --- two convolutions in one step (window_chain) ------------------------------------------------

// x -> conv1 -> relu -> [pool1] -> conv2 -> relu -> [pool2] -> y; `mid_out`: the input of conv2 is
// also a graph output (two readers: nothing chains).
struct ConvChainCase {
  std::string name;
  int64_t cin, c1, h, w, k1, stride1, pad1, pool1;
  int64_t c2, k2, stride2, pad2, pool2;
};

std::shared_ptr<const Model> conv_chain_model(const ConvChainCase& c, uint64_t seed,
                                              bool mid_out = false) {
  OnnxBuilder b(13, "chain_" + c.name);
  auto out = [](int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t pool) {
    const int64_t o = (in + 2 * pad - k) / stride + 1;
    return pool ? o / pool : o;
  };
  const int64_t h1 = out(c.h, c.k1, c.stride1, c.pad1, c.pool1),
                w1 = out(c.w, c.k1, c.stride1, c.pad1, c.pool1);
  const int64_t h2 = out(h1, c.k2, c.stride2, c.pad2, c.pool2),
                w2 = out(w1, c.k2, c.stride2, c.pad2, c.pool2);
  b.input("x", {"N", c.cin, c.h, c.w});
  b.output("y", {"N", c.c2, h2, w2});
  if (mid_out) b.output("mid", {"N", c.c1, h1, w1});
  const float bound1 = 1.0f / std::sqrt(float(c.cin * c.k1 * c.k1)),
              bound2 = 1.0f / std::sqrt(float(c.c1 * c.k2 * c.k2));
  b.initializer("w1", random_tensor({c.c1, c.cin, c.k1, c.k1}, seed, -2 * bound1, 2 * bound1));
  b.initializer("b1", random_tensor({c.c1}, seed + 1, -0.2f, 0.2f));
  b.initializer("w2", random_tensor({c.c2, c.c1, c.k2, c.k2}, seed + 2, -2 * bound2, 2 * bound2));
  b.initializer("b2", random_tensor({c.c2}, seed + 3, -0.2f, 0.2f));
  b.node("Conv", {"x", "w1", "b1"}, {"c1"}, "/conv1/Conv")
      .attr("kernel_shape", {c.k1, c.k1})
      .attr("strides", {c.stride1, c.stride1})
      .attr("pads", {c.pad1, c.pad1, c.pad1, c.pad1});
  b.node("Relu", {"c1"}, {c.pool1 ? "r1" : "mid"}, "/relu1/Relu");
  if (c.pool1)
    b.node("MaxPool", {"r1"}, {"mid"}, "/pool1/MaxPool")
        .attr("kernel_shape", {c.pool1, c.pool1})
        .attr("strides", {c.pool1, c.pool1});
  b.node("Conv", {"mid", "w2", "b2"}, {"c2"}, "/conv2/Conv")
      .attr("kernel_shape", {c.k2, c.k2})
      .attr("strides", {c.stride2, c.stride2})
      .attr("pads", {c.pad2, c.pad2, c.pad2, c.pad2});
  b.node("Relu", {"c2"}, {c.pool2 ? "r2" : "y"}, "/relu2/Relu");
  if (c.pool2)
    b.node("MaxPool", {"r2"}, {"y"}, "/pool2/MaxPool")
        .attr("kernel_shape", {c.pool2, c.pool2})
        .attr("strides", {c.pool2, c.pool2});
  return load_model(b, "chain_" + c.name + (mid_out ? "_mid_out" : ""));
}

struct ConvChainParam {
  ConvChainCase c;
  Precision precision;
};

// The batch from which a chained step runs as one kernel (one block per image from 60% of the
// multiprocessors on; below, the two convolutions apart): tests build up to this batch and run
// both forms.
int64_t chained_batch() {
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  return std::max<int64_t>(kMaxBatch, sms * 3 / 5 + 1);
}

void PrintTo(const ConvChainParam& p, std::ostream* os) {
  *os << param_name(p.c.name, p.precision);
}

class CudaConvChain : public ::testing::TestWithParam<ConvChainParam> {};

// The two convolutions run as one step (the second, its activation and pool among the first's
// fused nodes) and match the reference: pooled in registers (2x2) or in the epilogue (3x3) or not
// at all, padded, strided, channels element by element or in words, 1x1.
TEST_P(CudaConvChain, RunsAsOneStepAndMatchesReference) {
  REQUIRE_CUDA();
  const ConvChainParam& p = GetParam();
  auto model = conv_chain_model(p.c, 51);
  ASSERT_TRUE(model);
  const std::string plan =
      R"({"default_precision": ")" + std::string(precision_name(p.precision)) + R"("})";
  const int64_t max_batch = chained_batch();
  std::optional<CalibrationData> calibration;
  if (quantized(p.precision)) calibration = random_calibration(*model, 4, 8, 4242, -1.0f, 1.0f);
  auto engine = build_engine(model, cuda_options(Precision::kFP32, max_batch), plan, calibration);
  ASSERT_TRUE(engine.ok()) << engine.status().to_string();
  const BuildReport& r = engine->report();
  EXPECT_EQ(testing::count_op(r, "FusedConv"), 1) << testing::describe_layers(r);
  const LayerReport* conv = testing::find_layer(r, "FusedConv");
  ASSERT_NE(conv, nullptr);
  EXPECT_EQ(conv->actual, p.precision);
  EXPECT_NE(conv->implementation.find("window chain"), std::string::npos) << conv->implementation;
  for (const char* absorbed : {"/conv2/Conv", "/relu2/Relu"})
    EXPECT_NE(std::find(conv->fused.begin(), conv->fused.end(), absorbed), conv->fused.end())
        << absorbed << "\n"
        << testing::describe_layers(r);
  // Apart (small batches) and chained (the largest).
  for (int64_t batch : {int64_t(1), int64_t(3), max_batch}) {
    SCOPED_TRACE("batch " + std::to_string(batch));
    const TensorMap inputs = random_model_inputs(*model, batch, 100 + uint64_t(batch), -1.0f, 1.0f);
    const Tensor want = reference_outputs(*model, inputs).at("y");
    const Tensor got = infer_once(*engine, inputs).at("y");
    ASSERT_EQ(got.shape(), want.shape());
    if (quantized(p.precision))
      EXPECT_GE(testing::sqnr_db(got, want), min_sqnr(p.precision, /*block=*/true));
    else
      EXPECT_LE(testing::max_relative_error(got, want), tolerance(p.precision));
  }
}

std::vector<ConvChainCase> chain_cases() {
  return {
      {"lenet", 1, 20, 28, 28, 5, 1, 0, 2, 50, 5, 1, 0, 2},
      {"padded_pool_second_only", 4, 16, 12, 12, 3, 1, 1, 0, 24, 3, 1, 1, 2},
      {"strided_stem_no_pools", 3, 8, 17, 17, 3, 2, 1, 0, 16, 3, 1, 1, 0},
      {"pool3_then_1x1", 8, 16, 12, 12, 3, 1, 1, 3, 32, 1, 1, 0, 0},
      {"k64_both", 2, 64, 10, 10, 3, 1, 1, 2, 64, 3, 1, 1, 0},
  };
}

std::vector<ConvChainParam> chain_params() {
  std::vector<ConvChainParam> v;
  for (const ConvChainCase& c : chain_cases())
    for (Precision p : {Precision::kFP16, Precision::kBF16, Precision::kINT8, Precision::kFP8})
      v.push_back({c, p});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Window, CudaConvChain, ::testing::ValuesIn(chain_params()),
                         [](const ::testing::TestParamInfo<ConvChainParam>& i) {
                           return param_name(i.param.c.name, i.param.precision);
                         });

// Chained or not, the arithmetic is the window convolutions': with both convolutions pooled (the
// window form either way) the chained step gives the bits of the two steps it replaces, which run
// where the intermediate is also an output of the graph.
class CudaConvChainExact : public ::testing::TestWithParam<Precision> {};

TEST_P(CudaConvChainExact, GivesTheBitsOfTheTwoWindowConvolutions) {
  REQUIRE_CUDA();
  const Precision p = GetParam();
  const ConvChainCase c = chain_cases()[0];
  auto chained_model = conv_chain_model(c, 53), apart_model = conv_chain_model(c, 53, true);
  ASSERT_TRUE(chained_model && apart_model);
  const std::string plan = R"({"default_precision": ")" + std::string(precision_name(p)) + R"("})";
  std::optional<CalibrationData> calibration;
  if (quantized(p)) calibration = random_calibration(*chained_model, 4, 8, 4243, -1.0f, 1.0f);
  const int64_t max_batch = chained_batch();
  auto chained =
      build_engine(chained_model, cuda_options(Precision::kFP32, max_batch), plan, calibration);
  auto apart =
      build_engine(apart_model, cuda_options(Precision::kFP32, max_batch), plan, calibration);
  ASSERT_TRUE(chained.ok()) << chained.status().to_string();
  ASSERT_TRUE(apart.ok()) << apart.status().to_string();
  EXPECT_EQ(testing::count_op(chained->report(), "FusedConv"), 1)
      << testing::describe_layers(chained->report());
  EXPECT_EQ(testing::count_op(apart->report(), "FusedConv"), 2)
      << testing::describe_layers(apart->report());
  for (int64_t batch : {int64_t(1), int64_t(5), max_batch}) {
    SCOPED_TRACE("batch " + std::to_string(batch));
    const TensorMap inputs =
        random_model_inputs(*chained_model, batch, 300 + uint64_t(batch), -1.0f, 1.0f);
    const Tensor got = infer_once(*chained, inputs).at("y");
    const Tensor want = infer_once(*apart, inputs).at("y");
    ASSERT_EQ(got.shape(), want.shape());
    EXPECT_EQ(testing::max_abs_error(got, want), 0.0);
  }
}

INSTANTIATE_TEST_SUITE_P(Window, CudaConvChainExact,
                         ::testing::Values(Precision::kFP16, Precision::kBF16, Precision::kINT8,
                                           Precision::kFP8),
                         [](const ::testing::TestParamInfo<Precision>& i) {
                           return std::string(precision_name(i.param));
                         });

// Our int8 convolutions sum code products exactly: inputs on the grid s_x = 0.01 (codes
// -127..127, both ends present), the engine's own int8 weights and scales; the result must equal
// s_x * s_w[k] * sum(q_x * q_w) + b[k] computed here in integers, padding included. 3 input
// channels (27 taps) take the small tensor-core form, 16 (144 taps) the FMA form, 64 (576 taps)
// the implicit GEMM.
struct ExactCase {
  int64_t c;
  const char* implementation;  // MIXQ_CUDA_CONV
  const char* expected;        // in the layer's implementation
};

class CudaDirectConvExact : public ::testing::TestWithParam<ExactCase> {};

TEST_P(CudaDirectConvExact, Int8MatchesIntegerReference) {
  REQUIRE_CUDA();
  testing::ScopedEnv forced("MIXQ_CUDA_CONV", GetParam().implementation);
  const int64_t C = GetParam().c, K = 8, H = 6, W = 7, N = 2;
  auto model = conv_model({"exact", C, K, H, W, 3}, 23);
  ASSERT_TRUE(model);
  auto engine = build_engine(
      model, cuda_options(),
      R"({"layers": [{"match": "layer", "precision": "int8", "input_range": [-1.27, 1.27]}]})");
  ASSERT_TRUE(engine.ok()) << engine.status().to_string();
  const ir::Node* conv = nullptr;
  for (const ir::Node* n : engine->impl().graph->nodes())
    if (n->op == ir::OpKind::kFusedConv) conv = n;
  ASSERT_NE(conv, nullptr);
  const LayerReport* layer = testing::find_layer(engine->report(), "FusedConv");
  ASSERT_NE(layer, nullptr);
  EXPECT_NE(layer->implementation.find(GetParam().expected), std::string::npos)
      << layer->implementation;
  const ir::Value* xq = conv->input(0);
  const ir::Value* wq = conv->input(1);
  ASSERT_TRUE(xq->quant && wq->quant);
  ASSERT_EQ(wq->dtype, DType::kInt8);
  const float sx = xq->quant->scale[0];
  ASSERT_NEAR(sx, 0.01f, 1e-7f);
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> code(-127, 127);
  std::vector<int> q(size_t(N * C * H * W));
  Tensor x = Tensor::empty(DType::kFloat32, {N, C, H, W});
  for (size_t i = 0; i < q.size(); ++i) {
    q[i] = i % 17 == 0 ? 127 : i % 17 == 1 ? -127 : code(rng);
    x.data<float>()[i] = float(q[i]) * sx;
  }
  const TensorMap got = infer_once(*engine, {{"x", x}});
  ASSERT_TRUE(got.count("y"));
  const Tensor& y = got.at("y");
  ASSERT_EQ(y.shape(), (Shape{N, K, H, W}));
  const int8_t* qw = wq->constant.data<int8_t>();
  const std::vector<float> bias = conv->input(2)->constant.to_float_vector();
  double max_exact = 0, max_err = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t oh = 0; oh < H; ++oh)
        for (int64_t ow = 0; ow < W; ++ow) {
          int64_t acc = 0;
          for (int64_t c = 0; c < C; ++c)
            for (int64_t r = 0; r < 3; ++r)
              for (int64_t s = 0; s < 3; ++s) {
                const int64_t ih = oh - 1 + r, iw = ow - 1 + s;
                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                acc += int64_t(q[size_t(((n * C + c) * H + ih) * W + iw)]) *
                       qw[((k * C + c) * 3 + r) * 3 + s];
              }
          const double sw = wq->quant->scale[wq->quant->per_tensor() ? 0 : size_t(k)];
          const double exact = double(sx) * sw * double(acc) + double(bias[size_t(k)]);
          max_exact = std::max(max_exact, std::fabs(exact));
          max_err = std::max(
              max_err, std::fabs(double(y.data<float>()[((n * K + k) * H + oh) * W + ow]) - exact));
        }
  EXPECT_LE(max_err, 1e-5 * max_exact + 1e-6)
      << "max |engine - exact| " << max_err << ", max |exact| " << max_exact << "\n"
      << testing::describe_layers(engine->report());
}

INSTANTIATE_TEST_SUITE_P(Direct, CudaDirectConvExact,
                         ::testing::Values(ExactCase{3, "direct", "tensor cores"},
                                           ExactCase{16, "direct", "FMA"},
                                           ExactCase{64, "igemm", "implicit-gemm conv"},
                                           ExactCase{3, "window", "window conv"},
                                           ExactCase{16, "window", "window conv"}),
                         [](const ::testing::TestParamInfo<ExactCase>& i) {
                           return "c" + std::to_string(i.param.c) + "_" + i.param.implementation;
                         });

// An unknown MIXQ_CUDA_CONV value fails the build and names the variable and its values.
TEST(CudaDirectConv, UnknownImplementationIsAClearError) {
  REQUIRE_CUDA();
  testing::ScopedEnv bogus("MIXQ_CUDA_CONV", "fastest");
  auto model = conv_model({"stem_c3", 3, 16, 12, 12, 3}, 31);
  ASSERT_TRUE(model);
  auto engine = build_engine(model, cuda_options(), plan_for({"layer"}, Precision::kFP16));
  ASSERT_FALSE(engine.ok());
  const std::string message = engine.status().message();
  EXPECT_NE(message.find("MIXQ_CUDA_CONV is 'fastest'"), std::string::npos) << message;
  EXPECT_NE(message.find("auto, cudnn, direct, igemm or window"), std::string::npos) << message;
}

// With the default (auto), the faster of cuDNN and the direct kernel is kept, and the choice is
// stored: a reloaded engine runs the same implementation without timing again.
TEST(CudaDirectConv, AutoChoiceIsRecordedInTheEngineFile) {
  REQUIRE_CUDA();
  testing::ScopedEnv automatic("MIXQ_CUDA_CONV", nullptr);
  auto model = conv_model({"lenet_conv2", 6, 16, 12, 12, 5, 1, 0, 1, true, "relu"}, 29);
  ASSERT_TRUE(model);
  // Deterministic: the two engines are compared bit for bit.
  auto engine = build_engine(model, deterministic_options(), plan_for({"layer"}, Precision::kFP16));
  ASSERT_TRUE(engine.ok()) << engine.status().to_string();
  const LayerReport* conv = testing::find_layer(engine->report(), "FusedConv");
  ASSERT_NE(conv, nullptr);
  RecordProperty("implementation", conv->implementation);
  const bool direct = conv->implementation.find("direct conv") != std::string::npos;
  if (direct)
    EXPECT_NE(conv->implementation.find("cuDNN"), std::string::npos)
        << "the note names both times: " << conv->implementation;
  auto bytes = engine->serialize();
  ASSERT_TRUE(bytes.ok()) << bytes.status().to_string();
  auto loaded = Engine::from_bytes(*bytes, "'direct.mixq'");
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  const LayerReport* again = testing::find_layer(loaded->report(), "FusedConv");
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(again->implementation.find("direct conv") != std::string::npos, direct)
      << again->implementation;
  const TensorMap inputs = random_model_inputs(*model, 3, 41);
  const TensorMap a = infer_once(*engine, inputs), b = infer_once(*loaded, inputs);
  ASSERT_TRUE(a.count("y") && b.count("y"));
  EXPECT_EQ(testing::max_abs_error(a.at("y"), b.at("y")), 0.0);
}

// --- linear layers (cuBLASLt) --------------------------------------------------------------------

struct GemmCase {
  std::string name;
  int64_t k, n;
  bool bias = true;
  std::string epilogue;    // "", "relu", "clip"
  std::string plan_extra;  // e.g. per-tensor weights
};

std::shared_ptr<const Model> gemm_model(const GemmCase& c, uint64_t seed) {
  OnnxBuilder b(13, "gemm_" + c.name);
  b.input("x", {"N", c.k});
  b.output("y", {"N", c.n});
  const float bound = 1.0f / std::sqrt(float(c.k));
  b.initializer("layer.weight", random_tensor({c.n, c.k}, seed, -2 * bound, 2 * bound));
  std::vector<std::string> ins = {"x", "layer.weight"};
  if (c.bias) {
    b.initializer("layer.bias", random_tensor({c.n}, seed + 1, -0.2f, 0.2f));
    ins.push_back("layer.bias");
  }
  const std::string out = c.epilogue.empty() ? "y" : "gemm_out";
  b.node("Gemm", ins, {out}, "/layer/Gemm").attr("transB", int64_t(1));
  if (c.epilogue == "relu") {
    b.node("Relu", {out}, {"y"}, "/relu/Relu");
  } else if (c.epilogue == "clip") {
    b.initializer("clip.min", Tensor::scalar<float>(-0.3f));
    b.initializer("clip.max", Tensor::scalar<float>(0.4f));
    b.node("Clip", {out, "clip.min", "clip.max"}, {"y"}, "/clip/Clip");
  }
  return load_model(b, "gemm_" + c.name);
}

std::vector<GemmCase> gemm_cases() {
  return {
      {"k64_n48_bias", 64, 48},
      {"k128_n32_no_bias", 128, 32, false},
      {"relu", 64, 48, true, "relu"},
      {"clip", 64, 48, true, "clip"},
      {"per_tensor_relu", 64, 48, true, "relu", R"(, "weights": "per_tensor")"},
      {"k256_n10", 256, 10},
      {"k800_n500_relu", 800, 500, true,
       "relu"},  // LeNet's fc1: the own kernel's weights in slices
  };
}

struct GemmParam {
  GemmCase c;
  Precision precision;
};

void PrintTo(const GemmParam& p, std::ostream* os) {
  *os << param_name(p.c.name, p.precision);
}

class CudaGemm : public ::testing::TestWithParam<GemmParam> {};

TEST_P(CudaGemm, MatchesReference) {
  REQUIRE_CUDA();
  testing::ScopedEnv library_only("MIXQ_CUDA_GEMM", "cublaslt");  // ours: CudaSmallGemm
  const GemmParam& p = GetParam();
  auto model = gemm_model(p.c, 17);
  ASSERT_TRUE(model);
  const CheckResult r =
      check_engine(model, p.precision, plan_for({"layer"}, p.precision, p.c.plan_extra));
  if (!r.built && p.precision == Precision::kFP8 && p.c.n % 16 != 0) {
    // fp8 GEMMs need N (rows of D) and K in multiples of 16.
    EXPECT_NE(r.error.find("layer"), std::string::npos) << r.error;
    GTEST_SKIP() << "not supported, as reported: " << r.error;
  }
  ASSERT_TRUE(r.built) << r.error;
  if (::testing::Test::HasFailure()) return;
  const LayerReport* gemm = testing::find_layer(r.report, "FusedGemm");
  ASSERT_NE(gemm, nullptr) << testing::describe_layers(r.report);
  EXPECT_EQ(gemm->actual, p.precision);
  EXPECT_NE(gemm->implementation.find("cublaslt"), std::string::npos) << gemm->implementation;
  RecordProperty("implementation", gemm->implementation);
  EXPECT_EQ(r.report.layers.size() - size_t(testing::count_op(r.report, "Reformat")), 1u)
      << testing::describe_layers(r.report);
}

std::vector<GemmParam> gemm_params() {
  std::vector<GemmParam> v;
  for (const GemmCase& c : gemm_cases())
    for (Precision p : kPrecisions) v.push_back({c, p});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Cublaslt, CudaGemm, ::testing::ValuesIn(gemm_params()),
                         [](const ::testing::TestParamInfo<GemmParam>& i) {
                           return param_name(i.param.c.name, i.param.precision);
                         });

// Our small int8 kernel (forced) on the same cases.
class CudaSmallGemm : public ::testing::TestWithParam<GemmCase> {};

TEST_P(CudaSmallGemm, MatchesReference) {
  REQUIRE_CUDA();
  testing::ScopedEnv own_only("MIXQ_CUDA_GEMM", "own");
  auto model = gemm_model(GetParam(), 17);
  ASSERT_TRUE(model);
  const CheckResult r = check_engine(model, Precision::kINT8,
                                     plan_for({"layer"}, Precision::kINT8, GetParam().plan_extra));
  ASSERT_TRUE(r.built) << r.error;
  const LayerReport* gemm = testing::find_layer(r.report, "FusedGemm");
  ASSERT_NE(gemm, nullptr) << testing::describe_layers(r.report);
  EXPECT_EQ(gemm->actual, Precision::kINT8);
  EXPECT_NE(gemm->implementation.find("small gemm"), std::string::npos) << gemm->implementation;
  EXPECT_EQ(r.report.layers.size() - size_t(testing::count_op(r.report, "Reformat")), 1u)
      << testing::describe_layers(r.report);
}

INSTANTIATE_TEST_SUITE_P(Own, CudaSmallGemm, ::testing::ValuesIn(gemm_cases()),
                         [](const ::testing::TestParamInfo<GemmCase>& i) { return i.param.name; });

// An unknown MIXQ_CUDA_GEMM value fails the build and names the variable and its values.
TEST(CudaSmallGemm, UnknownImplementationIsAClearError) {
  REQUIRE_CUDA();
  testing::ScopedEnv bogus("MIXQ_CUDA_GEMM", "fastest");
  auto model = gemm_model({"k64_n48_bias", 64, 48}, 31);
  ASSERT_TRUE(model);
  auto engine = build_engine(model, cuda_options(), plan_for({"layer"}, Precision::kINT8),
                             random_calibration(*model, 2, 4, 1));
  ASSERT_FALSE(engine.ok());
  const std::string message = engine.status().message();
  EXPECT_NE(message.find("MIXQ_CUDA_GEMM is 'fastest'"), std::string::npos) << message;
  EXPECT_NE(message.find("auto, cublaslt or own"), std::string::npos) << message;
}

// Two linear layers: the hidden value stays in the precision (int8: s8 output of the first layer,
// through cuBLASLt's alpha epilogue with per-tensor weights or the requantize kernel).
class CudaMlp : public ::testing::TestWithParam<std::tuple<Precision, bool>> {};

TEST_P(CudaMlp, MatchesReference) {
  REQUIRE_CUDA();
  const auto [p, per_tensor] = GetParam();
  OnnxBuilder b(13, "mlp");
  b.input("x", {"N", 64});
  b.output("y", {"N", 32});
  b.initializer("fc1.weight", random_tensor({64, 64}, 3, -0.25f, 0.25f));
  b.initializer("fc1.bias", random_tensor({64}, 4, -0.2f, 0.2f));
  b.initializer("fc2.weight", random_tensor({32, 64}, 5, -0.25f, 0.25f));
  b.node("Gemm", {"x", "fc1.weight", "fc1.bias"}, {"h"}, "/fc1/Gemm").attr("transB", int64_t(1));
  b.node("Relu", {"h"}, {"hr"}, "/fc1_relu/Relu");
  b.node("Gemm", {"hr", "fc2.weight"}, {"y"}, "/fc2/Gemm").attr("transB", int64_t(1));
  auto model = load_model(b, "mlp");
  ASSERT_TRUE(model);
  const std::string extra = per_tensor ? R"(, "weights": "per_tensor")" : "";
  const CheckResult r = check_engine(model, p, plan_for({"fc1", "fc2"}, p, extra), /*block=*/true);
  ASSERT_TRUE(r.built) << r.error;
  EXPECT_LE(testing::count_op(r.report, "Reformat"), 2) << testing::describe_layers(r.report);
  RecordProperty("layers", testing::describe_layers(r.report));
}

INSTANTIATE_TEST_SUITE_P(Cublaslt, CudaMlp,
                         ::testing::Combine(::testing::ValuesIn(kPrecisions), ::testing::Bool()),
                         [](const ::testing::TestParamInfo<std::tuple<Precision, bool>>& i) {
                           return std::string(precision_name(std::get<0>(i.param))) +
                                  (std::get<1>(i.param) ? "_per_tensor" : "_per_channel");
                         });

// Two int8 linear layers chained into one kernel (gemm_chain.cu): the same integer sums as the two
// layers run apart (MIXQ_CUDA_FUSION=0), so the outputs agree to float rounding; and against fp32.
// LeNet's head (800 -> 500 -> 10), and sizes that pad everything: k a multiple of 16 but not 32,
// hidden outputs filling only part of the cluster (72 of 128), more outputs than a block's threads
// cover in one pass.
struct ChainCase {
  std::string name;
  int64_t k, hidden, n;
  std::string act2;  // the second layer's epilogue: "", "relu"
};

class CudaGemmChain : public ::testing::TestWithParam<ChainCase> {};

TEST_P(CudaGemmChain, MatchesTheLayersRunApart) {
  REQUIRE_CUDA();
  const ChainCase& c = GetParam();
  OnnxBuilder b(13, "chain_" + c.name);
  b.input("x", {"N", c.k});
  b.output("y", {"N", c.n});
  const float b1 = 2.0f / std::sqrt(float(c.k)), b2 = 2.0f / std::sqrt(float(c.hidden));
  b.initializer("fc1.weight", random_tensor({c.hidden, c.k}, 61, -b1, b1));
  b.initializer("fc1.bias", random_tensor({c.hidden}, 62, -0.2f, 0.2f));
  b.initializer("fc2.weight", random_tensor({c.n, c.hidden}, 63, -b2, b2));
  b.initializer("fc2.bias", random_tensor({c.n}, 64, -0.2f, 0.2f));
  b.node("Gemm", {"x", "fc1.weight", "fc1.bias"}, {"h"}, "/fc1/Gemm").attr("transB", int64_t(1));
  b.node("Relu", {"h"}, {"hr"}, "/fc1_relu/Relu");
  const std::string out2 = c.act2.empty() ? "y" : "o";
  b.node("Gemm", {"hr", "fc2.weight", "fc2.bias"}, {out2}, "/fc2/Gemm").attr("transB", int64_t(1));
  if (c.act2 == "relu") b.node("Relu", {"o"}, {"y"}, "/fc2_relu/Relu");
  auto model = load_model(b, "chain_" + c.name);
  ASSERT_TRUE(model);
  const std::string plan = R"({"default_precision": "int8"})";
  const CalibrationData calibration = random_calibration(*model, 4, 8, 77, -1.0f, 1.0f);
  // Up to 40 rows: three clusters of 16, the last one partial.
  const int64_t max_batch = 40;
  auto fused = build_engine(model, cuda_options(Precision::kFP32, max_batch), plan, calibration);
  ASSERT_TRUE(fused.ok()) << fused.status().to_string();
  std::optional<Expected<Engine>> apart;
  {
    testing::ScopedEnv off("MIXQ_CUDA_FUSION", "0");
    apart = build_engine(model, cuda_options(Precision::kFP32, max_batch), plan, calibration);
  }
  ASSERT_TRUE(apart->ok()) << apart->status().to_string();
  const BuildReport& r = fused->report();
  ASSERT_EQ(testing::count_op(r, "FusedGemm"), 1) << testing::describe_layers(r);
  const LayerReport* chain = testing::find_layer(r, "FusedGemm");
  EXPECT_NE(chain->implementation.find("chained"), std::string::npos) << chain->implementation;
  EXPECT_EQ(chain->actual, Precision::kINT8);
  EXPECT_EQ(testing::count_op((*apart)->report(), "FusedGemm"), 2);
  auto bytes = fused->serialize();
  ASSERT_TRUE(bytes.ok()) << bytes.status().to_string();
  auto loaded = Engine::from_bytes(*bytes, "'chain.mixq'");
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  for (int64_t batch : {int64_t(1), int64_t(17), max_batch}) {
    SCOPED_TRACE("batch " + std::to_string(batch));
    const TensorMap inputs = random_model_inputs(*model, batch, 300 + uint64_t(batch), -1.0f, 1.0f);
    const Tensor got = infer_once(*fused, inputs).at("y");
    const Tensor want = infer_once(**apart, inputs).at("y");
    const Tensor ref = reference_outputs(*model, inputs).at("y");
    ASSERT_EQ(got.shape(), (Shape{batch, c.n}));
    ASSERT_EQ(got.shape(), want.shape());
    double largest = 0;
    for (int64_t i = 0; i < want.numel(); ++i)
      largest = std::max(largest, std::fabs(double(want.data<float>()[i])));
    EXPECT_LE(testing::max_abs_error(got, want), 1e-4 * (1.0 + largest))
        << "the same integer sums as the layers run apart";
    EXPECT_GE(testing::sqnr_db(got, ref), 20.0) << "against fp32";
    EXPECT_EQ(testing::max_abs_error(infer_once(*loaded, inputs).at("y"), got), 0.0)
        << "the loaded engine";
  }
}

INSTANTIATE_TEST_SUITE_P(Own, CudaGemmChain,
                         ::testing::Values(ChainCase{"lenet_head", 800, 500, 10, ""},
                                           ChainCase{"padded", 48, 72, 200, "relu"}),
                         [](const ::testing::TestParamInfo<ChainCase>& i) { return i.param.name; });

// The int8 linear layer is exact up to the final float scaling: inputs on the grid s_x = 0.01
// (codes -127..127), the engine's own int8 weights and scales read from its graph; the result
// must equal s_x * s_w[n] * sum(q_x * q_w) + b[n] computed here in integers; through cuBLASLt and
// through our small kernel.
class CudaInt8GemmExact : public ::testing::TestWithParam<std::tuple<bool, bool>> {};

TEST_P(CudaInt8GemmExact, MatchesIntegerReference) {
  REQUIRE_CUDA();
  const bool per_tensor = std::get<0>(GetParam()), own = std::get<1>(GetParam());
  testing::ScopedEnv forced("MIXQ_CUDA_GEMM", own ? "own" : "cublaslt");
  const int64_t K = 256, N = 200, M = 8;  // 50 KiB of weights: the own kernel takes two slices
  OnnxBuilder b(13, "exact");
  b.input("x", {"N", K});
  b.output("y", {"N", N});
  Tensor w = random_tensor({N, K}, 7, -1.0f, 1.0f);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) w.data<float>()[n * K + k] *= 0.05f * float(n % 5 + 1);
  b.initializer("layer.weight", w);
  b.initializer("layer.bias", random_tensor({N}, 8, -0.5f, 0.5f));
  b.node("Gemm", {"x", "layer.weight", "layer.bias"}, {"y"}, "/layer/Gemm")
      .attr("transB", int64_t(1));
  auto model = load_model(b, "exact");
  ASSERT_TRUE(model);
  const std::string plan =
      R"({"layers": [{"match": "layer", "precision": "int8", "input_range": [-1.27, 1.27])" +
      std::string(per_tensor ? R"(, "weights": "per_tensor")" : "") + "}]}";
  auto engine = build_engine(model, cuda_options(), plan);
  ASSERT_TRUE(engine.ok()) << engine.status().to_string();
  const ir::Node* gemm = nullptr;
  for (const ir::Node* n : engine->impl().graph->nodes())
    if (n->op == ir::OpKind::kFusedGemm) gemm = n;
  ASSERT_NE(gemm, nullptr);
  const LayerReport* layer = testing::find_layer(engine->report(), "FusedGemm");
  ASSERT_NE(layer, nullptr);
  EXPECT_NE(layer->implementation.find(own ? "small gemm" : "cublaslt"), std::string::npos)
      << layer->implementation;
  const ir::Value* xq = gemm->input(0);
  const ir::Value* wq = gemm->input(1);
  ASSERT_TRUE(xq->quant && wq->quant);
  ASSERT_EQ(wq->dtype, DType::kInt8);
  const float sx = xq->quant->scale[0];
  ASSERT_NEAR(sx, 0.01f, 1e-7f);
  // Inputs: every code from -127 to 127, both ends in every row.
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> code(-127, 127);
  std::vector<int> q(size_t(M * K));
  Tensor x = Tensor::empty(DType::kFloat32, {M, K});
  for (int64_t i = 0; i < M * K; ++i) {
    int v = code(rng);
    if (i % K == 0) v = 127;
    if (i % K == 1) v = -127;
    if (i / K == 1) v = 127;  // one row of all-maximum codes
    q[size_t(i)] = v;
    x.data<float>()[i] = float(v) * sx;
  }
  const TensorMap got = infer_once(*engine, {{"x", x}});
  ASSERT_TRUE(got.count("y"));
  const Tensor& y = got.at("y");
  const int8_t* qw = wq->constant.data<int8_t>();
  const std::vector<float> bias = gemm->input(2)->constant.to_float_vector();
  double max_exact = 0, max_err = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      int64_t acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += int64_t(q[size_t(m * K + k)]) * qw[n * K + k];
      const double sw = wq->quant->scale[wq->quant->per_tensor() ? 0 : size_t(n)];
      const double exact = double(sx) * sw * double(acc) + double(bias[size_t(n)]);
      max_exact = std::max(max_exact, std::fabs(exact));
      max_err = std::max(max_err, std::fabs(double(y.data<float>()[m * N + n]) - exact));
    }
  EXPECT_LE(max_err, 1e-5 * max_exact + 1e-6)
      << "max |engine - exact| " << max_err << ", max |exact| " << max_exact << "\n"
      << testing::describe_layers(engine->report());
}

INSTANTIATE_TEST_SUITE_P(Cublaslt, CudaInt8GemmExact,
                         ::testing::Combine(::testing::Bool(), ::testing::Bool()),
                         [](const ::testing::TestParamInfo<std::tuple<bool, bool>>& i) {
                           return std::string(std::get<0>(i.param) ? "per_tensor" : "per_channel") +
                                  (std::get<1>(i.param) ? "_own" : "_cublaslt");
                         });

// --- own kernels: reformat, called directly
// -------------------------------------------------------

struct Format {
  DType dtype;
  float scale = 1.0f;
  int zero = 0;
};

std::string format_name(const Format& f) {
  return std::string(dtype_name(f.dtype));
}

bool is_quantized(const Format& f) {
  return f.dtype == DType::kInt8 || f.dtype == DType::kUInt8 || f.dtype == DType::kFloat8E4M3;
}

// Host encoding of a real value, as the device does it.
void encode(const Format& f, void* p, int64_t i, float real) {
  switch (f.dtype) {
    case DType::kFloat32:
      static_cast<float*>(p)[i] = real;
      break;
    case DType::kFloat16:
      static_cast<Half*>(p)[i] = float_to_half(real);
      break;
    case DType::kBFloat16:
      static_cast<BFloat16*>(p)[i] = float_to_bf16(real);
      break;
    case DType::kInt8:
      static_cast<int8_t*>(p)[i] =
          int8_t(std::clamp(std::nearbyint(real / f.scale) + float(f.zero), -128.0f, 127.0f));
      break;
    case DType::kUInt8:
      static_cast<uint8_t*>(p)[i] =
          uint8_t(std::clamp(std::nearbyint(real / f.scale) + float(f.zero), 0.0f, 255.0f));
      break;
    case DType::kFloat8E4M3:
      static_cast<Float8E4M3*>(p)[i] = float_to_fp8e4m3(real / f.scale);
      break;
    default:
      break;
  }
}

double decode(const Format& f, const void* p, int64_t i) {
  switch (f.dtype) {
    case DType::kFloat32:
      return static_cast<const float*>(p)[i];
    case DType::kFloat16:
      return half_to_float(static_cast<const Half*>(p)[i]);
    case DType::kBFloat16:
      return bf16_to_float(static_cast<const BFloat16*>(p)[i]);
    case DType::kInt8:
      return (double(static_cast<const int8_t*>(p)[i]) - f.zero) * f.scale;
    case DType::kUInt8:
      return (double(static_cast<const uint8_t*>(p)[i]) - f.zero) * f.scale;
    case DType::kFloat8E4M3:
      return double(fp8e4m3_to_float(static_cast<const Float8E4M3*>(p)[i])) * f.scale;
    default:
      return 0;
  }
}

// One rounding step of the target format at `v` (what a correct conversion may differ by).
double quantum(const Format& f, double v) {
  const double a = std::fabs(v);
  switch (f.dtype) {
    case DType::kFloat32:
      return 0;
    case DType::kFloat16:
      return std::max(a * 1e-3, 6e-8);
    case DType::kBFloat16:
      return std::max(a * 8e-3, 1e-30);
    case DType::kFloat8E4M3:
      return std::max(a * 0.125, f.scale * 0.002);
    default:
      return f.scale;
  }
}

struct ReformatParam {
  Format from, to;
  bool from_nhwc, to_nhwc;
};

class CudaReformat : public ::testing::TestWithParam<ReformatParam> {};

TEST_P(CudaReformat, MatchesHostConversion) {
  REQUIRE_CUDA();
  const ReformatParam& p = GetParam();
  auto backend = backends::make_backend("cuda");
  ASSERT_TRUE(backend.ok());
  const backends::DeviceOps* dev = (*backend)->device_ops();
  ASSERT_NE(dev, nullptr);
  const Shape shape = {2, 5, 3, 4};  // N, C, H, W (logical)
  const int64_t N = 2, C = 5, H = 3, W = 4, total = N * C * H * W;
  ir::Graph g;
  auto make_value = [&](const std::string& name, const Format& f, bool nhwc) {
    ir::Value* v = g.add_value(name, f.dtype, shape);
    if (is_quantized(f)) {
      ir::QuantParams q;
      q.dtype = f.dtype;
      q.scale = {f.scale};
      if (f.dtype != DType::kFloat8E4M3) q.zero_point = {f.zero};
      v->quant = q;
    }
    v->layout = nhwc ? ir::Layout::kNHWC : ir::Layout::kPlain;
    return v;
  };
  ir::Value* x = make_value("x", p.from, p.from_nhwc);
  ir::Value* y = make_value("y", p.to, p.to_nhwc);
  ir::Node* node = g.add_node(ir::OpKind::kReformat, "reformat", {x}, {y});
  node->precision = Precision::kFP32;
  std::string why;
  ASSERT_TRUE((*backend)->supports(*node, Precision::kFP32, &why)) << why;
  auto kernel = (*backend)->create(*node, Precision::kFP32);
  ASSERT_TRUE(kernel.ok()) << kernel.status().to_string();
  ASSERT_TRUE((*kernel)->prepare(N).ok());
  auto inst = (*kernel)->instantiate(N);
  ASSERT_TRUE(inst.ok()) << inst.status().to_string();
  // Input: real values in the source format's range, stored in its physical layout.
  const Tensor real = random_tensor({total}, 9, -1.0f, 1.0f);
  const size_t in_es = dtype_size(p.from.dtype), out_es = dtype_size(p.to.dtype);
  std::vector<uint8_t> host_in(size_t(total) * in_es), host_out(size_t(total) * out_es);
  auto phys = [&](bool nhwc, int64_t n, int64_t c, int64_t h, int64_t w) {
    return nhwc ? ((n * H + h) * W + w) * C + c : ((n * C + c) * H + h) * W + w;
  };
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w)
          encode(p.from, host_in.data(), phys(p.from_nhwc, n, c, h, w),
                 real.data<float>()[phys(false, n, c, h, w)]);
  auto din = dev->alloc_device(host_in.size());
  auto dout = dev->alloc_device(host_out.size());
  ASSERT_TRUE(din.ok() && dout.ok());
  auto resources = (*backend)->create_resources();
  ASSERT_NE(resources, nullptr);
  ASSERT_TRUE(
      dev->copy_to_device(din->get(), host_in.data(), host_in.size(), resources.get()).ok());
  std::vector<backends::Buffer> ins = {{x, din->get(), shape}}, outs = {{y, dout->get(), shape}};
  backends::ExecContext ctx{ins, outs, resources.get(), nullptr};
  Status s = (*inst)->execute(ctx);
  ASSERT_TRUE(s.ok()) << s.to_string();
  ASSERT_TRUE(
      dev->copy_to_host(host_out.data(), dout->get(), host_out.size(), resources.get()).ok());
  ASSERT_TRUE(dev->synchronize(resources.get()).ok());
  int bad = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w) {
          const double source = decode(p.from, host_in.data(), phys(p.from_nhwc, n, c, h, w));
          const double got = decode(p.to, host_out.data(), phys(p.to_nhwc, n, c, h, w));
          // The conversion of the source value, within one rounding step of the target format
          // (saturating at the target's range).
          std::vector<uint8_t> one(out_es);
          encode(p.to, one.data(), 0, float(source));
          const double want = decode(p.to, one.data(), 0);
          if (std::fabs(got - want) > quantum(p.to, want) * 1.0001 && bad++ < 5)
            ADD_FAILURE() << "(" << n << "," << c << "," << h << "," << w << "): source " << source
                          << " -> " << got << ", expected " << want;
        }
  EXPECT_EQ(bad, 0);
}

std::vector<ReformatParam> reformat_params() {
  const std::vector<Format> formats = {{DType::kFloat32},
                                       {DType::kFloat16},
                                       {DType::kBFloat16},
                                       {DType::kInt8, 0.01f, 0},
                                       {DType::kUInt8, 0.008f, 128},
                                       {DType::kFloat8E4M3, 0.0025f}};
  std::vector<ReformatParam> v;
  for (const Format& a : formats)
    for (const Format& b : formats)
      for (int layouts = 0; layouts < 4; ++layouts)
        v.push_back({a, b, (layouts & 1) != 0, (layouts & 2) != 0});
  return v;
}

INSTANTIATE_TEST_SUITE_P(OwnKernels, CudaReformat, ::testing::ValuesIn(reformat_params()),
                         [](const ::testing::TestParamInfo<ReformatParam>& i) {
                           const ReformatParam& p = i.param;
                           return format_name(p.from) + (p.from_nhwc ? "_nhwc" : "_nchw") + "_to_" +
                                  format_name(p.to) + (p.to_nhwc ? "_nhwc" : "_nchw");
                         });

// --- own kernels through single-op engines
// --------------------------------------------------------

struct OpCase {
  std::string name;
  std::function<std::shared_ptr<const Model>()> make;
  bool int8 = false;  // also run it as an int8 layer (pooling, concat, relu)
};

std::shared_ptr<const Model> unary_model(
    const std::string& op, Shape shape,
    const std::vector<std::pair<std::string, float>>& fattrs = {}) {
  OnnxBuilder b(13, op);
  testing::Dims dims = {"N"};
  for (size_t i = 1; i < shape.size(); ++i) dims.push_back(shape[i]);
  b.input("x", dims);
  b.output("y", dims);
  auto n = b.node(op, {"x"}, {"y"}, "/op/" + op);
  for (auto& [k, v] : fattrs) n.attr(k, v);
  return load_model(b, op);
}

std::shared_ptr<const Model> pool_model(const std::string& op, int64_t k, int64_t s, int64_t pad,
                                        bool count_pad = false) {
  OnnxBuilder b(13, op);
  const int64_t oh = (9 + 2 * pad - k) / s + 1;
  b.input("x", {"N", 8, 9, 9});
  b.output("y", {"N", 8, oh, oh});
  auto n = b.node(op, {"x"}, {"y"}, "/op/" + op);
  n.attr("kernel_shape", {k, k}).attr("strides", {s, s}).attr("pads", {pad, pad, pad, pad});
  if (op == "AveragePool") n.attr("count_include_pad", int64_t(count_pad ? 1 : 0));
  return load_model(b, op);
}

std::vector<OpCase> op_cases() {
  std::vector<OpCase> v;
  v.push_back({"maxpool_k3s2p1", [] { return pool_model("MaxPool", 3, 2, 1); }, true});
  v.push_back({"avgpool_k2s2", [] { return pool_model("AveragePool", 2, 2, 0); }, true});
  v.push_back(
      {"avgpool_k3s1p1_count_pad", [] { return pool_model("AveragePool", 3, 1, 1, true); }});
  v.push_back({"global_avgpool",
               [] {
                 OnnxBuilder b(13, "gap");
                 b.input("x", {"N", 16, 7, 7});
                 b.output("y", {"N", 16, 1, 1});
                 b.node("GlobalAveragePool", {"x"}, {"y"}, "/op/GlobalAveragePool");
                 return load_model(b, "gap");
               },
               true});
  v.push_back({"relu", [] { return unary_model("Relu", {1, 8, 6, 6}); }, true});
  v.push_back({"sigmoid", [] { return unary_model("Sigmoid", {1, 8, 6, 6}); }});
  v.push_back({"tanh", [] { return unary_model("Tanh", {1, 37}); }});
  v.push_back({"leaky_relu", [] {
                 return unary_model("LeakyRelu", {1, 8, 6, 6}, {{"alpha", 0.1f}});
               }});
  v.push_back({"hard_swish", [] {
                 OnnxBuilder b(14, "hs");
                 b.input("x", {"N", 8, 5, 5});
                 b.output("y", {"N", 8, 5, 5});
                 b.node("HardSwish", {"x"}, {"y"}, "/op/HardSwish");
                 return load_model(b, "hs");
               }});
  v.push_back({"hard_sigmoid", [] { return unary_model("HardSigmoid", {1, 8, 5, 5}); }});
  v.push_back({"clip", [] {
                 OnnxBuilder b(13, "clip");
                 b.input("x", {"N", 8, 5, 5});
                 b.output("y", {"N", 8, 5, 5});
                 b.initializer("lo", Tensor::scalar<float>(-0.4f));
                 b.initializer("hi", Tensor::scalar<float>(0.3f));
                 b.node("Clip", {"x", "lo", "hi"}, {"y"}, "/op/Clip");
                 return load_model(b, "clip");
               }});
  v.push_back({"add_same_shape", [] {
                 OnnxBuilder b(13, "add");
                 b.input("x", {"N", 8, 5, 5});
                 b.input("z", {"N", 8, 5, 5});
                 b.output("y", {"N", 8, 5, 5});
                 b.node("Add", {"x", "z"}, {"y"}, "/op/Add");
                 return load_model(b, "add");
               }});
  v.push_back({"mul_broadcast_constant", [] {
                 OnnxBuilder b(13, "mul");
                 b.input("x", {"N", 8, 5, 5});
                 b.output("y", {"N", 8, 5, 5});
                 b.initializer("c", random_tensor({8, 1, 1}, 3, 0.5f, 2.0f));
                 b.node("Mul", {"x", "c"}, {"y"}, "/op/Mul");
                 return load_model(b, "mul");
               }});
  v.push_back({"sub_div_2d", [] {
                 OnnxBuilder b(13, "subdiv");
                 b.input("x", {"N", 12});
                 b.input("z", {"N", 12});
                 b.output("y", {"N", 12});
                 b.initializer("d", random_tensor({12}, 4, 0.5f, 2.0f));
                 b.node("Sub", {"x", "z"}, {"t"}, "/op/Sub");
                 b.node("Div", {"t", "d"}, {"y"}, "/op/Div");
                 return load_model(b, "subdiv");
               }});
  v.push_back({"concat_channels",
               [] {
                 OnnxBuilder b(13, "concat");
                 b.input("x", {"N", 8, 5, 5});
                 b.input("z", {"N", 4, 5, 5});
                 b.output("y", {"N", 12, 5, 5});
                 b.node("Concat", {"x", "z"}, {"y"}, "/op/Concat").attr("axis", int64_t(1));
                 return load_model(b, "concat");
               },
               true});
  v.push_back({"concat_2d", [] {
                 OnnxBuilder b(13, "concat2");
                 b.input("x", {"N", 7});
                 b.input("z", {"N", 5});
                 b.output("y", {"N", 12});
                 b.node("Concat", {"x", "z"}, {"y"}, "/op/Concat").attr("axis", int64_t(1));
                 return load_model(b, "concat2");
               }});
  v.push_back({"softmax", [] { return unary_model("Softmax", {1, 10}, {}); }});
  v.push_back({"log_softmax", [] { return unary_model("LogSoftmax", {1, 10}, {}); }});
  // Element moves (shufflenet's channel shuffle and split), plain layout, the input's format.
  v.push_back({"transpose_nchw_to_nhwc", [] {
                 OnnxBuilder b(13, "transpose");
                 b.input("x", {"N", 8, 5, 6});
                 b.output("y", {"N", 5, 6, 8});
                 b.node("Transpose", {"x"}, {"y"}, "/op/Transpose").attr("perm", {0, 2, 3, 1});
                 return load_model(b, "transpose");
               }});
  v.push_back({"channel_shuffle_5d", [] {
                 OnnxBuilder b(13, "shuffle");
                 b.input("x", {"N", 8, 4, 4});
                 b.output("y", {"N", 8, 4, 4});
                 b.initializer("s5", Tensor::from_vector<int64_t>({5}, {-1, 2, 4, 4, 4}));
                 b.initializer("s4", Tensor::from_vector<int64_t>({4}, {-1, 8, 4, 4}));
                 b.node("Reshape", {"x", "s5"}, {"a"}, "/op/Reshape");
                 b.node("Transpose", {"a"}, {"t"}, "/op/Transpose").attr("perm", {0, 2, 1, 3, 4});
                 b.node("Reshape", {"t", "s4"}, {"y"}, "/op/Reshape_1");
                 return load_model(b, "shuffle");
               }});
  v.push_back({"split_channels_equal",
               [] {
                 OnnxBuilder b(13, "split");
                 b.input("x", {"N", 8, 3, 3});
                 b.output("y0", {"N", 4, 3, 3});
                 b.output("y1", {"N", 4, 3, 3});
                 b.node("Split", {"x"}, {"y0", "y1"}, "/op/Split").attr("axis", int64_t(1));
                 return load_model(b, "split");
               },
               true});
  v.push_back(
      {"split_sizes_last_axis",
       [] {
         OnnxBuilder b(13, "split2");
         b.input("x", {"N", 3, 10});
         b.output("y0", {"N", 3, 3});
         b.output("y1", {"N", 3, 7});
         b.initializer("sizes", Tensor::from_vector<int64_t>({2}, {3, 7}));
         b.node("Split", {"x", "sizes"}, {"y0", "y1"}, "/op/Split").attr("axis", int64_t(-1));
         return load_model(b, "split2");
       },
       true});
  // Slice as PyTorch exports chunk/narrow (shufflenet): axes given, an end past the dim.
  v.push_back({"slice_channels_upper_half",
               [] {
                 OnnxBuilder b(13, "slice");
                 b.input("x", {"N", 8, 3, 5});
                 b.output("y", {"N", 4, 3, 5});
                 b.initializer("starts", Tensor::from_vector<int64_t>({1}, {4}));
                 b.initializer("ends", Tensor::from_vector<int64_t>({1}, {INT64_MAX}));
                 b.initializer("axes", Tensor::from_vector<int64_t>({1}, {1}));
                 b.node("Slice", {"x", "starts", "ends", "axes"}, {"y"}, "/op/Slice");
                 return load_model(b, "slice");
               },
               true});
  // Negative axes, a negative step and negative starts: several axes at once.
  v.push_back({"slice_steps_reverse",
               [] {
                 OnnxBuilder b(13, "slice2");
                 b.input("x", {"N", 6, 9});
                 b.output("y", {"N", 3, 3});
                 b.initializer("starts", Tensor::from_vector<int64_t>({2}, {-1, 1}));
                 b.initializer("ends", Tensor::from_vector<int64_t>({2}, {-100, 8}));
                 b.initializer("axes", Tensor::from_vector<int64_t>({2}, {-2, 2}));
                 b.initializer("steps", Tensor::from_vector<int64_t>({2}, {-2, 3}));
                 b.node("Slice", {"x", "starts", "ends", "axes", "steps"}, {"y"}, "/op/Slice");
                 return load_model(b, "slice2");
               },
               true});
  // Reductions: shufflenet's global mean (axes 2, 3, no kept dims), a max over channels with
  // kept dims, a sum over all but the batch axis.
  v.push_back({"reduce_mean_spatial",
               [] {
                 OnnxBuilder b(13, "rmean");
                 b.input("x", {"N", 8, 5, 6});
                 b.output("y", {"N", 8});
                 b.node("ReduceMean", {"x"}, {"y"}, "/op/ReduceMean")
                     .attr("axes", {2, 3})
                     .attr("keepdims", int64_t(0));
                 return load_model(b, "rmean");
               },
               true});
  v.push_back({"reduce_max_channels_keepdims", [] {
                 OnnxBuilder b(13, "rmax");
                 b.input("x", {"N", 8, 5, 6});
                 b.output("y", {"N", 1, 5, 6});
                 b.node("ReduceMax", {"x"}, {"y"}, "/op/ReduceMax").attr("axes", {1});
                 return load_model(b, "rmax");
               }});
  v.push_back({"reduce_sum_rows", [] {
                 OnnxBuilder b(13, "rsum");
                 b.input("x", {"N", 3, 4});
                 b.output("y", {"N", 1, 1});
                 b.node("ReduceSum", {"x"}, {"y"}, "/op/ReduceSum").attr("axes", {1, 2});
                 return load_model(b, "rsum");
               }});
  v.push_back({"flatten", [] {
                 OnnxBuilder b(13, "flatten");
                 b.input("x", {"N", 4, 3, 3});
                 b.output("y", {"N", 36});
                 b.node("Flatten", {"x"}, {"y"}, "/op/Flatten");
                 return load_model(b, "flatten");
               }});
  return v;
}

struct OpParam {
  OpCase c;
  Precision precision;
};

void PrintTo(const OpParam& p, std::ostream* os) {
  *os << param_name(p.c.name, p.precision);
}

class CudaOwnOps : public ::testing::TestWithParam<OpParam> {};

TEST_P(CudaOwnOps, MatchesReference) {
  REQUIRE_CUDA();
  const OpParam& p = GetParam();
  auto model = p.c.make();
  ASSERT_TRUE(model);
  // The precision asked explicitly for the op(s) (module "op"), so nothing falls back silently.
  std::optional<CalibrationData> calibration;
  if (p.precision == Precision::kINT8) calibration = random_calibration(*model, 4, 8, 99);
  auto engine = build_engine(model, cuda_options(), plan_for({"op"}, p.precision), calibration);
  ASSERT_TRUE(engine.ok()) << engine.status().to_string();
  SCOPED_TRACE(testing::describe_layers(engine->report()));
  for (const LayerReport& l : engine->report().layers)
    if (l.op != "Reformat") {
      EXPECT_EQ(l.actual, p.precision) << l.name << ": " << l.fallback_reason;
      EXPECT_NE(l.implementation.find("cuda"), std::string::npos) << l.implementation;
    }
  for (int64_t batch : {int64_t(1), int64_t(5)}) {
    const TensorMap inputs = random_model_inputs(*model, batch, 7 + uint64_t(batch));
    const TensorMap ref = reference_outputs(*model, inputs);
    const TensorMap got = infer_once(*engine, inputs);
    for (const auto& [name, expected] : ref) {
      ASSERT_TRUE(got.count(name)) << name;
      const Tensor& actual = got.at(name);
      ASSERT_EQ(actual.shape(), expected.shape()) << name;
      if (p.precision == Precision::kINT8)
        EXPECT_GE(testing::sqnr_db(actual, expected), 30.0) << name;
      else
        EXPECT_LE(testing::max_relative_error(actual, expected),
                  p.precision == Precision::kFP32 ? 1e-5 : 1e-2)
            << name << " at batch " << batch;
    }
  }
}

std::vector<OpParam> op_params() {
  std::vector<OpParam> v;
  for (const OpCase& c : op_cases()) {
    v.push_back({c, Precision::kFP32});
    v.push_back({c, Precision::kFP16});
    if (c.int8) v.push_back({c, Precision::kINT8});
  }
  return v;
}

INSTANTIATE_TEST_SUITE_P(OwnKernels, CudaOwnOps, ::testing::ValuesIn(op_params()),
                         [](const ::testing::TestParamInfo<OpParam>& i) {
                           return param_name(i.param.c.name, i.param.precision);
                         });

// --- whole models
// ---------------------------------------------------------------------------------

namespace fs = std::filesystem;

struct ModelParam {
  std::string name;
  Precision precision;
};

void PrintTo(const ModelParam& p, std::ostream* os) {
  *os << param_name(p.name, p.precision);
}

class CudaTorchvision : public ::testing::TestWithParam<ModelParam> {};

// fp32 through ~20 layers of cuDNN's FMA engines (Winograd/FFT allowed): 1e-3 of the largest
// logit; fp16 storage between layers: 5e-2.
TEST_P(CudaTorchvision, MatchesReference) {
  REQUIRE_CUDA();
  const ModelParam& p = GetParam();
  const char* env = std::getenv("MIXQ_TORCHVISION_DIR");
  const fs::path dir = env ? fs::path(env) / p.name : fs::path();
  if (!env || !fs::exists(dir / "done"))
    GTEST_SKIP() << "skipped: set MIXQ_TORCHVISION_DIR to the folder "
                    "tests/models/export_torchvision.py writes ("
                 << (env ? dir.string() + " has no finished export" : std::string("unset")) << ")";
  auto loaded = Model::load((dir / "model.onnx").string());
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  auto model = std::make_shared<const Model>(std::move(loaded).value());
  auto engine = build_engine(model, cuda_options(p.precision, 4));
  ASSERT_TRUE(engine.ok()) << engine.status().to_string();
  SCOPED_TRACE(testing::describe_layers(engine->report()));
  int checked = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string file = entry.path().filename().string();
    if (file.rfind("input_", 0) != 0) continue;
    auto input = load_npy(entry.path().string());
    ASSERT_TRUE(input.ok()) << input.status().to_string();
    if (input->shape()[0] > 4) continue;
    const TensorMap inputs = {{model->inputs()[0].name, *input}};
    const TensorMap ref = reference_outputs(*model, inputs);
    const TensorMap got = infer_once(*engine, inputs);
    for (const auto& [name, expected] : ref) {
      ASSERT_TRUE(got.count(name));
      const double err = testing::max_relative_error(got.at(name), expected);
      EXPECT_LE(err, p.precision == Precision::kFP32 ? 1e-3 : 5e-2) << file;
    }
    ++checked;
  }
  EXPECT_GE(checked, 1);
}

std::vector<ModelParam> model_params() {
  std::vector<ModelParam> v;
  for (const char* name :
       {"resnet18", "mobilenet_v2", "vgg11", "squeezenet1_1", "shufflenet_v2_x1_0", "googlenet"})
    for (Precision p : {Precision::kFP32, Precision::kFP16}) v.push_back({name, p});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Models, CudaTorchvision, ::testing::ValuesIn(model_params()),
                         [](const ::testing::TestParamInfo<ModelParam>& i) {
                           return param_name(i.param.name, i.param.precision);
                         });

// --- the engine file on the GPU
// -------------------------------------------------------------------

// An engine file from another GPU architecture or cuDNN version is refused, naming both targets
// and the field that differs (its tuned kernels may not exist or be the fastest here).
TEST(CudaEngineFile, OtherArchitectureOrCudnnIsRefused) {
  REQUIRE_CUDA();
  auto model = conv_model({"stem_c3", 3, 16, 12, 12, 3}, 37);
  ASSERT_TRUE(model);
  auto engine = build_engine(model, cuda_options(Precision::kFP16));
  ASSERT_TRUE(engine.ok()) << engine.status().to_string();
  auto bytes = engine->serialize();
  ASSERT_TRUE(bytes.ok()) << bytes.status().to_string();
  ASSERT_TRUE(Engine::from_bytes(*bytes, "'here.mixq'").ok());
  for (const char* key : {"sm", "cudnn"}) {
    SCOPED_TRACE(key);
    const std::string other = testing::rewrite_metadata(*bytes, [&](nlohmann::json& m) {
      std::string target = m["target"].get<std::string>();
      const size_t at = target.find(std::string(key) + "=");
      ASSERT_NE(at, std::string::npos) << target;
      const size_t end = target.find(';', at);
      target.replace(at, end == std::string::npos ? std::string::npos : end - at,
                     std::string(key) + "=1");
      m["target"] = target;
    });
    auto loaded = Engine::from_bytes(other, "'other.mixq'");
    ASSERT_FALSE(loaded.ok());
    EXPECT_EQ(loaded.status().code(), StatusCode::kFailedPrecondition);
    const std::string message = loaded.status().message();
    EXPECT_NE(message.find(std::string("(") + key + " differs)"), std::string::npos) << message;
    EXPECT_NE(message.find(std::string(key) + "=1"), std::string::npos) << message;
    EXPECT_NE(message.find("rebuild the engine here"), std::string::npos) << message;
  }
}

TEST(CudaEngineFile, RoundTripKeepsOutputsAndTuningChoices) {
  REQUIRE_CUDA();
  // conv (int8) -> conv (fp16) -> pool -> flatten -> gemm (fp32): every library family.
  OnnxBuilder b(13, "roundtrip");
  b.input("x", {"N", 16, 8, 8});
  b.output("y", {"N", 10});
  b.initializer("c1.weight", random_tensor({32, 16, 3, 3}, 1, -0.1f, 0.1f));
  b.initializer("c1.bias", random_tensor({32}, 2, -0.1f, 0.1f));
  b.initializer("c2.weight", random_tensor({32, 32, 3, 3}, 3, -0.08f, 0.08f));
  b.initializer("fc.weight", random_tensor({10, 32}, 4, -0.2f, 0.2f));
  b.node("Conv", {"x", "c1.weight", "c1.bias"}, {"a"}, "/c1/Conv")
      .attr("kernel_shape", {3, 3})
      .attr("pads", {1, 1, 1, 1});
  b.node("Relu", {"a"}, {"ar"}, "/c1_relu/Relu");
  b.node("Conv", {"ar", "c2.weight"}, {"c"}, "/c2/Conv")
      .attr("kernel_shape", {3, 3})
      .attr("pads", {1, 1, 1, 1});
  b.node("GlobalAveragePool", {"c"}, {"p"}, "/pool/GlobalAveragePool");
  b.node("Flatten", {"p"}, {"f"}, "/flatten/Flatten");
  b.node("Gemm", {"f", "fc.weight"}, {"y"}, "/fc/Gemm").attr("transB", int64_t(1));
  auto model = load_model(b, "roundtrip");
  ASSERT_TRUE(model);
  const std::string plan =
      R"({"layers": [{"match": "c1", "precision": "int8"}, {"match": "c2", "precision": "fp16"},
                                          {"match": "fc", "precision": "fp32"}]})";
  const auto t0 = std::chrono::steady_clock::now();
  // Bit-for-bit comparisons below.
  auto built =
      build_engine(model, deterministic_options(), plan, random_calibration(*model, 4, 8, 5));
  const double build_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(built.ok()) << built.status().to_string();
  auto bytes = built->serialize();
  ASSERT_TRUE(bytes.ok()) << bytes.status().to_string();
  const auto t1 = std::chrono::steady_clock::now();
  auto loaded = Engine::from_bytes(*bytes, "'roundtrip.mixq'");
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  // The tuning choices travel in the file and the loaded kernels use them (no search).
  const auto& impl = loaded->impl();
  int libraries = 0;
  for (size_t i = 0; i < impl.steps.size(); ++i) {
    const ir::Node* n = impl.steps[i];
    if (n->op != ir::OpKind::kFusedConv && n->op != ir::OpKind::kFusedGemm) continue;
    ++libraries;
    const std::string key =
        n->op == ir::OpKind::kFusedConv ? "mixq.cudnn_choice" : "mixq.cublaslt_choice";
    EXPECT_FALSE(n->attr_string(key, "").empty()) << n->name;
    EXPECT_NE(impl.kernels[i]->implementation().find("recorded choice"), std::string::npos)
        << impl.kernels[i]->implementation();
  }
  EXPECT_EQ(libraries, 3);
  EXPECT_LT(load_s, 1.0) << "loading took " << load_s << " s (build " << build_s << " s)";
  for (int64_t batch : {int64_t(1), kMaxBatch}) {
    const TensorMap inputs = random_model_inputs(*model, batch, 77);
    const TensorMap a = infer_once(*built, inputs);
    const TensorMap c = infer_once(*loaded, inputs);
    ASSERT_TRUE(a.count("y") && c.count("y"));
    EXPECT_EQ(testing::max_abs_error(c.at("y"), a.at("y")), 0.0) << "batch " << batch;
    const TensorMap ref = reference_outputs(*model, inputs);
    EXPECT_GE(testing::sqnr_db(c.at("y"), ref.at("y")), 25.0);
  }
  // And through a file on disk.
  testing::TempDir tmp;
  ASSERT_TRUE(built->save(tmp.file("e.mixq")).ok());
  auto from_file = Engine::load(tmp.file("e.mixq"));
  ASSERT_TRUE(from_file.ok()) << from_file.status().to_string();
  const TensorMap inputs = random_model_inputs(*model, 3, 78);
  EXPECT_EQ(testing::max_abs_error(infer_once(*from_file, inputs).at("y"),
                                   infer_once(*built, inputs).at("y")),
            0.0);
}

// Many inferences on one context replay a captured graph; results stay identical and a second
// context (another stream) agrees.
TEST(CudaEngine, RepeatedInferenceAndContextsAgree) {
  REQUIRE_CUDA();
  auto model = conv_model({"rep", 16, 32, 12, 12, 3, 1, 1, 1, true, "relu"}, 3);
  ASSERT_TRUE(model);
  auto engine = build_engine(model, deterministic_options(Precision::kFP16));
  ASSERT_TRUE(engine.ok()) << engine.status().to_string();
  const TensorMap inputs = random_model_inputs(*model, kMaxBatch, 5);
  auto ctx = engine->create_context();
  ASSERT_TRUE(ctx.ok());
  auto first = ctx->infer(inputs);
  ASSERT_TRUE(first.ok()) << first.status().to_string();
  for (int i = 0; i < 5; ++i) {
    auto again = ctx->infer(inputs);
    ASSERT_TRUE(again.ok()) << again.status().to_string();
    EXPECT_EQ(testing::max_abs_error(again->outputs.at("y"), first->outputs.at("y")), 0.0);
    EXPECT_GT(again->timing.compute_ms, 0.0);
  }
  const TensorMap other = infer_once(*engine, inputs);
  EXPECT_EQ(testing::max_abs_error(other.at("y"), first->outputs.at("y")), 0.0);
}

// Our kernels in a row (six convolutions: three chained steps) let their successors launch early
// (programmatic dependent launch, ExecContext::successor_waits); each successor waits before it
// reads. Replays of new inputs give
// the bits of launches that wait for the previous one to end (MIXQ_CUDA_OVERLAP=0): a successor
// that read early would see the previous replay's intermediates.
TEST(CudaEngine, OverlappedLaunchesGiveTheBitsOfSerialOnes) {
  REQUIRE_CUDA();
  OnnxBuilder b(13, "own_conv_stack");
  b.input("x", {"N", 8, 16, 16});
  b.output("y", {"N", 16, 16, 16});
  std::string in = "x";
  for (int i = 0; i < 6; ++i) {
    const std::string w = "w" + std::to_string(i), bias = "b" + std::to_string(i);
    const std::string c = "c" + std::to_string(i), out = i == 5 ? "y" : "r" + std::to_string(i);
    b.initializer(w, random_tensor({16, i == 0 ? 8 : 16, 3, 3}, 70 + uint64_t(i), -0.3f, 0.3f));
    b.initializer(bias, random_tensor({16}, 80 + uint64_t(i), -0.1f, 0.1f));
    b.node("Conv", {in, w, bias}, {c}, "/conv" + std::to_string(i))
        .attr("kernel_shape", {3, 3})
        .attr("pads", {1, 1, 1, 1});
    b.node("Relu", {c}, {out}, "/relu" + std::to_string(i));
    in = out;
  }
  auto model = load_model(b, "own_conv_stack");
  ASSERT_TRUE(model);
  std::optional<Expected<Engine>> engine;
  {
    testing::ScopedEnv window("MIXQ_CUDA_CONV", "window");  // our kernel for every layer
    engine = build_engine(model, cuda_options(Precision::kFP32, chained_batch()),
                          R"({"default_precision": "int8"})",
                          random_calibration(*model, 2, 8, 77, -1.0f, 1.0f));
  }
  ASSERT_TRUE(engine->ok()) << engine->status().to_string();
  for (const LayerReport& l : (*engine)->report().layers)
    if (l.op == "FusedConv")
      ASSERT_NE(l.implementation.find("window"), std::string::npos) << l.implementation;
  std::vector<TensorMap> inputs;
  for (uint64_t i = 0; i < 6; ++i)
    inputs.push_back(
        random_model_inputs(*model, i % 2 ? chained_batch() : 3, 700 + i, -1.0f, 1.0f));
  auto run_all = [&](const char* overlap) {
    testing::ScopedEnv setting("MIXQ_CUDA_OVERLAP", overlap);
    std::vector<Tensor> outputs;
    auto ctx = (*engine)->create_context();  // a graph of its own, captured with `overlap`
    EXPECT_TRUE(ctx.ok());
    if (!ctx.ok()) return outputs;
    for (int round = 0; round < 3; ++round)
      for (const TensorMap& x : inputs) {
        auto r = ctx->infer(x);
        EXPECT_TRUE(r.ok()) << r.status().to_string();
        if (r.ok()) outputs.push_back(r->outputs.at("y").clone());
      }
    return outputs;
  };
  const std::vector<Tensor> serial = run_all("0"), overlapped = run_all("1");
  ASSERT_EQ(serial.size(), overlapped.size());
  for (size_t i = 0; i < serial.size(); ++i)
    EXPECT_EQ(testing::max_abs_error(overlapped[i], serial[i]), 0.0) << "run " << i;
  // And they are the right bits: the first round against the reference.
  for (size_t i = 0; i < inputs.size(); ++i)
    EXPECT_GE(testing::sqnr_db(serial[i], reference_outputs(*model, inputs[i]).at("y")), 20.0);
}

// Profiling times every step inside the replayed graph: one time per step, in order, that add up
// to the compute time (the marks lie between its two events), and the outputs stay the same.
TEST(CudaEngine, ProfilingTimesEveryStepInTheGraph) {
  REQUIRE_CUDA();
  auto model = block_model(32, 16, 41);
  ASSERT_TRUE(model);
  auto engine = build_engine(model, deterministic_options(Precision::kFP16));
  ASSERT_TRUE(engine.ok()) << engine.status().to_string();
  auto ctx = engine->create_context();
  ASSERT_TRUE(ctx.ok());
  const TensorMap inputs = random_model_inputs(*model, kMaxBatch, 8);
  auto plain = ctx->infer(inputs);
  ASSERT_TRUE(plain.ok()) << plain.status().to_string();
  ctx->set_profiling(true);
  for (int run = 0; run < 3; ++run) {
    auto r = ctx->infer(inputs);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    const auto& steps = engine->impl().steps;
    ASSERT_EQ(r->layers.size(), steps.size());
    double sum = 0;
    for (size_t i = 0; i < steps.size(); ++i) {
      EXPECT_EQ(r->layers[i].name, steps[i]->name);
      EXPECT_GE(r->layers[i].ms, 0.0);
      sum += r->layers[i].ms;
    }
    EXPECT_LE(sum, r->timing.compute_ms * 1.001 + 1e-3);
    EXPECT_GT(sum, 0.5 * r->timing.compute_ms);
    EXPECT_EQ(testing::max_abs_error(r->outputs.at("y"), plain->outputs.at("y")), 0.0);
  }
  ctx->set_profiling(false);
  auto after = ctx->infer(inputs);
  ASSERT_TRUE(after.ok());
  EXPECT_TRUE(after->layers.empty());
}

// Device-resident inputs and outputs (cudaMalloc pointers), mixed with host ones on one context:
// each combination captures its own graph and gives the host-only result, also on the next
// rounds (a graph must not replay stale staging copies).
TEST(CudaEngine, DeviceInputsAndOutputsMatchHostOnes) {
  REQUIRE_CUDA();
  auto model = conv_model({"dev_io", 16, 32, 12, 12, 3, 1, 1, 1, true, "relu"}, 4);
  ASSERT_TRUE(model);
  auto engine = build_engine(model, deterministic_options(Precision::kFP16));
  ASSERT_TRUE(engine.ok()) << engine.status().to_string();
  auto ctx = engine->create_context();
  ASSERT_TRUE(ctx.ok());
  auto device_copy = [](const Tensor& t) {
    void* p = nullptr;
    EXPECT_EQ(cudaMalloc(&p, std::max<size_t>(t.nbytes(), 16)), cudaSuccess);
    std::shared_ptr<void> owner(p, [](void* q) { cudaFree(q); });
    EXPECT_EQ(cudaMemcpy(p, t.raw(), t.nbytes(), cudaMemcpyHostToDevice), cudaSuccess);
    return Tensor::wrap(t.dtype(), t.shape(), p, owner);
  };
  cudaStream_t producer = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&producer, cudaStreamNonBlocking), cudaSuccess);
  for (int64_t batch : {kMaxBatch, int64_t(3)}) {
    const TensorMap host_in = random_model_inputs(*model, batch, 10 + uint64_t(batch));
    auto expected = ctx->infer(host_in);
    ASSERT_TRUE(expected.ok()) << expected.status().to_string();
    const Tensor& want = expected->outputs.at("y");
    TensorMap dev_in;
    for (const auto& [name, t] : host_in) dev_in[name] = device_copy(t);
    Tensor dev_out = device_copy(Tensor::zeros(want.dtype(), want.shape()));
    for (int round = 0; round < 3; ++round) {
      for (int combo = 0; combo < 4; ++combo) {
        const bool in_on_device = combo & 1, out_on_device = combo & 2;
        InferOptions options;
        TensorMap in = host_in;
        if (in_on_device) {
          // The producer rewrites the inputs on its stream: the engine must wait for it.
          for (const auto& [name, t] : host_in) {
            ASSERT_EQ(cudaMemsetAsync(dev_in[name].raw(), 0x7f, t.nbytes(), producer), cudaSuccess);
            ASSERT_EQ(cudaMemcpyAsync(dev_in[name].raw(), t.raw(), t.nbytes(),
                                      cudaMemcpyHostToDevice, producer),
                      cudaSuccess);
          }
          in = dev_in;
          options.input_stream = producer;
        }
        if (out_on_device) {
          ASSERT_EQ(cudaMemset(const_cast<void*>(dev_out.raw()), 0, dev_out.nbytes()), cudaSuccess);
          options.outputs["y"] = dev_out;
        }
        auto r = ctx->infer(in, options);
        ASSERT_TRUE(r.ok()) << r.status().to_string();
        Tensor got = r->outputs.at("y");
        if (out_on_device) {
          EXPECT_EQ(got.raw(), dev_out.raw());
          Tensor back = Tensor::empty(want.dtype(), want.shape());
          ASSERT_EQ(cudaMemcpy(back.raw(), dev_out.raw(), back.nbytes(), cudaMemcpyDeviceToHost),
                    cudaSuccess);
          got = back;
        }
        EXPECT_EQ(testing::max_abs_error(got, want), 0.0)
            << "batch " << batch << " round " << round << " inputs on "
            << (in_on_device ? "device" : "host") << ", output to "
            << (out_on_device ? "device" : "host");
      }
    }
  }
  cudaStreamDestroy(producer);
}

// The calibration engine of an int8 build is not tuned (it runs a few fp32 batches), and its
// untuned choices never reach the final engine: there, an fp32 layer of the very shape the
// calibration engine ran (same maximum batch, a shape no other test uses) is tuned afresh.
// A plan that switches from fp8 to int8 keeps the fp8 layer's output in fp8 and requantizes it
// once for the int8 readers (not through fp32: a dequantize, a quantize and a lost fused
// residual cost a measured ResNet18 plan 80 us at that switch).
TEST(CudaEngine, Fp8ToInt8SwitchRequantizesOnce) {
  REQUIRE_CUDA();
  OnnxBuilder b(13, "switch");
  b.input("x", {"N", 3, 10, 10});
  b.output("y", {"N", 8, 10, 10});
  b.initializer("a.weight", random_tensor({16, 3, 3, 3}, 41, -0.4f, 0.4f));
  b.initializer("b.weight", random_tensor({16, 16, 3, 3}, 42, -0.12f, 0.12f));
  b.initializer("c.weight", random_tensor({8, 16, 1, 1}, 43, -0.5f, 0.5f));
  b.node("Conv", {"x", "a.weight"}, {"a_out"}, "/a/Conv")
      .attr("kernel_shape", {3, 3})
      .attr("pads", {1, 1, 1, 1});
  b.node("Relu", {"a_out"}, {"a"}, "/a_relu/Relu");
  b.node("Conv", {"a", "b.weight"}, {"b_out"}, "/b/Conv")
      .attr("kernel_shape", {3, 3})
      .attr("pads", {1, 1, 1, 1});
  b.node("Relu", {"b_out"}, {"bb"}, "/b_relu/Relu");
  b.node("Conv", {"bb", "c.weight"}, {"y"}, "/c/Conv").attr("kernel_shape", {1, 1});
  auto model = load_model(b, "switch");
  ASSERT_TRUE(model);
  const std::string plan =
      R"({"layers": [{"match": "a", "precision": "fp8"}, {"match": "b", "precision": "int8"},
                     {"match": "c", "precision": "int8"}]})";
  // Three quantized layers in a chain, the first fp8: held to the int8 bound for such a block.
  const CheckResult r = check_engine(model, Precision::kINT8, plan, /*block=*/true);
  ASSERT_TRUE(r.built) << r.error;
  int requantized = 0, dequantized = 0;
  for (const LayerReport& l : r.report.layers) {
    requantized += l.op == "Reformat" && l.name.find("/requantized") != std::string::npos;
    dequantized += l.op == "Reformat" && l.name.find("/dequantized") != std::string::npos;
  }
  EXPECT_EQ(requantized, 1) << testing::describe_layers(r.report);
  EXPECT_EQ(dequantized, 0) << testing::describe_layers(r.report);
}

TEST(CudaEngine, CalibrationEngineIsNotTunedAndLeavesNoChoices) {
  REQUIRE_CUDA();
  auto model = block_model(24, 8, 77);
  ASSERT_TRUE(model);
  BuildOptions options = cuda_options(Precision::kFP32, 32);
  options.calibration.batch_size = 32;
  const std::string plan = R"({"layers": [{"match": "a", "precision": "fp32"},
                                          {"match": "b", "precision": "int8"},
                                          {"match": "c", "precision": "int8"}]})";
  const auto start = std::chrono::steady_clock::now();
  auto engine = build_engine(model, options, plan, random_calibration(*model, 2, 32, 7));
  ASSERT_TRUE(engine.ok()) << engine.status().to_string();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  bool saw_a = false;
  for (const LayerReport& l : engine->report().layers) {
    EXPECT_EQ(l.implementation.find("untuned"), std::string::npos) << l.implementation;
    if ((l.module == "a" || l.name == "/a/Conv") && l.op == "FusedConv") {
      saw_a = true;
      EXPECT_EQ(l.actual, Precision::kFP32);
      EXPECT_NE(l.implementation.find("[tuned "), std::string::npos) << l.implementation;
      EXPECT_EQ(l.implementation.find("tuned before"), std::string::npos) << l.implementation;
    }
  }
  EXPECT_TRUE(saw_a) << testing::describe_layers(engine->report());
  for (const ir::Node* n : engine->impl().graph->nodes())
    EXPECT_FALSE(n->has_attr(backends::kNoTuningAttr)) << n->name;
  std::printf("mixed fp32/int8 build with calibration: %.2f s\n", seconds);
}

// cuDNN's int8 convolutions run runtime-compiled engines; the engine file keeps those plans as
// cuDNN serializes them (kernels included), so loading compiles nothing. A plan cuDNN no longer
// takes (here: one rewritten) is rebuilt from the recorded choice instead, with the same results.
TEST(CudaEngineFile, SerializedPlansLoadAndUnusableOnesAreRebuilt) {
  REQUIRE_CUDA();
  testing::ScopedEnv cudnn_only("MIXQ_CUDA_CONV", "cudnn");
  auto model = block_model(56, 16, 71);  // channel counts no other test uses
  ASSERT_TRUE(model);
  auto built =
      build_engine(model, deterministic_options(), plan_for({"a", "b", "c"}, Precision::kINT8),
                   random_calibration(*model, 4, 8, 6));
  ASSERT_TRUE(built.ok()) << built.status().to_string();
  int serialized = 0;
  for (const ir::Node* n : built->impl().graph->nodes())
    if (n->has_attr("mixq.cudnn_plan")) {
      ++serialized;
      // "<signature hash>|<mode>|<choice>|<json>", naming the recorded choice.
      const std::string plan = n->attr_string("mixq.cudnn_plan", "");
      EXPECT_EQ(plan.rfind(n->attr_string("mixq.cudnn_choice", "") + "|", 0), 0u) << n->name;
    }
  EXPECT_GE(serialized, 1) << testing::describe_layers(built->report());
  auto bytes = built->serialize();
  ASSERT_TRUE(bytes.ok()) << bytes.status().to_string();
  const std::string broken = testing::rewrite_metadata(*bytes, [](nlohmann::json& m) {
    for (auto& node : m["graph"]["nodes"])
      if (node["attrs"].contains("mixq.cudnn_plan")) {
        std::string& plan = node["attrs"]["mixq.cudnn_plan"]["s"].get_ref<std::string&>();
        plan = plan.substr(0, plan.rfind('|', plan.find('{')) + 1) + "{\"not\": \"a plan\"}";
      }
  });
  const TensorMap inputs = random_model_inputs(*model, kMaxBatch, 79);
  const TensorMap expected = infer_once(*built, inputs);
  for (const auto& [name, file] : {std::pair{"as built", *bytes}, std::pair{"rewritten", broken}}) {
    SCOPED_TRACE(name);
    auto loaded = Engine::from_bytes(file, "'plans.mixq'");
    ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
    const auto& impl = loaded->impl();
    for (size_t i = 0; i < impl.steps.size(); ++i)
      if (impl.steps[i]->op == ir::OpKind::kFusedConv)
        EXPECT_NE(impl.kernels[i]->implementation().find("recorded choice"), std::string::npos)
            << impl.kernels[i]->implementation();
    EXPECT_EQ(testing::max_abs_error(infer_once(*loaded, inputs).at("y"), expected.at("y")), 0.0);
  }
}

// MIXQ_CUDA_TUNE_KERNELS=1 also times every kernel configuration of the winning runtime-compiled
// engine (int8 convolutions run such engines); whichever wins still matches the reference.
TEST(CudaConv, KernelSweepTimesEveryKernelConfigurationOfTheWinner) {
  REQUIRE_CUDA();
  testing::ScopedEnv cudnn_only("MIXQ_CUDA_CONV", "cudnn");
  testing::ScopedEnv sweep("MIXQ_CUDA_TUNE_KERNELS", "1");
  auto model = conv_model({"sweep", 24, 40, 10, 10, 3, 1, 1, 1, true, "relu"}, 83);  // unique shape
  ASSERT_TRUE(model);
  const CheckResult r =
      check_engine(model, Precision::kINT8, plan_for({"layer"}, Precision::kINT8));
  ASSERT_TRUE(r.built) << r.error;
  const LayerReport* conv = testing::find_layer(r.report, "FusedConv");
  ASSERT_NE(conv, nullptr);
  EXPECT_NE(conv->implementation.find("(rtc)"), std::string::npos) << conv->implementation;
  EXPECT_NE(conv->implementation.find(" kernel configs"), std::string::npos)
      << conv->implementation;
}

// An untuned build (like the calibration engine, which runs a few batches) takes engines that need
// no runtime compilation (about a second a layer) where cuDNN has one for either form: an fp32
// residual chain fuses only through compiled engines, so that layer runs split.
TEST(CudaEngine, UntunedBuildTakesNoRuntimeCompiledEngines) {
  REQUIRE_CUDA();
  testing::ScopedEnv untuned("MIXQ_CUDA_TUNE", "0");
  testing::ScopedEnv cudnn_only("MIXQ_CUDA_CONV", "cudnn");
  auto model = block_model(48, 16, 53);  // channel counts no other test uses
  ASSERT_TRUE(model);
  const CheckResult r =
      check_engine(model, Precision::kFP32, plan_for({"a", "b", "c"}, Precision::kFP32), true);
  ASSERT_TRUE(r.built) << r.error;
  int convs = 0;
  for (const LayerReport& l : r.report.layers) {
    if (l.op != "FusedConv") continue;
    ++convs;
    EXPECT_NE(l.implementation.find("untuned"), std::string::npos) << l.implementation;
    EXPECT_EQ(l.implementation.find("(rtc)"), std::string::npos) << l.implementation;
  }
  EXPECT_EQ(convs, 3) << testing::describe_layers(r.report);
}

// Layers compile their cuDNN candidates ahead (Kernel::precompile) on worker threads. Layers
// destroyed unprepared (a build that failed earlier) cancel what is still queued and wait for
// what runs; prepared afterwards, the same layers tune and run.
TEST(CudaEngine, PrecompiledPlansOfUnpreparedLayersAreCancelled) {
  REQUIRE_CUDA();
  testing::ScopedEnv cudnn_only("MIXQ_CUDA_CONV", "cudnn");
  auto model = block_model(40, 16, 61);  // channel counts no other test uses
  ASSERT_TRUE(model);
  auto engine = build_engine(model, cuda_options(), plan_for({"a", "b", "c"}, Precision::kFP16));
  ASSERT_TRUE(engine.ok()) << engine.status().to_string();
  // The engine's graph without its recorded choices, at a batch nothing was tuned for: every
  // convolution submits its candidates.
  auto graph = engine->impl().graph->clone();
  for (ir::Node* n : graph->nodes()) n->attrs.erase("mixq.cudnn_choice");
  const backends::Backend& backend = *engine->impl().backend;
  constexpr int64_t kBatch = 5;
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE(round == 0 ? "destroyed unprepared" : "prepared");
    std::vector<std::unique_ptr<backends::Kernel>> kernels;
    for (ir::Node* n : graph->nodes()) {
      auto k = backend.create(*n, n->precision.value_or(Precision::kFP32));
      ASSERT_TRUE(k.ok()) << k.status().to_string();
      kernels.push_back(std::move(k).value());
    }
    for (auto& k : kernels) k->precompile(kBatch);
    if (round == 0) continue;
    int tuned = 0;
    for (size_t i = 0; i < kernels.size(); ++i) {
      const ir::Node& n = *graph->nodes()[i];
      Status prepared = kernels[i]->prepare(kBatch);
      ASSERT_TRUE(prepared.ok()) << n.name << ": " << prepared.to_string();
      EXPECT_TRUE(kernels[i]->instantiate(kBatch).ok()) << n.name;
      tuned += kernels[i]->implementation().find("[tuned ") != std::string::npos;
    }
    EXPECT_EQ(tuned, 3);
  }
}

}  // namespace
}  // namespace mixq
