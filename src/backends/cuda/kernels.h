// The CUDA backend's own kernels, callable from C++20 host code: plain structs and launch
// functions only (the .cu file is compiled as C++17 by nvcc).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mixq::backends::cuda::kernels {

enum Dt : int { kF32, kF16, kBF16, kS8, kU8, kE4M3, kI32, kI64, kBool };

// How a tensor's stored elements map to real values: real = (stored - zero) * scale. Kernels
// quantise with inv_scale = 1 / scale (a multiply, as cuDNN's and cuBLASLt's output scales do; a
// full-range division per element made the memory-bound kernels compute-bound): the quotient may
// differ from x / scale in its last bit, moving a value on a rounding boundary by one code.
struct Grid {
  int dt = kF32;
  float scale = 1.0f;
  float zero = 0.0f;
  bool nhwc = false;
  float inv_scale = 1.0f;
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
// Transpose, Slice and Split: y[i] = x[src_offset + sum over y's axes d of index_d(i) *
// src_stride[d]] (element strides; a slice's step multiplies its stride, a negative step walks
// backwards). Elements keep their bits where both grids agree, else are converted (dtype, scale).
struct Permute {
  int rank;
  int64_t out[kMaxRank];         // y's dims
  int64_t src_stride[kMaxRank];  // x's stride along the axis that y's axis d walks
  int64_t src_offset = 0;        // x's element that y's first element reads
};
cudaError_t permute(const void* x, Grid gx, void* y, Grid gy, const Permute& p, int64_t total,
                    cudaStream_t stream);

// ReduceMean / Sum / Max / Min: y[i] reduces x over the reduced axes at the kept axes' index i.
enum ReduceKind : int { kReduceSum, kReduceMean, kReduceMax, kReduceMin };
struct ReduceParams {
  int kept_rank = 0, reduced_rank = 0;
  int64_t kept[kMaxRank], kept_stride[kMaxRank];        // y's index space, x's strides along it
  int64_t reduced[kMaxRank], reduced_stride[kMaxRank];  // the reduced dims, x's strides
  int64_t outputs = 0, count = 0;                       // products of kept / reduced dims
  int kind = kReduceSum;
};
cudaError_t reduce(const void* x, Grid gx, void* y, Grid gy, const ReduceParams& p,
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

// Multiprocessors of the current device (132 where it cannot be asked).
int sm_count();

// --- direct convolution (conv_direct.cu)
// ----------------------------------------------------------- A 2-D convolution of an NHWC input
// into an NHWC output for layers whose filters are small (stems, LeNet-sized layers), where cuDNN's
// implicit GEMMs waste most of their tiles. Products of the stored codes (f32, f16, bf16, s8 or
// e4m3) are exact in fp32 and summed in fp32; for s8 with at most kDirectMaxTaps products per
// output the sum is exact too, so the result equals an integer convolution. Epilogue in real units,
// as the split form's:
//   y = act(acc * scale[k] + bias[k] + residual) stored in y's grid.
// Weights: direct_pack_weights() of the stored codes.
constexpr int kDirectMaxTaps = 1024;  // C * R * S
constexpr int64_t kDirectMaxWeights =
    4096;  // padded K * C * R * S floats (16 KiB of shared memory)
constexpr int64_t kDirectMaxChannels = 128;  // K: at most 8 channel tiles (warps) per block
constexpr int64_t kDirectMaxElements = (int64_t(1) << 31) - 1;  // x and y: 32-bit indices
// Which of our convolution kernels runs: the FMA form (small filters), the small tensor-core form
// (at most kDirectTcTaps products per output) or the implicit GEMM (igemm_conv, any filter).
// The window form (window_conv) also pools and converts its input on the way in.
enum DirectForm { kDirectFma = 0, kDirectTc = 1, kDirectIgemm = 2, kDirectWindow = 3 };
struct DirectConvParams {
  int form = kDirectFma;
  int64_t n = 0, h = 0, w = 0, c = 0, k = 0, oh = 0, ow = 0;
  int r = 0, s = 0, stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dil_h = 1, dil_w = 1;
  int x_dt = kF32;  // the input's storage type (its codes are read, no scale)
  const float* weights = nullptr;
  const float* scale = nullptr;  // per output channel, real units per unit of the sum
  const float* bias = nullptr;   // real units, may be null
  const void* residual = nullptr;
  Grid residual_grid;
  int act = kActNone;
  float lo = 0.0f, hi = 0.0f;
  Grid y_grid;
  // Tensor-core form (direct_tensor_core_eligible): direct_tc_pack_weights() of the codes; when
  // set, the convolution runs as an implicit GEMM on tensor cores (s8 x s8 -> s32 exactly; e4m3
  // as the f16 values they are exactly, f16 and bf16 with f32 sums).
  const void* tc_weights = nullptr;
  // Window form only. A fused max pool of pool_h x pool_w windows with the same strides, no
  // padding (0: none): y holds (oh / pool_h) x (ow / pool_w) pixels, each the maximum of its
  // window after the epilogue (encoding is monotonic, so pooling before it is exact).
  int pool_h = 0, pool_w = 0;
  // Window form only. A fused input reformat: x is stored in x_src (any grid; NCHW where
  // x_src_nchw, else NHWC) and each element is converted to x_grid (the convolution's input format,
  // x_dt) as the window is staged, exactly as the Reformat kernel converts it.
  bool convert_input = false, x_src_nchw = false;
  Grid x_src, x_grid;
  // The next launch on the stream is one of our kernels (launch.cuh, release_dependents).
  bool release_next = false;
};
// Whether the tensor-core form applies: f16, bf16, s8 or e4m3 input, at most kDirectTcTaps
// products per output and kDirectTcChannels output channels, its tiles within 48 KiB of shared
// memory.
constexpr int kDirectTcTaps = 128;
constexpr int kDirectTcChannels = 64;
bool direct_tensor_core_eligible(int x_dt, int64_t k, int64_t c, int64_t r, int64_t s);
// Bytes of the packed tensor-core weights, and the packing of codes [K, C, R, S] into them: a
// [taps padded to 16] x [K padded to 16] row-major matrix of the multiplied type (s8, f16, bf16).
int64_t direct_tc_weight_bytes(int x_dt, int64_t k, int64_t c, int64_t r, int64_t s);
void direct_tc_pack_weights(int x_dt, const float* codes, int64_t K, int64_t C, int64_t R,
                            int64_t S, void* packed);
// Output channels one thread computes (the weights are padded to a multiple of it).
int direct_channel_tile(int64_t k);
// Floats of the packed weights, and the packing of codes [K, C, R, S] (row-major) into them:
// [K / tile][R, S, C][tile], output channels past K zero.
int64_t direct_weight_count(int64_t k, int64_t c, int64_t r, int64_t s);
void direct_pack_weights(const float* codes, int64_t K, int64_t C, int64_t R, int64_t S,
                         float* packed);
// Runs p.form (the FMA form needs `weights`, the others `tc_weights`).
cudaError_t direct_conv(const void* x, void* y, const DirectConvParams& p, cudaStream_t stream);

// --- implicit-GEMM convolution (conv_igemm.cu)
// ---------------------------------------------------- An ungrouped 2-D convolution with filters of
// at most 9 taps (1x1, 3x3), any stride and dilation, as an implicit GEMM on tensor cores (s8 x s8
// -> s32 exactly; f16, bf16 and e4m3 with f32 sums): the input's channels must fill
// 64-byte chunks (C a multiple of 64 for s8/e4m3, of 32 for f16/bf16), x and the weights 16-byte
// aligned, the tile's input window and weights within shared memory. Weights (in `tc_weights`):
// igemm_pack_weights(); the epilogue is the direct convolution's. Only p's geometry and x_dt are
// read by igemm_eligible.
bool igemm_eligible(const DirectConvParams& p);
// Bytes of the packed weights, and the packing of codes [K, C, R, S] into them: [K padded to 16]
// x [taps (R, S, C) padded to 16] row-major, of the multiplied type (s8, e4m3, f16, bf16).
int64_t igemm_weight_bytes(int x_dt, int64_t k, int64_t c, int64_t r, int64_t s);
void igemm_pack_weights(int x_dt, const float* codes, int64_t K, int64_t C, int64_t R, int64_t S,
                        void* packed);
cudaError_t igemm_conv(const void* x, void* y, const DirectConvParams& p, cudaStream_t stream);

// --- convolution from a staged input window (conv_window.cu)
// ------------------------------------------ An ungrouped 2-D convolution of any filter, stride and
// dilation on tensor cores (s8 x s8 -> s32 exactly; f16, bf16, e4m3 with f32 sums) for layers with
// few input channels (stems, LeNet-sized layers): a block stages the input rows a band of output
// rows reads (zero outside the image) and its channel group's weights in shared memory, and the
// warps gather their A fragments from the window through a per-tap offset table. Optionally pools
// (DirectConvParams::pool_h) and converts its input (convert_input). Weights (`tc_weights`):
// window_pack_weights().
bool window_eligible(const DirectConvParams& p);
// Bytes of the packed weights, and the packing of codes [K, C, R, S]: [K padded to 8] x [taps (R,
// S, C) padded to 32 bytes] row-major, of the multiplied type (s8, e4m3, f16, bf16).
int64_t window_weight_bytes(int x_dt, int64_t k, int64_t c, int64_t r, int64_t s);
void window_pack_weights(int x_dt, const float* codes, int64_t K, int64_t C, int64_t R, int64_t S,
                         void* packed);
cudaError_t window_conv(const void* x, void* y, const DirectConvParams& p, cudaStream_t stream);
// Two window convolutions in a row in one kernel (LeNet's conv-relu-pool, conv-relu-pool): a block
// takes one image through both, and the first's outputs (y in first.y_grid, which must be the
// second's input format: same x_dt) go straight into the second's window in shared memory, never
// to memory. Each convolution takes at most 64 output channels, no residual, the second no input
// conversion and channels that fill 32-bit words; both windows and weights within shared memory.
// `second.release_next` holds for the launch.
bool window_chain_eligible(const DirectConvParams& first, const DirectConvParams& second);
cudaError_t window_chain(const void* x, void* y, const DirectConvParams& first,
                         const DirectConvParams& second, cudaStream_t stream);

// --- small int8 linear layers (gemm_small.cu)
// ----------------------------------------------------- y[m, n] = act(scale[n] * sum_k q_x[m, k]
// q_w[n, k] + bias[n] + residual) in y's grid, the sums exact in int32 (dp4a), for layers whose K
// is a multiple of 4 and at most 3072 (16 outputs' weights within 48 KiB of shared memory): a
// block holds the weights of all outputs, or of a slice of them (LeNet's fc1 in 11 slices).
struct SmallGemmParams {
  int64_t m = 0, n = 0, k = 0;
  const void* weights = nullptr;  // s8 [N, K] row-major, 4-byte aligned
  const float* scale = nullptr;   // per output: s_x * s_w[n]
  const float* bias = nullptr;    // real units, may be null
  const void* residual = nullptr;
  Grid residual_grid;
  int act = kActNone;
  float lo = 0.0f, hi = 0.0f;
  Grid y_grid;
  bool release_next = false;  // as DirectConvParams::release_next
};
bool small_gemm_s8_eligible(int64_t n, int64_t k);
cudaError_t small_gemm_s8(const void* x, void* y, const SmallGemmParams& p, cudaStream_t stream);

// --- two chained int8 linear layers (gemm_chain.cu)
// ------------------------------------------------ y = act2(s2 * (W2 . mid) + b2) with
// mid = s8(act1(s1 * (W1 . x) + b1)): a classifier head (LeNet's fc1 -> relu -> fc2) in one
// kernel. A cluster of kChainCluster blocks takes 16 rows of x; block r computes fc1 outputs
// [r * slice, (r + 1) * slice) on tensor cores (s32 sums), requantises them to mid's grid in
// shared memory and sums their share of fc2 (dp4a, s32); the cluster adds the eight shares
// through distributed shared memory. Integer sums throughout, so the result equals the two layers
// run one after the other.
constexpr int kChainCluster = 8;
struct ChainGemmParams {
  int64_t m = 0;
  int k1 = 0, n1 = 0, n2 = 0;
  int slice = 0;             // fc1 outputs per block: a multiple of 16, kChainCluster * slice >= n1
  const void* w1 = nullptr;  // s8 [kChainCluster * slice][chain_k_padded(k1)], zero padded
  const float* scale1 = nullptr;  // [kChainCluster * slice]: s_x * s_w1[n] (zero past n1)
  const float* bias1 = nullptr;   // [kChainCluster * slice], real units (zero past n1)
  int act1 = kActNone;
  float lo1 = 0.0f, hi1 = 0.0f;
  Grid mid_grid;                  // s8, symmetric
  const void* w2 = nullptr;       // s8 [n2][kChainCluster * slice], columns past n1 zero
  const float* scale2 = nullptr;  // [n2]: s_mid * s_w2[o]
  const float* bias2 = nullptr;   // [n2], real units
  int act2 = kActNone;
  float lo2 = 0.0f, hi2 = 0.0f;
  Grid y_grid;
  bool release_next = false;  // as DirectConvParams::release_next
};
int chain_k_padded(int k1);
int chain_slice(int n1);
// Whether the chain runs these sizes: k1 a multiple of 16, the shared memory of a block within
// the GPU's (x rows, the slice's weights, mid and the partial sums), n2 at most 256.
bool chain_gemm_s8_eligible(int64_t k1, int64_t n1, int64_t n2);
cudaError_t chain_gemm_s8(const void* x, void* y, const ChainGemmParams& p, cudaStream_t stream);

}  // namespace mixq::backends::cuda::kernels
