// The engine file:
//   header  (32 bytes) magic "MIXQENGN", format version (u32), header size (u32),
//           payload size (u64), FNV-1a 64 checksum of the payload (u64)
//   payload metadata length (u64), metadata JSON, then 64-byte aligned blobs (constants).
// The JSON holds the backend and its target (ISA, weight bits), the build report, and the
// execution graph: values (dtype, shape, layout, quantisation, constant blob) and nodes (op,
// precision, attributes). Floats are stored as their bit patterns so nothing is rounded.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>

#include "engine/engine_impl.h"

namespace mixq {

namespace {

using nlohmann::json;

constexpr char kMagic[8] = {'M', 'I', 'X', 'Q', 'E', 'N', 'G', 'N'};
constexpr uint32_t kFormatVersion = 1;
constexpr size_t kHeaderBytes = 32;
constexpr size_t kBlobAlign = 64;

uint64_t fnv1a(const char* p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) {
    h ^= uint8_t(p[i]);
    h *= 1099511628211ull;
  }
  return h;
}

uint32_t fbits(float f) {
  return float_bits(f);
}
float bitsf(uint32_t b) {
  return bits_float(b);
}

json floats_json(const std::vector<float>& v) {
  json a = json::array();
  for (float f : v) a.push_back(fbits(f));
  return a;
}

class BlobWriter {
 public:
  json add(const Tensor& t) {
    while (data_.size() % kBlobAlign) data_.push_back('\0');
    const size_t offset = data_.size();
    data_.append(static_cast<const char*>(t.raw()), t.nbytes());
    return {{"offset", offset}, {"bytes", t.nbytes()}};
  }
  const std::string& data() const { return data_; }

 private:
  std::string data_;
};

json tensor_json(const Tensor& t, BlobWriter& blobs) {
  return {
      {"dtype", std::string(dtype_name(t.dtype()))}, {"shape", t.shape()}, {"blob", blobs.add(t)}};
}

json attribute_json(const ir::Attribute& a, BlobWriter& blobs) {
  return std::visit(
      [&](const auto& v) -> json {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, int64_t>)
          return {{"i", v}};
        else if constexpr (std::is_same_v<T, float>)
          return {{"f", fbits(v)}};
        else if constexpr (std::is_same_v<T, std::string>)
          return {{"s", v}};
        else if constexpr (std::is_same_v<T, std::vector<int64_t>>)
          return {{"ints", v}};
        else if constexpr (std::is_same_v<T, std::vector<float>>)
          return {{"floats", floats_json(v)}};
        else if constexpr (std::is_same_v<T, std::vector<std::string>>)
          return {{"strings", v}};
        else
          return {{"tensor", tensor_json(v, blobs)}};
      },
      a);
}

json report_json(const BuildReport& r) {
  json layers = json::array();
  for (const LayerReport& l : r.layers)
    layers.push_back({{"name", l.name},
                      {"op", l.op},
                      {"module", l.module},
                      {"output", l.output},
                      {"fused", l.fused},
                      {"requested", std::string(precision_name(l.requested))},
                      {"actual", std::string(precision_name(l.actual))},
                      {"fallback_reason", l.fallback_reason},
                      {"implementation", l.implementation},
                      {"params", l.params},
                      {"macs", l.macs},
                      {"build_seconds", l.build_seconds}});
  return {{"layers", layers},
          {"fallbacks", r.fallbacks},
          {"plan_notes", r.plan_notes},
          {"backend", r.backend},
          {"isa", r.isa},
          {"max_batch", r.max_batch},
          {"peak_memory_bytes", r.peak_memory_bytes},
          {"weight_bytes", r.weight_bytes},
          {"average_bits_by_params", r.average_bits_by_params},
          {"average_bits_by_macs", r.average_bits_by_macs},
          {"calibration_seconds", r.calibration_seconds},
          {"build_seconds", r.build_seconds},
          {"calibration_from_cache", r.calibration_from_cache},
          {"phase_seconds", r.phase_seconds}};
}

// --- reading, every field checked
// -----------------------------------------------------------------

struct Reader {
  const std::string& source;
  std::string_view blobs;

  Status corrupt(const std::string& what) const {
    return DataLoss(source + " is corrupt: " + what);
  }

  Expected<DType> dtype(const json& j) const {
    if (!j.is_string()) return corrupt("a dtype is not a string");
    auto d = dtype_from_name(j.get<std::string>());
    if (!d) return corrupt("unknown dtype '" + j.get<std::string>() + "'");
    return *d;
  }

  Expected<Shape> shape(const json& j) const {
    if (!j.is_array()) return corrupt("a shape is not an array");
    Shape s;
    for (const json& d : j) {
      if (!d.is_number_integer()) return corrupt("a dimension is not an integer");
      s.push_back(d.get<int64_t>());
    }
    return s;
  }

  Expected<Tensor> tensor(const json& j) const {
    if (!j.is_object() || !j.contains("blob")) return corrupt("a tensor has no data");
    MIXQ_ASSIGN_OR_RETURN(DType dt, dtype(j.at("dtype")));
    MIXQ_ASSIGN_OR_RETURN(Shape sh, shape(j.at("shape")));
    for (int64_t d : sh)
      if (d < 0 || d > (int64_t(1) << 40)) return corrupt("a tensor dimension is out of range");
    const json& b = j.at("blob");
    if (!b.contains("offset") || !b.contains("bytes") || !b["offset"].is_number_unsigned() ||
        !b["bytes"].is_number_unsigned())
      return corrupt("a blob reference is malformed");
    const size_t offset = b["offset"].get<size_t>(), bytes = b["bytes"].get<size_t>();
    long double need = dtype_size(dt);
    for (int64_t d : sh) need *= (long double)d;
    if ((long double)bytes != need)
      return corrupt("a tensor's byte count does not match its shape");
    if (offset > blobs.size() || bytes > blobs.size() - offset)
      return corrupt("a blob lies outside the file");
    Tensor t = Tensor::empty(dt, sh);
    if (bytes) std::memcpy(t.raw(), blobs.data() + offset, bytes);
    return t;
  }

  Expected<std::vector<float>> floats(const json& j) const {
    if (!j.is_array()) return corrupt("a float list is not an array");
    std::vector<float> v;
    for (const json& x : j) {
      if (!x.is_number_unsigned()) return corrupt("a float is malformed");
      v.push_back(bitsf(x.get<uint32_t>()));
    }
    return v;
  }

  Expected<ir::Attribute> attribute(const json& j) const {
    if (!j.is_object() || j.size() != 1) return corrupt("an attribute is malformed");
    // Key and value through a named iterator: items().begin() is a temporary whose key() dies
    // with the statement.
    const auto only = j.begin();
    const std::string kind = only.key();
    const json& v = only.value();
    try {
      if (kind == "i") return ir::Attribute(v.get<int64_t>());
      if (kind == "f") return ir::Attribute(bitsf(v.get<uint32_t>()));
      if (kind == "s") return ir::Attribute(v.get<std::string>());
      if (kind == "ints") return ir::Attribute(v.get<std::vector<int64_t>>());
      if (kind == "strings") return ir::Attribute(v.get<std::vector<std::string>>());
    } catch (const json::exception&) {
      return corrupt("an attribute has the wrong type");
    }
    if (kind == "floats") {
      MIXQ_ASSIGN_OR_RETURN(auto f, floats(v));
      return ir::Attribute(std::move(f));
    }
    if (kind == "tensor") {
      MIXQ_ASSIGN_OR_RETURN(Tensor t, tensor(v));
      return ir::Attribute(std::move(t));
    }
    return corrupt("unknown attribute kind '" + kind + "'");
  }
};

Expected<Precision> precision_of(const json& j, const Reader& r) {
  if (!j.is_string()) return r.corrupt("a precision is not a string");
  auto p = precision_from_name(j.get<std::string>());
  if (!p) return r.corrupt("unknown precision '" + j.get<std::string>() + "'");
  return *p;
}

Status read_report(const json& j, BuildReport& r, const Reader& rd) {
  try {
    for (const json& l : j.at("layers")) {
      LayerReport lr;
      lr.name = l.at("name");
      lr.op = l.at("op");
      lr.module = l.at("module");
      lr.output = l.at("output");
      lr.fused = l.at("fused").get<std::vector<std::string>>();
      MIXQ_ASSIGN_OR_RETURN(lr.requested, precision_of(l.at("requested"), rd));
      MIXQ_ASSIGN_OR_RETURN(lr.actual, precision_of(l.at("actual"), rd));
      lr.fallback_reason = l.at("fallback_reason");
      lr.implementation = l.at("implementation");
      lr.params = l.at("params");
      lr.macs = l.at("macs");
      // Absent from files written before layer build times were recorded: unknown (0).
      lr.build_seconds = l.value("build_seconds", 0.0);
      r.layers.push_back(std::move(lr));
    }
    r.fallbacks = j.at("fallbacks").get<std::vector<std::string>>();
    // Absent from files written before plan notes existed (same format version): none.
    r.plan_notes = j.value("plan_notes", std::vector<std::string>{});
    r.backend = j.at("backend");
    r.isa = j.at("isa");
    r.max_batch = j.at("max_batch");
    r.peak_memory_bytes = j.at("peak_memory_bytes");
    r.weight_bytes = j.at("weight_bytes");
    r.average_bits_by_params = j.at("average_bits_by_params");
    r.average_bits_by_macs = j.at("average_bits_by_macs");
    r.calibration_seconds = j.at("calibration_seconds");
    r.build_seconds = j.at("build_seconds");
    r.calibration_from_cache = j.at("calibration_from_cache");
    // Absent from files written before build phases were recorded.
    r.phase_seconds = j.value("phase_seconds", std::vector<std::pair<std::string, double>>{});
  } catch (const json::exception& e) {
    return rd.corrupt(std::string("build report: ") + e.what());
  }
  return Status::Ok();
}

}  // namespace

Expected<std::string> serialize_engine(const Engine::Impl& impl) {
  BlobWriter blobs;
  const ir::Graph& g = *impl.graph;
  json values = json::array(), nodes = json::array();
  std::unordered_map<const ir::Value*, size_t> index;
  for (const ir::Value* v : g.values()) {
    index[v] = values.size();
    json jv = {{"name", v->name},
               {"dtype", std::string(dtype_name(v->dtype))},
               {"shape", v->shape},
               {"shape_known", v->shape_known},
               {"layout", int(v->layout)}};
    if (v->quant)
      jv["quant"] = {{"dtype", std::string(dtype_name(v->quant->dtype))},
                     {"scale", floats_json(v->quant->scale)},
                     {"zero_point", v->quant->zero_point},
                     {"axis", v->quant->axis}};
    if (v->is_constant()) jv["constant"] = tensor_json(v->constant, blobs);
    values.push_back(std::move(jv));
  }
  auto ref = [&](const ir::Value* v) -> json { return v ? json(index.at(v)) : json(nullptr); };
  for (const ir::Node* n : g.nodes()) {
    json jn = {
        {"op", std::string(ir::op_name(n->op))}, {"name", n->name}, {"module", n->module_name}};
    json ins = json::array(), outs = json::array(), attrs = json::object();
    for (const ir::Value* v : n->inputs) ins.push_back(ref(v));
    for (const ir::Value* v : n->outputs) outs.push_back(ref(v));
    for (const auto& [k, a] : n->attrs) attrs[k] = attribute_json(a, blobs);
    jn["inputs"] = ins;
    jn["outputs"] = outs;
    jn["attrs"] = attrs;
    if (n->precision) jn["precision"] = std::string(precision_name(*n->precision));
    nodes.push_back(std::move(jn));
  }
  json inputs = json::array(), outputs = json::array();
  for (const ir::Value* v : g.inputs()) inputs.push_back(index.at(v));
  for (const ir::Value* v : g.outputs()) outputs.push_back(index.at(v));
  json meta = {{"format", "mixq-engine"},
               {"backend", std::string(impl.backend->name())},
               {"target", impl.target},
               {"max_batch", impl.max_batch},
               {"report", report_json(impl.report)},
               {"graph",
                {{"name", g.name},
                 {"opset", g.opset},
                 {"values", values},
                 {"nodes", nodes},
                 {"inputs", inputs},
                 {"outputs", outputs}}}};
  const std::string text = meta.dump();
  std::string payload;
  const uint64_t len = text.size();
  payload.append(reinterpret_cast<const char*>(&len), 8);
  payload += text;
  while ((kHeaderBytes + payload.size()) % kBlobAlign) payload.push_back('\0');
  payload += blobs.data();

  std::string out(kHeaderBytes, '\0');
  std::memcpy(out.data(), kMagic, 8);
  const uint32_t version = kFormatVersion, header = kHeaderBytes;
  const uint64_t size = payload.size(), sum = fnv1a(payload.data(), payload.size());
  std::memcpy(out.data() + 8, &version, 4);
  std::memcpy(out.data() + 12, &header, 4);
  std::memcpy(out.data() + 16, &size, 8);
  std::memcpy(out.data() + 24, &sum, 8);
  out += payload;
  return out;
}

Expected<std::shared_ptr<Engine::Impl>> deserialize_engine(const std::string& bytes,
                                                           const std::string& source) {
  // A file cut inside the header (its bytes are a prefix of the magic or start with it) is a
  // truncated engine, not a foreign file.
  if (bytes.size() < kHeaderBytes &&
      std::memcmp(bytes.data(), kMagic, std::min(bytes.size(), sizeof(kMagic))) == 0)
    return DataLoss(source + " is truncated: " + std::to_string(bytes.size()) +
                    " bytes, shorter than the " + std::to_string(kHeaderBytes) +
                    "-byte engine header");
  if (bytes.size() < kHeaderBytes || std::memcmp(bytes.data(), kMagic, 8) != 0)
    return ParseError(source +
                      " is not a mixq engine file (bad magic; an ONNX model goes to "
                      "`mixq build` first)");
  uint32_t version, header;
  uint64_t size, sum;
  std::memcpy(&version, bytes.data() + 8, 4);
  std::memcpy(&header, bytes.data() + 12, 4);
  std::memcpy(&size, bytes.data() + 16, 8);
  std::memcpy(&sum, bytes.data() + 24, 8);
  if (version > kFormatVersion)
    return Unsupported(source + " uses engine format version " + std::to_string(version) +
                       ", newer than this mixq reads (" + std::to_string(kFormatVersion) +
                       "): rebuild the engine with this mixq or upgrade mixq");
  if (version == 0 || header != kHeaderBytes) return DataLoss(source + " has a malformed header");
  if (bytes.size() - kHeaderBytes != size)
    return DataLoss(source + " is truncated or padded: the header promises " +
                    std::to_string(size + kHeaderBytes) + " bytes, the file has " +
                    std::to_string(bytes.size()));
  const char* payload = bytes.data() + kHeaderBytes;
  if (fnv1a(payload, size) != sum)
    return DataLoss(source + " is corrupt: its checksum does not match its contents");
  if (size < 8) return DataLoss(source + " is corrupt: no metadata");
  uint64_t len;
  std::memcpy(&len, payload, 8);
  if (len > size - 8) return DataLoss(source + " is corrupt: metadata length out of range");
  json meta;
  try {
    meta = json::parse(std::string_view(payload + 8, len));
  } catch (const json::exception& e) {
    return DataLoss(source + " is corrupt: metadata is not JSON (" + e.what() + ")");
  }
  size_t blob_start = 8 + len;
  while ((kHeaderBytes + blob_start) % kBlobAlign) ++blob_start;
  if (blob_start > size) return DataLoss(source + " is corrupt: blob area out of range");
  Reader rd{source, std::string_view(payload + blob_start, size - blob_start)};

  auto impl = std::make_shared<Engine::Impl>();
  try {
    if (meta.at("format") != "mixq-engine") return rd.corrupt("not a mixq engine");
    const std::string backend_name = meta.at("backend");
    auto backend = backends::make_backend(backend_name);
    if (!backend.ok())
      return Unsupported(source + " was built for the '" + backend_name +
                         "' backend, which this mixq does not have");
    impl->backend = std::move(backend).value();
    impl->target = meta.at("target");
    Status compatible = impl->backend->check_target(impl->target);
    if (!compatible.ok()) return compatible.with_context(source);
    impl->max_batch = meta.at("max_batch");
    if (impl->max_batch < 1) return rd.corrupt("max batch < 1");
    MIXQ_RETURN_IF_ERROR(read_report(meta.at("report"), impl->report, rd));

    const json& jg = meta.at("graph");
    auto g = std::make_unique<ir::Graph>();
    g->name = jg.at("name");
    g->opset = jg.at("opset");
    std::vector<ir::Value*> values;
    for (const json& jv : jg.at("values")) {
      MIXQ_ASSIGN_OR_RETURN(DType dt, rd.dtype(jv.at("dtype")));
      MIXQ_ASSIGN_OR_RETURN(Shape sh, rd.shape(jv.at("shape")));
      ir::Value* v = g->add_value(jv.at("name"), dt, sh, jv.at("shape_known"));
      const int layout = jv.at("layout");
      if (layout < 0 || layout > int(ir::Layout::kBlocked16)) return rd.corrupt("unknown layout");
      v->layout = ir::Layout(layout);
      if (jv.contains("quant")) {
        const json& jq = jv["quant"];
        ir::QuantParams q;
        MIXQ_ASSIGN_OR_RETURN(q.dtype, rd.dtype(jq.at("dtype")));
        MIXQ_ASSIGN_OR_RETURN(q.scale, rd.floats(jq.at("scale")));
        q.zero_point = jq.at("zero_point").get<std::vector<int32_t>>();
        q.axis = jq.at("axis");
        if (q.scale.empty()) return rd.corrupt("quantisation without scales");
        v->quant = q;
      }
      if (jv.contains("constant")) {
        MIXQ_ASSIGN_OR_RETURN(v->constant, rd.tensor(jv["constant"]));
      }
      values.push_back(v);
    }
    auto value_at = [&](const json& j) -> Expected<ir::Value*> {
      if (j.is_null()) return static_cast<ir::Value*>(nullptr);
      if (!j.is_number_unsigned() || j.get<size_t>() >= values.size())
        return rd.corrupt("a value reference is out of range");
      return values[j.get<size_t>()];
    };
    for (const json& jn : jg.at("nodes")) {
      const std::string op_name = jn.at("op");
      auto op = ir::op_from_name(op_name);
      if (!op) return rd.corrupt("unknown op '" + op_name + "'");
      std::vector<ir::Value*> ins, outs;
      for (const json& r : jn.at("inputs")) {
        MIXQ_ASSIGN_OR_RETURN(ir::Value * v, value_at(r));
        ins.push_back(v);
      }
      for (const json& r : jn.at("outputs")) {
        MIXQ_ASSIGN_OR_RETURN(ir::Value * v, value_at(r));
        outs.push_back(v);
      }
      ir::Node* n = g->add_node(*op, jn.at("name"), std::move(ins), std::move(outs));
      n->module_name = jn.at("module");
      for (const auto& [k, ja] : jn.at("attrs").items()) {
        MIXQ_ASSIGN_OR_RETURN(n->attrs[k], rd.attribute(ja));
      }
      if (jn.contains("precision")) {
        MIXQ_ASSIGN_OR_RETURN(Precision p, precision_of(jn["precision"], rd));
        n->precision = p;
      }
    }
    for (const json& r : jg.at("inputs")) {
      MIXQ_ASSIGN_OR_RETURN(ir::Value * v, value_at(r));
      if (!v) return rd.corrupt("a null graph input");
      g->inputs().push_back(v);
    }
    for (const json& r : jg.at("outputs")) {
      MIXQ_ASSIGN_OR_RETURN(ir::Value * v, value_at(r));
      if (!v) return rd.corrupt("a null graph output");
      g->outputs().push_back(v);
    }
    Status s = ir::verify(*g);
    if (!s.ok()) return rd.corrupt(s.message());
    impl->graph = std::move(g);
  } catch (const json::exception& e) {
    return rd.corrupt(std::string("metadata: ") + e.what());
  }
  Status s = impl->finalize();
  if (!s.ok()) return s.with_context("loading " + source);
  // Where a slow load goes (the report's layers are the steps, in order).
  for (size_t i = 0; i < impl->report.layers.size() && i < impl->prepare_seconds.size(); ++i)
    impl->report.layers[i].load_seconds = impl->prepare_seconds[i];
  return impl;
}

}  // namespace mixq
