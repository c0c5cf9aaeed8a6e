// Cross-entropy over a vocabulary, the loss of training: for logits z [M, V], target ids t [M]
// and weights w [M], loss[m] = w[m] * (logsumexp(z[m]) - z[m, t[m]]), and its gradient
// dz[m, v] = g[m] * w[m] * (softmax(z[m])[v] - [v == t[m]]). One pass over each row each way
// (max, then the sum of exponentials; the backward writes the probabilities), threaded over
// rows, with an AVX2 exp where the CPU has it. The sums run in float64 per row.
#include <algorithm>
#include <atomic>
#include <cmath>

#include "mlxk_internal.h"
#if MLXK_X86
#include "simd_exp.h"
#endif

namespace mlxe {

namespace {

struct CeJob {
  int64_t m, v;
  const float* z;
  const int32_t* t;
  const float* w;
  const float* g;  // backward: the loss's cotangent [M]
  float* out;      // forward: loss [M]; backward: dz [M, V]
  bool backward, simd;
  std::atomic<int64_t> next{0};
};

float row_max(const float* z, int64_t v) {
  float mx = -INFINITY;
  for (int64_t i = 0; i < v; ++i) mx = std::max(mx, z[i]);
  return mx;
}

// sum exp(z - mx); with `probs`, also writes exp(z - mx) there.
double sum_exp_scalar(const float* z, int64_t v, float mx, float* probs) {
  double s = 0.0;
  for (int64_t i = 0; i < v; ++i) {
    const float e = std::exp(z[i] - mx);
    if (probs) probs[i] = e;
    s += e;
  }
  return s;
}

#if MLXK_X86
__attribute__((target("avx2,fma"))) double sum_exp_avx2(const float* z, int64_t v, float mx, float* probs) {
  const __m256 m8 = _mm256_set1_ps(mx);
  double s = 0.0;
  int64_t i = 0;
  for (; i + 64 <= v; i += 64) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t j = i; j < i + 64; j += 8) {
      const __m256 e = simd::exp8(_mm256_sub_ps(_mm256_loadu_ps(z + j), m8));
      if (probs) _mm256_storeu_ps(probs + j, e);
      acc = _mm256_add_ps(acc, e);
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, acc);
    for (float l : lanes) s += l;
  }
  return s + sum_exp_scalar(z + i, v - i, mx, probs ? probs + i : nullptr);
}
#endif

void ce_rows(void* ctx) {
  CeJob& j = *(CeJob*)ctx;
  for (;;) {
    const int64_t r0 = j.next.fetch_add(8);
    if (r0 >= j.m) return;
    for (int64_t r = r0; r < std::min(j.m, r0 + 8); ++r) {
      const float* z = j.z + r * j.v;
      const int64_t t = j.t[r];
      const float w = j.w[r];
      float* probs = j.backward ? j.out + r * j.v : nullptr;
      if (j.backward && (w == 0.0f || j.g[r] == 0.0f)) {
        std::fill(probs, probs + j.v, 0.0f);
        continue;
      }
      const float mx = row_max(z, j.v);
#if MLXK_X86
      const double s = j.simd ? sum_exp_avx2(z, j.v, mx, probs) : sum_exp_scalar(z, j.v, mx, probs);
#else
      const double s = sum_exp_scalar(z, j.v, mx, probs);
#endif
      const bool in_range = t >= 0 && t < j.v;
      if (!j.backward) {
        j.out[r] = in_range ? (float)((double)w * ((double)mx + std::log(s) - (double)z[t])) : NAN;
        continue;
      }
      const float scale = (float)((double)j.g[r] * w / s);
      for (int64_t i = 0; i < j.v; ++i) probs[i] *= scale;
      if (in_range) probs[t] -= j.g[r] * w;
    }
  }
}

}  // namespace

// Forward (g == nullptr): out[m] = loss of row m. Backward: out [M, V] = dz for cotangent g.
// A target outside [0, V) gives a NaN loss (the caller's inputs are checked at graph build).
void cross_entropy_f32(int64_t m, int64_t v, const float* z, const int32_t* t, const float* w, const float* g,
                       float* out) {
  CeJob j;
  j.m = m;
  j.v = v;
  j.z = z;
  j.t = t;
  j.w = w;
  j.g = g;
  j.out = out;
  j.backward = g != nullptr;
#if MLXK_X86
  j.simd = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  j.simd = false;
#endif
  if (m > 8)
    parallel_run(ce_rows, &j, pool_num_threads());
  else
    ce_rows(&j);
}

}  // namespace mlxe
