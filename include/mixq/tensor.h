// A dense, contiguous, row-major host tensor with shared storage (copies are cheap views).
#pragma once

#include <cassert>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "mixq/dtype.h"

namespace mixq {

using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& shape);
std::string shape_to_string(const Shape& shape);

class Tensor {
 public:
  static constexpr size_t kAlignment = 64;

  Tensor() = default;

  // Uninitialised storage, 64-byte aligned.
  static Tensor empty(DType dtype, Shape shape);
  static Tensor zeros(DType dtype, Shape shape);
  // Borrow memory owned elsewhere; `keepalive` keeps it valid for the tensor's lifetime.
  static Tensor wrap(DType dtype, Shape shape, void* data, std::shared_ptr<void> keepalive);
  template <typename T>
  static Tensor from_vector(Shape shape, const std::vector<T>& values) {
    Tensor t = empty(DTypeOf<T>::value, std::move(shape));
    assert(size_t(t.numel()) == values.size());
    std::copy(values.begin(), values.end(), t.data<T>());
    return t;
  }
  template <typename T>
  static Tensor scalar(T value) {
    return from_vector<T>({}, std::vector<T>{value});
  }

  bool defined() const { return data_ != nullptr || (holder_ != nullptr); }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int rank() const { return int(shape_.size()); }
  int64_t dim(int axis) const { return shape_[size_t(axis < 0 ? axis + rank() : axis)]; }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }

  void* raw() { return data_; }
  const void* raw() const { return data_; }
  template <typename T>
  T* data() {
    assert(DTypeOf<T>::value == dtype_);
    return static_cast<T*>(data_);
  }
  template <typename T>
  const T* data() const {
    assert(DTypeOf<T>::value == dtype_);
    return static_cast<const T*>(data_);
  }
  template <typename T>
  std::span<T> span() {
    return {data<T>(), size_t(numel())};
  }
  template <typename T>
  std::span<const T> span() const {
    return {data<T>(), size_t(numel())};
  }

  // Deep copy.
  Tensor clone() const;
  // Same storage, new shape with the same element count.
  Tensor reshaped(Shape shape) const;
  // Rows [begin, end) of the first dimension, sharing storage.
  Tensor slice_rows(int64_t begin, int64_t end) const;
  // Elementwise conversion to another dtype (float <-> int uses round-half-even and saturation).
  Tensor to(DType dtype) const;
  // Value at a flat index as double, for any dtype (tests, printing, small shape tensors).
  double get_as_double(int64_t flat_index) const;
  int64_t get_as_int64(int64_t flat_index) const;
  // Whole contents as int64 (shape tensors), or as float.
  std::vector<int64_t> to_int64_vector() const;
  std::vector<float> to_float_vector() const;

  std::string describe() const;  // "f32[2,3]"

 private:
  DType dtype_ = DType::kFloat32;
  Shape shape_;
  std::shared_ptr<void> holder_;
  void* data_ = nullptr;
};

}  // namespace mixq
