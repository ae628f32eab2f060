// Element types of tensors, and the storage types for the 16- and 8-bit floats.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace mixq {

enum class DType : uint8_t {
  kFloat32,
  kFloat16,
  kBFloat16,
  kFloat8E4M3,  // e4m3fn: no infinities, NaN = S.1111.111, max 448
  kInt8,
  kUInt8,
  kInt32,
  kInt64,
  kBool,
};

inline constexpr DType kAllDTypes[] = {DType::kFloat32,    DType::kFloat16, DType::kBFloat16,
                                       DType::kFloat8E4M3, DType::kInt8,    DType::kUInt8,
                                       DType::kInt32,      DType::kInt64,   DType::kBool};

size_t dtype_size(DType dtype);
// Short names as users write them: f32, f16, bf16, f8e4m3, i8, u8, i32, i64, bool.
std::string_view dtype_name(DType dtype);
std::optional<DType> dtype_from_name(std::string_view name);
bool dtype_is_float(DType dtype);

// IEEE binary16 storage.
struct Half {
  uint16_t bits = 0;
};
// bfloat16 storage (upper half of a binary32).
struct BFloat16 {
  uint16_t bits = 0;
};
// float8 e4m3fn storage.
struct Float8E4M3 {
  uint8_t bits = 0;
};

// --- conversions, round to nearest even ---------------------------------------------------------

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float half_to_float(Half h) {
  const uint32_t sign = (h.bits & 0x8000u) << 16;
  uint32_t exp = (h.bits >> 10) & 0x1f;
  uint32_t mant = h.bits & 0x3ffu;
  if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (mant << 13));  // inf / nan
  if (exp == 0) {
    if (mant == 0) return bits_float(sign);
    // subnormal: normalise
    int e = -1;
    do {
      mant <<= 1;
      ++e;
    } while ((mant & 0x400u) == 0);
    mant &= 0x3ffu;
    return bits_float(sign | (uint32_t(127 - 15 - e) << 23) | (mant << 13));
  }
  return bits_float(sign | ((exp + 127 - 15) << 23) | (mant << 13));
}

inline Half float_to_half(float f) {
  const uint32_t u = float_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t abs = u & 0x7fffffffu;
  Half h;
  if (abs >= 0x7f800000u) {  // inf or nan
    h.bits = uint16_t(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
    return h;
  }
  if (abs >= 0x477ff000u) {  // rounds to >= 65520: overflow to inf
    h.bits = uint16_t(sign | 0x7c00u);
    return h;
  }
  if (abs < 0x38800000u) {  // below the smallest normal half: subnormal or zero
    // value = abs as float; half subnormal unit is 2^-24.
    const float a = bits_float(abs);
    // scale to units of 2^-24 and round to nearest even via float arithmetic
    const float scaled = a * 16777216.0f;  // 2^24
    uint32_t q = uint32_t(scaled);
    const float rem = scaled - float(q);
    if (rem > 0.5f || (rem == 0.5f && (q & 1u))) ++q;
    h.bits = uint16_t(sign | q);
    return h;
  }
  uint32_t mant = abs & 0x7fffffu;
  uint32_t exp = (abs >> 23) - 127 + 15;
  uint32_t result = (exp << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (result & 1u))) ++result;
  h.bits = uint16_t(sign | result);
  return h;
}

inline float bf16_to_float(BFloat16 b) {
  return bits_float(uint32_t(b.bits) << 16);
}

inline BFloat16 float_to_bf16(float f) {
  uint32_t u = float_bits(f);
  BFloat16 b;
  if ((u & 0x7fffffffu) > 0x7f800000u) {  // nan stays nan
    b.bits = uint16_t((u >> 16) | 0x40u);
    return b;
  }
  const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  b.bits = uint16_t((u + rounding) >> 16);
  return b;
}

inline float fp8e4m3_to_float(Float8E4M3 v) {
  const uint32_t sign = (v.bits & 0x80u) << 24;
  const uint32_t exp = (v.bits >> 3) & 0xfu;
  const uint32_t mant = v.bits & 0x7u;
  if (exp == 0xf && mant == 0x7) return bits_float(sign | 0x7fc00000u);  // nan
  if (exp == 0) {
    // subnormal: mant * 2^-9
    const float mag = float(mant) * (1.0f / 512.0f);
    return sign ? -mag : mag;
  }
  return bits_float(sign | ((exp + 127 - 7) << 23) | (mant << 20));
}

// Saturating conversion (values beyond +-448 clamp to +-448), as ONNX QuantizeLinear and
// cuBLASLt's e4m3 outputs do. NaN maps to NaN.
inline Float8E4M3 float_to_fp8e4m3(float f) {
  const uint32_t u = float_bits(f);
  const uint8_t sign = uint8_t((u >> 24) & 0x80u);
  const uint32_t abs = u & 0x7fffffffu;
  Float8E4M3 r;
  if (abs > 0x7f800000u) {
    r.bits = uint8_t(sign | 0x7fu);
    return r;
  }
  const float a = bits_float(abs);
  if (a >= 448.0f) {
    r.bits = uint8_t(sign | 0x7eu);
    return r;
  }
  if (a < 0.015625f) {  // below 2^-6: subnormal in units of 2^-9
    const float scaled = a * 512.0f;
    uint32_t q = uint32_t(scaled);
    const float rem = scaled - float(q);
    if (rem > 0.5f || (rem == 0.5f && (q & 1u))) ++q;
    r.bits = uint8_t(sign | q);  // q == 8 becomes the smallest normal, which is correct
    return r;
  }
  uint32_t exp = (abs >> 23) - 127 + 7;
  uint32_t mant = abs & 0x7fffffu;
  uint32_t result = (exp << 3) | (mant >> 20);
  const uint32_t rest = mant & 0xfffffu;
  if (rest > 0x80000u || (rest == 0x80000u && (result & 1u))) ++result;
  if (result > 0x7eu) result = 0x7eu;  // saturate instead of producing nan
  r.bits = uint8_t(sign | result);
  return r;
}

// Compile-time mapping from C++ storage types to DType.
template <typename T>
struct DTypeOf;
template <>
struct DTypeOf<float> {
  static constexpr DType value = DType::kFloat32;
};
template <>
struct DTypeOf<Half> {
  static constexpr DType value = DType::kFloat16;
};
template <>
struct DTypeOf<BFloat16> {
  static constexpr DType value = DType::kBFloat16;
};
template <>
struct DTypeOf<Float8E4M3> {
  static constexpr DType value = DType::kFloat8E4M3;
};
template <>
struct DTypeOf<int8_t> {
  static constexpr DType value = DType::kInt8;
};
template <>
struct DTypeOf<uint8_t> {
  static constexpr DType value = DType::kUInt8;
};
template <>
struct DTypeOf<int32_t> {
  static constexpr DType value = DType::kInt32;
};
template <>
struct DTypeOf<int64_t> {
  static constexpr DType value = DType::kInt64;
};
template <>
struct DTypeOf<bool> {
  static constexpr DType value = DType::kBool;
};

}  // namespace mixq
