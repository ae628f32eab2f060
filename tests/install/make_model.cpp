// mixq_make_test_model out.onnx: writes the small classifier the tests share (Conv, Relu,
// GlobalAveragePool, Flatten, Gemm with random weights, symbolic batch).
#include <cstdio>

#include "support/onnx_builder.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: mixq_make_test_model out.onnx\n");
    return 1;
  }
  mixq::testing::small_classifier(11).save(argv[1]);
  return 0;
}
