// Two chained int8 linear layers as one step (kernels::chain_gemm_s8): the FusedGemm that
// CudaBackend::fuse_for_execution gave a second layer (inputs 4 and 5: its weights and bias;
// "mixq.then_*": its activation; "mixq.mid_dtype"/"mixq.mid_scale": the intermediate's grid).
#include <cmath>
#include <cstring>

#include "backends/cuda/cuda_common.h"
#include "backends/cuda/cuda_util.h"
#include "backends/cuda/kernels.h"

namespace mixq::backends::cuda {
namespace {

// Symmetric s8 with one scale.
bool symmetric_s8(const ir::Value& v) {
  return v.dtype == DType::kInt8 && v.quant && v.quant->per_tensor() &&
         v.quant->zero_point_at(0) == 0 && v.quant->scale[0] > 0.0f;
}

// Constant int8 weights [N, K] with their scales, their codes stored as s8 or as f32.
bool int8_weights(const ir::Value& w) {
  return w.is_constant() && w.constant.rank() == 2 && w.dtype == DType::kInt8 && w.quant &&
         (w.constant.dtype() == DType::kInt8 || w.constant.dtype() == DType::kFloat32);
}

// Their s8 codes.
Expected<Tensor> weight_codes(const ir::Value& w, const std::string& what) {
  if (!int8_weights(w)) return Unsupported(what + " are not a quantised int8 constant matrix");
  return w.constant.dtype() == DType::kInt8 ? w.constant : w.constant.to(DType::kInt8);
}

float weight_scale(const ir::Value& w, int64_t n) {
  return w.quant->scale[w.quant->per_tensor() ? 0 : size_t(n)];
}

class ChainKernel final : public Kernel {
 public:
  ChainKernel(const ir::Node& node, Precision p) : node_(node), precision_(p) {}

  Status prepare(int64_t /*max_batch: the kernel has no per-batch state*/) override {
    if (precision_ != Precision::kINT8)
      return Unsupported(node_.describe() + ": chained linear layers run in int8 only");
    const ir::Value* x = node_.input(0);
    const ir::Value* w1 = node_.input(1);
    const ir::Value* b1 = node_.input(2);
    const ir::Value* w2 = node_.input(4);
    const ir::Value* b2 = node_.input(5);
    const ir::Value* y = node_.output(0);
    if (!x || !symmetric_s8(*x) || !x->shape_known || x->shape.empty())
      return Unsupported(node_.describe() + ": the input is not symmetric int8 of known shape");
    if (node_.input(3)) return Unsupported(node_.describe() + ": a chained layer has no residual");
    if (!w1 || !w2 || !y)
      return Internal(node_.describe() + ": chained layers need both weights and an output");
    MIXQ_ASSIGN_OR_RETURN(Tensor c1, weight_codes(*w1, "the first layer's weights"));
    MIXQ_ASSIGN_OR_RETURN(Tensor c2, weight_codes(*w2, "the second layer's weights"));
    const int64_t n1 = c1.dim(0), k1 = c1.dim(1), n2 = c2.dim(0);
    int64_t x_cols = 1;
    for (size_t d = 1; d < x->shape.size(); ++d) x_cols *= x->shape[d];
    if (x_cols != k1 || c2.dim(1) != n1)
      return InvalidArgument(node_.describe() + ": input " + shape_to_string(x->shape) +
                             ", weights " + shape_to_string(c1.shape()) + " and " +
                             shape_to_string(c2.shape()) + " do not chain");
    if (!kernels::chain_gemm_s8_eligible(k1, n1, n2))
      return Unsupported(node_.describe() + ": sizes k=" + std::to_string(k1) +
                         " n=" + std::to_string(n1) + " -> " + std::to_string(n2) +
                         " exceed the chained kernel's");
    if (fused_activation(node_, "mixq.") < 0 || fused_activation(node_, "mixq.then_") < 0)
      return Unsupported(node_.describe() + ": unknown activation");
    const std::string mid_dtype = node_.attr_string("mixq.mid_dtype", "");
    const float s_mid = node_.attr_float("mixq.mid_scale", 0.0f);
    if (mid_dtype != dtype_name(DType::kInt8) || !(s_mid > 0.0f) || !std::isfinite(s_mid))
      return InvalidArgument(node_.describe() +
                             ": mixq.mid_dtype must be int8 and mixq.mid_scale positive");
    if (stored_quantized(*y) && y->quant->zero_point_at(0) != 0)
      return Unsupported("quantised outputs must be symmetric (zero point 0) on the GPU");

    const int slice = kernels::chain_slice(int(n1)), width = kernels::kChainCluster * slice;
    const int kp = kernels::chain_k_padded(int(k1));
    std::vector<int8_t> p1(size_t(width) * kp, 0), p2(size_t(n2) * width, 0);
    const int8_t* s1 = c1.data<int8_t>();
    const int8_t* s2 = c2.data<int8_t>();
    for (int64_t n = 0; n < n1; ++n) std::memcpy(&p1[size_t(n) * kp], s1 + n * k1, size_t(k1));
    for (int64_t o = 0; o < n2; ++o) std::memcpy(&p2[size_t(o) * width], s2 + o * n1, size_t(n1));
    const float sx = x->quant->scale[0];
    std::vector<float> scale1(size_t(width), 0.0f), bias1(size_t(width), 0.0f);
    std::vector<float> scale2(size_t(n2), 0.0f), bias2(size_t(n2), 0.0f);
    const std::vector<float> bv1 = b1 ? b1->constant.to_float_vector() : std::vector<float>();
    const std::vector<float> bv2 = b2 ? b2->constant.to_float_vector() : std::vector<float>();
    if ((b1 && int64_t(bv1.size()) != n1) || (b2 && int64_t(bv2.size()) != n2))
      return InvalidArgument(node_.describe() + ": a bias does not have one value per output");
    for (int64_t n = 0; n < n1; ++n) {
      scale1[size_t(n)] = sx * weight_scale(*w1, n);
      if (b1) bias1[size_t(n)] = bv1[size_t(n)];
    }
    for (int64_t o = 0; o < n2; ++o) {
      scale2[size_t(o)] = s_mid * weight_scale(*w2, o);
      if (b2) bias2[size_t(o)] = bv2[size_t(o)];
    }
    MIXQ_ASSIGN_OR_RETURN(w1_, upload(p1.data(), p1.size()));
    MIXQ_ASSIGN_OR_RETURN(w2_, upload(p2.data(), p2.size()));
    MIXQ_ASSIGN_OR_RETURN(scale1_, upload(scale1.data(), scale1.size() * sizeof(float)));
    MIXQ_ASSIGN_OR_RETURN(bias1_, upload(bias1.data(), bias1.size() * sizeof(float)));
    MIXQ_ASSIGN_OR_RETURN(scale2_, upload(scale2.data(), scale2.size() * sizeof(float)));
    MIXQ_ASSIGN_OR_RETURN(bias2_, upload(bias2.data(), bias2.size() * sizeof(float)));

    kernels::ChainGemmParams& p = params_;
    p.k1 = int(k1);
    p.n1 = int(n1);
    p.n2 = int(n2);
    p.slice = slice;
    p.w1 = w1_.get();
    p.w2 = w2_.get();
    p.scale1 = static_cast<const float*>(scale1_.get());
    p.bias1 = static_cast<const float*>(bias1_.get());
    p.scale2 = static_cast<const float*>(scale2_.get());
    p.bias2 = static_cast<const float*>(bias2_.get());
    p.act1 = fused_activation(node_, "mixq.");
    p.lo1 = node_.attr_float("mixq.clip_min", -INFINITY);
    p.hi1 = node_.attr_float("mixq.clip_max", INFINITY);
    p.act2 = fused_activation(node_, "mixq.then_");
    p.lo2 = node_.attr_float("mixq.then_clip_min", -INFINITY);
    p.hi2 = node_.attr_float("mixq.then_clip_max", INFINITY);
    p.mid_grid.dt = kernel_dtype(DType::kInt8);
    p.mid_grid.scale = s_mid;
    p.mid_grid.inv_scale = 1.0f / s_mid;
    p.y_grid = value_grid(*y);
    impl_ =
        "mixq cuda chained linear layers s8 (tensor cores, s32 sums) -> s8 -> s8 dot (s32) -> " +
        std::string(dtype_name(y->dtype));
    return Status::Ok();
  }

  Expected<std::unique_ptr<KernelInstance>> instantiate(int64_t batch) const override;
  std::string implementation() const override { return impl_; }

  const ir::Node& node_;
  Precision precision_;
  DeviceBuffer w1_, w2_, scale1_, bias1_, scale2_, bias2_;
  kernels::ChainGemmParams params_;
  std::string impl_;
};

class ChainInstance final : public KernelInstance {
 public:
  ChainInstance(const ChainKernel& k, int64_t m) : k_(k), m_(m) {}
  bool waits_for_predecessor() const override { return true; }
  Status execute(const ExecContext& ctx) const override {
    kernels::ChainGemmParams p = k_.params_;
    p.m = m_;
    p.release_next = ctx.successor_waits && overlap_enabled();
    const cudaError_t e = kernels::chain_gemm_s8(ctx.inputs[0].data, ctx.outputs[0].data, p,
                                                 resources_of(ctx).stream);
    if (e != cudaSuccess)
      return cuda_status(e, "chained linear layers", __FILE__, __LINE__)
          .with_context(k_.node_.describe());
    return Status::Ok();
  }

 private:
  const ChainKernel& k_;
  int64_t m_;
};

Expected<std::unique_ptr<KernelInstance>> ChainKernel::instantiate(int64_t batch) const {
  if (!w1_.get()) return Internal(node_.describe() + ": instantiate before prepare");
  const int64_t m = at_batch(node_.input(0)->shape, batch)[0];
  return std::unique_ptr<KernelInstance>(new ChainInstance(*this, m));
}

}  // namespace

bool gemm_can_chain(const ir::Node& first, const ir::Node& second) {
  const ir::Value* x = first.input(0);
  const ir::Value* mid = first.output(0);
  const ir::Value* w1 = first.input(1);
  const ir::Value* w2 = second.input(1);
  if (first.op != ir::OpKind::kFusedGemm || second.op != ir::OpKind::kFusedGemm ||
      first.precision != Precision::kINT8 || second.precision != Precision::kINT8 ||
      first.input(3) || second.input(3) || second.input(0) != mid ||
      second.has_attr("mixq.flatten_input") || !x || !mid || !w1 || !w2 || !symmetric_s8(*x) ||
      !symmetric_s8(*mid) || !second.output(0) || fused_activation(first) < 0 ||
      fused_activation(second) < 0 || !int8_weights(*w1) || !int8_weights(*w2))
    return false;
  const int64_t n1 = w1->constant.dim(0), k1 = w1->constant.dim(1), n2 = w2->constant.dim(0);
  return w2->constant.dim(1) == n1 && kernels::chain_gemm_s8_eligible(k1, n1, n2);
}

Expected<std::unique_ptr<Kernel>> make_chain_kernel(const ir::Node& node, Precision precision) {
  return std::unique_ptr<Kernel>(new ChainKernel(node, precision));
}

}  // namespace mixq::backends::cuda
