// Two chained int8 linear layers in one kernel (see kernels.h, chain_gemm_s8): LeNet's classifier
// head ran as cuBLASLt int32 + our requantize kernel + the small int8 GEMM, three launches for
// 51 M multiply-adds. Here a cluster of eight blocks owns 16 rows: each block stages the rows and
// its slice of fc1's weights by cp.async, its warps multiply them on tensor cores (m16n8k32 s8,
// s32 sums), requantise to the intermediate's s8 grid in shared memory, and sum their slice's
// share of fc2 with dp4a. The eight shares meet through distributed shared memory; each block
// finishes two of the rows.
#include <cooperative_groups.h>

#include <algorithm>
#include <atomic>

#include "backends/cuda/cp_async.cuh"
#include "backends/cuda/kernels.h"
#include "backends/cuda/launch.cuh"
#include "backends/cuda/mma.cuh"
#include "backends/cuda/real_values.cuh"

namespace mixq::backends::cuda::kernels {
namespace {

namespace cg = cooperative_groups;

constexpr int kChainWarps = 8, kChainThreads = 32 * kChainWarps;
constexpr int kRows = 16;  // rows of x per cluster
constexpr size_t kMaxSmem = 227 << 10;
constexpr int kMaxN2 = 256;

struct ChainLayout {
  int kp = 0;       // k1 padded to an mma step (32)
  int row = 0;      // bytes per staged row of x and of W1 (kp + 16: no bank conflicts)
  int mid_row = 0;  // bytes per row of the intermediate codes (slice + 4)
  size_t x_bytes = 0, w_bytes = 0, w2_bytes = 0, scale_bytes = 0, mid_bytes = 0, part_bytes = 0;
  size_t smem = 0;
};

ChainLayout layout_of(int k1, int slice, int n2) {
  ChainLayout l;
  l.kp = chain_k_padded(k1);
  l.row = l.kp + 16;
  l.mid_row = slice + 4;
  l.x_bytes = size_t(kRows) * l.row;
  l.w_bytes = size_t(slice) * l.row;
  l.w2_bytes = size_t(n2) * slice;
  l.scale_bytes = (size_t(2 * slice + 2 * n2) * 4 + 15) / 16 * 16;  // fc1's, then fc2's
  l.mid_bytes = (size_t(kRows) * l.mid_row + 15) / 16 * 16;
  l.part_bytes = size_t(kRows) * n2 * 4;
  l.smem = l.x_bytes + l.w_bytes + l.w2_bytes + l.scale_bytes + l.mid_bytes + l.part_bytes;
  return l;
}

__global__ void __cluster_dims__(kChainCluster, 1, 1) __launch_bounds__(kChainThreads)
    chain_gemm_s8_kernel(const int8_t* __restrict__ x, void* __restrict__ y, ChainGemmParams p,
                         ChainLayout l) {
  release_dependents(p.release_next);
  cg::cluster_group cluster = cg::this_cluster();
  extern __shared__ __align__(16) unsigned char chain_smem[];
  unsigned char* x_s = chain_smem;
  unsigned char* w_s = x_s + l.x_bytes;
  unsigned char* w2_s = w_s + l.w_bytes;  // fc2's weights for this slice: [n2][slice]
  float* scale_s = reinterpret_cast<float*>(w2_s + l.w2_bytes);
  unsigned char* mid_s = w2_s + l.w2_bytes + l.scale_bytes;
  int* part_s = reinterpret_cast<int*>(mid_s + l.mid_bytes);
  const int rank = int(cluster.block_rank());  // the slice of fc1's outputs
  const int64_t row0 = int64_t(blockIdx.y) * kRows;
  const int rows = p.m - row0 < kRows ? int(p.m - row0) : kRows;
  const int first = rank * p.slice;

  // Stage the slice's weights of both layers (padded on the host), its scales and biases: the
  // layers' own, staged before the previous kernel finishes; then x's rows (zero past m and past
  // k1). A thread copies one column of 16-byte pieces (no divisions).
  const int xc = p.k1 / 16, wc = l.kp / 16;
  const int col = int(threadIdx.x) % wc, r0 = int(threadIdx.x) / wc, r_step = kChainThreads / wc;
  {
    const unsigned char* w1 = static_cast<const unsigned char*>(p.w1) + size_t(first) * l.kp;
    for (int r = r0; r < p.slice && r0 < r_step; r += r_step)
      cp_async16(w_s + r * l.row + col * 16, w1 + size_t(r) * l.kp + col * 16);
    const int chunks = p.slice / 16, row = kChainCluster * p.slice;
    const unsigned char* w2 = static_cast<const unsigned char*>(p.w2) + first;
    const int c = int(threadIdx.x) % chunks, o0 = int(threadIdx.x) / chunks,
              o_step = kChainThreads / chunks;
    for (int o = o0; o < p.n2 && o0 < o_step; o += o_step)
      cp_async16(w2_s + o * p.slice + c * 16, w2 + size_t(o) * row + c * 16);
    for (int i = threadIdx.x; i < p.slice / 4; i += kChainThreads) {
      cp_async16(scale_s + 4 * i, p.scale1 + first + 4 * i);
      cp_async16(scale_s + p.slice + 4 * i, p.bias1 + first + 4 * i);
    }
    for (int o = threadIdx.x; o < p.n2; o += kChainThreads) {
      scale_s[2 * p.slice + o] = p.scale2[o];
      scale_s[2 * p.slice + p.n2 + o] = p.bias2[o];
    }
  }
  wait_for_previous_grid();
  for (int r = r0; r < kRows && r0 < r_step; r += r_step) {
    if (r < rows && col < xc)
      cp_async16(x_s + r * l.row + col * 16, x + (row0 + r) * p.k1 + col * 16);
    else
      *reinterpret_cast<uint4*>(x_s + r * l.row + col * 16) = make_uint4(0, 0, 0, 0);
  }
  cp_async_wait_all();
  __syncthreads();

  // fc1: warp w takes channel tiles w, w + 8, ... (8 outputs each); two accumulator sets over
  // alternate steps keep two mma chains in flight (integer sums, added at the end).
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, g = lane / 4, t = lane % 4;
  const int row_words = l.row / 4, steps = l.kp / 32;
  const uint32_t* a_lo = reinterpret_cast<const uint32_t*>(x_s) + g * row_words + t;
  const uint32_t* a_hi = a_lo + 8 * row_words;
  const float* scale1 = scale_s;
  const float* bias1 = scale_s + p.slice;
  for (int j = warp; j < p.slice / 8; j += kChainWarps) {
    int c[4] = {0, 0, 0, 0}, d[4] = {0, 0, 0, 0};
    const uint32_t* b = reinterpret_cast<const uint32_t*>(w_s) + (j * 8 + g) * row_words + t;
    for (int s = 0; s < steps; s += 2) {
      const int kw = s * 8;
      const unsigned a[4] = {a_lo[kw], a_hi[kw], a_lo[kw + 4], a_hi[kw + 4]};
      mma_step<kS8>(c, a, b[kw], b[kw + 4]);
      if (s + 1 < steps) {
        const unsigned a2[4] = {a_lo[kw + 8], a_hi[kw + 8], a_lo[kw + 12], a_hi[kw + 12]};
        mma_step<kS8>(d, a2, b[kw + 8], b[kw + 12]);
      }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int local = j * 8 + 2 * t + (i & 1), r = g + 8 * (i >> 1);
      int8_t code = 0;
      if (first + local < p.n1) {
        const float v =
            activate(float(c[i] + d[i]) * scale1[local] + bias1[local], p.act1, p.lo1, p.hi1);
        code = encode_fast<kS8>(v, p.mid_grid);
      }
      reinterpret_cast<int8_t*>(mid_s)[r * l.mid_row + local] = code;
    }
  }
  __syncthreads();

  // fc2's share of this slice: rows x outputs, dp4a over the slice's codes.
  const int words = p.slice / 4;
  for (int i = threadIdx.x; i < kRows * p.n2; i += kChainThreads) {
    const int r = i / p.n2, o = i - r * p.n2;
    const int* m = reinterpret_cast<const int*>(mid_s + r * l.mid_row);
    const int* wr = reinterpret_cast<const int*>(w2_s + o * p.slice);
    int sum = 0;
    for (int w = 0; w < words; ++w) sum = __dp4a(m[w], wr[w], sum);
    part_s[i] = sum;
  }
  cluster.sync();

  // Block `rank` finishes rows 2 rank and 2 rank + 1: the eight shares, then fc2's epilogue.
  constexpr int kRowsPerBlock = kRows / kChainCluster;
  for (int i = threadIdx.x; i < kRowsPerBlock * p.n2; i += kChainThreads) {
    const int r = rank * kRowsPerBlock + i / p.n2, o = i % p.n2;
    int sum = 0;
#pragma unroll
    for (int q = 0; q < kChainCluster; ++q) sum += cluster.map_shared_rank(part_s, q)[r * p.n2 + o];
    if (r < rows) {
      const float v =
          activate(float(sum) * scale_s[2 * p.slice + o] + scale_s[2 * p.slice + p.n2 + o], p.act2,
                   p.lo2, p.hi2);
      store_real(y, (row0 + r) * p.n2 + o, v, p.y_grid);
    }
  }
  cluster.sync();  // no block leaves while another reads its shares
}

}  // namespace

int chain_k_padded(int k1) {
  return (k1 + 31) / 32 * 32;
}

int chain_slice(int n1) {
  return (n1 + 16 * kChainCluster - 1) / (16 * kChainCluster) * 16;
}

bool chain_gemm_s8_eligible(int64_t k1, int64_t n1, int64_t n2) {
  if (k1 < 16 || k1 % 16 != 0 || k1 > 16 * kChainThreads || n1 < 1 || n1 > 2048 || n2 < 1 ||
      n2 > kMaxN2)
    return false;
  return layout_of(int(k1), chain_slice(int(n1)), int(n2)).smem <= kMaxSmem;
}

cudaError_t chain_gemm_s8(const void* x, void* y, const ChainGemmParams& p, cudaStream_t stream) {
  if (!chain_gemm_s8_eligible(p.k1, p.n1, p.n2) || p.slice != chain_slice(p.n1) || !p.w1 || !p.w2 ||
      !p.scale1 || !p.bias1 || !p.scale2 || !p.bias2 || reinterpret_cast<uintptr_t>(x) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(p.w1) % 16 != 0 || reinterpret_cast<uintptr_t>(p.w2) % 4 != 0)
    return cudaErrorInvalidValue;
  if (p.m == 0) return cudaSuccess;
  const ChainLayout l = layout_of(p.k1, p.slice, p.n2);
  static std::atomic<bool> configured{false};
  if (const cudaError_t e =
          reserve_shared_memory(chain_gemm_s8_kernel, kMaxSmem, false, configured);
      e != cudaSuccess)
    return e;
  const dim3 grid(unsigned(kChainCluster), unsigned((p.m + kRows - 1) / kRows));
  return launch_overlapped(chain_gemm_s8_kernel, grid, dim3(kChainThreads), l.smem, stream,
                           static_cast<const int8_t*>(x), y, p, l);
}

}  // namespace mixq::backends::cuda::kernels
