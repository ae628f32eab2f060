// Reference kernels: ReduceMean, ReduceSum, ReduceMax, ReduceMin. Axes arrive as the optional
// input 1 (the importer rewrites the older attribute form); keepdims defaults to 1 and
// noop_with_empty_axes to 0 (empty or absent axes reduce everything; with 1 they are the identity).
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "backends/reference/helpers.h"

namespace mixq::reference {
namespace {

// Which axes a node reduces. `known` is false when the axes are computed at run time.
struct ReduceAxes {
  bool known = true;
  bool identity = false;      // noop_with_empty_axes with no axes
  std::vector<bool> reduced;  // per input axis
  size_t count = 0;           // number of reduced axes (also when not known)
};

Status reduce_axes(const ir::Node& node, const TensorInfo& axes_in, int64_t rank, ReduceAxes& r) {
  r.reduced.assign(size_t(rank), false);
  std::vector<int64_t> axes;
  if (axes_in.present) {
    if (axes_in.shape.size() > 1)
      return InvalidArgument("axes must be a 1-D tensor, got shape " +
                             shape_to_string(axes_in.shape));
    const int64_t n = axes_in.shape.empty() ? 1 : axes_in.shape[0];
    if (!axes_in.value) {
      // Only the number of axes may be known; an empty axes tensor needs no value.
      if (axes_in.dtype != DType::kInt64 && axes_in.dtype != DType::kInt32)
        return InvalidArgument("axes must be int64, got " + std::string(dtype_name(axes_in.dtype)));
      if (n != 0) {
        r.known = false;
        r.count = n < 0 ? 0 : size_t(n);
        return Status::Ok();
      }
    } else {
      MIXQ_RETURN_IF_ERROR(read_int_input(axes_in, "axes", axes));
    }
  }
  if (axes.empty()) {
    r.identity = node.attr_int("noop_with_empty_axes", 0) != 0;
    if (!r.identity) r.reduced.assign(size_t(rank), true);
    r.count = r.identity ? 0 : size_t(rank);
    return Status::Ok();
  }
  for (int64_t axis : axes) {
    int64_t a = 0;
    MIXQ_RETURN_IF_ERROR(normalize_axis(axis, rank, a, "axes value"));
    if (r.reduced[size_t(a)]) return InvalidArgument("axis " + std::to_string(a) + " is repeated");
    r.reduced[size_t(a)] = true;
  }
  r.count = axes.size();
  return Status::Ok();
}

Status infer_reduce(const ir::Node& node, std::span<const TensorInfo> in, std::span<TensorInfo> out,
                    std::initializer_list<DType> allowed) {
  MIXQ_RETURN_IF_ERROR(expect_dtype(in[0], allowed, "data"));
  const Shape& shape = in[0].shape;
  const int64_t rank = int64_t(shape.size());
  const bool keepdims = node.attr_int("keepdims", 1) != 0;
  ReduceAxes r;
  MIXQ_RETURN_IF_ERROR(reduce_axes(node, input_or_absent(in, 1), rank, r));
  out[0].dtype = in[0].dtype;
  if (!r.known) {
    // Unknown axes: with keepdims the rank stays and size-1 dims stay 1.
    if (keepdims) {
      out[0].shape.clear();
      for (int64_t d : shape) out[0].shape.push_back(d == 1 ? 1 : ir::kDynamicDim);
    } else if (r.count > 0 && int64_t(r.count) <= rank) {
      out[0].shape.assign(size_t(rank) - r.count, ir::kDynamicDim);
    } else {
      return Unsupported(
          "the reduced axes are computed at run time, so the output rank is unknown");
    }
    return Status::Ok();
  }
  out[0].shape.clear();
  for (int64_t i = 0; i < rank; ++i) {
    if (!r.reduced[size_t(i)])
      out[0].shape.push_back(shape[size_t(i)]);
    else if (keepdims)
      out[0].shape.push_back(1);
  }
  return Status::Ok();
}

Status infer_float(const ir::Node& node, std::span<const TensorInfo> in,
                   std::span<TensorInfo> out) {
  return infer_reduce(node, in, out, {DType::kFloat32});
}
Status infer_numeric(const ir::Node& node, std::span<const TensorInfo> in,
                     std::span<TensorInfo> out) {
  return infer_reduce(node, in, out,
                      {DType::kFloat32, DType::kInt8, DType::kUInt8, DType::kInt32, DType::kInt64});
}

enum class Kind { kSum, kMean, kMax, kMin };

// Accumulates every input element into its output slot. Floats sum in double (the oracle is
// more accurate than fp32 accumulation); integer sums wrap like the output type.
// Empty reductions give 0 (Sum), NaN (Mean), lowest (Max) and highest (Min), as opset 18 defines.
Status reduce(const ir::Node& node, std::span<const Tensor> in, Tensor& y, Kind kind) {
  ReduceAxes r;
  MIXQ_RETURN_IF_ERROR(
      reduce_axes(node, in.size() > 1 ? TensorInfo::of(in[1]) : TensorInfo{}, in[0].rank(), r));
  const Tensor& x = in[0];
  if (r.identity) {
    std::memcpy(y.raw(), x.raw(), x.nbytes());
    return Status::Ok();
  }
  // Reading the keepdims output with broadcast strides maps each input index to its slot.
  Shape kept = x.shape();
  for (size_t i = 0; i < kept.size(); ++i)
    if (r.reduced[i]) kept[i] = 1;
  const std::vector<int64_t> to_out = broadcast_strides(kept, x.shape());
  const int64_t per_slot = y.numel() ? x.numel() / y.numel() : 0;
  return dispatch_arith(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using Acc = std::conditional_t<std::is_floating_point_v<T>, double, T>;
    Acc init = 0;
    if (kind == Kind::kMax)
      init = std::numeric_limits<T>::has_infinity ? -std::numeric_limits<Acc>::infinity()
                                                  : std::numeric_limits<Acc>::lowest();
    if (kind == Kind::kMin)
      init = std::numeric_limits<T>::has_infinity ? std::numeric_limits<Acc>::infinity()
                                                  : std::numeric_limits<Acc>::max();
    std::vector<Acc> acc(size_t(y.numel()), init);
    const T* px = x.data<T>();
    std::vector<int64_t> index;
    for (int64_t i = 0; i < x.numel(); ++i) {
      unravel_index(i, x.shape(), index);
      Acc& a = acc[size_t(offset_of(index, to_out))];
      const Acc v = Acc(px[i]);
      if (kind == Kind::kMax)
        a = (std::isnan(double(a)) || a >= v) ? a : v;  // NaN propagates
      else if (kind == Kind::kMin)
        a = (std::isnan(double(a)) || a <= v) ? a : v;
      else if constexpr (std::is_integral_v<T>)
        a = T(std::make_unsigned_t<T>(a) + std::make_unsigned_t<T>(v));
      else
        a += v;
    }
    T* py = y.data<T>();
    for (size_t i = 0; i < acc.size(); ++i)
      py[i] = kind == Kind::kMean ? T(acc[i] / Acc(per_slot)) : T(acc[i]);
  });
}

Status compute_ReduceSum(const ir::Node& n, std::span<const Tensor> in, std::span<Tensor> out) {
  return reduce(n, in, out[0], Kind::kSum);
}
Status compute_ReduceMean(const ir::Node& n, std::span<const Tensor> in, std::span<Tensor> out) {
  return reduce(n, in, out[0], Kind::kMean);
}
Status compute_ReduceMax(const ir::Node& n, std::span<const Tensor> in, std::span<Tensor> out) {
  return reduce(n, in, out[0], Kind::kMax);
}
Status compute_ReduceMin(const ir::Node& n, std::span<const Tensor> in, std::span<Tensor> out) {
  return reduce(n, in, out[0], Kind::kMin);
}

}  // namespace

void register_reduce(Registry& r) {
  using ir::OpKind;
  r.add(OpKind::kReduceMean, {infer_float, compute_ReduceMean});
  r.add(OpKind::kReduceSum, {infer_numeric, compute_ReduceSum});
  r.add(OpKind::kReduceMax, {infer_numeric, compute_ReduceMax});
  r.add(OpKind::kReduceMin, {infer_numeric, compute_ReduceMin});
}

}  // namespace mixq::reference
