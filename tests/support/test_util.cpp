#include "support/test_util.h"

#include <unistd.h>
#include <cmath>
#include <cstdlib>
#include <random>
#include <sstream>

namespace mixq::testing {

Tensor random_tensor(Shape shape, uint64_t seed, float lo, float hi) {
  Tensor t = Tensor::empty(DType::kFloat32, std::move(shape));
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    float v;
    do v = dist(rng);
    while (v == 0.0f);
    p[i] = v;
  }
  return t;
}

Tensor random_int_tensor(DType dtype, Shape shape, uint64_t seed, int64_t lo, int64_t hi) {
  Tensor f = Tensor::empty(DType::kInt64, std::move(shape));
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> dist(lo, hi);
  for (int64_t i = 0; i < f.numel(); ++i) f.data<int64_t>()[i] = dist(rng);
  return f.to(dtype);
}

double max_abs_error(const Tensor& a, const Tensor& b) {
  double m = 0;
  for (int64_t i = 0; i < b.numel(); ++i) {
    const double d = std::fabs(a.get_as_double(i) - b.get_as_double(i));
    if (std::isnan(d)) return INFINITY;
    m = std::max(m, d);
  }
  return m;
}

double max_relative_error(const Tensor& a, const Tensor& b, double floor) {
  double m = 0;
  double scale = floor;
  for (int64_t i = 0; i < b.numel(); ++i) scale = std::max(scale, std::fabs(b.get_as_double(i)));
  for (int64_t i = 0; i < b.numel(); ++i) {
    const double d = std::fabs(a.get_as_double(i) - b.get_as_double(i));
    if (std::isnan(d)) return INFINITY;
    m = std::max(m, d / scale);
  }
  return m;
}

double sqnr_db(const Tensor& a, const Tensor& ref) {
  double signal = 0, noise = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    const double r = ref.get_as_double(i), d = a.get_as_double(i) - r;
    signal += r * r;
    noise += d * d;
  }
  if (std::isnan(noise)) return -INFINITY;
  if (noise == 0) return INFINITY;
  return 10.0 * std::log10(signal / noise);
}

bool all_close(const Tensor& a, const Tensor& b, double rtol, double atol, std::string* why) {
  if (a.shape() != b.shape()) {
    if (why) *why = "shape " + shape_to_string(a.shape()) + " vs " + shape_to_string(b.shape());
    return false;
  }
  for (int64_t i = 0; i < b.numel(); ++i) {
    const double x = a.get_as_double(i), y = b.get_as_double(i);
    if (std::isnan(x) && std::isnan(y)) continue;
    if (std::isinf(x) && x == y) continue;
    if (!(std::fabs(x - y) <= atol + rtol * std::fabs(y))) {
      if (why) {
        std::ostringstream os;
        os << "element " << i << ": got " << x << ", expected " << y;
        *why = os.str();
      }
      return false;
    }
  }
  return true;
}

TempDir::TempDir() {
  std::string templ = (std::filesystem::temp_directory_path() / "mixq_test_XXXXXX").string();
  char* made = mkdtemp(templ.data());
  path_ = made ? made : templ;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string source_dir() {
  return MIXQ_SOURCE_DIR;
}

std::string shared_dir() {
  if (const char* env = std::getenv("MIXQ_SHARED_DIR")) return env;
  return (std::filesystem::path(MIXQ_SOURCE_DIR) / ".." / "shared").lexically_normal().string();
}

}  // namespace mixq::testing
