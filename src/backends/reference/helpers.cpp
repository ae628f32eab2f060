#include "backends/reference/helpers.h"

#include "ir/graph.h"

namespace mixq::reference {

Status broadcast_shapes(const Shape& a, const Shape& b, Shape& out) {
  const size_t rank = std::max(a.size(), b.size());
  out.assign(rank, 1);
  for (size_t i = 0; i < rank; ++i) {
    const int64_t da = i < rank - a.size() ? 1 : a[i - (rank - a.size())];
    const int64_t db = i < rank - b.size() ? 1 : b[i - (rank - b.size())];
    if (da == db)
      out[i] = da;
    else if (da == 1)
      out[i] = db;
    else if (db == 1)
      out[i] = da;
    else if (da == ir::kDynamicDim || db == ir::kDynamicDim)
      out[i] = ir::kDynamicDim;
    else
      return InvalidArgument("shapes " + shape_to_string(a) + " and " + shape_to_string(b) +
                             " cannot be broadcast together");
  }
  return Status::Ok();
}

std::vector<int64_t> strides_of(const Shape& shape) {
  std::vector<int64_t> s(shape.size(), 1);
  for (int i = int(shape.size()) - 2; i >= 0; --i)
    s[size_t(i)] = s[size_t(i + 1)] * shape[size_t(i + 1)];
  return s;
}

std::vector<int64_t> broadcast_strides(const Shape& in_shape, const Shape& out_shape) {
  const std::vector<int64_t> in_strides = strides_of(in_shape);
  std::vector<int64_t> s(out_shape.size(), 0);
  const size_t offset = out_shape.size() - in_shape.size();
  for (size_t i = 0; i < in_shape.size(); ++i) s[i + offset] = in_shape[i] == 1 ? 0 : in_strides[i];
  return s;
}

Status expect_dtype(const TensorInfo& info, std::initializer_list<DType> allowed,
                    const char* what) {
  if (!info.present) return InvalidArgument(std::string(what) + " is missing");
  for (DType d : allowed)
    if (d == info.dtype) return Status::Ok();
  std::string names;
  for (DType d : allowed) names += (names.empty() ? "" : " or ") + std::string(dtype_name(d));
  return Unsupported(std::string(what) + " has dtype " + std::string(dtype_name(info.dtype)) +
                     "; expected " + names);
}

Status read_int_input(const TensorInfo& info, const char* what, std::vector<int64_t>& out) {
  if (!info.present) return InvalidArgument(std::string(what) + " is missing");
  if (info.dtype != DType::kInt64 && info.dtype != DType::kInt32)
    return InvalidArgument(std::string(what) + " must be int64, got " +
                           std::string(dtype_name(info.dtype)));
  if (!info.value)
    return Unsupported(std::string(what) + " is computed at run time; it must be a constant");
  out = info.value->to_int64_vector();
  return Status::Ok();
}

void unravel_index(int64_t flat, const Shape& shape, std::vector<int64_t>& index) {
  index.resize(shape.size());
  for (size_t i = shape.size(); i-- > 0;) {
    index[i] = shape[i] ? flat % shape[i] : 0;
    flat = shape[i] ? flat / shape[i] : 0;
  }
}

int64_t offset_of(const std::vector<int64_t>& index, const std::vector<int64_t>& strides) {
  int64_t offset = 0;
  for (size_t i = 0; i < index.size(); ++i) offset += index[i] * strides[i];
  return offset;
}

}  // namespace mixq::reference
