// The operator kinds of the IR (see ops.def) and their arity.
#pragma once

#include <optional>
#include <string_view>

namespace mixq::ir {

enum class OpKind : uint16_t {
#define MIXQ_OP(name, min_in, max_in, min_out, max_out) k##name,
#include "ir/ops.def"
#undef MIXQ_OP
};

struct OpInfo {
  std::string_view name;
  int min_inputs;
  int max_inputs;
  int min_outputs;
  int max_outputs;
};

const OpInfo& op_info(OpKind op);
std::string_view op_name(OpKind op);
std::optional<OpKind> op_from_name(std::string_view name);
int op_count();
OpKind op_at(int index);
// Ops whose output is their first input's elements in the same row-major order under another
// shape (Flatten, Reshape, Squeeze, Unsqueeze, Identity, Dropout at inference): a copy, or no
// work at all where the output may share the input's buffer.
bool keeps_element_order(OpKind op);

// A FusedConv chained with a second convolution (ops.def; inputs 4 and 5 its weights and bias):
// the second's own attributes under kChainThenPrefix, and these.
inline constexpr const char* kChainThenPrefix = "mixq.then.";
inline constexpr const char* kChainAttrPrefix = "mixq.chain_";             // the chain's own, below
inline constexpr const char* kChainNameAttr = "mixq.chain_second";         // the second's name
inline constexpr const char* kChainModuleAttr = "mixq.chain_module";       // and module
inline constexpr const char* kChainMidShapeAttr = "mixq.chain_mid_shape";  // C, H, W between
inline constexpr const char* kChainMidDtypeAttr = "mixq.chain_mid_dtype";  // its storage type
inline constexpr const char* kChainMidScaleAttr = "mixq.chain_mid_scale";  // quantised only

}  // namespace mixq::ir
