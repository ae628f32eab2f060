#include "backends/cpu/onednn.h"

#include <cmath>

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

Shape at_batch(const Shape& shape, int64_t batch) {
  Shape r = shape;
  for (auto& d : r)
    if (d < 0) d = batch;
  return r;
}

Expected<dnnl::memory> reorder_constant(const std::string& what, const dnnl::memory::desc& plain,
                                        const void* data, const dnnl::memory::desc& packed) {
  dnnl::memory out;
  Status s = guarded(what, [&] {
    dnnl::memory src(plain, cpu_engine(), const_cast<void*>(data));
    out = dnnl::memory(packed, cpu_engine());
    dnnl::stream stream(cpu_engine());
    dnnl::reorder(src, out).execute(stream, src, out);
    stream.wait();
  });
  if (!s.ok()) return s;
  return out;
}

Expected<float> set_int8_epilogue(const ir::Node& node, dnnl::primitive_attr& attr,
                                  std::vector<float>& bias) {
  const ir::Value* x = node.input(0);
  const ir::Value* w = node.input(1);
  const ir::Value* y = node.output(0);
  if (!x->quant || !w->quant || w->dtype != DType::kInt8)
    return Internal(node.describe() + ": int8 layer without quantised input or weights");
  const bool y_quantized = y->dtype != DType::kFloat32;
  const int64_t channels = w->constant.dim(0);
  const float sx = x->quant->scale[0];
  const float sy = y_quantized ? y->quant->scale[0] : 1.0f;
  std::vector<float> scales(static_cast<size_t>(channels));
  for (int64_t c = 0; c < channels; ++c) {
    const float sw = w->quant->scale[w->quant->per_tensor() ? 0 : size_t(c)];
    scales[size_t(c)] = sx * sw / sy;
    if (!bias.empty()) bias[size_t(c)] /= sx * sw;
  }
  if (channels == 1)
    attr.set_output_scales(0, scales);
  else
    attr.set_output_scales(1 << 1, scales);
  if (x->quant->zero_point_at(0) != 0)
    attr.set_zero_points(DNNL_ARG_SRC, 0, {x->quant->zero_point_at(0)});
  if (y_quantized && y->quant->zero_point_at(0) != 0)
    attr.set_zero_points(DNNL_ARG_DST, 0, {y->quant->zero_point_at(0)});
  return 1.0f / sy;
}

void append_activation(const ir::Node& node, float to_output_units, dnnl::post_ops& ops) {
  const std::string act = node.attr_string("mixq.activation", "none");
  if (act == "relu") {
    ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
  } else if (act == "clip") {
    const float lo = node.attr_float("mixq.clip_min", -INFINITY) * to_output_units;
    const float hi = node.attr_float("mixq.clip_max", INFINITY) * to_output_units;
    ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_clip, std::isfinite(lo) ? lo : -3.4e38f,
                       std::isfinite(hi) ? hi : 3.4e38f);
  }
}

PrimitiveInstance::PrimitiveInstance(const ir::Node& node, dnnl::primitive primitive,
                                     std::vector<Arg> inputs, Arg output,
                                     dnnl::memory::desc scratch,
                                     std::unordered_map<int, dnnl::memory> constants)
    : node_(node),
      primitive_(std::move(primitive)),
      inputs_(std::move(inputs)),
      output_(std::move(output)),
      scratch_(std::move(scratch)),
      constants_(std::move(constants)) {}

Status PrimitiveInstance::execute(const ExecContext& ctx) const {
  std::unordered_map<int, dnnl::memory> args = constants_;
  for (size_t i = 0; i < inputs_.size(); ++i)
    args[inputs_[i].id] = dnnl::memory(inputs_[i].desc, cpu_engine(), ctx.inputs[i].data);
  args[output_.id] = dnnl::memory(output_.desc, cpu_engine(), ctx.outputs[0].data);
  args[DNNL_ARG_SCRATCHPAD] = dnnl::memory(scratch_, cpu_engine(), ctx.scratch);
  return guarded(node_.describe(), [&] { primitive_.execute(stream_of(ctx), args); });
}

}  // namespace mixq::backends::cpu
