// The `mixq` command line, run as users run it: exit codes, what it prints, the files it writes.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>

#include "mixq/io.h"
#include "mixq/model.h"
#include "support/onnx_builder.h"
#include "support/test_util.h"

namespace mixq {
namespace {

using testing::random_tensor;
using testing::read_file;

struct CliResult {
  int exit_code = -1;
  std::string out, err;
};

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(std::filesystem::exists(MIXQ_CLI_PATH)) << MIXQ_CLI_PATH << " is not built";
    model_ = dir_.file("classifier.onnx");
    testing::small_classifier(7).save(model_);
  }

  // Runs `mixq <args>` in the temp dir; args are passed through the shell unquoted, so tests
  // quote paths with quote().
  CliResult mixq(const std::string& args) {
    const std::string out = dir_.file("stdout.txt"), err = dir_.file("stderr.txt");
    const std::string cmd = "cd " + quote(dir_.path().string()) + " && " + quote(MIXQ_CLI_PATH) +
                            " " + args + " > " + quote(out) + " 2> " + quote(err);
    const int status = std::system(cmd.c_str());
    CliResult r;
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.out = read_file(out);
    r.err = read_file(err);
    return r;
  }

  // A user error: exit 1, "error:" on stderr with every one of `parts`, nothing on stdout.
  void expect_user_error(const CliResult& r, const std::vector<std::string>& parts) {
    EXPECT_EQ(r.exit_code, 1) << "stdout: " << r.out << "\nstderr: " << r.err;
    EXPECT_NE(r.err.find("error:"), std::string::npos) << r.err;
    for (const std::string& p : parts)
      EXPECT_NE(r.err.find(p), std::string::npos) << "stderr lacks '" << p << "': " << r.err;
  }

  std::string file(const std::string& name) const { return dir_.file(name); }

  testing::TempDir dir_;
  std::string model_;
};

// --- help and usage errors
// -------------------------------------------------------------------------

TEST_F(Cli, HelpExitsZeroAndPrintsUsage) {
  CliResult r = mixq("--help");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("Usage"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("inspect"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("run"), std::string::npos) << r.out;

  r = mixq("inspect --help");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("Usage"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("--json"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("model"), std::string::npos) << r.out;

  r = mixq("run --help");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("Usage"), std::string::npos) << r.out;
  for (const char* flag : {"--input", "--output-dir", "--batch", "--seed"})
    EXPECT_NE(r.out.find(flag), std::string::npos) << flag << " missing from: " << r.out;
}

TEST_F(Cli, VersionExitsZero) {
  CliResult r = mixq("--version");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE((r.out + r.err).find("0.1.0"), std::string::npos) << r.out << r.err;
}

TEST_F(Cli, NoSubcommandExitsOne) {
  CliResult r = mixq("");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("subcommand"), std::string::npos) << r.err;
}

TEST_F(Cli, UnknownSubcommandOrFlagExitsOne) {
  CliResult r = mixq("inspect " + quote(model_) + " --frobnicate");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--frobnicate"), std::string::npos) << r.err;
  EXPECT_EQ(r.out.find("total:"), std::string::npos) << "must not run the command: " << r.out;

  r = mixq("run " + quote(model_) + " --bogus-flag 3");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--bogus-flag"), std::string::npos) << r.err;

  r = mixq("frobnicate " + quote(model_));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_FALSE(r.err.empty());

  r = mixq("inspect");  // model is required
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("model"), std::string::npos) << r.err;
}

// --- inspect
// ----------------------------------------------------------------------------------------------

TEST_F(Cli, InspectPrintsLayersAndTotals) {
  CliResult r = mixq("inspect " + quote(model_));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* s :
       {"opset 13", "input", "x", "f32[N,3,8,8]", "output", "f32[N,10]", "Conv", "Relu",
        "GlobalAveragePool", "Flatten", "Gemm", "/conv1/Conv", "conv1", "/fc/Gemm", "[N,4,8,8]"})
    EXPECT_NE(r.out.find(s), std::string::npos) << "'" << s << "' missing from:\n" << r.out;
  // conv 4*3*3*3 + 4, fc 10*4 + 10 parameters; conv 256 outputs * 27 MACs + fc 40 MACs.
  EXPECT_NE(r.out.find("total: 5 layers, 162 parameters, 7.0K MACs"), std::string::npos) << r.out;
  EXPECT_TRUE(r.err.empty()) << r.err;
}

TEST_F(Cli, InspectJson) {
  CliResult r = mixq("inspect --json " + quote(model_));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json j;
  ASSERT_NO_THROW(j = nlohmann::json::parse(r.out)) << r.out;
  EXPECT_EQ(j["opset"], 13);
  ASSERT_EQ(j["inputs"].size(), 1u);
  EXPECT_EQ(j["inputs"][0]["name"], "x");
  EXPECT_EQ(j["inputs"][0]["dtype"], "f32");
  EXPECT_EQ(j["inputs"][0]["shape"], nlohmann::json::parse(R"(["N", 3, 8, 8])"));
  ASSERT_EQ(j["outputs"].size(), 1u);
  EXPECT_EQ(j["outputs"][0]["name"], "y");
  EXPECT_EQ(j["outputs"][0]["shape"], nlohmann::json::parse(R"(["N", 10])"));

  ASSERT_EQ(j["layers"].size(), 5u);
  const std::vector<std::string> ops = {"Conv", "Relu", "GlobalAveragePool", "Flatten", "Gemm"};
  int64_t params = 0, flops = 0;
  for (size_t i = 0; i < ops.size(); ++i) {
    EXPECT_EQ(j["layers"][i]["op"], ops[i]) << i;
    params += j["layers"][i]["params"].get<int64_t>();
    flops += j["layers"][i]["flops"].get<int64_t>();
  }
  const auto& conv = j["layers"][0];
  EXPECT_EQ(conv["name"], "/conv1/Conv");
  EXPECT_EQ(conv["module"], "conv1");
  EXPECT_EQ(conv["params"], 112);
  EXPECT_EQ(conv["macs"], 6912);
  EXPECT_EQ(conv["flops"], 2 * 6912 + 256);
  EXPECT_EQ(conv["attributes"]["pads"], "[1,1,1,1]");
  EXPECT_EQ(j["layers"][4]["module"], "fc");
  EXPECT_EQ(j["layers"][4]["params"], 50);
  EXPECT_EQ(j["layers"][4]["macs"], 40);

  EXPECT_EQ(j["total"]["params"], 162);
  EXPECT_EQ(j["total"]["macs"], 6912 + 40);
  EXPECT_EQ(j["total"]["flops"], 2 * 6912 + 256 + 256 + 4 + 4 + 80);
  EXPECT_EQ(j["total"]["params"].get<int64_t>(), params);
  EXPECT_EQ(j["total"]["flops"].get<int64_t>(), flops);
  EXPECT_EQ(j["total"]["layers"], 5);
}

TEST_F(Cli, InspectRawShowsTheUnsimplifiedGraph) {
  // An Identity before the output survives --raw, and is folded away otherwise.
  testing::OnnxBuilder b = testing::small_classifier(3);
  b.graph().mutable_node(4)->set_output(0, "logits");
  b.node("Identity", {"logits"}, {"y"}, "/out/Identity");
  b.save(file("with_identity.onnx"));
  CliResult raw = mixq("inspect --json --raw " + quote(file("with_identity.onnx")));
  ASSERT_EQ(raw.exit_code, 0) << raw.err;
  CliResult simple = mixq("inspect --json " + quote(file("with_identity.onnx")));
  ASSERT_EQ(simple.exit_code, 0) << simple.err;
  EXPECT_EQ(nlohmann::json::parse(raw.out)["layers"].size(), 6u);
  EXPECT_EQ(nlohmann::json::parse(simple.out)["layers"].size(), 5u);
  EXPECT_EQ(nlohmann::json::parse(simple.out)["outputs"][0]["name"], "y");
}

// --- run
// ------------------------------------------------------------------------------------------------------

TEST_F(Cli, RunWithRandomInputsWritesOutputs) {
  CliResult r = mixq("run " + quote(model_) + " --batch 3 --seed 5 -o outs");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("random inputs"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("y: f32[3,10]"), std::string::npos) << r.out;
  auto y = load_npy(file("outs/y.npy"));
  ASSERT_TRUE(y.ok()) << y.status().to_string();
  EXPECT_EQ(y->dtype(), DType::kFloat32);
  EXPECT_EQ(y->shape(), (Shape{3, 10}));

  // The same seed gives the same outputs as the library's random inputs.
  auto model = Model::load(model_);
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  auto expected = model->run_reference(model->random_inputs(3, 5));
  ASSERT_TRUE(expected.ok()) << expected.status().to_string();
  EXPECT_EQ(y->to_float_vector(), expected->at("y").to_float_vector());

  // Another seed, other numbers.
  r = mixq("run " + quote(model_) + " --batch 3 --seed 6 -o outs6");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto y6 = load_npy(file("outs6/y.npy"));
  ASSERT_TRUE(y6.ok());
  EXPECT_NE(y6->to_float_vector(), y->to_float_vector());
}

TEST_F(Cli, RunWithAGivenInputMatchesTheReferenceExactly) {
  const Tensor x = random_tensor({2, 3, 8, 8}, 42);
  ASSERT_TRUE(save_npy(file("x.npy"), x).ok());
  CliResult r = mixq("run " + quote(model_) + " --input x=" + quote(file("x.npy")) + " -o " +
                     quote(file("out")));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err.find("random"), std::string::npos) << r.err;
  auto y = load_npy(file("out/y.npy"));
  ASSERT_TRUE(y.ok()) << y.status().to_string();
  ASSERT_EQ(y->shape(), (Shape{2, 10}));

  auto model = Model::load(model_);
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  auto expected = model->run_reference({{"x", x}});
  ASSERT_TRUE(expected.ok()) << expected.status().to_string();
  EXPECT_EQ(y->to_float_vector(), expected->at("y").to_float_vector());
}

TEST_F(Cli, OutputNamesAreMadeSafeFileNames) {
  testing::OnnxBuilder b(13);
  b.input("x", {2, 3});
  b.output("head/logits:0", {2, 3});
  b.node("Relu", {"x"}, {"head/logits:0"}, "relu");
  b.save(file("odd_names.onnx"));
  CliResult r = mixq("run " + quote(file("odd_names.onnx")) + " -o o");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(std::filesystem::exists(file("o/head_logits_0.npy"))) << r.out;
  EXPECT_FALSE(std::filesystem::exists(file("head")));
}

TEST_F(Cli, RunErrors) {
  const Tensor x = random_tensor({1, 3, 8, 8}, 1);
  ASSERT_TRUE(save_npy(file("x.npy"), x).ok());
  ASSERT_TRUE(
      save_npy(file("x_i32.npy"), testing::random_int_tensor(DType::kInt32, {1, 3, 8, 8}, 2, -9, 9))
          .ok());
  ASSERT_TRUE(save_npy(file("x_small.npy"), random_tensor({1, 3, 4, 4}, 3)).ok());

  {
    SCOPED_TRACE("missing NPY file");
    CliResult r = mixq("run " + quote(model_) + " --input x=" + quote(file("nope.npy")));
    expect_user_error(r, {"input 'x'", file("nope.npy"), "does not exist"});
  }
  {
    SCOPED_TRACE("NPY of the wrong dtype");
    CliResult r = mixq("run " + quote(model_) + " --input x=" + quote(file("x_i32.npy")));
    expect_user_error(r, {"'x'", "i32", "f32"});
  }
  {
    SCOPED_TRACE("NPY of the wrong shape");
    CliResult r = mixq("run " + quote(model_) + " --input x=" + quote(file("x_small.npy")));
    expect_user_error(r, {"'x'", "[1,3,4,4]", "[N,3,8,8]"});
  }
  {
    SCOPED_TRACE("wrong input name");
    CliResult r = mixq("run " + quote(model_) + " --input images=" + quote(file("x.npy")));
    expect_user_error(r, {"no input named 'images'", "'x'"});
  }
  {
    SCOPED_TRACE("bad --input syntax");
    for (const std::string& bad : {std::string("x"), std::string("=x.npy"), std::string("x=")}) {
      CliResult r = mixq("run " + quote(model_) + " --input " + quote(bad));
      expect_user_error(r, {"name=file.npy", "'" + bad + "'"});
    }
  }
  {
    SCOPED_TRACE("not an NPY file");
    testing::write_file(file("garbage.npy"), "this is text");
    CliResult r = mixq("run " + quote(model_) + " --input x=" + quote(file("garbage.npy")));
    expect_user_error(r, {"input 'x'", file("garbage.npy"), "not an NPY file"});
  }
  {
    SCOPED_TRACE("bad batch");
    CliResult r = mixq("run " + quote(model_) + " --batch 0");
    expect_user_error(r, {"--batch", "0"});
  }
  // No output file was written by any failed run.
  EXPECT_FALSE(std::filesystem::exists(file("y.npy")));
}

TEST_F(Cli, RunWithSomeInputsMissing) {
  testing::OnnxBuilder b(13);
  b.input("a", {2, 3});
  b.input("b", {2, 3});
  b.output("sum", {2, 3});
  b.node("Add", {"a", "b"}, {"sum"}, "add");
  b.save(file("two_inputs.onnx"));
  const Tensor a = random_tensor({2, 3}, 1), bt = random_tensor({2, 3}, 2);
  ASSERT_TRUE(save_npy(file("a.npy"), a).ok());
  ASSERT_TRUE(save_npy(file("b.npy"), bt).ok());
  CliResult r =
      mixq("run " + quote(file("two_inputs.onnx")) + " --input a=" + quote(file("a.npy")));
  expect_user_error(r, {"input 'b' is not given", "--input b="});

  r = mixq("run " + quote(file("two_inputs.onnx")) + " --input a=" + quote(file("a.npy")) +
           " --input b=" + quote(file("b.npy")) + " -o both");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto sum = load_npy(file("both/sum.npy"));
  ASSERT_TRUE(sum.ok()) << sum.status().to_string();
  for (int i = 0; i < 6; ++i)
    EXPECT_EQ(sum->data<float>()[i], a.data<float>()[i] + bt.data<float>()[i]) << i;
}

TEST_F(Cli, BadModels) {
  {
    SCOPED_TRACE("nonexistent model");
    for (const char* cmd : {"run ", "inspect "}) {
      CliResult r = mixq(cmd + quote(file("missing.onnx")));
      expect_user_error(r, {file("missing.onnx"), "does not exist"});
    }
  }
  {
    SCOPED_TRACE("corrupt model");
    const std::string good = testing::small_classifier().bytes();
    testing::write_file(file("corrupt.onnx"), good.substr(0, good.size() / 2));
    for (const char* cmd : {"run ", "inspect ", "inspect --json "}) {
      CliResult r = mixq(cmd + quote(file("corrupt.onnx")));
      expect_user_error(r, {file("corrupt.onnx"), "not a valid ONNX model"});
      EXPECT_TRUE(r.out.empty()) << r.out;
    }
  }
  {
    SCOPED_TRACE("unsupported op");
    testing::OnnxBuilder b(13);
    b.input("x", {2});
    b.output("y", {2});
    b.node("Erf", {"x"}, {"y"}, "the_erf");
    b.save(file("erf.onnx"));
    CliResult r = mixq("inspect " + quote(file("erf.onnx")));
    expect_user_error(r, {"Erf", "the_erf"});
  }
}

}  // namespace
}  // namespace mixq
