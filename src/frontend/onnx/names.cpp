// Mapping ONNX node and initializer names back to PyTorch module names.
#include <cctype>
#include <vector>

#include "frontend/onnx/importer.h"

namespace mixq::onnx_frontend {
namespace {

std::vector<std::string> split(std::string_view s, char sep) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find(sep, start);
    if (end == std::string_view::npos) end = s.size();
    parts.emplace_back(s.substr(start, end - start));
    start = end + 1;
  }
  return parts;
}

bool is_number(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s)
    if (!std::isdigit(static_cast<unsigned char>(c))) return false;
  return true;
}

// The suffix of a qualified name starting at its last non-numeric atom: torch.onnx names each
// scope this way ("layer1.0" for module layer1.0, "conv1" for layer1.0.conv1).
std::string unqualified_suffix(const std::vector<std::string>& atoms) {
  for (size_t i = atoms.size(); i-- > 0;) {
    if (!is_number(atoms[i])) {
      std::string s;
      for (size_t j = i; j < atoms.size(); ++j) s += (j == i ? "" : ".") + atoms[j];
      return s;
    }
  }
  std::string s;
  for (size_t j = 0; j < atoms.size(); ++j) s += (j ? "." : "") + atoms[j];
  return s;
}

}  // namespace

std::string module_name_from_node_name(std::string_view node_name) {
  // Scoped names look like "/layer1/layer1.0/conv1/Conv" or "/features/features.0/Conv_1".
  if (node_name.empty() || node_name[0] != '/') return "";
  std::vector<std::string> scopes = split(node_name.substr(1), '/');
  if (scopes.size() < 2) return "";    // only the op itself: a functional call at top level
  scopes.pop_back();                   // the op type ("Conv", "Relu_1")
  std::vector<std::string> qualified;  // atoms of the full module path
  for (const std::string& scope : scopes) {
    std::vector<std::string> atoms = split(scope, '.');
    // A scope whose name repeats the parent's unqualified suffix ("layer1" -> "layer1.0")
    // contributes only the new atoms.
    const std::string parent_suffix = unqualified_suffix(qualified);
    const std::vector<std::string> parent_atoms = split(parent_suffix, '.');
    bool extends_parent = !qualified.empty() && atoms.size() > parent_atoms.size();
    for (size_t i = 0; extends_parent && i < parent_atoms.size(); ++i)
      extends_parent = atoms[i] == parent_atoms[i];
    const size_t first_new = extends_parent ? parent_atoms.size() : 0;
    for (size_t i = first_new; i < atoms.size(); ++i) qualified.push_back(atoms[i]);
  }
  std::string name;
  for (size_t i = 0; i < qualified.size(); ++i) name += (i ? "." : "") + qualified[i];
  return name;
}

std::string module_name_from_parameter_name(std::string_view parameter_name) {
  // "layer1.0.conv1.weight" -> "layer1.0.conv1"; names torch generates ("onnx::Conv_193") carry
  // no module.
  if (parameter_name.find("::") != std::string_view::npos) return "";
  const size_t dot = parameter_name.rfind('.');
  if (dot == std::string_view::npos) return "";
  const std::string_view leaf = parameter_name.substr(dot + 1);
  if (leaf != "weight" && leaf != "bias" && leaf != "running_mean" && leaf != "running_var")
    return "";
  return std::string(parameter_name.substr(0, dot));
}

}  // namespace mixq::onnx_frontend
