// Implicit-GEMM convolution on tensor cores (see kernels.h, igemm_conv). A block computes 128
// output pixels (a tile of TH x TW pixels in each of IMG images) x 64 output channels. Per 64-byte
// chunk of input channels it loads, by cp.async, the input window its tile reads (the "halo": every
// input pixel once, zero outside the image) and the chunk's weights for every tap into shared
// memory; the A fragments are then read straight from the halo, one row address per lane for
// ldmatrix, for each tap in turn: no im2col copy, and each input byte crosses L2 once per tile
// rather than once per tap. Weights are stored per output channel with the taps contiguous (the
// column-major B of the tensor cores' mma). Eight warps each multiply a 32 x 32 sub-tile with
// mma.sync (m16n8k32 for s8 and e4m3, m16n8k16 for f16 and bf16: 32 bytes of K per step for all
// four, so the fragments are addressed alike). Blocks stay resident and walk tiles in two stages
// (the next step's loads fly while this one multiplies); where every chunk's weights fit, they are
// loaded once per block. The epilogue runs on the sums in registers, stages y in the halo's place
// (a residual of y's format is staged there first, read with 16-byte vectors) and writes it out in
// 16-byte vectors.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>

#include "backends/cuda/cp_async.cuh"
#include "backends/cuda/kernels.h"
#include "backends/cuda/launch.cuh"
#include "backends/cuda/mma.cuh"
#include "backends/cuda/real_values.cuh"

namespace mixq::backends::cuda::kernels {
namespace {

// A block: 64 * kMt output pixels x 64 output channels; a warp 16 * kMt pixels x 32 channels.
// Measured on an H100 (ResNet18's layer1 at int8, batch 128): kMt 2 with at most 128 registers
// (two blocks per multiprocessor) 33 us; kMt 4 the same; three blocks per multiprocessor (80
// registers, spilling) 33-37 us and slower on the deeper layers; unrolling the tap loop no gain.
constexpr int kMt = 2;
constexpr int kMinBlocks = 2;
constexpr int kBlockM = 64 * kMt, kBlockN = 64;
constexpr int kChunk = 64;              // bytes of input channels per pass
constexpr int kRowBytes = kChunk + 16;  // a halo row (one input pixel's chunk), padded
constexpr int kWarpsM = 4, kWarpsN = 2;
constexpr int kThreads = 32 * kWarpsM * kWarpsN;
constexpr int kMaxTaps = 9;  // R * S (the weights of a chunk stay in shared memory)
constexpr size_t kMaxSmem = 227 << 10;

// Four 8x8 matrices of 16-bit elements (8 rows of 16 bytes each); lanes 8i..8i+7 give the rows of
// matrix i, register i of every lane receives its part of matrix i.
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], unsigned smem_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address));
}

// The block's tiling of the output and its shared memory.
struct HaloPlan {
  int th = 0, tw = 0, img = 0;     // a tile: th x tw pixels in each of img images (product 128)
  int tw_log2 = 0, tile_log2 = 0;  // all three are powers of two: pixel m of a tile is image
                                   // m >> tile_log2, row (m >> tw_log2) & (th - 1), column
                                   // m & (tw - 1)
  int hh = 0, hw = 0;              // the halo of one image's tile: rows, columns
  int halo_rows = 0;               // img * hh * hw
  int tiles_n = 0, tiles_h = 0, tiles_w = 0, tiles = 0;
  int chunks = 0;       // 64-byte chunks of the input channels
  int taps = 0;         // R * S
  int b_ld = 0;         // bytes per output channel of the weights' tile
  int tp = 0;           // taps per output channel of the packed weights (C R S padded to 16)
  int kp = 0;           // output channels of the packed weights (padded to 16)
  int b_bytes = 0;      // the weights' tile of one chunk
  int b_tiles = 0;      // weights' tiles in shared memory: every chunk's (loaded once per
                        // block) where they fit, else one per stage
  int x_bytes = 0;      // a stage's halo, or the staged output tile (they take turns)
  int table_bytes = 0;  // per halo row: its image, row and column in the tile's window;
                        // then the block's channels' scales and biases
  size_t smem = 0;
};

int pow2_at_least(int64_t v) {
  int p = 1;
  while (p < v) p *= 2;
  return p;
}

HaloPlan plan_halo(const DirectConvParams& p, int elem) {
  HaloPlan h;
  h.tw = std::min(16, pow2_at_least(p.ow));
  h.th = std::min(kBlockM / h.tw, pow2_at_least(p.oh));
  h.img = kBlockM / (h.th * h.tw);
  while ((1 << h.tw_log2) < h.tw) ++h.tw_log2;
  while ((1 << h.tile_log2) < h.th * h.tw) ++h.tile_log2;
  h.hh = (h.th - 1) * p.stride_h + (p.r - 1) * p.dil_h + 1;
  h.hw = (h.tw - 1) * p.stride_w + (p.s - 1) * p.dil_w + 1;
  h.halo_rows = h.img * h.hh * h.hw;
  h.tiles_n = int((p.n + h.img - 1) / h.img);
  h.tiles_h = int((p.oh + h.th - 1) / h.th);
  h.tiles_w = int((p.ow + h.tw - 1) / h.tw);
  h.tiles = h.tiles_n * h.tiles_h * h.tiles_w;
  h.chunks = int(p.c * elem / kChunk);
  h.taps = p.r * p.s;
  h.b_ld = h.taps * kChunk + 16;
  h.tp = int((p.c * p.r * p.s + 15) / 16 * 16);
  h.kp = int((p.k + 15) / 16 * 16);
  h.b_bytes = kBlockN * h.b_ld;
  h.x_bytes =
      std::max(h.halo_rows * kRowBytes, kBlockM * (kBlockN * int(grid_bytes(p.y_grid.dt)) + 16));
  h.table_bytes = (h.halo_rows * 4 + 15) / 16 * 16 + 2 * kBlockN * 4;
  const size_t rest = 2 * size_t(h.x_bytes) + size_t(h.table_bytes);
  // Resident where two blocks still fit a multiprocessor.
  h.b_tiles =
      h.chunks == 1 || size_t(h.chunks) * h.b_bytes + rest <= kMaxSmem / 2 - 1024 ? h.chunks : 2;
  h.smem = size_t(h.b_tiles) * h.b_bytes + rest;
  return h;
}

template <int DT, int YT>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    igemm_conv_kernel(const void* __restrict__ x, void* __restrict__ y, DirectConvParams p,
                      HaloPlan h) {
  using Acc = typename Mma<DT>::acc;
  constexpr int kElem = Mma<DT>::kElem;
  release_dependents(p.release_next);
  extern __shared__ __align__(128) unsigned char igemm_smem[];
  // Two stages, each a halo (and a weights' tile where they are not all resident): the loads of
  // step s + 1 (a tile's chunk) fly while step s multiplies.
  const bool resident = h.b_tiles == h.chunks;
  unsigned char* x_s = igemm_smem + h.b_tiles * h.b_bytes;
  // Halo row -> (image << 20 | row << 10 | column) in the window, once per block.
  unsigned* table = reinterpret_cast<unsigned*>(x_s + 2 * h.x_bytes);
  for (int row = int(threadIdx.x); row < h.halo_rows; row += kThreads)
    table[row] = unsigned(row / (h.hh * h.hw)) << 20 | unsigned((row / h.hw) % h.hh) << 10 |
                 unsigned(row % h.hw);
  float* scale_s =
      reinterpret_cast<float*>(reinterpret_cast<unsigned char*>(table) + h.table_bytes) -
      2 * kBlockN;
  float* bias_s = scale_s + kBlockN;
  if (threadIdx.x < kBlockN) {
    const int k = int(blockIdx.y) * kBlockN + int(threadIdx.x);
    scale_s[threadIdx.x] = k < p.k ? p.scale[k] : 0.0f;
    bias_s[threadIdx.x] = k < p.k && p.bias ? p.bias[k] : 0.0f;
  }
  // Everything above is the layer's own: set up while the previous kernel ends (launch.cuh).
  wait_for_previous_grid();
  __syncthreads();
  const unsigned b_sa = unsigned(__cvta_generic_to_shared(igemm_smem));
  const unsigned x_sa = unsigned(__cvta_generic_to_shared(x_s));
  const int tid = int(threadIdx.x), warp = tid / 32, lane = tid % 32;
  const int n0 = int(blockIdx.y) * kBlockN;
  const int C = int(p.c), H = int(p.h), W = int(p.w), K = int(p.k);
  const int OH = int(p.oh), OW = int(p.ow), N = int(p.n);
  const char* xb = static_cast<const char*>(x);
  const char* wb = static_cast<const char*>(p.tc_weights);
  const int wm = (warp % kWarpsM) * 16 * kMt, wn = (warp / kWarpsM) * 32;

  // This lane's ldmatrix rows: A rows wm + 16 i + lane % 16 (their halo rows at tap 0), at byte
  // 16 (lane / 16) of each 32-byte step; B channels wn + 16 j + lane % 8 + 8 (lane / 16), at byte
  // 16 ((lane / 8) % 2).
  int a_row[kMt];
#pragma unroll
  for (int i = 0; i < kMt; ++i) {
    const int m = wm + 16 * i + lane % 16, im = m >> h.tile_log2,
              ty = (m >> h.tw_log2) & (h.th - 1), tx = m & (h.tw - 1);
    a_row[i] = (im * h.hh + ty * p.stride_h) * h.hw + tx * p.stride_w;
  }
  const unsigned a_col = unsigned((lane / 16) * 16);
  const unsigned b_lane =
      unsigned((wn + lane % 8 + (lane / 16) * 8) * h.b_ld + ((lane / 8) % 2) * 16);

  // The block's steps: its tiles blockIdx.x, + gridDim.x, ..., each in h.chunks chunks.
  const int my_tiles = (h.tiles - int(blockIdx.x) + int(gridDim.x) - 1) / int(gridDim.x);
  const int steps = my_tiles * h.chunks;
  struct Origin {
    int img0, oh0, ow0;
  };
  auto origin = [&](int tile) {
    const int tw_i = tile % h.tiles_w, rest = tile / h.tiles_w;
    return Origin{(rest / h.tiles_h) * h.img, (rest % h.tiles_h) * h.th, tw_i * h.tw};
  };
  // Loads step `step` (the chunk `chunk` of the tile at `o`).
  auto issue = [&](int step, int chunk, const Origin& o) {
    const int stage = step % 2;
    if (!resident || step < h.chunks) {
      // Weights: per output channel, per tap, the chunk's 64 bytes.
      unsigned char* b_s = igemm_smem + (resident ? chunk : stage) * h.b_bytes;
      const int per_n = h.taps * (kChunk / 16);
      for (int v = tid; v < kBlockN * per_n; v += kThreads) {
        const int n = v / per_n, r = v - n * per_n, tap = r / (kChunk / 16), q = r % (kChunk / 16);
        const bool valid = n0 + n < h.kp;
        const size_t src = valid ? size_t(n0 + n) * h.tp * kElem + size_t(tap) * C * kElem +
                                       size_t(chunk) * kChunk + q * 16
                                 : 0;
        cp_async16(b_s + n * h.b_ld + tap * kChunk + q * 16, wb + src, valid);
      }
    }
    // The halo: every input pixel the tile reads, the chunk's 64 bytes each.
    const int ih0 = o.oh0 * p.stride_h - p.pad_h, iw0 = o.ow0 * p.stride_w - p.pad_w;
    unsigned char* halo = x_s + stage * h.x_bytes;
    for (int v = tid; v < h.halo_rows * (kChunk / 16); v += kThreads) {
      const int row = v / (kChunk / 16), q = v % (kChunk / 16);
      const unsigned where = table[row];
      const int n = o.img0 + int(where >> 20), ih = ih0 + int((where >> 10) & 1023),
                iw = iw0 + int(where & 1023);
      const bool valid = n < N && ih >= 0 && ih < H && iw >= 0 && iw < W;
      const size_t src =
          valid ? (size_t((n * H + ih) * W + iw) * C) * kElem + size_t(chunk) * kChunk + q * 16 : 0;
      cp_async16(halo + row * kRowBytes + q * 16, xb + src, valid);
    }
  };

  Acc acc[kMt][4][4];
  // The current step's tile and chunk, and the next step's.
  Origin here = origin(int(blockIdx.x)), next = here;
  int chunk = 0, next_chunk = 0, next_tile = int(blockIdx.x);
  if (steps > 0) issue(0, 0, here);
  cp_async_commit();
  for (int step = 0; step < steps; ++step) {
    if (step + 1 < steps) {
      if (++next_chunk == h.chunks) {
        next_chunk = 0;
        next_tile += int(gridDim.x);
        next = origin(next_tile);
      }
      issue(step + 1, next_chunk, next);
    }
    cp_async_commit();
    cp_async_wait<1>();  // this step's loads are in
    __syncthreads();
    const int stage = step % 2;
    if (chunk == 0) {
#pragma unroll
      for (int i = 0; i < kMt; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[i][j][e] = Acc(0);
    }
    const unsigned halo_sa = x_sa + unsigned(stage * h.x_bytes);
    const unsigned b_stage = b_sa + unsigned((resident ? chunk : stage) * h.b_bytes) + b_lane;
    // Tap (r, s) reads the halo rows r dil_h hw + s dil_w further on.
    for (int tap = 0, r = 0, s = 0; tap < h.taps; ++tap) {
      const int offset = r * p.dil_h * h.hw + s * p.dil_w;
      if (++s == p.s) {
        s = 0;
        ++r;
      }
#pragma unroll
      for (int kb = 0; kb < kChunk; kb += 32) {
        unsigned a[kMt][4], b[2][4];
#pragma unroll
        for (int i = 0; i < kMt; ++i)
          ldmatrix_x4(a[i], halo_sa + unsigned((a_row[i] + offset) * kRowBytes) + a_col + kb);
#pragma unroll
        for (int j = 0; j < 2; ++j)
          ldmatrix_x4(b[j], b_stage + unsigned(16 * j * h.b_ld + tap * kChunk + kb));
#pragma unroll
        for (int i = 0; i < kMt; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j)
            mma_step<DT>(acc[i][j], a[i], b[j / 2][2 * (j % 2)], b[j / 2][2 * (j % 2) + 1]);
      }
    }
    if (chunk + 1 < h.chunks) {
      ++chunk;
      __syncthreads();  // the stage may be refilled (step + 2's loads, issued next)
      continue;
    }
    __syncthreads();  // every warp is done with this stage's halo: the output tile takes it
    const int img0 = here.img0, oh0 = here.oh0, ow0 = here.ow0;
    chunk = 0;
    here = next;
    unsigned char* y_s = x_s + stage * h.x_bytes;

    // Epilogue from the registers: tile (i, j), element e is pixel wm + 16 i + lane / 4 + 8 (e /
    // 2), channel wn + 8 j + 2 (lane % 4) + e % 2. y = act(sum * scale + bias + residual) in y's
    // grid is staged as a [pixel][channel] tile of Y in the halo's place, then copied out.
    using Y = typename Stored<YT>::type;
    constexpr int kYLd = kBlockN * int(sizeof(Y)) + 16;  // bytes per staged pixel
    constexpr int kRowVecs = kBlockN * int(sizeof(Y)) / 16;
    const int valid_n = K - n0 < kBlockN ? K - n0 : kBlockN;
    const int valid_vecs = valid_n * int(sizeof(Y)) / 16;
    // Each pixel's channels n0.. are contiguous in y (and in a residual of y's format): they move
    // as 16-byte vectors where K and the pointers allow. A residual in y's format is staged first
    // in the output tile's place, read there and overwritten by the output.
    const bool vectors = K % 16 == 0 && reinterpret_cast<uintptr_t>(y) % 16 == 0;
    const bool staged_residual = p.residual && p.residual_grid.dt == YT && vectors &&
                                 reinterpret_cast<uintptr_t>(p.residual) % 16 == 0;
    if (staged_residual) {
      for (int v = tid; v < kBlockM * kRowVecs; v += kThreads) {
        const int m = v / kRowVecs, q = v % kRowVecs;
        const int n = img0 + (m >> h.tile_log2), oh = oh0 + ((m >> h.tw_log2) & (h.th - 1)),
                  ow = ow0 + (m & (h.tw - 1));
        if (q >= valid_vecs || n >= N || oh >= OH || ow >= OW) continue;
        *reinterpret_cast<uint4*>(y_s + m * kYLd + q * 16) = *reinterpret_cast<const uint4*>(
            static_cast<const char*>(p.residual) +
            ((int64_t(n * OH + oh) * OW + ow) * K + n0) * int(sizeof(Y)) + q * 16);
      }
      __syncthreads();
    }
    // Each stage over all of the lane's values, so that the uniform branches are taken once per
    // tile and every channel's scale and bias is read once.
    float v[kMt][2][4][2];
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = wn + 8 * j + 2 * (lane % 4) + e;
        const float scale = scale_s[c], bias = bias_s[c];
#pragma unroll
        for (int i = 0; i < kMt; ++i)
#pragma unroll
          for (int half = 0; half < 2; ++half)
            v[i][half][j][e] = float(acc[i][j][2 * half + e]) * scale + bias;
      }
    if (staged_residual) {
#pragma unroll
      for (int i = 0; i < kMt; ++i)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const Y* row =
              reinterpret_cast<const Y*>(y_s + (wm + 16 * i + lane / 4 + 8 * half) * kYLd);
#pragma unroll
          for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e)
              v[i][half][j][e] += decode<YT>(row, wn + 8 * j + 2 * (lane % 4) + e, p.residual_grid);
        }
    } else if (p.residual) {
#pragma unroll
      for (int i = 0; i < kMt; ++i)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int m = wm + 16 * i + lane / 4 + 8 * half;
          const int n = img0 + (m >> h.tile_log2), oh = oh0 + ((m >> h.tw_log2) & (h.th - 1)),
                    ow = ow0 + (m & (h.tw - 1));
          if (n >= N || oh >= OH || ow >= OW) continue;
          const int64_t first = (int64_t(n * OH + oh) * OW + ow) * K + n0;
#pragma unroll
          for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int c = wn + 8 * j + 2 * (lane % 4) + e;
              if (n0 + c < K) v[i][half][j][e] += load_real(p.residual, first + c, p.residual_grid);
            }
        }
    }
    if (p.act == kActRelu) {
#pragma unroll
      for (int i = 0; i < kMt; ++i)
#pragma unroll
        for (int half = 0; half < 2; ++half)
#pragma unroll
          for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e) v[i][half][j][e] = fmaxf(v[i][half][j][e], 0.0f);
    } else if (p.act == kActClip) {
#pragma unroll
      for (int i = 0; i < kMt; ++i)
#pragma unroll
        for (int half = 0; half < 2; ++half)
#pragma unroll
          for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e)
              v[i][half][j][e] = fminf(fmaxf(v[i][half][j][e], p.lo), p.hi);
    }
#pragma unroll
    for (int i = 0; i < kMt; ++i)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        Y* row = reinterpret_cast<Y*>(y_s + (wm + 16 * i + lane / 4 + 8 * half) * kYLd);
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e)
            row[wn + 8 * j + 2 * (lane % 4) + e] = encode_fast<YT>(v[i][half][j][e], p.y_grid);
      }
    __syncthreads();
    if (vectors) {
      for (int v = tid; v < kBlockM * kRowVecs; v += kThreads) {
        const int m = v / kRowVecs, q = v % kRowVecs;
        const int n = img0 + (m >> h.tile_log2), oh = oh0 + ((m >> h.tw_log2) & (h.th - 1)),
                  ow = ow0 + (m & (h.tw - 1));
        if (q >= valid_vecs || n >= N || oh >= OH || ow >= OW) continue;
        *reinterpret_cast<uint4*>(
            static_cast<char*>(y) + ((int64_t(n * OH + oh) * OW + ow) * K + n0) * int(sizeof(Y)) +
            q * 16) = *reinterpret_cast<const uint4*>(y_s + m * kYLd + q * 16);
      }
    } else {
      for (int v = tid; v < kBlockM * kBlockN; v += kThreads) {
        const int m = v / kBlockN, c = v % kBlockN;
        const int n = img0 + (m >> h.tile_log2), oh = oh0 + ((m >> h.tw_log2) & (h.th - 1)),
                  ow = ow0 + (m & (h.tw - 1));
        if (c >= valid_n || n >= N || oh >= OH || ow >= OW) continue;
        static_cast<Y*>(y)[(int64_t(n * OH + oh) * OW + ow) * K + n0 + c] =
            reinterpret_cast<const Y*>(y_s + m * kYLd)[c];
      }
    }
    __syncthreads();  // the stage may be refilled (step + 2's loads, issued next)
  }
}

template <int DT, int YT>
cudaError_t launch_typed(const void* x, void* y, const DirectConvParams& p, const HaloPlan& h,
                         cudaStream_t stream) {
  auto kernel = igemm_conv_kernel<DT, YT>;
  static std::atomic<bool> configured{false};
  if (const cudaError_t e = reserve_shared_memory(kernel, kMaxSmem, true, configured);
      e != cudaSuccess)
    return e;
  const int per_sm = std::max(1, std::min(4, int(kMaxSmem / (h.smem + 1024))));
  const int n_blocks = int((p.k + kBlockN - 1) / kBlockN);
  const int blocks = std::max(1, std::min(h.tiles, sm_count() * per_sm / n_blocks));
  return launch_overlapped(kernel, dim3(unsigned(blocks), unsigned(n_blocks)), dim3(kThreads),
                           h.smem, stream, x, y, p, h);
}

template <int DT>
cudaError_t launch(const void* x, void* y, const DirectConvParams& p, const HaloPlan& h,
                   cudaStream_t stream) {
  cudaError_t e = cudaErrorInvalidValue;
  with_stored_type(p.y_grid.dt,
                   [&](auto t) { e = launch_typed<DT, decltype(t)::value>(x, y, p, h, stream); });
  return e;
}

}  // namespace

int64_t igemm_weight_bytes(int x_dt, int64_t k, int64_t c, int64_t r, int64_t s) {
  return (k + 15) / 16 * 16 * ((c * r * s + 15) / 16 * 16) * mma_element_bytes(x_dt);
}

void igemm_pack_weights(int x_dt, const float* codes, int64_t K, int64_t C, int64_t R, int64_t S,
                        void* packed) {
  pack_tap_rows(x_dt, codes, K, C, R, S, (K + 15) / 16 * 16, (C * R * S + 15) / 16 * 16, packed);
}

bool igemm_eligible(const DirectConvParams& p) {
  const int elem = mma_element_bytes(p.x_dt);
  if (elem == 0 || (p.c * elem) % kChunk != 0 || p.r * p.s > kMaxTaps) return false;
  const HaloPlan h = plan_halo(p, elem);
  return h.smem <= kMaxSmem && h.hh < 1024 && h.hw < 1024;  // the halo table's fields
}

cudaError_t igemm_conv(const void* x, void* y, const DirectConvParams& p, cudaStream_t stream) {
  if (!igemm_eligible(p) || !p.tc_weights || p.n * p.h * p.w * p.c > kDirectMaxElements ||
      p.n * p.oh * p.ow * p.k > kDirectMaxElements ||
      (reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(p.tc_weights)) % 16 != 0)
    return cudaErrorInvalidValue;
  const HaloPlan h = plan_halo(p, mma_element_bytes(p.x_dt));
  if (h.tiles == 0) return cudaSuccess;
  switch (p.x_dt) {
    case kS8:
      return launch<kS8>(x, y, p, h, stream);
    case kF16:
      return launch<kF16>(x, y, p, h, stream);
    case kE4M3:
      return launch<kE4M3>(x, y, p, h, stream);
    default:
      return launch<kBF16>(x, y, p, h, stream);
  }
}

}  // namespace mixq::backends::cuda::kernels
