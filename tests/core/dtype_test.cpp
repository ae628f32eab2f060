#include <cmath>

#include <gtest/gtest.h>

#include "mixq/dtype.h"
#include "mixq/tensor.h"

namespace mixq {
namespace {

TEST(DType, HalfRoundTripsEveryFiniteValue) {
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    Half h{uint16_t(bits)};
    const float f = half_to_float(h);
    if (std::isnan(f)) continue;
    EXPECT_EQ(float_to_half(f).bits, h.bits) << "bits " << bits;
  }
}

TEST(DType, HalfRoundsToNearestEven) {
  EXPECT_EQ(half_to_float(float_to_half(1.0f + 1.0f / 2048)), 1.0f);  // tie -> even (1.0)
  EXPECT_EQ(half_to_float(float_to_half(1.0f + 3.0f / 2048)), 1.0f + 2.0f / 1024);
  EXPECT_TRUE(std::isinf(half_to_float(float_to_half(65520.0f))));
  EXPECT_EQ(half_to_float(float_to_half(65519.0f)), 65504.0f);
  EXPECT_EQ(half_to_float(float_to_half(5.9604645e-08f)), 5.9604645e-08f);  // smallest subnormal
}

TEST(DType, BFloat16RoundsToNearestEven) {
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f)), 1.0f);
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 1.0f / 256)), 1.0f);  // tie -> even
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 3.0f / 256)), 1.0f + 2.0f / 128);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(NAN))));
}

TEST(DType, Fp8E4M3RoundTripsAndSaturates) {
  for (uint32_t bits = 0; bits < 0x100; ++bits) {
    Float8E4M3 v{uint8_t(bits)};
    const float f = fp8e4m3_to_float(v);
    if (std::isnan(f)) continue;
    EXPECT_EQ(float_to_fp8e4m3(f).bits, v.bits) << "bits " << bits;
  }
  EXPECT_EQ(fp8e4m3_to_float(float_to_fp8e4m3(1000.0f)), 448.0f);
  EXPECT_EQ(fp8e4m3_to_float(float_to_fp8e4m3(-1000.0f)), -448.0f);
  EXPECT_EQ(fp8e4m3_to_float(float_to_fp8e4m3(0.001953125f)), 0.001953125f);  // 2^-9
  EXPECT_TRUE(std::isnan(fp8e4m3_to_float(float_to_fp8e4m3(NAN))));
}

TEST(Tensor, ConversionRoundsHalfToEvenAndSaturates) {
  Tensor f = Tensor::from_vector<float>({6}, {0.5f, 1.5f, 2.5f, -0.5f, 300.0f, -300.0f});
  Tensor q = f.to(DType::kInt8);
  EXPECT_EQ(q.to_int64_vector(), (std::vector<int64_t>{0, 2, 2, 0, 127, -128}));
  Tensor u = f.to(DType::kUInt8);
  EXPECT_EQ(u.to_int64_vector(), (std::vector<int64_t>{0, 2, 2, 0, 255, 0}));
}

TEST(Tensor, SliceRowsSharesStorage) {
  Tensor t = Tensor::from_vector<float>({3, 2}, {1, 2, 3, 4, 5, 6});
  Tensor s = t.slice_rows(1, 3);
  EXPECT_EQ(s.shape(), (Shape{2, 2}));
  EXPECT_EQ(s.data<float>()[0], 3.0f);
  s.data<float>()[0] = 9.0f;
  EXPECT_EQ(t.data<float>()[2], 9.0f);
}

}  // namespace
}  // namespace mixq
