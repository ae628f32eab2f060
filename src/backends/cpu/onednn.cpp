#include "backends/cpu/onednn.h"

namespace mixq::backends::cpu {

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

const CpuCaps& cpu_caps() {
  static const CpuCaps caps = [] {
    CpuCaps c;
    using isa = dnnl::cpu_isa;
    switch (dnnl::get_effective_cpu_isa()) {
      case isa::sse41:
        c.isa = "sse41";
        break;
      case isa::avx:
        c.isa = "avx";
        break;
      case isa::avx2:
        c.isa = "avx2";
        break;
      case isa::avx2_vnni:
        c.isa = "avx2_vnni";
        c.vnni = true;
        break;
      case isa::avx512_core:
        c.isa = "avx512_core";
        break;
      case isa::avx512_core_vnni:
        c.isa = "avx512_core_vnni";
        c.vnni = true;
        break;
      case isa::avx512_core_bf16:
        c.isa = "avx512_core_bf16";
        c.vnni = c.bf16 = true;
        break;
      case isa::avx512_core_amx:
        c.isa = "avx512_core_amx";
        c.vnni = c.bf16 = true;
        break;
      default:
        c.isa = "other";
        break;
    }
    return c;
  }();
  return caps;
}

dnnl::memory::data_type dnnl_dtype(DType dtype) {
  using dt = dnnl::memory::data_type;
  switch (dtype) {
    case DType::kFloat32:
      return dt::f32;
    case DType::kFloat16:
      return dt::f16;
    case DType::kBFloat16:
      return dt::bf16;
    case DType::kInt8:
      return dt::s8;
    case DType::kUInt8:
      return dt::u8;
    case DType::kInt32:
      return dt::s32;
    default:
      return dt::undef;
  }
}

bool dnnl_has_dtype(DType dtype) {
  return dnnl_dtype(dtype) != dnnl::memory::data_type::undef;
}

dnnl::memory::format_tag plain_tag(size_t rank) {
  using tag = dnnl::memory::format_tag;
  switch (rank) {
    case 1:
      return tag::a;
    case 2:
      return tag::ab;
    case 3:
      return tag::abc;
    case 4:
      return tag::abcd;
    case 5:
      return tag::abcde;
    case 6:
      return tag::abcdef;
    default:
      return tag::undef;
  }
}

dnnl::memory::format_tag layout_tag(ir::Layout layout, size_t rank) {
  using tag = dnnl::memory::format_tag;
  switch (layout) {
    case ir::Layout::kPlain:
      return plain_tag(rank);
    case ir::Layout::kNHWC:
      return rank == 4 ? tag::acdb : rank == 3 ? tag::acb : tag::acdeb;
    case ir::Layout::kBlocked8:
      return rank == 4 ? tag::aBcd8b : rank == 3 ? tag::aBc8b : tag::aBcde8b;
    case ir::Layout::kBlocked16:
      return rank == 4 ? tag::aBcd16b : rank == 3 ? tag::aBc16b : tag::aBcde16b;
  }
  return tag::undef;
}

dnnl::memory::dims dims_of(const Shape& shape) {
  // oneDNN has no 0-d tensors: a scalar is a 1-element vector.
  if (shape.empty()) return {1};
  return dnnl::memory::dims(shape.begin(), shape.end());
}

dnnl::memory::desc desc_of(DType dtype, ir::Layout layout, const Shape& shape) {
  const auto dims = dims_of(shape);
  return dnnl::memory::desc(dims, dnnl_dtype(dtype), layout_tag(layout, dims.size()));
}

dnnl::memory::desc desc_of(const ir::Value& value, const Shape& shape) {
  return desc_of(value.dtype, value.layout, shape);
}

Status guarded(const std::string& what, const std::function<void()>& f) {
  try {
    f();
  } catch (const dnnl::error& e) {
    return Unsupported(what + ": oneDNN: " + e.what());
  }
  return Status::Ok();
}

dnnl::primitive_attr base_attr() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

}  // namespace mixq::backends::cpu
