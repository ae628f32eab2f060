// TensorProto <-> Tensor, ONNX element types <-> DType. Internal to the ONNX frontend.
#pragma once

#include <onnx/onnx_pb.h>

#include <optional>
#include <string>

#include "mixq/status.h"
#include "mixq/tensor.h"

namespace mixq::onnx_frontend {

// ONNX's enum for float8e4m3fn (onnx 1.14+; this onnx 1.12 does not name it).
inline constexpr int kOnnxFloat8E4M3FN = 17;

std::optional<DType> dtype_from_onnx(int onnx_type);
int dtype_to_onnx(DType dtype);
const char* onnx_type_name(int onnx_type);

// `base_dir` resolves external data; `what` names the tensor in messages.
Expected<Tensor> tensor_from_proto(const onnx::TensorProto& proto, const std::string& base_dir,
                                   const std::string& what);

}  // namespace mixq::onnx_frontend
