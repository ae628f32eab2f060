// Reference pools: the numbers of ONNX's maxpool.py / averagepool.py node tests, ceil_mode and
// count_include_pad cases checked by hand, global pools, shape inference and errors.
#include <gtest/gtest.h>

#include "backends/reference/nn_test_util.h"

namespace mixq::testing {
namespace {

using ir::OpKind;
using V = std::vector<int64_t>;

// --- MaxPool -----------------------------------------------------------------------------------

TEST(MaxPoolReference, OnnxPrecomputedPadsWithIndices) {
  const Attrs attrs = {{"kernel_shape", V{5, 5}}, {"pads", V{2, 2, 2, 2}}};
  const Tensor expected = f32({1, 1, 5, 5}, {13, 14, 15, 15, 15, 18, 19, 20, 20, 20, 23, 24, 25,
                                             25, 25, 23, 24, 25, 25, 25, 23, 24, 25, 25, 25});
  std::vector<Tensor> out;
  ASSERT_TRUE(run_op(OpKind::kMaxPool, {iota({1, 1, 5, 5})}, attrs, out, 2).ok());
  EXPECT_TRUE(close(out[0], expected));
  ASSERT_EQ(out[1].dtype(), DType::kInt64);
  EXPECT_EQ(out[1].to_int64_vector(), (V{12, 13, 14, 14, 14, 17, 18, 19, 19, 19, 22, 23, 24,
                                         24, 24, 22, 23, 24, 24, 24, 22, 23, 24, 24, 24}));
  // uint8 and int8 move the same data.
  for (DType dt : {DType::kUInt8, DType::kInt8}) {
    const Tensor y = run1(OpKind::kMaxPool, {iota({1, 1, 5, 5}).to(dt)}, attrs);
    ASSERT_EQ(y.dtype(), dt);
    EXPECT_EQ(y.to_int64_vector(), expected.to(DType::kInt64).to_int64_vector());
  }
}

TEST(MaxPoolReference, OnnxStridesWithColumnMajorIndices) {
  std::vector<Tensor> out;
  const Attrs attrs = {
      {"kernel_shape", V{2, 2}}, {"strides", V{2, 2}}, {"storage_order", int64_t(1)}};
  ASSERT_TRUE(run_op(OpKind::kMaxPool, {iota({1, 1, 5, 5})}, attrs, out, 2).ok());
  EXPECT_TRUE(close(out[0], f32({1, 1, 2, 2}, {7, 9, 17, 19})));
  EXPECT_EQ(out[1].to_int64_vector(), (V{6, 16, 8, 18}));
}

TEST(MaxPoolReference, IndicesCountBatchAndChannel) {
  // Flat indices run over the whole input: (n * C + c) * H * W + h * W + w.
  const Tensor x = iota({2, 3, 2, 2});  // the max of every plane is its last element
  std::vector<Tensor> out;
  ASSERT_TRUE(run_op(OpKind::kMaxPool, {x}, {{"kernel_shape", V{2, 2}}}, out, 2).ok());
  EXPECT_EQ(out[1].to_int64_vector(), (V{3, 7, 11, 15, 19, 23}));
  EXPECT_TRUE(close(out[0], f32({2, 3, 1, 1}, {4, 8, 12, 16, 20, 24})));
}

TEST(MaxPoolReference, OnnxSameUpperCeilAndDilations) {
  const Tensor x5 = iota({1, 1, 5, 5}), x4 = iota({1, 1, 4, 4});
  EXPECT_TRUE(close(run1(OpKind::kMaxPool, {x5},
                         {{"kernel_shape", V{3, 3}},
                          {"strides", V{2, 2}},
                          {"auto_pad", std::string("SAME_UPPER")}}),
                    f32({1, 1, 3, 3}, {7, 9, 10, 17, 19, 20, 22, 24, 25})));
  EXPECT_TRUE(
      close(run1(OpKind::kMaxPool, {x4},
                 {{"kernel_shape", V{3, 3}}, {"strides", V{2, 2}}, {"ceil_mode", int64_t(1)}}),
            f32({1, 1, 2, 2}, {11, 12, 15, 16})));
  EXPECT_TRUE(
      close(run1(OpKind::kMaxPool, {x4}, {{"kernel_shape", V{2, 2}}, {"dilations", V{2, 2}}}),
            f32({1, 1, 2, 2}, {11, 12, 15, 16})));
  // ceil_mode drops a last window that would start past the input (ONNX
  // test_maxpool_2d_ceil_output_size_reduce_by_one): 2x2, kernel 1, stride 2 -> 1x1.
  EXPECT_TRUE(
      close(run1(OpKind::kMaxPool, {iota({1, 1, 2, 2})},
                 {{"kernel_shape", V{1, 1}}, {"strides", V{2, 2}}, {"ceil_mode", int64_t(1)}}),
            f32({1, 1, 1, 1}, {1})));
}

TEST(MaxPoolReference, OneDimensionalAutoPadModes) {
  const Tensor x = f32({1, 1, 5}, {1, 3, 2, 5, 4});
  std::vector<Tensor> out;
  ASSERT_TRUE(run_op(OpKind::kMaxPool, {x}, {{"kernel_shape", V{2}}}, out, 2).ok());
  EXPECT_TRUE(close(out[0], f32({1, 1, 4}, {3, 3, 5, 5})));
  EXPECT_EQ(out[1].to_int64_vector(), (V{1, 1, 3, 3}));
  // Total pad 1: SAME_UPPER pads the end, SAME_LOWER the beginning.
  EXPECT_TRUE(close(run1(OpKind::kMaxPool, {x},
                         {{"kernel_shape", V{2}}, {"auto_pad", std::string("SAME_UPPER")}}),
                    f32({1, 1, 5}, {3, 3, 5, 5, 4})));
  EXPECT_TRUE(close(run1(OpKind::kMaxPool, {x},
                         {{"kernel_shape", V{2}}, {"auto_pad", std::string("SAME_LOWER")}}),
                    f32({1, 1, 5}, {1, 3, 3, 5, 5})));
  EXPECT_TRUE(
      close(run1(OpKind::kMaxPool, {x},
                 {{"kernel_shape", V{3}}, {"strides", V{2}}, {"auto_pad", std::string("VALID")}}),
            f32({1, 1, 2}, {3, 5})));
}

TEST(MaxPoolReference, ThreeDimensional) {
  // 2x2x2 windows, stride 2, on a 1x1x2x4x4 ramp: each max is the window's far corner.
  const Tensor x = iota({1, 1, 2, 4, 4});
  std::vector<Tensor> out;
  ASSERT_TRUE(
      run_op(OpKind::kMaxPool, {x}, {{"kernel_shape", V{2, 2, 2}}, {"strides", V{2, 2, 2}}}, out, 2)
          .ok());
  EXPECT_TRUE(close(out[0], f32({1, 1, 1, 2, 2}, {22, 24, 30, 32})));
  EXPECT_EQ(out[1].to_int64_vector(), (V{21, 23, 29, 31}));
}

// --- AveragePool -------------------------------------------------------------------------------

TEST(AveragePoolReference, OnnxPrecomputedCases) {
  const Tensor x5 = iota({1, 1, 5, 5});
  EXPECT_TRUE(
      close(run1(OpKind::kAveragePool, {x5}, {{"kernel_shape", V{5, 5}}, {"pads", V{2, 2, 2, 2}}}),
            f32({1, 1, 5, 5}, {7,  7.5,  8,  8.5,  9,  9.5,  10, 10.5, 11, 11.5, 12, 12.5, 13, 13.5,
                               14, 14.5, 15, 15.5, 16, 16.5, 17, 17.5, 18, 18.5, 19})));
  EXPECT_TRUE(close(
      run1(OpKind::kAveragePool, {x5},
           {{"kernel_shape", V{5, 5}}, {"pads", V{2, 2, 2, 2}}, {"count_include_pad", int64_t(1)}}),
      f32({1, 1, 5, 5}, {2.52f,  3.6f,  4.8f,  4.08f, 3.24f, 4.56f, 6.4f,  8.4f, 7.04f,
                         5.52f,  7.2f,  10.0f, 13.0f, 10.8f, 8.4f,  6.96f, 9.6f, 12.4f,
                         10.24f, 7.92f, 6.12f, 8.4f,  10.8f, 8.88f, 6.84f})));
  EXPECT_TRUE(
      close(run1(OpKind::kAveragePool, {x5}, {{"kernel_shape", V{2, 2}}, {"strides", V{2, 2}}}),
            f32({1, 1, 2, 2}, {4, 6, 14, 16})));
  EXPECT_TRUE(close(run1(OpKind::kAveragePool, {x5},
                         {{"kernel_shape", V{3, 3}},
                          {"strides", V{2, 2}},
                          {"auto_pad", std::string("SAME_UPPER")}}),
                    f32({1, 1, 3, 3}, {4, 5.5, 7, 11.5, 13, 14.5, 19, 20.5, 22})));
}

TEST(AveragePoolReference, OnnxCeilAndDilations) {
  const Tensor x4 = iota({1, 1, 4, 4});
  // The last window hangs off the input: only its real elements count.
  EXPECT_TRUE(
      close(run1(OpKind::kAveragePool, {x4},
                 {{"kernel_shape", V{3, 3}}, {"strides", V{2, 2}}, {"ceil_mode", int64_t(1)}}),
            f32({1, 1, 2, 2}, {6, 7.5, 12, 13.5})));
  EXPECT_TRUE(
      close(run1(OpKind::kAveragePool, {x4},
                 {{"kernel_shape", V{2, 2}}, {"dilations", V{2, 2}}, {"ceil_mode", int64_t(1)}}),
            f32({1, 1, 2, 2}, {6, 7, 10, 11})));
}

TEST(AveragePoolReference, CeilModeWithCountIncludePad) {
  // 1-D: x = 1..5, kernel 3, stride 2, pads (1, 0), ceil_mode: windows start at -1, 1, 3. The
  // last covers 3, 4 and position 5, which lies past the input and its end pad: 5 never counts.
  const Tensor x = iota({1, 1, 5});
  const Attrs base = {
      {"kernel_shape", V{3}}, {"strides", V{2}}, {"pads", V{1, 0}}, {"ceil_mode", int64_t(1)}};
  Attrs include = base;
  include["count_include_pad"] = int64_t(1);
  EXPECT_TRUE(close(run1(OpKind::kAveragePool, {x}, base), f32({1, 1, 3}, {1.5f, 3, 4.5f})));
  EXPECT_TRUE(close(run1(OpKind::kAveragePool, {x}, include), f32({1, 1, 3}, {1, 3, 4.5f})));

  // 2-D: 4x4 ramp, kernel 3, stride 2, pads 1, ceil_mode -> 3x3. Per axis, window starts -1, 1,
  // 3 hold 2, 3, 1 real taps and 3, 3, 2 taps inside the padded input [-1, 5).
  const Tensor x4 = iota({1, 1, 4, 4});
  const Attrs base2 = {{"kernel_shape", V{3, 3}},
                       {"strides", V{2, 2}},
                       {"pads", V{1, 1, 1, 1}},
                       {"ceil_mode", int64_t(1)}};
  Attrs include2 = base2;
  include2["count_include_pad"] = int64_t(1);
  // Window sums: 14, 30, 12 / 57, 99, 36 / 27, 45, 16.
  EXPECT_TRUE(close(run1(OpKind::kAveragePool, {x4}, base2),
                    f32({1, 1, 3, 3}, {14.0f / 4, 30.0f / 6, 12.0f / 2, 57.0f / 6, 99.0f / 9,
                                       36.0f / 3, 27.0f / 2, 45.0f / 3, 16.0f / 1})));
  EXPECT_TRUE(close(run1(OpKind::kAveragePool, {x4}, include2),
                    f32({1, 1, 3, 3}, {14.0f / 9, 30.0f / 9, 12.0f / 6, 57.0f / 9, 99.0f / 9,
                                       36.0f / 6, 27.0f / 6, 45.0f / 6, 16.0f / 4})));
}

TEST(AveragePoolReference, SameLowerExcludesPadding) {
  // 1-D, kernel 2, SAME_LOWER pads the beginning by 1: the first window holds only x[0].
  const Tensor x = f32({1, 1, 4}, {2, 4, 6, 8});
  EXPECT_TRUE(close(run1(OpKind::kAveragePool, {x},
                         {{"kernel_shape", V{2}}, {"auto_pad", std::string("SAME_LOWER")}}),
                    f32({1, 1, 4}, {2, 3, 5, 7})));
  EXPECT_TRUE(close(run1(OpKind::kAveragePool, {x},
                         {{"kernel_shape", V{2}},
                          {"auto_pad", std::string("SAME_LOWER")},
                          {"count_include_pad", int64_t(1)}}),
                    f32({1, 1, 4}, {1, 3, 5, 7})));
}

// --- Global pools ------------------------------------------------------------------------------

TEST(GlobalPoolReference, AverageAndMax) {
  const Tensor x = iota({1, 1, 3, 3});
  EXPECT_TRUE(close(run1(OpKind::kGlobalAveragePool, {x}), f32({1, 1, 1, 1}, {5})));
  EXPECT_TRUE(close(run1(OpKind::kGlobalMaxPool, {x}), f32({1, 1, 1, 1}, {9})));

  const Tensor r = random_tensor({2, 3, 4, 5}, 7);
  Tensor mean = Tensor::empty(DType::kFloat32, {2, 3, 1, 1});
  Tensor max = Tensor::empty(DType::kFloat32, {2, 3, 1, 1});
  for (int64_t p = 0; p < 6; ++p) {
    double sum = 0;
    float m = r.data<float>()[p * 20];
    for (int64_t i = 0; i < 20; ++i) {
      sum += r.data<float>()[p * 20 + i];
      m = std::max(m, r.data<float>()[p * 20 + i]);
    }
    mean.data<float>()[p] = float(sum / 20);
    max.data<float>()[p] = m;
  }
  EXPECT_TRUE(close(run1(OpKind::kGlobalAveragePool, {r}), mean));
  EXPECT_TRUE(close(run1(OpKind::kGlobalMaxPool, {r}), max));
  // 1-D and 3-D spatial.
  EXPECT_TRUE(
      close(run1(OpKind::kGlobalAveragePool, {iota({1, 2, 4})}), f32({1, 2, 1}, {2.5f, 6.5f})));
  EXPECT_TRUE(
      close(run1(OpKind::kGlobalMaxPool, {iota({1, 1, 2, 2, 2})}), f32({1, 1, 1, 1, 1}, {8})));
  const Tensor q = run1(OpKind::kGlobalMaxPool, {iota({1, 2, 2}).to(DType::kInt8)});
  EXPECT_EQ(q.to_int64_vector(), (V{2, 4}));
}

// --- shape inference and errors ------------------------------------------------------------

TEST(PoolReference, InfersShapesWithSymbolicDims) {
  std::vector<reference::TensorInfo> out;
  ASSERT_TRUE(infer_op(OpKind::kMaxPool, {{DType::kFloat32, {-1, 64, 112, 112}}},
                       {{"kernel_shape", V{3, 3}}, {"strides", V{2, 2}}, {"pads", V{1, 1, 1, 1}}},
                       out, 2)
                  .ok());
  EXPECT_EQ(out[0].shape, (Shape{-1, 64, 56, 56}));
  EXPECT_EQ(out[1].dtype, DType::kInt64);
  EXPECT_EQ(out[1].shape, (Shape{-1, 64, 56, 56}));
  ASSERT_TRUE(
      infer_op(OpKind::kGlobalAveragePool, {{DType::kFloat32, {-1, 512, 7, 7}}}, {}, out).ok());
  EXPECT_EQ(out[0].shape, (Shape{-1, 512, 1, 1}));
  ASSERT_TRUE(infer_op(OpKind::kAveragePool, {{DType::kFloat32, {-1, 8, -1, 9}}},
                       {{"kernel_shape", V{2, 2}}, {"strides", V{2, 2}}, {"ceil_mode", int64_t(1)}},
                       out)
                  .ok());
  EXPECT_EQ(out[0].shape, (Shape{-1, 8, -1, 5}));
}

TEST(PoolReference, RejectsBadAttributes) {
  std::vector<Tensor> out;
  const Tensor x = random_tensor({1, 2, 5, 5}, 1);
  EXPECT_TRUE(fails_with(run_op(OpKind::kMaxPool, {x}, {}, out), StatusCode::kInvalidArgument,
                         {"kernel_shape [] must have 2 entries"}));
  EXPECT_TRUE(fails_with(
      run_op(OpKind::kAveragePool, {random_tensor({2, 5}, 2)}, {{"kernel_shape", V{2}}}, out),
      StatusCode::kInvalidArgument, {"rank 3, 4 or 5"}));
  EXPECT_TRUE(fails_with(
      run_op(OpKind::kMaxPool, {x}, {{"kernel_shape", V{2, 2}}, {"pads", V{2, 0, 0, 0}}}, out),
      StatusCode::kInvalidArgument, {"smaller than kernel_shape"}));
  EXPECT_TRUE(fails_with(run_op(OpKind::kMaxPool, {x}, {{"kernel_shape", V{6, 6}}}, out),
                         StatusCode::kInvalidArgument, {"smaller than the pooling window"}));
  EXPECT_TRUE(
      fails_with(run_op(OpKind::kMaxPool, {x},
                        {{"kernel_shape", V{2, 2}}, {"auto_pad", std::string("same")}}, out),
                 StatusCode::kInvalidArgument, {"auto_pad 'same'"}));
  EXPECT_TRUE(fails_with(
      run_op(OpKind::kAveragePool, {x.to(DType::kInt8)}, {{"kernel_shape", V{2, 2}}}, out),
      StatusCode::kUnsupported, {"input X", "i8"}));
}

}  // namespace
}  // namespace mixq::testing
