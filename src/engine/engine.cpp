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

// --- Engine::Impl
// ---------------------------------------------------------------------------------

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
  prepare_seconds.clear();
  std::vector<std::unique_ptr<backends::Kernel>> created;
  for (ir::Node* n : steps) {
    auto k = backend->create(*n, n->precision.value_or(Precision::kFP32));
    if (!k.ok()) return k.status().with_context(n->describe());
    created.push_back(std::move(k).value());
  }
  // All kernels first start what can overlap (plan compilation), then each is prepared in order.
  for (auto& k : created) k->precompile(max_batch);
  for (size_t i = 0; i < created.size(); ++i) {
    const auto start = Clock::now();
    Status s = created[i]->prepare(max_batch);
    if (!s.ok()) return s.with_context(steps[i]->describe());
    prepare_seconds.push_back(ms_since(start) / 1000.0);
  }
  kernels = std::move(created);
  return Status::Ok();
}

namespace {

bool same_quant(const ir::Value& a, const ir::Value& b) {
  if (a.quant.has_value() != b.quant.has_value()) return false;
  if (!a.quant) return true;
  return a.quant->dtype == b.quant->dtype && a.quant->scale == b.quant->scale &&
         a.quant->zero_point == b.quant->zero_point && a.quant->axis == b.quant->axis;
}

// Whether step `n` only reinterprets its input's bytes: a shape-only op (Flatten, Reshape,
// Squeeze, Unsqueeze, Identity, Dropout) or a Reformat that changes nothing but the layout of an
// image with one pixel (NCHW and NHWC bytes agree), with dtype, quantisation and size unchanged.
// Values that cross the engine's boundary keep their own buffers.
bool is_view_step(const ir::Graph& g, const ir::Node& n, const backends::Backend& backend,
                  const Shape& in_shape, const Shape& out_shape) {
  if (n.inputs.empty() || n.outputs.size() != 1) return false;
  const ir::Value* in = n.input(0);
  const ir::Value* out = n.output(0);
  if (!in || !out || in->is_constant() || g.is_graph_output(out) || g.is_graph_input(in))
    return false;
  for (size_t i = 1; i < n.inputs.size(); ++i)
    if (n.inputs[i] && !n.inputs[i]->is_constant()) return false;
  if (in->dtype != out->dtype || !same_quant(*in, *out)) return false;
  if (backend.buffer_bytes(*in, in_shape) != backend.buffer_bytes(*out, out_shape)) return false;
  if (ir::keeps_element_order(n.op))
    return in->layout == ir::Layout::kPlain && out->layout == ir::Layout::kPlain;
  if (n.op != ir::OpKind::kReformat) return false;
  const auto one_pixel = [](const Shape& s) { return s.size() == 4 && s[2] == 1 && s[3] == 1; };
  const auto nchw_like = [](ir::Layout l) {
    return l == ir::Layout::kPlain || l == ir::Layout::kNHWC;
  };
  return nchw_like(in->layout) && nchw_like(out->layout) && in_shape == out_shape &&
         (in->layout == out->layout || one_pixel(in_shape));
}

}  // namespace

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
  // Views share their input's buffer (followed to the value that owns it).
  plan->alias_root.assign(values.size(), -1);
  plan->is_view.assign(steps.size(), false);
  auto root_of = [&](const ir::Value* v) -> const ir::Value* {
    const int idx = value_index.at(v);
    return plan->alias_root[size_t(idx)] >= 0 ? values[size_t(plan->alias_root[size_t(idx)])] : v;
  };
  for (size_t i = 0; i < steps.size(); ++i) {
    const ir::Node& n = *steps[i];
    if (!n.outputs.empty() && n.output(0) && !n.inputs.empty() && n.input(0) &&
        kernels[i]->accumulates_into_output_from() < 0 &&
        is_view_step(*graph, n, *backend, plan->shapes[size_t(value_index.at(n.input(0)))],
                     plan->shapes[size_t(value_index.at(n.output(0)))])) {
      plan->is_view[i] = true;
      plan->alias_root[size_t(value_index.at(n.output(0)))] = value_index.at(root_of(n.input(0)));
    }
  }
  // Arena: intermediates only (inputs are bound to the caller's tensors, outputs are returned).
  // A view extends the life of the buffer it shares.
  std::unordered_map<const ir::Value*, int> first, last;
  for (size_t i = 0; i < steps.size(); ++i) {
    for (const ir::Value* out : steps[i]->outputs)
      if (out)
        first.emplace(root_of(out), int(i)),
            last[root_of(out)] = std::max(last[root_of(out)], int(i));
    for (const ir::Value* in : steps[i]->inputs)
      if (in) last[root_of(in)] = std::max(last[root_of(in)], int(i));
  }
  std::vector<runtime::BufferRequest> requests;
  std::vector<size_t> requested_values;
  for (size_t i = 0; i < values.size(); ++i) {
    const ir::Value* v = values[i];
    if (v->is_constant() || graph->is_graph_input(v) || graph->is_graph_output(v) ||
        !first.count(v) || plan->alias_root[i] >= 0)
      continue;
    requests.push_back({backend->buffer_bytes(*v, plan->shapes[i]), first[v], last[v]});
    requested_values.push_back(i);
  }
  const runtime::MemoryPlan mp = runtime::plan_memory(requests);
  plan->offsets.assign(values.size(), -1);
  for (size_t k = 0; k < requested_values.size(); ++k)
    plan->offsets[requested_values[k]] = int64_t(mp.offsets[k]);
  for (size_t i = 0; i < values.size(); ++i)
    if (plan->alias_root[i] >= 0) plan->offsets[i] = plan->offsets[size_t(plan->alias_root[i])];
  plan->arena_bytes = mp.arena_bytes;
  plans[batch] = plan;
  return std::shared_ptr<const BatchPlan>(plan);
}

// --- Engine
// ---------------------------------------------------------------------------------------

Engine::Engine(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::Engine(const Engine&) = default;
Engine& Engine::operator=(const Engine&) = default;
Engine::Engine(Engine&&) noexcept = default;
Engine& Engine::operator=(Engine&&) noexcept = default;
Engine::~Engine() = default;

const BuildReport& Engine::report() const {
  return impl_->report;
}
const std::vector<TensorSpec>& Engine::inputs() const {
  return impl_->inputs;
}
const std::vector<TensorSpec>& Engine::outputs() const {
  return impl_->outputs;
}
int64_t Engine::max_batch() const {
  return impl_->max_batch;
}

Expected<std::string> Engine::serialize() const {
  return serialize_engine(*impl_);
}

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

// --- Context
// ----------------------------------------------------------------------------------------

struct Context::Impl {
  std::shared_ptr<const Engine::Impl> engine;
  std::unique_ptr<backends::ExecResources> resources;
  Tensor arena, scratch;
  // Device backends: arena, scratch and I/O live on the device; I/O is staged in pinned memory.
  struct DeviceIo {
    std::shared_ptr<void> device, pinned;
    size_t bytes = 0;
  };
  std::shared_ptr<void> device_arena, device_scratch;
  size_t device_arena_bytes = 0, device_scratch_bytes = 0;
  std::map<std::string, DeviceIo> device_io;  // by graph input/output name
  // Captured step loops by batch and by which inputs come from, and outputs go to, the host
  // (their copies through the pinned buffers are part of the graph; device-side ones are not).
  std::map<std::pair<int64_t, std::vector<bool>>, std::shared_ptr<void>> graphs;
  bool graphs_disabled = false;
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

void Context::set_profiling(bool on) {
  impl_->profiling = on;
}

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
      return InvalidArgument("input '" + name + "' holds " +
                             (std::isnan(p[i]) ? "NaN" : "an infinite value") + " at flat index " +
                             std::to_string(i));
  return Status::Ok();
}

}  // namespace

namespace {

// Validates inputs (names, dtypes, shapes, one batch within the engine's maximum, finite values)
// and returns the batch size.
Expected<int64_t> check_engine_inputs(const Engine::Impl& e, const TensorMap& inputs,
                                      const backends::DeviceOps* dev) {
  const ir::Graph& g = *e.graph;
  MIXQ_RETURN_IF_ERROR(
      runtime::check_inputs(g, inputs, "engine", "batch 1 to " + std::to_string(e.max_batch)));
  int64_t batch = -1;
  for (const ir::Value* in : g.inputs()) {
    const Tensor& t = inputs.at(in->name);
    const int64_t b = t.rank() ? t.shape()[0] : 1;
    if (batch < 0)
      batch = b;
    else if (b != batch)
      return InvalidArgument("inputs disagree on the batch size: '" + in->name + "' has " +
                             std::to_string(b) + ", another input " + std::to_string(batch));
    // Device-resident inputs are not scanned on the host.
    if (!(dev && dev->is_device_pointer(t.raw()))) MIXQ_RETURN_IF_ERROR(check_finite(in->name, t));
  }
  if (batch < 0) batch = 1;
  if (batch < 1 || batch > e.max_batch)
    return InvalidArgument("batch size " + std::to_string(batch) + " is outside 1.." +
                           std::to_string(e.max_batch) + " (the engine's maximum batch)");
  return batch;
}

// Validates InferOptions::outputs against the engine's outputs at this batch.
Status check_engine_outputs(const Engine::Impl& e, const BatchPlan& plan, const TensorMap& given) {
  const ir::Graph& g = *e.graph;
  for (const auto& [name, t] : given) {
    const ir::Value* out = nullptr;
    std::string names;
    for (const ir::Value* v : g.outputs()) {
      if (v->name == name) out = v;
      names += (names.empty() ? "'" : ", '") + v->name + "'";
    }
    if (!out)
      return NotFound("no output named '" + name + "' to write into; the outputs are " + names);
    const Shape& want = plan.shapes[size_t(e.value_index.at(out))];
    if (!t.defined() && shape_numel(want) > 0)
      return InvalidArgument("the buffer given for output '" + name + "' has no memory");
    if (t.dtype() != out->dtype)
      return InvalidArgument("the buffer given for output '" + name + "' is " +
                             std::string(dtype_name(t.dtype())) + "; the output is " +
                             std::string(dtype_name(out->dtype)));
    if (t.shape() != want)
      return InvalidArgument("the buffer given for output '" + name + "' has shape " +
                             shape_to_string(t.shape()) + "; the output at batch " +
                             std::to_string(plan.batch) + " has shape " + shape_to_string(want));
  }
  return Status::Ok();
}

// Runs every step with buffers from `ptr` (per value index). `after_step` sees each step's
// outputs (capture, profiling).
Status run_steps(
    Context::Impl& c, const BatchPlan& plan, std::vector<void*>& ptr, void* scratch,
    const std::function<Status(size_t, std::span<const backends::Buffer>)>& after_step) {
  const Engine::Impl& e = *c.engine;
  const backends::DeviceOps* dev = e.backend->device_ops();
  auto& ins = c.in_buffers;
  auto& outs = c.out_buffers;
  // Whether the next work on the stream after step s is the next launching step's own, which
  // waits for step s (ExecContext::successor_waits): no hook between, no residual copy before it.
  auto successor_waits = [&](size_t s) {
    if (after_step) return false;
    for (size_t next = s + 1; next < e.steps.size(); ++next) {
      if (plan.is_view[next]) continue;
      return e.kernels[next]->accumulates_into_output_from() < 0 &&
             plan.instances[next]->waits_for_predecessor();
    }
    return false;
  };
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
      ins.push_back({v, ptr[idx], plan.shapes[idx]});
    }
    for (const ir::Value* v : node.outputs) {
      if (!v) {
        outs.push_back({});
        continue;
      }
      const size_t idx = size_t(e.value_index.at(v));
      outs.push_back({v, ptr[idx], plan.shapes[idx]});
    }
    const int acc = e.kernels[s]->accumulates_into_output_from();
    if (acc >= 0 && ins[size_t(acc)].data != outs[0].data) {
      const size_t bytes = e.backend->buffer_bytes(*outs[0].value, outs[0].shape);
      if (dev)
        MIXQ_RETURN_IF_ERROR(dev->copy_device_to_device(outs[0].data, ins[size_t(acc)].data, bytes,
                                                        c.resources.get()));
      else
        std::memcpy(outs[0].data, ins[size_t(acc)].data, bytes);
    }
    if (!plan.is_view[s]) {
      backends::ExecContext ctx{ins, outs, c.resources.get(), scratch, successor_waits(s)};
      Status st = plan.instances[s]->execute(ctx);
      if (!st.ok()) return st.with_context(node.describe());
    }
    if (after_step) MIXQ_RETURN_IF_ERROR(after_step(s, outs));
  }
  return Status::Ok();
}

// Value pointers for this call: arena offsets, constants (host), inputs and outputs.
void bind_arena(const Engine::Impl& e, const BatchPlan& plan, char* arena,
                std::vector<void*>& ptr) {
  ptr.assign(e.values.size(), nullptr);
  for (size_t i = 0; i < e.values.size(); ++i) {
    const ir::Value* v = e.values[i];
    if (v->is_constant())
      ptr[i] = const_cast<void*>(v->constant.raw());
    else if (plan.offsets[i] >= 0)
      ptr[i] = arena + plan.offsets[i];
  }
}

Expected<std::shared_ptr<void>> grow(const backends::DeviceOps& dev, std::shared_ptr<void>& buf,
                                     size_t& have, size_t need, bool pinned) {
  if (have >= need && buf) return buf;
  MIXQ_ASSIGN_OR_RETURN(buf, pinned ? dev.alloc_pinned(std::max<size_t>(need, 64))
                                    : dev.alloc_device(std::max<size_t>(need, 64)));
  have = need;
  return buf;
}

Expected<InferenceResult> infer_on_device(Context::Impl& c, const BatchPlan& plan,
                                          const TensorMap& inputs, const InferOptions& options,
                                          Clock::time_point start) {
  const Engine::Impl& e = *c.engine;
  const ir::Graph& g = *e.graph;
  const backends::DeviceOps& dev = *e.backend->device_ops();
  backends::ExecResources* r = c.resources.get();
  MIXQ_RETURN_IF_ERROR(
      grow(dev, c.device_arena, c.device_arena_bytes, plan.arena_bytes, false).status());
  MIXQ_RETURN_IF_ERROR(
      grow(dev, c.device_scratch, c.device_scratch_bytes, plan.scratch_bytes, false).status());
  // I/O buffers at the engine's maximum batch, allocated once: captured graphs keep pointers.
  auto io_for = [&](const ir::Value* v) -> Expected<Context::Impl::DeviceIo*> {
    auto& io = c.device_io[v->name];
    if (!io.device) {
      Shape full = v->shape;
      for (auto& d : full)
        if (d < 0) d = e.max_batch;
      io.bytes = e.backend->buffer_bytes(*v, full);
      MIXQ_ASSIGN_OR_RETURN(io.device, dev.alloc_device(std::max<size_t>(io.bytes, 64)));
      MIXQ_ASSIGN_OR_RETURN(io.pinned, dev.alloc_pinned(std::max<size_t>(io.bytes, 64)));
    }
    return &io;
  };
  std::vector<void*>& ptr = c.pointers;
  bind_arena(e, plan, static_cast<char*>(c.device_arena.get()), ptr);
  InferenceResult result;
  std::vector<std::pair<const ir::Value*, Context::Impl::DeviceIo*>> in_io, out_io, device_out_io;
  std::vector<bool> on_host;  // per input, then per output: staged through pinned memory
  std::unordered_set<std::string> to_device;  // given outputs in device memory
  for (const auto& [name, t] : options.outputs)
    if (dev.is_device_pointer(t.raw())) to_device.insert(name);
  bool waited = false;
  for (const ir::Value* in : g.inputs()) {
    MIXQ_ASSIGN_OR_RETURN(auto* io, io_for(in));
    const Tensor& t = inputs.at(in->name);
    const bool host = !dev.is_device_pointer(t.raw());
    if (!host) {
      // Device-resident input: one copy on the device, ordered after the work that produced it.
      if (options.input_stream && !waited) {
        MIXQ_RETURN_IF_ERROR(dev.wait_for_stream(options.input_stream, r));
        waited = true;
      }
      MIXQ_RETURN_IF_ERROR(dev.copy_device_to_device(io->device.get(), t.raw(), t.nbytes(), r));
    } else {
      std::memcpy(io->pinned.get(), t.raw(), t.nbytes());
      in_io.push_back({in, io});
    }
    on_host.push_back(host);
    ptr[size_t(e.value_index.at(in))] = io->device.get();
  }
  for (const ir::Value* out : g.outputs()) {
    if (out->is_constant() || g.is_graph_input(out)) continue;
    MIXQ_ASSIGN_OR_RETURN(auto* io, io_for(out));
    ptr[size_t(e.value_index.at(out))] = io->device.get();
    const bool host = !to_device.count(out->name);
    (host ? out_io : device_out_io).push_back({out, io});
    on_host.push_back(host);
  }
  auto bytes_of = [&](const ir::Value* v) {
    return e.backend->buffer_bytes(*v, plan.shapes[size_t(e.value_index.at(v))]);
  };
  // One inference: copies in, steps between timing marks, copies out.
  auto issue =
      [&](const std::function<Status(size_t, std::span<const backends::Buffer>)>& hook) -> Status {
    for (auto& [v, io] : in_io)
      MIXQ_RETURN_IF_ERROR(dev.copy_to_device(io->device.get(), io->pinned.get(), bytes_of(v), r));
    MIXQ_RETURN_IF_ERROR(dev.record(r, 0));
    if (c.profiling) MIXQ_RETURN_IF_ERROR(dev.record_step(r, 0));
    MIXQ_RETURN_IF_ERROR(run_steps(c, plan, ptr, c.device_scratch.get(), hook));
    MIXQ_RETURN_IF_ERROR(dev.record(r, 1));
    for (auto& [v, io] : out_io)
      MIXQ_RETURN_IF_ERROR(dev.copy_to_host(io->pinned.get(), io->device.get(), bytes_of(v), r));
    return Status::Ok();
  };
  // Profiling: a mark after every step, recorded inside the replayed graph too, so each layer's
  // time is its time in the graph (no host launch gaps, no synchronisation between steps).
  if (c.profiling) MIXQ_RETURN_IF_ERROR(dev.reserve_step_marks(r, e.steps.size() + 1));
  const std::function<Status(size_t, std::span<const backends::Buffer>)> mark =
      [&](size_t s, std::span<const backends::Buffer>) { return dev.record_step(r, s + 1); };
  const bool direct = c.capture_all || !c.capture_names.empty() || c.graphs_disabled;
  if (direct) {
    std::function<Status(size_t, std::span<const backends::Buffer>)> hook;
    hook = [&](size_t s, std::span<const backends::Buffer> outs) -> Status {
      if (c.profiling) MIXQ_RETURN_IF_ERROR(dev.record_step(r, s + 1));
      if (c.capture_all || !c.capture_names.empty()) {
        for (const backends::Buffer& b : outs) {
          if (!b.value || (!c.capture_all && !c.capture_names.count(b.value->name))) continue;
          MIXQ_RETURN_IF_ERROR(dev.synchronize(r));
          auto t = e.backend->read_value(b);
          if (t.ok()) result.captured[b.value->name] = std::move(t).value();
        }
      }
      return Status::Ok();
    };
    MIXQ_RETURN_IF_ERROR(issue(hook));
  } else {
    std::vector<bool> variant = on_host;
    variant.push_back(c.profiling);  // a profiling graph carries the step marks
    const auto key = std::make_pair(plan.batch, variant);
    auto it = c.graphs.find(key);
    if (it == c.graphs.end()) {
      Status s = dev.begin_capture(r);
      if (s.ok()) s = issue(c.profiling ? mark : nullptr);
      Expected<std::shared_ptr<void>> graph =
          s.ok() ? dev.end_capture(r) : Expected<std::shared_ptr<void>>(s);
      if (!graph.ok()) {
        // Not capturable (a kernel synchronises or allocates): run directly from now on.
        c.graphs_disabled = true;
        MIXQ_RETURN_IF_ERROR(dev.synchronize(r));
        MIXQ_RETURN_IF_ERROR(issue(c.profiling ? mark : nullptr));
      } else {
        it = c.graphs.emplace(key, std::move(graph).value()).first;
      }
    }
    if (it != c.graphs.end()) MIXQ_RETURN_IF_ERROR(dev.replay(it->second, r));
  }
  // Outputs that stay on the device: one copy there (the caller's pointer changes between calls,
  // so it is not part of a graph).
  for (auto& [v, io] : device_out_io)
    MIXQ_RETURN_IF_ERROR(dev.copy_device_to_device(
        const_cast<void*>(options.outputs.at(v->name).raw()), io->device.get(), bytes_of(v), r));
  MIXQ_RETURN_IF_ERROR(dev.synchronize(r));
  MIXQ_ASSIGN_OR_RETURN(result.timing.compute_ms, dev.elapsed_ms(r, 0, 1));
  if (c.profiling) {
    MIXQ_ASSIGN_OR_RETURN(std::vector<double> ms, dev.step_times_ms(r, e.steps.size()));
    for (size_t s = 0; s < e.steps.size(); ++s) {
      const ir::Node& node = *e.steps[s];
      result.layers.push_back({node.name, std::string(ir::op_name(node.op)),
                               node.precision.value_or(Precision::kFP32), ms[s]});
    }
  }
  for (const ir::Value* out : g.outputs()) {
    const size_t idx = size_t(e.value_index.at(out));
    auto given = options.outputs.find(out->name);
    const bool on_device = to_device.count(out->name) != 0;
    const bool computed = !out->is_constant() && !g.is_graph_input(out);
    if (on_device && computed) {  // copied above
      result.outputs[out->name] = given->second;
      continue;
    }
    Tensor t = given != options.outputs.end() ? given->second
                                              : Tensor::empty(out->dtype, plan.shapes[idx]);
    const void* src = out->is_constant()      ? out->constant.raw()
                      : g.is_graph_input(out) ? inputs.at(out->name).raw()
                                              : c.device_io.at(out->name).pinned.get();
    // A graph input or constant passed straight through may sit on either side.
    const bool from_device = !computed && dev.is_device_pointer(src);
    if (t.nbytes() == 0) {
    } else if (on_device || from_device) {
      void* dst = t.raw();
      MIXQ_RETURN_IF_ERROR(on_device && from_device
                               ? dev.copy_device_to_device(dst, src, t.nbytes(), r)
                           : on_device ? dev.copy_to_device(dst, src, t.nbytes(), r)
                                       : dev.copy_to_host(dst, src, t.nbytes(), r));
      MIXQ_RETURN_IF_ERROR(dev.synchronize(r));
    } else {
      std::memcpy(t.raw(), src, t.nbytes());
    }
    result.outputs[out->name] = t;
  }
  result.timing.end_to_end_ms = ms_since(start);
  return result;
}

}  // namespace

Expected<InferenceResult> Context::infer(const TensorMap& inputs) {
  return infer(inputs, InferOptions{});
}

Expected<InferenceResult> Context::infer(const TensorMap& inputs, const InferOptions& options) {
  const auto start = Clock::now();
  const Engine::Impl& e = *impl_->engine;
  const ir::Graph& g = *e.graph;
  const backends::DeviceOps* dev = e.backend->device_ops();
  MIXQ_ASSIGN_OR_RETURN(int64_t batch, check_engine_inputs(e, inputs, dev));
  MIXQ_ASSIGN_OR_RETURN(auto plan, e.plan_for(batch));
  MIXQ_RETURN_IF_ERROR(check_engine_outputs(e, *plan, options.outputs));
  if (dev) return infer_on_device(*impl_, *plan, inputs, options, start);

  if (size_t(impl_->arena.numel()) < plan->arena_bytes)
    impl_->arena = Tensor::empty(DType::kUInt8, {int64_t(plan->arena_bytes)});
  if (size_t(impl_->scratch.numel()) < plan->scratch_bytes)
    impl_->scratch = Tensor::empty(DType::kUInt8, {int64_t(plan->scratch_bytes)});

  InferenceResult result;
  auto& ptr = impl_->pointers;
  bind_arena(e, *plan, static_cast<char*>(impl_->arena.raw()), ptr);
  // Inputs are read in place; outputs are written straight into the returned tensors.
  for (const ir::Value* in : g.inputs())
    ptr[size_t(e.value_index.at(in))] = const_cast<void*>(inputs.at(in->name).raw());
  for (const ir::Value* out : g.outputs()) {
    const size_t idx = size_t(e.value_index.at(out));
    if (result.outputs.count(out->name)) continue;
    auto given = options.outputs.find(out->name);
    Tensor t = given != options.outputs.end() ? given->second
                                              : Tensor::empty(out->dtype, plan->shapes[idx]);
    if (out->is_constant() || g.is_graph_input(out))
      std::memcpy(t.raw(), ptr[idx], t.nbytes());
    else
      ptr[idx] = t.raw();
    result.outputs[out->name] = t;
  }

  const auto compute_start = Clock::now();
  auto last = compute_start;
  Context::Impl& c = *impl_;
  MIXQ_RETURN_IF_ERROR(run_steps(
      c, *plan, ptr, c.scratch.raw(),
      [&](size_t s, std::span<const backends::Buffer> outs) -> Status {
        const ir::Node& node = *e.steps[s];
        if (c.profiling) {
          const auto now = Clock::now();
          result.layers.push_back({node.name, std::string(ir::op_name(node.op)),
                                   node.precision.value_or(Precision::kFP32),
                                   std::chrono::duration<double, std::milli>(now - last).count()});
          last = now;
        }
        if (c.capture_all || !c.capture_names.empty()) {
          for (const backends::Buffer& b : outs) {
            if (!b.value || (!c.capture_all && !c.capture_names.count(b.value->name))) continue;
            auto t = e.backend->read_value(b);
            if (t.ok()) result.captured[b.value->name] = std::move(t).value();
          }
          last = Clock::now();
        }
        return Status::Ok();
      }));
  result.timing.compute_ms = ms_since(compute_start);
  result.timing.end_to_end_ms = ms_since(start);
  return result;
}

}  // namespace mixq
