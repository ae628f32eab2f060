// Builder: model + plan + calibration -> engine.
#include <chrono>
#include <fstream>

#include "engine/engine_impl.h"
#include "engine/lower.h"
#include "quant/calibration.h"
#include "runtime/interpreter.h"

namespace mixq {

Builder::Builder(std::shared_ptr<const Model> model) : model_(std::move(model)) {}

Builder& Builder::set_plan_json(const std::string& json_text, const std::string& source) {
  plan_json_ = json_text;
  plan_source_ = source;
  return *this;
}

Status Builder::set_plan_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("plan file '" + path + "' cannot be opened");
  plan_json_.assign((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  plan_source_ = "'" + path + "'";
  if (plan_json_.empty()) return ParseError("plan file '" + path + "' is empty");
  return Status::Ok();
}

Builder& Builder::set_calibration_data(CalibrationData data) {
  calibration_ = std::move(data);
  return *this;
}

Builder& Builder::set_options(const BuildOptions& options) {
  options_ = options;
  return *this;
}

namespace {

bool weighted(const std::string& op) {
  return op == "FusedConv" || op == "FusedGemm" || op == "Conv" || op == "Gemm" || op == "MatMul";
}

void finish_report(Engine::Impl& impl, const engine::PrecisionAssignment& assignment) {
  BuildReport& r = impl.report;
  std::map<std::string, const LayerReport*> assigned;
  for (const LayerReport& l : assignment.layers) assigned[l.name] = &l;
  r.layers.clear();
  double bits_params = 0, bits_macs = 0, params = 0, macs = 0;
  for (size_t i = 0; i < impl.steps.size(); ++i) {
    const ir::Node* n = impl.steps[i];
    LayerReport l;
    if (auto it = assigned.find(n->name); it != assigned.end())
      l = *it->second;
    else {
      l.name = n->name;
      l.op = std::string(ir::op_name(n->op));
      l.module = n->module_name;
      l.requested = n->precision.value_or(Precision::kFP32);
    }
    l.actual = n->precision.value_or(Precision::kFP32);
    // Execution fusion (Backend::fuse_for_execution) may have merged more nodes since.
    if (auto it = n->attrs.find("mixq.fused"); it != n->attrs.end())
      l.fused = std::get<std::vector<std::string>>(it->second);
    l.output = n->output(0) ? n->output(0)->name : "";
    l.implementation = impl.kernels[i]->implementation();
    l.build_seconds = i < impl.prepare_seconds.size() ? impl.prepare_seconds[i] : 0;
    const ir::NodeCost cost = ir::node_cost(*n);
    l.params = cost.params;
    l.macs = cost.macs;
    if (weighted(l.op)) {
      const int bits = precision_bits(l.actual);
      bits_params += double(bits) * double(l.params);
      bits_macs += double(bits) * double(l.macs);
      params += double(l.params);
      macs += double(l.macs);
    }
    r.layers.push_back(std::move(l));
  }
  r.average_bits_by_params = params > 0 ? bits_params / params : 32;
  r.average_bits_by_macs = macs > 0 ? bits_macs / macs : 32;
  r.fallbacks = assignment.fallbacks;
  r.weight_bytes = 0;
  for (const ir::Value* v : impl.graph->values())
    if (v->is_constant()) r.weight_bytes += int64_t(v->constant.nbytes());
}

// An fp32 engine of `graph` (already fused), for calibration.
Expected<std::shared_ptr<Engine::Impl>> make_fp32_engine(const ir::Graph& graph,
                                                         const std::string& backend_name,
                                                         int64_t max_batch) {
  auto impl = std::make_shared<Engine::Impl>();
  impl->graph = graph.clone();
  for (ir::Node* n : impl->graph->nodes()) {
    n->precision = Precision::kFP32;
    // It runs a few calibration batches: tuning its kernels would cost more than it saves.
    n->attrs[backends::kNoTuningAttr] = int64_t(1);
  }
  MIXQ_ASSIGN_OR_RETURN(impl->backend, backends::make_backend(backend_name));
  MIXQ_RETURN_IF_ERROR(impl->backend->assign_layouts(*impl->graph));
  MIXQ_RETURN_IF_ERROR(engine::insert_reformats(*impl->graph, *impl->backend));
  impl->max_batch = max_batch;
  impl->target = impl->backend->target();
  MIXQ_RETURN_IF_ERROR(impl->finalize());
  return impl;
}

}  // namespace

Expected<Engine> Builder::build() {
  const auto start = std::chrono::steady_clock::now();
  if (!model_) return InvalidArgument("the builder has no model");
  BuildOptions options = options_;
  if (options.max_batch < 1)
    return InvalidArgument("max batch must be at least 1, got " +
                           std::to_string(options.max_batch));
  auto graph = model_->graph().clone();

  quant::PrecisionPlan plan;
  if (!plan_json_.empty()) {
    MIXQ_ASSIGN_OR_RETURN(plan, quant::parse_plan(plan_json_, plan_source_, *graph));
  }
  if (plan.default_precision) options.default_precision = *plan.default_precision;
  if (plan.allow_fallback) options.allow_fallback = options.allow_fallback || *plan.allow_fallback;
  if (plan.calibration_algorithm) options.calibration.algorithm = *plan.calibration_algorithm;
  if (plan.percentile) options.calibration.percentile = *plan.percentile;

  MIXQ_ASSIGN_OR_RETURN(auto backend, backends::make_backend(options.backend));
  MIXQ_RETURN_IF_ERROR(engine::absorb_qdq(*graph, plan));
  MIXQ_RETURN_IF_ERROR(engine::fuse_layers(*graph, plan));
  (void)runtime::infer_shapes(*graph);
  MIXQ_ASSIGN_OR_RETURN(auto assignment,
                        engine::assign_precisions(*graph, plan, *backend, options.default_precision,
                                                  options.allow_fallback));

  // Ranges for the values int8 layers read and write.
  const engine::RangeNeeds needs = engine::values_needing_ranges(*graph, plan);
  std::map<std::string, quant::Range> ranges;
  BuildReport report;
  std::vector<std::pair<std::string, double>> phases;
  auto phase_start = start;
  const auto end_phase = [&](const char* name) {
    const auto now = std::chrono::steady_clock::now();
    phases.emplace_back(name, std::chrono::duration<double>(now - phase_start).count());
    phase_start = now;
  };
  end_phase("planning");
  if (!needs.values.empty()) {
    if (calibration_.empty()) {
      std::string list;
      int shown = 0;
      for (const auto& v : needs.values)
        if (shown++ < 8) list += (list.empty() ? "'" : ", '") + v + "'";
      return FailedPrecondition(
          std::to_string(needs.values.size()) +
          " value(s) read or written by int8 layers have no "
          "range (" +
          list + (needs.values.size() > 8 ? ", ..." : "") +
          "): give calibration data, QAT ranges in the config, or a Q/DQ model");
    }
    // Calibrate on an fp32 engine of the same (fused) graph: oneDNN, not the reference loops.
    MIXQ_ASSIGN_OR_RETURN(auto fp32,
                          make_fp32_engine(*graph, options.backend,
                                           std::max<int64_t>(options.calibration.batch_size, 1)));
    MIXQ_ASSIGN_OR_RETURN(Context context, Engine(fp32).create_context());
    end_phase("calibration engine");
    context.capture({needs.values.begin(), needs.values.end()});
    quant::GraphRunner runner = [&](const TensorMap& inputs,
                                    const quant::ValueObserver& observe) -> Status {
      MIXQ_ASSIGN_OR_RETURN(auto result, context.infer(inputs));
      for (const auto& [name, t] : result.captured) observe(name, t);
      return Status::Ok();
    };
    MIXQ_ASSIGN_OR_RETURN(auto result, quant::calibrate(*graph, needs.values, needs.asymmetric,
                                                        calibration_, options.calibration, runner));
    ranges = std::move(result.ranges);
    report.calibration_seconds = result.seconds;
    report.calibration_from_cache = result.from_cache;
    end_phase("calibration");
  }
  const backends::QuantPolicy policy = backend->quant_policy();
  MIXQ_RETURN_IF_ERROR(engine::quantize(*graph, plan, ranges, policy));
  MIXQ_RETURN_IF_ERROR(backend->assign_layouts(*graph));
  MIXQ_RETURN_IF_ERROR(engine::insert_reformats(*graph, *backend));
  MIXQ_RETURN_IF_ERROR(backend->fuse_for_execution(*graph));
  MIXQ_RETURN_IF_ERROR(ir::verify(*graph));
  if (options.deterministic)
    for (ir::Node* n : graph->nodes()) n->attrs[backends::kDeterministicAttr] = int64_t(1);

  auto impl = std::make_shared<Engine::Impl>();
  impl->graph = std::move(graph);
  impl->backend = std::move(backend);
  impl->max_batch = options.max_batch;
  impl->target = impl->backend->target();
  MIXQ_RETURN_IF_ERROR(impl->finalize());
  end_phase("kernels");
  impl->report = report;
  impl->report.backend = std::string(impl->backend->name());
  impl->report.isa = impl->target + " (" + policy.describe() + ")";
  impl->report.max_batch = options.max_batch;
  finish_report(*impl, assignment);
  impl->report.plan_notes = plan.notes;
  MIXQ_ASSIGN_OR_RETURN(auto plan_max, impl->plan_for(options.max_batch));
  impl->report.peak_memory_bytes =
      int64_t(plan_max->arena_bytes + plan_max->scratch_bytes) + impl->report.weight_bytes;
  end_phase("execution plan");
  impl->report.phase_seconds = std::move(phases);
  impl->report.build_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return Engine(std::move(impl));
}

}  // namespace mixq
