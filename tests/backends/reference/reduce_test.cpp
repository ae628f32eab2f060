// Reference ReduceMean/Sum/Max/Min: ONNX's node-test example, random data against explicit loops,
// axes forms (negative, absent, empty, noop_with_empty_axes), keepdims, build-time shapes, errors.
#include <cmath>
#include <limits>

#include <gtest/gtest.h>

#include "backends/reference/kernel_test_util.h"

namespace mixq::testing::kt {
namespace {

using ir::OpKind;

// ONNX reduce*.py example data, shape [3, 2, 2].
const Tensor kData = f32({3, 2, 2}, {5, 1, 20, 2, 30, 1, 40, 2, 55, 1, 60, 2});

TEST(ReduceReference, OnnxExampleKeepdimsOnAndOff) {
  const Tensor axes = i64s({1});
  EXPECT_TRUE(same(run1(OpKind::kReduceSum, {kData, axes}, {{"keepdims", int64_t(0)}}),
                   f32({3, 2}, {25, 3, 70, 3, 115, 3})));
  EXPECT_TRUE(
      same(run1(OpKind::kReduceSum, {kData, axes}), f32({3, 1, 2}, {25, 3, 70, 3, 115, 3})));
  EXPECT_TRUE(same(run1(OpKind::kReduceMax, {kData, axes}, {{"keepdims", int64_t(0)}}),
                   f32({3, 2}, {20, 2, 40, 2, 60, 2})));
  EXPECT_TRUE(same(run1(OpKind::kReduceMin, {kData, axes}), f32({3, 1, 2}, {5, 1, 30, 1, 55, 1})));
  // Negative axes count from the end: -2 is axis 1.
  EXPECT_TRUE(same(run1(OpKind::kReduceMean, {kData, i64s({-2})}),
                   f32({3, 1, 2}, {12.5f, 1.5f, 35, 1.5f, 57.5f, 1.5f})));
}

TEST(ReduceReference, RandomAgainstLoopsOverTwoAxes) {
  const Tensor x = random_tensor({3, 4, 5}, 21);
  Tensor sum = Tensor::empty(DType::kFloat32, {1, 4, 1}), mean = sum.clone(), mx = sum.clone(),
         mn = sum.clone();
  for (int64_t j = 0; j < 4; ++j) {
    double s = 0;
    float hi = -INFINITY, lo = INFINITY;
    for (int64_t i = 0; i < 3; ++i)
      for (int64_t k = 0; k < 5; ++k) {
        const float v = x.data<float>()[(i * 4 + j) * 5 + k];
        s += v;
        hi = std::max(hi, v);
        lo = std::min(lo, v);
      }
    sum.data<float>()[j] = float(s);
    mean.data<float>()[j] = float(s / 15);
    mx.data<float>()[j] = hi;
    mn.data<float>()[j] = lo;
  }
  const Tensor axes = i64s({2, 0});  // unsorted
  EXPECT_TRUE(same(run1(OpKind::kReduceSum, {x, axes}), sum));
  EXPECT_TRUE(same(run1(OpKind::kReduceMean, {x, axes}), mean));
  EXPECT_TRUE(same(run1(OpKind::kReduceMax, {x, axes}), mx));
  EXPECT_TRUE(same(run1(OpKind::kReduceMin, {x, axes}), mn));
  EXPECT_TRUE(
      same(run1(OpKind::kReduceSum, {x, axes}, {{"keepdims", int64_t(0)}}), sum.reshaped({4})));
}

TEST(ReduceReference, AbsentOrEmptyAxesReduceAllUnlessNoop) {
  const Tensor x = random_tensor({2, 3}, 22);
  double s = 0;
  for (float v : x.span<float>()) s += v;
  const Tensor all = f32({1, 1}, {float(s)});
  EXPECT_TRUE(same(run1(OpKind::kReduceSum, {x}), all));
  EXPECT_TRUE(same(run1(OpKind::kReduceSum, {x, Tensor()}), all));
  EXPECT_TRUE(same(run1(OpKind::kReduceSum, {x, i64({0}, {})}), all));
  EXPECT_TRUE(same(run1(OpKind::kReduceMean, {x}, {{"keepdims", int64_t(0)}}),
                   Tensor::scalar<float>(float(s / 6))));
  // noop_with_empty_axes=1: no axes is the identity; given axes still reduce.
  const Attrs noop = {{"noop_with_empty_axes", int64_t(1)}};
  EXPECT_TRUE(same(run1(OpKind::kReduceMax, {x}, noop), x));
  EXPECT_TRUE(same(run1(OpKind::kReduceMax, {x, i64({0}, {})}, noop), x));
  EXPECT_TRUE(
      same(run1(OpKind::kReduceSum, {kData, i64s({0, 1, 2})}, noop), f32({1, 1, 1}, {219})));
}

TEST(ReduceReference, IntegerReductions) {
  const Tensor x = typed<int32_t>({2, 3}, {1, -7, 3, 100, 5, -6});
  EXPECT_TRUE(same(run1(OpKind::kReduceSum, {x, i64s({1})}), typed<int32_t>({2, 1}, {-3, 99})));
  EXPECT_TRUE(same(run1(OpKind::kReduceMax, {x, i64s({0})}, {{"keepdims", int64_t(0)}}),
                   typed<int32_t>({3}, {100, 5, 3})));
  EXPECT_TRUE(same(run1(OpKind::kReduceMin, {typed<int8_t>({3}, {4, -128, 127})}),
                   typed<int8_t>({1}, {-128})));
  // Integer sums wrap in the element type.
  EXPECT_TRUE(
      same(run1(OpKind::kReduceSum, {typed<uint8_t>({2}, {200, 100})}), typed<uint8_t>({1}, {44})));
}

TEST(ReduceReference, NaNPropagatesThroughMaxAndMin) {
  const Tensor x = f32({3}, {1, NAN, 2});
  EXPECT_TRUE(same(run1(OpKind::kReduceMax, {x}), f32({1}, {NAN})));
  EXPECT_TRUE(same(run1(OpKind::kReduceMin, {x}), f32({1}, {NAN})));
}

TEST(ReduceReference, InferWithDynamicDimsAndUnknownAxes) {
  const In data{DType::kFloat32, {kDynamicDim, 3, 4}, {}};
  EXPECT_EQ(infer_shape(OpKind::kReduceMean, {data, known(i64s({-1}))}, {{"keepdims", int64_t(0)}}),
            (Shape{kDynamicDim, 3}));
  EXPECT_EQ(infer_shape(OpKind::kReduceMax, {data, known(i64s({0}))}), (Shape{1, 3, 4}));
  // Axes computed at run time: keepdims keeps the rank; otherwise their count gives the rank.
  const In axes{DType::kInt64, {1}, {}};
  EXPECT_EQ(infer_shape(OpKind::kReduceSum, {{DType::kFloat32, {2, 1, 5}, {}}, axes}),
            (Shape{kDynamicDim, 1, kDynamicDim}));
  EXPECT_EQ(infer_shape(OpKind::kReduceSum, {data, axes}, {{"keepdims", int64_t(0)}}),
            (Shape{kDynamicDim, kDynamicDim}));
  std::vector<reference::TensorInfo> out;
  EXPECT_TRUE(fails_with(infer(OpKind::kReduceSum, {data, {DType::kInt64, {kDynamicDim}, {}}},
                               {{"keepdims", int64_t(0)}}, out),
                         StatusCode::kUnsupported, {"run time"}));
}

TEST(ReduceReference, Errors) {
  EXPECT_TRUE(fails_with(run_error(OpKind::kReduceSum, {kData, i64s({3})}),
                         StatusCode::kInvalidArgument, {"ReduceSum 'node'", "3", "out of range"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kReduceSum, {kData, i64s({1, -2})}),
                         StatusCode::kInvalidArgument, {"axis 1 is repeated"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kReduceMean, {typed<int32_t>({2}, {1, 2})}),
                         StatusCode::kUnsupported, {"data has dtype i32"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kReduceMax, {kData, f32({1}, {1})}),
                         StatusCode::kInvalidArgument, {"axes must be int64"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kReduceMax, {kData, i64({1, 1}, {1})}),
                         StatusCode::kInvalidArgument, {"axes must be a 1-D"}));
}

}  // namespace
}  // namespace mixq::testing::kt
