// The CUDA backend: cuDNN graph convolutions, cuBLASLt GEMMs and own kernels, NHWC activations,
// s8 symmetric int8 and e4m3 fp8 with per-tensor activation scales, per-channel weight scales.
// Device memory, streams, graph capture and timing (DeviceOps) live here too.
#include <algorithm>
#include <cstdlib>
#include <sstream>

#include "backends/cuda/cuda_common.h"
#include "backends/cuda/cuda_util.h"
#include "backends/reference/reference.h"
#include "engine/lower.h"

namespace mixq::backends::cuda {

Status cuda_status(cudaError_t e, const char* what, const char* file, int line) {
  return Internal(std::string("CUDA error ") + cudaGetErrorString(e) + " in " + what + " (" + file +
                  ":" + std::to_string(line) + ")");
}
Status cudnn_status(cudnnStatus_t e, const char* what, const char* file, int line) {
  char detail[512] = {};
  cudnnGetLastErrorString(detail, sizeof detail);
  return Unsupported(std::string("cuDNN ") + cudnnGetErrorString(e) + " in " + what + " (" + file +
                     ":" + std::to_string(line) + ")" +
                     (detail[0] ? std::string(": ") + detail : ""));
}
Status cublas_status(cublasStatus_t e, const char* what, const char* file, int line) {
  return Unsupported(std::string("cuBLASLt status ") + std::to_string(int(e)) + " in " + what +
                     " (" + file + ":" + std::to_string(line) + ")");
}

Shape at_batch(const Shape& s, int64_t batch) {
  Shape r = s;
  for (auto& d : r)
    if (d < 0) d = batch;
  return r;
}

Expected<std::unique_ptr<CudaResources>> CudaResources::create() {
  auto r = std::make_unique<CudaResources>();
  CUDA_CHECK(cudaStreamCreateWithFlags(&r->stream, cudaStreamNonBlocking));
  CUDNN_CHECK(cudnnCreate(&r->cudnn));
  CUDNN_CHECK(cudnnSetStream(r->cudnn, r->stream));
  CUBLAS_CHECK(cublasLtCreate(&r->cublas));
  for (auto& e : r->events) CUDA_CHECK(cudaEventCreate(&e));
  CUDA_CHECK(cudaEventCreateWithFlags(&r->ordering, cudaEventDisableTiming));
  return r;
}

CudaResources::~CudaResources() {
  for (auto& e : events)
    if (e) cudaEventDestroy(e);
  if (ordering) cudaEventDestroy(ordering);
  for (auto& e : step_marks) cudaEventDestroy(e);
  if (cublas) cublasLtDestroy(cublas);
  if (cudnn) cudnnDestroy(cudnn);
  if (stream) cudaStreamDestroy(stream);
}

Expected<DeviceBuffer> device_alloc(size_t bytes) {
  void* p = nullptr;
  CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(bytes, 16)));
  return DeviceBuffer{std::shared_ptr<void>(p, [](void* q) { cudaFree(q); }), bytes};
}

Expected<DeviceBuffer> upload(const void* host, size_t bytes) {
  MIXQ_ASSIGN_OR_RETURN(DeviceBuffer b, device_alloc(bytes));
  if (bytes) CUDA_CHECK(cudaMemcpy(b.get(), host, bytes, cudaMemcpyHostToDevice));
  return b;
}

namespace {

CudaResources* res(ExecResources* r) {
  return static_cast<CudaResources*>(r);
}

// Ends a capture left open on `stream` (by a step that failed while capturing), dropping its graph.
void abandon_capture(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &status) != cudaSuccess) {
    cudaGetLastError();
    return;
  }
  if (status == cudaStreamCaptureStatusNone) return;
  cudaGraph_t graph = nullptr;
  cudaStreamEndCapture(stream, &graph);
  if (graph) cudaGraphDestroy(graph);
  cudaGetLastError();
}

class CudaDeviceOps final : public DeviceOps {
 public:
  Expected<std::shared_ptr<void>> alloc_device(size_t bytes) const override {
    MIXQ_ASSIGN_OR_RETURN(DeviceBuffer b, device_alloc(bytes));
    return b.ptr;
  }
  Expected<std::shared_ptr<void>> alloc_pinned(size_t bytes) const override {
    void* p = nullptr;
    CUDA_CHECK(cudaMallocHost(&p, std::max<size_t>(bytes, 16)));
    return std::shared_ptr<void>(p, [](void* q) { cudaFreeHost(q); });
  }
  Status copy_to_device(void* dst, const void* src, size_t bytes, ExecResources* r) const override {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, res(r)->stream));
    return Status::Ok();
  }
  Status copy_to_host(void* dst, const void* src, size_t bytes, ExecResources* r) const override {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, res(r)->stream));
    return Status::Ok();
  }
  Status copy_device_to_device(void* dst, const void* src, size_t bytes,
                               ExecResources* r) const override {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, res(r)->stream));
    return Status::Ok();
  }
  Status synchronize(ExecResources* r) const override {
    // A capture that a failing step left open ends here (its graph is dropped): the caller
    // synchronises before it runs the steps directly.
    abandon_capture(res(r)->stream);
    CUDA_CHECK(cudaStreamSynchronize(res(r)->stream));
    return Status::Ok();
  }
  Status begin_capture(ExecResources* r) const override {
    abandon_capture(res(r)->stream);
    CUDA_CHECK(cudaStreamBeginCapture(res(r)->stream, cudaStreamCaptureModeThreadLocal));
    return Status::Ok();
  }
  Expected<std::shared_ptr<void>> end_capture(ExecResources* r) const override {
    cudaGraph_t graph = nullptr;
    CUDA_CHECK(cudaStreamEndCapture(res(r)->stream, &graph));
    cudaGraphExec_t exec = nullptr;
    cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    if (e != cudaSuccess) return cuda_status(e, "cudaGraphInstantiate", __FILE__, __LINE__);
    return std::shared_ptr<void>(
        exec, [](void* x) { cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(x)); });
  }
  Status replay(const std::shared_ptr<void>& graph, ExecResources* r) const override {
    CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(graph.get()), res(r)->stream));
    return Status::Ok();
  }
  Status record(ExecResources* r, int slot) const override {
    // In a capture, a plain record only orders streams; an external record node records the
    // event each time the graph replays (what the timing marks need).
    cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
    CUDA_CHECK(cudaStreamIsCapturing(res(r)->stream, &capturing));
    if (capturing == cudaStreamCaptureStatusActive)
      CUDA_CHECK(
          cudaEventRecordWithFlags(res(r)->events[slot], res(r)->stream, cudaEventRecordExternal));
    else
      CUDA_CHECK(cudaEventRecord(res(r)->events[slot], res(r)->stream));
    return Status::Ok();
  }
  Expected<double> elapsed_ms(ExecResources* r, int from, int to) const override {
    CUDA_CHECK(cudaEventSynchronize(res(r)->events[to]));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, res(r)->events[from], res(r)->events[to]));
    return double(ms);
  }
  bool is_device_pointer(const void* p) const override {
    cudaPointerAttributes attr{};
    if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
  }
  Status reserve_step_marks(ExecResources* r, size_t count) const override {
    auto& marks = res(r)->step_marks;
    while (marks.size() < count) {
      cudaEvent_t e = nullptr;
      CUDA_CHECK(cudaEventCreate(&e));
      marks.push_back(e);
    }
    return Status::Ok();
  }
  Status record_step(ExecResources* r, size_t index) const override {
    auto& marks = res(r)->step_marks;
    if (index >= marks.size())
      return Internal("profiling mark " + std::to_string(index) + " not reserved");
    cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
    CUDA_CHECK(cudaStreamIsCapturing(res(r)->stream, &capturing));
    if (capturing == cudaStreamCaptureStatusActive)
      CUDA_CHECK(cudaEventRecordWithFlags(marks[index], res(r)->stream, cudaEventRecordExternal));
    else
      CUDA_CHECK(cudaEventRecord(marks[index], res(r)->stream));
    return Status::Ok();
  }
  Expected<std::vector<double>> step_times_ms(ExecResources* r, size_t count) const override {
    auto& marks = res(r)->step_marks;
    if (count + 1 > marks.size()) return Internal("profiling marks not reserved");
    CUDA_CHECK(cudaEventSynchronize(marks[count]));
    std::vector<double> ms(count);
    for (size_t i = 0; i < count; ++i) {
      float t = 0;
      CUDA_CHECK(cudaEventElapsedTime(&t, marks[i], marks[i + 1]));
      ms[i] = double(t);
    }
    return ms;
  }
  Status wait_for_stream(void* stream, ExecResources* r) const override {
    // 1 and 2 are cudaStreamLegacy and cudaStreamPerThread, as __cuda_array_interface__ has them.
    CUDA_CHECK(cudaEventRecord(res(r)->ordering, static_cast<cudaStream_t>(stream)));
    CUDA_CHECK(cudaStreamWaitEvent(res(r)->stream, res(r)->ordering, 0));
    return Status::Ok();
  }
};

bool is_conv2d(const ir::Node& n) {
  return n.op == ir::OpKind::kFusedConv && n.input(0) && n.input(0)->shape_known &&
         n.input(0)->shape.size() == 4;
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {
    cudaDeviceProp prop{};
    cudaGetDeviceProperties(&prop, device);
    name_ = prop.name;
    sm_ = prop.major * 10 + prop.minor;
  }

  std::string_view name() const override { return "cuda"; }

  bool supports(const ir::Node& n, Precision p, std::string* why) const override {
    if (p == Precision::kFP8 && sm_ < 89) {
      if (why)
        *why = "fp8 needs compute capability 8.9 or newer; this GPU is sm_" + std::to_string(sm_);
      return false;
    }
    switch (n.op) {
      case ir::OpKind::kFusedConv:
        if (n.input(4)) {  // chained by fuse_for_execution: the window form's types
          const bool ok = p == Precision::kFP16 || p == Precision::kBF16 || p == Precision::kINT8 ||
                          p == Precision::kFP8;
          if (!ok && why) *why = "chained convolutions run in fp16, bf16, int8 or fp8 only";
          return ok;
        }
        return conv_supports(n, p, why);
      case ir::OpKind::kFusedGemm:
        if (n.input(4)) {  // chained by fuse_for_execution: int8 only
          if (p != Precision::kINT8 && why) *why = "chained linear layers run in int8 only";
          return p == Precision::kINT8;
        }
        return gemm_supports(n, p, why);
      default:
        return own_supports(n, p, why);
    }
  }

  Expected<std::unique_ptr<Kernel>> create(const ir::Node& n, Precision p) const override {
    switch (n.op) {
      case ir::OpKind::kFusedConv:
        return n.input(4) ? make_conv_chain_kernel(n, p) : make_conv_kernel(n, p);
      case ir::OpKind::kFusedGemm:
        return n.input(4) ? make_chain_kernel(n, p) : make_gemm_kernel(n, p);
      default:
        return make_own_kernel(n, p);
    }
  }

  std::unique_ptr<ExecResources> create_resources() const override {
    cudaSetDevice(device_);
    auto r = CudaResources::create();
    return r.ok() ? std::move(r).value() : nullptr;
  }

  QuantPolicy quant_policy() const override {
    QuantPolicy p;
    p.activation_dtype = DType::kInt8;  // symmetric s8: what cuDNN and cuBLASLt int8 paths take
    p.weight_qmax = 127;
    return p;
  }

  std::string target() const override {
    int cudnn = int(cudnnGetVersion());
    int runtime = 0;
    cudaRuntimeGetVersion(&runtime);
    return "cuda;sm=" + std::to_string(sm_) + ";gpu=" + name_ + ";cudnn=" + std::to_string(cudnn) +
           ";cudart=" + std::to_string(runtime);
  }

  Status check_target(const std::string& recorded) const override {
    auto field = [](const std::string& s, const std::string& key) {
      const size_t at = s.find(key + "=");
      if (at == std::string::npos) return std::string();
      const size_t end = s.find(';', at);
      return s.substr(at + key.size() + 1,
                      end == std::string::npos ? std::string::npos : end - at - key.size() - 1);
    };
    const std::string here = target();
    for (const char* key : {"sm", "cudnn"}) {
      if (field(recorded, key) != field(here, key))
        return FailedPrecondition("the engine was built for " + recorded + "; this machine is " +
                                  here + " (" + key + " differs): rebuild the engine here");
    }
    return Status::Ok();
  }

  Status assign_layouts(ir::Graph& g) const override {
    for (ir::Node* n : g.nodes()) {
      for (ir::Value* out : n->outputs) {
        if (!out) continue;
        const bool four_d = out->shape_known && out->shape.size() == 4;
        // Convolutions and the ops between them run NHWC; everything else plain.
        if (four_d && (is_conv2d(*n) || nhwc_capable(*n)))
          out->layout = ir::Layout::kNHWC;
        else
          out->layout = ir::Layout::kPlain;
      }
    }
    return Status::Ok();
  }

  ir::Layout required_input_layout(const ir::Node& n, size_t slot) const override {
    if (is_conv2d(n)) return ir::Layout::kNHWC;
    if (nhwc_capable(n)) return n.output(0)->layout;
    return ir::Layout::kPlain;
  }

  size_t buffer_bytes(const ir::Value& v, const Shape& shape) const override {
    return size_t(shape_numel(shape)) * dtype_size(v.dtype);
  }

  Expected<Tensor> read_value(const Buffer& b) const override {
    Tensor raw = Tensor::empty(b.value->dtype, b.shape);
    if (cudaMemcpy(raw.raw(), b.data, raw.nbytes(), cudaMemcpyDeviceToHost) != cudaSuccess)
      return Internal("reading '" + b.value->name + "' from the device failed");
    if (b.value->layout == ir::Layout::kNHWC && b.shape.size() == 4) {
      // NHWC -> NCHW on the host.
      Tensor plain = Tensor::empty(b.value->dtype, b.shape);
      permute_channels(raw.raw(), plain.raw(), dtype_size(b.value->dtype), b.shape[0], b.shape[1],
                       b.shape[2], b.shape[3], false);
      raw = plain;
    }
    return reference::dequantize_to_float(raw, b.value->quant ? &*b.value->quant : nullptr).clone();
  }

  const DeviceOps* device_ops() const override { return &ops_; }

  Status fuse_for_execution(ir::Graph& g) const override {
    // MIXQ_CUDA_FUSION=0 keeps every node a step of its own (to compare, or to profile the parts).
    if (const char* v = std::getenv("MIXQ_CUDA_FUSION")) {
      const std::string value = v;
      if (value == "0") return Status::Ok();
      if (value != "1")
        return InvalidArgument("MIXQ_CUDA_FUSION is '" + value + "'; expected 0 or 1");
    }
    // Each step below moves the nodes it absorbs to `doomed`, removed at the end.
    std::vector<ir::Node*> doomed;
    absorb_pools(g, doomed);
    absorb_input_reformats(g, doomed);
    chain_convolutions(g, doomed);
    absorb_flatten(g, doomed);
    chain_linear_layers(g, doomed);
    if (doomed.empty()) return Status::Ok();
    g.remove_nodes(doomed);
    g.remove_unused_values();
    return g.toposort();
  }

 private:
  // Convolution + max pool -> one window convolution that pools in its epilogue (LeNet's and
  // VGG's conv-relu-pool): the convolution's output never reaches memory.
  static void absorb_pools(ir::Graph& g, std::vector<ir::Node*>& doomed) {
    using engine::append_fused;
    using engine::single_consumer;
    for (ir::Node* conv : g.nodes()) {
      if (conv->op != ir::OpKind::kFusedConv || conv->attrs.count("mixq.pool")) continue;
      ir::Value* mid = conv->output(0);
      ir::Node* pool = nullptr;
      if (!mid || !single_consumer(g, mid, &pool) || !poolable(*pool, *mid) ||
          pool->precision != conv->precision)
        continue;
      const auto window = pool->attr_ints("kernel_shape", {});
      if (!conv_can_pool(*conv, window[0], window[1])) continue;
      ir::Value* out = pool->outputs[0];
      conv->outputs[0] = out;
      out->producer = conv;
      mid->producer = nullptr;
      conv->attrs["mixq.pool"] = std::vector<int64_t>{window[0], window[1]};
      append_fused(conv, pool);
      doomed.push_back(pool);
    }
  }
  // Reformat -> window convolution: the conversion (an fp32 network input to int8, say) happens
  // as the convolution stages its input, instead of a pass of its own over the tensor.
  static void absorb_input_reformats(ir::Graph& g, std::vector<ir::Node*>& doomed) {
    using engine::append_fused;
    using engine::single_consumer;
    for (ir::Node* reformat : g.nodes()) {
      if (reformat->op != ir::OpKind::kReformat || !reformat->input(0) || !reformat->output(0))
        continue;
      ir::Value* converted = reformat->output(0);
      ir::Node* conv = nullptr;
      if (!single_consumer(g, converted, &conv) || conv->op != ir::OpKind::kFusedConv ||
          conv->input(0) != converted || !conv_can_convert_input(*conv, *reformat->input(0)))
        continue;
      conv->inputs[0] = reformat->inputs[0];
      conv->attrs["mixq.input_dtype"] = std::string(dtype_name(converted->dtype));
      if (converted->quant) conv->attrs["mixq.input_scale"] = converted->quant->scale[0];
      append_fused(conv, reformat);
      doomed.push_back(reformat);
    }
  }
  // `first` -> its output's only reader `second`, both `op`, where `can_chain(first, second)`:
  // second merges into first (inputs 4 and 5: its weights and bias; its output) and `describe`
  // writes what else the merged node needs (second's attributes, the intermediate's format).
  template <class CanChain, class Describe>
  static void chain_layers(ir::Graph& g, std::vector<ir::Node*>& doomed, ir::OpKind op,
                           CanChain can_chain, Describe describe) {
    using engine::append_fused;
    using engine::single_consumer;
    for (ir::Node* first : g.nodes()) {
      if (first->op != op || first->input(4) ||
          std::find(doomed.begin(), doomed.end(), first) != doomed.end())
        continue;
      ir::Value* mid = first->output(0);
      ir::Node* second = nullptr;
      if (!mid || !single_consumer(g, mid, &second) || second->input(4) ||
          !can_chain(*first, *second))
        continue;
      first->inputs.resize(4, nullptr);
      first->inputs.push_back(second->inputs[1]);
      first->inputs.push_back(second->input(2));
      describe(*first, *second, *mid);
      ir::Value* out = second->outputs[0];
      first->outputs[0] = out;
      out->producer = first;
      mid->producer = nullptr;
      append_fused(first, second);
      doomed.push_back(second);
    }
  }
  // Convolution -> its output's only reader, another convolution, both of the window form's size
  // (LeNet's conv-relu-pool pair): one kernel takes each image through both, the intermediate
  // never leaves shared memory (kernels::window_chain).
  static void chain_convolutions(ir::Graph& g, std::vector<ir::Node*>& doomed) {
    chain_layers(g, doomed, ir::OpKind::kFusedConv, conv_can_chain,
                 [](ir::Node& first, const ir::Node& second, const ir::Value& mid) {
                   for (const auto& [key, value] : second.attrs)
                     if (key != "mixq.fused") first.attrs[ir::kChainThenPrefix + key] = value;
                   first.attrs[ir::kChainNameAttr] = second.name;
                   first.attrs[ir::kChainModuleAttr] = second.module_name;
                   first.attrs[ir::kChainMidShapeAttr] =
                       std::vector<int64_t>{mid.shape[1], mid.shape[2], mid.shape[3]};
                   first.attrs[ir::kChainMidDtypeAttr] = std::string(dtype_name(mid.dtype));
                   if (stored_quantized(mid))
                     first.attrs[ir::kChainMidScaleAttr] = mid.quant->scale[0];
                 });
  }
  // NHWC value -> Reformat to plain -> Flatten -> linear layer: the layer reads the NHWC tensor
  // as the matrix [N, H * W * C] and its weights' columns are permuted to match, once, here (what
  // a CNN's classifier head after its last pool does: two copies of the tensor saved).
  static void absorb_flatten(ir::Graph& g, std::vector<ir::Node*>& doomed) {
    using engine::append_fused;
    using engine::single_consumer;
    for (ir::Node* gemm : g.nodes()) {
      if (gemm->op != ir::OpKind::kFusedGemm || gemm->attrs.count("mixq.flatten_input")) continue;
      ir::Value* flat = gemm->input(0);
      ir::Node* flatten = flat ? flat->producer : nullptr;
      ir::Node* reader = nullptr;
      if (!flatten ||
          (flatten->op != ir::OpKind::kFlatten && flatten->op != ir::OpKind::kReshape) ||
          !single_consumer(g, flat, &reader) || reader != gemm || !flatten->input(0))
        continue;
      ir::Value* plain = flatten->input(0);
      ir::Node* reformat = plain->producer;
      if (!reformat || reformat->op != ir::OpKind::kReformat || !reformat->input(0) ||
          !single_consumer(g, plain, &reader) || reader != flatten)
        continue;
      ir::Value* nhwc = reformat->input(0);
      const ir::Value* w = gemm->input(1);
      if (!layout_only(*nhwc, *plain) || !flat->shape_known || flat->shape.size() != 2 || !w ||
          !w->is_constant() || w->constant.rank() != 2)
        continue;
      const int64_t C = nhwc->shape[1], H = nhwc->shape[2], W = nhwc->shape[3];
      if (C <= 0 || H <= 0 || W <= 0 || flat->shape[1] != C * H * W ||
          flat->shape[0] != nhwc->shape[0] || w->constant.dim(1) != C * H * W)
        continue;
      // Each output's row of C * H * W columns, from (c, h, w) to (h, w, c) order.
      Tensor permuted = Tensor::empty(w->constant.dtype(), w->constant.shape());
      permute_channels(w->constant.raw(), permuted.raw(), dtype_size(w->constant.dtype()),
                       w->constant.dim(0), C, H, W, true);
      ir::Value* weights = g.add_constant(g.unique_value_name(w->name + "/hwc"), permuted);
      weights->quant = w->quant;
      gemm->inputs[0] = nhwc;
      gemm->inputs[1] = weights;
      gemm->attrs["mixq.flatten_input"] = std::string("nhwc");
      append_fused(gemm, reformat);
      append_fused(gemm, flatten);
      doomed.push_back(reformat);
      doomed.push_back(flatten);
    }
  }
  // int8 linear layer -> its only reader, another int8 linear layer (a classifier head): one
  // kernel, the intermediate never leaves shared memory (kernels::chain_gemm_s8).
  static void chain_linear_layers(ir::Graph& g, std::vector<ir::Node*>& doomed) {
    chain_layers(g, doomed, ir::OpKind::kFusedGemm, gemm_can_chain,
                 [](ir::Node& first, const ir::Node& second, const ir::Value& mid) {
                   for (const char* key : {"activation", "clip_min", "clip_max"})
                     if (auto it = second.attrs.find(std::string("mixq.") + key);
                         it != second.attrs.end())
                       first.attrs[std::string("mixq.then_") + key] = it->second;
                   first.attrs["mixq.mid_dtype"] = std::string(dtype_name(mid.dtype));
                   first.attrs["mixq.mid_scale"] = mid.quant->scale[0];
                 });
  }

  // Whether two values store their elements alike: one type and, where quantised, one grid (a
  // float value may carry parameters it is not stored with: a mixed plan's fp16 value read by an
  // int8 layer through a reformat), so a step that moves or selects elements needs no conversion.
  static bool same_format(const ir::Value& a, const ir::Value& b) {
    if (a.dtype != b.dtype || stored_quantized(a) != stored_quantized(b)) return false;
    return !stored_quantized(a) ||
           (a.quant->scale == b.quant->scale && a.quant->zero_point == b.quant->zero_point);
  }
  // A Reformat from 4-D NHWC `from` to plain `to` that moves elements only (same type and grid).
  static bool layout_only(const ir::Value& from, const ir::Value& to) {
    return from.layout == ir::Layout::kNHWC && to.layout == ir::Layout::kPlain &&
           from.shape_known && from.shape.size() == 4 && to.shape == from.shape &&
           same_format(from, to);
  }
  // A MaxPool whose windows tile its input (kernel = stride, no padding or dilation, floor), one
  // output, reading `in` in the format it writes.
  static bool poolable(const ir::Node& pool, const ir::Value& in) {
    if (pool.op != ir::OpKind::kMaxPool || pool.outputs.size() != 1 || !pool.output(0) ||
        pool.input(0) != &in)
      return false;
    const auto window = pool.attr_ints("kernel_shape", {});
    if (window.size() != 2 || pool.attr_ints("strides", {1, 1}) != window ||
        pool.attr_int("ceil_mode", 0) != 0 || pool.attr_int("storage_order", 0) != 0)
      return false;
    for (int64_t p : pool.attr_ints("pads", {0, 0, 0, 0}))
      if (p != 0) return false;
    for (int64_t d : pool.attr_ints("dilations", {1, 1}))
      if (d != 1) return false;
    const std::string auto_pad = pool.attr_string("auto_pad", "NOTSET");
    if (auto_pad != "NOTSET" && auto_pad != "VALID") return false;
    return pool.output(0)->layout == in.layout && same_format(in, *pool.output(0));
  }

  // Ops whose own kernels read and write NHWC (elementwise, pooling, channel concat).
  static bool nhwc_capable(const ir::Node& n) {
    switch (n.op) {
      case ir::OpKind::kMaxPool:
      case ir::OpKind::kAveragePool:
      case ir::OpKind::kGlobalAveragePool:
      case ir::OpKind::kGlobalMaxPool:
      case ir::OpKind::kRelu:
      case ir::OpKind::kClip:
      case ir::OpKind::kSigmoid:
      case ir::OpKind::kTanh:
      case ir::OpKind::kLeakyRelu:
      case ir::OpKind::kHardSwish:
      case ir::OpKind::kHardSigmoid:
        return n.input(0)->shape_known && n.input(0)->shape.size() == 4;
      case ir::OpKind::kConcat:
      case ir::OpKind::kAdd:
      case ir::OpKind::kMul:
        // Same-shape operands only: layouts then agree element for element.
        for (const ir::Value* v : n.inputs)
          if (!v || v->is_constant() || v->shape != n.output(0)->shape) {
            if (n.op != ir::OpKind::kConcat) return false;
          }
        return n.output(0)->shape_known && n.output(0)->shape.size() == 4 &&
               (n.op != ir::OpKind::kConcat || n.attr_int("axis", 0) == 1 ||
                n.attr_int("axis", 0) == -3);
      default:
        return false;
    }
  }

  int device_;
  int sm_ = 0;
  std::string name_;
  CudaDeviceOps ops_;
};

}  // namespace
}  // namespace mixq::backends::cuda

extern "C" __attribute__((visibility("default"))) mixq::backends::Backend* mixq_create_cuda_backend(
    char* error, size_t error_size) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    std::snprintf(error, error_size, "no CUDA device (%s)",
                  e == cudaSuccess ? "none found" : cudaGetErrorString(e));
    return nullptr;
  }
  return new mixq::backends::cuda::CudaBackend(0);
}
