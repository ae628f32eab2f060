// Device helpers shared by the CUDA backend's own kernels: reading and writing real values in a
// tensor's grid (its storage type, scale and zero point).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>
#include <type_traits>

#include "backends/cuda/kernels.h"

namespace mixq::backends::cuda::kernels {

// Bytes of one stored element of a grid's type.
__host__ __device__ constexpr size_t grid_bytes(int dt) {
  return dt == kF32 || dt == kI32 ? 4 : dt == kF16 || dt == kBF16 ? 2 : dt == kI64 ? 8 : 1;
}

// A grid's storage types at compile time: kernels that write many values of one type from
// registers use encode/decode directly (no switch per element); load_real/store_real dispatch.
template <int DT>
struct Stored;
template <>
struct Stored<kF32> {
  using type = float;
};
template <>
struct Stored<kF16> {
  using type = __half;
};
template <>
struct Stored<kBF16> {
  using type = __nv_bfloat16;
};
template <>
struct Stored<kS8> {
  using type = int8_t;
};
template <>
struct Stored<kU8> {
  using type = uint8_t;
};
template <>
struct Stored<kE4M3> {
  using type = __nv_fp8_storage_t;
};

template <int DT>
__device__ __forceinline__ typename Stored<DT>::type encode(float x, const Grid& g) {
  if constexpr (DT == kF32) {
    return x;
  } else if constexpr (DT == kF16) {
    return __float2half_rn(x);
  } else if constexpr (DT == kBF16) {
    return __float2bfloat16_rn(x);
  } else if constexpr (DT == kS8) {
    return int8_t(fminf(fmaxf(rintf(x * g.inv_scale) + g.zero, -128.0f), 127.0f));
  } else if constexpr (DT == kU8) {
    return uint8_t(fminf(fmaxf(rintf(x * g.inv_scale) + g.zero, 0.0f), 255.0f));
  } else {
    return __nv_cvt_float_to_fp8(x * g.inv_scale, __NV_SATFINITE, __NV_E4M3);
  }
}

template <int DT>
__device__ __forceinline__ float decode(const void* p, int64_t i, const Grid& g) {
  const auto v = static_cast<const typename Stored<DT>::type*>(p)[i];
  if constexpr (DT == kF32) {
    return v;
  } else if constexpr (DT == kF16) {
    return __half2float(v);
  } else if constexpr (DT == kBF16) {
    return __bfloat162float(v);
  } else if constexpr (DT == kE4M3) {
    __nv_fp8_e4m3 f;
    f.__x = v;
    return (float(f) - g.zero) * g.scale;
  } else {
    return (float(v) - g.zero) * g.scale;
  }
}

// Calls f(std::integral_constant<int, DT>) for a storage type the grids hold (f32, f16, bf16, s8,
// u8, e4m3); false for the others (integer tensors).
#pragma nv_exec_check_disable
template <typename F>
__host__ __device__ __forceinline__ bool with_stored_type(int dt, F&& f) {
  switch (dt) {
    case kF32:
      f(std::integral_constant<int, kF32>{});
      return true;
    case kF16:
      f(std::integral_constant<int, kF16>{});
      return true;
    case kBF16:
      f(std::integral_constant<int, kBF16>{});
      return true;
    case kS8:
      f(std::integral_constant<int, kS8>{});
      return true;
    case kU8:
      f(std::integral_constant<int, kU8>{});
      return true;
    case kE4M3:
      f(std::integral_constant<int, kE4M3>{});
      return true;
    default:
      return false;
  }
}

// The real value of element i (0 for integer tensors).
__device__ __forceinline__ float load_real(const void* p, int64_t i, const Grid& g) {
  float v = 0.0f;
  with_stored_type(g.dt, [&](auto t) { v = decode<decltype(t)::value>(p, i, g); });
  return v;
}

// Element i := x in the grid (rintf rounds half to even; s8/u8 saturate, e4m3 saturates to its
// largest finite value); integer tensors are not written.
__device__ __forceinline__ void store_real(void* p, int64_t i, float x, const Grid& g) {
  with_stored_type(g.dt, [&](auto t) {
    constexpr int kDt = decltype(t)::value;
    static_cast<typename Stored<kDt>::type*>(p)[i] = encode<kDt>(x, g);
  });
}

// The activation the fused epilogues apply: relu, or clip to [lo, hi] (in y's real units).
__device__ __forceinline__ float activate(float v, int act, float lo, float hi) {
  if (act == kActRelu) return fmaxf(v, 0.0f);
  if (act == kActClip) return fminf(fmaxf(v, lo), hi);
  return v;
}

// The bits of a stored element, for packing several into one 32-bit word.
template <typename T>
__device__ __forceinline__ uint32_t bits_of(T v) {
  if constexpr (sizeof(T) == 4)
    return __float_as_uint(v);
  else if constexpr (std::is_same_v<T, __half>)
    return __half_as_ushort(v);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return __bfloat16_as_ushort(v);
  else
    return uint32_t(uint8_t(v));
}

}  // namespace mixq::backends::cuda::kernels
