// Reference QuantizeLinear/DequantizeLinear: ties round half to even, saturation, ONNX's node-test
// numbers, per-axis scales, float8, a random round trip, build-time shapes and rejected inputs.
#include <cmath>

#include <gtest/gtest.h>

#include "backends/reference/kernel_test_util.h"

namespace mixq::testing::kt {
namespace {

using ir::OpKind;

TEST(QuantizeReference, TiesRoundHalfToEven) {
  const Tensor x = f32({7}, {0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 3.5f});
  const Tensor one = Tensor::scalar<float>(1.0f);
  EXPECT_TRUE(same(run1(OpKind::kQuantizeLinear, {x, one, typed<int8_t>({}, {0})}),
                   typed<int8_t>({7}, {0, 2, 2, 0, -2, -2, 4})));
  // No zero point: uint8, negatives saturate to 0.
  EXPECT_TRUE(
      same(run1(OpKind::kQuantizeLinear, {x, one}), typed<uint8_t>({7}, {0, 2, 2, 0, 0, 0, 4})));
  // The tie is decided after the division: 5 / 2 = 2.5 -> 2, 7 / 2 = 3.5 -> 4.
  EXPECT_TRUE(same(run1(OpKind::kQuantizeLinear,
                        {f32({2}, {5, 7}), Tensor::scalar<float>(2.0f), typed<uint8_t>({}, {10})}),
                   typed<uint8_t>({2}, {12, 14})));
}

TEST(QuantizeReference, OnnxExampleAndSaturation) {
  // ONNX test_quantizelinear.
  EXPECT_TRUE(
      same(run1(OpKind::kQuantizeLinear, {f32({6}, {0, 2, 3, 1000, -254, -1000}),
                                          Tensor::scalar<float>(2.0f), typed<uint8_t>({}, {128})}),
           typed<uint8_t>({6}, {128, 129, 130, 255, 1, 0})));
  // int8 saturates at both ends; the zero point is added before saturating.
  EXPECT_TRUE(same(
      run1(OpKind::kQuantizeLinear,
           {f32({4}, {100, -100, 63, -64}), Tensor::scalar<float>(0.5f), typed<int8_t>({1}, {1})}),
      typed<int8_t>({4}, {127, -128, 127, -127})));
  // Infinities saturate, NaN quantises to the zero point.
  EXPECT_TRUE(
      same(run1(OpKind::kQuantizeLinear, {f32({3}, {INFINITY, -INFINITY, NAN}),
                                          Tensor::scalar<float>(1.0f), typed<int8_t>({}, {3})}),
           typed<int8_t>({3}, {127, -128, 3})));
  // int32 input (opset 10+).
  EXPECT_TRUE(same(
      run1(OpKind::kQuantizeLinear,
           {typed<int32_t>({2}, {10, -10}), Tensor::scalar<float>(4.0f), typed<int8_t>({}, {0})}),
      typed<int8_t>({2}, {2, -2})));
}

// ONNX test_quantizelinear_axis / test_dequantizelinear_axis: x [1, 3, 3, 2], channel scales.
const Tensor kAxisX = f32({1, 3, 3, 2}, {-162, 10, -100, 232, -20, -50, -76, 0, 0, 252, 32, -44,
                                         245, -485, -960, -270, -375, -470});
const Tensor kAxisQ = typed<uint8_t>(
    {1, 3, 3, 2}, {3, 89, 34, 200, 74, 59, 5, 24, 24, 87, 32, 13, 245, 99, 4, 142, 121, 102});
const Tensor kAxisScale = f32({3}, {2, 4, 5});
const Tensor kAxisZero = typed<uint8_t>({3}, {84, 24, 196});

TEST(QuantizeReference, PerAxisScales) {
  EXPECT_TRUE(same(run1(OpKind::kQuantizeLinear, {kAxisX, kAxisScale, kAxisZero}), kAxisQ));
  Tensor dq = Tensor::empty(DType::kFloat32, {1, 3, 3, 2});
  for (int64_t i = 0; i < 18; ++i) {
    const int64_t c = i / 6;
    dq.data<float>()[i] = (float(kAxisQ.data<uint8_t>()[i]) - float(kAxisZero.data<uint8_t>()[c])) *
                          kAxisScale.data<float>()[c];
  }
  EXPECT_TRUE(same(run1(OpKind::kDequantizeLinear, {kAxisQ, kAxisScale, kAxisZero}), dq));
  // Last axis by a negative index: scale per column of a [2, 3] matrix.
  const Tensor x = f32({2, 3}, {1, 2, 3, -1, -2, -3});
  const Tensor scale = f32({3}, {0.5f, 1, 2});
  EXPECT_TRUE(same(run1(OpKind::kQuantizeLinear, {x, scale, typed<int8_t>({3}, {0, 0, 0})},
                        {{"axis", int64_t(-1)}}),
                   typed<int8_t>({2, 3}, {2, 2, 2, -2, -2, -2})));
  // axis 0: one scale per row.
  EXPECT_TRUE(same(
      run1(OpKind::kDequantizeLinear, {typed<int8_t>({2, 2}, {1, 2, 3, 4}), f32({2}, {10, 0.5f})},
           {{"axis", int64_t(0)}}),
      f32({2, 2}, {10, 20, 1.5f, 2})));
}

TEST(QuantizeReference, DequantizeOnnxExampleAndInt32) {
  EXPECT_TRUE(same(
      run1(OpKind::kDequantizeLinear, {typed<uint8_t>({4}, {0, 3, 128, 255}),
                                       Tensor::scalar<float>(2.0f), typed<uint8_t>({}, {128})}),
      f32({4}, {-256, -250, 0, 254})));
  // int32 (biases): no zero point, or an explicit zero.
  const Tensor acc = typed<int32_t>({3}, {-1000000, 7, 123456});
  const Tensor s = Tensor::scalar<float>(0.001f);
  const Tensor expected = f32({3}, {-1000000 * 0.001f, 7 * 0.001f, 123456 * 0.001f});
  EXPECT_TRUE(same(run1(OpKind::kDequantizeLinear, {acc, s}), expected));
  EXPECT_TRUE(same(run1(OpKind::kDequantizeLinear, {acc, s, typed<int32_t>({}, {0})}), expected));
}

TEST(QuantizeReference, Float8E4M3) {
  const Tensor x = f32({5}, {1.0f, 1000.0f, -1000.0f, 0.3f, -0.75f});
  const Tensor zp = Tensor::zeros(DType::kFloat8E4M3, {});
  const Tensor q = run1(OpKind::kQuantizeLinear, {x, Tensor::scalar<float>(1.0f), zp});
  ASSERT_EQ(q.dtype(), DType::kFloat8E4M3);
  // Saturating fp8 conversion of x / scale: no integer rounding, +-448 at the ends.
  EXPECT_TRUE(same(q.to(DType::kFloat32), f32({5}, {1.0f, 448.0f, -448.0f, 0.3125f, -0.75f})));
  // Dequantize back: (x - 0) * scale.
  EXPECT_TRUE(same(run1(OpKind::kDequantizeLinear, {q, Tensor::scalar<float>(2.0f), zp}),
                   f32({5}, {2.0f, 896.0f, -896.0f, 0.625f, -1.5f})));
}

TEST(QuantizeReference, RandomRoundTripWithinHalfAStep) {
  const Tensor x = random_tensor({4, 8}, 61, -3.0f, 3.0f);
  const Tensor scale = f32({8}, {0.01f, 0.02f, 0.03f, 0.04f, 0.05f, 0.06f, 0.07f, 0.08f});
  const Tensor zp = typed<int8_t>({8}, {0, 1, -2, 3, -4, 5, -6, 7});
  const Tensor q = run1(OpKind::kQuantizeLinear, {x, scale, zp});
  const Tensor y = run1(OpKind::kDequantizeLinear, {q, scale, zp});
  ASSERT_TRUE(y.defined());
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int64_t c = i % 8;
    const float v = x.data<float>()[i], s = scale.data<float>()[c];
    const double expected_q = std::nearbyint(v / s) + zp.data<int8_t>()[c];
    if (expected_q > 127 || expected_q < -128) continue;  // saturated
    EXPECT_EQ(q.data<int8_t>()[i], int8_t(expected_q)) << i;
    EXPECT_LE(std::fabs(y.data<float>()[i] - v), 0.5f * s * (1 + 1e-5f)) << i;
  }
}

TEST(QuantizeReference, InferShapesAndDtypes) {
  std::vector<reference::TensorInfo> out;
  ASSERT_TRUE(infer(OpKind::kQuantizeLinear,
                    {{DType::kFloat32, {kDynamicDim, 3}, {}},
                     {DType::kFloat32, {3}, {}},
                     {DType::kInt8, {3}, {}}},
                    {}, out)
                  .ok());
  EXPECT_EQ(out[0].dtype, DType::kInt8);
  EXPECT_EQ(out[0].shape, (Shape{kDynamicDim, 3}));
  ASSERT_TRUE(infer(OpKind::kDequantizeLinear,
                    {{DType::kUInt8, {kDynamicDim, 3}, {}}, {DType::kFloat32, {}, {}}}, {}, out)
                  .ok());
  EXPECT_EQ(out[0].dtype, DType::kFloat32);
  // A zero scale known at build time is rejected there.
  EXPECT_TRUE(
      fails_with(infer(OpKind::kQuantizeLinear,
                       {{DType::kFloat32, {2}, {}}, known(Tensor::scalar<float>(0.0f))}, {}, out),
                 StatusCode::kInvalidArgument, {"y_scale[0] is 0", "positive and finite"}));
}

TEST(QuantizeReference, RejectsBadScalesShapesAndDtypes) {
  const Tensor x = random_tensor({2, 3}, 62);
  for (float bad : {0.0f, -1.0f, NAN, INFINITY})
    EXPECT_TRUE(fails_with(run_error(OpKind::kQuantizeLinear, {x, Tensor::scalar<float>(bad)}),
                           StatusCode::kInvalidArgument,
                           {"QuantizeLinear 'node'", "y_scale[0]", "positive and finite"}))
        << bad;
  EXPECT_TRUE(fails_with(
      run_error(OpKind::kDequantizeLinear,
                {typed<int8_t>({2}, {1, 2}), f32({2}, {1, 0}), typed<int8_t>({2}, {0, 0})},
                {{"axis", int64_t(0)}}),
      StatusCode::kInvalidArgument, {"x_scale[1] is 0"}));
  // Per-axis scale that does not match the axis.
  EXPECT_TRUE(fails_with(run_error(OpKind::kQuantizeLinear, {x, f32({4}, {1, 1, 1, 1})}),
                         StatusCode::kInvalidArgument,
                         {"y_scale has 4 elements", "axis 1", "size 3"}));
  EXPECT_TRUE(fails_with(
      run_error(OpKind::kQuantizeLinear, {x, f32({3}, {1, 1, 1})}, {{"axis", int64_t(2)}}),
      StatusCode::kInvalidArgument, {"axis 2 is out of range for rank 2"}));
  // Zero point and scale of different shapes.
  EXPECT_TRUE(fails_with(
      run_error(OpKind::kQuantizeLinear, {x, f32({3}, {1, 1, 1}), typed<int8_t>({}, {0})}),
      StatusCode::kInvalidArgument, {"y_zero_point has shape []", "y_scale has shape [3]"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kQuantizeLinear, {x, f32({2, 1}, {1, 1})}),
                         StatusCode::kInvalidArgument, {"scalar or 1-D"}));
  // Dtypes.
  EXPECT_TRUE(fails_with(
      run_error(OpKind::kQuantizeLinear, {x, Tensor::scalar<float>(1), typed<int32_t>({}, {0})}),
      StatusCode::kUnsupported, {"y_zero_point has dtype i32"}));
  EXPECT_TRUE(fails_with(
      run_error(OpKind::kDequantizeLinear,
                {typed<int8_t>({1}, {1}), Tensor::scalar<float>(1), typed<uint8_t>({}, {0})}),
      StatusCode::kUnsupported, {"x_zero_point has dtype u8", "i8"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kDequantizeLinear, {x, Tensor::scalar<float>(1)}),
                         StatusCode::kUnsupported, {"x has dtype f32"}));
  EXPECT_TRUE(fails_with(
      run_error(OpKind::kDequantizeLinear,
                {typed<int32_t>({1}, {5}), Tensor::scalar<float>(1), typed<int32_t>({}, {2})}),
      StatusCode::kInvalidArgument, {"must be 0 for int32"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kQuantizeLinear, {x, typed<int32_t>({}, {1})}),
                         StatusCode::kUnsupported, {"y_scale has dtype i32"}));
}

}  // namespace
}  // namespace mixq::testing::kt
