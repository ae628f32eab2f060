// Helpers for the elementwise, reduce, shape and quantize reference-kernel tests: build one node
// with ir::Graph, run it (reference::run_node) or infer it at build time, compare exactly.
#pragma once

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "backends/reference/reference.h"
#include "ir/graph.h"
#include "support/test_util.h"

namespace mixq::testing::kt {

using Attrs = std::map<std::string, ir::Attribute>;
using ir::kDynamicDim;

// Runs one `op` node; undefined Tensors stand for absent optional inputs.
inline Status run(ir::OpKind op, const std::vector<Tensor>& inputs, const Attrs& attrs,
                  std::vector<Tensor>& outputs, size_t num_outputs = 1) {
  ir::Graph g;
  std::vector<ir::Value*> ins, outs;
  for (size_t i = 0; i < inputs.size(); ++i)
    ins.push_back(inputs[i].defined() ? g.add_constant("in" + std::to_string(i), inputs[i])
                                      : nullptr);
  for (size_t i = 0; i < num_outputs; ++i)
    outs.push_back(g.add_value("out" + std::to_string(i), DType::kFloat32, {}, false));
  ir::Node* node = g.add_node(op, "node", ins, outs);
  node->attrs = attrs;
  return reference::run_node(*node, inputs, outputs);
}

// The single output; fails the test (and returns an undefined Tensor) on error.
inline Tensor run1(ir::OpKind op, const std::vector<Tensor>& inputs, const Attrs& attrs = {}) {
  std::vector<Tensor> outputs;
  const Status s = run(op, inputs, attrs, outputs);
  EXPECT_TRUE(s.ok()) << s.to_string();
  return s.ok() ? outputs[0] : Tensor();
}

// The error of running a node that should fail.
inline Status run_error(ir::OpKind op, const std::vector<Tensor>& inputs, const Attrs& attrs = {},
                        size_t num_outputs = 1) {
  std::vector<Tensor> outputs;
  return run(op, inputs, attrs, outputs, num_outputs);
}

// A build-time input: dtype and shape (may hold kDynamicDim), and a value where known.
struct In {
  DType dtype;
  Shape shape;
  Tensor value;  // undefined: computed at run time
};
inline In known(const Tensor& t) {
  return {t.dtype(), t.shape(), t};
}

inline Status infer(ir::OpKind op, const std::vector<In>& inputs, const Attrs& attrs,
                    std::vector<reference::TensorInfo>& outputs, size_t num_outputs = 1) {
  ir::Graph g;
  std::vector<ir::Value*> ins, outs;
  std::vector<reference::TensorInfo> infos;
  for (size_t i = 0; i < inputs.size(); ++i) {
    ins.push_back(g.add_value("in" + std::to_string(i), inputs[i].dtype, inputs[i].shape));
    infos.push_back({true, inputs[i].dtype, inputs[i].shape,
                     inputs[i].value.defined() ? &inputs[i].value : nullptr});
  }
  for (size_t i = 0; i < num_outputs; ++i)
    outs.push_back(g.add_value("out" + std::to_string(i), DType::kFloat32, {}, false));
  ir::Node* node = g.add_node(op, "node", ins, outs);
  node->attrs = attrs;
  return reference::infer_node(*node, infos, outputs);
}

// The inferred shape of output 0; fails the test on error.
inline Shape infer_shape(ir::OpKind op, const std::vector<In>& inputs, const Attrs& attrs = {}) {
  std::vector<reference::TensorInfo> outputs;
  const Status s = infer(op, inputs, attrs, outputs);
  EXPECT_TRUE(s.ok()) << s.to_string();
  return s.ok() ? outputs[0].shape : Shape{-2};
}

inline Tensor f32(Shape shape, const std::vector<float>& v) {
  return Tensor::from_vector<float>(std::move(shape), v);
}
inline Tensor i64(Shape shape, const std::vector<int64_t>& v) {
  return Tensor::from_vector<int64_t>(std::move(shape), v);
}
inline Tensor i64s(const std::vector<int64_t>& v) {
  return i64({int64_t(v.size())}, v);
}
template <typename T>
Tensor typed(Shape shape, const std::vector<T>& v) {
  return Tensor::from_vector<T>(std::move(shape), v);
}

// Same dtype, shape and values (NaN equals NaN).
inline ::testing::AssertionResult same(const Tensor& actual, const Tensor& expected) {
  if (!actual.defined()) return ::testing::AssertionFailure() << "no output";
  if (actual.dtype() != expected.dtype() || actual.shape() != expected.shape())
    return ::testing::AssertionFailure()
           << "got " << actual.describe() << ", expected " << expected.describe();
  for (int64_t i = 0; i < expected.numel(); ++i) {
    const double a = actual.get_as_double(i), e = expected.get_as_double(i);
    if (a != e && !(std::isnan(a) && std::isnan(e)))
      return ::testing::AssertionFailure()
             << "element " << i << ": got " << a << ", expected " << e;
  }
  return ::testing::AssertionSuccess();
}

// A failed status with `code` whose message contains every one of `parts`.
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

}  // namespace mixq::testing::kt
