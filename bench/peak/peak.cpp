// Peak multiply-accumulate rate of this CPU with register-only kernels (no memory traffic), in
// GMAC/s, on T threads (OpenMP; default 2): fp32 FMA (AVX2 ymm, AVX-512 zmm) and exact
// u8 x s8 -> s32 (AVX2 vpmaddubsw + vpmaddwd + vpaddd; AVX-512 VNNI vpdpbusd). Variants the CPU
// lacks are skipped (detected at run time). Prints JSON.
// Build: g++ -O2 -fopenmp peak.cpp -o peak      Usage: peak [threads] [seconds per kernel]
#include <immintrin.h>
#include <omp.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace {

// The empty asm makes the inputs opaque, so the compiler can neither hoist the multiplies out of
// the loop nor fold them; the accumulators are independent chains, enough to hide the latency.
constexpr int kChains = 12;

__attribute__((target("avx2,fma"))) double fp32_avx2(long iters) {
  __m256 acc[kChains], a = _mm256_set1_ps(1e-3f), b = _mm256_set1_ps(1e-3f);
  for (auto& x : acc) x = _mm256_setzero_ps();
  for (long i = 0; i < iters; ++i) {
    asm volatile("" : "+x"(a), "+x"(b));
#pragma GCC unroll 12
    for (int c = 0; c < kChains; ++c) acc[c] = _mm256_fmadd_ps(a, b, acc[c]);
  }
  __m256 s = acc[0];
  for (int c = 1; c < kChains; ++c) s = _mm256_add_ps(s, acc[c]);
  return _mm256_cvtss_f32(s);
}

__attribute__((target("avx512f"))) double fp32_avx512(long iters) {
  __m512 acc[kChains], a = _mm512_set1_ps(1e-3f), b = _mm512_set1_ps(1e-3f);
  for (auto& x : acc) x = _mm512_setzero_ps();
  for (long i = 0; i < iters; ++i) {
    asm volatile("" : "+v"(a), "+v"(b));
#pragma GCC unroll 12
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_fmadd_ps(a, b, acc[c]);
  }
  __m512 s = acc[0];
  for (int c = 1; c < kChains; ++c) s = _mm512_add_ps(s, acc[c]);
  return _mm512_cvtss_f32(s);
}

// Each chain multiplies by its own weights (as a GEMM does), else the compiler would share one
// vpmaddubsw among all chains; 3 registers a chain + 2 inputs fit AVX2's 16 registers.
constexpr int kIntChains = 4;

__attribute__((target("avx2"))) double int8_avx2(long iters) {
  __m256i acc[kIntChains], b[kIntChains], a = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
  for (int c = 0; c < kIntChains; ++c)
    acc[c] = _mm256_setzero_si256(), b[c] = _mm256_set1_epi8(char(c - 2));
  for (long i = 0; i < iters; ++i) {
    asm volatile("" : "+x"(a), "+x"(b[0]), "+x"(b[1]), "+x"(b[2]), "+x"(b[3]));
#pragma GCC unroll 4
    for (int c = 0; c < kIntChains; ++c)
      acc[c] = _mm256_add_epi32(acc[c], _mm256_madd_epi16(_mm256_maddubs_epi16(a, b[c]), ones));
  }
  __m256i s = acc[0];
  for (int c = 1; c < kIntChains; ++c) s = _mm256_add_epi32(s, acc[c]);
  return _mm256_extract_epi32(s, 0);
}

__attribute__((target("avx512f,avx512vnni"))) double int8_vnni(long iters) {
  __m512i acc[kChains], a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2);
  for (auto& x : acc) x = _mm512_setzero_si512();
  for (long i = 0; i < iters; ++i) {
    asm volatile("" : "+v"(a), "+v"(b));
#pragma GCC unroll 12
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_dpbusd_epi32(acc[c], a, b);
  }
  __m512i s = acc[0];
  for (int c = 1; c < kChains; ++c) s = _mm512_add_epi32(s, acc[c]);
  return _mm512_cvtsi512_si32(s);
}

// GMAC/s of `kernel` (macs_per_iter per loop iteration) on `threads` threads: best of 3 runs,
// iteration count chosen so one run takes about `seconds`.
double measure(double (*kernel)(long), double macs_per_iter, int threads, double seconds) {
  double sink = 0;  // printed below only if absurd: keeps the results alive
  long iters = 1 << 16;
  for (;;) {  // calibrate on one thread
    double t = omp_get_wtime();
    sink = sink + kernel(iters);
    if (omp_get_wtime() - t > seconds / 4) break;
    iters *= 2;
  }
  iters *= 4;
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    double t = omp_get_wtime();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    sink += kernel(iters);
    double rate = macs_per_iter * iters * threads / (omp_get_wtime() - t) / 1e9;
    if (rate > best) best = rate;
  }
  if (sink == 42.0) std::fprintf(stderr, "sink %f\n", sink);
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  double seconds = argc > 2 ? std::atof(argv[2]) : 0.3;
  __builtin_cpu_init();
  bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  bool avx512 = __builtin_cpu_supports("avx512f");
  bool vnni = avx512 && __builtin_cpu_supports("avx512vnni");
  double f_avx2 = avx2 ? measure(fp32_avx2, 8.0 * kChains, threads, seconds) : 0;
  double f_avx512 = avx512 ? measure(fp32_avx512, 16.0 * kChains, threads, seconds) : 0;
  double i_avx2 = avx2 ? measure(int8_avx2, 32.0 * kIntChains, threads, seconds) : 0;
  double i_vnni = vnni ? measure(int8_vnni, 64.0 * kChains, threads, seconds) : 0;
  auto field = [](const char* name, double v) {
    return v > 0 ? "\"" + std::string(name) + "\": " + std::to_string(v) + ", " : std::string();
  };
  std::printf(
      "{\"threads\": %d, %s%s%s%s\"fp32_peak_gmacs\": %f, \"int8_peak_gmacs\": %f, "
      "\"int8_peak_kernel\": \"%s\"}\n",
      threads, field("fp32_avx2_fma_gmacs", f_avx2).c_str(),
      field("fp32_avx512_fma_gmacs", f_avx512).c_str(), field("int8_avx2_gmacs", i_avx2).c_str(),
      field("int8_avx512_vnni_gmacs", i_vnni).c_str(), f_avx512 > f_avx2 ? f_avx512 : f_avx2,
      i_vnni > i_avx2 ? i_vnni : i_avx2,
      i_vnni > i_avx2 ? "avx512_vnni vpdpbusd" : "avx2 vpmaddubsw+vpmaddwd+vpaddd");
  return 0;
}
