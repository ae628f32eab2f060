// Engine and Context: batch plans, buffer binding, execution, timing.
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <unordered_set>

#include "engine/engine_impl.h"
#include "runtime/interpreter.h"

namespace mixq {

using Clock = std::chrono::steady_clock;

static double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

// --- Engine::Impl ---------------------------------------------------------------------------------

Status Engine::Impl::finalize() {
  steps = graph->nodes();
  values = {};
  value_index.clear();
  for (const ir::Value* v : graph->values()) {
    value_index[v] = int(values.size());
    values.push_back(v);
  }
  inputs.clear();
  outputs.clear();
  for (const ir::Value* v : graph->inputs()) inputs.push_back({v->name, v->dtype, v->shape});
  for (const ir::Value* v : graph->outputs()) outputs.push_back({v->name, v->dtype, v->shape});
  kernels.clear();
  for (ir::Node* n : steps) {
    const Precision p = n->precision.value_or(Precision::kFP32);
    auto k = backend->create(*n, p);
    if (!k.ok()) return k.status().with_context(n->describe());
    Status s = (*k)->prepare(max_batch);
    if (!s.ok()) return s.with_context(n->describe());
    kernels.push_back(std::move(k).value());
  }
  return Status::Ok();
}

Expected<std::shared_ptr<const BatchPlan>> Engine::Impl::plan_for(int64_t batch) const {
  std::lock_guard<std::mutex> lock(mutex);
  if (auto it = plans.find(batch); it != plans.end()) return it->second;
  auto plan = std::make_shared<BatchPlan>();
  plan->batch = batch;
  // Concrete shapes at this batch, from the reference shape functions on a copy of the graph.
  // Ops the reference cannot type (int8 pooling...) keep their build-time shapes, whose only
  // symbolic dimension is the batch.
  auto copy = graph->clone();
  (void)runtime::infer_shapes(*copy, batch);
  const auto copy_values = copy->values();
  plan->shapes.resize(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    plan->shapes[i] = copy_values[i]->shape;
    for (int64_t& d : plan->shapes[i])
      if (d < 0) d = batch;
    for (int64_t d : plan->shapes[i])
      if (d < 0 && !values[i]->is_constant())
        return Unsupported("value '" + values[i]->name + "' has a shape " +
                           shape_to_string(plan->shapes[i]) + " unknown before run time");
  }
  for (size_t i = 0; i < steps.size(); ++i) {
    auto inst = kernels[i]->instantiate(batch);
    if (!inst.ok()) return inst.status().with_context(steps[i]->describe());
    plan->scratch_bytes = std::max(plan->scratch_bytes, (*inst)->scratch_bytes());
    plan->instances.push_back(std::move(inst).value());
  }
  // Arena: intermediates only (inputs are bound to the caller's tensors, outputs are returned).
  std::unordered_map<const ir::Value*, int> first, last;
  for (size_t i = 0; i < steps.size(); ++i) {
    for (const ir::Value* out : steps[i]->outputs)
      if (out) first.emplace(out, int(i)), last[out] = int(i);
    for (const ir::Value* in : steps[i]->inputs)
      if (in) last[in] = int(i);
  }
  std::vector<runtime::BufferRequest> requests;
  std::vector<size_t> requested_values;
  for (size_t i = 0; i < values.size(); ++i) {
    const ir::Value* v = values[i];
    if (v->is_constant() || graph->is_graph_input(v) || graph->is_graph_output(v) || !first.count(v))
      continue;
    requests.push_back({backend->buffer_bytes(*v, plan->shapes[i]), first[v], last[v]});
    requested_values.push_back(i);
  }
  const runtime::MemoryPlan mp = runtime::plan_memory(requests);
  plan->offsets.assign(values.size(), -1);
  for (size_t k = 0; k < requested_values.size(); ++k)
    plan->offsets[requested_values[k]] = int64_t(mp.offsets[k]);
  plan->arena_bytes = mp.arena_bytes;
  plans[batch] = plan;
  return std::shared_ptr<const BatchPlan>(plan);
}

// --- Engine ---------------------------------------------------------------------------------------

Engine::Engine(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::Engine(const Engine&) = default;
Engine& Engine::operator=(const Engine&) = default;
Engine::Engine(Engine&&) noexcept = default;
Engine& Engine::operator=(Engine&&) noexcept = default;
Engine::~Engine() = default;

const BuildReport& Engine::report() const { return impl_->report; }
const std::vector<TensorSpec>& Engine::inputs() const { return impl_->inputs; }
const std::vector<TensorSpec>& Engine::outputs() const { return impl_->outputs; }
int64_t Engine::max_batch() const { return impl_->max_batch; }

Expected<std::string> Engine::serialize() const { return serialize_engine(*impl_); }

Status Engine::save(const std::string& path) const {
  MIXQ_ASSIGN_OR_RETURN(std::string bytes, serialize());
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return IoError("cannot write engine file '" + path + "'");
    out.write(bytes.data(), std::streamsize(bytes.size()));
    if (!out) return IoError("writing engine file '" + path + "' failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    return IoError("cannot move the engine into place at '" + path + "'");
  return Status::Ok();
}

Expected<Engine> Engine::from_bytes(const std::string& bytes, const std::string& source) {
  MIXQ_ASSIGN_OR_RETURN(auto impl, deserialize_engine(bytes, source));
  return Engine(std::move(impl));
}

Expected<Engine> Engine::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("engine file '" + path + "' cannot be opened");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return from_bytes(bytes, "'" + path + "'");
}

// --- Context ----------------------------------------------------------------------------------------

struct Context::Impl {
  std::shared_ptr<const Engine::Impl> engine;
  std::unique_ptr<backends::ExecResources> resources;
  Tensor arena, scratch;
  bool profiling = false;
  std::unordered_set<std::string> capture_names;
  bool capture_all = false;
  std::vector<void*> pointers;  // per value index, for the current call
  std::vector<backends::Buffer> in_buffers, out_buffers;
};

Context::Context(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Context::Context(Context&&) noexcept = default;
Context& Context::operator=(Context&&) noexcept = default;
Context::~Context() = default;

Expected<Context> Engine::create_context() const {
  auto c = std::make_unique<Context::Impl>();
  c->engine = impl_;
  c->resources = impl_->backend->create_resources();
  return Context(std::move(c));
}

void Context::set_profiling(bool on) { impl_->profiling = on; }

void Context::capture(std::vector<std::string> names, bool all) {
  impl_->capture_names = {names.begin(), names.end()};
  impl_->capture_all = all;
}

namespace {

Status check_finite(const std::string& name, const Tensor& t) {
  if (t.dtype() != DType::kFloat32) return Status::Ok();
  const float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i)
    if (!std::isfinite(p[i]))
      return InvalidArgument("input '" + name + "' holds " + (std::isnan(p[i]) ? "NaN" : "an infinite value") +
                             " at flat index " + std::to_string(i));
  return Status::Ok();
}

}  // namespace

Expected<InferenceResult> Context::infer(const TensorMap& inputs) {
  const auto start = Clock::now();
  const Engine::Impl& e = *impl_->engine;
  const ir::Graph& g = *e.graph;

  // Inputs: names, dtypes, shapes, one batch size within the engine's maximum.
  std::string names;
  for (const ir::Value* in : g.inputs()) names += (names.empty() ? "'" : ", '") + in->name + "'";
  for (const auto& [name, t] : inputs) {
    const ir::Value* v = g.find_value(name);
    if (!v || !g.is_graph_input(v))
      return NotFound("the engine has no input named '" + name + "'; its inputs are " + names);
  }
  int64_t batch = -1;
  for (const ir::Value* in : g.inputs()) {
    auto it = inputs.find(in->name);
    if (it == inputs.end()) return InvalidArgument("input '" + in->name + "' is not given");
    const Tensor& t = it->second;
    if (!t.defined()) return InvalidArgument("input '" + in->name + "' is empty");
    if (t.dtype() != in->dtype)
      return InvalidArgument("input '" + in->name + "' has dtype " + std::string(dtype_name(t.dtype())) +
                             "; the engine expects " + std::string(dtype_name(in->dtype)));
    bool ok = t.rank() == int(in->shape.size());
    for (size_t i = 1; ok && i < in->shape.size(); ++i) ok = in->shape[i] < 0 || in->shape[i] == t.shape()[i];
    if (ok && !in->shape.empty() && in->shape[0] >= 0) ok = t.shape()[0] == in->shape[0];
    if (!ok)
      return InvalidArgument("input '" + in->name + "' has shape " + shape_to_string(t.shape()) +
                             "; the engine expects " + shape_to_string(in->shape) +
                             " (N: batch 1 to " + std::to_string(e.max_batch) + ")");
    const int64_t b = t.rank() ? t.shape()[0] : 1;
    if (batch < 0) batch = b;
    else if (b != batch)
      return InvalidArgument("inputs disagree on the batch size: '" + in->name + "' has " +
                             std::to_string(b) + ", another input " + std::to_string(batch));
    MIXQ_RETURN_IF_ERROR(check_finite(in->name, t));
  }
  if (batch < 0) batch = 1;
  if (batch < 1 || batch > e.max_batch)
    return InvalidArgument("batch size " + std::to_string(batch) + " is outside 1.." +
                           std::to_string(e.max_batch) + " (the engine's maximum batch)");
  MIXQ_ASSIGN_OR_RETURN(auto plan, e.plan_for(batch));

  if (size_t(impl_->arena.numel()) < plan->arena_bytes)
    impl_->arena = Tensor::empty(DType::kUInt8, {int64_t(plan->arena_bytes)});
  if (size_t(impl_->scratch.numel()) < plan->scratch_bytes)
    impl_->scratch = Tensor::empty(DType::kUInt8, {int64_t(plan->scratch_bytes)});

  InferenceResult result;
  auto& ptr = impl_->pointers;
  ptr.assign(e.values.size(), nullptr);
  for (size_t i = 0; i < e.values.size(); ++i) {
    const ir::Value* v = e.values[i];
    if (v->is_constant()) ptr[i] = const_cast<void*>(v->constant.raw());
    else if (plan->offsets[i] >= 0) ptr[i] = static_cast<char*>(impl_->arena.raw()) + plan->offsets[i];
  }
  for (const ir::Value* in : g.inputs())
    ptr[size_t(e.value_index.at(in))] = const_cast<void*>(inputs.at(in->name).raw());
  for (const ir::Value* out : g.outputs()) {
    const size_t idx = size_t(e.value_index.at(out));
    if (result.outputs.count(out->name)) continue;
    Tensor t = Tensor::empty(out->dtype, plan->shapes[idx]);
    if (out->is_constant() || g.is_graph_input(out)) {
      std::memcpy(t.raw(), ptr[idx], t.nbytes());
    } else {
      ptr[idx] = t.raw();
    }
    result.outputs[out->name] = t;
  }

  const auto compute_start = Clock::now();
  auto& ins = impl_->in_buffers;
  auto& outs = impl_->out_buffers;
  for (size_t s = 0; s < e.steps.size(); ++s) {
    const ir::Node& node = *e.steps[s];
    ins.clear();
    outs.clear();
    for (const ir::Value* v : node.inputs) {
      if (!v) {
        ins.push_back({});
        continue;
      }
      const size_t idx = size_t(e.value_index.at(v));
      ins.push_back({v, ptr[idx], plan->shapes[idx]});
    }
    for (const ir::Value* v : node.outputs) {
      if (!v) {
        outs.push_back({});
        continue;
      }
      const size_t idx = size_t(e.value_index.at(v));
      outs.push_back({v, ptr[idx], plan->shapes[idx]});
    }
    const int acc = e.kernels[s]->accumulates_into_output_from();
    if (acc >= 0 && ins[size_t(acc)].data != outs[0].data)
      std::memcpy(outs[0].data, ins[size_t(acc)].data, e.backend->buffer_bytes(*outs[0].value, outs[0].shape));
    backends::ExecContext ctx{ins, outs, impl_->resources.get(), impl_->scratch.raw()};
    const auto t0 = Clock::now();
    Status st = plan->instances[s]->execute(ctx);
    if (!st.ok()) return st.with_context(node.describe());
    if (impl_->profiling)
      result.layers.push_back({node.name, std::string(ir::op_name(node.op)),
                               node.precision.value_or(Precision::kFP32), ms_since(t0)});
    if (impl_->capture_all || !impl_->capture_names.empty()) {
      for (const backends::Buffer& b : outs) {
        if (!b.value) continue;
        if (!impl_->capture_all && !impl_->capture_names.count(b.value->name)) continue;
        auto t = e.backend->read_value(b);
        if (t.ok()) result.captured[b.value->name] = std::move(t).value();
      }
    }
  }
  result.timing.compute_ms = ms_since(compute_start);
  result.timing.end_to_end_ms = ms_since(start);
  return result;
}

}  // namespace mixq
