// The reference FusedConv with an absorbed max pool ("mixq.pool", what the CUDA backend's
// execution fusion writes): the same as Conv, the activation and MaxPool run one after another.
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

}  // namespace
}  // namespace mixq
