// Reference kernels: QuantizeLinear and DequantizeLinear, per tensor (one scale) or per axis (a
// 1-D scale along `axis`, default 1). Integer results round half to even and saturate.
#include <algorithm>
#include <cmath>
#include <limits>

#include "backends/reference/helpers.h"

namespace mixq::reference {
namespace {

std::string str(int64_t v) {
  return std::to_string(v);
}

// One scale for the whole tensor, or one per index of x along `axis`.
struct Layout {
  bool per_axis = false;
  int64_t axis = 0;
};

// A scale that is zero, negative, NaN or infinite cannot come from a real quantizer.
Status check_scale_values(const Tensor& scale, const std::string& what) {
  for (int64_t i = 0; i < scale.numel(); ++i) {
    const float s = scale.data<float>()[i];
    if (!(s > 0.0f) || !std::isfinite(s))
      return InvalidArgument(what + "[" + str(i) + "] is " + std::to_string(s) +
                             "; scales must be positive and finite");
  }
  return Status::Ok();
}

bool is_per_tensor(const Shape& s) {
  return s.empty() || (s.size() == 1 && s[0] == 1);
}

// Checks scale/zero-point dtypes and shapes against x and finds the layout.
Status check_params(const ir::Node& node, std::span<const TensorInfo> in, const std::string& prefix,
                    Layout& layout) {
  const TensorInfo& x = in[0];
  const TensorInfo& scale = input_or_absent(in, 1);
  const TensorInfo& zp = input_or_absent(in, 2);
  const std::string scale_name = prefix + "_scale", zp_name = prefix + "_zero_point";
  MIXQ_RETURN_IF_ERROR(expect_dtype(scale, {DType::kFloat32}, scale_name.c_str()));
  if (scale.shape.size() > 1)
    return InvalidArgument(scale_name + " must be a scalar or 1-D, got shape " +
                           shape_to_string(scale.shape));
  layout.per_axis = !is_per_tensor(scale.shape);
  if (layout.per_axis) {
    MIXQ_RETURN_IF_ERROR(
        normalize_axis(node.attr_int("axis", 1), int64_t(x.shape.size()), layout.axis));
    const int64_t dim = x.shape[size_t(layout.axis)], n = scale.shape[0];
    if (dim >= 0 && n >= 0 && dim != n)
      return InvalidArgument(scale_name + " has " + str(n) + " elements, but axis " +
                             str(layout.axis) + " of " + prefix + " " + shape_to_string(x.shape) +
                             " has size " + str(dim));
  }
  if (zp.present && zp.shape != scale.shape &&
      !(is_per_tensor(zp.shape) && is_per_tensor(scale.shape)))
    return InvalidArgument(zp_name + " has shape " + shape_to_string(zp.shape) + ", but " +
                           scale_name + " has shape " + shape_to_string(scale.shape));
  if (scale.value) MIXQ_RETURN_IF_ERROR(check_scale_values(*scale.value, scale_name));
  return Status::Ok();
}

// Index into the scale / zero point of each element of x.
struct ChannelOf {
  int64_t inner = 1, dim = 1;
  bool per_axis = false;
  ChannelOf(const Shape& x, const Layout& l) : per_axis(l.per_axis) {
    if (!per_axis) return;
    dim = x[size_t(l.axis)];
    for (size_t i = size_t(l.axis) + 1; i < x.size(); ++i) inner *= x[i];
  }
  int64_t operator()(int64_t i) const { return per_axis ? (i / inner) % dim : 0; }
};

std::vector<TensorInfo> infos_of(std::span<const Tensor> in) {
  std::vector<TensorInfo> infos;
  for (const Tensor& t : in) infos.push_back(TensorInfo::of(t));
  return infos;
}

// --- QuantizeLinear: y = saturate(round_half_even(x / y_scale) + y_zero_point) -------------------

Status infer_QuantizeLinear(const ir::Node& node, std::span<const TensorInfo> in,
                            std::span<TensorInfo> out) {
  MIXQ_RETURN_IF_ERROR(expect_dtype(in[0], {DType::kFloat32, DType::kInt32}, "x"));
  const TensorInfo& zp = input_or_absent(in, 2);
  if (zp.present)
    MIXQ_RETURN_IF_ERROR(
        expect_dtype(zp, {DType::kUInt8, DType::kInt8, DType::kFloat8E4M3}, "y_zero_point"));
  Layout layout;
  MIXQ_RETURN_IF_ERROR(check_params(node, in, "y", layout));
  out[0].dtype = zp.present ? zp.dtype : DType::kUInt8;  // the zero point picks the type
  if (out[0].dtype == DType::kFloat8E4M3 && node.attr_int("saturate", 1) == 0)
    return Unsupported("QuantizeLinear to float8 with saturate=0 is not supported");
  out[0].shape = in[0].shape;
  return Status::Ok();
}

template <typename T>
T saturate(double v) {
  return T(std::clamp(v, double(std::numeric_limits<T>::lowest()),
                      double(std::numeric_limits<T>::max())));
}

Status compute_QuantizeLinear(const ir::Node& node, std::span<const Tensor> in,
                              std::span<Tensor> out) {
  Layout layout;
  MIXQ_RETURN_IF_ERROR(check_params(node, infos_of(in), "y", layout));
  const Tensor& x = in[0];
  const float* scale = in[1].data<float>();
  const bool has_zp = has_input(in, 2);
  const ChannelOf channel(x.shape(), layout);
  Tensor& y = out[0];
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int64_t c = channel(i);
    // x / scale in fp32, as the spec's reference computes it.
    const float q = float(x.get_as_double(i)) / scale[c];
    if (y.dtype() == DType::kFloat8E4M3) {  // no integer rounding: fp8 rounds (and saturates)
      const float z = has_zp ? fp8e4m3_to_float(in[2].data<Float8E4M3>()[c]) : 0.0f;
      y.data<Float8E4M3>()[i] = float_to_fp8e4m3(q + z);
      continue;
    }
    // nearbyint under the default rounding mode rounds half to even; NaN quantises to 0.
    const double r = std::isnan(q) ? 0.0 : double(std::nearbyint(q));
    const double z = has_zp ? in[2].get_as_double(c) : 0.0;
    if (y.dtype() == DType::kInt8)
      y.data<int8_t>()[i] = saturate<int8_t>(r + z);
    else
      y.data<uint8_t>()[i] = saturate<uint8_t>(r + z);
  }
  return Status::Ok();
}

// --- DequantizeLinear: y = (x - x_zero_point) * x_scale ------------------------------------------

Status infer_DequantizeLinear(const ir::Node& node, std::span<const TensorInfo> in,
                              std::span<TensorInfo> out) {
  MIXQ_RETURN_IF_ERROR(
      expect_dtype(in[0], {DType::kInt8, DType::kUInt8, DType::kInt32, DType::kFloat8E4M3}, "x"));
  const TensorInfo& zp = input_or_absent(in, 2);
  if (zp.present) {
    MIXQ_RETURN_IF_ERROR(expect_dtype(zp, {in[0].dtype}, "x_zero_point"));
    // int32 inputs (biases) have no zero point; tolerate an explicit zero.
    if (zp.dtype == DType::kInt32 && zp.value)
      for (int64_t i = 0; i < zp.value->numel(); ++i)
        if (zp.value->get_as_int64(i) != 0)
          return InvalidArgument("x_zero_point must be 0 for int32 x, got " +
                                 str(zp.value->get_as_int64(i)));
  }
  Layout layout;
  MIXQ_RETURN_IF_ERROR(check_params(node, in, "x", layout));
  out[0].dtype = DType::kFloat32;
  out[0].shape = in[0].shape;
  return Status::Ok();
}

Status compute_DequantizeLinear(const ir::Node& node, std::span<const Tensor> in,
                                std::span<Tensor> out) {
  Layout layout;
  MIXQ_RETURN_IF_ERROR(check_params(node, infos_of(in), "x", layout));
  const Tensor& x = in[0];
  const float* scale = in[1].data<float>();
  const bool has_zp = has_input(in, 2);
  const ChannelOf channel(x.shape(), layout);
  float* y = out[0].data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int64_t c = channel(i);
    // fp32 arithmetic, as the spec's reference: (float(x) - float(zp)) * scale.
    const float z = has_zp ? float(in[2].get_as_double(c)) : 0.0f;
    y[i] = (float(x.get_as_double(i)) - z) * scale[c];
  }
  return Status::Ok();
}

}  // namespace

void register_quantize(Registry& r) {
  using ir::OpKind;
  r.add(OpKind::kQuantizeLinear, {infer_QuantizeLinear, compute_QuantizeLinear});
  r.add(OpKind::kDequantizeLinear, {infer_DequantizeLinear, compute_DequantizeLinear});
}

}  // namespace mixq::reference
