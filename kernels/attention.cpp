// Attention of one sequence over its KV cache, fused with RoPE and the cache write: the MLX
// custom primitive "CachedAttention" (CPU only).
//
//   inputs : q [L, Hq*hd], k [L, Hkv*hd], v [L, Hkv*hd] (f32, leading axes of size 1 allowed),
//            k_cache, v_cache [1, Hkv, cap, hd], both float32 or both float16
//   outputs: out [L, Hq*hd] (same shape as q), k_cache', v_cache' (the caches with positions
//            pos..pos+L-1 written; they share the input buffers when MLX can donate them)
//
// Query i (absolute position pos+i) attends keys 0..pos+i (causal), or only the last `window`
// of them (pos+i-window+1..pos+i) when window > 0 (sliding-window attention), grouped-query heads share
// their KV head (h / (Hq/Hkv)). Work items are (KV head, its query heads, block of query rows),
// pulled by the thread pool, so each cached key and value is read once per KV head; each row is
// a plain softmax over its scores (no running max needed: the whole score row fits in scratch).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "mlx/allocator.h"
#include "mlx/array.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"
#include "mlx/c/private/array.h"
#include "mlx/c/private/stream.h"
#include "mlx_engine_kernels.h"
#include "mlx_gather.h"
#include "mlxk_internal.h"

#if MLXK_X86
#include <immintrin.h>

#include "simd_exp.h"
#define ATT_AVX2 __attribute__((target("avx2,fma,f16c")))
#endif

namespace mlxe {
void set_last_error(const std::string& msg);

namespace attn {
namespace {

struct Params {
  int hq, hkv, hd;
  int64_t pos, len, cap;
  float scale, rope_base, rope_scale;
  bool traditional;
  std::vector<float> inv_freq;  // [hd/2] per-pair RoPE frequencies; empty: rope_base^(-2j/hd)
  int64_t window;  // keys a query sees, itself included; 0: all (causal)
  float norm_eps;  // with q_norm / k_norm weights: RMSNorm of each head before RoPE
  bool half;       // the caches hold IEEE halves (uint16_t bits), else float32
};

// A cached element as float: the caches hold float32 or IEEE half (the bits in a uint16_t).
inline float elem(float x) { return x; }
inline float elem(uint16_t h) { return half_to_float(h); }
// One row of n floats into a cache row, rounding to nearest even for halves.
inline void store_row(const float* src, int n, float* dst) { std::memcpy(dst, src, sizeof(float) * (size_t)n); }
inline void store_row(const float* src, int n, uint16_t* dst) {
  for (int i = 0; i < n; ++i) dst[i] = float_to_half(src[i]);
}

// ---- the two products of one query row, for a group of G query heads sharing a KV head:
//   scores:       s[g*lds + t] = scale * q_g . k_t            (q [G][hd], k [nk][hd])
//   weighted_sum: o_g = inv_g * sum_t s[g*lds + t] * v_t     (o_g at o + g*ldo)
// Each key and value row is loaded once for all G heads (the GQA group), which is what makes
// decode at long contexts cheap: the cache is read once per KV head, not once per query head.
// Portable versions, and AVX2 versions selected at run time for head_dim % 8 == 0. Both sum
// the values in key order, and a score never depends on how many rows the op was given, so an
// output row is the same whether its token came in a prefill, a decode step or a verify pass.
template <typename T>
void scores_scalar(const float* q, int G, const T* k, int64_t nk, int hd, float scale, float* s, int64_t lds) {
  for (int g = 0; g < G; ++g)
    for (int64_t t = 0; t < nk; ++t) {
      float d = 0.0f;
      for (int i = 0; i < hd; ++i) d += q[g * hd + i] * elem(k[t * hd + i]);
      s[g * lds + t] = d * scale;
    }
}
template <typename T>
void weighted_sum_scalar(const float* p, int64_t lds, int G, const T* v, int64_t nk, int hd, const float* inv,
                         float* o, int64_t ldo) {
  for (int g = 0; g < G; ++g) {
    float* og = o + g * ldo;
    std::memset(og, 0, sizeof(float) * (size_t)hd);
    for (int64_t t = 0; t < nk; ++t)
      for (int i = 0; i < hd; ++i) og[i] += p[g * lds + t] * elem(v[t * hd + i]);
    for (int i = 0; i < hd; ++i) og[i] *= inv[g];
  }
}
// s[j] = exp(s[j] - max) in place, returns the sum.
float softmax_numer_scalar(float* s, int64_t n) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < n; ++j) mx = s[j] > mx ? s[j] : mx;
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    s[j] = std::exp(s[j] - mx);
    sum += s[j];
  }
  return sum;
}

#if MLXK_X86
ATT_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
ATT_AVX2 inline __m256 load8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
ATT_AVX2 inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
// [sum a0, sum a1, ..., sum a7]: the horizontal sums of eight vectors in one vector.
ATT_AVX2 inline __m256 hsum8x8(const __m256* a) {
  const __m256 h0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  const __m256 h1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(h0, h1, 0x20), _mm256_permute2f128_ps(h0, h1, 0x31));
}
// Keys in blocks of eight (a block of 8 x hd floats stays in L1 while every head of the
// group passes over it), the rest one at a time.
template <typename T>
ATT_AVX2 void scores_avx2(const float* q, int G, const T* k, int64_t nk, int hd, float scale, float* s,
                          int64_t lds) {
  const __m256 sc = _mm256_set1_ps(scale);
  int64_t t = 0;
  for (; t + 8 <= nk; t += 8) {
    const T* kb = k + t * hd;
    for (int g = 0; g < G; ++g) {
      const float* qg = q + g * hd;
      __m256 a[8];
      for (int j = 0; j < 8; ++j) a[j] = _mm256_setzero_ps();
      for (int c = 0; c < hd; c += 8) {
        const __m256 qv = _mm256_loadu_ps(qg + c);
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j) a[j] = _mm256_fmadd_ps(qv, load8(kb + j * hd + c), a[j]);
      }
      _mm256_storeu_ps(s + g * lds + t, _mm256_mul_ps(hsum8x8(a), sc));
    }
  }
  for (; t < nk; ++t)
    for (int g = 0; g < G; ++g) {
      __m256 a = _mm256_setzero_ps();
      for (int c = 0; c < hd; c += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * hd + c), load8(k + t * hd + c), a);
      s[g * lds + t] = hsum8(a) * scale;
    }
}
// NC x 8 columns [c0, c0 + 8 NC) of every head's output, accumulated in registers over blocks
// of kValueBlock keys (a block of values stays in L1 while every head passes over it).
constexpr int64_t kValueBlock = 32;
template <int NC, typename T>
ATT_AVX2 void weighted_cols(const float* p, int64_t lds, int G, const T* v, int64_t nk, int hd, int c0, float* o,
                            int64_t ldo) {
  for (int64_t t0 = 0; t0 < nk; t0 += kValueBlock) {
    const int64_t t1 = t0 + kValueBlock < nk ? t0 + kValueBlock : nk;
    for (int g = 0; g < G; ++g) {
      float* og = o + g * ldo + c0;
      __m256 a[NC];
#pragma GCC unroll 8
      for (int j = 0; j < NC; ++j) a[j] = _mm256_loadu_ps(og + 8 * j);
      for (int64_t t = t0; t < t1; ++t) {
        const __m256 pt = _mm256_broadcast_ss(p + g * lds + t);
        const T* vt = v + t * hd + c0;
#pragma GCC unroll 8
        for (int j = 0; j < NC; ++j) a[j] = _mm256_fmadd_ps(pt, load8(vt + 8 * j), a[j]);
      }
#pragma GCC unroll 8
      for (int j = 0; j < NC; ++j) _mm256_storeu_ps(og + 8 * j, a[j]);
    }
  }
}
template <typename T>
ATT_AVX2 void weighted_sum_avx2(const float* p, int64_t lds, int G, const T* v, int64_t nk, int hd,
                                const float* inv, float* o, int64_t ldo) {
  for (int g = 0; g < G; ++g) std::memset(o + g * ldo, 0, sizeof(float) * (size_t)hd);
  int c0 = 0;
  for (; c0 + 64 <= hd; c0 += 64) weighted_cols<8>(p, lds, G, v, nk, hd, c0, o, ldo);
  if (hd - c0 >= 32) weighted_cols<4>(p, lds, G, v, nk, hd, c0, o, ldo), c0 += 32;
  if (hd - c0 >= 16) weighted_cols<2>(p, lds, G, v, nk, hd, c0, o, ldo), c0 += 16;
  if (hd - c0 >= 8) weighted_cols<1>(p, lds, G, v, nk, hd, c0, o, ldo);
  for (int g = 0; g < G; ++g) {
    const __m256 iv = _mm256_set1_ps(inv[g]);
    float* og = o + g * ldo;
    for (int c = 0; c < hd; c += 8) _mm256_storeu_ps(og + c, _mm256_mul_ps(_mm256_loadu_ps(og + c), iv));
  }
}
ATT_AVX2 float softmax_numer_avx2(float* s, int64_t n) {
  __m256 mv = _mm256_set1_ps(-INFINITY);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(s + j));
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  float mx = _mm_cvtss_f32(m4);
  for (int64_t t = j; t < n; ++t) mx = s[t] > mx ? s[t] : mx;
  const __m256 mxv = _mm256_set1_ps(mx);
  __m256 sv = _mm256_setzero_ps();
  for (j = 0; j + 8 <= n; j += 8) {
    const __m256 e = simd::exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), mxv));
    _mm256_storeu_ps(s + j, e);
    sv = _mm256_add_ps(sv, e);
  }
  float sum = hsum8(sv);
  for (; j < n; ++j) {
    s[j] = std::exp(s[j] - mx);
    sum += s[j];
  }
  return sum;
}
#endif

// The three steps for caches of element type T (float or uint16_t halves).
template <typename T>
struct Ops {
  void (*scores)(const float*, int, const T*, int64_t, int, float, float*, int64_t);
  float (*softmax_numer)(float*, int64_t);
  void (*weighted_sum)(const float*, int64_t, int, const T*, int64_t, int, const float*, float*, int64_t);
};

template <typename T>
Ops<T> ops_for(int hd) {
#if MLXK_X86
  if (mlxk_kernel_path() != MLXK_PATH_SCALAR && hd % 8 == 0)
    return {scores_avx2<T>, softmax_numer_avx2, weighted_sum_avx2<T>};
#endif
  return {scores_scalar<T>, softmax_numer_scalar, weighted_sum_scalar<T>};
}

// cos / sin of the rotation angles, [len][hd/2]: angle(i, j) = (pos + i) * scale * inv(j), with
// inv(j) = inv_freq[j] when given (scaled RoPE variants), else base^(-2j/hd).
void rope_tables(const Params& p, std::vector<float>& cs, std::vector<float>& sn) {
  const int half = p.hd / 2;
  cs.resize((size_t)(p.len * half));
  sn.resize((size_t)(p.len * half));
  std::vector<double> inv((size_t)half);
  for (int j = 0; j < half; ++j)
    inv[(size_t)j] = p.inv_freq.empty() ? std::pow((double)p.rope_base, -2.0 * j / p.hd) : (double)p.inv_freq[(size_t)j];
  for (int64_t i = 0; i < p.len; ++i) {
    const double t = (double)(p.pos + i) * p.rope_scale;
    for (int j = 0; j < half; ++j) {
      const double a = t * inv[(size_t)j];
      cs[(size_t)(i * half + j)] = (float)std::cos(a);
      sn[(size_t)(i * half + j)] = (float)std::sin(a);
    }
  }
}

// dst = RMSNorm(src) * w over one head vector of hd floats (Gemma's Q/K norm), in f64 sums.
void head_norm(const float* src, const float* w, float eps, int hd, float* dst) {
  double ss = 0.0;
  for (int d = 0; d < hd; ++d) ss += (double)src[d] * src[d];
  const float r = (float)(1.0 / std::sqrt(ss / hd + (double)eps));
  for (int d = 0; d < hd; ++d) dst[d] = src[d] * r * w[d];
}

// dst = rope(src) for one head vector. Traditional: rotation pairs (2j, 2j+1); otherwise the
// halves (j, j + hd/2).
void rope_row(const float* src, float* dst, const float* c, const float* s, int hd, bool traditional) {
  const int half = hd / 2;
  for (int j = 0; j < half; ++j) {
    const int a = traditional ? 2 * j : j;
    const int b = traditional ? 2 * j + 1 : j + half;
    const float x1 = src[a], x2 = src[b];
    dst[a] = x1 * c[j] - x2 * s[j];
    dst[b] = x1 * s[j] + x2 * c[j];
  }
}

constexpr int64_t kQueryBlock = 16;

// A work item is (KV head, a run of its query heads, a block of query rows).
template <typename T>
struct Job {
  Params p;
  Ops<T> ops;
  const float* q;  // [len, hq*hd]
  int64_t ldq;
  const T* kc;  // [hkv, cap, hd]
  const T* vc;
  float* out;  // [len, hq*hd]
  const float* cs;
  const float* sn;
  const float* q_norm;  // [hd] or null
  int64_t nqb;          // query blocks
  int groups;           // runs of query heads per KV head
  int64_t items;
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
};

// Query heads h0..h1-1 (all on KV head kvh) for query rows i0..i1-1.
template <typename T>
void attend_rows(Job<T>& j, int kvh, int h0, int h1, int64_t i0, int64_t i1, std::vector<float>& scores,
                 std::vector<float>& qr) {
  const Params& p = j.p;
  const int hd = p.hd, half = hd / 2, G = h1 - h0;
  const T* kh = j.kc + (size_t)kvh * p.cap * hd;
  const T* vh = j.vc + (size_t)kvh * p.cap * hd;
  qr.resize((size_t)((G + 1) * hd + G));
  float* normed = qr.data() + (size_t)G * hd;
  float* inv = normed + hd;
  for (int64_t i = i0; i < i1; ++i) {
    for (int g = 0; g < G; ++g) {  // qr [G][hd]: the roped (and normed) queries
      const float* qi = j.q + i * j.ldq + (int64_t)(h0 + g) * hd;
      if (j.q_norm) {
        head_norm(qi, j.q_norm, p.norm_eps, hd, normed);
        qi = normed;
      }
      rope_row(qi, qr.data() + (size_t)g * hd, j.cs + i * half, j.sn + i * half, hd, p.traditional);
    }
    const int64_t end = p.pos + i + 1;
    const int64_t t0 = p.window > 0 && end > p.window ? end - p.window : 0;
    const int64_t nk = end - t0;
    scores.resize((size_t)(G * nk));
    float* s = scores.data();  // [G][nk]
    j.ops.scores(qr.data(), G, kh + t0 * hd, nk, hd, p.scale, s, nk);
    for (int g = 0; g < G; ++g) inv[g] = 1.0f / j.ops.softmax_numer(s + g * nk, nk);
    float* o = j.out + i * (int64_t)p.hq * hd + (int64_t)h0 * hd;  // [G][hd]
    j.ops.weighted_sum(s, nk, G, vh + t0 * hd, nk, hd, inv, o, hd);
  }
}

template <typename T>
void job_fn(void* ctx) {
  Job<T>& j = *(Job<T>*)ctx;
  thread_local std::vector<float> scores, qr;
  const int per_kv = j.p.hq / j.p.hkv;
  for (;;) {
    const int64_t it = j.next.fetch_add(1, std::memory_order_relaxed);
    if (it >= j.items) break;
    const int64_t b = it % j.nqb;
    const int run = (int)(it / j.nqb % j.groups);
    const int kvh = (int)(it / j.nqb / j.groups);
    const int h0 = kvh * per_kv + run * per_kv / j.groups;
    const int h1 = kvh * per_kv + (run + 1) * per_kv / j.groups;
    const int64_t i0 = b * kQueryBlock;
    const int64_t i1 = i0 + kQueryBlock < j.p.len ? i0 + kQueryBlock : j.p.len;
    try {
      attend_rows(j, kvh, h0, h1, i0, i1, scores, qr);
    } catch (...) {  // allocation failure: never let an exception escape a pool thread
      j.failed.store(true);
    }
  }
}

// Writes rope(k) and v of the new positions into the caches (of element type T), then attends
// every query row.
template <typename T>
void run_typed(const Params& p, const float* q, int64_t ldq, const float* k, int64_t ldk, const float* v,
               int64_t ldv, const float* q_norm, const float* k_norm, T* kc, T* vc, float* out) {
  std::vector<float> cs, sn;
  rope_tables(p, cs, sn);
  const int hd = p.hd, half = hd / 2;
  std::vector<float> normed(k_norm ? (size_t)hd : 0), roped((size_t)hd);
  for (int64_t i = 0; i < p.len; ++i)
    for (int h = 0; h < p.hkv; ++h) {
      const size_t at = ((size_t)h * p.cap + (size_t)(p.pos + i)) * hd;
      const float* ki = k + i * ldk + (int64_t)h * hd;
      if (k_norm) {
        head_norm(ki, k_norm, p.norm_eps, hd, normed.data());
        ki = normed.data();
      }
      rope_row(ki, roped.data(), cs.data() + i * half, sn.data() + i * half, hd, p.traditional);
      store_row(roped.data(), hd, kc + at);
      store_row(v + i * ldv + (int64_t)h * hd, hd, vc + at);
    }
  Job<T> j;
  j.p = p;
  j.ops = ops_for<T>(p.hd);
  j.q = q;
  j.ldq = ldq;
  j.kc = kc;
  j.vc = vc;
  j.out = out;
  j.cs = cs.data();
  j.sn = sn.data();
  j.q_norm = q_norm;
  j.nqb = (p.len + kQueryBlock - 1) / kQueryBlock;
  // Whole groups read each KV row once; a group is split only to give every thread an item
  // (decode on few KV heads).
  const int threads = pool_num_threads();
  const int64_t whole = (int64_t)p.hkv * j.nqb;
  const int per_kv = p.hq / p.hkv;
  j.groups = whole >= threads ? 1 : (int)std::min<int64_t>(per_kv, (threads + whole - 1) / whole);
  j.items = whole * j.groups;
  // Small problems (short decode contexts) are not worth waking a worker for.
  const int64_t work = (int64_t)p.hq * p.len * (p.pos + p.len) * hd;
  if (work < (1 << 16))
    job_fn<T>(&j);
  else
    parallel_run(job_fn<T>, &j, threads);
  if (j.failed.load()) throw std::bad_alloc();
}

}  // namespace

// run_typed for the caches' element type (p.half: IEEE halves). q/k/v rows are at row strides
// ldq/ldk/ldv (floats); caches are [hkv, cap, hd] contiguous.
void run(const Params& p, const float* q, int64_t ldq, const float* k, int64_t ldk, const float* v, int64_t ldv,
         const float* q_norm, const float* k_norm, void* kc, void* vc, float* out) {
  if (p.half)
    run_typed(p, q, ldq, k, ldk, v, ldv, q_norm, k_norm, (uint16_t*)kc, (uint16_t*)vc, out);
  else
    run_typed(p, q, ldq, k, ldk, v, ldv, q_norm, k_norm, (float*)kc, (float*)vc, out);
}

}  // namespace attn
}  // namespace mlxe

namespace mlx_engine {
namespace mx = mlx::core;

namespace {

// Row stride (floats) of a [.., L, X] f32 array whose rows are contiguous, or -1.
int64_t row_stride(const mx::array& a) {
  const int nd = a.ndim();
  if (a.strides()[nd - 1] != 1 && a.shape(-1) > 1) return -1;
  if (a.shape(-2) <= 1) return a.shape(-1);
  for (int i = 0; i < nd - 2; ++i)
    if (a.shape(i) != 1) return -1;
  const int64_t s = a.strides()[nd - 2];
  return s >= a.shape(-1) ? s : -1;
}


// Where the float rows of an input are: the buffer itself when rows are contiguous, else
// the shape and strides to gather from (on the stream thread).
struct RowsDesc {
  const float* ptr;
  int64_t ld;  // -1: gather
  mx::Shape shape;
  mx::Strides strides;
  explicit RowsDesc(const mx::array& a) : ptr(a.data<float>()), ld(row_stride(a)) {
    if (ld < 0) {
      shape = a.shape();
      strides = a.strides();
    }
  }
  // Returns the row pointer, gathering into `copy` first if needed; *ldo receives the stride.
  const float* rows(std::vector<float>& copy, int64_t* ldo) const {
    if (ld >= 0) {
      *ldo = ld;
      return ptr;
    }
    int64_t total = 1;
    for (auto d : shape) total *= d;
    copy.resize((size_t)total);
    gather_to_f32(ptr, shape, strides, copy.data());
    *ldo = shape.back();
    return copy.data();
  }
};

}  // namespace

class CachedAttention : public mx::Primitive {
 public:
  CachedAttention(mx::Stream s, mlxe::attn::Params p) : mx::Primitive(s), p_(p) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& enc = mx::cpu::get_command_encoder(stream());
    mx::array& out = outputs[0];
    out.set_data(mx::allocator::malloc(out.nbytes()));
    // The caches are updated in place when no other array shares their buffer (MLX's own
    // is_donatable() cannot be used: every output of a multi-output primitive holds the inputs,
    // so an input's descriptor is never unique). Only positions >= pos are written, which no
    // reader of positions [0, pos) can observe; a buffer shared with a slice or a copy is copied.
    bool copy_cache[2];
    for (int c = 0; c < 2; ++c) {
      const mx::array& in = inputs[3 + c];
      mx::array& o = outputs[1 + c];
      copy_cache[c] = !(in.data_shared_ptr().use_count() == 1 && in.flags().row_contiguous &&
                        in.offset() == 0 && in.data_size() == in.size());
      if (copy_cache[c])
        o.set_data(mx::allocator::malloc(o.nbytes()));
      else
        o.copy_shared_buffer(in);
    }
    for (const auto& in : inputs) enc.set_input_array(in);
    for (auto& o : outputs) enc.set_output_array(o);
    const mlxe::attn::Params p = p_;
    // Raw pointers only: MLX keeps the buffers alive until the task has run, and capturing
    // arrays would keep the caches from being donated next step.
    const RowsDesc q(inputs[0]), k(inputs[1]), v(inputs[2]);
    struct CacheDesc {  // where a cache's elements are, for the copy when it is not donated
      const void* ptr;
      mx::Shape shape;
      mx::Strides strides;
    };
    const CacheDesc caches[2] = {{inputs[3].data<void>(), inputs[3].shape(), inputs[3].strides()},
                                 {inputs[4].data<void>(), inputs[4].shape(), inputs[4].strides()}};
    // Optional Q/K norm weights: inputs 5 and 6, f32 [hd] (checked contiguous when built).
    const float* qn = inputs.size() > 5 ? inputs[5].data<float>() : nullptr;
    const float* kn = inputs.size() > 6 ? inputs[6].data<float>() : nullptr;
    float* outp = out.data<float>();
    void* cache_out[2] = {outputs[1].data<void>(), outputs[2].data<void>()};
    enc.dispatch([=]() {
      try {
        for (int c = 0; c < 2; ++c) {
          if (!copy_cache[c]) continue;
          const CacheDesc& d = caches[c];
          if (p.half)
            gather_as<uint16_t>((const uint16_t*)d.ptr, d.shape, d.strides, (uint16_t*)cache_out[c]);
          else
            gather_as<float>((const float*)d.ptr, d.shape, d.strides, (float*)cache_out[c]);
        }
        std::vector<float> qb, kb, vb;
        int64_t ldq = 0, ldk = 0, ldv = 0;
        const float* qp = q.rows(qb, &ldq);
        const float* kp = k.rows(kb, &ldk);
        const float* vp = v.rows(vb, &ldv);
        mlxe::attn::run(p, qp, ldq, kp, ldk, vp, ldv, qn, kn, cache_out[0], cache_out[1], outp);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "CachedAttention: %s\n", e.what());
      }
    });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("CachedAttention has no GPU implementation: use a CPU stream");
  }

  const char* name() const override { return "CachedAttention"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto* o = dynamic_cast<const CachedAttention*>(&other);
    if (!o) return false;
    const auto &a = p_, &b = o->p_;
    return a.hq == b.hq && a.hkv == b.hkv && a.hd == b.hd && a.pos == b.pos && a.len == b.len &&
           a.cap == b.cap && a.scale == b.scale && a.rope_base == b.rope_base && a.rope_scale == b.rope_scale &&
           a.traditional == b.traditional && a.window == b.window && a.norm_eps == b.norm_eps &&
           a.inv_freq == b.inv_freq && a.half == b.half;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {inputs[0].shape(), inputs[3].shape(), inputs[4].shape()};
  }

 private:
  mlxe::attn::Params p_;
};

}  // namespace mlx_engine

extern "C" int mlxk_cached_attention(mlx_array* out, mlx_array* k_cache_out, mlx_array* v_cache_out,
                                     const mlx_array q, const mlx_array k, const mlx_array v,
                                     const mlx_array k_cache, const mlx_array v_cache, const mlx_array q_norm,
                                     const mlx_array k_norm, const mlxk_attention_params* params,
                                     const mlx_stream s) {
  namespace mx = mlx::core;
  try {
    if (!out || !k_cache_out || !v_cache_out || !params) throw std::invalid_argument("null pointer argument");
    const int n_heads = params->n_heads, n_kv_heads = params->n_kv_heads, head_dim = params->head_dim;
    const int64_t pos = params->pos, window = params->window;
    const float* rope_inv_freq = params->rope_inv_freq;
    const mx::array& qa = mlx_array_get_(q);
    const mx::array& ka = mlx_array_get_(k);
    const mx::array& va = mlx_array_get_(v);
    const mx::array& kc = mlx_array_get_(k_cache);
    const mx::array& vc = mlx_array_get_(v_cache);
    const mx::Stream st = mlx_stream_get_(s);
    if (st.device.type != mx::Device::cpu) throw std::invalid_argument("runs on CPU streams only");
    if (n_heads <= 0 || n_kv_heads <= 0 || n_heads % n_kv_heads != 0)
      throw std::invalid_argument("n_heads must be a positive multiple of n_kv_heads");
    if (head_dim <= 0 || head_dim % 2 != 0) throw std::invalid_argument("head_dim must be positive and even");
    if (window < 0) throw std::invalid_argument("window must be >= 0 (0: no window)");
    for (const mx::array* a : {&qa, &ka, &va})
      if (a->dtype() != mx::float32) throw std::invalid_argument("q, k and v must be float32");
    if (kc.dtype() != vc.dtype() || (kc.dtype() != mx::float32 && kc.dtype() != mx::float16))
      throw std::invalid_argument("the caches must be both float32 or both float16");
    auto rows_of = [](const mx::array& a, int64_t width, const char* what) {
      if (a.ndim() < 2 || a.shape(-1) != width)
        throw std::invalid_argument(std::string(what) + " must be [..., L, " + std::to_string(width) + "]");
      for (int i = 0; i + 2 < (int)a.ndim(); ++i)
        if (a.shape(i) != 1) throw std::invalid_argument(std::string(what) + ": leading axes must have size 1");
      return (int64_t)a.shape(-2);
    };
    const int64_t len = rows_of(qa, (int64_t)n_heads * head_dim, "q");
    if (rows_of(ka, (int64_t)n_kv_heads * head_dim, "k") != len ||
        rows_of(va, (int64_t)n_kv_heads * head_dim, "v") != len)
      throw std::invalid_argument("q, k and v must have the same number of rows");
    const mx::Shape cshape = kc.shape();
    if (cshape.size() != 4 || cshape[0] != 1 || cshape[1] != n_kv_heads || cshape[3] != head_dim ||
        vc.shape() != cshape)
      throw std::invalid_argument("caches must both be [1, n_kv_heads, capacity, head_dim]");
    if (pos < 0 || len < 1 || pos + len > cshape[2])
      throw std::invalid_argument("positions " + std::to_string(pos) + ".." + std::to_string(pos + len) +
                                  " do not fit a cache of capacity " + std::to_string(cshape[2]));
    std::vector<mx::array> ins = {qa, ka, va, kc, vc};
    if ((q_norm.ctx == nullptr) != (k_norm.ctx == nullptr))
      throw std::invalid_argument("q_norm and k_norm come together");
    if (q_norm.ctx) {
      for (const mlx_array* w : {&q_norm, &k_norm}) {
        const mx::array& wa = mlx_array_get_(*w);
        if (wa.dtype() != mx::float32 || wa.size() != (size_t)head_dim)
          throw std::invalid_argument("q_norm and k_norm must be float32 with head_dim elements");
        // contiguous f32 for the raw pointer in eval_cpu
        ins.push_back(wa.flags().row_contiguous ? wa : mx::contiguous(wa, false, st));
      }
    }
    std::vector<float> inv_freq;
    if (rope_inv_freq) {
      inv_freq.assign(rope_inv_freq, rope_inv_freq + head_dim / 2);
      for (float f : inv_freq)
        if (!std::isfinite(f) || f < 0.0f) throw std::invalid_argument("rope_inv_freq must be finite and >= 0");
    }
    mlxe::attn::Params p{n_heads,
                         n_kv_heads,
                         head_dim,
                         pos,
                         len,
                         cshape[2],
                         params->scale,
                         params->rope_base,
                         params->rope_scale,
                         params->rope_traditional != 0,
                         std::move(inv_freq),
                         window,
                         q_norm.ctx ? params->norm_eps : 0.0f,
                         kc.dtype() == mx::float16};
    auto outs = mx::array::make_arrays({qa.shape(), cshape, cshape}, {mx::float32, kc.dtype(), kc.dtype()},
                                       std::make_shared<mlx_engine::CachedAttention>(st, p), ins);
    mlx_array_set_(*out, outs[0]);
    mlx_array_set_(*k_cache_out, outs[1]);
    mlx_array_set_(*v_cache_out, outs[2]);
    return 0;
  } catch (const std::exception& e) {
    mlxe::set_last_error(std::string("mlxk_cached_attention: ") + e.what());
  } catch (...) {
    mlxe::set_last_error("mlxk_cached_attention: unknown exception");
  }
  return 1;
}
