#include "ir/op.h"

namespace mixq::ir {
namespace {

constexpr OpInfo kOpInfos[] = {
#define MIXQ_OP(name, min_in, max_in, min_out, max_out) {#name, min_in, max_in, min_out, max_out},
#include "ir/ops.def"
#undef MIXQ_OP
};

}  // namespace

const OpInfo& op_info(OpKind op) {
  return kOpInfos[static_cast<size_t>(op)];
}
std::string_view op_name(OpKind op) {
  return op_info(op).name;
}
int op_count() {
  return int(std::size(kOpInfos));
}
OpKind op_at(int index) {
  return static_cast<OpKind>(index);
}

bool keeps_element_order(OpKind op) {
  switch (op) {
    case OpKind::kFlatten:
    case OpKind::kReshape:
    case OpKind::kSqueeze:
    case OpKind::kUnsqueeze:
    case OpKind::kIdentity:
    case OpKind::kDropout:
      return true;
    default:
      return false;
  }
}

std::optional<OpKind> op_from_name(std::string_view name) {
  for (int i = 0; i < op_count(); ++i)
    if (kOpInfos[i].name == name) return static_cast<OpKind>(i);
  return std::nullopt;
}

}  // namespace mixq::ir
