// An Add the fusion cannot fold into a convolution (both operands come from pooling) runs in
// int8 on the CPU: real values add, the sum is requantised to the output's grid.
#include <gtest/gtest.h>

#include "support/engine_util.h"

namespace mixq::testing {
namespace {

OnnxBuilder two_branch_add() {
  OnnxBuilder b;
  b.input("x", {"N", 8, 8, 8}).output("y", {"N", 8, 4, 4});
  b.initializer("w1", random_tensor({8, 8, 3, 3}, 11, -0.3f, 0.3f));
  b.initializer("w2", random_tensor({8, 8, 3, 3}, 12, -0.3f, 0.3f));
  b.initializer("w3", random_tensor({8, 8, 3, 3}, 13, -0.3f, 0.3f));
  b.node("Conv", {"x", "w1"}, {"a"}, "c1").attr("pads", {1, 1, 1, 1});
  b.node("MaxPool", {"a"}, {"pa"}, "p1").attr("kernel_shape", {2, 2}).attr("strides", {2, 2});
  b.node("Conv", {"x", "w2"}, {"b"}, "c2").attr("pads", {1, 1, 1, 1});
  b.node("MaxPool", {"b"}, {"pb"}, "p2").attr("kernel_shape", {2, 2}).attr("strides", {2, 2});
  b.node("Add", {"pa", "pb"}, {"s"}, "add");
  b.node("Conv", {"s", "w3"}, {"y"}, "c3").attr("pads", {1, 1, 1, 1});
  return b;
}

class Int8Add : public ::testing::TestWithParam<bool> {};

TEST_P(Int8Add, RunsInInt8AndMatchesTheReference) {
  auto layouts = cpu_layouts(GetParam());
  auto model = load_model(two_branch_add());
  ASSERT_TRUE(model);
  auto engine =
      build_engine(model, cpu_options(Precision::kINT8), "", random_calibration(*model, 2, 8, 5));
  ASSERT_TRUE(engine.ok()) << engine.status().to_string();
  const LayerReport* add = find_layer(engine->report(), "Add");
  ASSERT_NE(add, nullptr) << describe_layers(engine->report());
  EXPECT_EQ(add->actual, Precision::kINT8);
  EXPECT_NE(add->implementation.find("int8 add"), std::string::npos) << add->implementation;
  for (int64_t batch : {1, 5}) {
    const TensorMap inputs = random_model_inputs(*model, batch, 40 + uint64_t(batch));
    const TensorMap got = infer_once(*engine, inputs);
    const TensorMap want = reference_outputs(*model, inputs);
    ASSERT_TRUE(got.count("y") && want.count("y"));
    EXPECT_GE(sqnr_db(got.at("y"), want.at("y")), 30.0) << "batch " << batch;
  }
}

// The sum is the network output: the add dequantises instead of requantising.
TEST_P(Int8Add, WritesFp32WhereTheSumLeavesTheInt8Region) {
  auto layouts = cpu_layouts(GetParam());
  OnnxBuilder b;
  b.input("x", {"N", 8, 8, 8}).input("z", {"N", 8, 4, 4}).output("y", {"N", 8, 4, 4});
  b.initializer("w1", random_tensor({8, 8, 3, 3}, 21, -0.3f, 0.3f));
  b.node("Conv", {"x", "w1"}, {"a"}, "c1").attr("pads", {1, 1, 1, 1});
  b.node("MaxPool", {"a"}, {"pa"}, "p1").attr("kernel_shape", {2, 2}).attr("strides", {2, 2});
  b.node("Add", {"pa", "z"}, {"y"}, "add");
  auto model = load_model(b);
  ASSERT_TRUE(model);
  auto engine =
      build_engine(model, cpu_options(Precision::kINT8), "", random_calibration(*model, 2, 8, 6));
  ASSERT_TRUE(engine.ok()) << engine.status().to_string();
  const LayerReport* add = find_layer(engine->report(), "Add");
  ASSERT_NE(add, nullptr) << describe_layers(engine->report());
  EXPECT_EQ(add->actual, Precision::kINT8);
  for (int64_t batch : {1, 3}) {
    const TensorMap inputs = random_model_inputs(*model, batch, 50 + uint64_t(batch));
    const TensorMap got = infer_once(*engine, inputs);
    const TensorMap want = reference_outputs(*model, inputs);
    ASSERT_TRUE(got.count("y") && want.count("y"));
    EXPECT_EQ(got.at("y").dtype(), DType::kFloat32);
    EXPECT_GE(sqnr_db(got.at("y"), want.at("y")), 30.0) << "batch " << batch;
  }
}

INSTANTIATE_TEST_SUITE_P(Cpu, Int8Add, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "plain" : "backend_layouts"; });

}  // namespace
}  // namespace mixq::testing
