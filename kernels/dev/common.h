// Dev-harness helpers: random GGUF blocks, timing.
#pragma once
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "mlx_engine_kernels.h"

struct TypeDesc {
  int id;
  const char* name;
  int block, bytes;
  int scale_offs[2];  // byte offsets of f16 scale fields in a block (-1: none)
};

static const TypeDesc kTypes[] = {
    {MLXK_TYPE_F32, "F32", 1, 4, {-1, -1}},       {MLXK_TYPE_F16, "F16", 1, 2, {-1, -1}},
    {MLXK_TYPE_BF16, "BF16", 1, 2, {-1, -1}},     {MLXK_TYPE_Q4_0, "Q4_0", 32, 18, {0, -1}},
    {MLXK_TYPE_Q4_1, "Q4_1", 32, 20, {0, 2}},     {MLXK_TYPE_Q5_0, "Q5_0", 32, 22, {0, -1}},
    {MLXK_TYPE_Q5_1, "Q5_1", 32, 24, {0, 2}},     {MLXK_TYPE_Q8_0, "Q8_0", 32, 34, {0, -1}},
    {MLXK_TYPE_Q4_K, "Q4_K", 256, 144, {0, 2}},   {MLXK_TYPE_Q5_K, "Q5_K", 256, 176, {0, 2}},
    {MLXK_TYPE_Q6_K, "Q6_K", 256, 210, {208, -1}},
};

inline const TypeDesc* find_type(const char* name) {
  for (auto& t : kTypes)
    if (!strcmp(t.name, name)) return &t;
  return nullptr;
}

// float -> IEEE half, round to nearest even, subnormals kept (real Q6_K scales are often subnormal).
inline uint16_t to_half(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const float a = std::fabs(f);
  if (a >= 65520.f) return (uint16_t)(sign | 0x7c00u);
  if (a < 6.103515625e-05f) {  // subnormal half: multiple of 2^-24
    const float q = std::nearbyint(a * 16777216.0f);
    return (uint16_t)(sign | (uint32_t)q);
  }
  const int exp = (int)((u >> 23) & 0xff) - 127 + 15;
  const uint32_t man = u & 0x7fffffu;
  uint32_t h = ((uint32_t)exp << 10) | (man >> 13);
  const uint32_t rem = man & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h += 1;
  return (uint16_t)(sign | h);
}

// Random, valid weight rows of `type` (n rows of k elements): random bytes with sane scales,
// magnitudes chosen so dequantized weights are O(0.01..0.1) like real models.
inline std::vector<uint8_t> random_weights(const TypeDesc& t, int64_t n, int64_t k, std::mt19937_64& rng) {
  const int64_t nb = n * (k / t.block);
  std::vector<uint8_t> w((size_t)(nb * t.bytes));
  for (auto& b : w) b = (uint8_t)rng();
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  if (t.id == MLXK_TYPE_F32) {
    float* f = (float*)w.data();
    for (int64_t i = 0; i < n * k; ++i) f[i] = 0.05f * u(rng);
    return w;
  }
  if (t.id == MLXK_TYPE_F16 || t.id == MLXK_TYPE_BF16) {
    uint16_t* h = (uint16_t*)w.data();
    for (int64_t i = 0; i < n * k; ++i) {
      float v = 0.05f * u(rng);
      if (t.id == MLXK_TYPE_F16) {
        h[i] = to_half(v);
      } else {
        uint32_t b;
        memcpy(&b, &v, 4);
        h[i] = (uint16_t)(b >> 16);
      }
    }
    return w;
  }
  // per-block scales: d in [0.5, 1.5] * base (signed for the symmetric formats)
  float base = 0.05f / 8;  // 4-bit
  if (t.id == MLXK_TYPE_Q8_0) base = 0.05f / 127;
  if (t.id == MLXK_TYPE_Q5_0 || t.id == MLXK_TYPE_Q5_1) base = 0.05f / 16;
  if (t.id == MLXK_TYPE_Q4_K || t.id == MLXK_TYPE_Q5_K) base = 0.05f / (8 * 32);
  if (t.id == MLXK_TYPE_Q6_K) base = 0.05f / (32 * 64);
  for (int64_t b = 0; b < nb; ++b) {
    uint8_t* blk = w.data() + b * t.bytes;
    for (int s = 0; s < 2; ++s) {
      if (t.scale_offs[s] < 0) continue;
      float v = base * (1.0f + 0.5f * u(rng));
      if (s == 1) v = (t.id == MLXK_TYPE_Q4_K || t.id == MLXK_TYPE_Q5_K) ? v * 0.5f : -0.04f * (0.5f + 0.5f * u(rng));
      if (s == 0 && t.id != MLXK_TYPE_Q4_K && t.id != MLXK_TYPE_Q5_K && t.id != MLXK_TYPE_Q4_1 &&
          t.id != MLXK_TYPE_Q5_1 && (rng() & 1))
        v = -v;
      uint16_t h = to_half(v);
      memcpy(blk + t.scale_offs[s], &h, 2);
    }
  }
  return w;
}

inline std::vector<float> random_acts(int64_t m, int64_t ld, std::mt19937_64& rng) {
  std::normal_distribution<float> g(0.f, 1.f);
  std::vector<float> x((size_t)(m * ld));
  for (auto& v : x) v = g(rng);
  // a few outliers like real hidden states
  for (int64_t i = 0; i < m * ld / 97; ++i) x[rng() % x.size()] *= 8.f;
  return x;
}

inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
