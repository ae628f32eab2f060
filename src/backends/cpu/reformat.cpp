// Precision and layout boundaries on oneDNN reorders: quantize (f32 -> u8: round(x / s) + z),
// dequantize (u8 -> f32: (q - z) * s), requantize (u8 -> u8) and layout changes, each one pass.
#include "backends/cpu/onednn.h"

namespace mixq::backends::cpu {
namespace {

using dnnl::memory;

dnnl::primitive_attr reformat_attr(const ir::Value& x, const ir::Value& y) {
  dnnl::primitive_attr attr = base_attr();
  const bool xq = x.quant && x.dtype != DType::kFloat32;
  const bool yq = y.quant && y.dtype != DType::kFloat32;
  // real = (q_x - z_x) * s_x;  q_y = real / s_y + z_y
  const float sx = xq ? x.quant->scale[0] : 1.0f;
  const float sy = yq ? y.quant->scale[0] : 1.0f;
  if (sx != sy) attr.set_output_scales(0, {sx / sy});
  if (xq && x.quant->zero_point_at(0) != 0)
    attr.set_zero_points(DNNL_ARG_SRC, 0, {x.quant->zero_point_at(0)});
  if (yq && y.quant->zero_point_at(0) != 0)
    attr.set_zero_points(DNNL_ARG_DST, 0, {y.quant->zero_point_at(0)});
  return attr;
}

Expected<dnnl::reorder::primitive_desc> make_pd(const ir::Node& node, int64_t batch) {
  const ir::Value* x = node.input(0);
  const ir::Value* y = node.output(0);
  const Shape xs = at_batch(x->shape, batch);
  std::optional<dnnl::reorder::primitive_desc> pd;
  Status s = guarded(node.describe(), [&] {
    pd.emplace(cpu_engine(), desc_of(*x, xs), cpu_engine(), desc_of(*y, xs), reformat_attr(*x, *y));
  });
  if (!s.ok()) return s;
  return *pd;
}

class ReorderKernel final : public Kernel {
 public:
  explicit ReorderKernel(const ir::Node& node) : node_(node) {}
  Status prepare(int64_t max_batch) override {
    MIXQ_ASSIGN_OR_RETURN(auto pd, make_pd(node_, max_batch));
    impl_ = std::string("onednn reorder ") + pd.impl_info_str();
    return Status::Ok();
  }
  Expected<std::unique_ptr<KernelInstance>> instantiate(int64_t batch) const override {
    MIXQ_ASSIGN_OR_RETURN(auto pd, make_pd(node_, batch));
    return std::unique_ptr<KernelInstance>(
        new PrimitiveInstance(node_, dnnl::reorder(pd), {{DNNL_ARG_FROM, pd.src_desc()}},
                              {DNNL_ARG_TO, pd.dst_desc()}, pd.scratchpad_desc()));
  }
  std::string implementation() const override { return impl_; }

 private:
  const ir::Node& node_;
  std::string impl_ = "onednn reorder";
};

}  // namespace

bool reformat_supports(const ir::Node& node, Precision, std::string* why) {
  const ir::Value* x = node.input(0);
  const ir::Value* y = node.output(0);
  if (!dnnl_has_dtype(x->dtype) || !dnnl_has_dtype(y->dtype)) {
    if (why)
      *why = "oneDNN has no " + std::string(dtype_name(x->dtype)) + " or " +
             std::string(dtype_name(y->dtype));
    return false;
  }
  return true;
}

Expected<std::unique_ptr<Kernel>> make_reformat_kernel(const ir::Node& node, Precision) {
  return std::unique_ptr<Kernel>(new ReorderKernel(node));
}

}  // namespace mixq::backends::cpu
