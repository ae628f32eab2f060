// Helpers shared by the library-backed kernel families (cuDNN convolutions, cuBLASLt GEMMs):
// the process-wide build resources (support probes, weight uploads and tuning run on their own
// stream, never on a context's), device timing, random device data, the epilogue grids of the own
// kernels, and the tuning choice that travels in the engine file as a node attribute.
#pragma once

#include <functional>
#include <mutex>
#include <string>

#include "backends/cuda/cuda_common.h"
#include "backends/cuda/kernels.h"

namespace mixq::backends::cuda {

// The own kernels' dtype code and grid (real = (stored - zero) * scale) of a value.
int kernel_dtype(DType dtype);
kernels::Grid value_grid(const ir::Value& value);
// Whether a value is stored quantised (s8, u8 or e4m3 with parameters).
bool stored_quantized(const ir::Value& value);
// The fused activation "<prefix>activation" names (kernels::kAct*), -1 for an unknown one
// ("mixq." for a layer's own, "mixq.then_" for a chained second layer's).
int fused_activation(const ir::Node& node, const std::string& prefix = "mixq.");
// On the host: elements of `element_bytes` between [N, C, H, W] and [N, H, W, C] order
// (`to_channels_last`: from the first to the second), by fixed-size copies (weights at load,
// values read back).
void permute_channels(const void* src, void* dst, size_t element_bytes, int64_t N, int64_t C,
                      int64_t H, int64_t W, bool to_channels_last);

// One stream, cuDNN handle and cuBLASLt handle for building kernels (probing supports(),
// uploading weights, timing candidates), shared by the process. Hold the lock while using them:
// builds are serialised (timings must not overlap anyway).
struct BuildResources {
  CudaResources* res = nullptr;
  std::unique_lock<std::mutex> lock;
  // Device memory for tuning, grown on demand, reused between builds (slot 0..3).
  Expected<void*> scratch(int slot, size_t bytes);
  // Frees the tuning memory (after a layer's tuning: it can be large).
  void release_scratch();
};
Expected<BuildResources> build_resources();

// `count` random values of `dtype` on the device: uniform in [-amp, amp] (integers: rounded codes;
// e4m3: the nearest e4m3 value), never exactly zero for floats.
Expected<DeviceBuffer> random_device(DType dtype, int64_t count, float amp, uint64_t seed);

// Median device time in ms of one `launch` on `stream`: `warmup` launches, then `reps` batches of
// `inner` launches between two events (captured as one CUDA graph where the launches capture, so
// host overhead stays out, as in the engine's replay; `captured` says whether they did: the engine
// replays its steps as a graph, so a launch that cannot be captured costs more). Fails with the
// launch's status.
Expected<double> time_launches(const std::function<Status()>& launch, cudaStream_t stream,
                               bool* captured = nullptr, int warmup = 2, int reps = 5,
                               int inner = 5);

// Tuning bounds (environment overrides): MIXQ_CUDA_TUNE_CONFIGS (most candidates timed per layer,
// default 16), MIXQ_CUDA_TUNE_SECONDS (wall-clock budget per layer once one candidate works,
// default 1), MIXQ_CUDA_TUNE=0 (no timing: the first candidate that runs wins). A node that carries
// backends::kNoTuningAttr (the calibration engine's) is not tuned either.
int tune_max_candidates();
double tune_seconds();
bool tuning_enabled(const ir::Node& node);
// Which convolutions run (MIXQ_CUDA_CONV): auto (default) times our own convolutions (the direct
// forms for small filters, the implicit GEMM) against cuDNN's engines where they apply and keeps
// the fastest; cudnn never uses ours; direct uses the small-filter direct forms, igemm the
// implicit GEMM and window the staged-window form wherever they apply, untimed (cuDNN elsewhere).
// Other values are an error. A convolution with a fused max pool runs the window form whatever
// the value (only it pools).
enum class ConvImplementation { kAuto, kCudnn, kDirect, kIgemm, kWindow };
Expected<ConvImplementation> conv_implementation();
// Which int8 linear layers run (MIXQ_CUDA_GEMM): auto (default) times our small dot-product kernel
// against cuBLASLt's algorithms where it applies and keeps the fastest; cublaslt never uses ours;
// own uses it wherever it applies. Other values are an error.
enum class GemmImplementation { kAuto, kCublaslt, kOwn };
Expected<GemmImplementation> gemm_implementation();
// Whether the build asked for kernels that give the same bits on every run.
bool deterministic_only(const ir::Node& node);

// Threads that finalize cuDNN plans at once while tuning (MIXQ_CUDA_COMPILE_THREADS; default: the
// machine's hardware threads, at most 16), and a cuDNN handle for each (created once per process).
int compile_threads();
Expected<cudnnHandle_t> compile_handle(int thread);
// Runs `job` on one of the background compile workers (compile_threads() of them, each with its
// own cuDNN handle; nullptr where none could be made), in submission order: a build compiles the
// cuDNN plans of later layers there while it times earlier ones. Jobs must not use the build
// stream or the build lock.
void submit_compile_job(std::function<void(cudnnHandle_t)> job);
// Whether layers compile their plans ahead on those workers (MIXQ_CUDA_PRECOMPILE, default 1; 0
// compiles each layer's plans when it is prepared, as for measuring what compiling ahead saves).
bool precompile_enabled();
// Whether tuning also tries every kernel configuration of the winning runtime-compiled cuDNN
// engine (MIXQ_CUDA_TUNE_KERNELS=1; default 0).
bool kernel_sweep_enabled();
// Whether a step's last kernel lets the next step's launch early where that one waits for it
// (ExecContext::successor_waits; MIXQ_CUDA_OVERLAP, default 1; 0 for measuring what it saves).
// Read at each launch; a captured graph keeps what its launches were given.
bool overlap_enabled();

// Bytes <-> lowercase hex (algorithm structures in choice strings).
std::string hex_encode(const void* data, size_t bytes);
bool hex_decode(const std::string& hex, void* data, size_t bytes);

// The tuning choice of a kernel lives in a string attribute of its node ("mixq.cudnn_choice",
// "mixq.cublaslt_choice"), so the engine file records it and loading rebuilds the same plan
// without timing. The node belongs to the engine's own (mutable) graph.
std::string read_choice(const ir::Node& node, const std::string& key);
void record_choice(const ir::Node& node, const std::string& key, const std::string& choice);
void forget_choice(const ir::Node& node, const std::string& key);

// Process-wide memo of tuning results (signature -> choice), so identical layers tune once.
// Untuned choices (see tuning_enabled) are kept apart, so a tuned build never reuses them.
std::string cached_choice(const ir::Node& node, const std::string& signature);
void cache_choice(const ir::Node& node, const std::string& signature, const std::string& choice);

// Rounds up to a multiple of 256 bytes (scratch sub-buffers).
inline size_t align256(size_t bytes) {
  return (bytes + 255) / 256 * 256;
}

}  // namespace mixq::backends::cuda
