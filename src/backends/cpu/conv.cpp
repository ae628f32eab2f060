// CPU convolutions on oneDNN: FusedConv (bias, residual sum, relu/clip) in fp32 and int8.
// int8: u8 activations (zero point 0 or 128), s8 weights with per-channel scales, f32 bias
// pre-divided by the input and weight scales (oneDNN 2.x adds the bias before the output scale),
// u8 or f32 output.
#include <cmath>

#include "backends/cpu/onednn.h"

namespace mixq::backends::cpu {
namespace {

using dnnl::memory;

Shape at_batch(const Shape& s, int64_t batch) {
  Shape r = s;
  for (auto& d : r)
    if (d < 0) d = batch;
  return r;
}

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

class ConvInstance final : public KernelInstance {
 public:
  // `weights` is the kernel's packed memory, or this batch size's own when its best
  // implementation wants another layout.
  ConvInstance(const ConvKernel& k, dnnl::convolution_forward::primitive_desc pd, memory weights)
      : kernel_(k),
        pd_(pd),
        prim_(pd),
        weights_(weights),
        scratch_(pd.scratchpad_desc().get_size()) {}

  Status execute(const ExecContext& ctx) const override {
    const Buffer& x = ctx.inputs[0];
    const Buffer& y = ctx.outputs[0];
    memory src(pd_.src_desc(), cpu_engine(), x.data);
    memory dst(pd_.dst_desc(), cpu_engine(), y.data);
    memory scratch(pd_.scratchpad_desc(), cpu_engine(), ctx.scratch);
    std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, src},
                                            {DNNL_ARG_WEIGHTS, weights_},
                                            {DNNL_ARG_DST, dst},
                                            {DNNL_ARG_SCRATCHPAD, scratch}};
    if (kernel_.bias_) args[DNNL_ARG_BIAS] = kernel_.bias_;
    return guarded(kernel_.node_.describe(), [&] {
      prim_.execute(stream_of(ctx), args);
      stream_of(ctx).wait();
    });
  }
  size_t scratch_bytes() const override { return scratch_; }

 private:
  const ConvKernel& kernel_;
  dnnl::convolution_forward::primitive_desc pd_;
  dnnl::convolution_forward prim_;
  memory weights_;
  size_t scratch_;
};

Expected<dnnl::convolution_forward::primitive_desc> ConvKernel::make_pd(
    int64_t batch, const memory::desc* weights) const {
  const ir::Value* x = node_.input(0);
  const ir::Value* w = node_.input(1);
  const ir::Value* y = node_.output(0);
  const Shape xs = at_batch(x->shape, batch), ys = at_batch(y->shape, batch);
  Shape ws = w->constant.shape();
  const int64_t g = geometry_.groups;
  memory::dims wdims = dims_of(ws);
  if (g > 1) {
    wdims.insert(wdims.begin(), g);
    wdims[1] /= g;
  }
  const memory::data_type wdt =
      precision_ == Precision::kINT8 ? memory::data_type::s8 : memory::data_type::f32;
  const memory::desc wd = weights ? *weights : memory::desc(wdims, wdt, memory::format_tag::any);
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
    if (!x->quant || !w->quant || w->dtype != DType::kInt8)
      return Internal("int8 convolution without quantised input or weights");
    const float sx = x->quant->scale[0];
    const float sy = y_quantized ? y->quant->scale[0] : 1.0f;
    std::vector<float> out_scales(static_cast<size_t>(oc));
    for (int64_t c = 0; c < oc; ++c) {
      const float sw = w->quant->scale[w->quant->per_tensor() ? 0 : size_t(c)];
      out_scales[size_t(c)] = sx * sw / sy;
      if (b) bias_values[size_t(c)] /= sx * sw;
    }
    attr_.set_output_scales(oc == 1 ? 0 : 1 << 1,
                            oc == 1 ? std::vector<float>{out_scales[0]} : out_scales);
    if (x->quant->zero_point_at(0) != 0)
      attr_.set_zero_points(DNNL_ARG_SRC, 0, {x->quant->zero_point_at(0)});
    if (y_quantized && y->quant->zero_point_at(0) != 0)
      attr_.set_zero_points(DNNL_ARG_DST, 0, {y->quant->zero_point_at(0)});
    act_scale = 1.0f / sy;
    if (r) {
      if (y_quantized) {
        if (!r->quant || r->dtype != y->dtype)
          return Internal("int8 residual must match the output type");
        ops.append_sum(r->quant->scale[0] / sy, r->quant->zero_point_at(0));
      } else {
        ops.append_sum(1.0f);
      }
    }
  } else if (r) {
    ops.append_sum(1.0f);
  }
  const std::string act = node_.attr_string("mixq.activation", "none");
  if (act == "relu") {
    ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
  } else if (act == "clip") {
    const float lo = node_.attr_float("mixq.clip_min", -INFINITY) * act_scale;
    const float hi = node_.attr_float("mixq.clip_max", INFINITY) * act_scale;
    ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_clip, std::isfinite(lo) ? lo : -3.4e38f,
                       std::isfinite(hi) ? hi : 3.4e38f);
  }
  attr_.set_post_ops(ops);

  MIXQ_ASSIGN_OR_RETURN(auto pd, make_pd(max_batch, nullptr));
  impl_ = std::string("onednn ") + pd.impl_info_str() + (int8 ? " int8" : " fp32");
  weights_desc_ = pd.weights_desc();
  MIXQ_ASSIGN_OR_RETURN(weights_, pack_weights(weights_desc_));
  Status s = guarded(node_.describe() + " weights", [&] {
    if (b) {
      bias_ =
          memory(memory::desc({oc}, memory::data_type::f32, memory::format_tag::x), cpu_engine());
      std::memcpy(bias_.get_data_handle(), bias_values.data(), size_t(oc) * sizeof(float));
    }
  });
  return s;
}

Expected<memory> ConvKernel::pack_weights(const memory::desc& desc) const {
  const ir::Value* w = node_.input(1);
  const int64_t g = geometry_.groups;
  memory::dims wdims = dims_of(w->constant.shape());
  if (g > 1) {
    wdims.insert(wdims.begin(), g);
    wdims[1] /= g;
  }
  const memory::desc plain(
      wdims, precision_ == Precision::kINT8 ? memory::data_type::s8 : memory::data_type::f32,
      plain_tag(wdims.size()));
  memory packed;
  Status s = guarded(node_.describe() + " weights", [&] {
    memory src(plain, cpu_engine(), const_cast<void*>(w->constant.raw()));
    packed = memory(desc, cpu_engine());
    dnnl::stream stream(cpu_engine());
    dnnl::reorder(src, packed).execute(stream, src, packed);
    stream.wait();
  });
  if (!s.ok()) return s;
  return packed;
}

Expected<std::unique_ptr<KernelInstance>> ConvKernel::instantiate(int64_t batch) const {
  // The best implementation for this batch; it shares the packed weights when it wants the
  // same layout (the usual case), else gets its own copy, packed once here.
  MIXQ_ASSIGN_OR_RETURN(auto pd, make_pd(batch, nullptr));
  memory weights = weights_;
  if (pd.weights_desc() != weights_desc_) {
    MIXQ_ASSIGN_OR_RETURN(weights, pack_weights(pd.weights_desc()));
  }
  return std::unique_ptr<KernelInstance>(new ConvInstance(*this, pd, weights));
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
  memory::dims wdims = dims_of(w->constant.shape());
  if (g.groups > 1) {
    wdims.insert(wdims.begin(), g.groups);
    wdims[1] /= g.groups;
  }
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
