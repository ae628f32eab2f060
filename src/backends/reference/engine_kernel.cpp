// The reference backend as an engine backend: wraps the oracle kernels behind the Kernel
// contract so any op runs in an engine (fp32, plain layout), and other backends can hand the ops
// they do not implement to it.
#include "backends/backend.h"
#include "backends/reference/reference.h"

namespace mixq::backends {

size_t Backend::buffer_bytes(const ir::Value& value, const Shape& shape) const {
  return size_t(shape_numel(shape)) * dtype_size(value.dtype);
}

namespace {

class ReferenceInstance final : public KernelInstance {
 public:
  explicit ReferenceInstance(const ir::Node& node) : node_(node) {}

  Status execute(const ExecContext& ctx) const override {
    std::vector<Tensor> inputs, outputs;
    inputs.reserve(ctx.inputs.size());
    for (const Buffer& b : ctx.inputs) {
      if (!b.data) {
        inputs.emplace_back();
        continue;
      }
      inputs.push_back(Tensor::wrap(b.value->dtype, b.shape, b.data, nullptr));
    }
    for (const Buffer& b : ctx.outputs)
      outputs.push_back(b.data ? Tensor::wrap(b.value->dtype, b.shape, b.data, nullptr) : Tensor());
    const reference::OpImpl* impl = reference::find_op(node_.op);
    Status s = impl->compute(node_, inputs, outputs);
    return s.ok() ? s : s.with_context(node_.describe());
  }

 private:
  const ir::Node& node_;
};

class ReferenceKernel final : public Kernel {
 public:
  explicit ReferenceKernel(const ir::Node& node) : node_(node) {}
  Status prepare(int64_t) override { return Status::Ok(); }
  Expected<std::unique_ptr<KernelInstance>> instantiate(int64_t) const override {
    return std::unique_ptr<KernelInstance>(new ReferenceInstance(node_));
  }
  std::string implementation() const override { return "reference"; }

 private:
  const ir::Node& node_;
};

class ReferenceBackend final : public Backend {
 public:
  std::string_view name() const override { return "reference"; }

  bool supports(const ir::Node& node, Precision precision, std::string* why) const override {
    if (!reference::supports(node.op)) {
      if (why) *why = "no reference kernel for " + std::string(ir::op_name(node.op));
      return false;
    }
    if (precision != Precision::kFP32) {
      if (why) *why = "the reference backend computes in fp32 only";
      return false;
    }
    for (const ir::Value* v : node.inputs)
      if (v && v->layout != ir::Layout::kPlain) {
        if (why) *why = "the reference backend reads plain layouts only";
        return false;
      }
    return true;
  }

  Expected<std::unique_ptr<Kernel>> create(const ir::Node& node, Precision) const override {
    return std::unique_ptr<Kernel>(new ReferenceKernel(node));
  }
};

}  // namespace

std::unique_ptr<Backend> make_reference_backend() {
  return std::make_unique<ReferenceBackend>();
}

}  // namespace mixq::backends

namespace mixq::backends {

std::string QuantPolicy::describe() const {
  int bits = 1;
  while ((1 << (bits - 1)) - 1 < weight_qmax) ++bits;
  return std::string(dtype_name(activation_dtype)) + " activations, " + std::to_string(bits) +
         "-bit weights";
}

Status Backend::check_target(const std::string& recorded) const {
  if (recorded == target()) return Status::Ok();
  return FailedPrecondition("the engine was built for '" + recorded + "', this machine's " +
                            std::string(name()) + " backend is '" + target() +
                            "': rebuild the engine here");
}

Expected<Tensor> Backend::read_value(const Buffer& b) const {
  if (b.value->layout != ir::Layout::kPlain)
    return Unsupported("value '" + b.value->name + "' has layout " +
                       std::string(ir::layout_name(b.value->layout)) + ", which the " +
                       std::string(name()) + " backend cannot read back");
  Tensor t = Tensor::wrap(b.value->dtype, b.shape, b.data, nullptr);
  return reference::dequantize_to_float(t, b.value->quant ? &*b.value->quant : nullptr).clone();
}

Expected<std::unique_ptr<Backend>> make_backend(const std::string& name) {
  if (name == "cpu") return make_cpu_backend();
  if (name == "reference") return make_reference_backend();
  if (name == "cuda") return make_cuda_backend();
  return NotFound("unknown backend '" + name + "'; available: cpu, reference, cuda");
}

}  // namespace mixq::backends
