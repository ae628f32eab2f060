// mixq._mixq: pybind11 bindings of the public C++ API (include/mixq/). Thin by design: every
// decision is the engine's; this file converts arguments, releases the GIL around long calls and
// maps Status codes to the package's exceptions.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <limits>
#include <mutex>
#include <set>
#include <sstream>

#include "mixq/compare.h"
#include "mixq/engine.h"
#include "mixq/model.h"
#include "tensors.h"

namespace py = pybind11;
using namespace pybind11::literals;

namespace mixq::python {
namespace {

// --- small helpers -------------------------------------------------------------------------------

std::string join_names(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

std::vector<std::string> precision_names() {
  std::vector<std::string> v;
  for (Precision p : kAllPrecisions) v.emplace_back(precision_name(p));
  return v;
}

std::vector<std::string> algorithm_names() {
  std::vector<std::string> v;
  for (auto a : {CalibrationAlgorithm::kEntropy, CalibrationAlgorithm::kMinMax,
                 CalibrationAlgorithm::kPercentile, CalibrationAlgorithm::kMse})
    v.emplace_back(calibration_algorithm_name(a));
  return v;
}

Precision parse_precision(const std::string& name, const std::string& what) {
  auto p = precision_from_name(name);
  if (!p)
    raise_error("InvalidArgumentError",
                what + " '" + name + "' is not one of " + join_names(precision_names()));
  return *p;
}

CalibrationAlgorithm parse_algorithm(const std::string& name) {
  auto a = calibration_algorithm_from_name(name);
  if (!a)
    raise_error("InvalidArgumentError", "calibration algorithm '" + name + "' is not one of " +
                                            join_names(algorithm_names()));
  return *a;
}

std::string to_str(py::handle h) {
  return py::str(h).cast<std::string>();
}

std::string pname(Precision p) {
  return std::string(precision_name(p));
}

py::tuple shape_tuple(const Shape& shape) {
  py::tuple t(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) t[i] = shape[i];
  return t;
}

py::object finite_or_inf(double v) {
  return py::float_(v);
}

std::string path_string(py::handle obj) {
  // str or os.PathLike
  return py::str(py::module_::import("os").attr("fspath")(obj));
}

bool is_path(py::handle obj) {
  return py::isinstance<py::str>(obj) || py::hasattr(obj, "__fspath__");
}

// Outputs in the engine's order, as a dict.
py::dict ordered_outputs(const TensorMap& tensors, const std::vector<TensorSpec>& order,
                         bool as_torch, const TensorMap* borrowed = nullptr) {
  py::dict d;
  std::set<std::string> done;
  auto put = [&](const std::string& name, const Tensor& t) {
    d[py::str(name)] = as_torch ? to_torch(t, borrowed) : to_numpy(t, borrowed);
    done.insert(name);
  };
  for (const TensorSpec& s : order)
    if (auto it = tensors.find(s.name); it != tensors.end()) put(it->first, it->second);
  for (const auto& [name, t] : tensors)
    if (!done.count(name)) put(name, t);
  return d;
}

// --- reports as Python objects -------------------------------------------------------------------

py::dict spec_dict(const TensorSpec& s) {
  return py::dict("name"_a = s.name, "dtype"_a = numpy_dtype_name(s.dtype),
                  "shape"_a = shape_tuple(s.shape));
}

py::dict layer_report_dict(const LayerReport& l) {
  return py::dict("name"_a = l.name, "op"_a = l.op, "module"_a = l.module, "output"_a = l.output,
                  "fused"_a = l.fused, "requested"_a = pname(l.requested),
                  "precision"_a = pname(l.actual), "fallback_reason"_a = l.fallback_reason,
                  "implementation"_a = l.implementation, "params"_a = l.params, "macs"_a = l.macs,
                  "build_seconds"_a = l.build_seconds, "load_seconds"_a = l.load_seconds);
}

py::dict build_report_dict(const BuildReport& r) {
  py::list layers;
  for (const auto& l : r.layers) layers.append(layer_report_dict(l));
  return py::dict(
      "layers"_a = layers, "fallbacks"_a = r.fallbacks, "plan_notes"_a = r.plan_notes,
      "backend"_a = r.backend, "isa"_a = r.isa, "max_batch"_a = r.max_batch,
      "peak_memory_bytes"_a = r.peak_memory_bytes, "weight_bytes"_a = r.weight_bytes,
      "average_bits_by_params"_a = r.average_bits_by_params,
      "average_bits_by_macs"_a = r.average_bits_by_macs,
      "calibration_seconds"_a = r.calibration_seconds, "build_seconds"_a = r.build_seconds,
      "calibration_from_cache"_a = r.calibration_from_cache, "phase_seconds"_a = r.phase_seconds);
}

std::string build_report_table(const BuildReport& r) {
  std::ostringstream os;
  char line[512];
  std::snprintf(line, sizeof line, "%-4s %-40s %-12s %-22s %-9s %-9s %s\n", "#", "layer", "op",
                "module", "requested", "runs", "implementation");
  os << line;
  int i = 0;
  for (const auto& l : r.layers) {
    std::snprintf(line, sizeof line, "%-4d %-40s %-12s %-22s %-9s %-9s %s\n", i++, l.name.c_str(),
                  l.op.c_str(), l.module.c_str(), pname(l.requested).c_str(),
                  pname(l.actual).c_str(), l.implementation.c_str());
    os << line;
    if (!l.fallback_reason.empty()) os << "       note: " << l.fallback_reason << "\n";
  }
  std::snprintf(line, sizeof line,
                "backend %s, target %s, max batch %lld\naverage bits: %.2f by parameters, %.2f "
                "by MACs\n",
                r.backend.c_str(), r.isa.c_str(), (long long)r.max_batch, r.average_bits_by_params,
                r.average_bits_by_macs);
  os << line;
  if (!r.fallbacks.empty()) {
    os << "fallbacks (" << r.fallbacks.size() << "):\n";
    for (const auto& f : r.fallbacks) os << "  " << f << "\n";
  }
  if (!r.plan_notes.empty()) {
    os << "plan notes (" << r.plan_notes.size() << "):\n";
    for (const auto& f : r.plan_notes) os << "  " << f << "\n";
  }
  return os.str();
}

py::dict layer_summary_dict(const LayerSummary& l) {
  py::list ins, outs;
  for (const auto& s : l.inputs) ins.append(spec_dict(s));
  for (const auto& s : l.outputs) outs.append(spec_dict(s));
  return py::dict("name"_a = l.name, "op"_a = l.op, "module"_a = l.module, "inputs"_a = ins,
                  "outputs"_a = outs, "attributes"_a = l.attributes, "params"_a = l.params,
                  "macs"_a = l.macs, "flops"_a = l.flops);
}

py::dict comparison_dict(const LayerComparison& c) {
  return py::dict("layer"_a = c.layer, "output"_a = c.output, "op"_a = c.op, "module"_a = c.module,
                  "precision"_a = pname(c.precision), "sqnr_db"_a = finite_or_inf(c.sqnr_db),
                  "max_abs_error"_a = c.max_abs_error, "max_abs_reference"_a = c.max_abs_reference,
                  "elements"_a = c.elements);
}

// --- calibration data ----------------------------------------------------------------------------

// A list of batches (dicts {input name: array}, or arrays for a single-input model), one dict,
// or one array. Arrays are borrowed without copying; the data keeps them alive.
CalibrationData calibration_from_python(py::handle obj) {
  Borrowed borrowed;
  borrowed.tensor_owns_reference = true;
  auto batch_of = [&](py::handle item, const std::string& where) {
    TensorMap batch;
    if (py::isinstance<py::dict>(item)) {
      for (auto [key, value] : py::reinterpret_borrow<py::dict>(item)) {
        if (!py::isinstance<py::str>(key))
          raise_error("InvalidArgumentError",
                      where + ": keys must be input names (str), got " +
                          std::string(py::str(py::type::of(key).attr("__name__"))));
        const std::string name = key.cast<std::string>();
        batch[name] = to_tensor(value, where + ", input '" + name + "'", borrowed);
      }
    } else {
      batch[""] = to_tensor(item, where, borrowed);  // the model's only input
    }
    return batch;
  };
  std::vector<TensorMap> batches;
  if (py::isinstance<py::list>(obj) || py::isinstance<py::tuple>(obj)) {
    size_t i = 0;
    for (py::handle item : obj)
      batches.push_back(batch_of(item, "calibration batch " + std::to_string(i++)));
    if (batches.empty()) raise_error("InvalidArgumentError", "the calibration data list is empty");
  } else {
    batches.push_back(batch_of(obj, "calibration data"));
  }
  return CalibrationData::from_batches(std::move(batches));
}

// --- classes -------------------------------------------------------------------------------------

struct ContextHolder {
  ContextHolder(Context c, std::shared_ptr<const Engine> e)
      : context(std::move(c)), engine(std::move(e)) {}
  Context context;
  std::shared_ptr<const Engine> engine;  // keeps specs and the report at hand
  std::mutex mutex;                      // one call at a time per context
  bool profiling = false;
  std::vector<std::string> capture_names;
  bool capture_all = false;
};

struct InferenceResultHolder {
  py::dict outputs;
  py::dict timing;
  py::list layers;
  py::dict captured;
};

CalibrationOptions make_calibration_options(const std::string& algorithm, double percentile,
                                            int64_t batch_size, int64_t max_samples,
                                            const std::string& cache_path, bool progress) {
  CalibrationOptions o;
  o.algorithm = parse_algorithm(algorithm);
  if (!(percentile > 0 && percentile <= 100))
    raise_error("InvalidArgumentError",
                "percentile must be in (0, 100], got " + std::to_string(percentile));
  o.percentile = percentile;
  if (batch_size < 1)
    raise_error("InvalidArgumentError",
                "calibration batch size must be at least 1, got " + std::to_string(batch_size));
  o.batch_size = batch_size;
  if (max_samples < 0)
    raise_error("InvalidArgumentError",
                "max_samples must be >= 0 (0: every sample), got " + std::to_string(max_samples));
  o.max_samples = max_samples;
  o.cache_path = cache_path;
  o.progress = progress;
  return o;
}

// Builder.set_options keywords, named like the CLI's flags.
const std::vector<std::string> kOptionKeywords = {
    "backend",     "default_precision", "allow_fallback", "max_batch", "calib_algo",   "percentile",
    "calib_batch", "calib_samples",     "calib_cache",    "progress",  "deterministic"};

void apply_option(BuildOptions& o, const std::string& key, py::handle value) {
  if (key == "backend")
    o.backend = value.cast<std::string>();
  else if (key == "default_precision")
    o.default_precision = parse_precision(value.cast<std::string>(), "default_precision");
  else if (key == "allow_fallback")
    o.allow_fallback = value.cast<bool>();
  else if (key == "max_batch") {
    o.max_batch = value.cast<int64_t>();
    if (o.max_batch < 1)
      raise_error("InvalidArgumentError",
                  "max_batch must be at least 1, got " + std::to_string(o.max_batch));
  } else if (key == "calib_algo")
    o.calibration.algorithm = parse_algorithm(value.cast<std::string>());
  else if (key == "percentile") {
    const double p = value.cast<double>();
    if (!(p > 0 && p <= 100))
      raise_error("InvalidArgumentError",
                  "percentile must be in (0, 100], got " + std::to_string(p));
    o.calibration.percentile = p;
  } else if (key == "calib_batch") {
    o.calibration.batch_size = value.cast<int64_t>();
    if (o.calibration.batch_size < 1)
      raise_error("InvalidArgumentError", "calib_batch must be at least 1");
  } else if (key == "calib_samples") {
    o.calibration.max_samples = value.cast<int64_t>();
    if (o.calibration.max_samples < 0)
      raise_error("InvalidArgumentError", "calib_samples must be >= 0 (0: every sample)");
  } else if (key == "calib_cache")
    o.calibration.cache_path = value.is_none() ? std::string() : path_string(value);
  else if (key == "progress")
    o.calibration.progress = value.cast<bool>();
  else if (key == "deterministic")
    o.deterministic = value.cast<bool>();
  else
    raise_error("InvalidArgumentError", "unknown build option '" + key + "'; the options are " +
                                            join_names(kOptionKeywords));
}

}  // namespace
}  // namespace mixq::python

using namespace mixq;
using namespace mixq::python;

PYBIND11_MODULE(_mixq, m) {
  m.doc() = "mixq: mixed-precision quantized inference (bindings of the C++ library)";
  m.attr("__version__") = MIXQ_VERSION;
  register_errors(m);

  m.def("precisions", &precision_names, "Names of the precisions a layer can run at.");
  m.def("calibration_algorithms", &algorithm_names, "Names of the calibration algorithms.");

  // --- TensorSpec --------------------------------------------------------------------------------
  py::class_<TensorSpec>(m, "TensorSpec", "Name, dtype and shape of a model input or output.")
      .def_readonly("name", &TensorSpec::name)
      .def_property_readonly(
          "dtype", [](const TensorSpec& s) { return numpy_dtype_name(s.dtype); },
          "NumPy dtype name ('float32', ...)")
      .def_property_readonly(
          "shape", [](const TensorSpec& s) { return shape_tuple(s.shape); },
          "Dimensions; -1 marks the symbolic batch")
      .def("to_dict", &spec_dict)
      .def("__repr__", [](const TensorSpec& s) {
        return "TensorSpec(name='" + s.name + "', dtype='" + numpy_dtype_name(s.dtype) +
               "', shape=" + to_str(shape_tuple(s.shape)) + ")";
      });

  // --- ModelSummary ------------------------------------------------------------------------------
  py::class_<LayerSummary>(m, "LayerSummary")
      .def_readonly("name", &LayerSummary::name)
      .def_readonly("op", &LayerSummary::op)
      .def_readonly("module", &LayerSummary::module)
      .def_readonly("inputs", &LayerSummary::inputs)
      .def_readonly("outputs", &LayerSummary::outputs)
      .def_readonly("attributes", &LayerSummary::attributes)
      .def_readonly("params", &LayerSummary::params)
      .def_readonly("macs", &LayerSummary::macs)
      .def_readonly("flops", &LayerSummary::flops)
      .def("to_dict", &layer_summary_dict)
      .def("__repr__", [](const LayerSummary& l) {
        return "LayerSummary(name='" + l.name + "', op='" + l.op + "', module='" + l.module + "')";
      });
  py::class_<ModelSummary>(m, "ModelSummary")
      .def_readonly("inputs", &ModelSummary::inputs)
      .def_readonly("outputs", &ModelSummary::outputs)
      .def_readonly("layers", &ModelSummary::layers)
      .def_readonly("total_params", &ModelSummary::total_params)
      .def_readonly("total_macs", &ModelSummary::total_macs)
      .def_readonly("total_flops", &ModelSummary::total_flops)
      .def_readonly("opset", &ModelSummary::opset)
      .def_readonly("producer", &ModelSummary::producer)
      .def("to_dict", [](const ModelSummary& s) {
        py::list ins, outs, layers;
        for (const auto& x : s.inputs) ins.append(spec_dict(x));
        for (const auto& x : s.outputs) outs.append(spec_dict(x));
        for (const auto& l : s.layers) layers.append(layer_summary_dict(l));
        return py::dict("inputs"_a = ins, "outputs"_a = outs, "layers"_a = layers,
                        "total_params"_a = s.total_params, "total_macs"_a = s.total_macs,
                        "total_flops"_a = s.total_flops, "opset"_a = s.opset,
                        "producer"_a = s.producer);
      });

  // --- Model
  // ---------------------------------------------------------------------------------------
  py::class_<Model, std::shared_ptr<Model>>(
      m, "Model", "A network loaded from ONNX and simplified; runs on the fp32 reference backend.")
      .def_static(
          "load",
          [](py::object path, bool simplify, bool fold_batchnorm) {
            LoadOptions o;
            o.simplify = simplify;
            o.fold_batchnorm = fold_batchnorm;
            const std::string p = path_string(path);
            py::gil_scoped_release release;
            return std::make_shared<Model>(unwrap(Model::load(p, o)));
          },
          "path"_a, py::kw_only(), "simplify"_a = true, "fold_batchnorm"_a = true,
          "Load an ONNX file.")
      .def_static(
          "from_bytes",
          [](py::bytes data, const std::string& source, bool simplify, bool fold_batchnorm) {
            LoadOptions o;
            o.simplify = simplify;
            o.fold_batchnorm = fold_batchnorm;
            std::string bytes = data;
            py::gil_scoped_release release;
            return std::make_shared<Model>(unwrap(Model::from_bytes(bytes, source, o)));
          },
          "data"_a, "source"_a = "bytes", py::kw_only(), "simplify"_a = true,
          "fold_batchnorm"_a = true, "Load a serialized ONNX model.")
      .def_property_readonly("inputs", &Model::inputs)
      .def_property_readonly("outputs", &Model::outputs)
      .def("summary", &Model::summary, "Layers (node name, op, module, shapes, cost), totals.")
      .def(
          "run_reference",
          [](const Model& model, py::handle inputs, bool keep_intermediates, bool as_torch) {
            std::vector<py::object> holders;
            Borrowed borrowed;
            borrowed.holders = &holders;
            TensorMap in = to_tensor_map(inputs, model.inputs(), "Model.run_reference", borrowed);
            Expected<TensorMap> out = [&] {
              py::gil_scoped_release release;
              return model.run_reference(in, keep_intermediates);
            }();
            return ordered_outputs(unwrap(std::move(out)), model.outputs(), as_torch, &in);
          },
          "inputs"_a, py::kw_only(), "keep_intermediates"_a = false, "as_torch"_a = false,
          "Run on the fp32 reference backend. Inputs: a dict {name: array}, a list in input "
          "order, or one array. Returns {name: numpy array} (outputs first; with "
          "keep_intermediates, every value the graph computes).")
      .def(
          "random_inputs",
          [](const Model& model, int64_t batch, uint64_t seed, bool as_torch) {
            return ordered_outputs(model.random_inputs(batch, seed), model.inputs(), as_torch);
          },
          "batch"_a = 1, "seed"_a = 0, py::kw_only(), "as_torch"_a = false,
          "Uniform [-1, 1) inputs for every graph input.")
      .def("__repr__", [](const Model& model) {
        std::string s = "Model(inputs=[";
        for (size_t i = 0; i < model.inputs().size(); ++i)
          s += (i ? ", " : "") + model.inputs()[i].name;
        return s + "], layers=" + std::to_string(model.summary().layers.size()) + ")";
      });

  // --- calibration data and options
  // ----------------------------------------------------------------
  py::class_<CalibrationData>(m, "CalibrationData", "Samples for post-training calibration.")
      .def_static(
          "from_path",
          [](py::object path) {
            const std::string p = path_string(path);
            py::gil_scoped_release release;
            return unwrap(CalibrationData::from_path(p));
          },
          "path"_a, "An .npy, an .npz or a folder of them (read in name order).")
      .def_static("from_batches", &calibration_from_python, "batches"_a,
                  "A list of batches, each a dict {input name: array} or, for a single-input "
                  "model, an array; arrays are borrowed, not copied.")
      .def_property_readonly("sample_count", &CalibrationData::sample_count)
      .def_property_readonly("source", &CalibrationData::source)
      .def("__len__", [](const CalibrationData& d) { return d.batches().size(); })
      .def("__repr__", [](const CalibrationData& d) {
        return "CalibrationData(batches=" + std::to_string(d.batches().size()) +
               ", samples=" + std::to_string(d.sample_count()) + ", source='" + d.source() + "')";
      });

  py::class_<CalibrationOptions>(m, "CalibrationOptions")
      .def(py::init(&make_calibration_options), py::kw_only(), "algorithm"_a = "entropy",
           "percentile"_a = 99.99, "batch_size"_a = 32, "max_samples"_a = 0, "cache_path"_a = "",
           "progress"_a = false)
      .def_property(
          "algorithm",
          [](const CalibrationOptions& o) {
            return std::string(calibration_algorithm_name(o.algorithm));
          },
          [](CalibrationOptions& o, const std::string& name) {
            o.algorithm = parse_algorithm(name);
          })
      .def_readwrite("percentile", &CalibrationOptions::percentile)
      .def_readwrite("batch_size", &CalibrationOptions::batch_size)
      .def_readwrite("max_samples", &CalibrationOptions::max_samples)
      .def_readwrite("cache_path", &CalibrationOptions::cache_path)
      .def_readwrite("progress", &CalibrationOptions::progress)
      .def("__repr__", [](const CalibrationOptions& o) {
        std::ostringstream os;
        os << "CalibrationOptions(algorithm='" << calibration_algorithm_name(o.algorithm)
           << "', percentile=" << o.percentile << ", batch_size=" << o.batch_size
           << ", max_samples=" << o.max_samples << ", cache_path='" << o.cache_path
           << "', progress=" << (o.progress ? "True" : "False") << ")";
        return os.str();
      });

  py::class_<BuildOptions>(m, "BuildOptions")
      .def(py::init([](const std::string& backend, const std::string& default_precision,
                       bool allow_fallback, int64_t max_batch,
                       std::optional<CalibrationOptions> calibration) {
             BuildOptions o;
             o.backend = backend;
             o.default_precision = parse_precision(default_precision, "default_precision");
             o.allow_fallback = allow_fallback;
             if (max_batch < 1)
               raise_error("InvalidArgumentError",
                           "max_batch must be at least 1, got " + std::to_string(max_batch));
             o.max_batch = max_batch;
             if (calibration) o.calibration = *calibration;
             return o;
           }),
           py::kw_only(), "backend"_a = "cpu", "default_precision"_a = "fp32",
           "allow_fallback"_a = false, "max_batch"_a = 128, "calibration"_a = py::none())
      .def_readwrite("backend", &BuildOptions::backend)
      .def_property(
          "default_precision", [](const BuildOptions& o) { return pname(o.default_precision); },
          [](BuildOptions& o, const std::string& name) {
            o.default_precision = parse_precision(name, "default_precision");
          })
      .def_readwrite("allow_fallback", &BuildOptions::allow_fallback)
      .def_readwrite("deterministic", &BuildOptions::deterministic)
      .def_readwrite("max_batch", &BuildOptions::max_batch)
      .def_readwrite("calibration", &BuildOptions::calibration)
      .def("__repr__", [](const BuildOptions& o) {
        return "BuildOptions(backend='" + o.backend + "', default_precision='" +
               pname(o.default_precision) +
               "', allow_fallback=" + (o.allow_fallback ? "True" : "False") +
               ", max_batch=" + std::to_string(o.max_batch) + ")";
      });

  // --- reports
  // -------------------------------------------------------------------------------------
  py::class_<LayerReport>(m, "LayerReport", "One engine layer: what was asked and what runs.")
      .def_readonly("name", &LayerReport::name)
      .def_readonly("op", &LayerReport::op)
      .def_readonly("module", &LayerReport::module)
      .def_readonly("output", &LayerReport::output)
      .def_readonly("fused", &LayerReport::fused)
      .def_property_readonly("requested", [](const LayerReport& l) { return pname(l.requested); })
      .def_property_readonly(
          "precision", [](const LayerReport& l) { return pname(l.actual); },
          "The precision that runs")
      .def_readonly("fallback_reason", &LayerReport::fallback_reason)
      .def_readonly("implementation", &LayerReport::implementation)
      .def_readonly("params", &LayerReport::params)
      .def_readonly("macs", &LayerReport::macs)
      .def_readonly("build_seconds", &LayerReport::build_seconds,
                    "Seconds spent preparing its kernel at build (tuning included)")
      .def_readonly("load_seconds", &LayerReport::load_seconds,
                    "Seconds spent rebuilding its kernel when the engine was loaded (0: built "
                    "in this process)")
      .def("to_dict", &layer_report_dict)
      .def("__repr__", [](const LayerReport& l) {
        return "LayerReport(name='" + l.name + "', op='" + l.op + "', module='" + l.module +
               "', precision='" + pname(l.actual) + "')";
      });
  py::class_<BuildReport>(m, "BuildReport")
      .def_readonly("layers", &BuildReport::layers)
      .def_readonly("fallbacks", &BuildReport::fallbacks)
      .def_readonly("plan_notes", &BuildReport::plan_notes)
      .def_readonly("backend", &BuildReport::backend)
      .def_readonly("isa", &BuildReport::isa)
      .def_readonly("max_batch", &BuildReport::max_batch)
      .def_readonly("peak_memory_bytes", &BuildReport::peak_memory_bytes)
      .def_readonly("weight_bytes", &BuildReport::weight_bytes)
      .def_readonly("average_bits_by_params", &BuildReport::average_bits_by_params)
      .def_readonly("average_bits_by_macs", &BuildReport::average_bits_by_macs)
      .def_readonly("calibration_seconds", &BuildReport::calibration_seconds)
      .def_readonly("build_seconds", &BuildReport::build_seconds)
      .def_readonly("calibration_from_cache", &BuildReport::calibration_from_cache)
      .def_readonly("phase_seconds", &BuildReport::phase_seconds,
                    "Where the build's time went: (phase, seconds) in order")
      .def("to_dict", &build_report_dict)
      .def("__str__", &build_report_table)
      .def("__repr__", [](const BuildReport& r) {
        std::ostringstream os;
        os << "BuildReport(backend='" << r.backend << "', layers=" << r.layers.size()
           << ", average_bits_by_macs=" << r.average_bits_by_macs
           << ", fallbacks=" << r.fallbacks.size() << ")";
        return os.str();
      });

  // --- Engine
  // --------------------------------------------------------------------------------------
  py::class_<Engine, std::shared_ptr<Engine>>(
      m, "Engine", "An immutable, serializable engine; run it through contexts.")
      .def_static(
          "load",
          [](py::object path) {
            const std::string p = path_string(path);
            py::gil_scoped_release release;
            return std::make_shared<Engine>(unwrap(Engine::load(p)));
          },
          "path"_a)
      .def_static(
          "from_bytes",
          [](py::bytes data, const std::string& source) {
            std::string bytes = data;
            py::gil_scoped_release release;
            return std::make_shared<Engine>(unwrap(Engine::from_bytes(bytes, source)));
          },
          "data"_a, "source"_a = "bytes")
      .def(
          "save",
          [](const Engine& e, py::object path) {
            const std::string p = path_string(path);
            py::gil_scoped_release release;
            check(e.save(p));
          },
          "path"_a)
      .def("serialize",
           [](const Engine& e) {
             std::string bytes;
             {
               py::gil_scoped_release release;
               bytes = unwrap(e.serialize());
             }
             return py::bytes(bytes);
           })
      .def_property_readonly("report", &Engine::report)
      .def_property_readonly("inputs", &Engine::inputs)
      .def_property_readonly("outputs", &Engine::outputs)
      .def_property_readonly("max_batch", &Engine::max_batch)
      .def("create_context",
           [](std::shared_ptr<Engine> e) {
             return std::make_unique<ContextHolder>(unwrap(e->create_context()), e);
           })
      .def("__repr__", [](const Engine& e) {
        std::ostringstream os;
        os << "Engine(backend='" << e.report().backend << "', layers=" << e.report().layers.size()
           << ", max_batch=" << e.max_batch()
           << ", average_bits_by_macs=" << e.report().average_bits_by_macs << ")";
        return os.str();
      });

  // --- Context
  // -------------------------------------------------------------------------------------
  py::class_<InferenceResultHolder>(m, "InferenceResult",
                                    "Outputs (also reachable as result[name]), timing, per-layer "
                                    "times when profiling, captured values.")
      .def_readonly("outputs", &InferenceResultHolder::outputs)
      .def_readonly("timing", &InferenceResultHolder::timing,
                    "{'compute_ms': ..., 'end_to_end_ms': ...}")
      .def_readonly("layers", &InferenceResultHolder::layers,
                    "[{'name', 'op', 'precision', 'ms'}] when profiling is on")
      .def_readonly("captured", &InferenceResultHolder::captured)
      .def("__getitem__",
           [](const InferenceResultHolder& r, py::handle key) -> py::object {
             if (!r.outputs.contains(key)) {
               std::vector<std::string> names;
               for (auto item : r.outputs) names.push_back(py::str(item.first));
               throw py::key_error("no output named " + std::string(py::repr(key)) +
                                   "; the outputs are " + join_names(names));
             }
             return r.outputs[key];
           })
      .def("__contains__",
           [](const InferenceResultHolder& r, py::handle k) { return r.outputs.contains(k); })
      .def("__len__", [](const InferenceResultHolder& r) { return r.outputs.size(); })
      .def("__iter__", [](const InferenceResultHolder& r) { return py::iter(r.outputs); })
      .def("keys", [](const InferenceResultHolder& r) { return r.outputs.attr("keys")(); })
      .def("values", [](const InferenceResultHolder& r) { return r.outputs.attr("values")(); })
      .def("items", [](const InferenceResultHolder& r) { return r.outputs.attr("items")(); })
      .def("__repr__", [](const InferenceResultHolder& r) {
        return "InferenceResult(outputs=" + to_str(r.outputs.attr("keys")()) +
               ", timing=" + to_str(r.timing) + ")";
      });

  py::class_<ContextHolder>(m, "Context",
                            "Runs inference on an engine. One per thread; many per engine.")
      .def(
          "infer",
          [](ContextHolder& c, py::handle inputs, bool as_torch, py::handle outputs) {
            std::vector<py::object> holders;
            Borrowed borrowed;
            borrowed.holders = &holders;
            DeviceAccess device;
            device.engine_backend = c.engine->report().backend;
            device.allowed = device.engine_backend == "cuda";
            TensorMap in =
                to_tensor_map(inputs, c.engine->inputs(), "Context.infer", borrowed, &device);
            InferOptions options;
            options.input_stream = device.stream;
            // Given outputs are filled in place and handed back as the same objects.
            std::map<std::string, py::object> given;
            if (!outputs.is_none()) {
              DeviceAccess out_device = device;
              for (auto& [name, obj] :
                   named_items(outputs, c.engine->outputs(), "Context.infer outputs", "output")) {
                options.outputs[name] =
                    to_tensor(obj, "output '" + name + "'", borrowed, &out_device, true);
                given[name] = std::move(obj);
              }
            }
            Expected<InferenceResult> r = [&] {
              py::gil_scoped_release release;
              std::lock_guard<std::mutex> lock(c.mutex);
              return c.context.infer(in, options);
            }();
            InferenceResult result = unwrap(std::move(r));
            for (const auto& [name, obj] : given) result.outputs.erase(name);
            InferenceResultHolder out;
            out.outputs = ordered_outputs(result.outputs, c.engine->outputs(), as_torch);
            if (!given.empty()) {
              py::dict ordered;
              for (const TensorSpec& spec : c.engine->outputs()) {
                auto it = given.find(spec.name);
                ordered[py::str(spec.name)] =
                    it != given.end() ? it->second : out.outputs[py::str(spec.name)];
              }
              out.outputs = ordered;
            }
            out.timing = py::dict("compute_ms"_a = result.timing.compute_ms,
                                  "end_to_end_ms"_a = result.timing.end_to_end_ms);
            for (const auto& l : result.layers)
              out.layers.append(py::dict("name"_a = l.name, "op"_a = l.op,
                                         "precision"_a = pname(l.precision), "ms"_a = l.ms));
            out.captured = tensors_to_dict(result.captured, as_torch);
            return out;
          },
          "inputs"_a, py::kw_only(), "as_torch"_a = false, "outputs"_a = py::none(),
          "Run a batch (1 to the engine's max_batch). Inputs: a dict {name: array}, a list in "
          "input order, or one array; C-contiguous NumPy arrays or CPU torch tensors, borrowed "
          "without copying; for a cuda engine also CUDA tensors or other device arrays "
          "(__cuda_array_interface__), read on the device after the work queued on their "
          "stream. Outputs are NumPy arrays, or torch tensors with as_torch=True; or give "
          "`outputs` (like the inputs: host arrays, or device arrays for a cuda engine, of each "
          "output's dtype and shape at this batch) to have them written in place and returned. "
          "The GIL is released while the engine runs.")
      .def_property(
          "profiling", [](const ContextHolder& c) { return c.profiling; },
          [](ContextHolder& c, bool on) {
            std::lock_guard<std::mutex> lock(c.mutex);
            c.profiling = on;
            c.context.set_profiling(on);
          },
          "Per-layer times in InferenceResult.layers")
      .def(
          "set_profiling",
          [](ContextHolder& c, bool on) {
            std::lock_guard<std::mutex> lock(c.mutex);
            c.profiling = on;
            c.context.set_profiling(on);
          },
          "on"_a)
      .def(
          "capture",
          [](ContextHolder& c, std::vector<std::string> names, bool all) {
            std::lock_guard<std::mutex> lock(c.mutex);
            c.capture_names = names;
            c.capture_all = all;
            c.context.capture(std::move(names), all);
          },
          "names"_a = std::vector<std::string>{}, py::kw_only(), "all"_a = false,
          "Return these values (model names, e.g. a layer's output) as float32 in "
          "InferenceResult.captured; all=True captures every value that survives in the engine.")
      .def_property_readonly("engine", [](const ContextHolder& c) { return c.engine; });

  // --- Builder
  // -------------------------------------------------------------------------------------
  py::class_<Builder>(m, "Builder", "Model + precision plan + calibration data -> Engine.")
      .def(py::init([](std::shared_ptr<Model> model) {
             if (!model) raise_error("InvalidArgumentError", "Builder needs a mixq.Model");
             return Builder(std::const_pointer_cast<const Model>(model));
           }),
           "model"_a)
      .def(
          "set_plan_json",
          [](Builder& b, py::object plan, const std::string& source) -> Builder& {
            std::string text;
            if (py::isinstance<py::str>(plan))
              text = plan.cast<std::string>();
            else if (py::isinstance<py::dict>(plan))
              text = py::module_::import("json")
                         .attr("dumps")(plan, "allow_nan"_a = false)
                         .cast<std::string>();
            else
              raise_error("InvalidArgumentError",
                          "set_plan_json takes JSON text or a dict, got " +
                              std::string(py::str(py::type::of(plan).attr("__name__"))));
            b.set_plan_json(text, source);
            return b;
          },
          "plan"_a, "source"_a = "plan", py::return_value_policy::reference_internal,
          "A precision plan: mixq's native JSON or NNI's calibration_config (a dict or its "
          "JSON text).")
      .def(
          "set_plan_file",
          [](Builder& b, py::object path) -> Builder& {
            check(b.set_plan_file(path_string(path)));
            return b;
          },
          "path"_a, py::return_value_policy::reference_internal)
      .def(
          "set_calibration_data",
          [](Builder& b, py::object data) -> Builder& {
            if (py::isinstance<CalibrationData>(data)) {
              b.set_calibration_data(data.cast<CalibrationData>());
            } else if (is_path(data)) {
              const std::string p = path_string(data);
              CalibrationData d;
              {
                py::gil_scoped_release release;
                d = unwrap(CalibrationData::from_path(p));
              }
              b.set_calibration_data(std::move(d));
            } else {
              b.set_calibration_data(calibration_from_python(data));
            }
            return b;
          },
          "data"_a, py::return_value_policy::reference_internal,
          "A CalibrationData, a path (.npy, .npz, folder), a list of batches (dicts {input "
          "name: array} or arrays), one dict or one array.")
      .def(
          "set_options",
          [](Builder& b, std::optional<BuildOptions> options, py::kwargs kwargs) -> Builder& {
            BuildOptions o = options ? *options : BuildOptions{};
            for (auto [key, value] : kwargs) apply_option(o, key.cast<std::string>(), value);
            b.set_options(o);
            return b;
          },
          "options"_a = py::none(), py::return_value_policy::reference_internal,
          "A BuildOptions, and/or keywords named like the CLI's flags: backend, "
          "default_precision, allow_fallback, max_batch, calib_algo, percentile, calib_batch, "
          "calib_samples, calib_cache, progress (keywords override `options`).")
      .def("build", [](Builder& b) {
        Expected<Engine> e = [&] {
          py::gil_scoped_release release;
          return b.build();
        }();
        return std::make_shared<Engine>(unwrap(std::move(e)));
      });

  // --- compare
  // -------------------------------------------------------------------------------------
  m.def(
      "compare_engine",
      [](const Model& model, const Engine& engine, py::handle inputs) {
        std::vector<py::object> holders;
        Borrowed borrowed;
        borrowed.holders = &holders;
        TensorMap in = to_tensor_map(inputs, engine.inputs(), "compare_engine", borrowed);
        Expected<std::vector<LayerComparison>> rows = [&] {
          py::gil_scoped_release release;
          return compare_engine(model, engine, in);
        }();
        py::list out;
        for (const auto& r : unwrap(std::move(rows))) out.append(comparison_dict(r));
        return out;
      },
      "model"_a, "engine"_a, "inputs"_a,
      "Per-layer error of the engine against the model's fp32 reference run: a list of "
      "{'layer', 'output', 'op', 'module', 'precision', 'sqnr_db', 'max_abs_error', "
      "'max_abs_reference', 'elements'} in engine order.");
}
