// Builder (model + precision plan + calibration -> engine), Engine (immutable, serializable),
// Context (runs inference; one per thread, many per engine).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mixq/model.h"
#include "mixq/precision.h"
#include "mixq/status.h"
#include "mixq/tensor.h"

namespace mixq {

enum class CalibrationAlgorithm { kEntropy, kMinMax, kPercentile, kMse };
std::string_view calibration_algorithm_name(CalibrationAlgorithm algorithm);
std::optional<CalibrationAlgorithm> calibration_algorithm_from_name(std::string_view name);

struct CalibrationOptions {
  // Percentile by default: on the CIFAR ResNet18 and LeNet with Fashion-MNIST data, entropy (KL)
  // clipped post-ReLU tails (output SQNR 32.7 / 20.6 dB) where percentile kept 43.6 / 43.0 dB.
  CalibrationAlgorithm algorithm = CalibrationAlgorithm::kPercentile;
  double percentile = 99.99;  // for kPercentile
  int64_t batch_size = 32;    // samples per reference run
  int64_t max_samples = 0;    // 0: use every sample
  std::string cache_path;     // empty: no cache
  bool progress = false;      // progress bar on stderr (the CLI enables it on a terminal)
};

// Samples for post-training calibration: each entry maps input names to tensors whose first
// dimension is the batch.
class CalibrationData {
 public:
  CalibrationData() = default;
  // A .npy (the model's single input), an .npz (arrays named like the inputs, or one array for a
  // single-input model) or a folder of such files, read in name order.
  static Expected<CalibrationData> from_path(const std::string& path);
  static CalibrationData from_batches(std::vector<TensorMap> batches);

  const std::vector<TensorMap>& batches() const { return batches_; }
  bool empty() const { return batches_.empty(); }
  int64_t sample_count() const;
  std::string source() const { return source_; }

 private:
  std::vector<TensorMap> batches_;
  std::string source_;
};

struct BuildOptions {
  std::string backend = "cpu";  // "cpu", "reference", "cuda"
  Precision default_precision = Precision::kFP32;
  bool allow_fallback = false;  // let a layer fall back to the nearest higher precision
  // Only kernels that give the same bits on every run (GPU: no cuDNN engine that notes
  // nondeterminism, e.g. split reductions with atomics); off, the fastest kernels run, as in
  // PyTorch (cudnn.deterministic=False) and ONNX Runtime by default.
  bool deterministic = false;
  int64_t max_batch = 128;
  CalibrationOptions calibration;
};

struct LayerReport {
  std::string name;  // node name in the engine
  std::string op;
  std::string module;              // framework module, when known
  std::string output;              // name of the value it writes (the model's name for it)
  std::vector<std::string> fused;  // source layers folded into this one (e.g. a Relu)
  Precision requested = Precision::kFP32;
  Precision actual = Precision::kFP32;
  std::string fallback_reason;  // set when actual != requested
  std::string implementation;   // e.g. "onednn jit:avx2 int8"
  int64_t params = 0;
  int64_t macs = 0;          // per sample
  double build_seconds = 0;  // preparing its kernel (tuning included), 0 where not recorded
  double load_seconds = 0;   // rebuilding its kernel when the engine was loaded (0: built here)
};

struct BuildReport {
  std::vector<LayerReport> layers;
  std::vector<std::string> fallbacks;   // one line per layer that fell back, with the reason
  std::vector<std::string> plan_notes;  // config entries read but derived by mixq itself
  std::string backend;
  std::string isa;  // e.g. "avx512_core_vnni (8-bit weights)"
  int64_t max_batch = 0;
  int64_t peak_memory_bytes = 0;  // activations arena at max batch, plus weights
  int64_t weight_bytes = 0;
  double average_bits_by_params = 32;
  double average_bits_by_macs = 32;
  double calibration_seconds = 0;
  double build_seconds = 0;
  bool calibration_from_cache = false;
  // Where the build's time went, in order: planning, calibration engine, calibration, kernels
  // (preparation and tuning), execution plan.
  std::vector<std::pair<std::string, double>> phase_seconds;
};

struct Timing {
  // compute: from the first kernel's start to the last kernel's end (device or CPU time).
  double compute_ms = 0;
  // end to end: from the call to its return, including input checks, conversions and copies.
  double end_to_end_ms = 0;
};

struct LayerTiming {
  std::string name;
  std::string op;
  Precision precision = Precision::kFP32;
  double ms = 0;
};

struct InferenceResult {
  TensorMap outputs;
  Timing timing;
  std::vector<LayerTiming> layers;  // filled when profiling is on
  TensorMap captured;               // values asked for with Context::capture(), as f32
};

// Where one inference writes, and what it waits for (like ONNX Runtime's I/O binding).
struct InferOptions {
  // Outputs written in place instead of into new host tensors, by output name: host memory, or
  // on a device backend device memory (a CUDA pointer wrapped with Tensor::wrap). Each has the
  // output's dtype and its shape at this batch; InferenceResult::outputs holds these tensors.
  TensorMap outputs;
  // Device backends: a CUDA stream (cudaStream_t; 1 and 2 are the legacy and per-thread default
  // streams, as in __cuda_array_interface__) whose queued work produces device-resident inputs.
  // The engine's stream waits for it before reading them. nullptr: the inputs are ready.
  void* input_stream = nullptr;
};

class Context;

class Engine {
 public:
  static Expected<Engine> load(const std::string& path);
  static Expected<Engine> from_bytes(const std::string& bytes, const std::string& source);
  Status save(const std::string& path) const;
  Expected<std::string> serialize() const;

  const BuildReport& report() const;
  const std::vector<TensorSpec>& inputs() const;
  const std::vector<TensorSpec>& outputs() const;
  int64_t max_batch() const;

  Expected<Context> create_context() const;

  Engine(const Engine&);
  Engine& operator=(const Engine&);
  Engine(Engine&&) noexcept;
  Engine& operator=(Engine&&) noexcept;
  ~Engine();

  struct Impl;
  explicit Engine(std::shared_ptr<Impl> impl);
  const Impl& impl() const { return *impl_; }

 private:
  std::shared_ptr<Impl> impl_;
};

class Context {
 public:
  // Inputs by name; any batch from 1 to the engine's max batch (the first dimension).
  // On a device backend, inputs may be device pointers (Tensor::wrap): they are copied on the
  // device, without a host round trip; they are not scanned for NaN on the host.
  Expected<InferenceResult> infer(const TensorMap& inputs);
  Expected<InferenceResult> infer(const TensorMap& inputs, const InferOptions& options);
  // Per-layer timings in InferenceResult::layers (adds a clock read per layer).
  void set_profiling(bool on);
  // Return these values (names from the original model, e.g. a layer's output) as f32 in
  // InferenceResult::captured; `all` captures every value that survives in the engine.
  void capture(std::vector<std::string> value_names, bool all = false);

  Context(Context&&) noexcept;
  Context& operator=(Context&&) noexcept;
  ~Context();

  struct Impl;
  explicit Context(std::unique_ptr<Impl> impl);

 private:
  std::unique_ptr<Impl> impl_;
};

class Builder {
 public:
  explicit Builder(std::shared_ptr<const Model> model);
  // A precision plan: mixq's native JSON or NNI's calibration_config (detected by shape).
  Builder& set_plan_json(const std::string& json_text, const std::string& source = "plan");
  Status set_plan_file(const std::string& path);
  Builder& set_calibration_data(CalibrationData data);
  Builder& set_options(const BuildOptions& options);
  Expected<Engine> build();

 private:
  std::shared_ptr<const Model> model_;
  std::string plan_json_;
  std::string plan_source_;
  CalibrationData calibration_;
  BuildOptions options_;
};

}  // namespace mixq
