// mixq inspect model.onnx [--json]
#include <nlohmann/json.hpp>

#include <cstdio>
#include <iostream>

#include "cli.h"
#include "mixq/model.h"

namespace mixq::cli {
namespace {

nlohmann::json spec_json(const TensorSpec& s) {
  nlohmann::json shape = nlohmann::json::array();
  for (int64_t d : s.shape) shape.push_back(d < 0 ? nlohmann::json("N") : nlohmann::json(d));
  return {{"name", s.name}, {"dtype", std::string(dtype_name(s.dtype))}, {"shape", shape}};
}

std::string human(int64_t n) {
  char buf[32];
  if (n >= 1000000000)
    std::snprintf(buf, sizeof buf, "%.2fG", double(n) / 1e9);
  else if (n >= 1000000)
    std::snprintf(buf, sizeof buf, "%.2fM", double(n) / 1e6);
  else if (n >= 1000)
    std::snprintf(buf, sizeof buf, "%.1fK", double(n) / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%lld", (long long)n);
  return buf;
}

int inspect_onnx(const std::string& path, bool json, bool raw) {
  if (is_engine_file(path)) return inspect_engine(path, json);
  LoadOptions options;
  options.simplify = !raw;
  auto model = Model::load(path, options);
  if (!model.ok()) return report(model.status());
  const ModelSummary s = model->summary();
  if (json) {
    nlohmann::json j;
    j["model"] = path;
    j["opset"] = s.opset;
    j["producer"] = s.producer;
    for (const auto& in : s.inputs) j["inputs"].push_back(spec_json(in));
    for (const auto& out : s.outputs) j["outputs"].push_back(spec_json(out));
    j["layers"] = nlohmann::json::array();
    for (const auto& l : s.layers) {
      nlohmann::json lj = {
          {"name", l.name}, {"op", l.op},       {"module", l.module},        {"params", l.params},
          {"macs", l.macs}, {"flops", l.flops}, {"attributes", l.attributes}};
      for (const auto& in : l.inputs) lj["inputs"].push_back(spec_json(in));
      for (const auto& out : l.outputs) lj["outputs"].push_back(spec_json(out));
      j["layers"].push_back(lj);
    }
    j["total"] = {{"params", s.total_params},
                  {"macs", s.total_macs},
                  {"flops", s.total_flops},
                  {"layers", s.layers.size()}};
    std::cout << j.dump(2) << "\n";
    return kExitOk;
  }
  std::printf("model: %s (opset %d%s%s)\n", path.c_str(), s.opset,
              s.producer.empty() ? "" : ", from ", s.producer.c_str());
  for (const auto& in : s.inputs)
    std::printf("input  %-24s %s%s\n", in.name.c_str(), std::string(dtype_name(in.dtype)).c_str(),
                shape_to_string(in.shape).c_str());
  for (const auto& out : s.outputs)
    std::printf("output %-24s %s%s\n", out.name.c_str(), std::string(dtype_name(out.dtype)).c_str(),
                shape_to_string(out.shape).c_str());
  std::printf("\n%-4s %-36s %-18s %-22s %-20s %10s %10s\n", "#", "layer", "op", "module", "output",
              "params", "FLOPs");
  int index = 0;
  for (const auto& l : s.layers) {
    std::string out = l.outputs.empty() ? "" : shape_to_string(l.outputs[0].shape);
    std::string attrs;
    for (const auto& [k, v] : l.attributes) {
      if (v.size() > 40) continue;
      attrs += (attrs.empty() ? "" : " ") + k + "=" + v;
    }
    std::printf("%-4d %-36s %-18s %-22s %-20s %10s %10s  %s\n", index++, l.name.c_str(),
                l.op.c_str(), l.module.c_str(), out.c_str(), human(l.params).c_str(),
                human(l.flops).c_str(), attrs.c_str());
  }
  std::printf("\ntotal: %zu layers, %s parameters, %s MACs, %s FLOPs per sample\n", s.layers.size(),
              human(s.total_params).c_str(), human(s.total_macs).c_str(),
              human(s.total_flops).c_str());
  return kExitOk;
}

}  // namespace

void add_inspect_command(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand(
      "inspect", "Show a model's inputs, outputs and layers (op, shapes, parameters, FLOPs)");
  auto path = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  auto raw = std::make_shared<bool>(false);
  cmd->add_option("model", *path, "ONNX model (.onnx) or engine (.mixq)")->required();
  cmd->add_flag("--json", *json, "Machine-readable JSON output");
  cmd->add_flag("--raw", *raw, "Show the graph as imported, before folding and simplification");
  cmd->callback([=, &exit_code] { exit_code = inspect_onnx(*path, *json, *raw); });
}

}  // namespace mixq::cli
