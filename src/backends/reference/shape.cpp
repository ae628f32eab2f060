// Reference kernels: data movement and shape ops. Moving data never looks at values, so these
// copy raw elements and work for every dtype. At build time shape-carrying inputs (Reshape's
// shape, Slice's starts...) may have no value: infer then gives what is known (the rank, static
// dims, kDynamicDim elsewhere) and fails only when even the rank depends on run-time values.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "backends/reference/helpers.h"

namespace mixq::reference {
namespace {

std::string str(int64_t v) {
  return std::to_string(v);
}

std::string ints_to_string(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ",";
    s += str(v[i]);
  }
  return s + "]";
}

// Copies `count` elements from src[si] to dst[di] (same dtype).
void copy_elements(const Tensor& src, int64_t si, Tensor& dst, int64_t di, int64_t count = 1) {
  const size_t size = dtype_size(src.dtype());
  std::memcpy(static_cast<char*>(dst.raw()) + size_t(di) * size,
              static_cast<const char*>(src.raw()) + size_t(si) * size, size_t(count) * size);
}

// Same elements, new shape: Reshape, Flatten, Squeeze, Unsqueeze, Identity.
Status copy_all(const ir::Node&, std::span<const Tensor> in, std::span<Tensor> out) {
  copy_elements(in[0], 0, out[0], 0, in[0].numel());
  return Status::Ok();
}

Status expect_present(const TensorInfo& info, const char* what) {
  if (!info.present) return InvalidArgument(std::string(what) + " is missing");
  return Status::Ok();
}

// A 1-D int input that may be unknown at build time: `known` says whether `values` holds it.
Status read_ints(const TensorInfo& info, const char* what, std::vector<int64_t>& values,
                 bool& known) {
  MIXQ_RETURN_IF_ERROR(expect_dtype(info, {DType::kInt64, DType::kInt32}, what));
  if (info.shape.size() > 1)
    return InvalidArgument(std::string(what) + " must be 1-D, got shape " +
                           shape_to_string(info.shape));
  known = info.value != nullptr;
  if (known) return read_int_input(info, what, values);
  return Status::Ok();
}

// Number of elements of a 1-D input, or kDynamicDim.
int64_t length_of(const TensorInfo& info) {
  return info.shape.empty() ? 1 : info.shape[0];
}

Status rank_unknown(const char* what) {
  return Unsupported(std::string(what) +
                     " is computed at run time, so the output rank is not known at build time");
}

// Product of dims [begin, end): 0 if any dim is 0, else kDynamicDim if any is unknown.
int64_t product(const Shape& shape, size_t begin, size_t end) {
  int64_t p = 1;
  bool unknown = false;
  for (size_t i = begin; i < end; ++i) {
    if (shape[i] == 0) return 0;
    if (shape[i] < 0)
      unknown = true;
    else
      p *= shape[i];
  }
  return unknown ? ir::kDynamicDim : p;
}

// Normalised, distinct axes.
Status normalize_axes(const std::vector<int64_t>& axes, int64_t rank, std::vector<int64_t>& out) {
  out.clear();
  for (int64_t axis : axes) {
    int64_t a = 0;
    MIXQ_RETURN_IF_ERROR(normalize_axis(axis, rank, a, "axes value"));
    if (std::find(out.begin(), out.end(), a) != out.end())
      return InvalidArgument("axis " + str(a) + " is repeated");
    out.push_back(a);
  }
  return Status::Ok();
}

// --- Identity, Dropout ---------------------------------------------------------------------------

Status infer_Identity(const ir::Node&, std::span<const TensorInfo> in, std::span<TensorInfo> out) {
  MIXQ_RETURN_IF_ERROR(expect_present(in[0], "input"));
  out[0].dtype = in[0].dtype;
  out[0].shape = in[0].shape;
  return Status::Ok();
}

// Inference only: output = input, and the optional mask is all true.
Status infer_Dropout(const ir::Node& node, std::span<const TensorInfo> in,
                     std::span<TensorInfo> out) {
  MIXQ_RETURN_IF_ERROR(infer_Identity(node, in, out));
  const TensorInfo& training = input_or_absent(in, 2);
  if (training.present && training.value && training.value->numel() == 1 &&
      training.value->get_as_double(0) != 0)
    return Unsupported("Dropout in training mode is not supported (the reference runs inference)");
  if (out.size() > 1) {
    out[1].dtype = DType::kBool;
    out[1].shape = in[0].shape;
  }
  return Status::Ok();
}

Status compute_Dropout(const ir::Node& node, std::span<const Tensor> in, std::span<Tensor> out) {
  MIXQ_RETURN_IF_ERROR(copy_all(node, in, out));
  if (out.size() > 1 && out[1].defined()) std::fill_n(out[1].data<bool>(), out[1].numel(), true);
  return Status::Ok();
}

// --- Concat --------------------------------------------------------------------------------------

Status infer_Concat(const ir::Node& node, std::span<const TensorInfo> in,
                    std::span<TensorInfo> out) {
  if (!node.has_attr("axis")) return InvalidArgument("the axis attribute is required");
  if (in.empty()) return InvalidArgument("at least one input is required");
  MIXQ_RETURN_IF_ERROR(expect_present(in[0], "input 0"));
  const int64_t rank = int64_t(in[0].shape.size());
  int64_t axis = 0;
  MIXQ_RETURN_IF_ERROR(normalize_axis(node.attr_int("axis", 0), rank, axis));
  Shape shape = in[0].shape;
  for (size_t i = 1; i < in.size(); ++i) {
    const std::string what = "input " + std::to_string(i);
    MIXQ_RETURN_IF_ERROR(expect_dtype(in[i], {in[0].dtype}, what.c_str()));
    const Shape& s = in[i].shape;
    bool ok = int64_t(s.size()) == rank;
    for (size_t d = 0; ok && d < s.size(); ++d) {
      if (int64_t(d) == axis) {
        shape[d] = shape[d] < 0 || s[d] < 0 ? ir::kDynamicDim : shape[d] + s[d];
      } else if (shape[d] < 0 || s[d] < 0) {
        shape[d] = std::max(shape[d], s[d]);  // the known one, if any
      } else {
        ok = shape[d] == s[d];
      }
    }
    if (!ok)
      return InvalidArgument(what + " has shape " + shape_to_string(s) +
                             ", which does not match input 0's " + shape_to_string(in[0].shape) +
                             " outside axis " + str(axis));
  }
  out[0].dtype = in[0].dtype;
  out[0].shape = shape;
  return Status::Ok();
}

Status compute_Concat(const ir::Node& node, std::span<const Tensor> in, std::span<Tensor> out) {
  Tensor& y = out[0];
  int64_t axis = 0;
  MIXQ_RETURN_IF_ERROR(normalize_axis(node.attr_int("axis", 0), y.rank(), axis));
  const int64_t outer = product(y.shape(), 0, size_t(axis));
  const int64_t inner = product(y.shape(), size_t(axis) + 1, y.shape().size());
  int64_t offset = 0;  // along the axis
  for (const Tensor& x : in) {
    const int64_t chunk = x.dim(int(axis)) * inner;
    for (int64_t o = 0; o < outer; ++o)
      copy_elements(x, o * chunk, y, (o * y.dim(int(axis)) + offset) * inner, chunk);
    offset += x.dim(int(axis));
  }
  return Status::Ok();
}

// --- Split ---------------------------------------------------------------------------------------

// Sizes along the axis of `n` outputs: the 'split' input, else equal parts (opset 13 rules).
// Unknown sizes are kDynamicDim.
Status split_sizes(const TensorInfo& split, int64_t dim, size_t n, std::vector<int64_t>& sizes) {
  if (split.present) {
    bool known;
    MIXQ_RETURN_IF_ERROR(read_ints(split, "split", sizes, known));
    if (!known) {
      sizes.assign(n, ir::kDynamicDim);
      return Status::Ok();
    }
    if (sizes.size() != n)
      return InvalidArgument("split has " + str(int64_t(sizes.size())) + " sizes for " +
                             str(int64_t(n)) + " outputs");
    int64_t total = 0;
    for (int64_t s : sizes) {
      if (s < 0) return InvalidArgument("split sizes must be >= 0, got " + ints_to_string(sizes));
      total += s;
    }
    if (dim >= 0 && total != dim)
      return InvalidArgument("split sizes " + ints_to_string(sizes) + " sum to " + str(total) +
                             ", but the axis has size " + str(dim));
    return Status::Ok();
  }
  if (dim >= 0 && dim % int64_t(n) != 0)
    return InvalidArgument("axis of size " + str(dim) + " cannot be split into " + str(int64_t(n)) +
                           " equal parts");
  sizes.assign(n, dim < 0 ? ir::kDynamicDim : dim / int64_t(n));
  return Status::Ok();
}

Status infer_Split(const ir::Node& node, std::span<const TensorInfo> in,
                   std::span<TensorInfo> out) {
  MIXQ_RETURN_IF_ERROR(expect_present(in[0], "input"));
  int64_t axis = 0;
  MIXQ_RETURN_IF_ERROR(normalize_axis(node.attr_int("axis", 0), int64_t(in[0].shape.size()), axis));
  std::vector<int64_t> sizes;
  MIXQ_RETURN_IF_ERROR(
      split_sizes(input_or_absent(in, 1), in[0].shape[size_t(axis)], out.size(), sizes));
  for (size_t k = 0; k < out.size(); ++k) {
    out[k].dtype = in[0].dtype;
    out[k].shape = in[0].shape;
    out[k].shape[size_t(axis)] = sizes[k];
  }
  return Status::Ok();
}

Status compute_Split(const ir::Node& node, std::span<const Tensor> in, std::span<Tensor> out) {
  const Tensor& x = in[0];
  int64_t axis = 0;
  MIXQ_RETURN_IF_ERROR(normalize_axis(node.attr_int("axis", 0), x.rank(), axis));
  std::vector<int64_t> sizes;
  const TensorInfo split = has_input(in, 1) ? TensorInfo::of(in[1]) : TensorInfo{};
  MIXQ_RETURN_IF_ERROR(split_sizes(split, x.dim(int(axis)), out.size(), sizes));
  const int64_t outer = product(x.shape(), 0, size_t(axis));
  const int64_t inner = product(x.shape(), size_t(axis) + 1, x.shape().size());
  int64_t offset = 0;  // along the axis
  for (size_t k = 0; k < out.size(); ++k) {
    if (out[k].defined())  // absent outputs still take their part of the axis
      for (int64_t o = 0; o < outer; ++o)
        copy_elements(x, (o * x.dim(int(axis)) + offset) * inner, out[k], o * sizes[k] * inner,
                      sizes[k] * inner);
    offset += sizes[k];
  }
  return Status::Ok();
}

// --- Flatten -------------------------------------------------------------------------------------

Status infer_Flatten(const ir::Node& node, std::span<const TensorInfo> in,
                     std::span<TensorInfo> out) {
  MIXQ_RETURN_IF_ERROR(expect_present(in[0], "input"));
  const Shape& s = in[0].shape;
  const int64_t rank = int64_t(s.size());
  int64_t axis = node.attr_int("axis", 1);
  if (axis < -rank || axis > rank)
    return InvalidArgument("axis " + str(axis) + " is out of range for rank " + str(rank));
  if (axis < 0) axis += rank;
  out[0].dtype = in[0].dtype;
  out[0].shape = {product(s, 0, size_t(axis)), product(s, size_t(axis), s.size())};
  return Status::Ok();
}

// --- Reshape -------------------------------------------------------------------------------------

Status infer_Reshape(const ir::Node& node, std::span<const TensorInfo> in,
                     std::span<TensorInfo> out) {
  MIXQ_RETURN_IF_ERROR(expect_present(in[0], "data"));
  std::vector<int64_t> target;
  bool known;
  MIXQ_RETURN_IF_ERROR(read_ints(input_or_absent(in, 1), "shape", target, known));
  out[0].dtype = in[0].dtype;
  if (!known) {
    const int64_t rank = length_of(in[1]);
    if (rank < 0) return rank_unknown("the target shape");
    out[0].shape.assign(size_t(rank), ir::kDynamicDim);
    return Status::Ok();
  }
  const Shape& x = in[0].shape;
  const bool allowzero = node.attr_int("allowzero", 0) != 0;
  Shape dims;
  std::vector<bool> copied(target.size(), false);
  int64_t infer_at = -1;
  for (size_t i = 0; i < target.size(); ++i) {
    const int64_t v = target[i];
    if (v < -1) return InvalidArgument("shape " + ints_to_string(target) + " has a dim below -1");
    if (v == -1) {
      if (infer_at >= 0)
        return InvalidArgument("shape " + ints_to_string(target) + " has more than one -1");
      infer_at = int64_t(i);
    }
    if (v == 0 && !allowzero) {
      if (i >= x.size())
        return InvalidArgument("shape " + ints_to_string(target) + " copies dim " +
                               str(int64_t(i)) + " with 0, but the input " + shape_to_string(x) +
                               " has rank " + str(int64_t(x.size())));
      copied[i] = true;
      dims.push_back(x[i]);
    } else {
      dims.push_back(v);
    }
  }
  if (allowzero && infer_at >= 0 && std::count(target.begin(), target.end(), 0) > 0)
    return InvalidArgument("shape " + ints_to_string(target) +
                           " has both 0 and -1, which allowzero=1 forbids");
  // Element counts on both sides, leaving out unknown input dims that a 0 copies across.
  int64_t in_count = 1, out_count = 1;
  bool in_unknown = false;
  for (size_t i = 0; i < x.size(); ++i) {
    if (x[i] >= 0)
      in_count *= x[i];
    else if (!(i < copied.size() && copied[i]))
      in_unknown = true;
  }
  for (size_t i = 0; i < dims.size(); ++i)
    if (int64_t(i) != infer_at && dims[i] >= 0) out_count *= dims[i];
  const std::string what = "cannot reshape " + shape_to_string(x) + " into shape " +
                           ints_to_string(target) + (allowzero ? " (allowzero=1)" : "");
  if (!in_unknown) {
    if (infer_at >= 0) {
      if (out_count == 0 || in_count % out_count != 0)
        return InvalidArgument(what + ": " + str(in_count) + " elements do not divide into " +
                               str(out_count));
      dims[size_t(infer_at)] = in_count / out_count;
    } else if (in_count != out_count) {
      return InvalidArgument(what + ": " + str(in_count) + " elements vs " + str(out_count));
    }
  }
  out[0].shape = dims;
  return Status::Ok();
}

// --- Transpose -----------------------------------------------------------------------------------

Status transpose_perm(const ir::Node& node, size_t rank, std::vector<int64_t>& perm) {
  std::vector<int64_t> reverse;
  for (size_t i = rank; i-- > 0;) reverse.push_back(int64_t(i));
  perm = node.attr_ints("perm", reverse);
  std::vector<int64_t> sorted = perm;
  std::sort(sorted.begin(), sorted.end());
  bool ok = perm.size() == rank;
  for (size_t i = 0; ok && i < rank; ++i) ok = sorted[i] == int64_t(i);
  if (!ok)
    return InvalidArgument("perm " + ints_to_string(perm) + " is not a permutation of the " +
                           str(int64_t(rank)) + " input axes");
  return Status::Ok();
}

Status infer_Transpose(const ir::Node& node, std::span<const TensorInfo> in,
                       std::span<TensorInfo> out) {
  MIXQ_RETURN_IF_ERROR(expect_present(in[0], "input"));
  std::vector<int64_t> perm;
  MIXQ_RETURN_IF_ERROR(transpose_perm(node, in[0].shape.size(), perm));
  out[0].dtype = in[0].dtype;
  out[0].shape.clear();
  for (int64_t p : perm) out[0].shape.push_back(in[0].shape[size_t(p)]);
  return Status::Ok();
}

Status compute_Transpose(const ir::Node& node, std::span<const Tensor> in, std::span<Tensor> out) {
  std::vector<int64_t> perm;
  MIXQ_RETURN_IF_ERROR(transpose_perm(node, size_t(in[0].rank()), perm));
  // Output axis i walks input axis perm[i].
  const std::vector<int64_t> in_strides = strides_of(in[0].shape());
  std::vector<int64_t> strides;
  for (int64_t p : perm) strides.push_back(in_strides[size_t(p)]);
  std::vector<int64_t> index;
  for (int64_t i = 0; i < out[0].numel(); ++i) {
    unravel_index(i, out[0].shape(), index);
    copy_elements(in[0], offset_of(index, strides), out[0], i);
  }
  return Status::Ok();
}

// --- Squeeze, Unsqueeze --------------------------------------------------------------------------

Status infer_Squeeze(const ir::Node&, std::span<const TensorInfo> in, std::span<TensorInfo> out) {
  MIXQ_RETURN_IF_ERROR(expect_present(in[0], "input"));
  const Shape& x = in[0].shape;
  out[0].dtype = in[0].dtype;
  out[0].shape.clear();
  std::vector<int64_t> axes;
  const TensorInfo& axes_in = input_or_absent(in, 1);
  if (axes_in.present) {
    bool known;
    MIXQ_RETURN_IF_ERROR(read_ints(axes_in, "axes", axes, known));
    if (!known) {
      const int64_t n = length_of(axes_in);
      if (n < 0 || n > int64_t(x.size())) return rank_unknown("axes");
      if (n > 0) {
        out[0].shape.assign(x.size() - size_t(n), ir::kDynamicDim);
        return Status::Ok();
      }
    }
  }
  if (axes.empty()) {  // remove every size-1 dim
    for (int64_t d : x) {
      if (d < 0)
        return Unsupported("Squeeze without axes of " + shape_to_string(x) +
                           ": which dims are 1 is only known at run time");
      if (d != 1) out[0].shape.push_back(d);
    }
    return Status::Ok();
  }
  std::vector<int64_t> norm;
  MIXQ_RETURN_IF_ERROR(normalize_axes(axes, int64_t(x.size()), norm));
  for (int64_t a : norm)
    if (x[size_t(a)] >= 0 && x[size_t(a)] != 1)
      return InvalidArgument("cannot squeeze axis " + str(a) + " of " + shape_to_string(x) +
                             ": its size is " + str(x[size_t(a)]) + ", not 1");
  for (size_t i = 0; i < x.size(); ++i)
    if (std::find(norm.begin(), norm.end(), int64_t(i)) == norm.end()) out[0].shape.push_back(x[i]);
  return Status::Ok();
}

Status infer_Unsqueeze(const ir::Node&, std::span<const TensorInfo> in, std::span<TensorInfo> out) {
  MIXQ_RETURN_IF_ERROR(expect_present(in[0], "input"));
  const Shape& x = in[0].shape;
  std::vector<int64_t> axes;
  bool known;
  MIXQ_RETURN_IF_ERROR(read_ints(input_or_absent(in, 1), "axes", axes, known));
  out[0].dtype = in[0].dtype;
  if (!known) {
    const int64_t n = length_of(in[1]);
    if (n < 0) return rank_unknown("axes");
    out[0].shape.assign(x.size() + size_t(n), ir::kDynamicDim);
    return Status::Ok();
  }
  const int64_t rank = int64_t(x.size() + axes.size());
  std::vector<int64_t> norm;
  MIXQ_RETURN_IF_ERROR(normalize_axes(axes, rank, norm));
  out[0].shape.clear();
  size_t next = 0;  // next input dim
  for (int64_t i = 0; i < rank; ++i) {
    if (std::find(norm.begin(), norm.end(), i) != norm.end())
      out[0].shape.push_back(1);
    else
      out[0].shape.push_back(x[next++]);
  }
  return Status::Ok();
}

// --- Pad -----------------------------------------------------------------------------------------

enum class PadMode { kConstant, kReflect, kEdge };

// Per axis: crop (negative pads) first, then pad the cropped range, as onnxruntime does.
struct PadAxis {
  int64_t crop_begin, kept, pad_begin, out;
};

Status pad_plan(const ir::Node& node, const Shape& x, const std::vector<int64_t>& pads,
                PadMode& mode, std::vector<PadAxis>& plan) {
  const std::string m = node.attr_string("mode", "constant");
  if (m == "constant")
    mode = PadMode::kConstant;
  else if (m == "reflect")
    mode = PadMode::kReflect;
  else if (m == "edge")
    mode = PadMode::kEdge;
  else
    return Unsupported("Pad mode '" + m + "' is not supported (constant, reflect, edge)");
  const size_t rank = x.size();
  if (pads.size() != 2 * rank)
    return InvalidArgument("pads has " + str(int64_t(pads.size())) + " values; rank " +
                           str(int64_t(rank)) + " needs " + str(int64_t(2 * rank)));
  plan.clear();
  for (size_t i = 0; i < rank; ++i) {
    const int64_t b = pads[i], e = pads[i + rank];
    PadAxis a{std::max<int64_t>(0, -b), ir::kDynamicDim, std::max<int64_t>(0, b), ir::kDynamicDim};
    if (x[i] >= 0) {
      a.kept = x[i] - a.crop_begin - std::max<int64_t>(0, -e);
      if (a.kept < 0)
        return InvalidArgument("pads " + ints_to_string(pads) + " crop axis " + str(int64_t(i)) +
                               " of size " + str(x[i]) + " below zero");
      a.out = a.kept + a.pad_begin + std::max<int64_t>(0, e);
      if (a.kept == 0 && a.out > 0 && mode != PadMode::kConstant)
        return InvalidArgument("cannot " + m + "-pad axis " + str(int64_t(i)) + ", which is empty");
    }
    plan.push_back(a);
  }
  return Status::Ok();
}

Status infer_Pad(const ir::Node& node, std::span<const TensorInfo> in, std::span<TensorInfo> out) {
  MIXQ_RETURN_IF_ERROR(expect_present(in[0], "data"));
  const TensorInfo& value = input_or_absent(in, 2);
  if (value.present) {
    MIXQ_RETURN_IF_ERROR(expect_dtype(value, {in[0].dtype}, "constant_value"));
    if (shape_numel(value.shape) != 1)
      return InvalidArgument("constant_value must be a scalar, got shape " +
                             shape_to_string(value.shape));
  }
  std::vector<int64_t> pads;
  bool known;
  MIXQ_RETURN_IF_ERROR(read_ints(input_or_absent(in, 1), "pads", pads, known));
  out[0].dtype = in[0].dtype;
  if (!known) {
    out[0].shape.assign(in[0].shape.size(), ir::kDynamicDim);
    return Status::Ok();
  }
  PadMode mode;
  std::vector<PadAxis> plan;
  MIXQ_RETURN_IF_ERROR(pad_plan(node, in[0].shape, pads, mode, plan));
  out[0].shape.clear();
  for (const PadAxis& a : plan) out[0].shape.push_back(a.out);
  return Status::Ok();
}

// Where output position j (relative to the kept range of length n) reads from, or -1 for the
// constant. Reflect mirrors without repeating the edge, periodically (numpy's np.pad).
int64_t pad_source(int64_t j, int64_t n, PadMode mode) {
  if (j >= 0 && j < n) return j;
  if (mode == PadMode::kConstant) return -1;
  if (mode == PadMode::kEdge || n == 1) return j < 0 ? 0 : n - 1;
  const int64_t period = 2 * (n - 1);
  const int64_t r = ((j % period) + period) % period;
  return r < n ? r : period - r;
}

Status compute_Pad(const ir::Node& node, std::span<const Tensor> in, std::span<Tensor> out) {
  const Tensor& x = in[0];
  Tensor& y = out[0];
  PadMode mode;
  std::vector<PadAxis> plan;
  MIXQ_RETURN_IF_ERROR(pad_plan(node, x.shape(), in[1].to_int64_vector(), mode, plan));
  // The fill value: input 2, else zero (all-zero bytes are 0 in every dtype).
  const Tensor fill = has_input(in, 2) ? in[2] : Tensor::zeros(x.dtype(), {});
  const std::vector<int64_t> strides = strides_of(x.shape());
  std::vector<int64_t> index;
  for (int64_t i = 0; i < y.numel(); ++i) {
    unravel_index(i, y.shape(), index);
    int64_t offset = 0;
    for (size_t k = 0; k < index.size() && offset >= 0; ++k) {
      const int64_t j = pad_source(index[k] - plan[k].pad_begin, plan[k].kept, mode);
      offset = j < 0 ? -1 : offset + (plan[k].crop_begin + j) * strides[k];
    }
    if (offset < 0)
      copy_elements(fill, 0, y, i);
    else
      copy_elements(x, offset, y, i);
  }
  return Status::Ok();
}

}  // namespace

// --- Slice (its plan is shared with other backends) ----------------------------------------------

// Clamps start/end to the axis as the spec says, then counts the elements taken.
static SliceAxis slice_axis(int64_t dim, int64_t start, int64_t end, int64_t step) {
  SliceAxis a{0, step, 0};
  if (start < 0) start += dim;
  if (end < 0) end += dim;
  if (step > 0) {
    a.start = std::clamp<int64_t>(start, 0, dim);
    end = std::clamp<int64_t>(end, 0, dim);
    if (end > a.start) a.count = (end - a.start - 1) / step + 1;
  } else if (dim > 0) {
    a.start = std::clamp<int64_t>(start, 0, dim - 1);
    end = std::clamp<int64_t>(end, -1, dim - 1);
    // -step would overflow for INT64_MIN; any step that large takes one element anyway.
    const int64_t mag = step == std::numeric_limits<int64_t>::min() ? dim : -step;
    if (a.start > end) a.count = (a.start - end - 1) / mag + 1;
  }
  return a;
}

Status slice_plan(const Shape& x, const std::vector<int64_t>& starts,
                  const std::vector<int64_t>& ends, std::vector<int64_t> axes,
                  std::vector<int64_t> steps, bool has_axes, bool has_steps,
                  std::vector<SliceAxis>& plan) {
  const size_t n = starts.size();
  if (ends.size() != n || (has_axes && axes.size() != n) || (has_steps && steps.size() != n))
    return InvalidArgument("starts, ends, axes and steps must have the same length, got " +
                           ints_to_string(starts) + ", " + ints_to_string(ends) +
                           (has_axes ? ", axes " + ints_to_string(axes) : "") +
                           (has_steps ? ", steps " + ints_to_string(steps) : ""));
  if (!has_axes)
    for (size_t i = 0; i < n; ++i) axes.push_back(int64_t(i));
  if (!has_steps) steps.assign(n, 1);
  std::vector<int64_t> norm;
  MIXQ_RETURN_IF_ERROR(normalize_axes(axes, int64_t(x.size()), norm));
  plan.assign(x.size(), SliceAxis{});
  for (size_t i = 0; i < x.size(); ++i) plan[i].count = x[i];  // untouched axes: everything
  for (size_t i = 0; i < n; ++i) {
    if (steps[i] == 0) return InvalidArgument("steps must not be 0");
    const size_t a = size_t(norm[i]);
    if (x[a] < 0)
      plan[a] = {0, steps[i], ir::kDynamicDim};
    else
      plan[a] = slice_axis(x[a], starts[i], ends[i], steps[i]);
  }
  return Status::Ok();
}

namespace {

Status infer_Slice(const ir::Node&, std::span<const TensorInfo> in, std::span<TensorInfo> out) {
  MIXQ_RETURN_IF_ERROR(expect_present(in[0], "data"));
  const Shape& x = in[0].shape;
  const char* names[] = {"starts", "ends", "axes", "steps"};
  std::vector<int64_t> v[4];
  bool known[4] = {true, true, true, true};
  for (size_t i = 0; i < 4; ++i) {
    const TensorInfo& info = input_or_absent(in, i + 1);
    if (i < 2 || info.present) MIXQ_RETURN_IF_ERROR(read_ints(info, names[i], v[i], known[i]));
  }
  out[0].dtype = in[0].dtype;
  if (!known[0] || !known[1] || !known[3]) {
    // Sizes unknown: the sliced axes (all, if the axes are unknown too) become dynamic.
    out[0].shape.assign(x.size(), ir::kDynamicDim);
    if (known[2] && input_or_absent(in, 3).present) {
      std::vector<int64_t> norm;
      MIXQ_RETURN_IF_ERROR(normalize_axes(v[2], int64_t(x.size()), norm));
      out[0].shape = x;
      for (int64_t a : norm) out[0].shape[size_t(a)] = ir::kDynamicDim;
    }
    return Status::Ok();
  }
  if (!known[2]) {  // axes unknown: every axis may be sliced
    out[0].shape.assign(x.size(), ir::kDynamicDim);
    return Status::Ok();
  }
  std::vector<SliceAxis> plan;
  MIXQ_RETURN_IF_ERROR(slice_plan(x, v[0], v[1], v[2], v[3], input_or_absent(in, 3).present,
                                  input_or_absent(in, 4).present, plan));
  out[0].shape.clear();
  for (const SliceAxis& a : plan) out[0].shape.push_back(a.count);
  return Status::Ok();
}

Status compute_Slice(const ir::Node&, std::span<const Tensor> in, std::span<Tensor> out) {
  const Tensor& x = in[0];
  auto ints = [&](size_t i) {
    return has_input(in, i) ? in[i].to_int64_vector() : std::vector<int64_t>{};
  };
  std::vector<SliceAxis> plan;
  MIXQ_RETURN_IF_ERROR(slice_plan(x.shape(), ints(1), ints(2), ints(3), ints(4), has_input(in, 3),
                                  has_input(in, 4), plan));
  const std::vector<int64_t> in_strides = strides_of(x.shape());
  std::vector<int64_t> index;
  for (int64_t i = 0; i < out[0].numel(); ++i) {
    unravel_index(i, out[0].shape(), index);
    int64_t offset = 0;
    for (size_t k = 0; k < index.size(); ++k)
      offset += (plan[k].start + index[k] * plan[k].step) * in_strides[k];
    copy_elements(x, offset, out[0], i);
  }
  return Status::Ok();
}

// --- Gather --------------------------------------------------------------------------------------

Status infer_Gather(const ir::Node& node, std::span<const TensorInfo> in,
                    std::span<TensorInfo> out) {
  MIXQ_RETURN_IF_ERROR(expect_present(in[0], "data"));
  MIXQ_RETURN_IF_ERROR(
      expect_dtype(input_or_absent(in, 1), {DType::kInt64, DType::kInt32}, "indices"));
  const Shape& x = in[0].shape;
  int64_t axis = 0;
  MIXQ_RETURN_IF_ERROR(normalize_axis(node.attr_int("axis", 0), int64_t(x.size()), axis));
  out[0].dtype = in[0].dtype;
  out[0].shape.assign(x.begin(), x.begin() + axis);
  out[0].shape.insert(out[0].shape.end(), in[1].shape.begin(), in[1].shape.end());
  out[0].shape.insert(out[0].shape.end(), x.begin() + axis + 1, x.end());
  return Status::Ok();
}

Status compute_Gather(const ir::Node& node, std::span<const Tensor> in, std::span<Tensor> out) {
  const Tensor& x = in[0];
  int64_t axis = 0;
  MIXQ_RETURN_IF_ERROR(normalize_axis(node.attr_int("axis", 0), x.rank(), axis));
  const int64_t dim = x.dim(int(axis));
  const int64_t outer = product(x.shape(), 0, size_t(axis));
  const int64_t inner = product(x.shape(), size_t(axis) + 1, x.shape().size());
  const std::vector<int64_t> indices = in[1].to_int64_vector();
  const int64_t n = int64_t(indices.size());
  for (int64_t j = 0; j < n; ++j) {
    int64_t idx = indices[size_t(j)];
    if (idx < -dim || idx >= dim)
      return InvalidArgument("index " + str(idx) + " is out of range for axis " + str(axis) +
                             " of size " + str(dim));
    if (idx < 0) idx += dim;
    for (int64_t o = 0; o < outer; ++o)
      copy_elements(x, (o * dim + idx) * inner, out[0], (o * n + j) * inner, inner);
  }
  return Status::Ok();
}

// --- Expand --------------------------------------------------------------------------------------

Status infer_Expand(const ir::Node&, std::span<const TensorInfo> in, std::span<TensorInfo> out) {
  MIXQ_RETURN_IF_ERROR(expect_present(in[0], "input"));
  const Shape& x = in[0].shape;
  std::vector<int64_t> shape;
  bool known;
  MIXQ_RETURN_IF_ERROR(read_ints(input_or_absent(in, 1), "shape", shape, known));
  out[0].dtype = in[0].dtype;
  if (!known) {
    // Dims of the input other than 1 survive the broadcast; the rest are unknown.
    const int64_t n = length_of(in[1]);
    if (n < 0) return rank_unknown("the target shape");
    const size_t rank = std::max(size_t(n), x.size());
    out[0].shape.assign(rank, ir::kDynamicDim);
    for (size_t i = 0; i < x.size(); ++i)
      if (x[i] >= 0 && x[i] != 1) out[0].shape[rank - x.size() + i] = x[i];
    return Status::Ok();
  }
  for (int64_t d : shape)
    if (d < 0) return InvalidArgument("shape " + ints_to_string(shape) + " has a negative dim");
  return broadcast_shapes(x, shape, out[0].shape);
}

Status compute_Expand(const ir::Node&, std::span<const Tensor> in, std::span<Tensor> out) {
  const std::vector<int64_t> strides = broadcast_strides(in[0].shape(), out[0].shape());
  std::vector<int64_t> index;
  for (int64_t i = 0; i < out[0].numel(); ++i) {
    unravel_index(i, out[0].shape(), index);
    copy_elements(in[0], offset_of(index, strides), out[0], i);
  }
  return Status::Ok();
}

// --- Shape ---------------------------------------------------------------------------------------

// Dims [start, end) (opset 15), negative values counting from the end, clamped to the rank.
void shape_range(const ir::Node& node, int64_t rank, int64_t& start, int64_t& end) {
  start = node.attr_int("start", 0);
  end = node.attr_int("end", rank);
  if (start < 0) start += rank;
  if (end < 0) end += rank;
  start = std::clamp<int64_t>(start, 0, rank);
  end = std::clamp<int64_t>(end, 0, rank);
}

Status infer_Shape(const ir::Node& node, std::span<const TensorInfo> in,
                   std::span<TensorInfo> out) {
  MIXQ_RETURN_IF_ERROR(expect_present(in[0], "data"));
  int64_t start, end;
  shape_range(node, int64_t(in[0].shape.size()), start, end);
  out[0].dtype = DType::kInt64;
  out[0].shape = {std::max<int64_t>(0, end - start)};
  return Status::Ok();
}

Status compute_Shape(const ir::Node& node, std::span<const Tensor> in, std::span<Tensor> out) {
  int64_t start, end;
  shape_range(node, in[0].rank(), start, end);
  for (int64_t i = start; i < end; ++i) out[0].data<int64_t>()[i - start] = in[0].dim(int(i));
  return Status::Ok();
}

// --- Cast ----------------------------------------------------------------------------------------

// Attribute "to" holds static_cast<int64_t>(DType) (the importer maps ONNX's enum).
Status cast_target(const ir::Node& node, DType& to) {
  if (!node.has_attr("to")) return InvalidArgument("the 'to' attribute is required");
  const int64_t v = node.attr_int("to", -1);
  if (v < 0 || v > int64_t(DType::kBool))
    return InvalidArgument("'to' = " + str(v) + " is not a mixq dtype");
  to = static_cast<DType>(v);
  return Status::Ok();
}

Status infer_Cast(const ir::Node& node, std::span<const TensorInfo> in, std::span<TensorInfo> out) {
  MIXQ_RETURN_IF_ERROR(expect_present(in[0], "input"));
  MIXQ_RETURN_IF_ERROR(cast_target(node, out[0].dtype));
  out[0].shape = in[0].shape;
  return Status::Ok();
}

// As numpy's astype and onnxruntime: float -> integer truncates toward zero (saturating where
// the spec leaves it undefined; NaN -> 0); integer -> narrower integer keeps the low bits;
// everything else (to and between floats, to bool) is Tensor::to's round-to-nearest-even.
Status compute_Cast(const ir::Node&, std::span<const Tensor> in, std::span<Tensor> out) {
  const Tensor& x = in[0];
  Tensor& y = out[0];
  const bool to_int = !dtype_is_float(y.dtype()) && y.dtype() != DType::kBool;
  if (to_int && !dtype_is_float(x.dtype())) {
    return dispatch_numeric(y.dtype(), [&](auto tag) {
      using T = decltype(tag);
      for (int64_t i = 0; i < x.numel(); ++i) y.data<T>()[i] = T(x.get_as_int64(i));
    });
  }
  Tensor src = x;
  if (to_int) {
    src = x.to(DType::kFloat32);  // a copy (exact for every float dtype)
    for (float& v : src.span<float>()) v = std::trunc(v);
  }
  const Tensor converted = src.to(y.dtype());
  copy_elements(converted, 0, y, 0, y.numel());
  return Status::Ok();
}

// --- Constant, ConstantOfShape -------------------------------------------------------------------

// The value of a Constant: the tensor attribute "value", or value_float(s) / value_int(s).
Status constant_value(const ir::Node& node, Tensor& value) {
  if (const Tensor* t = node.attr_tensor("value"))
    value = *t;
  else if (node.has_attr("value_float"))
    value = Tensor::scalar<float>(node.attr_float("value_float", 0));
  else if (node.has_attr("value_int"))
    value = Tensor::scalar<int64_t>(node.attr_int("value_int", 0));
  else if (node.has_attr("value_floats")) {
    const std::vector<float> v = node.attr_floats("value_floats");
    value = Tensor::from_vector<float>({int64_t(v.size())}, v);
  } else if (node.has_attr("value_ints")) {
    const std::vector<int64_t> v = node.attr_ints("value_ints");
    value = Tensor::from_vector<int64_t>({int64_t(v.size())}, v);
  }
  if (!value.defined())
    return InvalidArgument("a tensor 'value' attribute (or value_float(s)/value_int(s)) is needed");
  return Status::Ok();
}

Status infer_Constant(const ir::Node& node, std::span<const TensorInfo>,
                      std::span<TensorInfo> out) {
  Tensor value;
  MIXQ_RETURN_IF_ERROR(constant_value(node, value));
  out[0].dtype = value.dtype();
  out[0].shape = value.shape();
  return Status::Ok();
}

Status compute_Constant(const ir::Node& node, std::span<const Tensor>, std::span<Tensor> out) {
  Tensor value;
  MIXQ_RETURN_IF_ERROR(constant_value(node, value));
  copy_elements(value, 0, out[0], 0, value.numel());
  return Status::Ok();
}

// The fill value of ConstantOfShape: attribute "value" (one element), default float 0.
Status fill_value(const ir::Node& node, Tensor& value) {
  const Tensor* t = node.attr_tensor("value");
  if (t && t->numel() != 1)
    return InvalidArgument("value must have one element, got " + t->describe());
  value = t ? *t : Tensor::scalar<float>(0.0f);
  return Status::Ok();
}

Status infer_ConstantOfShape(const ir::Node& node, std::span<const TensorInfo> in,
                             std::span<TensorInfo> out) {
  Tensor value;
  MIXQ_RETURN_IF_ERROR(fill_value(node, value));
  std::vector<int64_t> shape;
  bool known;
  MIXQ_RETURN_IF_ERROR(read_ints(input_or_absent(in, 0), "input (the shape)", shape, known));
  out[0].dtype = value.dtype();
  if (!known) {
    const int64_t rank = length_of(in[0]);
    if (rank < 0) return rank_unknown("the shape");
    out[0].shape.assign(size_t(rank), ir::kDynamicDim);
    return Status::Ok();
  }
  for (int64_t d : shape)
    if (d < 0) return InvalidArgument("shape " + ints_to_string(shape) + " has a negative dim");
  out[0].shape = shape;
  return Status::Ok();
}

Status compute_ConstantOfShape(const ir::Node& node, std::span<const Tensor>,
                               std::span<Tensor> out) {
  Tensor value;
  MIXQ_RETURN_IF_ERROR(fill_value(node, value));
  for (int64_t i = 0; i < out[0].numel(); ++i) copy_elements(value, 0, out[0], i);
  return Status::Ok();
}

}  // namespace

void register_shape(Registry& r) {
  using ir::OpKind;
  r.add(OpKind::kConcat, {infer_Concat, compute_Concat});
  r.add(OpKind::kSplit, {infer_Split, compute_Split});
  r.add(OpKind::kFlatten, {infer_Flatten, copy_all});
  r.add(OpKind::kReshape, {infer_Reshape, copy_all});
  r.add(OpKind::kTranspose, {infer_Transpose, compute_Transpose});
  r.add(OpKind::kSqueeze, {infer_Squeeze, copy_all});
  r.add(OpKind::kUnsqueeze, {infer_Unsqueeze, copy_all});
  r.add(OpKind::kPad, {infer_Pad, compute_Pad});
  r.add(OpKind::kSlice, {infer_Slice, compute_Slice});
  r.add(OpKind::kGather, {infer_Gather, compute_Gather});
  r.add(OpKind::kExpand, {infer_Expand, compute_Expand});
  r.add(OpKind::kShape, {infer_Shape, compute_Shape});
  r.add(OpKind::kCast, {infer_Cast, compute_Cast});
  r.add(OpKind::kConstant, {infer_Constant, compute_Constant});
  r.add(OpKind::kConstantOfShape, {infer_ConstantOfShape, compute_ConstantOfShape});
  r.add(OpKind::kIdentity, {infer_Identity, copy_all});
  r.add(OpKind::kDropout, {infer_Dropout, compute_Dropout});
}

}  // namespace mixq::reference
