// consumer model.onnx: loads the model through the installed mixq, runs it on random inputs at
// batch 2 and prints every output. Exits 1 on any failure.
#include <cmath>
#include <cstdio>

#include <mixq/model.h>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer model.onnx\n");
    return 1;
  }
  auto model = mixq::Model::load(argv[1]);
  if (!model.ok()) {
    std::fprintf(stderr, "error: %s\n", model.status().to_string().c_str());
    return 1;
  }
  auto outputs = model->run_reference(model->random_inputs(2, 1));
  if (!outputs.ok()) {
    std::fprintf(stderr, "error: %s\n", outputs.status().to_string().c_str());
    return 1;
  }
  if (outputs->size() != model->outputs().size()) {
    std::fprintf(stderr, "error: %zu outputs, the model declares %zu\n", outputs->size(),
                 model->outputs().size());
    return 1;
  }
  for (const auto& [name, tensor] : *outputs) {
    if (tensor.shape().empty() || tensor.shape()[0] != 2) {
      std::fprintf(stderr, "error: output %s is %s, expected batch 2\n", name.c_str(),
                   tensor.describe().c_str());
      return 1;
    }
    double sum = 0;
    bool nonzero = false;
    for (float v : tensor.to(mixq::DType::kFloat32).to_float_vector()) {
      if (!std::isfinite(v)) {
        std::fprintf(stderr, "error: output %s holds a non-finite value\n", name.c_str());
        return 1;
      }
      sum += v;
      nonzero |= v != 0.0f;
    }
    if (!nonzero) {
      std::fprintf(stderr, "error: output %s is all zeros\n", name.c_str());
      return 1;
    }
    std::printf("%s: %s sum %.6f\n", name.c_str(), tensor.describe().c_str(), sum);
  }
  std::printf("ok\n");
  return 0;
}
