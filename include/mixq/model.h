// A network loaded from ONNX and simplified (constants folded, BatchNorm folded, Identity and
// Dropout removed), ready to run on the reference backend or to build an engine from.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mixq/status.h"
#include "mixq/tensor.h"

namespace mixq {

namespace ir {
class Graph;
}

struct TensorSpec {
  std::string name;
  DType dtype = DType::kFloat32;
  Shape shape;  // -1 marks a symbolic dimension (the batch)
};

struct LayerSummary {
  std::string name;                // node name (unique)
  std::string op;                  // ONNX op type
  std::string module;              // framework module ("layer1.0.conv1"), may be empty
  std::vector<TensorSpec> inputs;  // activations and weights, in order
  std::vector<TensorSpec> outputs;
  std::map<std::string, std::string> attributes;  // printable attribute values
  int64_t params = 0;                             // weight elements
  int64_t macs = 0;                               // multiply-accumulates per sample
  int64_t flops = 0;                              // floating-point operations per sample
};

struct ModelSummary {
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
  std::vector<LayerSummary> layers;
  int64_t total_params = 0;
  int64_t total_macs = 0;
  int64_t total_flops = 0;
  int opset = 0;
  std::string producer;
};

struct LoadOptions {
  bool simplify = true;  // fold constants, BN, identities; remove dead nodes
  bool fold_batchnorm = true;
};

using TensorMap = std::map<std::string, Tensor>;

class Model {
 public:
  static Expected<Model> load(const std::string& onnx_path, const LoadOptions& options = {});
  static Expected<Model> from_bytes(const std::string& bytes, const std::string& source_name,
                                    const LoadOptions& options = {});

  const std::vector<TensorSpec>& inputs() const;
  const std::vector<TensorSpec>& outputs() const;
  ModelSummary summary() const;

  // Runs on the reference backend (fp32 oracle). Inputs are checked by name, dtype and shape.
  // With keep_intermediates, every value the graph computes is returned too, by name.
  Expected<TensorMap> run_reference(const TensorMap& inputs, bool keep_intermediates = false) const;

  // Random inputs for every graph input (uniform [-1, 1) for floats), symbolic dims = batch.
  TensorMap random_inputs(int64_t batch, uint64_t seed) const;

  const ir::Graph& graph() const;  // internal use (engine builder, tools)

  Model(Model&&) noexcept;
  Model& operator=(Model&&) noexcept;
  ~Model();

 private:
  struct Impl;
  explicit Model(std::unique_ptr<Impl> impl);
  static Expected<Model> create(std::unique_ptr<ir::Graph> graph, const LoadOptions& options);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mixq
