// AVX2 + FMA (+F16C) kernels for y = x . W^T with W in GGUF block formats.
//
// Activations are quantized once per call to int8:
//   * 32-element blocks (for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0): per row [int8 q[K]][f32 d[K/32]][f32 s[K/32]]
//     with s = d * sum(q) / 8 (the "min" term of Q4_1/Q5_1 is folded in as 8 equal lanes).
//   * 256-element super-blocks (for Q4_K/Q5_K/Q6_K): per row [int8 q[K]][f32 d[K/256]][i16 bsum[K/16]].
// Weights are decoded to bytes in registers and multiplied with _mm256_maddubs_epi16
// (unsigned weights x signed activations; signed weights use the abs/sign trick), summed
// with _mm256_madd_epi16 (by 1 or by the K-quant sub-block scale) and accumulated in f32.
//
// Every function that uses AVX2 intrinsics carries the target attribute, so this file is
// compiled without -mavx2 and the code is only entered after a runtime CPU check.
#include "mlxe_internal.h"

#if MLXE_X86
#include <immintrin.h>

#define AVX2_FN __attribute__((target("avx2,fma,f16c")))
#define AVX2_INL static inline __attribute__((always_inline, target("avx2,fma,f16c")))

namespace mlxe {
namespace avx2 {

bool cpu_supported() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
  }();
  return ok;
}

namespace {

constexpr int RMAX = 4;  // weight rows per tile (max)
constexpr int CMAX = 4;  // activation rows per tile (max)

inline size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

bool is_kquant(int t) { return t == T_Q4_K || t == T_Q5_K || t == T_Q6_K; }
bool is_float(int t) { return t == T_F32 || t == T_F16 || t == T_BF16; }

// ------------------------------------------------------------------ helpers
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

// 16 bytes of nibbles -> 32 bytes: [low nibbles of bytes 0..15 | high nibbles of bytes 0..15]
AVX2_INL __m256i nibbles32(const uint8_t* p) {
  const __m128i v = _mm_loadu_si128((const __m128i*)p);
  const __m256i b = _mm256_set_m128i(_mm_srli_epi16(v, 4), v);
  return _mm256_and_si256(b, _mm256_set1_epi8(0x0f));
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
    sv[b] = d * (float)sum * 0.125f;
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
template <int TYPE>
struct B32;
template <>
struct B32<T_Q4_0> {
  static constexpr int bytes = 18;
  static constexpr bool is_signed = true, has_min = false;
  AVX2_INL __m256i decode(const uint8_t* b) { return _mm256_sub_epi8(nibbles32(b + 2), _mm256_set1_epi8(8)); }
};
template <>
struct B32<T_Q4_1> {
  static constexpr int bytes = 20;
  static constexpr bool is_signed = false, has_min = true;
  AVX2_INL __m256i decode(const uint8_t* b) { return nibbles32(b + 4); }
};
template <>
struct B32<T_Q5_0> {
  static constexpr int bytes = 22;
  static constexpr bool is_signed = true, has_min = false;
  AVX2_INL __m256i decode(const uint8_t* b) {
    const __m256i q = _mm256_or_si256(nibbles32(b + 6), bits32_to_0x10(load_u32(b + 2)));
    return _mm256_sub_epi8(q, _mm256_set1_epi8(16));
  }
};
template <>
struct B32<T_Q5_1> {
  static constexpr int bytes = 24;
  static constexpr bool is_signed = false, has_min = true;
  AVX2_INL __m256i decode(const uint8_t* b) {
    return _mm256_or_si256(nibbles32(b + 8), bits32_to_0x10(load_u32(b + 4)));
  }
};
template <>
struct B32<T_Q8_0> {
  static constexpr int bytes = 34;
  static constexpr bool is_signed = true, has_min = false;
  AVX2_INL __m256i decode(const uint8_t* b) { return _mm256_loadu_si256((const __m256i*)(b + 2)); }
};

template <int TYPE, int R, int C>
AVX2_FN void tile_b32(const uint8_t* w, size_t ws, const uint8_t* const* xa, int64_t k, float* y, int64_t ldy) {
  typedef B32<TYPE> F;
  const int64_t nb = k / 32;
  const int8_t* xq[C];
  const float* xd[C];
  const float* xs[C];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) {
    xq[c] = (const int8_t*)xa[c];
    xd[c] = (const float*)(xa[c] + k);
    xs[c] = xd[c] + nb;
  }
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();

  for (int64_t b = 0; b < nb; ++b) {
    __m256i wq[R], wu[R];
    __m256 dw[R], mw[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const uint8_t* blk = w + r * ws + b * F::bytes;
      dw[r] = _mm256_set1_ps(half(blk));
      if constexpr (F::has_min) mw[r] = _mm256_set1_ps(half(blk + 2));
      wq[r] = F::decode(blk);
      if constexpr (F::is_signed) wu[r] = _mm256_sign_epi8(wq[r], wq[r]);
    }
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      const __m256i xv = _mm256_load_si256((const __m256i*)(xq[c] + 32 * b));
      const __m256 dx = _mm256_set1_ps(xd[c][b]);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        __m256i p;
        if constexpr (F::is_signed)
          p = _mm256_maddubs_epi16(wu[r], _mm256_sign_epi8(xv, wq[r]));
        else
          p = _mm256_maddubs_epi16(wq[r], xv);
        const __m256 f = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
        acc[r][c] = _mm256_fmadd_ps(f, _mm256_mul_ps(dw[r], dx), acc[r][c]);
        if constexpr (F::has_min) acc[r][c] = _mm256_fmadd_ps(mw[r], _mm256_set1_ps(xs[c][b]), acc[r][c]);
      }
    }
  }
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c)
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) y[c * ldy + r] = hsum_ps(acc[r][c]);
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

template <int TYPE, int R, int C>
AVX2_FN void tile_q45k(const uint8_t* w, size_t ws, const uint8_t* const* xa, int64_t k, float* y, int64_t ldy) {
  constexpr bool Q5 = TYPE == T_Q5_K;
  constexpr int BYTES = Q5 ? 176 : 144;
  constexpr int QS = Q5 ? 48 : 16;
  const int64_t nsb = k / 256;
  const int8_t* xq[C];
  const float* xd[C];
  const int16_t* xb[C];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) {
    xq[c] = (const int8_t*)xa[c];
    xd[c] = (const float*)(xa[c] + k);
    xb[c] = (const int16_t*)(xa[c] + k + 4 * nsb);
  }
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
          iacc[r][c] = _mm256_add_epi32(iacc[r][c], _mm256_madd_epi16(_mm256_maddubs_epi16(wv[r], xv), sv[r]));
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
  const int8_t* xq[C];
  const float* xd[C];
  const int16_t* xb[C];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) {
    xq[c] = (const int8_t*)xa[c];
    xd[c] = (const float*)(xa[c] + k);
    xb[c] = (const int16_t*)(xa[c] + k + 4 * nsb);
  }
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
          iacc[r][c] = _mm256_add_epi32(iacc[r][c], _mm256_madd_epi16(_mm256_maddubs_epi16(wv[r], xv), sv[r]));
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
  if constexpr (TYPE == T_Q4_K || TYPE == T_Q5_K)
    tile_q45k<TYPE, R, C>(w, ws, xa, k, y, ldy);
  else if constexpr (TYPE == T_Q6_K)
    tile_q6k<R, C>(w, ws, xa, k, y, ldy);
  else if constexpr (TYPE == T_F32 || TYPE == T_F16 || TYPE == T_BF16)
    tile_float<TYPE, R, C>(w, ws, xa, k, y, ldy);
  else
    tile_b32<TYPE, R, C>(w, ws, xa, k, y, ldy);
}

#define MLXE_TROW(T, R) {&tile<T, R, 1>, &tile<T, R, 2>, &tile<T, R, 3>, &tile<T, R, 4>}
#define MLXE_TTAB(T) \
  {MLXE_TROW(T, 1), MLXE_TROW(T, 2), MLXE_TROW(T, 3), MLXE_TROW(T, 4)}

struct Table {
  TileFn f[RMAX][CMAX];
};
const Table kTables[] = {
    {MLXE_TTAB(T_F32)},  {MLXE_TTAB(T_F16)},  {MLXE_TTAB(T_BF16)}, {MLXE_TTAB(T_Q4_0)},
    {MLXE_TTAB(T_Q4_1)}, {MLXE_TTAB(T_Q5_0)}, {MLXE_TTAB(T_Q5_1)}, {MLXE_TTAB(T_Q8_0)},
    {MLXE_TTAB(T_Q4_K)}, {MLXE_TTAB(T_Q5_K)}, {MLXE_TTAB(T_Q6_K)},
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
    default: return nullptr;
  }
}

// Tile shape (rows R, activation rows C) per type for GEMV (m == 1) and GEMM.
void tile_shape(int type, int64_t m, int* R, int* C) {
  if (m == 1) {
    *R = 4;
    *C = 1;
    return;
  }
  (void)type;
  *R = 4;
  *C = m >= 2 ? 2 : 1;
}

}  // namespace

size_t act_row_bytes(int type, int64_t k) {
  if (is_float(type)) return 0;
  if (is_kquant(type)) return round_up((size_t)k + 4 * (size_t)(k / 256) + 2 * (size_t)(k / 16), 64);
  return round_up((size_t)k + 8 * (size_t)(k / 32), 64);
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
  const Table* t = table_for(p.type);
  if (!t) return;
  int R, C;
  tile_shape(p.type, p.m, &R, &C);
  const bool fl = is_float(p.type);
  const uint8_t* xa[CMAX];
  for (int64_t r0 = n0; r0 < n1; r0 += R) {
    const int rr = (int)((n1 - r0) < R ? (n1 - r0) : R);
    const uint8_t* wr = p.w + (size_t)r0 * p.row_bytes;
    for (int64_t m0 = 0; m0 < p.m; m0 += C) {
      const int cc = (int)((p.m - m0) < C ? (p.m - m0) : C);
      for (int c = 0; c < cc; ++c)
        xa[c] = fl ? (const uint8_t*)(p.x + (m0 + c) * p.ldx) : p.xq + (size_t)(m0 + c) * p.xq_stride;
      t->f[rr - 1][cc - 1](wr, p.row_bytes, xa, p.k, p.y + m0 * p.ldy + r0, p.ldy);
    }
  }
}

}  // namespace avx2
}  // namespace mlxe

#else  // not x86-64: the AVX2 path does not exist

namespace mlxe {
namespace avx2 {
bool cpu_supported() { return false; }
size_t act_row_bytes(int, int64_t) { return 0; }
void quantize_act_row(int, const float*, int64_t, uint8_t*) {}
int row_tile(int, int64_t) { return 1; }
void compute_rows(const Problem&, int64_t, int64_t) {}
}  // namespace avx2
}  // namespace mlxe

#endif
