// Reference kernels: broadcast binary arithmetic (Add, Sub, Mul, Div, Pow), PRelu and the
// variadic Max, Min, Sum, Mean, all with numpy broadcasting.
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>

#include "backends/reference/helpers.h"

namespace mixq::reference {
namespace {

// Numpy broadcast of every input's shape.
Status broadcast_all(std::span<const TensorInfo> in, Shape& out) {
  out = in[0].shape;
  for (size_t i = 1; i < in.size(); ++i) {
    Shape next;
    MIXQ_RETURN_IF_ERROR(broadcast_shapes(out, in[i].shape, next));
    out = std::move(next);
  }
  return Status::Ok();
}

template <typename T>
bool is_nan(T v) {
  if constexpr (std::is_floating_point_v<T>)
    return std::isnan(v);
  else
    return false;
}

// Float -> integer T the way numpy's astype does (truncation), saturated where C++ would be UB.
template <typename T>
T trunc_saturate(double v) {
  if (std::isnan(v)) return T(0);
  v = std::trunc(v);
  if (v <= double(std::numeric_limits<T>::lowest())) return std::numeric_limits<T>::lowest();
  if (v >= double(std::numeric_limits<T>::max())) return std::numeric_limits<T>::max();
  return T(v);
}

// y[i] = fn(a[..], b[..]) over y's shape, reading A and B through broadcast strides.
template <typename T, typename U, typename R, typename Fn>
void broadcast_binary(const Tensor& a, const Tensor& b, Tensor& y, Fn fn) {
  const Shape& shape = y.shape();
  const std::vector<int64_t> sa = broadcast_strides(a.shape(), shape);
  const std::vector<int64_t> sb = broadcast_strides(b.shape(), shape);
  const T* pa = a.data<T>();
  const U* pb = b.data<U>();
  R* py = y.data<R>();
  std::vector<int64_t> index;
  for (int64_t i = 0; i < y.numel(); ++i) {
    unravel_index(i, shape, index);
    py[i] = fn(pa[offset_of(index, sa)], pb[offset_of(index, sb)]);
  }
}

// --- Add, Sub, Mul, Div --------------------------------------------------------------------------

Status infer_arith(const ir::Node&, std::span<const TensorInfo> in, std::span<TensorInfo> out) {
  MIXQ_RETURN_IF_ERROR(expect_dtype(
      in[0], {DType::kFloat32, DType::kInt8, DType::kUInt8, DType::kInt32, DType::kInt64}, "A"));
  MIXQ_RETURN_IF_ERROR(expect_dtype(input_or_absent(in, 1), {in[0].dtype}, "B"));
  out[0].dtype = in[0].dtype;
  return broadcast_all(in.first(2), out[0].shape);
}

// Integer results wrap around like numpy's (computed unsigned, since signed overflow is UB).
template <typename T>
T wrap_add(T a, T b) {
  if constexpr (std::is_integral_v<T>)
    return T(std::make_unsigned_t<T>(a) + std::make_unsigned_t<T>(b));
  else
    return a + b;
}
template <typename T>
T wrap_sub(T a, T b) {
  if constexpr (std::is_integral_v<T>)
    return T(std::make_unsigned_t<T>(a) - std::make_unsigned_t<T>(b));
  else
    return a - b;
}
template <typename T>
T wrap_mul(T a, T b) {
  if constexpr (std::is_integral_v<T>)
    return T(std::make_unsigned_t<T>(a) * std::make_unsigned_t<T>(b));
  else
    return a * b;
}
// Integer division truncates toward zero (C semantics); lowest / -1 wraps to lowest.
template <typename T>
T divide(T a, T b) {
  if constexpr (std::is_integral_v<T> && std::is_signed_v<T>)
    if (b == T(-1)) return wrap_sub(T(0), a);
  return a / b;
}

#define ARITH_OP(Name, fn)                                                                    \
  Status compute_##Name(const ir::Node&, std::span<const Tensor> in, std::span<Tensor> out) { \
    return dispatch_arith(in[0].dtype(), [&](auto tag) {                                      \
      using T = decltype(tag);                                                                \
      broadcast_binary<T, T, T>(in[0], in[1], out[0], fn<T>);                                 \
    });                                                                                       \
  }
ARITH_OP(Add, wrap_add)
ARITH_OP(Sub, wrap_sub)
ARITH_OP(Mul, wrap_mul)
#undef ARITH_OP

Status compute_Div(const ir::Node&, std::span<const Tensor> in, std::span<Tensor> out) {
  // Integer division by zero has no result (and traps in C++): report it instead.
  if (in[1].dtype() != DType::kFloat32)
    for (int64_t i = 0; i < in[1].numel(); ++i)
      if (in[1].get_as_int64(i) == 0)
        return InvalidArgument("integer division by zero (B[" + std::to_string(i) + "] is 0)");
  return dispatch_arith(in[0].dtype(), [&](auto tag) {
    using T = decltype(tag);
    broadcast_binary<T, T, T>(in[0], in[1], out[0], divide<T>);
  });
}

// --- Pow: base and exponent may have different dtypes; the output has the base's -----------------

Status infer_Pow(const ir::Node&, std::span<const TensorInfo> in, std::span<TensorInfo> out) {
  const std::initializer_list<DType> kTypes = {DType::kFloat32, DType::kInt8, DType::kUInt8,
                                               DType::kInt32, DType::kInt64};
  MIXQ_RETURN_IF_ERROR(expect_dtype(in[0], kTypes, "X (base)"));
  MIXQ_RETURN_IF_ERROR(expect_dtype(input_or_absent(in, 1), kTypes, "Y (exponent)"));
  out[0].dtype = in[0].dtype;
  return broadcast_all(in.first(2), out[0].shape);
}

// Numpy's power(x, y).astype(x.dtype): integer powers with a non-negative integer exponent are
// exact (wrapping); everything else is computed in double, then rounded (float) or truncated (int).
template <typename T, typename U>
T power(T base, U exponent) {
  if constexpr (std::is_integral_v<T> && std::is_integral_v<U>) {
    if (!std::cmp_less(exponent, 0)) {
      using W = std::make_unsigned_t<T>;
      W result = 1, b = W(base);
      for (uint64_t e = uint64_t(exponent); e; e >>= 1) {
        if (e & 1) result = W(result * b);
        b = W(b * b);
      }
      return T(result);
    }
  }
  const double r = std::pow(double(base), double(exponent));
  if constexpr (std::is_floating_point_v<T>)
    return T(r);
  else
    return trunc_saturate<T>(r);
}

Status compute_Pow(const ir::Node&, std::span<const Tensor> in, std::span<Tensor> out) {
  Status inner = Status::Ok();
  Status s = dispatch_arith(in[0].dtype(), [&](auto base_tag) {
    using T = decltype(base_tag);
    inner = dispatch_arith(in[1].dtype(), [&](auto exp_tag) {
      using U = decltype(exp_tag);
      broadcast_binary<T, U, T>(in[0], in[1], out[0], power<T, U>);
    });
  });
  return s.ok() ? inner : s;
}

// --- PRelu: y = x < 0 ? slope * x : x, slope broadcast to X's shape (unidirectional) -------------

Status infer_PRelu(const ir::Node&, std::span<const TensorInfo> in, std::span<TensorInfo> out) {
  MIXQ_RETURN_IF_ERROR(expect_dtype(
      in[0], {DType::kFloat32, DType::kInt8, DType::kUInt8, DType::kInt32, DType::kInt64}, "X"));
  const TensorInfo& slope = input_or_absent(in, 1);
  MIXQ_RETURN_IF_ERROR(expect_dtype(slope, {in[0].dtype}, "slope"));
  const Shape& x = in[0].shape;
  const Shape& s = slope.shape;
  bool ok = s.size() <= x.size();
  for (size_t i = 0; ok && i < s.size(); ++i) {
    const int64_t ds = s[i], dx = x[i + x.size() - s.size()];
    ok = ds == 1 || ds == dx || ds == ir::kDynamicDim || dx == ir::kDynamicDim;
  }
  if (!ok)
    return InvalidArgument("slope of shape " + shape_to_string(s) +
                           " cannot be broadcast to X of shape " + shape_to_string(x));
  out[0].dtype = in[0].dtype;
  out[0].shape = x;
  return Status::Ok();
}

Status compute_PRelu(const ir::Node&, std::span<const Tensor> in, std::span<Tensor> out) {
  return dispatch_arith(in[0].dtype(), [&](auto tag) {
    using T = decltype(tag);
    broadcast_binary<T, T, T>(in[0], in[1], out[0],
                              [](T x, T slope) { return x < T(0) ? wrap_mul(slope, x) : x; });
  });
}

// --- variadic Max, Min, Sum, Mean ----------------------------------------------------------------

Status infer_variadic(std::span<const TensorInfo> in, std::span<TensorInfo> out,
                      std::initializer_list<DType> allowed) {
  if (in.empty()) return InvalidArgument("at least one input is required");
  MIXQ_RETURN_IF_ERROR(expect_dtype(in[0], allowed, "input 0"));
  for (size_t i = 1; i < in.size(); ++i) {
    const std::string what = "input " + std::to_string(i);
    MIXQ_RETURN_IF_ERROR(expect_dtype(in[i], {in[0].dtype}, what.c_str()));
  }
  out[0].dtype = in[0].dtype;
  return broadcast_all(in, out[0].shape);
}

Status infer_minmax(const ir::Node&, std::span<const TensorInfo> in, std::span<TensorInfo> out) {
  return infer_variadic(
      in, out, {DType::kFloat32, DType::kInt8, DType::kUInt8, DType::kInt32, DType::kInt64});
}
Status infer_sum(const ir::Node&, std::span<const TensorInfo> in, std::span<TensorInfo> out) {
  return infer_variadic(in, out, {DType::kFloat32});
}

// y = fold(combine) over the inputs, left to right in their dtype (as numpy evaluates it).
template <typename Combine>
Status fold_inputs(std::span<const Tensor> in, Tensor& y, Combine combine) {
  return dispatch_arith(y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    std::vector<std::vector<int64_t>> strides;
    for (const Tensor& t : in) strides.push_back(broadcast_strides(t.shape(), y.shape()));
    std::vector<int64_t> index;
    T* py = y.data<T>();
    for (int64_t i = 0; i < y.numel(); ++i) {
      unravel_index(i, y.shape(), index);
      T acc = in[0].data<T>()[offset_of(index, strides[0])];
      for (size_t k = 1; k < in.size(); ++k)
        acc = combine(acc, in[k].data<T>()[offset_of(index, strides[k])]);
      py[i] = acc;
    }
  });
}

// NaN propagates through Max and Min (numpy's maximum/minimum).
Status compute_Max(const ir::Node&, std::span<const Tensor> in, std::span<Tensor> out) {
  return fold_inputs(in, out[0], [](auto a, auto b) { return is_nan(a) || a >= b ? a : b; });
}
Status compute_Min(const ir::Node&, std::span<const Tensor> in, std::span<Tensor> out) {
  return fold_inputs(in, out[0], [](auto a, auto b) { return is_nan(a) || a <= b ? a : b; });
}
Status compute_Sum(const ir::Node&, std::span<const Tensor> in, std::span<Tensor> out) {
  return fold_inputs(in, out[0], [](auto a, auto b) { return a + b; });
}
Status compute_Mean(const ir::Node& node, std::span<const Tensor> in, std::span<Tensor> out) {
  MIXQ_RETURN_IF_ERROR(compute_Sum(node, in, out));
  float* y = out[0].data<float>();
  for (int64_t i = 0; i < out[0].numel(); ++i) y[i] /= float(in.size());
  return Status::Ok();
}

}  // namespace

void register_elementwise(Registry& r) {
  using ir::OpKind;
  r.add(OpKind::kAdd, {infer_arith, compute_Add});
  r.add(OpKind::kSub, {infer_arith, compute_Sub});
  r.add(OpKind::kMul, {infer_arith, compute_Mul});
  r.add(OpKind::kDiv, {infer_arith, compute_Div});
  r.add(OpKind::kPow, {infer_Pow, compute_Pow});
  r.add(OpKind::kPRelu, {infer_PRelu, compute_PRelu});
  r.add(OpKind::kMax, {infer_minmax, compute_Max});
  r.add(OpKind::kMin, {infer_minmax, compute_Min});
  r.add(OpKind::kSum, {infer_sum, compute_Sum});
  r.add(OpKind::kMean, {infer_sum, compute_Mean});
}

}  // namespace mixq::reference
