// The reference FusedConv with what the CUDA backend's execution fusion absorbs into it: a max
// pool ("mixq.pool": the same as Conv, the activation and MaxPool one after another) and its
// input's Reformat ("mixq.input_dtype" / "mixq.input_scale": the input converted first); and a
// FusedGemm reading a 4-D input flattened in (H, W, C) order ("mixq.flatten_input" = "nhwc").
#include <algorithm>

#include <gtest/gtest.h>

#include "backends/reference/kernel_test_util.h"

namespace mixq {
namespace {

using testing::random_tensor;
using testing::kt::Attrs;

TEST(FusedConvReference, AbsorbedMaxPoolEqualsConvReluMaxPool) {
  // 9x9 outputs pooled 2x2: the last row and column are dropped (floor), as MaxPool does.
  const Tensor x = random_tensor({2, 3, 11, 11}, 3);
  const Tensor w = random_tensor({5, 3, 3, 3}, 4);
  const Tensor b = random_tensor({5}, 5);
  const Attrs conv_attrs = {{"kernel_shape", std::vector<int64_t>{3, 3}},
                            {"pads", std::vector<int64_t>{0, 0, 0, 0}}};
  Attrs fused_attrs = conv_attrs;
  fused_attrs["mixq.activation"] = std::string("relu");
  fused_attrs["mixq.pool"] = std::vector<int64_t>{2, 2};
  const Tensor got = testing::kt::run1(ir::OpKind::kFusedConv, {x, w, b}, fused_attrs);
  const Tensor conv = testing::kt::run1(ir::OpKind::kConv, {x, w, b}, conv_attrs);
  const Tensor relu = testing::kt::run1(ir::OpKind::kRelu, {conv});
  const Tensor want = testing::kt::run1(
      ir::OpKind::kMaxPool, {relu},
      {{"kernel_shape", std::vector<int64_t>{2, 2}}, {"strides", std::vector<int64_t>{2, 2}}});
  ASSERT_TRUE(got.defined() && want.defined());
  ASSERT_EQ(got.shape(), (Shape{2, 5, 4, 4}));
  ASSERT_EQ(got.shape(), want.shape());
  for (int64_t i = 0; i < got.numel(); ++i)
    EXPECT_EQ(got.data<float>()[i], want.data<float>()[i]) << "element " << i;
}

TEST(FusedConvReference, AbsorbedPoolNeedsTwoWindowSizesAndNoResidual) {
  const Tensor x = random_tensor({1, 2, 6, 6}, 6);
  const Tensor w = random_tensor({4, 2, 3, 3}, 7);
  const Attrs bad = {{"kernel_shape", std::vector<int64_t>{3, 3}},
                     {"mixq.pool", std::vector<int64_t>{2}}};
  const Status s = testing::kt::run_error(ir::OpKind::kFusedConv, {x, w}, bad);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("mixq.pool"), std::string::npos) << s.to_string();
  const Tensor r = random_tensor({1, 4, 4, 4}, 8);
  const Attrs with_residual = {{"kernel_shape", std::vector<int64_t>{3, 3}},
                               {"mixq.pool", std::vector<int64_t>{2, 2}}};
  const Status s2 =
      testing::kt::run_error(ir::OpKind::kFusedConv, {x, w, Tensor(), r}, with_residual);
  EXPECT_FALSE(s2.ok());
  EXPECT_NE(s2.message().find("mixq.pool"), std::string::npos) << s2.to_string();
}

TEST(FusedConvReference, AbsorbedReformatConvertsTheInputFirst) {
  const Tensor x = random_tensor({2, 3, 7, 7}, 9, -1.5f, 1.5f);
  const Tensor w = random_tensor({4, 3, 3, 3}, 10);
  const Attrs conv_attrs = {{"kernel_shape", std::vector<int64_t>{3, 3}}};
  for (const char* dtype : {"i8", "f16"}) {
    SCOPED_TRACE(dtype);
    const bool int8 = std::string(dtype) == "i8";
    const float scale = 0.02f;  // 1.5 / 0.02 = 75 codes: no saturation
    Attrs fused_attrs = conv_attrs;
    fused_attrs["mixq.input_dtype"] = std::string(dtype);
    if (int8) fused_attrs["mixq.input_scale"] = scale;
    // What the Reformat would have written, back in real units.
    Tensor rounded = Tensor::empty(DType::kFloat32, x.shape());
    for (int64_t i = 0; i < x.numel(); ++i) {
      const float v = x.data<float>()[i];
      rounded.data<float>()[i] =
          int8 ? float(std::nearbyint(v / scale)) * scale
               : float(Tensor::scalar(v).to(DType::kFloat16).to(DType::kFloat32).data<float>()[0]);
    }
    const Tensor got = testing::kt::run1(ir::OpKind::kFusedConv, {x, w}, fused_attrs);
    const Tensor want = testing::kt::run1(ir::OpKind::kConv, {rounded, w}, conv_attrs);
    const Tensor unrounded = testing::kt::run1(ir::OpKind::kConv, {x, w}, conv_attrs);
    ASSERT_TRUE(got.defined() && want.defined() && unrounded.defined());
    ASSERT_EQ(got.shape(), want.shape());
    double differs = 0;
    for (int64_t i = 0; i < got.numel(); ++i) {
      EXPECT_NEAR(got.data<float>()[i], want.data<float>()[i], 1e-5f) << "element " << i;
      differs =
          std::max(differs, double(std::fabs(got.data<float>()[i] - unrounded.data<float>()[i])));
    }
    EXPECT_GT(differs, 1e-5) << "the conversion must change the result";
  }
}

TEST(FusedConvReference, AbsorbedReformatNamesAKnownDtypeAndAPositiveScale) {
  const Tensor x = random_tensor({1, 2, 5, 5}, 11);
  const Tensor w = random_tensor({3, 2, 3, 3}, 12);
  Attrs bad = {{"kernel_shape", std::vector<int64_t>{3, 3}},
               {"mixq.input_dtype", std::string("int7")}};
  Status s = testing::kt::run_error(ir::OpKind::kFusedConv, {x, w}, bad);
  EXPECT_NE(s.message().find("mixq.input_dtype"), std::string::npos) << s.to_string();
  bad["mixq.input_dtype"] = std::string("i8");
  bad["mixq.input_scale"] = 0.0f;
  s = testing::kt::run_error(ir::OpKind::kFusedConv, {x, w}, bad);
  EXPECT_NE(s.message().find("mixq.input_scale"), std::string::npos) << s.to_string();
}

TEST(FusedGemmReference, NhwcFlattenedInputWithPermutedWeightsEqualsFlattenThenGemm) {
  const int64_t N = 3, C = 4, H = 2, W = 3, K = C * H * W, M = 5;
  const Tensor x = random_tensor({N, C, H, W}, 13);
  const Tensor w = random_tensor({M, K}, 14);  // columns in (C, H, W) order
  const Tensor b = random_tensor({M}, 15);
  Tensor permuted = Tensor::empty(DType::kFloat32, {M, K});  // columns in (H, W, C) order
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t q = 0; q < W; ++q)
          permuted.data<float>()[m * K + (h * W + q) * C + c] =
              w.data<float>()[m * K + (c * H + h) * W + q];
  const Attrs gemm_attrs = {{"transB", int64_t(1)}};
  Attrs fused_attrs = gemm_attrs;
  fused_attrs["mixq.flatten_input"] = std::string("nhwc");
  const Tensor got = testing::kt::run1(ir::OpKind::kFusedGemm, {x, permuted, b}, fused_attrs);
  const Tensor flat = x.reshaped({N, K});
  const Tensor want = testing::kt::run1(ir::OpKind::kGemm, {flat, w, b}, gemm_attrs);
  ASSERT_TRUE(got.defined() && want.defined());
  ASSERT_EQ(got.shape(), (Shape{N, M}));
  for (int64_t i = 0; i < got.numel(); ++i)
    EXPECT_NEAR(got.data<float>()[i], want.data<float>()[i], 1e-5f) << "element " << i;
  const Status s = testing::kt::run_error(ir::OpKind::kFusedGemm, {flat, permuted, b}, fused_attrs);
  EXPECT_NE(s.message().find("mixq.flatten_input"), std::string::npos) << s.to_string();
}

TEST(FusedGemmReference, ChainedLayerRequantisesTheFirstResultThenRunsTheSecond) {
  const int64_t N = 4, K = 12, M1 = 9, M2 = 5;
  const Tensor x = random_tensor({N, K}, 21);
  const Tensor w1 = random_tensor({M1, K}, 22), b1 = random_tensor({M1}, 23);
  const Tensor w2 = random_tensor({M2, M1}, 24), b2 = random_tensor({M2}, 25);
  const float mid_scale = 0.01f, lo = -0.5f, hi = 0.75f;
  Attrs attrs = {{"transB", int64_t(1)}};
  attrs["mixq.activation"] = std::string("relu");
  attrs["mixq.mid_dtype"] = std::string("i8");
  attrs["mixq.mid_scale"] = mid_scale;
  attrs["mixq.then_activation"] = std::string("clip");
  attrs["mixq.then_clip_min"] = lo;
  attrs["mixq.then_clip_max"] = hi;
  const Tensor got =
      testing::kt::run1(ir::OpKind::kFusedGemm, {x, w1, b1, Tensor(), w2, b2}, attrs);
  // By hand: relu(x W1^T + b1) on the int8 grid of mid_scale (saturating), then the second layer.
  Tensor mid = testing::kt::run1(ir::OpKind::kGemm, {x, w1, b1}, {{"transB", int64_t(1)}});
  ASSERT_TRUE(mid.defined());
  int saturated = 0;
  for (int64_t i = 0; i < mid.numel(); ++i) {
    const float q = std::nearbyint(std::max(mid.data<float>()[i], 0.0f) / mid_scale);
    saturated += q > 127.0f;
    mid.data<float>()[i] = std::min(q, 127.0f) * mid_scale;
  }
  Tensor want = testing::kt::run1(ir::OpKind::kGemm, {mid, w2, b2}, {{"transB", int64_t(1)}});
  ASSERT_TRUE(got.defined() && want.defined());
  ASSERT_EQ(got.shape(), (Shape{N, M2}));
  EXPECT_GT(saturated, 0) << "the grid should clip some sums (a test of saturation)";
  int clipped = 0;
  for (int64_t i = 0; i < got.numel(); ++i) {
    const float v = want.data<float>()[i];
    clipped += v < lo || v > hi;
    EXPECT_NEAR(got.data<float>()[i], std::min(std::max(v, lo), hi), 1e-5f) << "element " << i;
  }
  EXPECT_GT(clipped, 0);
  // The intermediate's grid is required, and the second layer must take the first's outputs.
  Attrs no_scale = attrs;
  no_scale.erase("mixq.mid_scale");
  Status s =
      testing::kt::run_error(ir::OpKind::kFusedGemm, {x, w1, b1, Tensor(), w2, b2}, no_scale);
  EXPECT_NE(s.message().find("mixq.mid_scale"), std::string::npos) << s.to_string();
  s = testing::kt::run_error(ir::OpKind::kFusedGemm,
                             {x, w1, b1, Tensor(), random_tensor({M2, M1 + 1}, 26), b2}, attrs);
  EXPECT_NE(s.message().find("chained layer's weights"), std::string::npos) << s.to_string();
}

}  // namespace
}  // namespace mixq
