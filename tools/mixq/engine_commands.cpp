// mixq build / bench / compare, and the engine forms of run and inspect.
#include <unistd.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <numeric>
#include <random>

#include <omp.h>
#include <nlohmann/json.hpp>

#include "cli.h"
#include "mixq/compare.h"
#include "mixq/engine.h"
#include "mixq/io.h"

namespace mixq::cli {

bool is_engine_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[8] = {};
  in.read(magic, 8);
  return in.gcount() == 8 && std::string(magic, 8) == "MIXQENGN";
}

namespace {

std::string human_bytes(int64_t b) {
  char buf[32];
  if (b >= (int64_t(1) << 30))
    std::snprintf(buf, sizeof buf, "%.2f GiB", double(b) / double(1 << 30));
  else if (b >= (1 << 20))
    std::snprintf(buf, sizeof buf, "%.2f MiB", double(b) / double(1 << 20));
  else
    std::snprintf(buf, sizeof buf, "%.1f KiB", double(b) / 1024.0);
  return buf;
}

void print_report(const BuildReport& r, bool layers) {
  if (layers) {
    std::printf("%-4s %-40s %-12s %-22s %-9s %-9s %s\n", "#", "layer", "op", "module", "requested",
                "runs", "implementation");
    int i = 0;
    for (const auto& l : r.layers) {
      std::string name = l.name;
      if (!l.fused.empty()) {
        name += " +";
        for (const auto& f : l.fused)
          name += " " + f.substr(f.rfind('/') == std::string::npos ? 0 : f.rfind('/') + 1);
      }
      std::printf("%-4d %-40s %-12s %-22s %-9s %-9s %s\n", i++, name.c_str(), l.op.c_str(),
                  l.module.c_str(), std::string(precision_name(l.requested)).c_str(),
                  std::string(precision_name(l.actual)).c_str(), l.implementation.c_str());
      if (!l.fallback_reason.empty()) std::printf("       note: %s\n", l.fallback_reason.c_str());
    }
  }
  std::printf("\nbackend %s, target %s, max batch %lld\n", r.backend.c_str(), r.isa.c_str(),
              (long long)r.max_batch);
  std::printf("average bits: %.2f by parameters, %.2f by MACs\n", r.average_bits_by_params,
              r.average_bits_by_macs);
  std::printf("memory: %s peak (activations + scratch at max batch + %s weights)\n",
              human_bytes(r.peak_memory_bytes).c_str(), human_bytes(r.weight_bytes).c_str());
  if (!r.fallbacks.empty()) {
    std::printf("fallbacks (%zu):\n", r.fallbacks.size());
    for (const auto& f : r.fallbacks) std::printf("  %s\n", f.c_str());
  }
  if (!r.plan_notes.empty()) {
    std::printf("plan notes (%zu):\n", r.plan_notes.size());
    for (const auto& f : r.plan_notes) std::printf("  %s\n", f.c_str());
  }
  if (r.build_seconds > 0)
    std::printf("built in %.2f s (calibration %.2f s%s)\n", r.build_seconds, r.calibration_seconds,
                r.calibration_from_cache ? ", from cache" : "");
  if (r.build_seconds > 0 && !r.phase_seconds.empty()) {
    std::printf("build phases:");
    for (size_t i = 0; i < r.phase_seconds.size(); ++i)
      std::printf("%s %s %.2f s", i ? "," : "", r.phase_seconds[i].first.c_str(),
                  r.phase_seconds[i].second);
    std::printf("\n");
  }
  // Where a slow build went: the layers that took longest to prepare (tuning included).
  std::vector<const LayerReport*> by_time;
  double layer_seconds = 0;
  for (const auto& l : r.layers) {
    layer_seconds += l.build_seconds;
    if (l.build_seconds > 0) by_time.push_back(&l);
  }
  if (layer_seconds >= 1.0) {
    std::sort(by_time.begin(), by_time.end(), [](const LayerReport* a, const LayerReport* b) {
      return a->build_seconds > b->build_seconds;
    });
    std::printf("layers prepared in %.2f s; slowest:", layer_seconds);
    for (size_t i = 0; i < by_time.size() && i < 5; ++i)
      std::printf("%s %s %.2f s", i ? "," : "", by_time[i]->name.c_str(),
                  by_time[i]->build_seconds);
    std::printf("\n");
  }
}

struct BuildArgs {
  std::string model, config, calib, calib_algo = "percentile", default_precision = "fp32", output,
                                    backend = "cpu", calib_cache;
  double percentile = 99.99;
  int64_t max_batch = 128, calib_batch = 32, calib_samples = 0;
  bool allow_fallback = false, quiet = false, deterministic = false;
};

int run_build(const BuildArgs& a) {
  BuildOptions options;
  options.backend = a.backend;
  options.max_batch = a.max_batch;
  options.allow_fallback = a.allow_fallback;
  options.deterministic = a.deterministic;
  auto precision = precision_from_name(a.default_precision);
  if (!precision)
    return report(InvalidArgument("--default-precision '" + a.default_precision +
                                  "' is not one of fp32, tf32, fp16, bf16, int8, fp8"));
  options.default_precision = *precision;
  auto algo = calibration_algorithm_from_name(a.calib_algo);
  if (!algo)
    return report(InvalidArgument("--calib-algo '" + a.calib_algo +
                                  "' is not one of entropy, minmax, percentile, mse"));
  options.calibration.algorithm = *algo;
  if (!(a.percentile > 0 && a.percentile <= 100))
    return report(
        InvalidArgument("--percentile must be in (0, 100], got " + std::to_string(a.percentile)));
  options.calibration.percentile = a.percentile;
  options.calibration.batch_size = a.calib_batch;
  options.calibration.max_samples = a.calib_samples;
  options.calibration.cache_path = a.calib_cache;
  options.calibration.progress = isatty(STDERR_FILENO);
  auto model = Model::load(a.model);
  if (!model.ok()) return report(model.status());
  Builder builder(std::make_shared<const Model>(std::move(model).value()));
  builder.set_options(options);
  if (!a.config.empty()) {
    Status s = builder.set_plan_file(a.config);
    if (!s.ok()) return report(s);
  }
  if (!a.calib.empty()) {
    auto data = CalibrationData::from_path(a.calib);
    if (!data.ok()) return report(data.status());
    builder.set_calibration_data(std::move(data).value());
  }
  auto engine = builder.build();
  if (!engine.ok()) return report(engine.status());
  if (!a.quiet) print_report(engine->report(), true);
  Status s = engine->save(a.output);
  if (!s.ok()) return report(s);
  std::printf("wrote %s\n", a.output.c_str());
  return kExitOk;
}

Expected<TensorMap> gather_inputs(const std::vector<TensorSpec>& specs,
                                  const std::vector<std::string>& args, int64_t batch,
                                  uint64_t seed) {
  TensorMap inputs;
  for (const std::string& spec : args) {
    const size_t eq = spec.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size())
      return InvalidArgument("--input expects name=file.npy, got '" + spec + "'");
    const std::string name = spec.substr(0, eq), file = spec.substr(eq + 1);
    if (std::none_of(specs.begin(), specs.end(),
                     [&](const TensorSpec& s) { return s.name == name; })) {
      std::string names;
      for (const auto& s : specs) names += (names.empty() ? "'" : ", '") + s.name + "'";
      return NotFound("there is no input named '" + name + "'; the inputs are " + names);
    }
    MIXQ_ASSIGN_OR_RETURN(Tensor t, load_npy(file));
    inputs[name] = std::move(t);
  }
  if (!args.empty()) return inputs;
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (const TensorSpec& s : specs) {
    Shape shape = s.shape;
    for (size_t i = 0; i < shape.size(); ++i)
      if (shape[i] < 0) shape[i] = i == 0 ? batch : 1;
    Tensor t = Tensor::empty(DType::kFloat32, shape);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = dist(rng);
    inputs[s.name] = s.dtype == DType::kFloat32 ? t : t.to(s.dtype);
  }
  return inputs;
}

std::string safe_file_name(std::string name) {
  for (char& c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') c = '_';
  return name;
}

}  // namespace

int run_engine(const std::string& path, const std::vector<std::string>& input_args,
               const std::string& output_dir, int64_t batch, uint64_t seed) {
  auto engine = Engine::load(path);
  if (!engine.ok()) return report(engine.status());
  auto inputs = gather_inputs(engine->inputs(), input_args, batch, seed);
  if (!inputs.ok()) return report(inputs.status());
  auto ctx = engine->create_context();
  if (!ctx.ok()) return report(ctx.status());
  auto result = ctx->infer(*inputs);
  if (!result.ok()) return report(result.status());
  std::error_code ec;
  std::filesystem::create_directories(output_dir, ec);
  if (ec)
    return report(IoError("cannot create output directory '" + output_dir + "': " + ec.message()));
  for (const auto& [name, tensor] : result->outputs) {
    const std::string file =
        (std::filesystem::path(output_dir) / (safe_file_name(name) + ".npy")).string();
    Status s = save_npy(file, tensor);
    if (!s.ok()) return report(s);
    std::printf("%s: %s -> %s\n", name.c_str(), tensor.describe().c_str(), file.c_str());
  }
  std::printf("compute %.3f ms, end to end %.3f ms (batch %lld)\n", result->timing.compute_ms,
              result->timing.end_to_end_ms,
              (long long)(inputs->begin()->second.rank() ? inputs->begin()->second.dim(0) : 1));
  return kExitOk;
}

int inspect_engine(const std::string& path, bool json) {
  auto engine = Engine::load(path);
  if (!engine.ok()) return report(engine.status());
  const BuildReport& r = engine->report();
  if (json) {
    nlohmann::json j;
    for (const auto& l : r.layers)
      j["layers"].push_back({{"name", l.name},
                             {"op", l.op},
                             {"module", l.module},
                             {"fused", l.fused},
                             {"requested", std::string(precision_name(l.requested))},
                             {"precision", std::string(precision_name(l.actual))},
                             {"implementation", l.implementation},
                             {"params", l.params},
                             {"macs", l.macs},
                             {"note", l.fallback_reason}});
    j["average_bits_by_params"] = r.average_bits_by_params;
    j["average_bits_by_macs"] = r.average_bits_by_macs;
    j["target"] = r.isa;
    j["backend"] = r.backend;
    j["max_batch"] = r.max_batch;
    j["peak_memory_bytes"] = r.peak_memory_bytes;
    j["fallbacks"] = r.fallbacks;
    j["plan_notes"] = r.plan_notes;
    std::cout << j.dump(2) << "\n";
    return kExitOk;
  }
  std::printf("engine: %s\n", path.c_str());
  for (const auto& in : engine->inputs())
    std::printf("input  %-24s %s%s\n", in.name.c_str(), std::string(dtype_name(in.dtype)).c_str(),
                shape_to_string(in.shape).c_str());
  for (const auto& out : engine->outputs())
    std::printf("output %-24s %s%s\n", out.name.c_str(), std::string(dtype_name(out.dtype)).c_str(),
                shape_to_string(out.shape).c_str());
  std::printf("\n");
  print_report(r, true);
  return kExitOk;
}

namespace {

struct BenchArgs {
  std::string engine;
  std::vector<std::string> inputs;
  int threads = 0;
  int64_t batch = 128;
  int warmup = 5, iterations = 30;
  bool profile = false, json = false;
};

double percentile_of(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  const double pos = p / 100.0 * double(v.size() - 1);
  const size_t lo = size_t(pos);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - double(lo));
}

int run_bench(const BenchArgs& a) {
  if (a.iterations < 1 || a.warmup < 0)
    return report(InvalidArgument("--iterations must be >= 1, --warmup >= 0"));
  const auto load_start = std::chrono::steady_clock::now();
  auto engine = Engine::load(a.engine);
  if (!engine.ok()) return report(engine.status());
  // Reading the file and rebuilding every kernel from its recorded choice (device set-up included).
  const double load_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
  if (a.threads < 0) return report(InvalidArgument("--threads must be positive"));
  if (a.threads > 0) omp_set_num_threads(a.threads);
  auto inputs = gather_inputs(engine->inputs(), a.inputs, a.batch, 0);
  if (!inputs.ok()) return report(inputs.status());
  const int64_t batch = inputs->begin()->second.rank() ? inputs->begin()->second.dim(0) : 1;
  auto ctx = engine->create_context();
  if (!ctx.ok()) return report(ctx.status());
  for (int i = 0; i < a.warmup; ++i) {
    auto r = ctx->infer(*inputs);
    if (!r.ok()) return report(r.status());
  }
  std::vector<double> compute, e2e;
  std::map<std::string, std::vector<double>> layer_ms;
  std::vector<LayerTiming> layer_order;
  ctx->set_profiling(a.profile);
  for (int i = 0; i < a.iterations; ++i) {
    auto r = ctx->infer(*inputs);
    if (!r.ok()) return report(r.status());
    compute.push_back(r->timing.compute_ms);
    e2e.push_back(r->timing.end_to_end_ms);
    if (a.profile) {
      if (layer_order.empty()) layer_order = r->layers;
      for (const auto& l : r->layers) layer_ms[l.name].push_back(l.ms);
    }
  }
  const double med = percentile_of(compute, 50), p10 = percentile_of(compute, 10),
               p90 = percentile_of(compute, 90);
  const double med_e2e = percentile_of(e2e, 50);
  int64_t macs = 0;
  for (const auto& l : engine->report().layers) macs += l.macs;
  const double gmacs = double(macs) * double(batch) / (med * 1e-3) / 1e9;
  if (a.json) {
    nlohmann::json j = {{"engine", a.engine},
                        {"batch", batch},
                        {"iterations", a.iterations},
                        {"load_seconds", load_seconds},
                        {"compute_ms_median", med},
                        {"compute_ms_p10", p10},
                        {"compute_ms_p90", p90},
                        {"end_to_end_ms_median", med_e2e},
                        {"end_to_end_ms_p10", percentile_of(e2e, 10)},
                        {"end_to_end_ms_p90", percentile_of(e2e, 90)},
                        {"threads", omp_get_max_threads()},
                        {"gmac_per_s", gmacs},
                        {"average_bits_by_macs", engine->report().average_bits_by_macs}};
    if (a.profile) {
      // Per layer: the median time and what the build report says about it (module, precision).
      std::map<std::string, const LayerReport*> by_name;
      for (const auto& l : engine->report().layers) by_name[l.name] = &l;
      nlohmann::json layers = nlohmann::json::array();
      for (const auto& l : layer_order) {
        const LayerReport* r = by_name.count(l.name) ? by_name[l.name] : nullptr;
        layers.push_back({{"name", l.name},
                          {"op", l.op},
                          {"module", r ? r->module : std::string()},
                          {"precision", std::string(precision_name(l.precision))},
                          {"ms_median", percentile_of(layer_ms[l.name], 50)}});
      }
      j["layers"] = layers;
    }
    std::cout << j.dump(2) << "\n";
    return kExitOk;
  }
  std::printf("%s: batch %lld, %d threads, %d iterations after %d warm-up\n", a.engine.c_str(),
              (long long)batch, omp_get_max_threads(), a.iterations, a.warmup);
  std::printf("compute     median %.3f ms  (p10 %.3f, p90 %.3f)\n", med, p10, p90);
  std::printf("end to end  median %.3f ms\n", med_e2e);
  std::printf("throughput  %.1f samples/s, %.1f GMAC/s\n", double(batch) / (med * 1e-3), gmacs);
  std::printf("loaded in   %.3f s", load_seconds);
  {
    // The layers that took longest to rebuild (the rest: reading the file, device set-up).
    std::vector<const LayerReport*> by_time;
    double layer_seconds = 0;
    for (const auto& l : engine->report().layers) {
      layer_seconds += l.load_seconds;
      by_time.push_back(&l);
    }
    std::sort(by_time.begin(), by_time.end(), [](const LayerReport* x, const LayerReport* y) {
      return x->load_seconds > y->load_seconds;
    });
    std::printf(" (layers %.3f s; slowest:", layer_seconds);
    for (size_t i = 0; i < by_time.size() && i < 3; ++i)
      std::printf("%s %s %.3f s", i ? "," : "", by_time[i]->name.c_str(), by_time[i]->load_seconds);
    std::printf(")\n");
  }
  if (a.profile) {
    std::printf("\n%-44s %-14s %-6s %10s %7s\n", "layer", "op", "prec", "median ms", "share");
    double total = 0;
    for (const auto& l : layer_order) total += percentile_of(layer_ms[l.name], 50);
    for (const auto& l : layer_order) {
      const double m = percentile_of(layer_ms[l.name], 50);
      std::printf("%-44s %-14s %-6s %10.3f %6.1f%%\n", l.name.c_str(), l.op.c_str(),
                  std::string(precision_name(l.precision)).c_str(), m, 100.0 * m / total);
    }
  }
  return kExitOk;
}

struct CompareArgs {
  std::string model, engine;
  std::vector<std::string> inputs;
  int64_t batch = 8;
  uint64_t seed = 0;
  bool json = false;
};

int run_compare(const CompareArgs& a) {
  auto model = Model::load(a.model);
  if (!model.ok()) return report(model.status());
  auto engine = Engine::load(a.engine);
  if (!engine.ok()) return report(engine.status());
  auto inputs = gather_inputs(engine->inputs(), a.inputs, a.batch, a.seed);
  if (!inputs.ok()) return report(inputs.status());
  auto layers = compare_engine(*model, *engine, *inputs);
  if (!layers.ok()) return report(layers.status());
  nlohmann::json rows = nlohmann::json::array();
  if (!a.json)
    std::printf("%-44s %-12s %-6s %10s %12s %12s\n", "layer (output value)", "op", "prec",
                "SQNR dB", "max abs err", "max |ref|");
  for (const LayerComparison& l : *layers) {
    if (a.json) {
      rows.push_back({{"layer", l.layer},
                      {"output", l.output},
                      {"op", l.op},
                      {"precision", std::string(precision_name(l.precision))},
                      {"sqnr_db", std::isfinite(l.sqnr_db) ? nlohmann::json(l.sqnr_db)
                                                           : nlohmann::json("inf")},
                      {"max_abs_error", l.max_abs_error},
                      {"max_abs_reference", l.max_abs_reference}});
    } else {
      std::printf("%-44s %-12s %-6s %10.2f %12.5g %12.5g\n", l.output.c_str(), l.op.c_str(),
                  std::string(precision_name(l.precision)).c_str(), l.sqnr_db, l.max_abs_error,
                  l.max_abs_reference);
    }
  }
  if (a.json) std::cout << nlohmann::json{{"layers", rows}}.dump(2) << "\n";
  return kExitOk;
}

}  // namespace

void add_engine_commands(CLI::App& app, int& exit_code) {
  auto* build = app.add_subcommand(
      "build", "Build an engine: per-layer precisions, calibration, packed weights");
  auto b = std::make_shared<BuildArgs>();
  build->add_option("model", b->model, "ONNX model (.onnx)")->required();
  build->add_option("--config,-c", b->config,
                    "Precision plan: mixq JSON plan or NNI calibration_config JSON");
  build->add_option("--calib", b->calib, "Calibration data: .npy, .npz or a folder of them");
  build->add_option("--calib-algo", b->calib_algo,
                    "percentile (default, 99.99), entropy (KL, as TensorRT), minmax or mse");
  build->add_option("--percentile", b->percentile,
                    "Percentile for --calib-algo percentile (default 99.99)");
  build->add_option("--calib-batch", b->calib_batch, "Samples per calibration step (default 32)");
  build->add_option("--calib-samples", b->calib_samples,
                    "Use at most this many samples (default: all)");
  build->add_option("--calib-cache", b->calib_cache,
                    "Calibration cache file (reused when it matches)");
  build->add_option("--default-precision", b->default_precision,
                    "Precision of layers the plan does not name (default fp32)");
  build->add_flag("--deterministic", b->deterministic,
                  "Only kernels that give the same bits on every run (GPU: may be slower)");
  build->add_flag("--allow-fallback", b->allow_fallback,
                  "Let a layer run at the nearest higher precision when its own is unavailable");
  build->add_option("--max-batch", b->max_batch, "Largest batch the engine accepts (default 128)");
  build->add_option("--backend", b->backend, "cpu (default) or reference");
  build->add_option("-o,--output", b->output, "Engine file to write")->required();
  build->add_flag("--quiet,-q", b->quiet, "Do not print the layer table");
  build->callback([b, &exit_code] { exit_code = run_build(*b); });

  auto* bench =
      app.add_subcommand("bench", "Time an engine: warm-up, repetitions, median and spread");
  auto c = std::make_shared<BenchArgs>();
  bench->add_option("engine", c->engine, "Engine file (.mixq)")->required();
  bench->add_option("--batch,-b", c->batch, "Batch size for random inputs (default 128)");
  bench->add_option("--input,-i", c->inputs, "Input as name=file.npy (repeatable); random if none");
  bench->add_option("--threads,-t", c->threads,
                    "CPU threads (default: OMP_NUM_THREADS or all cores)");
  bench->add_option("--warmup", c->warmup, "Warm-up runs (default 5)");
  bench->add_option("--iterations,-n", c->iterations, "Timed runs (default 30)");
  bench->add_flag("--profile", c->profile, "Per-layer times");
  bench->add_flag("--json", c->json, "Machine-readable output");
  bench->callback([c, &exit_code] { exit_code = run_bench(*c); });

  auto* compare = app.add_subcommand(
      "compare",
      "Per-layer error of an engine against the fp32 model: SQNR, max abs error, precision");
  auto d = std::make_shared<CompareArgs>();
  compare->add_option("model", d->model, "The ONNX model the engine was built from")->required();
  compare->add_option("engine", d->engine, "Engine file (.mixq)")->required();
  compare->add_option("--input,-i", d->inputs,
                      "Input as name=file.npy (repeatable); random if none");
  compare->add_option("--batch,-b", d->batch, "Batch for random inputs (default 8)");
  compare->add_option("--seed", d->seed, "Seed for random inputs");
  compare->add_flag("--json", d->json, "Machine-readable output");
  compare->callback([d, &exit_code] { exit_code = run_compare(*d); });
}

}  // namespace mixq::cli
