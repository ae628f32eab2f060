// The CUDA backend's own kernels: reformats (quantize, dequantize, requantize, dtype and
// NCHW<->NHWC changes in one pass), pooling, elementwise ops, concatenation and softmax. All are
// memory-bound: one thread per output element, dtypes dispatched in the kernel.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cmath>
#include <type_traits>

#include "backends/cuda/kernels.h"
#include "backends/cuda/real_values.cuh"

namespace mixq::backends::cuda::kernels {
namespace {

// Index arithmetic runs in 32 bits where the tensor allows it: 64-bit division and remainder are
// emulated in many instructions and made these memory-bound kernels compute-bound.
constexpr int64_t kMax32 = 0x7fffffff;

// Offset of logical (n, c, h, w) in a 4-D tensor of shape (N, C, H, W).
template <typename I>
__device__ __forceinline__ I offset4(I n, I c, I h, I w, I C, I H, I W, bool nhwc) {
  return nhwc ? ((n * H + h) * W + w) * C + c : ((n * C + c) * H + h) * W + w;
}

// Logical coordinates of physical index i.
template <typename I>
__device__ __forceinline__ void coords4(I i, I C, I H, I W, bool nhwc, I& n, I& c, I& h, I& w) {
  if (nhwc) {
    c = i % C;
    i /= C;
    w = i % W;
    i /= W;
    h = i % H;
    n = i / H;
  } else {
    w = i % W;
    i /= W;
    h = i % H;
    i /= H;
    c = i % C;
    n = i / C;
  }
}

// --- reformat
// ---------------------------------------------------------------------------------------

template <typename I>
__global__ void reformat_kernel(const void* x, Grid gx, void* y, Grid gy, I total, I C, I H, I W,
                                bool four_d) {
  const I i = I(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  I src = i;
  if (four_d && gx.nhwc != gy.nhwc) {
    I n, c, h, w;
    coords4(i, C, H, W, gy.nhwc, n, c, h, w);
    src = offset4(n, c, h, w, C, H, W, gx.nhwc);
  }
  store_real(y, i, load_real(x, src, gx), gy);
}

template <typename I>
__global__ void pool_kernel(const void* x, Grid gx, void* y, Grid gy, PoolParams p) {
  const I i = I(blockIdx.x) * blockDim.x + threadIdx.x;
  const I total = I(p.N * p.C * p.OH * p.OW);
  if (i >= total) return;
  I n, c, oh, ow;
  coords4<I>(i, I(p.C), I(p.OH), I(p.OW), gy.nhwc, n, c, oh, ow);
  float acc = p.max ? -INFINITY : 0.0f;
  int count = 0;
  const I H = I(p.H), W = I(p.W), C = I(p.C);
  for (int a = 0; a < p.kh; ++a) {
    const I h = oh * p.sh - p.ph + a * p.dh;
    for (int b = 0; b < p.kw; ++b) {
      const I w = ow * p.sw - p.pw + b * p.dw;
      const bool inside = h >= 0 && h < H && w >= 0 && w < W;
      if (!inside) {
        if (!p.max && p.count_pad && h < p.pad_h_end && w < p.pad_w_end) ++count;
        continue;
      }
      const float v = load_real(x, int64_t(offset4<I>(n, c, h, w, C, H, W, gx.nhwc)), gx);
      if (p.max)
        acc = fmaxf(acc, v);
      else
        acc += v;
      ++count;
    }
  }
  if (!p.max) acc = count ? acc / float(count) : 0.0f;
  store_real(y, i, acc, gy);
}

__global__ void unary_kernel(const void* x, Grid gx, void* y, Grid gy, int64_t total, int op,
                             float a, float b) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  float v = load_real(x, i, gx);
  switch (op) {
    case kRelu:
      v = fmaxf(v, 0.0f);
      break;
    case kClip:
      v = fminf(fmaxf(v, a), b);
      break;
    case kSigmoid:
      v = 1.0f / (1.0f + __expf(-v));
      break;
    case kTanh:
      v = tanhf(v);
      break;
    case kLeakyRelu:
      v = v >= 0 ? v : a * v;
      break;
    case kHardSwish:
      v = v * fminf(fmaxf(v / 6.0f + 0.5f, 0.0f), 1.0f);
      break;
    case kHardSigmoid:
      v = fminf(fmaxf(a * v + b, 0.0f), 1.0f);
      break;
  }
  store_real(y, i, v, gy);
}

__global__ void binary_kernel(const void* x, Grid gx, const void* z, Grid gz, void* y, Grid gy,
                              int64_t total, Strides s, int op, bool same_layout) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  int64_t ia = i, ib = i;
  if (!same_layout) {
    ia = 0;
    ib = 0;
    int64_t rest = i;
    for (int d = s.rank - 1; d >= 0; --d) {
      const int64_t k = rest % s.out[d];
      rest /= s.out[d];
      ia += k * s.a[d];
      ib += k * s.b[d];
    }
  }
  const float u = load_real(x, ia, gx), v = load_real(z, ib, gz);
  float r = 0;
  switch (op) {
    case kAdd:
      r = u + v;
      break;
    case kSub:
      r = u - v;
      break;
    case kMul:
      r = u * v;
      break;
    case kDiv:
      r = u / v;
      break;
  }
  store_real(y, i, r, gy);
}

// --- concat -------------------------------------------------------------------------------------
// Rows of `row_bytes` from x (rows `x_pitch` bytes apart) to y (rows `y_pitch` apart): one
// input's slice of a concatenation (outer x [axis extent] x inner, physically).
__global__ void copy_rows_kernel(const char* x, char* y, int64_t rows, int64_t row_bytes,
                                 int64_t x_pitch, int64_t y_pitch) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * row_bytes) return;
  const int64_t o = i / row_bytes, r = i % row_bytes;
  y[o * y_pitch + r] = x[o * x_pitch + r];
}

// The element of x that y's element i reads.
__device__ __forceinline__ int64_t permute_source(const Permute& p, int64_t i) {
  int64_t src = p.src_offset;
  for (int d = p.rank - 1; d >= 0; --d) {
    src += (i % p.out[d]) * p.src_stride[d];
    i /= p.out[d];
  }
  return src;
}

template <typename T>
__global__ void permute_kernel(const T* x, T* y, Permute p, int64_t total) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < total) y[i] = x[permute_source(p, i)];
}

// The same element moves between two formats (dtype, scale or zero point differ).
__global__ void permute_convert_kernel(const void* x, Grid gx, void* y, Grid gy, Permute p,
                                       int64_t total) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < total) store_real(y, i, load_real(x, permute_source(p, i), gx), gy);
}

// --- reductions ----------------------------------------------------------------------------------
// One thread per output: memory-bound for the small reductions models end with (global means).
__global__ void reduce_kernel(const void* x, Grid gx, void* y, Grid gy, ReduceParams p) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.outputs) return;
  int64_t rest = i, base = 0;
  for (int d = p.kept_rank - 1; d >= 0; --d) {
    base += (rest % p.kept[d]) * p.kept_stride[d];
    rest /= p.kept[d];
  }
  float acc = p.kind == kReduceMax ? -INFINITY : p.kind == kReduceMin ? INFINITY : 0.0f;
  for (int64_t j = 0; j < p.count; ++j) {
    int64_t r = j, offset = base;
    for (int d = p.reduced_rank - 1; d >= 0; --d) {
      offset += (r % p.reduced[d]) * p.reduced_stride[d];
      r /= p.reduced[d];
    }
    const float v = load_real(x, offset, gx);
    if (p.kind == kReduceMax)
      acc = fmaxf(acc, v);
    else if (p.kind == kReduceMin)
      acc = fminf(acc, v);
    else
      acc += v;
  }
  if (p.kind == kReduceMean) acc /= float(p.count);
  store_real(y, i, acc, gy);
}

// --- softmax over the last axis ------------------------------------------------------------------
__global__ void softmax_kernel(const void* x, Grid gx, void* y, Grid gy, int64_t rows, int64_t cols,
                               bool log) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  float m = -INFINITY;
  for (int64_t c = 0; c < cols; ++c) m = fmaxf(m, load_real(x, r * cols + c, gx));
  float sum = 0;
  for (int64_t c = 0; c < cols; ++c) sum += __expf(load_real(x, r * cols + c, gx) - m);
  for (int64_t c = 0; c < cols; ++c) {
    const float v = load_real(x, r * cols + c, gx) - m;
    store_real(y, r * cols + c, log ? v - __logf(sum) : __expf(v) / sum, gy);
  }
}

// --- epilogue after a library GEMM / convolution
// -----------------------------------------------------
__device__ __forceinline__ float load_acc(const void* p, int64_t i, int dt) {
  switch (dt) {
    case kI32:
      return float(static_cast<const int32_t*>(p)[i]);
    case kF16:
      return __half2float(static_cast<const __half*>(p)[i]);
    case kBF16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default:
      return static_cast<const float*>(p)[i];
  }
}

// One thread per element (memory-bound); the column is the innermost index (output channel).
__global__ void epilogue_kernel(const void* acc, void* y, Grid gy, EpilogueParams p) {
  const int64_t total = p.rows * p.cols;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  // 32-bit remainder where the sizes allow it (a 64-bit one costs ~4x the instructions).
  const int64_t c = total <= 0x7fffffff ? int64_t(uint32_t(i) % uint32_t(p.cols)) : i % p.cols;
  float v = load_acc(acc, i, p.acc_dt) * (p.scale ? p.scale[c] : p.scalar_scale);
  if (p.bias) v += p.bias[c];
  if (p.residual) v += load_real(p.residual, i, p.residual_grid);
  store_real(y, i, activate(v, p.act, p.lo, p.hi), gy);
}

template <typename T>
__global__ void pad_channels_kernel(const T* x, T* y, int64_t total, int64_t c, int64_t padded_c) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int64_t pixel = i / padded_c, ch = i - pixel * padded_c;
  y[i] = ch < c ? x[pixel * c + ch] : T(0);
}

inline unsigned blocks_for(int64_t n) {
  return unsigned((n + kThreads - 1) / kThreads);
}

// Calls f with a null pointer of the unsigned type of `bytes` per element (1, 2, 4, else 8), for
// kernels that only move elements.
template <typename F>
void with_element_type(size_t bytes, F&& f) {
  switch (bytes) {
    case 1:
      f(static_cast<uint8_t*>(nullptr));
      break;
    case 2:
      f(static_cast<uint16_t*>(nullptr));
      break;
    case 4:
      f(static_cast<uint32_t*>(nullptr));
      break;
    default:
      f(static_cast<uint64_t*>(nullptr));
  }
}

}  // namespace

cudaError_t reformat(const void* x, Grid gx, void* y, Grid gy, int64_t total, int64_t C, int64_t H,
                     int64_t W, bool four_d, cudaStream_t stream) {
  if (total <= 0) return cudaSuccess;
  if (total <= kMax32)
    reformat_kernel<int><<<blocks_for(total), kThreads, 0, stream>>>(
        x, gx, y, gy, int(total), int(C), int(H), int(W), four_d);
  else
    reformat_kernel<int64_t>
        <<<blocks_for(total), kThreads, 0, stream>>>(x, gx, y, gy, total, C, H, W, four_d);
  return cudaGetLastError();
}

cudaError_t pool(const void* x, Grid gx, void* y, Grid gy, const PoolParams& p,
                 cudaStream_t stream) {
  const int64_t total = p.N * p.C * p.OH * p.OW;
  if (total <= 0) return cudaSuccess;
  if (total <= kMax32 && p.N * p.C * p.H * p.W <= kMax32)
    pool_kernel<int><<<blocks_for(total), kThreads, 0, stream>>>(x, gx, y, gy, p);
  else
    pool_kernel<int64_t><<<blocks_for(total), kThreads, 0, stream>>>(x, gx, y, gy, p);
  return cudaGetLastError();
}

cudaError_t unary(const void* x, Grid gx, void* y, Grid gy, int64_t total, int op, float a, float b,
                  cudaStream_t stream) {
  if (total > 0)
    unary_kernel<<<blocks_for(total), kThreads, 0, stream>>>(x, gx, y, gy, total, op, a, b);
  return cudaGetLastError();
}

cudaError_t binary(const void* x, Grid gx, const void* z, Grid gz, void* y, Grid gy, int64_t total,
                   const Strides& s, int op, bool same_layout, cudaStream_t stream) {
  if (total > 0)
    binary_kernel<<<blocks_for(total), kThreads, 0, stream>>>(x, gx, z, gz, y, gy, total, s, op,
                                                              same_layout);
  return cudaGetLastError();
}

static cudaError_t copy_rows(const char* x, char* y, int64_t rows, int64_t row_bytes,
                             int64_t x_pitch, int64_t y_pitch, cudaStream_t stream) {
  if (rows * row_bytes > 0)
    copy_rows_kernel<<<blocks_for(rows * row_bytes), kThreads, 0, stream>>>(x, y, rows, row_bytes,
                                                                            x_pitch, y_pitch);
  return cudaGetLastError();
}

cudaError_t concat_slice(const void* x, void* y, int64_t outer, int64_t x_mid, int64_t y_mid,
                         int64_t offset, int64_t inner_bytes, cudaStream_t stream) {
  return copy_rows(static_cast<const char*>(x), static_cast<char*>(y) + offset * inner_bytes, outer,
                   x_mid * inner_bytes, x_mid * inner_bytes, y_mid * inner_bytes, stream);
}

cudaError_t reduce(const void* x, Grid gx, void* y, Grid gy, const ReduceParams& p,
                   cudaStream_t stream) {
  if (p.outputs > 0) reduce_kernel<<<blocks_for(p.outputs), kThreads, 0, stream>>>(x, gx, y, gy, p);
  return cudaGetLastError();
}

cudaError_t softmax(const void* x, Grid gx, void* y, Grid gy, int64_t rows, int64_t cols, bool log,
                    cudaStream_t stream) {
  if (rows > 0)
    softmax_kernel<<<blocks_for(rows), kThreads, 0, stream>>>(x, gx, y, gy, rows, cols, log);
  return cudaGetLastError();
}

cudaError_t pad_channels(const void* x, void* y, int64_t pixels, int64_t c, int64_t padded_c,
                         size_t element_bytes, cudaStream_t stream) {
  const int64_t total = pixels * padded_c;
  if (total <= 0) return cudaSuccess;
  with_element_type(element_bytes, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    pad_channels_kernel<<<blocks_for(total), kThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<T*>(y), total, c, padded_c);
  });
  return cudaGetLastError();
}

cudaError_t permute(const void* x, Grid gx, void* y, Grid gy, const Permute& p, int64_t total,
                    cudaStream_t stream) {
  if (total <= 0) return cudaSuccess;
  if (gx.dt != gy.dt || gx.scale != gy.scale || gx.zero != gy.zero) {
    permute_convert_kernel<<<blocks_for(total), kThreads, 0, stream>>>(x, gx, y, gy, p, total);
    return cudaGetLastError();
  }
  with_element_type(grid_bytes(gx.dt), [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    permute_kernel<<<blocks_for(total), kThreads, 0, stream>>>(static_cast<const T*>(x),
                                                               static_cast<T*>(y), p, total);
  });
  return cudaGetLastError();
}

cudaError_t epilogue(const void* acc, void* y, Grid gy, const EpilogueParams& p,
                     cudaStream_t stream) {
  const int64_t total = p.rows * p.cols;
  if (total > 0) epilogue_kernel<<<blocks_for(total), kThreads, 0, stream>>>(acc, y, gy, p);
  return cudaGetLastError();
}

}  // namespace mixq::backends::cuda::kernels
