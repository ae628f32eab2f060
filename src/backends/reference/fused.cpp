// Reference kernels for mixq's internal ops: FusedConv, FusedGemm (compositions of the ONNX
// kernels) and Reformat (precision boundaries). Quantised tensors are dequantised with their
// value's parameters, computed in fp32 and requantised: the oracle for the low-precision path.
#include <cmath>
#include <cstring>

#include "backends/reference/helpers.h"

namespace mixq::reference {

Tensor dequantize_to_float(const Tensor& t, const ir::QuantParams* q) {
  if (!q) return t.dtype() == DType::kFloat32 ? t : t.to(DType::kFloat32);
  Tensor out = Tensor::empty(DType::kFloat32, t.shape());
  const int64_t n = t.numel();
  // Per-channel along q->axis: channel index = (i / inner) % channels.
  int64_t inner = 1, channels = 1;
  if (!q->per_tensor()) {
    channels = int64_t(q->scale.size());
    for (int d = q->axis + 1; d < t.rank(); ++d) inner *= t.dim(d);
  }
  for (int64_t i = 0; i < n; ++i) {
    const size_t c = q->per_tensor() ? 0 : size_t((i / inner) % channels);
    const double v = t.get_as_double(i);
    out.data<float>()[i] = float((v - q->zero_point_at(c)) * q->scale[c]);
  }
  return out;
}

Tensor quantize_from_float(const Tensor& values, DType dtype, const ir::QuantParams* q) {
  if (!q) return values.to(dtype);
  Tensor scaled = Tensor::empty(DType::kFloat32, values.shape());
  int64_t inner = 1, channels = 1;
  if (!q->per_tensor()) {
    channels = int64_t(q->scale.size());
    for (int d = q->axis + 1; d < values.rank(); ++d) inner *= values.dim(d);
  }
  const float* in = values.data<float>();
  for (int64_t i = 0; i < values.numel(); ++i) {
    const size_t c = q->per_tensor() ? 0 : size_t((i / inner) % channels);
    const float x = in[i] / q->scale[c];
    // fp8 is a float grid: no rounding to integers, no zero point.
    scaled.data<float>()[i] =
        dtype == DType::kFloat8E4M3 ? x : float(std::nearbyint(x) + q->zero_point_at(c));
  }
  return scaled.to(dtype);  // saturating conversion
}

namespace {

// The activation named by "<prefix>activation" ("mixq." for the layer, "mixq.then_" for a chained
// second layer).
Status apply_activation(const ir::Node& node, Tensor& t, const std::string& prefix = "mixq.") {
  const std::string act = node.attr_string(prefix + "activation", "none");
  float* p = t.data<float>();
  if (act == "none") return Status::Ok();
  if (act == "relu") {
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = p[i] > 0 ? p[i] : 0.0f;
    return Status::Ok();
  }
  if (act == "clip") {
    const float lo = node.attr_float(prefix + "clip_min", -INFINITY);
    const float hi = node.attr_float(prefix + "clip_max", INFINITY);
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = std::min(std::max(p[i], lo), hi);
    return Status::Ok();
  }
  return Unsupported("unknown fused activation '" + act + "'");
}

// FusedGemm with "mixq.flatten_input" = "nhwc" (the CUDA backend's execution fusion): its 4-D
// input is flattened in (H, W, C) order, which the weights' columns follow.
bool flattens_nhwc(const ir::Node& node) {
  return node.op == ir::OpKind::kFusedGemm && node.attr_string("mixq.flatten_input", "") == "nhwc";
}

// x [N, C, H, W] -> [N, H * W * C].
Tensor flatten_nhwc(const Tensor& x) {
  const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  Tensor out = Tensor::empty(DType::kFloat32, {N, H * W * C});
  const float* src = x.data<float>();
  float* dst = out.data<float>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w)
          dst[((n * H + h) * W + w) * C + c] = src[((n * C + c) * H + h) * W + w];
  return out;
}

// A FusedGemm with a chained second layer (inputs 4 and 5: its weights [N2, N1] and bias).
bool chained(const ir::Node& node) {
  return node.op == ir::OpKind::kFusedGemm && node.input(4) != nullptr;
}

// A FusedConv with a chained second convolution (ops.def), run as its two convolutions
// (ir::split_conv_chain).
bool chained_conv(const ir::Node& node) {
  return node.op == ir::OpKind::kFusedConv && node.input(4) != nullptr;
}

Status infer_fused(const ir::Node& node, std::span<const TensorInfo> in, std::span<TensorInfo> out);

Status infer_conv_chain(const ir::Node& node, std::span<const TensorInfo> in,
                        std::span<TensorInfo> out) {
  if (in.size() < 5 || !in[4].present)
    return InvalidArgument(node.describe() + ": a chained convolution needs its second's weights");
  MIXQ_ASSIGN_OR_RETURN(ir::ConvChainParts c, ir::split_conv_chain(node));
  std::vector<TensorInfo> first_in(in.begin(), in.begin() + 3);
  std::vector<TensorInfo> mid(1);
  MIXQ_RETURN_IF_ERROR(infer_fused(c.first, first_in, mid));
  mid[0].dtype = c.mid->dtype;
  mid[0].value = nullptr;
  std::vector<TensorInfo> second_in = {mid[0], in[4]};
  if (in.size() > 5) second_in.push_back(in[5]);
  return infer_fused(c.second, second_in, out);
}

Status infer_fused(const ir::Node& node, std::span<const TensorInfo> in,
                   std::span<TensorInfo> out) {
  if (chained_conv(node)) return infer_conv_chain(node, in, out);
  const OpImpl* base =
      find_op(node.op == ir::OpKind::kFusedConv ? ir::OpKind::kConv : ir::OpKind::kGemm);
  TensorInfo x = in[0], w = in[1];
  if (flattens_nhwc(node)) {
    if (x.shape.size() != 4)
      return InvalidArgument(node.describe() + ": mixq.flatten_input needs a 4-D input, got " +
                             shape_to_string(x.shape));
    int64_t k = 1;
    for (size_t d = 1; d < 4; ++d) k = x.shape[d] < 0 || k < 0 ? -1 : k * x.shape[d];
    x.shape = {x.shape[0], k};
    x.value = nullptr;
  }
  if (dtype_is_float(x.dtype) || x.dtype == DType::kInt8 || x.dtype == DType::kUInt8)
    x.dtype = DType::kFloat32;
  if (w.dtype != DType::kFloat32) w.dtype = DType::kFloat32;
  std::vector<TensorInfo> args = {x, w};
  if (in.size() > 2) args.push_back(in[2]);
  MIXQ_RETURN_IF_ERROR(base->infer(node, args, out));
  if (node.output(0) && node.output(0)->dtype != DType::kFloat32)
    out[0].dtype = node.output(0)->dtype;
  if (in.size() > 3 && in[3].present && in[3].shape != out[0].shape)
    return InvalidArgument("residual input shape " + shape_to_string(in[3].shape) +
                           " differs from the output " + shape_to_string(out[0].shape));
  if (chained(node)) {
    if (in.size() < 5 || !in[4].present || in[4].shape.size() != 2 || out[0].shape.size() != 2 ||
        (out[0].shape[1] >= 0 && in[4].shape[1] != out[0].shape[1]) ||
        (in.size() > 3 && in[3].present))
      return InvalidArgument(node.describe() + ": the chained layer's weights " +
                             (in.size() > 4 ? shape_to_string(in[4].shape) : "(none)") +
                             " do not take the first layer's output " +
                             shape_to_string(out[0].shape) + " (and no residual)");
    if (in.size() > 5 && in[5].present && in[5].shape != Shape{in[4].shape[0]})
      return InvalidArgument(node.describe() + ": the chained layer's bias " +
                             shape_to_string(in[5].shape) + " is not one value per output");
    out[0].shape[1] = in[4].shape[0];
  }
  if (const auto pool = node.attr_ints("mixq.pool", {}); !pool.empty()) {
    // A fused max pool (window = stride, no padding): floor(size / window).
    if (pool.size() != 2 || pool[0] < 1 || pool[1] < 1 || out[0].shape.size() != 4 ||
        (in.size() > 3 && in[3].present))
      return InvalidArgument(node.describe() +
                             ": mixq.pool needs two window sizes, a 4-D output "
                             "and no residual");
    out[0].shape[2] = out[0].shape[2] < 0 ? -1 : out[0].shape[2] / pool[0];
    out[0].shape[3] = out[0].shape[3] < 0 ? -1 : out[0].shape[3] / pool[1];
  }
  return Status::Ok();
}

// The fused max pool of a convolution's activated fp32 output (NCHW).
Tensor max_pool_windows(const Tensor& t, int64_t ph, int64_t pw) {
  const int64_t N = t.dim(0), C = t.dim(1), H = t.dim(2), W = t.dim(3), OH = H / ph, OW = W / pw;
  Tensor out = Tensor::empty(DType::kFloat32, {N, C, OH, OW});
  const float* src = t.data<float>();
  float* dst = out.data<float>();
  for (int64_t nc = 0; nc < N * C; ++nc)
    for (int64_t oh = 0; oh < OH; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow) {
        float m = -INFINITY;
        for (int64_t i = 0; i < ph; ++i)
          for (int64_t j = 0; j < pw; ++j)
            m = std::max(m, src[(nc * H + oh * ph + i) * W + ow * pw + j]);
        dst[(nc * OH + oh) * OW + ow] = m;
      }
  return out;
}

Status compute_fused(const ir::Node& node, std::span<const Tensor> in, std::span<Tensor> out);

// The first convolution into the intermediate's grid, as the chained kernel holds it, then the
// second.
Status compute_conv_chain(const ir::Node& node, std::span<const Tensor> in, std::span<Tensor> out) {
  if (in.size() < 5 || !in[4].defined())
    return InvalidArgument(node.describe() + ": a chained convolution needs its second's weights");
  MIXQ_ASSIGN_OR_RETURN(ir::ConvChainParts c, ir::split_conv_chain(node));
  std::vector<TensorInfo> first_info = {TensorInfo::of(in[0]), TensorInfo::of(in[1]),
                                        TensorInfo::of(in[2])};
  std::vector<TensorInfo> mid_info(1);
  MIXQ_RETURN_IF_ERROR(infer_fused(c.first, first_info, mid_info));
  std::vector<Tensor> mid = {Tensor::empty(c.mid->dtype, mid_info[0].shape)};
  MIXQ_RETURN_IF_ERROR(compute_fused(c.first, in.subspan(0, 3), mid));
  std::vector<Tensor> second_in = {mid[0], in[4]};
  if (in.size() > 5) second_in.push_back(in[5]);
  return compute_fused(c.second, second_in, out);
}

Status compute_fused(const ir::Node& node, std::span<const Tensor> in, std::span<Tensor> out) {
  if (chained_conv(node)) return compute_conv_chain(node, in, out);
  const OpImpl* base =
      find_op(node.op == ir::OpKind::kFusedConv ? ir::OpKind::kConv : ir::OpKind::kGemm);
  auto quant_of = [&](size_t i) -> const ir::QuantParams* {
    const ir::Value* v = node.input(i);
    return v && v->quant ? &*v->quant : nullptr;
  };
  std::vector<Tensor> args;
  for (size_t i = 0; i < in.size() && i < 3; ++i)
    args.push_back(in[i].defined() ? dequantize_to_float(in[i], quant_of(i)) : Tensor());
  if (flattens_nhwc(node)) {
    if (args.empty() || args[0].rank() != 4)
      return InvalidArgument(node.describe() + ": mixq.flatten_input needs a 4-D input");
    args[0] = flatten_nhwc(args[0]);
  }
  if (auto it = node.attrs.find("mixq.input_dtype"); it != node.attrs.end() && !args.empty()) {
    // An absorbed Reformat: the input is first converted to this type (and scale), as the
    // Reformat node would have converted it.
    const auto* name = std::get_if<std::string>(&it->second);
    const std::optional<DType> dtype = name ? dtype_from_name(*name) : std::nullopt;
    if (!dtype) return InvalidArgument(node.describe() + ": mixq.input_dtype names no dtype");
    ir::QuantParams q;
    q.dtype = *dtype;
    q.scale = {node.attr_float("mixq.input_scale", 0.0f)};
    const bool scaled = node.attrs.count("mixq.input_scale") != 0;
    if (scaled && !(q.scale[0] > 0.0f))
      return InvalidArgument(node.describe() + ": mixq.input_scale must be positive");
    args[0] = dequantize_to_float(quantize_from_float(args[0], *dtype, scaled ? &q : nullptr),
                                  scaled ? &q : nullptr);
  }
  const ir::Value* y = node.output(0);
  const bool quantized_out = out[0].dtype() != DType::kFloat32;
  const auto pool = node.attr_ints("mixq.pool", {});
  Tensor result;
  if (!pool.empty() || chained(node)) {
    // The layer's own output: pooled after the activation, or read by the chained layer.
    std::vector<TensorInfo> infos, conv_out(1);
    for (const Tensor& a : args) infos.push_back(TensorInfo::of(a));
    MIXQ_RETURN_IF_ERROR(base->infer(node, infos, conv_out));
    result = Tensor::empty(DType::kFloat32, conv_out[0].shape);
  } else {
    result = quantized_out ? Tensor::empty(DType::kFloat32, out[0].shape()) : out[0];
  }
  std::vector<Tensor> outs = {result};
  MIXQ_RETURN_IF_ERROR(base->compute(node, args, outs));
  if (in.size() > 3 && in[3].defined()) {
    Tensor r = dequantize_to_float(in[3], quant_of(3));
    for (int64_t i = 0; i < result.numel(); ++i) result.data<float>()[i] += r.data<float>()[i];
  }
  MIXQ_RETURN_IF_ERROR(apply_activation(node, result));
  if (chained(node)) {
    // The first result in its grid, as the intermediate value held it, then the second layer.
    const std::optional<DType> mid_dtype = dtype_from_name(node.attr_string("mixq.mid_dtype", ""));
    ir::QuantParams q;
    q.scale = {node.attr_float("mixq.mid_scale", 0.0f)};
    if (!mid_dtype || !(q.scale[0] > 0.0f))
      return InvalidArgument(
          node.describe() + ": a chained layer needs mixq.mid_dtype and a positive mixq.mid_scale");
    q.dtype = *mid_dtype;
    const Tensor mid = dequantize_to_float(quantize_from_float(result, *mid_dtype, &q), &q);
    std::vector<Tensor> second = {mid, dequantize_to_float(in[4], quant_of(4))};
    if (in.size() > 5 && in[5].defined()) second.push_back(dequantize_to_float(in[5], quant_of(5)));
    result = quantized_out ? Tensor::empty(DType::kFloat32, out[0].shape()) : out[0];
    std::vector<Tensor> outs2 = {result};
    MIXQ_RETURN_IF_ERROR(base->compute(node, second, outs2));
    MIXQ_RETURN_IF_ERROR(apply_activation(node, result, "mixq.then_"));
  }
  if (!pool.empty()) {
    result = max_pool_windows(result, pool[0], pool[1]);
    if (!quantized_out) {
      std::memcpy(out[0].raw(), result.raw(), result.nbytes());
      return Status::Ok();
    }
  }
  if (quantized_out) {
    Tensor q = quantize_from_float(result, out[0].dtype(), y && y->quant ? &*y->quant : nullptr);
    std::memcpy(out[0].raw(), q.raw(), q.nbytes());
  }
  return Status::Ok();
}

Status infer_reformat(const ir::Node& node, std::span<const TensorInfo> in,
                      std::span<TensorInfo> out) {
  const ir::Value* y = node.output(0);
  if (!y) return Internal("Reformat without an output value");
  out[0].dtype = y->dtype;
  out[0].shape = in[0].shape;
  return Status::Ok();
}

Status compute_reformat(const ir::Node& node, std::span<const Tensor> in, std::span<Tensor> out) {
  const ir::Value* x = node.input(0);
  const ir::Value* y = node.output(0);
  if (x->layout != ir::Layout::kPlain || y->layout != ir::Layout::kPlain)
    return Unsupported("the reference backend reformats plain layouts only");
  Tensor real = dequantize_to_float(in[0], x->quant ? &*x->quant : nullptr);
  Tensor q = quantize_from_float(real, y->dtype, y->quant ? &*y->quant : nullptr);
  std::memcpy(out[0].raw(), q.raw(), q.nbytes());
  return Status::Ok();
}

}  // namespace

void register_fused(Registry& r) {
  r.add(ir::OpKind::kFusedConv, {infer_fused, compute_fused});
  r.add(ir::OpKind::kFusedGemm, {infer_fused, compute_fused});
  r.add(ir::OpKind::kReformat, {infer_reformat, compute_reformat});
}

}  // namespace mixq::reference
