#include "mixq/precision.h"

namespace mixq {

std::string_view precision_name(Precision precision) {
  switch (precision) {
    case Precision::kFP32:
      return "fp32";
    case Precision::kTF32:
      return "tf32";
    case Precision::kFP16:
      return "fp16";
    case Precision::kBF16:
      return "bf16";
    case Precision::kINT8:
      return "int8";
    case Precision::kFP8:
      return "fp8";
  }
  return "?";
}

std::optional<Precision> precision_from_name(std::string_view name) {
  for (Precision p : kAllPrecisions)
    if (precision_name(p) == name) return p;
  if (name == "float32" || name == "float") return Precision::kFP32;
  if (name == "float16" || name == "half") return Precision::kFP16;
  if (name == "bfloat16") return Precision::kBF16;
  if (name == "fp8e4m3" || name == "e4m3") return Precision::kFP8;
  return std::nullopt;
}

int precision_bits(Precision precision) {
  switch (precision) {
    case Precision::kFP32:
    case Precision::kTF32:
      return 32;
    case Precision::kFP16:
    case Precision::kBF16:
      return 16;
    case Precision::kINT8:
    case Precision::kFP8:
      return 8;
  }
  return 32;
}

bool precision_is_quantized(Precision precision) {
  return precision == Precision::kINT8 || precision == Precision::kFP8;
}

std::optional<Precision> precision_fallback(Precision precision) {
  switch (precision) {
    case Precision::kFP32:
      return std::nullopt;
    case Precision::kTF32:
      return Precision::kFP32;
    case Precision::kFP16:
      return Precision::kFP32;
    case Precision::kBF16:
      return Precision::kFP32;
    case Precision::kINT8:
      return Precision::kFP16;
    case Precision::kFP8:
      return Precision::kFP16;
  }
  return std::nullopt;
}

}  // namespace mixq
