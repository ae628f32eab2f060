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

__device__ __forceinline__ float load_real(const void* p, int64_t i, const Grid& g) {
  float q;
  switch (g.dt) {
    case kF32:
      return static_cast<const float*>(p)[i];
    case kF16:
      return __half2float(static_cast<const __half*>(p)[i]);
    case kBF16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    case kS8:
      q = float(static_cast<const int8_t*>(p)[i]);
      break;
    case kU8:
      q = float(static_cast<const uint8_t*>(p)[i]);
      break;
    case kE4M3:
      q = float(static_cast<const __nv_fp8_e4m3*>(p)[i]);
      break;
    default:
      return 0.0f;
  }
  return (q - g.zero) * g.scale;
}

__device__ __forceinline__ void store_real(void* p, int64_t i, float x, const Grid& g) {
  switch (g.dt) {
    case kF32:
      static_cast<float*>(p)[i] = x;
      return;
    case kF16:
      static_cast<__half*>(p)[i] = __float2half_rn(x);
      return;
    case kBF16:
      static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(x);
      return;
    case kS8: {
      const float q = rintf(x * g.inv_scale) + g.zero;  // rintf: round half to even
      static_cast<int8_t*>(p)[i] = int8_t(fminf(fmaxf(q, -128.0f), 127.0f));
      return;
    }
    case kU8: {
      const float q = rintf(x * g.inv_scale) + g.zero;
      static_cast<uint8_t*>(p)[i] = uint8_t(fminf(fmaxf(q, 0.0f), 255.0f));
      return;
    }
    case kE4M3: {
      __nv_fp8_storage_t s = __nv_cvt_float_to_fp8(x * g.inv_scale, __NV_SATFINITE, __NV_E4M3);
      static_cast<__nv_fp8_storage_t*>(p)[i] = s;
      return;
    }
    default:
      return;
  }
}

// The same conversions with the storage type fixed at compile time (no switch per element), for
// kernels that write many values of one type from registers.
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
