// The backward pass of y = x . W^T for a frozen weight W [n, k] in GGUF blocks:
// dx[m, k] = dy[m, n] . W[n, k], the product training needs to push gradients through every
// quantized projection (GgufQMatmul's vjp).
//
// Work units are (row chunk of dx, column block of 256) pairs, pulled by the thread pool, so
// each unit owns its part of dx and nothing is reduced across threads. A unit walks W in tiles
// of 16 rows: it decodes the tile's columns of its block to float32 (the scalar decoders; a
// block of 256 starts at a block boundary of every type, and at a group boundary of the
// repacked layouts), then adds dy[rows, tile] . tile into its dx part with a register-blocked
// FMA kernel (4 rows x 32 columns of accumulators with AVX-512, x 16 with AVX2) or a plain loop.
#include <algorithm>
#include <atomic>
#include <string>
#include <vector>

#include "mlxk_internal.h"

#if MLXK_X86
#include <immintrin.h>
#endif

namespace mlxe {

void set_last_error(const std::string& msg);
int validate(int type, int64_t n, int64_t k, int64_t* row_bytes);

namespace {

constexpr int64_t kColBlock = 256;  // columns per unit (a multiple of every block size)
constexpr int64_t kTile = 16;       // weight rows decoded at a time

struct TJob {
  int type;
  int64_t n, k, m, row_chunk, col_blocks, units;
  size_t row_bytes;
  int64_t block, block_bytes;
  const uint8_t* w;
  const float* dy;
  int64_t lddy;
  float* dx;
  bool simd, simd512;
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
};

// acc[r, c] += sum_t d[r, t] * tile[t, c] for r < rows, c < cols, t < tiles; d row stride ldd,
// tile row stride ldt, acc row stride lda.
void add_product_scalar(const float* d, int64_t ldd, const float* tile, int64_t ldt, int64_t tiles, float* acc,
                        int64_t lda, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t t = 0; t < tiles; ++t) {
      const float s = d[r * ldd + t];
      if (s == 0.0f) continue;
      const float* wr = tile + t * ldt;
      float* a = acc + r * lda;
      for (int64_t c = 0; c < cols; ++c) a[c] += s * wr[c];
    }
}

#if MLXK_X86
#define T_FN __attribute__((target("avx2,fma")))

// The same with AVX2: 4 rows x 16 columns per step (8 accumulators), cols a multiple of 16.
T_FN void add_product_avx2(const float* d, int64_t ldd, const float* tile, int64_t ldt, int64_t tiles,
                           float* acc, int64_t lda, int64_t rows, int64_t cols) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    for (int64_t c = 0; c < cols; c += 16) {
      __m256 a[4][2];
      for (int i = 0; i < 4; ++i) {
        a[i][0] = _mm256_loadu_ps(acc + (r + i) * lda + c);
        a[i][1] = _mm256_loadu_ps(acc + (r + i) * lda + c + 8);
      }
      for (int64_t t = 0; t < tiles; ++t) {
        const __m256 w0 = _mm256_loadu_ps(tile + t * ldt + c);
        const __m256 w1 = _mm256_loadu_ps(tile + t * ldt + c + 8);
        for (int i = 0; i < 4; ++i) {
          const __m256 s = _mm256_broadcast_ss(d + (r + i) * ldd + t);
          a[i][0] = _mm256_fmadd_ps(s, w0, a[i][0]);
          a[i][1] = _mm256_fmadd_ps(s, w1, a[i][1]);
        }
      }
      for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(acc + (r + i) * lda + c, a[i][0]);
        _mm256_storeu_ps(acc + (r + i) * lda + c + 8, a[i][1]);
      }
    }
  }
  for (; r < rows; ++r) {
    for (int64_t c = 0; c < cols; c += 16) {
      __m256 a0 = _mm256_loadu_ps(acc + r * lda + c), a1 = _mm256_loadu_ps(acc + r * lda + c + 8);
      for (int64_t t = 0; t < tiles; ++t) {
        const __m256 s = _mm256_broadcast_ss(d + r * ldd + t);
        a0 = _mm256_fmadd_ps(s, _mm256_loadu_ps(tile + t * ldt + c), a0);
        a1 = _mm256_fmadd_ps(s, _mm256_loadu_ps(tile + t * ldt + c + 8), a1);
      }
      _mm256_storeu_ps(acc + r * lda + c, a0);
      _mm256_storeu_ps(acc + r * lda + c + 8, a1);
    }
  }
}

#define T512_FN __attribute__((target("avx512f")))

// The same with AVX-512: 4 rows x 32 columns per step, cols a multiple of 32.
T512_FN void add_product_avx512(const float* d, int64_t ldd, const float* tile, int64_t ldt, int64_t tiles,
                                float* acc, int64_t lda, int64_t rows, int64_t cols) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    for (int64_t c = 0; c < cols; c += 32) {
      __m512 a[4][2];
      for (int i = 0; i < 4; ++i) {
        a[i][0] = _mm512_loadu_ps(acc + (r + i) * lda + c);
        a[i][1] = _mm512_loadu_ps(acc + (r + i) * lda + c + 16);
      }
      for (int64_t t = 0; t < tiles; ++t) {
        const __m512 w0 = _mm512_loadu_ps(tile + t * ldt + c);
        const __m512 w1 = _mm512_loadu_ps(tile + t * ldt + c + 16);
        for (int i = 0; i < 4; ++i) {
          const __m512 s = _mm512_set1_ps(d[(r + i) * ldd + t]);
          a[i][0] = _mm512_fmadd_ps(s, w0, a[i][0]);
          a[i][1] = _mm512_fmadd_ps(s, w1, a[i][1]);
        }
      }
      for (int i = 0; i < 4; ++i) {
        _mm512_storeu_ps(acc + (r + i) * lda + c, a[i][0]);
        _mm512_storeu_ps(acc + (r + i) * lda + c + 16, a[i][1]);
      }
    }
  }
  for (; r < rows; ++r) {
    for (int64_t c = 0; c < cols; c += 32) {
      __m512 a0 = _mm512_loadu_ps(acc + r * lda + c), a1 = _mm512_loadu_ps(acc + r * lda + c + 16);
      for (int64_t t = 0; t < tiles; ++t) {
        const __m512 s = _mm512_set1_ps(d[r * ldd + t]);
        a0 = _mm512_fmadd_ps(s, _mm512_loadu_ps(tile + t * ldt + c), a0);
        a1 = _mm512_fmadd_ps(s, _mm512_loadu_ps(tile + t * ldt + c + 16), a1);
      }
      _mm512_storeu_ps(acc + r * lda + c, a0);
      _mm512_storeu_ps(acc + r * lda + c + 16, a1);
    }
  }
}

bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}

bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

void run_units(void* ctx) {
  TJob& j = *(TJob*)ctx;
  try {
    thread_local std::vector<float> tile;
    tile.resize((size_t)(kTile * kColBlock));
    for (;;) {
      const int64_t u = j.next.fetch_add(1);
      if (u >= j.units) return;
      const int64_t r0 = (u / j.col_blocks) * j.row_chunk, r1 = std::min(j.m, r0 + j.row_chunk);
      const int64_t c0 = (u % j.col_blocks) * kColBlock, c1 = std::min(j.k, c0 + kColBlock);
      const int64_t cols = c1 - c0;
      const size_t offset = (size_t)(c0 / j.block * j.block_bytes);
      float* acc = j.dx + r0 * j.k + c0;
      for (int64_t n0 = 0; n0 < j.n; n0 += kTile) {
        const int64_t tiles = std::min(kTile, j.n - n0);
        for (int64_t t = 0; t < tiles; ++t)
          scalar::dequantize_row(j.type, j.w + (size_t)(n0 + t) * j.row_bytes + offset, cols,
                                 tile.data() + t * kColBlock);
        const float* d = j.dy + r0 * j.lddy + n0;
#if MLXK_X86
        if (j.simd512 && cols % 32 == 0) {
          add_product_avx512(d, j.lddy, tile.data(), kColBlock, tiles, acc, j.k, r1 - r0, cols);
          continue;
        }
        if (j.simd && cols % 16 == 0) {
          add_product_avx2(d, j.lddy, tile.data(), kColBlock, tiles, acc, j.k, r1 - r0, cols);
          continue;
        }
#endif
        add_product_scalar(d, j.lddy, tile.data(), kColBlock, tiles, acc, j.k, r1 - r0, cols);
      }
    }
  } catch (...) {
    j.failed.store(true);
  }
}

}  // namespace

// dx [m, k] (contiguous) = dy [m, n] (row stride lddy) . W [n, k] for W of `type` (any layout the
// forward kernels take). Returns an MLXK_* status.
int qmatmul_t_checked(const void* w, int type, int64_t n, int64_t k, const float* dy, int64_t m, int64_t lddy,
                      float* dx) {
  int64_t rb = 0;
  if (int rc = validate(type, n, k, &rb)) return rc;
  TypeInfo ti;
  if (!type_info(type, &ti)) return MLXK_ERR_BAD_ARG;
  std::fill(dx, dx + m * k, 0.0f);
  if (m == 0 || n == 0 || k == 0) return MLXK_OK;
  TJob job;
  job.type = type;
  job.n = n;
  job.k = k;
  job.m = m;
  job.row_bytes = (size_t)rb;
  job.block = ti.block;
  job.block_bytes = ti.bytes;
  job.w = (const uint8_t*)w;
  job.dy = dy;
  job.lddy = lddy;
  job.dx = dx;
  job.col_blocks = (k + kColBlock - 1) / kColBlock;
  // Rows per unit: all of them when the column blocks alone keep the threads busy, else
  // chunks of at least 64 (each chunk decodes the weight once more).
  const int threads = pool_num_threads();
  job.row_chunk = m;
  while (job.row_chunk >= 128 && ((m + job.row_chunk - 1) / job.row_chunk) * job.col_blocks < 4 * threads)
    job.row_chunk = (job.row_chunk + 1) / 2;
  job.units = ((m + job.row_chunk - 1) / job.row_chunk) * job.col_blocks;
#if MLXK_X86
  job.simd = cpu_has_avx2_fma();
  job.simd512 = cpu_has_avx512();
#else
  job.simd = job.simd512 = false;
#endif
  if (job.units > 1)
    parallel_run(run_units, &job, threads);
  else
    run_units(&job);
  if (job.failed.load()) {
    set_last_error("allocation of kernel scratch memory failed");
    return MLXK_ERR_INTERNAL;
  }
  return MLXK_OK;
}

}  // namespace mlxe
