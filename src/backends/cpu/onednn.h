// oneDNN plumbing shared by the CPU kernels: the engine, dtype/layout mapping, error handling,
// ISA detection, and the per-context stream.
#pragma once

#include <dnnl.hpp>

#include <functional>
#include <string>

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
