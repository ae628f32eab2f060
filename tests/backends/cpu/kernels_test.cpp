// The CPU backend's oneDNN kernels, one layer at a time, through the public Builder: every
// single-layer model runs on an fp32 engine that must match the reference interpreter
// (Model::run_reference) at batch 1, 3 and the maximum batch, and on an int8 engine (default
// precision int8, calibrated on data of the same distribution) that must reach 30 dB SQNR
// against the fp32 reference. Each case runs with the backend's layouts (NHWC int8, blocked fp32)
// and with MIXQ_CPU_LAYOUTS=plain.
//
// Tolerance for fp32: 1e-5 of the output's largest magnitude. The engine builds oneDNN's direct
// convolutions (never Winograd) and matmuls; they sum the same products as the reference in
// another order (blocked over channels, vectorised FMA), which moves the result by a few ulp of
// the partial sums, i.e. ~K * 2^-24 of max|y| for K products per output. The largest K here is
// 16*5*5 = 400 (~2.4e-5 worst case, ~1e-6 typical with random signs), so 1e-5 holds with margin
// for every case below.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "support/engine_util.h"
#include "support/onnx_builder.h"
#include "support/test_util.h"

namespace mixq {
namespace {

using testing::append_conv_epilogue;
using testing::build_engine;
using testing::cpu_options;
using testing::infer_once;
using testing::load_model;
using testing::OnnxBuilder;
using testing::random_calibration;
using testing::random_model_inputs;
using testing::random_tensor;
using testing::reference_outputs;

constexpr int64_t kMaxBatch = 8;
constexpr double kFp32Tolerance = 1e-5;
constexpr double kInt8MinSqnrDb = 30.0;

enum class Layouts { kBackend, kPlain };

std::string layouts_name(Layouts l) {
  return l == Layouts::kPlain ? "plain" : "backend";
}

struct Check {
  Precision precision = Precision::kFP32;  // int8: SQNR against the reference, else tolerance
  Layouts layouts = Layouts::kBackend;
  std::string plan;             // a native plan; empty: `precision` is the default
  float lo = -1.0f, hi = 1.0f;  // input distribution (calibration and test data)
  bool allow_fallback = false;
};

// Builds `model` (int8: calibrated on 4 batches from the inputs' distribution), then compares
// it with the reference at batch 1, 3 and the maximum. Returns the engine's report.
BuildReport check_engine(const std::shared_ptr<const Model>& model, const Check& check) {
  const Precision precision = check.precision;
  const float lo = check.lo, hi = check.hi;
  const std::string& plan = check.plan;
  const Layouts layouts = check.layouts;
  BuildOptions options = cpu_options(plan.empty() ? precision : Precision::kFP32, kMaxBatch);
  options.allow_fallback = check.allow_fallback;
  std::optional<CalibrationData> calibration;
  if (precision == Precision::kINT8) calibration = random_calibration(*model, 4, 8, 4242, lo, hi);
  Expected<Engine> engine = [&] {
    auto env = testing::cpu_layouts(layouts == Layouts::kPlain);
    return build_engine(model, options, plan, calibration);
  }();
  if (!engine.ok()) {
    ADD_FAILURE() << "build failed: " << engine.status().to_string();
    return {};
  }
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
      EXPECT_EQ(actual.dtype(), DType::kFloat32) << name;
      if (actual.shape() != expected.shape()) continue;
      if (precision == Precision::kINT8) {
        EXPECT_GE(testing::sqnr_db(actual, expected), kInt8MinSqnrDb) << name;
      } else {
        EXPECT_LE(testing::max_relative_error(actual, expected), kFp32Tolerance) << name;
      }
    }
  }
  return engine->report();
}

// --- convolutions -------------------------------------------------------------------------------

struct ConvCase {
  std::string name;
  int64_t cin, cout, h, w;
  std::vector<int64_t> kernel;     // kh, kw
  std::vector<int64_t> strides;    // sh, sw
  std::vector<int64_t> dilations;  // dh, dw
  std::vector<int64_t> pads;       // top, left, bottom, right
  int64_t group = 1;
  bool bias = true;
  std::string epilogue;  // "", "relu", "clip", "add", "add_relu"
};

int64_t out_dim(int64_t in, int64_t k, int64_t s, int64_t d, int64_t p0, int64_t p1) {
  return (in + p0 + p1 - ((k - 1) * d + 1)) / s + 1;
}

std::shared_ptr<const Model> conv_model(const ConvCase& c, uint64_t seed) {
  OnnxBuilder b(13, "conv_" + c.name);
  const int64_t oh = out_dim(c.h, c.kernel[0], c.strides[0], c.dilations[0], c.pads[0], c.pads[2]);
  const int64_t ow = out_dim(c.w, c.kernel[1], c.strides[1], c.dilations[1], c.pads[1], c.pads[3]);
  b.input("x", {"N", c.cin, c.h, c.w});
  const bool residual = c.epilogue.rfind("add", 0) == 0;
  if (residual) b.input("r", {"N", c.cout, oh, ow});
  b.output("y", {"N", c.cout, oh, ow});
  // Weights scaled like a trained layer (Kaiming-ish) so outputs stay O(1).
  const float bound = 1.0f / std::sqrt(float(c.cin / c.group * c.kernel[0] * c.kernel[1]));
  b.initializer("conv.weight", random_tensor({c.cout, c.cin / c.group, c.kernel[0], c.kernel[1]},
                                             seed, -2 * bound, 2 * bound));
  std::vector<std::string> ins = {"x", "conv.weight"};
  if (c.bias) {
    b.initializer("conv.bias", random_tensor({c.cout}, seed + 1, -0.2f, 0.2f));
    ins.push_back("conv.bias");
  }
  const std::string out = c.epilogue.empty() ? "y" : "conv_out";
  b.node("Conv", ins, {out}, "/conv/Conv")
      .attr("kernel_shape", c.kernel)
      .attr("strides", c.strides)
      .attr("dilations", c.dilations)
      .attr("pads", c.pads)
      .attr("group", c.group);
  append_conv_epilogue(b, c.epilogue, out, "/Add");
  return load_model(b, "conv_" + c.name);
}

std::vector<ConvCase> conv_cases() {
  return {
      {"k3_pad1_bias", 8, 16, 12, 12, {3, 3}, {1, 1}, {1, 1}, {1, 1, 1, 1}},
      {"k3_no_bias_3ch", 3, 8, 10, 10, {3, 3}, {1, 1}, {1, 1}, {1, 1, 1, 1}, 1, false},
      {"k1", 16, 24, 7, 7, {1, 1}, {1, 1}, {1, 1}, {0, 0, 0, 0}},
      {"k1_stride2", 16, 32, 8, 8, {1, 1}, {2, 2}, {1, 1}, {0, 0, 0, 0}},
      {"k5_stride2_pad2", 16, 16, 15, 15, {5, 5}, {2, 2}, {1, 1}, {2, 2, 2, 2}},
      {"k3_stride2_asymmetric_pads", 8, 8, 11, 9, {3, 3}, {2, 2}, {1, 1}, {0, 1, 1, 2}},
      {"k3_dilation2", 8, 16, 12, 12, {3, 3}, {1, 1}, {2, 2}, {2, 2, 2, 2}},
      {"k1x3_rect_stride2x1", 8, 16, 9, 13, {1, 3}, {2, 1}, {1, 1}, {0, 1, 0, 1}},
      {"groups4", 16, 32, 10, 10, {3, 3}, {1, 1}, {1, 1}, {1, 1, 1, 1}, 4},
      {"depthwise", 16, 16, 10, 10, {3, 3}, {1, 1}, {1, 1}, {1, 1, 1, 1}, 16},
      {"depthwise_stride2_no_bias",
       32,
       32,
       11,
       11,
       {3, 3},
       {2, 2},
       {1, 1},
       {1, 1, 1, 1},
       32,
       false},
      {"depthwise_k5", 8, 8, 12, 12, {5, 5}, {1, 1}, {1, 1}, {2, 2, 2, 2}, 8},
      {"relu", 8, 16, 12, 12, {3, 3}, {1, 1}, {1, 1}, {1, 1, 1, 1}, 1, true, "relu"},
      {"clip", 8, 16, 12, 12, {3, 3}, {1, 1}, {1, 1}, {1, 1, 1, 1}, 1, true, "clip"},
      {"residual_add", 8, 16, 12, 12, {3, 3}, {1, 1}, {1, 1}, {1, 1, 1, 1}, 1, true, "add"},
      {"residual_add_relu",
       16,
       16,
       8,
       8,
       {3, 3},
       {1, 1},
       {1, 1},
       {1, 1, 1, 1},
       1,
       true,
       "add_relu"},
      {"residual_add_relu_stride2",
       8,
       16,
       10,
       10,
       {3, 3},
       {2, 2},
       {1, 1},
       {1, 1, 1, 1},
       1,
       false,
       "add_relu"},
  };
}

struct ConvParam {
  ConvCase c;
  Precision precision;
  Layouts layouts;
};

void PrintTo(const ConvParam& p, std::ostream* os) {
  *os << p.c.name;
}

class CpuConv : public ::testing::TestWithParam<ConvParam> {};

TEST_P(CpuConv, MatchesReference) {
  const ConvParam& p = GetParam();
  auto model = conv_model(p.c, 11);
  ASSERT_TRUE(model);
  const BuildReport r = check_engine(model, {p.precision, p.layouts});
  if (::testing::Test::HasFailure()) return;
  // The layer really ran on oneDNN at the requested precision, epilogues fused into it.
  const LayerReport* conv = testing::find_layer(r, "FusedConv");
  ASSERT_NE(conv, nullptr) << testing::describe_layers(r);
  EXPECT_EQ(conv->actual, p.precision);
  EXPECT_NE(conv->implementation.find("onednn"), std::string::npos) << conv->implementation;
  EXPECT_EQ(r.layers.size() - size_t(testing::count_op(r, "Reformat")), 1u)
      << "everything fuses into one convolution:\n"
      << testing::describe_layers(r);
}

std::vector<ConvParam> conv_params() {
  std::vector<ConvParam> v;
  for (const ConvCase& c : conv_cases())
    for (Precision p : {Precision::kFP32, Precision::kINT8})
      for (Layouts l : {Layouts::kBackend, Layouts::kPlain}) v.push_back({c, p, l});
  return v;
}

std::string param_name(const std::string& name, Precision p, Layouts l) {
  return name + "_" + std::string(precision_name(p)) + "_" + layouts_name(l);
}

INSTANTIATE_TEST_SUITE_P(Kernels, CpuConv, ::testing::ValuesIn(conv_params()),
                         [](const ::testing::TestParamInfo<ConvParam>& i) {
                           return param_name(i.param.c.name, i.param.precision, i.param.layouts);
                         });

// --- linear layers
// ---------------------------------------------------------------------------------

struct GemmCase {
  std::string name;
  int64_t k, n;
  std::string op;  // "Gemm", "MatMulAdd", "MatMul", "GemmRelu"
  int64_t trans_b = 1;
  float alpha = 1.0f, beta = 1.0f;
  Shape bias_shape;  // empty: no C
};

std::shared_ptr<const Model> gemm_model(const GemmCase& c, uint64_t seed) {
  OnnxBuilder b(13, "gemm_" + c.name);
  b.input("x", {"N", c.k});
  b.output("y", {"N", c.n});
  const float bound = 2.0f / std::sqrt(float(c.k));
  if (c.op == "MatMul" || c.op == "MatMulAdd") {
    b.initializer("fc.weight", random_tensor({c.k, c.n}, seed, -bound, bound));
    if (c.op == "MatMul") {
      b.node("MatMul", {"x", "fc.weight"}, {"y"}, "/fc/MatMul");
    } else {
      b.initializer("fc.bias", random_tensor(c.bias_shape, seed + 1, -0.2f, 0.2f));
      b.node("MatMul", {"x", "fc.weight"}, {"mm"}, "/fc/MatMul");
      b.node("Add", {"mm", "fc.bias"}, {"y"}, "/fc/Add");
    }
    return load_model(b, "gemm_" + c.name);
  }
  b.initializer("fc.weight",
                random_tensor(c.trans_b ? Shape{c.n, c.k} : Shape{c.k, c.n}, seed, -bound, bound));
  std::vector<std::string> ins = {"x", "fc.weight"};
  if (!c.bias_shape.empty()) {
    b.initializer("fc.bias", random_tensor(c.bias_shape, seed + 1, -0.2f, 0.2f));
    ins.push_back("fc.bias");
  }
  const std::string out = c.op == "GemmRelu" ? "g" : "y";
  b.node("Gemm", ins, {out}, "/fc/Gemm")
      .attr("transB", c.trans_b)
      .attr("alpha", c.alpha)
      .attr("beta", c.beta);
  if (c.op == "GemmRelu") b.node("Relu", {"g"}, {"y"}, "/relu/Relu");
  return load_model(b, "gemm_" + c.name);
}

std::vector<GemmCase> gemm_cases() {
  return {
      {"transB1_bias", 64, 10, "Gemm", 1, 1.0f, 1.0f, {10}},
      {"transB0_bias", 48, 24, "Gemm", 0, 1.0f, 1.0f, {24}},
      {"transB1_alpha_beta", 40, 16, "Gemm", 1, 0.5f, 2.0f, {16}},
      {"transB0_alpha_beta_row_bias", 33, 17, "Gemm", 0, 1.5f, -0.75f, {1, 17}},
      {"transB1_scalar_bias", 32, 12, "Gemm", 1, 1.0f, 0.5f, {1}},
      {"no_bias", 100, 20, "Gemm", 1, 1.0f, 1.0f, {}},
      {"relu", 64, 32, "GemmRelu", 1, 1.0f, 1.0f, {32}},
      {"matmul", 50, 30, "MatMul", 1, 1.0f, 1.0f, {}},
      {"matmul_add", 64, 10, "MatMulAdd", 1, 1.0f, 1.0f, {10}},
  };
}

struct GemmParam {
  GemmCase c;
  Precision precision;
  Layouts layouts;
};

void PrintTo(const GemmParam& p, std::ostream* os) {
  *os << p.c.name;
}

class CpuGemm : public ::testing::TestWithParam<GemmParam> {};

TEST_P(CpuGemm, MatchesReference) {
  const GemmParam& p = GetParam();
  auto model = gemm_model(p.c, 21);
  ASSERT_TRUE(model);
  const BuildReport r = check_engine(model, {p.precision, p.layouts});
  if (::testing::Test::HasFailure()) return;
  const LayerReport* fc = testing::find_layer(r, "FusedGemm");
  ASSERT_NE(fc, nullptr) << testing::describe_layers(r);
  EXPECT_EQ(fc->actual, p.precision);
  EXPECT_NE(fc->implementation.find("onednn"), std::string::npos) << fc->implementation;
  EXPECT_EQ(r.layers.size() - size_t(testing::count_op(r, "Reformat")), 1u)
      << testing::describe_layers(r);
}

std::vector<GemmParam> gemm_params() {
  std::vector<GemmParam> v;
  for (const GemmCase& c : gemm_cases())
    for (Precision p : {Precision::kFP32, Precision::kINT8})
      for (Layouts l : {Layouts::kBackend, Layouts::kPlain}) v.push_back({c, p, l});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Kernels, CpuGemm, ::testing::ValuesIn(gemm_params()),
                         [](const ::testing::TestParamInfo<GemmParam>& i) {
                           return param_name(i.param.c.name, i.param.precision, i.param.layouts);
                         });

// --- pooling -------------------------------------------------------------------------------------

struct PoolCase {
  std::string name;
  std::string op;  // MaxPool, AveragePool, GlobalAveragePool
  std::vector<int64_t> kernel, strides, pads;
  int64_t ceil_mode = 0;
  int64_t count_include_pad = 0;
  bool int8_kernel = true;  // oneDNN runs it in int8 (else the build falls back to fp32)
  int64_t size = 9;         // input height and width
};

constexpr int64_t kPoolChannels = 16;

std::shared_ptr<const Model> pool_model(const PoolCase& c) {
  OnnxBuilder b(13, "pool_" + c.name);
  const int64_t size = c.size;
  b.input("x", {"N", kPoolChannels, size, size});
  int64_t oh = 1;
  if (c.op != "GlobalAveragePool") {
    const int64_t span = size + c.pads[0] + c.pads[2] - c.kernel[0];
    oh = (c.ceil_mode ? (span + c.strides[0] - 1) / c.strides[0] : span / c.strides[0]) + 1;
    // ONNX: the last window must start inside the input or the left padding.
    if (c.ceil_mode && (oh - 1) * c.strides[0] >= size + c.pads[0]) --oh;
  }
  b.output("y", {"N", kPoolChannels, oh, oh});
  auto n = b.node(c.op, {"x"}, {"y"}, "/pool/" + c.op);
  if (c.op != "GlobalAveragePool") {
    n.attr("kernel_shape", c.kernel).attr("strides", c.strides).attr("pads", c.pads);
    n.attr("ceil_mode", c.ceil_mode);
    if (c.op == "AveragePool") n.attr("count_include_pad", c.count_include_pad);
  }
  return load_model(b, "pool_" + c.name);
}

std::vector<PoolCase> pool_cases() {
  return {
      {"max_k3_s2_pad1", "MaxPool", {3, 3}, {2, 2}, {1, 1, 1, 1}},
      {"max_k2_s2_ceil", "MaxPool", {2, 2}, {2, 2}, {0, 0, 0, 0}, 1},
      {"max_k3_s1_asymmetric_pads", "MaxPool", {3, 3}, {1, 1}, {0, 1, 2, 1}},
      {"avg_k3_s1_pad1_exclude_pad", "AveragePool", {3, 3}, {1, 1}, {1, 1, 1, 1}, 0, 0},
      {"avg_k3_s2_pad1_include_pad", "AveragePool", {3, 3}, {2, 2}, {1, 1, 1, 1}, 0, 1},
      {"avg_k2_s2_ceil_exclude_pad", "AveragePool", {2, 2}, {2, 2}, {0, 0, 0, 0}, 1, 0},
      // 10x10: ceil_mode adds a window beyond the right padding. oneDNN cannot count padding
      // there as ONNX does, so the reference kernel runs it (int8 requests fall back to fp32).
      {"avg_k3_s2_pad1_ceil_include_pad",
       "AveragePool",
       {3, 3},
       {2, 2},
       {1, 1, 1, 1},
       1,
       1,
       false,
       10},
      {"avg_k3_s2_pad1_ceil_include_pad_no_overhang",
       "AveragePool",
       {3, 3},
       {2, 2},
       {1, 1, 1, 1},
       1,
       1},
      {"max_k3_s2_pad1_ceil_overhang", "MaxPool", {3, 3}, {2, 2}, {1, 1, 1, 1}, 1, 0, true, 10},
      {"global_avg", "GlobalAveragePool", {}, {}, {}},
  };
}

struct PoolParam {
  PoolCase c;
  Precision precision;
  Layouts layouts;
};

void PrintTo(const PoolParam& p, std::ostream* os) {
  *os << p.c.name;
}

class CpuPool : public ::testing::TestWithParam<PoolParam> {};

TEST_P(CpuPool, MatchesReference) {
  const PoolParam& p = GetParam();
  auto model = pool_model(p.c);
  ASSERT_TRUE(model);
  // A lone pooling layer reads a graph input; int8 is asked for explicitly (followers of a graph
  // input otherwise stay fp32). Inputs are non-negative, as after a Relu: zero point 0.
  const bool int8 = p.precision == Precision::kINT8;
  const std::string plan = int8 ? R"({"layers": [{"match": "*", "precision": "int8"}]})" : "";
  const BuildReport r = check_engine(model, {p.precision, p.layouts, plan, 0.0f, 1.0f, true});
  if (::testing::Test::HasFailure()) return;
  const LayerReport* pool = testing::find_layer(r, p.c.op);
  ASSERT_NE(pool, nullptr) << testing::describe_layers(r);
  const Precision expected = int8 && p.c.int8_kernel ? Precision::kINT8 : Precision::kFP32;
  EXPECT_EQ(pool->actual, expected) << pool->fallback_reason;
  if (p.c.int8_kernel)
    EXPECT_NE(pool->implementation.find("onednn"), std::string::npos) << pool->implementation;
  if (int8 && !p.c.int8_kernel) EXPECT_EQ(r.fallbacks.size(), 1u);
}

std::vector<PoolParam> pool_params() {
  std::vector<PoolParam> v;
  for (const PoolCase& c : pool_cases())
    for (Precision p : {Precision::kFP32, Precision::kINT8})
      for (Layouts l : {Layouts::kBackend, Layouts::kPlain}) v.push_back({c, p, l});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Kernels, CpuPool, ::testing::ValuesIn(pool_params()),
                         [](const ::testing::TestParamInfo<PoolParam>& i) {
                           return param_name(i.param.c.name, i.param.precision, i.param.layouts);
                         });

// --- a residual block: the fused residual in int8 -> int8 form --------------------------------

// x -> conv1+relu -> r1 -> conv2 (+ r1) -> relu -> r2 -> conv3 (1x1) -> y. With int8 everywhere
// conv2 writes u8 for conv3 and sums r1 (u8, its own scale) into it: the sum post-op's scale and
// zero point, unlike the single-layer cases above whose fp32 output takes an fp32 residual.
std::shared_ptr<const Model> residual_block() {
  OnnxBuilder b(13, "residual_block");
  b.input("x", {"N", 16, 8, 8});
  b.output("y", {"N", 8, 8, 8});
  b.initializer("conv1.weight", random_tensor({16, 16, 3, 3}, 41, -0.15f, 0.15f));
  b.initializer("conv1.bias", random_tensor({16}, 42, -0.1f, 0.1f));
  b.initializer("conv2.weight", random_tensor({16, 16, 3, 3}, 43, -0.15f, 0.15f));
  b.initializer("conv2.bias", random_tensor({16}, 44, -0.1f, 0.1f));
  b.initializer("conv3.weight", random_tensor({8, 16, 1, 1}, 45, -0.4f, 0.4f));
  b.node("Conv", {"x", "conv1.weight", "conv1.bias"}, {"c1"}, "/conv1/Conv")
      .attr("kernel_shape", {3, 3})
      .attr("pads", {1, 1, 1, 1});
  b.node("Relu", {"c1"}, {"r1"}, "/relu1/Relu");
  b.node("Conv", {"r1", "conv2.weight", "conv2.bias"}, {"c2"}, "/conv2/Conv")
      .attr("kernel_shape", {3, 3})
      .attr("pads", {1, 1, 1, 1});
  b.node("Add", {"c2", "r1"}, {"s"}, "/Add");
  b.node("Relu", {"s"}, {"r2"}, "/relu2/Relu");
  b.node("Conv", {"r2", "conv3.weight"}, {"y"}, "/conv3/Conv").attr("kernel_shape", {1, 1});
  return load_model(b, "residual_block");
}

class CpuResidualBlock : public ::testing::TestWithParam<std::tuple<Precision, Layouts>> {};

TEST_P(CpuResidualBlock, MatchesReference) {
  const auto [precision, layouts] = GetParam();
  auto model = residual_block();
  ASSERT_TRUE(model);
  const BuildReport r = check_engine(model, {precision, layouts});
  if (::testing::Test::HasFailure()) return;
  const LayerReport* conv2 = testing::find_layer(r, "FusedConv", 1);
  ASSERT_NE(conv2, nullptr) << testing::describe_layers(r);
  EXPECT_EQ(conv2->fused, (std::vector<std::string>{"/Add", "/relu2/Relu"}));
  EXPECT_EQ(conv2->actual, precision);
  // int8: conv1 -> conv2 -> conv3 stay u8 (the quantize at the input is the only dtype change).
  if (precision == Precision::kINT8) {
    int quantizing = 0;
    for (const LayerReport& l : r.layers)
      quantizing += l.op == "Reformat" && l.actual == Precision::kINT8;
    EXPECT_EQ(quantizing, 1) << testing::describe_layers(r);
  }
}

INSTANTIATE_TEST_SUITE_P(Kernels, CpuResidualBlock,
                         ::testing::Combine(::testing::Values(Precision::kFP32, Precision::kINT8),
                                            ::testing::Values(Layouts::kBackend, Layouts::kPlain)),
                         [](const auto& i) {
                           return param_name("block", std::get<0>(i.param), std::get<1>(i.param));
                         });

// --- concat of two convolutions ------------------------------------------------------------------

std::shared_ptr<const Model> concat_model(int64_t ca, int64_t cb) {
  OnnxBuilder b(13, "concat");
  b.input("x", {"N", 8, 10, 10});
  b.output("y", {"N", ca + cb, 10, 10});
  b.initializer("a.weight", random_tensor({ca, 8, 3, 3}, 31, -0.25f, 0.25f));
  b.initializer("a.bias", random_tensor({ca}, 32, -0.2f, 0.2f));
  b.initializer("b.weight", random_tensor({cb, 8, 1, 1}, 33, -0.6f, 0.6f));
  b.initializer("b.bias", random_tensor({cb}, 34, -0.2f, 0.2f));
  b.node("Conv", {"x", "a.weight", "a.bias"}, {"ya"}, "/a/Conv")
      .attr("kernel_shape", {3, 3})
      .attr("pads", {1, 1, 1, 1});
  b.node("Conv", {"x", "b.weight", "b.bias"}, {"yb"}, "/b/Conv").attr("kernel_shape", {1, 1});
  b.node("Concat", {"ya", "yb"}, {"y"}, "/Concat").attr("axis", int64_t(1));
  return load_model(b, "concat");
}

struct ConcatParam {
  int64_t ca, cb;
  Precision precision;
  Layouts layouts;
};

void PrintTo(const ConcatParam& p, std::ostream* os) {
  *os << p.ca << "+" << p.cb;
}

class CpuConcat : public ::testing::TestWithParam<ConcatParam> {};

TEST_P(CpuConcat, TwoConvolutionsMatchReference) {
  const ConcatParam& p = GetParam();
  auto model = concat_model(p.ca, p.cb);
  ASSERT_TRUE(model);
  const BuildReport r = check_engine(model, {p.precision, p.layouts});
  if (::testing::Test::HasFailure()) return;
  const LayerReport* concat = testing::find_layer(r, "Concat");
  ASSERT_NE(concat, nullptr) << testing::describe_layers(r);
  EXPECT_EQ(concat->actual, p.precision) << "int8 stays int8 through Concat";
  EXPECT_NE(concat->implementation.find("onednn"), std::string::npos) << concat->implementation;
}

std::vector<ConcatParam> concat_params() {
  std::vector<ConcatParam> v;
  for (auto [a, b] : std::vector<std::pair<int64_t, int64_t>>{{16, 16}, {8, 12}, {5, 3}})
    for (Precision p : {Precision::kFP32, Precision::kINT8})
      for (Layouts l : {Layouts::kBackend, Layouts::kPlain}) v.push_back({a, b, p, l});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Kernels, CpuConcat, ::testing::ValuesIn(concat_params()),
                         [](const ::testing::TestParamInfo<ConcatParam>& i) {
                           return param_name(
                               std::to_string(i.param.ca) + "_" + std::to_string(i.param.cb),
                               i.param.precision, i.param.layouts);
                         });

}  // namespace
}  // namespace mixq
