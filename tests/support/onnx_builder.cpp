#include "support/onnx_builder.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>

#include "frontend/onnx/tensor_proto.h"
#include "support/test_util.h"

namespace mixq::testing {

int onnx_elem_type(DType dtype) {
  return onnx_frontend::dtype_to_onnx(dtype);
}

onnx::TensorProto make_tensor_proto(const std::string& name, const Tensor& tensor) {
  onnx::TensorProto p;
  p.set_name(name);
  p.set_data_type(onnx_elem_type(tensor.dtype()));
  for (int64_t d : tensor.shape()) p.add_dims(d);
  p.set_raw_data(std::string(static_cast<const char*>(tensor.raw()), tensor.nbytes()));
  return p;
}

// --- NodeRef
// ---------------------------------------------------------------------------------------

onnx::AttributeProto* NodeRef::add(const std::string& name,
                                   onnx::AttributeProto::AttributeType type) {
  onnx::AttributeProto* a = node_->add_attribute();
  a->set_name(name);
  a->set_type(type);
  return a;
}

NodeRef& NodeRef::attr(const std::string& name, int64_t v) {
  add(name, onnx::AttributeProto::INT)->set_i(v);
  return *this;
}

NodeRef& NodeRef::attr(const std::string& name, float v) {
  add(name, onnx::AttributeProto::FLOAT)->set_f(v);
  return *this;
}

NodeRef& NodeRef::attr(const std::string& name, const std::string& v) {
  add(name, onnx::AttributeProto::STRING)->set_s(v);
  return *this;
}

NodeRef& NodeRef::attr(const std::string& name, const std::vector<int64_t>& v) {
  onnx::AttributeProto* a = add(name, onnx::AttributeProto::INTS);
  for (int64_t x : v) a->add_ints(x);
  return *this;
}

NodeRef& NodeRef::attr(const std::string& name, const std::vector<float>& v) {
  onnx::AttributeProto* a = add(name, onnx::AttributeProto::FLOATS);
  for (float x : v) a->add_floats(x);
  return *this;
}

NodeRef& NodeRef::attr(const std::string& name, const Tensor& v) {
  *add(name, onnx::AttributeProto::TENSOR)->mutable_t() = make_tensor_proto("", v);
  return *this;
}

NodeRef& NodeRef::domain(const std::string& d) {
  node_->set_domain(d);
  return *this;
}

// --- OnnxBuilder
// -----------------------------------------------------------------------------------

namespace {

void set_type(onnx::ValueInfoProto* vi, DType dtype, const Dims* dims) {
  auto* tt = vi->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(onnx_elem_type(dtype));
  if (!dims) return;
  auto* shape = tt->mutable_shape();
  for (const Dim& d : *dims) {
    auto* dim = shape->add_dim();
    if (d.param.empty())
      dim->set_dim_value(d.value);
    else
      dim->set_dim_param(d.param);
  }
}

}  // namespace

OnnxBuilder::OnnxBuilder(int opset_version, const std::string& graph_name) {
  model_.set_ir_version(8);
  model_.set_producer_name("mixq-tests");
  model_.set_producer_version("1");
  model_.mutable_graph()->set_name(graph_name);
  opset(opset_version);
}

OnnxBuilder& OnnxBuilder::input(const std::string& name, DType dtype, const Dims& dims) {
  auto* vi = graph().add_input();
  vi->set_name(name);
  set_type(vi, dtype, &dims);
  return *this;
}

OnnxBuilder& OnnxBuilder::output(const std::string& name, DType dtype, const Dims& dims) {
  auto* vi = graph().add_output();
  vi->set_name(name);
  set_type(vi, dtype, &dims);
  return *this;
}

OnnxBuilder& OnnxBuilder::input_unshaped(const std::string& name, DType dtype) {
  auto* vi = graph().add_input();
  vi->set_name(name);
  set_type(vi, dtype, nullptr);
  return *this;
}

OnnxBuilder& OnnxBuilder::output_unshaped(const std::string& name, DType dtype) {
  auto* vi = graph().add_output();
  vi->set_name(name);
  set_type(vi, dtype, nullptr);
  return *this;
}

OnnxBuilder& OnnxBuilder::initializer(const std::string& name, const Tensor& tensor,
                                      bool also_input) {
  *graph().add_initializer() = make_tensor_proto(name, tensor);
  if (also_input) {
    Dims dims;
    for (int64_t d : tensor.shape()) dims.emplace_back(d);
    input(name, tensor.dtype(), dims);
  }
  return *this;
}

NodeRef OnnxBuilder::node(const std::string& op_type, const std::vector<std::string>& inputs,
                          const std::vector<std::string>& outputs, const std::string& name) {
  onnx::NodeProto* n = graph().add_node();
  n->set_op_type(op_type);
  if (!name.empty()) n->set_name(name);
  for (const std::string& in : inputs) n->add_input(in);
  for (const std::string& out : outputs) n->add_output(out);
  return NodeRef(n);
}

OnnxBuilder& OnnxBuilder::opset(int version) {
  for (int i = model_.opset_import_size(); i-- > 0;) {
    const std::string& d = model_.opset_import(i).domain();
    if (d.empty() || d == "ai.onnx") model_.mutable_opset_import()->DeleteSubrange(i, 1);
  }
  if (version >= 0) add_opset_import("", version);
  return *this;
}

OnnxBuilder& OnnxBuilder::add_opset_import(const std::string& domain, int version) {
  auto* imp = model_.add_opset_import();
  imp->set_domain(domain);
  imp->set_version(version);
  return *this;
}

OnnxBuilder& OnnxBuilder::ir_version(int64_t version) {
  model_.set_ir_version(version);
  return *this;
}

std::string OnnxBuilder::bytes() const {
  std::string out;
  if (!model_.SerializeToString(&out)) {
    std::fprintf(stderr, "onnx_builder: serializing the model failed\n");
    std::abort();
  }
  return out;
}

void OnnxBuilder::save(const std::string& path) const {
  write_file(path, bytes());
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  if (!out) {
    std::fprintf(stderr, "onnx_builder: cannot write '%s'\n", path.c_str());
    std::abort();
  }
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void append_conv_epilogue(OnnxBuilder& b, const std::string& epilogue, const std::string& out,
                          const std::string& add_node) {
  std::string last = out;
  if (epilogue.rfind("add", 0) == 0) {
    const std::string sum = epilogue == "add" ? "y" : "sum";
    b.node("Add", {last, "r"}, {sum}, add_node);
    last = sum;
  }
  if (epilogue == "relu" || epilogue == "add_relu") {
    b.node("Relu", {last}, {"y"}, "/relu/Relu");
  } else if (epilogue == "clip") {
    b.initializer("clip.min", Tensor::scalar<float>(-0.5f));
    b.initializer("clip.max", Tensor::scalar<float>(0.7f));
    b.node("Clip", {last, "clip.min", "clip.max"}, {"y"}, "/clip/Clip");
  }
}

OnnxBuilder small_classifier(uint64_t seed, int opset) {
  OnnxBuilder b(opset, "small_classifier");
  b.input("x", {"N", 3, 8, 8});
  b.output("y", {"N", 10});
  b.initializer("conv1.weight", random_tensor({4, 3, 3, 3}, seed, -0.5f, 0.5f));
  b.initializer("conv1.bias", random_tensor({4}, seed + 1, -0.1f, 0.1f));
  b.initializer("fc.weight", random_tensor({10, 4}, seed + 2, -0.5f, 0.5f));
  b.initializer("fc.bias", random_tensor({10}, seed + 3, -0.1f, 0.1f));
  b.node("Conv", {"x", "conv1.weight", "conv1.bias"}, {"conv_out"}, "/conv1/Conv")
      .attr("kernel_shape", {3, 3})
      .attr("pads", {1, 1, 1, 1})
      .attr("strides", {1, 1});
  b.node("Relu", {"conv_out"}, {"relu_out"}, "/relu/Relu");
  b.node("GlobalAveragePool", {"relu_out"}, {"pool_out"}, "/pool/GlobalAveragePool");
  b.node("Flatten", {"pool_out"}, {"flat"}, "/Flatten").attr("axis", int64_t(1));
  b.node("Gemm", {"flat", "fc.weight", "fc.bias"}, {"y"}, "/fc/Gemm")
      .attr("transB", int64_t(1))
      .attr("alpha", 1.0f)
      .attr("beta", 1.0f);
  return b;
}

}  // namespace mixq::testing
