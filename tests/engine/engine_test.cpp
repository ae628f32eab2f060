// Engines on the CPU backend, end to end: the engine file (round trip, and truncated, corrupt,
// newer-version, foreign and wrong-ISA files refused with clear messages), batch handling (any
// batch up to the maximum gives batch-1 results; bad batches, dtypes and values refused),
// several contexts on one engine from several threads, profiling, capture and the build report.
//
// EngineFileIsa.* also run with ONEDNN_MAX_CPU_ISA=AVX2 (tests/CMakeLists.txt): there an engine
// built for a VNNI CPU (8-bit weights) must be refused.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <thread>

#include "backends/backend.h"
#include "engine/engine_impl.h"
#include "support/engine_file_util.h"
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
using testing::TempDir;

constexpr int64_t kMaxBatch = 8;

// x[N,3,12,12] -> conv1(8, 3x3) -> relu -> conv2(16, 3x3, stride 2) -> relu -> conv3(16, 1x1)
// -> GlobalAveragePool -> Flatten -> fc(10) -> + z[N,10] -> y[N,10].
std::shared_ptr<const Model> small_cnn() {
  OnnxBuilder b(13, "small_cnn");
  b.input("x", {"N", 3, 12, 12});
  b.input("z", {"N", 10});
  b.output("y", {"N", 10});
  b.initializer("conv1.weight", random_tensor({8, 3, 3, 3}, 1, -0.4f, 0.4f));
  b.initializer("conv1.bias", random_tensor({8}, 2, -0.1f, 0.1f));
  b.initializer("conv2.weight", random_tensor({16, 8, 3, 3}, 3, -0.2f, 0.2f));
  b.initializer("conv2.bias", random_tensor({16}, 4, -0.1f, 0.1f));
  b.initializer("conv3.weight", random_tensor({16, 16, 1, 1}, 5, -0.4f, 0.4f));
  b.initializer("fc.weight", random_tensor({10, 16}, 6, -0.5f, 0.5f));
  b.initializer("fc.bias", random_tensor({10}, 7, -0.1f, 0.1f));
  b.node("Conv", {"x", "conv1.weight", "conv1.bias"}, {"c1"}, "/conv1/Conv")
      .attr("kernel_shape", {3, 3})
      .attr("pads", {1, 1, 1, 1});
  b.node("Relu", {"c1"}, {"r1"}, "/relu1/Relu");
  b.node("Conv", {"r1", "conv2.weight", "conv2.bias"}, {"c2"}, "/conv2/Conv")
      .attr("kernel_shape", {3, 3})
      .attr("strides", {2, 2})
      .attr("pads", {1, 1, 1, 1});
  b.node("Relu", {"c2"}, {"r2"}, "/relu2/Relu");
  b.node("Conv", {"r2", "conv3.weight"}, {"c3"}, "/conv3/Conv").attr("kernel_shape", {1, 1});
  b.node("GlobalAveragePool", {"c3"}, {"p"}, "/pool/GlobalAveragePool");
  b.node("Flatten", {"p"}, {"f"}, "/Flatten").attr("axis", int64_t(1));
  b.node("Gemm", {"f", "fc.weight", "fc.bias"}, {"g"}, "/fc/Gemm").attr("transB", int64_t(1));
  b.node("Add", {"g", "z"}, {"y"}, "/Add");
  return load_model(b, "small_cnn");
}

const char* kMixedPlan = R"({"layers": [{"match": "conv1", "precision": "int8"},
                                        {"match": "conv2", "precision": "int8"}]})";

Engine fp32_engine(const std::shared_ptr<const Model>& model) {
  auto e = build_engine(model, cpu_options(Precision::kFP32, kMaxBatch));
  EXPECT_TRUE(e.ok()) << e.status().to_string();
  return std::move(e).value();
}

Engine int8_engine(const std::shared_ptr<const Model>& model) {
  auto e = build_engine(model, cpu_options(Precision::kINT8, kMaxBatch), "",
                        random_calibration(*model, 4, 8, 9));
  EXPECT_TRUE(e.ok()) << e.status().to_string();
  return std::move(e).value();
}

bool bit_equal(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

void expect_same_report(const BuildReport& a, const BuildReport& b) {
  ASSERT_EQ(a.layers.size(), b.layers.size());
  for (size_t i = 0; i < a.layers.size(); ++i) {
    const LayerReport &x = a.layers[i], &y = b.layers[i];
    EXPECT_EQ(x.name, y.name);
    EXPECT_EQ(x.op, y.op);
    EXPECT_EQ(x.module, y.module);
    EXPECT_EQ(x.output, y.output);
    EXPECT_EQ(x.fused, y.fused);
    EXPECT_EQ(x.requested, y.requested);
    EXPECT_EQ(x.actual, y.actual);
    EXPECT_EQ(x.fallback_reason, y.fallback_reason);
    EXPECT_EQ(x.implementation, y.implementation);
    EXPECT_EQ(x.params, y.params);
    EXPECT_EQ(x.macs, y.macs);
    EXPECT_EQ(x.build_seconds, y.build_seconds);
  }
  EXPECT_EQ(a.fallbacks, b.fallbacks);
  EXPECT_EQ(a.plan_notes, b.plan_notes);
  EXPECT_EQ(a.backend, b.backend);
  EXPECT_EQ(a.isa, b.isa);
  EXPECT_EQ(a.max_batch, b.max_batch);
  EXPECT_EQ(a.peak_memory_bytes, b.peak_memory_bytes);
  EXPECT_EQ(a.weight_bytes, b.weight_bytes);
  EXPECT_EQ(a.average_bits_by_params, b.average_bits_by_params);
  EXPECT_EQ(a.average_bits_by_macs, b.average_bits_by_macs);
  EXPECT_EQ(a.calibration_seconds, b.calibration_seconds);
  EXPECT_EQ(a.build_seconds, b.build_seconds);
  EXPECT_EQ(a.calibration_from_cache, b.calibration_from_cache);
  EXPECT_EQ(a.phase_seconds, b.phase_seconds);
}

// --- the engine file
// ------------------------------------------------------------------------------

using testing::kEngineHeader;
using testing::rewrite_metadata;

class EngineFile : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = small_cnn();
    ASSERT_TRUE(model_);
  }
  std::shared_ptr<const Model> model_;
  TempDir dir_;
};

TEST_F(EngineFile, RoundTripGivesIdenticalOutputsAndReport) {
  const auto mixed = build_engine(model_, cpu_options(Precision::kFP32, kMaxBatch), kMixedPlan,
                                  random_calibration(*model_, 2, 8, 3));
  ASSERT_TRUE(mixed.ok()) << mixed.status().to_string();
  // An NNI config as NNI 2.x exports it, integer grid included: its note survives the file.
  const auto nni = build_engine(model_, cpu_options(Precision::kFP32, kMaxBatch),
                                R"({"conv1": {"weight_bits": 8, "input_bits": 8,
                                              "tracked_min_input": -3, "tracked_max_input": 3,
                                              "tracked_qmin_input": 0, "tracked_qmax_input": 127}})",
                                random_calibration(*model_, 2, 8, 3));
  ASSERT_TRUE(nni.ok()) << nni.status().to_string();
  ASSERT_EQ(nni->report().plan_notes.size(), 1u);
  EXPECT_NE(nni->report().plan_notes[0].find("tracked_qmin_input"), std::string::npos);
  const std::vector<std::pair<std::string, Engine>> engines = {{"fp32", fp32_engine(model_)},
                                                               {"int8", int8_engine(model_)},
                                                               {"mixed", *mixed},
                                                               {"nni", *nni}};
  for (const auto& [name, engine] : engines) {
    SCOPED_TRACE(name);
    const std::string path = dir_.file(name + ".mixq");
    ASSERT_TRUE(engine.save(path).ok());
    auto loaded = Engine::load(path);
    ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
    expect_same_report(engine.report(), loaded->report());
    // The load times each layer's rebuilding (a built engine has none).
    double load_seconds = 0;
    for (size_t i = 0; i < loaded->report().layers.size(); ++i) {
      EXPECT_EQ(engine.report().layers[i].load_seconds, 0.0);
      EXPECT_GE(loaded->report().layers[i].load_seconds, 0.0);
      load_seconds += loaded->report().layers[i].load_seconds;
    }
    EXPECT_GT(load_seconds, 0.0);
    EXPECT_EQ(loaded->max_batch(), kMaxBatch);
    ASSERT_EQ(loaded->inputs().size(), engine.inputs().size());
    for (int64_t batch : {int64_t(1), int64_t(5), kMaxBatch}) {
      const TensorMap in = random_model_inputs(*model_, batch, 40 + uint64_t(batch));
      const TensorMap a = infer_once(engine, in), b = infer_once(*loaded, in);
      ASSERT_TRUE(a.count("y") && b.count("y"));
      EXPECT_TRUE(bit_equal(a.at("y"), b.at("y"))) << "batch " << batch;
    }
    // Loading and saving again writes the same bytes.
    auto again = loaded->serialize();
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, testing::read_file(path));
  }
}

TEST_F(EngineFile, TruncatedFileIsRefused) {
  auto bytes = fp32_engine(model_).serialize();
  ASSERT_TRUE(bytes.ok());
  const size_t n = bytes->size();
  for (size_t cut : {size_t(4), size_t(8), size_t(20), size_t(31), size_t(32), size_t(40), n / 2,
                     n - 64, n - 1}) {
    SCOPED_TRACE("cut at " + std::to_string(cut) + " of " + std::to_string(n));
    const std::string path = dir_.file("cut.mixq");
    testing::write_file(path, bytes->substr(0, cut));
    auto e = Engine::load(path);
    EXPECT_TRUE(status_is(e, StatusCode::kDataLoss, {"cut.mixq", "truncated"}));
  }
  testing::write_file(dir_.file("empty.mixq"), "");
  EXPECT_TRUE(
      status_is(Engine::load(dir_.file("empty.mixq")), StatusCode::kDataLoss, {"empty.mixq"}));
  EXPECT_TRUE(
      status_is(Engine::load(dir_.file("missing.mixq")), StatusCode::kNotFound, {"missing.mixq"}));
}

TEST_F(EngineFile, FlippedByteFailsTheChecksum) {
  auto bytes = int8_engine(model_).serialize();
  ASSERT_TRUE(bytes.ok());
  uint64_t len;
  std::memcpy(&len, bytes->data() + kEngineHeader, 8);
  // In the metadata, in the packed weights (the last bytes), and in the stored checksum itself.
  for (size_t at : {kEngineHeader + 8 + 10, kEngineHeader + 8 + size_t(len) / 2, bytes->size() - 3,
                    size_t(24)}) {
    SCOPED_TRACE("byte " + std::to_string(at));
    std::string bad = *bytes;
    bad[at] = char(bad[at] ^ 0x10);
    EXPECT_TRUE(status_is(Engine::from_bytes(bad, "'bad.mixq'"), StatusCode::kDataLoss,
                          {"'bad.mixq'", "checksum"}));
  }
}

TEST_F(EngineFile, NewerFormatVersionIsRefused) {
  auto bytes = fp32_engine(model_).serialize();
  ASSERT_TRUE(bytes.ok());
  uint32_t version;
  std::memcpy(&version, bytes->data() + 8, 4);
  EXPECT_EQ(version, 1u);
  std::string newer = *bytes;
  const uint32_t next = version + 1;
  std::memcpy(newer.data() + 8, &next, 4);
  EXPECT_TRUE(status_is(Engine::from_bytes(newer, "'new.mixq'"), StatusCode::kUnsupported,
                        {"'new.mixq'", "version 2", "newer", "rebuild"}));
}

TEST_F(EngineFile, WrongMagicIsRefused) {
  auto bytes = fp32_engine(model_).serialize();
  ASSERT_TRUE(bytes.ok());
  std::string bad = *bytes;
  bad[0] = 'X';
  EXPECT_TRUE(status_is(Engine::from_bytes(bad, "'x.mixq'"), StatusCode::kParseError,
                        {"'x.mixq'", "not a mixq engine file", "magic"}));
  // An ONNX model handed to the engine loader.
  const std::string onnx = testing::small_classifier().bytes();
  EXPECT_TRUE(status_is(Engine::from_bytes(onnx, "'model.onnx'"), StatusCode::kParseError,
                        {"'model.onnx'", "not a mixq engine file", "mixq build"}));
}

TEST_F(EngineFile, ForeignBackendIsRefused) {
  auto bytes = fp32_engine(model_).serialize();
  ASSERT_TRUE(bytes.ok());
  const std::string other =
      rewrite_metadata(*bytes, [](nlohmann::json& m) { m["backend"] = "tpu"; });
  EXPECT_TRUE(status_is(Engine::from_bytes(other, "'tpu.mixq'"), StatusCode::kUnsupported,
                        {"'tpu.mixq'", "'tpu'"}));
  // The rewrite itself keeps a file valid.
  const std::string same = rewrite_metadata(*bytes, [](nlohmann::json&) {});
  EXPECT_TRUE(Engine::from_bytes(same, "same").ok());
}

// Files of format version 1 written before the build report had plan notes still load.
TEST_F(EngineFile, FileWithoutPlanNotesLoads) {
  auto bytes = fp32_engine(model_).serialize();
  ASSERT_TRUE(bytes.ok());
  const std::string older =
      rewrite_metadata(*bytes, [](nlohmann::json& m) { m["report"].erase("plan_notes"); });
  auto loaded = Engine::from_bytes(older, "'older.mixq'");
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  EXPECT_TRUE(loaded->report().plan_notes.empty());
  // Nor build phases and layer build times (recorded since): unknown.
  const std::string untimed = rewrite_metadata(*bytes, [](nlohmann::json& m) {
    m["report"].erase("phase_seconds");
    for (auto& l : m["report"]["layers"]) l.erase("build_seconds");
  });
  auto untimed_engine = Engine::from_bytes(untimed, "'untimed.mixq'");
  ASSERT_TRUE(untimed_engine.ok()) << untimed_engine.status().to_string();
  EXPECT_TRUE(untimed_engine->report().phase_seconds.empty());
  for (const LayerReport& l : untimed_engine->report().layers) EXPECT_EQ(l.build_seconds, 0.0);
  // A plan_notes of the wrong type is still corrupt.
  const std::string bad =
      rewrite_metadata(*bytes, [](nlohmann::json& m) { m["report"]["plan_notes"] = 7; });
  EXPECT_TRUE(status_is(Engine::from_bytes(bad, "'bad.mixq'"), StatusCode::kDataLoss,
                        {"'bad.mixq'", "build report"}));
}

std::string this_cpu_target() {
  return (*backends::make_backend("cpu"))->target();
}

// An engine recorded for a VNNI CPU (8-bit weights) runs only where u8 x s8 sums do not
// saturate: refused with ONEDNN_MAX_CPU_ISA=AVX2, accepted on this machine's VNNI.
TEST(EngineFileIsa, VnniEngineNeedsVnni) {
  auto model = small_cnn();
  ASSERT_TRUE(model);
  auto bytes = int8_engine(model).serialize();
  ASSERT_TRUE(bytes.ok());
  const std::string vnni_target = "cpu;isa=avx512_core_vnni;weight_bits=8";
  const std::string vnni =
      rewrite_metadata(*bytes, [&](nlohmann::json& m) { m["target"] = vnni_target; });
  auto e = Engine::from_bytes(vnni, "'vnni.mixq'");
  const std::string here = this_cpu_target();
  if (here.find("weight_bits=8") != std::string::npos) {
    EXPECT_TRUE(e.ok()) << e.status().to_string();
  } else {
    EXPECT_TRUE(status_is(e, StatusCode::kFailedPrecondition,
                          {"'vnni.mixq'", "VNNI", "weight_bits=8", "saturate", "rebuild"}))
        << "this CPU: " << here;
  }
  // 7-bit engines (built without VNNI) run everywhere.
  const std::string avx2 = rewrite_metadata(
      *bytes, [](nlohmann::json& m) { m["target"] = "cpu;isa=avx2;weight_bits=7"; });
  EXPECT_TRUE(Engine::from_bytes(avx2, "'avx2.mixq'").ok());
  // Not a CPU engine at all.
  const std::string gpu =
      rewrite_metadata(*bytes, [](nlohmann::json& m) { m["target"] = "cuda;sm=90"; });
  EXPECT_TRUE(status_is(Engine::from_bytes(gpu, "'gpu.mixq'"), StatusCode::kFailedPrecondition,
                        {"'gpu.mixq'"}));
}

TEST(EngineFileIsa, Avx2LimitRefusesVnniEngines) {
  const char* limit = std::getenv("ONEDNN_MAX_CPU_ISA");
  if (!limit || std::string(limit) != "AVX2")
    GTEST_SKIP() << "runs under ONEDNN_MAX_CPU_ISA=AVX2 (CTest)";
  EXPECT_NE(this_cpu_target().find("isa=avx2;weight_bits=7"), std::string::npos)
      << this_cpu_target();
  auto model = small_cnn();
  ASSERT_TRUE(model);
  // This process builds 7-bit engines, which run and load fine here.
  Engine e = int8_engine(model);
  EXPECT_NE(e.report().isa.find("7-bit"), std::string::npos) << e.report().isa;
  auto bytes = e.serialize();
  ASSERT_TRUE(bytes.ok());
  EXPECT_TRUE(Engine::from_bytes(*bytes, "'own.mixq'").ok());
}

// --- batches and input checks
// ---------------------------------------------------------------------

TensorMap sample(const TensorMap& batch, int64_t i) {
  TensorMap m;
  for (const auto& [name, t] : batch) m[name] = t.slice_rows(i, i + 1).clone();
  return m;
}

void check_batches_match_batch_one(const Engine& engine, const std::shared_ptr<const Model>& model,
                                   bool exact) {
  auto ctx = engine.create_context();
  ASSERT_TRUE(ctx.ok());
  for (int64_t batch = 1; batch <= kMaxBatch; ++batch) {
    const TensorMap in = random_model_inputs(*model, batch, 500 + uint64_t(batch));
    auto r = ctx->infer(in);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    const Tensor& y = r->outputs.at("y");
    ASSERT_EQ(y.shape(), (Shape{batch, 10}));
    for (int64_t i = 0; i < batch; ++i) {
      auto one = ctx->infer(sample(in, i));
      ASSERT_TRUE(one.ok()) << one.status().to_string();
      const Tensor row = y.slice_rows(i, i + 1);
      const Tensor& ref = one->outputs.at("y");
      if (exact) {
        EXPECT_TRUE(bit_equal(row.clone(), ref)) << "batch " << batch << " sample " << i;
      } else {
        EXPECT_LE(testing::max_relative_error(row, ref), 1e-6)
            << "batch " << batch << " sample " << i;
      }
    }
  }
}

// int8: integer accumulation, the same result whichever kernel oneDNN picks for the batch.
TEST(EngineBatch, Int8AnyBatchGivesBatchOneResults) {
  auto model = small_cnn();
  ASSERT_TRUE(model);
  check_batches_match_batch_one(int8_engine(model), model, true);
}

// fp32: oneDNN may pick another kernel (blocking, summation order) for another batch size, so
// rows agree to rounding, not bit for bit.
TEST(EngineBatch, Fp32AnyBatchGivesBatchOneResults) {
  auto model = small_cnn();
  ASSERT_TRUE(model);
  check_batches_match_batch_one(fp32_engine(model), model, false);
}

TEST(EngineBatch, BadBatchesAndInputsAreRefused) {
  auto model = small_cnn();
  ASSERT_TRUE(model);
  Engine engine = fp32_engine(model);
  auto ctx = engine.create_context();
  ASSERT_TRUE(ctx.ok());
  auto inputs = [&](int64_t bx, int64_t bz) {
    return TensorMap{{"x", random_tensor({bx, 3, 12, 12}, 1)}, {"z", random_tensor({bz, 10}, 2)}};
  };
  EXPECT_TRUE(ctx->infer(inputs(2, 2)).ok());
  EXPECT_TRUE(status_is(ctx->infer({{"x", Tensor::empty(DType::kFloat32, {0, 3, 12, 12})},
                                    {"z", Tensor::empty(DType::kFloat32, {0, 10})}}),
                        StatusCode::kInvalidArgument, {"batch size 0", "1..8"}));
  EXPECT_TRUE(
      status_is(ctx->infer(inputs(9, 9)), StatusCode::kInvalidArgument, {"batch size 9", "1..8"}));
  EXPECT_TRUE(
      status_is(ctx->infer(inputs(2, 3)), StatusCode::kInvalidArgument, {"disagree", "batch"}));
  // Wrong dtype, wrong shape, missing and unknown inputs.
  TensorMap in = inputs(2, 2);
  in["x"] = random_tensor({2, 3, 12, 12}, 1).to(DType::kInt32);
  EXPECT_TRUE(
      status_is(ctx->infer(in), StatusCode::kInvalidArgument, {"'x'", "dtype", "i32", "f32"}));
  in = inputs(2, 2);
  in["x"] = random_tensor({2, 3, 12, 13}, 1);
  EXPECT_TRUE(
      status_is(ctx->infer(in), StatusCode::kInvalidArgument, {"'x'", "shape", "[2,3,12,13]"}));
  in = inputs(2, 2);
  in.erase("z");
  EXPECT_TRUE(status_is(ctx->infer(in), StatusCode::kInvalidArgument, {"'z'", "not given"}));
  in = inputs(2, 2);
  in["w"] = random_tensor({2, 10}, 3);
  EXPECT_TRUE(status_is(ctx->infer(in), StatusCode::kNotFound, {"'w'", "'x'", "'z'"}));
  // NaN and infinities.
  in = inputs(2, 2);
  in["x"].data<float>()[17] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(status_is(ctx->infer(in), StatusCode::kInvalidArgument, {"'x'", "NaN", "17"}));
  in = inputs(2, 2);
  in["z"].data<float>()[3] = -std::numeric_limits<float>::infinity();
  EXPECT_TRUE(status_is(ctx->infer(in), StatusCode::kInvalidArgument, {"'z'", "infinite"}));
  // The context still works afterwards.
  EXPECT_TRUE(ctx->infer(inputs(1, 1)).ok());
}

TEST(EngineOutputs, GivenOutputBuffersAreWrittenInPlace) {
  auto model = small_cnn();
  ASSERT_TRUE(model);
  for (Engine engine : {fp32_engine(model), int8_engine(model)}) {
    auto ctx = engine.create_context();
    ASSERT_TRUE(ctx.ok());
    const TensorMap in{{"x", random_tensor({3, 3, 12, 12}, 1)}, {"z", random_tensor({3, 10}, 2)}};
    auto plain = ctx->infer(in);
    ASSERT_TRUE(plain.ok()) << plain.status().to_string();
    InferOptions options;
    Tensor y = Tensor::zeros(DType::kFloat32, {3, 10});
    options.outputs["y"] = y;
    auto given = ctx->infer(in, options);
    ASSERT_TRUE(given.ok()) << given.status().to_string();
    EXPECT_EQ(given->outputs.at("y").raw(), y.raw());
    EXPECT_TRUE(bit_equal(y, plain->outputs.at("y")));
  }
}

TEST(EngineOutputs, WrongOutputBuffersAreRefused) {
  auto model = small_cnn();
  ASSERT_TRUE(model);
  Engine engine = fp32_engine(model);
  auto ctx = engine.create_context();
  ASSERT_TRUE(ctx.ok());
  const TensorMap in{{"x", random_tensor({2, 3, 12, 12}, 1)}, {"z", random_tensor({2, 10}, 2)}};
  InferOptions options;
  options.outputs["y"] = Tensor::zeros(DType::kFloat32, {3, 10});
  EXPECT_TRUE(status_is(ctx->infer(in, options), StatusCode::kInvalidArgument,
                        {"output 'y'", "[3,10]", "batch 2", "[2,10]"}));
  options.outputs["y"] = Tensor::zeros(DType::kFloat16, {2, 10});
  EXPECT_TRUE(status_is(ctx->infer(in, options), StatusCode::kInvalidArgument,
                        {"output 'y'", "f16", "f32"}));
  options.outputs.clear();
  options.outputs["c3"] = Tensor::zeros(DType::kFloat32, {2, 10});
  EXPECT_TRUE(
      status_is(ctx->infer(in, options), StatusCode::kNotFound, {"'c3'", "outputs are", "'y'"}));
  EXPECT_TRUE(ctx->infer(in).ok());
}

// Flatten only reinterprets bytes: its output shares the pooled value's buffer and the step does
// not run (nor does a layout change of the 1x1 pooled image); the values read back agree.
TEST(EngineViews, FlattenSharesItsInputBufferAndDoesNotRun) {
  auto model = small_cnn();
  ASSERT_TRUE(model);
  for (Engine engine : {fp32_engine(model), int8_engine(model)}) {
    const Engine::Impl& impl = engine.impl();
    for (int64_t batch : {int64_t(1), kMaxBatch}) {
      auto plan = impl.plan_for(batch);
      ASSERT_TRUE(plan.ok()) << plan.status().to_string();
      int flattens = 0;
      for (size_t s = 0; s < impl.steps.size(); ++s) {
        const ir::Node& n = *impl.steps[s];
        if (!(*plan)->is_view[s]) continue;
        // The Flatten, and a layout change of the pooled 1x1 image where one remains.
        flattens += n.op == ir::OpKind::kFlatten;
        if (n.op != ir::OpKind::kFlatten) {
          EXPECT_EQ(n.op, ir::OpKind::kReformat) << n.describe();
          EXPECT_EQ((*plan)->shapes[size_t(impl.value_index.at(n.input(0)))],
                    (Shape{batch, 16, 1, 1}));
        }
        const size_t in = size_t(impl.value_index.at(n.input(0)));
        const size_t out = size_t(impl.value_index.at(n.output(0)));
        EXPECT_EQ((*plan)->offsets[out], (*plan)->offsets[in]);
        EXPECT_GE((*plan)->offsets[out], 0);
      }
      EXPECT_EQ(flattens, 1) << "batch " << batch;
    }
    const TensorMap in{{"x", random_tensor({3, 3, 12, 12}, 1)}, {"z", random_tensor({3, 10}, 2)}};
    auto ctx = engine.create_context();
    ASSERT_TRUE(ctx.ok());
    ctx->capture({"f", "p"});
    auto r = ctx->infer(in);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    const Tensor& f = r->captured.at("f");
    const Tensor& p = r->captured.at("p");
    ASSERT_EQ(f.numel(), p.numel());
    EXPECT_EQ(std::memcmp(f.raw(), p.raw(), f.nbytes()), 0);
  }
}

// --- concurrency ---------------------------------------------------------------------------------

void check_threads(const Engine& engine, const TensorMap& in) {
  const Tensor expected = infer_once(engine, in).at("y");
  constexpr int kThreads = 4, kRuns = 20;
  std::atomic<int> mismatches{0}, failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&] {
      auto ctx = engine.create_context();
      if (!ctx.ok()) {
        ++failures;
        return;
      }
      for (int i = 0; i < kRuns; ++i) {
        auto r = ctx->infer(in);
        if (!r.ok())
          ++failures;
        else if (!bit_equal(r->outputs.at("y"), expected))
          ++mismatches;
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(EngineThreads, ContextsOnOneEngineGiveIdenticalResults) {
  auto model = small_cnn();
  ASSERT_TRUE(model);
  const TensorMap in = random_model_inputs(*model, 3, 77);
  {
    SCOPED_TRACE("fp32");
    check_threads(fp32_engine(model), in);
  }
  {
    SCOPED_TRACE("int8");
    check_threads(int8_engine(model), in);
  }
}

// Batch plans are made on first use by whichever thread comes first: every thread uses its own
// batch size at once.
TEST(EngineThreads, FirstUseOfBatchSizesFromSeveralThreads) {
  auto model = small_cnn();
  ASSERT_TRUE(model);
  Engine engine = int8_engine(model);
  std::vector<TensorMap> inputs;
  std::vector<Tensor> expected;
  {
    // Expected results from a loaded copy, so `engine` has made no batch plan yet.
    auto copy = Engine::from_bytes(*engine.serialize(), "copy");
    ASSERT_TRUE(copy.ok());
    for (int64_t b = 1; b <= 4; ++b) {
      inputs.push_back(random_model_inputs(*model, b, 900 + uint64_t(b)));
      expected.push_back(infer_once(*copy, inputs.back()).at("y"));
    }
  }
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (size_t t = 0; t < inputs.size(); ++t)
    threads.emplace_back([&, t] {
      auto ctx = engine.create_context();
      for (int i = 0; i < 10; ++i) {
        auto r = ctx->infer(inputs[t]);
        if (!r.ok() || !bit_equal(r->outputs.at("y"), expected[t])) ++bad;
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
}

// --- profiling, capture, report ------------------------------------------------------------------

TEST(EngineContext, ProfilingGivesOneTimingPerStep) {
  auto model = small_cnn();
  ASSERT_TRUE(model);
  Engine engine = int8_engine(model);
  auto ctx = engine.create_context();
  ASSERT_TRUE(ctx.ok());
  const TensorMap in = random_model_inputs(*model, 2, 5);
  auto plain = ctx->infer(in);
  ASSERT_TRUE(plain.ok());
  EXPECT_TRUE(plain->layers.empty());
  EXPECT_GT(plain->timing.end_to_end_ms, 0);
  EXPECT_GE(plain->timing.end_to_end_ms, plain->timing.compute_ms);
  ctx->set_profiling(true);
  auto r = ctx->infer(in);
  ASSERT_TRUE(r.ok());
  const auto& layers = engine.report().layers;
  ASSERT_EQ(r->layers.size(), layers.size());
  double sum = 0;
  for (size_t i = 0; i < layers.size(); ++i) {
    EXPECT_EQ(r->layers[i].name, layers[i].name);
    EXPECT_EQ(r->layers[i].op, layers[i].op);
    EXPECT_EQ(r->layers[i].precision, layers[i].actual);
    EXPECT_GE(r->layers[i].ms, 0);
    sum += r->layers[i].ms;
  }
  EXPECT_LE(sum, r->timing.compute_ms * 1.01 + 0.01);
  EXPECT_TRUE(bit_equal(r->outputs.at("y"), plain->outputs.at("y")))
      << "profiling changes no result";
  ctx->set_profiling(false);
  auto again = ctx->infer(in);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->layers.empty());
}

TEST(EngineContext, CaptureReturnsDequantisedValues) {
  auto model = small_cnn();
  ASSERT_TRUE(model);
  const TensorMap in = random_model_inputs(*model, 3, 6);
  auto ref = model->run_reference(in, true);
  ASSERT_TRUE(ref.ok());
  for (bool int8 : {false, true}) {
    SCOPED_TRACE(int8 ? "int8" : "fp32");
    Engine engine = int8 ? int8_engine(model) : fp32_engine(model);
    auto ctx = engine.create_context();
    ASSERT_TRUE(ctx.ok());
    ctx->capture({"r1", "r2"});
    auto r = ctx->infer(in);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    ASSERT_EQ(r->captured.size(), 2u);
    for (const char* name : {"r1", "r2"}) {
      SCOPED_TRACE(name);
      ASSERT_TRUE(r->captured.count(name));
      const Tensor& got = r->captured.at(name);
      const Tensor& expected = ref->at(name);
      EXPECT_EQ(got.dtype(), DType::kFloat32);
      ASSERT_EQ(got.shape(), expected.shape());
      if (!int8) {
        EXPECT_LE(testing::max_relative_error(got, expected), 1e-5);
        continue;
      }
      EXPECT_GE(testing::sqnr_db(got, expected), 30.0);
      // Real values on the value's grid: (q - z) * s with 0 <= q <= 255 (a Relu output: z = 0).
      const ir::Value* v = nullptr;
      for (const ir::Value* c : engine.impl().graph->values())
        if (c->name == name) v = c;
      ASSERT_NE(v, nullptr);
      ASSERT_TRUE(v->quant.has_value());
      EXPECT_EQ(v->dtype, DType::kUInt8);
      const float s = v->quant->scale[0];
      const int z = v->quant->zero_point_at(0);
      for (int64_t i = 0; i < got.numel(); ++i) {
        const double q = got.data<float>()[i] / s + z;
        ASSERT_NEAR(q, std::nearbyint(q), 1e-3) << "at " << i;
        ASSERT_GE(q, -1e-3);
        ASSERT_LE(q, 255 + 1e-3);
      }
    }
    ctx->capture({}, true);
    auto all = ctx->infer(in);
    ASSERT_TRUE(all.ok());
    EXPECT_GE(all->captured.size(), 4u);
    EXPECT_TRUE(all->captured.count("y"));
    ctx->capture({});
    auto none = ctx->infer(in);
    ASSERT_TRUE(none.ok());
    EXPECT_TRUE(none->captured.empty());
  }
}

TEST(EngineReport, ListsLayersPrecisionsBitsAndMemory) {
  auto model = small_cnn();
  ASSERT_TRUE(model);
  auto engine = build_engine(model, cpu_options(Precision::kFP32, kMaxBatch), kMixedPlan,
                             random_calibration(*model, 2, 8, 3));
  ASSERT_TRUE(engine.ok()) << engine.status().to_string();
  const BuildReport& r = engine->report();
  SCOPED_TRACE(testing::describe_layers(r));
  EXPECT_EQ(r.backend, "cpu");
  EXPECT_EQ(r.max_batch, kMaxBatch);
  EXPECT_FALSE(r.isa.empty());
  EXPECT_GT(r.peak_memory_bytes, 0);
  EXPECT_GT(r.weight_bytes, 0);
  EXPECT_GT(r.peak_memory_bytes, r.weight_bytes);
  EXPECT_TRUE(r.fallbacks.empty());
  // Every weighted layer, by module, at its planned precision.
  std::map<std::string, const LayerReport*> by_module;
  for (const LayerReport& l : r.layers)
    if (l.op == "FusedConv" || l.op == "FusedGemm") by_module[l.module] = &l;
  ASSERT_EQ(by_module.size(), 4u);
  EXPECT_EQ(by_module["conv1"]->actual, Precision::kINT8);
  EXPECT_EQ(by_module["conv2"]->actual, Precision::kINT8);
  EXPECT_EQ(by_module["conv3"]->actual, Precision::kFP32);
  EXPECT_EQ(by_module["fc"]->actual, Precision::kFP32);
  EXPECT_EQ(by_module["conv1"]->fused, std::vector<std::string>{"/relu1/Relu"});
  EXPECT_EQ(by_module["conv1"]->output, "r1");
  // Parameters and MACs per sample, from the shapes.
  const int64_t p1 = 8 * 3 * 9 + 8, p2 = 16 * 8 * 9 + 16, p3 = 16 * 16, p4 = 10 * 16 + 10;
  const int64_t m1 = 8 * 3 * 9 * 144, m2 = 16 * 8 * 9 * 36, m3 = 16 * 16 * 36, m4 = 10 * 16;
  EXPECT_EQ(by_module["conv1"]->params, p1);
  EXPECT_EQ(by_module["conv2"]->params, p2);
  EXPECT_EQ(by_module["conv1"]->macs, m1);
  EXPECT_EQ(by_module["conv2"]->macs, m2);
  EXPECT_EQ(by_module["conv3"]->macs, m3);
  EXPECT_EQ(by_module["fc"]->macs, m4);
  EXPECT_NEAR(r.average_bits_by_params,
              (8.0 * (p1 + p2) + 32.0 * (p3 + p4)) / double(p1 + p2 + p3 + p4), 1e-9);
  EXPECT_NEAR(r.average_bits_by_macs,
              (8.0 * (m1 + m2) + 32.0 * (m3 + m4)) / double(m1 + m2 + m3 + m4), 1e-9);
  for (const LayerReport& l : r.layers) {
    EXPECT_FALSE(l.implementation.empty()) << l.name;
    EXPECT_EQ(l.requested, l.actual) << l.name;
    EXPECT_GT(l.build_seconds, 0.0) << l.name;
  }
  // Where the build's time went: its phases in order, adding up to at most the whole build.
  std::vector<std::string> phases;
  double phase_total = 0;
  for (const auto& [name, seconds] : r.phase_seconds) {
    phases.push_back(name);
    EXPECT_GE(seconds, 0.0) << name;
    phase_total += seconds;
  }
  EXPECT_EQ(phases, (std::vector<std::string>{"planning", "calibration engine", "calibration",
                                              "kernels", "execution plan"}));
  EXPECT_LE(phase_total, r.build_seconds + 1e-9);
  double layer_total = 0;
  for (const LayerReport& l : r.layers) layer_total += l.build_seconds;
  if (r.phase_seconds.size() == 5) EXPECT_LE(layer_total, r.phase_seconds[3].second + 1e-9);
  // Uniform plans: 32 and 8 bits.
  EXPECT_EQ(fp32_engine(model).report().average_bits_by_params, 32.0);
  const BuildReport r8 = int8_engine(model).report();
  EXPECT_EQ(r8.average_bits_by_params, 8.0);
  EXPECT_EQ(r8.average_bits_by_macs, 8.0);
}

}  // namespace
}  // namespace mixq
