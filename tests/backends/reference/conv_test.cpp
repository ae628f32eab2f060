// Reference Conv: ONNX's node-test numbers, a dead-simple direct formula on random data across
// shapes and attributes, shape inference with symbolic dims, and error messages.
#include <gtest/gtest.h>

#include "backends/reference/nn_test_util.h"

namespace mixq::testing {
namespace {

using ir::OpKind;

// ONNX's conv.py example input: 0..24 in a 5x5 (or 0..34 in 7x5) image, all-ones 3x3 kernel.
const Tensor kOnes3x3 = f32({1, 1, 3, 3}, std::vector<float>(9, 1.0f));

TEST(ConvReference, OnnxBasicWithAndWithoutPadding) {
  const Tensor x = iota({1, 1, 5, 5}, 0.0f);
  EXPECT_TRUE(close(run1(OpKind::kConv, {x, kOnes3x3},
                         {{"kernel_shape", std::vector<int64_t>{3, 3}},
                          {"pads", std::vector<int64_t>{1, 1, 1, 1}}}),
                    f32({1, 1, 5, 5}, {12,  21, 27, 33,  24,  33,  54,  63, 72,  51,  63,  99, 108,
                                       117, 81, 93, 144, 153, 162, 111, 72, 111, 117, 123, 84})));
  EXPECT_TRUE(
      close(run1(OpKind::kConv, {x, kOnes3x3}, {{"pads", std::vector<int64_t>{0, 0, 0, 0}}}),
            f32({1, 1, 3, 3}, {54, 63, 72, 99, 108, 117, 144, 153, 162})));
}

TEST(ConvReference, OnnxStridesAndAsymmetricPadding) {
  const Tensor x = iota({1, 1, 7, 5}, 0.0f);
  const Attrs s2 = {{"strides", std::vector<int64_t>{2, 2}}};
  Attrs padded = s2;
  padded["pads"] = std::vector<int64_t>{1, 1, 1, 1};
  EXPECT_TRUE(close(run1(OpKind::kConv, {x, kOnes3x3}, padded),
                    f32({1, 1, 4, 3}, {12, 27, 24, 63, 108, 81, 123, 198, 141, 112, 177, 124})));
  EXPECT_TRUE(close(run1(OpKind::kConv, {x, kOnes3x3}, s2),
                    f32({1, 1, 3, 2}, {54, 72, 144, 162, 234, 252})));
  Attrs asymmetric = s2;
  asymmetric["pads"] = std::vector<int64_t>{1, 0, 1, 0};
  EXPECT_TRUE(close(run1(OpKind::kConv, {x, kOnes3x3}, asymmetric),
                    f32({1, 1, 4, 2}, {21, 33, 99, 117, 189, 207, 171, 183})));
}

TEST(ConvReference, OnnxAutoPadSameLower) {
  const Tensor x = iota({1, 1, 5, 5}, 0.0f);
  EXPECT_TRUE(close(
      run1(OpKind::kConv, {x, kOnes3x3},
           {{"auto_pad", std::string("SAME_LOWER")}, {"strides", std::vector<int64_t>{2, 2}}}),
      f32({1, 1, 3, 3}, {12, 27, 24, 63, 108, 81, 72, 117, 84})));
}

TEST(ConvReference, BiasIsAddedPerOutputChannel) {
  // 1x1 conv of a 1x2 image with two output channels: y[m] = w[m] * x + b[m].
  const Tensor x = f32({1, 1, 1, 2}, {1, 2});
  const Tensor w = f32({2, 1, 1, 1}, {3, -1});
  const Tensor b = f32({2}, {0.5f, 10});
  EXPECT_TRUE(close(run1(OpKind::kConv, {x, w, b}), f32({1, 2, 1, 2}, {3.5f, 6.5f, 9, 8})));
  // An absent optional bias (undefined tensor) means zero.
  EXPECT_TRUE(close(run1(OpKind::kConv, {x, w, Tensor()}), f32({1, 2, 1, 2}, {3, 6, -1, -2})));
}

// --- random data against a direct formula ----------------------------------------------------

struct ConvCase {
  const char* name;
  Shape x;  // N, C, spatial...
  Shape w;  // M, C / group, kernel...
  int64_t group;
  std::vector<int64_t> strides, dilations, pads;  // pads: begins then ends, as ONNX
  std::string auto_pad;                           // "" leaves the attribute out
  std::vector<int64_t> pads_expected;             // the pads auto_pad should resolve to
  bool bias;
  Shape y;  // hand-computed output shape
};

// y[n, m, o...] = b[m] + sum_{c, k...} x[n, g*C/G + c, o*s - p + k*d] * w[m, c, k...], written
// for 3 spatial dims; 1-D and 2-D cases are lifted by leading size-1 dims.
Tensor direct_conv(const Tensor& x, const Tensor& w, const Tensor* b, int64_t group,
                   std::vector<int64_t> s, std::vector<int64_t> d, std::vector<int64_t> p,
                   Shape y_shape) {
  const size_t nsp = s.size();
  auto lift = [&](Shape v, size_t from, int64_t fill) {
    Shape spatial(v.begin() + from, v.begin() + from + nsp);
    spatial.insert(spatial.begin(), 3 - nsp, fill);
    return spatial;
  };
  const Shape xi = lift(x.shape(), 2, 1), k = lift(w.shape(), 2, 1), o = lift(y_shape, 2, 1);
  const Shape st = lift(s, 0, 1), dl = lift(d, 0, 1), pb = lift(p, 0, 0);
  const int64_t N = x.dim(0), C = x.dim(1), M = w.dim(0), CG = C / group, MG = M / group;
  Tensor y = Tensor::empty(DType::kFloat32, y_shape);
  auto X = [&](int64_t n, int64_t c, int64_t i0, int64_t i1, int64_t i2) {
    return double(x.data<float>()[(((n * C + c) * xi[0] + i0) * xi[1] + i1) * xi[2] + i2]);
  };
  auto W = [&](int64_t m, int64_t c, int64_t k0, int64_t k1, int64_t k2) {
    return double(w.data<float>()[(((m * CG + c) * k[0] + k0) * k[1] + k1) * k[2] + k2]);
  };
  float* out = y.data<float>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t o0 = 0; o0 < o[0]; ++o0)
        for (int64_t o1 = 0; o1 < o[1]; ++o1)
          for (int64_t o2 = 0; o2 < o[2]; ++o2) {
            double acc = b ? b->data<float>()[m] : 0.0;
            for (int64_t c = 0; c < CG; ++c)
              for (int64_t k0 = 0; k0 < k[0]; ++k0)
                for (int64_t k1 = 0; k1 < k[1]; ++k1)
                  for (int64_t k2 = 0; k2 < k[2]; ++k2) {
                    const int64_t i0 = o0 * st[0] - pb[0] + k0 * dl[0];
                    const int64_t i1 = o1 * st[1] - pb[1] + k1 * dl[1];
                    const int64_t i2 = o2 * st[2] - pb[2] + k2 * dl[2];
                    if (i0 < 0 || i0 >= xi[0] || i1 < 0 || i1 >= xi[1] || i2 < 0 || i2 >= xi[2])
                      continue;
                    acc += X(n, (m / MG) * CG + c, i0, i1, i2) * W(m, c, k0, k1, k2);
                  }
            *out++ = float(acc);
          }
  return y;
}

TEST(ConvReference, MatchesDirectFormulaOnRandomData) {
  using V = std::vector<int64_t>;
  const std::vector<ConvCase> cases = {
      {"2d_basic_batch2",
       {2, 4, 7, 6},
       {6, 4, 3, 3},
       1,
       {1, 1},
       {1, 1},
       {1, 1, 1, 1},
       "",
       {},
       true,
       {2, 6, 7, 6}},
      {"2d_group2_stride2_dilation2_asym_pads",
       {2, 4, 9, 8},
       {6, 2, 3, 2},
       2,
       {2, 1},
       {2, 3},
       {0, 1, 2, 1},
       "",
       {},
       true,
       {2, 6, 4, 7}},
      {"2d_depthwise",
       {1, 5, 8, 8},
       {5, 1, 3, 3},
       5,
       {2, 2},
       {1, 1},
       {1, 1, 1, 1},
       "",
       {},
       true,
       {1, 5, 4, 4}},
      {"2d_depthwise_multiplier2_no_bias",
       {2, 3, 6, 5},
       {6, 1, 3, 3},
       3,
       {1, 1},
       {1, 1},
       {1, 1, 1, 1},
       "",
       {},
       false,
       {2, 6, 6, 5}},
      {"2d_1x1_stride2",
       {1, 8, 5, 5},
       {4, 8, 1, 1},
       1,
       {2, 2},
       {1, 1},
       {0, 0, 0, 0},
       "",
       {},
       true,
       {1, 4, 3, 3}},
      {"2d_stride3_kernel_wider_than_stride",
       {1, 2, 10, 11},
       {3, 2, 5, 4},
       1,
       {3, 3},
       {1, 1},
       {2, 0, 1, 3},
       "",
       {},
       true,
       {1, 3, 3, 4}},
      {"2d_same_upper_stride2_even_kernel",
       {1, 3, 7, 6},
       {2, 3, 4, 4},
       1,
       {2, 2},
       {1, 1},
       {},
       "SAME_UPPER",
       {1, 1, 2, 1},
       true,
       {1, 2, 4, 3}},
      {"2d_same_lower_stride2_even_kernel",
       {1, 3, 7, 6},
       {2, 3, 4, 4},
       1,
       {2, 2},
       {1, 1},
       {},
       "SAME_LOWER",
       {2, 1, 1, 1},
       true,
       {1, 2, 4, 3}},
      {"2d_same_upper_dilated",
       {2, 2, 6, 6},
       {3, 2, 3, 3},
       1,
       {1, 1},
       {2, 2},
       {},
       "SAME_UPPER",
       {2, 2, 2, 2},
       false,
       {2, 3, 6, 6}},
      {"2d_valid_ignores_pads",
       {1, 2, 7, 7},
       {2, 2, 3, 3},
       1,
       {2, 2},
       {1, 1},
       {5, 5, 5, 5},
       "VALID",
       {0, 0, 0, 0},
       true,
       {1, 2, 3, 3}},
      {"2d_notset_explicit",
       {1, 2, 5, 5},
       {2, 2, 2, 2},
       1,
       {1, 1},
       {1, 1},
       {1, 0, 0, 1},
       "NOTSET",
       {1, 0, 0, 1},
       true,
       {1, 2, 5, 5}},
      {"1d_stride3_dilation2_asym_pads",
       {2, 3, 11},
       {4, 3, 4},
       1,
       {3},
       {2},
       {2, 1},
       "",
       {},
       true,
       {2, 4, 3}},
      {"1d_group3_same_lower",
       {1, 6, 9},
       {3, 2, 2},
       3,
       {2},
       {1},
       {},
       "SAME_LOWER",
       {1, 0},
       true,
       {1, 3, 5}},
      {"3d_strides_pads",
       {1, 2, 4, 5, 6},
       {3, 2, 2, 3, 2},
       1,
       {1, 2, 1},
       {1, 1, 2},
       {1, 0, 1, 0, 1, 0},
       "",
       {},
       true,
       {1, 3, 4, 2, 5}},
      {"3d_depthwise_batch2",
       {2, 3, 3, 4, 4},
       {3, 1, 3, 3, 3},
       3,
       {1, 1, 1},
       {1, 1, 1},
       {1, 1, 1, 1, 1, 1},
       "",
       {},
       true,
       {2, 3, 3, 4, 4}},
  };
  uint64_t seed = 1;
  for (const ConvCase& c : cases) {
    SCOPED_TRACE(c.name);
    const Tensor x = random_tensor(c.x, seed++);
    const Tensor w = random_tensor(c.w, seed++);
    const Tensor b = random_tensor({c.w[0]}, seed++);
    Attrs attrs = {{"group", c.group}, {"strides", c.strides}, {"dilations", c.dilations}};
    if (!c.pads.empty()) attrs["pads"] = c.pads;
    if (!c.auto_pad.empty()) attrs["auto_pad"] = c.auto_pad;
    const V pads = c.pads_expected.empty() ? c.pads : c.pads_expected;
    std::vector<Tensor> inputs = {x, w};
    if (c.bias) inputs.push_back(b);
    const Tensor expected =
        direct_conv(x, w, c.bias ? &b : nullptr, c.group, c.strides, c.dilations, pads, c.y);
    EXPECT_TRUE(close(run1(OpKind::kConv, inputs, attrs), expected));
    // kernel_shape, when given, must agree with W and changes nothing.
    attrs["kernel_shape"] = V(c.w.begin() + 2, c.w.end());
    EXPECT_TRUE(close(run1(OpKind::kConv, inputs, attrs), expected));
  }
}

TEST(ConvReference, ResNetStemShape) {
  // A ResNet-sized layer: 7x7 stride 2 pad 3 on 3x64x64, against the direct formula.
  const Tensor x = random_tensor({1, 3, 64, 64}, 11);
  const Tensor w = random_tensor({16, 3, 7, 7}, 12);
  const Attrs attrs = {{"strides", std::vector<int64_t>{2, 2}},
                       {"pads", std::vector<int64_t>{3, 3, 3, 3}},
                       {"kernel_shape", std::vector<int64_t>{7, 7}}};
  EXPECT_TRUE(close(run1(OpKind::kConv, {x, w}, attrs),
                    direct_conv(x, w, nullptr, 1, {2, 2}, {1, 1}, {3, 3}, {1, 16, 32, 32})));
}

// --- shape inference and errors ------------------------------------------------------------

TEST(ConvReference, InfersShapesWithSymbolicDims) {
  std::vector<reference::TensorInfo> out;
  const Attrs attrs = {{"strides", std::vector<int64_t>{2, 2}},
                       {"pads", std::vector<int64_t>{3, 3, 3, 3}}};
  ASSERT_TRUE(infer_op(OpKind::kConv,
                       {{DType::kFloat32, {-1, 3, 224, 224}}, {DType::kFloat32, {64, 3, 7, 7}}},
                       attrs, out)
                  .ok());
  EXPECT_EQ(out[0].shape, (Shape{-1, 64, 112, 112}));
  EXPECT_EQ(out[0].dtype, DType::kFloat32);
  // An unknown spatial size stays unknown; the known one is still computed.
  ASSERT_TRUE(infer_op(OpKind::kConv,
                       {{DType::kFloat32, {-1, 3, -1, 224}}, {DType::kFloat32, {64, 3, 7, 7}}},
                       attrs, out)
                  .ok());
  EXPECT_EQ(out[0].shape, (Shape{-1, 64, -1, 112}));
  ASSERT_TRUE(infer_op(OpKind::kConv, {{DType::kFloat32, {1, 8, 10}}, {DType::kFloat32, {4, 8, 3}}},
                       {{"auto_pad", std::string("SAME_UPPER")}, {"strides", int64_t(3)}}, out)
                  .ok());
  EXPECT_EQ(out[0].shape, (Shape{1, 4, 4}));
}

TEST(ConvReference, RejectsBadShapesWithClearMessages) {
  std::vector<Tensor> out;
  const Tensor x = random_tensor({1, 4, 5, 5}, 1);
  // C = 4 but W.shape[1] * group = 3.
  EXPECT_TRUE(fails_with(run_op(OpKind::kConv, {x, random_tensor({2, 3, 3, 3}, 2)}, {}, out),
                         StatusCode::kInvalidArgument, {"4 channels", "W.shape[1] * group"}));
  // Group 2 needs W.shape[1] == 2, and M divisible by the group.
  EXPECT_TRUE(fails_with(
      run_op(OpKind::kConv, {x, random_tensor({3, 2, 3, 3}, 3)}, {{"group", int64_t(2)}}, out),
      StatusCode::kInvalidArgument, {"M = 3", "divisible by group = 2"}));
  EXPECT_TRUE(fails_with(
      run_op(OpKind::kConv, {x, random_tensor({2, 4, 3, 3}, 4), random_tensor({3}, 5)}, {}, out),
      StatusCode::kInvalidArgument, {"bias B", "[2]"}));
  EXPECT_TRUE(fails_with(run_op(OpKind::kConv, {x, random_tensor({2, 4, 3}, 6)}, {}, out),
                         StatusCode::kInvalidArgument, {"rank of X"}));
  EXPECT_TRUE(fails_with(
      run_op(OpKind::kConv, {random_tensor({4, 5}, 7), random_tensor({2, 4}, 8)}, {}, out),
      StatusCode::kInvalidArgument, {"rank 3, 4 or 5"}));
  EXPECT_TRUE(fails_with(run_op(OpKind::kConv, {x, random_tensor({2, 4, 3, 3}, 9)},
                                {{"kernel_shape", std::vector<int64_t>{2, 2}}}, out),
                         StatusCode::kInvalidArgument, {"kernel_shape", "does not match"}));
  EXPECT_TRUE(fails_with(run_op(OpKind::kConv, {x, random_tensor({2, 4, 7, 7}, 10)}, {}, out),
                         StatusCode::kInvalidArgument, {"smaller than the dilated kernel"}));
  EXPECT_TRUE(fails_with(run_op(OpKind::kConv, {x, random_tensor({2, 4, 3, 3}, 11)},
                                {{"strides", std::vector<int64_t>{1}}}, out),
                         StatusCode::kInvalidArgument, {"strides must have 2 entries"}));
  EXPECT_TRUE(fails_with(run_op(OpKind::kConv, {x, random_tensor({2, 4, 3, 3}, 12)},
                                {{"auto_pad", std::string("SAME")}}, out),
                         StatusCode::kInvalidArgument, {"auto_pad 'SAME'"}));
  const Tensor xi = random_int_tensor(DType::kInt8, {1, 4, 5, 5}, 13, -5, 5);
  EXPECT_TRUE(fails_with(run_op(OpKind::kConv, {xi, random_tensor({2, 4, 3, 3}, 14)}, {}, out),
                         StatusCode::kUnsupported, {"input X", "i8"}));
}

}  // namespace
}  // namespace mixq::testing
