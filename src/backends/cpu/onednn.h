// oneDNN plumbing shared by the CPU kernels: the engine, dtype/layout mapping, error handling,
// ISA detection, and the per-context stream.
#pragma once

#include <dnnl.hpp>

#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

#include "backends/backend.h"

namespace mixq::backends::cpu {

dnnl::engine& cpu_engine();

// What the CPU can do, from oneDNN's view of it (honours ONEDNN_MAX_CPU_ISA).
struct CpuCaps {
  std::string isa;    // "avx2", "avx512_core_vnni", ...
  bool vnni = false;  // u8 x s8 dot products accumulate in 32 bits (no saturation)
  bool bf16 = false;  // bf16 convolutions and matmuls
};
const CpuCaps& cpu_caps();

dnnl::memory::data_type dnnl_dtype(DType dtype);
bool dnnl_has_dtype(DType dtype);
dnnl::memory::format_tag plain_tag(size_t rank);
dnnl::memory::format_tag layout_tag(ir::Layout layout, size_t rank);
dnnl::memory::dims dims_of(const Shape& shape);
dnnl::memory::desc desc_of(const ir::Value& value, const Shape& shape);
dnnl::memory::desc desc_of(DType dtype, ir::Layout layout, const Shape& shape);

// Runs f, turning a dnnl::error into a Status that names `what`.
Status guarded(const std::string& what, const std::function<void()>& f);

class CpuResources final : public ExecResources {
 public:
  CpuResources() : stream(cpu_engine()) {}
  dnnl::stream stream;
};

inline dnnl::stream& stream_of(const ExecContext& ctx) {
  return static_cast<CpuResources*>(ctx.resources)->stream;
}

// A primitive shared across threads: attributes with a user-managed scratchpad.
dnnl::primitive_attr base_attr();

// `shape` with its symbolic (negative) dimensions set to `batch`.
Shape at_batch(const Shape& shape, int64_t batch);

// `data`, laid out as `plain`, reordered once into new memory laid out as `packed` (packed
// weights, bias); `what` names it in errors.
Expected<dnnl::memory> reorder_constant(const std::string& what, const dnnl::memory::desc& plain,
                                        const void* data, const dnnl::memory::desc& packed);

// The int8 epilogue of a conv or linear layer (output channels on dimension 1): per-channel
// output scales s_x * s_w / s_y, the zero points, and `bias` divided by s_x * s_w (oneDNN 2.x
// adds the bias before the output scale). Returns 1 / s_y, the factor from real values to
// output units for post-op bounds (1 for an f32 output).
Expected<float> set_int8_epilogue(const ir::Node& node, dnnl::primitive_attr& attr,
                                  std::vector<float>& bias);

// The node's fused activation (mixq.activation relu or clip) as a post-op; clip bounds are
// scaled by `to_output_units`.
void append_activation(const ir::Node& node, float to_output_units, dnnl::post_ops& ops);

// One oneDNN primitive at one batch size. The i-th activation input of the ExecContext binds to
// inputs[i], the output to `output`, the scratchpad to `scratch`; `constants` (packed weights,
// bias) are bound as they are.
class PrimitiveInstance final : public KernelInstance {
 public:
  struct Arg {
    int id;
    dnnl::memory::desc desc;
  };
  PrimitiveInstance(const ir::Node& node, dnnl::primitive primitive, std::vector<Arg> inputs,
                    Arg output, dnnl::memory::desc scratch,
                    std::unordered_map<int, dnnl::memory> constants = {});
  Status execute(const ExecContext& ctx) const override;
  size_t scratch_bytes() const override { return scratch_.get_size(); }

 private:
  const ir::Node& node_;
  dnnl::primitive primitive_;
  std::vector<Arg> inputs_;
  Arg output_;
  dnnl::memory::desc scratch_;
  std::unordered_map<int, dnnl::memory> constants_;
};

// Kernels (one op family per file).
bool conv_supports(const ir::Node& node, Precision precision, std::string* why);
Expected<std::unique_ptr<Kernel>> make_conv_kernel(const ir::Node& node, Precision precision);
bool gemm_supports(const ir::Node& node, Precision precision, std::string* why);
Expected<std::unique_ptr<Kernel>> make_gemm_kernel(const ir::Node& node, Precision precision);
bool pool_supports(const ir::Node& node, Precision precision, std::string* why);
Expected<std::unique_ptr<Kernel>> make_pool_kernel(const ir::Node& node, Precision precision);
bool reformat_supports(const ir::Node& node, Precision precision, std::string* why);
Expected<std::unique_ptr<Kernel>> make_reformat_kernel(const ir::Node& node, Precision precision);
bool int8_data_supports(const ir::Node& node, std::string* why);
bool int8_add_supports(const ir::Node& node, std::string* why);
Expected<std::unique_ptr<Kernel>> make_int8_add_kernel(const ir::Node& node);
Expected<std::unique_ptr<Kernel>> make_int8_data_kernel(const ir::Node& node);
bool eltwise_supports(const ir::Node& node, Precision precision, std::string* why);
Expected<std::unique_ptr<Kernel>> make_eltwise_kernel(const ir::Node& node);
bool binary_supports(const ir::Node& node, Precision precision, std::string* why);
Expected<std::unique_ptr<Kernel>> make_binary_kernel(const ir::Node& node, Precision precision);

}  // namespace mixq::backends::cpu
