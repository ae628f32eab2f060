#include "engine/lower.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <unordered_map>
#include <unordered_set>

#include "ir/passes/passes.h"

namespace mixq::engine {

using ir::Node;
using ir::OpKind;
using ir::Value;

bool is_precision_follower(OpKind op) {
  switch (op) {
    case OpKind::kMaxPool:
    case OpKind::kGlobalMaxPool:
    case OpKind::kRelu:
    case OpKind::kFlatten:
    case OpKind::kReshape:
    case OpKind::kSqueeze:
    case OpKind::kUnsqueeze:
    case OpKind::kTranspose:
    case OpKind::kConcat:
    case OpKind::kIdentity:
      return true;
    default:
      return false;
  }
}

bool preserves_quantization(OpKind op) {
  return is_precision_follower(op) || op == OpKind::kAveragePool ||
         op == OpKind::kGlobalAveragePool;
}

bool is_weighted_layer(OpKind op) {
  return op == OpKind::kConv || op == OpKind::kGemm || op == OpKind::kMatMul ||
         op == OpKind::kFusedConv || op == OpKind::kFusedGemm;
}

bool single_consumer(const ir::Graph& g, const Value* v, Node** consumer) {
  if (g.is_graph_output(v)) return false;
  auto users = g.consumers(v);
  if (users.size() != 1) return false;
  // The value must be read once by that consumer (Add(x, x) is not a residual).
  int reads = 0;
  for (const Value* in : users[0]->inputs) reads += in == v;
  if (reads != 1) return false;
  *consumer = users[0];
  return true;
}

void append_fused(Node* layer, const Node* absorbed) {
  std::vector<std::string> fused;
  auto it = layer->attrs.find("mixq.fused");
  if (it != layer->attrs.end()) fused = std::get<std::vector<std::string>>(it->second);
  fused.push_back(absorbed->name);
  // And what the absorbed node had absorbed (a chained convolution's activation and pool).
  if (auto own = absorbed->attrs.find("mixq.fused"); own != absorbed->attrs.end())
    for (const std::string& name : std::get<std::vector<std::string>>(own->second))
      fused.push_back(name);
  layer->attrs["mixq.fused"] = fused;
}

namespace {

std::optional<Precision> requested(const quant::PrecisionPlan& plan, const Node* n) {
  auto it = plan.layers.find(n->name);
  if (it == plan.layers.end()) return std::nullopt;
  return it->second.precision;
}

Tensor transpose_2d(const Tensor& t) {
  const int64_t rows = t.dim(0), cols = t.dim(1);
  Tensor out = Tensor::empty(DType::kFloat32, {cols, rows});
  const float* src = t.data<float>();
  float* dst = out.data<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * rows + r] = src[r * cols + c];
  return out;
}

bool scalar_constant(const Value* v, float* out) {
  if (!v || !v->is_constant() || v->constant.numel() != 1 || !dtype_is_float(v->dtype))
    return false;
  *out = float(v->constant.get_as_double(0));
  return true;
}

// Plans say whether an epilogue node may merge into its producer: only when it asks for nothing
// different.
bool compatible(const quant::PrecisionPlan& plan, const Node* layer, const Node* epilogue) {
  const auto want = requested(plan, epilogue);
  return !want || want == requested(plan, layer);
}

// Moves `epilogue`'s output onto `layer`; the epilogue is dropped when fusion ends (removing it
// now would free a node the caller's node list still holds).
void absorb(Node* layer, Node* epilogue, std::vector<Node*>& doomed) {
  Value* old_out = layer->outputs[0];
  Value* new_out = epilogue->outputs[0];
  layer->outputs[0] = new_out;
  new_out->producer = layer;
  old_out->producer = nullptr;
  append_fused(layer, epilogue);
  doomed.push_back(epilogue);
}

}  // namespace

// --- Q/DQ absorption
// ------------------------------------------------------------------------------

namespace {

Expected<ir::QuantParams> qparams_of(const Node* n) {
  const Value* scale = n->input(1);
  const Value* zp = n->input(2);
  if (!scale || !scale->is_constant())
    return Unsupported(n->describe() + ": its scale is not a constant");
  if (zp && !zp->is_constant())
    return Unsupported(n->describe() + ": its zero point is not a constant");
  ir::QuantParams q;
  q.scale = scale->constant.to_float_vector();
  for (float s : q.scale)
    if (!(s > 0) || !std::isfinite(s))
      return InvalidArgument(n->describe() + ": scale " + std::to_string(s) +
                             " is not a positive finite number");
  q.dtype = zp ? zp->dtype : DType::kUInt8;
  if (zp) {
    for (int64_t z : zp->constant.to_int64_vector()) q.zero_point.push_back(int32_t(z));
    if (zp->dtype == DType::kFloat8E4M3) q.zero_point.clear();
  }
  q.axis = int(n->attr_int("axis", 1));
  return q;
}

bool same_params(const ir::QuantParams& a, const ir::QuantParams& b) {
  return a.scale == b.scale && a.dtype == b.dtype && a.zero_point == b.zero_point &&
         (a.per_tensor() || a.axis == b.axis);
}

}  // namespace

Status absorb_qdq(ir::Graph& g, quant::PrecisionPlan& plan) {
  std::vector<Node*> doomed;
  std::unordered_set<const Node*> handled;
  auto mark_int8_consumers = [&](Value* v) {
    for (Node* c : g.consumers(v)) {
      if (!is_weighted_layer(c->op) && c->op != OpKind::kAdd) continue;
      auto& req = plan.layers[c->name];
      if (!req.precision) {
        req.precision = Precision::kINT8;
        req.source = "Q/DQ nodes in the model";
      }
    }
  };
  for (Node* dq : g.nodes()) {
    if (dq->op != OpKind::kDequantizeLinear || handled.count(dq)) continue;
    Value* x = dq->input(0);
    Value* y = dq->output(0);
    MIXQ_ASSIGN_OR_RETURN(ir::QuantParams q, qparams_of(dq));
    const int rank =
        y->shape_known ? int(y->shape.size()) : (x->shape_known ? int(x->shape.size()) : 0);
    if (q.axis < 0) q.axis += rank;
    if (x->is_constant()) {
      // Quantised weights (or an int32 bias): fold to fp32, remember the exact grid.
      if (x->dtype == DType::kInt32) q.dtype = DType::kInt32;
      if (!q.per_tensor() && (q.axis < 0 || q.axis >= x->constant.rank()))
        return InvalidArgument(dq->describe() + ": axis out of range");
      Tensor real = Tensor::empty(DType::kFloat32, x->constant.shape());
      int64_t inner = 1;
      for (int d = q.axis + 1; d < x->constant.rank(); ++d) inner *= x->constant.dim(d);
      const int64_t channels = int64_t(q.scale.size());
      for (int64_t i = 0; i < real.numel(); ++i) {
        const size_t c = q.per_tensor() ? 0 : size_t((i / inner) % channels);
        double v = x->dtype == DType::kFloat8E4M3
                       ? x->constant.get_as_double(i)
                       : x->constant.get_as_double(i) - q.zero_point_at(c);
        real.data<float>()[i] = float(v * q.scale[c]);
      }
      Value* folded =
          g.add_constant(g.unique_value_name(y->name + "/dequantized"), std::move(real));
      if (q.dtype != DType::kInt32) plan.value_quant[folded->name] = q;
      if (!ir::forward_value(g, y, folded)) continue;
      doomed.push_back(dq);
      handled.insert(dq);
      continue;
    }
    Node* qn = x->producer;
    if (!qn || qn->op != OpKind::kQuantizeLinear) continue;  // a lone DQ of a model input: keep
    MIXQ_ASSIGN_OR_RETURN(ir::QuantParams qq, qparams_of(qn));
    if (qq.axis < 0) qq.axis += rank;
    if (!same_params(q, qq))
      return Unsupported(qn->describe() + " and " + dq->describe() +
                         " use different scales or zero points; mixq absorbs matching Q/DQ pairs");
    Value* real = qn->input(0);
    if (real->is_constant()) {
      // Fake-quantised fp32 weights: keep the quantised values as the weights.
      std::vector<Tensor> outs;
      Tensor w = real->constant;
      ir::QuantParams p = q;
      Tensor rounded = Tensor::empty(DType::kFloat32, w.shape());
      int64_t inner = 1;
      for (int d = p.axis + 1; d < w.rank(); ++d) inner *= w.dim(d);
      const int64_t channels = int64_t(p.scale.size());
      const double lo = p.dtype == DType::kUInt8 ? 0 : -128,
                   hi = p.dtype == DType::kUInt8 ? 255 : 127;
      for (int64_t i = 0; i < w.numel(); ++i) {
        const size_t c = p.per_tensor() ? 0 : size_t((i / inner) % channels);
        double qv = std::nearbyint(w.get_as_double(i) / p.scale[c]) + p.zero_point_at(c);
        qv = std::clamp(qv, lo, hi);
        rounded.data<float>()[i] = float((qv - p.zero_point_at(c)) * p.scale[c]);
      }
      Value* folded =
          g.add_constant(g.unique_value_name(y->name + "/fake_quantized"), std::move(rounded));
      plan.value_quant[folded->name] = p;
      if (!ir::forward_value(g, y, folded)) continue;
      doomed.push_back(dq);
      handled.insert(dq);
      continue;
    }
    // An activation: the consumers read the real value, with its quantisation recorded.
    if (q.dtype == DType::kInt32)
      return Unsupported(dq->describe() + ": int32 activations are not supported");
    // A grid that starts at real zero (u8 with zero point 0) also clamps negatives away:
    // quantizers fold a Relu into it this way. Keep that clamp as an explicit Relu (which fuses
    // into the producing layer) so it survives where the value ends up in fp32.
    const bool clamps_at_zero = q.dtype != DType::kFloat8E4M3 &&
                                q.zero_point_at(0) == (q.dtype == DType::kUInt8 ? 0 : -128);
    Node* producer = real->producer;
    const bool already_clamped =
        producer &&
        (producer->op == OpKind::kRelu ||
         (producer->op == OpKind::kClip && producer->input(1) &&
          producer->input(1)->is_constant() && producer->input(1)->constant.get_as_double(0) >= 0));
    Value* target = real;
    if (clamps_at_zero && !already_clamped) {
      target = g.add_value(g.unique_value_name(real->name + "/clamped"), real->dtype, real->shape,
                           real->shape_known);
      Node* relu =
          g.add_node(OpKind::kRelu, g.unique_node_name(dq->name + "/clamp"), {real}, {target});
      relu->module_name = producer ? producer->module_name : "";
    }
    if (!plan.value_quant.count(target->name)) plan.value_quant[target->name] = q;
    if (!ir::forward_value(g, y, target)) continue;
    mark_int8_consumers(target);
    doomed.push_back(dq);
    handled.insert(dq);
  }
  if (!doomed.empty()) g.remove_nodes(doomed);
  // Quantize nodes now feeding nothing disappear with dead-node removal.
  MIXQ_RETURN_IF_ERROR(ir::remove_dead_nodes(g));
  return g.toposort();
}

// --- fusion
// ---------------------------------------------------------------------------------------

Status fuse_layers(ir::Graph& g, const quant::PrecisionPlan& plan) {
  std::vector<Node*> doomed;
  auto gone = [&](const Node* n) {
    return std::find(doomed.begin(), doomed.end(), n) != doomed.end();
  };
  // 1. Gemm / MatMul(+Add bias) -> FusedGemm with weights [N, K].
  for (Node* n : g.nodes()) {
    if (gone(n)) continue;
    if (n->op == OpKind::kGemm) {
      Value* a = n->input(0);
      Value* b = n->input(1);
      Value* c = n->input(2);
      if (n->attr_int("transA", 0) != 0 || !b || !b->is_constant() || b->dtype != DType::kFloat32 ||
          b->constant.rank() != 2 || !a->shape_known || a->shape.size() != 2)
        continue;
      Tensor w = n->attr_int("transB", 0) ? b->constant.clone() : transpose_2d(b->constant);
      const int64_t N = w.dim(0);
      const float alpha = n->attr_float("alpha", 1.0f), beta = n->attr_float("beta", 1.0f);
      if (alpha != 1.0f)
        for (int64_t i = 0; i < w.numel(); ++i) w.data<float>()[i] *= alpha;
      Value* bias = nullptr;
      if (c) {
        if (!c->is_constant() || !(c->constant.numel() == N || c->constant.numel() == 1) ||
            c->dtype != DType::kFloat32)
          continue;
        Tensor bt = Tensor::empty(DType::kFloat32, {N});
        for (int64_t i = 0; i < N; ++i)
          bt.data<float>()[i] =
              beta * float(c->constant.get_as_double(c->constant.numel() == 1 ? 0 : i));
        bias = g.add_constant(g.unique_value_name(c->name + "/bias"), std::move(bt));
      }
      Value* wv = b;
      if (n->attr_int("transB", 0) == 0 || alpha != 1.0f)
        wv = g.add_constant(g.unique_value_name(b->name + "/nk"), std::move(w));
      n->op = OpKind::kFusedGemm;
      n->inputs = {a, wv};
      if (bias) n->inputs.push_back(bias);
      n->attrs = {{"transB", int64_t(1)}};
    } else if (n->op == OpKind::kMatMul) {
      Value* a = n->input(0);
      Value* b = n->input(1);
      if (!b || !b->is_constant() || b->dtype != DType::kFloat32 || b->constant.rank() != 2 ||
          !a->shape_known || a->shape.size() != 2)
        continue;
      Value* wv = g.add_constant(g.unique_value_name(b->name + "/nk"), transpose_2d(b->constant));
      n->op = OpKind::kFusedGemm;
      n->inputs = {a, wv};
      n->attrs = {{"transB", int64_t(1)}};
      // A following Add of a [N] constant is the bias.
      Node* add = nullptr;
      if (single_consumer(g, n->outputs[0], &add) && add->op == OpKind::kAdd &&
          compatible(plan, n, add)) {
        Value* other = add->input(0) == n->outputs[0] ? add->input(1) : add->input(0);
        if (other->is_constant() && other->dtype == DType::kFloat32 &&
            other->constant.numel() == wv->constant.dim(0) &&
            (other->constant.rank() == 1 ||
             (other->constant.rank() == 2 && other->constant.dim(0) == 1))) {
          Value* bias = g.add_constant(g.unique_value_name(other->name + "/bias"),
                                       other->constant.reshaped({other->constant.numel()}));
          n->inputs.push_back(bias);
          absorb(n, add, doomed);
        }
      }
    }
  }
  // 2. Conv -> FusedConv.
  for (Node* n : g.nodes())
    if (n->op == OpKind::kConv) n->op = OpKind::kFusedConv;

  // 3. Residual Add, then activation.
  for (Node* n : g.nodes()) {
    if (gone(n) || (n->op != OpKind::kFusedConv && n->op != OpKind::kFusedGemm)) continue;
    Node* next = nullptr;
    if (n->op == OpKind::kFusedConv && single_consumer(g, n->outputs[0], &next) &&
        next->op == OpKind::kAdd && compatible(plan, n, next)) {
      Value* other = next->input(0) == n->outputs[0] ? next->input(1) : next->input(0);
      const Value* out = n->outputs[0];
      if (!other->is_constant() && other->shape_known && out->shape_known &&
          other->shape == out->shape && other->dtype == DType::kFloat32) {
        if (n->inputs.size() < 3) n->inputs.resize(3, nullptr);
        n->inputs.resize(4);
        n->inputs[3] = other;
        absorb(n, next, doomed);
      }
    }
    if (single_consumer(g, n->outputs[0], &next) && compatible(plan, n, next)) {
      float lo = 0, hi = 0;
      if (next->op == OpKind::kRelu) {
        n->attrs["mixq.activation"] = std::string("relu");
        absorb(n, next, doomed);
      } else if (next->op == OpKind::kClip &&
                 (!next->input(1) || scalar_constant(next->input(1), &lo)) &&
                 (!next->input(2) || scalar_constant(next->input(2), &hi))) {
        n->attrs["mixq.activation"] = std::string("clip");
        n->attrs["mixq.clip_min"] = next->input(1) ? lo : -INFINITY;
        n->attrs["mixq.clip_max"] = next->input(2) ? hi : INFINITY;
        absorb(n, next, doomed);
      }
    }
  }
  // Trailing absent inputs (a residual without bias keeps a null bias slot).
  g.remove_nodes(doomed);
  g.remove_unused_values();
  return g.toposort();
}

// --- precision assignment
// -------------------------------------------------------------------------

Expected<PrecisionAssignment> assign_precisions(ir::Graph& g, const quant::PrecisionPlan& plan,
                                                const backends::Backend& backend,
                                                Precision default_precision, bool allow_fallback) {
  PrecisionAssignment result;
  std::vector<std::string> errors;
  for (Node* n : g.nodes()) {
    LayerReport r;
    r.name = n->name;
    r.op = std::string(ir::op_name(n->op));
    r.module = n->module_name;
    if (auto it = n->attrs.find("mixq.fused"); it != n->attrs.end())
      r.fused = std::get<std::vector<std::string>>(it->second);
    const ir::NodeCost cost = ir::node_cost(*n);
    r.params = cost.params;
    r.macs = cost.macs;

    const auto explicit_request = requested(plan, n);
    Precision want = default_precision;
    bool is_default = !explicit_request;
    if (explicit_request) {
      want = *explicit_request;
    } else if (is_precision_follower(n->op)) {
      // Follow the producers: int8 in, int8 out (likewise fp8, fp16, bf16) when every activation
      // input comes from layers of one precision.
      std::optional<Precision> common;
      bool same = true;
      for (const Value* in : n->inputs) {
        if (!in || in->is_constant()) continue;
        const Precision p =
            in->producer && in->producer->precision ? *in->producer->precision : Precision::kFP32;
        if (common && *common != p) same = false;
        common = p;
      }
      want = common && same ? *common : Precision::kFP32;
      if (want == Precision::kTF32) want = Precision::kFP32;
    }
    r.requested = want;
    std::string why;
    Precision got = want;
    if (!backend.supports(*n, want, &why)) {
      if (is_default) {
        // The default applies where a kernel exists; elsewhere fp32 (reported, not an error).
        got = Precision::kFP32;
        std::string why32;
        if (!backend.supports(*n, got, &why32)) {
          errors.push_back(n->describe() + ": cannot run on the " + std::string(backend.name()) +
                           " backend: " + why32);
          continue;
        }
        r.fallback_reason = "default precision " + std::string(precision_name(want)) +
                            " not available (" + why + "): runs " +
                            std::string(precision_name(got));
      } else if (allow_fallback) {
        std::optional<Precision> next = precision_fallback(want);
        std::string chain = why;
        while (next && !backend.supports(*n, *next, &why)) {
          chain += "; " + std::string(precision_name(*next)) + ": " + why;
          next = precision_fallback(*next);
        }
        if (!next) {
          errors.push_back(n->describe() + ": no precision at or above " +
                           std::string(precision_name(want)) + " runs on the " +
                           std::string(backend.name()) + " backend (" + chain + ")");
          continue;
        }
        got = *next;
        r.fallback_reason = std::string(precision_name(want)) + " -> " +
                            std::string(precision_name(got)) + ": " + chain;
        result.fallbacks.push_back(n->name + " (" + r.op + "): " + r.fallback_reason);
      } else {
        errors.push_back(n->describe() +
                         (n->module_name.empty() ? "" : " (module '" + n->module_name + "')") +
                         ": " + std::string(precision_name(want)) + " was requested but the " +
                         std::string(backend.name()) + " backend cannot run it: " + why);
        continue;
      }
    }
    n->precision = got;
    r.actual = got;
    result.layers.push_back(std::move(r));
  }
  if (!errors.empty()) {
    std::string msg =
        std::to_string(errors.size()) + " layer(s) cannot run at the requested precision";
    msg += allow_fallback ? ":" : " (allow fallback to let them run at the nearest higher one):";
    for (const auto& e : errors) msg += "\n  " + e;
    return Unsupported(msg);
  }
  return result;
}

// --- ranges and quantisation
// ----------------------------------------------------------------------

namespace {

bool quantized_precision(std::optional<Precision> p) {
  return p == Precision::kINT8 || p == Precision::kFP8;
}
bool consumes_int8(const Node* n) {
  return quantized_precision(n->precision);
}

// Activation inputs of a node (not weights or biases).
std::vector<size_t> activation_slots(const Node* n) {
  switch (n->op) {
    case OpKind::kFusedConv:
    case OpKind::kFusedGemm: {
      std::vector<size_t> s = {0};
      if (n->input(3)) s.push_back(3);
      return s;
    }
    case OpKind::kConv:
    case OpKind::kGemm:
    case OpKind::kMatMul:
      return {0};
    default: {
      std::vector<size_t> s;
      for (size_t i = 0; i < n->inputs.size(); ++i)
        if (n->inputs[i] && !n->inputs[i]->is_constant()) s.push_back(i);
      return s;
    }
  }
}

bool wants_asymmetric(const quant::PrecisionPlan& plan, const Node* n) {
  auto it = plan.layers.find(n->name);
  return it != plan.layers.end() && it->second.symmetric && !*it->second.symmetric;
}

// Union-find over values that must share quantisation parameters.
struct Ties {
  std::unordered_map<const Value*, const Value*> parent;
  const Value* find(const Value* v) {
    auto it = parent.find(v);
    if (it == parent.end() || it->second == v) return v;
    const Value* root = find(it->second);
    parent[v] = root;
    return root;
  }
  void join(const Value* a, const Value* b) {
    const Value* ra = find(a);
    const Value* rb = find(b);
    if (ra != rb) parent[ra] = rb;
  }
};

// Which values are stored quantised: produced by an int8/fp8 node and read by at least one
// quantised node (or written by an op that keeps its input's quantisation). Where the readers are
// of the other quantised family (fp8 -> int8 at a plan's switch), the value keeps its producer's
// format and one requantising reformat serves them: storing it in fp32 instead cost a dequantize,
// a quantize and the fused residual of the block that ends there.
bool stored_quantized(const ir::Graph& g, const Value* v) {
  if (v->is_constant()) return false;
  if (!v->producer || !quantized_precision(v->producer->precision)) return false;
  if (preserves_quantization(v->producer->op)) return true;  // int8 in, int8 out
  for (const Node* c : g.consumers(v))
    if (consumes_int8(c)) return true;
  return false;
}

}  // namespace

RangeNeeds values_needing_ranges(const ir::Graph& g, const quant::PrecisionPlan& plan) {
  RangeNeeds needs;
  for (const Node* n : g.nodes()) {
    if (!quantized_precision(n->precision)) continue;
    const bool follower = preserves_quantization(n->op);
    for (size_t slot : activation_slots(n)) {
      const Value* v = n->input(slot);
      // A follower's int8 input already has parameters from its int8 producer's output.
      if (follower && v->producer && v->producer->precision == n->precision) continue;
      if (plan.value_quant.count(v->name) || plan.value_ranges.count(v->name)) continue;
      needs.values.insert(v->name);
      // Network inputs (images, normalised data) are bounded and often lopsided: an asymmetric
      // min/max range keeps their whole span; entropy would clip the bright side away.
      if (wants_asymmetric(plan, n) || g.is_graph_input(v)) needs.asymmetric.insert(v->name);
    }
    if (follower) continue;
    for (const Value* out : n->outputs) {
      if (!out || !stored_quantized(g, out)) continue;
      if (plan.value_quant.count(out->name) || plan.value_ranges.count(out->name)) continue;
      needs.values.insert(out->name);
    }
  }
  // Followers tie their output to their input: the input needs a range, the output does not.
  for (const Node* n : g.nodes())
    if (quantized_precision(n->precision) && preserves_quantization(n->op))
      for (const Value* out : n->outputs)
        if (out) needs.values.erase(out->name);
  return needs;
}

namespace {

ir::QuantParams params_from_range(const quant::Range& r, bool symmetric, const QuantPolicy& policy,
                                  Precision precision = Precision::kINT8) {
  ir::QuantParams q;
  if (precision == Precision::kFP8) {
    // e4m3: a float grid, symmetric by nature; 448 is its largest finite value.
    q.dtype = DType::kFloat8E4M3;
    q.scale = {std::max(std::max(std::fabs(r.min), std::fabs(r.max)) / 448.0f, 1e-12f)};
    return q;
  }
  q.dtype = policy.activation_dtype;
  const float lo = std::min(r.min, 0.0f), hi = std::max(r.max, 0.0f);
  const float tiny = 1e-8f;
  if (policy.activation_dtype == DType::kUInt8) {
    if (lo >= 0) {
      q.scale = {std::max(hi / 255.0f, tiny)};
      q.zero_point = {0};
    } else if (symmetric) {
      q.scale = {std::max(std::max(-lo, hi) / 127.0f, tiny)};
      q.zero_point = {128};
    } else {
      const float scale = std::max((hi - lo) / 255.0f, tiny);
      q.scale = {scale};
      q.zero_point = {int32_t(std::clamp(std::nearbyint(-lo / scale), 0.0f, 255.0f))};
    }
  } else {
    q.scale = {std::max(std::max(-lo, hi) / 127.0f, tiny)};
    q.zero_point = {0};
  }
  return q;
}

quant::Range range_of_params(const ir::QuantParams& q) {
  const float s = q.scale[0];
  if (q.dtype == DType::kFloat8E4M3) return {-448.0f * s, 448.0f * s};
  const int32_t z = q.zero_point_at(0);
  const int lo = q.dtype == DType::kUInt8 ? 0 : -128, hi = q.dtype == DType::kUInt8 ? 255 : 127;
  return {float(lo - z) * s, float(hi - z) * s};
}

// Per-output-channel (axis 0) symmetric int8 weights, or e4m3 weights with per-channel scales.
Expected<Tensor> quantize_weights(const Tensor& w, const ir::QuantParams* exact, bool per_tensor,
                                  int qmax, ir::QuantParams& params, bool fp8 = false) {
  const int64_t channels = w.dim(0);
  const int64_t per = channels ? w.numel() / channels : 0;
  params = {};
  params.dtype = DType::kInt8;
  params.axis = 0;
  const float* p = w.data<float>();
  if (fp8) {
    params.dtype = DType::kFloat8E4M3;
    params.scale.assign(size_t(channels), 1.0f);
    float global = 0;
    for (int64_t i = 0; i < w.numel(); ++i) global = std::max(global, std::fabs(p[i]));
    Tensor q = Tensor::empty(DType::kFloat8E4M3, w.shape());
    for (int64_t c = 0; c < channels; ++c) {
      float m = 0;
      for (int64_t i = 0; i < per; ++i) m = std::max(m, std::fabs(p[c * per + i]));
      if (!std::isfinite(m)) return InvalidArgument("weights hold NaN or infinite values");
      const float bound = per_tensor ? global : m;
      params.scale[size_t(c)] = bound > 0 ? bound / 448.0f : 1.0f;
      for (int64_t i = 0; i < per; ++i)
        q.data<Float8E4M3>()[c * per + i] =
            float_to_fp8e4m3(p[c * per + i] / params.scale[size_t(c)]);
    }
    return q;
  }
  if (exact && exact->dtype == DType::kInt8 && exact->zero_point_at(0) == 0) {
    // The model's own grid (QAT / Q/DQ): keep it when it fits this policy's range.
    params.scale =
        exact->per_tensor() ? std::vector<float>(size_t(channels), exact->scale[0]) : exact->scale;
    if (int64_t(params.scale.size()) == channels) {
      bool fits = true;
      for (int64_t c = 0; c < channels && fits; ++c)
        for (int64_t i = 0; i < per && fits; ++i)
          fits = std::fabs(std::nearbyint(p[c * per + i] / params.scale[size_t(c)])) <= qmax;
      if (fits) {
        Tensor q = Tensor::empty(DType::kInt8, w.shape());
        for (int64_t c = 0; c < channels; ++c)
          for (int64_t i = 0; i < per; ++i)
            q.data<int8_t>()[c * per + i] =
                int8_t(std::nearbyint(p[c * per + i] / params.scale[size_t(c)]));
        return q;
      }
    }
  }
  params.scale.assign(size_t(channels), 1.0f);
  float global = 0;
  for (int64_t i = 0; i < w.numel(); ++i) global = std::max(global, std::fabs(p[i]));
  for (int64_t c = 0; c < channels; ++c) {
    float m = 0;
    for (int64_t i = 0; i < per; ++i) m = std::max(m, std::fabs(p[c * per + i]));
    if (!std::isfinite(m)) return InvalidArgument("weights hold NaN or infinite values");
    const float bound = per_tensor ? global : m;
    params.scale[size_t(c)] = bound > 0 ? bound / float(qmax) : 1.0f;
  }
  Tensor q = Tensor::empty(DType::kInt8, w.shape());
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t i = 0; i < per; ++i) {
      const float v = std::nearbyint(p[c * per + i] / params.scale[size_t(c)]);
      q.data<int8_t>()[c * per + i] = int8_t(std::clamp(v, float(-qmax), float(qmax)));
    }
  return q;
}

}  // namespace

Status quantize(ir::Graph& g, const quant::PrecisionPlan& plan,
                const std::map<std::string, quant::Range>& ranges, const QuantPolicy& policy) {
  // 1. Tie values that must share parameters: follower in/out, Concat inputs/output.
  Ties ties;
  for (const Node* n : g.nodes()) {
    if (!quantized_precision(n->precision) || !preserves_quantization(n->op)) continue;
    for (size_t slot : activation_slots(n))
      for (const Value* out : n->outputs)
        if (out) ties.join(n->input(slot), out);
  }
  // 2. One parameter set per group: exact Q/DQ parameters first, else the union of ranges.
  std::unordered_map<const Value*, quant::Range> group_range;
  std::unordered_map<const Value*, ir::QuantParams> group_exact;
  std::unordered_map<const Value*, bool> group_asymmetric;
  for (const Value* v : g.values()) {
    if (v->is_constant()) continue;
    const Value* root = ties.find(v);
    if (auto it = plan.value_quant.find(v->name); it != plan.value_quant.end())
      if (!group_exact.count(root)) group_exact[root] = it->second;
    std::optional<quant::Range> r;
    if (auto it = plan.value_ranges.find(v->name); it != plan.value_ranges.end())
      r = it->second;
    else if (auto it2 = ranges.find(v->name); it2 != ranges.end())
      r = it2->second;
    if (r) {
      auto [it, fresh] = group_range.try_emplace(root, *r);
      if (!fresh) it->second = {std::min(it->second.min, r->min), std::max(it->second.max, r->max)};
    }
  }
  for (const Node* n : g.nodes())
    if (quantized_precision(n->precision) && wants_asymmetric(plan, n))
      for (size_t slot : activation_slots(n)) group_asymmetric[ties.find(n->input(slot))] = true;
  // Calibrated network inputs get asymmetric ranges (see values_needing_ranges); ranges the
  // plan gives follow the plan's symmetric/asymmetric setting.
  for (const Value* in : g.inputs())
    if (!plan.value_ranges.count(in->name) && !plan.value_quant.count(in->name))
      group_asymmetric[ties.find(in)] = true;

  auto params_for = [&](const Value* v, Precision family) -> std::optional<ir::QuantParams> {
    const Value* root = ties.find(v);
    if (family == Precision::kFP8) {
      if (auto it = group_exact.find(root); it != group_exact.end()) {
        if (it->second.dtype == DType::kFloat8E4M3) return it->second;
        return params_from_range(range_of_params(it->second), true, policy, family);
      }
      if (auto it = group_range.find(root); it != group_range.end())
        return params_from_range(it->second, true, policy, family);
      return std::nullopt;
    }
    if (auto it = group_exact.find(root); it != group_exact.end()) {
      ir::QuantParams q = it->second;
      if (q.dtype == policy.activation_dtype) return q;
      // Same real grid in this backend's storage type (s8 symmetric <-> u8 with zero point 128).
      if (q.dtype == DType::kInt8 && policy.activation_dtype == DType::kUInt8) {
        for (auto& z : q.zero_point) z += 128;
        if (q.zero_point.empty()) q.zero_point = {128};
        q.dtype = DType::kUInt8;
        return q;
      }
      if (q.dtype == DType::kUInt8 && policy.activation_dtype == DType::kInt8) {
        return params_from_range(range_of_params(q), true, policy);
      }
      return q;
    }
    if (auto it = group_range.find(root); it != group_range.end())
      return params_from_range(it->second, !group_asymmetric.count(root), policy);
    return std::nullopt;
  };

  // 3. Every activation an int8 node reads, and every int8 output read by int8 nodes, gets
  // parameters; storage dtype follows.
  std::vector<std::string> missing;
  for (Value* v : g.values()) {
    if (v->is_constant()) continue;
    bool needed = stored_quantized(g, v);
    for (const Node* c : g.consumers(v))
      if (consumes_int8(c)) {
        for (size_t slot : activation_slots(c)) needed |= c->input(slot) == v;
      }
    if (!needed) continue;
    // The quantised family: the producer's, else the first quantised consumer's.
    Precision family = Precision::kINT8;
    if (v->producer && quantized_precision(v->producer->precision))
      family = *v->producer->precision;
    else
      for (const Node* c : g.consumers(v))
        if (consumes_int8(c)) {
          family = *c->precision;
          break;
        }
    auto q = params_for(v, family);
    if (!q) {
      missing.push_back(v->name);
      continue;
    }
    v->quant = *q;
    if (stored_quantized(g, v)) v->dtype = q->dtype;
  }
  if (!missing.empty()) {
    std::string list;
    for (size_t i = 0; i < missing.size() && i < 12; ++i)
      list += (i ? ", '" : "'") + missing[i] + "'";
    if (missing.size() > 12) list += ", and " + std::to_string(missing.size() - 12) + " more";
    return FailedPrecondition(std::to_string(missing.size()) +
                              " value(s) read by int8 layers have no range: " + list +
                              ". Give calibration data or ranges (QAT tracked ranges, plan ranges, "
                              "Q/DQ nodes)");
  }

  // 4. Weights of int8 and fp8 layers.
  for (Node* n : g.nodes()) {
    if (!quantized_precision(n->precision) || !is_weighted_layer(n->op)) continue;
    const bool fp8 = n->precision == Precision::kFP8;
    Value* w = n->input(1);
    if (!w || !w->is_constant() || w->dtype != DType::kFloat32)
      return Unsupported(n->describe() + ": " + std::string(precision_name(*n->precision)) +
                         " needs constant fp32 weights");
    auto exact = plan.value_quant.find(w->name);
    bool per_tensor = false;
    if (auto it = plan.layers.find(n->name); it != plan.layers.end() && it->second.weights)
      per_tensor = *it->second.weights == quant::WeightGranularity::kPerTensor;
    ir::QuantParams wq;
    auto qw =
        quantize_weights(w->constant, exact == plan.value_quant.end() ? nullptr : &exact->second,
                         per_tensor, policy.weight_qmax, wq, fp8);
    if (!qw.ok()) return qw.status().with_context(n->describe());
    Value* nw = g.add_constant(g.unique_value_name(w->name + (fp8 ? "/fp8" : "/int8")),
                               std::move(qw).value());
    nw->quant = wq;
    n->inputs[1] = nw;
  }

  // 5. 16-bit floats: a value written by an fp16/bf16 layer and read by one of the same
  // precision stays in that format (weights stay fp32 constants: kernels convert them once).
  for (Value* v : g.values()) {
    if (v->is_constant() || !v->producer || v->dtype != DType::kFloat32) continue;
    const auto p = v->producer->precision;
    if (p != Precision::kFP16 && p != Precision::kBF16) continue;
    bool keep = preserves_quantization(v->producer->op);
    for (const Node* c : g.consumers(v)) keep |= c->precision == p;
    if (keep) v->dtype = p == Precision::kFP16 ? DType::kFloat16 : DType::kBFloat16;
  }
  g.remove_unused_values();
  return Status::Ok();
}

// --- reformats
// --------------------------------------------------------------------------------------

namespace {

bool same_form(const Value* a, DType dtype, const std::optional<ir::QuantParams>& q,
               ir::Layout layout) {
  if (a->dtype != dtype || a->layout != layout) return false;
  if (!q) return true;
  return a->quant && same_params(*a->quant, *q);
}

}  // namespace

Status insert_reformats(ir::Graph& g, const backends::Backend& backend) {
  const QuantPolicy policy = backend.quant_policy();
  // (source value, target dtype, target layout) -> converted value, shared between consumers.
  std::map<std::tuple<const Value*, DType, ir::Layout>, Value*> made;
  auto convert = [&](Value* v, DType dtype, const std::optional<ir::QuantParams>& q,
                     ir::Layout layout, Precision precision) -> Value* {
    auto key = std::make_tuple(static_cast<const Value*>(v), dtype, layout);
    if (auto it = made.find(key); it != made.end()) return it->second;
    const bool quantized = q.has_value();
    const bool source_quantized =
        v->quant && v->dtype != DType::kFloat32 && dtype_size(v->dtype) == 1;
    const bool same_grid = quantized && source_quantized && same_params(*v->quant, *q);
    const std::string suffix = quantized && !source_quantized   ? "/quantized"
                               : quantized && !same_grid        ? "/requantized"
                               : source_quantized && !quantized ? "/dequantized"
                               : dtype != v->dtype              ? "/converted"
                                                                : "/reordered";
    Value* out =
        g.add_value(g.unique_value_name(v->name + suffix), dtype, v->shape, v->shape_known);
    if (quantized) out->quant = q;
    out->layout = layout;
    Node* r = g.add_node(OpKind::kReformat, g.unique_node_name(v->name + suffix), {v}, {out});
    r->precision = precision;
    made[key] = out;
    return out;
  };
  for (Node* n : g.nodes()) {
    if (n->op == OpKind::kReformat) continue;
    const Precision p = n->precision.value_or(Precision::kFP32);
    for (size_t slot : activation_slots(n)) {
      Value* v = n->inputs[slot];
      if (!v || v->is_constant()) continue;
      if (!dtype_is_float(v->dtype) && !v->quant) continue;  // integer shapes and indices
      const ir::Layout layout = backend.required_input_layout(*n, slot);
      Precision want = p;
      // A fused residual is accumulated into the output: it takes the output's format.
      if (slot == 3 && (n->op == OpKind::kFusedConv || n->op == OpKind::kFusedGemm)) {
        const Value* y = n->output(0);
        if (!y->quant || y->dtype == DType::kFloat32)
          want = y->dtype == DType::kFloat16    ? Precision::kFP16
                 : y->dtype == DType::kBFloat16 ? Precision::kBF16
                                                : Precision::kFP32;
      }
      DType dtype = DType::kFloat32;
      std::optional<ir::QuantParams> q;
      if (want == Precision::kINT8 || want == Precision::kFP8) {
        if (!v->quant)
          return Internal(n->describe() + ": " + std::string(precision_name(want)) + " input '" +
                          v->name + "' has no parameters");
        const bool fp8_grid = v->quant->dtype == DType::kFloat8E4M3;
        if ((want == Precision::kFP8) == fp8_grid)
          q = v->quant;
        else
          q = params_from_range(range_of_params(*v->quant), true, policy, want);
        dtype = q->dtype;
      } else if (want == Precision::kFP16) {
        dtype = DType::kFloat16;
      } else if (want == Precision::kBF16) {
        dtype = DType::kBFloat16;
      }
      if (!same_form(v, dtype, q, layout)) n->inputs[slot] = convert(v, dtype, q, layout, want);
    }
  }
  // Graph outputs: plain fp32 under their original names.
  for (Value*& out : g.outputs()) {
    if (out->dtype == DType::kFloat32 && out->layout == ir::Layout::kPlain) continue;
    if (!out->quant && !dtype_is_float(out->dtype)) continue;  // e.g. int64 indices
    const std::string name = out->name;
    Value* src = out;
    g.rename_value(src, g.unique_value_name(name + "/engine"));
    Value* f = g.add_value(name, DType::kFloat32, src->shape, src->shape_known);
    Node* r = g.add_node(OpKind::kReformat, g.unique_node_name(name + "/output"), {src}, {f});
    r->precision = Precision::kFP32;
    out = f;
  }
  return g.toposort();
}

}  // namespace mixq::engine
