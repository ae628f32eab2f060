// The contract every backend keeps (DESIGN.md, "Contracts worth keeping"):
//   supports(node, precision)      the planner asks before assigning a precision
//   create(node, precision)        -> Kernel
//   Kernel::prepare(max_batch)     packs weights, builds primitives, chooses algorithms (once)
//   Kernel::instantiate(batch)     the executable form for one batch size (cached by the engine)
//   KernelInstance::execute(ctx)   const; no allocation, no primitive creation
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ir/graph.h"
#include "mixq/precision.h"
#include "mixq/status.h"

namespace mixq::backends {

// A value's buffer during one inference: where it lives and its concrete shape at this batch.
// On device backends activations are device pointers; constants always point to host memory
// (device kernels upload the constants they need in prepare()).
struct Buffer {
  const ir::Value* value = nullptr;  // dtype, layout, quantisation
  void* data = nullptr;
  Shape shape;  // logical shape at this batch size
};

// Per-context, per-thread resources a kernel may use while executing (oneDNN stream,
// scratchpad); owned by the Context, so KernelInstances stay shareable between threads.
class ExecResources {
 public:
  virtual ~ExecResources() = default;
};

struct ExecContext {
  std::span<const Buffer> inputs;   // node.inputs order; data == nullptr for absent inputs
  std::span<const Buffer> outputs;  // node.outputs order
  ExecResources* resources = nullptr;
  void* scratch = nullptr;  // at least scratch_bytes() of per-context memory
  // Device backends: the next work on the stream is the next step's, which waits for this step's
  // (KernelInstance::waits_for_predecessor), with nothing in between. The step's last kernel may
  // then let it launch before this one ends (the CUDA backend: programmatic dependent launch).
  bool successor_waits = false;
};

class KernelInstance {
 public:
  virtual ~KernelInstance() = default;
  virtual Status execute(const ExecContext& ctx) const = 0;
  virtual size_t scratch_bytes() const { return 0; }
  // Device backends: execute's first launch may start before the work before it on the stream
  // has ended, and waits for that work itself before it reads or writes any buffer.
  virtual bool waits_for_predecessor() const { return false; }
};

class Kernel {
 public:
  virtual ~Kernel() = default;
  // Starts work that `prepare` will need and that can overlap other kernels' preparation (the
  // CUDA backend compiles cuDNN plans on worker threads). The engine calls it for every kernel
  // before preparing the first; errors surface in `prepare`.
  virtual void precompile(int64_t max_batch) { (void)max_batch; }
  // Pack weights and build what the max batch needs; runs once per engine build or load.
  virtual Status prepare(int64_t max_batch) = 0;
  // The executable form for `batch` (<= max batch), reusing the packed weights.
  virtual Expected<std::unique_ptr<KernelInstance>> instantiate(int64_t batch) const = 0;
  // Human-readable implementation, e.g. "onednn jit:avx2 conv u8s8->u8" or "reference".
  virtual std::string implementation() const = 0;
  // If true, the output buffer must hold input `residual_input()` before execute (a fused
  // residual add accumulates in place).
  virtual int accumulates_into_output_from() const { return -1; }
};

// Memory and stream operations of a backend whose buffers live on a device (CUDA). The engine
// keeps activations, constants and I/O staging there, copies inputs in and outputs out through
// pinned host memory, and replays the step loop as a captured graph.
class DeviceOps {
 public:
  virtual ~DeviceOps() = default;
  virtual Expected<std::shared_ptr<void>> alloc_device(size_t bytes) const = 0;
  virtual Expected<std::shared_ptr<void>> alloc_pinned(size_t bytes) const = 0;
  // Asynchronous on the context's stream.
  virtual Status copy_to_device(void* dst, const void* src, size_t bytes,
                                ExecResources* r) const = 0;
  virtual Status copy_to_host(void* dst, const void* src, size_t bytes, ExecResources* r) const = 0;
  virtual Status copy_device_to_device(void* dst, const void* src, size_t bytes,
                                       ExecResources* r) const = 0;
  virtual Status synchronize(ExecResources* r) const = 0;
  // Stream capture: everything issued between begin and end becomes one replayable graph.
  virtual Status begin_capture(ExecResources* r) const = 0;
  virtual Expected<std::shared_ptr<void>> end_capture(ExecResources* r) const = 0;
  virtual Status replay(const std::shared_ptr<void>& graph, ExecResources* r) const = 0;
  // Device-side timing: record event `slot` (0..3) on the stream; elapsed_ms waits for `to`.
  virtual Status record(ExecResources* r, int slot) const = 0;
  virtual Expected<double> elapsed_ms(ExecResources* r, int from, int to) const = 0;
  // Per-step marks for profiling, recorded inside captured graphs too (so layer times are those
  // of the replayed graph, without host launch gaps): make room for `count` marks before a
  // capture, record mark `index`, then read the times between consecutive marks.
  virtual Status reserve_step_marks(ExecResources* r, size_t count) const = 0;
  virtual Status record_step(ExecResources* r, size_t index) const = 0;
  virtual Expected<std::vector<double>> step_times_ms(ExecResources* r, size_t count) const = 0;
  // Whether `p` points into device memory (inputs handed over as device tensors).
  virtual bool is_device_pointer(const void* p) const = 0;
  // Orders the context's stream after the work queued so far on `stream` (a foreign stream
  // handle, e.g. the producer's of a device-resident input).
  virtual Status wait_for_stream(void* stream, ExecResources* r) const = 0;
};

// Node attribute (int, non-zero) of builds that need working kernels but no tuned ones: the
// calibration engine, which runs a few fp32 batches. A backend that times candidate algorithms
// takes the first one that works for such nodes.
inline constexpr const char* kNoTuningAttr = "mixq.no_tuning";
// Node attribute (int, non-zero) of builds with BuildOptions::deterministic: only kernels that
// give the same bits on every run.
inline constexpr const char* kDeterministicAttr = "mixq.deterministic";

// How a backend stores quantised data.
struct QuantPolicy {
  // Activations: u8 with zero point 0 (non-negative) or 128 (signed, symmetric), as the CPU
  // does (exact on AVX2 with 7-bit weights, no s8 compensation); or s8 symmetric (GPU).
  DType activation_dtype = DType::kUInt8;
  int weight_qmax = 127;  // 63: 7-bit weights where u8 x s8 products would saturate (AVX2)
  std::string describe() const;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;
  // Whether this backend runs `node` at `precision` given the node's value dtypes/layouts. When
  // it does not, `why` (if given) says what is missing.
  virtual bool supports(const ir::Node& node, Precision precision, std::string* why) const = 0;
  virtual Expected<std::unique_ptr<Kernel>> create(const ir::Node& node,
                                                   Precision precision) const = 0;
  // Bytes a value occupies at `batch` in its layout (blocked layouts pad channels).
  virtual size_t buffer_bytes(const ir::Value& value, const Shape& shape) const;
  // Per-thread resources for a context (a oneDNN stream, a CUDA stream...).
  virtual std::unique_ptr<ExecResources> create_resources() const { return nullptr; }

  virtual QuantPolicy quant_policy() const { return {}; }
  // What an engine built here depends on (ISA, weight bit width, library versions), recorded in
  // the engine file; check_target refuses an engine recorded for an incompatible target.
  virtual std::string target() const { return std::string(name()); }
  virtual Status check_target(const std::string& recorded) const;
  // Chooses value layouts (after dtypes are final); consumers that need another layout get a
  // Reformat from insert_reformats. The default keeps everything plain.
  virtual Status assign_layouts(ir::Graph& graph) const { return Status::Ok(); }
  // The layout `node` needs for input `slot` (kPlain by default; a backend whose kernel takes
  // any layout returns the value's own).
  virtual ir::Layout required_input_layout(const ir::Node& node, size_t slot) const {
    return ir::Layout::kPlain;
  }
  // Last step of a build, after insert_reformats: merges nodes the backend runs as one kernel (the
  // CUDA backend: a max pool into the convolution before it, as attribute "mixq.pool"). The
  // merged nodes keep the IR's meaning (the reference runs them); the default merges nothing.
  virtual Status fuse_for_execution(ir::Graph& graph) const { return Status::Ok(); }
  // A value's contents as plain fp32 (dequantised), e.g. for `compare`.
  virtual Expected<Tensor> read_value(const Buffer& buffer) const;
  // Non-null for device backends (see DeviceOps).
  virtual const DeviceOps* device_ops() const { return nullptr; }
};

// The reference backend as an engine backend: every op, fp32 (plain layout), one kernel per node.
std::unique_ptr<Backend> make_reference_backend();
// oneDNN on the host CPU (int8, fp32, bf16 where the ISA has it); other ops through the
// reference kernels.
std::unique_ptr<Backend> make_cpu_backend();
// NVIDIA GPUs (cuDNN, cuBLASLt, own kernels): loaded from libmixq_cuda.so next to libmixq, so
// the core library does not depend on CUDA. Errors say why (not built, no device...).
Expected<std::unique_ptr<Backend>> make_cuda_backend();
// "cpu", "reference" (and "cuda" where built); errors list the available names.
Expected<std::unique_ptr<Backend>> make_backend(const std::string& name);

}  // namespace mixq::backends
