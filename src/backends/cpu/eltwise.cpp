// CPU elementwise ops on oneDNN, fp32 in any layout: unary activations (eltwise) and broadcast
// Add/Sub/Mul/Div/Max/Min (binary).
#include "backends/cpu/onednn.h"

namespace mixq::backends::cpu {
namespace {

using dnnl::memory;

struct EltwiseSpec {
  dnnl::algorithm algorithm;
  float alpha = 0, beta = 0;
};

std::optional<EltwiseSpec> eltwise_spec(const ir::Node& n) {
  using a = dnnl::algorithm;
  switch (n.op) {
    case ir::OpKind::kRelu:
      return EltwiseSpec{a::eltwise_relu, 0, 0};
    case ir::OpKind::kLeakyRelu:
      return EltwiseSpec{a::eltwise_relu, n.attr_float("alpha", 0.01f), 0};
    case ir::OpKind::kSigmoid:
      return EltwiseSpec{a::eltwise_logistic, 0, 0};
    case ir::OpKind::kTanh:
      return EltwiseSpec{a::eltwise_tanh, 0, 0};
    case ir::OpKind::kElu:
      return EltwiseSpec{a::eltwise_elu, n.attr_float("alpha", 1.0f), 0};
    case ir::OpKind::kHardSwish:
      return EltwiseSpec{a::eltwise_hardswish, 0, 0};
    case ir::OpKind::kSqrt:
      return EltwiseSpec{a::eltwise_sqrt, 0, 0};
    case ir::OpKind::kExp:
      return EltwiseSpec{a::eltwise_exp, 0, 0};
    case ir::OpKind::kAbs:
      return EltwiseSpec{a::eltwise_abs, 0, 0};
    default:
      return std::nullopt;
  }
}

std::optional<dnnl::algorithm> binary_algorithm(ir::OpKind op) {
  using a = dnnl::algorithm;
  switch (op) {
    case ir::OpKind::kAdd:
      return a::binary_add;
    case ir::OpKind::kSub:
      return a::binary_sub;
    case ir::OpKind::kMul:
      return a::binary_mul;
    case ir::OpKind::kDiv:
      return a::binary_div;
    default:
      return std::nullopt;
  }
}

// The input's dims broadcast to the output's rank (numpy aligns trailing dimensions).
memory::desc broadcast_desc(const ir::Value& v, const Shape& shape, size_t rank) {
  Shape s(rank - shape.size(), 1);
  s.insert(s.end(), shape.begin(), shape.end());
  if (v.layout != ir::Layout::kPlain) return desc_of(v, s);
  return memory::desc(dims_of(s), dnnl_dtype(v.dtype), plain_tag(s.size()));
}

Expected<std::unique_ptr<KernelInstance>> make_instance(const ir::Node& n, int64_t batch,
                                                        std::string* impl) {
  const ir::Value* x = n.input(0);
  const ir::Value* y = n.output(0);
  const Shape ys = at_batch(y->shape, batch);
  std::unique_ptr<KernelInstance> inst;
  Status s = guarded(n.describe(), [&] {
    const memory::desc yd = desc_of(*y, ys);
    if (auto spec = eltwise_spec(n)) {
      const memory::desc xd = desc_of(*x, at_batch(x->shape, batch));
      dnnl::eltwise_forward::desc d(dnnl::prop_kind::forward_inference, spec->algorithm, xd,
                                    spec->alpha, spec->beta);
      dnnl::eltwise_forward::primitive_desc pd(d, base_attr(), cpu_engine());
      if (impl) *impl = std::string("onednn eltwise ") + pd.impl_info_str();
      inst.reset(new PrimitiveInstance(n, dnnl::eltwise_forward(pd),
                                       {{DNNL_ARG_SRC, pd.src_desc()}},
                                       {DNNL_ARG_DST, pd.dst_desc()}, pd.scratchpad_desc()));
    } else {
      const memory::desc ad = broadcast_desc(*x, at_batch(x->shape, batch), ys.size());
      const memory::desc bd =
          broadcast_desc(*n.input(1), at_batch(n.input(1)->shape, batch), ys.size());
      dnnl::binary::desc d(*binary_algorithm(n.op), ad, bd, yd);
      dnnl::binary::primitive_desc pd(d, base_attr(), cpu_engine());
      if (impl) *impl = std::string("onednn binary ") + pd.impl_info_str();
      inst.reset(new PrimitiveInstance(
          n, dnnl::binary(pd), {{DNNL_ARG_SRC_0, pd.src_desc(0)}, {DNNL_ARG_SRC_1, pd.src_desc(1)}},
          {DNNL_ARG_DST, pd.dst_desc()}, pd.scratchpad_desc()));
    }
  });
  if (!s.ok()) return s;
  return inst;
}

class EltwiseKernel final : public Kernel {
 public:
  explicit EltwiseKernel(const ir::Node& node) : node_(node) {}
  Status prepare(int64_t max_batch) override {
    MIXQ_ASSIGN_OR_RETURN(auto inst, make_instance(node_, max_batch, &impl_));
    return Status::Ok();
  }
  Expected<std::unique_ptr<KernelInstance>> instantiate(int64_t batch) const override {
    return make_instance(node_, batch, nullptr);
  }
  std::string implementation() const override { return impl_; }

 private:
  const ir::Node& node_;
  std::string impl_;
};

}  // namespace

bool eltwise_supports(const ir::Node& n, Precision precision, std::string* why) {
  auto fail = [&](const std::string& m) {
    if (why) *why = m;
    return false;
  };
  if (precision != Precision::kFP32) return fail("oneDNN elementwise kernels here are fp32");
  if (!eltwise_spec(n) && !binary_algorithm(n.op)) return fail("not an elementwise op");
  for (const ir::Value* v : n.inputs)
    if (!v || v->dtype != DType::kFloat32 || !v->shape_known)
      return fail("inputs must be f32 with known shapes");
  if (binary_algorithm(n.op)) {
    if (n.inputs.size() != 2) return fail("binary ops take two inputs");
    const Shape& y = n.output(0)->shape;
    // The first input must have the output's shape (oneDNN broadcasts only the second).
    if (n.input(0)->shape != y) return fail("only the second input may broadcast");
    if (n.input(1)->shape.size() > y.size()) return fail("rank");
  }
  return true;
}

Expected<std::unique_ptr<Kernel>> make_eltwise_kernel(const ir::Node& n) {
  return std::unique_ptr<Kernel>(new EltwiseKernel(n));
}

}  // namespace mixq::backends::cpu
