// Reference data-movement and shape ops: values on random data against explicit index maps,
// the ONNX node-test cases, build-time inference with dynamic dims and unknown shape inputs,
// and error messages.
#include <cmath>
#include <limits>

#include <gtest/gtest.h>

#include "backends/reference/kernel_test_util.h"

namespace mixq::testing::kt {
namespace {

using ir::OpKind;
constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
constexpr int64_t kMin = std::numeric_limits<int64_t>::min();

// x[I[a], J[b], K[c]] for every a, b, c: the expected result of a 3-D slice.
Tensor pick3(const Tensor& x, const std::vector<int64_t>& I, const std::vector<int64_t>& J,
             const std::vector<int64_t>& K) {
  Tensor y =
      Tensor::empty(DType::kFloat32, {int64_t(I.size()), int64_t(J.size()), int64_t(K.size())});
  float* p = y.data<float>();
  for (int64_t i : I)
    for (int64_t j : J)
      for (int64_t k : K) *p++ = x.data<float>()[(i * x.dim(1) + j) * x.dim(2) + k];
  return y;
}

// 1, 2, 3, ... in `shape` (the ONNX node tests' inputs).
Tensor iota_like(Shape shape) {
  Tensor t = Tensor::empty(DType::kFloat32, std::move(shape));
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = float(i + 1);
  return t;
}

std::vector<int64_t> range(int64_t begin, int64_t end, int64_t step = 1) {
  std::vector<int64_t> v;
  for (int64_t i = begin; step > 0 ? i < end : i > end; i += step) v.push_back(i);
  return v;
}

// --- Concat, Split -------------------------------------------------------------------------------

TEST(ShapeReference, ConcatNegativeAxis) {
  const Tensor a = random_tensor({2, 1}, 31), b = random_tensor({2, 3}, 32),
               c = random_tensor({2, 2}, 33);
  Tensor expected = Tensor::empty(DType::kFloat32, {2, 6});
  for (int64_t i = 0; i < 2; ++i) {
    float* row = expected.data<float>() + i * 6;
    row[0] = a.data<float>()[i];
    for (int64_t j = 0; j < 3; ++j) row[1 + j] = b.data<float>()[i * 3 + j];
    for (int64_t j = 0; j < 2; ++j) row[4 + j] = c.data<float>()[i * 2 + j];
  }
  EXPECT_TRUE(same(run1(OpKind::kConcat, {a, b, c}, {{"axis", int64_t(-1)}}), expected));
  EXPECT_TRUE(
      same(run1(OpKind::kConcat, {i64s({1, 2}), i64s({}), i64s({3})}, {{"axis", int64_t(0)}}),
           i64s({1, 2, 3})));
  EXPECT_EQ(infer_shape(OpKind::kConcat,
                        {{DType::kFloat32, {kDynamicDim, 3}, {}}, {DType::kFloat32, {4, 2}, {}}},
                        {{"axis", int64_t(1)}}),
            (Shape{4, 5}));
  EXPECT_TRUE(
      fails_with(run_error(OpKind::kConcat, {b, random_tensor({3, 3}, 34)}, {{"axis", int64_t(1)}}),
                 StatusCode::kInvalidArgument, {"input 1", "[3,3]", "does not match"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kConcat, {b, b}), StatusCode::kInvalidArgument,
                         {"axis attribute is required"}));
}

TEST(ShapeReference, SplitEqualAndExplicit) {
  const Tensor x = iota_like({2, 6});
  std::vector<Tensor> out;
  // Default: equal parts, one per output (ONNX test_split_equal_parts_2d).
  ASSERT_TRUE(run(OpKind::kSplit, {x}, {{"axis", int64_t(1)}}, out, 2).ok());
  EXPECT_TRUE(same(out[0], f32({2, 3}, {1, 2, 3, 7, 8, 9})));
  EXPECT_TRUE(same(out[1], f32({2, 3}, {4, 5, 6, 10, 11, 12})));
  // Explicit sizes, negative axis (test_split_variable_parts_2d).
  ASSERT_TRUE(run(OpKind::kSplit, {x, i64s({2, 4})}, {{"axis", int64_t(-1)}}, out, 2).ok());
  EXPECT_TRUE(same(out[0], f32({2, 2}, {1, 2, 7, 8})));
  EXPECT_TRUE(same(out[1], f32({2, 4}, {3, 4, 5, 6, 9, 10, 11, 12})));
  // Default axis 0, three parts, and zero-size parts.
  ASSERT_TRUE(run(OpKind::kSplit, {iota_like({6})}, {}, out, 3).ok());
  EXPECT_TRUE(same(out[2], f32({2}, {5, 6})));
  ASSERT_TRUE(run(OpKind::kSplit, {iota_like({2}), i64s({0, 2, 0})}, {}, out, 3).ok());
  EXPECT_TRUE(same(out[1], f32({2}, {1, 2})));
  EXPECT_EQ(out[0].shape(), (Shape{0}));

  EXPECT_TRUE(fails_with(run_error(OpKind::kSplit, {iota_like({7})}, {}, 2),
                         StatusCode::kInvalidArgument, {"size 7", "2 equal parts"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kSplit, {x, i64s({2, 3})}, {{"axis", int64_t(1)}}, 2),
                         StatusCode::kInvalidArgument, {"sum to 5", "size 6"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kSplit, {x, i64s({6})}, {{"axis", int64_t(1)}}, 2),
                         StatusCode::kInvalidArgument, {"1 sizes for 2 outputs"}));
  std::vector<reference::TensorInfo> infos;
  ASSERT_TRUE(infer(OpKind::kSplit, {{DType::kFloat32, {kDynamicDim, 8}, {}}},
                    {{"axis", int64_t(1)}}, infos, 4)
                  .ok());
  EXPECT_EQ(infos[3].shape, (Shape{kDynamicDim, 2}));
  ASSERT_TRUE(
      infer(OpKind::kSplit, {{DType::kFloat32, {4, 8}, {}}, {DType::kInt64, {2}, {}}}, {}, infos, 2)
          .ok());
  EXPECT_EQ(infos[1].shape, (Shape{kDynamicDim, 8}));
}

// --- Flatten, Reshape, Squeeze, Unsqueeze --------------------------------------------------------

TEST(ShapeReference, FlattenAxes) {
  const Tensor x = random_tensor({2, 3, 4}, 35);
  EXPECT_TRUE(same(run1(OpKind::kFlatten, {x}), x.reshaped({2, 12})));
  EXPECT_TRUE(same(run1(OpKind::kFlatten, {x}, {{"axis", int64_t(0)}}), x.reshaped({1, 24})));
  EXPECT_TRUE(same(run1(OpKind::kFlatten, {x}, {{"axis", int64_t(-1)}}), x.reshaped({6, 4})));
  EXPECT_TRUE(same(run1(OpKind::kFlatten, {x}, {{"axis", int64_t(3)}}), x.reshaped({24, 1})));
  EXPECT_EQ(infer_shape(OpKind::kFlatten, {{DType::kFloat32, {kDynamicDim, 3, 4}, {}}}),
            (Shape{kDynamicDim, 12}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kFlatten, {x}, {{"axis", int64_t(4)}}),
                         StatusCode::kInvalidArgument, {"axis 4", "rank 3"}));
}

TEST(ShapeReference, ReshapeZeroMinusOneAndAllowzero) {
  const Tensor x = random_tensor({2, 3, 4}, 36);
  EXPECT_TRUE(same(run1(OpKind::kReshape, {x, i64s({4, -1})}), x.reshaped({4, 6})));
  EXPECT_TRUE(same(run1(OpKind::kReshape, {x, i64s({0, -1})}), x.reshaped({2, 12})));
  EXPECT_TRUE(same(run1(OpKind::kReshape, {x, i64s({0, 0, 2, 2})}), x.reshaped({2, 3, 2, 2})));
  EXPECT_TRUE(same(run1(OpKind::kReshape, {x, i64s({-1})}), x.reshaped({24})));
  const Tensor one = random_tensor({1}, 37);
  EXPECT_TRUE(same(run1(OpKind::kReshape, {one, i64s({})}), one.reshaped({})));
  // allowzero=1: a 0 is a real zero-size dim.
  const Tensor empty = Tensor::empty(DType::kFloat32, {0, 3});
  EXPECT_EQ(run1(OpKind::kReshape, {empty, i64s({3, 0})}, {{"allowzero", int64_t(1)}}).shape(),
            (Shape{3, 0}));
  EXPECT_TRUE(
      fails_with(run_error(OpKind::kReshape, {x, i64s({3, 0})}, {{"allowzero", int64_t(1)}}),
                 StatusCode::kInvalidArgument, {"cannot reshape", "24", "0"}));
  EXPECT_TRUE(
      fails_with(run_error(OpKind::kReshape, {empty, i64s({0, -1})}, {{"allowzero", int64_t(1)}}),
                 StatusCode::kInvalidArgument, {"both 0 and -1"}));
}

TEST(ShapeReference, ReshapeErrorsNameTheProblem) {
  const Tensor x = random_tensor({2, 3}, 38);
  EXPECT_TRUE(
      fails_with(run_error(OpKind::kReshape, {x, i64s({4, 2})}), StatusCode::kInvalidArgument,
                 {"Reshape 'node'", "cannot reshape [2,3] into shape [4,2]", "6 elements vs 8"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kReshape, {x, i64s({4, -1})}),
                         StatusCode::kInvalidArgument, {"cannot reshape", "do not divide"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kReshape, {x, i64s({-1, -1})}),
                         StatusCode::kInvalidArgument, {"more than one -1"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kReshape, {x, i64s({3, -2})}),
                         StatusCode::kInvalidArgument, {"below -1"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kReshape, {x, i64s({6, 1, 0})}),
                         StatusCode::kInvalidArgument, {"copies dim 2", "rank 2"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kReshape, {x, f32({2}, {3, 2})}),
                         StatusCode::kUnsupported, {"shape has dtype f32"}));
}

TEST(ShapeReference, ReshapeInferAtBuildTime) {
  const In data{DType::kFloat32, {kDynamicDim, 3, 4, 5}, {}};
  // The dynamic batch is copied by 0, so -1 is still known.
  EXPECT_EQ(infer_shape(OpKind::kReshape, {data, known(i64s({0, -1}))}), (Shape{kDynamicDim, 60}));
  EXPECT_EQ(infer_shape(OpKind::kReshape, {data, known(i64s({-1, 20}))}), (Shape{kDynamicDim, 20}));
  EXPECT_EQ(infer_shape(OpKind::kReshape, {data, known(i64s({0, 3, 0, 5}))}),
            (Shape{kDynamicDim, 3, 4, 5}));
  // Shape computed at run time: its length gives the rank.
  EXPECT_EQ(infer_shape(OpKind::kReshape, {data, {DType::kInt64, {3}, {}}}),
            (Shape{kDynamicDim, kDynamicDim, kDynamicDim}));
  std::vector<reference::TensorInfo> out;
  EXPECT_TRUE(
      fails_with(infer(OpKind::kReshape, {data, {DType::kInt64, {kDynamicDim}, {}}}, {}, out),
                 StatusCode::kUnsupported, {"computed at run time"}));
  // A known mismatch is still caught at build time.
  EXPECT_TRUE(fails_with(infer(OpKind::kReshape, {data, known(i64s({0, 7, -1}))}, {}, out),
                         StatusCode::kInvalidArgument, {"cannot reshape"}));
}

TEST(ShapeReference, SqueezeAndUnsqueeze) {
  const Tensor x = random_tensor({1, 3, 1, 2}, 39);
  EXPECT_TRUE(same(run1(OpKind::kSqueeze, {x}), x.reshaped({3, 2})));
  EXPECT_TRUE(same(run1(OpKind::kSqueeze, {x, i64s({-2})}), x.reshaped({1, 3, 2})));
  EXPECT_TRUE(same(run1(OpKind::kSqueeze, {x, i64s({0, 2})}), x.reshaped({3, 2})));
  EXPECT_TRUE(fails_with(run_error(OpKind::kSqueeze, {x, i64s({1})}), StatusCode::kInvalidArgument,
                         {"cannot squeeze axis 1", "size is 3"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kSqueeze, {x, i64s({4})}), StatusCode::kInvalidArgument,
                         {"out of range"}));

  const Tensor y = random_tensor({3, 4, 5}, 40);
  EXPECT_TRUE(same(run1(OpKind::kUnsqueeze, {y, i64s({1, 4})}), y.reshaped({3, 1, 4, 5, 1})));
  EXPECT_TRUE(same(run1(OpKind::kUnsqueeze, {y, i64s({5, 4, 2})}), y.reshaped({3, 4, 1, 5, 1, 1})));
  EXPECT_TRUE(same(run1(OpKind::kUnsqueeze, {y, i64s({-2})}), y.reshaped({3, 4, 1, 5})));
  EXPECT_TRUE(
      same(run1(OpKind::kUnsqueeze, {Tensor::scalar<float>(2.5f), i64s({0})}), f32({1}, {2.5f})));
  EXPECT_TRUE(fails_with(run_error(OpKind::kUnsqueeze, {y, i64s({1, 1})}),
                         StatusCode::kInvalidArgument, {"axis 1 is repeated"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kUnsqueeze, {y}), StatusCode::kInvalidArgument,
                         {"axes is missing"}));

  const In dyn{DType::kFloat32, {kDynamicDim, 1, 4}, {}};
  EXPECT_EQ(infer_shape(OpKind::kSqueeze, {dyn, known(i64s({1}))}), (Shape{kDynamicDim, 4}));
  EXPECT_EQ(infer_shape(OpKind::kUnsqueeze, {dyn, known(i64s({0}))}),
            (Shape{1, kDynamicDim, 1, 4}));
  EXPECT_EQ(infer_shape(OpKind::kUnsqueeze, {dyn, {DType::kInt64, {2}, {}}}),
            (Shape(5, kDynamicDim)));
  std::vector<reference::TensorInfo> out;
  EXPECT_TRUE(
      fails_with(infer(OpKind::kSqueeze, {dyn}, {}, out), StatusCode::kUnsupported, {"run time"}));
}

// --- Transpose -----------------------------------------------------------------------------------

TEST(ShapeReference, TransposeDefaultAndPerm) {
  const Tensor x = random_tensor({2, 3, 4}, 41);
  Tensor reversed = Tensor::empty(DType::kFloat32, {4, 3, 2}),
         swapped = Tensor::empty(DType::kFloat32, {2, 4, 3});
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j)
      for (int64_t k = 0; k < 4; ++k) {
        const float v = x.data<float>()[(i * 3 + j) * 4 + k];
        reversed.data<float>()[(k * 3 + j) * 2 + i] = v;
        swapped.data<float>()[(i * 4 + k) * 3 + j] = v;
      }
  EXPECT_TRUE(same(run1(OpKind::kTranspose, {x}), reversed));
  EXPECT_TRUE(
      same(run1(OpKind::kTranspose, {x}, {{"perm", std::vector<int64_t>{0, 2, 1}}}), swapped));
  EXPECT_TRUE(
      fails_with(run_error(OpKind::kTranspose, {x}, {{"perm", std::vector<int64_t>{0, 0, 1}}}),
                 StatusCode::kInvalidArgument, {"perm [0,0,1]", "not a permutation"}));
  EXPECT_EQ(infer_shape(OpKind::kTranspose, {{DType::kFloat32, {kDynamicDim, 3, 4}, {}}},
                        {{"perm", std::vector<int64_t>{2, 0, 1}}}),
            (Shape{4, kDynamicDim, 3}));
}

// --- Pad -----------------------------------------------------------------------------------------

TEST(ShapeReference, PadConstantReflectEdge) {
  // The Pad examples of ONNX's Operators.md.
  const Tensor x = f32({3, 2}, {1.0f, 1.2f, 2.3f, 3.4f, 4.5f, 5.7f});
  const Tensor pads = i64s({0, 2, 0, 0});
  EXPECT_TRUE(same(run1(OpKind::kPad, {x, pads}),
                   f32({3, 4}, {0, 0, 1.0f, 1.2f, 0, 0, 2.3f, 3.4f, 0, 0, 4.5f, 5.7f})));
  EXPECT_TRUE(
      same(run1(OpKind::kPad, {x, pads}, {{"mode", std::string("reflect")}}),
           f32({3, 4}, {1.0f, 1.2f, 1.0f, 1.2f, 2.3f, 3.4f, 2.3f, 3.4f, 4.5f, 5.7f, 4.5f, 5.7f})));
  EXPECT_TRUE(
      same(run1(OpKind::kPad, {x, pads}, {{"mode", std::string("edge")}}),
           f32({3, 4}, {1.0f, 1.0f, 1.0f, 1.2f, 2.3f, 2.3f, 2.3f, 3.4f, 4.5f, 4.5f, 4.5f, 5.7f})));
  // Constant value input, padding both ends of both axes.
  EXPECT_TRUE(
      same(run1(OpKind::kPad, {f32({1, 1}, {7}), i64s({1, 0, 0, 1}), Tensor::scalar<float>(-2.f)}),
           f32({2, 2}, {-2, -2, 7, -2})));
}

TEST(ShapeReference, PadReflectBeyondTheEdgeAndNegativeCrops) {
  // Pads longer than the axis reflect periodically, like numpy's np.pad.
  const Tensor row = typed<int32_t>({3}, {1, 2, 3});
  EXPECT_TRUE(same(run1(OpKind::kPad, {row, i64s({4, 3})}, {{"mode", std::string("reflect")}}),
                   typed<int32_t>({10}, {1, 2, 3, 2, 1, 2, 3, 2, 1, 2})));
  EXPECT_TRUE(same(run1(OpKind::kPad, {row, i64s({2, 1})}, {{"mode", std::string("edge")}}),
                   typed<int32_t>({6}, {1, 1, 1, 2, 3, 3})));
  // Negative pads crop (then the rest pads the cropped data).
  const Tensor x = random_tensor({3, 4}, 42);
  EXPECT_TRUE(same(run1(OpKind::kPad, {x, i64s({-1, 0, 0, -2})}),
                   pick3(x.reshaped({1, 3, 4}), {0}, {1, 2}, {0, 1}).reshaped({2, 2})));
  EXPECT_TRUE(same(run1(OpKind::kPad, {row, i64s({-1, 2})}, {{"mode", std::string("reflect")}}),
                   typed<int32_t>({4}, {2, 3, 2, 3})));
  // Every dtype moves: f16 constant pad with a zero default.
  const Tensor h = f32({2}, {1.5f, -2.0f}).to(DType::kFloat16);
  EXPECT_TRUE(
      same(run1(OpKind::kPad, {h, i64s({1, 0})}), f32({3}, {0, 1.5f, -2.0f}).to(DType::kFloat16)));
}

TEST(ShapeReference, PadErrorsAndInference) {
  const Tensor x = random_tensor({3, 4}, 43);
  EXPECT_TRUE(fails_with(run_error(OpKind::kPad, {x, i64s({1, 1})}), StatusCode::kInvalidArgument,
                         {"pads has 2 values", "needs 4"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kPad, {x, i64s({-2, 0, -2, 0})}),
                         StatusCode::kInvalidArgument, {"crop axis 0", "size 3"}));
  EXPECT_TRUE(
      fails_with(run_error(OpKind::kPad, {x, i64s({0, 0, 0, 1})}, {{"mode", std::string("wrap")}}),
                 StatusCode::kUnsupported, {"mode 'wrap'"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kPad, {x, i64s({0, 0, 0, 1}), typed<int32_t>({}, {1})}),
                         StatusCode::kUnsupported, {"constant_value has dtype i32"}));
  EXPECT_EQ(infer_shape(OpKind::kPad,
                        {{DType::kFloat32, {kDynamicDim, 4}, {}}, known(i64s({0, 1, 0, 2}))}),
            (Shape{kDynamicDim, 7}));
  EXPECT_EQ(infer_shape(OpKind::kPad, {{DType::kFloat32, {2, 4}, {}}, {DType::kInt64, {4}, {}}}),
            (Shape{kDynamicDim, kDynamicDim}));
}

// --- Slice ---------------------------------------------------------------------------------------

TEST(ShapeReference, SliceOnnxCases) {
  const Tensor x = random_tensor({20, 10, 5}, 44);
  const auto all = [](int64_t n) { return range(0, n); };
  // test_slice: x[0:3, 0:10]
  EXPECT_TRUE(
      same(run1(OpKind::kSlice, {x, i64s({0, 0}), i64s({3, 10}), i64s({0, 1}), i64s({1, 1})}),
           pick3(x, range(0, 3), all(10), all(5))));
  // test_slice_neg: x[:, 0:-1]
  EXPECT_TRUE(same(run1(OpKind::kSlice, {x, i64s({0}), i64s({-1}), i64s({1}), i64s({1})}),
                   pick3(x, all(20), range(0, 9), all(5))));
  // test_slice_neg_steps: x[20:0:-1, 10:0:-3, 4:1:-2]
  EXPECT_TRUE(same(run1(OpKind::kSlice, {x, i64s({20, 10, 4}), i64s({0, 0, 1}), i64s({0, 1, 2}),
                                         i64s({-1, -3, -2})}),
                   pick3(x, range(19, 0, -1), {9, 6, 3}, {4, 2})));
  // test_slice_start_out_of_bounds / end_out_of_bounds: clamping.
  EXPECT_EQ(run1(OpKind::kSlice, {x, i64s({1000}), i64s({1000}), i64s({1}), i64s({1})}).shape(),
            (Shape{20, 0, 5}));
  EXPECT_TRUE(same(run1(OpKind::kSlice, {x, i64s({1}), i64s({1000}), i64s({1}), i64s({1})}),
                   pick3(x, all(20), range(1, 10), all(5))));
  // test_slice_default_axes / default_steps / negative_axes: x[:, :, 3:4]
  const Tensor expected = pick3(x, all(20), all(10), {3});
  EXPECT_TRUE(same(run1(OpKind::kSlice, {x, i64s({0, 0, 3}), i64s({20, 10, 4})}), expected));
  EXPECT_TRUE(same(run1(OpKind::kSlice, {x, i64s({0, 0, 3}), i64s({20, 10, 4}), i64s({0, 1, 2})}),
                   expected));
  EXPECT_TRUE(same(run1(OpKind::kSlice, {x, i64s({0, 0, 3}), i64s({20, 10, 4}), i64s({0, -2, -1})}),
                   expected));
}

TEST(ShapeReference, SliceNegativeStepsAndExtremeBounds) {
  const Tensor x = random_tensor({2, 7, 3}, 45);
  const auto all = [](int64_t n) { return range(0, n); };
  // Reverse everything on axis 1: x[:, ::-1] as ONNX writes it (start -1, end INT64_MIN).
  EXPECT_TRUE(same(run1(OpKind::kSlice, {x, i64s({-1}), i64s({kMin}), i64s({1}), i64s({-1})}),
                   pick3(x, all(2), range(6, -1, -1), all(3))));
  // Starts beyond the end clamp to dim-1 for negative steps; ends below -dim clamp to -1.
  EXPECT_TRUE(same(run1(OpKind::kSlice, {x, i64s({100}), i64s({-100}), i64s({1}), i64s({-2})}),
                   pick3(x, all(2), {6, 4, 2, 0}, all(3))));
  EXPECT_TRUE(same(
      run1(OpKind::kSlice, {x, i64s({-100, 5}), i64s({kMax, 1}), i64s({1, -1}), i64s({3, kMin})}),
      pick3(x, all(2), {0, 3, 6}, {2})));
  // Empty results when start is already past end in the step's direction.
  EXPECT_EQ(run1(OpKind::kSlice, {x, i64s({5}), i64s({2}), i64s({1})}).shape(), (Shape{2, 0, 3}));
  EXPECT_EQ(run1(OpKind::kSlice, {x, i64s({2}), i64s({5}), i64s({1}), i64s({-1})}).shape(),
            (Shape{2, 0, 3}));
}

TEST(ShapeReference, SliceErrorsAndInference) {
  const Tensor x = random_tensor({4, 5}, 46);
  EXPECT_TRUE(fails_with(run_error(OpKind::kSlice, {x, i64s({0}), i64s({2}), i64s({0}), i64s({0})}),
                         StatusCode::kInvalidArgument, {"steps must not be 0"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kSlice, {x, i64s({0, 1}), i64s({2})}),
                         StatusCode::kInvalidArgument, {"same length"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kSlice, {x, i64s({0, 1}), i64s({2, 3}), i64s({1, -1})}),
                         StatusCode::kInvalidArgument, {"axis 1 is repeated"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kSlice, {x, i64s({0})}), StatusCode::kInvalidArgument,
                         {"ends is missing"}));
  const In dyn{DType::kFloat32, {kDynamicDim, 10}, {}};
  EXPECT_EQ(
      infer_shape(OpKind::kSlice, {dyn, known(i64s({2})), known(i64s({-1})), known(i64s({1}))}),
      (Shape{kDynamicDim, 7}));
  // Starts computed at run time with known axes: only that axis is unknown.
  EXPECT_EQ(infer_shape(OpKind::kSlice, {{DType::kFloat32, {4, 10}, {}},
                                         {DType::kInt64, {1}, {}},
                                         known(i64s({5})),
                                         known(i64s({1}))}),
            (Shape{4, kDynamicDim}));
  EXPECT_EQ(
      infer_shape(OpKind::kSlice,
                  {{DType::kFloat32, {4, 10}, {}}, {DType::kInt64, {1}, {}}, known(i64s({5}))}),
      (Shape{kDynamicDim, kDynamicDim}));
}

// --- Gather, Expand ------------------------------------------------------------------------------

TEST(ShapeReference, GatherAxesAndNegativeIndices) {
  const Tensor x = random_tensor({3, 4}, 47);
  Tensor rows = Tensor::empty(DType::kFloat32, {2, 4});
  for (int64_t j = 0; j < 4; ++j) {
    rows.data<float>()[j] = x.data<float>()[2 * 4 + j];  // index -1
    rows.data<float>()[4 + j] = x.data<float>()[j];      // index 0
  }
  EXPECT_TRUE(same(run1(OpKind::kGather, {x, i64s({-1, 0})}), rows));
  // axis 1 with 2-D int32 indices: y[i, a, b] = x[i, idx[a, b]].
  const Tensor idx = typed<int32_t>({2, 2}, {3, 1, -4, 3});
  Tensor cols = Tensor::empty(DType::kFloat32, {3, 2, 2});
  const int64_t picked[] = {3, 1, 0, 3};
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t k = 0; k < 4; ++k)
      cols.data<float>()[i * 4 + k] = x.data<float>()[i * 4 + picked[k]];
  EXPECT_TRUE(same(run1(OpKind::kGather, {x, idx}, {{"axis", int64_t(-1)}}), cols));
  // A scalar index drops the axis.
  EXPECT_TRUE(same(run1(OpKind::kGather, {i64s({10, 20, 30}), Tensor::scalar<int64_t>(1)}),
                   Tensor::scalar<int64_t>(20)));
  EXPECT_TRUE(fails_with(run_error(OpKind::kGather, {x, i64s({3})}), StatusCode::kInvalidArgument,
                         {"index 3", "axis 0 of size 3"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kGather, {x, f32({1}, {1})}), StatusCode::kUnsupported,
                         {"indices has dtype f32"}));
  EXPECT_EQ(infer_shape(OpKind::kGather,
                        {{DType::kFloat32, {kDynamicDim, 4, 5}, {}}, {DType::kInt64, {2, 3}, {}}},
                        {{"axis", int64_t(1)}}),
            (Shape{kDynamicDim, 2, 3, 5}));
}

TEST(ShapeReference, ExpandBroadcastsBothWays) {
  const Tensor x = random_tensor({3, 1}, 48);
  Tensor expected = Tensor::empty(DType::kFloat32, {2, 3, 6});
  for (int64_t i = 0; i < 36; ++i) expected.data<float>()[i] = x.data<float>()[(i / 6) % 3];
  EXPECT_TRUE(same(run1(OpKind::kExpand, {x, i64s({2, 1, 6})}), expected));
  // The target may be smaller than the input: shape [1, 1] keeps x's [3, 1].
  EXPECT_TRUE(same(run1(OpKind::kExpand, {x, i64s({1, 1})}), x));
  EXPECT_TRUE(fails_with(run_error(OpKind::kExpand, {x, i64s({4, 2})}),
                         StatusCode::kInvalidArgument, {"[3,1]", "[4,2]", "broadcast"}));
  EXPECT_EQ(infer_shape(OpKind::kExpand, {{DType::kFloat32, {3, 1}, {}}, {DType::kInt64, {3}, {}}}),
            (Shape{kDynamicDim, 3, kDynamicDim}));
}

// --- Shape, Cast, Constant, ConstantOfShape, Identity, Dropout -----------------------------------

TEST(ShapeReference, ShapeStartEnd) {
  const Tensor x = random_tensor({3, 4, 5}, 49);
  EXPECT_TRUE(same(run1(OpKind::kShape, {x}), i64s({3, 4, 5})));
  EXPECT_TRUE(same(run1(OpKind::kShape, {x}, {{"start", int64_t(1)}}), i64s({4, 5})));
  EXPECT_TRUE(same(run1(OpKind::kShape, {x}, {{"end", int64_t(-1)}}), i64s({3, 4})));
  EXPECT_TRUE(same(run1(OpKind::kShape, {x}, {{"start", int64_t(-1)}}), i64s({5})));
  EXPECT_TRUE(same(run1(OpKind::kShape, {x}, {{"start", int64_t(-10)}, {"end", int64_t(10)}}),
                   i64s({3, 4, 5})));
  EXPECT_TRUE(
      same(run1(OpKind::kShape, {x}, {{"start", int64_t(2)}, {"end", int64_t(1)}}), i64s({})));
  EXPECT_TRUE(same(run1(OpKind::kShape, {Tensor::scalar<float>(1)}), i64s({})));
  EXPECT_EQ(infer_shape(OpKind::kShape, {{DType::kFloat32, {kDynamicDim, 4}, {}}}), (Shape{2}));
}

Attrs to(DType d) {
  return {{"to", int64_t(d)}};
}

TEST(ShapeReference, CastFollowsNumpyAstype) {
  const Tensor f = f32({6}, {1.7f, -1.7f, 2.5f, -2.5f, 300.0f, NAN});
  // Float -> integer truncates toward zero (out of range saturates; NaN gives 0).
  EXPECT_TRUE(same(run1(OpKind::kCast, {f}, to(DType::kInt32)),
                   typed<int32_t>({6}, {1, -1, 2, -2, 300, 0})));
  EXPECT_TRUE(
      same(run1(OpKind::kCast, {f}, to(DType::kInt8)), typed<int8_t>({6}, {1, -1, 2, -2, 127, 0})));
  // Integer -> narrower integer keeps the low bits.
  EXPECT_TRUE(same(run1(OpKind::kCast, {typed<int32_t>({3}, {300, -129, 7})}, to(DType::kInt8)),
                   typed<int8_t>({3}, {44, 127, 7})));
  EXPECT_TRUE(same(run1(OpKind::kCast, {i64s({-1, 256})}, to(DType::kUInt8)),
                   typed<uint8_t>({2}, {255, 0})));
  // Bool: nonzero (NaN included) is true; back to float is 0/1.
  EXPECT_TRUE(same(run1(OpKind::kCast, {f32({3}, {0.0f, 0.25f, NAN})}, to(DType::kBool)),
                   typed<bool>({3}, {false, true, true})));
  EXPECT_TRUE(same(run1(OpKind::kCast, {typed<bool>({2}, {true, false})}, to(DType::kFloat32)),
                   f32({2}, {1, 0})));
  // Between floats: round to nearest even (Tensor::to).
  const Tensor r = random_tensor({8}, 50);
  EXPECT_TRUE(same(run1(OpKind::kCast, {r}, to(DType::kFloat16)), r.to(DType::kFloat16)));
  EXPECT_TRUE(same(run1(OpKind::kCast, {r.to(DType::kBFloat16)}, to(DType::kFloat32)),
                   r.to(DType::kBFloat16).to(DType::kFloat32)));
  EXPECT_TRUE(same(run1(OpKind::kCast, {i64s({3, -4})}, to(DType::kFloat32)), f32({2}, {3, -4})));
  EXPECT_TRUE(fails_with(run_error(OpKind::kCast, {r}, {{"to", int64_t(42)}}),
                         StatusCode::kInvalidArgument, {"'to' = 42"}));
  EXPECT_TRUE(fails_with(run_error(OpKind::kCast, {r}), StatusCode::kInvalidArgument, {"'to'"}));
}

TEST(ShapeReference, ConstantAndConstantOfShape) {
  const Tensor value = random_tensor({2, 2}, 51);
  EXPECT_TRUE(same(run1(OpKind::kConstant, {}, {{"value", value}}), value));
  EXPECT_TRUE(same(run1(OpKind::kConstant, {}, {{"value_ints", std::vector<int64_t>{4, 5}}}),
                   i64s({4, 5})));
  EXPECT_TRUE(
      fails_with(run_error(OpKind::kConstant, {}), StatusCode::kInvalidArgument, {"value"}));

  const Tensor zeros = run1(OpKind::kConstantOfShape, {i64s({2, 3})});
  EXPECT_TRUE(same(zeros, Tensor::zeros(DType::kFloat32, {2, 3})));
  EXPECT_TRUE(
      same(run1(OpKind::kConstantOfShape, {i64s({3})}, {{"value", i64s({7})}}), i64s({7, 7, 7})));
  EXPECT_TRUE(same(run1(OpKind::kConstantOfShape, {i64s({})}, {{"value", f32({1}, {0.5f})}}),
                   Tensor::scalar<float>(0.5f)));
  EXPECT_TRUE(fails_with(run_error(OpKind::kConstantOfShape, {i64s({2, -1})}),
                         StatusCode::kInvalidArgument, {"negative"}));
  EXPECT_TRUE(
      fails_with(run_error(OpKind::kConstantOfShape, {i64s({2})}, {{"value", i64s({1, 2})}}),
                 StatusCode::kInvalidArgument, {"one element"}));
  EXPECT_EQ(infer_shape(OpKind::kConstantOfShape, {{DType::kInt64, {3}, {}}}),
            (Shape{kDynamicDim, kDynamicDim, kDynamicDim}));
}

TEST(ShapeReference, IdentityAndDropoutMoveAnyDtype) {
  const Tensor x = random_tensor({2, 3}, 52);
  for (DType d : {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kFloat8E4M3,
                  DType::kInt8, DType::kUInt8, DType::kInt32, DType::kInt64, DType::kBool}) {
    const Tensor t = x.to(d);
    EXPECT_TRUE(same(run1(OpKind::kIdentity, {t}), t)) << dtype_name(d);
    EXPECT_TRUE(same(run1(OpKind::kTranspose, {run1(OpKind::kTranspose, {t})}), t))
        << dtype_name(d);
    EXPECT_TRUE(same(run1(OpKind::kGather, {t, i64s({1})}), t.slice_rows(1, 2))) << dtype_name(d);
  }
  std::vector<Tensor> out;
  ASSERT_TRUE(run(OpKind::kDropout, {x, Tensor::scalar<float>(0.5f)}, {}, out, 2).ok());
  EXPECT_TRUE(same(out[0], x));
  EXPECT_TRUE(same(out[1], typed<bool>({2, 3}, std::vector<bool>(6, true))));
  EXPECT_TRUE(fails_with(run_error(OpKind::kDropout, {x, Tensor(), typed<bool>({}, {true})}),
                         StatusCode::kUnsupported, {"training mode"}));
}

}  // namespace
}  // namespace mixq::testing::kt
