// Reference kernels: BatchNormalization (inference form), LRN, Softmax and LogSoftmax, fp32.
#include <algorithm>
#include <cmath>
#include <string>

#include "backends/reference/helpers.h"

namespace mixq::reference {
namespace {

// --- BatchNormalization: y = scale * (x - mean) / sqrt(var + epsilon) + B over channel dim 1
// ------

Status infer_BatchNormalization(const ir::Node& node, std::span<const TensorInfo> in,
                                std::span<TensorInfo> out) {
  const size_t present_outputs = size_t(
      std::count_if(out.begin(), out.end(), [](const TensorInfo& info) { return info.present; }));
  if (present_outputs > 1 || node.attr_int("training_mode", 0) != 0)
    return Unsupported(
        "training mode is not supported (the node asks for running mean/var outputs or sets "
        "training_mode); only the inference form with a single output Y is");
  if (node.attr_int("spatial", 1) == 0)
    return Unsupported("spatial = 0 (per-element statistics) is not supported");
  if (in.size() < 5) return InvalidArgument("BatchNormalization needs X, scale, B, mean and var");
  MIXQ_RETURN_IF_ERROR(expect_dtype(in[0], {DType::kFloat32}, "input X"));
  const Shape& x = in[0].shape;
  if (x.size() < 2)
    return InvalidArgument("input X must have rank >= 2 (N, C, ...), got " + shape_to_string(x));
  const char* names[] = {"", "scale", "B", "mean", "var"};
  for (size_t i = 1; i < 5; ++i) {
    MIXQ_RETURN_IF_ERROR(expect_dtype(in[i], {DType::kFloat32}, names[i]));
    const Shape& s = in[i].shape;
    if (s.size() != 1 || (s[0] != ir::kDynamicDim && x[1] != ir::kDynamicDim && s[0] != x[1]))
      return InvalidArgument(std::string(names[i]) + " must have shape [" + std::to_string(x[1]) +
                             "] (one per channel of X " + shape_to_string(x) + "), got " +
                             shape_to_string(s));
  }
  out[0].dtype = DType::kFloat32;
  out[0].shape = x;
  return Status::Ok();
}

Status compute_BatchNormalization(const ir::Node& node, std::span<const Tensor> in,
                                  std::span<Tensor> out) {
  const Shape& shape = in[0].shape();
  const int64_t batch = shape[0], channels = shape[1];
  const int64_t plane = shape_numel(Shape(shape.begin() + 2, shape.end()));
  const double epsilon = node.attr_float("epsilon", 1e-5f);
  const float* x = in[0].data<float>();
  const float *scale = in[1].data<float>(), *bias = in[2].data<float>();
  const float *mean = in[3].data<float>(), *var = in[4].data<float>();
  float* y = out[0].data<float>();
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t c = 0; c < channels; ++c) {
      const float k = float(double(scale[c]) / std::sqrt(double(var[c]) + epsilon));
      const int64_t base = (n * channels + c) * plane;
      for (int64_t i = 0; i < plane; ++i) y[base + i] = (x[base + i] - mean[c]) * k + bias[c];
    }
  }
  return Status::Ok();
}

// --- LRN: y = x / (bias + alpha / size * sum of x^2 over nearby channels)^beta
// --------------------

Status infer_LRN(const ir::Node& node, std::span<const TensorInfo> in, std::span<TensorInfo> out) {
  if (in.empty()) return InvalidArgument("input X is missing");
  MIXQ_RETURN_IF_ERROR(expect_dtype(in[0], {DType::kFloat32}, "input X"));
  if (in[0].shape.size() < 2)
    return InvalidArgument("input X must have rank >= 2 (N, C, ...), got " +
                           shape_to_string(in[0].shape));
  if (node.attr_int("size", 0) < 1)
    return InvalidArgument("attribute size is required and must be >= 1");
  out[0].dtype = DType::kFloat32;
  out[0].shape = in[0].shape;
  return Status::Ok();
}

Status compute_LRN(const ir::Node& node, std::span<const Tensor> in, std::span<Tensor> out) {
  const Shape& shape = in[0].shape();
  const int64_t batch = shape[0], channels = shape[1];
  const int64_t plane = shape_numel(Shape(shape.begin() + 2, shape.end()));
  const int64_t size = node.attr_int("size", 1);
  const double alpha = node.attr_float("alpha", 1e-4f), beta = node.attr_float("beta", 0.75f);
  const double bias = node.attr_float("bias", 1.0f);
  // Channels [c - floor((size - 1) / 2), c + ceil((size - 1) / 2)], clipped to [0, C).
  const int64_t before = (size - 1) / 2, after = size / 2;
  const float* x = in[0].data<float>();
  float* y = out[0].data<float>();
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t lo = std::max<int64_t>(0, c - before);
      const int64_t hi = std::min<int64_t>(channels - 1, c + after);
      const float* xn = x + n * channels * plane;
      for (int64_t i = 0; i < plane; ++i) {
        double square_sum = 0;
        for (int64_t j = lo; j <= hi; ++j)
          square_sum += double(xn[j * plane + i]) * xn[j * plane + i];
        y[(n * channels + c) * plane + i] =
            float(xn[c * plane + i] / std::pow(bias + alpha / double(size) * square_sum, beta));
      }
    }
  }
  return Status::Ok();
}

// --- Softmax / LogSoftmax ----------------------------------------------------------------------

// The input viewed as [outer, n, inner], normalised along n. Opset 13 normalises along `axis`
// (default -1); "mixq.coerce_2d" (opset < 13) flattens to 2-D at `axis` (default 1) and
// normalises each row, so n is the product of the dims from `axis` on and inner is 1.
struct SoftmaxView {
  int64_t outer = 1, n = 1, inner = 1;
};

Status softmax_view(const ir::Node& node, const Shape& shape, SoftmaxView& v) {
  const bool coerce_2d = node.attr_int("mixq.coerce_2d", 0) == 1;
  int64_t axis = 0;
  MIXQ_RETURN_IF_ERROR(
      normalize_axis(node.attr_int("axis", coerce_2d ? 1 : -1), int64_t(shape.size()), axis));
  v = SoftmaxView{};
  for (int64_t i = 0; i < int64_t(shape.size()); ++i) {
    int64_t& part = i < axis ? v.outer : (i == axis || coerce_2d ? v.n : v.inner);
    part = part == ir::kDynamicDim || shape[size_t(i)] == ir::kDynamicDim ? ir::kDynamicDim
                                                                          : part * shape[size_t(i)];
  }
  return Status::Ok();
}

Status infer_softmax(const ir::Node& node, std::span<const TensorInfo> in,
                     std::span<TensorInfo> out) {
  if (in.empty()) return InvalidArgument("input is missing");
  MIXQ_RETURN_IF_ERROR(expect_dtype(in[0], {DType::kFloat32}, "input"));
  SoftmaxView v;
  MIXQ_RETURN_IF_ERROR(softmax_view(node, in[0].shape, v));
  out[0].dtype = DType::kFloat32;
  out[0].shape = in[0].shape;
  return Status::Ok();
}

// Numerically stable: subtract the slice's max before exponentiating.
template <bool kLog>
Status compute_softmax(const ir::Node& node, std::span<const Tensor> in, std::span<Tensor> out) {
  SoftmaxView v;
  MIXQ_RETURN_IF_ERROR(softmax_view(node, in[0].shape(), v));
  const float* x = in[0].data<float>();
  float* y = out[0].data<float>();
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t o = 0; o < v.outer; ++o) {
    for (int64_t i = 0; i < v.inner; ++i) {
      const float* xs = x + o * v.n * v.inner + i;
      float* ys = y + o * v.n * v.inner + i;
      float max = -INFINITY;
      for (int64_t j = 0; j < v.n; ++j) max = std::max(max, xs[j * v.inner]);
      double sum = 0;
      for (int64_t j = 0; j < v.n; ++j) sum += std::exp(double(xs[j * v.inner]) - max);
      for (int64_t j = 0; j < v.n; ++j) {
        const double shifted = double(xs[j * v.inner]) - max;
        ys[j * v.inner] = float(kLog ? shifted - std::log(sum) : std::exp(shifted) / sum);
      }
    }
  }
  return Status::Ok();
}

}  // namespace

void register_normalization(Registry& r) {
  using ir::OpKind;
  r.add(OpKind::kBatchNormalization, {infer_BatchNormalization, compute_BatchNormalization});
  r.add(OpKind::kLRN, {infer_LRN, compute_LRN});
  r.add(OpKind::kSoftmax, {infer_softmax, compute_softmax<false>});
  r.add(OpKind::kLogSoftmax, {infer_softmax, compute_softmax<true>});
}

}  // namespace mixq::reference
