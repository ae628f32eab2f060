// CPU linear layers on oneDNN matmul: FusedGemm y[M,N] = x[M,K] * W[N,K]^T + b, relu/clip, in
// fp32 and int8 (u8 x with zero point, s8 W with per-N scales, u8 or f32 y).
#include <cmath>
#include <cstring>

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

class GemmInstance final : public KernelInstance {
 public:
  GemmInstance(const GemmKernel& k, dnnl::matmul::primitive_desc pd, memory weights)
      : kernel_(k),
        pd_(pd),
        prim_(pd),
        weights_(weights),
        scratch_(pd.scratchpad_desc().get_size()) {}
  Status execute(const ExecContext& ctx) const override {
    memory src(pd_.src_desc(), cpu_engine(), ctx.inputs[0].data);
    memory dst(pd_.dst_desc(), cpu_engine(), ctx.outputs[0].data);
    memory scratch(pd_.scratchpad_desc(), cpu_engine(), ctx.scratch);
    std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, src},
                                            {DNNL_ARG_WEIGHTS, weights_},
                                            {DNNL_ARG_DST, dst},
                                            {DNNL_ARG_SCRATCHPAD, scratch}};
    if (kernel_.bias_) args[DNNL_ARG_BIAS] = kernel_.bias_;
    return guarded(kernel_.node_.describe(), [&] { prim_.execute(stream_of(ctx), args); });
  }
  size_t scratch_bytes() const override { return scratch_; }

 private:
  const GemmKernel& kernel_;
  dnnl::matmul::primitive_desc pd_;
  dnnl::matmul prim_;
  memory weights_;
  size_t scratch_;
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
  const ir::Value* y = node_.output(0);
  if (!w || !w->is_constant() || w->constant.rank() != 2)
    return Unsupported("weights must be a constant matrix");
  if (node_.input(3)) return Unsupported("a residual input on a linear layer");
  n_ = w->constant.dim(0);
  k_ = w->constant.dim(1);
  if (!x->shape_known || x->shape.size() != 2 || (x->shape[1] >= 0 && x->shape[1] != k_))
    return InvalidArgument("input " + shape_to_string(x->shape) + " does not match weights [" +
                           std::to_string(n_) + "," + std::to_string(k_) + "]");
  const bool int8 = precision_ == Precision::kINT8;
  const bool y_quantized = y->dtype != DType::kFloat32;
  attr_ = base_attr();
  std::vector<float> bias_values;
  if (b) bias_values = b->constant.to_float_vector();
  float act_scale = 1.0f;
  if (int8) {
    if (!x->quant || !w->quant || w->dtype != DType::kInt8)
      return Internal("int8 linear layer without parameters");
    const float sx = x->quant->scale[0];
    const float sy = y_quantized ? y->quant->scale[0] : 1.0f;
    std::vector<float> scales(static_cast<size_t>(n_));
    for (int64_t c = 0; c < n_; ++c) {
      const float sw = w->quant->scale[w->quant->per_tensor() ? 0 : size_t(c)];
      scales[size_t(c)] = sx * sw / sy;
      // oneDNN 2.x adds the bias before the output scale: keep it in accumulator units.
      if (b) bias_values[size_t(c)] /= sx * sw;
    }
    attr_.set_output_scales(1 << 1, scales);
    if (x->quant->zero_point_at(0) != 0)
      attr_.set_zero_points(DNNL_ARG_SRC, 0, {x->quant->zero_point_at(0)});
    if (y_quantized && y->quant->zero_point_at(0) != 0)
      attr_.set_zero_points(DNNL_ARG_DST, 0, {y->quant->zero_point_at(0)});
    act_scale = 1.0f / sy;
  }
  dnnl::post_ops ops;
  const std::string act = node_.attr_string("mixq.activation", "none");
  if (act == "relu")
    ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
  else if (act == "clip") {
    const float lo = node_.attr_float("mixq.clip_min", -INFINITY) * act_scale;
    const float hi = node_.attr_float("mixq.clip_max", INFINITY) * act_scale;
    ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_clip, std::isfinite(lo) ? lo : -3.4e38f,
                       std::isfinite(hi) ? hi : 3.4e38f);
  }
  attr_.set_post_ops(ops);
  MIXQ_ASSIGN_OR_RETURN(auto pd, make_pd(max_batch, nullptr));
  impl_ = std::string("onednn matmul ") + pd.impl_info_str() + (int8 ? " int8" : " fp32");
  weights_desc_ = pd.weights_desc();
  MIXQ_ASSIGN_OR_RETURN(weights_, pack_weights(weights_desc_));
  return guarded(node_.describe() + " weights", [&] {
    if (b) {
      bias_ = memory(memory::desc({1, n_}, memory::data_type::f32, memory::format_tag::ab),
                     cpu_engine());
      std::memcpy(bias_.get_data_handle(), bias_values.data(), size_t(n_) * sizeof(float));
    }
  });
}

Expected<memory> GemmKernel::pack_weights(const memory::desc& desc) const {
  const ir::Value* w = node_.input(1);
  memory packed;
  Status s = guarded(node_.describe() + " weights", [&] {
    // W is [N, K] row-major, i.e. the K x N matrix B in column-major ("ba").
    const memory::desc plain(
        {k_, n_}, precision_ == Precision::kINT8 ? memory::data_type::s8 : memory::data_type::f32,
        memory::format_tag::ba);
    memory src(plain, cpu_engine(), const_cast<void*>(w->constant.raw()));
    packed = memory(desc, cpu_engine());
    dnnl::stream stream(cpu_engine());
    dnnl::reorder(src, packed).execute(stream, src, packed);
    stream.wait();
  });
  if (!s.ok()) return s;
  return packed;
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
  return std::unique_ptr<KernelInstance>(new GemmInstance(*this, pd, weights));
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
