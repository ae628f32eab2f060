#include "mixq/model.h"

#include <random>
#include <sstream>

#include "frontend/onnx/importer.h"
#include "ir/graph.h"
#include "runtime/interpreter.h"

namespace mixq {

struct Model::Impl {
  std::unique_ptr<ir::Graph> graph;
  std::vector<TensorSpec> inputs, outputs;
};

namespace {

TensorSpec spec_of(const ir::Value* v) {
  return {v->name, v->dtype, v->shape_known ? v->shape : Shape{}};
}

std::string attribute_to_string(const ir::Attribute& a) {
  std::ostringstream os;
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, int64_t> || std::is_same_v<T, float>)
          os << v;
        else if constexpr (std::is_same_v<T, std::string>)
          os << v;
        else if constexpr (std::is_same_v<T, Tensor>)
          os << "tensor " << v.describe();
        else {
          os << "[";
          for (size_t i = 0; i < v.size(); ++i) os << (i ? "," : "") << v[i];
          os << "]";
        }
      },
      a);
  return os.str();
}

}  // namespace

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;

Expected<Model> Model::create(std::unique_ptr<ir::Graph> graph, const LoadOptions& options) {
  auto impl = std::make_unique<Model::Impl>();
  impl->graph = std::move(graph);
  if (options.simplify) {
    ir::SimplifyOptions so;
    so.fold_batchnorm = options.fold_batchnorm;
    MIXQ_RETURN_IF_ERROR(runtime::simplify_graph(*impl->graph, so));
  }
  // Our own shape functions fill what ONNX's shape inference left unknown.
  Status shapes = runtime::infer_shapes(*impl->graph);
  (void)shapes;  // a model whose shapes depend on run-time values still runs on the reference
  for (const ir::Value* v : impl->graph->inputs()) impl->inputs.push_back(spec_of(v));
  for (const ir::Value* v : impl->graph->outputs()) impl->outputs.push_back(spec_of(v));
  return Model(std::move(impl));
}

Expected<Model> Model::load(const std::string& path, const LoadOptions& options) {
  MIXQ_ASSIGN_OR_RETURN(auto graph, onnx_frontend::import_model_file(path));
  return create(std::move(graph), options);
}

Expected<Model> Model::from_bytes(const std::string& bytes, const std::string& source,
                                  const LoadOptions& options) {
  MIXQ_ASSIGN_OR_RETURN(auto graph, onnx_frontend::import_model_bytes(bytes, source));
  return create(std::move(graph), options);
}

const std::vector<TensorSpec>& Model::inputs() const {
  return impl_->inputs;
}
const std::vector<TensorSpec>& Model::outputs() const {
  return impl_->outputs;
}
const ir::Graph& Model::graph() const {
  return *impl_->graph;
}

ModelSummary Model::summary() const {
  ModelSummary s;
  s.inputs = impl_->inputs;
  s.outputs = impl_->outputs;
  s.opset = impl_->graph->opset;
  s.producer = impl_->graph->producer;
  for (const ir::Node* n : impl_->graph->nodes()) {
    LayerSummary l;
    l.name = n->name;
    l.op = std::string(ir::op_name(n->op));
    l.module = n->module_name;
    for (const ir::Value* in : n->inputs)
      if (in) l.inputs.push_back(spec_of(in));
    for (const ir::Value* out : n->outputs)
      if (out) l.outputs.push_back(spec_of(out));
    for (const auto& [k, v] : n->attrs) l.attributes[k] = attribute_to_string(v);
    const ir::NodeCost cost = ir::node_cost(*n);
    l.params = cost.params;
    l.macs = cost.macs;
    l.flops = cost.flops;
    s.total_params += l.params;
    s.total_macs += l.macs;
    s.total_flops += l.flops;
    s.layers.push_back(std::move(l));
  }
  return s;
}

Expected<TensorMap> Model::run_reference(const TensorMap& inputs, bool keep_intermediates) const {
  runtime::InterpreterOptions options;
  options.keep_intermediates = keep_intermediates;
  return runtime::run_reference(*impl_->graph, inputs, options);
}

TensorMap Model::random_inputs(int64_t batch, uint64_t seed) const {
  TensorMap map;
  std::mt19937_64 rng(seed);
  for (const TensorSpec& spec : impl_->inputs) {
    Shape shape = spec.shape;
    for (size_t i = 0; i < shape.size(); ++i)
      if (shape[i] < 0) shape[i] = i == 0 ? batch : 1;
    Tensor f = Tensor::empty(DType::kFloat32, shape);
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    for (int64_t i = 0; i < f.numel(); ++i) f.data<float>()[i] = dist(rng);
    map[spec.name] = spec.dtype == DType::kFloat32 ? f : f.to(spec.dtype);
  }
  return map;
}

}  // namespace mixq
