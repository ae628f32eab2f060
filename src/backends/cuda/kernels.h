// The CUDA backend's own kernels, callable from C++20 host code: plain structs and launch
// functions only (the .cu file is compiled as C++17 by nvcc).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mixq::backends::cuda::kernels {

enum Dt : int { kF32, kF16, kBF16, kS8, kU8, kE4M3, kI32, kI64, kBool };

// How a tensor's stored elements map to real values: real = (stored - zero) * scale.
struct Grid {
  int dt = kF32;
  float scale = 1.0f;
  float zero = 0.0f;
  bool nhwc = false;
};

struct PoolParams {
  int64_t N, C, H, W, OH, OW;
  int kh, kw, sh, sw, ph, pw, dh, dw;
  bool max, count_pad;
  int64_t pad_h_end, pad_w_end;  // last padded row/column + 1 (for count_include_pad)
};

enum Unary : int { kRelu, kClip, kSigmoid, kTanh, kLeakyRelu, kHardSwish, kHardSigmoid };

constexpr int kMaxRank = 6;
struct Strides {
  int rank;
  int64_t out[kMaxRank];  // output dims
  int64_t a[kMaxRank];    // strides of input a over the output dims (0 when broadcast)
  int64_t b[kMaxRank];
};

enum Binary : int { kAdd, kSub, kMul, kDiv };

constexpr int kThreads = 256;

cudaError_t reformat(const void* x, Grid gx, void* y, Grid gy, int64_t total, int64_t C, int64_t H,
                     int64_t W, bool four_d, cudaStream_t stream);
cudaError_t pool(const void* x, Grid gx, void* y, Grid gy, const PoolParams& p,
                 cudaStream_t stream);
cudaError_t unary(const void* x, Grid gx, void* y, Grid gy, int64_t total, int op, float a, float b,
                  cudaStream_t stream);
cudaError_t binary(const void* x, Grid gx, const void* z, Grid gz, void* y, Grid gy, int64_t total,
                   const Strides& s, int op, bool same_layout, cudaStream_t stream);
// Copies one input into its slice of the output: outer x [extent] x inner bytes, physically.
cudaError_t concat_slice(const void* x, void* y, int64_t outer, int64_t x_mid, int64_t y_mid,
                         int64_t offset, int64_t inner_bytes, cudaStream_t stream);
cudaError_t softmax(const void* x, Grid gx, void* y, Grid gy, int64_t rows, int64_t cols, bool log,
                    cudaStream_t stream);
// Split: one output's slice of the input, outer x [y_mid of x_mid, from offset] x inner bytes.
cudaError_t split_slice(const void* x, void* y, int64_t outer, int64_t x_mid, int64_t y_mid,
                        int64_t offset, int64_t inner_bytes, cudaStream_t stream);
// Transpose: y[i] = x[sum over y's axes d of index_d(i) * src_stride[d]] (element strides).
struct Permute {
  int rank;
  int64_t out[kMaxRank];         // y's dims
  int64_t src_stride[kMaxRank];  // x's stride along the axis that y's axis d walks
};
cudaError_t permute(const void* x, void* y, const Permute& p, int64_t total, size_t element_bytes,
                    cudaStream_t stream);

// The epilogue of a GEMM or convolution whose library call wrote an intermediate `acc`
// (row-major [rows, cols], cols = output channels, the innermost dimension of NHWC and of a
// linear layer's output):
//   y[r, c] = act(acc[r, c] * scale[c] + bias[c] + residual[r, c])   stored in y's grid
// scale == nullptr means `scalar_scale` for every column; bias == nullptr means 0; the residual
// (same element order as y) is read in its own grid. Integer accumulators (kI32) are converted
// exactly to float before scaling; act: 0 none, 1 relu, 2 clip to [lo, hi] (real units).
enum Activation : int { kActNone = 0, kActRelu = 1, kActClip = 2 };
struct EpilogueParams {
  int acc_dt = kF32;  // kI32, kF32, kF16 or kBF16
  const float* scale = nullptr;
  float scalar_scale = 1.0f;
  const float* bias = nullptr;
  const void* residual = nullptr;
  Grid residual_grid;
  int act = kActNone;
  float lo = 0.0f, hi = 0.0f;
  int64_t rows = 0, cols = 0;
};
// x [pixels, c] -> y [pixels, padded_c], the extra channels zero; elements of `element_bytes`.
cudaError_t pad_channels(const void* x, void* y, int64_t pixels, int64_t c, int64_t padded_c,
                         size_t element_bytes, cudaStream_t stream);
cudaError_t epilogue(const void* acc, void* y, Grid gy, const EpilogueParams& p,
                     cudaStream_t stream);

}  // namespace mixq::backends::cuda::kernels
