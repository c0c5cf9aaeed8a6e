// Float32 batched matrix product C[b] = A[b] . B[b] (row-major, contiguous) for the MLX ops
// training differentiates through at the size of a few hundred rows: attention's scores and
// weighted values, and the LoRA adapters' products. The MLX CPU wheel multiplies float32
// through a reference BLAS (a few GFLOP/s here); this is a register-blocked AVX2 kernel (4 rows
// x 16 columns of accumulators held over the whole K loop, 8- and 1-wide column tails) with a
// plain loop elsewhere, threaded over (batch, 32-row chunk, 256-column chunk) units.
#include <algorithm>
#include <atomic>
#include <string>

#include "mlxk_internal.h"

#if MLXK_X86
#include <immintrin.h>
#endif

namespace mlxe {

namespace {

constexpr int64_t kRows = 32, kCols = 256;

struct GemmJob {
  int64_t batch, m, n, k, row_units, col_units, units;
  const float *a, *b;
  float* c;
  bool simd;
  std::atomic<int64_t> next{0};
};

// c[r, j] = sum_t a[r, t] * b[t, j] for r < rows, j in [j0, j1); row strides lda, ldb, ldc.
void block_scalar(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t k, float* c, int64_t ldc,
                  int64_t rows, int64_t j0, int64_t j1) {
  for (int64_t r = 0; r < rows; ++r) {
    float* cr = c + r * ldc;
    for (int64_t j = j0; j < j1; ++j) cr[j] = 0.0f;
    for (int64_t t = 0; t < k; ++t) {
      const float s = a[r * lda + t];
      const float* br = b + t * ldb;
      for (int64_t j = j0; j < j1; ++j) cr[j] += s * br[j];
    }
  }
}

#if MLXK_X86
#define G_FN __attribute__((target("avx2,fma")))

G_FN void block_avx2(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t k, float* c, int64_t ldc,
                     int64_t rows, int64_t j0, int64_t j1) {
  int64_t j = j0;
  for (; j + 16 <= j1; j += 16) {
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) {
      __m256 acc[4][2];
      for (int i = 0; i < 4; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
      for (int64_t t = 0; t < k; ++t) {
        const __m256 b0 = _mm256_loadu_ps(b + t * ldb + j), b1 = _mm256_loadu_ps(b + t * ldb + j + 8);
        for (int i = 0; i < 4; ++i) {
          const __m256 s = _mm256_broadcast_ss(a + (r + i) * lda + t);
          acc[i][0] = _mm256_fmadd_ps(s, b0, acc[i][0]);
          acc[i][1] = _mm256_fmadd_ps(s, b1, acc[i][1]);
        }
      }
      for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(c + (r + i) * ldc + j, acc[i][0]);
        _mm256_storeu_ps(c + (r + i) * ldc + j + 8, acc[i][1]);
      }
    }
    for (; r < rows; ++r) {
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
      for (int64_t t = 0; t < k; ++t) {
        const __m256 s = _mm256_broadcast_ss(a + r * lda + t);
        a0 = _mm256_fmadd_ps(s, _mm256_loadu_ps(b + t * ldb + j), a0);
        a1 = _mm256_fmadd_ps(s, _mm256_loadu_ps(b + t * ldb + j + 8), a1);
      }
      _mm256_storeu_ps(c + r * ldc + j, a0);
      _mm256_storeu_ps(c + r * ldc + j + 8, a1);
    }
  }
  for (; j + 8 <= j1; j += 8) {
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) {
      __m256 acc[4];
      for (int i = 0; i < 4; ++i) acc[i] = _mm256_setzero_ps();
      for (int64_t t = 0; t < k; ++t) {
        const __m256 b0 = _mm256_loadu_ps(b + t * ldb + j);
        for (int i = 0; i < 4; ++i) acc[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(a + (r + i) * lda + t), b0, acc[i]);
      }
      for (int i = 0; i < 4; ++i) _mm256_storeu_ps(c + (r + i) * ldc + j, acc[i]);
    }
    for (; r < rows; ++r) {
      __m256 a0 = _mm256_setzero_ps();
      for (int64_t t = 0; t < k; ++t)
        a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + r * lda + t), _mm256_loadu_ps(b + t * ldb + j), a0);
      _mm256_storeu_ps(c + r * ldc + j, a0);
    }
  }
  if (j < j1) block_scalar(a, lda, b, ldb, k, c, ldc, rows, j, j1);
}

bool gemm_simd() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

void gemm_units(void* ctx) {
  GemmJob& g = *(GemmJob*)ctx;
  for (;;) {
    const int64_t u = g.next.fetch_add(1);
    if (u >= g.units) return;
    const int64_t bi = u / (g.row_units * g.col_units), rest = u % (g.row_units * g.col_units);
    const int64_t r0 = (rest / g.col_units) * kRows, r1 = std::min(g.m, r0 + kRows);
    const int64_t j0 = (rest % g.col_units) * kCols, j1 = std::min(g.n, j0 + kCols);
    const float* a = g.a + bi * g.m * g.k + r0 * g.k;
    const float* b = g.b + bi * g.k * g.n;
    float* c = g.c + bi * g.m * g.n + r0 * g.n;
#if MLXK_X86
    if (g.simd) {
      block_avx2(a, g.k, b, g.n, g.k, c, g.n, r1 - r0, j0, j1);
      continue;
    }
#endif
    block_scalar(a, g.k, b, g.n, g.k, c, g.n, r1 - r0, j0, j1);
  }
}

}  // namespace

// c [batch, m, n] = a [batch, m, k] . b [batch, k, n], all float32 row-major and contiguous.
void gemm_f32(int64_t batch, int64_t m, int64_t n, int64_t k, const float* a, const float* b, float* c) {
  GemmJob g;
  g.batch = batch;
  g.m = m;
  g.n = n;
  g.k = k;
  g.a = a;
  g.b = b;
  g.c = c;
  g.row_units = (m + kRows - 1) / kRows;
  g.col_units = (n + kCols - 1) / kCols;
  g.units = batch * g.row_units * g.col_units;
#if MLXK_X86
  g.simd = gemm_simd();
#else
  g.simd = false;
#endif
  if (g.units == 0) return;
  // A unit below ~64k multiply-adds is not worth waking a thread for.
  if (g.units > 1 && m * n * k * batch >= 65536)
    parallel_run(gemm_units, &g, pool_num_threads());
  else
    gemm_units(&g);
}

}  // namespace mlxe
