// AVX2 + FMA (+F16C) kernels for y = x . W^T with W in GGUF block formats.
//
// Activations are quantized once per call to int8:
//   * 32-element blocks (for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0): per row
//     [int8 q[K]][f32 d[K/32]][f32 s[K/32]][i32 sum[K/32]] with sum = sum(q), s = d * sum.
//   * 256-element super-blocks (for Q4_K/Q5_K/Q6_K): per row [int8 q[K]][f32 d[K/256]][i16 bsum[K/16]].
// Weights are decoded to bytes in registers and multiplied with _mm256_maddubs_epi16
// (unsigned weights x signed activations; signed weights use the abs/sign trick), summed
// with _mm256_madd_epi16 (by 1 or by the K-quant sub-block scale) and accumulated in f32.
//
// Every function that uses AVX2 intrinsics carries the target attribute, so this file is
// compiled without -mavx2 and the code is only entered after a runtime CPU check.
//
// quant_vnni.cpp compiles this file a second time, as namespace `vnni`, for CPUs with AVX-512
// VNNI (+VL): there each maddubs + madd-by-ones pair becomes one vpdpbusd (neither saturates
// here: |w| <= 128 and |x| <= 127, so a pair sum stays below 2^15), and the K-quants run on
// 512-bit registers (kq_zmm: two sub-blocks per zmm, the same int32 lane sums and float
// epilogue as the 256-bit tiles), so the two namespaces give bit-identical results.
#include <cstdlib>
#include <new>

#include "mlxk_internal.h"

#if MLXK_VNNI
#define MLXK_SIMD_NS vnni
#define MLXK_SIMD_TARGET "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"
#else
#define MLXK_SIMD_NS avx2
#define MLXK_SIMD_TARGET "avx2,fma,f16c"
#endif

#if MLXK_X86
#include <immintrin.h>

#if MLXK_VNNI
// GCC 12 warns about the deliberately undefined pass-through vectors inside its AVX-512 headers.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "simd_exp.h"

#define AVX2_FN __attribute__((target(MLXK_SIMD_TARGET)))
#define AVX2_INL static inline __attribute__((always_inline, target(MLXK_SIMD_TARGET)))
// The same for member functions (no `static`).
#define AVX2_MEM inline __attribute__((always_inline, target(MLXK_SIMD_TARGET)))

namespace mlxe {
namespace MLXK_SIMD_NS {

bool cpu_supported() {
  static const bool ok = [] {
    __builtin_cpu_init();
    bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("f16c");
#if MLXK_VNNI
    has = has && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#endif
    return has;
  }();
  return ok;
}

namespace {

constexpr int RMAX = 4;  // weight rows per tile (max)
constexpr int CMAX = 4;  // activation rows per tile (max)
constexpr size_t kPrefetchDist = 4096;  // bytes ahead of the GEMV weight stream

inline size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

constexpr bool is_kquant(int t) { return t == T_Q4_K || t == T_Q5_K || t == T_Q6_K; }
bool is_float(int t) { return t == T_F32 || t == T_F16 || t == T_BF16; }

// ------------------------------------------------------------------ helpers
// acc + pairwise sums of the int16 products p * s (one vpdpwssd with VNNI; exact either way).
AVX2_INL __m256i madd_add(__m256i acc, __m256i p, __m256i s) {
#if MLXK_VNNI
  return _mm256_dpwssd_epi32(acc, p, s);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(p, s));
#endif
}
// Sums of four adjacent u8 x s8 products per 32-bit lane (no saturation for our operands).
AVX2_INL __m256i dot_u8s8(__m256i u, __m256i s, __m256i ones) {
#if MLXK_VNNI
  (void)ones;
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), ones);
#endif
}
AVX2_INL float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
AVX2_INL int hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}
AVX2_INL float half(const uint8_t* p) { return _cvtsh_ss(load_u16(p)); }
#if MLXK_VNNI
// [lo | hi] as one zmm.
AVX2_INL __m512i cat256(__m256i lo, __m256i hi) { return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1); }
#endif

// 16 bytes of nibbles -> 32 bytes: [low nibbles of bytes 0..15 | high nibbles of bytes 0..15]
AVX2_INL __m256i nibbles32(const uint8_t* p) {
  const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)p));
  return _mm256_and_si256(_mm256_srlv_epi64(v, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(0x0f));
}
// 32 bits -> 32 bytes, 0x10 where the bit is set.
AVX2_INL __m256i bits32_to_0x10(uint32_t bits) {
  const __m256i shuf = _mm256_setr_epi64x(0x0000000000000000ll, 0x0101010101010101ll, 0x0202020202020202ll,
                                          0x0303030303030303ll);
  __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), shuf);
  const __m256i mask = _mm256_set1_epi64x((long long)0x8040201008040201ull);
  v = _mm256_cmpeq_epi8(_mm256_and_si256(v, mask), mask);
  return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

// ------------------------------------------------------------------ activation quantization
AVX2_INL __m256i pack_i32x4_to_i8(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i ab = _mm256_packs_epi32(a, b);
  const __m256i cd = _mm256_packs_epi32(c, d);
  const __m256i v = _mm256_packs_epi16(ab, cd);
  return _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

AVX2_FN void quant_q8_32(const float* x, int64_t k, uint8_t* dst) {
  const int64_t nb = k / 32;
  int8_t* q = (int8_t*)dst;
  float* dv = (float*)(dst + k);
  float* sv = dv + nb;
  int32_t* iv = (int32_t*)(sv + nb);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t b = 0; b < nb; ++b) {
    const float* xb = x + 32 * b;
    __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8), v2 = _mm256_loadu_ps(xb + 16),
           v3 = _mm256_loadu_ps(xb + 24);
    __m256 am = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                              _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(am), _mm256_extractf128_ps(am, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    const float d = amax / 127.0f;
    const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    const __m256 idv = _mm256_set1_ps(id);
    const __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, idv));
    const __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, idv));
    const __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, idv));
    const __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, idv));
    const int sum = hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3)));
    _mm256_store_si256((__m256i*)(q + 32 * b), pack_i32x4_to_i8(i0, i1, i2, i3));
    dv[b] = d;
    sv[b] = d * (float)sum;
    iv[b] = sum;
  }
}

AVX2_FN void quant_q8_256(const float* x, int64_t k, uint8_t* dst) {
  const int64_t nsb = k / 256;
  int8_t* q = (int8_t*)dst;
  float* dv = (float*)(dst + k);
  int16_t* bs = (int16_t*)(dst + k + 4 * nsb);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t sb = 0; sb < nsb; ++sb) {
    const float* xb = x + 256 * sb;
    __m256 am = _mm256_setzero_ps();
    for (int i = 0; i < 32; ++i) am = _mm256_max_ps(am, _mm256_andnot_ps(sign, _mm256_loadu_ps(xb + 8 * i)));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(am), _mm256_extractf128_ps(am, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    dv[sb] = amax / 127.0f;
    const __m256 idv = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    for (int g = 0; g < 8; ++g) {
      const float* xg = xb + 32 * g;
      const __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xg), idv));
      const __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xg + 8), idv));
      const __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xg + 16), idv));
      const __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xg + 24), idv));
      bs[16 * sb + 2 * g] = (int16_t)hsum_epi32(_mm256_add_epi32(i0, i1));
      bs[16 * sb + 2 * g + 1] = (int16_t)hsum_epi32(_mm256_add_epi32(i2, i3));
      _mm256_store_si256((__m256i*)(q + 256 * sb + 32 * g), pack_i32x4_to_i8(i0, i1, i2, i3));
    }
  }
}

// ------------------------------------------------------------------ tile kernels
// A tile kernel computes y[c*ldy + r] = dot(W row r, activation row c) for r < R, c < C.
// w: first weight row, ws: bytes between weight rows, xa[c]: activation row c
// (quantized bytes, or const float* for the float weight types).
typedef void (*TileFn)(const uint8_t* w, size_t ws, const uint8_t* const* xa, int64_t k, float* y,
                       int64_t ldy);

// ---- 32-element block formats
// Weights are decoded to unsigned bytes q (value = d*(q - OFF) [+ m]) except Q8_0, which is
// signed and uses the abs/sign trick. Blocks are processed in groups of 8: the eight i32 dot
// vectors are reduced with a hadd tree to one vector holding one block sum per lane, so the
// per-block scales (gathered as 8 f16 values) are applied with one FMA per 8 blocks.
template <int TYPE>
struct B32;
template <>
struct B32<T_Q4_0> {
  static constexpr int bytes = 18, off = 8;
  static constexpr bool is_signed = false, has_min = false;
  AVX2_INL __m256i decode(const uint8_t* b) { return nibbles32(b + 2); }
};
template <>
struct B32<T_Q4_1> {
  static constexpr int bytes = 20, off = 0;
  static constexpr bool is_signed = false, has_min = true;
  AVX2_INL __m256i decode(const uint8_t* b) { return nibbles32(b + 4); }
};
template <>
struct B32<T_Q5_0> {
  static constexpr int bytes = 22, off = 16;
  static constexpr bool is_signed = false, has_min = false;
  AVX2_INL __m256i decode(const uint8_t* b) {
    return _mm256_or_si256(nibbles32(b + 6), bits32_to_0x10(load_u32(b + 2)));
  }
};
template <>
struct B32<T_Q5_1> {
  static constexpr int bytes = 24, off = 0;
  static constexpr bool is_signed = false, has_min = true;
  AVX2_INL __m256i decode(const uint8_t* b) {
    return _mm256_or_si256(nibbles32(b + 8), bits32_to_0x10(load_u32(b + 4)));
  }
};
template <>
struct B32<T_Q8_0> {
  static constexpr int bytes = 34, off = 0;
  static constexpr bool is_signed = true, has_min = false;
  AVX2_INL __m256i decode(const uint8_t* b) { return _mm256_loadu_si256((const __m256i*)(b + 2)); }
};

// Sum of the 8 lanes of a block dot product, done for 8 blocks at once:
// returns [sum(v0), sum(v1), ..., sum(v7)].
AVX2_INL __m256i reduce8(__m256i q0, __m256i q1) {
  return _mm256_add_epi32(_mm256_permute2x128_si256(q0, q1, 0x20), _mm256_permute2x128_si256(q0, q1, 0x31));
}

// The 8 f16 block scales d (and, for Q4_1 / Q5_1, the mins m stored right after d) of the
// blocks p, p+BYTES, ... -> 8 floats. Assembled with scalar loads (cheaper than vpgatherdd here).
template <int BYTES, bool FULL>
AVX2_INL void load_scales8(const uint8_t* p, int nv, __m256* d, __m256* m, bool want_m) {
  uint64_t dl = 0, dh = 0, ml = 0, mh = 0;
#pragma GCC unroll 8
  for (int b = 0; b < 8; ++b) {
    if (!FULL && b >= nv) break;
    const uint64_t v = load_u16(p + b * BYTES);
    if (b < 4)
      dl |= v << (16 * b);
    else
      dh |= v << (16 * (b - 4));
    if (want_m) {
      const uint64_t u = load_u16(p + b * BYTES + 2);
      if (b < 4)
        ml |= u << (16 * b);
      else
        mh |= u << (16 * (b - 4));
    }
  }
  *d = _mm256_cvtph_ps(_mm_set_epi64x((long long)dh, (long long)dl));
  if (want_m) *m = _mm256_cvtph_ps(_mm_set_epi64x((long long)mh, (long long)ml));
}

// Where b32_group reads a block's bytes and the scales (and mins) of a group of 8 blocks: ggml
// rows, decoded as they are read (GEMV and small-M tiles), or a panel decoded once (GEMM). Both
// give the same values, so the same arithmetic follows and results do not depend on M.
template <int TYPE>
struct GgmlRows {
  const uint8_t* w;
  size_t ws;
  AVX2_MEM __m256i block(int r, int64_t b) const { return B32<TYPE>::decode(w + r * ws + b * B32<TYPE>::bytes); }
  template <bool FULL>
  AVX2_MEM void scales8(int r, int64_t g, int nv, __m256i, __m256* d, __m256* m) const {
    load_scales8<B32<TYPE>::bytes, FULL>(w + r * ws + 8 * g * B32<TYPE>::bytes, nv, d, m, B32<TYPE>::has_min);
  }
};

template <int TYPE, int R, int C, bool FULL, class SRC>
AVX2_INL void b32_group(const SRC& src, int64_t g, int nv, const int8_t* const* xq, const float* const* xd,
                        const float* const* xs, const int32_t* const* xi, __m256 (&acc)[R][C]) {
  typedef B32<TYPE> F;
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i mask = FULL ? _mm256_set1_epi32(-1) : _mm256_cmpgt_epi32(_mm256_set1_epi32(nv), lane);
  __m256i q[2][R][C];
  __m256i h[R][C];
#pragma GCC unroll 8
  for (int b = 0; b < 8; ++b) {
    __m256i wv[R], wu[R];
    const bool valid = FULL || b < nv;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      if (valid) {
        wv[r] = src.block(r, 8 * g + b);
        if constexpr (F::is_signed) wu[r] = _mm256_sign_epi8(wv[r], wv[r]);
      } else {
        wv[r] = wu[r] = _mm256_setzero_si256();
      }
    }
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      const __m256i xv = valid ? _mm256_load_si256((const __m256i*)(xq[c] + 32 * (8 * g + b))) : _mm256_setzero_si256();
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        __m256i i;
        if constexpr (F::is_signed)
          i = dot_u8s8(wu[r], _mm256_sign_epi8(xv, wv[r]), ones);
        else
          i = dot_u8s8(wv[r], xv, ones);
        // progressive hadd tree: h = hadd(i_even, i_odd); q[b/4] = hadd(h01, h23)
        if ((b & 1) == 0) {
          h[r][c] = i;
        } else {
          const __m256i hh = _mm256_hadd_epi32(h[r][c], i);
          if ((b & 3) == 1)
            q[b >> 2][r][c] = hh;
          else
            q[b >> 2][r][c] = _mm256_hadd_epi32(q[b >> 2][r][c], hh);
        }
      }
    }
  }
  __m256 dw[R], mw[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) src.template scales8<FULL>(r, g, nv, mask, &dw[r], &mw[r]);
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) {
    const __m256 dx = FULL ? _mm256_loadu_ps(xd[c] + 8 * g) : _mm256_maskload_ps(xd[c] + 8 * g, mask);
    __m256i corr = _mm256_setzero_si256();
    if constexpr (F::off != 0) {
      const __m256i isum =
          FULL ? _mm256_loadu_si256((const __m256i*)(xi[c] + 8 * g)) : _mm256_maskload_epi32(xi[c] + 8 * g, mask);
      corr = _mm256_slli_epi32(isum, F::off == 8 ? 3 : 4);
    }
    __m256 sx;
    if constexpr (F::has_min) sx = FULL ? _mm256_loadu_ps(xs[c] + 8 * g) : _mm256_maskload_ps(xs[c] + 8 * g, mask);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      __m256i s = reduce8(q[0][r][c], q[1][r][c]);
      if constexpr (F::off != 0) s = _mm256_sub_epi32(s, corr);
      acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw[r], dx), acc[r][c]);
      if constexpr (F::has_min) acc[r][c] = _mm256_fmadd_ps(mw[r], sx, acc[r][c]);
    }
  }
}

// ---- The repacked ("r8") Q5_0 / Q8_0 layouts (repack.cpp): whole groups of 8 blocks, read
// with 32-byte loads, one 16-byte load for the 8 scales; the partial tail group is ggml blocks.
template <int TYPE>
struct R8;
template <>
struct R8<T_Q5_0> {
  static constexpr int gbytes = 176;
  // Blocks 2p and 2p+1 of the group at g: low nibbles of V[p] | fifth bits from H, bit b of
  // each byte (moved to 0x10 with one 16-bit shift: the mask drops what crosses a byte).
  template <int P>
  AVX2_INL void decode_pair(const uint8_t* g, __m256i hb, __m256i* w0, __m256i* w1) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), b4 = _mm256_set1_epi8(0x10);
    const __m256i v = _mm256_loadu_si256((const __m256i*)(g + 48 + 32 * P));
    *w0 = _mm256_or_si256(_mm256_and_si256(v, m4), _mm256_and_si256(shift_to_bit4<2 * P>(hb), b4));
    *w1 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4),
                          _mm256_and_si256(shift_to_bit4<2 * P + 1>(hb), b4));
  }
  AVX2_INL __m256i high_bits(const uint8_t* g) { return _mm256_loadu_si256((const __m256i*)(g + 16)); }
  // Moves bit B of every byte to bit 4.
  template <int B>
  AVX2_INL __m256i shift_to_bit4(__m256i h) {
    if constexpr (B < 4) return _mm256_slli_epi16(h, 4 - B);
    else if constexpr (B > 4) return _mm256_srli_epi16(h, B - 4);
    else return h;
  }
};
template <>
struct R8<T_Q8_0> {
  static constexpr int gbytes = 272;
  template <int P>
  AVX2_INL void decode_pair(const uint8_t* g, __m256i, __m256i* w0, __m256i* w1) {
    *w0 = _mm256_loadu_si256((const __m256i*)(g + 16 + 64 * P));
    *w1 = _mm256_loadu_si256((const __m256i*)(g + 48 + 64 * P));
  }
  AVX2_INL __m256i high_bits(const uint8_t*) { return _mm256_setzero_si256(); }
};

// Dot products of one pair of blocks (2P, 2P+1) of a group with the activations, folded into the
// same hadd tree as b32_group.
template <int TYPE, int R, int C, int P>
AVX2_INL void r8_pair(const uint8_t* const* gp, const __m256i* hb, int64_t blk0, const int8_t* const* xq,
                      __m256i (&q)[2][R][C], __m256i (&h)[R][C]) {
  typedef B32<TYPE> F;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i wv[2][R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) R8<TYPE>::template decode_pair<P>(gp[r], hb[r], &wv[0][r], &wv[1][r]);
#pragma GCC unroll 2
  for (int s = 0; s < 2; ++s) {
    const int b = 2 * P + s;
    __m256i wu[R];
    if constexpr (F::is_signed) {
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) wu[r] = _mm256_sign_epi8(wv[s][r], wv[s][r]);
    }
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      const __m256i xv = _mm256_load_si256((const __m256i*)(xq[c] + 32 * (blk0 + b)));
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        __m256i i;
        if constexpr (F::is_signed)
          i = dot_u8s8(wu[r], _mm256_sign_epi8(xv, wv[s][r]), ones);
        else
          i = dot_u8s8(wv[s][r], xv, ones);
        if (s == 0) {
          h[r][c] = i;
        } else {
          const __m256i hh = _mm256_hadd_epi32(h[r][c], i);
          if ((b & 3) == 1)
            q[b >> 2][r][c] = hh;
          else
            q[b >> 2][r][c] = _mm256_hadd_epi32(q[b >> 2][r][c], hh);
        }
      }
    }
  }
}

// One full group g (blocks 8g..8g+7) of R repacked rows against C activation rows.
template <int TYPE, int R, int C>
AVX2_INL void r8_group(const uint8_t* w, size_t ws, int64_t g, const int8_t* const* xq, const float* const* xd,
                       const int32_t* const* xi, __m256 (&acc)[R][C]) {
  typedef B32<TYPE> F;
  const uint8_t* gp[R];
  __m256i hb[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    gp[r] = w + r * ws + g * R8<TYPE>::gbytes;
    hb[r] = R8<TYPE>::high_bits(gp[r]);
  }
  __m256i q[2][R][C];
  __m256i h[R][C];
  r8_pair<TYPE, R, C, 0>(gp, hb, 8 * g, xq, q, h);
  r8_pair<TYPE, R, C, 1>(gp, hb, 8 * g, xq, q, h);
  r8_pair<TYPE, R, C, 2>(gp, hb, 8 * g, xq, q, h);
  r8_pair<TYPE, R, C, 3>(gp, hb, 8 * g, xq, q, h);
  __m256 dw[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) dw[r] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)gp[r]));
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) {
    const __m256 dx = _mm256_loadu_ps(xd[c] + 8 * g);
    __m256i corr = _mm256_setzero_si256();
    if constexpr (F::off != 0)
      corr = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i*)(xi[c] + 8 * g)), 4);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      __m256i s = reduce8(q[0][r][c], q[1][r][c]);
      if constexpr (F::off != 0) s = _mm256_sub_epi32(s, corr);
      acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw[r], dx), acc[r][c]);
    }
  }
}

#if MLXK_VNNI
// ---- The repacked groups on 512-bit registers (the VNNI path): one zmm holds blocks 2p and
// 2p+1 of a group, one vpdpbusd takes both (Q8_0 as unsigned bytes w + 128, the 128 * sum(x)
// taken off with Q5_0's offset), and the 8 block sums are reduced with unpacks instead of
// r8_pair's hadd tree. Block sums are exact integers, so they equal r8_group's, and the float
// part that follows is r8_group's: the same bits.

// [sum(block 0), ..., sum(block 7)] from t[h] = the unpack-add of z(2h) and z(2h + 1), where
// z(p) = [block 2p lanes | block 2p + 1 lanes].
AVX2_INL __m256i r8z_block_sums(__m512i t0, __m512i t1) {
  // 128-bit lane L: [z0_L, z1_L, z2_L, z3_L], each the sum of that lane's 4 dwords
  const __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
  // lane 0: [b0, b2, b4, b6], lane 2: [b1, b3, b5, b7]
  const __m512i v = _mm512_add_epi32(u, _mm512_shuffle_i32x4(u, u, _MM_SHUFFLE(2, 3, 0, 1)));
  const __m512i idx = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 0, 0, 0, 0, 0, 0, 0, 0);
  return _mm512_castsi512_si256(_mm512_permutexvar_epi32(idx, v));
}

// Blocks 2P, 2P+1 of a repacked group as unsigned bytes (Q5_0 0..31; Q8_0 w + 128).
template <int TYPE, int P>
AVX2_INL __m512i r8z_pair(const uint8_t* g) {
  if constexpr (TYPE == T_Q8_0) {
    return _mm512_xor_si512(_mm512_loadu_si512((const void*)(g + 16 + 64 * P)), _mm512_set1_epi8((char)0x80));
  } else {
    const __m256i v = _mm256_loadu_si256((const __m256i*)(g + 48 + 32 * P));
    const __m256i hb = _mm256_loadu_si256((const __m256i*)(g + 16));
    const __m512i nib = _mm512_and_si512(_mm512_srlv_epi16(cat256(v, v), cat256(_mm256_setzero_si256(), _mm256_set1_epi16(4))),
                                         _mm512_set1_epi8(0x0f));
    const __mmask64 fifth = _mm512_test_epi8_mask(
        cat256(hb, hb), cat256(_mm256_set1_epi8((char)(1 << (2 * P))), _mm256_set1_epi8((char)(1 << (2 * P + 1)))));
    return _mm512_mask_add_epi8(nib, fifth, nib, _mm512_set1_epi8(0x10));
  }
}

template <int TYPE, int R, int C, int P>
AVX2_INL void r8z_step(const uint8_t* const* gp, int64_t blk0, const int8_t* const* xq, __m512i (&ze)[R][C],
                       __m512i (&t)[2][R][C]) {
  __m512i wv[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) wv[r] = r8z_pair<TYPE, P>(gp[r]);
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) {
    const __m512i xv = _mm512_loadu_si512((const void*)(xq[c] + 32 * (blk0 + 2 * P)));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512i z = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[r], xv);
      if constexpr ((P & 1) == 0)
        ze[r][c] = z;
      else
        t[P >> 1][r][c] = _mm512_add_epi32(_mm512_unpacklo_epi32(ze[r][c], z), _mm512_unpackhi_epi32(ze[r][c], z));
    }
  }
}

// r8_group on 512-bit registers.
template <int TYPE, int R, int C>
AVX2_INL void r8_group_z(const uint8_t* w, size_t ws, int64_t g, const int8_t* const* xq, const float* const* xd,
                         const int32_t* const* xi, __m256 (&acc)[R][C]) {
  const uint8_t* gp[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) gp[r] = w + r * ws + g * R8<TYPE>::gbytes;
  __m512i ze[R][C], t[2][R][C];
  r8z_step<TYPE, R, C, 0>(gp, 8 * g, xq, ze, t);
  r8z_step<TYPE, R, C, 1>(gp, 8 * g, xq, ze, t);
  r8z_step<TYPE, R, C, 2>(gp, 8 * g, xq, ze, t);
  r8z_step<TYPE, R, C, 3>(gp, 8 * g, xq, ze, t);
  __m256 dw[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) dw[r] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)gp[r]));
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) {
    const __m256 dx = _mm256_loadu_ps(xd[c] + 8 * g);
    const __m256i corr = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i*)(xi[c] + 8 * g)), TYPE == T_Q8_0 ? 7 : 4);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256i s = _mm256_sub_epi32(r8z_block_sums(t[0][r][c], t[1][r][c]), corr);
      acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw[r], dx), acc[r][c]);
    }
  }
}
#endif

// A tile of a 32-element block format: whole groups of 8 blocks (ggml layout, or REPACKED),
// then the partial tail group, which is ggml blocks at their ggml offsets in both layouts (a
// repacked group has exactly the bytes of its 8 blocks).
template <int TYPE, int R, int C, bool REPACKED = false>
AVX2_FN void tile_b32(const uint8_t* w, size_t ws, const uint8_t* const* xa, int64_t k, float* y, int64_t ldy) {
  const int64_t nb = k / 32;
  const int8_t* xq[C];
  const float* xd[C];
  const float* xs[C];
  const int32_t* xi[C];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) {
    xq[c] = (const int8_t*)xa[c];
    xd[c] = (const float*)(xa[c] + k);
    xs[c] = xd[c] + nb;
    xi[c] = (const int32_t*)(xs[c] + nb);
  }
  __m256 acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  const int64_t ng = nb / 8;
  for (int64_t g = 0; g < ng; ++g) {
    if constexpr (REPACKED)
#if MLXK_VNNI
      // (the GEMV keeps the 256-bit group: no faster there, within this host's noise)
      if constexpr (C >= 2)
        r8_group_z<TYPE, R, C>(w, ws, g, xq, xd, xi, acc);
      else
#endif
        r8_group<TYPE, R, C>(w, ws, g, xq, xd, xi, acc);
    else
      b32_group<TYPE, R, C, true>(GgmlRows<TYPE>{w, ws}, g, 8, xq, xd, xs, xi, acc);
  }
  if (nb % 8) b32_group<TYPE, R, C, false>(GgmlRows<TYPE>{w, ws}, ng, (int)(nb % 8), xq, xd, xs, xi, acc);
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c)
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) y[c * ldy + r] = hsum_ps(acc[r][c]);
}

// ---- GEMM for the 32-element block formats: a panel of up to PR weight rows is decoded once
// (bytes + f32 scales), then reused for every activation row. The microkernel needs 4-5 vector
// ops per (weight block, activation block) pair.
constexpr int PR = 4;  // weight rows per panel (= microkernel rows)
#if MLXK_VNNI
constexpr int PC = 4;  // activation rows per microkernel call (AVX-512VL: 32 ymm registers)
#else
constexpr int PC = 2;  // activation rows per microkernel call
#endif

struct Panel {
  uint8_t* q;  // [PR][k] decoded bytes (unsigned, or signed for Q8_0)
  float* d;    // [PR][nb] block scales
  float* m;    // [PR][nb] block mins (Q4_1 / Q5_1)
  int64_t k, nb;
};

template <int TYPE>
AVX2_FN void b32_decode_panel(const uint8_t* w, size_t ws, int rows, const Panel& P) {
  typedef B32<TYPE> F;
  for (int r = 0; r < rows; ++r) {
    const uint8_t* row = w + r * ws;
    uint8_t* q = P.q + r * P.k;
    for (int64_t b = 0; b < P.nb; ++b)
      _mm256_store_si256((__m256i*)(q + 32 * b), F::decode(row + b * F::bytes));
    int64_t b = 0;
    __m256 d, m;
    for (; b + 8 <= P.nb; b += 8) {
      load_scales8<F::bytes, true>(row + b * F::bytes, 8, &d, &m, F::has_min);
      _mm256_storeu_ps(P.d + r * P.nb + b, d);
      if constexpr (F::has_min) _mm256_storeu_ps(P.m + r * P.nb + b, m);
    }
    for (; b < P.nb; ++b) {
      P.d[r * P.nb + b] = half(row + b * F::bytes);
      if constexpr (F::has_min) P.m[r * P.nb + b] = half(row + b * F::bytes + 2);
    }
  }
}

// The repacked layout decoded into a panel: whole groups pair by pair, then the ggml tail.
template <int P, int TYPE>
AVX2_INL void r8_store_pair(const uint8_t* g, __m256i hb, uint8_t* q) {
  __m256i w0, w1;
  R8<TYPE>::template decode_pair<P>(g, hb, &w0, &w1);
  _mm256_store_si256((__m256i*)(q + 64 * P), w0);
  _mm256_store_si256((__m256i*)(q + 64 * P + 32), w1);
}

template <int TYPE>
AVX2_FN void r8_decode_panel(const uint8_t* w, size_t ws, int rows, const Panel& P) {
  typedef B32<TYPE> F;
  const int64_t ng = P.nb / 8;
  for (int r = 0; r < rows; ++r) {
    const uint8_t* row = w + r * ws;
    uint8_t* q = P.q + r * P.k;
    for (int64_t g = 0; g < ng; ++g) {
      const uint8_t* gp = row + g * R8<TYPE>::gbytes;
      const __m256i hb = R8<TYPE>::high_bits(gp);
      r8_store_pair<0, TYPE>(gp, hb, q + 256 * g);
      r8_store_pair<1, TYPE>(gp, hb, q + 256 * g);
      r8_store_pair<2, TYPE>(gp, hb, q + 256 * g);
      r8_store_pair<3, TYPE>(gp, hb, q + 256 * g);
      _mm256_storeu_ps(P.d + r * P.nb + 8 * g, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)gp)));
    }
    for (int64_t b = 8 * ng; b < P.nb; ++b) {
      _mm256_store_si256((__m256i*)(q + 32 * b), F::decode(row + b * F::bytes));
      P.d[r * P.nb + b] = half(row + b * F::bytes);
    }
  }
}

// A decoded panel as b32_group's weight source.
template <int TYPE>
struct PanelRows {
  const Panel& P;
  AVX2_MEM __m256i block(int r, int64_t b) const { return _mm256_load_si256((const __m256i*)(P.q + r * P.k + 32 * b)); }
  template <bool FULL>
  AVX2_MEM void scales8(int r, int64_t g, int, __m256i mask, __m256* d, __m256* m) const {
    const float* dp = P.d + r * P.nb + 8 * g;
    *d = FULL ? _mm256_loadu_ps(dp) : _mm256_maskload_ps(dp, mask);
    if constexpr (B32<TYPE>::has_min) {
      const float* mp = P.m + r * P.nb + 8 * g;
      *m = FULL ? _mm256_loadu_ps(mp) : _mm256_maskload_ps(mp, mask);
    }
  }
};

// The panel's rows against C activation rows: tile_b32's arithmetic on decoded bytes.
template <int TYPE, int R, int C>
AVX2_FN void b32_panel_kernel(const Panel& P, const uint8_t* const* xa, float* y, int64_t ldy) {
  const int64_t k = P.k, nb = P.nb;
  const int8_t* xq[C];
  const float* xd[C];
  const float* xs[C];
  const int32_t* xi[C];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) {
    xq[c] = (const int8_t*)xa[c];
    xd[c] = (const float*)(xa[c] + k);
    xs[c] = xd[c] + nb;
    xi[c] = (const int32_t*)(xs[c] + nb);
  }
  __m256 acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  const PanelRows<TYPE> src{P};
  const int64_t ng = nb / 8;
  for (int64_t g = 0; g < ng; ++g) b32_group<TYPE, R, C, true>(src, g, 8, xq, xd, xs, xi, acc);
  if (nb % 8) b32_group<TYPE, R, C, false>(src, ng, (int)(nb % 8), xq, xd, xs, xi, acc);
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c)
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) y[c * ldy + r] = hsum_ps(acc[r][c]);
}

typedef void (*PanelFn)(const Panel&, const uint8_t* const*, float*, int64_t);
typedef void (*DecodeFn)(const uint8_t*, size_t, int, const Panel&);

#if MLXK_VNNI
#define MLXK_PROW(T, R) \
  {&b32_panel_kernel<T, R, 1>, &b32_panel_kernel<T, R, 2>, &b32_panel_kernel<T, R, 3>, &b32_panel_kernel<T, R, 4>}
#else
#define MLXK_PROW(T, R) {&b32_panel_kernel<T, R, 1>, &b32_panel_kernel<T, R, 2>}
#endif
#define MLXK_PTAB(T) {MLXK_PROW(T, 1), MLXK_PROW(T, 2), MLXK_PROW(T, 3), MLXK_PROW(T, 4)}
struct PanelTable {
  DecodeFn decode;
  PanelFn f[PR][PC];
};
const PanelTable kPanelTables[] = {
    {&b32_decode_panel<T_Q4_0>, MLXK_PTAB(T_Q4_0)}, {&b32_decode_panel<T_Q4_1>, MLXK_PTAB(T_Q4_1)},
    {&b32_decode_panel<T_Q5_0>, MLXK_PTAB(T_Q5_0)}, {&b32_decode_panel<T_Q5_1>, MLXK_PTAB(T_Q5_1)},
    {&b32_decode_panel<T_Q8_0>, MLXK_PTAB(T_Q8_0)}, {&r8_decode_panel<T_Q5_0>, MLXK_PTAB(T_Q5_0)},
    {&r8_decode_panel<T_Q8_0>, MLXK_PTAB(T_Q8_0)},
};
const PanelTable* panel_table_for(int type) {
  switch (type) {
    case T_Q4_0: return &kPanelTables[0];
    case T_Q4_1: return &kPanelTables[1];
    case T_Q5_0: return &kPanelTables[2];
    case T_Q5_1: return &kPanelTables[3];
    case T_Q8_0: return &kPanelTables[4];
    case T_Q5_0_R8: return &kPanelTables[5];
    case T_Q8_0_R8: return &kPanelTables[6];
    default: return nullptr;
  }
}


void panel_gemm(const Problem& p, const PanelTable* pt, int64_t n0, int64_t n1) {
  thread_local AlignedScratch buf;
  const int64_t nb = p.k / 32;
  const size_t qbytes = (size_t)PR * p.k, fbytes = (size_t)PR * nb * 4;
  uint8_t* base = buf.get(qbytes + 2 * fbytes + 64);
  Panel P{base, (float*)(base + qbytes), (float*)(base + qbytes + fbytes), p.k, nb};
  const uint8_t* xa[PC];
  for (int64_t r0 = n0; r0 < n1; r0 += PR) {
    const int rr = (int)((n1 - r0) < PR ? (n1 - r0) : PR);
    pt->decode(p.w + (size_t)r0 * p.row_bytes, p.row_bytes, rr, P);
    for (int64_t m0 = 0; m0 < p.m; m0 += PC) {
      const int cc = (int)((p.m - m0) < PC ? (p.m - m0) : PC);
      for (int c = 0; c < cc; ++c) xa[c] = p.xq + (size_t)(m0 + c) * p.xq_stride;
      pt->f[rr - 1][cc - 1](P, xa, p.y + m0 * p.ldy + r0, p.ldy);
    }
  }
}

// ---- Q4_K / Q5_K
// Scales/mins of one super-block: 8 six-bit scales and mins as bytes (see kquant_scale_min).
AVX2_INL void kq_scales(const uint8_t* s, uint64_t* sc, uint64_t* mn) {
  const uint32_t a = load_u32(s), b = load_u32(s + 4), c = load_u32(s + 8);
  const uint32_t sc_lo = a & 0x3f3f3f3fu;
  const uint32_t mn_lo = b & 0x3f3f3f3fu;
  const uint32_t sc_hi = (c & 0x0f0f0f0fu) | (((a >> 6) & 0x03030303u) << 4);
  const uint32_t mn_hi = ((c >> 4) & 0x0f0f0f0fu) | (((b >> 6) & 0x03030303u) << 4);
  *sc = (uint64_t)sc_lo | ((uint64_t)sc_hi << 32);
  *mn = (uint64_t)mn_lo | ((uint64_t)mn_hi << 32);
}

// C activation rows in quant_q8_256's layout: int8 q[k] | f32 d[k/256] | i16 bsum[k/16].
template <int C>
struct KqAct {
  const int8_t* q[C];
  const float* d[C];
  const int16_t* bsum[C];
  KqAct(const uint8_t* const* xa, int64_t k) {
    for (int c = 0; c < C; ++c) {
      q[c] = (const int8_t*)xa[c];
      d[c] = (const float*)(xa[c] + k);
      bsum[c] = (const int16_t*)(xa[c] + k + 4 * (k / 256));
    }
  }
};

template <int TYPE, int R, int C>
AVX2_FN void tile_q45k(const uint8_t* w, size_t ws, const uint8_t* const* xa, int64_t k, float* y, int64_t ldy) {
  constexpr bool Q5 = TYPE == T_Q5_K;
  constexpr int BYTES = Q5 ? 176 : 144;
  constexpr int QS = Q5 ? 48 : 16;
  const int64_t nsb = k / 256;
  const KqAct<C> act(xa, k);
  const auto &xq = act.q, &xd = act.d, &xb = act.bsum;
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  __m256 acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();

  for (int64_t sb = 0; sb < nsb; ++sb) {
    const uint8_t* blk[R];
    __m256i sc16[R];
    __m256i mn16[R];
    float dd[R], dm[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      blk[r] = w + r * ws + sb * BYTES;
      dd[r] = half(blk[r]);
      dm[r] = half(blk[r] + 2);
      uint64_t sc, mn;
      kq_scales(blk[r] + 4, &sc, &mn);
      sc16[r] = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)sc)));
      const __m128i m8 = _mm_cvtsi64_si128((long long)mn);
      mn16[r] = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
    }
    __m256i iacc[R][C];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) iacc[r][c] = _mm256_setzero_si256();

#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
      __m256i wv[R], sv[R];
      const __m256i ctrl = _mm256_set1_epi16((short)(0x0100 * (2 * j + 1) + 2 * j));
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m256i q = _mm256_loadu_si256((const __m256i*)(blk[r] + QS + 32 * (j / 2)));
        wv[r] = (j & 1) ? _mm256_and_si256(_mm256_srli_epi16(q, 4), m4) : _mm256_and_si256(q, m4);
        if constexpr (Q5) {
          const __m256i qh = _mm256_loadu_si256((const __m256i*)(blk[r] + 16));
          const __m256i hb = _mm256_slli_epi16(_mm256_srli_epi16(qh, j), 4);
          wv[r] = _mm256_or_si256(wv[r], _mm256_and_si256(hb, _mm256_set1_epi8(0x10)));
        }
        sv[r] = _mm256_shuffle_epi8(sc16[r], ctrl);
      }
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) {
        const __m256i xv = _mm256_load_si256((const __m256i*)(xq[c] + 256 * sb + 32 * j));
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r)
          iacc[r][c] = madd_add(iacc[r][c], _mm256_maddubs_epi16(wv[r], xv), sv[r]);
      }
    }
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      const float dx = xd[c][sb];
      const __m256i bsv = _mm256_loadu_si256((const __m256i*)(xb[c] + 16 * sb));
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc[r][c]), _mm256_set1_ps(dd[r] * dx), acc[r][c]);
        const __m256 mins = _mm256_cvtepi32_ps(_mm256_madd_epi16(mn16[r], bsv));
        acc[r][c] = _mm256_fnmadd_ps(mins, _mm256_set1_ps(dm[r] * dx), acc[r][c]);
      }
    }
  }
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c)
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) y[c * ldy + r] = hsum_ps(acc[r][c]);
}

// ---- Q6_K
template <int R, int C>
AVX2_FN void tile_q6k(const uint8_t* w, size_t ws, const uint8_t* const* xa, int64_t k, float* y, int64_t ldy) {
  constexpr int BYTES = 210;
  const int64_t nsb = k / 256;
  const KqAct<C> act(xa, k);
  const auto &xq = act.q, &xd = act.d, &xb = act.bsum;
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  const __m256i m30 = _mm256_set1_epi8(0x30);
  __m256 acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();

  for (int64_t sb = 0; sb < nsb; ++sb) {
    const uint8_t* blk[R];
    __m128i s8[R];
    float dd[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      blk[r] = w + r * ws + sb * BYTES;
      dd[r] = half(blk[r] + 208);
      s8[r] = _mm_loadu_si128((const __m128i*)(blk[r] + 192));
    }
    __m256i iacc[R][C];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) iacc[r][c] = _mm256_setzero_si256();

#pragma GCC unroll 8
    for (int ch = 0; ch < 8; ++ch) {
      const int h = ch >> 2, s = ch & 3;
      // scale bytes 2ch (x8) then 2ch+1 (x8)
      const __m128i ctrl = _mm_set_epi64x((long long)(0x0101010101010101ull * (uint64_t)(2 * ch + 1)),
                                          (long long)(0x0101010101010101ull * (uint64_t)(2 * ch)));
      __m256i wv[R], sv[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m256i ql = _mm256_loadu_si256((const __m256i*)(blk[r] + 64 * h + 32 * (s & 1)));
        const __m256i qh = _mm256_loadu_si256((const __m256i*)(blk[r] + 128 + 32 * h));
        const __m256i lo = (s >> 1) ? _mm256_and_si256(_mm256_srli_epi16(ql, 4), m4) : _mm256_and_si256(ql, m4);
        __m256i hi;
        if (s == 0)
          hi = _mm256_slli_epi16(qh, 4);
        else if (s == 1)
          hi = _mm256_slli_epi16(qh, 2);
        else if (s == 2)
          hi = qh;
        else
          hi = _mm256_srli_epi16(qh, 2);
        wv[r] = _mm256_or_si256(lo, _mm256_and_si256(hi, m30));
        sv[r] = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(s8[r], ctrl));
      }
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) {
        const __m256i xv = _mm256_load_si256((const __m256i*)(xq[c] + 256 * sb + 32 * ch));
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r)
          iacc[r][c] = madd_add(iacc[r][c], _mm256_maddubs_epi16(wv[r], xv), sv[r]);
      }
    }
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      const float dx = xd[c][sb];
      const __m256i bsv = _mm256_loadu_si256((const __m256i*)(xb[c] + 16 * sb));
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        // q - 32: subtract 32 * sum_j scale_j * bsum_j
        const __m256i corr = _mm256_madd_epi16(_mm256_cvtepi8_epi16(s8[r]), bsv);
        const __m256i t = _mm256_sub_epi32(iacc[r][c], _mm256_slli_epi32(corr, 5));
        acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_set1_ps(dd[r] * dx), acc[r][c]);
      }
    }
  }
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c)
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) y[c * ldy + r] = hsum_ps(acc[r][c]);
}

// ---- GEMM for the K-quants: decode a panel of KR rows once, then reuse it for all M rows.
// Panel per row: q[K] (unsigned 0..15/31/63), sv[K/32] (int16 x16 scale vectors for madd),
// per super-block d, dm (f32) and mn[16] (int16) so that
//   dot = sum_sb d*dx*sum(q*x*sv) - dm*dx*sum(mn*bsum16).
constexpr int KR = 4, KC = 2;

struct KPanel {
  uint8_t* q;      // [KR][k]
  __m256i* sv;     // [KR][k/32]
  __m256i* mn;     // [KR][nsb]
  float* d;        // [KR][nsb]
  float* dm;       // [KR][nsb]
  int64_t k, nsb;
};

template <int TYPE>
AVX2_FN void kq_decode_panel(const uint8_t* w, size_t ws, int rows, const KPanel& P) {
  const __m256i m4 = _mm256_set1_epi8(0x0f), m30 = _mm256_set1_epi8(0x30);
  for (int r = 0; r < rows; ++r) {
    for (int64_t sb = 0; sb < P.nsb; ++sb) {
      uint8_t* q = P.q + r * P.k + 256 * sb;
      __m256i* sv = P.sv + r * (P.k / 32) + 8 * sb;
      const int64_t o = r * P.nsb + sb;
      if constexpr (TYPE == T_Q6_K) {
        const uint8_t* blk = w + r * ws + sb * 210;
        const float d = half(blk + 208);
        const __m128i s8 = _mm_loadu_si128((const __m128i*)(blk + 192));
        for (int ch = 0; ch < 8; ++ch) {
          const int h = ch >> 2, s = ch & 3;
          const __m256i ql = _mm256_loadu_si256((const __m256i*)(blk + 64 * h + 32 * (s & 1)));
          const __m256i qh = _mm256_loadu_si256((const __m256i*)(blk + 128 + 32 * h));
          const __m256i lo = (s >> 1) ? _mm256_and_si256(_mm256_srli_epi16(ql, 4), m4) : _mm256_and_si256(ql, m4);
          const __m256i hi = s == 0 ? _mm256_slli_epi16(qh, 4)
                             : s == 1 ? _mm256_slli_epi16(qh, 2)
                             : s == 2 ? qh
                                      : _mm256_srli_epi16(qh, 2);
          _mm256_store_si256((__m256i*)(q + 32 * ch), _mm256_or_si256(lo, _mm256_and_si256(hi, m30)));
          const __m128i ctrl = _mm_set_epi64x((long long)(0x0101010101010101ull * (uint64_t)(2 * ch + 1)),
                                              (long long)(0x0101010101010101ull * (uint64_t)(2 * ch)));
          _mm256_store_si256(sv + ch, _mm256_cvtepi8_epi16(_mm_shuffle_epi8(s8, ctrl)));
        }
        P.d[o] = d;
        P.dm[o] = 32.0f * d;
        _mm256_store_si256(P.mn + o, _mm256_cvtepi8_epi16(s8));
      } else {
        constexpr bool Q5 = TYPE == T_Q5_K;
        const uint8_t* blk = w + r * ws + sb * (Q5 ? 176 : 144);
        const uint8_t* qs = blk + (Q5 ? 48 : 16);
        uint8_t sc[8], mn[8];
        kquant_scale_min(blk + 4, sc, mn);
        for (int j = 0; j < 8; ++j) {
          const __m256i v = _mm256_loadu_si256((const __m256i*)(qs + 32 * (j / 2)));
          __m256i x = (j & 1) ? _mm256_and_si256(_mm256_srli_epi16(v, 4), m4) : _mm256_and_si256(v, m4);
          if constexpr (Q5) {
            const __m256i qh = _mm256_loadu_si256((const __m256i*)(blk + 16));
            const __m256i hb = _mm256_slli_epi16(_mm256_srli_epi16(qh, j), 4);
            x = _mm256_or_si256(x, _mm256_and_si256(hb, _mm256_set1_epi8(0x10)));
          }
          _mm256_store_si256((__m256i*)(q + 32 * j), x);
          _mm256_store_si256(sv + j, _mm256_set1_epi16(sc[j]));
        }
        P.d[o] = half(blk);
        P.dm[o] = half(blk + 2);
        alignas(32) int16_t m16[16];
        for (int t = 0; t < 16; ++t) m16[t] = mn[t / 2];
        _mm256_store_si256(P.mn + o, _mm256_load_si256((const __m256i*)m16));
      }
    }
  }
}

// Q6 (Q6_K): mn holds the sub-block scales and the -32 offset comes off the int32 sums, as in
// tile_q6k; otherwise (Q4_K, Q5_K) mn holds the mins, as in tile_q45k. Either way the tile's
// arithmetic, so results do not depend on M.
template <int R, int C, bool Q6>
AVX2_FN void kq_panel_kernel(const KPanel& P, const uint8_t* const* xa, float* y, int64_t ldy) {
  const int64_t k = P.k, nsb = P.nsb;
  const KqAct<C> act(xa, k);
  const auto &xq = act.q, &xd = act.d, &xb = act.bsum;
  __m256 acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  for (int64_t sb = 0; sb < nsb; ++sb) {
    __m256i iacc[R][C];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) iacc[r][c] = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
      __m256i wq[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) wq[r] = _mm256_load_si256((const __m256i*)(P.q + r * k + 256 * sb + 32 * j));
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) {
        const __m256i xv = _mm256_load_si256((const __m256i*)(xq[c] + 256 * sb + 32 * j));
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r)
          iacc[r][c] = madd_add(iacc[r][c], _mm256_maddubs_epi16(wq[r], xv),
                                _mm256_load_si256(P.sv + r * (k / 32) + 8 * sb + j));
      }
    }
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      const float dx = xd[c][sb];
      const __m256i bsv = _mm256_loadu_si256((const __m256i*)(xb[c] + 16 * sb));
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const int64_t o = r * nsb + sb;
        const __m256i mb = _mm256_madd_epi16(_mm256_load_si256(P.mn + o), bsv);
        if constexpr (Q6) {  // q - 32 taken off in int32, as tile_q6k does
          const __m256i t = _mm256_sub_epi32(iacc[r][c], _mm256_slli_epi32(mb, 5));
          acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_set1_ps(P.d[o] * dx), acc[r][c]);
        } else {
          acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc[r][c]), _mm256_set1_ps(P.d[o] * dx), acc[r][c]);
          acc[r][c] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(mb), _mm256_set1_ps(P.dm[o] * dx), acc[r][c]);
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c)
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) y[c * ldy + r] = hsum_ps(acc[r][c]);
}

#if MLXK_VNNI
// ---- 512-bit K-quant kernels (the VNNI path's tiles, GEMV included, and panels)
// One zmm holds sub-blocks 2p and 2p+1 of a super-block (64 contiguous bytes of the activation
// row): the int32 lanes of its low half accumulate the even sub-blocks, those of its high half
// the odd ones, and fold2 adds the halves. Integer sums are exact (|lane| < 2^26), so these are
// the 256-bit tiles' lane sums, and the float part after them is the tiles' own, done for two
// (weight row, activation row) pairs per zmm: results equal the AVX2 path bit for bit, at every
// M, so batch invariance holds as before. Half the instructions per element of the 256-bit code.
AVX2_INL __m512 pair_ps(float lo, float hi) {
  return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_set1_ps(lo)), _mm256_castps_pd(_mm256_set1_ps(hi)), 1));
}
AVX2_INL __m256 high_ps(__m512 v) { return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)); }
// [a.lo + a.hi | b.lo + b.hi] (256-bit halves).
AVX2_INL __m512i fold2(__m512i a, __m512i b) {
  return _mm512_add_epi32(_mm512_shuffle_i64x2(a, b, 0x44), _mm512_shuffle_i64x2(a, b, 0xee));
}

// What the kernel needs of one row's super-block: its scales for the epilogue (d, and dm for
// Q4_K / Q5_K) and the 16 int16 the mins (Q4_K / Q5_K) or sub-block scales (Q6_K) are
// multiplied with; the two sources below also keep what decoding its sub-block pairs needs.
struct KqSb {
  const uint8_t* blk;
  __m512i sc;  // Q4_K / Q5_K: the 8 scales as int16, in every 128-bit lane; Q6_K: the 16 scale bytes, in every lane
  __m256i mn;
  float d, dm;
  const __m256i* sv;  // panels: the sub-block scale vectors
};

// ggml rows, decoded as they are read (tiles and GEMV).
template <int TYPE>
struct KqRowsZ {
  const uint8_t* w;
  size_t ws;
  AVX2_MEM void load(int r, int64_t sb, KqSb& s) const {
    if constexpr (TYPE == T_Q6_K) {
      s.blk = w + r * ws + sb * 210;
      s.d = half(s.blk + 208);
      const __m128i s8 = _mm_loadu_si128((const __m128i*)(s.blk + 192));
      s.sc = _mm512_broadcast_i32x4(s8);
      s.mn = _mm256_cvtepi8_epi16(s8);
    } else {
      s.blk = w + r * ws + sb * (TYPE == T_Q5_K ? 176 : 144);
      s.d = half(s.blk);
      s.dm = half(s.blk + 2);
      uint64_t sc, mn;
      kq_scales(s.blk + 4, &sc, &mn);
      s.sc = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)sc)));
      const __m128i m8 = _mm_cvtsi64_si128((long long)mn);
      s.mn = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
    }
  }
  // Sub-blocks 2p, 2p+1 as unsigned bytes, as tile_q45k / tile_q6k decode them.
  template <int P>
  AVX2_MEM __m512i weights(const KqSb& s) const {
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    if constexpr (TYPE == T_Q6_K) {
      constexpr int h = P >> 1;
      const __m512i ql = _mm512_loadu_si512((const void*)(s.blk + 64 * h));
      const __m512i lo = (P & 1) ? _mm512_and_si512(_mm512_srli_epi16(ql, 4), m4) : _mm512_and_si512(ql, m4);
      const __m256i qh = _mm256_loadu_si256((const __m256i*)(s.blk + 128 + 32 * h));
      const __m512i qh2 = cat256(qh, qh);
      // chunk s of a half takes qh << 4, << 2, >> 0, >> 2 (s = 0..3): P even has s = 0, 1; odd 2, 3
      const __m512i hi = (P & 1) ? _mm512_srlv_epi16(qh2, cat256(_mm256_setzero_si256(), _mm256_set1_epi16(2)))
                                 : _mm512_sllv_epi16(qh2, cat256(_mm256_set1_epi16(4), _mm256_set1_epi16(2)));
      return _mm512_or_si512(lo, _mm512_and_si512(hi, _mm512_set1_epi8(0x30)));
    } else {
      constexpr int QS = TYPE == T_Q5_K ? 48 : 16;
      const __m256i v = _mm256_loadu_si256((const __m256i*)(s.blk + QS + 32 * P));
      __m512i q = _mm512_and_si512(
          _mm512_srlv_epi16(cat256(v, v), cat256(_mm256_setzero_si256(), _mm256_set1_epi16(4))), m4);
      if constexpr (TYPE == T_Q5_K) {
        const __m256i qh = _mm256_loadu_si256((const __m256i*)(s.blk + 16));
        const __mmask64 hb = _mm512_test_epi8_mask(
            cat256(qh, qh), cat256(_mm256_set1_epi8((char)(1 << (2 * P))), _mm256_set1_epi8((char)(1 << (2 * P + 1)))));
        q = _mm512_mask_add_epi8(q, hb, q, _mm512_set1_epi8(0x10));
      }
      return q;
    }
  }
  // The int16 scales of sub-blocks 2p (low half) and 2p+1 (high half), as the tiles' sv.
  template <int P>
  AVX2_MEM __m512i scales(const KqSb& s) const {
    if constexpr (TYPE == T_Q6_K) {
      // bytes 2ch (x8) then 2ch+1 (x8) for ch = 2p and 2p+1, widened to int16
      const __m256i ctrl = _mm256_setr_epi64x(
          (long long)(0x0101010101010101ull * (uint64_t)(4 * P)), (long long)(0x0101010101010101ull * (uint64_t)(4 * P + 1)),
          (long long)(0x0101010101010101ull * (uint64_t)(4 * P + 2)), (long long)(0x0101010101010101ull * (uint64_t)(4 * P + 3)));
      return _mm512_cvtepi8_epi16(_mm256_shuffle_epi8(_mm512_castsi512_si256(s.sc), ctrl));
    } else {
      const __m512i ctrl = cat256(_mm256_set1_epi16((short)(0x0100 * (4 * P + 1) + 4 * P)),
                                  _mm256_set1_epi16((short)(0x0100 * (4 * P + 3) + 4 * P + 2)));
      return _mm512_shuffle_epi8(s.sc, ctrl);
    }
  }
};

// A decoded K-quant panel (kq_decode_panel) as the kernel's source.
struct KqPanelZ {
  const KPanel* P;
  int64_t r_sv;  // sv entries per row
  AVX2_MEM void load(int r, int64_t sb, KqSb& s) const {
    const int64_t o = r * P->nsb + sb;
    s.blk = P->q + r * P->k + 256 * sb;
    s.sc = _mm512_setzero_si512();
    s.mn = _mm256_load_si256(P->mn + o);
    s.d = P->d[o];
    s.dm = P->dm[o];
    s.sv = P->sv + r * r_sv + 8 * sb;
  }
  template <int P_>
  AVX2_MEM __m512i weights(const KqSb& s) const { return _mm512_loadu_si512((const void*)(s.blk + 64 * P_)); }
  template <int P_>
  AVX2_MEM __m512i scales(const KqSb& s) const { return _mm512_loadu_si512((const void*)(s.sv + 2 * P_)); }
};

// Sub-blocks 2P, 2P+1 of the R rows' super-block against the C activation rows.
template <int TYPE, int R, int C, int P, class SRC>
AVX2_INL void kq_zmm_pair(const SRC& src, const KqSb* s, const int8_t* const* xq, int64_t sb, __m512i* ia) {
  __m512i wv[R], sv[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    wv[r] = src.template weights<P>(s[r]);
    sv[r] = src.template scales<P>(s[r]);
  }
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) {
    const __m512i xv = _mm512_loadu_si512((const void*)(xq[c] + 256 * sb + 64 * P));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) ia[r * C + c] = _mm512_dpwssd_epi32(ia[r * C + c], _mm512_maddubs_epi16(wv[r], xv), sv[r]);
  }
}

// R weight rows x C activation rows. The epilogue takes the pairs (r, 2q) and (r, 2q + 1) in
// one zmm (for odd C the last column pairs with itself, its high half unused), so a row's scales
// broadcast once and an activation pair's scales and block sums serve every row.
template <int TYPE, int R, int C, class SRC>
AVX2_FN void kq_zmm(const SRC& src, const uint8_t* const* xa, int64_t k, float* y, int64_t ldy) {
  constexpr bool Q6 = TYPE == T_Q6_K;
  constexpr int CP = (C + 1) / 2;
  const int64_t nsb = k / 256;
  const KqAct<C> act(xa, k);
  const auto &xq = act.q, &xd = act.d, &xb = act.bsum;
  __m512 acc[R][CP];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int q = 0; q < CP; ++q) acc[r][q] = _mm512_setzero_ps();
  for (int64_t sb = 0; sb < nsb; ++sb) {
    KqSb s[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) src.load(r, sb, s[r]);
    __m512i ia[R * C];
#pragma GCC unroll 16
    for (int i = 0; i < R * C; ++i) ia[i] = _mm512_setzero_si512();
    kq_zmm_pair<TYPE, R, C, 0>(src, s, xq, sb, ia);
    kq_zmm_pair<TYPE, R, C, 1>(src, s, xq, sb, ia);
    kq_zmm_pair<TYPE, R, C, 2>(src, s, xq, sb, ia);
    kq_zmm_pair<TYPE, R, C, 3>(src, s, xq, sb, ia);
    if constexpr (C == 1 && R == 2) {
      // One activation row (GEMV): the two weight rows share a zmm instead.
      const __m512 dx = _mm512_set1_ps(xd[0][sb]);
      const __m256i b = _mm256_loadu_si256((const __m256i*)(xb[0] + 16 * sb));
      const __m512i mb = _mm512_madd_epi16(cat256(s[0].mn, s[1].mn), cat256(b, b));
      const __m512i l = fold2(ia[0], ia[1]);
      const __m512 ddx = _mm512_mul_ps(pair_ps(s[0].d, s[1].d), dx);
      if constexpr (Q6) {
        const __m512i t = _mm512_sub_epi32(l, _mm512_slli_epi32(mb, 5));
        acc[0][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), ddx, acc[0][0]);
      } else {
        acc[0][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(l), ddx, acc[0][0]);
        acc[0][0] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(mb), _mm512_mul_ps(pair_ps(s[0].dm, s[1].dm), dx), acc[0][0]);
      }
      continue;
    }
#pragma GCC unroll 8
    for (int q = 0; q < CP; ++q) {
      const int c0 = 2 * q, c1 = 2 * q + 1 < C ? 2 * q + 1 : 2 * q;
      // dx of the two activation rows, and their per-16 sums, shared by the R rows
      const __m512 dx = pair_ps(xd[c0][sb], xd[c1][sb]);
      const __m512i bsv = cat256(_mm256_loadu_si256((const __m256i*)(xb[c0] + 16 * sb)),
                                 _mm256_loadu_si256((const __m256i*)(xb[c1] + 16 * sb)));
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m512i mb = _mm512_madd_epi16(cat256(s[r].mn, s[r].mn), bsv);
        const __m512i l = fold2(ia[r * C + c0], ia[r * C + c1]);
        // d * dx per lane: the tiles' scalar product, rounded the same way
        const __m512 ddx = _mm512_mul_ps(_mm512_set1_ps(s[r].d), dx);
        if constexpr (Q6) {  // q - 32 off in int32, as tile_q6k
          const __m512i t = _mm512_sub_epi32(l, _mm512_slli_epi32(mb, 5));
          acc[r][q] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), ddx, acc[r][q]);
        } else {
          acc[r][q] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(l), ddx, acc[r][q]);
          acc[r][q] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(mb), _mm512_mul_ps(_mm512_set1_ps(s[r].dm), dx), acc[r][q]);
        }
      }
    }
  }
  if constexpr (C == 1 && R == 2) {
    y[0] = hsum_ps(_mm512_castps512_ps256(acc[0][0]));
    y[1] = hsum_ps(high_ps(acc[0][0]));
    return;
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int q = 0; q < CP; ++q) {
      y[2 * q * ldy + r] = hsum_ps(_mm512_castps512_ps256(acc[r][q]));
      if (2 * q + 1 < C) y[(2 * q + 1) * ldy + r] = hsum_ps(high_ps(acc[r][q]));
    }
}
#endif

#if MLXK_VNNI
// The zmm kernel over a decoded panel: 4 rows x 4 activation rows per call (16 int32 and 8 float
// accumulators; the scales come from memory). Simulated Qwen 1.5B step, M = 128, one thread:
// 1.62-1.79 s against 2.06-2.66 with 3 activation rows and 1.76-1.87 with 6.
constexpr int ZKC = 4;
template <int TYPE, int R, int C>
AVX2_FN void kq_zmm_panel(const KPanel& P, const uint8_t* const* xa, float* y, int64_t ldy) {
  kq_zmm<TYPE, R, C>(KqPanelZ{&P, P.k / 32}, xa, P.k, y, ldy);
}
#define MLXK_ZKROW(T, R) \
  {&kq_zmm_panel<T, R, 1>, &kq_zmm_panel<T, R, 2>, &kq_zmm_panel<T, R, 3>, &kq_zmm_panel<T, R, 4>}
#define MLXK_ZKTAB(T) {MLXK_ZKROW(T, 1), MLXK_ZKROW(T, 2), MLXK_ZKROW(T, 3), MLXK_ZKROW(T, 4)}
#endif

typedef void (*KPanelFn)(const KPanel&, const uint8_t* const*, float*, int64_t);
typedef void (*KDecodeFn)(const uint8_t*, size_t, int, const KPanel&);
#if MLXK_VNNI
// [Q4_K / Q5_K (a decoded panel is the same for both), Q6_K]
constexpr int KCALL = ZKC;
const KPanelFn kKPanels[2][KR][KCALL] = {MLXK_ZKTAB(T_Q4_K), MLXK_ZKTAB(T_Q6_K)};
#else
constexpr int KCALL = KC;
#define MLXK_KPROW(R, Q6) {&kq_panel_kernel<R, 1, Q6>, &kq_panel_kernel<R, 2, Q6>}
const KPanelFn kKPanels[2][KR][KCALL] = {
    {MLXK_KPROW(1, false), MLXK_KPROW(2, false), MLXK_KPROW(3, false), MLXK_KPROW(4, false)},
    {MLXK_KPROW(1, true), MLXK_KPROW(2, true), MLXK_KPROW(3, true), MLXK_KPROW(4, true)}};
#endif

void kq_panel_gemm(const Problem& p, int64_t n0, int64_t n1) {
  thread_local AlignedScratch buf;
  const int64_t nsb = p.k / 256;
  const size_t qb = (size_t)KR * p.k, svb = (size_t)KR * (p.k / 32) * 32, mnb = (size_t)KR * nsb * 32,
               fb = (size_t)KR * nsb * 4;
  uint8_t* base = buf.get(qb + svb + mnb + 2 * fb + 64);
  KPanel P{base, (__m256i*)(base + qb), (__m256i*)(base + qb + svb), (float*)(base + qb + svb + mnb),
           (float*)(base + qb + svb + mnb + fb), p.k, nsb};
  const KDecodeFn dec = p.type == T_Q6_K ? &kq_decode_panel<T_Q6_K>
                        : p.type == T_Q5_K ? &kq_decode_panel<T_Q5_K>
                                           : &kq_decode_panel<T_Q4_K>;
  const KPanelFn(*kern)[KCALL] = kKPanels[p.type == T_Q6_K];
  const uint8_t* xa[KCALL];
  for (int64_t r0 = n0; r0 < n1; r0 += KR) {
    const int rr = (int)((n1 - r0) < KR ? (n1 - r0) : KR);
    dec(p.w + (size_t)r0 * p.row_bytes, p.row_bytes, rr, P);
    for (int64_t m0 = 0; m0 < p.m; m0 += KCALL) {
      const int cc = (int)((p.m - m0) < KCALL ? (p.m - m0) : KCALL);
      for (int c = 0; c < cc; ++c) xa[c] = p.xq + (size_t)(m0 + c) * p.xq_stride;
      kern[rr - 1][cc - 1](P, xa, p.y + m0 * p.ldy + r0, p.ldy);
    }
  }
}

// ---- float weights (F32 / F16 / BF16) with f32 activations
template <int TYPE>
AVX2_INL __m256 load8w(const uint8_t* row, int64_t i) {
  if constexpr (TYPE == T_F32) return _mm256_loadu_ps((const float*)row + i);
  if constexpr (TYPE == T_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(row + 2 * i)));
  if constexpr (TYPE == T_BF16)
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(row + 2 * i))), 16));
}
template <int TYPE>
inline float load1w(const uint8_t* row, int64_t i) {
  if constexpr (TYPE == T_F32) {
    float f;
    std::memcpy(&f, row + 4 * i, 4);
    return f;
  }
  if constexpr (TYPE == T_F16) return half_to_float(load_u16(row + 2 * i));
  if constexpr (TYPE == T_BF16) return bf16_to_float(load_u16(row + 2 * i));
}

template <int TYPE, int R, int C>
AVX2_FN void tile_float(const uint8_t* w, size_t ws, const uint8_t* const* xa, int64_t k, float* y, int64_t ldy) {
  const float* xf[C];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) xf[c] = (const float*)xa[c];
  __m256 acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    __m256 wv[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) wv[r] = load8w<TYPE>(w + r * ws, i);
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      const __m256 xv = _mm256_loadu_ps(xf[c] + i);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r][c] = _mm256_fmadd_ps(wv[r], xv, acc[r][c]);
    }
  }
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c)
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      float s = hsum_ps(acc[r][c]);
      for (int64_t t = i; t < k; ++t) s += load1w<TYPE>(w + r * ws, t) * xf[c][t];
      y[c * ldy + r] = s;
    }
}

// ------------------------------------------------------------------ dispatch tables
template <int TYPE, int R, int C>
AVX2_FN void tile(const uint8_t* w, size_t ws, const uint8_t* const* xa, int64_t k, float* y, int64_t ldy) {
#if MLXK_VNNI
  if constexpr (is_kquant(TYPE))
    kq_zmm<TYPE, R, C>(KqRowsZ<TYPE>{w, ws}, xa, k, y, ldy);
#else
  if constexpr (TYPE == T_Q4_K || TYPE == T_Q5_K)
    tile_q45k<TYPE, R, C>(w, ws, xa, k, y, ldy);
  else if constexpr (TYPE == T_Q6_K)
    tile_q6k<R, C>(w, ws, xa, k, y, ldy);
#endif
  else if constexpr (TYPE == T_F32 || TYPE == T_F16 || TYPE == T_BF16)
    tile_float<TYPE, R, C>(w, ws, xa, k, y, ldy);
  else if constexpr (TYPE == T_Q5_0_R8 || TYPE == T_Q8_0_R8)
    tile_b32<base_type(TYPE), R, C, true>(w, ws, xa, k, y, ldy);
  else
    tile_b32<TYPE, R, C>(w, ws, xa, k, y, ldy);
}

// 3 and 4 activation rows only with one weight row (tile_shape never asks for more with more).
#define MLXK_TROW(T, R)                                                                           \
  {&tile<T, R, 1>, &tile<T, R, 2>, R == 1 ? &tile<T, 1, 3> : nullptr, R == 1 ? &tile<T, 1, 4> : nullptr}
#define MLXK_TTAB(T) \
  {MLXK_TROW(T, 1), MLXK_TROW(T, 2), MLXK_TROW(T, 3), MLXK_TROW(T, 4)}

struct Table {
  TileFn f[RMAX][CMAX];
};
const Table kTables[] = {
    {MLXK_TTAB(T_F32)},  {MLXK_TTAB(T_F16)},  {MLXK_TTAB(T_BF16)}, {MLXK_TTAB(T_Q4_0)},
    {MLXK_TTAB(T_Q4_1)}, {MLXK_TTAB(T_Q5_0)}, {MLXK_TTAB(T_Q5_1)}, {MLXK_TTAB(T_Q8_0)},
    {MLXK_TTAB(T_Q4_K)}, {MLXK_TTAB(T_Q5_K)}, {MLXK_TTAB(T_Q6_K)}, {MLXK_TTAB(T_Q5_0_R8)},
    {MLXK_TTAB(T_Q8_0_R8)},
};

const Table* table_for(int type) {
  switch (type) {
    case T_F32: return &kTables[0];
    case T_F16: return &kTables[1];
    case T_BF16: return &kTables[2];
    case T_Q4_0: return &kTables[3];
    case T_Q4_1: return &kTables[4];
    case T_Q5_0: return &kTables[5];
    case T_Q5_1: return &kTables[6];
    case T_Q8_0: return &kTables[7];
    case T_Q4_K: return &kTables[8];
    case T_Q5_K: return &kTables[9];
    case T_Q6_K: return &kTables[10];
    case T_Q5_0_R8: return &kTables[11];
    case T_Q8_0_R8: return &kTables[12];
    default: return nullptr;
  }
}

#if MLXK_VNNI
// K-quants below the panel threshold: one weight row at a time (the sequential stream of the
// GEMV, with its prefetch) against up to KQ_CMAX activation rows, decoded once per KQ_CMAX rows.
constexpr int KQ_CMAX = 8;
#define MLXK_KQROW(T)                                                                                  \
  {&tile_kq<T, 1>, &tile_kq<T, 2>, &tile_kq<T, 3>, &tile_kq<T, 4>, &tile_kq<T, 5>, &tile_kq<T, 6>, \
   &tile_kq<T, 7>, &tile_kq<T, 8>}
template <int TYPE, int C>
AVX2_FN void tile_kq(const uint8_t* w, size_t ws, const uint8_t* const* xa, int64_t k, float* y, int64_t ldy) {
  kq_zmm<TYPE, 1, C>(KqRowsZ<TYPE>{w, ws}, xa, k, y, ldy);
}
const TileFn kKqTiles[3][KQ_CMAX] = {MLXK_KQROW(T_Q4_K), MLXK_KQROW(T_Q5_K), MLXK_KQROW(T_Q6_K)};
template <int TYPE>
AVX2_FN void gemv_kq2(const uint8_t* w, size_t ws, const uint8_t* const* xa, int64_t k, float* y, int64_t ldy) {
  kq_zmm<TYPE, 2, 1>(KqRowsZ<TYPE>{w, ws}, xa, k, y, ldy);
}
const TileFn kKqGemv2[3] = {&gemv_kq2<T_Q4_K>, &gemv_kq2<T_Q5_K>, &gemv_kq2<T_Q6_K>};

void kq_rows(const Problem& p, int64_t n0, int64_t n1) {
  const int t = p.type == T_Q4_K ? 0 : p.type == T_Q5_K ? 1 : 2;
  const TileFn* f = kKqTiles[t];
  const uint8_t* xa[KQ_CMAX];
  const uint8_t* wend = p.w + (size_t)p.n * p.row_bytes;
  int64_t r = n0;
  if (p.m == 1) {
    // GEMV: two rows per call (one epilogue for both), the stream still in order.
    xa[0] = p.xq;
    for (; r + 2 <= n1; r += 2) {
      const uint8_t* wr = p.w + (size_t)r * p.row_bytes;
      const uint8_t* pf = wr + kPrefetchDist;
      const uint8_t* pe = pf + 2 * p.row_bytes < wend ? pf + 2 * p.row_bytes : wend;
      for (; pf < pe; pf += 64) _mm_prefetch((const char*)pf, _MM_HINT_T0);
      kKqGemv2[t](wr, p.row_bytes, xa, p.k, p.y + r, p.ldy);
    }
  }
  for (; r < n1; ++r) {
    const uint8_t* wr = p.w + (size_t)r * p.row_bytes;
    const uint8_t* pf = wr + kPrefetchDist;
    const uint8_t* pe = pf + p.row_bytes < wend ? pf + p.row_bytes : wend;
    for (; pf < pe; pf += 64) _mm_prefetch((const char*)pf, _MM_HINT_T0);
    for (int64_t m0 = 0; m0 < p.m; m0 += KQ_CMAX) {
      const int cc = (int)((p.m - m0) < KQ_CMAX ? (p.m - m0) : KQ_CMAX);
      for (int c = 0; c < cc; ++c) xa[c] = p.xq + (size_t)(m0 + c) * p.xq_stride;
      f[cc - 1](wr, p.row_bytes, xa, p.k, p.y + m0 * p.ldy + r, p.ldy);
    }
  }
}
#endif

// Tile shape (rows R, activation rows C) per type for GEMV (m == 1) and GEMM.
void tile_shape(int type, int64_t m, int* R, int* C) {
  if (is_float(type)) {
    // Float kernels need 4 rows to hide the FMA latency.
    *R = 4;
    *C = m >= 2 ? 2 : 1;
    return;
  }
  if (m >= panel_min_rows() && !(is_kquant(type) && m < kq_panel_min_rows())) {  // panel GEMM
    *R = is_kquant(type) ? KR : PR;
    *C = is_kquant(type) ? KC : PC;
    return;
  }
  // One weight row at a time keeps the DRAM stream strictly sequential, read once for up to
  // CMAX activation rows; more rows re-read it from L1. Measured on the whole model (2-core EPYC,
  // batched decode): interleaving 4 weight rows against 2 activation rows cost 2.5x the one-row
  // GEMV at M = 2, the one-row tile 1.4x.
  *R = 1;
  *C = m < CMAX ? (int)m : CMAX;
}

}  // namespace

size_t act_row_bytes(int type, int64_t k) {
  if (is_float(type)) return 0;
  if (is_kquant(type)) return round_up((size_t)k + 4 * (size_t)(k / 256) + 2 * (size_t)(k / 16), 64);
  return round_up((size_t)k + 12 * (size_t)(k / 32), 64);
}

void quantize_act_row(int type, const float* x, int64_t k, uint8_t* dst) {
  if (is_float(type)) return;
  if (is_kquant(type))
    quant_q8_256(x, k, dst);
  else
    quant_q8_32(x, k, dst);
}

int row_tile(int type, int64_t m) {
  int R, C;
  tile_shape(type, m, &R, &C);
  return R;
}

void compute_rows(const Problem& p, int64_t n0, int64_t n1) {
  if (p.m >= panel_min_rows()) {
    if (const PanelTable* pt = panel_table_for(p.type)) {
      panel_gemm(p, pt, n0, n1);
      return;
    }
    if (is_kquant(p.type) && p.m >= kq_panel_min_rows()) {
      kq_panel_gemm(p, n0, n1);
      return;
    }
  }
#if MLXK_VNNI
  if (is_kquant(p.type)) {
    kq_rows(p, n0, n1);
    return;
  }
#endif
  const Table* t = table_for(p.type);
  if (!t) return;
  int R, C;
  tile_shape(p.type, p.m, &R, &C);
  const bool fl = is_float(p.type);
  const uint8_t* xa[CMAX];
  const uint8_t* wend = p.w + (size_t)p.n * p.row_bytes;
  for (int64_t r0 = n0; r0 < n1; r0 += R) {
    const int rr = (int)((n1 - r0) < R ? (n1 - r0) : R);
    const uint8_t* wr = p.w + (size_t)r0 * p.row_bytes;
    if (R == 1) {
      // Software prefetch ~4 KB ahead of the weight stream (measured +15-40% from DRAM).
      const uint8_t* pf = wr + kPrefetchDist;
      const uint8_t* pe = pf + (size_t)rr * p.row_bytes;
      if (pe > wend) pe = wend;
      for (; pf < pe; pf += 64) _mm_prefetch((const char*)pf, _MM_HINT_T0);
    }
    for (int64_t m0 = 0; m0 < p.m; m0 += C) {
      const int cc = (int)((p.m - m0) < C ? (p.m - m0) : C);
      for (int c = 0; c < cc; ++c)
        xa[c] = fl ? (const uint8_t*)(p.x + (m0 + c) * p.ldx) : p.xq + (size_t)(m0 + c) * p.xq_stride;
      t->f[rr - 1][cc - 1](wr, p.row_bytes, xa, p.k, p.y + m0 * p.ldy + r0, p.ldy);
    }
  }
}

AVX2_FN void swiglu(float* g, const float* u, int64_t len) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  int64_t i = 0;
  for (; i + 8 <= len; i += 8) {
    const __m256 gv = _mm256_loadu_ps(g + i);
    // g / (1 + exp(-g)): a NaN g stays NaN through the division whatever exp8 returns.
    const __m256 e = simd::exp8(_mm256_xor_ps(gv, sign));
    const __m256 s = _mm256_div_ps(gv, _mm256_add_ps(one, e));
    _mm256_storeu_ps(g + i, _mm256_mul_ps(s, _mm256_loadu_ps(u + i)));
  }
  if (i < len) scalar::swiglu(g + i, u + i, len - i);
}

AVX2_FN void geglu(float* g, const float* u, int64_t len) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 mc2 = _mm256_set1_ps(-2.0f * 0.7978845608028654f);
  const __m256 a = _mm256_set1_ps(0.044715f);
  int64_t i = 0;
  for (; i + 8 <= len; i += 8) {
    const __m256 v = _mm256_loadu_ps(g + i);
    // v / (1 + exp(-2z)), z = sqrt(2/pi) (v + 0.044715 v^3): as NaN-safe as swiglu.
    const __m256 z = _mm256_fmadd_ps(_mm256_mul_ps(a, v), _mm256_mul_ps(v, v), v);
    const __m256 e = simd::exp8(_mm256_mul_ps(mc2, z));
    const __m256 s = _mm256_div_ps(v, _mm256_add_ps(one, e));
    _mm256_storeu_ps(g + i, _mm256_mul_ps(s, _mm256_loadu_ps(u + i)));
  }
  if (i < len) scalar::geglu(g + i, u + i, len - i);
}

}  // namespace MLXK_SIMD_NS
}  // namespace mlxe

#else  // not x86-64: the AVX2 path does not exist

namespace mlxe {
namespace MLXK_SIMD_NS {
bool cpu_supported() { return false; }
size_t act_row_bytes(int, int64_t) { return 0; }
void quantize_act_row(int, const float*, int64_t, uint8_t*) {}
int row_tile(int, int64_t) { return 1; }
void compute_rows(const Problem&, int64_t, int64_t) {}
void swiglu(float* g, const float* u, int64_t len) { scalar::swiglu(g, u, len); }
void geglu(float* g, const float* u, int64_t len) { scalar::geglu(g, u, len); }
}  // namespace MLXK_SIMD_NS
}  // namespace mlxe

#endif
