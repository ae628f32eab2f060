// CPU data movement: Concat on oneDNN (any layout, fp32 or int8 with shared parameters) and Relu
// on int8 data (the real zero is the zero point, so relu is max(q, z)).
#include <algorithm>
#include <cmath>

#include "backends/cpu/onednn.h"

namespace mixq::backends::cpu {
namespace {

using dnnl::memory;

Expected<dnnl::concat::primitive_desc> concat_pd(const ir::Node& node, int64_t batch) {
  const ir::Value* y = node.output(0);
  const Shape ys = at_batch(y->shape, batch);
  int64_t axis = node.attr_int("axis", 0);
  if (axis < 0) axis += int64_t(ys.size());
  std::vector<memory::desc> srcs;
  for (const ir::Value* in : node.inputs) srcs.push_back(desc_of(*in, at_batch(in->shape, batch)));
  std::optional<dnnl::concat::primitive_desc> pd;
  Status s = guarded(node.describe(), [&] {
    pd.emplace(desc_of(*y, ys), int(axis), srcs, cpu_engine(), base_attr());
  });
  if (!s.ok()) return s;
  return *pd;
}

class ConcatKernel final : public Kernel {
 public:
  explicit ConcatKernel(const ir::Node& node) : node_(node) {}
  Status prepare(int64_t max_batch) override {
    for (const ir::Value* in : node_.inputs)
      if (in->dtype != node_.output(0)->dtype ||
          (in->quant && node_.output(0)->quant &&
           in->quant->scale != node_.output(0)->quant->scale))
        return Internal(node_.describe() + ": inputs must share the output's type and scale");
    MIXQ_ASSIGN_OR_RETURN(auto pd, concat_pd(node_, max_batch));
    impl_ = std::string("onednn concat ") + pd.impl_info_str();
    return Status::Ok();
  }
  Expected<std::unique_ptr<KernelInstance>> instantiate(int64_t batch) const override {
    MIXQ_ASSIGN_OR_RETURN(auto pd, concat_pd(node_, batch));
    std::vector<PrimitiveInstance::Arg> inputs;
    for (size_t i = 0; i < node_.inputs.size(); ++i)
      inputs.push_back({DNNL_ARG_MULTIPLE_SRC + int(i), pd.src_desc(int(i))});
    return std::unique_ptr<KernelInstance>(
        new PrimitiveInstance(node_, dnnl::concat(pd), std::move(inputs),
                              {DNNL_ARG_DST, pd.dst_desc()}, pd.scratchpad_desc()));
  }
  std::string implementation() const override { return impl_; }

 private:
  const ir::Node& node_;
  std::string impl_;
};

class Int8ReluInstance final : public KernelInstance {
 public:
  explicit Int8ReluInstance(uint8_t zero) : zero_(zero) {}
  Status execute(const ExecContext& ctx) const override {
    const auto* in = static_cast<const uint8_t*>(ctx.inputs[0].data);
    auto* out = static_cast<uint8_t*>(ctx.outputs[0].data);
    const int64_t n = shape_numel(ctx.outputs[0].shape);
#pragma omp parallel for
    for (int64_t i = 0; i < n; ++i) out[i] = std::max(in[i], zero_);
    return Status::Ok();
  }

 private:
  uint8_t zero_;
};

class Int8ReluKernel final : public Kernel {
 public:
  explicit Int8ReluKernel(const ir::Node& node) : node_(node) {}
  Status prepare(int64_t) override {
    const ir::Value* x = node_.input(0);
    if (x->dtype != DType::kUInt8 || !x->quant) return Internal("int8 relu on a non-u8 value");
    return Status::Ok();
  }
  Expected<std::unique_ptr<KernelInstance>> instantiate(int64_t) const override {
    return std::unique_ptr<KernelInstance>(
        new Int8ReluInstance(uint8_t(node_.input(0)->quant->zero_point_at(0))));
  }
  std::string implementation() const override { return "mixq int8 relu (max with zero point)"; }

 private:
  const ir::Node& node_;
};

// Add of two int8 tensors of one shape and layout: real values add, and the sum is requantised
// to the output's grid (round half to even, saturate) or, where the sum leaves the int8 region
// (a network output, an fp32 consumer), written as fp32. Elementwise, so any layout works.
class Int8AddInstance final : public KernelInstance {
 public:
  Int8AddInstance(const ir::QuantParams& a, const ir::QuantParams& b, const ir::QuantParams* y)
      : out_scale_(y ? y->scale[0] : 1.0f),
        sa_(a.scale[0] / out_scale_),
        sb_(b.scale[0] / out_scale_),
        za_(float(a.zero_point_at(0))),
        zb_(float(b.zero_point_at(0))),
        zy_(y ? float(y->zero_point_at(0)) : 0.0f),
        quantised_output_(y != nullptr) {}
  Status execute(const ExecContext& ctx) const override {
    const auto* a = static_cast<const uint8_t*>(ctx.inputs[0].data);
    const auto* b = static_cast<const uint8_t*>(ctx.inputs[1].data);
    const int64_t n = shape_numel(ctx.outputs[0].shape);  // int8 layouts are unpadded
    if (!quantised_output_) {
      auto* y = static_cast<float*>(ctx.outputs[0].data);
#pragma omp parallel for
      for (int64_t i = 0; i < n; ++i) y[i] = sa_ * (float(a[i]) - za_) + sb_ * (float(b[i]) - zb_);
      return Status::Ok();
    }
    auto* y = static_cast<uint8_t*>(ctx.outputs[0].data);
#pragma omp parallel for
    for (int64_t i = 0; i < n; ++i) {
      const float q = std::nearbyint(sa_ * (float(a[i]) - za_) + sb_ * (float(b[i]) - zb_)) + zy_;
      y[i] = uint8_t(std::min(255.0f, std::max(0.0f, q)));
    }
    return Status::Ok();
  }

 private:
  float out_scale_, sa_, sb_, za_, zb_, zy_;
  bool quantised_output_;
};

class Int8AddKernel final : public Kernel {
 public:
  explicit Int8AddKernel(const ir::Node& node) : node_(node) {}
  Status prepare(int64_t) override {
    for (const ir::Value* v : {node_.input(0), node_.input(1)})
      if (v->dtype != DType::kUInt8 || !v->quant)
        return Internal(node_.describe() + ": int8 add needs u8 inputs, got " +
                        std::string(dtype_name(v->dtype)) + " for '" + v->name + "'");
    const ir::Value* y = node_.output(0);
    if (!(y->dtype == DType::kUInt8 && y->quant) && y->dtype != DType::kFloat32)
      return Internal(node_.describe() + ": int8 add writes u8 or f32, got " +
                      std::string(dtype_name(y->dtype)) + " for '" + y->name + "'");
    return Status::Ok();
  }
  Expected<std::unique_ptr<KernelInstance>> instantiate(int64_t) const override {
    const ir::Value* y = node_.output(0);
    return std::unique_ptr<KernelInstance>(
        new Int8AddInstance(*node_.input(0)->quant, *node_.input(1)->quant,
                            y->dtype == DType::kUInt8 ? &*y->quant : nullptr));
  }
  std::string implementation() const override { return "mixq int8 add (requantising)"; }

 private:
  const ir::Node& node_;
};

}  // namespace

bool int8_add_supports(const ir::Node& n, std::string* why) {
  const bool ok = n.op == ir::OpKind::kAdd && n.inputs.size() == 2 && n.input(0) && n.input(1) &&
                  !n.input(0)->is_constant() && !n.input(1)->is_constant() &&
                  n.input(0)->shape_known && n.input(0)->shape == n.input(1)->shape &&
                  n.input(0)->shape == n.output(0)->shape;
  if (!ok && why)
    *why = "int8 Add needs two computed inputs of the output's shape (no broadcasting)";
  return ok;
}

Expected<std::unique_ptr<Kernel>> make_int8_add_kernel(const ir::Node& node) {
  return std::unique_ptr<Kernel>(new Int8AddKernel(node));
}

bool int8_data_supports(const ir::Node& node, std::string* why) {
  switch (node.op) {
    case ir::OpKind::kRelu:
    case ir::OpKind::kConcat:
    case ir::OpKind::kReshape:
    case ir::OpKind::kFlatten:
    case ir::OpKind::kSqueeze:
    case ir::OpKind::kUnsqueeze:
    case ir::OpKind::kTranspose:
    case ir::OpKind::kIdentity:
      return true;
    default:
      if (why) *why = "no int8 kernel for " + std::string(ir::op_name(node.op));
      return false;
  }
}

Expected<std::unique_ptr<Kernel>> make_int8_data_kernel(const ir::Node& node) {
  if (node.op == ir::OpKind::kRelu) return std::unique_ptr<Kernel>(new Int8ReluKernel(node));
  if (node.op == ir::OpKind::kConcat) return std::unique_ptr<Kernel>(new ConcatKernel(node));
  return Internal("make_int8_data_kernel: " + node.describe());
}

bool binary_supports(const ir::Node& node, Precision precision, std::string* why) {
  if (node.op == ir::OpKind::kConcat &&
      (precision == Precision::kFP32 || precision == Precision::kINT8))
    return true;
  if (why) *why = "no oneDNN kernel";
  return false;
}

Expected<std::unique_ptr<Kernel>> make_binary_kernel(const ir::Node& node, Precision) {
  return std::unique_ptr<Kernel>(new ConcatKernel(node));
}

}  // namespace mixq::backends::cpu
