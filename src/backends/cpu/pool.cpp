// CPU pooling on oneDNN: MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool in fp32 and int8
// (u8 in and out with the same parameters: max is exact; an average of q equals the quantised
// average when no zero padding is counted).
#include "backends/cpu/onednn.h"

namespace mixq::backends::cpu {
namespace {

using dnnl::memory;

struct PoolGeometry {
  dnnl::algorithm algorithm = dnnl::algorithm::pooling_max;
  memory::dims kernel, strides, dilation, pad_l, pad_r;
};

Status pool_geometry(const ir::Node& n, const Shape& x, const Shape& y, PoolGeometry& g) {
  const size_t spatial = x.size() - 2;
  const bool global = n.op == ir::OpKind::kGlobalAveragePool || n.op == ir::OpKind::kGlobalMaxPool;
  const bool max = n.op == ir::OpKind::kMaxPool || n.op == ir::OpKind::kGlobalMaxPool;
  if (n.op == ir::OpKind::kMaxPool && n.outputs.size() > 1 && n.outputs[1])
    return Unsupported("MaxPool with an Indices output");
  if (n.attr_int("storage_order", 0) != 0) return Unsupported("storage_order=1");
  std::vector<int64_t> k, s, d, pads;
  if (global) {
    k.assign(x.begin() + 2, x.end());
    s.assign(spatial, 1);
    d.assign(spatial, 1);
    pads.assign(2 * spatial, 0);
  } else {
    k = n.attr_ints("kernel_shape");
    s = n.attr_ints("strides", std::vector<int64_t>(spatial, 1));
    d = n.attr_ints("dilations", std::vector<int64_t>(spatial, 1));
    pads = n.attr_ints("pads", std::vector<int64_t>(2 * spatial, 0));
    if (k.size() != spatial || s.size() != spatial || d.size() != spatial ||
        pads.size() != 2 * spatial)
      return InvalidArgument("pooling attributes do not match the spatial rank");
  }
  const std::string auto_pad = n.attr_string("auto_pad", "NOTSET");
  const bool count_pad = n.attr_int("count_include_pad", 0) != 0;
  g.algorithm = max ? dnnl::algorithm::pooling_max
                    : (count_pad ? dnnl::algorithm::pooling_avg_include_padding
                                 : dnnl::algorithm::pooling_avg_exclude_padding);
  g.kernel.assign(k.begin(), k.end());
  g.strides.assign(s.begin(), s.end());
  g.dilation.clear();
  g.pad_l.clear();
  g.pad_r.clear();
  for (size_t i = 0; i < spatial; ++i) {
    g.dilation.push_back(d[i] - 1);
    int64_t pl = pads[i];
    const int64_t in = x[2 + i], out = y[2 + i];
    const int64_t extent = (k[i] - 1) * d[i] + 1;
    if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
      const int64_t total = std::max<int64_t>((out - 1) * s[i] + extent - in, 0);
      pl = auto_pad == "SAME_UPPER" ? total / 2 : total - total / 2;
    } else if (auto_pad == "VALID") {
      pl = 0;
    }
    // The right padding that gives ONNX's output size (covers ceil_mode).
    const int64_t pr = (out - 1) * s[i] + extent - in - pl;
    if (pr < 0) return InvalidArgument("pooling output size does not match its input");
    if (!max && count_pad && pr > pads[spatial + i])
      return Unsupported("average pooling with ceil_mode and count_include_pad");
    g.pad_l.push_back(pl);
    g.pad_r.push_back(pr);
  }
  return Status::Ok();
}

Expected<dnnl::pooling_v2_forward::primitive_desc> make_pd(const ir::Node& node, int64_t batch,
                                                           DType x_dtype, DType y_dtype) {
  const ir::Value* x = node.input(0);
  const ir::Value* y = node.output(0);
  const Shape xs = at_batch(x->shape, batch), ys = at_batch(y->shape, batch);
  PoolGeometry g;
  MIXQ_RETURN_IF_ERROR(pool_geometry(node, xs, ys, g));
  std::optional<dnnl::pooling_v2_forward::primitive_desc> pd;
  Status s = guarded(node.describe(), [&] {
    dnnl::pooling_v2_forward::desc d(
        dnnl::prop_kind::forward_inference, g.algorithm, desc_of(x_dtype, x->layout, xs),
        desc_of(y_dtype, y->layout, ys), g.strides, g.kernel, g.dilation, g.pad_l, g.pad_r);
    pd.emplace(d, base_attr(), cpu_engine());
  });
  if (!s.ok()) return s;
  return *pd;
}

class PoolKernel final : public Kernel {
 public:
  explicit PoolKernel(const ir::Node& node) : node_(node) {}
  Status prepare(int64_t max_batch) override {
    MIXQ_ASSIGN_OR_RETURN(auto pd,
                          make_pd(node_, max_batch, node_.input(0)->dtype, node_.output(0)->dtype));
    impl_ = std::string("onednn ") + pd.impl_info_str();
    return Status::Ok();
  }
  Expected<std::unique_ptr<KernelInstance>> instantiate(int64_t batch) const override {
    MIXQ_ASSIGN_OR_RETURN(auto pd,
                          make_pd(node_, batch, node_.input(0)->dtype, node_.output(0)->dtype));
    return std::unique_ptr<KernelInstance>(
        new PrimitiveInstance(node_, dnnl::pooling_v2_forward(pd), {{DNNL_ARG_SRC, pd.src_desc()}},
                              {DNNL_ARG_DST, pd.dst_desc()}, pd.scratchpad_desc()));
  }
  std::string implementation() const override { return impl_; }

 private:
  const ir::Node& node_;
  std::string impl_ = "onednn pooling";
};

}  // namespace

bool pool_supports(const ir::Node& node, Precision precision, std::string* why) {
  auto fail = [&](const std::string& m) {
    if (why) *why = m;
    return false;
  };
  if (precision != Precision::kFP32 && precision != Precision::kINT8)
    return fail("the cpu backend pools in fp32 and int8 only");
  const ir::Value* x = node.input(0);
  const ir::Value* y = node.output(0);
  if (!x->shape_known || !y->shape_known || x->shape.size() < 3 || x->shape.size() > 5)
    return fail("pooling input rank");
  const bool avg = node.op == ir::OpKind::kAveragePool || node.op == ir::OpKind::kGlobalAveragePool;
  if (precision == Precision::kINT8 && avg && x->quant && x->quant->zero_point_at(0) != 0 &&
      node.attr_int("count_include_pad", 0) != 0)
    return fail("int8 average pooling that counts zero padding needs a zero point of 0");
  const DType dt = precision == Precision::kINT8 ? DType::kUInt8 : DType::kFloat32;
  auto pd = make_pd(node, 1, dt, dt);
  if (!pd.ok()) return fail(pd.status().message());
  return true;
}

Expected<std::unique_ptr<Kernel>> make_pool_kernel(const ir::Node& node, Precision) {
  return std::unique_ptr<Kernel>(new PoolKernel(node));
}

}  // namespace mixq::backends::cpu
