#include "backends/reference/reference.h"

namespace mixq::reference {

void Registry::add(ir::OpKind op, OpImpl impl) {
  const size_t index = static_cast<size_t>(op);
  if (impls_.size() <= index) impls_.resize(index + 1);
  impls_[index] = impl;
}

const OpImpl* Registry::find(ir::OpKind op) const {
  const size_t index = static_cast<size_t>(op);
  if (index >= impls_.size() || impls_[index].compute == nullptr) return nullptr;
  return &impls_[index];
}

namespace {

const Registry& registry() {
  static const Registry instance = [] {
    Registry r;
    register_conv(r);
    register_gemm(r);
    register_activation(r);
    register_elementwise(r);
    register_pool(r);
    register_normalization(r);
    register_reduce(r);
    register_shape(r);
    register_quantize(r);
    register_fused(r);
    return r;
  }();
  return instance;
}

}  // namespace

const OpImpl* find_op(ir::OpKind op) {
  return registry().find(op);
}
bool supports(ir::OpKind op) {
  return find_op(op) != nullptr;
}

Status infer_node(const ir::Node& node, std::span<const TensorInfo> inputs,
                  std::vector<TensorInfo>& outputs) {
  const OpImpl* impl = find_op(node.op);
  if (!impl) return Unsupported(node.describe() + ": no reference kernel for this op");
  outputs.assign(node.outputs.size(), TensorInfo{});
  for (size_t i = 0; i < outputs.size(); ++i) outputs[i].present = node.outputs[i] != nullptr;
  Status s = impl->infer(node, inputs, outputs);
  if (!s.ok()) return s.with_context(node.describe());
  return Status::Ok();
}

Status run_node(const ir::Node& node, std::span<const Tensor> inputs,
                std::vector<Tensor>& outputs) {
  const OpImpl* impl = find_op(node.op);
  if (!impl) return Unsupported(node.describe() + ": no reference kernel for this op");
  std::vector<TensorInfo> in_infos;
  in_infos.reserve(inputs.size());
  for (const Tensor& t : inputs) in_infos.push_back(TensorInfo::of(t));
  std::vector<TensorInfo> out_infos;
  MIXQ_RETURN_IF_ERROR(infer_node(node, in_infos, out_infos));
  outputs.assign(out_infos.size(), Tensor());
  for (size_t i = 0; i < out_infos.size(); ++i) {
    if (!out_infos[i].present) continue;
    for (int64_t d : out_infos[i].shape)
      if (d < 0)
        return Internal(node.describe() + ": output " + std::to_string(i) +
                        " has an unresolved dimension at run time");
    outputs[i] = Tensor::empty(out_infos[i].dtype, out_infos[i].shape);
  }
  Status s = impl->compute(node, inputs, outputs);
  if (!s.ok()) return s.with_context(node.describe());
  return Status::Ok();
}

}  // namespace mixq::reference
