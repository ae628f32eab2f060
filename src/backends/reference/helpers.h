// Small shared pieces for reference kernels: axis handling, broadcasting, dtype dispatch.
#pragma once

#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "backends/reference/reference.h"

namespace mixq::reference {

// Normalise a possibly negative axis against `rank`; error if out of range.
inline Status normalize_axis(int64_t axis, int64_t rank, int64_t& out, const char* what = "axis") {
  if (axis < -rank || axis >= rank)
    return InvalidArgument(std::string(what) + " " + std::to_string(axis) +
                           " is out of range for rank " + std::to_string(rank));
  out = axis < 0 ? axis + rank : axis;
  return Status::Ok();
}

// Numpy-style broadcast of two shapes (kDynamicDim propagates as unknown).
Status broadcast_shapes(const Shape& a, const Shape& b, Shape& out);

// Row-major strides of `shape`.
std::vector<int64_t> strides_of(const Shape& shape);

// Strides for reading an input of `in_shape` while iterating `out_shape` (0 on broadcast axes).
std::vector<int64_t> broadcast_strides(const Shape& in_shape, const Shape& out_shape);

// Slice: per input axis, the first element taken, the step and how many elements are taken.
struct SliceAxis {
  int64_t start = 0, step = 1, count = 0;
};
// Slice parameters per input axis from the starts/ends/axes/steps inputs (all known), clamped as
// the ONNX spec says; unknown input dims leave count = kDynamicDim.
Status slice_plan(const Shape& x, const std::vector<int64_t>& starts,
                  const std::vector<int64_t>& ends, std::vector<int64_t> axes,
                  std::vector<int64_t> steps, bool has_axes, bool has_steps,
                  std::vector<SliceAxis>& plan);

// Require a present input of one of the listed dtypes.
Status expect_dtype(const TensorInfo& info, std::initializer_list<DType> allowed, const char* what);

// Read a present, known int64/int32 tensor input into a vector (axes, pads, shapes...).
Status read_int_input(const TensorInfo& info, const char* what, std::vector<int64_t>& out);

// Call f(T{}) with T the C++ type of a numeric dtype: float, int8_t, uint8_t, int32_t, int64_t,
// bool. Half-precision dtypes are not computed by the reference (it is an fp32 oracle).
template <typename F>
Status dispatch_numeric(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32:
      f(float{});
      return Status::Ok();
    case DType::kInt8:
      f(int8_t{});
      return Status::Ok();
    case DType::kUInt8:
      f(uint8_t{});
      return Status::Ok();
    case DType::kInt32:
      f(int32_t{});
      return Status::Ok();
    case DType::kInt64:
      f(int64_t{});
      return Status::Ok();
    case DType::kBool:
      f(bool{});
      return Status::Ok();
    default:
      return Unsupported("dtype " + std::string(dtype_name(dtype)) +
                         " is not computed by the reference backend");
  }
}

// Any dtype, 16/8-bit floats included: for pure data movement (copy, gather, transpose).
template <typename F>
Status dispatch_any(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat16:
      f(Half{});
      return Status::Ok();
    case DType::kBFloat16:
      f(BFloat16{});
      return Status::Ok();
    case DType::kFloat8E4M3:
      f(Float8E4M3{});
      return Status::Ok();
    default:
      return dispatch_numeric(dtype, std::forward<F>(f));
  }
}

// dispatch_numeric without bool: the dtypes arithmetic (and ordering) is defined on.
template <typename F>
Status dispatch_arith(DType dtype, F&& f) {
  if (dtype == DType::kBool) return Unsupported("arithmetic on bool tensors is not supported");
  return dispatch_numeric(dtype, [&](auto tag) {
    if constexpr (!std::is_same_v<decltype(tag), bool>) f(tag);
  });
}

// Input i of a node, or an absent info when the optional input is missing or beyond the end.
inline const TensorInfo& input_or_absent(std::span<const TensorInfo> in, size_t i) {
  static const TensorInfo kAbsent;
  return i < in.size() ? in[i] : kAbsent;
}
inline bool has_input(std::span<const Tensor> in, size_t i) {
  return i < in.size() && in[i].defined();
}

// True when no dimension is kDynamicDim.
inline bool is_static(const Shape& shape) {
  for (int64_t d : shape)
    if (d < 0) return false;
  return true;
}

// --- N-d indexing (naive, row-major)
// --------------------------------------------------------------

// The multi-index of the element at row-major position `flat` of `shape`.
void unravel_index(int64_t flat, const Shape& shape, std::vector<int64_t>& index);

// Element offset of a multi-index under `strides` (from strides_of or broadcast_strides).
int64_t offset_of(const std::vector<int64_t>& index, const std::vector<int64_t>& strides);

}  // namespace mixq::reference
