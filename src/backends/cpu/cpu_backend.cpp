// The CPU backend: oneDNN kernels for convolutions, linear layers, pooling, concatenation and
// reformats in fp32 and int8; every other op through the reference kernels (fp32, plain layout).
// Layouts: int8 activations between convolutions are NHWC, fp32 ones are channel-blocked
// (8 or 16 channels, by ISA), which is what oneDNN's fast kernels read.
#include <cstdlib>
#include <sstream>

#include "backends/cpu/onednn.h"
#include "backends/reference/reference.h"
#include "engine/lower.h"

namespace mixq::backends {
namespace cpu {
namespace {

bool is_pool(ir::OpKind op) {
  return op == ir::OpKind::kMaxPool || op == ir::OpKind::kAveragePool ||
         op == ir::OpKind::kGlobalAveragePool || op == ir::OpKind::kGlobalMaxPool;
}

bool is_conv2d(const ir::Node& n) {
  return n.op == ir::OpKind::kFusedConv && n.input(0) && n.input(0)->shape_known &&
         n.input(0)->shape.size() == 4;
}

// Elementwise or window ops that read any layout and write the layout they read.
bool layout_agnostic(const ir::Node& n) {
  if (is_pool(n.op) && n.input(0)->shape.size() == 4) return true;
  if (n.op == ir::OpKind::kRelu && n.precision == Precision::kINT8) return true;
  if (n.op == ir::OpKind::kAdd && n.precision == Precision::kINT8) return true;
  if (n.op == ir::OpKind::kConcat && n.output(0)->shape.size() == 4) return true;
  // Unary fp32 activations on 4-D data read any layout (binary ops stay plain: broadcasting).
  if (n.precision == Precision::kFP32 && n.inputs.size() == 1 && n.output(0)->shape.size() == 4 &&
      eltwise_supports(n, Precision::kFP32, nullptr))
    return true;
  return false;
}

class CpuBackend final : public Backend {
 public:
  CpuBackend() : reference_(make_reference_backend()) {
    const char* env = std::getenv("MIXQ_CPU_LAYOUTS");
    plain_only_ = env && std::string(env) == "plain";
  }

  std::string_view name() const override { return "cpu"; }

  bool supports(const ir::Node& n, Precision p, std::string* why) const override {
    switch (n.op) {
      case ir::OpKind::kFusedConv:
        return conv_supports(n, p, why);
      case ir::OpKind::kFusedGemm:
        return gemm_supports(n, p, why);
      case ir::OpKind::kReformat:
        return reformat_supports(n, p, why);
      default:
        break;
    }
    if (is_pool(n.op) && pool_supports(n, p, nullptr)) return true;
    if (n.op == ir::OpKind::kConcat && n.output(0)->shape_known && n.output(0)->shape.size() == 4 &&
        (p == Precision::kFP32 || p == Precision::kINT8))
      return true;
    if (p == Precision::kINT8 && engine::is_precision_follower(n.op))
      return int8_data_supports(n, why);
    if (p == Precision::kINT8 && n.op == ir::OpKind::kAdd) return int8_add_supports(n, why);
    if (p == Precision::kFP32 && eltwise_supports(n, p, nullptr)) return true;
    if (p == Precision::kFP32) return reference_->supports(n, p, why);
    if (why) {
      *why = "the cpu backend has no " + std::string(precision_name(p)) + " kernel for " +
             std::string(ir::op_name(n.op));
      if (p == Precision::kFP16) *why += " (oneDNN 2.6 has no fp16 CPU kernels)";
    }
    return false;
  }

  Expected<std::unique_ptr<Kernel>> create(const ir::Node& n, Precision p) const override {
    switch (n.op) {
      case ir::OpKind::kFusedConv:
        if (conv_supports(n, p, nullptr)) return make_conv_kernel(n, p);
        break;
      case ir::OpKind::kFusedGemm:
        if (gemm_supports(n, p, nullptr)) return make_gemm_kernel(n, p);
        break;
      case ir::OpKind::kReformat:
        if (reformat_supports(n, p, nullptr)) return make_reformat_kernel(n, p);
        break;
      default:
        break;
    }
    if (is_pool(n.op) && pool_supports(n, p, nullptr)) return make_pool_kernel(n, p);
    if (n.op == ir::OpKind::kConcat && n.output(0)->shape.size() == 4)
      return make_binary_kernel(n, p);
    if (p == Precision::kINT8 && n.op == ir::OpKind::kRelu) return make_int8_data_kernel(n);
    if (p == Precision::kINT8 && n.op == ir::OpKind::kAdd) return make_int8_add_kernel(n);
    if (p == Precision::kFP32 && eltwise_supports(n, p, nullptr)) return make_eltwise_kernel(n);
    // Data movement on int8 plain data and fp32 ops: the reference kernels.
    for (const ir::Value* v : n.inputs)
      if (v && v->layout != ir::Layout::kPlain)
        return Internal(n.describe() + ": reference kernels need plain layouts");
    return reference_->create(n, Precision::kFP32);
  }

  size_t buffer_bytes(const ir::Value& v, const Shape& shape) const override {
    if (v.layout == ir::Layout::kPlain || !dnnl_has_dtype(v.dtype))
      return size_t(shape_numel(shape)) * dtype_size(v.dtype);
    return desc_of(v, shape).get_size();
  }

  std::unique_ptr<ExecResources> create_resources() const override {
    return std::make_unique<CpuResources>();
  }

  QuantPolicy quant_policy() const override {
    QuantPolicy p;
    p.activation_dtype = DType::kUInt8;
    // Without VNNI, u8 x s8 pairs add up in saturating 16-bit lanes: 7-bit weights keep every
    // product sum exact (255 * 63 * 2 < 32767).
    p.weight_qmax = cpu_caps().vnni ? 127 : 63;
    return p;
  }

  std::string target() const override {
    return "cpu;isa=" + cpu_caps().isa + ";weight_bits=" + (cpu_caps().vnni ? "8" : "7");
  }

  Status check_target(const std::string& recorded) const override {
    if (recorded.rfind("cpu;", 0) != 0)
      return FailedPrecondition("the engine was built for '" + recorded + "', not for a CPU");
    if (recorded.find("weight_bits=8") != std::string::npos && !cpu_caps().vnni)
      return FailedPrecondition(
          "the engine was built for a CPU with VNNI (8-bit weights, " + recorded + "); this CPU (" +
          cpu_caps().isa +
          ") would saturate its u8 x s8 products: rebuild the engine on this machine");
    return Status::Ok();
  }

  ir::Layout blocked() const {
    return cpu_caps().isa.rfind("avx512", 0) == 0 ? ir::Layout::kBlocked16 : ir::Layout::kBlocked8;
  }

  Status assign_layouts(ir::Graph& g) const override {
    if (plain_only_) return Status::Ok();
    for (ir::Node* n : g.nodes()) {
      ir::Value* y = n->output(0);
      if (!y) continue;
      if (is_conv2d(*n)) {
        y->layout = n->precision == Precision::kINT8 ? ir::Layout::kNHWC : blocked();
      } else if (layout_agnostic(*n)) {
        y->layout = n->input(0)->layout;
      } else {
        for (ir::Value* out : n->outputs)
          if (out) out->layout = ir::Layout::kPlain;
      }
    }
    return Status::Ok();
  }

  ir::Layout required_input_layout(const ir::Node& n, size_t slot) const override {
    if (plain_only_) return ir::Layout::kPlain;
    if (is_conv2d(n)) {
      if (slot == 3) return n.output(0)->layout;
      if (n.precision == Precision::kINT8) return ir::Layout::kNHWC;
      const int64_t channels = n.input(0)->shape[1];
      return channels < 8 ? ir::Layout::kPlain : blocked();
    }
    if (layout_agnostic(n))
      return n.op == ir::OpKind::kConcat || n.op == ir::OpKind::kAdd ? n.output(0)->layout
                                                                     : n.input(slot)->layout;
    return ir::Layout::kPlain;
  }

  Expected<Tensor> read_value(const Buffer& b) const override {
    if (b.value->layout == ir::Layout::kPlain || !dnnl_has_dtype(b.value->dtype))
      return Backend::read_value(b);
    Tensor out = Tensor::empty(DType::kFloat32, b.shape);
    ir::Value plain;
    plain.dtype = DType::kFloat32;
    plain.layout = ir::Layout::kPlain;
    Status s = guarded("reading '" + b.value->name + "'", [&] {
      dnnl::primitive_attr attr;
      if (b.value->quant && b.value->dtype != DType::kFloat32) {
        attr.set_output_scales(0, {b.value->quant->scale[0]});
        if (b.value->quant->zero_point_at(0) != 0)
          attr.set_zero_points(DNNL_ARG_SRC, 0, {b.value->quant->zero_point_at(0)});
      }
      dnnl::memory src(desc_of(*b.value, b.shape), cpu_engine(), b.data);
      dnnl::memory dst(desc_of(plain, b.shape), cpu_engine(), out.raw());
      dnnl::stream stream(cpu_engine());
      dnnl::reorder(dnnl::reorder::primitive_desc(cpu_engine(), src.get_desc(), cpu_engine(),
                                                  dst.get_desc(), attr))
          .execute(stream, src, dst);
      stream.wait();
    });
    if (!s.ok()) return s;
    return out;
  }

 private:
  std::unique_ptr<Backend> reference_;
  bool plain_only_ = false;
};

}  // namespace
}  // namespace cpu

std::unique_ptr<Backend> make_cpu_backend() {
  return std::make_unique<cpu::CpuBackend>();
}

}  // namespace mixq::backends
