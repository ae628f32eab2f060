// Helpers for engine-level tests: models from OnnxBuilder, random inputs and calibration sets
// (never zeros), engine builds through Builder, environment overrides scoped to one build.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mixq/engine.h"
#include "mixq/model.h"
#include "support/onnx_builder.h"
#include "support/test_util.h"

namespace mixq::testing {

inline std::shared_ptr<const Model> load_model(const OnnxBuilder& b,
                                               const std::string& name = "test") {
  auto m = Model::from_bytes(b.bytes(), name);
  if (!m.ok()) {
    ADD_FAILURE() << "loading the test model failed: " << m.status().to_string();
    return nullptr;
  }
  return std::make_shared<const Model>(std::move(m).value());
}

// Uniform values in [lo, hi] (never exactly zero) for every graph input at `batch`.
inline TensorMap random_model_inputs(const Model& model, int64_t batch, uint64_t seed,
                                     float lo = -1.0f, float hi = 1.0f) {
  TensorMap m;
  uint64_t s = seed;
  for (const TensorSpec& spec : model.inputs()) {
    Shape shape = spec.shape;
    for (int64_t& d : shape)
      if (d < 0) d = batch;
    m[spec.name] = random_tensor(shape, s++ * 7919 + 13, lo, hi);
  }
  return m;
}

// `batches` batches of `batch` samples from the same distribution as random_model_inputs.
inline CalibrationData random_calibration(const Model& model, int batches, int64_t batch,
                                          uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::vector<TensorMap> data;
  for (int i = 0; i < batches; ++i)
    data.push_back(random_model_inputs(model, batch, seed * 1000 + uint64_t(i), lo, hi));
  return CalibrationData::from_batches(std::move(data));
}

inline BuildOptions cpu_options(Precision default_precision = Precision::kFP32,
                                int64_t max_batch = 8) {
  BuildOptions o;
  o.backend = "cpu";
  o.default_precision = default_precision;
  o.max_batch = max_batch;
  return o;
}

inline Expected<Engine> build_engine(std::shared_ptr<const Model> model,
                                     const BuildOptions& options, const std::string& plan_json = "",
                                     std::optional<CalibrationData> calibration = std::nullopt) {
  Builder b(std::move(model));
  b.set_options(options);
  if (!plan_json.empty()) b.set_plan_json(plan_json, "test plan");
  if (calibration) b.set_calibration_data(std::move(*calibration));
  return b.build();
}

// Runs one inference on a fresh context; fails the test (and returns an empty map) on error.
inline TensorMap infer_once(const Engine& engine, const TensorMap& inputs) {
  auto ctx = engine.create_context();
  if (!ctx.ok()) {
    ADD_FAILURE() << ctx.status().to_string();
    return {};
  }
  auto r = ctx->infer(inputs);
  if (!r.ok()) {
    ADD_FAILURE() << r.status().to_string();
    return {};
  }
  return r->outputs;
}

inline TensorMap reference_outputs(const Model& model, const TensorMap& inputs) {
  auto r = model.run_reference(inputs);
  if (!r.ok()) {
    ADD_FAILURE() << "reference run failed: " << r.status().to_string();
    return {};
  }
  return std::move(r).value();
}

// Sets (or, with nullptr, unsets) an environment variable for its lifetime, then restores it.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = std::string(old);
    if (value)
      setenv(name, value, 1);
    else
      unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_)
      setenv(name_.c_str(), old_->c_str(), 1);
    else
      unsetenv(name_.c_str());
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_;
  std::optional<std::string> old_;
};

// MIXQ_CPU_LAYOUTS is read when a backend is created, i.e. by every Builder::build().
inline std::unique_ptr<ScopedEnv> cpu_layouts(bool plain) {
  return std::make_unique<ScopedEnv>("MIXQ_CPU_LAYOUTS", plain ? "plain" : nullptr);
}

inline int count_op(const BuildReport& r, const std::string& op) {
  int n = 0;
  for (const LayerReport& l : r.layers) n += l.op == op;
  return n;
}

inline const LayerReport* find_layer(const BuildReport& r, const std::string& op, int nth = 0) {
  for (const LayerReport& l : r.layers)
    if (l.op == op && nth-- == 0) return &l;
  return nullptr;
}

inline std::string describe_layers(const BuildReport& r) {
  std::string s;
  for (const LayerReport& l : r.layers)
    s += "  " + l.name + " " + l.op + " " + std::string(precision_name(l.actual)) + " [" +
         l.implementation + "]\n";
  return s;
}

}  // namespace mixq::testing
