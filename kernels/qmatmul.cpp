// C API of the raw kernels: validation, path selection, activation quantization and the
// threaded split over output rows.
#include <atomic>
#include <cstdlib>
#include <exception>
#include <new>
#include <numeric>
#include <string>
#include <vector>

#include "mlx_engine_kernels.h"
#if defined(__GLIBC__)
#include <malloc.h>
#endif

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
  const std::string want = v ? v : "";
  if (want == "scalar" || !avx2::cpu_supported()) return MLXK_PATH_SCALAR;
  if (want == "avx2" || !vnni::cpu_supported()) return MLXK_PATH_AVX2;
  return MLXK_PATH_AVX512_VNNI;
}

// Both SIMD paths share the activation formats, tiles and epilogues; only compute_rows differs.
bool is_simd(int path) { return path == MLXK_PATH_AVX2 || path == MLXK_PATH_AVX512_VNNI; }

int current_path() {
  int f = g_forced.load(std::memory_order_relaxed);
  if (f == -2 || f == -1) {
    static const int dflt = default_path();
    return dflt;
  }
  return f;
}

int64_t env_rows(const char* name, int64_t dflt) {
  const char* e = std::getenv(name);
  const long long n = e ? std::atoll(e) : 0;
  return n > 0 ? (int64_t)n : dflt;
}

}  // namespace

int64_t panel_min_rows() {
  // 9 where the panels are the 512-bit kernels (AVX-512 VNNI); the 256-bit panels lose to the
  // one-row tiles up to 16 rows (AVX2-only Zen: pp16 1.3x, 16-sequence decode 1.1x faster).
  static const int64_t v = env_rows("MLX_ENGINE_PANEL_MIN_ROWS", default_path() == MLXK_PATH_AVX512_VNNI ? 9 : 17);
  return v;
}

int64_t kq_panel_min_rows() {
  // On VNNI hosts the K-quants' one-row zmm tiles (8 activation rows per decode) beat the panels
  // up to a few dozen rows (2-core Zen 5, `dev/bench decode 3 r8 M 1.5b`, the simulated Qwen 1.5B
  // step: M = 16 153 vs 235 ms, M = 24 199-223 vs 268-275, M = 32 even, M = 48 and 64 the panels
  // 3-5 % ahead); elsewhere the panels take over with the other types.
  static const int64_t v =
      env_rows("MLX_ENGINE_KQ_PANEL_MIN_ROWS", default_path() == MLXK_PATH_AVX512_VNNI ? 32 : panel_min_rows());
  return v;
}

namespace {

// Activation rows from which the VNNI path runs the zmm kernels (quant_zmm.cpp) instead of the
// 256-bit code: MLX_ENGINE_ZMM_MIN_ROWS, default panel_min_rows() (a large value turns them
// off). Below that, the one-row tiles beat both panels (kernels/README.md).
int64_t zmm_min_rows() {
  static const int64_t v = env_rows("MLX_ENGINE_ZMM_MIN_ROWS", panel_min_rows());
  return v;
}

bool use_zmm(int path, int type, int64_t m) {
  return path == MLXK_PATH_AVX512_VNNI && m >= zmm_min_rows() && zmm::supports(type) && zmm::cpu_supported();
}

// Bytes of one quantized activation row for this weight type and call (0: float activations).
size_t act_bytes(int path, int type, int64_t k, int64_t m) {
  return use_zmm(path, type, m) ? zmm::act_row_bytes(k) : avx2::act_row_bytes(type, k);
}

void quantize_act(int path, int type, int64_t m, const float* x, int64_t k, uint8_t* dst) {
  if (use_zmm(path, type, m))
    zmm::quantize_act_row(x, k, dst);
  else
    avx2::quantize_act_row(type, x, k, dst);
}

int64_t row_tile_of(int path, int type, int64_t m) {
  if (!is_simd(path)) return 1;
  return use_zmm(path, type, m) ? zmm::row_tile() : avx2::row_tile(type, m);
}

void compute(int path, const Problem& p, int64_t n0, int64_t n1) {
  if (use_zmm(path, p.type, p.m))
    zmm::compute_rows(p, n0, n1);
  else if (path == MLXK_PATH_AVX512_VNNI)
    vnni::compute_rows(p, n0, n1);
  else if (path == MLXK_PATH_AVX2)
    avx2::compute_rows(p, n0, n1);
  else
    scalar::compute_rows(p, n0, n1);
}

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
      compute(j->path, p, n0, n1);
    } catch (...) {  // never let an exception escape a pool thread
      j->failed.store(true);
    }
  }
}

struct QuantJob {
  const Problem* p;
  int path;
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
      quantize_act(j->path, p.type, p.m, p.x + m * p.ldx, p.k, j->xq + (size_t)m * p.xq_stride);
  }
}

// Rows per work chunk over weights of `total_bytes` in all, `bytes_per_row` per row of this
// weight: ~16 chunks per thread bound the wait for a descheduled worker, >= 32 KB of weights
// per chunk keeps the per-chunk overhead (one atomic) small for GEMV, and a multiple of the row
// tile. (For a single weight: ceil(n / (16 threads)) rows.)
int64_t chunk_rows(int64_t total_bytes, int64_t bytes_per_row, int64_t m, int nthreads, int64_t tile) {
  const int64_t target = (int64_t)nthreads * 16;
  const int64_t bpr = bytes_per_row > 0 ? bytes_per_row : 1;
  const int64_t chunk_bytes = (total_bytes + target - 1) / target;
  int64_t chunk = (chunk_bytes + bpr - 1) / bpr;
  if (m == 1) {
    const int64_t min_rows = 32768 / bpr + 1;
    if (chunk < min_rows) chunk = min_rows;
  }
  chunk = (chunk + tile - 1) / tile * tile;
  if (chunk < tile) chunk = tile;
  return chunk;
}

// The activations a weight type reads on the SIMD paths: 0 f32 (float weights), 1 int8 in
// blocks of 32 (quant_q8_32: Q4_0..Q8_0), 2 int8 in blocks of 256 (quant_q8_256: K-quants), 3
// the zmm kernels' format (any quantized type).
int act_format(int path, int type, int64_t m) {
  if (use_zmm(path, type, m)) return 3;
  switch (type) {
    case T_F32:
    case T_F16:
    case T_BF16:
      return 0;
    case T_Q4_K:
    case T_Q5_K:
    case T_Q6_K:
      return 2;
    default:
      return 1;
  }
}

// One quantized copy of the activations (AVX2 path).
struct ActFormat {
  int type;  // a weight type using this format (quantize_act_row picks the format by type)
  size_t row_bytes;
  uint8_t* xq;
};

struct MultiQuantJob {
  int path;
  const float* x;
  int64_t m, k, ldx;
  const ActFormat* fmts;
  int nfmts;
  int64_t chunk;    // activation rows per item
  int64_t nchunks;  // items per format
  std::atomic<int64_t> next{0};
};

void multi_quant_job_fn(void* ctx) {
  MultiQuantJob* j = (MultiQuantJob*)ctx;
  for (;;) {
    const int64_t c = j->next.fetch_add(1, std::memory_order_relaxed);
    if (c >= j->nchunks * j->nfmts) break;
    const ActFormat& f = j->fmts[c / j->nchunks];
    const int64_t m0 = (c % j->nchunks) * j->chunk;
    const int64_t m1 = m0 + j->chunk < j->m ? m0 + j->chunk : j->m;
    for (int64_t m = m0; m < m1; ++m)
      quantize_act(j->path, f.type, j->m, j->x + m * j->ldx, j->k, f.xq + (size_t)m * f.row_bytes);
  }
}

// One output of a fused call: the rows [0, n) of `p` (for SWIGLU the gate, with `up` the up
// projection over the same rows), split into chunks of `chunk` rows numbered from `c0`.
struct MultiPart {
  Problem p;
  Problem up;
  const float* bias;
  int64_t chunk, c0, nchunks;
};

struct MultiJob {
  MultiPart parts[kMaxMultiWeights];
  int nparts;
  int path;
  int epilogue;
  int64_t total;  // chunks over all parts
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
};

void multi_chunk(const MultiJob& j, const MultiPart& pt, int64_t r0, int64_t r1) {
  const Problem& p = pt.p;
  compute(j.path, p, r0, r1);
  if (j.epilogue != MLXK_EPILOGUE_NONE) {
    // The up rows of this chunk into a thread-local [m, r1 - r0] scratch, then the product in
    // place while both are in cache. The sub-problem starts at row r0 but keeps the end of
    // the weights (the GEMV prefetch bound) where the full problem has it.
    const int64_t w = r1 - r0;
    thread_local AlignedScratch scratch;
    float* u = (float*)scratch.get(sizeof(float) * (size_t)(w * p.m));
    Problem up = pt.up;
    up.w += (size_t)r0 * up.row_bytes;
    up.n -= r0;
    up.y = u;
    up.ldy = w;
    compute(j.path, up, 0, w);
    const bool avx = is_simd(j.path), silu = j.epilogue == MLXK_EPILOGUE_SWIGLU;
    auto gate = silu ? (avx ? avx2::swiglu : scalar::swiglu) : (avx ? avx2::geglu : scalar::geglu);
    for (int64_t m = 0; m < p.m; ++m) gate(p.y + m * p.ldy + r0, u + m * w, w);
  } else if (pt.bias) {
    for (int64_t m = 0; m < p.m; ++m) {
      float* y = p.y + m * p.ldy;
      for (int64_t r = r0; r < r1; ++r) y[r] += pt.bias[r];
    }
  }
}

void multi_job_fn(void* ctx) {
  MultiJob* j = (MultiJob*)ctx;
  for (;;) {
    const int64_t c = j->next.fetch_add(1, std::memory_order_relaxed);
    if (c >= j->total) break;
    int i = 0;
    while (i + 1 < j->nparts && c >= j->parts[i + 1].c0) ++i;
    const MultiPart& pt = j->parts[i];
    const int64_t r0 = (c - pt.c0) * pt.chunk;
    const int64_t r1 = r0 + pt.chunk < pt.p.n ? r0 + pt.chunk : pt.p.n;
    try {
      multi_chunk(*j, pt, r0, r1);
    } catch (...) {  // never let an exception escape a pool thread
      j->failed.store(true);
    }
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
  if (is_simd(path)) {
    const size_t arb = act_bytes(path, type, k, m);
    if (arb) {
      thread_local AlignedScratch scratch;
      uint8_t* xq = scratch.get(arb * (size_t)m);
      p.xq = xq;
      p.xq_stride = arb;
      QuantJob qj;
      qj.p = &p;
      qj.path = path;
      qj.xq = xq;
      qj.chunk = m >= 64 ? 8 : m;
      qj.nchunks = (m + qj.chunk - 1) / qj.chunk;
      if (qj.nchunks > 1)
        parallel_run(quant_job_fn, &qj, nthreads);
      else
        quant_job_fn(&qj);
    }
    tile = row_tile_of(path, type, m);
  }

  // Split the N rows into chunks (multiples of the row tile) pulled dynamically by the threads.
  // ~16 chunks per thread bounds the wait for a descheduled worker; >= 32 KB of weights per
  // chunk keeps the per-chunk overhead (one atomic) small for GEMV.
  RowJob job;
  job.p = &p;
  job.path = path;
  const int64_t chunk = chunk_rows(n * rb, rb, m, nthreads, tile);
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

int validate_multi(const MultiWeight* ws, int count, int64_t k, int epilogue) {
  if (count < 1 || count > kMaxMultiWeights) {
    set_last_error("count=" + std::to_string(count) + " weights; a fused call takes 1 to " +
                   std::to_string(kMaxMultiWeights));
    return MLXK_ERR_BAD_ARG;
  }
  if (!ws) {
    set_last_error("null pointer argument");
    return MLXK_ERR_BAD_ARG;
  }
  if (epilogue != MLXK_EPILOGUE_NONE && epilogue != MLXK_EPILOGUE_SWIGLU && epilogue != MLXK_EPILOGUE_GEGLU) {
    set_last_error("unknown epilogue " + std::to_string(epilogue));
    return MLXK_ERR_BAD_ARG;
  }
  for (int i = 0; i < count; ++i) {
    const int rc = validate(ws[i].type, ws[i].n, k, nullptr);
    if (rc) {
      set_last_error("weight " + std::to_string(i) + ": " + g_last_error);
      return rc;
    }
  }
  if (epilogue != MLXK_EPILOGUE_NONE) {
    if (count != 2) {
      set_last_error("the gated (SwiGLU/GEGLU) epilogue takes exactly 2 weights (gate, up), got " + std::to_string(count));
      return MLXK_ERR_BAD_ARG;
    }
    if (ws[0].n != ws[1].n) {
      set_last_error("the gated (SwiGLU/GEGLU) epilogue needs gate and up of the same n (got " + std::to_string(ws[0].n) +
                     " and " + std::to_string(ws[1].n) + ")");
      return MLXK_ERR_BAD_SHAPE;
    }
    if (ws[0].bias || ws[1].bias) {
      set_last_error("the gated (SwiGLU/GEGLU) epilogue takes no bias");
      return MLXK_ERR_BAD_ARG;
    }
  }
  return MLXK_OK;
}

int qmatmul_multi_checked(const float* x, int64_t m, int64_t ldx, int64_t k, const MultiWeight* ws, int count,
                          int epilogue, float* const* ys) {
  int rc = validate_multi(ws, count, k, epilogue);
  if (rc) return rc;
  if (m < 0) {
    set_last_error("bad shape: m=" + std::to_string(m));
    return MLXK_ERR_BAD_SHAPE;
  }
  const bool swiglu = epilogue != MLXK_EPILOGUE_NONE;  // a gated pair, one output
  const int nparts = swiglu ? 1 : count;
  int64_t total_rows = 0;
  for (int i = 0; i < nparts; ++i) total_rows += ws[i].n;
  if (m == 0 || total_rows == 0) return MLXK_OK;
  if (!x || !ys) {
    set_last_error("null pointer argument");
    return MLXK_ERR_BAD_ARG;
  }
  for (int i = 0; i < count; ++i)
    if ((ws[i].n > 0 && !ws[i].w) || (i < nparts && ws[i].n > 0 && !ys[i])) {
      set_last_error("null pointer argument (weight or output " + std::to_string(i) + ")");
      return MLXK_ERR_BAD_ARG;
    }
  if (m > 1 && ldx < k) {
    set_last_error("row stride smaller than the row (x_row_stride=" + std::to_string(ldx) + ")");
    return MLXK_ERR_BAD_ARG;
  }
  const int path = current_path();
  const int nthreads = pool_num_threads();

  Problem probs[kMaxMultiWeights];
  for (int i = 0; i < count; ++i) {
    int64_t rb = 0;
    validate(ws[i].type, ws[i].n, k, &rb);
    Problem& p = probs[i];
    p = Problem{};
    p.type = ws[i].type;
    p.n = ws[i].n;
    p.k = k;
    p.m = m;
    p.w = (const uint8_t*)ws[i].w;
    p.row_bytes = (size_t)rb;
    p.x = x;
    p.ldx = ldx;
    p.y = i < nparts ? ys[i] : nullptr;
    p.ldy = ws[i].n;
  }

  // Quantize the activations once per format the weights need (AVX2 path).
  if (is_simd(path)) {
    thread_local AlignedScratch scratch[2];
    ActFormat fmts[2];
    int nfmts = 0;
    int fmt_of[kMaxMultiWeights];
    for (int i = 0; i < count; ++i) {
      fmt_of[i] = -1;
      const size_t arb = act_bytes(path, ws[i].type, k, m);
      if (!arb) continue;  // float weights read f32 activations
      for (int f = 0; f < nfmts; ++f)
        if (act_format(path, fmts[f].type, m) == act_format(path, ws[i].type, m)) fmt_of[i] = f;
      if (fmt_of[i] < 0) {
        fmts[nfmts] = ActFormat{ws[i].type, arb, scratch[nfmts].get(arb * (size_t)m)};
        fmt_of[i] = nfmts++;
      }
    }
    for (int i = 0; i < count; ++i)
      if (fmt_of[i] >= 0) {
        probs[i].xq = fmts[fmt_of[i]].xq;
        probs[i].xq_stride = fmts[fmt_of[i]].row_bytes;
      }
    if (nfmts) {
      MultiQuantJob qj;
      qj.path = path;
      qj.x = x;
      qj.m = m;
      qj.k = k;
      qj.ldx = ldx;
      qj.fmts = fmts;
      qj.nfmts = nfmts;
      qj.chunk = m >= 64 ? 8 : m;
      qj.nchunks = (m + qj.chunk - 1) / qj.chunk;
      if (qj.nchunks * nfmts > 1)
        parallel_run(multi_quant_job_fn, &qj, nthreads);
      else
        multi_quant_job_fn(&qj);
    }
  }

  // One job over the row chunks of every output (for SWIGLU a chunk covers the same rows of
  // gate and up, so its bytes per row are both rows').
  MultiJob job;
  job.nparts = nparts;
  job.path = path;
  job.epilogue = epilogue;
  int64_t total_bytes = 0;
  for (int i = 0; i < count; ++i) total_bytes += probs[i].n * (int64_t)probs[i].row_bytes;
  int64_t c0 = 0;
  for (int i = 0; i < nparts; ++i) {
    MultiPart& pt = job.parts[i];
    pt.p = probs[i];
    pt.bias = ws[i].bias;
    int64_t bpr = (int64_t)probs[i].row_bytes;
    int64_t tile = row_tile_of(path, ws[i].type, m);
    if (swiglu) {
      pt.up = probs[1];
      bpr += (int64_t)probs[1].row_bytes;
      tile = std::lcm(tile, row_tile_of(path, ws[1].type, m));
    }
    pt.chunk = chunk_rows(total_bytes, bpr, m, nthreads, tile);
    pt.c0 = c0;
    pt.nchunks = (pt.p.n + pt.chunk - 1) / pt.chunk;
    c0 += pt.nchunks;
  }
  job.total = c0;
  if (job.total > 1)
    parallel_run(multi_job_fn, &job, nthreads);
  else
    multi_job_fn(&job);
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

int mlxk_repack_supported(int ggml_type) { return repack_supported(ggml_type) ? 1 : 0; }

int mlxk_repack_rows(const void* src, int ggml_type, int64_t n, int64_t k, void* dst, int* out_type) {
  try {
    int64_t rb = 0;
    if (is_repacked(ggml_type)) {
      set_last_error("type id " + std::to_string(ggml_type) + " is already a repacked layout");
      return MLXK_ERR_BAD_TYPE;
    }
    int rc = validate(ggml_type, n, k, &rb);
    if (rc) return rc;
    if (!out_type || (n > 0 && (!src || !dst))) {
      set_last_error("null pointer argument");
      return MLXK_ERR_BAD_ARG;
    }
    const uint8_t* s = (const uint8_t*)src;
    uint8_t* d = (uint8_t*)dst;
    if (n > 0 && s < d + (size_t)n * rb && d < s + (size_t)n * rb) {
      set_last_error("source and destination overlap");
      return MLXK_ERR_BAD_ARG;
    }
    if (!repack_supported(ggml_type)) {
      if (n > 0) std::memcpy(d, s, (size_t)n * rb);
      *out_type = ggml_type;
      return MLXK_OK;
    }
    struct Job {
      const uint8_t* s;
      uint8_t* d;
      int type;
      int64_t n, k, rb;
      std::atomic<int64_t> next{0};
    } job{s, d, ggml_type, n, k, rb};
    parallel_run(
        [](void* ctx) {
          Job* j = (Job*)ctx;
          constexpr int64_t kRows = 64;
          for (;;) {
            const int64_t r0 = j->next.fetch_add(kRows, std::memory_order_relaxed);
            if (r0 >= j->n) break;
            const int64_t r1 = r0 + kRows < j->n ? r0 + kRows : j->n;
            for (int64_t r = r0; r < r1; ++r) repack_row(j->type, j->s + r * j->rb, j->k, j->d + r * j->rb);
          }
        },
        &job, pool_num_threads());
    *out_type = ggml_type | kRepackedFlag;
    return MLXK_OK;
  } catch (const std::exception& e) {
    set_last_error(std::string("mlxk_repack_rows: ") + e.what());
  } catch (...) {
    set_last_error("mlxk_repack_rows: unknown exception");
  }
  return MLXK_ERR_INTERNAL;
}

int mlxk_block_size(int ggml_type) {
  TypeInfo ti;
  return type_info(ggml_type, &ti) ? ti.block : 0;
}

const char* mlxk_last_error(void) { return g_last_error.c_str(); }

int mlxk_kernel_path(void) { return current_path(); }

void mlxk_force_path(int path) {
  if (path == MLXK_PATH_AVX512_VNNI && !vnni::cpu_supported()) path = MLXK_PATH_AVX2;
  if (path == MLXK_PATH_AVX2 && !avx2::cpu_supported()) path = MLXK_PATH_SCALAR;
  if (path != MLXK_PATH_SCALAR && !is_simd(path)) path = -1;
  g_forced.store(path);
}

void mlxk_set_num_threads(int n) { pool_set_num_threads(n); }

void mlxk_retain_freed_memory(void) {
#if defined(__GLIBC__)
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's largest allowed value
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
}
int mlxk_get_num_threads(void) { return pool_num_threads(); }

}  // extern "C"
