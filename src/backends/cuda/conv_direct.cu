// Direct 2-D convolution for small filters (see kernels.h): one thread computes one output pixel
// for a tile of output channels. Every warp works on one channel tile, so its weights are
// warp-uniform reads from shared memory (broadcasts); the block's output rows are staged in shared
// memory and written with 16-byte stores.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <mma.h>

#include <algorithm>
#include <cstring>

#include "backends/cuda/kernels.h"
#include "backends/cuda/launch.cuh"
#include "backends/cuda/real_values.cuh"

namespace mixq::backends::cuda::kernels {

int sm_count() {
  static const int count = [] {
    int device = 0, n = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
      return 132;
    return n;
  }();
  return count;
}

namespace {

constexpr int kWarpsPerBlock = 8;
// 2 pixels per thread and at least 2 blocks per multiprocessor measured fastest on an H100 (stem
// s8 49 us against 72 with 4 pixels and no register cap).
constexpr int kPixelsPerThread = 2;
constexpr int64_t kStageBytes = 32 << 10;

// The stored code of element i (no scale or zero point: the epilogue applies them).
template <int DT>
__device__ __forceinline__ float code_at(const void* p, int i) {
  if constexpr (DT == kF16)
    return __half2float(static_cast<const __half*>(p)[i]);
  else if constexpr (DT == kBF16)
    return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  else if constexpr (DT == kS8)
    return float(static_cast<const int8_t*>(p)[i]);
  else if constexpr (DT == kE4M3)
    return float(static_cast<const __nv_fp8_e4m3*>(p)[i]);
  else
    return static_cast<const float*>(p)[i];
}

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

struct Launch {
  int tiles = 0;  // blocks of pixels
  int kg = 0;     // channel tiles
  int wp = 0;     // warps per channel tile
  int pb = 0;     // pixels per block: 32 * wp * kPixelsPerThread
  int weight_floats = 0, stage_bytes = 0;
};

Launch plan_launch(const DirectConvParams& p, int tile) {
  Launch l;
  l.kg = int(ceil_div(p.k, tile));
  l.wp = std::max(1, kWarpsPerBlock / l.kg);
  l.pb = 32 * l.wp * kPixelsPerThread;
  l.tiles = int(ceil_div(p.n * p.oh * p.ow, l.pb));
  l.weight_floats = l.kg * tile * int(p.c * p.r * p.s);
  const int64_t stage = int64_t(l.pb) * p.k * int64_t(grid_bytes(p.y_grid.dt));
  l.stage_bytes = stage <= kStageBytes ? int(stage) : 0;
  return l;
}

template <int RT, int P, int TILE>
__device__ __forceinline__ void add_residual(float (&acc)[P][TILE], const DirectConvParams& p,
                                             int first, int row, int step, int ch0, int count,
                                             const bool (&valid)[P]) {
#pragma unroll
  for (int q = 0; q < P; ++q) {
    if (!valid[q]) continue;
    const int64_t base = int64_t(first + row + q * step) * p.k + ch0;
#pragma unroll
    for (int j = 0; j < TILE; ++j)
      if (j < count) acc[q][j] += decode<RT>(p.residual, base + j, p.residual_grid);
  }
}

// Writes each pixel's TILE channels (from ch0; `count` of them are real): packed into 32-bit words
// and stored 16, 8 or 4 bytes at a time where the row allows, else element by element.
template <int YT, int P, int TILE>
__device__ __forceinline__ void store_pixels(const float (&acc)[P][TILE], unsigned char* out,
                                             int64_t out_first, int row, int step, int K, int ch0,
                                             int count, const bool (&valid)[P], const Grid& g) {
  using T = typename Stored<YT>::type;
  constexpr int kBytes = TILE * int(sizeof(T)), kWords = kBytes / 4;
  constexpr int kChunk = kBytes % 16 == 0 ? 16 : kBytes % 8 == 0 ? 8 : 4;
  const bool packed = count == TILE && (int64_t(K) * int64_t(sizeof(T))) % kChunk == 0;
#pragma unroll
  for (int q = 0; q < P; ++q) {
    if (!valid[q]) continue;
    unsigned char* dst = out + ((out_first + row + q * step) * K + ch0) * int64_t(sizeof(T));
    if (packed) {
      uint32_t w[kWords];
#pragma unroll
      for (int k = 0; k < kWords; ++k) w[k] = 0;
#pragma unroll
      for (int j = 0; j < TILE; ++j)
        w[j * int(sizeof(T)) / 4] |= bits_of(encode<YT>(acc[q][j], g))
                                     << (8 * ((j * int(sizeof(T))) % 4));
      if constexpr (kChunk == 16) {
#pragma unroll
        for (int k = 0; k < kWords / 4; ++k)
          reinterpret_cast<uint4*>(dst)[k] =
              make_uint4(w[4 * k], w[4 * k + 1], w[4 * k + 2], w[4 * k + 3]);
      } else if constexpr (kChunk == 8) {
#pragma unroll
        for (int k = 0; k < kWords / 2; ++k)
          reinterpret_cast<uint2*>(dst)[k] = make_uint2(w[2 * k], w[2 * k + 1]);
      } else {
#pragma unroll
        for (int k = 0; k < kWords; ++k) reinterpret_cast<uint32_t*>(dst)[k] = w[k];
      }
    } else {
#pragma unroll
      for (int j = 0; j < TILE; ++j)
        if (j < count) reinterpret_cast<T*>(dst)[j] = encode<YT>(acc[q][j], g);
    }
  }
}

// Each thread: kPixelsPerThread pixels (32 * wp apart, so a warp reads neighbouring pixels) x TILE
// output channels; 32-bit indices (direct_conv checks the sizes).
template <int DT, int TILE>
__global__ void __launch_bounds__(256, 2)
    direct_conv_kernel(const void* __restrict__ x, void* __restrict__ y, DirectConvParams p,
                       Launch l) {
  constexpr int P = kPixelsPerThread;
  release_dependents(p.release_next);
  extern __shared__ __align__(16) unsigned char smem[];
  float* w_s = reinterpret_cast<float*>(smem);
  unsigned char* stage = smem + size_t(l.weight_floats) * sizeof(float);
  const int C = int(p.c), H = int(p.h), W = int(p.w), K = int(p.k), OH = int(p.oh), OW = int(p.ow);
  const int taps = C * p.r * p.s;
  // Weights to shared memory once per block (the block walks several pixel tiles).
  for (int i = threadIdx.x; i < l.weight_floats; i += blockDim.x) w_s[i] = p.weights[i];
  wait_for_previous_grid();  // the weights are the layer's own: read while the previous kernel ends
  __syncthreads();

  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int kg = warp / l.wp, row = (warp % l.wp) * 32 + lane, step = 32 * l.wp;
  const int pixels = int(p.n * p.oh * p.ow);
  const int es = int(grid_bytes(p.y_grid.dt));
  const float4* w_tile = reinterpret_cast<const float4*>(w_s + kg * TILE * taps);
  for (int tile = blockIdx.x; tile < l.tiles; tile += gridDim.x) {
    const int first = tile * l.pb;
    int n[P], ih0[P], iw0[P];
    bool valid[P];
#pragma unroll
    for (int q = 0; q < P; ++q) {
      const int pixel = first + row + q * step;
      valid[q] = pixel < pixels;
      const int ow = pixel % OW, rest = pixel / OW;
      n[q] = rest / OH;
      ih0[q] = (rest % OH) * p.stride_h - p.pad_h;
      iw0[q] = ow * p.stride_w - p.pad_w;
    }
    float acc[P][TILE];
#pragma unroll
    for (int q = 0; q < P; ++q)
#pragma unroll
      for (int j = 0; j < TILE; ++j) acc[q][j] = 0.0f;
    const float4* wp = w_tile;
    for (int r = 0; r < p.r; ++r) {
      for (int s = 0; s < p.s; ++s) {
        int base[P];
        bool inside[P];
#pragma unroll
        for (int q = 0; q < P; ++q) {
          const int ih = ih0[q] + r * p.dil_h, iw = iw0[q] + s * p.dil_w;
          inside[q] = valid[q] && ih >= 0 && ih < H && iw >= 0 && iw < W;
          base[q] = ((n[q] * H + ih) * W + iw) * C;
        }
        for (int c = 0; c < C; ++c, wp += TILE / 4) {
          float v[P];
#pragma unroll
          for (int q = 0; q < P; ++q) v[q] = inside[q] ? code_at<DT>(x, base[q] + c) : 0.0f;
#pragma unroll
          for (int j = 0; j < TILE / 4; ++j) {
            const float4 w4 = wp[j];
#pragma unroll
            for (int q = 0; q < P; ++q) {
              acc[q][4 * j] = fmaf(v[q], w4.x, acc[q][4 * j]);
              acc[q][4 * j + 1] = fmaf(v[q], w4.y, acc[q][4 * j + 1]);
              acc[q][4 * j + 2] = fmaf(v[q], w4.z, acc[q][4 * j + 2]);
              acc[q][4 * j + 3] = fmaf(v[q], w4.w, acc[q][4 * j + 3]);
            }
          }
        }
      }
    }
    // Epilogue in registers; channels past K are computed and never stored.
    const int ch0 = kg * TILE, count = K - ch0 < TILE ? K - ch0 : TILE;
#pragma unroll
    for (int j = 0; j < TILE; ++j) {
      const int ch = ch0 + j < K ? ch0 + j : K - 1;
      const float scale = p.scale[ch], bias = p.bias ? p.bias[ch] : 0.0f;
#pragma unroll
      for (int q = 0; q < P; ++q) acc[q][j] = acc[q][j] * scale + bias;
    }
    if (p.residual)
      with_stored_type(p.residual_grid.dt, [&](auto t) {
        add_residual<decltype(t)::value, P, TILE>(acc, p, first, row, step, ch0, count, valid);
      });
#pragma unroll
    for (int q = 0; q < P; ++q)
#pragma unroll
      for (int j = 0; j < TILE; ++j) acc[q][j] = activate(acc[q][j], p.act, p.lo, p.hi);
    // To the stage (rows of the block) or straight to y.
    unsigned char* out = l.stage_bytes ? stage : static_cast<unsigned char*>(y);
    const int64_t out_first = l.stage_bytes ? 0 : first;
    with_stored_type(p.y_grid.dt, [&](auto t) {
      store_pixels<decltype(t)::value, P, TILE>(acc, out, out_first, row, step, K, ch0, count,
                                                valid, p.y_grid);
    });
    if (l.stage_bytes) {
      // The block's outputs are one contiguous run of y: copy it in 16-byte pieces.
      __syncthreads();
      const int bytes = (l.pb < pixels - first ? l.pb : pixels - first) * K * es;
      unsigned char* dst = static_cast<unsigned char*>(y) + int64_t(first) * K * es;
      const int vec = bytes / 16;
      for (int i = threadIdx.x; i < vec; i += blockDim.x)
        reinterpret_cast<uint4*>(dst)[i] = reinterpret_cast<const uint4*>(stage)[i];
      for (int i = vec * 16 + threadIdx.x; i < bytes; i += blockDim.x) dst[i] = stage[i];
      __syncthreads();
    }
  }
}

// --- the tensor-core form: an implicit GEMM per warp -------------------------------------------
// A warp computes 16 output pixels x KP channels: it gathers the 16 pixels' input patches (taps
// padded to TP, a multiple of 16) into shared memory as the A matrix, multiplies with the weights
// B [TP x KP] (shared, loaded once per block) by WMMA, stores the sums to shared memory and runs
// the epilogue from there: the tile's outputs are one contiguous run of y.
constexpr int kTcWarps = 4;

int round16(int64_t v) {
  return int((v + 15) / 16 * 16);
}

// The multiplied type: s8 stays s8 (s32 sums); e4m3 becomes the f16 it equals; f16, bf16 stay.
template <int DT>
struct TcType {
  using type = __half;
  using acc = float;
};
template <>
struct TcType<kS8> {
  using type = signed char;
  using acc = int;
};
template <>
struct TcType<kBF16> {
  using type = __nv_bfloat16;
  using acc = float;
};

template <int DT>
__device__ __forceinline__ typename TcType<DT>::type tc_code(const void* x, int i) {
  if constexpr (DT == kS8)
    return static_cast<const int8_t*>(x)[i];
  else if constexpr (DT == kBF16)
    return static_cast<const __nv_bfloat16*>(x)[i];
  else if constexpr (DT == kF16)
    return static_cast<const __half*>(x)[i];
  else
    return __float2half_rn(code_at<kE4M3>(x, i));  // exact: e4m3 values are f16 values
}

template <int DT>
__device__ __forceinline__ typename TcType<DT>::type tc_zero() {
  if constexpr (DT == kS8)
    return 0;
  else if constexpr (DT == kBF16)
    return __float2bfloat16_rn(0.0f);
  else
    return __float2half_rn(0.0f);
}

struct TcLaunch {
  int tp = 0, kp = 0;                            // taps and channels, padded to 16
  int tiles = 0;                                 // 16-pixel tiles
  size_t b_bytes = 0, a_bytes = 0, c_bytes = 0;  // per block; a and c per warp
};

template <int DT>
TcLaunch plan_tc(const DirectConvParams& p) {
  using T = typename TcType<DT>::type;
  TcLaunch l;
  l.tp = round16(p.c * p.r * p.s);
  l.kp = round16(p.k);
  l.tiles = int(ceil_div(p.n * p.oh * p.ow, 16));
  l.b_bytes = size_t(l.tp) * l.kp * sizeof(T);
  l.a_bytes = size_t(16) * l.tp * sizeof(T);
  l.c_bytes = size_t(16) * l.kp * 4;
  return l;
}

size_t tc_smem_bytes(const TcLaunch& l, const DirectConvParams& p) {
  return l.b_bytes + kTcWarps * (l.a_bytes + l.c_bytes) +
         size_t(3 * p.c * p.r * p.s + 48 * kTcWarps) * sizeof(int);
}

template <int DT, int YT>
__global__ void __launch_bounds__(32 * kTcWarps)
    direct_conv_tc_kernel(const void* __restrict__ x, void* __restrict__ y, DirectConvParams p,
                          TcLaunch l) {
  namespace wmma = nvcuda::wmma;
  using T = typename TcType<DT>::type;
  using Acc = typename TcType<DT>::acc;
  release_dependents(p.release_next);
  extern __shared__ __align__(128) unsigned char tc_smem[];
  unsigned char* smem = tc_smem;
  T* b_s = reinterpret_cast<T*>(smem);
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  T* a_s = reinterpret_cast<T*>(smem + l.b_bytes + size_t(warp) * l.a_bytes);
  Acc* c_s = reinterpret_cast<Acc*>(smem + l.b_bytes + kTcWarps * l.a_bytes + warp * l.c_bytes);
  // Per tap: its input offsets (row, column, channel), shared by the block.
  int* tap_s = reinterpret_cast<int*>(smem + l.b_bytes + kTcWarps * (l.a_bytes + l.c_bytes));
  const int C = int(p.c), H = int(p.h), W = int(p.w), K = int(p.k), OH = int(p.oh), OW = int(p.ow);
  const int taps = C * p.r * p.s;
  {
    const uint4* src = static_cast<const uint4*>(p.tc_weights);
    for (int i = threadIdx.x; i < int(l.b_bytes / 16); i += blockDim.x)
      reinterpret_cast<uint4*>(b_s)[i] = src[i];
    for (int t = threadIdx.x; t < taps; t += blockDim.x) {
      const int c = t % C, rs = t / C;
      tap_s[3 * t] = (rs / p.s) * p.dil_h;
      tap_s[3 * t + 1] = (rs % p.s) * p.dil_w;
      tap_s[3 * t + 2] = c;
    }
  }
  wait_for_previous_grid();  // weights and taps are the layer's own (launch.cuh)
  __syncthreads();
  const int pixels = int(p.n * p.oh * p.ow);
  const int n_tiles = l.kp / 16;
  // Per warp: its 16 pixels' image, first input row and column (image -1: past the end).
  int* pix_s = tap_s + 3 * taps + warp * 48;
  for (int tile = blockIdx.x * kTcWarps + warp; tile < l.tiles; tile += gridDim.x * kTcWarps) {
    const int first = tile * 16;
    if (lane < 16) {
      const int pixel = first + lane, ow = pixel % OW, rest = pixel / OW;
      pix_s[lane] = pixel < pixels ? rest / OH : -1;
      pix_s[16 + lane] = (rest % OH) * p.stride_h - p.pad_h;
      pix_s[32 + lane] = ow * p.stride_w - p.pad_w;
    }
    __syncwarp();
    // Gather A [16 x TP]: each lane takes taps lane, lane + 32, ... for all 16 pixels (zero
    // outside the image and past the taps).
    for (int t = lane; t < l.tp; t += 32) {
      const bool tap = t < taps;
      const int dh = tap ? tap_s[3 * t] : 0, dw = tap ? tap_s[3 * t + 1] : 0,
                c = tap ? tap_s[3 * t + 2] : 0;
      // All 16 loads in flight before the first store (the phases of a tile are latency-bound).
      T v[16];
#pragma unroll
      for (int m = 0; m < 16; ++m) {
        const int n = pix_s[m], ih = pix_s[16 + m] + dh, iw = pix_s[32 + m] + dw;
        v[m] = tap && n >= 0 && ih >= 0 && ih < H && iw >= 0 && iw < W
                   ? tc_code<DT>(x, ((n * H + ih) * W + iw) * C + c)
                   : tc_zero<DT>();
      }
#pragma unroll
      for (int m = 0; m < 16; ++m) a_s[m * l.tp + t] = v[m];
    }
    __syncwarp();
    // A's fragments once for every channel tile (at most kDirectTcTaps / 16 of them).
    constexpr int kSteps = kDirectTcTaps / 16;
    const int steps = l.tp / 16;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a[kSteps];
#pragma unroll
    for (int k = 0; k < kSteps; ++k)
      if (k < steps) wmma::load_matrix_sync(a[k], a_s + 16 * k, l.tp);
    for (int nt = 0; nt < n_tiles; ++nt) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, Acc> acc;
      wmma::fill_fragment(acc, Acc(0));
#pragma unroll
      for (int k = 0; k < kSteps; ++k) {
        if (k >= steps) break;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
        wmma::load_matrix_sync(b, b_s + size_t(16 * k) * l.kp + nt * 16, l.kp);
        wmma::mma_sync(acc, a[k], b, acc);
      }
      wmma::store_matrix_sync(c_s + nt * 16, acc, l.kp, wmma::mem_row_major);
    }
    __syncwarp();
    // Epilogue: each lane takes channels lane, lane + 32, ... of the 16 pixels; for one pixel the
    // lanes write neighbouring elements of y.
    using Y = typename Stored<YT>::type;
    const int rows = pixels - first < 16 ? pixels - first : 16;
    for (int ch = lane; ch < K; ch += 32) {
      const float scale = p.scale[ch], bias = p.bias ? p.bias[ch] : 0.0f;
#pragma unroll 16
      for (int m = 0; m < rows; ++m) {
        float v = float(c_s[m * l.kp + ch]) * scale + bias;
        const int64_t out = int64_t(first + m) * K + ch;
        if (p.residual) v += load_real(p.residual, out, p.residual_grid);
        static_cast<Y*>(y)[out] = encode<YT>(activate(v, p.act, p.lo, p.hi), p.y_grid);
      }
    }
    __syncwarp();
  }
}

template <int DT, int YT>
cudaError_t launch_tc_typed(const void* x, void* y, const DirectConvParams& p,
                            cudaStream_t stream) {
  const TcLaunch l = plan_tc<DT>(p);
  if (l.tiles == 0) return cudaSuccess;
  const size_t smem = tc_smem_bytes(l, p);
  const int blocks = std::min(int(ceil_div(l.tiles, kTcWarps)), sm_count() * 8);
  return launch_overlapped(direct_conv_tc_kernel<DT, YT>, dim3(unsigned(blocks)),
                           dim3(32 * kTcWarps), smem, stream, x, y, p, l);
}

template <int DT>
cudaError_t launch_tc(const void* x, void* y, const DirectConvParams& p, cudaStream_t stream) {
  cudaError_t e = cudaErrorInvalidValue;
  with_stored_type(p.y_grid.dt,
                   [&](auto t) { e = launch_tc_typed<DT, decltype(t)::value>(x, y, p, stream); });
  return e;
}

}  // namespace

bool direct_tensor_core_eligible(int x_dt, int64_t k, int64_t c, int64_t r, int64_t s) {
  if (!(x_dt == kF16 || x_dt == kBF16 || x_dt == kS8 || x_dt == kE4M3) ||
      c * r * s > kDirectTcTaps || k > kDirectTcChannels)
    return false;
  // Shared memory within the default 48 KiB of a launch.
  DirectConvParams p;
  p.n = p.oh = p.ow = 1;
  p.k = k;
  p.c = c;
  p.r = int(r);
  p.s = int(s);
  const TcLaunch l = x_dt == kS8 ? plan_tc<kS8>(p) : plan_tc<kF16>(p);
  return tc_smem_bytes(l, p) <= size_t(48) << 10;
}

int64_t direct_tc_weight_bytes(int x_dt, int64_t k, int64_t c, int64_t r, int64_t s) {
  return int64_t(round16(c * r * s)) * round16(k) * (x_dt == kS8 ? 1 : 2);
}

void direct_tc_pack_weights(int x_dt, const float* codes, int64_t K, int64_t C, int64_t R,
                            int64_t S, void* packed) {
  const int64_t kp = round16(K), bytes = direct_tc_weight_bytes(x_dt, K, C, R, S);
  std::memset(packed, 0, size_t(bytes));
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t s = 0; s < S; ++s) {
          const int64_t row = (r * S + s) * C + c, i = row * kp + k;
          const float v = codes[((k * C + c) * R + r) * S + s];
          if (x_dt == kS8)
            static_cast<int8_t*>(packed)[i] = int8_t(v);
          else if (x_dt == kBF16)
            static_cast<__nv_bfloat16*>(packed)[i] = __float2bfloat16_rn(v);
          else
            static_cast<__half*>(packed)[i] = __float2half_rn(v);
        }
}

namespace {

template <int DT, int TILE>
cudaError_t launch(const void* x, void* y, const DirectConvParams& p, cudaStream_t stream) {
  const Launch l = plan_launch(p, TILE);
  if (l.tiles == 0) return cudaSuccess;
  const unsigned threads = unsigned(32 * l.kg * l.wp);
  // A few resident blocks per multiprocessor, each walking pixel tiles: the weights are read into
  // shared memory once per block.
  const int blocks = std::min(l.tiles, sm_count() * int(2048 / threads));
  const size_t smem = size_t(l.weight_floats) * sizeof(float) + size_t(l.stage_bytes);
  return launch_overlapped(direct_conv_kernel<DT, TILE>, dim3(unsigned(blocks)),
                           dim3(unsigned(threads)), smem, stream, x, y, p, l);
}

template <int TILE>
cudaError_t launch_tile(const void* x, void* y, const DirectConvParams& p, cudaStream_t stream) {
  switch (p.x_dt) {
    case kF32:
      return launch<kF32, TILE>(x, y, p, stream);
    case kF16:
      return launch<kF16, TILE>(x, y, p, stream);
    case kBF16:
      return launch<kBF16, TILE>(x, y, p, stream);
    case kS8:
      return launch<kS8, TILE>(x, y, p, stream);
    case kE4M3:
      return launch<kE4M3, TILE>(x, y, p, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

int direct_channel_tile(int64_t k) {
  return k <= 8 ? 8 : 16;
}

void direct_pack_weights(const float* codes, int64_t K, int64_t C, int64_t R, int64_t S,
                         float* packed) {
  const int64_t tile = direct_channel_tile(K), taps = C * R * S;
  std::fill(packed, packed + direct_weight_count(K, C, R, S), 0.0f);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t s = 0; s < S; ++s)
          packed[((k / tile) * taps + (r * S + s) * C + c) * tile + k % tile] =
              codes[((k * C + c) * R + r) * S + s];
}

int64_t direct_weight_count(int64_t k, int64_t c, int64_t r, int64_t s) {
  const int64_t tile = direct_channel_tile(k);
  return ceil_div(k, tile) * tile * c * r * s;
}

cudaError_t direct_conv(const void* x, void* y, const DirectConvParams& p, cudaStream_t stream) {
  if (p.form == kDirectWindow) return window_conv(x, y, p, stream);
  if (p.pool_h || p.convert_input) return cudaErrorInvalidValue;  // only the window form does
  if (p.form == kDirectIgemm) return igemm_conv(x, y, p, stream);
  if (p.c * p.r * p.s > kDirectMaxTaps || p.k > kDirectMaxChannels ||
      direct_weight_count(p.k, p.c, p.r, p.s) > kDirectMaxWeights ||
      p.n * p.h * p.w * p.c > kDirectMaxElements || p.n * p.oh * p.ow * p.k > kDirectMaxElements)
    return cudaErrorInvalidValue;
  if (p.form == kDirectTc && p.tc_weights &&
      direct_tensor_core_eligible(p.x_dt, p.k, p.c, p.r, p.s)) {
    switch (p.x_dt) {
      case kF16:
        return launch_tc<kF16>(x, y, p, stream);
      case kBF16:
        return launch_tc<kBF16>(x, y, p, stream);
      case kS8:
        return launch_tc<kS8>(x, y, p, stream);
      default:
        return launch_tc<kE4M3>(x, y, p, stream);
    }
  }
  if (!p.weights) return cudaErrorInvalidValue;
  return direct_channel_tile(p.k) == 8 ? launch_tile<8>(x, y, p, stream)
                                       : launch_tile<16>(x, y, p, stream);
}

}  // namespace mixq::backends::cuda::kernels
