// Reference Add/Sub/Mul/Div/Pow, PRelu and variadic Max/Min/Sum/Mean: numpy broadcasting on
// random data against explicit loops, integer semantics, build-time shapes and errors.
#include <cmath>
#include <limits>

#include <gtest/gtest.h>

#include "backends/reference/kernel_test_util.h"

namespace mixq::testing::kt {
namespace {

using ir::OpKind;

// a[i,0,k] op b[j,0] for a of [I,1,K] and b of [J,1]: both sides broadcast to [I,J,K].
template <typename Fn>
Tensor both_sides(const Tensor& a, const Tensor& b, Fn fn) {
  const int64_t I = a.dim(0), K = a.dim(2), J = b.dim(0);
  Tensor y = Tensor::empty(DType::kFloat32, {I, J, K});
  for (int64_t i = 0; i < I; ++i)
    for (int64_t j = 0; j < J; ++j)
      for (int64_t k = 0; k < K; ++k)
        y.data<float>()[(i * J + j) * K + k] = fn(a.data<float>()[i * K + k], b.data<float>()[j]);
  return y;
}

TEST(ElementwiseReference, BinaryOpsBroadcastBothSides) {
  const Tensor a = random_tensor({3, 1, 4}, 1);
  const Tensor b = random_tensor({2, 1}, 2, 0.5f, 2.0f);
  EXPECT_TRUE(
      same(run1(OpKind::kAdd, {a, b}), both_sides(a, b, [](float x, float y) { return x + y; })));
  EXPECT_TRUE(
      same(run1(OpKind::kSub, {a, b}), both_sides(a, b, [](float x, float y) { return x - y; })));
  EXPECT_TRUE(
      same(run1(OpKind::kMul, {a, b}), both_sides(a, b, [](float x, float y) { return x * y; })));
  EXPECT_TRUE(
      same(run1(OpKind::kDiv, {a, b}), both_sides(a, b, [](float x, float y) { return x / y; })));
}

TEST(ElementwiseReference, ScalarAndSameShape) {
  const Tensor a = random_tensor({2, 3}, 3);
  const Tensor s = Tensor::scalar<float>(-1.5f);
  Tensor expected = a.clone();
  for (float& v : expected.span<float>()) v = -1.5f - v;
  EXPECT_TRUE(same(run1(OpKind::kSub, {s, a}), expected));  // scalar on the left
  const Tensor b = random_tensor({2, 3}, 4);
  Tensor product = a.clone();
  for (int64_t i = 0; i < 6; ++i) product.data<float>()[i] *= b.data<float>()[i];
  EXPECT_TRUE(same(run1(OpKind::kMul, {a, b}), product));
  // Scalar with scalar stays a scalar.
  EXPECT_TRUE(same(run1(OpKind::kAdd, {s, s}), Tensor::scalar<float>(-3.0f)));
}

TEST(ElementwiseReference, IntegerDivTruncatesTowardZero) {
  const Tensor a = typed<int32_t>({4}, {-7, 7, -7, 7});
  const Tensor b = typed<int32_t>({4}, {2, -2, -2, 2});
  EXPECT_TRUE(same(run1(OpKind::kDiv, {a, b}), typed<int32_t>({4}, {-3, -3, 3, 3})));
  // lowest / -1 overflows; it wraps instead of trapping.
  const Tensor lo = typed<int64_t>({1}, {std::numeric_limits<int64_t>::min()});
  EXPECT_TRUE(same(run1(OpKind::kDiv, {lo, typed<int64_t>({1}, {-1})}), lo));
  EXPECT_TRUE(same(run1(OpKind::kDiv, {typed<uint8_t>({2}, {200, 7}), typed<uint8_t>({}, {3})}),
                   typed<uint8_t>({2}, {66, 2})));
}

TEST(ElementwiseReference, IntegerArithmeticWraps) {
  EXPECT_TRUE(
      same(run1(OpKind::kAdd, {typed<int8_t>({2}, {127, -128}), typed<int8_t>({2}, {1, -1})}),
           typed<int8_t>({2}, {-128, 127})));
  EXPECT_TRUE(same(run1(OpKind::kMul, {typed<int32_t>({1}, {65536}), typed<int32_t>({1}, {65536})}),
                   typed<int32_t>({1}, {0})));
  EXPECT_TRUE(same(run1(OpKind::kSub, {typed<uint8_t>({1}, {1}), typed<uint8_t>({1}, {2})}),
                   typed<uint8_t>({1}, {255})));
}

TEST(ElementwiseReference, PowMixedDtypes) {
  const Tensor x = f32({3}, {1, 2, 3});
  // float ^ float, broadcasting a scalar exponent.
  EXPECT_TRUE(same(run1(OpKind::kPow, {x, Tensor::scalar<float>(2.0f)}), f32({3}, {1, 4, 9})));
  // float ^ int64 (ONNX pow_types test): output keeps the base's dtype.
  EXPECT_TRUE(same(run1(OpKind::kPow, {x, i64({3}, {4, 5, 6})}), f32({3}, {1, 32, 729})));
  // int64 ^ int64 is exact beyond 2^53 (3^39 = 4052555153018976267).
  EXPECT_TRUE(same(run1(OpKind::kPow, {i64({2}, {3, -2}), i64({2}, {39, 3})}),
                   i64({2}, {4052555153018976267, -8})));
  // int ^ float truncates like numpy's astype; int ^ negative int truncates 1/b^n.
  EXPECT_TRUE(same(run1(OpKind::kPow, {typed<int32_t>({3}, {2, 10, 5}), f32({3}, {0.5f, 1.5f, 2})}),
                   typed<int32_t>({3}, {1, 31, 25})));
  EXPECT_TRUE(same(run1(OpKind::kPow, {typed<int32_t>({3}, {2, 1, -1}), typed<int32_t>({1}, {-3})}),
                   typed<int32_t>({3}, {0, 1, -1})));
  // Random float base and exponent against std::pow.
  const Tensor base = random_tensor({4, 5}, 5, 0.1f, 3.0f);
  const Tensor e = random_tensor({5}, 6, -2.0f, 2.0f);
  Tensor expected = base.clone();
  for (int64_t i = 0; i < 20; ++i)
    expected.data<float>()[i] =
        float(std::pow(double(base.data<float>()[i]), double(e.data<float>()[i % 5])));
  EXPECT_TRUE(same(run1(OpKind::kPow, {base, e}), expected));
}

TEST(ElementwiseReference, PReluBroadcastsSlopeToX) {
  const Tensor x = random_tensor({2, 3, 2}, 7);
  const Tensor slope = random_tensor({3, 1}, 8, 0.1f, 0.5f);
  Tensor expected = x.clone();
  for (int64_t i = 0; i < 12; ++i) {
    const float v = x.data<float>()[i];
    expected.data<float>()[i] = v < 0 ? v * slope.data<float>()[(i / 2) % 3] : v;
  }
  EXPECT_TRUE(same(run1(OpKind::kPRelu, {x, slope}), expected));
  EXPECT_TRUE(same(run1(OpKind::kPRelu, {typed<int32_t>({3}, {-4, 0, 5}), typed<int32_t>({}, {3})}),
                   typed<int32_t>({3}, {-12, 0, 5})));
}

TEST(ElementwiseReference, VariadicBroadcastAcrossInputs) {
  const Tensor a = random_tensor({2, 3}, 9), b = random_tensor({3}, 10),
               c = random_tensor({2, 1}, 11);
  Tensor mx = Tensor::empty(DType::kFloat32, {2, 3}), mn = mx.clone(), sum = mx.clone(),
         mean = mx.clone();
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j) {
      const float va = a.data<float>()[i * 3 + j], vb = b.data<float>()[j], vc = c.data<float>()[i];
      mx.data<float>()[i * 3 + j] = std::max({va, vb, vc});
      mn.data<float>()[i * 3 + j] = std::min({va, vb, vc});
      sum.data<float>()[i * 3 + j] = va + vb + vc;
      mean.data<float>()[i * 3 + j] = (va + vb + vc) / 3.0f;
    }
  EXPECT_TRUE(same(run1(OpKind::kMax, {a, b, c}), mx));
  EXPECT_TRUE(same(run1(OpKind::kMin, {a, b, c}), mn));
  EXPECT_TRUE(same(run1(OpKind::kSum, {a, b, c}), sum));
  EXPECT_TRUE(same(run1(OpKind::kMean, {a, b, c}), mean));
  // One input is a copy; Max/Min take integers too.
  EXPECT_TRUE(same(run1(OpKind::kSum, {a}), a));
  EXPECT_TRUE(same(run1(OpKind::kMax, {typed<int8_t>({3}, {-5, 3, 7}), typed<int8_t>({1}, {4})}),
                   typed<int8_t>({3}, {4, 4, 7})));
  EXPECT_TRUE(
      same(run1(OpKind::kMin, {typed<int64_t>({2}, {-5, 3}), typed<int64_t>({2, 1}, {0, 9})}),
           typed<int64_t>({2, 2}, {-5, 0, -5, 3})));
}

TEST(ElementwiseReference, MaxMinPropagateNaN) {
  const Tensor a = f32({2}, {NAN, 1}), b = f32({2}, {1, NAN});
  EXPECT_TRUE(same(run1(OpKind::kMax, {a, b}), f32({2}, {NAN, NAN})));
  EXPECT_TRUE(same(run1(OpKind::kMin, {b, a}), f32({2}, {NAN, NAN})));
}

TEST(ElementwiseReference, InferPropagatesDynamicDims) {
  EXPECT_EQ(infer_shape(OpKind::kAdd,
                        {{DType::kFloat32, {kDynamicDim, 3}, {}}, {DType::kFloat32, {1, 3}, {}}}),
            (Shape{kDynamicDim, 3}));
  EXPECT_EQ(infer_shape(OpKind::kMul,
                        {{DType::kFloat32, {kDynamicDim, 1}, {}}, {DType::kFloat32, {4}, {}}}),
            (Shape{kDynamicDim, 4}));
  EXPECT_EQ(infer_shape(OpKind::kMax, {{DType::kInt32, {2, 1, kDynamicDim}, {}},
                                       {DType::kInt32, {5, 1}, {}},
                                       {DType::kInt32, {1}, {}}}),
            (Shape{2, 5, kDynamicDim}));
  EXPECT_EQ(infer_shape(OpKind::kPRelu, {{DType::kFloat32, {kDynamicDim, 8, 4, 4}, {}},
                                         {DType::kFloat32, {8, 1, 1}, {}}}),
            (Shape{kDynamicDim, 8, 4, 4}));
}

TEST(ElementwiseReference, Errors) {
  const Tensor a = random_tensor({2, 3}, 12);
  EXPECT_TRUE(fails_with(run_error(OpKind::kAdd, {a, random_tensor({4}, 13)}),
                         StatusCode::kInvalidArgument,
                         {"Add 'node'", "[2,3]", "[4]", "broadcast"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kMax, {a, a, random_tensor({2, 2}, 14)}),
                         StatusCode::kInvalidArgument, {"cannot be broadcast"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kMul, {a, typed<int32_t>({1}, {2})}),
                         StatusCode::kUnsupported, {"B has dtype i32", "f32"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kSum, {a, typed<int32_t>({1}, {2})}),
                         StatusCode::kUnsupported, {"input 1 has dtype i32"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kMean, {typed<int32_t>({1}, {2})}),
                         StatusCode::kUnsupported, {"input 0 has dtype i32"}));
  EXPECT_TRUE(
      fails_with(run_error(OpKind::kAdd, {typed<bool>({1}, {true}), typed<bool>({1}, {true})}),
                 StatusCode::kUnsupported, {"A has dtype bool"}));
  EXPECT_TRUE(fails_with(
      run_error(OpKind::kDiv, {typed<int32_t>({2}, {4, 5}), typed<int32_t>({2}, {1, 0})}),
      StatusCode::kInvalidArgument, {"division by zero", "B[1]"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kPRelu, {a, random_tensor({4}, 15)}),
                         StatusCode::kInvalidArgument, {"slope", "[4]", "[2,3]"}));
  // PRelu broadcasts one way only: the slope may not grow X.
  EXPECT_TRUE(
      fails_with(run_error(OpKind::kPRelu, {random_tensor({3}, 16), random_tensor({2, 3}, 17)}),
                 StatusCode::kInvalidArgument, {"slope"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kAdd, {a, Tensor()}), StatusCode::kInvalidArgument,
                         {"B is missing"}));
}

}  // namespace
}  // namespace mixq::testing::kt
