// Reference kernels: Gemm (fp32) and MatMul (numpy matmul semantics; fp32, int32, int64).
#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

#include "backends/reference/helpers.h"

namespace mixq::reference {
namespace {

bool known(int64_t d) {
  return d != ir::kDynamicDim;
}

// acc + a * b; integers wrap around like numpy's int32/int64 matmul (no signed overflow UB).
template <typename T>
T mul_add(T acc, T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    return acc + a * b;
  } else {
    using U = std::make_unsigned_t<T>;
    return T(U(acc) + U(a) * U(b));
  }
}

// y[0, n) = sum_p a[p * a_step] * b[p, 0, n) with b row-major [k, n]: one output row in i-k-j
// order, so the innermost loop is contiguous in b and y.
template <typename T>
void matmul_row(const T* a, int64_t a_step, const T* b, T* y, int64_t k, int64_t n) {
  std::fill(y, y + n, T(0));
  for (int64_t p = 0; p < k; ++p) {
    const T av = a[p * a_step];
    const T* br = b + p * n;
    for (int64_t j = 0; j < n; ++j) y[j] = mul_add(y[j], av, br[j]);
  }
}

// --- Gemm: Y = alpha * A' * B' + beta * C ------------------------------------------------------

Status infer_Gemm(const ir::Node& node, std::span<const TensorInfo> in, std::span<TensorInfo> out) {
  if (in.size() < 2) return InvalidArgument("Gemm needs inputs A and B");
  MIXQ_RETURN_IF_ERROR(expect_dtype(in[0], {DType::kFloat32}, "input A"));
  MIXQ_RETURN_IF_ERROR(expect_dtype(in[1], {DType::kFloat32}, "input B"));
  const Shape& a = in[0].shape;
  const Shape& b = in[1].shape;
  if (a.size() != 2 || b.size() != 2)
    return InvalidArgument("A and B must be 2-D, got A " + shape_to_string(a) + " and B " +
                           shape_to_string(b));
  const bool ta = node.attr_int("transA", 0) != 0, tb = node.attr_int("transB", 0) != 0;
  const int64_t m = ta ? a[1] : a[0], ka = ta ? a[0] : a[1];
  const int64_t kb = tb ? b[1] : b[0], n = tb ? b[0] : b[1];
  if (known(ka) && known(kb) && ka != kb)
    return InvalidArgument("inner dimensions differ: A " + shape_to_string(a) +
                           (ta ? " (transposed)" : "") + " has K = " + std::to_string(ka) + ", B " +
                           shape_to_string(b) + (tb ? " (transposed)" : "") +
                           " has K = " + std::to_string(kb));
  if (in.size() > 2 && in[2].present) {
    MIXQ_RETURN_IF_ERROR(expect_dtype(in[2], {DType::kFloat32}, "input C"));
    const Shape& c = in[2].shape;
    // C must broadcast to [M, N] one way: each of its trailing dims is 1 or equal.
    bool ok = c.size() <= 2;
    const Shape target = {m, n};
    for (size_t i = 0; ok && i < c.size(); ++i) {
      const int64_t want = target[2 - c.size() + i];
      ok = c[i] == 1 || !known(c[i]) || !known(want) || c[i] == want;
    }
    if (!ok)
      return InvalidArgument("C " + shape_to_string(c) +
                             " cannot be broadcast to [M, N] = " + shape_to_string(target));
  }
  out[0].dtype = DType::kFloat32;
  out[0].shape = {m, n};
  return Status::Ok();
}

Status compute_Gemm(const ir::Node& node, std::span<const Tensor> in, std::span<Tensor> out) {
  const Tensor& at = in[0];
  const Tensor& bt = in[1];
  const bool ta = node.attr_int("transA", 0) != 0, tb = node.attr_int("transB", 0) != 0;
  const float alpha = node.attr_float("alpha", 1.0f), beta = node.attr_float("beta", 1.0f);
  const int64_t m = out[0].dim(0), n = out[0].dim(1), k = ta ? at.dim(0) : at.dim(1);
  // A' is read through strides; B' must be row-major [K, N], so transpose B once if needed.
  std::vector<float> b_copy;
  const float* b = bt.data<float>();
  if (tb) {
    b_copy.resize(size_t(k * n));
    for (int64_t j = 0; j < n; ++j)
      for (int64_t p = 0; p < k; ++p) b_copy[size_t(p * n + j)] = b[j * k + p];
    b = b_copy.data();
  }
  const float* a = at.data<float>();
  const int64_t a_row = ta ? 1 : k, a_col = ta ? m : 1;
  const bool has_c = in.size() > 2 && in[2].defined();
  const float* c = has_c ? in[2].data<float>() : nullptr;
  const std::vector<int64_t> cs = has_c ? broadcast_strides(in[2].shape(), {m, n}) : Shape{0, 0};
  float* y = out[0].data<float>();

#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < m; ++i) {
    float* yr = y + i * n;
    matmul_row(a + i * a_row, a_col, b, yr, k, n);
    for (int64_t j = 0; j < n; ++j) {
      yr[j] *= alpha;
      if (c) yr[j] += beta * c[i * cs[0] + j * cs[1]];
    }
  }
  return Status::Ok();
}

// --- MatMul: numpy matmul (1-D operands promoted, batch dims broadcast) ------------------------

Status infer_MatMul(const ir::Node&, std::span<const TensorInfo> in, std::span<TensorInfo> out) {
  if (in.size() < 2) return InvalidArgument("MatMul needs inputs A and B");
  MIXQ_RETURN_IF_ERROR(
      expect_dtype(in[0], {DType::kFloat32, DType::kInt32, DType::kInt64}, "input A"));
  MIXQ_RETURN_IF_ERROR(expect_dtype(in[1], {in[0].dtype}, "input B (must match A)"));
  Shape a = in[0].shape, b = in[1].shape;
  if (a.empty() || b.empty())
    return InvalidArgument("MatMul operands must have rank >= 1, got A " + shape_to_string(a) +
                           " and B " + shape_to_string(b));
  const bool a_vec = a.size() == 1, b_vec = b.size() == 1;
  if (a_vec) a.insert(a.begin(), 1);
  if (b_vec) b.push_back(1);
  const int64_t ka = a[a.size() - 1], kb = b[b.size() - 2];
  if (known(ka) && known(kb) && ka != kb)
    return InvalidArgument("inner dimensions differ: A " + shape_to_string(in[0].shape) +
                           " has K = " + std::to_string(ka) + ", B " +
                           shape_to_string(in[1].shape) + " has K = " + std::to_string(kb));
  Shape batch;
  MIXQ_RETURN_IF_ERROR(
      broadcast_shapes(Shape(a.begin(), a.end() - 2), Shape(b.begin(), b.end() - 2), batch)
          .with_context("batch dimensions"));
  out[0].dtype = in[0].dtype;
  out[0].shape = batch;
  if (!a_vec) out[0].shape.push_back(a[a.size() - 2]);
  if (!b_vec) out[0].shape.push_back(b[b.size() - 1]);
  return Status::Ok();
}

template <typename T>
void matmul_batched(const Tensor& at, const Tensor& bt, Tensor& yt) {
  Shape a = at.shape(), b = bt.shape();
  if (a.size() == 1) a.insert(a.begin(), 1);
  if (b.size() == 1) b.push_back(1);
  const int64_t m = a[a.size() - 2], k = a[a.size() - 1], n = b[b.size() - 1];
  const Shape a_batch(a.begin(), a.end() - 2), b_batch(b.begin(), b.end() - 2);
  Shape batch;
  (void)broadcast_shapes(a_batch, b_batch, batch);  // checked by infer
  const std::vector<int64_t> as = broadcast_strides(a_batch, batch);
  const std::vector<int64_t> bs = broadcast_strides(b_batch, batch);
  // Matrix offsets of A and B for each output batch index.
  const int64_t nb = shape_numel(batch);
  std::vector<int64_t> a_off(size_t(nb), 0), b_off(size_t(nb), 0);
  for (int64_t idx = 0; idx < nb; ++idx) {
    int64_t rem = idx;
    for (int d = int(batch.size()) - 1; d >= 0; --d) {
      const int64_t coord = rem % batch[size_t(d)];
      rem /= batch[size_t(d)];
      a_off[size_t(idx)] += coord * as[size_t(d)];
      b_off[size_t(idx)] += coord * bs[size_t(d)];
    }
  }
  const T* ap = at.data<T>();
  const T* bp = bt.data<T>();
  T* yp = yt.data<T>();
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t bi = 0; bi < nb; ++bi)
    for (int64_t i = 0; i < m; ++i)
      matmul_row(ap + (a_off[size_t(bi)] * m + i) * k, 1, bp + b_off[size_t(bi)] * k * n,
                 yp + (bi * m + i) * n, k, n);
}

Status compute_MatMul(const ir::Node&, std::span<const Tensor> in, std::span<Tensor> out) {
  switch (in[0].dtype()) {
    case DType::kFloat32:
      matmul_batched<float>(in[0], in[1], out[0]);
      return Status::Ok();
    case DType::kInt32:
      matmul_batched<int32_t>(in[0], in[1], out[0]);
      return Status::Ok();
    case DType::kInt64:
      matmul_batched<int64_t>(in[0], in[1], out[0]);
      return Status::Ok();
    default:
      return Unsupported("MatMul dtype " + std::string(dtype_name(in[0].dtype())) +
                         " is not computed by the reference backend");
  }
}

}  // namespace

void register_gemm(Registry& r) {
  r.add(ir::OpKind::kGemm, {infer_Gemm, compute_Gemm});
  r.add(ir::OpKind::kMatMul, {infer_MatMul, compute_MatMul});
}

}  // namespace mixq::reference
