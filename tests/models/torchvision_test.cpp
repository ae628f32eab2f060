// Whole torchvision models exported by Debian's PyTorch: the reference backend must match
// PyTorch's fp32 output to 1e-4 relative (to the largest output magnitude). The export fixture
// (export_torchvision.py) writes the models; MIXQ_TORCHVISION_DIR names where.
#include <cstdlib>
#include <filesystem>

#include <gtest/gtest.h>

#include "ir/graph.h"
#include "mixq/io.h"
#include "mixq/model.h"
#include "support/test_util.h"

namespace mixq {
namespace {

namespace fs = std::filesystem;

fs::path models_dir() {
  const char* env = std::getenv("MIXQ_TORCHVISION_DIR");
  return env ? fs::path(env) : fs::path();
}

class TorchvisionModel : public ::testing::TestWithParam<std::string> {};

TEST_P(TorchvisionModel, MatchesPyTorchFp32) {
  const fs::path dir = models_dir() / GetParam();
  if (models_dir().empty() || !fs::exists(dir / "done"))
    GTEST_FAIL() << "exported model missing in " << dir << " (run the export fixture)";
  auto model = Model::load((dir / "model.onnx").string());
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  // Simplification left no BatchNormalization, Identity, Dropout or shape arithmetic behind.
  for (const ir::Node* n : model->graph().nodes()) {
    EXPECT_NE(n->op, ir::OpKind::kBatchNormalization) << n->name;
    EXPECT_NE(n->op, ir::OpKind::kIdentity) << n->name;
    EXPECT_NE(n->op, ir::OpKind::kDropout) << n->name;
    EXPECT_NE(n->op, ir::OpKind::kShape) << n->name;
    EXPECT_NE(n->op, ir::OpKind::kGather) << n->name;
  }
  int checked = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string file = entry.path().filename().string();
    if (file.rfind("input_", 0) != 0) continue;
    const std::string tag = file.substr(6, file.size() - 6 - 4);  // "b1"
    auto input = load_npy(entry.path().string());
    auto expected = load_npy((dir / ("output_" + tag + ".npy")).string());
    ASSERT_TRUE(input.ok() && expected.ok());
    auto out = model->run_reference({{"input", *input}});
    ASSERT_TRUE(out.ok()) << out.status().to_string();
    const Tensor& got = out->at("output");
    ASSERT_EQ(got.shape(), expected->shape());
    const double err = testing::max_relative_error(got, *expected);
    EXPECT_LT(err, 1e-4) << GetParam() << " " << tag;
    ++checked;
  }
  EXPECT_GE(checked, 1);
}

INSTANTIATE_TEST_SUITE_P(Torchvision, TorchvisionModel,
                         ::testing::Values("resnet18", "mobilenet_v2", "vgg11", "squeezenet1_1",
                                           "shufflenet_v2_x1_0", "googlenet"));

}  // namespace
}  // namespace mixq
