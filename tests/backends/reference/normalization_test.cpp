// Reference BatchNormalization, LRN, Softmax and LogSoftmax: hand-computed cases, the ONNX
// formulas written out directly on random data, and errors.
#include <cmath>

#include <gtest/gtest.h>

#include "backends/reference/nn_test_util.h"

namespace mixq::testing {
namespace {

using ir::OpKind;

// --- BatchNormalization ------------------------------------------------------------------------

TEST(BatchNormReference, HandComputed) {
  // Channel 0: scale 2, var 4 -> y = (x - 1) + 0.1. Channel 1: scale 0.5, var 0.25 -> y = (x - 2)
  // - 1.
  const Tensor x = f32({1, 2, 1, 2}, {1, 2, 3, 5});
  const Tensor y =
      run1(OpKind::kBatchNormalization,
           {x, f32({2}, {2, 0.5f}), f32({2}, {0.1f, -1}), f32({2}, {1, 2}), f32({2}, {4, 0.25f})},
           {{"epsilon", 0.0f}});
  EXPECT_TRUE(close(y, f32({1, 2, 1, 2}, {0.1f, 1.1f, 0, 2})));
}

TEST(BatchNormReference, MatchesFormulaForRanks2To5) {
  uint64_t seed = 1;
  for (const Shape& shape :
       {Shape{3, 4}, Shape{2, 3, 5}, Shape{2, 3, 4, 5}, Shape{1, 2, 3, 2, 4}}) {
    SCOPED_TRACE(shape_to_string(shape));
    const int64_t c = shape[1], plane = shape_numel(shape) / (shape[0] * c);
    const Tensor x = random_tensor(shape, seed++, -3, 3);
    const Tensor scale = random_tensor({c}, seed++), bias = random_tensor({c}, seed++);
    const Tensor mean = random_tensor({c}, seed++), var = random_tensor({c}, seed++, 0.1f, 2);
    Tensor expected = Tensor::empty(DType::kFloat32, shape);
    for (int64_t i = 0; i < x.numel(); ++i) {
      const int64_t ch = (i / plane) % c;
      expected.data<float>()[i] =
          float(scale.data<float>()[ch] * (double(x.data<float>()[i]) - mean.data<float>()[ch]) /
                    std::sqrt(double(var.data<float>()[ch]) + 1e-3) +
                bias.data<float>()[ch]);
    }
    EXPECT_TRUE(
        close(run1(OpKind::kBatchNormalization, {x, scale, bias, mean, var}, {{"epsilon", 1e-3f}}),
              expected));
  }
}

TEST(BatchNormReference, RejectsTrainingModeAndBadShapes) {
  const Tensor x = random_tensor({2, 3, 4}, 1);
  const Tensor p = random_tensor({3}, 2, 0.5f, 1);
  std::vector<Tensor> out;
  EXPECT_TRUE(fails_with(run_op(OpKind::kBatchNormalization, {x, p, p, p, p}, {}, out, 3),
                         StatusCode::kUnsupported, {"training mode is not supported"}));
  EXPECT_TRUE(fails_with(
      run_op(OpKind::kBatchNormalization, {x, p, p, p, p}, {{"training_mode", int64_t(1)}}, out),
      StatusCode::kUnsupported, {"training mode is not supported"}));
  EXPECT_TRUE(
      fails_with(run_op(OpKind::kBatchNormalization, {x, p, p, random_tensor({4}, 3), p}, {}, out),
                 StatusCode::kInvalidArgument, {"mean must have shape [3]", "got [4]"}));
  EXPECT_TRUE(
      fails_with(run_op(OpKind::kBatchNormalization, {random_tensor({3}, 4), p, p, p, p}, {}, out),
                 StatusCode::kInvalidArgument, {"rank >= 2"}));
}

// --- LRN ---------------------------------------------------------------------------------------

TEST(LRNReference, HandComputedWindows) {
  // alpha / size = 1, beta = 1, bias = 1: y = x / (1 + sum of squares in the window).
  const Tensor x = f32({1, 3, 1, 1}, {1, 2, 3});
  // size 3: channels [c - 1, c + 1].
  EXPECT_TRUE(close(run1(OpKind::kLRN, {x},
                         {{"size", int64_t(3)}, {"alpha", 3.0f}, {"beta", 1.0f}, {"bias", 1.0f}}),
                    f32({1, 3, 1, 1}, {1.0f / 6, 2.0f / 15, 3.0f / 14})));
  // size 2: channels [c - floor(1/2), c + ceil(1/2)] = [c, c + 1].
  EXPECT_TRUE(close(run1(OpKind::kLRN, {x},
                         {{"size", int64_t(2)}, {"alpha", 2.0f}, {"beta", 1.0f}, {"bias", 1.0f}}),
                    f32({1, 3, 1, 1}, {1.0f / 6, 2.0f / 14, 3.0f / 10})));
}

TEST(LRNReference, MatchesOnnxFormulaOnRandomData) {
  // onnx/backend/test/case/node/lrn.py, written out.
  const Shape shape = {2, 7, 3, 4};
  const Tensor x = random_tensor(shape, 5, -2, 2);
  for (int64_t size : {1, 3, 4, 5}) {
    SCOPED_TRACE("size " + std::to_string(size));
    const double alpha = 2e-4, beta = 0.5, bias = 2.0;
    Tensor expected = Tensor::empty(DType::kFloat32, shape);
    const int64_t C = shape[1], HW = shape[2] * shape[3];
    for (int64_t n = 0; n < shape[0]; ++n)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t i = 0; i < HW; ++i) {
          double sq = 0;
          const int64_t lo = std::max<int64_t>(0, c - int64_t(std::floor((size - 1) / 2.0)));
          const int64_t hi = std::min<int64_t>(C, c + int64_t(std::ceil((size - 1) / 2.0)) + 1);
          for (int64_t j = lo; j < hi; ++j) {
            const double v = x.data<float>()[(n * C + j) * HW + i];
            sq += v * v;
          }
          const int64_t at = (n * C + c) * HW + i;
          expected.data<float>()[at] =
              float(x.data<float>()[at] / std::pow(bias + alpha / double(size) * sq, beta));
        }
    EXPECT_TRUE(close(run1(OpKind::kLRN, {x},
                           {{"size", size},
                            {"alpha", float(alpha)},
                            {"beta", float(beta)},
                            {"bias", float(bias)}}),
                      expected));
  }
  std::vector<Tensor> out;
  EXPECT_TRUE(fails_with(run_op(OpKind::kLRN, {x}, {}, out), StatusCode::kInvalidArgument,
                         {"size is required"}));
}

// --- Softmax / LogSoftmax ----------------------------------------------------------------------

// softmax over [outer, n, inner] slices, in double.
Tensor direct_softmax(const Tensor& x, int64_t outer, int64_t n, int64_t inner, bool log) {
  Tensor y = Tensor::empty(DType::kFloat32, x.shape());
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      double sum = 0;
      for (int64_t j = 0; j < n; ++j)
        sum += std::exp(double(x.data<float>()[(o * n + j) * inner + i]));
      for (int64_t j = 0; j < n; ++j) {
        const int64_t at = (o * n + j) * inner + i;
        const double v = x.data<float>()[at];
        y.data<float>()[at] = float(log ? v - std::log(sum) : std::exp(v) / sum);
      }
    }
  return y;
}

TEST(SoftmaxReference, HandComputed) {
  const Tensor x = f32({1, 3}, {1, 2, 3});
  const double e = std::exp(1.0), s = e + e * e + e * e * e;
  EXPECT_TRUE(close(run1(OpKind::kSoftmax, {x}),
                    f32({1, 3}, {float(e / s), float(e * e / s), float(e * e * e / s)})));
  EXPECT_TRUE(
      close(run1(OpKind::kLogSoftmax, {x}),
            f32({1, 3}, {float(1 - std::log(s)), float(2 - std::log(s)), float(3 - std::log(s))})));
}

TEST(SoftmaxReference, IsNumericallyStable) {
  // exp(1000) overflows float and double: the max must be subtracted first.
  const Tensor x = f32({2}, {1000, 1001});
  const double p0 = 1 / (1 + std::exp(1.0));
  EXPECT_TRUE(close(run1(OpKind::kSoftmax, {x}), f32({2}, {float(p0), float(1 - p0)})));
  EXPECT_TRUE(close(run1(OpKind::kLogSoftmax, {x}),
                    f32({2}, {float(std::log(p0)), float(std::log(1 - p0))})));
}

TEST(SoftmaxReference, Opset13AxisSemantics) {
  const Tensor x = random_tensor({2, 3, 4}, 9, -4, 4);
  for (bool log : {false, true}) {
    const OpKind op = log ? OpKind::kLogSoftmax : OpKind::kSoftmax;
    SCOPED_TRACE(log ? "LogSoftmax" : "Softmax");
    EXPECT_TRUE(close(run1(op, {x}), direct_softmax(x, 6, 4, 1, log)));  // default axis -1
    EXPECT_TRUE(close(run1(op, {x}, {{"axis", int64_t(0)}}), direct_softmax(x, 1, 2, 12, log)));
    EXPECT_TRUE(close(run1(op, {x}, {{"axis", int64_t(1)}}), direct_softmax(x, 2, 3, 4, log)));
    EXPECT_TRUE(close(run1(op, {x}, {{"axis", int64_t(-2)}}), direct_softmax(x, 2, 3, 4, log)));
  }
}

TEST(SoftmaxReference, Coerce2dSemantics) {
  // Opset < 13: flatten to 2-D at axis (default 1) and normalise each row.
  const Tensor x = random_tensor({2, 3, 4}, 10, -4, 4);
  for (bool log : {false, true}) {
    const OpKind op = log ? OpKind::kLogSoftmax : OpKind::kSoftmax;
    SCOPED_TRACE(log ? "LogSoftmax" : "Softmax");
    const Attrs coerce = {{"mixq.coerce_2d", int64_t(1)}};
    EXPECT_TRUE(close(run1(op, {x}, coerce), direct_softmax(x, 2, 12, 1, log)));
    Attrs axis0 = coerce, axis2 = coerce;
    axis0["axis"] = int64_t(0);
    axis2["axis"] = int64_t(-1);
    EXPECT_TRUE(close(run1(op, {x}, axis0), direct_softmax(x, 1, 24, 1, log)));
    EXPECT_TRUE(close(run1(op, {x}, axis2), direct_softmax(x, 6, 4, 1, log)));
  }
}

TEST(SoftmaxReference, InfersAndRejects) {
  std::vector<reference::TensorInfo> infos;
  ASSERT_TRUE(infer_op(OpKind::kSoftmax, {{DType::kFloat32, {-1, 12, 128, 128}}}, {}, infos).ok());
  EXPECT_EQ(infos[0].shape, (Shape{-1, 12, 128, 128}));
  std::vector<Tensor> out;
  const Tensor x = random_tensor({2, 3}, 1);
  EXPECT_TRUE(fails_with(run_op(OpKind::kSoftmax, {x}, {{"axis", int64_t(2)}}, out),
                         StatusCode::kInvalidArgument, {"axis 2 is out of range for rank 2"}));
  EXPECT_TRUE(fails_with(run_op(OpKind::kLogSoftmax, {x.to(DType::kInt32)}, {}, out),
                         StatusCode::kUnsupported, {"i32"}));
}

}  // namespace
}  // namespace mixq::testing
