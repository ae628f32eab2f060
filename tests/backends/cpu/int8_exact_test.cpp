// Exactness of the CPU backend's int8 arithmetic. An int8 convolution (or linear layer) whose
// input uses every u8 code 0..255 and whose weights quantise to the full +-qmax range writes f32
// (it is the last layer), so its output must equal
//     sx * sw[c] * sum((q_x - z_x) * q_w) + bias[c]
// computed here in exact integers from the engine's own quantisation parameters (read from the
// lowered graph). The integer accumulation is exact; only the final float scaling rounds, hence
// max |engine - exact| <= 1e-5 * max |exact| + 1e-6.
//
// tests/CMakeLists.txt runs these tests a second time with ONEDNN_MAX_CPU_ISA=AVX2 (and
// AVX512_CORE): oneDNN then uses vpmaddubsw, whose u8 x s8 pair sums saturate at 16 bits, and
// the engine must switch to 7-bit weights to stay exact. EightBitWeightsAreExactOnlyWithVnni
// lowers the same layer with a forced 8-bit policy: the saturation is real there (not with VNNI).
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>

#include "backends/backend.h"
#include "engine/engine_impl.h"
#include "engine/lower.h"
#include "quant/plan.h"
#include "runtime/interpreter.h"
#include "support/engine_util.h"
#include "support/onnx_builder.h"
#include "support/test_util.h"

namespace mixq {
namespace {

using testing::load_model;
using testing::OnnxBuilder;
using testing::random_tensor;

bool isa_limited_by_env() {
  const char* isa = std::getenv("ONEDNN_MAX_CPU_ISA");
  return isa && *isa;
}

backends::QuantPolicy cpu_policy() {
  auto backend = backends::make_backend("cpu");
  EXPECT_TRUE(backend.ok());
  return (*backend)->quant_policy();
}

std::string cpu_target() {
  return (*backends::make_backend("cpu"))->target();
}

// The lowering Builder::build runs for a plan whose ranges are all given (no calibration), with
// `policy` in place of the backend's own: the engine's quantisation parameters are readable on
// its graph.
Expected<Engine> lower_engine(const Model& model, const std::string& plan_json,
                              const backends::QuantPolicy& policy, int64_t max_batch) {
  auto graph = model.graph().clone();
  MIXQ_ASSIGN_OR_RETURN(quant::PrecisionPlan plan,
                        quant::parse_plan(plan_json, "test plan", *graph));
  MIXQ_ASSIGN_OR_RETURN(auto backend, backends::make_backend("cpu"));
  MIXQ_RETURN_IF_ERROR(engine::absorb_qdq(*graph, plan));
  MIXQ_RETURN_IF_ERROR(engine::fuse_layers(*graph, plan));
  (void)runtime::infer_shapes(*graph);
  MIXQ_ASSIGN_OR_RETURN(auto assignment,
                        engine::assign_precisions(*graph, plan, *backend, Precision::kFP32, false));
  (void)assignment;
  const engine::RangeNeeds needs = engine::values_needing_ranges(*graph, plan);
  if (!needs.values.empty())
    return FailedPrecondition("the test plan leaves values without ranges");
  MIXQ_RETURN_IF_ERROR(engine::quantize(*graph, plan, {}, policy));
  MIXQ_RETURN_IF_ERROR(backend->assign_layouts(*graph));
  MIXQ_RETURN_IF_ERROR(engine::insert_reformats(*graph, *backend));
  MIXQ_RETURN_IF_ERROR(ir::verify(*graph));
  auto impl = std::make_shared<Engine::Impl>();
  impl->graph = std::move(graph);
  impl->backend = std::move(backend);
  impl->max_batch = max_batch;
  impl->target = impl->backend->target();
  MIXQ_RETURN_IF_ERROR(impl->finalize());
  return Engine(std::move(impl));
}

const ir::Node* weighted_node(const Engine& e) {
  for (const ir::Node* n : e.impl().graph->nodes())
    if (n->op == ir::OpKind::kFusedConv || n->op == ir::OpKind::kFusedGemm) return n;
  return nullptr;
}

std::string implementation_of(const Engine& e) {
  const auto& impl = e.impl();
  for (size_t i = 0; i < impl.steps.size(); ++i)
    if (impl.steps[i]->op == ir::OpKind::kFusedConv || impl.steps[i]->op == ir::OpKind::kFusedGemm)
      return impl.kernels[i]->implementation();
  return "?";
}

struct ExactCase {
  std::string name;
  bool gemm = false;
  int64_t cin = 16, cout = 16, size = 8, k = 3, stride = 1, pad = 1, group = 1;
  int zero_point = 0;  // 0: input range [0, 2.55]; 128: [-1.27, 1.27]
};

void PrintTo(const ExactCase& c, std::ostream* os) {
  *os << c.name;
}

constexpr int64_t kBatch = 4;

std::shared_ptr<const Model> exact_model(const ExactCase& c) {
  OnnxBuilder b(13, "exact_" + c.name);
  const int64_t per = c.gemm ? c.cin : c.cin / c.group * c.k * c.k;
  // Weights: random per channel with different magnitudes; every channel holds +max and -max,
  // so its codes reach +-qmax; channel 0 is all large and positive, so inputs of 255 make the
  // largest pair sums u8 x s8 can produce.
  Tensor w = random_tensor(c.gemm ? Shape{c.cout, c.cin} : Shape{c.cout, c.cin / c.group, c.k, c.k},
                           5, -1.0f, 1.0f);
  float* p = w.data<float>();
  for (int64_t o = 0; o < c.cout; ++o) {
    const float m = 0.05f * float(o % 7 + 1);
    for (int64_t i = 0; i < per; ++i) p[o * per + i] *= m;
    if (o == 0)
      for (int64_t i = 0; i < per; ++i) p[i] = m * (0.9f + 0.1f * std::fabs(p[i] / m));
    p[o * per] = m;
    if (o != 0) p[o * per + per - 1] = -m;
  }
  b.initializer("layer.weight", w);
  b.initializer("layer.bias", random_tensor({c.cout}, 6, -0.5f, 0.5f));
  if (c.gemm) {
    b.input("x", {"N", c.cin});
    b.output("y", {"N", c.cout});
    b.node("Gemm", {"x", "layer.weight", "layer.bias"}, {"y"}, "/layer/Gemm")
        .attr("transB", int64_t(1));
  } else {
    const int64_t out = (c.size + 2 * c.pad - c.k) / c.stride + 1;
    b.input("x", {"N", c.cin, c.size, c.size});
    b.output("y", {"N", c.cout, out, out});
    b.node("Conv", {"x", "layer.weight", "layer.bias"}, {"y"}, "/layer/Conv")
        .attr("kernel_shape", {c.k, c.k})
        .attr("strides", {c.stride, c.stride})
        .attr("pads", {c.pad, c.pad, c.pad, c.pad})
        .attr("group", c.group);
  }
  return load_model(b, "exact_" + c.name);
}

std::string exact_plan(const ExactCase& c) {
  const std::string range = c.zero_point == 0 ? "[0, 2.55]" : "[-1.27, 1.27]";
  return R"({"layers": [{"match": "layer", "precision": "int8", "input_range": )" + range + "}]}";
}

// Input codes: sample 0 uniform over 0..255 (both ends forced), sample 1 all 255, the others
// alternate 255 and random codes. Returns the codes and the real values on the engine's grid.
std::pair<std::vector<int>, Tensor> input_codes(const Shape& shape, float sx, int zx) {
  Tensor x = Tensor::empty(DType::kFloat32, shape);
  std::vector<int> q(size_t(x.numel()));
  const int64_t per_sample = x.numel() / shape[0];
  std::mt19937 rng(77);
  std::uniform_int_distribution<int> code(0, 255);
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int64_t n = i / per_sample, j = i % per_sample;
    int v;
    do v = n == 1 ? 255 : (n >= 2 && j % 2 == 0) ? 255 : code(rng);
    while (zx != 0 && v == zx);  // no exact real zeros where the grid allows it
    if (n == 0 && j == 0) v = 0;
    if (n == 0 && j == 1) v = 255;
    q[size_t(i)] = v;
    x.data<float>()[i] = float(v - zx) * sx;
  }
  return {q, x};
}

// sx * sw[c] * sum((q_x - z_x) * q_w) + bias[c], from integers, in double.
Tensor exact_reference(const ExactCase& c, const std::vector<int>& qx, int zx, float sx,
                       const Tensor& qw, const std::vector<float>& sw, const Tensor& bias,
                       const Shape& out_shape) {
  Tensor y = Tensor::empty(DType::kFloat32, out_shape);
  const int8_t* w = qw.data<int8_t>();
  const float* b = bias.data<float>();
  auto finish = [&](int64_t o, int64_t acc) {
    return float(double(sx) * double(sw[size_t(o)]) * double(acc) + double(b[o]));
  };
  if (c.gemm) {
    for (int64_t n = 0; n < out_shape[0]; ++n)
      for (int64_t o = 0; o < c.cout; ++o) {
        int64_t acc = 0;
        for (int64_t i = 0; i < c.cin; ++i)
          acc += int64_t(qx[size_t(n * c.cin + i)] - zx) * w[o * c.cin + i];
        y.data<float>()[n * c.cout + o] = finish(o, acc);
      }
    return y;
  }
  const int64_t out = out_shape[2], cig = c.cin / c.group, cog = c.cout / c.group;
  for (int64_t n = 0; n < out_shape[0]; ++n)
    for (int64_t o = 0; o < c.cout; ++o)
      for (int64_t oy = 0; oy < out; ++oy)
        for (int64_t ox = 0; ox < out; ++ox) {
          int64_t acc = 0;
          const int64_t g = o / cog;
          for (int64_t ci = 0; ci < cig; ++ci)
            for (int64_t ky = 0; ky < c.k; ++ky)
              for (int64_t kx = 0; kx < c.k; ++kx) {
                const int64_t iy = oy * c.stride - c.pad + ky, ix = ox * c.stride - c.pad + kx;
                if (iy < 0 || iy >= c.size || ix < 0 || ix >= c.size) continue;  // padding: real 0
                const int64_t at = ((n * c.cin + g * cig + ci) * c.size + iy) * c.size + ix;
                acc += int64_t(qx[size_t(at)] - zx) * w[((o * cig + ci) * c.k + ky) * c.k + kx];
              }
          y.data<float>()[((n * c.cout + o) * out + oy) * out + ox] = finish(o, acc);
        }
  return y;
}

struct ExactResult {
  double max_error = 0, bound = 0;
  int qmax = 0;
  Tensor output;
};

// Lowers `c` with `policy`, checks the engine's parameters are what the policy and the plan's
// range give, and measures its output against the exact integer result.
ExactResult run_exact(const ExactCase& c, const backends::QuantPolicy& policy) {
  ExactResult res;
  auto model = exact_model(c);
  if (!model) return res;
  auto engine = lower_engine(*model, exact_plan(c), policy, kBatch);
  if (!engine.ok()) {
    ADD_FAILURE() << engine.status().to_string();
    return res;
  }
  const ir::Node* layer = weighted_node(*engine);
  if (!layer) {
    ADD_FAILURE() << "no weighted layer in the engine";
    return res;
  }
  EXPECT_EQ(layer->precision, Precision::kINT8);
  const ir::Value* xq = layer->input(0);
  const ir::Value* wq = layer->input(1);
  const ir::Value* bias = layer->input(2);
  if (!xq->quant || !wq->quant || wq->dtype != DType::kInt8 || !bias) {
    ADD_FAILURE() << "the int8 layer lacks quantised input or weights";
    return res;
  }
  // Input parameters: exactly what lower.cpp derives from the plan's range.
  const float sx = xq->quant->scale[0];
  const int zx = xq->quant->zero_point_at(0);
  EXPECT_EQ(xq->dtype, DType::kUInt8);
  EXPECT_EQ(zx, c.zero_point);
  EXPECT_EQ(sx, c.zero_point == 0 ? 2.55f / 255.0f : 1.27f / 127.0f);
  // Weights: per output channel, every channel reaching +qmax, most also -qmax.
  res.qmax = policy.weight_qmax;
  const Tensor& qw = wq->constant;
  const int64_t per = qw.numel() / c.cout;
  EXPECT_EQ(int64_t(wq->quant->scale.size()), c.cout);
  const Tensor& wf = model->graph().find_value("layer.weight")->constant;
  for (int64_t o = 0; o < c.cout; ++o) {
    int lo = 127, hi = -128;
    for (int64_t i = 0; i < per; ++i) {
      const int v = qw.data<int8_t>()[o * per + i];
      lo = std::min(lo, v);
      hi = std::max(hi, v);
      // The code is the nearest integer to w / sw (no double rounding, no clipping).
      const float expect =
          std::nearbyint(wf.data<float>()[o * per + i] / wq->quant->scale[size_t(o)]);
      if (float(v) != expect) {
        ADD_FAILURE() << "weight " << o << "," << i << ": code " << v << ", expected " << expect;
        return res;
      }
    }
    EXPECT_EQ(hi, policy.weight_qmax) << "channel " << o;
    if (o != 0) EXPECT_EQ(lo, -policy.weight_qmax) << "channel " << o;
  }
  // Inputs on the engine's grid, using every code.
  const Shape in_shape = c.gemm ? Shape{kBatch, c.cin} : Shape{kBatch, c.cin, c.size, c.size};
  auto [codes, x] = input_codes(in_shape, sx, zx);
  EXPECT_EQ(*std::min_element(codes.begin(), codes.end()), 0);
  EXPECT_EQ(*std::max_element(codes.begin(), codes.end()), 255);
  const TensorMap out = testing::infer_once(*engine, {{"x", x}});
  if (!out.count("y")) return res;
  res.output = out.at("y");
  const Tensor ref =
      exact_reference(c, codes, zx, sx, qw, wq->quant->scale, bias->constant, res.output.shape());
  double max_ref = 0;
  for (int64_t i = 0; i < ref.numel(); ++i)
    max_ref = std::max(max_ref, std::fabs(double(ref.data<float>()[i])));
  res.max_error = testing::max_abs_error(res.output, ref);
  res.bound = 1e-5 * max_ref + 1e-6;
  return res;
}

class Int8Exact : public ::testing::TestWithParam<ExactCase> {};

TEST_P(Int8Exact, MatchesIntegerReference) {
  const backends::QuantPolicy policy = cpu_policy();
  SCOPED_TRACE("target " + cpu_target() + ", " + policy.describe());
  const ExactResult r = run_exact(GetParam(), policy);
  if (HasFailure()) return;
  EXPECT_LE(r.max_error, r.bound);
}

// The public Builder makes the same engine: same parameters, bit-identical output.
TEST_P(Int8Exact, BuilderAgreesWithTheLoweringPasses) {
  const ExactCase& c = GetParam();
  const ExactResult r = run_exact(c, cpu_policy());
  if (HasFailure()) return;
  auto model = exact_model(c);
  auto engine =
      testing::build_engine(model, testing::cpu_options(Precision::kFP32, kBatch), exact_plan(c));
  ASSERT_TRUE(engine.ok()) << engine.status().to_string();
  const ir::Node* layer = weighted_node(*engine);
  ASSERT_NE(layer, nullptr);
  const float sx = layer->input(0)->quant->scale[0];
  auto [codes, x] =
      input_codes(c.gemm ? Shape{kBatch, c.cin} : Shape{kBatch, c.cin, c.size, c.size}, sx,
                  layer->input(0)->quant->zero_point_at(0));
  const TensorMap out = testing::infer_once(*engine, {{"x", x}});
  ASSERT_TRUE(out.count("y"));
  ASSERT_EQ(out.at("y").nbytes(), r.output.nbytes());
  EXPECT_EQ(std::memcmp(out.at("y").raw(), r.output.raw(), r.output.nbytes()), 0);
}

// Forcing 8-bit weights: exact with VNNI (32-bit dot products), wrong without (vpmaddubsw
// saturates u8 x s8 pair sums at 32767): why the engine uses 7-bit weights there.
TEST_P(Int8Exact, EightBitWeightsAreExactOnlyWithVnni) {
  const ExactCase& c = GetParam();
  backends::QuantPolicy forced = cpu_policy();
  const bool vnni = forced.weight_qmax == 127;
  forced.weight_qmax = 127;
  const ExactResult r = run_exact(c, forced);
  if (HasFailure()) return;
  SCOPED_TRACE("target " + cpu_target());
  if (vnni) {
    EXPECT_LE(r.max_error, r.bound);
  } else if (c.group == c.cin && c.group > 1) {
    // oneDNN's depthwise int8 kernels widen to 32 bits before multiplying (no vpmaddubsw pairs):
    // they happen to be exact with 8-bit weights too. Recorded, not required.
    RecordProperty("depthwise_8bit_max_error", std::to_string(r.max_error));
  } else {
    EXPECT_GT(r.max_error, 100 * r.bound)
        << "8-bit weights without VNNI should saturate on full-range data";
  }
}

std::vector<ExactCase> exact_cases() {
  std::vector<ExactCase> v;
  for (int z : {0, 128}) {
    const std::string zp = "_zp" + std::to_string(z);
    v.push_back({"conv3x3_pad1" + zp, false, 16, 16, 8, 3, 1, 1, 1, z});
    v.push_back({"conv3x3_3ch_stride2" + zp, false, 3, 8, 9, 3, 2, 1, 1, z});
    v.push_back({"conv1x1_64ch" + zp, false, 64, 8, 5, 1, 1, 0, 1, z});
    v.push_back({"conv5x5_pad2" + zp, false, 32, 16, 7, 5, 1, 2, 1, z});
    v.push_back({"depthwise3x3" + zp, false, 16, 16, 8, 3, 1, 1, 16, z});
    v.push_back({"grouped3x3" + zp, false, 32, 16, 6, 3, 1, 1, 4, z});
    v.push_back({"gemm" + zp, true, 256, 24, 0, 0, 0, 0, 1, z});
  }
  return v;
}

INSTANTIATE_TEST_SUITE_P(Cpu, Int8Exact, ::testing::ValuesIn(exact_cases()),
                         [](const ::testing::TestParamInfo<ExactCase>& i) { return i.param.name; });

// The engine says which weights it uses; with ONEDNN_MAX_CPU_ISA=AVX2 (the CTest run) they must
// be 7-bit.
TEST(Int8ExactIsa, ReportNamesTheWeightBitsOfThisCpu) {
  auto model = exact_model({"report"});
  ASSERT_TRUE(model);
  auto engine = testing::build_engine(model, testing::cpu_options(Precision::kFP32, 2),
                                      exact_plan({"report"}));
  ASSERT_TRUE(engine.ok()) << engine.status().to_string();
  const std::string isa = engine->report().isa;
  const int qmax = cpu_policy().weight_qmax;
  EXPECT_NE(isa.find(qmax == 127 ? "8-bit weights" : "7-bit weights"), std::string::npos) << isa;
  const char* limit = std::getenv("ONEDNN_MAX_CPU_ISA");
  if (limit && (std::string(limit) == "AVX2" || std::string(limit) == "AVX512_CORE")) {
    EXPECT_EQ(qmax, 63);
    EXPECT_NE(isa.find("7-bit"), std::string::npos) << isa;
    EXPECT_EQ(isa.find("vnni"), std::string::npos) << isa;
    EXPECT_NE(cpu_target().find("weight_bits=7"), std::string::npos) << cpu_target();
  }
  // The quantised weights of the built engine really stay within +-qmax.
  const ir::Node* layer = weighted_node(*engine);
  ASSERT_NE(layer, nullptr);
  for (int8_t v : layer->input(1)->constant.span<const int8_t>()) {
    ASSERT_LE(v, qmax);
    ASSERT_GE(v, -qmax);
  }
}

// Guards the CTest run: the environment variable must actually reach oneDNN.
TEST(Int8ExactIsa, EnvironmentLimitIsHonoured) {
  const char* limit = std::getenv("ONEDNN_MAX_CPU_ISA");
  if (!isa_limited_by_env())
    GTEST_SKIP() << "ONEDNN_MAX_CPU_ISA is not set (the CTest variant sets it)";
  const std::string target = cpu_target();
  std::string lower = limit;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char ch) { return char(std::tolower(ch)); });
  EXPECT_NE(target.find("isa=" + lower + ";"), std::string::npos) << target;
}

}  // namespace
}  // namespace mixq
