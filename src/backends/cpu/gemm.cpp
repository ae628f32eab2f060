// CPU linear layers on oneDNN matmul: FusedGemm y[M,N] = x[M,K] * W[N,K]^T + b, relu/clip, in
// fp32 and int8 (u8 x with zero point, s8 W with per-N scales, u8 or f32 y).
#include "backends/cpu/onednn.h"

namespace mixq::backends::cpu {
namespace {

using dnnl::memory;

class GemmKernel final : public Kernel {
 public:
  GemmKernel(const ir::Node& node, Precision precision) : node_(node), precision_(precision) {}
  Status prepare(int64_t max_batch) override;
  Expected<std::unique_ptr<KernelInstance>> instantiate(int64_t batch) const override;
  std::string implementation() const override { return impl_; }

  Expected<dnnl::matmul::primitive_desc> make_pd(int64_t m, const memory::desc* weights) const;
  Expected<memory> pack_weights(const memory::desc& desc) const;

  const ir::Node& node_;
  Precision precision_;
  int64_t n_ = 0, k_ = 0;
  dnnl::primitive_attr attr_;
  memory::desc weights_desc_;
  memory weights_, bias_;
  std::string impl_ = "onednn matmul";
};

Expected<dnnl::matmul::primitive_desc> GemmKernel::make_pd(int64_t m,
                                                           const memory::desc* weights) const {
  const ir::Value* x = node_.input(0);
  const ir::Value* y = node_.output(0);
  const bool int8 = precision_ == Precision::kINT8;
  const memory::desc xd = desc_of(*x, {m, k_});
  const memory::desc yd = desc_of(*y, {m, n_});
  const memory::desc wd =
      weights ? *weights
              : memory::desc({k_, n_}, int8 ? memory::data_type::s8 : memory::data_type::f32,
                             memory::format_tag::any);
  const memory::desc bd =
      node_.input(2) ? memory::desc({1, n_}, memory::data_type::f32, memory::format_tag::ab)
                     : memory::desc();
  std::optional<dnnl::matmul::primitive_desc> pd;
  Status s = guarded(node_.describe(), [&] {
    dnnl::matmul::desc d(xd, wd, bd, yd);
    pd.emplace(d, attr_, cpu_engine());
  });
  if (!s.ok()) return s;
  return *pd;
}

Status GemmKernel::prepare(int64_t max_batch) {
  const ir::Value* x = node_.input(0);
  const ir::Value* w = node_.input(1);
  const ir::Value* b = node_.input(2);
  if (!w || !w->is_constant() || w->constant.rank() != 2)
    return Unsupported("weights must be a constant matrix");
  if (node_.input(3)) return Unsupported("a residual input on a linear layer");
  n_ = w->constant.dim(0);
  k_ = w->constant.dim(1);
  if (!x->shape_known || x->shape.size() != 2 || (x->shape[1] >= 0 && x->shape[1] != k_))
    return InvalidArgument("input " + shape_to_string(x->shape) + " does not match weights [" +
                           std::to_string(n_) + "," + std::to_string(k_) + "]");
  const bool int8 = precision_ == Precision::kINT8;
  attr_ = base_attr();
  std::vector<float> bias_values;
  if (b) bias_values = b->constant.to_float_vector();
  float act_scale = 1.0f;
  if (int8) {
    MIXQ_ASSIGN_OR_RETURN(act_scale, set_int8_epilogue(node_, attr_, bias_values));
  }
  dnnl::post_ops ops;
  append_activation(node_, act_scale, ops);
  attr_.set_post_ops(ops);
  MIXQ_ASSIGN_OR_RETURN(auto pd, make_pd(max_batch, nullptr));
  impl_ = std::string("onednn matmul ") + pd.impl_info_str() + (int8 ? " int8" : " fp32");
  weights_desc_ = pd.weights_desc();
  MIXQ_ASSIGN_OR_RETURN(weights_, pack_weights(weights_desc_));
  if (b) {
    const memory::desc bd({1, n_}, memory::data_type::f32, memory::format_tag::ab);
    MIXQ_ASSIGN_OR_RETURN(bias_,
                          reorder_constant(node_.describe() + " bias", bd, bias_values.data(), bd));
  }
  return Status::Ok();
}

Expected<memory> GemmKernel::pack_weights(const memory::desc& desc) const {
  // W is [N, K] row-major, i.e. the K x N matrix B in column-major ("ba").
  const memory::desc plain(
      {k_, n_}, precision_ == Precision::kINT8 ? memory::data_type::s8 : memory::data_type::f32,
      memory::format_tag::ba);
  return reorder_constant(node_.describe() + " weights", plain, node_.input(1)->constant.raw(),
                          desc);
}

Expected<std::unique_ptr<KernelInstance>> GemmKernel::instantiate(int64_t batch) const {
  const ir::Value* x = node_.input(0);
  const int64_t m = x->shape[0] < 0 ? batch : x->shape[0];
  // As for convolutions: share the packed weights when this batch's implementation agrees.
  MIXQ_ASSIGN_OR_RETURN(auto pd, make_pd(m, nullptr));
  memory weights = weights_;
  if (pd.weights_desc() != weights_desc_) {
    MIXQ_ASSIGN_OR_RETURN(weights, pack_weights(pd.weights_desc()));
  }
  std::unordered_map<int, memory> constants = {{DNNL_ARG_WEIGHTS, weights}};
  if (bias_) constants[DNNL_ARG_BIAS] = bias_;
  return std::unique_ptr<KernelInstance>(
      new PrimitiveInstance(node_, dnnl::matmul(pd), {{DNNL_ARG_SRC, pd.src_desc()}},
                            {DNNL_ARG_DST, pd.dst_desc()}, pd.scratchpad_desc(), constants));
}

}  // namespace

bool gemm_supports(const ir::Node& node, Precision precision, std::string* why) {
  auto fail = [&](const std::string& m) {
    if (why) *why = m;
    return false;
  };
  if (node.op != ir::OpKind::kFusedGemm) return fail("not a linear layer");
  if (precision != Precision::kFP32 && precision != Precision::kINT8)
    return fail("the cpu backend runs linear layers in fp32 and int8 only");
  const ir::Value* x = node.input(0);
  const ir::Value* w = node.input(1);
  if (!w || !w->is_constant() || w->constant.rank() != 2)
    return fail("weights are not a constant matrix");
  if (!x->shape_known || x->shape.size() != 2) return fail("input is not a matrix");
  if (node.input(3)) return fail("residual inputs on linear layers are not supported");
  return true;
}

Expected<std::unique_ptr<Kernel>> make_gemm_kernel(const ir::Node& node, Precision precision) {
  return std::unique_ptr<Kernel>(new GemmKernel(node, precision));
}

}  // namespace mixq::backends::cpu
