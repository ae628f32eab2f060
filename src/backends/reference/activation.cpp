// Reference kernels: unary activations and unary math, elementwise.
#include <algorithm>
#include <cmath>
#include <limits>

#include "backends/reference/helpers.h"

namespace mixq::reference {
namespace {

// Same dtype and shape as the input.
Status infer_same(const ir::Node&, std::span<const TensorInfo> in, std::span<TensorInfo> out) {
  if (in.empty() || !in[0].present) return InvalidArgument("input is missing");
  out[0].dtype = in[0].dtype;
  out[0].shape = in[0].shape;
  return Status::Ok();
}

Status infer_float(const ir::Node& node, std::span<const TensorInfo> in,
                   std::span<TensorInfo> out) {
  MIXQ_RETURN_IF_ERROR(expect_dtype(in[0], {DType::kFloat32}, "input"));
  return infer_same(node, in, out);
}

template <typename Fn>
Status map_float(const Tensor& x, Tensor& y, Fn fn) {
  const float* src = x.data<float>();
  float* dst = y.data<float>();
  const int64_t n = x.numel();
  for (int64_t i = 0; i < n; ++i) dst[i] = fn(src[i]);
  return Status::Ok();
}

// Ops defined on every numeric dtype (Relu, Neg, Abs): apply fn in the element type.
template <typename Fn>
Status map_numeric(const Tensor& x, Tensor& y, Fn fn) {
  return dispatch_numeric(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* src = x.data<T>();
    T* dst = y.data<T>();
    if constexpr (std::is_same_v<T, bool>) {
      for (int64_t i = 0; i < x.numel(); ++i) dst[i] = src[i];  // no arithmetic on bools
    } else {
      for (int64_t i = 0; i < x.numel(); ++i) dst[i] = T(fn(src[i]));
    }
  });
}

#define FLOAT_UNARY(Name, expr)                                                                    \
  Status compute_##Name(const ir::Node& node, std::span<const Tensor> in, std::span<Tensor> out) { \
    [[maybe_unused]] const ir::Node& n = node;                                                     \
    return map_float(in[0], out[0], [&](float x) -> float { return expr; });                       \
  }

FLOAT_UNARY(Sigmoid, x >= 0 ? 1.0f / (1.0f + std::exp(-x)) : std::exp(x) / (1.0f + std::exp(x)))
FLOAT_UNARY(Tanh, std::tanh(x))
FLOAT_UNARY(LeakyRelu, x >= 0 ? x : x * n.attr_float("alpha", 0.01f))
FLOAT_UNARY(HardSigmoid, std::max(0.0f, std::min(1.0f, n.attr_float("alpha", 0.2f) * x +
                                                           n.attr_float("beta", 0.5f))))
FLOAT_UNARY(HardSwish, x* std::max(0.0f, std::min(1.0f, x / 6.0f + 0.5f)))
FLOAT_UNARY(Elu, x >= 0 ? x : n.attr_float("alpha", 1.0f) * (std::exp(x) - 1.0f))
FLOAT_UNARY(Selu,
            n.attr_float("gamma", 1.05070102214813232421875f) *
                (x > 0 ? x
                       : n.attr_float("alpha", 1.67326319217681884765625f) * (std::exp(x) - 1.0f)))
FLOAT_UNARY(Softplus, x > 20.0f ? x : std::log1p(std::exp(x)))
FLOAT_UNARY(Sqrt, std::sqrt(x))
FLOAT_UNARY(Exp, std::exp(x))
FLOAT_UNARY(Log, std::log(x))
FLOAT_UNARY(Reciprocal, 1.0f / x)
#undef FLOAT_UNARY

Status infer_numeric(const ir::Node& node, std::span<const TensorInfo> in,
                     std::span<TensorInfo> out) {
  MIXQ_RETURN_IF_ERROR(expect_dtype(
      in[0], {DType::kFloat32, DType::kInt8, DType::kUInt8, DType::kInt32, DType::kInt64},
      "input"));
  return infer_same(node, in, out);
}

Status compute_Relu(const ir::Node&, std::span<const Tensor> in, std::span<Tensor> out) {
  return map_numeric(in[0], out[0], [](auto x) { return x > 0 ? x : decltype(x)(0); });
}
Status compute_Neg(const ir::Node&, std::span<const Tensor> in, std::span<Tensor> out) {
  return map_numeric(in[0], out[0], [](auto x) { return -x; });
}
Status compute_Abs(const ir::Node&, std::span<const Tensor> in, std::span<Tensor> out) {
  return map_numeric(in[0], out[0], [](auto x) { return x < 0 ? -x : x; });
}

// Clip: optional min (input 1) and max (input 2) scalars; absent means unbounded.
Status infer_Clip(const ir::Node& node, std::span<const TensorInfo> in, std::span<TensorInfo> out) {
  MIXQ_RETURN_IF_ERROR(expect_dtype(
      in[0], {DType::kFloat32, DType::kInt8, DType::kUInt8, DType::kInt32, DType::kInt64},
      "input"));
  for (size_t i = 1; i < in.size(); ++i) {
    if (!in[i].present) continue;
    if (in[i].dtype != in[0].dtype)
      return InvalidArgument(std::string(i == 1 ? "min" : "max") + " has dtype " +
                             std::string(dtype_name(in[i].dtype)) + ", input has " +
                             std::string(dtype_name(in[0].dtype)));
    if (shape_numel(in[i].shape) != 1)
      return InvalidArgument(std::string(i == 1 ? "min" : "max") + " must be a scalar");
  }
  return infer_same(node, in, out);
}

Status compute_Clip(const ir::Node&, std::span<const Tensor> in, std::span<Tensor> out) {
  return dispatch_numeric(in[0].dtype(), [&](auto tag) {
    using T = decltype(tag);
    T lo = std::numeric_limits<T>::lowest(), hi = std::numeric_limits<T>::max();
    if (in.size() > 1 && in[1].defined()) lo = in[1].data<T>()[0];
    if (in.size() > 2 && in[2].defined()) hi = in[2].data<T>()[0];
    const T* src = in[0].data<T>();
    T* dst = out[0].data<T>();
    for (int64_t i = 0; i < in[0].numel(); ++i) dst[i] = std::min(std::max(src[i], lo), hi);
  });
}

}  // namespace

void register_activation(Registry& r) {
  using ir::OpKind;
  r.add(OpKind::kRelu, {infer_numeric, compute_Relu});
  r.add(OpKind::kNeg, {infer_numeric, compute_Neg});
  r.add(OpKind::kAbs, {infer_numeric, compute_Abs});
  r.add(OpKind::kClip, {infer_Clip, compute_Clip});
  r.add(OpKind::kLeakyRelu, {infer_float, compute_LeakyRelu});
  r.add(OpKind::kSigmoid, {infer_float, compute_Sigmoid});
  r.add(OpKind::kTanh, {infer_float, compute_Tanh});
  r.add(OpKind::kHardSigmoid, {infer_float, compute_HardSigmoid});
  r.add(OpKind::kHardSwish, {infer_float, compute_HardSwish});
  r.add(OpKind::kElu, {infer_float, compute_Elu});
  r.add(OpKind::kSelu, {infer_float, compute_Selu});
  r.add(OpKind::kSoftplus, {infer_float, compute_Softplus});
  r.add(OpKind::kSqrt, {infer_float, compute_Sqrt});
  r.add(OpKind::kExp, {infer_float, compute_Exp});
  r.add(OpKind::kLog, {infer_float, compute_Log});
  r.add(OpKind::kReciprocal, {infer_float, compute_Reciprocal});
}

}  // namespace mixq::reference
