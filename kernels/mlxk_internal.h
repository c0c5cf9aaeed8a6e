// Internal declarations shared by the mlx-engine CPU kernels (not a public header).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#include "mlx_engine_kernels.h"

// MLXK_NO_SIMD: build only the scalar path (also used to compile-test non-x86 builds).
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(MLXK_NO_SIMD)
#define MLXK_X86 1
#else
#define MLXK_X86 0
#endif

namespace mlxe {

// ggml type ids (the subset we support): the public header's MLXK_TYPE_* under short names,
// so the ids are written once (tests/ggml_type_table.rs checks them against the Rust table).
enum GgmlType : int {
  T_F32 = MLXK_TYPE_F32,
  T_F16 = MLXK_TYPE_F16,
  T_Q4_0 = MLXK_TYPE_Q4_0,
  T_Q4_1 = MLXK_TYPE_Q4_1,
  T_Q5_0 = MLXK_TYPE_Q5_0,
  T_Q5_1 = MLXK_TYPE_Q5_1,
  T_Q8_0 = MLXK_TYPE_Q8_0,
  T_Q4_K = MLXK_TYPE_Q4_K,
  T_Q5_K = MLXK_TYPE_Q5_K,
  T_Q6_K = MLXK_TYPE_Q6_K,
  T_BF16 = MLXK_TYPE_BF16,
  // Load-time repacked layouts (repack.cpp): the ggml type id | kRepackedFlag.
  T_Q5_0_R8 = MLXK_TYPE_Q5_0 | MLXK_TYPE_REPACKED,
  T_Q8_0_R8 = MLXK_TYPE_Q8_0 | MLXK_TYPE_REPACKED,
};

// Or'ed into a ggml type id for rows rewritten by repack_row (MLXK_TYPE_REPACKED).
constexpr int kRepackedFlag = MLXK_TYPE_REPACKED;
constexpr bool is_repacked(int type) { return (type & kRepackedFlag) != 0; }
// The ggml type a (possibly repacked) type id stores.
constexpr int base_type(int type) { return type & ~kRepackedFlag; }

struct TypeInfo {
  int block;        // elements per block
  int bytes;        // bytes per block
  const char* name;
};

// Returns false for unsupported type ids. A repacked id has its ggml type's block and bytes.
bool type_info(int type, TypeInfo* out);

// ---- load-time repacking (repack.cpp; the layouts are described there) ----
// Whether the ggml type `type` has a repacked layout (Q5_0, Q8_0).
bool repack_supported(int type);
// One row of k elements of ggml type `type` into its repacked layout, and back. Same byte size;
// src and dst must not overlap.
void repack_row(int type, const uint8_t* src, int64_t k, uint8_t* dst);
void unpack_row(int type, const uint8_t* src, int64_t k, uint8_t* dst);

// ---- scalar number conversions (portable) ----
inline float f32_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t bits_from_f32(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
// IEEE half -> float, handles subnormals / inf / nan.
inline float half_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  uint32_t man = h & 0x3ffu;
  if (exp == 0) {
    if (man == 0) return f32_from_bits(sign);
    // subnormal: value = man * 2^-24
    float v = (float)man * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  if (exp == 31) return f32_from_bits(sign | 0x7f800000u | (man << 13));
  return f32_from_bits(sign | ((exp + 112) << 23) | (man << 13));
}
// float -> IEEE half, rounding to nearest even (as MLX's astype and F16C's vcvtps2ph do);
// overflow gives inf, NaN stays NaN.
inline uint16_t float_to_half(float f) {
  const uint32_t x = bits_from_f32(f);
  const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | (ax >> 13 & 0x3ffu) : 0u));
  if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // >= 65520 rounds past the largest half
  if (ax < 0x38800000u) {                                     // below 2^-14: a subnormal half or zero
    if (ax <= 0x33000000u) return sign;                       // <= 2^-25 rounds to zero (the tie is even)
    const uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;  // m * 2^(e-150) in units of 2^-24 is m >> shift
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), tie = 1u << (shift - 1);
    if (rem > tie || (rem == tie && (q & 1u))) ++q;
    return (uint16_t)(sign | q);
  }
  const uint32_t u = ax - (112u << 23);  // rebias the exponent from 127 to 15
  uint32_t h = u >> 13;
  const uint32_t rem = u & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is right
  return (uint16_t)(sign | h);
}
inline float bf16_to_float(uint16_t h) { return f32_from_bits((uint32_t)h << 16); }
inline uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Decode the 12 packed 6-bit (scale, min) pairs of a Q4_K / Q5_K super-block.
inline void kquant_scale_min(const uint8_t* s, uint8_t sc[8], uint8_t mn[8]) {
  for (int j = 0; j < 4; ++j) {
    sc[j] = s[j] & 63;
    mn[j] = s[j + 4] & 63;
  }
  for (int j = 4; j < 8; ++j) {
    sc[j] = (uint8_t)((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4));
    mn[j] = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
  }
}

// A growable 64-byte-aligned scratch buffer (kept per thread by its users); get() throws
// std::bad_alloc when the allocation fails.
struct AlignedScratch {
  uint8_t* p = nullptr;
  size_t cap = 0;
  AlignedScratch() = default;
  AlignedScratch(const AlignedScratch&) = delete;
  AlignedScratch& operator=(const AlignedScratch&) = delete;
  ~AlignedScratch() { std::free(p); }
  uint8_t* get(size_t n) {
    if (n > cap) {
      std::free(p);
      cap = (n + 4095) / 4096 * 4096;
      p = (uint8_t*)std::aligned_alloc(64, cap);
      if (!p) {
        cap = 0;
        throw std::bad_alloc();
      }
    }
    return p;
  }
};

// ---- the problem description handed to a kernel path ----
struct Problem {
  int type;
  int64_t n, k, m;
  const uint8_t* w;
  size_t row_bytes;  // bytes of one weight row
  const float* x;
  int64_t ldx;  // in floats
  float* y;
  int64_t ldy;  // in floats
  // quantized activations (AVX2 path, quantized types only)
  const uint8_t* xq;
  size_t xq_stride;  // bytes between quantized activation rows
};

// Activation rows from which the quantized types run the panel GEMMs (the 256-bit panels of
// quant_avx2.cpp and the zmm kernels); below it, tiles of one weight row at a time against up
// to 4 activation rows, so the weights stream from memory once, in order, as in the GEMV.
// MLX_ENGINE_PANEL_MIN_ROWS, default 9 (qmatmul.cpp; kernels/README.md has the measurements).
int64_t panel_min_rows();
// The same for the K-quants (Q4_K, Q5_K, Q6_K): MLX_ENGINE_KQ_PANEL_MIN_ROWS, default 32 on
// AVX-512 VNNI hosts (their one-row tiles take 8 activation rows per decode), else
// panel_min_rows().
int64_t kq_panel_min_rows();

// ---- scalar reference path (quant_scalar.cpp) ----
namespace scalar {
// Dequantize one row of k elements (k a multiple of the block size).
void dequantize_row(int type, const uint8_t* row, int64_t k, float* out);
// y[m, n0:n1] for all m: dequantize each weight row, dot in f32 blocks / f64 total.
void compute_rows(const Problem& p, int64_t n0, int64_t n1);
// g[i] = silu(g[i]) * u[i] for i < len, silu(v) = v / (1 + exp(-v)) with std::exp.
void swiglu(float* g, const float* u, int64_t len);
// g[i] = gelu(g[i]) * u[i], gelu(v) = v / 2 * (1 + tanh(sqrt(2/pi) * (v + 0.044715 v^3))).
void geglu(float* g, const float* u, int64_t len);
}  // namespace scalar

// ---- AVX2 path (quant_avx2.cpp); only meaningful on x86-64 with avx2+fma+f16c ----
namespace avx2 {
bool cpu_supported();
// Bytes of one quantized activation row for this weight type (0: float activations).
size_t act_row_bytes(int type, int64_t k);
// Quantize activation row x[0:k] into dst (act_row_bytes bytes, 32-byte aligned).
void quantize_act_row(int type, const float* x, int64_t k, uint8_t* dst);
// Row tile granularity preferred for splitting work.
int row_tile(int type, int64_t m);
void compute_rows(const Problem& p, int64_t n0, int64_t n1);
// scalar::swiglu with a vectorized exp (within ~2 ulp of std::exp; same inf/NaN behaviour).
void swiglu(float* g, const float* u, int64_t len);
// scalar::geglu, vectorized the same way.
void geglu(float* g, const float* u, int64_t len);
}  // namespace avx2

// ---- the AVX2 path with AVX-512 VNNI dot products (quant_vnni.cpp): same results ----
namespace vnni {
// avx2 + fma + f16c + avx512f/bw/vl/vnni.
bool cpu_supported();
void compute_rows(const Problem& p, int64_t n0, int64_t n1);
}  // namespace vnni

// ---- AVX-512 (zmm) kernels for M >= 9 activation rows (quant_zmm.cpp), on the VNNI path ----
namespace zmm {
// avx2 + fma + f16c + avx512f/bw/vl/dq/vnni.
bool cpu_supported();
// Whether the (possibly repacked) weight type has a zmm kernel: every 32-block type and K-quant.
bool supports(int type);
// Bytes of one activation row in the zmm format (the same for every weight type).
size_t act_row_bytes(int64_t k);
// Quantize activation row x[0:k] into dst (act_row_bytes bytes).
void quantize_act_row(const float* x, int64_t k, uint8_t* dst);
// Weight rows per panel (the row split's granularity).
int row_tile();
// y[m, n0:n1] for all m, activations in p.xq in the zmm format.
void compute_rows(const Problem& p, int64_t n0, int64_t n1);
}  // namespace zmm

// ---- multi-weight entry (qmatmul.cpp) ----
// One weight of a fused call: `n` rows of GGUF blocks of `type` at `w`, optional f32 bias [n].
struct MultiWeight {
  const void* w;
  int type;
  int64_t n;
  const float* bias;  // nullptr: none
};
constexpr int kMaxMultiWeights = 4;
// Validates count (1..kMaxMultiWeights), the epilogue (MLXK_EPILOGUE_*), its rules (SWIGLU:
// exactly 2 weights of the same n, no bias) and each (type, n, k). Pointers are not checked.
int validate_multi(const MultiWeight* ws, int count, int64_t k, int epilogue);
// x [m, k] (row stride ldx) times every weight. NONE: ys[i] = x . W_i^T + bias_i, [m, n_i]
// contiguous. SWIGLU: ys[0] = silu(x . W_0^T) * (x . W_1^T), [m, n] contiguous. Activations
// are quantized once per format; one parallel_run covers the row chunks of all weights.
int qmatmul_multi_checked(const float* x, int64_t m, int64_t ldx, int64_t k, const MultiWeight* ws, int count,
                          int epilogue, float* const* ys);

// ---- thread pool (threadpool.cpp) ----
// fn(ctx) is run on up to `max_threads` threads (the caller included); each participant
// pulls work itself (dynamic scheduling), so late or absent workers are harmless.
void parallel_run(void (*fn)(void*), void* ctx, int max_threads);
int pool_num_threads();
void pool_set_num_threads(int n);

}  // namespace mlxe
