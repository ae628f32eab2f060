// mixq run model.onnx [--input name=file.npy ...] [--output-dir DIR] [--batch N] [--seed S]
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "cli.h"
#include "mixq/io.h"
#include "mixq/model.h"

namespace mixq::cli {
namespace {

struct RunArgs {
  std::string model;
  std::vector<std::string> inputs;
  std::string output_dir = ".";
  int64_t batch = 1;
  uint64_t seed = 0;
};

std::string safe_file_name(std::string name) {
  for (char& c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') c = '_';
  return name;
}

int run_onnx(const RunArgs& a) {
  if (a.batch < 1)
    return report(InvalidArgument("--batch must be at least 1, got " + std::to_string(a.batch)));
  if (is_engine_file(a.model)) return run_engine(a.model, a.inputs, a.output_dir, a.batch, a.seed);
  auto model = Model::load(a.model);
  if (!model.ok()) return report(model.status());
  TensorMap inputs;
  bool given = !a.inputs.empty();
  for (const std::string& spec : a.inputs) {
    const size_t eq = spec.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size())
      return report(InvalidArgument("--input expects name=file.npy, got '" + spec + "'"));
    const std::string name = spec.substr(0, eq), file = spec.substr(eq + 1);
    bool known = false;
    for (const auto& in : model->inputs()) known |= in.name == name;
    if (!known) {
      std::string names;
      for (const auto& in : model->inputs()) names += (names.empty() ? "'" : ", '") + in.name + "'";
      return report(
          NotFound("the model has no input named '" + name + "'; its inputs are " + names));
    }
    auto t = load_npy(file);
    if (!t.ok()) return report(t.status().with_context("input '" + name + "'"));
    inputs[name] = std::move(t).value();
  }
  if (!given) {
    inputs = model->random_inputs(a.batch, a.seed);
    std::fprintf(stderr, "no --input given: random inputs, batch %lld, seed %llu\n",
                 (long long)a.batch, (unsigned long long)a.seed);
  } else if (inputs.size() != model->inputs().size()) {
    for (const auto& in : model->inputs())
      if (!inputs.count(in.name))
        return report(InvalidArgument("input '" + in.name + "' is not given (--input " + in.name +
                                      "=file.npy)"));
  }
  auto outputs = model->run_reference(inputs);
  if (!outputs.ok()) return report(outputs.status());
  std::error_code ec;
  std::filesystem::create_directories(a.output_dir, ec);
  if (ec)
    return report(
        IoError("cannot create output directory '" + a.output_dir + "': " + ec.message()));
  for (const auto& [name, tensor] : *outputs) {
    const std::string path =
        (std::filesystem::path(a.output_dir) / (safe_file_name(name) + ".npy")).string();
    Status s = save_npy(path, tensor);
    if (!s.ok()) return report(s);
    std::printf("%s: %s -> %s\n", name.c_str(), tensor.describe().c_str(), path.c_str());
  }
  return kExitOk;
}

}  // namespace

void add_run_command(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand(
      "run", "Run a model (reference backend) or an engine and write its outputs as NPY files");
  auto a = std::make_shared<RunArgs>();
  cmd->add_option("model", a->model, "ONNX model (.onnx: reference backend) or engine (.mixq)")
      ->required();
  cmd->add_option("--input,-i", a->inputs, "Input as name=file.npy (repeatable); random if none");
  cmd->add_option("--output-dir,-o", a->output_dir, "Where to write <output>.npy (default: .)");
  cmd->add_option("--batch,-b", a->batch, "Batch size for random inputs (default 1)");
  cmd->add_option("--seed", a->seed, "Seed for random inputs (default 0)");
  cmd->callback([a, &exit_code] { exit_code = run_onnx(*a); });
}

}  // namespace mixq::cli
