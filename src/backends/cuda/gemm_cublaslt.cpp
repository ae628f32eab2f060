// FusedGemm through cuBLASLt: y[M, N] = x[M, K] * W[N, K]^T + b, then residual and relu/clip, in
// fp32, tf32, fp16, bf16, int8 and fp8 (e4m3).
//
// The "TN" layout the measured probe uses (and int8/fp8 tensor-core kernels need): column-major
// D (N x M, ld N, i.e. row-major y) = op(A) * B with A = W stored K x N (ld K, the row-major
// [N, K] weights) transposed, B = x stored K x M (ld K, the row-major [M, K] input). Rows of D
// are output channels, so a bias vector and an fp8 A-scale vector run along them.
//
// Per layer, candidate ways ("variants") are tried: fused ones where cuBLASLt's epilogue does
// everything (bias, relu; int8 with a scalar alpha when the weights have one scale; fp8 with
// outer-vector scales s_w[n] x s_x), and one that always applies: the library writes an
// intermediate (int32 for int8, f32 otherwise) into scratch and the own epilogue kernel finishes
// (per-channel requantisation s_x*s_w[n], bias, residual, relu/clip, y's format). cuBLASLt has no
// per-row alpha for int8 (status 15 in the probe), hence the int32 path for per-channel weights.
// prepare() times the top heuristic algorithms of every variant that the heuristics accept and
// keeps the fastest; the choice (variant, algorithm structure) goes to mixq.cublaslt_choice.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <sstream>
#include <vector>

#include "backends/cuda/cuda_common.h"
#include "backends/cuda/cuda_util.h"
#include "backends/cuda/kernels.h"

namespace mixq::backends::cuda {
namespace {

constexpr const char* kChoiceAttr = "mixq.cublaslt_choice";
constexpr size_t kMaxWorkspace = size_t(32) << 20;
constexpr int kHeuristicResults = 8;

enum Scales : int { kNoScales, kScalarScales, kOuterScales };

// One way of running the layer.
struct Variant {
  std::string name;
  cudaDataType_t ab = CUDA_R_32F, c = CUDA_R_32F, d = CUDA_R_32F;
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  cudaDataType_t scale_type = CUDA_R_32F;
  int scales = kNoScales;
  bool d_scale = false;  // e4m3 output: D scale 1/s_y
  bool bias = false;     // cuBLASLt adds the bias...
  cudaDataType_t bias_type = CUDA_R_32F;
  bool relu = false;        // ...and applies relu
  bool to_scratch = false;  // D goes to scratch; the own epilogue writes y
  float alpha = 1.0f;       // float alpha (scale type 32F)
  // Device data of the variant.
  DeviceBuffer bias_data, a_scale, b_scale, d_scale_data, epi_scale, epi_bias;
  bool per_channel_epilogue = false;  // int8 -> int32: s_x * s_w[n] in the epilogue
  bool own = false;                   // our small int8 kernel (kernels::small_gemm_s8), no cuBLASLt
};

size_t type_bytes(cudaDataType_t t) {
  switch (t) {
    case CUDA_R_32F:
    case CUDA_R_32I:
      return 4;
    case CUDA_R_16F:
    case CUDA_R_16BF:
      return 2;
    default:
      return 1;
  }
}

const char* type_name(cudaDataType_t t) {
  switch (t) {
    case CUDA_R_32F:
      return "f32";
    case CUDA_R_32I:
      return "s32";
    case CUDA_R_16F:
      return "f16";
    case CUDA_R_16BF:
      return "bf16";
    case CUDA_R_8I:
      return "s8";
    case CUDA_R_8F_E4M3:
      return "e4m3";
    default:
      return "?";
  }
}

cudaDataType_t cuda_type(DType d) {
  switch (d) {
    case DType::kFloat16:
      return CUDA_R_16F;
    case DType::kBFloat16:
      return CUDA_R_16BF;
    case DType::kInt8:
      return CUDA_R_8I;
    case DType::kFloat8E4M3:
      return CUDA_R_8F_E4M3;
    case DType::kInt32:
      return CUDA_R_32I;
    default:
      return CUDA_R_32F;
  }
}

DType dtype_of(cudaDataType_t t) {
  switch (t) {
    case CUDA_R_16F:
      return DType::kFloat16;
    case CUDA_R_16BF:
      return DType::kBFloat16;
    case CUDA_R_8I:
      return DType::kInt8;
    case CUDA_R_8F_E4M3:
      return DType::kFloat8E4M3;
    case CUDA_R_32I:
      return DType::kInt32;
    default:
      return DType::kFloat32;
  }
}

DType input_dtype(Precision p) {
  switch (p) {
    case Precision::kFP16:
      return DType::kFloat16;
    case Precision::kBF16:
      return DType::kBFloat16;
    case Precision::kINT8:
      return DType::kInt8;
    case Precision::kFP8:
      return DType::kFloat8E4M3;
    default:
      return DType::kFloat32;
  }
}

bool quantized_precision(Precision p) {
  return p == Precision::kINT8 || p == Precision::kFP8;
}

// --- descriptors
// -------------------------------------------------------------------------------------

struct Descs {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr, d = nullptr;
  ~Descs() {
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

template <typename T>
Status set_desc(cublasLtMatmulDesc_t op, cublasLtMatmulDescAttributes_t attr, const T& value) {
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, attr, &value, sizeof(T)));
  return Status::Ok();
}

// Descriptors of `v` for M rows of x (K inputs, N outputs).
Expected<std::shared_ptr<Descs>> make_descs(const Variant& v, int64_t M, int64_t N, int64_t K) {
  auto d = std::make_shared<Descs>();
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&d->op, v.compute, v.scale_type));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  MIXQ_RETURN_IF_ERROR(set_desc(d->op, CUBLASLT_MATMUL_DESC_TRANSA, ta));
  MIXQ_RETURN_IF_ERROR(set_desc(d->op, CUBLASLT_MATMUL_DESC_TRANSB, tb));
  if (v.scales == kScalarScales || v.scales == kOuterScales) {
    if (v.scales == kOuterScales) {
      const int32_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
      MIXQ_RETURN_IF_ERROR(set_desc(d->op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, mode));
      MIXQ_RETURN_IF_ERROR(set_desc(d->op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, mode));
    }
    MIXQ_RETURN_IF_ERROR(set_desc(d->op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, v.a_scale.get()));
    MIXQ_RETURN_IF_ERROR(set_desc(d->op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, v.b_scale.get()));
  }
  if (v.d_scale)
    MIXQ_RETURN_IF_ERROR(
        set_desc(d->op, CUBLASLT_MATMUL_DESC_D_SCALE_POINTER, v.d_scale_data.get()));
  if (v.bias || v.relu) {
    const cublasLtEpilogue_t ep = v.bias && v.relu ? CUBLASLT_EPILOGUE_RELU_BIAS
                                  : v.bias         ? CUBLASLT_EPILOGUE_BIAS
                                                   : CUBLASLT_EPILOGUE_RELU;
    MIXQ_RETURN_IF_ERROR(set_desc(d->op, CUBLASLT_MATMUL_DESC_EPILOGUE, ep));
    if (v.bias) {
      MIXQ_RETURN_IF_ERROR(set_desc(d->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, v.bias_data.get()));
      const int32_t bt = v.bias_type;
      MIXQ_RETURN_IF_ERROR(set_desc(d->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, bt));
    }
  }
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d->a, v.ab, uint64_t(K), uint64_t(N), K));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d->b, v.ab, uint64_t(K), uint64_t(M), K));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d->c, v.c, uint64_t(N), uint64_t(M), N));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d->d, v.d, uint64_t(N), uint64_t(M), N));
  return d;
}

Expected<std::vector<cublasLtMatmulHeuristicResult_t>> heuristics(cublasLtHandle_t lt,
                                                                  const Descs& d, int requested) {
  cublasLtMatmulPreference_t pref = nullptr;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  std::shared_ptr<void> free_pref(pref, [](void* p) {
    cublasLtMatmulPreferenceDestroy(static_cast<cublasLtMatmulPreference_t>(p));
  });
  const uint64_t ws = kMaxWorkspace;
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                    &ws, sizeof ws));
  std::vector<cublasLtMatmulHeuristicResult_t> r(static_cast<size_t>(requested));
  int n = 0;
  CUBLAS_CHECK(
      cublasLtMatmulAlgoGetHeuristic(lt, d.op, d.a, d.b, d.c, d.d, pref, requested, r.data(), &n));
  r.resize(size_t(std::max(n, 0)));
  r.erase(std::remove_if(r.begin(), r.end(),
                         [](const cublasLtMatmulHeuristicResult_t& h) {
                           return h.state != CUBLAS_STATUS_SUCCESS ||
                                  h.workspaceSize > kMaxWorkspace;
                         }),
          r.end());
  if (r.empty()) return Unsupported("cuBLASLt's heuristics return no algorithm");
  return r;
}

// --- the layer
// --------------------------------------------------------------------------------------

struct Dims {
  int64_t m = 0, n = 0, k = 0;
};

// Variants for a layer, most fused first. `y_dtype`, `y_quantized` describe the output.
std::vector<Variant> variants_for(Precision p, DType y_dtype, bool y_quantized, bool has_bias,
                                  bool has_residual, int act, bool per_tensor_weights) {
  std::vector<Variant> out;
  const bool epilogue_fusable = !has_residual && act != kernels::kActClip;
  const bool relu = act == kernels::kActRelu;
  const cudaDataType_t yt = cuda_type(y_dtype);
  auto base = [&](const std::string& name) {
    Variant v;
    v.name = name;
    v.ab = cuda_type(input_dtype(p));
    v.compute = p == Precision::kTF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    return v;
  };
  switch (p) {
    case Precision::kFP32:
    case Precision::kTF32:
    case Precision::kFP16:
    case Precision::kBF16: {
      if (epilogue_fusable && !y_quantized &&
          (yt == CUDA_R_32F || yt == cuda_type(input_dtype(p)))) {
        Variant v = base("fused");
        v.c = v.d = yt;
        v.bias = has_bias;
        v.bias_type = yt;
        v.relu = relu;
        out.push_back(v);
      }
      Variant v = base("f32 + epilogue");
      v.c = v.d = CUDA_R_32F;
      v.to_scratch = true;
      out.push_back(v);
      break;
    }
    case Precision::kINT8: {
      if (epilogue_fusable && per_tensor_weights &&
          (y_dtype == DType::kInt8 || y_dtype == DType::kFloat32)) {
        Variant v = base(y_quantized ? "s8 alpha" : "f32 alpha");
        v.compute = CUBLAS_COMPUTE_32I;
        v.c = v.d = yt;
        v.bias = has_bias;
        v.bias_type = CUDA_R_32F;
        v.relu = relu;
        out.push_back(v);
      }
      Variant v = base("s32 + requantize");
      v.compute = CUBLAS_COMPUTE_32I;
      v.scale_type = CUDA_R_32I;
      v.c = v.d = CUDA_R_32I;
      v.to_scratch = true;
      v.per_channel_epilogue = true;
      out.push_back(v);
      break;
    }
    case Precision::kFP8: {
      if (epilogue_fusable && !y_quantized && y_dtype != DType::kFloat8E4M3) {
        Variant v = base("outer scales fused");
        v.scales = kOuterScales;
        v.c = v.d = yt;
        v.bias = has_bias;
        v.bias_type = yt == CUDA_R_32F ? CUDA_R_16BF : yt;  // fp8 with f32 D takes a bf16 bias
        v.relu = relu;
        out.push_back(v);
      }
      if (y_dtype == DType::kFloat8E4M3 && y_quantized && !has_bias && !has_residual &&
          act != kernels::kActClip) {
        Variant v = base("outer scales -> e4m3");
        v.scales = kOuterScales;
        v.c = CUDA_R_16BF;
        v.d = CUDA_R_8F_E4M3;
        v.d_scale = true;
        v.relu = relu;
        out.push_back(v);
        if (per_tensor_weights) {
          Variant s = v;
          s.name = "scalar scales -> e4m3";
          s.scales = kScalarScales;
          out.push_back(s);
        }
      }
      Variant v = base("outer scales f32 + epilogue");
      v.scales = kOuterScales;
      v.c = v.d = CUDA_R_32F;
      v.to_scratch = true;
      out.push_back(v);
      Variant w = v;
      w.name = "outer scales bf16 + epilogue";
      w.c = w.d = CUDA_R_16BF;
      out.push_back(w);
      break;
    }
  }
  return out;
}

Status static_checks(const ir::Node& node) {
  const ir::Value* x = node.input(0);
  const ir::Value* w = node.input(1);
  const ir::Value* y = node.output(0);
  if (!w || !w->is_constant() || w->constant.rank() != 2)
    return Unsupported("weights are not a constant matrix");
  // "mixq.flatten_input" = "nhwc" (CudaBackend::fuse_for_execution): a 4-D NHWC input read as
  // the matrix [N, H * W * C], which the weights' columns follow.
  const bool flattened = node.attr_string("mixq.flatten_input", "") == "nhwc";
  if (!x || !x->shape_known || x->shape.size() != (flattened ? 4u : 2u) ||
      (flattened && x->layout != ir::Layout::kNHWC))
    return Unsupported(flattened ? "the flattened input is not a 4-D NHWC tensor of known shape"
                                 : "the input is not a matrix of known shape");
  const int64_t k = flattened ? x->shape[1] * x->shape[2] * x->shape[3] : x->shape[1];
  if (k != w->constant.dim(1))
    return InvalidArgument("input " + shape_to_string(x->shape) + " does not match weights " +
                           shape_to_string(w->constant.shape()));
  if (!y || !y->shape_known || y->shape.size() != 2)
    return Unsupported("the output is not a matrix");
  const ir::Value* r = node.input(3);
  if (r && (!r->shape_known || r->shape != y->shape))
    return Unsupported("the residual's shape differs from the output's");
  if (node.input(2) && node.input(2)->constant.numel() != w->constant.dim(0))
    return InvalidArgument("the bias does not have one value per output");
  if (fused_activation(node) < 0)
    return Unsupported("activation '" + node.attr_string("mixq.activation", "") + "'");
  return Status::Ok();
}

// --- the kernel
// -------------------------------------------------------------------------------------

struct Chosen {
  int variant = -1;
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
  std::shared_ptr<Descs> descs;
  double ms = 0;
};

class GemmKernel final : public Kernel {
 public:
  GemmKernel(const ir::Node& node, Precision p) : node_(node), precision_(p) {}
  Status prepare(int64_t max_batch) override;
  Expected<std::unique_ptr<KernelInstance>> instantiate(int64_t batch) const override;
  std::string implementation() const override { return impl_; }

  // Scratch layout of variant v at M rows: [D][C][workspace].
  size_t d_bytes(const Variant& v, int64_t m) const {
    return v.to_scratch ? align256(size_t(m * dims_.n) * type_bytes(v.d)) : 0;
  }
  size_t c_bytes(const Variant& v, int64_t m) const {
    return v.c != v.d ? align256(size_t(m * dims_.n) * type_bytes(v.c)) : 0;
  }
  int64_t rows_at(int64_t batch) const { return at_batch(node_.input(0)->shape, batch)[0]; }

  // Issues the layer: matmul (and the own epilogue for scratch variants).
  Status launch(const Variant& v, const Chosen& c, int64_t m, cublasLtHandle_t lt,
                cudaStream_t stream, const void* x, const void* residual, void* y, char* scratch,
                bool release_next = false) const;

  Expected<Chosen> tune(int64_t m, BuildResources& b, int only_variant, std::string* note) const;
  // A choice ("v<variant>|<algorithm hex>") rebuilt for m rows, checked and warmed up.
  Expected<Chosen> from_choice(const std::string& choice, int64_t m, BuildResources& b) const;
  std::string choice_string(const Chosen& c) const {
    return "v" + std::to_string(c.variant) + "|" +
           (variants_[size_t(c.variant)].own ? std::string("own")
                                             : hex_encode(&c.algo, sizeof c.algo));
  }
  std::string signature(int64_t m) const { return signature_ + " m" + std::to_string(m); }

  // Runs a choice once on zeros outside any capture (lazy set-up of the library and kernels
  // happens on the first run; a CUDA graph capture does not allow it).
  Status warm_up(const Chosen& c, int64_t m, BuildResources& b) const;

  const ir::Node& node_;
  Precision precision_;
  int64_t max_batch_ = 0;
  Dims dims_;
  std::vector<Variant> variants_;
  DeviceBuffer weights_;
  kernels::Grid y_grid_, r_grid_;
  int act_ = kernels::kActNone;
  float clip_lo_ = 0, clip_hi_ = 0;
  Chosen prepared_;
  std::string signature_;  // the layer without its row count
  std::string impl_ = "cublaslt";
};

Status GemmKernel::launch(const Variant& v, const Chosen& c, int64_t m, cublasLtHandle_t lt,
                          cudaStream_t stream, const void* x, const void* residual, void* y,
                          char* scratch, bool release_next) const {
  if (v.own) {
    kernels::SmallGemmParams p;
    p.m = m;
    p.n = dims_.n;
    p.k = dims_.k;
    p.weights = weights_.get();
    p.scale = static_cast<const float*>(v.epi_scale.get());
    p.bias = v.epi_bias.ptr ? static_cast<const float*>(v.epi_bias.get()) : nullptr;
    p.residual = residual;
    p.residual_grid = r_grid_;
    p.act = act_;
    p.lo = clip_lo_;
    p.hi = clip_hi_;
    p.y_grid = y_grid_;
    p.release_next = release_next;
    const cudaError_t e = kernels::small_gemm_s8(x, y, p, stream);
    if (e != cudaSuccess) return cuda_status(e, "small int8 linear layer", __FILE__, __LINE__);
    return Status::Ok();
  }
  const size_t db = d_bytes(v, m), cb = c_bytes(v, m);
  void* d = v.to_scratch ? static_cast<void*>(scratch) : y;
  void* cptr = v.c != v.d ? static_cast<void*>(scratch + db) : d;
  void* ws = c.workspace ? static_cast<void*>(scratch + db + cb) : nullptr;
  const float alpha_f = v.alpha, beta_f = 0.0f;
  const int32_t alpha_i = 1, beta_i = 0;
  const bool int_scale = v.scale_type == CUDA_R_32I;
  CUBLAS_CHECK(cublasLtMatmul(
      lt, c.descs->op, int_scale ? static_cast<const void*>(&alpha_i) : &alpha_f, weights_.get(),
      c.descs->a, x, c.descs->b, int_scale ? static_cast<const void*>(&beta_i) : &beta_f, cptr,
      c.descs->c, d, c.descs->d, &c.algo, ws, c.workspace, stream));
  if (!v.to_scratch) return Status::Ok();
  kernels::EpilogueParams ep;
  ep.acc_dt = kernel_dtype(dtype_of(v.d));
  ep.scale = v.per_channel_epilogue ? static_cast<const float*>(v.epi_scale.get()) : nullptr;
  ep.scalar_scale = 1.0f;
  ep.bias = v.epi_bias.ptr ? static_cast<const float*>(v.epi_bias.get()) : nullptr;
  ep.residual = residual;
  ep.residual_grid = r_grid_;
  ep.act = act_;
  ep.lo = clip_lo_;
  ep.hi = clip_hi_;
  ep.rows = m;
  ep.cols = dims_.n;
  const cudaError_t e = kernels::epilogue(d, y, y_grid_, ep, stream);
  if (e != cudaSuccess) return cuda_status(e, "linear layer epilogue", __FILE__, __LINE__);
  return Status::Ok();
}

class GemmInstance final : public KernelInstance {
 public:
  GemmInstance(const GemmKernel& k, Chosen c, int64_t m) : k_(k), c_(std::move(c)), m_(m) {}
  size_t scratch_bytes() const override {
    const Variant& v = k_.variants_[size_t(c_.variant)];
    return k_.d_bytes(v, m_) + k_.c_bytes(v, m_) + c_.workspace;
  }
  bool waits_for_predecessor() const override { return k_.variants_[size_t(c_.variant)].own; }
  Status execute(const ExecContext& ctx) const override {
    CudaResources& res = resources_of(ctx);
    const void* residual = ctx.inputs.size() > 3 ? ctx.inputs[3].data : nullptr;
    return k_.launch(k_.variants_[size_t(c_.variant)], c_, m_, res.cublas, res.stream,
                     ctx.inputs[0].data, residual, ctx.outputs[0].data,
                     static_cast<char*>(ctx.scratch), ctx.successor_waits && overlap_enabled());
  }

 private:
  const GemmKernel& k_;
  Chosen c_;
  int64_t m_;
};

Status GemmKernel::warm_up(const Chosen& c, int64_t m, BuildResources& b) const {
  const Variant& v = variants_[size_t(c.variant)];
  const size_t xbytes = size_t(m * dims_.k) * dtype_size(node_.input(0)->dtype);
  const size_t ybytes = size_t(m * dims_.n) * dtype_size(node_.output(0)->dtype);
  const ir::Value* r = node_.input(3);
  const size_t rbytes = r ? size_t(m * dims_.n) * dtype_size(r->dtype) : 256;
  MIXQ_ASSIGN_OR_RETURN(void* x, b.scratch(0, xbytes));
  MIXQ_ASSIGN_OR_RETURN(void* y, b.scratch(1, ybytes));
  MIXQ_ASSIGN_OR_RETURN(void* res, b.scratch(2, rbytes));
  MIXQ_ASSIGN_OR_RETURN(void* scratch, b.scratch(3, d_bytes(v, m) + c_bytes(v, m) + c.workspace));
  CUDA_CHECK(cudaMemsetAsync(x, 0, xbytes, b.res->stream));
  CUDA_CHECK(cudaMemsetAsync(res, 0, rbytes, b.res->stream));
  MIXQ_RETURN_IF_ERROR(launch(v, c, m, b.res->cublas, b.res->stream, x, r ? res : nullptr, y,
                              static_cast<char*>(scratch)));
  CUDA_CHECK(cudaStreamSynchronize(b.res->stream));
  b.release_scratch();
  return Status::Ok();
}

Expected<Chosen> GemmKernel::tune(int64_t m, BuildResources& b, int only_variant,
                                  std::string* note) const {
  // Tuning data: random x (and residual), y, scratch.
  const DType in = input_dtype(precision_);
  const float amp = in == DType::kInt8 ? 64.0f : in == DType::kFloat8E4M3 ? 4.0f : 1.0f;
  MIXQ_ASSIGN_OR_RETURN(DeviceBuffer x, random_device(in, m * dims_.k, amp, 21));
  const ir::Value* r = node_.input(3);
  DeviceBuffer residual;
  if (r) {
    const float ramp = r->dtype == DType::kInt8 ? 32.0f : 1.0f;
    MIXQ_ASSIGN_OR_RETURN(residual, random_device(r->dtype, m * dims_.n, ramp, 22));
  }
  const ir::Value* yv = node_.output(0);
  const size_t ybytes = size_t(m * dims_.n) * dtype_size(yv->dtype);
  MIXQ_ASSIGN_OR_RETURN(void* y, b.scratch(0, ybytes));
  Chosen best;
  bool best_captured = false;
  double best_own_ms = 0, best_library_ms = 0;  // for the note
  int tried = 0, working = 0;
  std::string errors;
  const auto start = std::chrono::steady_clock::now();
  MIXQ_ASSIGN_OR_RETURN(const GemmImplementation implementation, gemm_implementation());
  const bool have_own =
      std::any_of(variants_.begin(), variants_.end(), [](const Variant& v) { return v.own; });
  for (size_t vi = 0; vi < variants_.size(); ++vi) {
    if (only_variant >= 0 && int(vi) != only_variant) continue;
    const Variant& v = variants_[vi];
    if ((v.own && implementation == GemmImplementation::kCublaslt) ||
        (!v.own && implementation == GemmImplementation::kOwn && have_own && only_variant < 0))
      continue;
    // Our kernel: one candidate, no descriptors.
    std::vector<cublasLtMatmulHeuristicResult_t> candidates(v.own ? 1 : 0);
    std::shared_ptr<Descs> descs;
    if (!v.own) {
      auto d = make_descs(v, m, dims_.n, dims_.k);
      if (!d.ok()) {
        errors += " [" + v.name + ": " + d.status().message().substr(0, 100) + "]";
        continue;
      }
      descs = *d;
      auto algos = heuristics(b.res->cublas, *descs, kHeuristicResults);
      if (!algos.ok()) {
        errors += " [" + v.name + ": no algorithm]";
        continue;
      }
      candidates = *algos;
    }
    for (const auto& h : candidates) {
      if (best.variant >= 0 &&
          (tried >= tune_max_candidates() ||
           std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() >
               tune_seconds()))
        break;
      ++tried;
      Chosen c;
      c.variant = int(vi);
      c.algo = h.algo;
      c.workspace = v.own ? 0 : h.workspaceSize;
      c.descs = descs;
      MIXQ_ASSIGN_OR_RETURN(void* scratch,
                            b.scratch(1, d_bytes(v, m) + c_bytes(v, m) + c.workspace));
      // Poisoned y: the run must overwrite every element (NaN for floats, -1 for s8).
      CUDA_CHECK(cudaMemsetAsync(y, 0xFF, ybytes, b.res->stream));
      Status ran = launch(v, c, m, b.res->cublas, b.res->stream, x.get(), residual.get(), y,
                          static_cast<char*>(scratch));
      if (ran.ok()) {
        const cudaError_t e = cudaStreamSynchronize(b.res->stream);
        if (e != cudaSuccess) ran = cuda_status(e, "tuning run", __FILE__, __LINE__);
      }
      if (ran.ok()) {
        std::vector<uint8_t> host(ybytes);
        CUDA_CHECK(cudaMemcpy(host.data(), y, ybytes, cudaMemcpyDeviceToHost));
        const size_t es = dtype_size(yv->dtype), total = ybytes / es;
        size_t untouched = 0;
        for (size_t i = 0; i < total; ++i) {
          bool poison = true;
          for (size_t j = 0; j < es && poison; ++j) poison = host[i * es + j] == 0xFF;
          untouched += poison;
        }
        if (es > 1 ? untouched > 0 : untouched == total) ran = Internal("outputs left unwritten");
      }
      if (!ran.ok()) {
        cudaGetLastError();
        errors += " [" + v.name + ": " + ran.message().substr(0, 100) + "]";
        continue;
      }
      ++working;
      bool captured = true;
      if (tuning_enabled(node_)) {
        auto t = time_launches(
            [&] {
              return launch(v, c, m, b.res->cublas, b.res->stream, x.get(), residual.get(), y,
                            static_cast<char*>(scratch));
            },
            b.res->stream, &captured);
        if (!t.ok()) {
          cudaGetLastError();
          continue;
        }
        c.ms = *t;
        double& kind_best = v.own ? best_own_ms : best_library_ms;
        if (kind_best == 0 || c.ms < kind_best) kind_best = c.ms;
      }
      // Algorithms a CUDA graph can capture first (the engine replays graphs), then time.
      if (best.variant < 0 || (captured && !best_captured) ||
          (captured == best_captured && c.ms < best.ms)) {
        best = c;
        best_captured = captured;
      }
      if (!tuning_enabled(node_)) break;
    }
    if (!tuning_enabled(node_) && best.variant >= 0) break;
  }
  b.release_scratch();
  if (best.variant < 0)
    return Unsupported("no cuBLASLt algorithm runs this " +
                       std::string(precision_name(precision_)) +
                       " linear layer (M=" + std::to_string(m) + " N=" + std::to_string(dims_.n) +
                       " K=" + std::to_string(dims_.k) + "):" + errors);
  if (note && !tuning_enabled(node_))
    *note = "untuned: first working algorithm";
  else if (note)
    *note = "tuned " + std::to_string(working) + "/" + std::to_string(tried) + " algorithms, " +
            std::to_string(best.ms * 1000.0).substr(0, 6) + " us";
  if (note && tuning_enabled(node_) && best_own_ms > 0 && best_library_ms > 0) {
    char buf[80];
    std::snprintf(buf, sizeof buf, "; own %.1f us, cuBLASLt %.1f us", best_own_ms * 1e3,
                  best_library_ms * 1e3);
    *note += buf;
  }
  return best;
}

Status GemmKernel::prepare(int64_t max_batch) {
  max_batch_ = max_batch;
  MIXQ_RETURN_IF_ERROR(static_checks(node_));
  const ir::Value* x = node_.input(0);
  const ir::Value* w = node_.input(1);
  const ir::Value* bv = node_.input(2);
  const ir::Value* r = node_.input(3);
  const ir::Value* y = node_.output(0);
  const DType in = input_dtype(precision_);
  if (x->dtype != in)
    return Internal("the input is " + std::string(dtype_name(x->dtype)) + "; a " +
                    std::string(precision_name(precision_)) + " linear layer reads " +
                    std::string(dtype_name(in)));
  dims_.n = w->constant.dim(0);
  dims_.k = w->constant.dim(1);
  dims_.m = rows_at(max_batch);
  const bool quant = quantized_precision(precision_);
  const bool y_quantized = stored_quantized(*y);
  if (y_quantized && y->quant->zero_point_at(0) != 0)
    return Unsupported("quantised outputs must be symmetric (zero point 0) on the GPU");
  const float sy = y_quantized ? y->quant->scale[0] : 1.0f;
  y_grid_ = value_grid(*y);
  if (r) r_grid_ = value_grid(*r);
  act_ = fused_activation(node_);
  clip_lo_ = node_.attr_float("mixq.clip_min", -INFINITY);
  clip_hi_ = node_.attr_float("mixq.clip_max", INFINITY);

  // Scales and biases, real units.
  const int64_t N = dims_.n;
  std::vector<float> sw(size_t(N), 1.0f), bias(size_t(N), 0.0f);
  float sx = 1.0f;
  bool per_tensor = true;
  if (quant) {
    if (!x->quant || x->quant->zero_point_at(0) != 0)
      return Unsupported("int8/fp8 inputs must be symmetric (zero point 0) with a scale");
    if (!w->quant || w->dtype != in)
      return Internal("weights are not quantised for " + std::string(precision_name(precision_)));
    sx = x->quant->scale[0];
    for (int64_t n = 0; n < N; ++n) {
      sw[size_t(n)] = w->quant->scale[w->quant->per_tensor() ? 0 : size_t(n)];
      per_tensor = per_tensor && sw[size_t(n)] == sw[0];
    }
  }
  if (bv) bias = bv->constant.to_float_vector();

  MIXQ_ASSIGN_OR_RETURN(BuildResources b, build_resources());
  {
    Tensor wt = w->constant.dtype() == in ? w->constant : w->constant.to(in);
    if (w->constant.dtype() != in && w->constant.dtype() != DType::kFloat32)
      return Internal("weights stored as " + std::string(dtype_name(w->constant.dtype())));
    MIXQ_ASSIGN_OR_RETURN(weights_, upload(wt.raw(), wt.nbytes()));
  }
  variants_ = variants_for(precision_, y->dtype, y_quantized, bv != nullptr, r != nullptr, act_,
                           per_tensor);
  MIXQ_ASSIGN_OR_RETURN(const GemmImplementation implementation, gemm_implementation());
  if (precision_ == Precision::kINT8 && implementation != GemmImplementation::kCublaslt &&
      kernels::small_gemm_s8_eligible(dims_.n, dims_.k)) {
    Variant v;
    v.name = "own s8 dot";
    v.own = true;
    v.per_channel_epilogue = true;
    variants_.push_back(v);
  }
  // Device data per variant.
  auto upload_floats = [](const std::vector<float>& v) {
    return upload(v.data(), v.size() * sizeof(float));
  };
  auto upload_as = [](const std::vector<float>& v, cudaDataType_t t) -> Expected<DeviceBuffer> {
    Tensor f = Tensor::from_vector<float>({int64_t(v.size())}, v);
    Tensor c = f.to(dtype_of(t));
    return upload(c.raw(), c.nbytes());
  };
  for (Variant& v : variants_) {
    if (v.to_scratch || v.own) {
      if (bv) {
        MIXQ_ASSIGN_OR_RETURN(v.epi_bias, upload_floats(bias));
      }
      if (v.per_channel_epilogue) {
        std::vector<float> s(static_cast<size_t>(N));
        for (int64_t n = 0; n < N; ++n) s[size_t(n)] = sx * sw[size_t(n)];
        MIXQ_ASSIGN_OR_RETURN(v.epi_scale, upload_floats(s));
      }
    }
    // The fused epilogue works in output units: y's scale for quantised outputs, else real.
    const float units = v.to_scratch || v.own ? 1.0f : sy;
    if (precision_ == Precision::kINT8 && !v.to_scratch && !v.own) v.alpha = sx * sw[0] / units;
    if (v.bias) {
      std::vector<float> b2(bias);
      for (float& e : b2) e /= units;
      MIXQ_ASSIGN_OR_RETURN(v.bias_data, upload_as(b2, v.bias_type));
    }
    if (v.scales == kOuterScales) {
      MIXQ_ASSIGN_OR_RETURN(v.a_scale, upload_floats(sw));
      MIXQ_ASSIGN_OR_RETURN(
          v.b_scale, upload_floats(std::vector<float>(size_t(std::max<int64_t>(dims_.m, 1)), sx)));
    } else if (v.scales == kScalarScales) {
      MIXQ_ASSIGN_OR_RETURN(v.a_scale, upload_floats({sw[0]}));
      MIXQ_ASSIGN_OR_RETURN(v.b_scale, upload_floats({sx}));
    }
    if (v.d_scale) {
      MIXQ_ASSIGN_OR_RETURN(v.d_scale_data, upload_floats({1.0f / sy}));
    }
  }

  // A recorded choice: "<tag>|v<variant>|<algorithm hex>".
  std::ostringstream sig;
  sig << precision_name(precision_) << " n" << dims_.n << " k" << dims_.k << " y"
      << dtype_name(y->dtype) << (y_quantized ? "q" : "") << " b" << (bv != nullptr) << " r"
      << (r != nullptr) << " a" << act_ << " pt" << per_tensor << " v" << variants_.size();
  signature_ = sig.str();
  const std::string tag = std::to_string(std::hash<std::string>{}(signature(dims_.m)));
  // The recorded choice ("<tag>|v<variant>|<algorithm hex>"), else what this process tuned for
  // the same layer shape before, else tune now.
  std::string note;
  std::string recorded = read_choice(node_, kChoiceAttr);
  const size_t bar = recorded.find('|');
  if (bar == std::string::npos || recorded.substr(0, bar) != tag) recorded.clear();
  const bool forced = implementation != GemmImplementation::kAuto;  // tunes among what it allows
  if (auto c = from_choice(recorded.empty() || forced ? "" : recorded.substr(bar + 1), dims_.m, b);
      c.ok()) {
    prepared_ = *c;
    note = "recorded choice";
  } else if (auto cc =
                 from_choice(forced ? "" : cached_choice(node_, signature(dims_.m)), dims_.m, b);
             cc.ok()) {
    prepared_ = *cc;
    note = "tuned before";
  } else {
    MIXQ_ASSIGN_OR_RETURN(prepared_, tune(dims_.m, b, -1, &note));
    if (!forced) cache_choice(node_, signature(dims_.m), choice_string(prepared_));
  }
  record_choice(node_, kChoiceAttr, tag + "|" + choice_string(prepared_));
  const Variant& v = variants_[size_t(prepared_.variant)];
  if (v.own) {
    impl_ = "mixq cuda small gemm s8 dot (s32 sums) + epilogue -> " +
            std::string(dtype_name(y->dtype)) + " [" + note + "]";
    return Status::Ok();
  }
  impl_ = "cublaslt " + std::string(precision_name(precision_)) + " " + v.name + " " +
          type_name(v.ab) + "->" + type_name(v.d) + (v.bias ? " +bias" : "") +
          (v.relu ? " +relu" : "") +
          (v.to_scratch ? " +own epilogue -> " + std::string(dtype_name(y->dtype)) : "") + " [" +
          note + "]";
  return Status::Ok();
}

Expected<std::unique_ptr<KernelInstance>> GemmKernel::instantiate(int64_t batch) const {
  if (prepared_.variant < 0) return Internal(node_.describe() + ": instantiate before prepare");
  const int64_t m = rows_at(batch);
  if (m == dims_.m) return std::unique_ptr<KernelInstance>(new GemmInstance(*this, prepared_, m));
  MIXQ_ASSIGN_OR_RETURN(BuildResources b, build_resources());
  // The maximum batch's variant and algorithm where cuBLASLt accepts them at this size, else what
  // this process tuned for this size before, else tune again.
  if (auto c = from_choice(choice_string(prepared_), m, b); c.ok())
    return std::unique_ptr<KernelInstance>(new GemmInstance(*this, *c, m));
  if (auto c = from_choice(cached_choice(node_, signature(m)), m, b); c.ok())
    return std::unique_ptr<KernelInstance>(new GemmInstance(*this, *c, m));
  auto c = tune(m, b, prepared_.variant, nullptr);
  if (!c.ok()) c = tune(m, b, -1, nullptr);
  if (!c.ok())
    return c.status().with_context(node_.describe() + " at batch " + std::to_string(batch));
  cache_choice(node_, signature(m), choice_string(*c));
  return std::unique_ptr<KernelInstance>(new GemmInstance(*this, *c, m));
}

Expected<Chosen> GemmKernel::from_choice(const std::string& choice, int64_t m,
                                         BuildResources& b) const {
  // "v<variant>|<algorithm hex>"
  const size_t bar = choice.find('|');
  if (choice.empty() || choice[0] != 'v' || bar == std::string::npos) return NotFound("no choice");
  const int vi = std::atoi(choice.substr(1, bar - 1).c_str());
  Chosen c;
  if (vi >= 0 && vi < int(variants_.size()) && variants_[size_t(vi)].own &&
      choice.substr(bar + 1) == "own") {
    c.variant = vi;
    MIXQ_RETURN_IF_ERROR(warm_up(c, m, b));
    return c;
  }
  if (vi < 0 || vi >= int(variants_.size()) || variants_[size_t(vi)].own ||
      !hex_decode(choice.substr(bar + 1), &c.algo, sizeof c.algo))
    return InvalidArgument("malformed choice '" + choice + "'");
  MIXQ_ASSIGN_OR_RETURN(c.descs, make_descs(variants_[size_t(vi)], m, dims_.n, dims_.k));
  cublasLtMatmulHeuristicResult_t check{};
  CUBLAS_CHECK(cublasLtMatmulAlgoCheck(b.res->cublas, c.descs->op, c.descs->a, c.descs->b,
                                       c.descs->c, c.descs->d, &c.algo, &check));
  if (check.workspaceSize > kMaxWorkspace) return Unsupported("workspace too large");
  c.variant = vi;
  c.workspace = check.workspaceSize;
  MIXQ_RETURN_IF_ERROR(warm_up(c, m, b));
  return c;
}

std::mutex g_supports_mutex;
std::map<std::string, std::string> g_supports;  // signature -> "" (supported) or the reason

}  // namespace

bool gemm_supports(const ir::Node& node, Precision p, std::string* why) {
  auto fail = [&](const std::string& m) {
    if (why) *why = m;
    return false;
  };
  if (node.op != ir::OpKind::kFusedGemm) return fail("not a linear layer");
  Status st = static_checks(node);
  if (!st.ok()) return fail(st.message());
  const ir::Value* x = node.input(0);
  const ir::Value* w = node.input(1);
  const int64_t n = w->constant.dim(0), k = w->constant.dim(1);
  const int64_t m = x->shape[0] > 0 ? x->shape[0] : 64;
  // The variants that always apply (library output to scratch + own epilogue): one must have an
  // algorithm. Scale pointers are not dereferenced by the heuristics; alignment-typical values.
  const std::vector<Variant> all =
      variants_for(p, DType::kFloat32, false, false, false, kernels::kActNone, false);
  std::ostringstream key;
  key << precision_name(p) << " " << m << "x" << n << "x" << k;
  {
    std::lock_guard<std::mutex> lock(g_supports_mutex);
    if (auto it = g_supports.find(key.str()); it != g_supports.end())
      return it->second.empty() ? true : fail(it->second);
  }
  auto b = build_resources();
  if (!b.ok()) return fail(b.status().message());
  auto scales = device_alloc(size_t(std::max<int64_t>(m, n)) * sizeof(float));
  if (!scales.ok()) return fail(scales.status().message());
  std::string reason = "cuBLASLt has no " + std::string(precision_name(p)) +
                       " algorithm for M=" + std::to_string(m) + " N=" + std::to_string(n) +
                       " K=" + std::to_string(k) +
                       (p == Precision::kFP8    ? " (fp8 needs K and N in multiples of 16)"
                        : p == Precision::kINT8 ? " (int8 needs K in multiples of 4)"
                                                : "");
  for (Variant v : all) {
    if (!v.to_scratch) continue;
    v.a_scale = *scales;
    v.b_scale = *scales;
    auto descs = make_descs(v, m, n, k);
    if (!descs.ok()) continue;
    if (heuristics(b->res->cublas, **descs, 1).ok()) {
      reason.clear();
      break;
    }
  }
  std::lock_guard<std::mutex> lock(g_supports_mutex);
  g_supports[key.str()] = reason;
  return reason.empty() ? true : fail(reason);
}

Expected<std::unique_ptr<Kernel>> make_gemm_kernel(const ir::Node& node, Precision precision) {
  return std::unique_ptr<Kernel>(new GemmKernel(node, precision));
}

}  // namespace mixq::backends::cuda
