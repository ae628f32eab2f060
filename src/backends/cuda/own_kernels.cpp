// The CUDA backend's own ops behind the Kernel interface: reformat, pooling, elementwise,
// concat, softmax and plain copies (the kernels are in kernels.cu).
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <optional>

#include "backends/cuda/cuda_common.h"
#include "backends/cuda/kernels.h"
#include "backends/reference/helpers.h"

namespace mixq::backends::cuda {
namespace {

using kernels::Grid;
using kernels::kMaxRank;
using kernels::Permute;
using kernels::PoolParams;
using kernels::Strides;
using namespace kernels;  // dtype, unary and binary codes

int dt_of(DType d) {
  switch (d) {
    case DType::kFloat32:
      return kF32;
    case DType::kFloat16:
      return kF16;
    case DType::kBFloat16:
      return kBF16;
    case DType::kInt8:
      return kS8;
    case DType::kUInt8:
      return kU8;
    case DType::kFloat8E4M3:
      return kE4M3;
    case DType::kInt32:
      return kI32;
    case DType::kInt64:
      return kI64;
    case DType::kBool:
      return kBool;
  }
  return kF32;
}

Grid grid_of(const ir::Value& v) {
  Grid g;
  g.dt = dt_of(v.dtype);
  if (v.quant && v.dtype != DType::kFloat32) {
    g.scale = v.quant->scale[0];
    g.inv_scale = 1.0f / g.scale;
    g.zero = float(v.quant->zero_point_at(0));
  }
  g.nhwc = v.layout == ir::Layout::kNHWC;
  return g;
}

Status launched(cudaError_t e, const char* what) {
  if (e != cudaSuccess) return cuda_status(e, what, __FILE__, __LINE__);
  return Status::Ok();
}

// --- kernels behind the Kernel interface
// ------------------------------------------------------------

using Launch = std::function<Status(const ExecContext&)>;

class LambdaInstance final : public KernelInstance {
 public:
  explicit LambdaInstance(Launch f) : f_(std::move(f)) {}
  Status execute(const ExecContext& ctx) const override { return f_(ctx); }

 private:
  Launch f_;
};

bool is_float_family(DType d) {
  return d == DType::kFloat32 || d == DType::kFloat16 || d == DType::kBFloat16 ||
         d == DType::kInt8 || d == DType::kUInt8 || d == DType::kFloat8E4M3;
}

std::optional<int> unary_of(ir::OpKind op) {
  switch (op) {
    case ir::OpKind::kRelu:
      return kRelu;
    case ir::OpKind::kClip:
      return kClip;
    case ir::OpKind::kSigmoid:
      return kSigmoid;
    case ir::OpKind::kTanh:
      return kTanh;
    case ir::OpKind::kLeakyRelu:
      return kLeakyRelu;
    case ir::OpKind::kHardSwish:
      return kHardSwish;
    case ir::OpKind::kHardSigmoid:
      return kHardSigmoid;
    default:
      return std::nullopt;
  }
}

std::optional<int> binary_of(ir::OpKind op) {
  switch (op) {
    case ir::OpKind::kAdd:
      return kAdd;
    case ir::OpKind::kSub:
      return kSub;
    case ir::OpKind::kMul:
      return kMul;
    case ir::OpKind::kDiv:
      return kDiv;
    default:
      return std::nullopt;
  }
}

std::optional<int> reduce_of(ir::OpKind op) {
  switch (op) {
    case ir::OpKind::kReduceSum:
      return kReduceSum;
    case ir::OpKind::kReduceMean:
      return kReduceMean;
    case ir::OpKind::kReduceMax:
      return kReduceMax;
    case ir::OpKind::kReduceMin:
      return kReduceMin;
    default:
      return std::nullopt;
  }
}

// Which axes of `xs` a reduction takes (constant axes input; none given: all of them, unless
// noop_with_empty_axes), as the reference reads them.
Expected<std::vector<bool>> reduced_axes(const ir::Node& n, const Shape& xs) {
  const int64_t rank = int64_t(xs.size());
  const std::vector<int64_t> axes =
      n.input(1) ? n.input(1)->constant.to_int64_vector() : std::vector<int64_t>{};
  std::vector<bool> reduced(xs.size(), axes.empty() && n.attr_int("noop_with_empty_axes", 0) == 0);
  for (int64_t a : axes) {
    if (a < -rank || a >= rank)
      return InvalidArgument("axis " + std::to_string(a) + " is out of range for rank " +
                             std::to_string(rank));
    reduced[size_t(a < 0 ? a + rank : a)] = true;
  }
  return reduced;
}

bool is_pool(ir::OpKind op) {
  return op == ir::OpKind::kMaxPool || op == ir::OpKind::kAveragePool ||
         op == ir::OpKind::kGlobalAveragePool || op == ir::OpKind::kGlobalMaxPool;
}

// Slice as a strided gather from the input at this batch: starts/ends/axes/steps are constants.
Expected<Permute> slice_gather(const ir::Node& n, const Shape& xs) {
  auto ints = [&](size_t i) {
    const ir::Value* v = n.input(i);
    return v ? v->constant.to_int64_vector() : std::vector<int64_t>{};
  };
  std::vector<reference::SliceAxis> plan;
  MIXQ_RETURN_IF_ERROR(reference::slice_plan(xs, ints(1), ints(2), ints(3), ints(4),
                                             n.input(3) != nullptr, n.input(4) != nullptr, plan));
  Permute p{};
  p.rank = int(xs.size());
  int64_t stride = 1;
  for (size_t d = xs.size(); d-- > 0;) {
    p.out[d] = plan[d].count;
    p.src_stride[d] = stride * plan[d].step;
    p.src_offset += stride * plan[d].start;
    stride *= xs[d];
  }
  return p;
}

// Transpose, Split and Slice move elements in plain layout (converting them where an output's
// format differs from the input's).
Status check_plain_layout(const ir::Node& n) {
  std::vector<const ir::Value*> values(n.outputs.begin(), n.outputs.end());
  values.push_back(n.input(0));
  for (const ir::Value* v : values)
    if (v && v->layout != ir::Layout::kPlain)
      return Internal(n.describe() + ": moves elements in plain layout, but '" + v->name +
                      "' is not plain");
  return Status::Ok();
}

class OwnKernel final : public Kernel {
 public:
  OwnKernel(const ir::Node& node, Precision p) : node_(node), precision_(p) {}

  Status prepare(int64_t) override {
    // Constant operands of binary ops live on the device, in fp32.
    for (const ir::Value* v : node_.inputs) {
      if (!v || !v->is_constant() || !binary_of(node_.op)) continue;
      Tensor f =
          v->constant.dtype() == DType::kFloat32 ? v->constant : v->constant.to(DType::kFloat32);
      MIXQ_ASSIGN_OR_RETURN(DeviceBuffer b, upload(f.raw(), f.nbytes()));
      constants_[v] = b;
    }
    return Status::Ok();
  }

  Expected<std::unique_ptr<KernelInstance>> instantiate(int64_t batch) const override;
  std::string implementation() const override {
    return std::string("mixq cuda ") + std::string(ir::op_name(node_.op));
  }

 private:
  const void* data_of(const Buffer& b) const {
    auto it = constants_.find(b.value);
    return it == constants_.end() ? b.data : it->second.get();
  }

  const ir::Node& node_;
  Precision precision_;
  std::map<const ir::Value*, DeviceBuffer> constants_;
};

Expected<std::unique_ptr<KernelInstance>> OwnKernel::instantiate(int64_t batch) const {
  const ir::Node& n = node_;
  const ir::Value* x = n.input(0);
  const ir::Value* y = n.output(0);
  const Shape ys = at_batch(y->shape, batch);
  // Constant operands were uploaded as fp32 in prepare().
  const Grid gx = x->is_constant() ? Grid{} : grid_of(*x), gy = grid_of(*y);
  const int64_t total = shape_numel(ys);
  Launch launch;
  if (n.op == ir::OpKind::kReformat) {
    const Shape xs = at_batch(x->shape, batch);
    const bool four = xs.size() == 4;
    const int64_t C = four ? xs[1] : 1, H = four ? xs[2] : 1, W = four ? xs[3] : 1;
    launch = [=](const ExecContext& ctx) {
      if (total == 0) return Status::Ok();
      return launched(kernels::reformat(ctx.inputs[0].data, gx, ctx.outputs[0].data, gy, total, C,
                                        H, W, four, resources_of(ctx).stream),
                      "reformat");
    };
  } else if (ir::keeps_element_order(n.op)) {
    const size_t bytes = size_t(total) * dtype_size(y->dtype);
    launch = [=](const ExecContext& ctx) {
      if (ctx.inputs[0].data == ctx.outputs[0].data || bytes == 0) return Status::Ok();
      CUDA_CHECK(cudaMemcpyAsync(ctx.outputs[0].data, ctx.inputs[0].data, bytes,
                                 cudaMemcpyDeviceToDevice, resources_of(ctx).stream));
      return Status::Ok();
    };
  } else if (is_pool(n.op)) {
    const Shape xs = at_batch(x->shape, batch);
    PoolParams p{};
    p.N = xs[0];
    p.C = xs[1];
    p.H = xs[2];
    p.W = xs[3];
    p.OH = ys[2];
    p.OW = ys[3];
    const bool global =
        n.op == ir::OpKind::kGlobalAveragePool || n.op == ir::OpKind::kGlobalMaxPool;
    p.max = n.op == ir::OpKind::kMaxPool || n.op == ir::OpKind::kGlobalMaxPool;
    auto k = global ? std::vector<int64_t>{p.H, p.W} : n.attr_ints("kernel_shape");
    auto s = global ? std::vector<int64_t>{1, 1} : n.attr_ints("strides", {1, 1});
    auto d = global ? std::vector<int64_t>{1, 1} : n.attr_ints("dilations", {1, 1});
    auto pads = global ? std::vector<int64_t>{0, 0, 0, 0} : n.attr_ints("pads", {0, 0, 0, 0});
    const std::string auto_pad = n.attr_string("auto_pad", "NOTSET");
    p.kh = int(k[0]);
    p.kw = int(k[1]);
    p.sh = int(s[0]);
    p.sw = int(s[1]);
    p.dh = int(d[0]);
    p.dw = int(d[1]);
    p.ph = int(pads[0]);
    p.pw = int(pads[1]);
    if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
      const int64_t th = std::max<int64_t>((p.OH - 1) * p.sh + (p.kh - 1) * p.dh + 1 - p.H, 0);
      const int64_t tw = std::max<int64_t>((p.OW - 1) * p.sw + (p.kw - 1) * p.dw + 1 - p.W, 0);
      p.ph = int(auto_pad == "SAME_UPPER" ? th / 2 : th - th / 2);
      p.pw = int(auto_pad == "SAME_UPPER" ? tw / 2 : tw - tw / 2);
    } else if (auto_pad == "VALID") {
      p.ph = p.pw = 0;
    }
    p.count_pad = n.attr_int("count_include_pad", 0) != 0;
    p.pad_h_end = p.H + (pads.size() == 4 ? pads[2] : 0);
    p.pad_w_end = p.W + (pads.size() == 4 ? pads[3] : 0);
    launch = [=](const ExecContext& ctx) {
      if (total == 0) return Status::Ok();
      return launched(kernels::pool(ctx.inputs[0].data, gx, ctx.outputs[0].data, gy, p,
                                    resources_of(ctx).stream),
                      "pooling");
    };
  } else if (auto u = unary_of(n.op)) {
    float a = 0, b = 0;
    if (n.op == ir::OpKind::kClip) {
      a = n.input(1) ? float(n.input(1)->constant.get_as_double(0)) : -INFINITY;
      b = n.input(2) ? float(n.input(2)->constant.get_as_double(0)) : INFINITY;
    } else if (n.op == ir::OpKind::kLeakyRelu) {
      a = n.attr_float("alpha", 0.01f);
    } else if (n.op == ir::OpKind::kHardSigmoid) {
      a = n.attr_float("alpha", 0.2f);
      b = n.attr_float("beta", 0.5f);
    }
    const int op = *u;
    launch = [=](const ExecContext& ctx) {
      if (total == 0) return Status::Ok();
      return launched(kernels::unary(ctx.inputs[0].data, gx, ctx.outputs[0].data, gy, total, op, a,
                                     b, resources_of(ctx).stream),
                      "elementwise");
    };
  } else if (auto bop = binary_of(n.op)) {
    const ir::Value* z = n.input(1);
    const Grid gz = z->is_constant() ? Grid{} : grid_of(*z);
    const Shape as = at_batch(x->shape, batch), bs = at_batch(z->shape, batch);
    Strides st{};
    st.rank = int(ys.size());
    auto fill = [&](const Shape& in, int64_t* out) {
      int64_t stride = 1;
      for (int d = st.rank - 1, k = int(in.size()) - 1; d >= 0; --d, --k) {
        const int64_t dim = k >= 0 ? in[size_t(k)] : 1;
        out[d] = dim == 1 ? 0 : stride;
        stride *= dim;
      }
    };
    for (int d = 0; d < st.rank; ++d) st.out[d] = ys[size_t(d)];
    fill(as, st.a);
    fill(bs, st.b);
    const bool same = as == ys && bs == ys;
    const int op = *bop;
    const ir::Value* zv = z;
    launch = [=, this](const ExecContext& ctx) {
      if (total == 0) return Status::Ok();
      const Buffer zb{zv, ctx.inputs[1].data, {}};
      return launched(
          kernels::binary(data_of(ctx.inputs[0]), gx, data_of(zb), gz, ctx.outputs[0].data, gy,
                          total, st, op, same, resources_of(ctx).stream),
          "binary");
    };
  } else if (n.op == ir::OpKind::kConcat) {
    // Physical axis: NHWC puts channels innermost.
    int64_t axis = n.attr_int("axis", 0);
    if (axis < 0) axis += int64_t(ys.size());
    Shape phys = ys;
    int64_t phys_axis = axis;
    if (y->layout == ir::Layout::kNHWC) {
      phys = {ys[0], ys[2], ys[3], ys[1]};
      phys_axis = axis == 1 ? 3 : (axis == 0 ? 0 : axis - 1 + (axis > 1 ? 0 : 0));
    }
    int64_t outer = 1, inner = 1;
    for (int64_t d = 0; d < phys_axis; ++d) outer *= phys[size_t(d)];
    for (size_t d = size_t(phys_axis) + 1; d < phys.size(); ++d) inner *= phys[d];
    const size_t es = dtype_size(y->dtype);
    std::vector<int64_t> mids;
    for (const ir::Value* in : n.inputs) mids.push_back(at_batch(in->shape, batch)[size_t(axis)]);
    const int64_t y_mid = phys[size_t(phys_axis)];
    launch = [=](const ExecContext& ctx) {
      int64_t offset = 0;
      for (size_t k = 0; k < mids.size(); ++k) {
        MIXQ_RETURN_IF_ERROR(launched(
            kernels::concat_slice(ctx.inputs[k].data, ctx.outputs[0].data, outer, mids[k], y_mid,
                                  offset, inner * int64_t(es), resources_of(ctx).stream),
            "concat"));
        offset += mids[k];
      }
      return Status::Ok();
    };
  } else if (n.op == ir::OpKind::kTranspose) {
    MIXQ_RETURN_IF_ERROR(check_plain_layout(n));
    const Shape xs = at_batch(x->shape, batch);
    std::vector<int64_t> perm = n.attr_ints("perm", {});
    if (perm.empty())
      for (size_t d = xs.size(); d-- > 0;) perm.push_back(int64_t(d));
    Permute p{};
    p.rank = int(ys.size());
    int64_t stride = 1;
    std::vector<int64_t> x_strides(xs.size());
    for (size_t d = xs.size(); d-- > 0;) {
      x_strides[d] = stride;
      stride *= xs[d];
    }
    for (size_t d = 0; d < ys.size(); ++d) {
      p.out[d] = ys[d];
      p.src_stride[d] = x_strides[size_t(perm[d])];
    }
    launch = [=](const ExecContext& ctx) {
      return launched(kernels::permute(ctx.inputs[0].data, gx, ctx.outputs[0].data, gy, p, total,
                                       resources_of(ctx).stream),
                      "transpose");
    };
  } else if (n.op == ir::OpKind::kSlice) {
    MIXQ_RETURN_IF_ERROR(check_plain_layout(n));
    MIXQ_ASSIGN_OR_RETURN(const Permute p, slice_gather(n, at_batch(x->shape, batch)));
    launch = [=](const ExecContext& ctx) {
      return launched(kernels::permute(ctx.inputs[0].data, gx, ctx.outputs[0].data, gy, p, total,
                                       resources_of(ctx).stream),
                      "slice");
    };
  } else if (n.op == ir::OpKind::kSplit) {
    // Each output is a gather from its part of the input: outer x [its extent] x inner.
    MIXQ_RETURN_IF_ERROR(check_plain_layout(n));
    const Shape xs = at_batch(x->shape, batch);
    int64_t axis = n.attr_int("axis", 0);
    if (axis < 0) axis += int64_t(xs.size());
    int64_t outer = 1, inner = 1;
    for (int64_t d = 0; d < axis; ++d) outer *= xs[size_t(d)];
    for (size_t d = size_t(axis) + 1; d < xs.size(); ++d) inner *= xs[d];
    struct Part {
      Permute p;
      int64_t total;
      Grid grid;
    };
    std::vector<std::optional<Part>> parts;  // absent outputs are skipped
    int64_t offset = 0;
    for (const ir::Value* out : n.outputs) {
      const int64_t mid = out ? at_batch(out->shape, batch)[size_t(axis)] : 0;
      if (out) {
        Permute p{};
        p.rank = 3;
        p.out[0] = outer;
        p.out[1] = mid;
        p.out[2] = inner;
        p.src_stride[0] = xs[size_t(axis)] * inner;
        p.src_stride[1] = inner;
        p.src_stride[2] = 1;
        p.src_offset = offset * inner;
        parts.push_back(Part{p, outer * mid * inner, grid_of(*out)});
      } else {
        parts.push_back(std::nullopt);
      }
      offset += mid;
    }
    launch = [=](const ExecContext& ctx) {
      for (size_t k = 0; k < parts.size(); ++k)
        if (parts[k] && k < ctx.outputs.size() && ctx.outputs[k].data)
          MIXQ_RETURN_IF_ERROR(
              launched(kernels::permute(ctx.inputs[0].data, gx, ctx.outputs[k].data, parts[k]->grid,
                                        parts[k]->p, parts[k]->total, resources_of(ctx).stream),
                       "split"));
      return Status::Ok();
    };
  } else if (auto kind = reduce_of(n.op)) {
    const Shape xs = at_batch(x->shape, batch);
    MIXQ_ASSIGN_OR_RETURN(const std::vector<bool> reduced, reduced_axes(n, xs));
    ReduceParams p{};
    p.kind = *kind;
    p.outputs = p.count = 1;
    int64_t stride = 1;
    std::vector<int64_t> strides(xs.size());
    for (size_t d = xs.size(); d-- > 0;) {
      strides[d] = stride;
      stride *= xs[d];
    }
    for (size_t d = 0; d < xs.size(); ++d) {
      if (reduced[d]) {
        p.reduced[p.reduced_rank] = xs[d];
        p.reduced_stride[p.reduced_rank++] = strides[d];
        p.count *= xs[d];
      } else {
        p.kept[p.kept_rank] = xs[d];
        p.kept_stride[p.kept_rank++] = strides[d];
        p.outputs *= xs[d];
      }
    }
    launch = [=](const ExecContext& ctx) {
      return launched(kernels::reduce(ctx.inputs[0].data, gx, ctx.outputs[0].data, gy, p,
                                      resources_of(ctx).stream),
                      "reduce");
    };
  } else if (n.op == ir::OpKind::kSoftmax || n.op == ir::OpKind::kLogSoftmax) {
    const int64_t cols = ys.back();
    const int64_t rows = cols ? total / cols : 0;
    const bool log = n.op == ir::OpKind::kLogSoftmax;
    launch = [=](const ExecContext& ctx) {
      if (rows == 0) return Status::Ok();
      return launched(kernels::softmax(ctx.inputs[0].data, gx, ctx.outputs[0].data, gy, rows, cols,
                                       log, resources_of(ctx).stream),
                      "softmax");
    };
  } else {
    return Internal(n.describe() + ": no CUDA kernel");
  }
  return std::unique_ptr<KernelInstance>(new LambdaInstance(std::move(launch)));
}

}  // namespace

bool own_supports(const ir::Node& n, Precision p, std::string* why) {
  auto fail = [&](const std::string& m) {
    if (why) *why = m;
    return false;
  };
  for (const ir::Value* v : n.inputs)
    if (v && !v->is_constant() && !v->shape_known)
      return fail("input shapes must be known at build");
  const ir::Value* x = n.input(0);
  const ir::Value* y = n.output(0);
  if (!x || !y) return fail("missing input or output");
  if (n.op == ir::OpKind::kReformat)
    return is_float_family(x->dtype) && is_float_family(y->dtype) ? true : fail("reformat dtypes");
  if (ir::keeps_element_order(n.op)) return true;
  const bool quantized = p == Precision::kINT8 || p == Precision::kFP8;
  if (is_pool(n.op)) {
    if (x->shape.size() != 4) return fail("pooling is 2-D only on the GPU");
    if (n.output(1) && n.outputs.size() > 1) return fail("MaxPool indices");
    return true;
  }
  if (n.op == ir::OpKind::kRelu) return true;  // relu is exact in any grid with zero at 0
  if (unary_of(n.op)) {
    if (quantized) return fail("only relu runs on int8/fp8 data here");
    if (n.op == ir::OpKind::kClip &&
        ((n.input(1) && !n.input(1)->is_constant()) || (n.input(2) && !n.input(2)->is_constant())))
      return fail("clip bounds must be constant");
    return true;
  }
  if (binary_of(n.op)) {
    if (quantized) return fail("elementwise arithmetic runs in fp32/fp16/bf16 on the GPU");
    if (n.output(0)->shape.size() > size_t(kMaxRank)) return fail("rank above 6");
    return true;
  }
  if (n.op == ir::OpKind::kConcat) return true;
  if (n.op == ir::OpKind::kTranspose || n.op == ir::OpKind::kSplit || n.op == ir::OpKind::kSlice) {
    // Element moves, converted where an output's format differs from the input's.
    if (x->shape.size() > size_t(kMaxRank)) return fail("rank above 6");
    if (n.op == ir::OpKind::kSplit) {
      for (const ir::Value* out : n.outputs)
        if (out && !out->shape_known) return fail("split sizes must be known at build");
      if (n.input(1) && !n.input(1)->is_constant()) return fail("split sizes must be constant");
    }
    if (n.op == ir::OpKind::kSlice) {
      for (size_t i = 1; i < n.inputs.size(); ++i)
        if (n.input(i) && !n.input(i)->is_constant())
          return fail("slice starts, ends, axes and steps must be constant");
      if (!y->shape_known) return fail("slice output shape must be known at build");
      // Any batch up to the engine's maximum: the slice must follow the dynamic dims.
      for (int64_t batch : {int64_t(1), int64_t(7), int64_t(1) << 20}) {
        auto p = slice_gather(n, at_batch(x->shape, batch));
        if (!p.ok()) return fail(p.status().message());
        const Shape ys = at_batch(y->shape, batch);
        if (!std::equal(ys.begin(), ys.end(), p->out, p->out + p->rank))
          return fail("the slice's output shape depends on the batch size");
      }
    }
    return true;
  }
  if (reduce_of(n.op)) {
    if (x->shape.size() > size_t(kMaxRank)) return fail("rank above 6");
    if (!is_float_family(x->dtype)) return fail("reductions of integer tensors");
    if (n.input(1) && !n.input(1)->is_constant()) return fail("reduced axes must be constant");
    return true;
  }
  if (n.op == ir::OpKind::kSoftmax || n.op == ir::OpKind::kLogSoftmax) {
    const int64_t rank = int64_t(x->shape.size());
    const int64_t axis = n.attr_int("axis", n.has_attr("mixq.coerce_2d") ? 1 : -1);
    if (quantized) return fail("softmax runs in fp32/fp16/bf16");
    if (axis != -1 && axis != rank - 1) return fail("softmax over the last axis only");
    return true;
  }
  return fail("no CUDA kernel for " + std::string(ir::op_name(n.op)));
}

Expected<std::unique_ptr<Kernel>> make_own_kernel(const ir::Node& node, Precision precision) {
  return std::unique_ptr<Kernel>(new OwnKernel(node, precision));
}

}  // namespace mixq::backends::cuda
