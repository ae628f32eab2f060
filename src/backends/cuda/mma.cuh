// Tensor-core helpers shared by the CUDA backend's own convolutions: the warp-level mma.sync of
// each multiplied type (32 bytes of K per step for all four, so fragments are addressed alike) and
// the output encoding used from registers.
#pragma once

#include <cstring>

#include "backends/cuda/real_values.cuh"

namespace mixq::backends::cuda::kernels {

// Bytes of one multiplied element: 1 for s8 and e4m3, 2 for f16 and bf16, 0 for the other types.
inline int mma_element_bytes(int x_dt) {
  return x_dt == kS8 || x_dt == kE4M3 ? 1 : x_dt == kF16 || x_dt == kBF16 ? 2 : 0;
}

// Host: weight codes [K, C, R, S] as `rows` rows (zero past K) of `tp` taps in (R, S, C) order
// (zero past C R S), of the multiplied type: per output channel the taps contiguous, the
// column-major B of mma.sync (the implicit GEMM's and the window form's packing).
inline void pack_tap_rows(int x_dt, const float* codes, int64_t K, int64_t C, int64_t R, int64_t S,
                          int64_t rows, int64_t tp, void* packed) {
  std::memset(packed, 0, size_t(rows * tp * mma_element_bytes(x_dt)));
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t s = 0; s < S; ++s) {
          const int64_t i = k * tp + (r * S + s) * C + c;
          const float v = codes[((k * C + c) * R + r) * S + s];
          if (x_dt == kS8)
            static_cast<int8_t*>(packed)[i] = int8_t(v);
          else if (x_dt == kE4M3)
            static_cast<__nv_fp8_storage_t*>(packed)[i] = __nv_fp8_e4m3(v).__x;
          else if (x_dt == kBF16)
            static_cast<__nv_bfloat16*>(packed)[i] = __float2bfloat16_rn(v);
          else
            static_cast<__half*>(packed)[i] = __float2half_rn(v);
        }
}

template <int DT>
struct Mma;
template <>
struct Mma<kS8> {
  using acc = int;
  static constexpr int kElem = 1;
};
template <>
struct Mma<kF16> {
  using acc = float;
  static constexpr int kElem = 2;
};
template <>
struct Mma<kBF16> {
  using acc = float;
  static constexpr int kElem = 2;
};
template <>
struct Mma<kE4M3> {
  using acc = float;
  static constexpr int kElem = 1;
};

// c += A (16 x 32 bytes, row-major) x B (32 bytes x 8, column-major).
template <int DT>
__device__ __forceinline__ void mma_step(typename Mma<DT>::acc (&c)[4], const unsigned (&a)[4],
                                         unsigned b0, unsigned b1) {
  if constexpr (DT == kS8) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else if constexpr (DT == kF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else if constexpr (DT == kBF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// encode<YT>, with s8's rounding and saturation in one conversion (cvt to s8 clamps).
template <int YT>
__device__ __forceinline__ typename Stored<YT>::type encode_fast(float v, const Grid& g) {
  if constexpr (YT == kS8) {
    short r;
    asm("cvt.rni.s8.f32 %0, %1;" : "=h"(r) : "f"(__fmul_rn(v, g.inv_scale) + g.zero));
    return int8_t(r);
  } else {
    return encode<YT>(v, g);
  }
}

}  // namespace mixq::backends::cuda::kernels
