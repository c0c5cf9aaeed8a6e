// Scalar reference path: dequantize GGUF blocks to f32 and take f32/f64 dot products.
// Block layouts follow the ggml formats (see the gguf Python package's quants.py).
#include <cmath>
#include <vector>

#include "mlxk_internal.h"

namespace mlxe {

bool type_info(int type, TypeInfo* out) {
  TypeInfo t{};
  if (is_repacked(type)) {
    if (!repack_supported(base_type(type))) return false;
    switch (base_type(type)) {
      case T_Q5_0: t = {32, 22, "Q5_0 (repacked)"}; break;
      default: t = {32, 34, "Q8_0 (repacked)"}; break;
    }
    if (out) *out = t;
    return true;
  }
  switch (type) {
    case T_F32: t = {1, 4, "F32"}; break;
    case T_F16: t = {1, 2, "F16"}; break;
    case T_BF16: t = {1, 2, "BF16"}; break;
    case T_Q4_0: t = {32, 18, "Q4_0"}; break;
    case T_Q4_1: t = {32, 20, "Q4_1"}; break;
    case T_Q5_0: t = {32, 22, "Q5_0"}; break;
    case T_Q5_1: t = {32, 24, "Q5_1"}; break;
    case T_Q8_0: t = {32, 34, "Q8_0"}; break;
    case T_Q4_K: t = {256, 144, "Q4_K"}; break;
    case T_Q5_K: t = {256, 176, "Q5_K"}; break;
    case T_Q6_K: t = {256, 210, "Q6_K"}; break;
    default: return false;
  }
  if (out) *out = t;
  return true;
}

namespace scalar {
namespace {

// Q4_0: f16 d | 16 bytes; element j = low nibble of qs[j], element j+16 = high nibble.
void deq_q4_0(const uint8_t* b, float* o) {
  const float d = half_to_float(load_u16(b));
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    o[j] = d * (float)((qs[j] & 0x0f) - 8);
    o[j + 16] = d * (float)((qs[j] >> 4) - 8);
  }
}
// Q4_1: f16 d | f16 m | 16 bytes; value = d*q + m.
void deq_q4_1(const uint8_t* b, float* o) {
  const float d = half_to_float(load_u16(b));
  const float m = half_to_float(load_u16(b + 2));
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    o[j] = d * (float)(qs[j] & 0x0f) + m;
    o[j + 16] = d * (float)(qs[j] >> 4) + m;
  }
}
// Q5_0: f16 d | u32 high bits (bit i -> element i) | 16 bytes of low nibbles; value = d*(q-16).
void deq_q5_0(const uint8_t* b, float* o) {
  const float d = half_to_float(load_u16(b));
  const uint32_t qh = load_u32(b + 2);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0f) | (int)(((qh >> j) & 1u) << 4);
    const int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
    o[j] = d * (float)(lo - 16);
    o[j + 16] = d * (float)(hi - 16);
  }
}
// Q5_1: f16 d | f16 m | u32 high bits | 16 bytes; value = d*q + m.
void deq_q5_1(const uint8_t* b, float* o) {
  const float d = half_to_float(load_u16(b));
  const float m = half_to_float(load_u16(b + 2));
  const uint32_t qh = load_u32(b + 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0f) | (int)(((qh >> j) & 1u) << 4);
    const int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
    o[j] = d * (float)lo + m;
    o[j + 16] = d * (float)hi + m;
  }
}
// Q8_0: f16 d | 32 int8.
void deq_q8_0(const uint8_t* b, float* o) {
  const float d = half_to_float(load_u16(b));
  const int8_t* qs = (const int8_t*)(b + 2);
  for (int j = 0; j < 32; ++j) o[j] = d * (float)qs[j];
}
// Q4_K: f16 d | f16 dmin | 12 bytes packed 6-bit scales/mins | 128 bytes of nibbles.
// Sub-block j (32 elements) uses byte group j/2, low nibble when j is even.
void deq_q4_K(const uint8_t* b, float* o) {
  const float d = half_to_float(load_u16(b));
  const float dmin = half_to_float(load_u16(b + 2));
  uint8_t sc[8], mn[8];
  kquant_scale_min(b + 4, sc, mn);
  const uint8_t* qs = b + 16;
  for (int j = 0; j < 8; ++j) {
    const float ds = d * (float)sc[j], dm = dmin * (float)mn[j];
    const uint8_t* q = qs + 32 * (j / 2);
    const int shift = (j & 1) * 4;
    for (int l = 0; l < 32; ++l) o[32 * j + l] = ds * (float)((q[l] >> shift) & 0x0f) - dm;
  }
}
// Q5_K: f16 d | f16 dmin | 12 bytes scales | 32 bytes high bits | 128 bytes nibbles.
// Element l of sub-block j takes its 5th bit from bit j of qh[l].
void deq_q5_K(const uint8_t* b, float* o) {
  const float d = half_to_float(load_u16(b));
  const float dmin = half_to_float(load_u16(b + 2));
  uint8_t sc[8], mn[8];
  kquant_scale_min(b + 4, sc, mn);
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + 48;
  for (int j = 0; j < 8; ++j) {
    const float ds = d * (float)sc[j], dm = dmin * (float)mn[j];
    const uint8_t* q = qs + 32 * (j / 2);
    const int shift = (j & 1) * 4;
    for (int l = 0; l < 32; ++l) {
      const int v = ((q[l] >> shift) & 0x0f) | (((qh[l] >> j) & 1) << 4);
      o[32 * j + l] = ds * (float)v - dm;
    }
  }
}
// Q6_K: 128 bytes low nibbles | 64 bytes 2-bit highs | 16 int8 scales | f16 d.
// Half h (128 elements), chunk s (32 elements), lane l:
//   low 4 bits: ql[64h + 32*(s&1) + l] nibble (s>>1); high 2 bits: qh[32h + l] bits 2s..2s+1.
void deq_q6_K(const uint8_t* b, float* o) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = (const int8_t*)(b + 192);
  const float d = half_to_float(load_u16(b + 208));
  for (int h = 0; h < 2; ++h) {
    for (int s = 0; s < 4; ++s) {
      for (int l = 0; l < 32; ++l) {
        const int lo = (ql[64 * h + 32 * (s & 1) + l] >> (4 * (s >> 1))) & 0x0f;
        const int hi = (qh[32 * h + l] >> (2 * s)) & 3;
        const int e = 128 * h + 32 * s + l;
        o[e] = d * (float)sc[e / 16] * (float)((lo | (hi << 4)) - 32);
      }
    }
  }
}

typedef void (*DeqFn)(const uint8_t*, float*);

DeqFn deq_fn(int type) {
  switch (type) {
    case T_Q4_0: return deq_q4_0;
    case T_Q4_1: return deq_q4_1;
    case T_Q5_0: return deq_q5_0;
    case T_Q5_1: return deq_q5_1;
    case T_Q8_0: return deq_q8_0;
    case T_Q4_K: return deq_q4_K;
    case T_Q5_K: return deq_q5_K;
    case T_Q6_K: return deq_q6_K;
    default: return nullptr;
  }
}

// f32 partial sums over blocks of 32 (8 independent lanes), accumulated in f64.
double dot_f32(const float* a, const float* b, int64_t k) {
  double total = 0.0;
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int j = 0; j < 32; j += 8)
      for (int l = 0; l < 8; ++l) acc[l] += a[i + j + l] * b[i + j + l];
    total += (double)(((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])));
  }
  for (; i < k; ++i) total += (double)a[i] * (double)b[i];
  return total;
}

}  // namespace

void dequantize_row(int type, const uint8_t* row, int64_t k, float* out) {
  if (is_repacked(type)) {
    TypeInfo ti;
    if (!type_info(type, &ti)) return;
    thread_local std::vector<uint8_t> plain;
    plain.resize((size_t)(k / ti.block) * ti.bytes);
    unpack_row(base_type(type), row, k, plain.data());
    dequantize_row(base_type(type), plain.data(), k, out);
    return;
  }
  switch (type) {
    case T_F32: std::memcpy(out, row, (size_t)k * 4); return;
    case T_F16:
      for (int64_t i = 0; i < k; ++i) out[i] = half_to_float(load_u16(row + 2 * i));
      return;
    case T_BF16:
      for (int64_t i = 0; i < k; ++i) out[i] = bf16_to_float(load_u16(row + 2 * i));
      return;
    default: break;
  }
  TypeInfo ti;
  if (!type_info(type, &ti)) return;
  DeqFn f = deq_fn(type);
  const int64_t nb = k / ti.block;
  for (int64_t b = 0; b < nb; ++b) f(row + (size_t)b * ti.bytes, out + b * ti.block);
}

void compute_rows(const Problem& p, int64_t n0, int64_t n1) {
  thread_local std::vector<float> buf;
  if ((int64_t)buf.size() < p.k) buf.resize((size_t)p.k);
  float* wr = buf.data();
  for (int64_t n = n0; n < n1; ++n) {
    dequantize_row(p.type, p.w + (size_t)n * p.row_bytes, p.k, wr);
    for (int64_t m = 0; m < p.m; ++m) p.y[m * p.ldy + n] = (float)dot_f32(wr, p.x + m * p.ldx, p.k);
  }
}

void swiglu(float* g, const float* u, int64_t len) {
  for (int64_t i = 0; i < len; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void geglu(float* g, const float* u, int64_t len) {
  // (1 + tanh(z)) / 2 = 1 / (1 + exp(-2z))
  const float c2 = 2.0f * 0.7978845608028654f;
  for (int64_t i = 0; i < len; ++i) {
    const float v = g[i];
    g[i] = v / (1.0f + std::exp(-c2 * (v + 0.044715f * v * v * v))) * u[i];
  }
}

}  // namespace scalar
}  // namespace mlxe
