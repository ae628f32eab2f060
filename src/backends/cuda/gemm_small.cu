// An int8 linear layer with few rows (a batch of classifier inputs) as dot products: a block holds
// the weights of a slice of the outputs in shared memory (all of them where they fit 48 KiB;
// blockIdx.y walks the slices), a warp takes one row of x at a time and sums q_x * q_w four codes
// at a time (dp4a, exact in int32) for 16 outputs per pass, reduces across the warp and runs the
// epilogue. cuBLASLt's int8 kernels need an int32 intermediate and a second kernel for per-channel
// scales, which for a 10-wide output costs more than the products.
#include <algorithm>

#include "backends/cuda/kernels.h"
#include "backends/cuda/launch.cuh"
#include "backends/cuda/real_values.cuh"

namespace mixq::backends::cuda::kernels {
namespace {

constexpr int kWarps = 8;
constexpr int kOutputsPerPass = 16;
constexpr int64_t kMaxWeightBytes = 48 << 10;  // the default shared memory of a launch

__global__ void __launch_bounds__(32 * kWarps)
    small_gemm_s8_kernel(const int8_t* __restrict__ x, void* __restrict__ y, SmallGemmParams p,
                         int slice) {
  release_dependents(p.release_next);
  extern __shared__ int weight_words[];  // [slice outputs][K / 4]
  const int words = int(p.k / 4), N = int(p.n);
  const int first = int(blockIdx.y) * slice, outputs = min(slice, N - first);
  const int* w = static_cast<const int*>(p.weights) + int64_t(first) * words;
  for (int i = int(threadIdx.x); i < outputs * words; i += int(blockDim.x)) weight_words[i] = w[i];
  wait_for_previous_grid();  // the weights are the layer's own (launch.cuh)
  __syncthreads();
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  for (int64_t row = int64_t(blockIdx.x) * kWarps + warp; row < p.m;
       row += int64_t(gridDim.x) * kWarps) {
    const int* xr = reinterpret_cast<const int*>(x + row * p.k);
    for (int n0 = 0; n0 < outputs; n0 += kOutputsPerPass) {
      int acc[kOutputsPerPass];
#pragma unroll
      for (int j = 0; j < kOutputsPerPass; ++j) acc[j] = 0;
      for (int i = lane; i < words; i += 32) {
        const int xv = xr[i];
#pragma unroll
        for (int j = 0; j < kOutputsPerPass; ++j)
          if (n0 + j < outputs) acc[j] = __dp4a(xv, weight_words[(n0 + j) * words + i], acc[j]);
      }
      // Every lane ends with every sum; lane j keeps output n0 + j.
      int mine = 0;
#pragma unroll
      for (int j = 0; j < kOutputsPerPass; ++j) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc[j] += __shfl_xor_sync(0xffffffffu, acc[j], o);
        if (lane == j) mine = acc[j];
      }
      const int n = first + n0 + lane;
      if (lane >= kOutputsPerPass || n0 + lane >= outputs) continue;
      float v = float(mine) * p.scale[n] + (p.bias ? p.bias[n] : 0.0f);
      const int64_t out = row * N + n;
      if (p.residual) v += load_real(p.residual, out, p.residual_grid);
      store_real(y, out, activate(v, p.act, p.lo, p.hi), p.y_grid);
    }
  }
}

}  // namespace

// Outputs whose weights a block holds: all, or a multiple of a pass's that fits.
int64_t slice_outputs(int64_t n, int64_t k) {
  return n * k <= kMaxWeightBytes ? n : kMaxWeightBytes / k / kOutputsPerPass * kOutputsPerPass;
}

bool small_gemm_s8_eligible(int64_t n, int64_t k) {
  return n > 0 && k > 0 && k % 4 == 0 && slice_outputs(n, k) > 0;
}

cudaError_t small_gemm_s8(const void* x, void* y, const SmallGemmParams& p, cudaStream_t stream) {
  if (!small_gemm_s8_eligible(p.n, p.k) || !p.weights || !p.scale ||
      reinterpret_cast<uintptr_t>(x) % 4 != 0 || reinterpret_cast<uintptr_t>(p.weights) % 4 != 0)
    return cudaErrorInvalidValue;
  if (p.m == 0) return cudaSuccess;
  const int64_t slice = slice_outputs(p.n, p.k), slices = (p.n + slice - 1) / slice;
  const int blocks = int(std::min<int64_t>((p.m + kWarps - 1) / kWarps,
                                           std::max<int64_t>(1, int64_t(sm_count()) * 4 / slices)));
  return launch_overlapped(small_gemm_s8_kernel, dim3(unsigned(blocks), unsigned(slices)),
                           dim3(32 * kWarps), size_t(slice * p.k), stream,
                           static_cast<const int8_t*>(x), y, p, int(slice));
}

}  // namespace mixq::backends::cuda::kernels
