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

WindowPlan plan_window(const DirectConvParams& p, int bh, int group_n) {
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
      l.mtiles >= kWarps ? 1 : std::min(group_tiles, (kWarps + l.mtiles - 1) / l.mtiles);
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

// QUAD: a 2x2 max pool with the band's pixels in pool order (pixel m is member m % 4 of pooled
// pixel m / 4), so a pool window's four sums sit in four lanes of one mma tile and are pooled by
// shuffles, without staging the sums.
template <int DT, bool WORDS, bool QUAD>
__global__ void __launch_bounds__(kThreads, 2)
    window_conv_kernel(const void* __restrict__ x, void* __restrict__ y, DirectConvParams p,
                       WindowPlan l) {
  using Acc = typename Mma<DT>::acc;
  using T = typename Stored<DT>::type;
  constexpr int E = Mma<DT>::kElem;
  constexpr int EPW = 4 / E;     // elements per 32-bit word
  constexpr int KSTEP = 32 / E;  // elements of K per mma
  extern __shared__ __align__(16) unsigned char window_smem[];
  unsigned char* w_s = window_smem;
  unsigned char* win = w_s + l.weight_bytes;
  int* tap_s = reinterpret_cast<int*>(win + l.window_bytes);
  float* scale_s = reinterpret_cast<float*>(tap_s + l.tp);  // the group's scale, then its bias
  Acc* acc_s = reinterpret_cast<Acc*>(win + l.window_bytes + l.table_bytes);

  const int C = int(p.c), H = int(p.h), W = int(p.w), K = int(p.k), OW = int(p.ow);
  const int n = int(blockIdx.x) / l.bands, band = int(blockIdx.x) % l.bands;
  const int oh0 = band * l.bh;
  const int k0 = int(blockIdx.y) * l.group_n, kn = min(l.group_n, K - k0), nt = (kn + 7) / 8;

  // The group's weights (packed rows past K are zero), 16 bytes at a time.
  {
    const int chunks = l.tp * E / 16;
    const uint4* src = static_cast<const uint4*>(p.tc_weights) + int64_t(k0) * chunks;
    for (int i = threadIdx.x; i < nt * 8 * chunks; i += kThreads) {
      const int row = i / chunks, col = i - row * chunks;
      cp_async16(w_s + row * l.w_row + col * 16, src + i);
    }
  }
  // Per tap (r, s, c): its offset in the window, in elements.
  for (int k = threadIdx.x; k < l.tp; k += kThreads) {
    int off = 0;
    if (k < l.taps) {
      const int c = k % C, rs = k / C;
      off = ((rs / p.s) * p.dil_h * l.ww + (rs % p.s) * p.dil_w) * C + c;
    }
    tap_s[k] = off;
  }
  for (int i = threadIdx.x; i < nt * 8; i += kThreads) {
    const int ch = k0 + min(i, kn - 1);
    scale_s[i] = p.scale[ch];
    scale_s[nt * 8 + i] = p.bias ? p.bias[ch] : 0.0f;
  }
  // Weights, taps and scales are the layer's own: staged before the previous layer finishes.
  wait_for_previous_grid();
  // The window: input rows ih0 .. ih0 + wh - 1, columns -pad_w .. ww - pad_w - 1.
  const int ih0 = oh0 * p.stride_h - p.pad_h;
  if (p.convert_input) {
    using Stored_t = typename Stored<DT>::type;
    Stored_t* dst = reinterpret_cast<Stored_t*>(win);
    const int total = l.wh * l.ww * C;
    // Four loads in flight per thread before the first store.
    for (int i0 = threadIdx.x; i0 < total; i0 += 4 * kThreads) {
      float v[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int i = i0 + u * kThreads;
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
        if (i0 + u * kThreads < total) dst[i0 + u * kThreads] = encode<DT>(v[u], p.x_grid);
    }
  } else if (l.copy_words) {
    const int wpp = C * E / 4;  // words per pixel
    const int total = l.wh * l.ww * wpp;
    const uint32_t* src = static_cast<const uint32_t*>(x);
    for (int i = threadIdx.x; i < total; i += kThreads) {
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
    // Four loads in flight per thread before the first store; code 0 (the zero of every
    // symmetric grid) outside the image.
    for (int i0 = threadIdx.x; i0 < total; i0 += 4 * kThreads) {
      Bits v[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int i = i0 + u * kThreads;
        const int pix = quotient(i, l.by_c), c = i - pix * C, wr = quotient(pix, l.by_ww),
                  wc = pix - wr * l.ww;
        const int ih = ih0 + wr, iw = wc - p.pad_w;
        v[u] = i < total && ih >= 0 && ih < H && iw >= 0 && iw < W
                   ? src[((int64_t(n) * H + ih) * W + iw) * C + c]
                   : Bits(0);
      }
#pragma unroll
      for (int u = 0; u < 4; ++u)
        if (i0 + u * kThreads < total) dst[i0 + u * kThreads] = v[u];
    }
  }
  cp_async_wait_all();
  __syncthreads();

  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, g = lane / 4, t = lane % 4;
  const uint32_t* w_words = reinterpret_cast<const uint32_t*>(w_s);
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
  const int64_t y_image = int64_t(n) * l.yh * l.yw * K;
  const int parts = (nt + l.chunk - 1) / l.chunk;
  const float* bias_s = scale_s + nt * 8;
  for (int item = warp; item < l.mtiles * parts; item += kWarps) {
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
        // Offset of this pixel's channel k0 within image n's y (32-bit: window_eligible).
        const int y_pixel = ((y_row0 + pr) * l.yw + pc) * K + k0;
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
            if (row_ok && chan < kn) {
              const float out = activate(mine, p.act, p.lo, p.hi);  // monotonic: after the max
              with_stored_type(p.y_grid.dt, [&](auto yt) {
                constexpr int YT = decltype(yt)::value;
                using Y = typename Stored<YT>::type;
                (static_cast<Y*>(y) + y_image)[y_pixel + chan] = encode_fast<YT>(out, p.y_grid);
              });
            }
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
  if constexpr (QUAD) return;
  __syncthreads();

  // Epilogue: scale, bias, residual, activation, the pool; y in its grid.
  const int out_pixels = out_rows * l.yw;
  const int64_t y_first = (int64_t(n) * l.yh + y_row0) * l.yw;
  // Threads over (output pixel, channel), channels fastest: every lane busy, neighbouring lanes
  // write neighbouring elements of y.
  const FastDiv by_kn = {kn, 1.0f / float(kn)};
  with_stored_type(p.y_grid.dt, [&](auto yt) {
    constexpr int YT = decltype(yt)::value;
    using Y = typename Stored<YT>::type;
    for (int idx = threadIdx.x; idx < out_pixels * kn; idx += kThreads) {
      const int op = quotient(idx, by_kn), ch = idx - op * kn;
      const float sc = scale_s[ch], bi = bias_s[ch];
      const int64_t out = (y_first + op) * K + k0 + ch;
      float v;
      if (!pool) {
        v = float(acc_s[op * l.acc_stride + ch]) * sc + bi;
        if (p.residual) v += load_real(p.residual, out, p.residual_grid);
        v = activate(v, p.act, p.lo, p.hi);
      } else {
        const int orow = quotient(op, l.by_yw), ocol = op - orow * l.yw;
        const Acc* first = acc_s + ((orow * p.pool_h) * OW + ocol * p.pool_w) * l.acc_stride + ch;
        v = -INFINITY;
        for (int i = 0; i < p.pool_h; ++i)
          for (int j = 0; j < p.pool_w; ++j)
            v = fmaxf(v, float(first[(i * OW + j) * l.acc_stride]) * sc + bi);
        v = activate(v, p.act, p.lo, p.hi);  // monotonic: the max of the activations
      }
      static_cast<Y*>(y)[out] = encode_fast<YT>(v, p.y_grid);
    }
  });
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

}  // namespace mixq::backends::cuda::kernels
