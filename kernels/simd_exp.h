// exp8: exp of 8 floats with AVX2+FMA, shared by the SwiGLU epilogue (quant_avx2.cpp) and the
// attention softmax (attention.cpp). Internal header; x86-64 only (include under MLXK_X86).
#pragma once

#include <immintrin.h>

namespace mlxe {
namespace simd {

// exp(x) for 8 floats: x = n ln2 + r with |r| <= ln2/2 (ln2 split in two so n*C1 is exact),
// e^r by the Cephes expf polynomial (~1 ulp), then 2^n applied in two halves so that n = 128
// (x up to ln(FLT_MAX)) and the subnormal results come out right. Past those ranges the result
// overflows to inf / rounds to 0 like std::exp. The clamp maps a NaN input to 89 (inf out):
// callers must carry NaN through their own arithmetic (swiglu does).
static inline __attribute__((always_inline, target("avx2,fma"))) __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-104.0f)), _mm256_set1_ps(89.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i n1 = _mm256_srai_epi32(ni, 1);
  const __m256i n2 = _mm256_sub_epi32(ni, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}


}  // namespace simd
}  // namespace mlxe
