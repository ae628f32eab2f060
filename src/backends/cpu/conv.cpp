// CPU convolutions on oneDNN: FusedConv (bias, residual sum, relu/clip) in fp32 and int8.
// int8: u8 activations (zero point 0 or 128), s8 weights with per-channel scales, f32 bias
// pre-divided by the input and weight scales (oneDNN 2.x adds the bias before the output scale),
// u8 or f32 output.
#include <cmath>

#include "backends/cpu/onednn.h"

namespace mixq::backends::cpu {
namespace {

using dnnl::memory;

struct Geometry {
  memory::dims strides, dilates, pad_l, pad_r;
  int64_t groups = 1;
};

Status geometry(const ir::Node& n, const Shape& x, const Shape& w, Geometry& g) {
  const size_t spatial = x.size() - 2;
  if (spatial < 1 || spatial > 3 || w.size() != x.size())
    return Unsupported("convolution of rank " + std::to_string(x.size()));
  auto strides = n.attr_ints("strides", std::vector<int64_t>(spatial, 1));
  auto dil = n.attr_ints("dilations", std::vector<int64_t>(spatial, 1));
  auto pads = n.attr_ints("pads", std::vector<int64_t>(2 * spatial, 0));
  const std::string auto_pad = n.attr_string("auto_pad", "NOTSET");
  g.groups = n.attr_int("group", 1);
  if (strides.size() != spatial || dil.size() != spatial || pads.size() != 2 * spatial)
    return InvalidArgument("strides/dilations/pads do not match the spatial rank");
  g.strides.assign(strides.begin(), strides.end());
  g.pad_l.assign(spatial, 0);
  g.pad_r.assign(spatial, 0);
  g.dilates.clear();
  for (size_t i = 0; i < spatial; ++i) g.dilates.push_back(dil[i] - 1);
  for (size_t i = 0; i < spatial; ++i) {
    const int64_t in = x[2 + i], k = w[2 + i];
    if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
      const int64_t out = (in + strides[i] - 1) / strides[i];
      const int64_t total =
          std::max<int64_t>((out - 1) * strides[i] + (k - 1) * dil[i] + 1 - in, 0);
      const int64_t small = total / 2, big = total - small;
      g.pad_l[i] = auto_pad == "SAME_UPPER" ? small : big;
      g.pad_r[i] = auto_pad == "SAME_UPPER" ? big : small;
    } else if (auto_pad == "VALID") {
      // no padding
    } else {
      g.pad_l[i] = pads[i];
      g.pad_r[i] = pads[spatial + i];
    }
  }
  return Status::Ok();
}

// oneDNN's weight dims: [G, OC/G, IC/G, k...] for grouped convolutions.
memory::dims weight_dims(const Shape& w, int64_t groups) {
  memory::dims d = dims_of(w);
  if (groups > 1) {
    d.insert(d.begin(), groups);
    d[1] /= groups;
  }
  return d;
}

// Everything about one FusedConv that does not depend on the batch.
class ConvKernel final : public Kernel {
 public:
  ConvKernel(const ir::Node& node, Precision precision) : node_(node), precision_(precision) {}

  Status prepare(int64_t max_batch) override;
  Expected<std::unique_ptr<KernelInstance>> instantiate(int64_t batch) const override;
  std::string implementation() const override { return impl_; }
  int accumulates_into_output_from() const override { return node_.input(3) ? 3 : -1; }

  // The primitive descriptor for `batch`; `weights` pins the packed weights' layout.
  Expected<dnnl::convolution_forward::primitive_desc> make_pd(int64_t batch,
                                                              const memory::desc* weights) const;
  Expected<memory> pack_weights(const memory::desc& desc) const;

  const ir::Node& node_;
  Precision precision_;
  Geometry geometry_;
  dnnl::primitive_attr attr_;
  memory::desc weights_desc_;
  memory weights_, bias_;
  std::string impl_ = "onednn";
};

Expected<dnnl::convolution_forward::primitive_desc> ConvKernel::make_pd(
    int64_t batch, const memory::desc* weights) const {
  const ir::Value* x = node_.input(0);
  const ir::Value* w = node_.input(1);
  const ir::Value* y = node_.output(0);
  const Shape xs = at_batch(x->shape, batch), ys = at_batch(y->shape, batch);
  const Shape& ws = w->constant.shape();
  const memory::data_type wdt =
      precision_ == Precision::kINT8 ? memory::data_type::s8 : memory::data_type::f32;
  const memory::desc wd =
      weights ? *weights
              : memory::desc(weight_dims(ws, geometry_.groups), wdt, memory::format_tag::any);
  const memory::desc xd = desc_of(*x, xs);
  const memory::desc yd = desc_of(*y, ys);
  const bool has_bias = node_.input(2) != nullptr;
  const memory::desc bd = has_bias
                              ? memory::desc({ws[0]}, memory::data_type::f32, memory::format_tag::x)
                              : memory::desc();
  std::optional<dnnl::convolution_forward::primitive_desc> pd;
  Status s = guarded(node_.describe(), [&] {
    dnnl::convolution_forward::desc d(
        dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, xd, wd, bd, yd,
        geometry_.strides, geometry_.dilates, geometry_.pad_l, geometry_.pad_r);
    pd.emplace(d, attr_, cpu_engine());
  });
  if (!s.ok()) return s;
  return *pd;
}

Status ConvKernel::prepare(int64_t max_batch) {
  const ir::Value* x = node_.input(0);
  const ir::Value* w = node_.input(1);
  const ir::Value* b = node_.input(2);
  const ir::Value* r = node_.input(3);
  const ir::Value* y = node_.output(0);
  if (!w || !w->is_constant()) return Unsupported("weights must be constant");
  MIXQ_RETURN_IF_ERROR(geometry(node_, at_batch(x->shape, 1), w->constant.shape(), geometry_));
  const int64_t oc = w->constant.dim(0);
  const bool int8 = precision_ == Precision::kINT8;
  const bool y_quantized = y->dtype != DType::kFloat32;
  attr_ = base_attr();
  dnnl::post_ops ops;
  std::vector<float> bias_values;
  if (b) bias_values = b->constant.to_float_vector();
  float act_scale = 1.0f;  // post-ops work in output units: real / y scale for int8 outputs
  if (int8) {
    MIXQ_ASSIGN_OR_RETURN(act_scale, set_int8_epilogue(node_, attr_, bias_values));
  }
  if (r) {
    if (int8 && y_quantized) {
      if (!r->quant || r->dtype != y->dtype)
        return Internal("int8 residual must match the output type");
      ops.append_sum(r->quant->scale[0] / y->quant->scale[0], r->quant->zero_point_at(0));
    } else {
      ops.append_sum(1.0f);
    }
  }
  append_activation(node_, act_scale, ops);
  attr_.set_post_ops(ops);

  MIXQ_ASSIGN_OR_RETURN(auto pd, make_pd(max_batch, nullptr));
  impl_ = std::string("onednn ") + pd.impl_info_str() + (int8 ? " int8" : " fp32");
  weights_desc_ = pd.weights_desc();
  MIXQ_ASSIGN_OR_RETURN(weights_, pack_weights(weights_desc_));
  if (b) {
    const memory::desc bd({oc}, memory::data_type::f32, memory::format_tag::x);
    MIXQ_ASSIGN_OR_RETURN(bias_,
                          reorder_constant(node_.describe() + " bias", bd, bias_values.data(), bd));
  }
  return Status::Ok();
}

Expected<memory> ConvKernel::pack_weights(const memory::desc& desc) const {
  const ir::Value* w = node_.input(1);
  const memory::dims wdims = weight_dims(w->constant.shape(), geometry_.groups);
  const memory::desc plain(
      wdims, precision_ == Precision::kINT8 ? memory::data_type::s8 : memory::data_type::f32,
      plain_tag(wdims.size()));
  return reorder_constant(node_.describe() + " weights", plain, w->constant.raw(), desc);
}

Expected<std::unique_ptr<KernelInstance>> ConvKernel::instantiate(int64_t batch) const {
  // The best implementation for this batch; it shares the packed weights when it wants the
  // same layout (the usual case), else gets its own copy, packed once here.
  MIXQ_ASSIGN_OR_RETURN(auto pd, make_pd(batch, nullptr));
  memory weights = weights_;
  if (pd.weights_desc() != weights_desc_) {
    MIXQ_ASSIGN_OR_RETURN(weights, pack_weights(pd.weights_desc()));
  }
  std::unordered_map<int, memory> constants = {{DNNL_ARG_WEIGHTS, weights}};
  if (bias_) constants[DNNL_ARG_BIAS] = bias_;
  // The residual (input 3) is already in the output buffer: the sum post-op reads it there.
  return std::unique_ptr<KernelInstance>(
      new PrimitiveInstance(node_, dnnl::convolution_forward(pd), {{DNNL_ARG_SRC, pd.src_desc()}},
                            {DNNL_ARG_DST, pd.dst_desc()}, pd.scratchpad_desc(), constants));
}

}  // namespace

bool conv_supports(const ir::Node& node, Precision precision, std::string* why) {
  auto fail = [&](const std::string& m) {
    if (why) *why = m;
    return false;
  };
  if (node.op != ir::OpKind::kFusedConv) return fail("not a convolution");
  if (precision != Precision::kFP32 && precision != Precision::kINT8)
    return fail("the cpu backend runs convolutions in fp32 and int8 only");
  const ir::Value* x = node.input(0);
  const ir::Value* w = node.input(1);
  if (!w || !w->is_constant()) return fail("weights are not constant");
  if (!x->shape_known || x->shape.size() < 3 || x->shape.size() > 5) return fail("input rank");
  if (precision == Precision::kINT8 && x->shape.size() != 4)
    return fail("int8 convolutions are 2-D only here");
  // Ask oneDNN whether it can build this convolution (at batch 1, with the layouts it likes).
  Geometry g;
  Status s = geometry(node, at_batch(x->shape, 1), w->constant.shape(), g);
  if (!s.ok()) return fail(s.message());
  const bool int8 = precision == Precision::kINT8;
  Shape xs = at_batch(x->shape, 1), ys = at_batch(node.output(0)->shape, 1);
  const memory::dims wdims = weight_dims(w->constant.shape(), g.groups);
  using dt = memory::data_type;
  s = guarded("", [&] {
    dnnl::convolution_forward::desc d(
        dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
        memory::desc(dims_of(xs), int8 ? dt::u8 : dt::f32, memory::format_tag::any),
        memory::desc(wdims, int8 ? dt::s8 : dt::f32, memory::format_tag::any),
        memory::desc(dims_of(ys), int8 ? dt::u8 : dt::f32, memory::format_tag::any), g.strides,
        g.dilates, g.pad_l, g.pad_r);
    dnnl::convolution_forward::primitive_desc pd(d, base_attr(), cpu_engine());
  });
  if (!s.ok()) return fail(s.message());
  return true;
}

Expected<std::unique_ptr<Kernel>> make_conv_kernel(const ir::Node& node, Precision precision) {
  return std::unique_ptr<Kernel>(new ConvKernel(node, precision));
}

}  // namespace mixq::backends::cpu
