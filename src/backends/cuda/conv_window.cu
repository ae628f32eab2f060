// Convolution from a staged input window on tensor cores (see kernels.h, window_conv): for layers
// with few input channels and any filter (stems, LeNet-sized layers), where the implicit GEMM's
// 64-byte channel chunks do not apply and cuDNN's tiles are mostly padding. A block owns a band of
// whole output rows of one image and a group of up to 64 output channels. It stages the input rows
// the band reads (zero outside the image; converted on the way in where the layer absorbed its
// input's reformat) and the group's weights (per output channel, the taps
// contiguous: the column-major B of mma.sync) in shared memory, by cp.async. A warp takes 16 pixels
// at a time; each lane gathers its A fragment words straight from the window through a table of
// per-tap offsets (no im2col copy), a 32-bit word at a time where the channels fill words, else
// element by element. The sums go to shared memory; the epilogue (scale, bias, residual,
// activation, then an optional max pool) writes y.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "backends/cuda/cp_async.cuh"
#include "backends/cuda/kernels.h"
#include "backends/cuda/launch.cuh"
#include "backends/cuda/mma.cuh"
#include "backends/cuda/real_values.cuh"

namespace mixq::backends::cuda::kernels {
namespace {

// Eight warps: LeNet's conv1 in 288-pixel bands with four warps kept ~12% of the warp slots busy.
constexpr int kWarps = 8, kThreads = 32 * kWarps;
// window_chain: one block per image does both convolutions; more warps hide more latency.
constexpr int kChainWarps = 16, kChainThreads = 32 * kChainWarps;
constexpr int kGroupN = 64;           // most output channels per block (blockIdx.y: the group)
constexpr int kAccBudget = 40 << 10;  // bytes of staged sums a band aims at (128-512 pixels)
constexpr size_t kMaxSmem = 227 << 10;

int64_t align16(int64_t v) {
  return (v + 15) / 16 * 16;
}

// Taps (C R S) padded to one mma step: 32 bytes of K.
int64_t padded_taps(int x_dt, int64_t taps) {
  const int64_t step = 32 / mma_element_bytes(x_dt);
  return (taps + step - 1) / step * step;
}

// a / d for 0 <= a < 2^22 by a float multiply and one correction: the kernel is bound by its
// instruction count, and an integer division by a run-time value costs about 20.
struct FastDiv {
  int d = 1;
  float inv = 1.0f;
};
FastDiv fast_div(int d) {
  return {d, 1.0f / float(d)};
}
__device__ __forceinline__ int quotient(int a, FastDiv f) {
  int q = __float2int_rz(float(a) * f.inv);
  const int r = a - q * f.d;
  q += r >= f.d ? 1 : r < 0 ? -1 : 0;
  return q;
}

struct WindowPlan {
  int bh = 0;            // output rows per band
  int group_n = 0;       // output channels per block (a multiple of 8, at most kGroupN)
  int chunk = 0;         // channel tiles per work item of a warp
  bool quad = false;     // 2x2 pool: pixels in pool order, pooled in registers (no staged sums)
  int bands = 0;         // bands per image
  int wh = 0, ww = 0;    // the window: input rows and columns a band reads (padding included)
  int pixels = 0;        // bh * ow (quad: the pooled pixels' four each)
  int mtiles = 0;        // 16-pixel tiles of a band
  int taps = 0, tp = 0;  // C R S, padded to a step
  int groups = 0;        // channel groups of kGroupN
  int w_row = 0;         // bytes per output channel of the staged weights (padded: no conflicts)
  int yh = 0, yw = 0;    // y's rows and columns (pooled or not)
  int acc_stride = 0;    // words per pixel of the staged sums (the group's channels + 4)
  int weight_bytes = 0, window_bytes = 0, table_bytes = 0, acc_bytes = 0;
  size_t smem = 0;
  bool copy_words = false;  // x is staged a 32-bit word at a time (channels fill words, aligned)
  FastDiv by_c, by_ww, by_ow, by_yw, by_wpp;
};

WindowPlan plan_window(const DirectConvParams& p, int bh, int group_n, int warps = kWarps) {
  const int elem = mma_element_bytes(p.x_dt);
  WindowPlan l;
  l.bh = bh;
  l.group_n = group_n;
  const bool pool = p.pool_h > 0;
  l.quad = p.pool_h == 2 && p.pool_w == 2;
  const int rows = pool ? int(p.oh / p.pool_h) * p.pool_h : int(p.oh);  // rows y depends on
  l.bands = (rows + bh - 1) / bh;
  l.wh = (bh - 1) * p.stride_h + (p.r - 1) * p.dil_h + 1;
  l.ww = int((p.ow - 1) * p.stride_w + (p.s - 1) * p.dil_w + 1);
  l.yh = pool ? int(p.oh / p.pool_h) : int(p.oh);
  l.yw = pool ? int(p.ow / p.pool_w) : int(p.ow);
  l.pixels = l.quad ? bh / 2 * l.yw * 4 : bh * int(p.ow);
  l.mtiles = (l.pixels + 15) / 16;
  l.taps = int(p.c * p.r * p.s);
  l.tp = int(padded_taps(p.x_dt, l.taps));
  l.groups = int((p.k + group_n - 1) / group_n);
  l.w_row = l.tp * elem + 16;
  const int group_rows = int(std::min<int64_t>(p.k, group_n) + 7) / 8 * 8;
  // Work items: a 16-pixel tile and a run of channel tiles; the runs shorten where the tiles are
  // too few for the warps (LeNet's conv2: four tiles).
  const int group_tiles = group_rows / 8;
  const int split =
      l.mtiles >= warps ? 1 : std::min(group_tiles, (warps + l.mtiles - 1) / l.mtiles);
  l.chunk = (group_tiles + split - 1) / split;
  l.weight_bytes = group_rows * l.w_row;
  l.window_bytes = int(align16(int64_t(l.wh) * l.ww * p.c * elem));
  l.table_bytes = int(align16((int64_t(l.tp) + 2 * group_rows) * 4));  // taps, scale, bias
  l.acc_stride = group_rows + 4;
  l.acc_bytes = l.quad ? 0 : l.mtiles * 16 * l.acc_stride * 4;
  l.smem = size_t(l.weight_bytes) + l.window_bytes + l.table_bytes + l.acc_bytes;
  l.by_c = fast_div(int(p.c));
  l.by_ww = fast_div(l.ww);
  l.by_ow = fast_div(int(p.ow));
  l.by_yw = fast_div(l.yw);
  l.by_wpp = fast_div(std::max(1, int(p.c * elem / 4)));
  return l;
}

// Bands of whole rows (a multiple of the pool's rows) whose sums fill about kAccBudget: a block's
// fixed costs (weights, offset table, two barriers) dominated LeNet's conv1 at 96-pixel bands.
// Fewer rows where the grid would leave a quarter of the GPU idle, then the rows spread evenly
// over the bands, and fewer still where shared memory is short. Smaller channel groups where the
// blocks are still fewer than the multiprocessors (LeNet's conv2: one block per image).
WindowPlan choose_plan(const DirectConvParams& p) {
  const int unit = p.pool_h > 0 ? p.pool_h : 1;
  const int rows = p.pool_h > 0 ? int(p.oh / p.pool_h) * p.pool_h : int(p.oh);
  const int ow = int(std::max<int64_t>(p.ow, 1));
  const int stride = int(std::min<int64_t>(p.k, kGroupN) + 7) / 8 * 8 + 4;
  const int pixels = std::clamp(kAccBudget / (stride * 4), 128, 512);
  int bh = std::max(unit, pixels / ow / unit * unit);
  bh = std::min(bh, std::max(unit, (rows + unit - 1) / unit * unit));
  const int64_t groups = (p.k + kGroupN - 1) / kGroupN;
  while (bh > unit && 4 * p.n * ((rows + bh - 1) / bh) * groups < 3 * int64_t(sm_count()))
    bh -= unit;
  const int bands = (rows + bh - 1) / bh;
  bh = std::max(unit, ((rows + bands - 1) / bands + unit - 1) / unit * unit);
  int group_n = kGroupN;
  while (group_n > 16 && p.k > group_n / 2 &&
         p.n * ((rows + bh - 1) / bh) * ((p.k + group_n - 1) / group_n) < sm_count())
    group_n /= 2;
  WindowPlan l = plan_window(p, bh, group_n);
  while (l.smem > kMaxSmem && bh > unit) l = plan_window(p, bh -= unit, group_n);
  return l;
}

// The A fragment word of pixel offset `pix` (elements into the window) at taps k .. k + 4/E - 1;
// WORDS: the channels fill 32-bit words (C * E % 4 == 0), so a word's taps share one pixel.
template <int DT, bool WORDS>
__device__ __forceinline__ uint32_t a_word(const unsigned char* win, int pix, const int* tap_s,
                                           int k, int taps) {
  constexpr int E = Mma<DT>::kElem, EPW = 4 / E;
  if constexpr (WORDS) {
    return k < taps ? *reinterpret_cast<const uint32_t*>(win + (pix + tap_s[k]) * E) : 0u;
  } else {
    uint32_t w = 0;
#pragma unroll
    for (int e = 0; e < EPW; ++e) {
      if (k + e >= taps) break;
      const int at = pix + tap_s[k + e];
      const uint32_t bits =
          E == 1 ? uint32_t(win[at]) : uint32_t(reinterpret_cast<const uint16_t*>(win)[at]);
      w |= bits << (8 * E * e);
    }
    return w;
  }
}

// The same word from taps whose offsets a lane keeps in registers (-1: past the taps).
template <int DT>
__device__ __forceinline__ uint32_t a_word_cached(const unsigned char* win, int pix,
                                                  const int* offsets) {
  constexpr int E = Mma<DT>::kElem, EPW = 4 / E;
  uint32_t w = 0;
#pragma unroll
  for (int e = 0; e < EPW; ++e) {
    const int at = pix + offsets[e];
    const uint32_t bits = offsets[e] < 0 ? 0u
                          : E == 1       ? uint32_t(win[at])
                                         : uint32_t(reinterpret_cast<const uint16_t*>(win)[at]);
    w |= bits << (8 * E * e);
  }
  return w;
}

// Taps padded to at most 32 (one s8/e4m3 mma step, two f16/bf16 steps) keep a lane's offsets in
// registers on the element path: eight per lane.
constexpr int kCachedTaps = 32;
// Channel tiles a warp multiplies per pass over the taps.
constexpr int kPassTiles = 4;

// Shared memory of one convolution stage, in plan_window's order: the group's weights, the input
// window, the offset table (taps, then the group's scales and biases), the staged sums.
struct StageSmem {
  unsigned char* w;
  unsigned char* win;
  int* taps;
  float* scale;  // the group's scales, then its biases
  unsigned char* acc;
};
__device__ __forceinline__ StageSmem carve(unsigned char* base, const WindowPlan& l) {
  StageSmem s;
  s.w = base;
  s.win = base + l.weight_bytes;
  s.taps = reinterpret_cast<int*>(s.win + l.window_bytes);
  s.scale = reinterpret_cast<float*>(s.taps + l.tp);
  s.acc = s.win + l.window_bytes + l.table_bytes;
  return s;
}

// The layer's own constants for output channels k0 .. k0 + kn - 1: the weights (packed rows past
// K are zero) 16 bytes at a time by cp.async, the offset of each tap (r, s, c) in the window in
// elements, the scales and biases.
template <int DT, int THREADS>
__device__ void stage_constants(const StageSmem& s, const DirectConvParams& p, const WindowPlan& l,
                                int k0, int kn) {
  constexpr int E = Mma<DT>::kElem;
  const int nt = (kn + 7) / 8, C = int(p.c);
  {
    const int chunks = l.tp * E / 16;
    const uint4* src = static_cast<const uint4*>(p.tc_weights) + int64_t(k0) * chunks;
    for (int i = threadIdx.x; i < nt * 8 * chunks; i += THREADS) {
      const int row = i / chunks, col = i - row * chunks;
      cp_async16(s.w + row * l.w_row + col * 16, src + i);
    }
  }
  for (int k = threadIdx.x; k < l.tp; k += THREADS) {
    int off = 0;
    if (k < l.taps) {
      const int c = k % C, rs = k / C;
      off = ((rs / p.s) * p.dil_h * l.ww + (rs % p.s) * p.dil_w) * C + c;
    }
    s.taps[k] = off;
  }
  for (int i = threadIdx.x; i < nt * 8; i += THREADS) {
    const int ch = k0 + min(i, kn - 1);
    s.scale[i] = p.scale[ch];
    s.scale[nt * 8 + i] = p.bias ? p.bias[ch] : 0.0f;
  }
}

// The window of image n: input rows ih0 .. ih0 + wh - 1, columns -pad_w .. ww - pad_w - 1, zero
// (code 0, the zero of every symmetric grid) outside the image; converted on the way in where the
// layer absorbed its input's reformat.
template <int DT, int THREADS>
__device__ void stage_window(unsigned char* win, const void* x, const DirectConvParams& p,
                             const WindowPlan& l, int n, int ih0) {
  constexpr int E = Mma<DT>::kElem;
  const int C = int(p.c), H = int(p.h), W = int(p.w);
  if (p.convert_input) {
    using Stored_t = typename Stored<DT>::type;
    Stored_t* dst = reinterpret_cast<Stored_t*>(win);
    const int total = l.wh * l.ww * C;
    // Four loads in flight per thread before the first store.
    for (int i0 = threadIdx.x; i0 < total; i0 += 4 * THREADS) {
      float v[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int i = i0 + u * THREADS;
        const int pix = quotient(i, l.by_c), c = i - pix * C, wr = quotient(pix, l.by_ww),
                  wc = pix - wr * l.ww;
        const int ih = ih0 + wr, iw = wc - p.pad_w;
        v[u] = 0.0f;
        if (i < total && ih >= 0 && ih < H && iw >= 0 && iw < W) {
          const int64_t at = p.x_src_nchw ? ((int64_t(n) * C + c) * H + ih) * W + iw
                                          : ((int64_t(n) * H + ih) * W + iw) * C + c;
          // fp32 network inputs read directly (the generic load dispatches on the type).
          v[u] = p.x_src.dt == kF32 ? static_cast<const float*>(x)[at] : load_real(x, at, p.x_src);
        }
      }
#pragma unroll
      for (int u = 0; u < 4; ++u)
        if (i0 + u * THREADS < total) dst[i0 + u * THREADS] = encode<DT>(v[u], p.x_grid);
    }
  } else if (l.copy_words) {
    const int wpp = C * E / 4;  // words per pixel
    const int total = l.wh * l.ww * wpp;
    const uint32_t* src = static_cast<const uint32_t*>(x);
    for (int i = threadIdx.x; i < total; i += THREADS) {
      const int pix = quotient(i, l.by_wpp), wd = i - pix * wpp, wr = quotient(pix, l.by_ww),
                wc = pix - wr * l.ww;
      const int ih = ih0 + wr, iw = wc - p.pad_w;
      const bool inside = ih >= 0 && ih < H && iw >= 0 && iw < W;
      cp_async4(reinterpret_cast<uint32_t*>(win) + i,
                src + (inside ? ((int64_t(n) * H + ih) * W + iw) * wpp + wd : 0), inside);
    }
  } else {
    using Bits = std::conditional_t<E == 1, uint8_t, uint16_t>;
    const Bits* src = static_cast<const Bits*>(x);
    Bits* dst = reinterpret_cast<Bits*>(win);
    const int total = l.wh * l.ww * C;
    // Four loads in flight per thread before the first store.
    for (int i0 = threadIdx.x; i0 < total; i0 += 4 * THREADS) {
      Bits v[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int i = i0 + u * THREADS;
        const int pix = quotient(i, l.by_c), c = i - pix * C, wr = quotient(pix, l.by_ww),
                  wc = pix - wr * l.ww;
        const int ih = ih0 + wr, iw = wc - p.pad_w;
        v[u] = i < total && ih >= 0 && ih < H && iw >= 0 && iw < W
                   ? src[((int64_t(n) * H + ih) * W + iw) * C + c]
                   : Bits(0);
      }
#pragma unroll
      for (int u = 0; u < 4; ++u)
        if (i0 + u * THREADS < total) dst[i0 + u * THREADS] = v[u];
    }
  }
}

// Where a stage's outputs go: (y row, y column, channel of the group, value after the activation).
// To y in global memory, in y's grid.
struct GlobalStore {
  void* y;
  int64_t image;  // elements before image n's first
  int yw, k, k0;
  Grid grid;
  __device__ __forceinline__ void operator()(int row, int col, int ch, float v) const {
    const int64_t at = image + (row * yw + col) * k + k0 + ch;  // 32-bit within an image
    with_stored_type(grid.dt, [&](auto yt) {
      constexpr int YT = decltype(yt)::value;
      static_cast<typename Stored<YT>::type*>(y)[at] = encode_fast<YT>(v, grid);
    });
  }
};
// Into the next stage's window in shared memory (window_chain): the next convolution's input
// format DT; pixels the window does not hold are dropped.
template <int DT>
struct WindowStore {
  unsigned char* win;
  int wh, ww, c, pad_h, pad_w;
  Grid grid;
  __device__ __forceinline__ void operator()(int row, int col, int ch, float v) const {
    const int wr = row + pad_h, wc = col + pad_w;
    if (wr < wh && wc < ww)
      reinterpret_cast<typename Stored<DT>::type*>(win)[(wr * ww + wc) * c + ch] =
          encode_fast<DT>(v, grid);
  }
};

// The band's sums on tensor cores, from the staged window. QUAD: a 2x2 max pool with the band's
// pixels in pool order (pixel m is member m % 4 of pooled pixel m / 4), so a pool window's four
// sums sit in four lanes of one mma tile and are pooled by shuffles and stored (scale, bias,
// activation) without staging; else the sums go to shared memory for window_epilogue.
template <int DT, bool WORDS, bool QUAD, int WARPS, class Store>
__device__ void window_sums(const StageSmem& s, const DirectConvParams& p, const WindowPlan& l,
                            int oh0, int kn, const Store& store) {
  using Acc = typename Mma<DT>::acc;
  constexpr int E = Mma<DT>::kElem;
  constexpr int EPW = 4 / E;     // elements per 32-bit word
  constexpr int KSTEP = 32 / E;  // elements of K per mma
  const unsigned char* win = s.win;
  const int* tap_s = s.taps;
  const float* scale_s = s.scale;
  Acc* acc_s = reinterpret_cast<Acc*>(s.acc);
  const int C = int(p.c), OW = int(p.ow), nt = (kn + 7) / 8;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, g = lane / 4, t = lane % 4;
  const uint32_t* w_words = reinterpret_cast<const uint32_t*>(s.w);
  const int w_row_words = l.w_row / 4;
  // Element path with few taps: this lane's tap offsets (the same for every tile) in registers.
  constexpr int kCachedSteps = kCachedTaps / KSTEP;
  const bool cached = !WORDS && l.tp <= kCachedTaps;
  int offsets[kCachedSteps][2 * EPW];
  if (!WORDS) {
#pragma unroll
    for (int st = 0; st < kCachedSteps; ++st)
#pragma unroll
      for (int e = 0; e < 2 * EPW; ++e) {
        const int k = st * KSTEP + EPW * t + (e < EPW ? e : 3 * EPW + e);
        offsets[st][e] = cached && k < l.taps ? tap_s[k] : -1;
      }
  }
  const bool pool = p.pool_h > 0;
  const int y_row0 = pool ? oh0 / p.pool_h : oh0;
  const int out_rows = min(pool ? l.bh / p.pool_h : l.bh, l.yh - y_row0);
  const int parts = (nt + l.chunk - 1) / l.chunk;
  const float* bias_s = scale_s + nt * 8;
  for (int item = warp; item < l.mtiles * parts; item += WARPS) {
    // The tile and the run of channel tiles (a division only where the runs are several).
    int mt = item, part = 0;
    if (parts > 1) {
      part = item / l.mtiles;
      mt = item - part * l.mtiles;
    }
    const int j0 = part * l.chunk, j1 = min(nt, j0 + l.chunk);
    int pix[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = mt * 16 + g + 8 * h;
      int lr, col;
      if constexpr (QUAD) {
        const int pooled = m >> 2, pr = quotient(pooled, l.by_yw);
        lr = 2 * pr + ((m >> 1) & 1);
        col = 2 * (pooled - pr * l.yw) + (m & 1);
      } else {
        lr = quotient(m, l.by_ow);
        col = m - lr * OW;
      }
      pix[h] = m < l.pixels ? (lr * p.stride_h * l.ww + col * p.stride_w) * C : 0;
    }
    // Passes of up to four channel tiles: few accumulators, and no predicated work for the tiles
    // an item does not own (LeNet's conv2 spent 79 instructions per step on two tiles of eight).
    for (int jp = j0; jp < j1; jp += kPassTiles) {
      const int jn = min(kPassTiles, j1 - jp);
      Acc c[kPassTiles][4];
#pragma unroll
      for (int j = 0; j < kPassTiles; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) c[j][i] = Acc(0);
      const uint32_t* rows = w_words + (jp * 8 + g) * w_row_words;
      auto multiply = [&](int kb, const unsigned(&a)[4]) {
        const int wa = kb * E / 4 + t;  // the word of tap ka in a weights row
#pragma unroll
        for (int j = 0; j < kPassTiles; ++j) {
          if (j < jn) {
            const uint32_t* row = rows + j * 8 * w_row_words;
            mma_step<DT>(c[j], a, row[wa], row[wa + 4]);
          }
        }
      };
      if (cached) {
#pragma unroll
        for (int st = 0; st < kCachedSteps; ++st) {
          if (st * KSTEP >= l.tp) break;
          const unsigned a[4] = {a_word_cached<DT>(win, pix[0], offsets[st]),
                                 a_word_cached<DT>(win, pix[1], offsets[st]),
                                 a_word_cached<DT>(win, pix[0], offsets[st] + EPW),
                                 a_word_cached<DT>(win, pix[1], offsets[st] + EPW)};
          multiply(st * KSTEP, a);
        }
      } else {
        for (int kb = 0; kb < l.tp; kb += KSTEP) {
          const int ka = kb + EPW * t, kc = ka + 4 * EPW;
          const unsigned a[4] = {a_word<DT, WORDS>(win, pix[0], tap_s, ka, l.taps),
                                 a_word<DT, WORDS>(win, pix[1], tap_s, ka, l.taps),
                                 a_word<DT, WORDS>(win, pix[0], tap_s, kc, l.taps),
                                 a_word<DT, WORDS>(win, pix[1], tap_s, kc, l.taps)};
          multiply(kb, a);
        }
      }
      if constexpr (QUAD) {
        // Lanes 4q .. 4q + 3 (g = 4q + member) hold the four members of pooled pixels 4 mt + q
        // (rows g) and 4 mt + q + 2 (rows g + 8): the max over lanes g ^ 1, g ^ 2 pools them;
        // then member i stores value i (channel 2t + (i & 1) of pooled pixel i < 2 ? first :
        // second), so every lane writes.
        const int member = g & 3;
        const int pooled = mt * 4 + (g >> 2) + (member >> 1) * 2;
        const int pr = quotient(pooled, l.by_yw), pc = pooled - pr * l.yw;
        const bool row_ok = pooled * 4 < l.pixels && pr < out_rows;
#pragma unroll
        for (int j = 0; j < kPassTiles; ++j) {
          if (j < jn) {
            const int ch = 8 * (jp + j) + 2 * t;
            const float s0 = scale_s[ch], s1 = scale_s[ch + 1];
            const float b0 = bias_s[ch], b1 = bias_s[ch + 1];
            float v[4] = {float(c[j][0]) * s0 + b0, float(c[j][1]) * s1 + b1,
                          float(c[j][2]) * s0 + b0, float(c[j][3]) * s1 + b1};
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              v[i] = fmaxf(v[i], __shfl_xor_sync(0xffffffffu, v[i], 4));
              v[i] = fmaxf(v[i], __shfl_xor_sync(0xffffffffu, v[i], 8));
            }
            const float mine = member == 0 ? v[0] : member == 1 ? v[1] : member == 2 ? v[2] : v[3];
            const int chan = ch + (member & 1);
            if (row_ok && chan < kn)  // the activation is monotonic: after the max
              store(y_row0 + pr, pc, chan, activate(mine, p.act, p.lo, p.hi));
          }
        }
      } else {
        // Sums: rows g and g + 8 of the tile, columns 8j + 2t and + 1.
        const int r0 = mt * 16 + g;
#pragma unroll
        for (int j = 0; j < kPassTiles; ++j) {
          if (j < jn) {
            Acc* lo = acc_s + r0 * l.acc_stride + 8 * (jp + j) + 2 * t;
            Acc* hi = lo + 8 * l.acc_stride;
            lo[0] = c[j][0];
            lo[1] = c[j][1];
            hi[0] = c[j][2];
            hi[1] = c[j][3];
          }
        }
      }
    }
  }
}

// The staged sums (after a barrier) to their outputs: scale, bias, residual, activation, the pool.
// Threads over (output pixel, channel), channels fastest: every lane busy, neighbouring lanes
// write neighbouring elements of y.
template <int DT, int THREADS, class Store>
__device__ void window_epilogue(const StageSmem& s, const DirectConvParams& p, const WindowPlan& l,
                                int n, int oh0, int k0, int kn, const Store& store) {
  using Acc = typename Mma<DT>::acc;
  const Acc* acc_s = reinterpret_cast<const Acc*>(s.acc);
  const int nt = (kn + 7) / 8, OW = int(p.ow), K = int(p.k);
  const float* scale_s = s.scale;
  const float* bias_s = scale_s + nt * 8;
  const bool pool = p.pool_h > 0;
  const int y_row0 = pool ? oh0 / p.pool_h : oh0;
  const int out_rows = min(pool ? l.bh / p.pool_h : l.bh, l.yh - y_row0);
  const int out_pixels = out_rows * l.yw;
  const FastDiv by_kn = {kn, 1.0f / float(kn)};
  for (int idx = threadIdx.x; idx < out_pixels * kn; idx += THREADS) {
    const int op = quotient(idx, by_kn), ch = idx - op * kn;
    const int orow = quotient(op, l.by_yw), ocol = op - orow * l.yw;
    const float sc = scale_s[ch], bi = bias_s[ch];
    float v;
    if (!pool) {
      v = float(acc_s[op * l.acc_stride + ch]) * sc + bi;
      if (p.residual)
        v +=
            load_real(p.residual, ((int64_t(n) * l.yh + y_row0 + orow) * l.yw + ocol) * K + k0 + ch,
                      p.residual_grid);
      v = activate(v, p.act, p.lo, p.hi);
    } else {
      const Acc* first = acc_s + ((orow * p.pool_h) * OW + ocol * p.pool_w) * l.acc_stride + ch;
      v = -INFINITY;
      for (int i = 0; i < p.pool_h; ++i)
        for (int j = 0; j < p.pool_w; ++j)
          v = fmaxf(v, float(first[(i * OW + j) * l.acc_stride]) * sc + bi);
      v = activate(v, p.act, p.lo, p.hi);  // monotonic: the max of the activations
    }
    store(y_row0 + orow, ocol, ch, v);
  }
}

template <int DT, bool WORDS, bool QUAD>
__global__ void __launch_bounds__(kThreads, 2)
    window_conv_kernel(const void* __restrict__ x, void* __restrict__ y, DirectConvParams p,
                       WindowPlan l) {
  release_dependents(p.release_next);
  extern __shared__ __align__(16) unsigned char window_smem[];
  const StageSmem s = carve(window_smem, l);
  const int n = int(blockIdx.x) / l.bands, band = int(blockIdx.x) % l.bands;
  const int oh0 = band * l.bh;
  const int k0 = int(blockIdx.y) * l.group_n, kn = min(l.group_n, int(p.k) - k0);
  stage_constants<DT, kThreads>(s, p, l, k0, kn);
  // Weights, taps and scales are the layer's own: staged before the previous layer finishes.
  wait_for_previous_grid();
  stage_window<DT, kThreads>(s.win, x, p, l, n, oh0 * p.stride_h - p.pad_h);
  cp_async_wait_all();
  __syncthreads();
  const GlobalStore out{y, int64_t(n) * l.yh * l.yw * p.k, l.yw, int(p.k), k0, p.y_grid};
  window_sums<DT, WORDS, QUAD, kWarps>(s, p, l, oh0, kn, out);
  if constexpr (!QUAD) {
    __syncthreads();
    window_epilogue<DT, kThreads>(s, p, l, n, oh0, k0, kn, out);
  }
}

// Two convolutions in a row (window_chain): a block takes one image through both; the first's
// outputs go straight into the second's window in shared memory.
template <int DT, bool WORDS1, bool QUAD1, bool QUAD2>
__global__ void __launch_bounds__(kChainThreads, 1)
    window_chain_kernel(const void* __restrict__ x, void* __restrict__ y, DirectConvParams p1,
                        WindowPlan l1, DirectConvParams p2, WindowPlan l2) {
  release_dependents(p2.release_next);
  extern __shared__ __align__(16) unsigned char chain_smem[];
  const StageSmem s1 = carve(chain_smem, l1), s2 = carve(chain_smem + l1.smem, l2);
  const int n = int(blockIdx.x);
  const int k1 = int(p1.k), k2 = int(p2.k);
  stage_constants<DT, kChainThreads>(s1, p1, l1, 0, k1);
  stage_constants<DT, kChainThreads>(s2, p2, l2, 0, k2);
  // The second window's padding stays zero; the first convolution writes the rest.
  for (int i = threadIdx.x; i < l2.window_bytes / 16; i += kChainThreads)
    reinterpret_cast<uint4*>(s2.win)[i] = make_uint4(0, 0, 0, 0);
  wait_for_previous_grid();
  stage_window<DT, kChainThreads>(s1.win, x, p1, l1, n, -p1.pad_h);
  cp_async_wait_all();
  __syncthreads();
  const WindowStore<DT> mid{s2.win, l2.wh, l2.ww, int(p2.c), p2.pad_h, p2.pad_w, p1.y_grid};
  window_sums<DT, WORDS1, QUAD1, kChainWarps>(s1, p1, l1, 0, k1, mid);
  if constexpr (!QUAD1) {
    __syncthreads();
    window_epilogue<DT, kChainThreads>(s1, p1, l1, n, 0, 0, k1, mid);
  }
  __syncthreads();
  const GlobalStore out{y, int64_t(n) * l2.yh * l2.yw * k2, l2.yw, k2, 0, p2.y_grid};
  window_sums<DT, true, QUAD2, kChainWarps>(s2, p2, l2, 0, k2, out);
  if constexpr (!QUAD2) {
    __syncthreads();
    window_epilogue<DT, kChainThreads>(s2, p2, l2, n, 0, 0, k2, out);
  }
}

template <int DT, bool WORDS, bool QUAD>
cudaError_t launch_typed(const void* x, void* y, const DirectConvParams& p, const WindowPlan& l,
                         cudaStream_t stream) {
  auto kernel = window_conv_kernel<DT, WORDS, QUAD>;
  static std::atomic<bool> configured{false};
  if (const cudaError_t e = reserve_shared_memory(kernel, kMaxSmem, true, configured);
      e != cudaSuccess)
    return e;
  return launch_overlapped(kernel, dim3(unsigned(p.n * l.bands), unsigned(l.groups)),
                           dim3(kThreads), l.smem, stream, x, y, p, l);
}

template <int DT>
cudaError_t launch(const void* x, void* y, const DirectConvParams& p, const WindowPlan& l,
                   bool words, cudaStream_t stream) {
  if (l.quad)
    return words ? launch_typed<DT, true, true>(x, y, p, l, stream)
                 : launch_typed<DT, false, true>(x, y, p, l, stream);
  return words ? launch_typed<DT, true, false>(x, y, p, l, stream)
               : launch_typed<DT, false, false>(x, y, p, l, stream);
}

template <int DT, bool WORDS1, bool QUAD1, bool QUAD2>
cudaError_t launch_chain_typed(const void* x, void* y, const DirectConvParams& p1,
                               const WindowPlan& l1, const DirectConvParams& p2,
                               const WindowPlan& l2, cudaStream_t stream) {
  auto kernel = window_chain_kernel<DT, WORDS1, QUAD1, QUAD2>;
  static std::atomic<bool> configured{false};
  if (const cudaError_t e = reserve_shared_memory(kernel, kMaxSmem, true, configured);
      e != cudaSuccess)
    return e;
  return launch_overlapped(kernel, dim3(unsigned(p1.n)), dim3(kChainThreads), l1.smem + l2.smem,
                           stream, x, y, p1, l1, p2, l2);
}

template <int DT, bool WORDS1>
cudaError_t launch_chain(const void* x, void* y, const DirectConvParams& p1, const WindowPlan& l1,
                         const DirectConvParams& p2, const WindowPlan& l2, cudaStream_t stream) {
  if (l1.quad)
    return l2.quad ? launch_chain_typed<DT, WORDS1, true, true>(x, y, p1, l1, p2, l2, stream)
                   : launch_chain_typed<DT, WORDS1, true, false>(x, y, p1, l1, p2, l2, stream);
  return l2.quad ? launch_chain_typed<DT, WORDS1, false, true>(x, y, p1, l1, p2, l2, stream)
                 : launch_chain_typed<DT, WORDS1, false, false>(x, y, p1, l1, p2, l2, stream);
}

template <int DT>
cudaError_t launch_chain(const void* x, void* y, const DirectConvParams& p1, const WindowPlan& l1,
                         bool words1, const DirectConvParams& p2, const WindowPlan& l2,
                         cudaStream_t stream) {
  return words1 ? launch_chain<DT, true>(x, y, p1, l1, p2, l2, stream)
                : launch_chain<DT, false>(x, y, p1, l1, p2, l2, stream);
}

// One band of whole images and one channel group per stage, for window_chain.
struct ChainPlan {
  WindowPlan first, second;
  bool ok = false;
};
ChainPlan plan_chain(const DirectConvParams& p1, const DirectConvParams& p2) {
  ChainPlan c;
  auto whole = [](const DirectConvParams& p) {
    const int unit = p.pool_h > 0 ? p.pool_h : 1;
    const int rows = p.pool_h > 0 ? int(p.oh / p.pool_h) * p.pool_h : int(p.oh);
    return plan_window(p, std::max(unit, rows), int(p.k + 7) / 8 * 8, kChainWarps);
  };
  if (p1.k > kGroupN || p2.k > kGroupN) return c;
  c.first = whole(p1);
  c.second = whole(p2);
  c.ok = c.first.bands == 1 && c.second.bands == 1 && c.first.groups == 1 && c.second.groups == 1 &&
         c.first.smem + c.second.smem <= kMaxSmem;
  return c;
}

}  // namespace

int64_t window_weight_bytes(int x_dt, int64_t k, int64_t c, int64_t r, int64_t s) {
  return (k + 7) / 8 * 8 * padded_taps(x_dt, c * r * s) * mma_element_bytes(x_dt);
}

void window_pack_weights(int x_dt, const float* codes, int64_t K, int64_t C, int64_t R, int64_t S,
                         void* packed) {
  pack_tap_rows(x_dt, codes, K, C, R, S, (K + 7) / 8 * 8, padded_taps(x_dt, C * R * S), packed);
}

bool window_eligible(const DirectConvParams& p) {
  if (mma_element_bytes(p.x_dt) == 0 || p.n < 1 || p.oh < 1 || p.ow < 1 || p.k < 1) return false;
  if (p.pool_h < 0 || p.pool_w < 0 || (p.pool_h > 0) != (p.pool_w > 0) ||
      (p.pool_h > 0 && (p.oh < p.pool_h || p.ow < p.pool_w)))
    return false;
  // 32-bit offsets within a band and indices within an image.
  if (p.c * p.r * p.s > 4096 || p.h * p.w * p.c > (int64_t(1) << 30) ||
      p.oh * p.ow * p.k > (int64_t(1) << 30))
    return false;
  return choose_plan(p).smem <= kMaxSmem;
}

cudaError_t window_conv(const void* x, void* y, const DirectConvParams& p, cudaStream_t stream) {
  if (!window_eligible(p) || !p.tc_weights || (p.pool_h > 0 && p.residual) ||
      reinterpret_cast<uintptr_t>(p.tc_weights) % 16 != 0)
    return cudaErrorInvalidValue;
  WindowPlan l = choose_plan(p);
  const bool words = (p.c * mma_element_bytes(p.x_dt)) % 4 == 0;
  l.copy_words = words && !p.convert_input && reinterpret_cast<uintptr_t>(x) % 4 == 0;
  switch (p.x_dt) {
    case kS8:
      return launch<kS8>(x, y, p, l, words, stream);
    case kF16:
      return launch<kF16>(x, y, p, l, words, stream);
    case kE4M3:
      return launch<kE4M3>(x, y, p, l, words, stream);
    default:
      return launch<kBF16>(x, y, p, l, words, stream);
  }
}

bool window_chain_eligible(const DirectConvParams& first, const DirectConvParams& second) {
  const int elem = mma_element_bytes(first.x_dt);
  if (!window_eligible(first) || !window_eligible(second) || first.x_dt != second.x_dt ||
      first.y_grid.dt != first.x_dt || second.convert_input || first.residual || second.residual ||
      (second.c * elem) % 4 != 0 || first.n != second.n)
    return false;
  // The second reads what the first writes: its channels, rows and columns.
  const int64_t yh = first.pool_h > 0 ? first.oh / first.pool_h : first.oh;
  const int64_t yw = first.pool_w > 0 ? first.ow / first.pool_w : first.ow;
  if (second.c != first.k || second.h != yh || second.w != yw) return false;
  return plan_chain(first, second).ok;
}

cudaError_t window_chain(const void* x, void* y, const DirectConvParams& first,
                         const DirectConvParams& second, cudaStream_t stream) {
  if (!window_chain_eligible(first, second) || !first.tc_weights || !second.tc_weights ||
      reinterpret_cast<uintptr_t>(first.tc_weights) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(second.tc_weights) % 16 != 0)
    return cudaErrorInvalidValue;
  if (first.n == 0) return cudaSuccess;
  ChainPlan c = plan_chain(first, second);
  const bool words = (first.c * mma_element_bytes(first.x_dt)) % 4 == 0;
  c.first.copy_words = words && !first.convert_input && reinterpret_cast<uintptr_t>(x) % 4 == 0;
  switch (first.x_dt) {
    case kS8:
      return launch_chain<kS8>(x, y, first, c.first, words, second, c.second, stream);
    case kF16:
      return launch_chain<kF16>(x, y, first, c.first, words, second, c.second, stream);
    case kE4M3:
      return launch_chain<kE4M3>(x, y, first, c.first, words, second, c.second, stream);
    default:
      return launch_chain<kBF16>(x, y, first, c.first, words, second, c.second, stream);
  }
}

}  // namespace mixq::backends::cuda::kernels
