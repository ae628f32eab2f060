// Lowering through the public Builder on the CPU backend: precision requests the backend cannot
// run (fp16 on CPU) fail naming the layer or fall back when allowed, NNI configs keyed by module
// names, missing ranges, QAT ranges without calibration, Q/DQ models, Concat scale sharing and
// where Reformat nodes appear.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <sstream>

#include "backends/backend.h"
#include "engine/engine_impl.h"
#include "support/engine_util.h"
#include "support/onnx_builder.h"
#include "support/status_matchers.h"
#include "support/test_util.h"

namespace mixq {
namespace {

using testing::build_engine;
using testing::cpu_options;
using testing::infer_once;
using testing::load_model;
using testing::OnnxBuilder;
using testing::random_calibration;
using testing::random_model_inputs;
using testing::random_tensor;
using testing::status_is;

constexpr int64_t kMaxBatch = 4;

// x[N,3,10,10] -> conv1(8,3x3)+relu1 -> conv2(8,3x3)+relu2 -> conv3(6,1x1) -> y
std::shared_ptr<const Model> conv_chain() {
  OnnxBuilder b(13, "conv_chain");
  b.input("x", {"N", 3, 10, 10});
  b.output("y", {"N", 6, 10, 10});
  b.initializer("conv1.weight", random_tensor({8, 3, 3, 3}, 1, -0.4f, 0.4f));
  b.initializer("conv1.bias", random_tensor({8}, 2, -0.1f, 0.1f));
  b.initializer("conv2.weight", random_tensor({8, 8, 3, 3}, 3, -0.25f, 0.25f));
  b.initializer("conv2.bias", random_tensor({8}, 4, -0.1f, 0.1f));
  b.initializer("conv3.weight", random_tensor({6, 8, 1, 1}, 5, -0.5f, 0.5f));
  b.initializer("conv3.bias", random_tensor({6}, 6, -0.1f, 0.1f));
  b.node("Conv", {"x", "conv1.weight", "conv1.bias"}, {"c1"}, "/conv1/Conv")
      .attr("kernel_shape", {3, 3})
      .attr("pads", {1, 1, 1, 1});
  b.node("Relu", {"c1"}, {"r1"}, "/relu1/Relu");
  b.node("Conv", {"r1", "conv2.weight", "conv2.bias"}, {"c2"}, "/conv2/Conv")
      .attr("kernel_shape", {3, 3})
      .attr("pads", {1, 1, 1, 1});
  b.node("Relu", {"c2"}, {"r2"}, "/relu2/Relu");
  b.node("Conv", {"r2", "conv3.weight", "conv3.bias"}, {"y"}, "/conv3/Conv")
      .attr("kernel_shape", {1, 1});
  return load_model(b, "conv_chain");
}

std::map<std::string, const LayerReport*> weighted_by_module(const BuildReport& r) {
  std::map<std::string, const LayerReport*> m;
  for (const LayerReport& l : r.layers)
    if (l.op == "FusedConv" || l.op == "FusedGemm") m[l.module] = &l;
  return m;
}

void expect_close_to_reference(const Engine& engine, const Model& model, double min_sqnr_db,
                               double max_rel = -1) {
  for (int64_t batch : {int64_t(1), kMaxBatch}) {
    const TensorMap in = random_model_inputs(model, batch, 60 + uint64_t(batch));
    const TensorMap ref = testing::reference_outputs(model, in);
    const TensorMap got = infer_once(engine, in);
    for (const auto& [name, t] : ref) {
      ASSERT_TRUE(got.count(name)) << name;
      EXPECT_GE(testing::sqnr_db(got.at(name), t), min_sqnr_db) << name << " batch " << batch;
      if (max_rel >= 0) EXPECT_LE(testing::max_relative_error(got.at(name), t), max_rel) << name;
    }
  }
}

// --- requests the backend cannot run -------------------------------------------------------------

TEST(LowerPrecision, Fp16OnCpuFailsNamingTheLayer) {
  auto model = conv_chain();
  ASSERT_TRUE(model);
  const std::string plan = R"({"layers": [{"match": "conv2", "precision": "fp16"}]})";
  auto e = build_engine(model, cpu_options(), plan);
  EXPECT_TRUE(status_is(e, StatusCode::kUnsupported,
                        {"'/conv2/Conv'", "module 'conv2'", "fp16", "cpu", "allow fallback"}));
  // Only that layer is named.
  if (!e.ok()) {
    EXPECT_EQ(e.status().message().find("conv1"), std::string::npos) << e.status().message();
    EXPECT_EQ(e.status().message().find("conv3"), std::string::npos) << e.status().message();
  }
}

TEST(LowerPrecision, Fp16FallsBackToFp32WhenAllowed) {
  auto model = conv_chain();
  ASSERT_TRUE(model);
  const std::string plan = R"({"layers": [{"match": "conv2", "precision": "fp16"}]})";
  for (bool in_plan : {false, true}) {
    SCOPED_TRACE(in_plan ? "allow_fallback in the plan" : "allow_fallback in the options");
    BuildOptions o = cpu_options();
    o.allow_fallback = !in_plan;
    const std::string p =
        in_plan ? R"({"allow_fallback": true, "layers": [{"match": "conv2", "precision": "fp16"}]})"
                : plan;
    auto e = build_engine(model, o, p);
    ASSERT_TRUE(e.ok()) << e.status().to_string();
    const BuildReport& r = e->report();
    ASSERT_EQ(r.fallbacks.size(), 1u);
    EXPECT_NE(r.fallbacks[0].find("/conv2/Conv"), std::string::npos) << r.fallbacks[0];
    EXPECT_NE(r.fallbacks[0].find("fp16 -> fp32"), std::string::npos) << r.fallbacks[0];
    auto layers = weighted_by_module(r);
    ASSERT_TRUE(layers.count("conv2"));
    EXPECT_EQ(layers["conv2"]->requested, Precision::kFP16);
    EXPECT_EQ(layers["conv2"]->actual, Precision::kFP32);
    EXPECT_FALSE(layers["conv2"]->fallback_reason.empty());
    EXPECT_EQ(layers["conv1"]->actual, Precision::kFP32);
    EXPECT_TRUE(layers["conv1"]->fallback_reason.empty());
    expect_close_to_reference(*e, *model, 80.0, 1e-5);
  }
}

// --- NNI configs
// ------------------------------------------------------------------------------------

TEST(LowerNni, ModuleNamesGiveInt8ExactlyForThoseLayers) {
  auto model = conv_chain();
  ASSERT_TRUE(model);
  const std::string config = R"({"conv1": {"weight_bits": 8, "input_bits": 8, "output_bits": 8},
                                 "conv3": {"weight_bits": 8, "input_bits": 8}})";
  auto e = build_engine(model, cpu_options(Precision::kFP32, kMaxBatch), config,
                        random_calibration(*model, 3, 8, 17));
  ASSERT_TRUE(e.ok()) << e.status().to_string();
  const BuildReport& r = e->report();
  SCOPED_TRACE(testing::describe_layers(r));
  for (const LayerReport& l : r.layers) {
    if (l.op == "Reformat") continue;
    const bool named = l.module == "conv1" || l.module == "conv3";
    EXPECT_EQ(l.actual, named ? Precision::kINT8 : Precision::kFP32) << l.name;
    EXPECT_EQ(l.requested, l.actual) << l.name;
  }
  auto layers = weighted_by_module(r);
  EXPECT_EQ(layers.size(), 3u);
  EXPECT_EQ(layers["conv1"]->fused, std::vector<std::string>{"/relu1/Relu"});
  expect_close_to_reference(*e, *model, 30.0);
}

TEST(LowerNni, Int8WithoutRangesFailsNamingTheValues) {
  auto model = conv_chain();
  ASSERT_TRUE(model);
  // conv2 alone in int8: its input r1 needs a range (its output goes on in fp32).
  auto e = build_engine(model, cpu_options(), R"({"conv2": {"weight_bits": 8}})");
  EXPECT_TRUE(status_is(e, StatusCode::kFailedPrecondition, {"'r1'", "range", "calibration"}));
  if (!e.ok())
    EXPECT_EQ(e.status().message().find("'x'"), std::string::npos) << e.status().message();
  // Everything int8: the input and the values between the int8 layers.
  auto all = build_engine(model, cpu_options(Precision::kINT8));
  EXPECT_TRUE(
      status_is(all, StatusCode::kFailedPrecondition, {"'x'", "'r1'", "'r2'", "calibration"}));
}

// Ranges over a few batches of the reference run: what QAT's trackers would have seen.
std::map<std::string, std::pair<float, float>> tracked_ranges(const Model& model) {
  std::map<std::string, std::pair<float, float>> r;
  for (uint64_t seed = 0; seed < 4; ++seed) {
    const TensorMap inputs = random_model_inputs(model, 8, 300 + seed);
    auto values = model.run_reference(inputs, true);
    EXPECT_TRUE(values.ok());
    TensorMap all = *values;
    all.insert(inputs.begin(), inputs.end());
    for (const auto& [name, t] : all) {
      if (t.dtype() != DType::kFloat32) continue;
      auto [it, fresh] = r.try_emplace(name, INFINITY, -INFINITY);
      for (float v : t.span<const float>()) {
        it->second.first = std::min(it->second.first, v);
        it->second.second = std::max(it->second.second, v);
      }
    }
  }
  return r;
}

TEST(LowerNni, QatRangesBuildInt8WithoutCalibration) {
  auto model = conv_chain();
  ASSERT_TRUE(model);
  auto t = tracked_ranges(*model);
  std::ostringstream config;
  config.precision(9);
  auto entry = [&](const char* module, const char* in, const char* out) {
    config << "\"" << module << "\": {\"weight_bits\": 8, \"input_bits\": 8, \"output_bits\": 8, "
           << "\"tracked_min_input\": " << t[in].first
           << ", \"tracked_max_input\": " << t[in].second
           << ", \"tracked_min_output\": " << t[out].first
           << ", \"tracked_max_output\": " << t[out].second << "}";
  };
  config << "{";
  entry("conv1", "x", "r1");
  config << ", ";
  entry("conv2", "r1", "r2");
  config << ", ";
  entry("conv3", "r2", "y");
  config << "}";
  auto e = build_engine(model, cpu_options(Precision::kFP32, kMaxBatch), config.str());
  ASSERT_TRUE(e.ok()) << e.status().to_string() << "\n" << config.str();
  const BuildReport& r = e->report();
  EXPECT_EQ(r.calibration_seconds, 0);
  for (const auto& [module, l] : weighted_by_module(r))
    EXPECT_EQ(l->actual, Precision::kINT8) << module;
  // The engine's parameters come from the tracked ranges: r1 is non-negative, u8 with zero
  // point 0 and scale max/255.
  const ir::Value* r1 = nullptr;
  for (const ir::Value* v : e->impl().graph->values())
    if (v->name == "r1") r1 = v;
  ASSERT_NE(r1, nullptr);
  ASSERT_TRUE(r1->quant.has_value());
  EXPECT_EQ(r1->dtype, DType::kUInt8);
  EXPECT_EQ(r1->quant->zero_point_at(0), 0);
  EXPECT_NEAR(r1->quant->scale[0], t["r1"].second / 255.0f, 1e-6 * t["r1"].second);
  expect_close_to_reference(*e, *model, 30.0);
}

// --- Q/DQ models
// ----------------------------------------------------------------------------------

// x -> Q/DQ(sx, u8 zero point 128) -> Conv(DQ(int8 weights, per-channel scales), bias) -> Relu
// -> Q/DQ(sy, u8 zero point 0) -> Conv(DQ(...)) -> y (fp32), as ONNX Runtime's quantizer writes.
std::shared_ptr<const Model> qdq_model() {
  OnnxBuilder b(13, "qdq");
  b.input("x", {"N", 8, 10, 10});
  b.output("y", {"N", 4, 10, 10});
  b.initializer("x.scale", Tensor::scalar<float>(2.0f / 255.0f));
  b.initializer("x.zero_point", Tensor::scalar<uint8_t>(128));
  b.initializer("conv1.weight_q",
                testing::random_int_tensor(DType::kInt8, {8, 8, 3, 3}, 1, -127, 127));
  b.initializer("conv1.weight_scale", random_tensor({8}, 2, 0.001f, 0.004f));
  b.initializer("conv1.weight_zp", Tensor::zeros(DType::kInt8, {8}));
  b.initializer("conv1.bias", random_tensor({8}, 3, -0.1f, 0.1f));
  b.initializer("r1.scale", Tensor::scalar<float>(1.5f / 255.0f));
  b.initializer("r1.zero_point", Tensor::scalar<uint8_t>(0));
  b.initializer("conv2.weight_q",
                testing::random_int_tensor(DType::kInt8, {4, 8, 3, 3}, 4, -127, 127));
  b.initializer("conv2.weight_scale", random_tensor({4}, 5, 0.002f, 0.006f));
  b.initializer("conv2.weight_zp", Tensor::zeros(DType::kInt8, {4}));
  b.initializer("conv2.bias", random_tensor({4}, 6, -0.1f, 0.1f));
  b.node("QuantizeLinear", {"x", "x.scale", "x.zero_point"}, {"x_q"}, "/quant_x/QuantizeLinear");
  b.node("DequantizeLinear", {"x_q", "x.scale", "x.zero_point"}, {"x_dq"},
         "/quant_x/DequantizeLinear");
  b.node("DequantizeLinear", {"conv1.weight_q", "conv1.weight_scale", "conv1.weight_zp"}, {"w1"},
         "/conv1/weight/DequantizeLinear")
      .attr("axis", int64_t(0));
  b.node("Conv", {"x_dq", "w1", "conv1.bias"}, {"c1"}, "/conv1/Conv")
      .attr("kernel_shape", {3, 3})
      .attr("pads", {1, 1, 1, 1});
  b.node("Relu", {"c1"}, {"r1"}, "/relu1/Relu");
  b.node("QuantizeLinear", {"r1", "r1.scale", "r1.zero_point"}, {"r1_q"},
         "/quant_r1/QuantizeLinear");
  b.node("DequantizeLinear", {"r1_q", "r1.scale", "r1.zero_point"}, {"r1_dq"},
         "/quant_r1/DequantizeLinear");
  b.node("DequantizeLinear", {"conv2.weight_q", "conv2.weight_scale", "conv2.weight_zp"}, {"w2"},
         "/conv2/weight/DequantizeLinear")
      .attr("axis", int64_t(0));
  b.node("Conv", {"r1_dq", "w2", "conv2.bias"}, {"y"}, "/conv2/Conv")
      .attr("kernel_shape", {3, 3})
      .attr("pads", {1, 1, 1, 1});
  return load_model(b, "qdq");
}

TEST(LowerQdq, QdqModelBuildsInt8WithoutCalibration) {
  auto model = qdq_model();
  ASSERT_TRUE(model);
  auto e = build_engine(model, cpu_options(Precision::kFP32, kMaxBatch));
  ASSERT_TRUE(e.ok()) << e.status().to_string();
  const BuildReport& r = e->report();
  SCOPED_TRACE(testing::describe_layers(r));
  EXPECT_EQ(r.calibration_seconds, 0);
  auto layers = weighted_by_module(r);
  ASSERT_EQ(layers.size(), 2u);
  for (const auto& [module, l] : layers) {
    EXPECT_EQ(l->actual, Precision::kINT8) << module;
    EXPECT_EQ(l->requested, Precision::kINT8) << module;
  }
  EXPECT_EQ(testing::count_op(r, "QuantizeLinear") + testing::count_op(r, "DequantizeLinear"), 0);
  // The model's own grids: x keeps scale 2/255 (u8, zero point 128), r1 scale 1.5/255.
  std::map<std::string, const ir::Value*> values;
  for (const ir::Value* v : e->impl().graph->values()) values[v->name] = v;
  for (const ir::Node* n : e->impl().graph->nodes()) {
    if (n->op != ir::OpKind::kFusedConv) continue;
    const ir::Value* in = n->input(0);
    ASSERT_TRUE(in->quant.has_value()) << n->name;
    if (n->name == "/conv1/Conv") {
      EXPECT_EQ(in->quant->scale[0], 2.0f / 255.0f);
      EXPECT_EQ(in->quant->zero_point_at(0), 128);
    } else {
      EXPECT_EQ(in->quant->scale[0], 1.5f / 255.0f);
      EXPECT_EQ(in->quant->zero_point_at(0), 0);
    }
  }
  // With 8-bit weights (VNNI) the engine keeps the model's integer weights and scales exactly;
  // with 7-bit weights (no VNNI: ONEDNN_MAX_CPU_ISA=AVX2) it must requantise them (about one
  // bit, ~6 dB, is lost).
  const int qmax = (*backends::make_backend("cpu"))->quant_policy().weight_qmax;
  const Model& m = *model;
  for (const ir::Node* n : e->impl().graph->nodes()) {
    if (n->op != ir::OpKind::kFusedConv) continue;
    const std::string prefix = n->name == "/conv1/Conv" ? "conv1" : "conv2";
    const ir::Value* w = n->input(1);
    ASSERT_EQ(w->dtype, DType::kInt8) << n->name;
    ASSERT_TRUE(w->quant.has_value());
    const Tensor& model_codes = m.graph().find_value(prefix + ".weight_q")->constant;
    const Tensor& model_scales = m.graph().find_value(prefix + ".weight_scale")->constant;
    if (qmax == 127) {
      EXPECT_EQ(std::memcmp(w->constant.raw(), model_codes.raw(), model_codes.nbytes()), 0)
          << n->name;
      EXPECT_EQ(w->quant->scale, model_scales.to_float_vector()) << n->name;
    } else {
      for (int8_t v : w->constant.span<const int8_t>()) ASSERT_LE(std::abs(int(v)), qmax);
    }
  }
  // Matches the Q/DQ model's own (fake-quantised) output: with the model's grids kept, only
  // rounding ties between the two runs differ.
  expect_close_to_reference(*e, *model, qmax == 127 ? 40.0 : 30.0);
}

// --- Concat and reformats -----------------------------------------------------------------------

// x -> a: conv(8, 3x3)+relu (non-negative) ; b: conv(8, 1x1) (signed) -> Concat -> conv(4) -> y
std::shared_ptr<const Model> concat_branches() {
  OnnxBuilder b(13, "branches");
  b.input("x", {"N", 8, 8, 8});
  b.output("y", {"N", 4, 8, 8});
  b.initializer("a.weight", random_tensor({8, 8, 3, 3}, 11, -0.3f, 0.3f));
  b.initializer("a.bias", random_tensor({8}, 12, -0.1f, 0.1f));
  b.initializer("b.weight", random_tensor({8, 8, 1, 1}, 13, -0.2f, 0.2f));
  b.initializer("b.bias", random_tensor({8}, 14, -0.1f, 0.1f));
  b.initializer("c.weight", random_tensor({4, 16, 3, 3}, 15, -0.2f, 0.2f));
  b.initializer("c.bias", random_tensor({4}, 16, -0.1f, 0.1f));
  b.node("Conv", {"x", "a.weight", "a.bias"}, {"ca"}, "/a/Conv")
      .attr("kernel_shape", {3, 3})
      .attr("pads", {1, 1, 1, 1});
  b.node("Relu", {"ca"}, {"ra"}, "/a_relu/Relu");
  b.node("Conv", {"x", "b.weight", "b.bias"}, {"cb"}, "/b/Conv").attr("kernel_shape", {1, 1});
  b.node("Concat", {"ra", "cb"}, {"cat"}, "/Concat").attr("axis", int64_t(1));
  b.node("Conv", {"cat", "c.weight", "c.bias"}, {"y"}, "/c/Conv")
      .attr("kernel_shape", {3, 3})
      .attr("pads", {1, 1, 1, 1});
  return load_model(b, "branches");
}

TEST(LowerConcat, Int8BranchesShareOneScale) {
  auto model = concat_branches();
  ASSERT_TRUE(model);
  for (bool plain : {false, true}) {
    SCOPED_TRACE(plain ? "plain layouts" : "backend layouts");
    auto e = [&] {
      auto env = testing::cpu_layouts(plain);
      // minmax: uniform random data has no outliers to clip; entropy's clipping costs this
      // three-layer chain ~2 dB (29-32 dB), which is not what this test is about.
      BuildOptions o = cpu_options(Precision::kINT8, kMaxBatch);
      o.calibration.algorithm = CalibrationAlgorithm::kMinMax;
      return build_engine(model, o, "", random_calibration(*model, 3, 8, 5));
    }();
    ASSERT_TRUE(e.ok()) << e.status().to_string();
    SCOPED_TRACE(testing::describe_layers(e->report()));
    const ir::Node* concat = nullptr;
    for (const ir::Node* n : e->impl().graph->nodes())
      if (n->op == ir::OpKind::kConcat) concat = n;
    ASSERT_NE(concat, nullptr);
    EXPECT_EQ(concat->precision, Precision::kINT8);
    const ir::Value* out = concat->output(0);
    ASSERT_TRUE(out->quant.has_value());
    EXPECT_EQ(out->dtype, DType::kUInt8);
    for (const ir::Value* in : concat->inputs) {
      ASSERT_TRUE(in->quant.has_value()) << in->name;
      EXPECT_EQ(in->dtype, DType::kUInt8) << in->name;
      EXPECT_EQ(in->quant->scale, out->quant->scale) << in->name;
      EXPECT_EQ(in->quant->zero_point_at(0), out->quant->zero_point_at(0)) << in->name;
      // Each branch's convolution writes the shared grid itself: no requantising Reformat.
      ASSERT_NE(in->producer, nullptr);
      EXPECT_EQ(in->producer->op, ir::OpKind::kFusedConv) << in->name;
    }
    // One branch is signed: the shared grid is symmetric (u8 with zero point 128).
    EXPECT_EQ(out->quant->zero_point_at(0), 128);
    EXPECT_EQ(testing::count_op(e->report(), "Reformat"), plain ? 1 : 2);
    expect_close_to_reference(*e, *model, 30.0);
  }
}

struct ReformatCount {
  int quantize = 0, requantize = 0, dequantize = 0, layout = 0;
};

ReformatCount count_reformats(const Engine& e) {
  ReformatCount c;
  for (const ir::Node* n : e.impl().graph->nodes()) {
    if (n->op != ir::OpKind::kReformat) continue;
    const bool qin = n->input(0)->dtype != DType::kFloat32,
               qout = n->output(0)->dtype != DType::kFloat32;
    if (!qin && qout)
      ++c.quantize;
    else if (qin && qout)
      ++c.requantize;
    else if (qin && !qout)
      ++c.dequantize;
    else
      ++c.layout;
  }
  return c;
}

// Reformats appear only where precision (or, with backend layouts, layout) changes. The int8 ->
// fp32 boundary needs none: an int8 convolution writes fp32 itself (dequantisation fused into its
// output scales).
TEST(LowerReformats, OnlyWherePrecisionChanges) {
  auto model = conv_chain();
  ASSERT_TRUE(model);
  struct PlanCase {
    std::string name, plan;
    Precision default_precision;
    int quantize;  // fp32 -> int8 boundaries
  };
  const std::vector<PlanCase> cases = {
      {"all_int8", "", Precision::kINT8, 1},
      {"all_fp32", "", Precision::kFP32, 0},
      {"int8_fp32_int8",
       R"({"layers": [{"match": "conv1", "precision": "int8"}, {"match": "conv3", "precision": "int8"}]})",
       Precision::kFP32, 2},
      {"fp32_int8_int8",
       R"({"layers": [{"match": "conv2", "precision": "int8"}, {"match": "conv3", "precision": "int8"}]})",
       Precision::kFP32, 1},
  };
  for (const PlanCase& pc : cases) {
    for (bool plain : {true, false}) {
      SCOPED_TRACE(pc.name + (plain ? " plain layouts" : " backend layouts"));
      auto e = [&] {
        auto env = testing::cpu_layouts(plain);
        return build_engine(model, cpu_options(pc.default_precision, kMaxBatch), pc.plan,
                            random_calibration(*model, 2, 8, 8));
      }();
      ASSERT_TRUE(e.ok()) << e.status().to_string();
      const BuildReport& r = e->report();
      SCOPED_TRACE(testing::describe_layers(r));
      const ReformatCount c = count_reformats(*e);
      EXPECT_EQ(c.quantize, pc.quantize);
      EXPECT_EQ(c.requantize, 0);
      EXPECT_EQ(c.dequantize, 0);
      // The report agrees: a quantising Reformat runs int8, the others fp32.
      int int8_reformats = 0;
      for (const LayerReport& l : r.layers)
        int8_reformats += l.op == "Reformat" && l.actual == Precision::kINT8;
      EXPECT_EQ(int8_reformats, pc.quantize);
      if (plain) {
        EXPECT_EQ(c.layout, 0);
        EXPECT_EQ(testing::count_op(r, "Reformat"), pc.quantize);
      }
      if (pc.name == "all_int8") {
        // One quantize at the input, before conv1.
        const LayerReport& first = r.layers.front();
        EXPECT_EQ(first.op, "Reformat");
        EXPECT_EQ(first.actual, Precision::kINT8);
        // The output leaves conv3 as fp32 (NHWC with backend layouts: one layout reorder).
        EXPECT_EQ(c.layout, plain ? 0 : 1);
        EXPECT_EQ(r.layers.size(), size_t(plain ? 4 : 5));
      }
      expect_close_to_reference(
          *e, *model, pc.default_precision == Precision::kFP32 && pc.plan.empty() ? 80 : 30);
    }
  }
}

}  // namespace
}  // namespace mixq
