// Helpers for the reference-kernel tests: run one node built with ir::Graph, compare tensors.
#pragma once

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "backends/reference/reference.h"
#include "ir/graph.h"
#include "support/test_util.h"

namespace mixq::testing {

using Attrs = std::map<std::string, ir::Attribute>;

// Runs one `op` node on `inputs` (undefined Tensors stand for absent optional inputs) through
// reference::run_node; the node has `num_outputs` present outputs.
inline Status run_op(ir::OpKind op, const std::vector<Tensor>& inputs, const Attrs& attrs,
                     std::vector<Tensor>& outputs, size_t num_outputs = 1) {
  ir::Graph g;
  std::vector<ir::Value*> ins, outs;
  for (size_t i = 0; i < inputs.size(); ++i)
    ins.push_back(inputs[i].defined()
                      ? g.add_value("in" + std::to_string(i), inputs[i].dtype(), inputs[i].shape())
                      : nullptr);
  for (size_t i = 0; i < num_outputs; ++i)
    outs.push_back(g.add_value("out" + std::to_string(i), DType::kFloat32, {}, false));
  ir::Node* node = g.add_node(op, "node", ins, outs);
  node->attrs = attrs;
  return reference::run_node(*node, inputs, outputs);
}

// The single output of run_op; fails the test (and returns an undefined Tensor) on error.
inline Tensor run1(ir::OpKind op, const std::vector<Tensor>& inputs, const Attrs& attrs = {}) {
  std::vector<Tensor> outputs;
  const Status s = run_op(op, inputs, attrs, outputs);
  EXPECT_TRUE(s.ok()) << s.to_string();
  return s.ok() ? outputs[0] : Tensor();
}

// Build-time inference on (dtype, shape) pairs that may hold kDynamicDim.
inline Status infer_op(ir::OpKind op, const std::vector<std::pair<DType, Shape>>& inputs,
                       const Attrs& attrs, std::vector<reference::TensorInfo>& outputs,
                       size_t num_outputs = 1) {
  ir::Graph g;
  std::vector<ir::Value*> ins, outs;
  std::vector<reference::TensorInfo> infos;
  for (size_t i = 0; i < inputs.size(); ++i) {
    ins.push_back(g.add_value("in" + std::to_string(i), inputs[i].first, inputs[i].second));
    infos.push_back({true, inputs[i].first, inputs[i].second, nullptr});
  }
  for (size_t i = 0; i < num_outputs; ++i)
    outs.push_back(g.add_value("out" + std::to_string(i), DType::kFloat32, {}, false));
  ir::Node* node = g.add_node(op, "node", ins, outs);
  node->attrs = attrs;
  return reference::infer_node(*node, infos, outputs);
}

inline Tensor f32(Shape shape, const std::vector<float>& values) {
  return Tensor::from_vector<float>(std::move(shape), values);
}

// 1, 2, 3, ... in the given shape (the ONNX node tests' favourite input).
inline Tensor iota(Shape shape, float start = 1.0f) {
  Tensor t = Tensor::empty(DType::kFloat32, std::move(shape));
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = start + float(i);
  return t;
}

// Same shape, and every element within rtol of expected relative to the largest |expected|.
inline ::testing::AssertionResult close(const Tensor& actual, const Tensor& expected,
                                        double rtol = 1e-5) {
  if (!actual.defined()) return ::testing::AssertionFailure() << "no output";
  if (actual.shape() != expected.shape())
    return ::testing::AssertionFailure() << "shape " << shape_to_string(actual.shape())
                                         << ", expected " << shape_to_string(expected.shape());
  const double err = max_relative_error(actual, expected);
  if (!(err <= rtol)) {
    auto failure = ::testing::AssertionFailure() << "max relative error " << err;
    int64_t worst = 0;
    double worst_diff = -1;
    for (int64_t i = 0; i < expected.numel(); ++i) {
      const double d = std::fabs(actual.get_as_double(i) - expected.get_as_double(i));
      if (!(d <= worst_diff)) worst = i, worst_diff = d;
    }
    return failure << "; worst at flat index " << worst << ": got " << actual.get_as_double(worst)
                   << ", expected " << expected.get_as_double(worst);
  }
  return ::testing::AssertionSuccess();
}

// A failed status whose message contains every one of `parts`.
inline ::testing::AssertionResult fails_with(const Status& s, StatusCode code,
                                             const std::vector<std::string>& parts) {
  if (s.ok()) return ::testing::AssertionFailure() << "expected an error, got OK";
  if (s.code() != code)
    return ::testing::AssertionFailure() << "code " << status_code_name(s.code()) << ", expected "
                                         << status_code_name(code) << ": " << s.message();
  for (const std::string& p : parts)
    if (s.message().find(p) == std::string::npos)
      return ::testing::AssertionFailure() << "message '" << s.message() << "' lacks '" << p << "'";
  return ::testing::AssertionSuccess();
}

}  // namespace mixq::testing
