// Builds small ONNX models in memory for tests: typed graph inputs and outputs (static or
// symbolic dimensions), initializers from mixq::Tensor, nodes with attributes, any opset.
// Serializes to bytes or to a file. Nothing here checks the model: tests build broken ones.
#pragma once

#include <onnx/onnx_pb.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "mixq/tensor.h"

namespace mixq::testing {

// One dimension of a graph input/output: a size, or a symbolic name ("N").
struct Dim {
  Dim(int64_t v) : value(v) {}                 // NOLINT: implicit on purpose ({1, 3, "N"})
  Dim(int v) : value(v) {}                     // NOLINT
  Dim(const char* p) : param(p) {}             // NOLINT
  Dim(std::string p) : param(std::move(p)) {}  // NOLINT
  int64_t value = 0;
  std::string param;  // non-empty: symbolic
};
using Dims = std::vector<Dim>;

// The ONNX TensorProto element type of a DType.
int onnx_elem_type(DType dtype);
// A TensorProto holding `tensor` as raw_data.
onnx::TensorProto make_tensor_proto(const std::string& name, const Tensor& tensor);

// Adds attributes to a node: node("Conv", {"x", "w"}, {"y"}).attr("pads", {1, 1, 1, 1}).
class NodeRef {
 public:
  explicit NodeRef(onnx::NodeProto* node) : node_(node) {}
  NodeRef& attr(const std::string& name, int64_t v);
  NodeRef& attr(const std::string& name, int v) { return attr(name, int64_t(v)); }
  NodeRef& attr(const std::string& name, float v);
  NodeRef& attr(const std::string& name, const std::string& v);
  NodeRef& attr(const std::string& name, const char* v) { return attr(name, std::string(v)); }
  NodeRef& attr(const std::string& name, const std::vector<int64_t>& v);
  NodeRef& attr(const std::string& name, std::initializer_list<int64_t> v) {
    return attr(name, std::vector<int64_t>(v));
  }
  NodeRef& attr(const std::string& name, const std::vector<float>& v);
  NodeRef& attr(const std::string& name, const Tensor& v);
  NodeRef& domain(const std::string& d);
  onnx::NodeProto& proto() { return *node_; }

 private:
  onnx::AttributeProto* add(const std::string& name, onnx::AttributeProto::AttributeType type);
  onnx::NodeProto* node_;
};

class OnnxBuilder {
 public:
  explicit OnnxBuilder(int opset = 13, const std::string& graph_name = "test_graph");

  // Graph inputs/outputs with a shape ({1, 3, "N"}: "N" is symbolic).
  OnnxBuilder& input(const std::string& name, DType dtype, const Dims& dims);
  OnnxBuilder& output(const std::string& name, DType dtype, const Dims& dims);
  OnnxBuilder& input(const std::string& name, const Dims& dims) {
    return input(name, DType::kFloat32, dims);
  }
  OnnxBuilder& output(const std::string& name, const Dims& dims) {
    return output(name, DType::kFloat32, dims);
  }
  // Without a shape (unknown rank).
  OnnxBuilder& input_unshaped(const std::string& name, DType dtype);
  OnnxBuilder& output_unshaped(const std::string& name, DType dtype);

  // An initializer (raw data). `also_input` lists it among the graph inputs too, as exporters
  // before IR version 4 did.
  OnnxBuilder& initializer(const std::string& name, const Tensor& tensor, bool also_input = false);

  // A node; an empty name leaves the NodeProto's name unset. An empty input string marks an
  // absent optional input.
  NodeRef node(const std::string& op_type, const std::vector<std::string>& inputs,
               const std::vector<std::string>& outputs, const std::string& name = "");

  // Opset of the default domain (replaces the import; a negative version removes it), other
  // domains' imports, IR version.
  OnnxBuilder& opset(int version);
  OnnxBuilder& add_opset_import(const std::string& domain, int version);
  OnnxBuilder& ir_version(int64_t version);

  onnx::ModelProto& model() { return model_; }
  onnx::GraphProto& graph() { return *model_.mutable_graph(); }

  std::string bytes() const;
  // Writes the serialized model; aborts the test binary on an I/O failure (a broken test setup).
  void save(const std::string& path) const;

 private:
  onnx::ModelProto model_;
};

// The epilogue a conv test case names after the layer's output `out`: "" (none), "relu", "clip"
// ([-0.5, 0.7]), "add" (+ graph input "r", named `add_node`) or "add_relu". Writes "y".
void append_conv_epilogue(OnnxBuilder& b, const std::string& epilogue, const std::string& out,
                          const std::string& add_node);

// Writes `bytes` to `path` exactly (for truncated and corrupt files).
void write_file(const std::string& path, const std::string& bytes);
std::string read_file(const std::string& path);

// The small classifier most tests share: x[N,3,8,8] -> Conv(4, 3x3, pad 1, bias) -> Relu ->
// GlobalAveragePool -> Flatten -> Gemm(10, transB=1) -> y[N,10], random weights from `seed`.
// Node names are torch-style scoped ("/conv1/Conv", "/fc/Gemm"), weights "conv1.weight" etc.
OnnxBuilder small_classifier(uint64_t seed = 7, int opset = 13);

}  // namespace mixq::testing
