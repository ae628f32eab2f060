#include "mixq/tensor.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>

namespace mixq {

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_to_string(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ",";
    s += shape[i] < 0 ? std::string("N") : std::to_string(shape[i]);
  }
  return s + "]";
}

Tensor Tensor::empty(DType dtype, Shape shape) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  for (int64_t d : t.shape_)
    if (d < 0) throw std::invalid_argument("Tensor::empty with a negative dimension");
  size_t bytes = t.nbytes();
  // Round up so aligned_alloc's size requirement holds; at least one block so data_ != nullptr.
  size_t padded = ((bytes + kAlignment - 1) / kAlignment) * kAlignment;
  if (padded == 0) padded = kAlignment;
  void* p = std::aligned_alloc(kAlignment, padded);
  if (p == nullptr) throw std::bad_alloc();
  t.holder_ = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  t.data_ = p;
  return t;
}

Tensor Tensor::zeros(DType dtype, Shape shape) {
  Tensor t = empty(dtype, std::move(shape));
  std::memset(t.data_, 0, t.nbytes());
  return t;
}

Tensor Tensor::wrap(DType dtype, Shape shape, void* data, std::shared_ptr<void> keepalive) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.holder_ = std::move(keepalive);
  t.data_ = data;
  return t;
}

Tensor Tensor::clone() const {
  if (!defined()) return Tensor();
  Tensor t = empty(dtype_, shape_);
  if (nbytes()) std::memcpy(t.data_, data_, nbytes());
  return t;
}

Tensor Tensor::reshaped(Shape shape) const {
  if (shape_numel(shape) != numel())
    throw std::invalid_argument("reshape of " + describe() + " to " + shape_to_string(shape));
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::slice_rows(int64_t begin, int64_t end) const {
  assert(rank() >= 1 && begin >= 0 && begin <= end && end <= shape_[0]);
  Tensor t = *this;
  const int64_t row = shape_[0] ? numel() / shape_[0] : 0;
  t.shape_[0] = end - begin;
  t.data_ = static_cast<char*>(data_) + size_t(begin * row) * dtype_size(dtype_);
  return t;
}

namespace {

template <typename T>
double load_as_double(const void* p, int64_t i) {
  const T v = static_cast<const T*>(p)[i];
  if constexpr (std::is_same_v<T, Half>)
    return half_to_float(v);
  else if constexpr (std::is_same_v<T, BFloat16>)
    return bf16_to_float(v);
  else if constexpr (std::is_same_v<T, Float8E4M3>)
    return fp8e4m3_to_float(v);
  else
    return double(v);
}

template <typename T>
void store_from_double(void* p, int64_t i, double v) {
  T* out = static_cast<T*>(p);
  if constexpr (std::is_same_v<T, float>)
    out[i] = float(v);
  else if constexpr (std::is_same_v<T, Half>)
    out[i] = float_to_half(float(v));
  else if constexpr (std::is_same_v<T, BFloat16>)
    out[i] = float_to_bf16(float(v));
  else if constexpr (std::is_same_v<T, Float8E4M3>)
    out[i] = float_to_fp8e4m3(float(v));
  else if constexpr (std::is_same_v<T, bool>)
    out[i] = v != 0.0;
  else {
    if (std::isnan(v)) {
      out[i] = 0;
      return;
    }
    const double r = std::nearbyint(v);  // default rounding mode: half to even
    const double lo = double(std::numeric_limits<T>::lowest());
    const double hi = double(std::numeric_limits<T>::max());
    out[i] =
        r < lo ? std::numeric_limits<T>::lowest() : (r > hi ? std::numeric_limits<T>::max() : T(r));
  }
}

template <typename F>
decltype(auto) dispatch(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32:
      return f(float{});
    case DType::kFloat16:
      return f(Half{});
    case DType::kBFloat16:
      return f(BFloat16{});
    case DType::kFloat8E4M3:
      return f(Float8E4M3{});
    case DType::kInt8:
      return f(int8_t{});
    case DType::kUInt8:
      return f(uint8_t{});
    case DType::kInt32:
      return f(int32_t{});
    case DType::kInt64:
      return f(int64_t{});
    case DType::kBool:
      return f(bool{});
  }
  return f(float{});
}

}  // namespace

double Tensor::get_as_double(int64_t i) const {
  return dispatch(dtype_, [&](auto tag) { return load_as_double<decltype(tag)>(data_, i); });
}

int64_t Tensor::get_as_int64(int64_t i) const {
  if (dtype_ == DType::kInt64) return static_cast<const int64_t*>(data_)[i];
  return int64_t(get_as_double(i));
}

std::vector<int64_t> Tensor::to_int64_vector() const {
  std::vector<int64_t> v(static_cast<size_t>(numel()));
  for (int64_t i = 0; i < numel(); ++i) v[size_t(i)] = get_as_int64(i);
  return v;
}

std::vector<float> Tensor::to_float_vector() const {
  std::vector<float> v(static_cast<size_t>(numel()));
  for (int64_t i = 0; i < numel(); ++i) v[size_t(i)] = float(get_as_double(i));
  return v;
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return clone();
  Tensor t = empty(dtype, shape_);
  const int64_t n = numel();
  // Both types resolved once, outside the loop (loading an engine converts millions of weights).
  dispatch(dtype_, [&](auto from) {
    dispatch(dtype, [&](auto to) {
      for (int64_t i = 0; i < n; ++i)
        store_from_double<decltype(to)>(t.data_, i, load_as_double<decltype(from)>(data_, i));
    });
  });
  return t;
}

std::string Tensor::describe() const {
  if (!defined()) return "<undefined>";
  return std::string(dtype_name(dtype_)) + shape_to_string(shape_);
}

}  // namespace mixq
