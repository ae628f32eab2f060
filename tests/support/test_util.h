// Shared test helpers: seeded random tensors (never zeros), error metrics, temp dirs.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "mixq/tensor.h"

namespace mixq::testing {

// Uniform in [lo, hi], seeded; rejects exact zeros so unwritten outputs never pass by accident.
Tensor random_tensor(Shape shape, uint64_t seed, float lo = -1.0f, float hi = 1.0f);
// Uniform integers in [lo, hi] of the given integer dtype.
Tensor random_int_tensor(DType dtype, Shape shape, uint64_t seed, int64_t lo, int64_t hi);

// max |a-b| / max(|b|, floor): relative error against the reference b.
double max_relative_error(const Tensor& actual, const Tensor& expected, double floor = 1e-6);
double max_abs_error(const Tensor& actual, const Tensor& expected);
// 10 log10(sum(ref^2) / sum((a-ref)^2)), in dB; +inf when identical.
double sqnr_db(const Tensor& actual, const Tensor& reference);
// ONNX-runner style closeness: |a-b| <= atol + rtol*|b| everywhere (NaN equal NaN).
bool all_close(const Tensor& actual, const Tensor& expected, double rtol, double atol,
               std::string* why = nullptr);

// A fresh, empty directory under the system temp dir, removed by the destructor.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

std::string source_dir();  // the repository root
std::string shared_dir();  // ../shared beside the checkout, or $MIXQ_SHARED_DIR

}  // namespace mixq::testing
