// C API of the raw kernels: validation, path selection, activation quantization and the
// threaded split over output rows.
#include <atomic>
#include <cstdlib>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include "mlx_engine_kernels.h"
#include "mlxk_internal.h"

namespace mlxe {

// Shared with mlx_primitive.cpp.
void set_last_error(const std::string& msg);
int qmatmul_checked(const void* w, int type, int64_t n, int64_t k, const float* x, int64_t m, int64_t ldx,
                    float* y, int64_t ldy);
int validate(int type, int64_t n, int64_t k, int64_t* row_bytes);

namespace {

thread_local std::string g_last_error;

std::atomic<int> g_forced{-2};  // -2: not initialized yet, -1: auto

int default_path() {
  const char* v = std::getenv("MLX_ENGINE_KERNEL");
  if (v && std::string(v) == "scalar") return MLXK_PATH_SCALAR;
  return avx2::cpu_supported() ? MLXK_PATH_AVX2 : MLXK_PATH_SCALAR;
}

int current_path() {
  int f = g_forced.load(std::memory_order_relaxed);
  if (f == -2 || f == -1) {
    static const int dflt = default_path();
    return dflt;
  }
  return f;
}

// A 64-byte aligned growable scratch buffer, one per calling thread.
struct Scratch {
  uint8_t* p = nullptr;
  size_t cap = 0;
  ~Scratch() { std::free(p); }
  uint8_t* get(size_t n) {
    if (n > cap) {
      std::free(p);
      p = nullptr;
      cap = 0;
      size_t c = (n + 63) / 64 * 64;
      p = (uint8_t*)std::aligned_alloc(64, c);
      if (!p) throw std::bad_alloc();
      cap = c;
    }
    return p;
  }
};

struct RowJob {
  const Problem* p;
  int path;
  int64_t chunk;
  int64_t nchunks;
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};  // an exception (allocation) on some thread
};

void row_job_fn(void* ctx) {
  RowJob* j = (RowJob*)ctx;
  const Problem& p = *j->p;
  for (;;) {
    const int64_t c = j->next.fetch_add(1, std::memory_order_relaxed);
    if (c >= j->nchunks) break;
    const int64_t n0 = c * j->chunk;
    const int64_t n1 = n0 + j->chunk < p.n ? n0 + j->chunk : p.n;
    try {
      if (j->path == MLXK_PATH_AVX2)
        avx2::compute_rows(p, n0, n1);
      else
        scalar::compute_rows(p, n0, n1);
    } catch (...) {  // never let an exception escape a pool thread
      j->failed.store(true);
    }
  }
}

struct QuantJob {
  const Problem* p;
  uint8_t* xq;
  int64_t chunk;
  int64_t nchunks;
  std::atomic<int64_t> next{0};
};

void quant_job_fn(void* ctx) {
  QuantJob* j = (QuantJob*)ctx;
  const Problem& p = *j->p;
  for (;;) {
    const int64_t c = j->next.fetch_add(1, std::memory_order_relaxed);
    if (c >= j->nchunks) break;
    const int64_t m0 = c * j->chunk;
    const int64_t m1 = m0 + j->chunk < p.m ? m0 + j->chunk : p.m;
    for (int64_t m = m0; m < m1; ++m)
      avx2::quantize_act_row(p.type, p.x + m * p.ldx, p.k, j->xq + (size_t)m * p.xq_stride);
  }
}

}  // namespace

void set_last_error(const std::string& msg) { g_last_error = msg; }

int validate(int type, int64_t n, int64_t k, int64_t* row_bytes) {
  TypeInfo ti;
  if (!type_info(type, &ti)) {
    set_last_error("unsupported ggml type id " + std::to_string(type));
    return MLXK_ERR_BAD_TYPE;
  }
  if (n < 0 || k <= 0) {
    set_last_error("bad shape: n=" + std::to_string(n) + " k=" + std::to_string(k));
    return MLXK_ERR_BAD_SHAPE;
  }
  if (k % ti.block != 0) {
    set_last_error(std::string("k=") + std::to_string(k) + " is not a multiple of the " + ti.name +
                   " block size " + std::to_string(ti.block));
    return MLXK_ERR_BAD_SHAPE;
  }
  if (row_bytes) *row_bytes = k / ti.block * ti.bytes;
  return MLXK_OK;
}

int qmatmul_checked(const void* w, int type, int64_t n, int64_t k, const float* x, int64_t m, int64_t ldx,
                    float* y, int64_t ldy) {
  int64_t rb = 0;
  int rc = validate(type, n, k, &rb);
  if (rc) return rc;
  if (m < 0) {
    set_last_error("bad shape: m=" + std::to_string(m));
    return MLXK_ERR_BAD_SHAPE;
  }
  if (n == 0 || m == 0) return MLXK_OK;
  if (!w || !x || !y) {
    set_last_error("null pointer argument");
    return MLXK_ERR_BAD_ARG;
  }
  if ((m > 1 && ldx < k) || (m > 1 && ldy < n)) {
    set_last_error("row stride smaller than the row (x_row_stride=" + std::to_string(ldx) +
                   ", y_row_stride=" + std::to_string(ldy) + ")");
    return MLXK_ERR_BAD_ARG;
  }
  const int path = current_path();
  const int nthreads = pool_num_threads();

  Problem p{};
  p.type = type;
  p.n = n;
  p.k = k;
  p.m = m;
  p.w = (const uint8_t*)w;
  p.row_bytes = (size_t)rb;
  p.x = x;
  p.ldx = ldx;
  p.y = y;
  p.ldy = ldy;

  int64_t tile = 1;
  if (path == MLXK_PATH_AVX2) {
    const size_t arb = avx2::act_row_bytes(type, k);
    if (arb) {
      thread_local Scratch scratch;
      uint8_t* xq = scratch.get(arb * (size_t)m);
      p.xq = xq;
      p.xq_stride = arb;
      QuantJob qj;
      qj.p = &p;
      qj.xq = xq;
      qj.chunk = m >= 64 ? 8 : m;
      qj.nchunks = (m + qj.chunk - 1) / qj.chunk;
      if (qj.nchunks > 1)
        parallel_run(quant_job_fn, &qj, nthreads);
      else
        quant_job_fn(&qj);
    }
    tile = avx2::row_tile(type, m);
  }

  // Split the N rows into chunks (multiples of the row tile) pulled dynamically by the threads.
  // ~16 chunks per thread bounds the wait for a descheduled worker; >= 32 KB of weights per
  // chunk keeps the per-chunk overhead (one atomic) small for GEMV.
  RowJob job;
  job.p = &p;
  job.path = path;
  const int64_t target = (int64_t)nthreads * 16;
  int64_t chunk = (n + target - 1) / target;
  if (m == 1) {
    const int64_t min_rows = (int64_t)(32768 / (rb > 0 ? rb : 1)) + 1;
    if (chunk < min_rows) chunk = min_rows;
  }
  chunk = (chunk + tile - 1) / tile * tile;
  if (chunk < tile) chunk = tile;
  job.chunk = chunk;
  job.nchunks = (n + chunk - 1) / chunk;
  if (job.nchunks > 1)
    parallel_run(row_job_fn, &job, nthreads);
  else
    row_job_fn(&job);
  if (job.failed.load()) {
    set_last_error("allocation of kernel scratch memory failed");
    return MLXK_ERR_INTERNAL;
  }
  return MLXK_OK;
}

}  // namespace mlxe

using namespace mlxe;

extern "C" {

int mlxk_qmatmul_f32(const void* w, int ggml_type, int64_t n, int64_t k, const float* x, int64_t m,
                     int64_t x_row_stride, float* y, int64_t y_row_stride) {
  try {
    return qmatmul_checked(w, ggml_type, n, k, x, m, x_row_stride, y, y_row_stride);
  } catch (const std::exception& e) {
    set_last_error(std::string("mlxk_qmatmul_f32: ") + e.what());
  } catch (...) {
    set_last_error("mlxk_qmatmul_f32: unknown exception");
  }
  return MLXK_ERR_INTERNAL;
}

int mlxk_dequantize_rows(const void* w, int ggml_type, int64_t rows, int64_t k, float* out) {
  try {
    int64_t rb = 0;
    int rc = validate(ggml_type, rows, k, &rb);
    if (rc) return rc;
    if (rows == 0) return MLXK_OK;
    if (!w || !out) {
      set_last_error("null pointer argument");
      return MLXK_ERR_BAD_ARG;
    }
    const uint8_t* wb = (const uint8_t*)w;
    for (int64_t r = 0; r < rows; ++r) scalar::dequantize_row(ggml_type, wb + (size_t)r * rb, k, out + r * k);
    return MLXK_OK;
  } catch (const std::exception& e) {
    set_last_error(std::string("mlxk_dequantize_rows: ") + e.what());
  } catch (...) {
    set_last_error("mlxk_dequantize_rows: unknown exception");
  }
  return MLXK_ERR_INTERNAL;
}

int mlxk_row_bytes(int ggml_type, int64_t k, int64_t* out) {
  int64_t rb = 0;
  int rc = validate(ggml_type, 0, k, &rb);
  if (rc) return rc;
  if (!out) {
    set_last_error("null pointer argument");
    return MLXK_ERR_BAD_ARG;
  }
  *out = rb;
  return MLXK_OK;
}

int mlxk_block_size(int ggml_type) {
  TypeInfo ti;
  return type_info(ggml_type, &ti) ? ti.block : 0;
}

const char* mlxk_last_error(void) { return g_last_error.c_str(); }

int mlxk_kernel_path(void) { return current_path(); }

void mlxk_force_path(int path) {
  if (path == MLXK_PATH_AVX2 && !avx2::cpu_supported()) path = MLXK_PATH_SCALAR;
  if (path != MLXK_PATH_SCALAR && path != MLXK_PATH_AVX2) path = -1;
  g_forced.store(path);
}

void mlxk_set_num_threads(int n) { pool_set_num_threads(n); }
int mlxk_get_num_threads(void) { return pool_num_threads(); }

}  // extern "C"
