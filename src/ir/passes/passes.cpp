#include "ir/passes/passes.h"

#include <cmath>
#include <limits>
#include <optional>
#include <unordered_map>
#include <unordered_set>

namespace mixq::ir {
namespace {

void set_changed(bool* changed) {
  if (changed) *changed = true;
}

bool is_used(const Graph& graph, const Value* v) {
  return graph.is_graph_output(v) || !graph.consumers(v).empty();
}

}  // namespace

bool forward_value_impl(Graph& graph, Value* value, Value* replacement) {
  if (!graph.is_graph_output(value)) {
    graph.replace_all_uses(value, replacement);
    return true;
  }
  // `value` is what the user sees: move its name onto `replacement` if that is a plain
  // intermediate nobody else exposes.
  if (replacement->is_constant() || graph.is_graph_input(replacement) ||
      graph.is_graph_output(replacement) || !replacement->producer)
    return false;
  const std::string name = value->name;
  graph.replace_all_uses(value, replacement);
  graph.rename_value(value, graph.unique_value_name(name + "/forwarded"));
  graph.rename_value(replacement, name);
  return true;
}

bool forward_value(Graph& graph, Value* value, Value* replacement) {
  return forward_value_impl(graph, value, replacement);
}

// --- identity removal
// -----------------------------------------------------------------------------

Status remove_identities(Graph& graph, bool* changed) {
  std::vector<Node*> doomed;
  for (Node* n : graph.nodes()) {
    if (n->op != OpKind::kIdentity && n->op != OpKind::kDropout) continue;
    if (n->op == OpKind::kDropout) {
      if (n->output(1) && is_used(graph, n->output(1))) continue;  // mask is read: keep
      // Dropout with training_mode=true as an input cannot be removed.
      if (n->input(2) &&
          !(n->input(2)->is_constant() && n->input(2)->constant.get_as_double(0) == 0))
        continue;
    }
    Value* in = n->input(0);
    Value* out = n->output(0);
    if (!in || !out) continue;
    if (forward_value_impl(graph, out, in)) {
      doomed.push_back(n);
    }
  }
  if (!doomed.empty()) {
    graph.remove_nodes(doomed);
    graph.remove_unused_values();
    set_changed(changed);
  }
  return Status::Ok();
}

// --- constant folding
// -----------------------------------------------------------------------------

namespace {

// A shape element known statically, or "dimension `dim` of value `source`" (symbolic).
struct SymDim {
  int64_t value = 0;
  const Value* source = nullptr;
  int dim = -1;
  bool symbolic() const { return source != nullptr; }
};
using SymVec = std::vector<SymDim>;

std::optional<std::vector<int64_t>> constant_ints(const Value* v) {
  if (!v || !v->is_constant()) return std::nullopt;
  if (v->dtype != DType::kInt64 && v->dtype != DType::kInt32) return std::nullopt;
  return v->constant.to_int64_vector();
}

class ShapeFolder {
 public:
  explicit ShapeFolder(Graph& graph) : graph_(graph) {}

  // Returns the symbolic vector for a value, if known.
  const SymVec* get(const Value* v) const {
    auto it = sym_.find(v);
    return it == sym_.end() ? nullptr : &it->second;
  }

  // Tries to describe node's output symbolically; returns true if it did.
  bool visit(const Node& n) {
    const Value* out = n.output(0);
    if (!out) return false;
    auto sym_or_const = [&](const Value* v) -> std::optional<SymVec> {
      if (const SymVec* s = get(v)) return *s;
      if (auto c = constant_ints(v)) {
        SymVec r;
        for (int64_t x : *c) r.push_back({x});
        return r;
      }
      return std::nullopt;
    };
    switch (n.op) {
      case OpKind::kShape: {
        const Value* x = n.input(0);
        if (!x || !x->shape_known) return false;
        const int64_t rank = int64_t(x->shape.size());
        int64_t start = n.attr_int("start", 0), end = n.attr_int("end", rank);
        if (start < 0) start += rank;
        if (end < 0) end += rank;
        start = std::clamp<int64_t>(start, 0, rank);
        end = std::clamp<int64_t>(end, 0, rank);
        SymVec r;
        for (int64_t i = start; i < end; ++i) {
          if (x->shape[size_t(i)] >= 0)
            r.push_back({x->shape[size_t(i)]});
          else
            r.push_back({0, x, int(i)});
        }
        sym_[out] = r;
        return true;
      }
      case OpKind::kCast:
      case OpKind::kIdentity: {
        auto s = sym_or_const(n.input(0));
        if (!s || !get(n.input(0))) return false;
        if (n.op == OpKind::kCast && n.attr_int("to", -1) != int64_t(DType::kInt64) &&
            n.attr_int("to", -1) != int64_t(DType::kInt32))
          return false;
        sym_[out] = *s;
        return true;
      }
      case OpKind::kGather: {
        const SymVec* data = get(n.input(0));
        auto idx = constant_ints(n.input(1));
        if (!data || !idx || n.attr_int("axis", 0) != 0) return false;
        SymVec r;
        for (int64_t i : *idx) {
          if (i < 0) i += int64_t(data->size());
          if (i < 0 || i >= int64_t(data->size())) return false;
          r.push_back((*data)[size_t(i)]);
        }
        sym_[out] = r;  // a scalar index gives a 0-d value; the elements are what matter here
        return true;
      }
      case OpKind::kUnsqueeze:
      case OpKind::kSqueeze: {
        const SymVec* data = get(n.input(0));
        if (!data || data->size() > 1) return false;
        sym_[out] = *data;
        return true;
      }
      case OpKind::kConcat: {
        if (n.attr_int("axis", 0) != 0 && n.attr_int("axis", 0) != -1) return false;
        SymVec r;
        bool any_symbolic = false;
        for (const Value* in : n.inputs) {
          auto s = sym_or_const(in);
          if (!s) return false;
          any_symbolic |= get(in) != nullptr;
          r.insert(r.end(), s->begin(), s->end());
        }
        if (!any_symbolic) return false;
        sym_[out] = r;
        return true;
      }
      case OpKind::kSlice: {
        const SymVec* data = get(n.input(0));
        auto starts = constant_ints(n.input(1)), ends = constant_ints(n.input(2));
        if (!data || !starts || !ends || starts->size() != 1) return false;
        if (n.input(3)) {
          auto axes = constant_ints(n.input(3));
          if (!axes || axes->size() != 1 || ((*axes)[0] != 0 && (*axes)[0] != -1)) return false;
        }
        int64_t step = 1;
        if (n.input(4)) {
          auto steps = constant_ints(n.input(4));
          if (!steps || steps->size() != 1) return false;
          step = (*steps)[0];
        }
        if (step != 1) return false;
        const int64_t size = int64_t(data->size());
        int64_t s = (*starts)[0], e = (*ends)[0];
        if (s < 0) s += size;
        if (e < 0) e += size;
        s = std::clamp<int64_t>(s, 0, size);
        e = std::clamp<int64_t>(e, 0, size);
        SymVec r(data->begin() + s, data->begin() + std::max(s, e));
        sym_[out] = r;
        return true;
      }
      default:
        return false;
    }
  }

 private:
  Graph& graph_;
  std::unordered_map<const Value*, SymVec> sym_;
};

Tensor int64_tensor_like(const Value* v, const std::vector<int64_t>& values) {
  Shape shape = v->shape_known ? v->shape : Shape{int64_t(values.size())};
  if (shape_numel(shape) != int64_t(values.size()) || v->shape_known == false) {
    shape = values.size() == 1 && v->shape_known && v->shape.empty()
                ? Shape{}
                : Shape{int64_t(values.size())};
  }
  Tensor t = Tensor::from_vector<int64_t>(shape, values);
  return v->dtype == DType::kInt64 ? t : t.to(v->dtype);
}

}  // namespace

Status fold_constants(Graph& graph, const NodeEvaluator& evaluate,
                      const ShapeRefresher& refresh_shapes, bool* changed) {
  ShapeFolder shapes(graph);
  std::vector<Node*> doomed;
  for (Node* n : graph.nodes()) {
    if (refresh_shapes) refresh_shapes(*n);
    if (n->op == OpKind::kQuantizeLinear || n->op == OpKind::kDequantizeLinear) continue;
    bool all_constant = true;
    for (const Value* in : n->inputs)
      if (in && !in->is_constant()) all_constant = false;
    if (all_constant) {
      std::vector<Tensor> inputs, outputs;
      for (const Value* in : n->inputs) inputs.push_back(in ? in->constant : Tensor());
      Status s = evaluate(*n, inputs, outputs);
      if (!s.ok()) return s.with_context("constant folding");
      for (size_t k = 0; k < n->outputs.size(); ++k) {
        Value* out = n->outputs[k];
        if (!out) continue;
        out->constant = outputs[k];
        out->dtype = outputs[k].dtype();
        out->shape = outputs[k].shape();
        out->shape_known = true;
      }
      doomed.push_back(n);
      continue;
    }
    if (shapes.visit(*n)) {
      // Fully static after all: becomes a constant.
      const SymVec& s = *shapes.get(n->output(0));
      bool is_static = true;
      for (const SymDim& d : s) is_static &= !d.symbolic();
      if (is_static) {
        std::vector<int64_t> values;
        for (const SymDim& d : s) values.push_back(d.value);
        Value* out = n->output(0);
        out->constant = int64_tensor_like(out, values);
        out->dtype = out->constant.dtype();
        out->shape = out->constant.shape();
        out->shape_known = true;
        doomed.push_back(n);
      }
      continue;
    }
    if (n->op == OpKind::kReshape && n->input(1) && !n->input(1)->is_constant()) {
      const SymVec* target = shapes.get(n->input(1));
      const Value* data = n->input(0);
      if (!target || !data) continue;
      int symbolic = 0, minus_one = 0;
      size_t sym_pos = 0;
      for (size_t i = 0; i < target->size(); ++i) {
        if ((*target)[i].symbolic()) {
          ++symbolic;
          sym_pos = i;
        } else if ((*target)[i].value == -1) {
          ++minus_one;
        }
      }
      if (symbolic != 1) continue;
      std::vector<int64_t> values;
      for (const SymDim& d : *target) values.push_back(d.value);
      const SymDim& sd = (*target)[sym_pos];
      if (minus_one == 0) {
        values[sym_pos] = -1;  // the only unknown: Reshape infers it from the element count
      } else if (sym_pos == 0 && sd.dim == 0 && data->shape_known && !data->shape.empty() &&
                 data->shape[0] < 0 && n->attr_int("allowzero", 0) == 0) {
        values[0] = 0;  // the batch carried through: copy it from the input
      } else {
        continue;
      }
      Value* c = graph.add_constant(graph.unique_value_name(n->name + "/shape"),
                                    Tensor::from_vector<int64_t>({int64_t(values.size())}, values));
      n->inputs[1] = c;
      set_changed(changed);
    }
  }
  if (!doomed.empty()) {
    graph.remove_nodes(doomed);
    set_changed(changed);
  }
  return Status::Ok();
}

// --- batch-norm folding
// ---------------------------------------------------------------------------

Status fold_batchnorm(Graph& graph, bool* changed) {
  std::vector<Node*> doomed;
  for (Node* bn : graph.nodes()) {
    if (bn->op != OpKind::kBatchNormalization) continue;
    if (bn->outputs.size() > 1 && std::any_of(bn->outputs.begin() + 1, bn->outputs.end(),
                                              [](Value* v) { return v != nullptr; }))
      continue;
    Value* x = bn->input(0);
    Node* layer = x ? x->producer : nullptr;
    if (!layer || (layer->op != OpKind::kConv && layer->op != OpKind::kGemm)) continue;
    if (graph.is_graph_output(x) || graph.consumers(x).size() != 1) continue;
    bool params_constant = true;
    for (size_t i = 1; i < 5; ++i) params_constant &= bn->input(i) && bn->input(i)->is_constant();
    Value* w = layer->input(1);
    if (!params_constant || !w || !w->is_constant() || w->dtype != DType::kFloat32) continue;
    Value* b = layer->input(2);
    if (b && (!b->is_constant() || b->dtype != DType::kFloat32)) continue;

    const std::vector<float> gamma = bn->input(1)->constant.to_float_vector();
    const std::vector<float> beta = bn->input(2)->constant.to_float_vector();
    const std::vector<float> mean = bn->input(3)->constant.to_float_vector();
    const std::vector<float> var = bn->input(4)->constant.to_float_vector();
    const double eps = bn->attr_float("epsilon", 1e-5f);
    const size_t channels = gamma.size();

    Tensor new_w = w->constant.clone();
    size_t out_channels = 0;
    bool gemm_columns = false;  // Gemm with transB=0: output channels are B's columns
    if (layer->op == OpKind::kConv) {
      out_channels = size_t(w->constant.dim(0));
    } else {
      gemm_columns = layer->attr_int("transB", 0) == 0;
      if (w->constant.rank() != 2) continue;
      out_channels = size_t(gemm_columns ? w->constant.dim(1) : w->constant.dim(0));
      if (b && b->constant.numel() != int64_t(out_channels) && b->constant.numel() != 1) continue;
    }
    if (out_channels != channels || beta.size() != channels || mean.size() != channels ||
        var.size() != channels)
      continue;
    std::vector<double> scale(channels);
    for (size_t c = 0; c < channels; ++c) scale[c] = gamma[c] / std::sqrt(double(var[c]) + eps);
    float* wp = new_w.data<float>();
    const int64_t total = new_w.numel();
    if (!gemm_columns) {
      const int64_t per = total / int64_t(channels);
      for (size_t c = 0; c < channels; ++c)
        for (int64_t i = 0; i < per; ++i)
          wp[int64_t(c) * per + i] = float(wp[int64_t(c) * per + i] * scale[c]);
    } else {
      const int64_t rows = new_w.dim(0);
      for (int64_t r = 0; r < rows; ++r)
        for (size_t c = 0; c < channels; ++c)
          wp[r * int64_t(channels) + int64_t(c)] =
              float(wp[r * int64_t(channels) + int64_t(c)] * scale[c]);
    }
    // Gemm computes alpha*A*B + beta*C: the bias term scales by beta.
    const double beta_gemm = layer->op == OpKind::kGemm ? layer->attr_float("beta", 1.0f) : 1.0;
    Tensor new_b = Tensor::empty(DType::kFloat32, {int64_t(channels)});
    for (size_t c = 0; c < channels; ++c) {
      double bias = 0;
      if (b)
        bias = b->constant.numel() == 1 ? b->constant.get_as_double(0)
                                        : b->constant.get_as_double(int64_t(c));
      bias *= beta_gemm;
      new_b.data<float>()[c] = float((bias - mean[c]) * scale[c] + beta[c]);
    }
    Value* nw =
        graph.add_constant(graph.unique_value_name(w->name + "/bn_folded"), std::move(new_w));
    Value* nb = graph.add_constant(
        graph.unique_value_name((b ? b->name : layer->name + "/bias") + "/bn_folded"),
        std::move(new_b));
    layer->inputs[1] = nw;
    if (layer->inputs.size() < 3) layer->inputs.resize(3, nullptr);
    layer->inputs[2] = nb;
    if (layer->op == OpKind::kGemm) layer->attrs["beta"] = 1.0f;
    // The layer now produces what the BN produced.
    Value* y = bn->output(0);
    if (!forward_value_impl(graph, y, x)) {
      // Restore nothing: the weights are folded, so the BN must go; fall back to making the
      // layer write y directly.
      layer->outputs[0] = y;
      y->producer = layer;
      x->producer = nullptr;
    }
    doomed.push_back(bn);
    set_changed(changed);
  }
  if (!doomed.empty()) {
    graph.remove_nodes(doomed);
    graph.remove_unused_values();
  }
  return Status::Ok();
}

// --- dead code
// --------------------------------------------------------------------------------------

Status remove_dead_nodes(Graph& graph, bool* changed) {
  for (;;) {
    std::unordered_set<const Value*> read(graph.outputs().begin(), graph.outputs().end());
    for (const Node* n : graph.nodes())
      for (const Value* in : n->inputs) read.insert(in);
    std::vector<Node*> doomed;
    for (Node* n : graph.nodes()) {
      bool any_read = false;
      for (const Value* out : n->outputs) any_read |= out && read.count(out);
      if (!any_read) doomed.push_back(n);
    }
    if (doomed.empty()) break;
    graph.remove_nodes(doomed);
    set_changed(changed);
  }
  graph.remove_unused_values();
  return Status::Ok();
}

Status simplify(Graph& graph, const NodeEvaluator& evaluate, const ShapeRefresher& refresh_shapes,
                const SimplifyOptions& options) {
  for (int round = 0; round < 16; ++round) {
    bool changed = false;
    MIXQ_RETURN_IF_ERROR(remove_identities(graph, &changed));
    MIXQ_RETURN_IF_ERROR(fold_constants(graph, evaluate, refresh_shapes, &changed));
    if (options.fold_batchnorm) MIXQ_RETURN_IF_ERROR(fold_batchnorm(graph, &changed));
    MIXQ_RETURN_IF_ERROR(remove_dead_nodes(graph, &changed));
    if (!changed) break;
  }
  MIXQ_RETURN_IF_ERROR(graph.toposort());
  return verify(graph);
}

}  // namespace mixq::ir
