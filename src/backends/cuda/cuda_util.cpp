// Build-time helpers of the CUDA backend: shared build resources, timing, random data, choices.
#include "backends/cuda/cuda_util.h"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <map>
#include <random>
#include <thread>
#include <vector>

namespace mixq::backends::cuda {

int kernel_dtype(DType d) {
  switch (d) {
    case DType::kFloat32:
      return kernels::kF32;
    case DType::kFloat16:
      return kernels::kF16;
    case DType::kBFloat16:
      return kernels::kBF16;
    case DType::kInt8:
      return kernels::kS8;
    case DType::kUInt8:
      return kernels::kU8;
    case DType::kFloat8E4M3:
      return kernels::kE4M3;
    case DType::kInt32:
      return kernels::kI32;
    case DType::kInt64:
      return kernels::kI64;
    case DType::kBool:
      return kernels::kBool;
  }
  return kernels::kF32;
}

void permute_channels(const void* src, void* dst, size_t element_bytes, int64_t N, int64_t C,
                      int64_t H, int64_t W, bool to_channels_last) {
  auto permute = [&](auto element) {
    using E = decltype(element);
    const E* in = static_cast<const E*>(src);
    E* out = static_cast<E*>(dst);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t w = 0; w < W; ++w) {
            const int64_t planar = ((n * C + c) * H + h) * W + w,
                          last = ((n * H + h) * W + w) * C + c;
            out[to_channels_last ? last : planar] = in[to_channels_last ? planar : last];
          }
  };
  switch (element_bytes) {
    case 1:
      return permute(uint8_t{});
    case 2:
      return permute(uint16_t{});
    case 4:
      return permute(uint32_t{});
    default:
      return permute(uint64_t{});  // int64: the largest type a value holds
  }
}

bool stored_quantized(const ir::Value& v) {
  return v.quant &&
         (v.dtype == DType::kInt8 || v.dtype == DType::kUInt8 || v.dtype == DType::kFloat8E4M3);
}

int fused_activation(const ir::Node& node, const std::string& prefix) {
  const std::string act = node.attr_string(prefix + "activation", "none");
  return act == "none"   ? kernels::kActNone
         : act == "relu" ? kernels::kActRelu
         : act == "clip" ? kernels::kActClip
                         : -1;
}

kernels::Grid value_grid(const ir::Value& v) {
  kernels::Grid g;
  g.dt = kernel_dtype(v.dtype);
  if (stored_quantized(v)) {
    g.scale = v.quant->scale[0];
    g.inv_scale = 1.0f / g.scale;
    g.zero = float(v.quant->zero_point_at(0));
  }
  g.nhwc = v.layout == ir::Layout::kNHWC;
  return g;
}

namespace {

struct Shared {
  std::mutex mutex;
  std::unique_ptr<CudaResources> res;
  DeviceBuffer scratch[4];
  std::mutex cache_mutex;
  std::map<std::string, std::string> choices;
  std::mutex handles_mutex;
  std::vector<cudnnHandle_t> compile_handles;
};

Shared& shared() {
  // Never destroyed: kernels may outlive static destruction order at exit.
  static Shared* s = new Shared;
  return *s;
}

}  // namespace

Expected<void*> BuildResources::scratch(int slot, size_t bytes) {
  DeviceBuffer& b = shared().scratch[slot];
  if (b.bytes < bytes || !b.ptr) {
    b = {};  // free first: the old buffer may be large
    MIXQ_ASSIGN_OR_RETURN(b, device_alloc(std::max<size_t>(bytes, 256)));
    b.bytes = std::max<size_t>(bytes, 256);
  }
  return b.get();
}

void BuildResources::release_scratch() {
  if (res) cudaStreamSynchronize(res->stream);
  for (DeviceBuffer& b : shared().scratch) b = {};
}

Expected<BuildResources> build_resources() {
  Shared& s = shared();
  BuildResources r;
  r.lock = std::unique_lock<std::mutex>(s.mutex);
  if (!s.res) {
    // The backend runs on device 0 (cuda_backend.cpp); build there too.
    CUDA_CHECK(cudaSetDevice(0));
    MIXQ_ASSIGN_OR_RETURN(s.res, CudaResources::create());
  }
  r.res = s.res.get();
  return r;
}

Expected<DeviceBuffer> random_device(DType dtype, int64_t count, float amp, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-amp, amp);
  auto draw = [&] {
    float v;
    do v = u(rng);
    while (v == 0.0f);
    return v;
  };
  Tensor t = Tensor::empty(dtype, {count});
  for (int64_t i = 0; i < count; ++i) {
    switch (dtype) {
      case DType::kFloat32:
        t.data<float>()[i] = draw();
        break;
      case DType::kFloat16:
        t.data<Half>()[i] = float_to_half(draw());
        break;
      case DType::kBFloat16:
        t.data<BFloat16>()[i] = float_to_bf16(draw());
        break;
      case DType::kFloat8E4M3:
        t.data<Float8E4M3>()[i] = float_to_fp8e4m3(draw());
        break;
      case DType::kInt8:
        t.data<int8_t>()[i] = int8_t(std::clamp(std::nearbyint(draw()), -128.0f, 127.0f));
        break;
      case DType::kUInt8:
        t.data<uint8_t>()[i] = uint8_t(std::clamp(std::nearbyint(std::fabs(draw())), 0.0f, 255.0f));
        break;
      case DType::kInt32:
        t.data<int32_t>()[i] = int32_t(std::nearbyint(draw()));
        break;
      default:
        return Internal("random_device: unsupported dtype " + std::string(dtype_name(dtype)));
    }
  }
  return upload(t.raw(), t.nbytes());
}

Expected<double> time_launches(const std::function<Status()>& launch, cudaStream_t stream,
                               bool* captured, int warmup, int reps, int inner) {
  for (int i = 0; i < warmup; ++i) MIXQ_RETURN_IF_ERROR(launch());
  CUDA_CHECK(cudaStreamSynchronize(stream));
  // Time a captured graph of `inner` launches where the calls capture (as the engine runs them):
  // the libraries' host overhead then stays out of small layers' times.
  cudaGraphExec_t exec = nullptr;
  if (cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess) {
    Status captured = Status::Ok();
    for (int i = 0; i < inner && captured.ok(); ++i) captured = launch();
    cudaGraph_t graph = nullptr;
    const cudaError_t e = cudaStreamEndCapture(stream, &graph);
    if (captured.ok() && e == cudaSuccess && graph &&
        cudaGraphInstantiate(&exec, graph, 0) != cudaSuccess)
      exec = nullptr;
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();  // a failed capture is not an error here: time direct launches instead
  }
  if (captured) *captured = exec != nullptr;
  std::shared_ptr<void> free_exec(exec, [](void* g) {
    if (g) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(g));
  });
  cudaEvent_t a = nullptr, b = nullptr;
  CUDA_CHECK(cudaEventCreate(&a));
  std::shared_ptr<void> free_a(a, [](void* e) { cudaEventDestroy(static_cast<cudaEvent_t>(e)); });
  CUDA_CHECK(cudaEventCreate(&b));
  std::shared_ptr<void> free_b(b, [](void* e) { cudaEventDestroy(static_cast<cudaEvent_t>(e)); });
  if (exec) {
    CUDA_CHECK(cudaGraphLaunch(exec, stream));  // first launch uploads the graph
    CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    CUDA_CHECK(cudaEventRecord(a, stream));
    if (exec) {
      CUDA_CHECK(cudaGraphLaunch(exec, stream));
    } else {
      for (int i = 0; i < inner; ++i) MIXQ_RETURN_IF_ERROR(launch());
    }
    CUDA_CHECK(cudaEventRecord(b, stream));
    CUDA_CHECK(cudaEventSynchronize(b));
    float t = 0;
    CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(double(t) / inner);
  }
  CUDA_CHECK(cudaGetLastError());
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

namespace {

long env_long(const char* name, long fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  return end && *end == 0 ? x : fallback;
}

}  // namespace

int tune_max_candidates() {
  return int(std::max(1L, env_long("MIXQ_CUDA_TUNE_CONFIGS", 16)));
}

double tune_seconds() {
  const char* v = std::getenv("MIXQ_CUDA_TUNE_SECONDS");
  // 1 s: on ResNet18 (H100) the engines were as fast as with 2 s, and the build 44 s, not 70.
  if (!v || !*v) return 1.0;
  const double x = std::atof(v);
  return x > 0 ? x : 1.0;
}

bool tuning_enabled(const ir::Node& node) {
  return env_long("MIXQ_CUDA_TUNE", 1) != 0 && node.attr_int(kNoTuningAttr, 0) == 0;
}

Expected<ConvImplementation> conv_implementation() {
  const char* v = std::getenv("MIXQ_CUDA_CONV");
  const std::string value = v ? v : "";
  if (value.empty() || value == "auto") return ConvImplementation::kAuto;
  if (value == "cudnn") return ConvImplementation::kCudnn;
  if (value == "direct") return ConvImplementation::kDirect;
  if (value == "igemm") return ConvImplementation::kIgemm;
  if (value == "window") return ConvImplementation::kWindow;
  return InvalidArgument("MIXQ_CUDA_CONV is '" + value +
                         "'; expected auto, cudnn, direct, igemm or window");
}

Expected<GemmImplementation> gemm_implementation() {
  const char* v = std::getenv("MIXQ_CUDA_GEMM");
  const std::string value = v ? v : "";
  if (value.empty() || value == "auto") return GemmImplementation::kAuto;
  if (value == "cublaslt") return GemmImplementation::kCublaslt;
  if (value == "own") return GemmImplementation::kOwn;
  return InvalidArgument("MIXQ_CUDA_GEMM is '" + value + "'; expected auto, cublaslt or own");
}

int compile_threads() {
  const long hw = long(std::max(1u, std::thread::hardware_concurrency()));
  return int(std::clamp(env_long("MIXQ_CUDA_COMPILE_THREADS", std::min(hw, 16L)), 1L, 64L));
}

Expected<cudnnHandle_t> compile_handle(int thread) {
  Shared& s = shared();
  std::lock_guard<std::mutex> lock(s.handles_mutex);
  while (int(s.compile_handles.size()) <= thread) {
    CUDA_CHECK(cudaSetDevice(0));
    cudnnHandle_t h = nullptr;
    CUDNN_CHECK(cudnnCreate(&h));
    s.compile_handles.push_back(h);
  }
  return s.compile_handles[size_t(thread)];
}

bool deterministic_only(const ir::Node& node) {
  return node.attr_int(kDeterministicAttr, 0) != 0;
}

std::string hex_encode(const void* data, size_t bytes) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  s.reserve(bytes * 2);
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < bytes; ++i) {
    s.push_back(digits[p[i] >> 4]);
    s.push_back(digits[p[i] & 15]);
  }
  return s;
}

bool hex_decode(const std::string& hex, void* data, size_t bytes) {
  if (hex.size() != bytes * 2) return false;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  auto* p = static_cast<uint8_t*>(data);
  for (size_t i = 0; i < bytes; ++i) {
    const int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    p[i] = uint8_t(hi << 4 | lo);
  }
  return true;
}

std::string read_choice(const ir::Node& node, const std::string& key) {
  return node.attr_string(key, "");
}

namespace {

// Workers that live as long as the process (like the shared build resources): a build may end
// with jobs still queued (an error in an earlier layer); their owners skip them when cancelled.
struct CompileWorkers {
  std::mutex mutex;
  std::condition_variable ready;
  std::deque<std::function<void(cudnnHandle_t)>> jobs;
  int started = 0;

  void run() {
    cudnnHandle_t handle = nullptr;
    if (cudaSetDevice(0) != cudaSuccess || cudnnCreate(&handle) != CUDNN_STATUS_SUCCESS)
      handle = nullptr;
    for (;;) {
      std::function<void(cudnnHandle_t)> job;
      {
        std::unique_lock<std::mutex> lock(mutex);
        ready.wait(lock, [&] { return !jobs.empty(); });
        job = std::move(jobs.front());
        jobs.pop_front();
      }
      job(handle);
    }
  }
};

}  // namespace

bool precompile_enabled() {
  return env_long("MIXQ_CUDA_PRECOMPILE", 1) != 0;
}

bool kernel_sweep_enabled() {
  return env_long("MIXQ_CUDA_TUNE_KERNELS", 0) != 0;
}

bool overlap_enabled() {
  return env_long("MIXQ_CUDA_OVERLAP", 1) != 0;
}

void submit_compile_job(std::function<void(cudnnHandle_t)> job) {
  static CompileWorkers* workers = new CompileWorkers;
  std::lock_guard<std::mutex> lock(workers->mutex);
  workers->jobs.push_back(std::move(job));
  // Workers start with the first jobs, up to the limit.
  if (workers->started < compile_threads()) {
    ++workers->started;
    std::thread([] { workers->run(); }).detach();
  }
  workers->ready.notify_one();
}

void record_choice(const ir::Node& node, const std::string& key, const std::string& choice) {
  // The kernel holds its node by const reference; the node itself lives in the engine's graph,
  // which is not const, and the attribute is how the choice reaches the engine file.
  const_cast<ir::Node&>(node).attrs[key] = choice;
}

void forget_choice(const ir::Node& node, const std::string& key) {
  const_cast<ir::Node&>(node).attrs.erase(key);
}

namespace {
std::string memo_key(const ir::Node& node, const std::string& signature) {
  return std::string(tuning_enabled(node) ? "" : "untuned ") +
         (deterministic_only(node) ? "deterministic " : "") + signature;
}
}  // namespace

std::string cached_choice(const ir::Node& node, const std::string& signature) {
  Shared& s = shared();
  std::lock_guard<std::mutex> lock(s.cache_mutex);
  auto it = s.choices.find(memo_key(node, signature));
  return it == s.choices.end() ? std::string() : it->second;
}

void cache_choice(const ir::Node& node, const std::string& signature, const std::string& choice) {
  Shared& s = shared();
  std::lock_guard<std::mutex> lock(s.cache_mutex);
  s.choices[memo_key(node, signature)] = choice;
}

}  // namespace mixq::backends::cuda
