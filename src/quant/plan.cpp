// Precision plans from NNI's calibration_config and from mixq's native JSON plan
// (docs/precision-plan.md), resolved against the graph.
//
// What NNI's TensorRT backend does with a calibration_config (microsoft/nni,
// nni/compression/pytorch/quantization_speedup/integrated_tensorrt.py):
// - v2.x (weight_bits/input_bits/output_bits), apply_precision_to_layer(): weight_bits sets
//   layer.precision; input_bits only puts (tracked_min_input, tracked_max_input) on the layer's
//   input 0, it never sets a precision; output_bits calls layer.set_output_type(0, bits) and puts
//   (tracked_min_output, tracked_max_output) on output 0. A layer with weight_bits 8 and
//   output_bits 32 therefore runs int8 and hands its output on in fp32: the layer's precision
//   follows the weights, the output bits only pick the output's type. Only a layer without
//   weight_bits (Relu, MaxPool) takes its precision from the output type, as TensorRT then runs
//   it in the type it must produce. Gemm (_handle_gemm) gets the same treatment plus its weight
//   constant's range; the ranges go on input 0 and output 0 of the Gemm itself.
// - older releases (weight_bit/activation_bit), build_engine() and handle_gemm(): weight_bit
//   sets layer.precision and puts tracked_min/max_input on input 0; activation_bit sets the
//   output type and puts tracked_min/max_activation on output 0, i.e. "activation" means output.
// - valid_config() accepts bits 8, 16, 32 only; a later key on the same tensor overwrites an
//   earlier one (the network is walked in topological order, so a consumer's input range wins
//   over its producer's output range); TensorRT ranges are symmetric (max |min|, |max|).
// mixq follows that: precision = weight bits, else output bits, else input bits (a weightless
// layer whose only quantised tensor is its input); a differing output precision is noted in the
// request's source; ranges are applied in graph order, so a consumer's input range wins.
#include "quant/plan.h"

#include <fnmatch.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <set>

#include <nlohmann/json.hpp>

namespace mixq::quant {
namespace {

using Json = nlohmann::ordered_json;

std::string join(const std::vector<std::string>& items, const std::string& sep = ", ") {
  std::string s;
  for (size_t i = 0; i < items.size(); ++i) s += (i ? sep : "") + items[i];
  return s;
}

std::string in_quotes(const std::string& s) {
  return "'" + s + "'";
}

bool is_digits(std::string_view s) {
  return !s.empty() &&
         std::all_of(s.begin(), s.end(), [](char c) { return std::isdigit((unsigned char)c); });
}

// nlohmann's messages start with "[json.exception.parse_error.101] ".
std::string json_error_message(const std::exception& e) {
  std::string m = e.what();
  if (m.starts_with("[json.exception.")) m = m.substr(m.find("] ") + 2);
  return m;
}

// The first input that is not a constant: the activation a layer quantises.
const ir::Value* activation_input(const ir::Node& node) {
  for (const ir::Value* v : node.inputs)
    if (v && !v->is_constant()) return v;
  return nullptr;
}

std::set<std::string> module_names(const ir::Graph& graph) {
  std::set<std::string> names;
  for (const ir::Node* n : graph.nodes())
    if (!n->module_name.empty()) names.insert(n->module_name);
  return names;
}

// The module a node is a repeated call of: torch names the second call of module `relu`
// "relu_1". Not when "relu_1" is a module of its own: its first call is missing, or its
// parameters say so ("relu_1.weight").
std::optional<std::string> repeated_call_of(const ir::Node& node,
                                            const std::set<std::string>& modules) {
  const std::string& m = node.module_name;
  const size_t underscore = m.rfind('_');
  if (underscore == std::string::npos || !is_digits(std::string_view(m).substr(underscore + 1)))
    return std::nullopt;
  std::string base = m.substr(0, underscore);
  if (!modules.count(base)) return std::nullopt;
  for (const ir::Value* v : node.inputs)
    if (v && v->is_constant() && v->name.starts_with(m + ".")) return std::nullopt;
  return base;
}

// "known modules include: conv1, layer1.0.relu, fc (12 in all)" for not-found messages.
std::string name_hint(const ir::Graph& graph) {
  std::vector<std::string> names;
  std::set<std::string> seen;
  for (const ir::Node* n : graph.nodes())
    if (!n->module_name.empty() && seen.insert(n->module_name).second)
      names.push_back(n->module_name);
  std::string what = "known modules";
  if (names.empty()) {
    what = "the model carries no module names; known nodes";
    for (const ir::Node* n : graph.nodes()) names.push_back(n->name);
  }
  const size_t total = names.size();
  if (names.size() > 6) names.resize(6);
  return what + " include: " + join(names) +
         (total > names.size() ? " (" + std::to_string(total) + " in all)" : "");
}

Status check_known_keys(const Json& object, const std::vector<std::string>& known,
                        const std::string& where) {
  std::vector<std::string> unknown;
  for (const auto& [key, value] : object.items())
    if (std::find(known.begin(), known.end(), key) == known.end())
      unknown.push_back(in_quotes(key));
  if (unknown.empty()) return Status::Ok();
  return InvalidArgument(where + ": unknown key" + (unknown.size() > 1 ? "s " : " ") +
                         join(unknown) + "; known keys: " + join(known));
}

// A finite JSON number that fits a float.
Expected<float> finite_number(const Json& v, const std::string& what) {
  if (!v.is_number())
    return InvalidArgument(what + " must be a number, got " + v.type_name() + " " + v.dump());
  const double d = v.get<double>();
  if (!std::isfinite(d) || !std::isfinite(static_cast<float>(d)))
    return InvalidArgument(what + " must be a finite number, got " + v.dump());
  return static_cast<float>(d);
}

Status check_range(const Range& r, const std::string& what) {
  if (r.min <= r.max) return Status::Ok();
  char text[64];
  std::snprintf(text, sizeof text, "min %g is greater than max %g", r.min, r.max);
  return InvalidArgument(what + ": " + text);
}

// --- NNI calibration_config --------------------------------------------------------------------

// The keys that choose precisions and ranges, then the keys NNI 2.x releases also write that
// describe what mixq derives itself: the integer grid NNI simulated (tracked_qmin_input = 0,
// tracked_qmax_input = 127 ...) and the weights' range (mixq takes per-channel scales from the
// exported weights). Those are checked and reported as notes, never silently dropped.
const std::vector<std::string> kNniKeys = {"weight_bits",
                                           "input_bits",
                                           "output_bits",
                                           "tracked_min_input",
                                           "tracked_max_input",
                                           "tracked_min_output",
                                           "tracked_max_output",
                                           "weight_bit",
                                           "input_bit",
                                           "activation_bit",
                                           "tracked_min_activation",
                                           "tracked_max_activation",
                                           "tracked_qmin_input",
                                           "tracked_qmax_input",
                                           "tracked_qmin_output",
                                           "tracked_qmax_output",
                                           "tracked_input_qmin",
                                           "tracked_input_qmax",
                                           "tracked_weight_qmin",
                                           "tracked_weight_qmax",
                                           "tracked_min_weight",
                                           "tracked_max_weight"};

struct NniEntry {
  std::optional<Precision> weight, input, output;
  std::optional<Range> input_range, output_range;
  std::vector<std::string> notes;
  std::string where;  // "plan.json: module 'conv1'"
};

// `key`, or the older `alias` NNI wrote for it; both present must agree. Sets `*used` to the
// key found.
Expected<const Json*> nni_field(const Json& entry, const std::string& key, const char* alias,
                                const std::string& where, std::string* used) {
  const Json* current = entry.contains(key) ? &entry.at(key) : nullptr;
  const Json* old = alias && entry.contains(alias) ? &entry.at(alias) : nullptr;
  if (current && old && *current != *old)
    return InvalidArgument(where + ": " + key + " (" + current->dump() + ") and " + alias + " (" +
                           old->dump() + ") disagree");
  *used = current || !old ? key : alias;
  return current ? current : old;
}

Expected<std::optional<Precision>> nni_bits(const Json& entry, const std::string& key,
                                            const char* alias, const std::string& where) {
  std::string used;
  MIXQ_ASSIGN_OR_RETURN(const Json* v, nni_field(entry, key, alias, where, &used));
  if (!v) return std::optional<Precision>();
  std::optional<Precision> p;
  if (v->is_number_integer()) p = precision_from_bits(v->get<int64_t>());
  if (!p)
    return InvalidArgument(where + ": " + used + " is " + v->dump() +
                           "; allowed values: 8 (int8), 16 (fp16), 32 (fp32)");
  return p;
}

Expected<std::optional<Range>> nni_range(const Json& entry, const std::string& min_key,
                                         const std::string& max_key, const char* min_alias,
                                         const char* max_alias, const std::string& where) {
  std::string min_used, max_used;
  MIXQ_ASSIGN_OR_RETURN(const Json* lo, nni_field(entry, min_key, min_alias, where, &min_used));
  MIXQ_ASSIGN_OR_RETURN(const Json* hi, nni_field(entry, max_key, max_alias, where, &max_used));
  if (!lo && !hi) return std::optional<Range>();
  if (!lo || !hi)
    return InvalidArgument(where + ": " + (lo ? min_used : max_used) + " without " +
                           (lo ? max_key : min_key));
  Range r;
  MIXQ_ASSIGN_OR_RETURN(r.min, finite_number(*lo, where + ": " + min_used));
  MIXQ_ASSIGN_OR_RETURN(r.max, finite_number(*hi, where + ": " + max_used));
  MIXQ_RETURN_IF_ERROR(check_range(r, where + ": " + min_used + "/" + max_used));
  return std::optional<Range>(r);
}

int precision_bits_of(std::optional<Precision> p) {
  return !p ? 8 : *p == Precision::kINT8 ? 8 : *p == Precision::kFP16 ? 16 : 32;
}

// NNI's integer grid for one tensor (`kind`: input, output, weight), under either spelling.
// Checked (integers, qmin < qmax, no wider than the tensor's bits); mixq places its own grid
// over the range, so the grid becomes a note.
Status nni_grid_note(const Json& entry, const std::string& kind, const char* qmin_key,
                     const char* qmax_key, const char* qmin_alias, const char* qmax_alias, int bits,
                     const std::string& where, std::vector<std::string>& notes) {
  std::string min_used, max_used;
  MIXQ_ASSIGN_OR_RETURN(const Json* lo, nni_field(entry, qmin_key, qmin_alias, where, &min_used));
  MIXQ_ASSIGN_OR_RETURN(const Json* hi, nni_field(entry, qmax_key, qmax_alias, where, &max_used));
  if (!lo && !hi) return Status::Ok();
  if (!lo || !hi)
    return InvalidArgument(where + ": " + (lo ? min_used : max_used) + " without " +
                           (lo ? max_used : min_used));
  for (const auto& [v, key] : {std::pair{lo, min_used}, std::pair{hi, max_used}})
    if (!v->is_number_integer())
      return InvalidArgument(where + ": " + key + " must be an integer, got " + v->dump());
  const int64_t qmin = lo->get<int64_t>(), qmax = hi->get<int64_t>();
  if (qmin >= qmax)
    return InvalidArgument(where + ": " + min_used + " (" + std::to_string(qmin) +
                           ") must be below " + max_used + " (" + std::to_string(qmax) + ")");
  if (bits <= 8 && qmax - qmin > 255)
    return InvalidArgument(where + ": " + min_used + "/" + max_used + " [" + std::to_string(qmin) +
                           ", " + std::to_string(qmax) + "] spans more than " +
                           std::to_string(bits) + " bits");
  if (bits > 8) return Status::Ok();  // fp16/fp32 tensors have no integer grid to note
  notes.push_back(where + ": " + min_used + "/" + max_used + " [" + std::to_string(qmin) + ", " +
                  std::to_string(qmax) + "] read; mixq places its own 8-bit " + kind +
                  " grid over the tracked range");
  return Status::Ok();
}

Expected<NniEntry> parse_nni_entry(const Json& entry, const std::string& where) {
  MIXQ_RETURN_IF_ERROR(check_known_keys(entry, kNniKeys, where));
  NniEntry e;
  e.where = where;
  MIXQ_ASSIGN_OR_RETURN(e.weight, nni_bits(entry, "weight_bits", "weight_bit", where));
  MIXQ_ASSIGN_OR_RETURN(e.input, nni_bits(entry, "input_bits", "input_bit", where));
  MIXQ_ASSIGN_OR_RETURN(e.output, nni_bits(entry, "output_bits", "activation_bit", where));
  MIXQ_ASSIGN_OR_RETURN(e.input_range, nni_range(entry, "tracked_min_input", "tracked_max_input",
                                                 nullptr, nullptr, where));
  MIXQ_ASSIGN_OR_RETURN(e.output_range,
                        nni_range(entry, "tracked_min_output", "tracked_max_output",
                                  "tracked_min_activation", "tracked_max_activation", where));
  MIXQ_RETURN_IF_ERROR(nni_grid_note(entry, "input", "tracked_qmin_input", "tracked_qmax_input",
                                     "tracked_input_qmin", "tracked_input_qmax",
                                     precision_bits_of(e.input), where, e.notes));
  MIXQ_RETURN_IF_ERROR(nni_grid_note(entry, "output", "tracked_qmin_output", "tracked_qmax_output",
                                     nullptr, nullptr, precision_bits_of(e.output), where,
                                     e.notes));
  MIXQ_RETURN_IF_ERROR(nni_grid_note(entry, "weight", "tracked_weight_qmin", "tracked_weight_qmax",
                                     nullptr, nullptr, precision_bits_of(e.weight), where,
                                     e.notes));
  MIXQ_ASSIGN_OR_RETURN(
      std::optional<Range> weight_range,
      nni_range(entry, "tracked_min_weight", "tracked_max_weight", nullptr, nullptr, where));
  if (weight_range) {
    char text[96];
    std::snprintf(text, sizeof text, "[%g, %g]", weight_range->min, weight_range->max);
    e.notes.push_back(where + ": tracked_min_weight/tracked_max_weight " + text +
                      " read; mixq takes weight scales from the exported weights themselves");
  }
  return e;
}

Status apply_nni_entry(const NniEntry& e, const ir::Node& node, PrecisionPlan& plan) {
  LayerRequest request;
  request.precision = e.weight ? e.weight : e.output ? e.output : e.input;
  request.source = e.where;
  if (e.weight && e.output && *e.weight != *e.output)
    request.source += " (runs " + std::string(precision_name(*e.weight)) +
                      ", writes its output as " + std::string(precision_name(*e.output)) + ")";
  plan.layers[node.name] = request;
  if (e.input_range) {
    const ir::Value* in = activation_input(node);
    if (!in)
      return InvalidArgument(e.where + ": tracked_min_input given, but " + node.describe() +
                             " has no activation input");
    plan.value_ranges[in->name] = *e.input_range;
  }
  if (e.output_range) {
    const ir::Value* out = node.output(0);
    if (!out)
      return InvalidArgument(e.where + ": tracked_min_output given, but " + node.describe() +
                             " has no output");
    plan.value_ranges[out->name] = *e.output_range;
  }
  return Status::Ok();
}

Status parse_nni(const Json& root, const std::string& source, const ir::Graph& graph,
                 PrecisionPlan& plan) {
  // Node -> (entry, exact): a key naming the node or its module beats one naming the module it
  // is a repeated call of ("relu_1" beats "relu").
  std::map<const ir::Node*, std::pair<size_t, bool>> assigned;
  std::vector<NniEntry> entries;
  std::vector<std::string> unknown;
  for (const auto& [module, value] : root.items()) {
    MIXQ_ASSIGN_OR_RETURN(NniEntry e,
                          parse_nni_entry(value, source + ": module " + in_quotes(module)));
    const std::vector<const ir::Node*> nodes = match_layers(graph, module, /*allow_glob=*/false);
    if (nodes.empty()) unknown.push_back(in_quotes(module));
    for (const ir::Node* n : nodes) {
      const bool exact = n->name == module || n->module_name == module;
      auto it = assigned.find(n);
      if (it == assigned.end() || exact || !it->second.second)
        assigned[n] = {entries.size(), exact};
    }
    entries.push_back(std::move(e));
  }
  if (!unknown.empty())
    return NotFound(source + ": no layer comes from module" + (unknown.size() > 1 ? "s " : " ") +
                    join(unknown) + " (keys are PyTorch module names); " + name_hint(graph));
  for (const NniEntry& e : entries)
    plan.notes.insert(plan.notes.end(), e.notes.begin(), e.notes.end());
  for (const ir::Node* n : graph.nodes()) {  // graph order: a consumer's input range wins
    auto it = assigned.find(n);
    if (it != assigned.end())
      MIXQ_RETURN_IF_ERROR(apply_nni_entry(entries[it->second.first], *n, plan));
  }
  return Status::Ok();
}

// --- native plan -------------------------------------------------------------------------------

const std::vector<std::string> kNativeKeys = {"default_precision", "allow_fallback", "calibration",
                                              "layers"};
const std::vector<std::string> kCalibrationKeys = {"algorithm", "percentile"};
const std::vector<std::string> kEntryKeys = {"match",       "precision",   "weights",
                                             "activations", "input_range", "output_range"};

std::string precision_names() {
  std::vector<std::string> names;
  for (Precision p : kAllPrecisions) names.emplace_back(precision_name(p));
  return join(names);
}

Expected<std::string> string_field(const Json& v, const std::string& what) {
  if (!v.is_string())
    return InvalidArgument(what + " must be a string, got " + v.type_name() + " " + v.dump());
  return v.get<std::string>();
}

Expected<Precision> precision_field(const Json& v, const std::string& what) {
  MIXQ_ASSIGN_OR_RETURN(std::string name, string_field(v, what));
  std::optional<Precision> p = precision_from_name(name);
  if (!p)
    return InvalidArgument(what + ": unknown precision " + in_quotes(name) +
                           "; valid precisions: " + precision_names());
  return *p;
}

// One of `choices` (names of the enum's values, in order); returns its index.
Expected<size_t> choice_field(const Json& v, const std::vector<std::string>& choices,
                              const std::string& what) {
  MIXQ_ASSIGN_OR_RETURN(std::string name, string_field(v, what));
  auto it = std::find(choices.begin(), choices.end(), name);
  if (it == choices.end())
    return InvalidArgument(what + ": unknown value " + in_quotes(name) + "; expected one of " +
                           join(choices));
  return size_t(it - choices.begin());
}

Expected<Range> range_field(const Json& v, const std::string& what) {
  if (!v.is_array() || v.size() != 2)
    return InvalidArgument(what + " must be [min, max], got " + v.dump());
  Range r;
  MIXQ_ASSIGN_OR_RETURN(r.min, finite_number(v[0], what + " min"));
  MIXQ_ASSIGN_OR_RETURN(r.max, finite_number(v[1], what + " max"));
  MIXQ_RETURN_IF_ERROR(check_range(r, what));
  return r;
}

Status parse_calibration(const Json& v, const std::string& where, PrecisionPlan& plan) {
  if (!v.is_object()) return InvalidArgument(where + " must be an object, got " + v.dump());
  MIXQ_RETURN_IF_ERROR(check_known_keys(v, kCalibrationKeys, where));
  static const std::vector<std::string> kNames = {"entropy", "minmax", "percentile", "mse"};
  static const CalibrationAlgorithm kAlgorithms[] = {
      CalibrationAlgorithm::kEntropy, CalibrationAlgorithm::kMinMax,
      CalibrationAlgorithm::kPercentile, CalibrationAlgorithm::kMse};
  size_t algorithm = 2;
  if (v.contains("algorithm")) {
    MIXQ_ASSIGN_OR_RETURN(algorithm, choice_field(v["algorithm"], kNames, where + ".algorithm"));
    plan.calibration_algorithm = kAlgorithms[algorithm];
  }
  if (v.contains("percentile")) {
    MIXQ_ASSIGN_OR_RETURN(float p, finite_number(v["percentile"], where + ".percentile"));
    if (!(p > 0 && p <= 100))
      return InvalidArgument(where + ".percentile must be in (0, 100], got " +
                             v["percentile"].dump());
    if (kAlgorithms[algorithm] != CalibrationAlgorithm::kPercentile)
      return InvalidArgument(where + ".percentile applies only to algorithm 'percentile', not " +
                             in_quotes(kNames[algorithm]));
    plan.percentile = v["percentile"].get<double>();
  }
  return Status::Ok();
}

struct NativeEntry {
  std::string match;
  std::optional<Precision> precision;
  std::optional<WeightGranularity> weights;
  std::optional<bool> symmetric;
  std::optional<Range> input_range, output_range;
};

Expected<NativeEntry> parse_native_entry(const Json& v, const std::string& where) {
  if (!v.is_object()) return InvalidArgument(where + " must be an object, got " + v.dump());
  NativeEntry e;
  if (!v.contains("match")) return InvalidArgument(where + ": \"match\" is missing");
  MIXQ_ASSIGN_OR_RETURN(e.match, string_field(v["match"], where + ".match"));
  if (e.match.empty()) return InvalidArgument(where + ".match is empty");
  const std::string at = where + " (match " + in_quotes(e.match) + ")";
  MIXQ_RETURN_IF_ERROR(check_known_keys(v, kEntryKeys, at));
  if (v.contains("precision")) {
    MIXQ_ASSIGN_OR_RETURN(e.precision, precision_field(v["precision"], at + ": precision"));
  }
  if (v.contains("weights")) {
    MIXQ_ASSIGN_OR_RETURN(
        size_t i, choice_field(v["weights"], {"per_channel", "per_tensor"}, at + ": weights"));
    e.weights = i == 0 ? WeightGranularity::kPerChannel : WeightGranularity::kPerTensor;
  }
  if (v.contains("activations")) {
    MIXQ_ASSIGN_OR_RETURN(size_t i, choice_field(v["activations"], {"symmetric", "asymmetric"},
                                                 at + ": activations"));
    e.symmetric = i == 0;
  }
  if (v.contains("input_range")) {
    MIXQ_ASSIGN_OR_RETURN(e.input_range, range_field(v["input_range"], at + ": input_range"));
  }
  if (v.contains("output_range")) {
    MIXQ_ASSIGN_OR_RETURN(e.output_range, range_field(v["output_range"], at + ": output_range"));
  }
  return e;
}

Status apply_native_entry(const NativeEntry& e, const std::string& where, const ir::Node& node,
                          PrecisionPlan& plan) {
  LayerRequest& request = plan.layers[node.name];
  if (e.precision) request.precision = e.precision;
  if (e.weights) request.weights = e.weights;
  if (e.symmetric) request.symmetric = e.symmetric;
  if (e.precision || request.source.empty()) request.source = where;
  if (e.input_range) {
    const ir::Value* in = activation_input(node);  // several activations: the first
    if (!in)
      return InvalidArgument(where + ": input_range given, but " + node.describe() +
                             " has no activation input");
    plan.value_ranges[in->name] = *e.input_range;
  }
  if (e.output_range && node.output(0)) plan.value_ranges[node.output(0)->name] = *e.output_range;
  return Status::Ok();
}

Status parse_native(const Json& root, const std::string& source, const ir::Graph& graph,
                    PrecisionPlan& plan) {
  MIXQ_RETURN_IF_ERROR(check_known_keys(root, kNativeKeys, source));
  if (root.contains("default_precision")) {
    MIXQ_ASSIGN_OR_RETURN(plan.default_precision, precision_field(root["default_precision"],
                                                                  source + ": default_precision"));
  }
  if (root.contains("allow_fallback")) {
    const Json& v = root["allow_fallback"];
    if (!v.is_boolean())
      return InvalidArgument(source + ": allow_fallback must be true or false, got " + v.dump());
    plan.allow_fallback = v.get<bool>();
  }
  if (root.contains("calibration"))
    MIXQ_RETURN_IF_ERROR(parse_calibration(root["calibration"], source + ": calibration", plan));
  if (!root.contains("layers")) return Status::Ok();
  const Json& layers = root["layers"];
  if (!layers.is_array())
    return InvalidArgument(source + ": layers must be an array, got " + layers.dump());
  std::vector<std::string> unmatched;
  for (size_t i = 0; i < layers.size(); ++i) {
    const std::string where = source + ": layers[" + std::to_string(i) + "]";
    MIXQ_ASSIGN_OR_RETURN(NativeEntry e, parse_native_entry(layers[i], where));
    const std::vector<const ir::Node*> nodes = match_layers(graph, e.match, /*allow_glob=*/true);
    if (nodes.empty())
      unmatched.push_back("layers[" + std::to_string(i) + "] " + in_quotes(e.match));
    for (const ir::Node* n : nodes)
      MIXQ_RETURN_IF_ERROR(
          apply_native_entry(e, where + " (match " + in_quotes(e.match) + ")", *n, plan));
  }
  if (!unmatched.empty())
    return NotFound(
        source + ": " + join(unmatched) + " match" + (unmatched.size() > 1 ? "" : "es") +
        " no layer (by node name or module name, exactly or as a glob); " + name_hint(graph));
  return Status::Ok();
}

}  // namespace

std::optional<Precision> precision_from_bits(int64_t bits) {
  switch (bits) {
    case 8:
      return Precision::kINT8;
    case 16:
      return Precision::kFP16;
    case 32:
      return Precision::kFP32;
    default:
      return std::nullopt;
  }
}

std::vector<const ir::Node*> match_layers(const ir::Graph& graph, const std::string& key,
                                          bool allow_glob) {
  std::vector<const ir::Node*> found;
  if (key.empty()) return found;
  const std::set<std::string> modules = module_names(graph);
  auto matches = [&](const std::string& name) {
    return !name.empty() &&
           (name == key || (allow_glob && fnmatch(key.c_str(), name.c_str(), 0) == 0));
  };
  for (const ir::Node* n : graph.nodes()) {
    const std::optional<std::string> base = repeated_call_of(*n, modules);
    if (matches(n->name) || matches(n->module_name) || (base && matches(*base))) found.push_back(n);
  }
  return found;
}

Expected<PrecisionPlan> parse_plan(const std::string& json_text, const std::string& source,
                                   const ir::Graph& graph) {
  Json root;
  try {
    root = Json::parse(json_text);
  } catch (const Json::exception& e) {
    std::string hint;
    if (json_text.find("NaN") != std::string::npos ||
        json_text.find("Infinity") != std::string::npos)
      hint = " (JSON has no NaN or Infinity; every range must be a finite number)";
    return ParseError(source + ": " + json_error_message(e) + hint);
  }
  if (!root.is_object())
    return ParseError(source +
                      ": expected a JSON object (a native plan or an NNI "
                      "calibration_config keyed by module name), got " +
                      std::string(root.type_name()));
  PrecisionPlan plan;
  try {
    const bool native = std::any_of(kNativeKeys.begin(), kNativeKeys.end(),
                                    [&](const std::string& k) { return root.contains(k); });
    if (native) {
      MIXQ_RETURN_IF_ERROR(parse_native(root, source, graph, plan));
      return plan;
    }
    for (const auto& [key, value] : root.items())
      if (!value.is_object())
        return ParseError(source + ": neither a native plan (no top-level " + join(kNativeKeys) +
                          ") nor an NNI calibration_config (the value of " + in_quotes(key) +
                          " is " + value.type_name() + ", expected an object of bits and ranges)");
    MIXQ_RETURN_IF_ERROR(parse_nni(root, source, graph, plan));
  } catch (const Json::exception& e) {  // a type check missed above
    return Internal(source + ": " + json_error_message(e));
  }
  return plan;
}

}  // namespace mixq::quant
