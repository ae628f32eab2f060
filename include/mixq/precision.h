// The precisions a layer can run at.
#pragma once

#include <optional>
#include <string_view>

namespace mixq {

enum class Precision : uint8_t {
  kFP32,
  kTF32,  // fp32 storage, tensor-core products with 10-bit mantissas (GPU only)
  kFP16,
  kBF16,
  kINT8,
  kFP8,  // e4m3 (Hopper)
};

inline constexpr Precision kAllPrecisions[] = {Precision::kFP32, Precision::kTF32, Precision::kFP16,
                                               Precision::kBF16, Precision::kINT8, Precision::kFP8};

// "fp32", "tf32", "fp16", "bf16", "int8", "fp8".
std::string_view precision_name(Precision precision);
std::optional<Precision> precision_from_name(std::string_view name);
// Bits of the stored operands (tf32 counts as 32: it stores fp32).
int precision_bits(Precision precision);
bool precision_is_quantized(Precision precision);  // int8, fp8: need scales
// The next higher precision to fall back to when a backend lacks this one (fp32 has none).
std::optional<Precision> precision_fallback(Precision precision);

}  // namespace mixq
