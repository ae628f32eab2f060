// Reference kernels: Conv over 1, 2 or 3 spatial dims (groups, dilations, strides, pads, auto_pad),
// fp32.
#include <algorithm>
#include <string>

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

// The resolved geometry of one Conv node. Vectors have one entry per spatial axis; pads holds
// the begin pads then the end pads. out is kDynamicDim where the input size is unknown.
struct ConvGeometry {
  int64_t group = 1;
  std::vector<int64_t> kernel, strides, dilations, pads, out;
};

// Reads and checks the attributes against X and W; computes the output spatial sizes.
Status conv_geometry(const ir::Node& node, const Shape& x, const Shape& w, ConvGeometry& g) {
  if (x.size() < 3 || x.size() > 5)
    return InvalidArgument("input X must have rank 3, 4 or 5 (N, C and 1-3 spatial dims), got " +
                           shape_to_string(x));
  if (w.size() != x.size())
    return InvalidArgument("weight W " + shape_to_string(w) + " must have the rank of X " +
                           shape_to_string(x));
  const size_t nsp = x.size() - 2;
  g.group = node.attr_int("group", 1);
  if (g.group < 1) return InvalidArgument("group must be >= 1, got " + std::to_string(g.group));

  g.kernel.assign(w.begin() + 2, w.end());
  if (node.has_attr("kernel_shape")) {
    const std::vector<int64_t> k = node.attr_ints("kernel_shape");
    if (k.size() != nsp)
      return InvalidArgument("kernel_shape " + ints_to_string(k) + " must have " +
                             std::to_string(nsp) + " entries (one per spatial dim)");
    for (size_t i = 0; i < nsp; ++i) {
      if (g.kernel[i] != ir::kDynamicDim && g.kernel[i] != k[i])
        return InvalidArgument("kernel_shape " + ints_to_string(k) +
                               " does not match the weight's spatial dims " + shape_to_string(w));
      g.kernel[i] = k[i];
    }
  }
  g.strides = node.attr_ints("strides", std::vector<int64_t>(nsp, 1));
  g.dilations = node.attr_ints("dilations", std::vector<int64_t>(nsp, 1));
  g.pads = node.attr_ints("pads", std::vector<int64_t>(2 * nsp, 0));
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
    if (g.strides[i] < 1 || g.dilations[i] < 1)
      return InvalidArgument("strides and dilations must be >= 1, got strides " +
                             ints_to_string(g.strides) + ", dilations " +
                             ints_to_string(g.dilations));
    if (g.pads[i] < 0 || g.pads[i + nsp] < 0)
      return InvalidArgument("pads must be >= 0, got " + ints_to_string(g.pads));
  }

  const std::string auto_pad = node.attr_string("auto_pad", "NOTSET");
  if (auto_pad != "NOTSET" && auto_pad != "VALID" && auto_pad != "SAME_UPPER" &&
      auto_pad != "SAME_LOWER")
    return InvalidArgument("auto_pad '" + auto_pad +
                           "' is not one of NOTSET, VALID, SAME_UPPER, SAME_LOWER");
  g.out.assign(nsp, ir::kDynamicDim);
  for (size_t i = 0; i < nsp; ++i) {
    const int64_t in = x[i + 2], k = g.kernel[i], s = g.strides[i];
    if (in == ir::kDynamicDim || k == ir::kDynamicDim) continue;
    if (k < 1) return InvalidArgument("kernel dims must be >= 1, got " + shape_to_string(w));
    const int64_t window = (k - 1) * g.dilations[i] + 1;  // the dilated kernel's extent
    if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
      // out = ceil(in / s); the total pad goes to the end (UPPER) or begin (LOWER) when odd.
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
                             ") is smaller than the dilated kernel extent " +
                             std::to_string(window));
    g.out[i] = (padded - window) / s + 1;
  }
  return Status::Ok();
}

Status infer_Conv(const ir::Node& node, std::span<const TensorInfo> in, std::span<TensorInfo> out) {
  if (in.size() < 2) return InvalidArgument("Conv needs inputs X and W");
  MIXQ_RETURN_IF_ERROR(expect_dtype(in[0], {DType::kFloat32}, "input X"));
  MIXQ_RETURN_IF_ERROR(expect_dtype(in[1], {DType::kFloat32}, "weight W"));
  const Shape& x = in[0].shape;
  const Shape& w = in[1].shape;
  ConvGeometry g;
  MIXQ_RETURN_IF_ERROR(conv_geometry(node, x, w, g));

  const int64_t channels = x[1], m = w[0];
  if (channels != ir::kDynamicDim && w[1] != ir::kDynamicDim && channels != w[1] * g.group)
    return InvalidArgument("input X has " + std::to_string(channels) +
                           " channels; expected W.shape[1] * group = " + std::to_string(w[1]) +
                           " * " + std::to_string(g.group) + " = " +
                           std::to_string(w[1] * g.group) + " (W is " + shape_to_string(w) + ")");
  if (m != ir::kDynamicDim && m % g.group != 0)
    return InvalidArgument("output channels M = " + std::to_string(m) +
                           " (W.shape[0]) must be divisible by group = " + std::to_string(g.group));
  if (in.size() > 2 && in[2].present) {
    MIXQ_RETURN_IF_ERROR(expect_dtype(in[2], {DType::kFloat32}, "bias B"));
    const Shape& b = in[2].shape;
    if (b.size() != 1 || (b[0] != ir::kDynamicDim && m != ir::kDynamicDim && b[0] != m))
      return InvalidArgument("bias B must have shape [" + std::to_string(m) +
                             "] (one per output channel), got " + shape_to_string(b));
  }
  out[0].dtype = DType::kFloat32;
  out[0].shape = {x[0], m};
  out[0].shape.insert(out[0].shape.end(), g.out.begin(), g.out.end());
  return Status::Ok();
}

// Every spatial quantity padded to 3 axes (leading 1s), so one loop nest serves 1-D to 3-D.
struct Dims3 {
  int64_t v[3];
};
Dims3 to3(const std::vector<int64_t>& v, int64_t fill, size_t offset = 0, size_t n = 0) {
  n = n ? n : v.size() - offset;
  Dims3 d{{fill, fill, fill}};
  for (size_t i = 0; i < n; ++i) d.v[3 - n + i] = v[offset + i];
  return d;
}

Status compute_Conv(const ir::Node& node, std::span<const Tensor> in, std::span<Tensor> out) {
  const Tensor& xt = in[0];
  const Tensor& wt = in[1];
  ConvGeometry g;
  MIXQ_RETURN_IF_ERROR(conv_geometry(node, xt.shape(), wt.shape(), g));
  const size_t nsp = g.kernel.size();
  const Dims3 isz = to3(xt.shape(), 1, 2), ksz = to3(g.kernel, 1), osz = to3(g.out, 1);
  const Dims3 st = to3(g.strides, 1), dil = to3(g.dilations, 1), pad = to3(g.pads, 0, 0, nsp);
  const int64_t batch = xt.dim(0), channels = xt.dim(1), m_total = wt.dim(0);
  const int64_t c_per_group = channels / g.group, m_per_group = m_total / g.group;
  const int64_t in_plane = isz.v[0] * isz.v[1] * isz.v[2];
  const int64_t out_plane = osz.v[0] * osz.v[1] * osz.v[2];
  const int64_t taps = ksz.v[0] * ksz.v[1] * ksz.v[2];
  const int64_t ow_n = osz.v[2], iw_n = isz.v[2], sw = st.v[2];
  const float* x = xt.data<float>();
  const float* w = wt.data<float>();
  const float* bias = in.size() > 2 && in[2].defined() ? in[2].data<float>() : nullptr;
  float* y = out[0].data<float>();

  // One output plane per (n, m): y[n, m] = bias[m] + sum over its group's channels and taps.
  // The innermost loop runs along an output row, contiguous in y (and in x when stride is 1).
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t m = 0; m < m_total; ++m) {
      float* yp = y + (n * m_total + m) * out_plane;
      std::fill(yp, yp + out_plane, bias ? bias[m] : 0.0f);
      const int64_t first_c = (m / m_per_group) * c_per_group;
      for (int64_t c = 0; c < c_per_group; ++c) {
        const float* xp = x + (n * channels + first_c + c) * in_plane;
        const float* wp = w + (m * c_per_group + c) * taps;
        for (int64_t kd = 0; kd < ksz.v[0]; ++kd) {
          for (int64_t kh = 0; kh < ksz.v[1]; ++kh) {
            for (int64_t kw = 0; kw < ksz.v[2]; ++kw) {
              const float wv = wp[(kd * ksz.v[1] + kh) * ksz.v[2] + kw];
              // Output columns whose input column ow*sw + off lies inside [0, iw_n).
              const int64_t off = kw * dil.v[2] - pad.v[2];
              const int64_t ow_lo = off >= 0 ? 0 : (-off + sw - 1) / sw;
              const int64_t ow_hi =
                  iw_n - 1 - off < 0 ? 0 : std::min(ow_n, (iw_n - 1 - off) / sw + 1);
              if (ow_lo >= ow_hi) continue;
              for (int64_t od = 0; od < osz.v[0]; ++od) {
                const int64_t id = od * st.v[0] + kd * dil.v[0] - pad.v[0];
                if (id < 0 || id >= isz.v[0]) continue;
                for (int64_t oh = 0; oh < osz.v[1]; ++oh) {
                  const int64_t ih = oh * st.v[1] + kh * dil.v[1] - pad.v[1];
                  if (ih < 0 || ih >= isz.v[1]) continue;
                  const float* xr = xp + (id * isz.v[1] + ih) * iw_n;
                  float* yr = yp + (od * osz.v[1] + oh) * ow_n;
                  if (sw == 1) {
                    for (int64_t ow = ow_lo; ow < ow_hi; ++ow) yr[ow] += wv * xr[ow + off];
                  } else {
                    for (int64_t ow = ow_lo; ow < ow_hi; ++ow) yr[ow] += wv * xr[ow * sw + off];
                  }
                }
              }
            }
          }
        }
      }
    }
  }
  return Status::Ok();
}

}  // namespace

void register_conv(Registry& r) {
  r.add(ir::OpKind::kConv, {infer_Conv, compute_Conv});
}

}  // namespace mixq::reference
