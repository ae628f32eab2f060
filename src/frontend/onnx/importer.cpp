// ONNX model -> IR graph: parse, check opsets, infer shapes, convert tensors, map every node
// through one table, normalise older opsets to the canonical forms reference.h documents.
#include "frontend/onnx/importer.h"

#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "frontend/onnx/tensor_proto.h"

namespace mixq::onnx_frontend {
namespace {

// --- the op table
// ---------------------------------------------------------------------------------

struct NodeContext {
  const onnx::NodeProto& proto;
  int opset;
  ir::Graph& graph;
  ir::Node& node;  // already has op, name, inputs, outputs and attributes copied
};

using Converter = std::function<Status(NodeContext&)>;

// Attribute `key` (ints) moves to a new constant int64 input at position `index`.
void attribute_to_input(NodeContext& c, const std::string& key, size_t index) {
  auto it = c.node.attrs.find(key);
  if (it == c.node.attrs.end()) return;
  std::vector<int64_t> values = c.node.attr_ints(key);
  c.node.attrs.erase(it);
  const std::string name = c.graph.unique_value_name(c.node.name + "/" + key);
  ir::Value* v =
      c.graph.add_constant(name, Tensor::from_vector<int64_t>({int64_t(values.size())}, values));
  if (c.node.inputs.size() <= index) c.node.inputs.resize(index + 1, nullptr);
  c.node.inputs[index] = v;
}

// Float attribute `key` moves to a scalar f32 input at `index` (Clip's min/max, Pad's value).
void float_attribute_to_input(NodeContext& c, const std::string& key, size_t index,
                              std::optional<float> fallback) {
  std::optional<float> value = fallback;
  if (c.node.has_attr(key)) value = c.node.attr_float(key, 0.0f);
  c.node.attrs.erase(key);
  if (!value) return;
  ir::Value* v = c.graph.add_constant(c.graph.unique_value_name(c.node.name + "/" + key),
                                      Tensor::scalar<float>(*value));
  if (c.node.inputs.size() <= index) c.node.inputs.resize(index + 1, nullptr);
  c.node.inputs[index] = v;
}

Status keep(NodeContext&) {
  return Status::Ok();
}

Status axes_attr_to_input(NodeContext& c) {
  attribute_to_input(c, "axes", 1);
  return Status::Ok();
}

Status convert_split(NodeContext& c) {
  attribute_to_input(c, "split", 1);
  return Status::Ok();
}

Status convert_clip(NodeContext& c) {
  if (c.opset < 11) {
    float_attribute_to_input(c, "min", 1, std::nullopt);
    float_attribute_to_input(c, "max", 2, std::nullopt);
  }
  return Status::Ok();
}

Status convert_pad(NodeContext& c) {
  if (c.opset < 11) {
    attribute_to_input(c, "pads", 1);
    if (c.node.has_attr("value")) float_attribute_to_input(c, "value", 2, std::nullopt);
  }
  return Status::Ok();
}

Status convert_slice(NodeContext& c) {
  if (c.opset < 10) {
    attribute_to_input(c, "starts", 1);
    attribute_to_input(c, "ends", 2);
    attribute_to_input(c, "axes", 3);
  }
  return Status::Ok();
}

Status convert_softmax(NodeContext& c) {
  if (c.opset < 13) c.node.attrs["mixq.coerce_2d"] = int64_t(1);
  return Status::Ok();
}

Status convert_cast(NodeContext& c) {
  const int64_t onnx_to = c.node.attr_int("to", -1);
  const auto to = dtype_from_onnx(int(onnx_to));
  if (!to)
    return Unsupported(c.node.describe() + " casts to " + onnx_type_name(int(onnx_to)) +
                       ", which mixq does not support");
  c.node.attrs["to"] = int64_t(*to);
  return Status::Ok();
}

Status convert_batchnorm(NodeContext& c) {
  if (c.node.attr_int("training_mode", 0) != 0)
    return Unsupported(c.node.describe() + " is in training mode; export the model in eval mode");
  // Outputs 1..4 only exist in training; drop unused placeholders so inference is plain.
  return Status::Ok();
}

struct TableEntry {
  const char* op_type;
  int min_opset;  // first opset this converter handles
  ir::OpKind op;
  Converter convert;
};

// One row per ONNX op (domain "" / ai.onnx), opsets kMinOpset..kMaxOpset.
const std::vector<TableEntry>& op_table() {
  using ir::OpKind;
  static const std::vector<TableEntry> table = {
      {"Conv", 1, OpKind::kConv, keep},
      {"Gemm", 7, OpKind::kGemm, keep},
      {"MatMul", 1, OpKind::kMatMul, keep},
      {"Relu", 1, OpKind::kRelu, keep},
      {"LeakyRelu", 1, OpKind::kLeakyRelu, keep},
      {"PRelu", 7, OpKind::kPRelu, keep},
      {"Clip", 1, OpKind::kClip, convert_clip},
      {"Sigmoid", 1, OpKind::kSigmoid, keep},
      {"Tanh", 1, OpKind::kTanh, keep},
      {"HardSigmoid", 1, OpKind::kHardSigmoid, keep},
      {"HardSwish", 14, OpKind::kHardSwish, keep},
      {"Elu", 1, OpKind::kElu, keep},
      {"Selu", 1, OpKind::kSelu, keep},
      {"Softplus", 1, OpKind::kSoftplus, keep},
      {"Sqrt", 1, OpKind::kSqrt, keep},
      {"Exp", 1, OpKind::kExp, keep},
      {"Log", 1, OpKind::kLog, keep},
      {"Neg", 1, OpKind::kNeg, keep},
      {"Abs", 1, OpKind::kAbs, keep},
      {"Reciprocal", 1, OpKind::kReciprocal, keep},
      {"Add", 7, OpKind::kAdd, keep},
      {"Sub", 7, OpKind::kSub, keep},
      {"Mul", 7, OpKind::kMul, keep},
      {"Div", 7, OpKind::kDiv, keep},
      {"Pow", 7, OpKind::kPow, keep},
      {"Max", 1, OpKind::kMax, keep},
      {"Min", 1, OpKind::kMin, keep},
      {"Sum", 1, OpKind::kSum, keep},
      {"Mean", 1, OpKind::kMean, keep},
      {"MaxPool", 1, OpKind::kMaxPool, keep},
      {"AveragePool", 1, OpKind::kAveragePool, keep},
      {"GlobalAveragePool", 1, OpKind::kGlobalAveragePool, keep},
      {"GlobalMaxPool", 1, OpKind::kGlobalMaxPool, keep},
      {"LRN", 1, OpKind::kLRN, keep},
      {"BatchNormalization", 1, OpKind::kBatchNormalization, convert_batchnorm},
      {"Softmax", 1, OpKind::kSoftmax, convert_softmax},
      {"LogSoftmax", 1, OpKind::kLogSoftmax, convert_softmax},
      {"ReduceMean", 1, OpKind::kReduceMean, axes_attr_to_input},
      {"ReduceSum", 1, OpKind::kReduceSum, axes_attr_to_input},
      {"ReduceMax", 1, OpKind::kReduceMax, axes_attr_to_input},
      {"ReduceMin", 1, OpKind::kReduceMin, axes_attr_to_input},
      {"Concat", 4, OpKind::kConcat, keep},
      {"Split", 1, OpKind::kSplit, convert_split},
      {"Flatten", 1, OpKind::kFlatten, keep},
      {"Reshape", 5, OpKind::kReshape, keep},
      {"Transpose", 1, OpKind::kTranspose, keep},
      {"Squeeze", 1, OpKind::kSqueeze, axes_attr_to_input},
      {"Unsqueeze", 1, OpKind::kUnsqueeze, axes_attr_to_input},
      {"Pad", 2, OpKind::kPad, convert_pad},
      {"Slice", 1, OpKind::kSlice, convert_slice},
      {"Gather", 1, OpKind::kGather, keep},
      {"Expand", 8, OpKind::kExpand, keep},
      {"Shape", 1, OpKind::kShape, keep},
      {"Cast", 6, OpKind::kCast, convert_cast},
      {"Constant", 1, OpKind::kConstant, keep},
      {"ConstantOfShape", 9, OpKind::kConstantOfShape, keep},
      {"Identity", 1, OpKind::kIdentity, keep},
      {"Dropout", 1, OpKind::kDropout, keep},
      {"QuantizeLinear", 10, OpKind::kQuantizeLinear, keep},
      {"DequantizeLinear", 10, OpKind::kDequantizeLinear, keep},
  };
  return table;
}

const TableEntry* find_entry(const std::string& op_type, int opset) {
  for (const TableEntry& e : op_table())
    if (op_type == e.op_type && opset >= e.min_opset) return &e;
  return nullptr;
}

// --- attributes -------------------------------------------------------------------------------

Status convert_attribute(const onnx::AttributeProto& a, const std::string& base_dir,
                         const std::string& where, ir::Attribute& out) {
  switch (a.type()) {
    case onnx::AttributeProto::INT:
      out = int64_t(a.i());
      return Status::Ok();
    case onnx::AttributeProto::FLOAT:
      out = a.f();
      return Status::Ok();
    case onnx::AttributeProto::STRING:
      out = a.s();
      return Status::Ok();
    case onnx::AttributeProto::INTS:
      out = std::vector<int64_t>(a.ints().begin(), a.ints().end());
      return Status::Ok();
    case onnx::AttributeProto::FLOATS:
      out = std::vector<float>(a.floats().begin(), a.floats().end());
      return Status::Ok();
    case onnx::AttributeProto::STRINGS:
      out = std::vector<std::string>(a.strings().begin(), a.strings().end());
      return Status::Ok();
    case onnx::AttributeProto::TENSOR: {
      MIXQ_ASSIGN_OR_RETURN(
          Tensor t, tensor_from_proto(a.t(), base_dir, where + " attribute '" + a.name() + "'"));
      out = std::move(t);
      return Status::Ok();
    }
    default:
      return Unsupported(where + " attribute '" + a.name() +
                         "' has a type mixq does not support (graphs, sparse tensors)");
  }
}

// Constant node -> the tensor it holds.
Expected<Tensor> constant_value(const onnx::NodeProto& n, const std::string& base_dir,
                                const std::string& where) {
  for (const auto& a : n.attribute()) {
    if (a.name() == "value") return tensor_from_proto(a.t(), base_dir, where);
    if (a.name() == "value_float") return Tensor::scalar<float>(a.f());
    if (a.name() == "value_int") return Tensor::scalar<int64_t>(a.i());
    if (a.name() == "value_floats")
      return Tensor::from_vector<float>({int64_t(a.floats_size())},
                                        {a.floats().begin(), a.floats().end()});
    if (a.name() == "value_ints")
      return Tensor::from_vector<int64_t>({int64_t(a.ints_size())},
                                          {a.ints().begin(), a.ints().end()});
  }
  return Unsupported(where + " has no value mixq can read (sparse or string constants)");
}

// --- types --------------------------------------------------------------------------------------

struct TypeInfo {
  bool known = false;
  int onnx_type = 0;
  bool shape_known = false;
  Shape shape;
};

TypeInfo type_info(const onnx::TypeProto& type) {
  TypeInfo info;
  if (!type.has_tensor_type()) return info;
  const auto& tt = type.tensor_type();
  info.known = tt.elem_type() != 0;
  info.onnx_type = tt.elem_type();
  if (tt.has_shape()) {
    info.shape_known = true;
    for (const auto& d : tt.shape().dim())
      info.shape.push_back(d.has_dim_value() && d.dim_value() >= 0 ? d.dim_value()
                                                                   : ir::kDynamicDim);
  }
  return info;
}

Status apply_type(ir::Value* v, const TypeInfo& info, const std::string& what) {
  if (info.known) {
    const auto dtype = dtype_from_onnx(info.onnx_type);
    if (!dtype)
      return Unsupported(what + " '" + v->name + "' has element type " +
                         onnx_type_name(info.onnx_type) + ", which mixq does not support");
    v->dtype = *dtype;
  }
  if (info.shape_known) {
    v->shape = info.shape;
    v->shape_known = true;
  }
  return Status::Ok();
}

// --- the import ---------------------------------------------------------------------------------

class Importer {
 public:
  Importer(const std::string& source, const std::string& base_dir)
      : source_(source), base_dir_(base_dir) {}

  Expected<std::unique_ptr<ir::Graph>> run(onnx::ModelProto& model, const ImportOptions& options) {
    if (!model.has_graph()) return ParseError(source_ + " holds no graph: not an ONNX model");
    MIXQ_RETURN_IF_ERROR(read_opset(model));
    MIXQ_RETURN_IF_ERROR(check_ops(model.graph()));
    if (options.shape_inference) {
      try {
        onnx::ShapeInferenceOptions opts(/*check_type=*/false, /*error_mode=*/0,
                                         /*enable_data_propagation=*/false);
        onnx::shape_inference::InferShapes(model, onnx::OpSchemaRegistry::Instance(), opts);
      } catch (const std::exception& e) {
        return InvalidArgument(source_ + ": ONNX shape inference failed: " + e.what());
      }
    }
    graph_ = std::make_unique<ir::Graph>();
    graph_->name = model.graph().name();
    graph_->opset = opset_;
    graph_->producer = model.producer_name();
    MIXQ_RETURN_IF_ERROR(convert_graph(model.graph()));
    Status s = graph_->toposort();
    if (!s.ok()) return s.with_context(source_);
    s = ir::verify(*graph_);
    if (!s.ok()) return s.with_context(source_);
    return std::move(graph_);
  }

 private:
  Status read_opset(const onnx::ModelProto& model) {
    opset_ = -1;
    for (const auto& imp : model.opset_import()) {
      if (imp.domain().empty() || imp.domain() == "ai.onnx") opset_ = int(imp.version());
    }
    if (opset_ < 0) {
      if (model.opset_import_size() == 0 && model.ir_version() > 0 && model.ir_version() < 3)
        opset_ = 1;  // IR v1/2 models predate opset imports
      else {
        // Models of other domains only (training ops, ML ops): report those ops by name.
        opset_ = kMaxOpset;
        MIXQ_RETURN_IF_ERROR(check_ops(model.graph()));
        return ParseError(source_ + " declares no ai.onnx opset");
      }
    }
    if (opset_ < kMinOpset || opset_ > kMaxOpset)
      return Unsupported(source_ + " uses opset " + std::to_string(opset_) +
                         "; mixq supports opsets " + std::to_string(kMinOpset) + " to " +
                         std::to_string(kMaxOpset));
    return Status::Ok();
  }

  // Every unsupported op in the model, listed at once with node names.
  Status check_ops(const onnx::GraphProto& g) {
    std::map<std::string, std::vector<std::string>> missing;
    for (int i = 0; i < g.node_size(); ++i) {
      const auto& n = g.node(i);
      const bool default_domain = n.domain().empty() || n.domain() == "ai.onnx";
      const std::string op = default_domain ? n.op_type() : n.domain() + "::" + n.op_type();
      if (!default_domain || !find_entry(n.op_type(), opset_))
        missing[op].push_back(n.name().empty() ? "#" + std::to_string(i) : n.name());
    }
    if (missing.empty()) return Status::Ok();
    std::ostringstream os;
    size_t count = 0;
    for (const auto& [op, names] : missing) count += names.size();
    os << source_ << ": " << count << " node(s) use ops mixq does not support: ";
    bool first = true;
    for (const auto& [op, names] : missing) {
      os << (first ? "" : "; ") << op << " (";
      for (size_t i = 0; i < names.size() && i < 10; ++i) os << (i ? ", " : "") << names[i];
      if (names.size() > 10) os << ", and " << names.size() - 10 << " more";
      os << ")";
      first = false;
    }
    return Unsupported(os.str());
  }

  Status convert_graph(const onnx::GraphProto& g) {
    // Initializers become constants. Old exporters also list them as graph inputs: those stay
    // constants (the model's own weights), not inputs the user must feed.
    std::set<std::string> initializer_names;
    for (const auto& init : g.initializer()) {
      if (init.name().empty()) return ParseError(source_ + ": an initializer has no name");
      if (!initializer_names.insert(init.name()).second)
        return ParseError(source_ + ": two initializers are both named '" + init.name() + "'");
      MIXQ_ASSIGN_OR_RETURN(
          Tensor t, tensor_from_proto(init, base_dir_, "initializer '" + init.name() + "'"));
      graph_->add_constant(init.name(), std::move(t));
    }
    if (g.sparse_initializer_size() > 0)
      return Unsupported(source_ + ": sparse initializers are not supported");
    for (const auto& in : g.input()) {
      if (initializer_names.count(in.name())) continue;
      if (graph_->find_value(in.name()))
        return ParseError(source_ + ": graph input '" + in.name() + "' is listed twice");
      ir::Value* v = graph_->add_value(in.name(), DType::kFloat32, {}, false);
      const TypeInfo info = type_info(in.type());
      if (!info.known)
        return Unsupported(source_ + ": graph input '" + in.name() + "' is not a typed tensor");
      MIXQ_RETURN_IF_ERROR(apply_type(v, info, source_ + ": graph input"));
      graph_->inputs().push_back(v);
    }
    // Types of intermediate values from shape inference (and the exporter's own value_info).
    std::map<std::string, TypeInfo> types;
    for (const auto& vi : g.value_info()) types[vi.name()] = type_info(vi.type());
    for (const auto& vi : g.output()) types[vi.name()] = type_info(vi.type());

    // Node outputs first, so inputs can refer to values produced later in file order.
    for (int i = 0; i < g.node_size(); ++i) {
      const auto& n = g.node(i);
      for (const std::string& out : n.output()) {
        if (out.empty()) continue;
        if (graph_->find_value(out))
          return InvalidArgument(source_ + ": value '" + out + "' is written by node '" + n.name() +
                                 "' (" + n.op_type() +
                                 ") but is also an input, initializer or another node's output");
        ir::Value* v = graph_->add_value(out, DType::kFloat32, {}, false);
        auto it = types.find(out);
        if (it != types.end()) {
          Status s = apply_type(v, it->second, source_ + ": value");
          // An untypeable intermediate (e.g. double) is an error only if used; record lazily.
          if (!s.ok()) return s;
        }
      }
    }
    std::set<std::string> node_names;
    for (int i = 0; i < g.node_size(); ++i) {
      const auto& n = g.node(i);
      std::string name = n.name().empty() ? n.op_type() + "_" + std::to_string(i) : n.name();
      if (!node_names.insert(name).second) {
        name = name + "_" + std::to_string(i);
        node_names.insert(name);
      }
      MIXQ_RETURN_IF_ERROR(convert_node(n, name));
    }
    for (const auto& out : g.output()) {
      ir::Value* v = graph_->find_value(out.name());
      if (!v)
        return InvalidArgument(source_ + ": graph output '" + out.name() +
                               "' is produced by no node, input or initializer");
      graph_->outputs().push_back(v);
    }
    return Status::Ok();
  }

  Status convert_node(const onnx::NodeProto& n, const std::string& name) {
    const std::string where = source_ + ": node '" + name + "' (" + n.op_type() + ")";
    const TableEntry* entry = find_entry(n.op_type(), opset_);
    if (!entry) return Unsupported(where + " is not supported");  // check_ops caught this first

    // Constants become constant values directly: nothing to compute.
    if (entry->op == ir::OpKind::kConstant) {
      if (n.output_size() != 1 || n.output(0).empty())
        return InvalidArgument(where + " must have exactly one named output");
      MIXQ_ASSIGN_OR_RETURN(Tensor t, constant_value(n, base_dir_, where));
      ir::Value* v = graph_->find_value(n.output(0));
      v->constant = std::move(t);
      v->dtype = v->constant.dtype();
      v->shape = v->constant.shape();
      v->shape_known = true;
      return Status::Ok();
    }

    std::vector<ir::Value*> inputs, outputs;
    for (int k = 0; k < n.input_size(); ++k) {
      const std::string& in = n.input(k);
      if (in.empty()) {
        inputs.push_back(nullptr);
        continue;
      }
      ir::Value* v = graph_->find_value(in);
      if (!v)
        return InvalidArgument(where + " reads '" + in +
                               "', which no node, graph input or initializer provides");
      inputs.push_back(v);
    }
    while (!inputs.empty() && inputs.back() == nullptr) inputs.pop_back();
    for (const std::string& out : n.output())
      outputs.push_back(out.empty() ? nullptr : graph_->find_value(out));
    while (!outputs.empty() && outputs.back() == nullptr) outputs.pop_back();
    ir::Node* node = graph_->add_node(entry->op, name, std::move(inputs), std::move(outputs));
    for (const auto& a : n.attribute()) {
      ir::Attribute value;
      MIXQ_RETURN_IF_ERROR(convert_attribute(a, base_dir_, where, value));
      node->attrs[a.name()] = std::move(value);
    }
    node->module_name = module_name_from_node_name(n.name());
    if (node->module_name.empty()) {
      // Older exports name nodes "Conv_12": fall back to the weights' names.
      for (ir::Value* in : node->inputs) {
        if (!in || !in->is_constant()) continue;
        std::string m = module_name_from_parameter_name(in->name);
        if (!m.empty()) {
          node->module_name = m;
          break;
        }
      }
    }
    NodeContext ctx{n, opset_, *graph_, *node};
    Status s = entry->convert(ctx);
    if (!s.ok()) return s.code() == StatusCode::kUnsupported ? s : s.with_context(where);
    return Status::Ok();
  }

  std::string source_;
  std::string base_dir_;
  int opset_ = 0;
  std::unique_ptr<ir::Graph> graph_;
};

}  // namespace

Expected<std::unique_ptr<ir::Graph>> import_model_bytes(std::string_view bytes,
                                                        const std::string& source,
                                                        const std::string& base_dir,
                                                        const ImportOptions& options) {
  if (bytes.empty()) return ParseError(source + " is empty: not an ONNX model");
  onnx::ModelProto model;
  if (bytes.size() > size_t(std::numeric_limits<int>::max()))
    return Unsupported(source + " is larger than 2 GiB; use external data for the weights");
  if (!model.ParseFromArray(bytes.data(), int(bytes.size())))
    return ParseError(source +
                      " is not a valid ONNX model (protobuf parsing failed: truncated "
                      "or not an ONNX file)");
  if (model.ir_version() <= 0 || !model.has_graph())
    return ParseError(source + " is not an ONNX model (no IR version or no graph)");
  Importer importer(source, base_dir);
  return importer.run(model, options);
}

Expected<std::unique_ptr<ir::Graph>> import_model_file(const std::string& path,
                                                       const ImportOptions& options) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec))
    return NotFound("model file '" + path + "' does not exist");
  if (std::filesystem::is_directory(path, ec))
    return InvalidArgument("'" + path + "' is a directory, not an ONNX model file");
  std::ifstream in(path, std::ios::binary);
  if (!in) return IoError("cannot open model file '" + path + "'");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string base_dir = std::filesystem::path(path).parent_path().string();
  return import_model_bytes(bytes, "'" + path + "'", base_dir, options);
}

Expected<NamedTensor> load_tensor_proto_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("tensor file '" + path + "' cannot be opened");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  onnx::TensorProto proto;
  if (!proto.ParseFromString(bytes))
    return ParseError("'" + path + "' is not a serialized ONNX TensorProto");
  MIXQ_ASSIGN_OR_RETURN(Tensor t,
                        tensor_from_proto(proto, std::filesystem::path(path).parent_path().string(),
                                          "tensor '" + path + "'"));
  return NamedTensor{proto.name(), std::move(t)};
}

}  // namespace mixq::onnx_frontend
