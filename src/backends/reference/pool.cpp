// Reference kernels: MaxPool (fp32, int8, uint8; optional Indices), AveragePool (fp32),
// GlobalAveragePool (fp32), GlobalMaxPool (fp32, int8, uint8). Windowed pools take 1-3 spatial
// dims.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>

#include "backends/reference/helpers.h"

namespace mixq::reference {
namespace {

// "[1,2,3]" for an attribute list (shape_to_string would print negatives as N).
std::string ints_to_string(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ",";
    s += std::to_string(v[i]);
  }
  return s + "]";
}

template <typename T>
bool is_nan(T v) {
  if constexpr (std::is_floating_point_v<T>) return std::isnan(v);
  return false;
}

// The resolved geometry of a MaxPool/AveragePool node: one entry per spatial axis; pads holds
// the begin pads then the end pads. out is kDynamicDim where the input size is unknown.
struct PoolGeometry {
  std::vector<int64_t> kernel, strides, dilations, pads, out;
};

Status pool_geometry(const ir::Node& node, const Shape& x, PoolGeometry& g) {
  if (x.size() < 3 || x.size() > 5)
    return InvalidArgument("input X must have rank 3, 4 or 5 (N, C and 1-3 spatial dims), got " +
                           shape_to_string(x));
  const size_t nsp = x.size() - 2;
  g.kernel = node.attr_ints("kernel_shape");
  g.strides = node.attr_ints("strides", std::vector<int64_t>(nsp, 1));
  g.dilations = node.attr_ints("dilations", std::vector<int64_t>(nsp, 1));
  g.pads = node.attr_ints("pads", std::vector<int64_t>(2 * nsp, 0));
  if (g.kernel.size() != nsp)
    return InvalidArgument("kernel_shape " + ints_to_string(g.kernel) + " must have " +
                           std::to_string(nsp) + " entries for input " + shape_to_string(x));
  if (g.strides.size() != nsp)
    return InvalidArgument("strides must have " + std::to_string(nsp) + " entries, got " +
                           ints_to_string(g.strides));
  if (g.dilations.size() != nsp)
    return InvalidArgument("dilations must have " + std::to_string(nsp) + " entries, got " +
                           ints_to_string(g.dilations));
  if (g.pads.size() != 2 * nsp)
    return InvalidArgument("pads must have " + std::to_string(2 * nsp) + " entries, got " +
                           ints_to_string(g.pads));
  for (size_t i = 0; i < nsp; ++i) {
    if (g.kernel[i] < 1 || g.strides[i] < 1 || g.dilations[i] < 1)
      return InvalidArgument("kernel_shape, strides and dilations must be >= 1, got " +
                             ints_to_string(g.kernel) + ", " + ints_to_string(g.strides) + ", " +
                             ints_to_string(g.dilations));
    // As onnxruntime: a pad as wide as the kernel would make windows of padding only.
    if (g.pads[i] < 0 || g.pads[i + nsp] < 0 || g.pads[i] >= g.kernel[i] ||
        g.pads[i + nsp] >= g.kernel[i])
      return InvalidArgument("pads " + ints_to_string(g.pads) +
                             " must be >= 0 and smaller than kernel_shape " +
                             ints_to_string(g.kernel));
  }
  const bool ceil_mode = node.attr_int("ceil_mode", 0) != 0;
  const std::string auto_pad = node.attr_string("auto_pad", "NOTSET");
  if (auto_pad != "NOTSET" && auto_pad != "VALID" && auto_pad != "SAME_UPPER" &&
      auto_pad != "SAME_LOWER")
    return InvalidArgument("auto_pad '" + auto_pad +
                           "' is not one of NOTSET, VALID, SAME_UPPER, SAME_LOWER");

  g.out.assign(nsp, ir::kDynamicDim);
  for (size_t i = 0; i < nsp; ++i) {
    const int64_t in = x[i + 2], s = g.strides[i];
    if (in == ir::kDynamicDim) continue;
    const int64_t window = (g.kernel[i] - 1) * g.dilations[i] + 1;  // the dilated extent
    if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
      // out = ceil(in / s); an odd total pad puts the extra at the end (UPPER) or begin (LOWER).
      g.out[i] = (in + s - 1) / s;
      const int64_t total = std::max<int64_t>(0, (g.out[i] - 1) * s + window - in);
      const int64_t small = total / 2, big = total - small;
      g.pads[i] = auto_pad == "SAME_UPPER" ? small : big;
      g.pads[i + nsp] = auto_pad == "SAME_UPPER" ? big : small;
      continue;
    }
    if (auto_pad == "VALID") g.pads[i] = g.pads[i + nsp] = 0;
    const int64_t padded = in + g.pads[i] + g.pads[i + nsp];
    if (padded < window)
      return InvalidArgument("spatial dim " + std::to_string(i) + " of size " + std::to_string(in) +
                             " (padded " + std::to_string(padded) +
                             ") is smaller than the pooling window " + std::to_string(window));
    if (ceil_mode && auto_pad == "NOTSET") {
      g.out[i] = (padded - window + s - 1) / s + 1;
      // The last window must start inside the input or its begin padding (onnxruntime, PyTorch).
      if ((g.out[i] - 1) * s >= in + g.pads[i]) --g.out[i];
    } else {
      g.out[i] = (padded - window) / s + 1;
    }
  }
  return Status::Ok();
}

Status infer_pool(const ir::Node& node, std::span<const TensorInfo> in, std::span<TensorInfo> out,
                  std::initializer_list<DType> dtypes) {
  if (in.empty()) return InvalidArgument("input X is missing");
  MIXQ_RETURN_IF_ERROR(expect_dtype(in[0], dtypes, "input X"));
  PoolGeometry g;
  MIXQ_RETURN_IF_ERROR(pool_geometry(node, in[0].shape, g));
  out[0].dtype = in[0].dtype;
  out[0].shape = {in[0].shape[0], in[0].shape[1]};
  out[0].shape.insert(out[0].shape.end(), g.out.begin(), g.out.end());
  return Status::Ok();
}

Status infer_MaxPool(const ir::Node& node, std::span<const TensorInfo> in,
                     std::span<TensorInfo> out) {
  MIXQ_RETURN_IF_ERROR(infer_pool(node, in, out, {DType::kFloat32, DType::kInt8, DType::kUInt8}));
  const int64_t storage_order = node.attr_int("storage_order", 0);
  if (storage_order != 0 && storage_order != 1)
    return InvalidArgument("storage_order must be 0 (row major) or 1 (column major), got " +
                           std::to_string(storage_order));
  if (out.size() > 1 && out[1].present) {
    out[1].dtype = DType::kInt64;
    out[1].shape = out[0].shape;
  }
  return Status::Ok();
}

Status infer_AveragePool(const ir::Node& node, std::span<const TensorInfo> in,
                         std::span<TensorInfo> out) {
  return infer_pool(node, in, out, {DType::kFloat32});
}

// Spatial quantities padded to 3 axes (leading size-1 axes), so one loop nest serves 1-D to 3-D.
struct Window3 {
  int64_t in[3], out[3], kernel[3], stride[3], dilation[3], pad_begin[3], pad_end[3];
};

Window3 to_window3(const Shape& x, const PoolGeometry& g) {
  const size_t nsp = g.kernel.size();
  Window3 w;
  for (size_t a = 0; a < 3; ++a) {
    const bool real = a >= 3 - nsp;
    const size_t i = real ? a - (3 - nsp) : 0;
    w.in[a] = real ? x[i + 2] : 1;
    w.out[a] = real ? g.out[i] : 1;
    w.kernel[a] = real ? g.kernel[i] : 1;
    w.stride[a] = real ? g.strides[i] : 1;
    w.dilation[a] = real ? g.dilations[i] : 1;
    w.pad_begin[a] = real ? g.pads[i] : 0;
    w.pad_end[a] = real ? g.pads[i + nsp] : 0;
  }
  return w;
}

// Calls f(plane, y_index, start) for every output element of every (n, c) plane, where start
// holds the input coordinates of the window's first tap (negative inside the begin padding).
template <typename F>
void for_each_window(int64_t planes, const Window3& w, F&& f) {
  const int64_t out_plane = w.out[0] * w.out[1] * w.out[2];
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    int64_t yi = p * out_plane;
    for (int64_t od = 0; od < w.out[0]; ++od)
      for (int64_t oh = 0; oh < w.out[1]; ++oh)
        for (int64_t ow = 0; ow < w.out[2]; ++ow) {
          const int64_t start[3] = {od * w.stride[0] - w.pad_begin[0],
                                    oh * w.stride[1] - w.pad_begin[1],
                                    ow * w.stride[2] - w.pad_begin[2]};
          f(p, yi++, start);
        }
  }
}

template <typename T>
void max_pool(const Tensor& xt, Tensor& yt, Tensor* indices, const Window3& w, bool col_major) {
  const int64_t planes = xt.dim(0) * xt.dim(1);
  const int64_t in_plane = w.in[0] * w.in[1] * w.in[2];
  const T* x = xt.data<T>();
  T* y = yt.data<T>();
  int64_t* ind = indices ? indices->data<int64_t>() : nullptr;
  for_each_window(planes, w, [&](int64_t p, int64_t yi, const int64_t* start) {
    // NaN is skipped, as ONNX's reference drops NaN (its padding) before taking the max.
    T best = std::numeric_limits<T>::has_quiet_NaN ? std::numeric_limits<T>::quiet_NaN()
                                                   : std::numeric_limits<T>::lowest();
    int64_t best_at = -1;
    for (int64_t kd = 0; kd < w.kernel[0]; ++kd) {
      const int64_t d = start[0] + kd * w.dilation[0];
      if (d < 0 || d >= w.in[0]) continue;
      for (int64_t kh = 0; kh < w.kernel[1]; ++kh) {
        const int64_t h = start[1] + kh * w.dilation[1];
        if (h < 0 || h >= w.in[1]) continue;
        for (int64_t kw = 0; kw < w.kernel[2]; ++kw) {
          const int64_t ww = start[2] + kw * w.dilation[2];
          if (ww < 0 || ww >= w.in[2]) continue;
          const T v = x[p * in_plane + (d * w.in[1] + h) * w.in[2] + ww];
          if (is_nan(v) || (best_at >= 0 && !(v > best))) continue;  // ties keep the first
          best = v;
          // Indices are flat over the whole input, over the spatial dims in row- or
          // column-major order (storage_order).
          best_at = p * in_plane + (col_major ? d + h * w.in[0] + ww * w.in[0] * w.in[1]
                                              : (d * w.in[1] + h) * w.in[2] + ww);
        }
      }
    }
    y[yi] = best;
    if (ind) ind[yi] = best_at;
  });
}

Status compute_MaxPool(const ir::Node& node, std::span<const Tensor> in, std::span<Tensor> out) {
  PoolGeometry g;
  MIXQ_RETURN_IF_ERROR(pool_geometry(node, in[0].shape(), g));
  const Window3 w = to_window3(in[0].shape(), g);
  Tensor* indices = out.size() > 1 && out[1].defined() ? &out[1] : nullptr;
  const bool col_major = node.attr_int("storage_order", 0) == 1;
  return dispatch_numeric(in[0].dtype(), [&](auto tag) {
    max_pool<decltype(tag)>(in[0], out[0], indices, w, col_major);
  });
}

// Number of taps j in [0, k) with lo <= start + j * dil < hi.
int64_t taps_in(int64_t start, int64_t k, int64_t dil, int64_t lo, int64_t hi) {
  int64_t n = 0;
  for (int64_t j = 0; j < k; ++j) n += start + j * dil >= lo && start + j * dil < hi;
  return n;
}

Status compute_AveragePool(const ir::Node& node, std::span<const Tensor> in,
                           std::span<Tensor> out) {
  PoolGeometry g;
  MIXQ_RETURN_IF_ERROR(pool_geometry(node, in[0].shape(), g));
  const Window3 w = to_window3(in[0].shape(), g);
  const bool include_pad = node.attr_int("count_include_pad", 0) != 0;
  const int64_t planes = in[0].dim(0) * in[0].dim(1);
  const int64_t in_plane = w.in[0] * w.in[1] * w.in[2];
  const float* x = in[0].data<float>();
  float* y = out[0].data<float>();
  for_each_window(planes, w, [&](int64_t p, int64_t yi, const int64_t* start) {
    double sum = 0;
    for (int64_t kd = 0; kd < w.kernel[0]; ++kd) {
      const int64_t d = start[0] + kd * w.dilation[0];
      if (d < 0 || d >= w.in[0]) continue;
      for (int64_t kh = 0; kh < w.kernel[1]; ++kh) {
        const int64_t h = start[1] + kh * w.dilation[1];
        if (h < 0 || h >= w.in[1]) continue;
        for (int64_t kw = 0; kw < w.kernel[2]; ++kw) {
          const int64_t ww = start[2] + kw * w.dilation[2];
          if (ww >= 0 && ww < w.in[2]) sum += x[p * in_plane + (d * w.in[1] + h) * w.in[2] + ww];
        }
      }
    }
    // The divisor counts the real elements, or with count_include_pad the taps inside the
    // padded input [-pad_begin, in + pad_end): taps a ceil_mode window hangs past it never count.
    int64_t count = 1;
    for (int a = 0; a < 3; ++a)
      count *= include_pad ? taps_in(start[a], w.kernel[a], w.dilation[a], -w.pad_begin[a],
                                     w.in[a] + w.pad_end[a])
                           : taps_in(start[a], w.kernel[a], w.dilation[a], 0, w.in[a]);
    y[yi] = count > 0 ? float(sum / double(count)) : std::numeric_limits<float>::quiet_NaN();
  });
  return Status::Ok();
}

// --- Global pools: one value per (n, c) over all spatial positions
// --------------------------------

Status infer_global(std::span<const TensorInfo> in, std::span<TensorInfo> out,
                    std::initializer_list<DType> dtypes) {
  if (in.empty()) return InvalidArgument("input X is missing");
  MIXQ_RETURN_IF_ERROR(expect_dtype(in[0], dtypes, "input X"));
  const Shape& x = in[0].shape;
  if (x.size() < 2)
    return InvalidArgument("input X must have rank >= 2, got " + shape_to_string(x));
  for (size_t i = 2; i < x.size(); ++i)
    if (x[i] == 0)
      return InvalidArgument("input X " + shape_to_string(x) + " has an empty spatial dim");
  out[0].dtype = in[0].dtype;
  out[0].shape = x;
  std::fill(out[0].shape.begin() + 2, out[0].shape.end(), 1);
  return Status::Ok();
}

Status infer_GlobalAveragePool(const ir::Node&, std::span<const TensorInfo> in,
                               std::span<TensorInfo> out) {
  return infer_global(in, out, {DType::kFloat32});
}

Status infer_GlobalMaxPool(const ir::Node&, std::span<const TensorInfo> in,
                           std::span<TensorInfo> out) {
  return infer_global(in, out, {DType::kFloat32, DType::kInt8, DType::kUInt8});
}

Status compute_GlobalAveragePool(const ir::Node&, std::span<const Tensor> in,
                                 std::span<Tensor> out) {
  const Shape& shape = in[0].shape();
  const int64_t planes = shape[0] * shape[1],
                size = shape_numel(Shape(shape.begin() + 2, shape.end()));
  const float* x = in[0].data<float>();
  float* y = out[0].data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    double sum = 0;
    for (int64_t i = 0; i < size; ++i) sum += x[p * size + i];
    y[p] = float(sum / double(size));
  }
  return Status::Ok();
}

Status compute_GlobalMaxPool(const ir::Node&, std::span<const Tensor> in, std::span<Tensor> out) {
  const Shape& shape = in[0].shape();
  const int64_t planes = shape[0] * shape[1],
                size = shape_numel(Shape(shape.begin() + 2, shape.end()));
  return dispatch_numeric(in[0].dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* x = in[0].data<T>();
    T* y = out[0].data<T>();
    // NaN propagates, as numpy's max in ONNX's reference.
    for (int64_t p = 0; p < planes; ++p) {
      T m = x[p * size];
      for (int64_t i = 1; i < size && !is_nan(m); ++i)
        if (is_nan(x[p * size + i]) || x[p * size + i] > m) m = x[p * size + i];
      y[p] = m;
    }
  });
}

}  // namespace

void register_pool(Registry& r) {
  using ir::OpKind;
  r.add(OpKind::kMaxPool, {infer_MaxPool, compute_MaxPool});
  r.add(OpKind::kAveragePool, {infer_AveragePool, compute_AveragePool});
  r.add(OpKind::kGlobalAveragePool, {infer_GlobalAveragePool, compute_GlobalAveragePool});
  r.add(OpKind::kGlobalMaxPool, {infer_GlobalMaxPool, compute_GlobalMaxPool});
}

}  // namespace mixq::reference
