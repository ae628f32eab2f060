// The reference backend: naive, readable kernels for every op in ops.def. It is the oracle every
// other backend is tested against, the engine behind `mixq run`, constant folding and calibration.
//
// Each op provides two functions:
//   infer:   input dtypes/shapes (and values where known) -> output dtypes/shapes
//   compute: input tensors -> preallocated output tensors (shapes from infer)
//
// Canonical forms (the ONNX importer rewrites older opsets into these, so kernels see one form):
// - Squeeze/Unsqueeze axes, Split sizes, Clip min/max, Pad pads/constant_value, and every
//   Reduce* axes arrive as optional *inputs* (opset 13+ style), never attributes.
// - Softmax/LogSoftmax from opset < 13 carry the int attribute "mixq.coerce_2d" = 1 (flatten to
//   2-D at `axis`, then softmax over the second dimension); opset 13+ normalise along `axis`.
// - Absent optional inputs are TensorInfo{present = false} / undefined Tensors.
#pragma once

#include <span>
#include <vector>

#include "ir/graph.h"
#include "mixq/status.h"
#include "mixq/tensor.h"

namespace mixq::reference {

struct TensorInfo {
  bool present = false;
  DType dtype = DType::kFloat32;
  Shape shape;                    // kDynamicDim where unknown at build time
  const Tensor* value = nullptr;  // the data, where known (constants; always at run time)

  static TensorInfo of(const Tensor& t) { return {t.defined(), t.dtype(), t.shape(), &t}; }
};

using InferFn = Status (*)(const ir::Node& node, std::span<const TensorInfo> inputs,
                           std::span<TensorInfo> outputs);
using ComputeFn = Status (*)(const ir::Node& node, std::span<const Tensor> inputs,
                             std::span<Tensor> outputs);

struct OpImpl {
  InferFn infer = nullptr;
  ComputeFn compute = nullptr;
};

// The kernel for an op, or nullptr when the reference backend has none.
const OpImpl* find_op(ir::OpKind op);
bool supports(ir::OpKind op);

// Output infos for a node: outputs.size() == node.outputs.size(); absent outputs stay !present.
Status infer_node(const ir::Node& node, std::span<const TensorInfo> inputs,
                  std::vector<TensorInfo>& outputs);
// Infer, allocate and compute one node. Errors name the node.
Status run_node(const ir::Node& node, std::span<const Tensor> inputs, std::vector<Tensor>& outputs);

// --- registration (one function per op family, each in its own file) -----------------------------
class Registry {
 public:
  void add(ir::OpKind op, OpImpl impl);
  const OpImpl* find(ir::OpKind op) const;

 private:
  std::vector<OpImpl> impls_;
};

void register_conv(Registry& registry);           // conv.cpp
void register_gemm(Registry& registry);           // gemm.cpp: Gemm, MatMul
void register_activation(Registry& registry);     // activation.cpp: unary activations and math
void register_elementwise(Registry& registry);    // elementwise.cpp: broadcast binary, variadic
void register_pool(Registry& registry);           // pool.cpp
void register_normalization(Registry& registry);  // normalization.cpp: BN, LRN, Softmax
void register_reduce(Registry& registry);         // reduce.cpp
void register_shape(Registry& registry);          // shape.cpp: data movement and shape ops
void register_quantize(Registry& registry);       // quantize.cpp: Quantize/DequantizeLinear
void register_fused(Registry& registry);          // fused.cpp: FusedConv, FusedGemm, Reformat

// Real values of a tensor: dequantised with `quant` when given (i8/u8/f8), converted otherwise.
Tensor dequantize_to_float(const Tensor& tensor, const ir::QuantParams* quant);
// Float values to `dtype` with `quant` (round half to even, saturate), or a plain conversion.
Tensor quantize_from_float(const Tensor& values, DType dtype, const ir::QuantParams* quant);

}  // namespace mixq::reference
