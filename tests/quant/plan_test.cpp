// Precision plans: NNI calibration_config and native JSON resolved against a small graph; name
// matching (module names, repeated calls, globs); every kind of bad input named in the message.
#include "quant/plan.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "support/status_matchers.h"
#include "support/test_util.h"

namespace mixq::quant {
namespace {

using testing::random_tensor;
using testing::status_is;

// x -> conv1 (Conv) -> c1 -> relu1 -> r1 -> layer1.0.conv1 -> c2 -> layer1.0.relu -> r2
//   -> layer1.0.relu_1 (second call of layer1.0.relu) -> r3 -> Add(r3, r1) -> a -> fc (Gemm) -> y
struct Net {
  ir::Graph g;
  Net() {
    ir::Value* x = g.add_value("x", DType::kFloat32, {1, 4});
    ir::Value* c1 = value("c1");
    ir::Value* r1 = value("r1");
    ir::Value* c2 = value("c2");
    ir::Value* r2 = value("r2");
    ir::Value* r3 = value("r3");
    ir::Value* a = value("a");
    ir::Value* y = value("y");
    node(ir::OpKind::kConv, "/conv1/Conv", "conv1", {x, weight("conv1.weight")}, c1);
    node(ir::OpKind::kRelu, "/relu1/Relu", "relu1", {c1}, r1);
    node(ir::OpKind::kConv, "/layer1/layer1.0/conv1/Conv", "layer1.0.conv1",
         {r1, weight("layer1.0.conv1.weight")}, c2);
    node(ir::OpKind::kRelu, "/layer1/layer1.0/relu/Relu", "layer1.0.relu", {c2}, r2);
    node(ir::OpKind::kRelu, "/layer1/layer1.0/relu_1/Relu", "layer1.0.relu_1", {r2}, r3);
    node(ir::OpKind::kAdd, "/Add", "", {r3, r1}, a);
    node(ir::OpKind::kGemm, "/fc/Gemm", "fc", {a, weight("fc.weight"), weight("fc.bias")}, y);
    g.inputs().push_back(x);
    g.outputs().push_back(y);
  }
  ir::Value* value(const std::string& name) { return g.add_value(name, DType::kFloat32, {1, 4}); }
  ir::Value* weight(const std::string& name) {
    return g.add_constant(name, random_tensor({4, 4}, name.size()));
  }
  void node(ir::OpKind op, const std::string& name, const std::string& module,
            std::vector<ir::Value*> in, ir::Value* out) {
    g.add_node(op, name, std::move(in), {out})->module_name = module;
  }
};

std::vector<std::string> names(const std::vector<const ir::Node*>& nodes) {
  std::vector<std::string> out;
  for (const ir::Node* n : nodes) out.push_back(n->name);
  return out;
}

void expect_range(const PrecisionPlan& plan, const std::string& value, float min, float max) {
  auto it = plan.value_ranges.find(value);
  ASSERT_NE(it, plan.value_ranges.end()) << "no range for " << value;
  EXPECT_FLOAT_EQ(it->second.min, min) << value;
  EXPECT_FLOAT_EQ(it->second.max, max) << value;
}

std::optional<Precision> precision_of(const PrecisionPlan& plan, const std::string& node) {
  auto it = plan.layers.find(node);
  return it == plan.layers.end() ? std::nullopt : it->second.precision;
}

const std::string kConv = "/conv1/Conv", kRelu1 = "/relu1/Relu",
                  kL1Conv = "/layer1/layer1.0/conv1/Conv", kL1Relu = "/layer1/layer1.0/relu/Relu",
                  kL1Relu1 = "/layer1/layer1.0/relu_1/Relu", kAdd = "/Add", kFc = "/fc/Gemm";

// --- matching ----------------------------------------------------------------------------------

TEST(PlanMatch, ModuleNameNodeNameAndRepeatedCalls) {
  Net n;
  using V = std::vector<std::string>;
  EXPECT_EQ(names(match_layers(n.g, "conv1", false)), V{kConv});
  EXPECT_EQ(names(match_layers(n.g, "layer1.0.conv1", false)), V{kL1Conv});
  EXPECT_EQ(names(match_layers(n.g, "/Add", false)), V{kAdd});
  // torch names the second call of module layer1.0.relu "layer1.0.relu_1".
  EXPECT_EQ(names(match_layers(n.g, "layer1.0.relu", false)), (V{kL1Relu, kL1Relu1}));
  EXPECT_EQ(names(match_layers(n.g, "layer1.0.relu_1", false)), V{kL1Relu1});
  EXPECT_TRUE(match_layers(n.g, "layer1", false).empty());  // a parent module: no node of its own
  EXPECT_TRUE(match_layers(n.g, "", true).empty());
}

TEST(PlanMatch, GlobsOnlyWhenAllowed) {
  Net n;
  using V = std::vector<std::string>;
  EXPECT_TRUE(match_layers(n.g, "layer1.*", false).empty());
  EXPECT_EQ(names(match_layers(n.g, "layer1.*", true)), (V{kL1Conv, kL1Relu, kL1Relu1}));
  EXPECT_EQ(names(match_layers(n.g, "*relu", true)), (V{kL1Relu, kL1Relu1}));  // via the call
  EXPECT_EQ(names(match_layers(n.g, "/layer1/*", true)), (V{kL1Conv, kL1Relu, kL1Relu1}));
  EXPECT_EQ(names(match_layers(n.g, "*conv?", true)), (V{kConv, kL1Conv}));
  EXPECT_EQ(names(match_layers(n.g, "relu[0-9]", true)), V{kRelu1});
}

TEST(PlanMatch, AModuleLiterallyNamedLikeACallIsNotACall) {
  ir::Graph g;
  ir::Value* x = g.add_value("x", DType::kFloat32, {1, 4});
  ir::Value* a = g.add_value("a", DType::kFloat32, {1, 4});
  ir::Value* b = g.add_value("b", DType::kFloat32, {1, 4});
  ir::Value* c = g.add_value("c", DType::kFloat32, {1, 4});
  g.add_node(ir::OpKind::kGemm, "/proj/Gemm",
             {x, g.add_constant("proj.weight", random_tensor({4, 4}, 1))}, {a})
      ->module_name = "proj";
  // Its own parameters: module "proj_1", not a second call of "proj".
  g.add_node(ir::OpKind::kGemm, "/proj_1/Gemm",
             {a, g.add_constant("proj_1.weight", random_tensor({4, 4}, 2))}, {b})
      ->module_name = "proj_1";
  // No first call "act" in the graph: "act_2" is a module of its own.
  g.add_node(ir::OpKind::kRelu, "/act_2/Relu", {b}, {c})->module_name = "act_2";
  using V = std::vector<std::string>;
  EXPECT_EQ(names(match_layers(g, "proj", false)), V{"/proj/Gemm"});
  EXPECT_EQ(names(match_layers(g, "proj_1", false)), V{"/proj_1/Gemm"});
  EXPECT_TRUE(match_layers(g, "act", false).empty());
}

TEST(PlanMatch, PrecisionFromBits) {
  EXPECT_EQ(precision_from_bits(8), Precision::kINT8);
  EXPECT_EQ(precision_from_bits(16), Precision::kFP16);
  EXPECT_EQ(precision_from_bits(32), Precision::kFP32);
  for (int64_t bits : {0, 1, 4, -8, 64}) EXPECT_FALSE(precision_from_bits(bits)) << bits;
}

// --- NNI calibration_config --------------------------------------------------------------------

TEST(NniConfig, NewStyleKeysResolveToNodesPrecisionsAndRanges) {
  Net n;
  auto plan = parse_plan(R"({
    "conv1": {"weight_bits": 8, "input_bits": 8, "output_bits": 8,
              "tracked_min_input": -1.5, "tracked_max_input": 2.5,
              "tracked_min_output": -3, "tracked_max_output": 4},
    "layer1.0.relu": {"output_bits": 16, "tracked_min_output": 0, "tracked_max_output": 6},
    "fc": {"weight_bits": 32, "input_bits": 8, "tracked_min_input": -7, "tracked_max_input": 7}
  })",
                         "qat.json", n.g);
  ASSERT_TRUE(plan.ok()) << plan.status().to_string();
  EXPECT_EQ(plan->layers.size(), 4u);
  EXPECT_EQ(precision_of(*plan, kConv), Precision::kINT8);
  EXPECT_EQ(precision_of(*plan, kL1Relu), Precision::kFP16);
  EXPECT_EQ(precision_of(*plan, kL1Relu1), Precision::kFP16);  // the second call of the module
  EXPECT_EQ(precision_of(*plan, kFc), Precision::kFP32);
  EXPECT_NE(plan->layers.at(kConv).source.find("qat.json"), std::string::npos);
  EXPECT_NE(plan->layers.at(kConv).source.find("conv1"), std::string::npos);
  expect_range(*plan, "x", -1.5f, 2.5f);  // conv1's input
  expect_range(*plan, "c1", -3, 4);       // conv1's output
  expect_range(*plan, "r2", 0, 6);        // layer1.0.relu's output
  expect_range(*plan, "r3", 0, 6);        // ... and its second call's
  expect_range(*plan, "a", -7, 7);        // fc's activation input, not its weight
  EXPECT_EQ(plan->value_ranges.size(), 5u);
  EXPECT_FALSE(plan->default_precision);
  EXPECT_FALSE(plan->calibration_algorithm);
}

TEST(NniConfig, OldStyleKeysDescribeTheOutput) {
  Net n;
  auto plan = parse_plan(R"({
    "conv1": {"weight_bit": 8, "activation_bit": 8,
              "tracked_min_input": -1, "tracked_max_input": 1,
              "tracked_min_activation": -2, "tracked_max_activation": 2},
    "relu1": {"activation_bit": 16, "tracked_min_activation": 0, "tracked_max_activation": 5}
  })",
                         "old.json", n.g);
  ASSERT_TRUE(plan.ok()) << plan.status().to_string();
  EXPECT_EQ(precision_of(*plan, kConv), Precision::kINT8);
  EXPECT_EQ(precision_of(*plan, kRelu1), Precision::kFP16);
  expect_range(*plan, "x", -1, 1);
  expect_range(*plan, "c1", -2, 2);
  expect_range(*plan, "r1", 0, 5);
}

// What NNI 2.x QAT_Quantizer.export_model writes besides bits and ranges: its integer grid
// (both spellings) and the weights' range. Read, checked, and reported as notes.
TEST(NniConfig, GridAndWeightRangeKeysFromNniReleasesBecomeNotes) {
  Net n;
  auto plan = parse_plan(R"({
    "conv1": {"weight_bits": 8, "input_bits": 8, "output_bits": 8,
              "tracked_min_input": -1, "tracked_max_input": 1,
              "tracked_qmin_input": 0, "tracked_qmax_input": 127,
              "tracked_min_output": -2, "tracked_max_output": 2,
              "tracked_qmin_output": 0, "tracked_qmax_output": 127},
    "fc": {"weight_bit": 8, "input_bit": 8,
           "tracked_min_weight": -0.5, "tracked_max_weight": 0.5,
           "tracked_weight_qmin": -127, "tracked_weight_qmax": 127,
           "tracked_min_input": -7, "tracked_max_input": 7,
           "tracked_input_qmin": 0, "tracked_input_qmax": 127}
  })",
                         "nni.json", n.g);
  ASSERT_TRUE(plan.ok()) << plan.status().to_string();
  EXPECT_EQ(precision_of(*plan, kConv), Precision::kINT8);
  EXPECT_EQ(precision_of(*plan, kFc), Precision::kINT8);
  expect_range(*plan, "x", -1, 1);
  expect_range(*plan, "c1", -2, 2);
  expect_range(*plan, "a", -7, 7);
  ASSERT_EQ(plan->notes.size(), 5u);
  const std::string all = [&] {
    std::string s;
    for (const auto& note : plan->notes) s += note + "\n";
    return s;
  }();
  for (const char* part : {"'conv1': tracked_qmin_input/tracked_qmax_input [0, 127]",
                           "'conv1': tracked_qmin_output/tracked_qmax_output [0, 127]",
                           "'fc': tracked_input_qmin/tracked_input_qmax [0, 127]",
                           "'fc': tracked_weight_qmin/tracked_weight_qmax [-127, 127]",
                           "'fc': tracked_min_weight/tracked_max_weight [-0.5, 0.5]", "nni.json",
                           "from the exported weights"})
    EXPECT_NE(all.find(part), std::string::npos) << part << " in\n" << all;
}

TEST(NniConfig, LayerPrecisionFollowsWeightsThenOutputThenInput) {
  Net n;
  auto plan = parse_plan(R"({
    "conv1": {"weight_bits": 8, "output_bits": 32},
    "relu1": {"input_bits": 16, "output_bits": 8},
    "layer1.0.conv1": {"input_bits": 16},
    "fc": {"tracked_min_output": -1, "tracked_max_output": 1}
  })",
                         "mixed.json", n.g);
  ASSERT_TRUE(plan.ok()) << plan.status().to_string();
  EXPECT_EQ(precision_of(*plan, kConv), Precision::kINT8);  // runs at the weights' precision
  EXPECT_NE(plan->layers.at(kConv).source.find("fp32"), std::string::npos)
      << plan->layers.at(kConv).source;
  EXPECT_EQ(precision_of(*plan, kRelu1), Precision::kINT8);
  EXPECT_EQ(precision_of(*plan, kL1Conv), Precision::kFP16);
  ASSERT_TRUE(plan->layers.count(kFc));  // named, with a range but no bits
  EXPECT_FALSE(plan->layers.at(kFc).precision);
  expect_range(*plan, "y", -1, 1);
}

TEST(NniConfig, BothKeyGenerationsMayAgree) {
  Net n;
  auto plan = parse_plan(R"({"conv1": {"weight_bits": 8, "weight_bit": 8,
                                       "tracked_min_output": -1, "tracked_max_output": 1,
                                       "tracked_min_activation": -1, "tracked_max_activation": 1}})",
                         "both.json", n.g);
  ASSERT_TRUE(plan.ok()) << plan.status().to_string();
  expect_range(*plan, "c1", -1, 1);
}

TEST(NniConfig, AKeyForTheRepeatedCallBeatsTheModuleKeyInAnyOrder) {
  Net n;
  for (const char* text : {R"({"layer1.0.relu_1": {"output_bits": 32},
                               "layer1.0.relu": {"output_bits": 8}})",
                           R"({"layer1.0.relu": {"output_bits": 8},
                               "layer1.0.relu_1": {"output_bits": 32}})"}) {
    auto plan = parse_plan(text, "calls.json", n.g);
    ASSERT_TRUE(plan.ok()) << plan.status().to_string();
    EXPECT_EQ(precision_of(*plan, kL1Relu), Precision::kINT8) << text;
    EXPECT_EQ(precision_of(*plan, kL1Relu1), Precision::kFP32) << text;
  }
}

TEST(NniConfig, NodeNamesWorkAsKeys) {
  Net n;
  auto plan = parse_plan(R"({"/Add": {"output_bits": 16}})", "nodes.json", n.g);
  ASSERT_TRUE(plan.ok()) << plan.status().to_string();
  EXPECT_EQ(precision_of(*plan, kAdd), Precision::kFP16);
}

TEST(NniConfig, AConsumersInputRangeWinsOverItsProducersOutputRange) {
  Net n;  // c1 is conv1's output and relu1's input; the JSON order must not matter
  auto plan = parse_plan(R"({
    "relu1": {"input_bits": 8, "tracked_min_input": -2, "tracked_max_input": 2},
    "conv1": {"output_bits": 8, "tracked_min_output": -1, "tracked_max_output": 1}
  })",
                         "order.json", n.g);
  ASSERT_TRUE(plan.ok()) << plan.status().to_string();
  expect_range(*plan, "c1", -2, 2);
}

TEST(NniConfig, EmptyConfigIsAnEmptyPlan) {
  Net n;
  auto plan = parse_plan("{}", "empty.json", n.g);
  ASSERT_TRUE(plan.ok()) << plan.status().to_string();
  EXPECT_TRUE(plan->layers.empty());
  EXPECT_TRUE(plan->value_ranges.empty());
}

TEST(NniErrors, BitsOtherThan8_16_32NameModuleKeyAndAllowedValues) {
  Net n;
  for (const std::string key :
       {"weight_bits", "input_bits", "output_bits", "weight_bit", "activation_bit"}) {
    for (const std::string bits : {"4", "0", "-8", "8.5", "\"8\"", "true", "null", "64"}) {
      const std::string text = R"({"conv1": {")" + key + "\": " + bits + "}}";
      auto plan = parse_plan(text, "bits.json", n.g);
      EXPECT_TRUE(status_is(plan, StatusCode::kInvalidArgument,
                            {"bits.json", "'conv1'", key, "8 (int8)", "16 (fp16)", "32 (fp32)"}))
          << text;
    }
  }
}

TEST(NniErrors, OldAndNewKeysThatDisagree) {
  Net n;
  EXPECT_TRUE(
      status_is(parse_plan(R"({"conv1": {"weight_bits": 8, "weight_bit": 16}})", "c.json", n.g),
                StatusCode::kInvalidArgument,
                {"c.json", "'conv1'", "weight_bits", "weight_bit", "disagree"}));
  EXPECT_TRUE(status_is(parse_plan(R"({"conv1": {"tracked_min_output": 0, "tracked_max_output": 1,
                              "tracked_min_activation": -1, "tracked_max_activation": 1}})",
                                   "c.json", n.g),
                        StatusCode::kInvalidArgument,
                        {"tracked_min_output", "tracked_min_activation"}));
}

TEST(NniErrors, BadRanges) {
  Net n;
  struct Case {
    std::string entry;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {R"("tracked_min_input": 3, "tracked_max_input": 2)", {"tracked_min_input", "greater"}},
      {R"("tracked_min_output": 1, "tracked_max_output": -1)", {"tracked_min_output", "greater"}},
      {R"("tracked_min_activation": 1, "tracked_max_activation": 0)",
       {"tracked_min_activation", "greater"}},
      {R"("tracked_min_input": "NaN", "tracked_max_input": 1)",
       {"tracked_min_input", "number", "\"NaN\""}},
      {R"("tracked_min_input": -1, "tracked_max_input": "Infinity")",
       {"tracked_max_input", "number", "\"Infinity\""}},
      {R"("tracked_min_output": null, "tracked_max_output": 1)", {"tracked_min_output", "null"}},
      {R"("tracked_min_output": [0], "tracked_max_output": 1)", {"tracked_min_output", "number"}},
      {R"("tracked_min_output": -1e39, "tracked_max_output": 1)", {"tracked_min_output", "finite"}},
      {R"("tracked_min_input": -1)", {"tracked_min_input", "without", "tracked_max_input"}},
      {R"("tracked_max_output": 1)", {"tracked_max_output", "without", "tracked_min_output"}},
      {R"("tracked_min_activation": 0)",
       {"tracked_min_activation", "without", "tracked_max_output"}},
  };
  for (const Case& c : cases) {
    const std::string text = R"({"conv1": {)" + c.entry + "}}";
    std::vector<std::string> parts = c.parts;
    parts.push_back("r.json");
    parts.push_back("'conv1'");
    EXPECT_TRUE(status_is(parse_plan(text, "r.json", n.g), StatusCode::kInvalidArgument, parts))
        << text;
  }
}

TEST(NniErrors, BadIntegerGridsAndWeightRanges) {
  Net n;
  struct Case {
    std::string entry;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {R"("tracked_qmin_input": 127, "tracked_qmax_input": 0)",
       {"tracked_qmin_input", "must be below", "tracked_qmax_input"}},
      {R"("tracked_qmin_input": 0)", {"tracked_qmin_input", "without", "tracked_qmax_input"}},
      {R"("tracked_qmin_output": 0.5, "tracked_qmax_output": 127)",
       {"tracked_qmin_output", "integer", "0.5"}},
      {R"("weight_bits": 8, "tracked_weight_qmin": -1000, "tracked_weight_qmax": 1000)",
       {"tracked_weight_qmin", "spans more than 8 bits"}},
      {R"("tracked_qmin_input": 0, "tracked_qmax_input": 127, "tracked_input_qmin": 0,
          "tracked_input_qmax": 255)",
       {"tracked_qmax_input", "tracked_input_qmax", "disagree"}},
      {R"("tracked_min_weight": 1, "tracked_max_weight": -1)", {"tracked_min_weight", "greater"}},
      {R"("tracked_min_weight": "NaN", "tracked_max_weight": 1)", {"tracked_min_weight", "number"}},
      {R"("input_bit": 4)", {"input_bit", "8 (int8)"}},
  };
  for (const Case& c : cases) {
    const std::string text = R"({"conv1": {)" + c.entry + "}}";
    std::vector<std::string> parts = c.parts;
    parts.push_back("g.json");
    parts.push_back("'conv1'");
    EXPECT_TRUE(status_is(parse_plan(text, "g.json", n.g), StatusCode::kInvalidArgument, parts))
        << text;
  }
}

TEST(NniErrors, NonFiniteLiteralsAreParseErrorsWithAPosition) {
  Net n;
  auto nan = parse_plan("{\"conv1\": {\"tracked_min_input\": NaN, \"tracked_max_input\": 1}}",
                        "nan.json", n.g);
  EXPECT_TRUE(status_is(nan, StatusCode::kParseError, {"nan.json", "line 1, column", "NaN"}));
  auto inf = parse_plan("{\"conv1\": {\"tracked_min_input\": -1e999, \"tracked_max_input\": 1}}",
                        "inf.json", n.g);
  EXPECT_TRUE(status_is(inf, StatusCode::kParseError, {"inf.json", "1e999"}));
}

TEST(NniErrors, UnknownKeysAreListedWithTheKnownOnes) {
  Net n;
  auto plan =
      parse_plan(R"({"conv1": {"weight_bits": 8, "weight_bitz": 8, "scale": 0.1}})", "k.json", n.g);
  EXPECT_TRUE(status_is(plan, StatusCode::kInvalidArgument,
                        {"k.json", "'conv1'", "'weight_bitz'", "'scale'", "known keys",
                         "tracked_max_activation", "output_bits"}));
}

TEST(NniErrors, AllUnknownModulesAreReportedAtOnceWithAHint) {
  Net n;
  auto plan = parse_plan(R"({"conv9": {"weight_bits": 8}, "conv1": {"weight_bits": 8},
                              "layer2.0.relu": {"output_bits": 8}, "layer1": {}})",
                         "m.json", n.g);
  EXPECT_TRUE(status_is(plan, StatusCode::kNotFound,
                        {"m.json", "'conv9'", "'layer2.0.relu'", "'layer1'", "known modules",
                         "conv1", "layer1.0.conv1"}));
  EXPECT_EQ(plan.status().message().find("'conv1'"), std::string::npos) << plan.status().message();
}

TEST(NniErrors, AModuleValueThatIsNotAnObjectIsNotAConfig) {
  Net n;
  auto plan = parse_plan(R"({"conv1": {"weight_bits": 8}, "relu1": 8})", "v.json", n.g);
  EXPECT_TRUE(status_is(plan, StatusCode::kParseError, {"v.json", "'relu1'", "number", "layers"}));
}

// --- native plan -------------------------------------------------------------------------------

TEST(NativePlan, SettingsGlobsAndFieldByFieldOverrides) {
  Net n;
  auto plan = parse_plan(R"({
    "default_precision": "fp16",
    "allow_fallback": true,
    "calibration": {"algorithm": "percentile", "percentile": 99.9},
    "layers": [
      {"match": "layer1.*", "precision": "int8", "weights": "per_tensor"},
      {"match": "layer1.0.relu*", "precision": "bf16", "activations": "asymmetric"},
      {"match": "/fc/Gemm", "precision": "fp8", "weights": "per_channel",
       "activations": "symmetric"},
      {"match": "conv1", "precision": "tf32"},
      {"match": "conv1", "weights": "per_tensor"}
    ]
  })",
                         "plan.json", n.g);
  ASSERT_TRUE(plan.ok()) << plan.status().to_string();
  EXPECT_EQ(plan->default_precision, Precision::kFP16);
  EXPECT_EQ(plan->allow_fallback, true);
  EXPECT_EQ(plan->calibration_algorithm, CalibrationAlgorithm::kPercentile);
  EXPECT_EQ(plan->percentile, 99.9);
  EXPECT_EQ(plan->layers.size(), 5u);

  const LayerRequest& l1conv = plan->layers.at(kL1Conv);
  EXPECT_EQ(l1conv.precision, Precision::kINT8);
  EXPECT_EQ(l1conv.weights, WeightGranularity::kPerTensor);
  EXPECT_FALSE(l1conv.symmetric);
  for (const std::string& relu : {kL1Relu, kL1Relu1}) {
    const LayerRequest& r = plan->layers.at(relu);
    EXPECT_EQ(r.precision, Precision::kBF16) << relu;
    EXPECT_EQ(r.weights, WeightGranularity::kPerTensor) << relu;  // kept from the first entry
    EXPECT_EQ(r.symmetric, false) << relu;
    EXPECT_NE(r.source.find("layers[1]"), std::string::npos) << r.source;
  }
  EXPECT_EQ(plan->layers.at(kFc).precision, Precision::kFP8);
  EXPECT_EQ(plan->layers.at(kFc).weights, WeightGranularity::kPerChannel);
  EXPECT_EQ(plan->layers.at(kFc).symmetric, true);
  EXPECT_EQ(plan->layers.at(kConv).precision, Precision::kTF32);
  EXPECT_EQ(plan->layers.at(kConv).weights, WeightGranularity::kPerTensor);
  EXPECT_NE(plan->layers.at(kConv).source.find("plan.json: layers[3]"), std::string::npos)
      << plan->layers.at(kConv).source;
  EXPECT_FALSE(plan->layers.count(kRelu1));
  EXPECT_TRUE(plan->value_ranges.empty());
}

TEST(NativePlan, RangesGoOnTheFirstActivationInputAndTheOutput) {
  Net n;
  auto plan = parse_plan(R"({"layers": [
    {"match": "/Add", "precision": "int8", "input_range": [-4, 4], "output_range": [-8, 8]},
    {"match": "fc", "input_range": [-1, 1]},
    {"match": "fc", "input_range": [-2, 3]}
  ]})",
                         "ranges.json", n.g);
  ASSERT_TRUE(plan.ok()) << plan.status().to_string();
  expect_range(*plan, "r3", -4, 4);  // Add(r3, r1): the first activation input
  EXPECT_FALSE(plan->value_ranges.count("r1"));
  expect_range(*plan, "a", -2, 3);  // Add's output is fc's input: the later entry wins
  EXPECT_EQ(plan->value_ranges.size(), 2u);
}

TEST(NativePlan, EmptyPlansAndPlansWithoutLayers) {
  Net n;
  auto only_default = parse_plan(R"({"default_precision": "int8"})", "d.json", n.g);
  ASSERT_TRUE(only_default.ok()) << only_default.status().to_string();
  EXPECT_EQ(only_default->default_precision, Precision::kINT8);
  EXPECT_TRUE(only_default->layers.empty());
  auto calibration = parse_plan(R"({"calibration": {"algorithm": "mse"}})", "c.json", n.g);
  ASSERT_TRUE(calibration.ok()) << calibration.status().to_string();
  EXPECT_EQ(calibration->calibration_algorithm, CalibrationAlgorithm::kMse);
  EXPECT_FALSE(calibration->percentile);
  auto no_layers = parse_plan(R"({"layers": []})", "l.json", n.g);
  ASSERT_TRUE(no_layers.ok()) << no_layers.status().to_string();
  EXPECT_TRUE(no_layers->layers.empty());
}

TEST(NativeErrors, UnknownKeysEverywhere) {
  Net n;
  EXPECT_TRUE(status_is(parse_plan(R"({"layers": [], "default_precison": "int8"})", "p.json", n.g),
                        StatusCode::kInvalidArgument,
                        {"p.json", "'default_precison'", "default_precision"}));
  EXPECT_TRUE(status_is(
      parse_plan(R"({"calibration": {"algorithm": "minmax", "samples": 10}})", "p.json", n.g),
      StatusCode::kInvalidArgument, {"p.json", "calibration", "'samples'", "percentile"}));
  EXPECT_TRUE(status_is(
      parse_plan(R"({"layers": [{"match": "conv1"}, {"match": "fc", "precison": "int8"}]})",
                 "p.json", n.g),
      StatusCode::kInvalidArgument, {"p.json", "layers[1]", "'fc'", "'precison'", "output_range"}));
}

TEST(NativeErrors, UnknownPrecisionsListTheValidOnes) {
  Net n;
  const std::string valid = "fp32, tf32, fp16, bf16, int8, fp8";
  EXPECT_TRUE(status_is(
      parse_plan(R"({"layers": [{"match": "conv1", "precision": "int4"}]})", "p.json", n.g),
      StatusCode::kInvalidArgument, {"p.json", "layers[0]", "'conv1'", "'int4'", valid}));
  EXPECT_TRUE(status_is(parse_plan(R"({"default_precision": "fp64"})", "p.json", n.g),
                        StatusCode::kInvalidArgument, {"default_precision", "'fp64'", valid}));
  EXPECT_TRUE(
      status_is(parse_plan(R"({"layers": [{"match": "conv1", "precision": 8}]})", "p.json", n.g),
                StatusCode::kInvalidArgument, {"layers[0]", "precision", "string"}));
}

TEST(NativeErrors, BadValues) {
  Net n;
  struct Case {
    std::string text;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {R"({"allow_fallback": "yes"})", {"allow_fallback", "\"yes\""}},
      {R"({"calibration": {"algorithm": "kl"}})", {"algorithm", "'kl'", "entropy, minmax"}},
      {R"({"calibration": {"percentile": 0}})", {"percentile", "(0, 100]"}},
      {R"({"calibration": {"percentile": 100.5}})", {"percentile", "(0, 100]"}},
      {R"({"calibration": {"algorithm": "minmax", "percentile": 99}})", {"percentile", "minmax"}},
      {R"({"calibration": "entropy"})", {"calibration", "object"}},
      {R"({"layers": {"match": "conv1"}})", {"layers", "array"}},
      {R"({"layers": ["conv1"]})", {"layers[0]", "object"}},
      {R"({"layers": [{"precision": "int8"}]})", {"layers[0]", "match", "missing"}},
      {R"({"layers": [{"match": 3}]})", {"layers[0]", "match", "string"}},
      {R"({"layers": [{"match": "conv1", "weights": "per_row"}]})",
       {"layers[0]", "'conv1'", "'per_row'", "per_channel, per_tensor"}},
      {R"({"layers": [{"match": "conv1", "activations": "signed"}]})",
       {"'signed'", "symmetric, asymmetric"}},
      {R"({"layers": [{"match": "conv1", "input_range": [2, 1]}]})",
       {"layers[0]", "'conv1'", "input_range", "greater"}},
      {R"({"layers": [{"match": "conv1", "output_range": [1]}]})", {"output_range", "[min, max]"}},
      {R"({"layers": [{"match": "conv1", "output_range": [0, 1, 2]}]})", {"output_range"}},
      {R"({"layers": [{"match": "conv1", "input_range": ["NaN", 1]}]})",
       {"input_range min", "number", "\"NaN\""}},
      {R"({"layers": [{"match": "conv1", "input_range": [0, "Infinity"]}]})",
       {"input_range max", "\"Infinity\""}},
      {R"({"layers": [{"match": "conv1", "input_range": [null, 1]}]})", {"input_range", "null"}},
      {R"({"layers": [{"match": "conv1", "input_range": [0, 1e300]}]})", {"finite"}},
  };
  for (const Case& c : cases) {
    std::vector<std::string> parts = c.parts;
    parts.push_back("bad.json");
    EXPECT_TRUE(status_is(parse_plan(c.text, "bad.json", n.g), StatusCode::kInvalidArgument, parts))
        << c.text;
  }
}

TEST(NativeErrors, AllUnmatchedEntriesAreListedAtOnce) {
  Net n;
  auto plan = parse_plan(R"({"layers": [
    {"match": "conv1", "precision": "int8"},
    {"match": "layer2.*", "precision": "int8"},
    {"match": "head", "precision": "fp16"}
  ]})",
                         "u.json", n.g);
  EXPECT_TRUE(
      status_is(plan, StatusCode::kNotFound,
                {"u.json", "layers[1] 'layer2.*'", "layers[2] 'head'", "known modules", "conv1"}));
  EXPECT_EQ(plan.status().message().find("layers[0]"), std::string::npos);
}

// --- detection ---------------------------------------------------------------------------------

TEST(PlanDetect, NativeByItsTopLevelKeysNniOtherwise) {
  Net n;
  // "layers" at top level makes it native even when other values are objects.
  auto native = parse_plan(R"({"calibration": {"algorithm": "minmax"}})", "a.json", n.g);
  ASSERT_TRUE(native.ok()) << native.status().to_string();
  EXPECT_EQ(native->calibration_algorithm, CalibrationAlgorithm::kMinMax);
  // A module called "layers" cannot be mistaken: the native schema wants an array there.
  EXPECT_TRUE(status_is(parse_plan(R"({"layers": {"weight_bits": 8}})", "b.json", n.g),
                        StatusCode::kInvalidArgument, {"b.json", "layers", "array"}));
  auto nni = parse_plan(R"({"conv1": {"weight_bits": 16}})", "c.json", n.g);
  ASSERT_TRUE(nni.ok()) << nni.status().to_string();
  EXPECT_EQ(precision_of(*nni, kConv), Precision::kFP16);
  // A native key mixed with module entries: native, and the module is an unknown key.
  EXPECT_TRUE(status_is(
      parse_plan(R"({"allow_fallback": false, "conv1": {"weight_bits": 8}})", "d.json", n.g),
      StatusCode::kInvalidArgument, {"d.json", "'conv1'", "layers"}));
}

TEST(PlanDetect, AnythingElseIsAParseErrorNamingTheSource) {
  Net n;
  EXPECT_TRUE(status_is(parse_plan("[1, 2]", "arr.json", n.g), StatusCode::kParseError,
                        {"arr.json", "array"}));
  EXPECT_TRUE(
      status_is(parse_plan("3", "num.json", n.g), StatusCode::kParseError, {"num.json", "number"}));
  EXPECT_TRUE(status_is(parse_plan("", "empty.json", n.g), StatusCode::kParseError,
                        {"empty.json", "line 1, column 1"}));
  EXPECT_TRUE(
      status_is(parse_plan("{\"layers\": [\n  {\"match\": \"conv1\",}\n]}", "bad.json", n.g),
                StatusCode::kParseError, {"bad.json", "line 2, column"}));
  EXPECT_TRUE(status_is(parse_plan(R"({"conv1": "int8"})", "str.json", n.g),
                        StatusCode::kParseError, {"str.json", "'conv1'", "string"}));
}

}  // namespace
}  // namespace mixq::quant
