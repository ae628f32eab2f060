// Reference Gemm and MatMul: hand-computed cases, a direct triple loop on random data,
// numpy matmul promotion and broadcasting rules, shape inference and errors.
#include <gtest/gtest.h>

#include "backends/reference/nn_test_util.h"

namespace mixq::testing {
namespace {

using ir::OpKind;

// y[i, j] = sum_k a(i, k) * b(k, j) in double, where a(i, k) = A[i, k] or A[k, i] when transposed.
Tensor direct_matmul(const Tensor& a, bool ta, const Tensor& b, bool tb) {
  const int64_t m = ta ? a.dim(1) : a.dim(0), k = ta ? a.dim(0) : a.dim(1);
  const int64_t n = tb ? b.dim(0) : b.dim(1);
  Tensor y = Tensor::empty(DType::kFloat32, {m, n});
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0;
      for (int64_t p = 0; p < k; ++p)
        acc += double(a.data<float>()[ta ? p * m + i : i * k + p]) *
               b.data<float>()[tb ? j * k + p : p * n + j];
      y.data<float>()[i * n + j] = float(acc);
    }
  return y;
}

TEST(GemmReference, HandComputedWithAlphaBetaAndBroadcastC) {
  const Tensor a = f32({2, 3}, {1, 2, 3, 4, 5, 6});
  const Tensor b = f32({3, 2}, {1, 0, 0, 1, 1, 1});
  // A * B = [[4, 5], [10, 11]].
  EXPECT_TRUE(close(run1(OpKind::kGemm, {a, b}), f32({2, 2}, {4, 5, 10, 11})));
  EXPECT_TRUE(close(run1(OpKind::kGemm, {a, b, Tensor()}), f32({2, 2}, {4, 5, 10, 11})));
  const Attrs ab = {{"alpha", 2.0f}, {"beta", 0.5f}};
  // C of shape [N], [M, 1], [] and [M, N].
  EXPECT_TRUE(
      close(run1(OpKind::kGemm, {a, b, f32({2}, {10, 20})}, ab), f32({2, 2}, {13, 20, 25, 32})));
  EXPECT_TRUE(
      close(run1(OpKind::kGemm, {a, b, f32({2, 1}, {10, 20})}, ab), f32({2, 2}, {13, 15, 30, 32})));
  EXPECT_TRUE(close(run1(OpKind::kGemm, {a, b, Tensor::scalar<float>(-2)}, ab),
                    f32({2, 2}, {7, 9, 19, 21})));
  EXPECT_TRUE(
      close(run1(OpKind::kGemm, {a, b, f32({2, 2}, {1, 2, 3, 4})}), f32({2, 2}, {5, 7, 13, 15})));
}

TEST(GemmReference, TransposesMatchDirectLoop) {
  uint64_t seed = 1;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      SCOPED_TRACE("transA " + std::to_string(ta) + " transB " + std::to_string(tb));
      const int64_t m = 5, k = 7, n = 9;
      const Tensor a = random_tensor(ta ? Shape{k, m} : Shape{m, k}, seed++);
      const Tensor b = random_tensor(tb ? Shape{n, k} : Shape{k, n}, seed++);
      const Tensor c = random_tensor({n}, seed++);
      const Tensor got = run1(
          OpKind::kGemm, {a, b, c},
          {{"transA", int64_t(ta)}, {"transB", int64_t(tb)}, {"alpha", 0.75f}, {"beta", -1.5f}});
      Tensor expected = direct_matmul(a, ta, b, tb);
      for (int64_t i = 0; i < m * n; ++i)
        expected.data<float>()[i] =
            float(0.75 * expected.data<float>()[i] - 1.5 * c.data<float>()[i % n]);
      EXPECT_TRUE(close(got, expected));
    }
}

TEST(GemmReference, InfersAndRejects) {
  std::vector<reference::TensorInfo> out;
  ASSERT_TRUE(
      infer_op(
          OpKind::kGemm,
          {{DType::kFloat32, {-1, 512}}, {DType::kFloat32, {1000, 512}}, {DType::kFloat32, {1000}}},
          {{"transB", int64_t(1)}}, out)
          .ok());
  EXPECT_EQ(out[0].shape, (Shape{-1, 1000}));

  std::vector<Tensor> res;
  const Tensor a = random_tensor({2, 3}, 1);
  EXPECT_TRUE(fails_with(run_op(OpKind::kGemm, {a, random_tensor({4, 2}, 2)}, {}, res),
                         StatusCode::kInvalidArgument, {"inner dimensions", "K = 3", "K = 4"}));
  EXPECT_TRUE(fails_with(
      run_op(OpKind::kGemm, {a, random_tensor({3, 2}, 3), random_tensor({3}, 4)}, {}, res),
      StatusCode::kInvalidArgument, {"C [3]", "[M, N] = [2,2]"}));
  EXPECT_TRUE(fails_with(
      run_op(OpKind::kGemm, {random_tensor({1, 2, 3}, 5), random_tensor({3, 2}, 6)}, {}, res),
      StatusCode::kInvalidArgument, {"must be 2-D"}));
}

// --- MatMul ------------------------------------------------------------------------------------

TEST(MatMulReference, TwoDimensionalMatchesDirectLoop) {
  const Tensor a = random_tensor({6, 11}, 1), b = random_tensor({11, 13}, 2);
  EXPECT_TRUE(close(run1(OpKind::kMatMul, {a, b}), direct_matmul(a, false, b, false)));
}

TEST(MatMulReference, PromotesOneDimensionalOperands) {
  const Tensor m = f32({2, 3}, {1, 2, 3, 4, 5, 6});
  const Tensor v2 = f32({2}, {1, -1}), v3 = f32({3}, {1, 0, 2});
  EXPECT_TRUE(close(run1(OpKind::kMatMul, {v2, m}), f32({3}, {-3, -3, -3})));     // [2] @ [2,3]
  EXPECT_TRUE(close(run1(OpKind::kMatMul, {m, v3}), f32({2}, {7, 16})));          // [2,3] @ [3]
  EXPECT_TRUE(close(run1(OpKind::kMatMul, {v3, v3}), Tensor::scalar<float>(5)));  // dot -> []
  // A vector against a batch of matrices: [3] @ [2, 3, 2] -> [2, 2].
  const Tensor batch = iota({2, 3, 2});
  EXPECT_TRUE(close(run1(OpKind::kMatMul, {v3, batch}), f32({2, 2}, {11, 14, 29, 32})));
}

TEST(MatMulReference, BroadcastsBatchDims) {
  // [2, 1, 3, 4] @ [3, 4, 5] -> [2, 3, 3, 5]: A repeats over B's batch and B over A's.
  const Tensor a = random_tensor({2, 1, 3, 4}, 3), b = random_tensor({3, 4, 5}, 4);
  const Tensor got = run1(OpKind::kMatMul, {a, b});
  ASSERT_EQ(got.shape(), (Shape{2, 3, 3, 5}));
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j) {
      const Tensor ai = a.slice_rows(i, i + 1).reshaped({3, 4}).clone();
      const Tensor bj = b.slice_rows(j, j + 1).reshaped({4, 5}).clone();
      const Tensor yij = got.slice_rows(i, i + 1).reshaped({3, 3, 5}).slice_rows(j, j + 1);
      EXPECT_TRUE(close(yij.reshaped({3, 5}).clone(), direct_matmul(ai, false, bj, false)))
          << "batch " << i << ", " << j;
    }
}

TEST(MatMulReference, IntegerDtypes) {
  const Tensor a = Tensor::from_vector<int32_t>({2, 2}, {1, 2, 3, 4});
  const Tensor b = Tensor::from_vector<int32_t>({2, 2}, {5, 6, -7, 8});
  const Tensor y = run1(OpKind::kMatMul, {a, b});
  ASSERT_EQ(y.dtype(), DType::kInt32);
  EXPECT_EQ(y.to_int64_vector(), (std::vector<int64_t>{-9, 22, -13, 50}));
  const Tensor y64 = run1(OpKind::kMatMul, {a.to(DType::kInt64), b.to(DType::kInt64)});
  ASSERT_EQ(y64.dtype(), DType::kInt64);
  EXPECT_EQ(y64.to_int64_vector(), (std::vector<int64_t>{-9, 22, -13, 50}));
}

TEST(MatMulReference, InfersAndRejects) {
  std::vector<reference::TensorInfo> out;
  ASSERT_TRUE(infer_op(OpKind::kMatMul,
                       {{DType::kFloat32, {-1, 128, 768}}, {DType::kFloat32, {768, 3072}}}, {}, out)
                  .ok());
  EXPECT_EQ(out[0].shape, (Shape{-1, 128, 3072}));

  std::vector<Tensor> res;
  EXPECT_TRUE(fails_with(
      run_op(OpKind::kMatMul, {random_tensor({2, 3}, 1), random_tensor({4, 2}, 2)}, {}, res),
      StatusCode::kInvalidArgument, {"inner dimensions", "K = 3", "K = 4"}));
  EXPECT_TRUE(fails_with(
      run_op(OpKind::kMatMul, {random_tensor({2, 2, 3}, 3), random_tensor({3, 3, 4}, 4)}, {}, res),
      StatusCode::kInvalidArgument, {"batch dimensions", "cannot be broadcast"}));
  EXPECT_TRUE(fails_with(
      run_op(OpKind::kMatMul,
             {random_tensor({2, 3}, 5), Tensor::from_vector<int32_t>({3}, {1, 2, 3})}, {}, res),
      StatusCode::kUnsupported, {"input B"}));
  EXPECT_TRUE(fails_with(
      run_op(OpKind::kMatMul, {Tensor::scalar<float>(1), random_tensor({3}, 6)}, {}, res),
      StatusCode::kInvalidArgument, {"rank >= 1"}));
}

}  // namespace
}  // namespace mixq::testing
