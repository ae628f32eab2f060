// FusedConv through cuDNN's backend (graph) API, NHWC, in fp32, tf32, fp16, bf16, int8 and fp8.
//
// One operation graph per layer: conv_fprop, then a chain of pointwise nodes that is the whole
// epilogue ("fused" mode):
//   conv -> [* scale[c]] -> [+ bias[c]] -> [+ residual] -> [* out_scale] -> [relu | clip] -> y
// Quantised outputs (s8, e4m3) are computed in output units: with a quantised residual r (scale
// s_r) the chain runs in units of s_r, so the residual adds as stored codes, and one scalar
// multiply (s_r / s_y) brings it to y's units:
//   y_q = act((acc * s_x*s_w[c]/s_r + b[c]/s_r + r_q) * s_r/s_y)
// without a residual the divisor is s_y. Float outputs: acc * s_x*s_w[c] (int8/fp8) + b + r.
// The last node's output tensor has y's dtype: cuDNN converts (rounds, saturates) on store.
//
// Where cuDNN has no engine for the fused graph, "split" mode runs the convolution alone
// (int8/fp8: with the per-channel scale, into f32) into scratch and the own epilogue kernel adds
// bias and residual, applies the activation and writes y's format.
//
// prepare() builds the graph at the maximum batch, takes engine configurations from the
// heuristics (mode A, then FALLBACK), times every one that finalises and runs (the heuristic's
// first pick can be 3.5x off), keeps the fastest, and records "engine index + knob choices" in the
// node attribute mixq.cudnn_choice, which the engine file stores: loading rebuilds that plan
// without timing, and other batch sizes reuse the choice (re-tuning only where it does not build).
// Runtime-compiled plans (about a second of compiling each) are also stored as cuDNN serializes
// them (mixq.cudnn_plan), so loading compiles nothing; and precompile() starts every layer's
// compilation on worker threads before the first layer is timed.
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <future>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>
#include <tuple>
#include <vector>

#include "backends/cuda/cuda_common.h"
#include "backends/cuda/cuda_util.h"
#include "backends/cuda/kernels.h"

// The handle attributes of the operation graph and the execution plan are marked deprecated in
// cuDNN 9.x (a device-property descriptor can replace them) but remain the documented way to
// bind a graph to a device; the measured probe uses them.
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

namespace mixq::backends::cuda {
namespace {

using Clock = std::chrono::steady_clock;
using Desc = std::shared_ptr<void>;  // a cudnnBackendDescriptor_t, destroyed with its last owner

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}
std::string seconds_text(double seconds) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f s", seconds);
  return buf;
}

constexpr const char* kChoiceAttr = "mixq.cudnn_choice";
// The chosen plan as cuDNN serializes it, "<signature hash>|<mode>|<choice>|<json>": cuDNN
// serializes runtime-compiled plans with their kernels, so loading the engine compiles nothing.
constexpr const char* kPlanAttr = "mixq.cudnn_plan";
// A max pool absorbed by the layer (CudaBackend::fuse_for_execution): [window rows, columns].
constexpr const char* kPoolAttr = "mixq.pool";
// A Reformat absorbed by the layer: the type its input is converted to, and the scale (int8/fp8).
constexpr const char* kInputDtypeAttr = "mixq.input_dtype";
constexpr const char* kInputScaleAttr = "mixq.input_scale";
constexpr int64_t kMaxWorkspace = int64_t(256) << 20;

Expected<Desc> make_desc(cudnnBackendDescriptorType_t type) {
  cudnnBackendDescriptor_t d = nullptr;
  CUDNN_CHECK(cudnnBackendCreateDescriptor(type, &d));
  return Desc(d, [](void* p) { cudnnBackendDestroyDescriptor(p); });
}

#define SET_ATTR(desc, name, type, count, ptr) \
  CUDNN_CHECK(cudnnBackendSetAttribute((desc).get(), name, type, count, ptr))

std::string cudnn_last_error() {
  char buf[512] = {};
  cudnnGetLastErrorString(buf, sizeof buf);
  return buf;
}

// --- geometry
// -------------------------------------------------------------------------------------

struct Geometry {
  int64_t stride[2] = {1, 1}, dilation[2] = {1, 1}, pre[2] = {0, 0}, post[2] = {0, 0};
  int64_t groups = 1;
};

Status conv_geometry(const ir::Node& n, const Shape& x, const Shape& w, Geometry& g) {
  if (x.size() != 4 || w.size() != 4)
    return Unsupported("the GPU runs 2-D convolutions only (input rank " +
                       std::to_string(x.size()) + ")");
  auto strides = n.attr_ints("strides", {1, 1});
  auto dil = n.attr_ints("dilations", {1, 1});
  auto pads = n.attr_ints("pads", {0, 0, 0, 0});
  const std::string auto_pad = n.attr_string("auto_pad", "NOTSET");
  g.groups = n.attr_int("group", 1);
  if (strides.size() != 2 || dil.size() != 2 || pads.size() != 4)
    return InvalidArgument("strides/dilations/pads do not match a 2-D convolution");
  if (g.groups < 1 || x[1] % g.groups != 0 || w[0] % g.groups != 0 || x[1] / g.groups != w[1])
    return InvalidArgument("channels " + std::to_string(x[1]) + " and weights " +
                           shape_to_string(w) + " do not match group " + std::to_string(g.groups));
  for (int i = 0; i < 2; ++i) {
    g.stride[i] = strides[size_t(i)];
    g.dilation[i] = dil[size_t(i)];
    const int64_t in = x[size_t(2 + i)], k = w[size_t(2 + i)];
    if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
      const int64_t out = (in + g.stride[i] - 1) / g.stride[i];
      const int64_t total =
          std::max<int64_t>((out - 1) * g.stride[i] + (k - 1) * g.dilation[i] + 1 - in, 0);
      const int64_t small = total / 2, big = total - small;
      g.pre[i] = auto_pad == "SAME_UPPER" ? small : big;
      g.post[i] = auto_pad == "SAME_UPPER" ? big : small;
    } else if (auto_pad == "VALID") {
      g.pre[i] = g.post[i] = 0;
    } else {
      g.pre[i] = pads[size_t(i)];
      g.post[i] = pads[size_t(2 + i)];
    }
  }
  return Status::Ok();
}

// The convolution's output rows (axis 0) or columns (axis 1) for `in` input ones and a filter of
// `k` taps along that axis.
int64_t output_size(const Geometry& g, int axis, int64_t in, int64_t k) {
  return (in + g.pre[axis] + g.post[axis] - g.dilation[axis] * (k - 1) - 1) / g.stride[axis] + 1;
}

// --- the graph
// --------------------------------------------------------------------------------------

// kFused: one cuDNN graph with the epilogue; kSplit: a cuDNN convolution, then our epilogue;
// kDirect: one of our own convolutions (conv_direct.cu, conv_igemm.cu) with its epilogue, no cuDNN.
enum class Mode { kFused, kSplit, kDirect };
enum Role : int { kRoleX, kRoleW, kRoleY, kRoleScale, kRoleBias, kRoleResidual, kRoleOutScale };
constexpr int kRoles = 7;

cudnnDataType_t cudnn_type(DType d) {
  switch (d) {
    case DType::kFloat32:
      return CUDNN_DATA_FLOAT;
    case DType::kFloat16:
      return CUDNN_DATA_HALF;
    case DType::kBFloat16:
      return CUDNN_DATA_BFLOAT16;
    case DType::kFloat8E4M3:
      return CUDNN_DATA_FP8_E4M3;
    case DType::kInt8:
      return CUDNN_DATA_INT8;
    case DType::kUInt8:
      return CUDNN_DATA_UINT8;
    case DType::kInt32:
      return CUDNN_DATA_INT32;
    default:
      return CUDNN_DATA_FLOAT;
  }
}

const char* type_name(cudnnDataType_t t) {
  switch (t) {
    case CUDNN_DATA_FLOAT:
      return "f32";
    case CUDNN_DATA_HALF:
      return "f16";
    case CUDNN_DATA_BFLOAT16:
      return "bf16";
    case CUDNN_DATA_FP8_E4M3:
      return "e4m3";
    case CUDNN_DATA_INT8:
      return "s8";
    case CUDNN_DATA_INT32:
      return "s32";
    default:
      return "?";
  }
}

size_t type_bytes(cudnnDataType_t t) {
  switch (t) {
    case CUDNN_DATA_FLOAT:
    case CUDNN_DATA_INT32:
      return 4;
    case CUDNN_DATA_HALF:
    case CUDNN_DATA_BFLOAT16:
      return 2;
    default:
      return 1;
  }
}

DType dtype_of(cudnnDataType_t t) {
  switch (t) {
    case CUDNN_DATA_HALF:
      return DType::kFloat16;
    case CUDNN_DATA_BFLOAT16:
      return DType::kBFloat16;
    case CUDNN_DATA_FP8_E4M3:
      return DType::kFloat8E4M3;
    case CUDNN_DATA_INT8:
      return DType::kInt8;
    case CUDNN_DATA_INT32:
      return DType::kInt32;
    default:
      return DType::kFloat32;
  }
}

// Everything that determines the operation graph (not the data).
struct Spec {
  int64_t n = 1, c = 0, h = 0, w = 0, k = 0, cg = 0, r = 0, s = 0, oh = 0, ow = 0;
  Geometry geo;
  cudnnDataType_t xt = CUDNN_DATA_FLOAT, wt = CUDNN_DATA_FLOAT, comp = CUDNN_DATA_FLOAT;
  cudnnDataType_t acc = CUDNN_DATA_FLOAT;  // the convolution's (virtual) output
  cudnnDataType_t yt = CUDNN_DATA_FLOAT, rt = CUDNN_DATA_FLOAT;
  bool scale = false, bias = false, residual = false, out_scale = false;
  int act = kernels::kActNone;
  double lo = 0, hi = 0;         // clip bounds in the units of the clipped value
  bool no_tensor_cores = false;  // fp32: exclude TF32 engines
  Mode mode = Mode::kFused;
  int64_t pool_h = 0, pool_w = 0;  // a fused max pool (our window form only); oh, ow: before it

  bool has_pointwise() const {
    return scale || bias || residual || out_scale || act != kernels::kActNone;
  }
  // Whether the convolution writes y itself (no pointwise node at all).
  bool direct() const {
    return !has_pointwise() && (yt == xt || mode == Mode::kSplit) && acc != CUDNN_DATA_INT32;
  }

  std::string signature() const {
    std::ostringstream o;
    o << (mode == Mode::kFused ? "fused" : "split") << " x" << n << "," << c << "," << h << "," << w
      << " w" << k << "," << cg << "," << r << "," << s << " y" << oh << "," << ow << " s"
      << geo.stride[0] << "," << geo.stride[1] << " d" << geo.dilation[0] << "," << geo.dilation[1]
      << " p" << geo.pre[0] << "," << geo.pre[1] << "," << geo.post[0] << "," << geo.post[1] << " g"
      << geo.groups << " t" << int(xt) << "," << int(wt) << "," << int(comp) << "," << int(acc)
      << "," << int(yt) << "," << int(rt) << " e" << scale << bias << residual << out_scale << act
      << "," << lo << "," << hi << " tc" << !no_tensor_cores;
    if (pool_h) o << " pool" << pool_h << "," << pool_w;
    return o.str();
  }
};

std::vector<int64_t> nhwc_strides(int64_t c, int64_t h, int64_t w) {
  return {c * h * w, 1, w * c, c};
}

Expected<Desc> make_tensor(int64_t uid, cudnnDataType_t dt, const std::vector<int64_t>& dims,
                           const std::vector<int64_t>& strides, bool is_virtual) {
  MIXQ_ASSIGN_OR_RETURN(Desc d, make_desc(CUDNN_BACKEND_TENSOR_DESCRIPTOR));
  int64_t alignment = 16;
  bool v = is_virtual;
  SET_ATTR(d, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt);
  SET_ATTR(d, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, int64_t(dims.size()), dims.data());
  SET_ATTR(d, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, int64_t(strides.size()), strides.data());
  SET_ATTR(d, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
  SET_ATTR(d, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment);
  SET_ATTR(d, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &v);
  CUDNN_CHECK(cudnnBackendFinalize(d.get()));
  return d;
}

struct OpGraph {
  std::vector<Desc> keep;  // every descriptor the graph references
  Desc graph;
  std::vector<int64_t> uids;  // non-virtual tensors
  std::vector<int> roles;     // parallel to uids
};

// A pointwise node y = mode(x[, b]).
Status add_pointwise(OpGraph& g, std::vector<Desc>& ops, cudnnPointwiseMode_t mode, const Desc& x,
                     const Desc* b, const Desc& y, double lo = 0, double hi = 0) {
  MIXQ_ASSIGN_OR_RETURN(Desc pw, make_desc(CUDNN_BACKEND_POINTWISE_DESCRIPTOR));
  cudnnDataType_t prec = CUDNN_DATA_FLOAT;
  SET_ATTR(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
  SET_ATTR(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec);
  if (mode == CUDNN_POINTWISE_RELU_FWD) {
    const double fmax = double(std::numeric_limits<float>::max());
    double lower = std::max(lo, -fmax), upper = std::min(hi, fmax), slope = 0.0;
    SET_ATTR(pw, CUDNN_ATTR_POINTWISE_RELU_LOWER_CLIP, CUDNN_TYPE_DOUBLE, 1, &lower);
    SET_ATTR(pw, CUDNN_ATTR_POINTWISE_RELU_UPPER_CLIP, CUDNN_TYPE_DOUBLE, 1, &upper);
    SET_ATTR(pw, CUDNN_ATTR_POINTWISE_RELU_LOWER_CLIP_SLOPE, CUDNN_TYPE_DOUBLE, 1, &slope);
  }
  CUDNN_CHECK(cudnnBackendFinalize(pw.get()));
  g.keep.push_back(pw);
  MIXQ_ASSIGN_OR_RETURN(Desc op, make_desc(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR));
  void* pwd = pw.get();
  void* xd = x.get();
  void* yd = y.get();
  SET_ATTR(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
           &pwd);
  SET_ATTR(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &xd);
  if (b) {
    void* bd = b->get();
    SET_ATTR(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &bd);
  }
  SET_ATTR(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &yd);
  CUDNN_CHECK(cudnnBackendFinalize(op.get()));
  g.keep.push_back(op);
  ops.push_back(op);
  return Status::Ok();
}

Expected<OpGraph> build_graph(const Spec& s, cudnnHandle_t handle) {
  OpGraph g;
  auto keep = [&](const Desc& d) {
    g.keep.push_back(d);
    return d;
  };
  auto io = [&](int role, int64_t uid) {
    g.uids.push_back(uid);
    g.roles.push_back(role);
  };
  const std::vector<int64_t> ydims = {s.n, s.k, s.oh, s.ow}, ystr = nhwc_strides(s.k, s.oh, s.ow);
  const std::vector<int64_t> cdims = {1, s.k, 1, 1}, cstr = {s.k, 1, s.k, s.k};
  const std::vector<int64_t> one = {1, 1, 1, 1};
  MIXQ_ASSIGN_OR_RETURN(
      Desc tx, make_tensor(1, s.xt, {s.n, s.c, s.h, s.w}, nhwc_strides(s.c, s.h, s.w), false));
  keep(tx);
  io(kRoleX, 1);
  MIXQ_ASSIGN_OR_RETURN(Desc tw, make_tensor(2, s.wt, {s.k, s.cg, s.r, s.s},
                                             {s.r * s.s * s.cg, 1, s.s * s.cg, s.cg}, false));
  keep(tw);
  io(kRoleW, 2);
  const bool direct = s.direct();
  int64_t next_virtual = 100;
  MIXQ_ASSIGN_OR_RETURN(Desc tconv, make_tensor(direct ? 3 : next_virtual++, direct ? s.yt : s.acc,
                                                ydims, ystr, !direct));
  keep(tconv);
  if (direct) io(kRoleY, 3);

  MIXQ_ASSIGN_OR_RETURN(Desc cd, make_desc(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR));
  {
    int64_t dims = 2;
    cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
    cudnnDataType_t comp = s.comp;
    SET_ATTR(cd, CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp);
    SET_ATTR(cd, CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode);
    SET_ATTR(cd, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &dims);
    SET_ATTR(cd, CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, 2, s.geo.dilation);
    SET_ATTR(cd, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, 2, s.geo.stride);
    SET_ATTR(cd, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, 2, s.geo.pre);
    SET_ATTR(cd, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, 2, s.geo.post);
    CUDNN_CHECK(cudnnBackendFinalize(cd.get()));
  }
  keep(cd);
  MIXQ_ASSIGN_OR_RETURN(Desc conv,
                        make_desc(CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR));
  {
    float alpha = 1.0f, beta = 0.0f;
    void* xd = tx.get();
    void* wd = tw.get();
    void* yd = tconv.get();
    void* cdd = cd.get();
    SET_ATTR(conv, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
             &xd);
    SET_ATTR(conv, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
             &wd);
    SET_ATTR(conv, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
             &yd);
    SET_ATTR(conv, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC,
             CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cdd);
    SET_ATTR(conv, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA, CUDNN_TYPE_FLOAT, 1, &alpha);
    SET_ATTR(conv, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA, CUDNN_TYPE_FLOAT, 1, &beta);
    CUDNN_CHECK(cudnnBackendFinalize(conv.get()));
  }
  keep(conv);
  std::vector<Desc> ops = {conv};

  if (!direct) {
    // The pointwise chain; the last node writes y.
    struct Step {
      cudnnPointwiseMode_t mode;
      int role;  // operand b's role, or -1
      double lo = 0, hi = 0;
    };
    std::vector<Step> steps;
    if (s.scale) steps.push_back({CUDNN_POINTWISE_MUL, kRoleScale});
    if (s.bias) steps.push_back({CUDNN_POINTWISE_ADD, kRoleBias});
    if (s.residual) steps.push_back({CUDNN_POINTWISE_ADD, kRoleResidual});
    if (s.out_scale) steps.push_back({CUDNN_POINTWISE_MUL, kRoleOutScale});
    if (s.act == kernels::kActRelu)
      steps.push_back(
          {CUDNN_POINTWISE_RELU_FWD, -1, 0.0, double(std::numeric_limits<float>::max())});
    else if (s.act == kernels::kActClip)
      steps.push_back({CUDNN_POINTWISE_RELU_FWD, -1, s.lo, s.hi});
    if (steps.empty()) steps.push_back({CUDNN_POINTWISE_IDENTITY, -1});
    Desc cur = tconv;
    for (size_t i = 0; i < steps.size(); ++i) {
      const bool last = i + 1 == steps.size();
      std::optional<Desc> operand;
      if (steps[i].role >= 0) {
        const int role = steps[i].role;
        const int64_t uid = 4 + (role - kRoleScale);  // 4 scale, 5 bias, 6 residual, 7 out scale
        Desc t;
        if (role == kRoleResidual) {
          MIXQ_ASSIGN_OR_RETURN(t, make_tensor(uid, s.rt, ydims, ystr, false));
        } else if (role == kRoleOutScale) {
          MIXQ_ASSIGN_OR_RETURN(t, make_tensor(uid, CUDNN_DATA_FLOAT, one, one, false));
        } else {
          MIXQ_ASSIGN_OR_RETURN(t, make_tensor(uid, CUDNN_DATA_FLOAT, cdims, cstr, false));
        }
        keep(t);
        io(role, uid);
        operand = t;
      }
      Desc out;
      if (last) {
        MIXQ_ASSIGN_OR_RETURN(out, make_tensor(3, s.yt, ydims, ystr, false));
        io(kRoleY, 3);
      } else {
        MIXQ_ASSIGN_OR_RETURN(out,
                              make_tensor(next_virtual++, CUDNN_DATA_FLOAT, ydims, ystr, true));
      }
      keep(out);
      MIXQ_RETURN_IF_ERROR(add_pointwise(g, ops, steps[i].mode, cur, operand ? &*operand : nullptr,
                                         out, steps[i].lo, steps[i].hi));
      cur = out;
    }
  }

  MIXQ_ASSIGN_OR_RETURN(g.graph, make_desc(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR));
  std::vector<void*> raw;
  for (const Desc& d : ops) raw.push_back(d.get());
  SET_ATTR(g.graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
           int64_t(raw.size()), raw.data());
  SET_ATTR(g.graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
  CUDNN_CHECK(cudnnBackendFinalize(g.graph.get()));
  return g;
}

// --- engine configurations
// ---------------------------------------------------------------------------

struct EngineChoice {
  int64_t engine = -1;
  std::vector<std::pair<int64_t, int64_t>> knobs;  // (cudnnBackendKnobType_t, value)
  bool tensor_core = false, runtime_compiled = false;
  bool nondeterministic = false;  // results may vary between runs (atomics)

  std::string str() const {
    std::string s = "e" + std::to_string(engine);
    for (auto [t, v] : knobs) s += ";k" + std::to_string(t) + "=" + std::to_string(v);
    return s;
  }
  static bool parse(const std::string& text, EngineChoice& c) {
    c = {};
    std::istringstream in(text);
    std::string part;
    bool first = true;
    while (std::getline(in, part, ';')) {
      try {
        if (first) {
          if (part.size() < 2 || part[0] != 'e') return false;
          c.engine = std::stoll(part.substr(1));
          first = false;
        } else {
          const size_t eq = part.find('=');
          if (part.empty() || part[0] != 'k' || eq == std::string::npos) return false;
          c.knobs.push_back({std::stoll(part.substr(1, eq - 1)), std::stoll(part.substr(eq + 1))});
        }
      } catch (...) {
        return false;
      }
    }
    return !first;
  }
};

Expected<EngineChoice> describe_config(const Desc& cfg) {
  EngineChoice c;
  MIXQ_ASSIGN_OR_RETURN(Desc eng, make_desc(CUDNN_BACKEND_ENGINE_DESCRIPTOR));
  void* e = eng.get();
  int64_t count = 0;
  CUDNN_CHECK(cudnnBackendGetAttribute(cfg.get(), CUDNN_ATTR_ENGINECFG_ENGINE,
                                       CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &count, &e));
  CUDNN_CHECK(cudnnBackendGetAttribute(eng.get(), CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64,
                                       1, &count, &c.engine));
  cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
  int64_t nn = 0;
  if (cudnnBackendGetAttribute(eng.get(), CUDNN_ATTR_ENGINE_NUMERICAL_NOTE,
                               CUDNN_TYPE_NUMERICAL_NOTE, CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &nn,
                               notes) == CUDNN_STATUS_SUCCESS)
    for (int64_t i = 0; i < nn; ++i) {
      c.tensor_core |= notes[i] == CUDNN_NUMERICAL_NOTE_TENSOR_CORE ||
                       notes[i] == CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS ||
                       notes[i] == CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION;
      c.nondeterministic |= notes[i] == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC;
    }
  cudnnBackendBehaviorNote_t behavior[CUDNN_BEHAVIOR_NOTE_TYPE_COUNT];
  int64_t nb = 0;
  if (cudnnBackendGetAttribute(eng.get(), CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE, CUDNN_TYPE_BEHAVIOR_NOTE,
                               CUDNN_BEHAVIOR_NOTE_TYPE_COUNT, &nb,
                               behavior) == CUDNN_STATUS_SUCCESS)
    for (int64_t i = 0; i < nb; ++i)
      c.runtime_compiled |= behavior[i] == CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION;
  // Knob choices: descriptors created here, filled by the query.
  std::vector<Desc> knobs;
  std::vector<void*> raw;
  for (int i = 0; i < CUDNN_KNOB_TYPE_COUNTS; ++i) {
    MIXQ_ASSIGN_OR_RETURN(Desc k, make_desc(CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR));
    raw.push_back(k.get());
    knobs.push_back(k);
  }
  int64_t nk = 0;
  CUDNN_CHECK(cudnnBackendGetAttribute(cfg.get(), CUDNN_ATTR_ENGINECFG_KNOB_CHOICES,
                                       CUDNN_TYPE_BACKEND_DESCRIPTOR, int64_t(raw.size()), &nk,
                                       raw.data()));
  for (int64_t i = 0; i < nk && i < int64_t(raw.size()); ++i) {
    cudnnBackendKnobType_t type;
    int64_t value = 0, n = 0;
    CUDNN_CHECK(cudnnBackendGetAttribute(raw[size_t(i)], CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE,
                                         CUDNN_TYPE_KNOB_TYPE, 1, &n, &type));
    CUDNN_CHECK(cudnnBackendGetAttribute(raw[size_t(i)], CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE,
                                         CUDNN_TYPE_INT64, 1, &n, &value));
    c.knobs.push_back({int64_t(type), value});
  }
  return c;
}

// Whether tuning takes a configuration for `spec`: tensor cores only where allowed, and engines
// with nondeterministic results only where the build allows them.
bool takes_config(const EngineChoice& c, const Spec& spec, bool allow_nondeterministic) {
  return !(spec.no_tensor_cores && c.tensor_core) &&
         (allow_nondeterministic || !c.nondeterministic);
}

// Engine configurations from one heuristics mode (empty when the mode has none). `heur` keeps the
// heuristics descriptor alive as long as its results.
struct Heuristics {
  Desc heur;
  std::vector<Desc> configs;
};

Expected<Heuristics> heuristic_configs(const OpGraph& g, cudnnBackendHeurMode_t mode) {
  Heuristics h;
  MIXQ_ASSIGN_OR_RETURN(h.heur, make_desc(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR));
  void* og = g.graph.get();
  SET_ATTR(h.heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &og);
  SET_ATTR(h.heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
  CUDNN_CHECK(cudnnBackendFinalize(h.heur.get()));
  int64_t count = 0;
  CUDNN_CHECK(cudnnBackendGetAttribute(h.heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                       CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr));
  std::vector<void*> raw;
  for (int64_t i = 0; i < count; ++i) {
    MIXQ_ASSIGN_OR_RETURN(Desc c, make_desc(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR));
    h.configs.push_back(c);
    raw.push_back(c.get());
  }
  int64_t got = 0;
  if (count > 0)
    CUDNN_CHECK(cudnnBackendGetAttribute(h.heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                         CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &got, raw.data()));
  h.configs.resize(size_t(std::clamp<int64_t>(got, 0, count)));
  return h;
}

// Engine `index` (global) for graph `g`.
Expected<Desc> engine_for(const OpGraph& g, int64_t index) {
  MIXQ_ASSIGN_OR_RETURN(Desc eng, make_desc(CUDNN_BACKEND_ENGINE_DESCRIPTOR));
  void* og = g.graph.get();
  SET_ATTR(eng, CUDNN_ATTR_ENGINE_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &og);
  SET_ATTR(eng, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &index);
  CUDNN_CHECK(cudnnBackendFinalize(eng.get()));
  return eng;
}

// The configuration `choice` names, for graph `g`.
Expected<Desc> config_from_choice(const OpGraph& g, const EngineChoice& choice,
                                  std::vector<Desc>& keep) {
  MIXQ_ASSIGN_OR_RETURN(Desc eng, engine_for(g, choice.engine));
  keep.push_back(eng);
  std::vector<void*> knobs;
  for (auto [type, value] : choice.knobs) {
    MIXQ_ASSIGN_OR_RETURN(Desc k, make_desc(CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR));
    auto t = cudnnBackendKnobType_t(type);
    int64_t v = value;
    SET_ATTR(k, CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE, CUDNN_TYPE_KNOB_TYPE, 1, &t);
    SET_ATTR(k, CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE, CUDNN_TYPE_INT64, 1, &v);
    CUDNN_CHECK(cudnnBackendFinalize(k.get()));
    keep.push_back(k);
    knobs.push_back(k.get());
  }
  MIXQ_ASSIGN_OR_RETURN(Desc cfg, make_desc(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR));
  void* e = eng.get();
  SET_ATTR(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &e);
  if (!knobs.empty())
    SET_ATTR(cfg, CUDNN_ATTR_ENGINECFG_KNOB_CHOICES, CUDNN_TYPE_BACKEND_DESCRIPTOR,
             int64_t(knobs.size()), knobs.data());
  CUDNN_CHECK(cudnnBackendFinalize(cfg.get()));
  keep.push_back(cfg);
  return cfg;
}

// `base` with each other value of its engine's kernel-configuration knob
// (CUDNN_KNOB_TYPE_KERNEL_CFG) that the engine declares for graph `g`, at most 64.
std::vector<EngineChoice> kernel_variants(const OpGraph& g, const EngineChoice& base) {
  std::vector<EngineChoice> out;
  auto eng = engine_for(g, base.engine);
  if (!eng.ok()) return out;
  std::vector<Desc> infos;
  std::vector<void*> raw;
  for (int i = 0; i < CUDNN_KNOB_TYPE_COUNTS; ++i) {
    auto k = make_desc(CUDNN_BACKEND_KNOB_INFO_DESCRIPTOR);
    if (!k.ok()) return out;
    infos.push_back(*k);
    raw.push_back(k->get());
  }
  int64_t n = 0;
  if (cudnnBackendGetAttribute(eng->get(), CUDNN_ATTR_ENGINE_KNOB_INFO,
                               CUDNN_TYPE_BACKEND_DESCRIPTOR, int64_t(raw.size()), &n,
                               raw.data()) != CUDNN_STATUS_SUCCESS)
    return out;
  for (int64_t i = 0; i < n && i < int64_t(raw.size()); ++i) {
    cudnnBackendKnobType_t type;
    int64_t lo = 0, hi = -1, stride = 1, got = 0;
    if (cudnnBackendGetAttribute(raw[size_t(i)], CUDNN_ATTR_KNOB_INFO_TYPE, CUDNN_TYPE_KNOB_TYPE, 1,
                                 &got, &type) != CUDNN_STATUS_SUCCESS ||
        type != CUDNN_KNOB_TYPE_KERNEL_CFG ||
        cudnnBackendGetAttribute(raw[size_t(i)], CUDNN_ATTR_KNOB_INFO_MINIMUM_VALUE,
                                 CUDNN_TYPE_INT64, 1, &got, &lo) != CUDNN_STATUS_SUCCESS ||
        cudnnBackendGetAttribute(raw[size_t(i)], CUDNN_ATTR_KNOB_INFO_MAXIMUM_VALUE,
                                 CUDNN_TYPE_INT64, 1, &got, &hi) != CUDNN_STATUS_SUCCESS)
      continue;
    if (cudnnBackendGetAttribute(raw[size_t(i)], CUDNN_ATTR_KNOB_INFO_STRIDE, CUDNN_TYPE_INT64, 1,
                                 &got, &stride) != CUDNN_STATUS_SUCCESS ||
        stride < 1)
      stride = 1;
    constexpr int64_t kKernelCfg = CUDNN_KNOB_TYPE_KERNEL_CFG;
    for (int64_t v = lo; v <= hi && out.size() < 64; v += stride) {
      EngineChoice c = base;
      auto knob = std::find_if(c.knobs.begin(), c.knobs.end(),
                               [](const auto& k) { return k.first == kKernelCfg; });
      if (knob == c.knobs.end())
        c.knobs.push_back({kKernelCfg, v});
      else if (knob->second != v)
        knob->second = v;
      else
        continue;
      out.push_back(c);
    }
  }
  return out;
}

// An execution plan with everything it references.
struct Plan {
  OpGraph graph;
  std::vector<Desc> keep;
  Desc plan;
  int64_t workspace = 0;
  EngineChoice choice;
  Mode mode = Mode::kFused;
  double ms = 0;  // measured when tuned (0: not timed)
};

// Finalizes a plan whose descriptor is set up and reads its workspace size.
Status finish_plan(Plan& p) {
  CUDNN_CHECK(cudnnBackendFinalize(p.plan.get()));
  int64_t n = 0;
  CUDNN_CHECK(cudnnBackendGetAttribute(p.plan.get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                       CUDNN_TYPE_INT64, 1, &n, &p.workspace));
  if (p.workspace < 0) p.workspace = 0;
  return Status::Ok();
}

Expected<std::shared_ptr<Plan>> finalize_plan(const OpGraph& g, const Desc& cfg,
                                              cudnnHandle_t handle, std::vector<Desc> keep) {
  auto p = std::make_shared<Plan>();
  p->graph = g;
  p->keep = std::move(keep);
  p->keep.push_back(cfg);
  MIXQ_ASSIGN_OR_RETURN(p->plan, make_desc(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR));
  void* c = cfg.get();
  SET_ATTR(p->plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
  SET_ATTR(p->plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c);
  MIXQ_RETURN_IF_ERROR(finish_plan(*p));
  return p;
}

// A plan's serialized form, exactly as cuDNN gives it; empty where it gives none (it serializes
// runtime-compiled plans) or the text is not plain ASCII (the engine file stores it as a string).
std::string plan_json(const Plan& p) {
  constexpr int64_t kMaxBytes = int64_t(16) << 20;
  int64_t count = 0;
  if (cudnnBackendGetAttribute(p.plan.get(), CUDNN_ATTR_EXECUTION_PLAN_JSON_REPRESENTATION,
                               CUDNN_TYPE_CHAR, 0, &count, nullptr) != CUDNN_STATUS_SUCCESS ||
      count <= 0 || count > kMaxBytes)
    return {};
  std::string text(size_t(count), '\0');
  int64_t got = 0;
  if (cudnnBackendGetAttribute(p.plan.get(), CUDNN_ATTR_EXECUTION_PLAN_JSON_REPRESENTATION,
                               CUDNN_TYPE_CHAR, count, &got, text.data()) != CUDNN_STATUS_SUCCESS ||
      got <= 0 || got > count)
    return {};
  text.resize(size_t(got));
  for (unsigned char ch : text)
    if (ch >= 0x80) return {};
  return text;
}

// A plan of graph `g` from its serialized form (plan_json), bound to `handle`.
Expected<std::shared_ptr<Plan>> plan_from_json(const OpGraph& g, const std::string& json,
                                               cudnnHandle_t handle) {
  auto p = std::make_shared<Plan>();
  p->graph = g;
  MIXQ_ASSIGN_OR_RETURN(p->plan, make_desc(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR));
  SET_ATTR(p->plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
  std::vector<char> text(json.begin(), json.end());
  SET_ATTR(p->plan, CUDNN_ATTR_EXECUTION_PLAN_JSON_REPRESENTATION, CUDNN_TYPE_CHAR,
           int64_t(text.size()), text.data());
  MIXQ_RETURN_IF_ERROR(finish_plan(*p));
  return p;
}

// Runs job(i) for every i < count at once, a thread each (in this thread for a single job): plans
// of one graph finalize in parallel, each job with its own compile_handle(i).
void in_parallel(size_t count, const std::function<void(size_t)>& job) {
  if (count == 1) return job(0);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < count; ++i) threads.emplace_back(job, i);
  for (std::thread& t : threads) t.join();
}

// --- plans compiled ahead (ConvKernel::precompile)
// ------------------------------------------------------------------------------------------------

using PlanResult = Expected<std::shared_ptr<Plan>>;
using PlanFuture = std::shared_future<PlanResult>;

// Plans of one graph finalized on the compile workers while the build thread times earlier
// layers: the candidates tune() takes first (heuristics mode A), or one recorded or memoised
// choice. Layers of the same signature share one set (a process-wide registry of weak pointers).
struct Precompiled {
  OpGraph graph;
  std::optional<Heuristics> heuristics;  // mode A, once the candidates were submitted
  std::mutex mutex;
  std::map<size_t, std::pair<EngineChoice, PlanFuture>> candidates;  // by heuristics index
  std::map<std::string, PlanFuture> choices;                         // by EngineChoice::str()
  // Layers holding the set. The last to let go (prepared, or destroyed by a build that failed)
  // cancels it: queued jobs are skipped and running ones waited for, so no compile outlives the
  // build (the workers are idle when the process exits).
  int holders = 0;
  bool cancelled = false;
  int running = 0;
  std::condition_variable idle;

  // Finalizes `cfg`, or deserializes `json` (plan_json) where given and cuDNN takes it.
  PlanFuture submit(const std::shared_ptr<Precompiled>& self, Desc cfg, std::vector<Desc> keep,
                    std::string json = {}) {
    auto promise = std::make_shared<std::promise<PlanResult>>();
    PlanFuture future = promise->get_future().share();
    std::weak_ptr<Precompiled> weak = self;
    submit_compile_job([weak, cfg, keep = std::move(keep), json = std::move(json),
                        promise](cudnnHandle_t handle) mutable {
      std::shared_ptr<Precompiled> set = weak.lock();
      if (set) {
        std::lock_guard<std::mutex> lock(set->mutex);
        if (set->cancelled)
          set.reset();
        else
          ++set->running;
      }
      if (!set) {
        promise->set_value(FailedPrecondition("plan compilation cancelled"));
        return;
      }
      PlanResult plan = FailedPrecondition("no cuDNN handle to compile with");
      if (handle && !json.empty()) plan = plan_from_json(set->graph, json, handle);
      if (handle && !plan.ok()) plan = finalize_plan(set->graph, cfg, handle, std::move(keep));
      promise->set_value(std::move(plan));
      std::lock_guard<std::mutex> lock(set->mutex);
      if (--set->running == 0) set->idle.notify_all();
    });
    return future;
  }

  void release() {
    std::unique_lock<std::mutex> lock(mutex);
    if (--holders > 0) return;
    cancelled = true;
    idle.wait(lock, [&] { return running == 0; });
  }
};

std::mutex g_precompiled_mutex;
std::map<std::string, std::weak_ptr<Precompiled>> g_precompiled;

// A plan of a set, copied: the layers sharing a set each own their Plan (the cuDNN descriptors
// are shared). FailedPrecondition: the job did not run (cancelled); the caller finalizes itself.
PlanResult take_plan(const PlanFuture& future) {
  const PlanResult& r = future.get();
  if (!r.ok()) return r.status();
  return std::make_shared<Plan>(**r);
}
bool compiled_elsewhere(const PlanResult& r) {
  return r.ok() || r.status().code() != StatusCode::kFailedPrecondition;
}

Expected<Desc> variant_pack(const OpGraph& g, const std::array<void*, kRoles>& ptr,
                            void* workspace) {
  std::vector<void*> data;
  for (int role : g.roles) data.push_back(ptr[size_t(role)]);
  MIXQ_ASSIGN_OR_RETURN(Desc vp, make_desc(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR));
  SET_ATTR(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, int64_t(g.uids.size()),
           g.uids.data());
  SET_ATTR(vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, int64_t(data.size()),
           data.data());
  SET_ATTR(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace);
  CUDNN_CHECK(cudnnBackendFinalize(vp.get()));
  return vp;
}

// --- the layer: values, packed data, specs
// ----------------------------------------------------------

bool quantized_precision(Precision p) {
  return p == Precision::kINT8 || p == Precision::kFP8;
}

// Storage type of the input (and weights) at a precision.
DType input_dtype(Precision p) {
  switch (p) {
    case Precision::kFP16:
      return DType::kFloat16;
    case Precision::kBF16:
      return DType::kBFloat16;
    case Precision::kINT8:
      return DType::kInt8;
    case Precision::kFP8:
      return DType::kFloat8E4M3;
    default:
      return DType::kFloat32;
  }
}

struct Layer {
  Spec base;             // at batch 1, fused mode
  double divisor = 1.0;  // the chain's units: s_r (quantised residual) or s_y (quantised y) or 1
  bool y_quantized = false;
  bool r_quantized = false;
  bool residual_fusable = true;
  float out_scale = 1.0f;          // s_r / s_y
  float clip_lo = 0, clip_hi = 0;  // real units (activation attribute)
  // int8/fp8 with input channels that are no multiple of what cuDNN's engines take (an RGB stem
  // conv): the input is padded with zero channels up to base.c before the convolution, and the
  // weights with zeros. 0: no padding.
  int64_t unpadded_c = 0;
};

// Channel multiple cuDNN's int8 / fp8 convolution engines take (input and output, per group).
int64_t channel_multiple(Precision p) {
  return p == Precision::kINT8 ? 4 : p == Precision::kFP8 ? 16 : 1;
}

// Everything about the layer that does not need data: shapes, types, epilogue structure.
// `y_dtype`/`r_dtype` override the values' dtypes (supports() probes before dtypes are final).
Expected<Layer> describe_layer(const ir::Node& node, Precision p, DType y_dtype, bool y_quantized,
                               float sy, float sr) {
  const ir::Value* x = node.input(0);
  const ir::Value* w = node.input(1);
  const ir::Value* b = node.input(2);
  const ir::Value* r = node.input(3);
  const ir::Value* y = node.output(0);
  if (!x || !y || !w || !w->is_constant()) return Unsupported("weights must be constant");
  if (!x->shape_known || x->shape.size() != 4 || !y->shape_known || y->shape.size() != 4)
    return Unsupported("the GPU runs 2-D convolutions on 4-D tensors with known shapes");
  const Shape xs = at_batch(x->shape, 1), ys = at_batch(y->shape, 1);
  const Shape ws = w->constant.shape();
  Layer L;
  Spec& s = L.base;
  MIXQ_RETURN_IF_ERROR(conv_geometry(node, xs, ws, s.geo));
  s.n = 1;
  s.c = xs[1];
  s.h = xs[2];
  s.w = xs[3];
  s.k = ws[0];
  s.cg = ws[1];
  s.r = ws[2];
  s.s = ws[3];
  s.oh = ys[2];
  s.ow = ys[3];
  if (ys[1] != s.k)
    return InvalidArgument("output channels " + std::to_string(ys[1]) +
                           " differ from the weights'");
  if (const auto pool = node.attr_ints(kPoolAttr, {}); !pool.empty()) {
    // y is pooled: the convolution's own output size comes from its geometry.
    if (pool.size() != 2 || pool[0] < 1 || pool[1] < 1)
      return InvalidArgument(std::string(kPoolAttr) + " must be two window sizes");
    s.pool_h = pool[0];
    s.pool_w = pool[1];
    s.oh = output_size(s.geo, 0, s.h, s.r);
    s.ow = output_size(s.geo, 1, s.w, s.s);
    if (s.oh / s.pool_h != ys[2] || s.ow / s.pool_w != ys[3])
      return InvalidArgument("the pooled output " + shape_to_string(ys) + " does not follow from " +
                             std::to_string(s.oh) + "x" + std::to_string(s.ow) + " pooled by " +
                             std::to_string(s.pool_h) + "x" + std::to_string(s.pool_w));
  }
  const int64_t multiple = channel_multiple(p);
  if (s.geo.groups == 1 && s.c % multiple != 0) {
    L.unpadded_c = s.c;
    s.c = s.cg = (s.c + multiple - 1) / multiple * multiple;
  }
  const DType in = input_dtype(p);
  s.xt = s.wt = cudnn_type(in);
  s.comp = p == Precision::kINT8 ? CUDNN_DATA_INT32 : CUDNN_DATA_FLOAT;
  s.acc = p == Precision::kINT8 ? CUDNN_DATA_INT32 : CUDNN_DATA_FLOAT;
  s.yt = cudnn_type(y_dtype);
  s.no_tensor_cores = p == Precision::kFP32;
  L.y_quantized = y_quantized;
  const bool quant = quantized_precision(p);
  s.bias = b != nullptr;
  if (r) {
    s.residual = true;
    L.r_quantized = y_quantized;  // the residual arrives in y's format
    s.rt = s.yt;
  }
  L.divisor = y_quantized ? (r ? sr : sy) : 1.0;
  s.out_scale = r && y_quantized && sr != sy;
  L.out_scale = y_quantized && r ? sr / sy : 1.0f;
  s.scale = quant || y_quantized;
  const std::string act = node.attr_string("mixq.activation", "none");
  if (act == "relu") {
    s.act = kernels::kActRelu;
  } else if (act == "clip") {
    s.act = kernels::kActClip;
    L.clip_lo = node.attr_float("mixq.clip_min", -INFINITY);
    L.clip_hi = node.attr_float("mixq.clip_max", INFINITY);
    const double units = y_quantized ? sy : 1.0;  // the clip acts on y's units
    s.lo =
        std::isfinite(L.clip_lo) ? L.clip_lo / units : -double(std::numeric_limits<float>::max());
    s.hi = std::isfinite(L.clip_hi) ? L.clip_hi / units : double(std::numeric_limits<float>::max());
  } else if (act != "none") {
    return Unsupported("activation '" + act + "'");
  }
  return L;
}

// The split-mode spec: the convolution (with the per-channel scale for int8/fp8) into scratch.
Spec split_spec(const Spec& fused, Precision p) {
  Spec s = fused;
  s.mode = Mode::kSplit;
  s.bias = s.residual = s.out_scale = false;
  s.act = kernels::kActNone;
  s.lo = s.hi = 0;
  s.scale = quantized_precision(p);
  // fp16/bf16 write their own type (the engines that exist for a bare convolution); the rest f32.
  s.yt = (p == Precision::kFP16 || p == Precision::kBF16) ? s.xt : CUDNN_DATA_FLOAT;
  return s;
}

// Whether our direct convolution can run a layer: ungrouped, small filters (stems, LeNet-sized
// layers). TF32 asks for TF32 tensor cores (a GEMM); it stays with cuDNN.
bool direct_eligible(Precision p, int64_t groups, int64_t c, int64_t k, int64_t r, int64_t s) {
  return p != Precision::kTF32 && groups == 1 && c * r * s <= kernels::kDirectMaxTaps &&
         kernels::direct_weight_count(k, c, r, s) <= kernels::kDirectMaxWeights && k <= 512;
}
bool direct_eligible(const Layer& L, Precision p) {
  const Spec& s = L.base;
  return direct_eligible(p, s.geo.groups, L.unpadded_c ? L.unpadded_c : s.c, s.k, s.r, s.s);
}

// Whether the staged-window form can run a layer (kernels::window_eligible at `batch`): ungrouped,
// a tensor-core type (not fp32 or tf32).
kernels::DirectConvParams direct_geometry(const Layer& layer, Precision precision, int64_t batch);
bool window_eligible(const Layer& L, Precision p, int64_t batch) {
  return L.base.geo.groups == 1 && p != Precision::kFP32 && p != Precision::kTF32 &&
         kernels::window_eligible(direct_geometry(L, p, batch));
}

Status static_checks(const ir::Node& node, Precision p) {
  const ir::Value* x = node.input(0);
  const ir::Value* w = node.input(1);
  if (!w || !w->is_constant()) return Unsupported("weights are not constant");
  if (w->constant.rank() != 4) return Unsupported("the GPU runs 2-D convolutions only");
  if (!x || !x->shape_known || x->shape.size() != 4)
    return Unsupported("the GPU runs 2-D convolutions on 4-D inputs with known shapes");
  for (size_t i = 1; i < 4; ++i)
    if (x->shape[i] < 0) return Unsupported("only the batch dimension may be symbolic");
  const ir::Value* r = node.input(3);
  if (r && (!r->shape_known || r->shape != node.output(0)->shape))
    return Unsupported("the residual's shape differs from the output's");
  Geometry g;
  MIXQ_RETURN_IF_ERROR(conv_geometry(node, at_batch(x->shape, 1), w->constant.shape(), g));
  const int64_t cg = x->shape[1] / g.groups, kg = w->constant.dim(0) / g.groups;
  const int64_t multiple = channel_multiple(p);
  const Shape& ws = w->constant.shape();
  if (direct_eligible(p, g.groups, x->shape[1], ws[0], ws[2], ws[3]))
    return Status::Ok();  // any channel counts (cuDNN's engines may still take it, padded)
  if (g.groups == 1 && p != Precision::kFP32 && p != Precision::kTF32) {
    kernels::DirectConvParams d;  // the window form takes any channel counts
    d.n = 1;
    d.c = x->shape[1];
    d.h = x->shape[2];
    d.w = x->shape[3];
    d.k = ws[0];
    d.r = int(ws[2]);
    d.s = int(ws[3]);
    d.stride_h = int(g.stride[0]);
    d.stride_w = int(g.stride[1]);
    d.pad_h = int(g.pre[0]);
    d.pad_w = int(g.pre[1]);
    d.dil_h = int(g.dilation[0]);
    d.dil_w = int(g.dilation[1]);
    d.oh = output_size(g, 0, d.h, d.r);
    d.ow = output_size(g, 1, d.w, d.s);
    d.x_dt = kernel_dtype(input_dtype(p));
    if (kernels::window_eligible(d)) return Status::Ok();
  }
  // Input channels of an ungrouped convolution are padded (see Layer::unpadded_c).
  if ((g.groups != 1 && cg % multiple != 0) || kg % multiple != 0)
    return Unsupported(
        std::string(precision_name(p)) + " convolutions need output channels per group " +
        "in multiples of " + std::to_string(multiple) +
        ", and grouped ones input channels too (cuDNN's " + std::string(precision_name(p)) +
        " engines); this layer has " + std::to_string(cg) + " and " + std::to_string(kg) +
        " (groups " + std::to_string(g.groups) + ")");
  return Status::Ok();
}

// Whether the heuristics offer at least one configuration for `s` (no plan is built).
Status probe(const Spec& s, cudnnHandle_t handle) {
  MIXQ_ASSIGN_OR_RETURN(OpGraph g, build_graph(s, handle));
  for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
    auto h = heuristic_configs(g, mode);
    if (!h.ok()) continue;
    for (const Desc& c : h->configs) {
      if (!s.no_tensor_cores) return Status::Ok();
      auto info = describe_config(c);
      if (info.ok() && !info->tensor_core) return Status::Ok();
    }
  }
  return Unsupported("cuDNN's heuristics offer no engine for " + s.signature());
}

// --- packed data
// ------------------------------------------------------------------------------------

struct Packed {
  // scale: the fused chain's (divided into its units); split_scale: s_x * s_w[c] (real units).
  DeviceBuffer weights, scale, split_scale, bias, out_scale;
  std::vector<float> host_bias;  // real units (split mode's epilogue)
  DeviceBuffer real_bias;
  DeviceBuffer direct_weights;     // kernels::direct_pack_weights of the codes (the FMA form)
  DeviceBuffer direct_tc_weights;  // kernels::direct_tc_pack_weights (the small tensor-core form)
  DeviceBuffer igemm_weights;      // kernels::igemm_pack_weights (the implicit GEMM)
  DeviceBuffer window_weights;     // kernels::window_pack_weights (the staged-window form)
};

// Weights [K, C/g, R, S] (row-major) -> KRSC in `dtype` (from fp32, or the stored s8/e4m3 codes).
Expected<DeviceBuffer> pack_weights(const Tensor& w, DType dtype) {
  const int64_t K = w.dim(0), C = w.dim(1), R = w.dim(2), S = w.dim(3);
  Tensor src = w;
  if (w.dtype() != dtype) {
    if (w.dtype() != DType::kFloat32)
      return Internal("weights stored as " + std::string(dtype_name(w.dtype())) + ", wanted " +
                      std::string(dtype_name(dtype)));
    src = w.to(dtype);
  }
  Tensor dst = Tensor::empty(dtype, {K, R, S, C});
  permute_channels(src.raw(), dst.raw(), dtype_size(dtype), K, C, R, S, true);  // KCRS -> KRSC
  return upload(dst.raw(), dst.nbytes());
}

// Weights [K, C, R, S] -> [K, Cp, R, S] with zero weights for the padded input channels.
Tensor pad_input_channels(const Tensor& w, int64_t padded_c) {
  const int64_t K = w.dim(0), C = w.dim(1), RS = w.dim(2) * w.dim(3);
  Tensor out = Tensor::zeros(w.dtype(), {K, padded_c, w.dim(2), w.dim(3)});
  const size_t block = size_t(C * RS) * dtype_size(w.dtype());
  for (int64_t k = 0; k < K; ++k)
    std::memcpy(static_cast<char*>(out.raw()) + size_t(k * padded_c * RS) * dtype_size(w.dtype()),
                static_cast<const char*>(w.raw()) + size_t(k) * block, block);
  return out;
}

// --- the kernel
// ---------------------------------------------------------------------------------------

class ConvInstance;

class ConvKernel final : public Kernel {
 public:
  // `window`: the staged-window form only (a stage of a window chain, ConvChainKernel).
  ConvKernel(const ir::Node& node, Precision p, bool window = false)
      : node_(node), precision_(p), force_window_(window) {}
  ~ConvKernel() override { release_precompiled(); }

  void precompile(int64_t max_batch) override;
  Status prepare(int64_t max_batch) override;
  Expected<std::unique_ptr<KernelInstance>> instantiate(int64_t batch) const override;
  std::string implementation() const override { return impl_; }

 private:
  friend class ConvInstance;
  friend class ConvChainKernel;
  friend class ConvChainInstance;
  Spec spec_at(int64_t batch, Mode mode) const {
    Spec s = mode == Mode::kFused ? layer_.base : split_spec(layer_.base, precision_);
    s.n = batch;
    return s;
  }
  // The layer's description and which forms may run it at `max_batch` (idempotent: precompile
  // and prepare both call it).
  Status describe(int64_t max_batch);
  Status prepare_layer(int64_t max_batch);
  // The mode and engine choice recorded in the engine file for this layer, if any, and the
  // plan serialized with them (empty if none).
  bool recorded_choice(const Spec& fused, std::string& mode, std::string& choice,
                       std::string& json) const;
  // Submits `spec`'s plans to the compile workers: `choice` alone (from `json` where given),
  // else tune()'s first candidates.
  void precompile_spec(const Spec& spec, const std::string& choice, const std::string& json = {});
  // The set precompile_spec made for `spec`, if any.
  std::shared_ptr<Precompiled> precompiled(const Spec& spec) const;
  void release_precompiled() {
    for (auto& [signature, set] : precompiled_) set->release();
    precompiled_.clear();
  }
  // Builds the plan for `spec` from `choice` (empty: none), else tunes. Holds the build lock.
  // `json`: the choice's serialized plan (plan_json), tried first where given.
  Expected<std::shared_ptr<Plan>> plan_for(const Spec& spec, const std::string& choice,
                                           BuildResources& b, std::string* chosen,
                                           std::string* note, const std::string& json = {}) const;
  Expected<std::shared_ptr<Plan>> tune(const Spec& spec, BuildResources& b,
                                       std::string* note) const;
  Expected<Desc> tuning_pack(const Plan& plan, void* const* bufs) const;
  // Runs a plan once on zeros, outside any capture: engines finish their lazy set-up on the first
  // run, which a CUDA graph capture (the engine's replay) does not allow.
  Status warm_up(const Plan& plan, const Spec& spec, BuildResources& b) const;
  // Device time of the split form's own epilogue at `split`'s size.
  Expected<double> time_epilogue(const Spec& split, BuildResources& b) const;
  // The parameters of our convolution `form` (kernels::DirectForm) at `batch` (x, y and the
  // residual are given at launch).
  kernels::DirectConvParams direct_params(int64_t batch, int form) const;
  // Device time of one of our convolutions (kernels::DirectForm) at the maximum batch.
  Expected<double> time_direct(BuildResources& b, int form) const;
  // Whether `form` ("fma", "tc", "igemm") can run this layer (its weights were packed).
  bool form_available(const std::string& form) const;
  // Uses one of our convolutions from now on; `note` says why. `form`: "tc" (the small
  // tensor-core form, else the FMA one), "fma" or "igemm"; weights no form uses are dropped.
  void choose_direct(const std::string& tag, const std::string& form, const std::string& note);

  const ir::Node& node_;
  Precision precision_;
  bool force_window_ = false;
  int64_t max_batch_ = 0;
  Layer layer_;
  // What describe() found: scales, the implementation asked for, and the forms that apply.
  struct Setup {
    bool described = false;
    float sx = 1.0f;
    ConvImplementation implementation = ConvImplementation::kAuto;
    bool window_only = false, small_ok = false, igemm_ok = false, window_ok = false;
  } setup_;
  // Plans compiled ahead, by spec signature; released once the layer is prepared.
  std::map<std::string, std::shared_ptr<Precompiled>> precompiled_;
  // Untuned builds: tune() skips runtime-compiled engines while set.
  mutable bool avoid_rtc_ = false;
  Mode mode_ = Mode::kFused;
  std::shared_ptr<Packed> packed_;
  std::shared_ptr<Plan> prepared_;  // at max batch
  std::string choice_;              // engine choice (without the mode)
  std::string impl_ = "cudnn graph";
  kernels::Grid y_grid_, r_grid_;
  // A reformat absorbed into the layer (CudaBackend::fuse_for_execution): x is stored in x_src_
  // and converted to x_grid_ (the precision's input type and scale) as the window form stages it.
  bool convert_input_ = false;
  kernels::Grid x_src_, x_grid_;
  int direct_form_ = kernels::kDirectFma;
};

class ConvInstance final : public KernelInstance {
 public:
  ConvInstance(const ConvKernel& k, std::shared_ptr<Plan> plan, Mode mode, int64_t batch)
      : plan_(std::move(plan)), packed_(k.packed_), mode_(mode) {
    if (mode_ == Mode::kDirect) {
      direct_ = k.direct_params(batch, k.direct_form_);
      return;
    }
    const Spec& s = k.layer_.base;
    rows_ = batch * s.oh * s.ow;
    cols_ = s.k;
    if (k.layer_.unpadded_c) {
      pixels_ = batch * s.h * s.w;
      c_ = k.layer_.unpadded_c;
      padded_c_ = s.c;
      padded_bytes_ = align256(size_t(pixels_ * padded_c_) * type_bytes(s.xt));
      x_bytes_ = type_bytes(s.xt);
    }
    if (mode_ == Mode::kSplit) {
      const Spec split = split_spec(s, k.precision_);
      inter_bytes_ = align256(size_t(rows_ * cols_) * type_bytes(split.yt));
      ep_.acc_dt = kernel_dtype(dtype_of(split.yt));
      ep_.scalar_scale = 1.0f;
      ep_.bias =
          packed_->real_bias.ptr ? static_cast<const float*>(packed_->real_bias.get()) : nullptr;
      ep_.residual_grid = k.r_grid_;
      ep_.act = s.act;
      ep_.lo = k.layer_.clip_lo;
      ep_.hi = k.layer_.clip_hi;
      ep_.rows = rows_;
      ep_.cols = cols_;
      y_grid_ = k.y_grid_;
    }
  }

  size_t scratch_bytes() const override {
    return padded_bytes_ + inter_bytes_ + (plan_ ? size_t(plan_->workspace) : 0);
  }
  bool waits_for_predecessor() const override { return mode_ == Mode::kDirect; }

  Status execute(const ExecContext& ctx) const override {
    CudaResources& res = resources_of(ctx);
    if (mode_ == Mode::kDirect) {
      kernels::DirectConvParams p = direct_;
      p.residual = ctx.inputs.size() > 3 ? ctx.inputs[3].data : nullptr;
      p.release_next = ctx.successor_waits && overlap_enabled();
      const cudaError_t e =
          kernels::direct_conv(ctx.inputs[0].data, ctx.outputs[0].data, p, res.stream);
      if (e != cudaSuccess) return cuda_status(e, "direct convolution", __FILE__, __LINE__);
      return Status::Ok();
    }
    // Scratch: [padded input][split-mode intermediate][cuDNN workspace].
    char* scratch = static_cast<char*>(ctx.scratch);
    void* x = ctx.inputs[0].data;
    if (padded_bytes_) {
      const cudaError_t e =
          kernels::pad_channels(x, scratch, pixels_, c_, padded_c_, x_bytes_, res.stream);
      if (e != cudaSuccess) return cuda_status(e, "input channel padding", __FILE__, __LINE__);
      x = scratch;
    }
    char* rest = scratch ? scratch + padded_bytes_ : nullptr;
    void* y = ctx.outputs[0].data;
    void* conv_out = mode_ == Mode::kSplit ? rest : y;
    void* workspace = rest ? rest + inter_bytes_ : nullptr;
    const void* residual = ctx.inputs.size() > 3 ? ctx.inputs[3].data : nullptr;
    std::array<void*, kRoles> ptr{};
    ptr[kRoleX] = x;
    ptr[kRoleW] = packed_->weights.get();
    ptr[kRoleY] = conv_out;
    ptr[kRoleScale] = (mode_ == Mode::kSplit ? packed_->split_scale : packed_->scale).get();
    ptr[kRoleBias] = packed_->bias.get();
    ptr[kRoleResidual] = const_cast<void*>(residual);
    ptr[kRoleOutScale] = packed_->out_scale.get();
    MIXQ_ASSIGN_OR_RETURN(Desc vp, pack_for(ptr, workspace));
    CUDNN_CHECK(cudnnBackendExecute(res.cudnn, plan_->plan.get(), vp.get()));
    if (mode_ == Mode::kSplit) {
      kernels::EpilogueParams ep = ep_;
      ep.residual = residual;
      const cudaError_t e = kernels::epilogue(conv_out, y, y_grid_, ep, res.stream);
      if (e != cudaSuccess) return cuda_status(e, "convolution epilogue", __FILE__, __LINE__);
    }
    return Status::Ok();
  }

 private:
  // Variant packs are small host descriptors; the last few are kept (buffers rarely move).
  Expected<Desc> pack_for(const std::array<void*, kRoles>& ptr, void* workspace) const {
    std::array<void*, kRoles + 1> key{};
    std::copy(ptr.begin(), ptr.end(), key.begin());
    key[kRoles] = workspace;
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [k, d] : packs_)
      if (k == key) return d;
    MIXQ_ASSIGN_OR_RETURN(Desc vp, variant_pack(plan_->graph, ptr, workspace));
    if (packs_.size() >= 8) packs_.erase(packs_.begin());
    packs_.push_back({key, vp});
    return vp;
  }

  std::shared_ptr<Plan> plan_;
  std::shared_ptr<Packed> packed_;
  Mode mode_;
  int64_t rows_ = 0, cols_ = 0;
  size_t inter_bytes_ = 0;
  // Input channel padding (Layer::unpadded_c): pixels, channels before and after, bytes.
  int64_t pixels_ = 0, c_ = 0, padded_c_ = 0;
  size_t padded_bytes_ = 0, x_bytes_ = 0;
  kernels::EpilogueParams ep_;
  kernels::Grid y_grid_;
  kernels::DirectConvParams direct_;
  mutable std::mutex mutex_;
  mutable std::vector<std::pair<std::array<void*, kRoles + 1>, Desc>> packs_;
};

Expected<Desc> ConvKernel::tuning_pack(const Plan& plan, void* const* bufs) const {
  // bufs: x, y, residual, workspace (tuning buffers); constants are the packed ones.
  std::array<void*, kRoles> ptr{};
  ptr[kRoleX] = bufs[0];
  ptr[kRoleW] = packed_->weights.get();
  ptr[kRoleY] = bufs[1];
  ptr[kRoleScale] = (plan.mode == Mode::kSplit ? packed_->split_scale : packed_->scale).get();
  ptr[kRoleBias] = packed_->bias.get();
  ptr[kRoleResidual] = bufs[2];
  ptr[kRoleOutScale] = packed_->out_scale.get();
  return variant_pack(plan.graph, ptr, bufs[3]);
}

Status ConvKernel::warm_up(const Plan& plan, const Spec& spec, BuildResources& b) const {
  const size_t xbytes = size_t(spec.n * spec.c * spec.h * spec.w) * type_bytes(spec.xt);
  const size_t yn = size_t(spec.n * spec.k * spec.oh * spec.ow);
  MIXQ_ASSIGN_OR_RETURN(void* x, b.scratch(0, xbytes));
  MIXQ_ASSIGN_OR_RETURN(void* y, b.scratch(1, yn * type_bytes(spec.yt)));
  MIXQ_ASSIGN_OR_RETURN(void* r, b.scratch(2, spec.residual ? yn * type_bytes(spec.rt) : 256));
  MIXQ_ASSIGN_OR_RETURN(void* ws, b.scratch(3, size_t(plan.workspace)));
  CUDA_CHECK(cudaMemsetAsync(x, 0, xbytes, b.res->stream));
  if (spec.residual) CUDA_CHECK(cudaMemsetAsync(r, 0, yn * type_bytes(spec.rt), b.res->stream));
  void* bufs[4] = {x, y, r, ws};
  MIXQ_ASSIGN_OR_RETURN(Desc vp, tuning_pack(plan, bufs));
  CUDNN_CHECK(cudnnBackendExecute(b.res->cudnn, plan.plan.get(), vp.get()));
  CUDA_CHECK(cudaStreamSynchronize(b.res->stream));
  b.release_scratch();
  return Status::Ok();
}

Expected<double> ConvKernel::time_epilogue(const Spec& split, BuildResources& b) const {
  const int64_t rows = split.n * split.oh * split.ow, cols = split.k;
  const size_t inter = size_t(rows * cols) * type_bytes(split.yt);
  const size_t ybytes = size_t(rows * cols) * dtype_size(node_.output(0)->dtype);
  const ir::Value* r = node_.input(3);
  const size_t rbytes = r ? size_t(rows * cols) * dtype_size(r->dtype) : 256;
  MIXQ_ASSIGN_OR_RETURN(void* acc, b.scratch(0, inter));
  MIXQ_ASSIGN_OR_RETURN(void* y, b.scratch(1, ybytes));
  MIXQ_ASSIGN_OR_RETURN(void* res, b.scratch(2, rbytes));
  CUDA_CHECK(cudaMemsetAsync(acc, 0, inter, b.res->stream));
  CUDA_CHECK(cudaMemsetAsync(res, 0, rbytes, b.res->stream));
  kernels::EpilogueParams ep;
  ep.acc_dt = kernel_dtype(dtype_of(split.yt));
  ep.bias = packed_->real_bias.ptr ? static_cast<const float*>(packed_->real_bias.get()) : nullptr;
  ep.residual = r ? res : nullptr;
  ep.residual_grid = r_grid_;
  ep.act = layer_.base.act;
  ep.lo = layer_.clip_lo;
  ep.hi = layer_.clip_hi;
  ep.rows = rows;
  ep.cols = cols;
  auto t = time_launches(
      [&]() -> Status {
        const cudaError_t e = kernels::epilogue(acc, y, y_grid_, ep, b.res->stream);
        if (e != cudaSuccess) return cuda_status(e, "epilogue", __FILE__, __LINE__);
        return Status::Ok();
      },
      b.res->stream);
  b.release_scratch();
  return t;
}

// Our convolutions' geometry for a layer at `batch` (no buffers).
kernels::DirectConvParams direct_geometry(const Layer& layer, Precision precision, int64_t batch) {
  const Spec& s = layer.base;
  kernels::DirectConvParams p;
  p.n = batch;
  p.h = s.h;
  p.w = s.w;
  p.c = layer.unpadded_c ? layer.unpadded_c : s.c;
  p.k = s.k;
  p.oh = s.oh;
  p.ow = s.ow;
  p.r = int(s.r);
  p.s = int(s.s);
  p.stride_h = int(s.geo.stride[0]);
  p.stride_w = int(s.geo.stride[1]);
  p.pad_h = int(s.geo.pre[0]);
  p.pad_w = int(s.geo.pre[1]);
  p.dil_h = int(s.geo.dilation[0]);
  p.dil_w = int(s.geo.dilation[1]);
  p.x_dt = kernel_dtype(input_dtype(precision));
  p.pool_h = int(s.pool_h);
  p.pool_w = int(s.pool_w);
  return p;
}

kernels::DirectConvParams ConvKernel::direct_params(int64_t batch, int form) const {
  const Spec& s = layer_.base;
  kernels::DirectConvParams p = direct_geometry(layer_, precision_, batch);
  p.form = form;
  p.weights = static_cast<const float*>(packed_->direct_weights.get());
  const DeviceBuffer& tc = form == kernels::kDirectIgemm    ? packed_->igemm_weights
                           : form == kernels::kDirectWindow ? packed_->window_weights
                                                            : packed_->direct_tc_weights;
  p.tc_weights = tc.ptr ? tc.get() : nullptr;
  p.scale = static_cast<const float*>(packed_->split_scale.get());
  p.bias = packed_->real_bias.ptr ? static_cast<const float*>(packed_->real_bias.get()) : nullptr;
  p.residual_grid = r_grid_;
  p.act = s.act;
  p.lo = layer_.clip_lo;
  p.hi = layer_.clip_hi;
  p.y_grid = y_grid_;
  p.convert_input = convert_input_;
  p.x_src = x_src_;
  p.x_src_nchw = convert_input_ && !x_src_.nhwc;
  p.x_grid = x_grid_;
  return p;
}

Expected<double> ConvKernel::time_direct(BuildResources& b, int form) const {
  kernels::DirectConvParams p = direct_params(max_batch_, form);
  const int64_t yn = p.n * p.k * p.oh * p.ow;
  const DType in = input_dtype(precision_);
  const float amp = in == DType::kInt8 ? 32.0f : in == DType::kFloat8E4M3 ? 4.0f : 1.0f;
  MIXQ_ASSIGN_OR_RETURN(DeviceBuffer x, random_device(in, p.n * p.h * p.w * p.c, amp, 11));
  DeviceBuffer r;
  if (layer_.base.residual) {
    MIXQ_ASSIGN_OR_RETURN(r, random_device(node_.input(3)->dtype, yn, 1.0f, 12));
    p.residual = r.get();
  }
  MIXQ_ASSIGN_OR_RETURN(void* y, b.scratch(1, size_t(yn) * dtype_size(node_.output(0)->dtype)));
  auto t = time_launches(
      [&]() -> Status {
        const cudaError_t e = kernels::direct_conv(x.get(), y, p, b.res->stream);
        if (e != cudaSuccess) return cuda_status(e, "direct convolution", __FILE__, __LINE__);
        return Status::Ok();
      },
      b.res->stream);
  b.release_scratch();
  return t;
}

bool ConvKernel::form_available(const std::string& form) const {
  if (form == "window")
    return packed_->window_weights.ptr &&
           kernels::window_eligible(direct_geometry(layer_, precision_, max_batch_));
  if (layer_.base.pool_h) return false;  // only the window form pools
  if (form == "igemm")
    return packed_->igemm_weights.ptr &&
           kernels::igemm_eligible(direct_geometry(layer_, precision_, max_batch_));
  if (form == "tc" || form == "fma") return packed_->direct_weights.ptr != nullptr;
  return false;
}

void ConvKernel::choose_direct(const std::string& tag, const std::string& form,
                               const std::string& note) {
  mode_ = Mode::kDirect;
  prepared_.reset();
  choice_.clear();
  const Spec& s = layer_.base;
  const bool igemm = form == "igemm", window = form == "window";
  const bool tc =
      !igemm && !window && form == "tc" && packed_->direct_tc_weights.ptr &&
      kernels::direct_tensor_core_eligible(kernel_dtype(input_dtype(precision_)), s.k,
                                           layer_.unpadded_c ? layer_.unpadded_c : s.c, s.r, s.s);
  direct_form_ = igemm    ? kernels::kDirectIgemm
                 : window ? kernels::kDirectWindow
                 : tc     ? kernels::kDirectTc
                          : kernels::kDirectFma;
  // Only the chosen form's weights stay on the device.
  if (!tc) packed_->direct_tc_weights = DeviceBuffer{};
  if (!igemm) packed_->igemm_weights = DeviceBuffer{};
  if (!window) packed_->window_weights = DeviceBuffer{};
  if (igemm || tc || window) packed_->direct_weights = DeviceBuffer{};
  forget_choice(node_, kPlanAttr);
  record_choice(node_, kChoiceAttr,
                tag + "|direct|" +
                    (igemm    ? "igemm"
                     : window ? "window"
                     : tc     ? "tc"
                              : "fma"));
  std::string epi;
  if (s.bias) epi += "+bias";
  if (s.residual) epi += "+residual";
  if (s.act == kernels::kActRelu) epi += "+relu";
  if (s.act == kernels::kActClip) epi += "+clip";
  if (s.pool_h) epi += "+maxpool " + std::to_string(s.pool_h) + "x" + std::to_string(s.pool_w);
  const std::string sums = precision_ == Precision::kINT8 ? "s32 sums" : "f32 sums";
  impl_ =
      std::string(igemm    ? "mixq cuda implicit-gemm conv"
                  : window ? "mixq cuda window conv"
                           : "mixq cuda direct conv") +
      epi + " " + type_name(s.xt) + "->" + type_name(s.yt) +
      (igemm || tc || window ? " (tensor cores, " + sums + ")" : std::string(" (fp32 FMA sums)")) +
      " [" + note + "]";
}

// Runs the plan once on poisoned output and checks it wrote: an engine that returns success but
// writes nothing leaves the poison (NaN for 2- and 4-byte floats, -1 for s8, NaN for e4m3).
Status check_run(const Plan& plan, const Desc& vp, const Spec& spec, BuildResources& b, void* y) {
  const size_t es = type_bytes(spec.yt);
  const size_t total = size_t(spec.n * spec.oh * spec.ow * spec.k), bytes = total * es;
  CUDA_CHECK(cudaMemsetAsync(y, 0xFF, bytes, b.res->stream));
  CUDNN_CHECK(cudnnBackendExecute(b.res->cudnn, plan.plan.get(), vp.get()));
  CUDA_CHECK(cudaStreamSynchronize(b.res->stream));
  std::vector<uint8_t> host(bytes);
  CUDA_CHECK(cudaMemcpy(host.data(), y, bytes, cudaMemcpyDeviceToHost));
  size_t untouched = 0;
  for (size_t i = 0; i < total; ++i) {
    bool poison = true;
    for (size_t j = 0; j < es && poison; ++j) poison = host[i * es + j] == 0xFF;
    untouched += poison;
  }
  if (es > 1 ? untouched > 0 : untouched == total)
    return Internal("the engine left " + std::to_string(untouched) + " of " +
                    std::to_string(total) + " outputs unwritten");
  return Status::Ok();
}

Expected<std::shared_ptr<Plan>> ConvKernel::tune(const Spec& spec, BuildResources& b,
                                                 std::string* note) const {
  // Plans precompile() submitted for this graph (its first candidates of heuristics mode A).
  const std::shared_ptr<Precompiled> pre = precompiled(spec);
  std::optional<Heuristics> pre_heuristics;
  std::map<size_t, std::pair<EngineChoice, PlanFuture>> pre_candidates;
  OpGraph g;
  if (pre) {
    std::lock_guard<std::mutex> lock(pre->mutex);
    g = pre->graph;
    pre_heuristics = pre->heuristics;
    pre_candidates = pre->candidates;
  } else {
    MIXQ_ASSIGN_OR_RETURN(g, build_graph(spec, b.res->cudnn));
  }
  // Tuning data at this batch: random input and residual, output and workspace buffers.
  const int64_t xn = spec.n * spec.c * spec.h * spec.w, yn = spec.n * spec.k * spec.oh * spec.ow;
  auto amp = [](cudnnDataType_t t) {
    return t == CUDNN_DATA_INT8 ? 32.0f : t == CUDNN_DATA_FP8_E4M3 ? 4.0f : 1.0f;
  };
  MIXQ_ASSIGN_OR_RETURN(DeviceBuffer x, random_device(dtype_of(spec.xt), xn, amp(spec.xt), 11));
  DeviceBuffer r;
  if (spec.residual) {
    MIXQ_ASSIGN_OR_RETURN(r, random_device(dtype_of(spec.rt), yn, amp(spec.rt), 12));
  }
  MIXQ_ASSIGN_OR_RETURN(void* y, b.scratch(1, size_t(yn) * type_bytes(spec.yt)));
  const auto start = Clock::now();
  double best_ms = 0;
  bool best_captured = false;
  std::shared_ptr<Plan> best;
  int tried = 0, working = 0;
  double compile_seconds = 0;  // finalizing plans (runtime-compiled engines compile here)
  std::string errors;
  // Runs a finalized candidate once (checked), times it, and keeps it if it is the best so far.
  auto evaluate = [&](const EngineChoice& info, const PlanResult& finalized) -> Status {
    if (!finalized.ok()) {
      errors += " e" + std::to_string(info.engine) + ":plan";
      return Status::Ok();
    }
    std::shared_ptr<Plan> plan = *finalized;
    if (plan->workspace > kMaxWorkspace) return Status::Ok();
    plan->choice = info;
    plan->mode = spec.mode;
    MIXQ_ASSIGN_OR_RETURN(void* ws, b.scratch(3, size_t(plan->workspace)));
    void* bufs[4] = {x.get(), y, r.get(), ws};
    auto vp = tuning_pack(*plan, bufs);
    Status ran = vp.ok() ? check_run(*plan, *vp, spec, b, y) : vp.status();
    if (!ran.ok()) {
      cudaGetLastError();
      errors += " e" + std::to_string(info.engine) + ":" + ran.message().substr(0, 120);
      return Status::Ok();
    }
    ++working;
    double ms = 0;
    bool captured = true;
    if (tuning_enabled(node_)) {
      const Desc& pack = *vp;
      auto t = time_launches(
          [&]() -> Status {
            CUDNN_CHECK(cudnnBackendExecute(b.res->cudnn, plan->plan.get(), pack.get()));
            return Status::Ok();
          },
          b.res->stream, &captured);
      if (!t.ok()) {
        cudaGetLastError();
        return Status::Ok();
      }
      ms = *t;
    }
    // Configurations that a CUDA graph can capture first (the engine replays graphs), then time.
    if (!best || (captured && !best_captured) || (captured == best_captured && ms < best_ms)) {
      best = plan;
      best_ms = ms;
      best_captured = captured;
    }
    return Status::Ok();
  };
  // Deterministic builds (BuildOptions::deterministic) skip engines that note nondeterminism
  // (atomics), unless no other engine runs the layer.
  bool skipped_nondeterministic = false;
  for (int pass = deterministic_only(node_) ? 0 : 1; pass < 2 && !best; ++pass) {
    if (pass == 1 && deterministic_only(node_) && !skipped_nondeterministic) break;
    for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
      const bool precompiled_mode = mode == CUDNN_HEUR_MODE_A && pre_heuristics.has_value();
      Expected<Heuristics> h =
          precompiled_mode ? Expected<Heuristics>(*pre_heuristics) : heuristic_configs(g, mode);
      if (!h.ok()) {
        errors += " heuristics: " + h.status().message().substr(0, 160);
        continue;
      }
      // Candidates in the heuristic's order, in chunks: a chunk's plans are finalized in parallel
      // (a runtime-compiled engine takes about half a second to compile; cuDNN builds plans of
      // one graph in parallel when autotuning), then each is run and timed on the GPU in turn.
      struct Candidate {
        EngineChoice info;
        const Desc* cfg = nullptr;
        Expected<std::shared_ptr<Plan>> plan = Internal("not finalized");
        std::optional<PlanFuture> precompiled;
      };
      const int parallel = tuning_enabled(node_) ? compile_threads() : 1;
      size_t next = 0;
      bool stop = false;
      while (!stop && next < h->configs.size()) {
        std::vector<Candidate> chunk;
        // Past the candidate limit only while nothing runs yet, one at a time.
        while (next < h->configs.size() && int(chunk.size()) < parallel &&
               (tried + int(chunk.size()) < tune_max_candidates() || (!best && chunk.empty()))) {
          const Desc& cfg = h->configs[next++];
          // A precompiled candidate's description was taken before the workers used it.
          const auto ahead =
              precompiled_mode ? pre_candidates.find(next - 1) : pre_candidates.end();
          auto info = ahead != pre_candidates.end() ? Expected<EngineChoice>(ahead->second.first)
                                                    : describe_config(cfg);
          if (!info.ok()) continue;
          if (!takes_config(*info, spec, pass == 1)) {
            // Left out for its nondeterminism alone: the next pass may take it.
            skipped_nondeterministic |= pass == 0 && takes_config(*info, spec, true);
            continue;
          }
          if (avoid_rtc_ && info->runtime_compiled) continue;
          chunk.push_back({*info, &cfg});
          if (ahead != pre_candidates.end()) chunk.back().precompiled = ahead->second.second;
        }
        if (chunk.empty()) break;
        tried += int(chunk.size());
        {
          const auto compile_start = Clock::now();
          in_parallel(chunk.size(), [&](size_t i) {
            if (chunk[i].precompiled) {
              chunk[i].plan = take_plan(*chunk[i].precompiled);
              if (compiled_elsewhere(chunk[i].plan)) return;
            }
            auto handle = compile_handle(int(i));
            chunk[i].plan = handle.ok() ? finalize_plan(g, *chunk[i].cfg, *handle, {h->heur})
                                        : Expected<std::shared_ptr<Plan>>(handle.status());
          });
          compile_seconds += seconds_since(compile_start);
        }
        for (Candidate& cand : chunk) {
          MIXQ_RETURN_IF_ERROR(evaluate(cand.info, cand.plan));
          if (!tuning_enabled(node_) && best) break;
        }
        stop =
            best && (!tuning_enabled(node_) || tried >= tune_max_candidates() ||
                     std::chrono::duration<double>(Clock::now() - start).count() > tune_seconds());
      }
      if (best) break;  // FALLBACK only when mode A has nothing that runs
    }
  }
  // The winning runtime-compiled engine's other kernel configurations, which the heuristics do
  // not all list (MIXQ_CUDA_TUNE_KERNELS=1).
  const int heuristic_working = working;
  size_t sweep_size = 0;
  if (best && best->choice.runtime_compiled && tuning_enabled(node_) && kernel_sweep_enabled()) {
    std::vector<EngineChoice> variants = kernel_variants(g, best->choice);
    sweep_size = variants.size();
    for (size_t next = 0; next < variants.size();) {
      const size_t count = std::min(variants.size() - next, size_t(compile_threads()));
      std::vector<PlanResult> plans(count, Internal("not finalized"));
      const auto compile_start = Clock::now();
      in_parallel(count, [&](size_t i) {
        std::vector<Desc> keep;
        auto cfg = config_from_choice(g, variants[next + i], keep);
        auto handle = compile_handle(int(i));
        if (!cfg.ok() || !handle.ok())
          plans[i] = cfg.ok() ? handle.status() : cfg.status();
        else
          plans[i] = finalize_plan(g, *cfg, *handle, std::move(keep));
      });
      compile_seconds += seconds_since(compile_start);
      for (size_t i = 0; i < count; ++i) {
        if (!plans[i].ok()) continue;  // not every value suits every graph
        EngineChoice info = variants[next + i];
        info.runtime_compiled = true;
        MIXQ_RETURN_IF_ERROR(evaluate(info, plans[i]));
      }
      next += count;
    }
  }
  b.release_scratch();
  if (best) best->ms = best_ms;
  if (!best)
    return Unsupported("no cuDNN engine runs " + spec.signature() + " (tried " +
                       std::to_string(tried) + ":" + errors + ")" +
                       (cudnn_last_error().empty() ? "" : ": " + cudnn_last_error()));
  if (note && !tuning_enabled(node_))
    *note = "untuned: first working config";
  else if (note)
    *note = "tuned " + std::to_string(heuristic_working) + "/" + std::to_string(tried) +
            " configs" +
            (sweep_size ? " + " + std::to_string(working - heuristic_working) + "/" +
                              std::to_string(sweep_size) + " kernel configs"
                        : std::string()) +
            ", " + std::to_string(best_ms * 1000.0).substr(0, 6) + " us" +
            (best_captured ? "" : ", not capturable") + ", " + seconds_text(compile_seconds) +
            " compiling of " + seconds_text(seconds_since(start)) + " tuning";
  return best;
}

Expected<std::shared_ptr<Plan>> ConvKernel::plan_for(const Spec& spec, const std::string& choice,
                                                     BuildResources& b, std::string* chosen,
                                                     std::string* note,
                                                     const std::string& json) const {
  // The given choice (recorded in the engine, or the maximum batch's), else what this process
  // tuned for the same graph before, else tune now.
  const std::string cached = cached_choice(node_, spec.signature());
  for (int attempt = 0; attempt < 2; ++attempt) {
    const std::string& want = attempt == 0 ? choice : cached;
    EngineChoice c;
    if (want.empty() || !EngineChoice::parse(want, c)) continue;
    PlanResult plan = FailedPrecondition("not compiled ahead");
    if (const auto pre = precompiled(spec)) {
      std::optional<PlanFuture> ready;
      {
        std::lock_guard<std::mutex> lock(pre->mutex);
        if (auto it = pre->choices.find(want); it != pre->choices.end()) ready = it->second;
      }
      if (ready) plan = take_plan(*ready);
    }
    if (!compiled_elsewhere(plan)) {
      auto g = build_graph(spec, b.res->cudnn);
      if (!g.ok()) break;
      if (attempt == 0 && !json.empty()) plan = plan_from_json(*g, json, b.res->cudnn);
      if (!plan.ok()) {
        std::vector<Desc> keep;
        auto cfg = config_from_choice(*g, c, keep);
        if (!cfg.ok()) continue;
        plan = finalize_plan(*g, *cfg, b.res->cudnn, std::move(keep));
      }
    }
    if (plan.ok()) (*plan)->mode = spec.mode;
    if (plan.ok() && (*plan)->workspace <= kMaxWorkspace && warm_up(**plan, spec, b).ok()) {
      (*plan)->choice = c;
      if (attempt == 1)
        (*plan)->ms = std::atof(cached_choice(node_, "ms " + spec.signature()).c_str());
      if (chosen) *chosen = c.str();
      if (note) *note = attempt == 0 ? "recorded choice" : "tuned before";
      return *plan;
    }
    cudaGetLastError();
  }
  MIXQ_ASSIGN_OR_RETURN(auto plan, tune(spec, b, note));
  cache_choice(node_, spec.signature(), plan->choice.str());
  cache_choice(node_, "ms " + spec.signature(), std::to_string(plan->ms));
  if (chosen) *chosen = plan->choice.str();
  return plan;
}

Status ConvKernel::describe(int64_t max_batch) {
  if (setup_.described && max_batch_ == max_batch) return Status::Ok();
  max_batch_ = max_batch;
  MIXQ_RETURN_IF_ERROR(static_checks(node_, precision_));
  const ir::Value* x = node_.input(0);
  const ir::Value* r = node_.input(3);
  const ir::Value* y = node_.output(0);
  const bool quant = quantized_precision(precision_);
  const DType in = input_dtype(precision_);
  // An absorbed reformat: x stays in its own format, converted to `in` (scale sx) on the way in.
  convert_input_ = node_.attrs.count(kInputDtypeAttr) != 0;
  float sx = quant && x->quant ? x->quant->scale[0] : 1.0f;
  if (convert_input_) {
    if (node_.attr_string(kInputDtypeAttr, "") != dtype_name(in))
      return Internal(node_.describe() + ": the absorbed reformat converts to " +
                      node_.attr_string(kInputDtypeAttr, "") + "; a " +
                      std::string(precision_name(precision_)) + " convolution reads " +
                      std::string(dtype_name(in)));
    sx = quant ? node_.attr_float(kInputScaleAttr, 0.0f) : 1.0f;
    if (!(sx > 0.0f)) return Internal(node_.describe() + ": the absorbed reformat has no scale");
    x_src_ = value_grid(*x);
    x_grid_.dt = kernel_dtype(in);
    x_grid_.scale = sx;
    x_grid_.inv_scale = 1.0f / sx;
    x_grid_.nhwc = true;
  } else if (x->dtype != in) {
    return Internal("the input is " + std::string(dtype_name(x->dtype)) + "; a " +
                    std::string(precision_name(precision_)) + " convolution reads " +
                    std::string(dtype_name(in)));
  }
  const bool y_quantized = stored_quantized(*y);
  if (y_quantized && y->quant->zero_point_at(0) != 0)
    return Unsupported("quantised outputs must be symmetric (zero point 0) on the GPU");
  const float sy = y_quantized ? y->quant->scale[0] : 1.0f;
  float sr = 1.0f;
  bool r_quantized = false;
  if (r) {
    r_quantized = stored_quantized(*r);
    if (r_quantized && r->quant->zero_point_at(0) != 0)
      return Unsupported("quantised residuals must be symmetric (zero point 0) on the GPU");
    sr = r_quantized ? r->quant->scale[0] : 1.0f;
  }
  MIXQ_ASSIGN_OR_RETURN(layer_, describe_layer(node_, precision_, y->dtype, y_quantized, sy, sr));
  if (r) {
    layer_.base.rt = cudnn_type(r->dtype);
    layer_.residual_fusable = r_quantized == y_quantized && (!r_quantized || r->dtype == y->dtype);
  }
  y_grid_ = value_grid(*y);
  if (r) r_grid_ = value_grid(*r);
  // Our own convolutions (the direct forms for small filters, the implicit GEMM), where they
  // measure faster than cuDNN's engines.
  MIXQ_ASSIGN_OR_RETURN(const ConvImplementation implementation, conv_implementation());
  const Spec& base = layer_.base;
  const bool layout_ok = (value_grid(*x).nhwc || convert_input_) && y_grid_.nhwc &&
                         (!r || r_grid_.nhwc) &&
                         max_batch * base.h * base.w * base.c <= kernels::kDirectMaxElements &&
                         max_batch * base.oh * base.ow * base.k <= kernels::kDirectMaxElements;
  const bool automatic = implementation == ConvImplementation::kAuto;
  // Only the window form pools, converts its input, or runs a stage of a window chain.
  const bool window_only = base.pool_h > 0 || convert_input_ || force_window_;
  const bool small_ok = !window_only && layout_ok &&
                        (automatic || implementation == ConvImplementation::kDirect) &&
                        direct_eligible(layer_, precision_);
  const bool igemm_ok = !window_only && layout_ok &&
                        (automatic || implementation == ConvImplementation::kIgemm) &&
                        precision_ != Precision::kTF32 && base.geo.groups == 1 &&
                        kernels::igemm_eligible(direct_geometry(layer_, precision_, max_batch));
  const bool window_ok =
      layout_ok && (automatic || window_only || implementation == ConvImplementation::kWindow) &&
      window_eligible(layer_, precision_, max_batch);
  if (window_only && !window_ok)
    return Unsupported(
        node_.describe() + ": its fused max pool, input reformat or chained " +
        "convolution needs the window convolution, which does not take this layer at " +
        std::string(precision_name(precision_)));
  setup_.sx = sx;
  setup_.implementation = implementation;
  setup_.window_only = window_only;
  setup_.small_ok = small_ok;
  setup_.igemm_ok = igemm_ok;
  setup_.window_ok = window_ok;
  setup_.described = true;
  return Status::Ok();
}

bool ConvKernel::recorded_choice(const Spec& fused, std::string& mode, std::string& choice,
                                 std::string& json) const {
  // "<signature hash>|fused|e4;k..." (see prepare).
  const std::string recorded = read_choice(node_, kChoiceAttr);
  const std::string tag = std::to_string(std::hash<std::string>{}(fused.signature()));
  const size_t a = recorded.find('|'), c = recorded.find('|', a == std::string::npos ? 0 : a + 1);
  if (recorded.empty() || a == std::string::npos || c == std::string::npos ||
      recorded.substr(0, a) != tag)
    return false;
  mode = recorded.substr(a + 1, c - a - 1);
  choice = recorded.substr(c + 1);
  // The serialized plan counts only where it names the same signature, mode and choice.
  const std::string plan = read_choice(node_, kPlanAttr), prefix = recorded + "|";
  json = plan.compare(0, prefix.size(), prefix) == 0 ? plan.substr(prefix.size()) : std::string();
  return true;
}

std::shared_ptr<Precompiled> ConvKernel::precompiled(const Spec& spec) const {
  auto it = precompiled_.find(spec.signature());
  return it == precompiled_.end() ? nullptr : it->second;
}

void ConvKernel::precompile_spec(const Spec& spec, const std::string& choice,
                                 const std::string& json) {
  const std::string key = (deterministic_only(node_) ? "deterministic " : "") + spec.signature();
  std::shared_ptr<Precompiled> set;
  {
    std::lock_guard<std::mutex> lock(g_precompiled_mutex);
    if (auto it = g_precompiled.find(key); it != g_precompiled.end()) set = it->second.lock();
    if (set) {
      std::lock_guard<std::mutex> set_lock(set->mutex);
      if (set->cancelled) set.reset();
    }
  }
  auto br = build_resources();
  if (!br.ok()) return;
  if (!set) {
    auto g = build_graph(spec, br->res->cudnn);
    if (!g.ok()) return;
    set = std::make_shared<Precompiled>();
    set->graph = std::move(g).value();
    std::lock_guard<std::mutex> lock(g_precompiled_mutex);
    for (auto it = g_precompiled.begin(); it != g_precompiled.end();)
      it = it->second.expired() ? g_precompiled.erase(it) : std::next(it);
    g_precompiled[key] = set;
  }
  std::lock_guard<std::mutex> lock(set->mutex);
  if (precompiled_.emplace(spec.signature(), set).second) ++set->holders;
  EngineChoice c;
  if (!choice.empty()) {
    if (set->choices.count(choice) || !EngineChoice::parse(choice, c)) return;
    std::vector<Desc> keep;
    auto cfg = config_from_choice(set->graph, c, keep);
    if (cfg.ok()) set->choices[choice] = set->submit(set, *cfg, std::move(keep), json);
    return;
  }
  if (set->heuristics) return;
  // tune()'s first candidates, filtered as it filters them.
  auto h = heuristic_configs(set->graph, CUDNN_HEUR_MODE_A);
  if (!h.ok()) return;
  set->heuristics = std::move(h).value();
  int submitted = 0;
  for (size_t i = 0; i < set->heuristics->configs.size() && submitted < tune_max_candidates();
       ++i) {
    const Desc& cfg = set->heuristics->configs[i];
    auto info = describe_config(cfg);
    if (!info.ok() || !takes_config(*info, spec, !deterministic_only(node_))) continue;
    PlanFuture f = set->submit(set, cfg, {set->heuristics->heur});
    set->candidates[i] = {*info, f};
    set->choices.emplace(info->str(), f);
    ++submitted;
  }
}

void ConvKernel::precompile(int64_t max_batch) {
  // Only where prepare() will finalize cuDNN plans: tuned layers that may run cuDNN.
  if (!precompile_enabled() || !tuning_enabled(node_) || !describe(max_batch).ok()) return;
  const ConvImplementation implementation = setup_.implementation;
  if (setup_.window_only || (setup_.small_ok && implementation == ConvImplementation::kDirect) ||
      (setup_.igemm_ok && implementation == ConvImplementation::kIgemm) ||
      (setup_.window_ok && implementation == ConvImplementation::kWindow))
    return;
  const Spec fused = spec_at(max_batch, Mode::kFused), split = spec_at(max_batch, Mode::kSplit);
  std::string rec_mode, rec_choice, rec_json;
  if (recorded_choice(fused, rec_mode, rec_choice, rec_json)) {
    if (rec_mode == "fused") precompile_spec(fused, rec_choice, rec_json);
    if (rec_mode == "split") precompile_spec(split, rec_choice, rec_json);
    return;
  }
  // As prepare() decides: a memoised mode, else fused (where cuDNN can fuse the chain) and split
  // (where it cannot, or with a residual, where both are timed).
  const std::string decided = cached_choice(
      node_, "mode " + std::string(precision_name(precision_)) + " " + fused.signature());
  if (decided == "direct") return;
  const bool fusable = !layer_.base.residual || layer_.residual_fusable;
  if (fusable && decided != "split")
    precompile_spec(fused, cached_choice(node_, fused.signature()));
  if (decided == "split" || (decided.empty() && (!fusable || layer_.base.residual)))
    precompile_spec(split, cached_choice(node_, split.signature()));
}

Status ConvKernel::prepare(int64_t max_batch) {
  Status s = prepare_layer(max_batch);
  release_precompiled();
  return s;
}

Status ConvKernel::prepare_layer(int64_t max_batch) {
  MIXQ_RETURN_IF_ERROR(describe(max_batch));
  const ir::Value* x = node_.input(0);
  const ir::Value* w = node_.input(1);
  const ir::Value* b = node_.input(2);
  const ir::Value* r = node_.input(3);
  const bool quant = quantized_precision(precision_);
  const DType in = input_dtype(precision_);
  const float sx = setup_.sx;
  const ConvImplementation implementation = setup_.implementation;
  const Spec& base = layer_.base;
  const bool window_only = setup_.window_only, small_ok = setup_.small_ok,
             igemm_ok = setup_.igemm_ok, window_ok = setup_.window_ok;
  const bool direct = small_ok || igemm_ok || window_ok;
  const bool remember = implementation == ConvImplementation::kAuto;

  // Scales: per output channel s_x * s_w[c] (int8/fp8), divided by the chain's units.
  const int64_t K = layer_.base.k;
  std::vector<float> scale(size_t(K), 1.0f), bias(size_t(K), 0.0f), real_bias(size_t(K), 0.0f),
      conv_scale(size_t(K), 1.0f);
  if (quant) {
    if (!convert_input_ && (!x->quant || x->quant->zero_point_at(0) != 0))
      return Unsupported("int8/fp8 inputs must be symmetric (zero point 0) with a scale");
    if (!w->quant || w->dtype != in)
      return Internal("weights are not quantised for " + std::string(precision_name(precision_)));
    for (int64_t c = 0; c < K; ++c)
      conv_scale[size_t(c)] = sx * w->quant->scale[w->quant->per_tensor() ? 0 : size_t(c)];
  }
  if (b) {
    const std::vector<float> bv = b->constant.to_float_vector();
    if (int64_t(bv.size()) != K)
      return InvalidArgument("bias has " + std::to_string(bv.size()) + " values");
    real_bias = bv;
  }
  for (int64_t c = 0; c < K; ++c) {
    scale[size_t(c)] = float(double(conv_scale[size_t(c)]) / layer_.divisor);
    bias[size_t(c)] = float(double(real_bias[size_t(c)]) / layer_.divisor);
  }

  // A recorded choice: "<signature hash>|fused|e4;k..." (see below).
  std::string rec_mode, rec_choice, rec_json;
  const Spec fused = spec_at(max_batch, Mode::kFused);
  const std::string tag = std::to_string(std::hash<std::string>{}(fused.signature()));
  recorded_choice(fused, rec_mode, rec_choice, rec_json);
  // Our forms' weights only where one of them may run: not for a recorded cuDNN choice (loading
  // an engine skips their packing).
  const bool pack_own = direct && (rec_mode.empty() || rec_mode == "direct");

  auto packed = std::make_shared<Packed>();
  {
    MIXQ_ASSIGN_OR_RETURN(BuildResources br, build_resources());
    MIXQ_ASSIGN_OR_RETURN(
        packed->weights,
        pack_weights(
            layer_.unpadded_c ? pad_input_channels(w->constant, layer_.base.c) : w->constant, in));
    MIXQ_ASSIGN_OR_RETURN(packed->scale, upload(scale.data(), scale.size() * sizeof(float)));
    MIXQ_ASSIGN_OR_RETURN(packed->split_scale,
                          upload(conv_scale.data(), conv_scale.size() * sizeof(float)));
    MIXQ_ASSIGN_OR_RETURN(packed->bias, upload(bias.data(), bias.size() * sizeof(float)));
    MIXQ_ASSIGN_OR_RETURN(packed->out_scale, upload(&layer_.out_scale, sizeof(float)));
    if (b) {
      MIXQ_ASSIGN_OR_RETURN(packed->real_bias,
                            upload(real_bias.data(), real_bias.size() * sizeof(float)));
    }
    packed->host_bias = real_bias;
    if (pack_own) {
      // The codes the cuDNN path packs (the stored s8/e4m3 codes, or the weights rounded to the
      // input's type), as floats: their products are exact in fp32.
      const Tensor codes =
          (w->constant.dtype() == in ? w->constant : w->constant.to(in)).to(DType::kFloat32);
      const Spec& sp = layer_.base;
      const int64_t c = layer_.unpadded_c ? layer_.unpadded_c : sp.c;
      if (small_ok) {
        std::vector<float> host(size_t(kernels::direct_weight_count(sp.k, c, sp.r, sp.s)));
        kernels::direct_pack_weights(static_cast<const float*>(codes.raw()), sp.k, c, sp.r, sp.s,
                                     host.data());
        MIXQ_ASSIGN_OR_RETURN(packed->direct_weights,
                              upload(host.data(), host.size() * sizeof(float)));
      }
      const int x_dt = kernel_dtype(in);
      if (igemm_ok) {
        std::vector<unsigned char> host(
            size_t(kernels::igemm_weight_bytes(x_dt, sp.k, c, sp.r, sp.s)));
        kernels::igemm_pack_weights(x_dt, static_cast<const float*>(codes.raw()), sp.k, c, sp.r,
                                    sp.s, host.data());
        MIXQ_ASSIGN_OR_RETURN(packed->igemm_weights, upload(host.data(), host.size()));
      }
      if (window_ok) {
        std::vector<unsigned char> host(
            size_t(kernels::window_weight_bytes(x_dt, sp.k, c, sp.r, sp.s)));
        kernels::window_pack_weights(x_dt, static_cast<const float*>(codes.raw()), sp.k, c, sp.r,
                                     sp.s, host.data());
        MIXQ_ASSIGN_OR_RETURN(packed->window_weights, upload(host.data(), host.size()));
      }
      if (small_ok && kernels::direct_tensor_core_eligible(x_dt, sp.k, c, sp.r, sp.s)) {
        std::vector<unsigned char> tc(
            size_t(kernels::direct_tc_weight_bytes(x_dt, sp.k, c, sp.r, sp.s)));
        kernels::direct_tc_pack_weights(x_dt, static_cast<const float*>(codes.raw()), sp.k, c, sp.r,
                                        sp.s, tc.data());
        MIXQ_ASSIGN_OR_RETURN(packed->direct_tc_weights, upload(tc.data(), tc.size()));
      }
    }
    packed_ = packed;
  }
  MIXQ_ASSIGN_OR_RETURN(BuildResources br, build_resources());
  const std::string mode_key =
      "mode " + std::string(precision_name(precision_)) + " " + fused.signature();
  const std::string decided = !rec_mode.empty() ? rec_mode : cached_choice(node_, mode_key);
  const std::string form_key = "direct form " + mode_key;
  if (small_ok && implementation == ConvImplementation::kDirect) {
    choose_direct(tag, "tc", "MIXQ_CUDA_CONV=direct");
    return Status::Ok();
  }
  if (igemm_ok && implementation == ConvImplementation::kIgemm) {
    choose_direct(tag, "igemm", "MIXQ_CUDA_CONV=igemm");
    return Status::Ok();
  }
  if (window_ok && (window_only || implementation == ConvImplementation::kWindow)) {
    choose_direct(tag, "window",
                  base.pool_h && convert_input_ ? "fused input reformat and max pool"
                  : base.pool_h                 ? "fused max pool"
                  : convert_input_              ? "fused input reformat"
                  : force_window_               ? "chained"
                                                : "MIXQ_CUDA_CONV=window");
    return Status::Ok();
  }
  if (direct && decided == "direct") {
    const std::string form = rec_mode.empty() ? cached_choice(node_, form_key) : rec_choice;
    if (form_available(form)) {
      choose_direct(tag, form, rec_mode.empty() ? "tuned before" : "recorded choice");
      return Status::Ok();
    }
  }
  // Fused where cuDNN has an engine for the whole chain; split where it has none, and where the
  // split form (convolution + own epilogue) measures faster: some fused chains only have slow
  // engines (fp32 with a residual: one runtime-compiled engine, ~40x slower than the bare
  // convolution on an H200). The decision is recorded with the choice and memoised per process.
  const bool fusable = !layer_.base.residual || layer_.residual_fusable;
  std::shared_ptr<Plan> fused_plan, split_plan;
  std::string fused_choice, fused_note, split_choice, split_note;
  Status fused_status = Status::Ok(), split_status = Status::Ok();
  const Spec split = spec_at(max_batch, Mode::kSplit);
  if (!tuning_enabled(node_) && rec_mode.empty() && decided.empty()) {
    // Untuned (the calibration engine runs a few batches): an engine that needs no runtime
    // compilation, of either form, before a compiled one (about a second a layer).
    avoid_rtc_ = true;
    if (fusable) {
      auto p = plan_for(fused, "", br, &fused_choice, &fused_note);
      if (p.ok()) fused_plan = *p;
    }
    if (!fused_plan) {
      auto p = plan_for(split, "", br, &split_choice, &split_note);
      if (p.ok()) split_plan = *p;
    }
    avoid_rtc_ = false;
  }
  if (fused_plan || split_plan) {
    // Found above.
  } else if (fusable && decided != "split") {
    auto p = plan_for(fused, rec_mode == "fused" ? rec_choice : "", br, &fused_choice, &fused_note,
                      rec_mode == "fused" ? rec_json : "");
    if (p.ok())
      fused_plan = *p;
    else
      fused_status = p.status();
  }
  // The split form only where the fused chain fails or has a residual (where fused chains can be
  // slow): without one, the split form adds a pass over the output and never won when timed.
  if (!split_plan &&
      (!fused_plan || (decided.empty() && fused_plan->ms > 0 && layer_.base.residual))) {
    auto p = plan_for(split, rec_mode == "split" ? rec_choice : "", br, &split_choice, &split_note,
                      rec_mode == "split" ? rec_json : "");
    if (p.ok())
      split_plan = *p;
    else
      split_status = p.status();
  }
  double epilogue_ms = 0;
  if (fused_plan && split_plan && split_plan->ms > 0) {
    auto t = time_epilogue(split, br);
    epilogue_ms = t.ok() ? *t : 1e30;
  }
  const bool use_split =
      split_plan &&
      (!fused_plan || (split_plan->ms > 0 && split_plan->ms + epilogue_ms < fused_plan->ms));
  if (pack_own && !fused_plan && !split_plan) {
    const std::string form = window_ok ? "window" : small_ok ? "tc" : "igemm";
    if (rec_mode.empty() && remember) {
      cache_choice(node_, mode_key, "direct");
      cache_choice(node_, form_key, form);
    }
    choose_direct(tag, form, "no cuDNN engine: " + fused_status.message().substr(0, 120));
    return Status::Ok();
  }
  std::string ours_note;
  if (direct && tuning_enabled(node_) && (rec_mode.empty() || rec_mode == "direct")) {
    // Both timed at the maximum batch; the split form pays its epilogue too.
    const std::shared_ptr<Plan>& best = use_split ? split_plan : fused_plan;
    double cudnn_ms = best->ms;
    if (use_split && epilogue_ms == 0 && cudnn_ms > 0) {
      auto t = time_epilogue(split, br);
      cudnn_ms = t.ok() ? cudnn_ms + *t : 0;
    } else if (use_split) {
      cudnn_ms += epilogue_ms;
    }
    // Every form of ours that applies; the fastest is compared with cuDNN.
    std::string best_form, failures;
    double best_ms = 0;
    const Spec& sp = layer_.base;
    const int64_t c = layer_.unpadded_c ? layer_.unpadded_c : sp.c;
    const int x_dt = kernel_dtype(input_dtype(precision_));
    const bool tc_ok = small_ok && packed_->direct_tc_weights.ptr &&
                       kernels::direct_tensor_core_eligible(x_dt, sp.k, c, sp.r, sp.s);
    for (auto [form, id, ok] : {std::tuple{"fma", int(kernels::kDirectFma), small_ok},
                                std::tuple{"tc", int(kernels::kDirectTc), tc_ok},
                                std::tuple{"igemm", int(kernels::kDirectIgemm), igemm_ok},
                                std::tuple{"window", int(kernels::kDirectWindow), window_ok}}) {
      if (!ok) continue;
      auto t = time_direct(br, id);
      if (!t.ok()) failures += std::string("; ") + form + " failed: " + t.status().message();
      if (t.ok() && (best_form.empty() || *t < best_ms)) {
        best_form = form;
        best_ms = *t;
      }
    }
    if (!best_form.empty() && cudnn_ms > 0 && best_ms < cudnn_ms) {
      if (rec_mode.empty() && remember) {
        cache_choice(node_, mode_key, "direct");
        cache_choice(node_, form_key, best_form);
      }
      char buf[128];
      std::snprintf(buf, sizeof buf, "%s %.1f us, cuDNN %.1f us", best_form.c_str(), best_ms * 1e3,
                    cudnn_ms * 1e3);
      choose_direct(tag, best_form, buf);
      return Status::Ok();
    }
    // Why ours lost, for the layer's report.
    if (!best_form.empty()) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "; ours: %s %.1f us", best_form.c_str(), best_ms * 1e3);
      ours_note = buf;
    }
    ours_note += failures;
  }
  if (!fused_plan && !split_plan)
    return Unsupported(node_.describe() + ": no cuDNN engine runs this convolution at " +
                       std::string(precision_name(precision_)) + " (fused: " +
                       (fusable ? fused_status.message() : std::string("residual format differs")) +
                       "; split: " + split_status.message() + ")");
  std::shared_ptr<Plan> plan = use_split ? split_plan : fused_plan;
  mode_ = use_split ? Mode::kSplit : Mode::kFused;
  const std::string chosen = use_split ? split_choice : fused_choice;
  std::string note = (use_split ? split_note : fused_note) + ours_note;
  if (fused_plan && split_plan && fused_plan->ms > 0 && split_plan->ms > 0) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "; fused %.1f us, split %.1f + %.1f us", fused_plan->ms * 1e3,
                  split_plan->ms * 1e3, epilogue_ms * 1e3);
    note += buf;
  }
  if (rec_mode.empty() && remember) cache_choice(node_, mode_key, use_split ? "split" : "fused");
  prepared_ = plan;
  choice_ = chosen;
  const std::string recorded =
      tag + "|" + (mode_ == Mode::kFused ? "fused" : "split") + "|" + chosen;
  record_choice(node_, kChoiceAttr, recorded);
  // Its serialized plan too (kept as loaded where it still names this choice).
  std::string kept_mode, kept_choice, kept_json;
  if (!recorded_choice(fused, kept_mode, kept_choice, kept_json) || kept_json.empty()) {
    const std::string json = plan_json(*plan);
    if (json.empty())
      forget_choice(node_, kPlanAttr);
    else
      record_choice(node_, kPlanAttr, recorded + "|" + json);
  }
  const Spec& s = layer_.base;
  std::string epi;
  if (mode_ == Mode::kFused) {
    if (s.scale) epi += "+scale";
    if (s.bias) epi += "+bias";
    if (s.residual) epi += "+residual";
    if (s.act == kernels::kActRelu) epi += "+relu";
    if (s.act == kernels::kActClip) epi += "+clip";
  } else {
    epi = " +own epilogue";
  }
  impl_ = "cudnn graph " + std::string(mode_ == Mode::kFused ? "fused" : "split") + " conv" + epi +
          " " + type_name(s.xt) + "->" + type_name(s.yt) + " engine " + chosen +
          (plan->choice.runtime_compiled ? " (rtc)" : "") + " [" + note + "]";
  return Status::Ok();
}

Expected<std::unique_ptr<KernelInstance>> ConvKernel::instantiate(int64_t batch) const {
  if (mode_ == Mode::kDirect)
    return std::unique_ptr<KernelInstance>(new ConvInstance(*this, nullptr, mode_, batch));
  if (!prepared_) return Internal(node_.describe() + ": instantiate before prepare");
  if (batch == max_batch_)
    return std::unique_ptr<KernelInstance>(new ConvInstance(*this, prepared_, mode_, batch));
  MIXQ_ASSIGN_OR_RETURN(BuildResources br, build_resources());
  const Spec s = spec_at(batch, mode_);
  auto plan = plan_for(s, choice_, br, nullptr, nullptr);
  if (!plan.ok())
    return plan.status().with_context(node_.describe() + " at batch " + std::to_string(batch));
  return std::unique_ptr<KernelInstance>(new ConvInstance(*this, *plan, mode_, batch));
}

// Two convolutions in one step (kernels::window_chain): a FusedConv whose inputs 4 and 5 are the
// second convolution's weights and bias and whose "mixq.then." attributes are the second's own
// (CudaBackend::fuse_for_execution). Each half is a ConvKernel of the window form over a node of
// its own, rebuilt here from the chained node, so the packing and epilogue are the layers' own.
class ConvChainKernel final : public Kernel {
 public:
  ConvChainKernel(const ir::Node& node, Precision p) : node_(node), precision_(p) {}

  Status prepare(int64_t max_batch) override {
    MIXQ_RETURN_IF_ERROR(split());
    first_ = std::make_unique<ConvKernel>(parts_.first, precision_, true);
    second_ = std::make_unique<ConvKernel>(parts_.second, precision_, true);
    MIXQ_RETURN_IF_ERROR(first_->prepare(max_batch));
    MIXQ_RETURN_IF_ERROR(second_->prepare(max_batch));
    for (const ConvKernel* k : {first_.get(), second_.get()})
      if (k->mode_ != Mode::kDirect || k->direct_form_ != kernels::kDirectWindow)
        return Internal(k->node_.describe() +
                        ": a chained convolution runs the window form; it "
                        "chose " +
                        k->impl_);
    if (!kernels::window_chain_eligible(first_->direct_params(max_batch, kernels::kDirectWindow),
                                        second_->direct_params(max_batch, kernels::kDirectWindow)))
      return Unsupported(node_.describe() + ": its two convolutions do not fit one window chain");
    const std::string prefix = "mixq cuda window ";
    auto part = [&](const std::string& impl) {
      return impl.rfind(prefix, 0) == 0 ? impl.substr(prefix.size()) : impl;
    };
    impl_ = "mixq cuda window chain, the intermediate in shared memory from batch " +
            std::to_string(chain_from_batch()) + ": " + part(first_->impl_) + " -> " +
            part(second_->impl_);
    return Status::Ok();
  }

  Expected<std::unique_ptr<KernelInstance>> instantiate(int64_t batch) const override;
  std::string implementation() const override { return impl_; }

 private:
  friend class ConvChainInstance;

  // One block takes an image through both convolutions: with fewer images than 60% of the
  // multiprocessors the two run apart (bands and channel groups of their own, the intermediate in
  // scratch). LeNet int8 on an H100 (132): batch 1 15 us apart, 19 chained; 66: 25 and 26; 128:
  // 31 and 26.
  static int64_t chain_from_batch() { return std::max(1, kernels::sm_count() * 3 / 5); }

  // The two layers' nodes and the intermediate value between them (ir::split_conv_chain), the
  // build's determinism asked of both.
  Status split() {
    if (!node_.input(4)->is_constant())
      return InvalidArgument(node_.describe() +
                             ": the chained convolution's weights must be "
                             "constant");
    MIXQ_ASSIGN_OR_RETURN(parts_, ir::split_conv_chain(node_));
    if (const auto it = node_.attrs.find(kDeterministicAttr); it != node_.attrs.end())
      parts_.second.attrs[kDeterministicAttr] = it->second;
    return Status::Ok();
  }

  const ir::Node& node_;
  Precision precision_;
  ir::ConvChainParts parts_;
  std::unique_ptr<ConvKernel> first_, second_;
  std::string impl_ = "mixq cuda window chain";
};

class ConvChainInstance final : public KernelInstance {
 public:
  ConvChainInstance(const ConvChainKernel& k, int64_t batch)
      : k_(k),
        chained_(batch >= ConvChainKernel::chain_from_batch()),
        first_(k.first_->direct_params(batch, kernels::kDirectWindow)),
        second_(k.second_->direct_params(batch, kernels::kDirectWindow)) {
    if (!chained_)
      mid_bytes_ = align256(size_t(shape_numel(at_batch(k.parts_.mid->shape, batch))) *
                            dtype_size(k.parts_.mid->dtype));
  }
  size_t scratch_bytes() const override { return mid_bytes_; }
  bool waits_for_predecessor() const override { return true; }
  Status execute(const ExecContext& ctx) const override {
    cudaStream_t stream = resources_of(ctx).stream;
    kernels::DirectConvParams first = first_, second = second_;
    second.release_next = ctx.successor_waits && overlap_enabled();
    cudaError_t e = cudaSuccess;
    if (chained_) {
      e = kernels::window_chain(ctx.inputs[0].data, ctx.outputs[0].data, first, second, stream);
    } else {
      first.release_next = overlap_enabled();  // the second waits for it
      e = kernels::window_conv(ctx.inputs[0].data, ctx.scratch, first, stream);
      if (e == cudaSuccess)
        e = kernels::window_conv(ctx.scratch, ctx.outputs[0].data, second, stream);
    }
    if (e != cudaSuccess)
      return cuda_status(e, "chained window convolutions", __FILE__, __LINE__)
          .with_context(k_.node_.describe());
    return Status::Ok();
  }

 private:
  const ConvChainKernel& k_;
  bool chained_;
  size_t mid_bytes_ = 0;
  kernels::DirectConvParams first_, second_;
};

Expected<std::unique_ptr<KernelInstance>> ConvChainKernel::instantiate(int64_t batch) const {
  if (!first_ || !second_) return Internal(node_.describe() + ": instantiate before prepare");
  return std::unique_ptr<KernelInstance>(new ConvChainInstance(*this, batch));
}

// supports() answers are memoised per layer signature (the planner asks repeatedly).
std::mutex g_supports_mutex;
std::map<std::string, std::string> g_supports;  // signature -> "" (supported) or the reason

}  // namespace

bool conv_supports(const ir::Node& node, Precision p, std::string* why) {
  auto fail = [&](const std::string& m) {
    if (why) *why = m;
    return false;
  };
  if (node.op != ir::OpKind::kFusedConv) return fail("not a convolution");
  Status st = static_checks(node, p);
  if (!st.ok()) return fail(st.message());
  // Probe the graphs the kernel may build: y in the precision's own storage and in f32 (the
  // planner decides later), fused, else split. Nothing runs: heuristics only.
  const DType natural = input_dtype(p);
  std::vector<std::pair<DType, bool>> outputs = {{DType::kFloat32, false}};
  if (natural != DType::kFloat32) outputs.push_back({natural, quantized_precision(p)});
  std::string reasons;
  for (auto [dtype, quantized] : outputs) {
    auto layer = describe_layer(node, p, dtype, quantized, 0.5f, 0.25f);
    if (!layer.ok()) return fail(layer.status().message());
    const std::string key = std::string(precision_name(p)) + " " + layer->base.signature();
    {
      std::lock_guard<std::mutex> lock(g_supports_mutex);
      if (auto it = g_supports.find(key); it != g_supports.end()) {
        if (!it->second.empty()) return fail(it->second);
        continue;
      }
    }
    auto br = build_resources();
    if (!br.ok()) return fail(br.status().message());
    Status fused = probe(layer->base, br->res->cudnn);
    std::string reason;
    if (!fused.ok() && !direct_eligible(*layer, p) && !window_eligible(*layer, p, 1)) {
      Status split = probe(split_spec(layer->base, p), br->res->cudnn);
      if (!split.ok())
        reason = "cuDNN has no engine for this " + std::string(precision_name(p)) +
                 " convolution (" + std::string(dtype_name(natural)) + " -> " +
                 std::string(dtype_name(dtype)) + "): " + fused.message();
    }
    std::lock_guard<std::mutex> lock(g_supports_mutex);
    g_supports[key] = reason;
    if (!reason.empty()) return fail(reason);
  }
  return true;
}

bool conv_can_convert_input(const ir::Node& node, const ir::Value& source) {
  // Only where the window form runs anyway (an absorbed pool): elsewhere the layer's timed choice
  // may be another form, which the separate reformat leaves free.
  const ir::Value* x = node.input(0);
  if (!node.attrs.count(kPoolAttr) || node.attrs.count(kInputDtypeAttr) || !node.precision || !x ||
      x->dtype != input_dtype(*node.precision) || x->layout != ir::Layout::kNHWC)
    return false;
  if (x->quant &&
      (!x->quant->per_tensor() || x->quant->zero_point_at(0) != 0 || !(x->quant->scale[0] > 0.0f)))
    return false;
  if (quantized_precision(*node.precision) && !stored_quantized(*x)) return false;
  const bool nchw_like = source.layout == ir::Layout::kPlain || source.layout == ir::Layout::kNHWC;
  return nchw_like && source.shape_known && source.shape == x->shape &&
         value_grid(source).dt <= kernels::kE4M3 && (!source.quant || source.quant->per_tensor());
}

bool conv_can_pool(const ir::Node& node, int64_t pool_h, int64_t pool_w) {
  auto implementation = conv_implementation();
  if (!implementation.ok() || *implementation == ConvImplementation::kCudnn || !node.precision ||
      node.input(3) || !static_checks(node, *node.precision).ok())
    return false;
  const ir::Value* y = node.output(0);
  const bool y_quantized = stored_quantized(*y);
  auto layer = describe_layer(node, *node.precision, y->dtype, y_quantized,
                              y_quantized ? y->quant->scale[0] : 1.0f, 1.0f);
  if (!layer.ok() || layer->base.pool_h) return false;
  layer->base.pool_h = pool_h;
  layer->base.pool_w = pool_w;
  return value_grid(*node.input(0)).nhwc && value_grid(*y).nhwc &&
         window_eligible(*layer, *node.precision, 1);
}

Expected<std::unique_ptr<Kernel>> make_conv_kernel(const ir::Node& node, Precision precision) {
  return std::unique_ptr<Kernel>(new ConvKernel(node, precision));
}

bool conv_can_chain(const ir::Node& first, const ir::Node& second) {
  auto implementation = conv_implementation();
  if (!implementation.ok() || (*implementation != ConvImplementation::kAuto &&
                               *implementation != ConvImplementation::kWindow))
    return false;
  if (first.op != ir::OpKind::kFusedConv || second.op != ir::OpKind::kFusedConv ||
      !first.precision || first.precision != second.precision || first.input(3) ||
      second.input(3) || first.inputs.size() > 4 || second.inputs.size() > 4 ||
      second.attrs.count(kInputDtypeAttr) || !first.output(0) ||
      second.input(0) != first.output(0) || !second.output(0))
    return false;
  const Precision p = *first.precision;
  if (p == Precision::kFP32 || p == Precision::kTF32 || !static_checks(first, p).ok() ||
      !static_checks(second, p).ok())
    return false;
  const ir::Value* mid = first.output(0);
  const ir::Value* y = second.output(0);
  const bool mid_quantized = stored_quantized(*mid), y_quantized = stored_quantized(*y);
  if (mid->dtype != input_dtype(p) || mid->layout != ir::Layout::kNHWC ||
      (quantized_precision(p) &&
       (!mid_quantized || !mid->quant->per_tensor() || mid->quant->zero_point_at(0) != 0)) ||
      (y_quantized && y->quant->zero_point_at(0) != 0))
    return false;
  auto l1 = describe_layer(first, p, mid->dtype, mid_quantized,
                           mid_quantized ? mid->quant->scale[0] : 1.0f, 1.0f);
  auto l2 = describe_layer(second, p, y->dtype, y_quantized,
                           y_quantized ? y->quant->scale[0] : 1.0f, 1.0f);
  if (!l1.ok() || !l2.ok() || l1->base.geo.groups != 1 || l2->base.geo.groups != 1) return false;
  const bool convert = first.attrs.count(kInputDtypeAttr) != 0;
  if (!(convert || value_grid(*first.input(0)).nhwc) || !value_grid(*y).nhwc) return false;
  kernels::DirectConvParams p1 = direct_geometry(*l1, p, 1), p2 = direct_geometry(*l2, p, 1);
  p1.y_grid = value_grid(*mid);
  p1.convert_input = convert;
  p2.y_grid = value_grid(*y);
  return kernels::window_chain_eligible(p1, p2);
}

Expected<std::unique_ptr<Kernel>> make_conv_chain_kernel(const ir::Node& node,
                                                         Precision precision) {
  return std::unique_ptr<Kernel>(new ConvChainKernel(node, precision));
}

}  // namespace mixq::backends::cuda
