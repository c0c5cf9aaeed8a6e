/*
 * mlx-engine CPU kernels: quantized matrix multiply over raw GGUF (ggml) blocks.
 *
 *   y[M, N] = x[M, K] . W[N, K]^T
 *
 * W is read in place (e.g. from a memory-mapped GGUF file): N rows, each row K elements
 * stored as K / block_size consecutive ggml blocks, rows contiguous (row stride =
 * mlxk_row_bytes(type, K)). x and y are f32, row-major with the given row strides
 * (in elements). The output is written, not accumulated.
 *
 * Thread safety: all functions may be called from any thread. Concurrent matmul calls are
 * correct; only one at a time uses the thread pool, the others run on their own thread.
 */
#ifndef MLX_ENGINE_KERNELS_H
#define MLX_ENGINE_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ggml type ids accepted by the kernels. */
enum mlxk_ggml_type {
  MLXK_TYPE_F32 = 0,
  MLXK_TYPE_F16 = 1,
  MLXK_TYPE_Q4_0 = 2,
  MLXK_TYPE_Q4_1 = 3,
  MLXK_TYPE_Q5_0 = 6,
  MLXK_TYPE_Q5_1 = 7,
  MLXK_TYPE_Q8_0 = 8,
  MLXK_TYPE_Q4_K = 12,
  MLXK_TYPE_Q5_K = 13,
  MLXK_TYPE_Q6_K = 14,
  MLXK_TYPE_BF16 = 30
};

/* Or'ed into a type id (e.g. MLXK_TYPE_Q5_0 | MLXK_TYPE_REPACKED) for rows that
 * mlxk_repack_rows rewrote into the kernels' own layout for that type: same bytes per row,
 * read with fewer instructions. Every function taking a type id accepts these ids. */
#define MLXK_TYPE_REPACKED 0x100

/* Return codes (0 = success). mlxk_last_error() describes the last failure on this thread. */
enum mlxk_status {
  MLXK_OK = 0,
  MLXK_ERR_INTERNAL = 1,  /* C++ exception / allocation failure / MLX error */
  MLXK_ERR_BAD_TYPE = 2,  /* unsupported ggml type id */
  MLXK_ERR_BAD_SHAPE = 3, /* K not a multiple of the block size, negative sizes, shape mismatch */
  MLXK_ERR_BAD_ARG = 4    /* null pointer, row stride smaller than the row */
};

/* What a fused multi-weight call (mlxk_gguf_qmatmul_multi) does after the matmuls. */
enum mlxk_epilogue {
  MLXK_EPILOGUE_NONE = 0,  /* one output per weight: x . W_i^T (+ bias_i) */
  MLXK_EPILOGUE_SWIGLU = 1, /* two weights (gate, up) of the same N, no bias, one output:
                               silu(x . W_0^T) * (x . W_1^T), silu(g) = g / (1 + exp(-g)) */
  MLXK_EPILOGUE_GEGLU = 2   /* as SWIGLU with GELU (tanh approximation) for silu:
                               gelu(g) = g / 2 * (1 + tanh(sqrt(2/pi) * (g + 0.044715 g^3))) */
};

/* Most weights one fused call takes. */
#define MLXK_MAX_MULTI_WEIGHTS 4

/* Kernel paths. MLXK_PATH_AVX512_VNNI is the AVX2 path with its int8 dot products on AVX-512
 * VNNI (vpdpbusd on 256-bit registers): the same results, bit for bit. */
enum mlxk_path {
  MLXK_PATH_AUTO = -1,
  MLXK_PATH_SCALAR = 0,
  MLXK_PATH_AVX2 = 1,
  MLXK_PATH_AVX512_VNNI = 2
};

/* y[m*y_row_stride + n] = sum_k x[m*x_row_stride + k] * W[n, k]  for m < M, n < N. */
int mlxk_qmatmul_f32(const void* w, int ggml_type, int64_t n, int64_t k, const float* x, int64_t m,
                     int64_t x_row_stride, float* y, int64_t y_row_stride);

/* Dequantize `rows` consecutive rows of K elements into out[rows, K] (f32, row-major). */
int mlxk_dequantize_rows(const void* w, int ggml_type, int64_t rows, int64_t k, float* out);

/* Bytes of one row of K elements of this type (K must be a multiple of the block size). */
int mlxk_row_bytes(int ggml_type, int64_t k, int64_t* out);

/* 1 if ggml_type has a repacked layout (Q5_0, Q8_0), else 0. */
int mlxk_repack_supported(int ggml_type);

/* Copy N rows of K elements of ggml_type from src to dst (N * row_bytes bytes each, not
 * overlapping), rewriting them into the repacked layout where the type has one. *out_type is
 * the id to multiply dst with: ggml_type | MLXK_TYPE_REPACKED, or ggml_type for a plain copy.
 * Uses the thread pool. */
int mlxk_repack_rows(const void* src, int ggml_type, int64_t n, int64_t k, void* dst, int* out_type);

/* Elements per block (1 for F32/F16/BF16); 0 for an unsupported type. */
int mlxk_block_size(int ggml_type);

/* Message of the last error on the calling thread ("" if none). Valid until the next call. */
const char* mlxk_last_error(void);

/* The path used now: MLXK_PATH_SCALAR, MLXK_PATH_AVX2 or MLXK_PATH_AVX512_VNNI. */
int mlxk_kernel_path(void);

/* Force a path (tests): MLXK_PATH_SCALAR, MLXK_PATH_AVX2 (-> scalar if the CPU lacks
 * avx2/fma/f16c), MLXK_PATH_AVX512_VNNI (-> AVX2 if it lacks avx512f/bw/vl/vnni), or
 * MLXK_PATH_AUTO to return to the default (env MLX_ENGINE_KERNEL=scalar|avx2, else the best
 * the CPU supports). Process-wide. */
void mlxk_force_path(int path);

/* Threads used by one matmul (the calling thread included). Default: hardware concurrency,
 * or env MLX_ENGINE_THREADS. n < 1 is treated as 1. */
void mlxk_set_num_threads(int n);
int mlxk_get_num_threads(void);

/* Keeps freed memory in the process's heap for reuse instead of returning it to the system
 * (glibc: large mmap and trim thresholds). A training step frees and reallocates the same
 * large buffers every step; fresh pages from the system would be zeroed each time. */
void mlxk_retain_freed_memory(void);

#ifndef MLXK_NO_MLX_C
#include "mlx/c/array.h"
#include "mlx/c/stream.h"

/* A weight as an MLX array: *res = a new uint8 [N, row_bytes] array holding N rows of K
 * elements of ggml_type copied from src (host memory, e.g. a memory-mapped GGUF file), in the
 * repacked layout where the type has one (see mlxk_repack_rows); *out_type is the id to
 * multiply it with. One copy, no intermediate buffer. Consecutive calls place their arrays
 * one after the other in a weight arena (see mlxk_weight_arena_bytes). Returns 0 on success, 1 on error
 * (message in mlxk_last_error()). */
int mlxk_weight_array(mlx_array* res, const void* src, int ggml_type, int64_t n, int64_t k, int* out_type);

/* Bytes mapped now for the arrays of mlxk_weight_array. They live outside MLX's allocator (in
 * 2 MiB-aligned mappings advised to use transparent huge pages; env MLX_ENGINE_HUGEPAGES=0
 * drops the advice), so MLX's memory statistics do not count them. */
int64_t mlxk_weight_arena_bytes(void);

/* MLX graph op (custom primitive "GgufQMatmul", CPU streams only):
 *   x: [..., M, K] float32 / float16 / bfloat16 (any strides; converted / made contiguous)
 *   w: uint8 [N, row_bytes] (or any uint8 array of N*row_bytes elements), raw GGUF blocks
 *   *res = [..., M, N] float32.
 * Returns 0 on success, 1 on error (message in mlxk_last_error()). *res follows mlx-c
 * conventions: create it with mlx_array_new() and free it with mlx_array_free(). */
int mlxk_gguf_qmatmul(mlx_array* res, const mlx_array x, const mlx_array w, int ggml_type, int64_t n,
                      int64_t k, const mlx_stream s);

/* *res = a . b over the last two axes in float32 (a [..., M, K], b [..., K, N], the leading
 * axes equal; other float types are converted): our threaded AVX2 product, differentiable by
 * MLX's autodiff, for the small dense products of training (attention, LoRA). CPU streams only.
 * Returns 0 on success, 1 on error (message in mlxk_last_error()). */
int mlxk_matmul_f32(mlx_array* res, const mlx_array a, const mlx_array b, const mlx_stream s);

/* *res = the weighted cross-entropy per row, w[m] * (logsumexp(z[m]) - z[m, t[m]]) for logits
 * z [M, V], integer targets t [M] and weights w [M] ([M] float32; a target outside [0, V) gives
 * NaN): the training loss, differentiable with respect to z by MLX's autodiff (one fused pass
 * each way). CPU streams only. Returns 0 on success, 1 on error (message in mlxk_last_error()). */
int mlxk_cross_entropy(mlx_array* res, const mlx_array logits, const mlx_array targets, const mlx_array weights,
                       const mlx_stream s);

/* mlxk_gguf_qmatmul followed by a residual add in the same op: *res = x . w^T + residual, with
 * residual of the output's shape [..., M, N] (float32 / float16 / bfloat16, any strides).
 * residual.ctx == NULL: no add. */
int mlxk_gguf_qmatmul_add(mlx_array* res, const mlx_array x, const mlx_array w, const mlx_array residual,
                          int ggml_type, int64_t n, int64_t k, const mlx_stream s);

/* Fused MLX graph op (custom multi-output primitive "GgufQMatmulMulti", CPU streams only):
 * `count` (1..MLXK_MAX_MULTI_WEIGHTS) projections of the same x in one kernel call, which
 * quantizes x once per activation format and splits the rows of all weights over one
 * parallel run.
 *   x: [..., M, K] float32 / float16 / bfloat16, handled as in mlxk_gguf_qmatmul
 *   ws[i]: uint8 [ns[i], row_bytes(types[i], K)] raw GGUF blocks of ggml type types[i]
 *   biases: NULL, or `count` handles where .ctx == NULL means no bias for that weight and
 *     otherwise a float32 / float16 / bfloat16 array of ns[i] elements (any shape / strides)
 *   epilogue MLXK_EPILOGUE_NONE: res[i] = x . ws[i]^T + biases[i], [..., M, ns[i]] float32,
 *     for i < count;
 *   epilogue MLXK_EPILOGUE_SWIGLU: count == 2, ns[0] == ns[1], no biases;
 *     res[0] = silu(x . ws[0]^T) * (x . ws[1]^T), [..., M, ns[0]] float32.
 *   epilogue MLXK_EPILOGUE_GEGLU: as SWIGLU with gelu (tanh approximation) for silu.
 * The results are siblings: evaluating one computes all. Returns 0 on success, 1 on error
 * (message in mlxk_last_error(); nothing is written to res). Each res[i] follows mlx-c
 * conventions: create it with mlx_array_new() and free it with mlx_array_free(). */
int mlxk_gguf_qmatmul_multi(mlx_array* res, const mlx_array x, const mlx_array* ws, const int* types,
                            const int64_t* ns, const mlx_array* biases, int count, int64_t k, int epilogue,
                            const mlx_stream s);

/* mlxk_gguf_qmatmul_multi of RMSNorm(x): each row of x is first replaced by
 * x * norm_weight / sqrt(mean(x^2) + norm_eps) (in float32, as MLX's rms_norm), then multiplied.
 * norm_weight: K elements, float32 / float16 / bfloat16; norm_weight.ctx == NULL: no norm. */
int mlxk_gguf_qmatmul_multi_norm(mlx_array* res, const mlx_array x, const mlx_array norm_weight, float norm_eps,
                                 const mlx_array* ws, const int* types, const int64_t* ns, const mlx_array* biases,
                                 int count, int64_t k, int epilogue, const mlx_stream s);

/* The scalar arguments of mlxk_cached_attention (described there). */
typedef struct mlxk_attention_params {
  int32_t n_heads;
  int32_t n_kv_heads;
  int32_t head_dim;
  int32_t rope_traditional; /* nonzero: pairs (2j, 2j+1) */
  int64_t pos;
  int64_t window;           /* 0: no window */
  float scale;
  float rope_base;
  float rope_scale;
  float norm_eps;           /* for q_norm / k_norm */
  const float* rope_inv_freq; /* NULL or head_dim/2 values */
} mlxk_attention_params;

/* MLX graph op (custom primitive "CachedAttention", CPU streams only): attention of one
 * sequence over its KV cache, fused with RoPE and the cache write.
 *   q: [..., L, n_heads*head_dim], k, v: [..., L, n_kv_heads*head_dim] float32 (leading axes 1)
 *   k_cache, v_cache: [1, n_kv_heads, capacity, head_dim], both float32 or both float16 (new
 *   rows are rounded to nearest even when stored as float16), pos + L <= capacity
 * Rows i of k (rotated) and v are written at cache position pos+i; query row i (rotated, at
 * position pos+i) attends cache positions 0..pos+i (only pos+i-window+1..pos+i when window > 0:
 * sliding-window attention) with softmax(scale * q.k) (grouped-query:
 * head h reads KV head h / (n_heads/n_kv_heads)). RoPE angle of position t, pair j:
 * t * rope_scale * rope_base^(-2j/head_dim), or t * rope_scale * rope_inv_freq[j] when rope_inv_freq is
 * not NULL (head_dim/2 finite values >= 0, copied: scaled RoPE variants such as llama3 or YaRN); pairs
 * are (2j, 2j+1) when rope_traditional, else (j, j + head_dim/2).
 * q_norm, k_norm: float32 [head_dim] weights (both, or both with .ctx == NULL for none): every
 * head of q and k is RMS-normalised (eps norm_eps) and scaled by them before RoPE (Gemma 3).
 *   *out: [..., L, n_heads*head_dim]; *k_cache_out, *v_cache_out: the updated caches (sharing the
 *   input buffers when nothing else references them, else copies).
 * Returns 0 on success, 1 on error (message in mlxk_last_error()). */
int mlxk_cached_attention(mlx_array* out, mlx_array* k_cache_out, mlx_array* v_cache_out, const mlx_array q,
                          const mlx_array k, const mlx_array v, const mlx_array k_cache, const mlx_array v_cache,
                          const mlx_array q_norm, const mlx_array k_norm, const mlxk_attention_params* params,
                          const mlx_stream s);
#endif

#ifdef __cplusplus
}
#endif

#endif /* MLX_ENGINE_KERNELS_H */
