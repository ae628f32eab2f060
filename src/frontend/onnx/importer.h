// ONNX -> IR. The only folder that sees onnx:: types; everything it returns is IR.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "ir/graph.h"
#include "mixq/status.h"
#include "mixq/tensor.h"

namespace mixq::onnx_frontend {

// Opsets 7-17 are the target; older ones import where an op's semantics did not change (the op
// table's per-op first opset guards the rest).
inline constexpr int kMinOpset = 1;
inline constexpr int kMaxOpset = 17;

struct ImportOptions {
  bool shape_inference = true;  // run ONNX's shape inference to type intermediate values
};

// Parses, checks and converts a model file. Errors name the file and the offending node.
Expected<std::unique_ptr<ir::Graph>> import_model_file(const std::string& path,
                                                       const ImportOptions& options = {});
// Same, from bytes; `source` names them in messages. `base_dir` resolves external data.
Expected<std::unique_ptr<ir::Graph>> import_model_bytes(std::string_view bytes,
                                                        const std::string& source,
                                                        const std::string& base_dir = "",
                                                        const ImportOptions& options = {});

// A serialized TensorProto file (ONNX test data: input_0.pb, output_0.pb).
struct NamedTensor {
  std::string name;
  Tensor tensor;
};
Expected<NamedTensor> load_tensor_proto_file(const std::string& path);

// The framework module a node came from, from its ONNX name and its weights' names:
// "/layer1/layer1.0/conv1/Conv" -> "layer1.0.conv1"; weight "fc.weight" -> "fc".
std::string module_name_from_node_name(std::string_view node_name);
std::string module_name_from_parameter_name(std::string_view parameter_name);

}  // namespace mixq::onnx_frontend
