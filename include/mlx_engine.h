/*
 * mlx_engine.h: the C ABI of mlx-engine (Llama-family GGUF models on MLX).
 *
 * Hand-written; tests/c_abi.rs checks every prototype, struct and constant here against
 * src/ffi.rs and compiles tests/c/ against it.
 *
 * Conventions (those of mlx-c):
 *  - Opaque handles `{ void* ctx; }` are made by `_new` and released by `_free`; freeing a
 *    null handle is a no-op.
 *  - Every function but mlxe_last_error() returns an int status (MLXE_OK = 0) and writes its
 *    result through its first argument `res`.
 *  - On failure, mlxe_last_error() returns this thread's message.
 *  - Input arrays are borrowed for the call only. Logits are written into caller buffers of a
 *    stated capacity (in floats). Token ids and token pieces are written into caller buffers
 *    too (res, res_capacity), with the count the result needs written to *res_len even when it
 *    does not fit (MLXE_ERROR_BUFFER_TOO_SMALL), so a call with res = NULL and res_capacity = 0
 *    asks for the size. Bytes returned in an mlxe_buffer (snapshots, text) belong to the caller,
 *    who releases them with mlxe_buffer_free(); text in one is UTF-8, not NUL-terminated.
 *  - Compatibility: new entry points are added; existing prototypes and struct layouts are not
 *    changed.
 *  - Threads: a backend or sampler may be handed from one thread to another but must not be
 *    used by two threads at once. Distinct backends may run on distinct threads.
 */
#ifndef MLX_ENGINE_H
#define MLX_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** \defgroup mlxe mlx-engine C API
 * @{
 */

/* Status codes. */
#define MLXE_OK 0                    /* success */
#define MLXE_ERROR 1                 /* failure; see mlxe_last_error() */
#define MLXE_ERROR_CONTEXT_FULL 2    /* a sequence would exceed the context length */
#define MLXE_ERROR_BUFFER_TOO_SMALL 3 /* a result buffer's capacity is too small */
#define MLXE_ERROR_PANIC 4           /* internal bug (caught); the handle may be unusable */

/* Devices (mlxe_backend_options.device). */
#define MLXE_DEVICE_CPU 0
#define MLXE_DEVICE_GPU 1

/* Execution modes (mlxe_backend_options.execution). */
#define MLXE_EXECUTION_DEFAULT 0    /* the device's default */
#define MLXE_EXECUTION_CPU_KERNEL 1 /* CPU, GGUF blocks multiplied in place */
#define MLXE_EXECUTION_CPU_DENSE 2  /* CPU, weights dequantized to float32 at load */
#define MLXE_EXECUTION_GPU 3        /* GPU, MLX quantized matmul */

/* KV cache element types (mlxe_backend_options.kv_type). */
#define MLXE_KV_F16 0 /* float16 (the default): half the memory */
#define MLXE_KV_F32 1 /* float32 */

/* The most top logprobs one mlxe_sampled holds. */
#define MLXE_MAX_LOGPROBS 20

/* Grammar kinds of mlxe_sampler_params.grammar_kind (constrained sampling, llguidance). */
#define MLXE_GRAMMAR_NONE 0        /* unconstrained */
#define MLXE_GRAMMAR_JSON_SCHEMA 1 /* grammar: a JSON Schema (JSON text) */
#define MLXE_GRAMMAR_JSON_OBJECT 2 /* any JSON object; grammar may be NULL */
#define MLXE_GRAMMAR_REGEX 3       /* grammar: a regular expression the whole output matches */
#define MLXE_GRAMMAR_LARK 4        /* grammar: a Lark grammar (llguidance's dialect) */

/* A loaded model and its sequences. */
typedef struct mlxe_backend {
  void* ctx;
} mlxe_backend;

/* A sampler (independent of any backend). */
typedef struct mlxe_sampler {
  void* ctx;
} mlxe_sampler;

/* A sequence id within one backend; 0 is never a valid id. */
typedef uint64_t mlxe_seq;

/* Bytes owned by the caller once returned; release with mlxe_buffer_free(). */
typedef struct mlxe_buffer {
  uint8_t* data;
  size_t len;
} mlxe_buffer;

/* Options of mlxe_backend_new(); start from mlxe_backend_options_default(). */
typedef struct mlxe_backend_options {
  int device;           /* MLXE_DEVICE_* */
  int execution;        /* MLXE_EXECUTION_* */
  size_t max_context;   /* cap on positions per sequence; 0 = the model's context */
  size_t prefill_chunk; /* positions per forward pass in prefill; 0 = 512 */
  const char* adapter;  /* LoRA adapter directory (`mlx-engine finetune --out`); NULL = none */
  int kv_type;          /* MLXE_KV_*: the KV cache's element type */
} mlxe_backend_options;

/* What a backend supports (true only for what works end to end). */
typedef struct mlxe_capabilities {
  bool structured_output;    /* grammar/JSON-constrained sampling */
  bool speculative_decoding; /* prefill with all logits + mlxe_seq_truncate */
  bool kv_prefix_copy;       /* mlxe_seq_copy_prefix */
  bool multimodal;           /* image or audio inputs */
} mlxe_capabilities;

/* Where a backend runs and MLX's memory counters. */
typedef struct mlxe_device_info {
  int device;          /* MLXE_DEVICE_* */
  int execution;       /* MLXE_EXECUTION_* (never DEFAULT) */
  size_t active_bytes; /* held by live MLX arrays */
  size_t peak_bytes;   /* high-water mark of active_bytes */
  size_t cache_bytes;  /* freed buffers MLX keeps for reuse */
} mlxe_device_info;

/* Settings of mlxe_sampler_new(); start from mlxe_sampler_params_default(). */
typedef struct mlxe_sampler_params {
  float temperature;              /* 0 = greedy */
  uint32_t top_k;                 /* 0 = off */
  float top_p;                    /* 1 = off */
  float min_p;                    /* 0 = off */
  float repetition_penalty;       /* 1 = off */
  float presence_penalty;         /* 0 = off */
  float frequency_penalty;        /* 0 = off */
  uint32_t penalty_last_n;        /* history tokens the penalties see */
  const uint32_t* logit_bias_tokens; /* n_logit_bias entries (copied); NULL if 0 */
  const float* logit_bias_values;    /* one bias per token, in [-100, 100] */
  size_t n_logit_bias;
  uint64_t seed;     /* used when has_seed; otherwise seeded from the OS */
  bool has_seed;
  size_t n_logprobs; /* top logprobs to report, <= MLXE_MAX_LOGPROBS */
  int grammar_kind;  /* MLXE_GRAMMAR_*; NONE by default */
  const char* grammar; /* the grammar's text (UTF-8, NUL-terminated); NULL for NONE, JSON_OBJECT */
  mlxe_backend grammar_backend; /* whose tokenizer the grammar is compiled for (not NONE) */
} mlxe_sampler_params;

/* One message for mlxe_chat_template_apply(). */
typedef struct mlxe_chat_message {
  const char* role;    /* "system", "user", "assistant", ...: UTF-8, NUL-terminated */
  const char* content; /* UTF-8, NUL-terminated */
} mlxe_chat_message;

/* One sampled token. Logprobs are of the model's distribution: log-softmax of the logits given,
 * before bias, penalties, temperature and truncation. */
typedef struct mlxe_sampled {
  uint32_t token;
  float logprob; /* log-probability of token */
  size_t n_top;  /* valid entries below */
  uint32_t top_tokens[MLXE_MAX_LOGPROBS];
  float top_logprobs[MLXE_MAX_LOGPROBS]; /* most likely first, ties by lower id */
} mlxe_sampled;

/* ---- Errors and version ------------------------------------------------------------------ */

/* This thread's last error message ("" if none). Valid until the next failing call on this
 * thread; successful calls leave it unchanged. Never NULL. */
const char* mlxe_last_error(void);

/* The library version (a static string). */
int mlxe_version(const char** res);

/* ---- Backend ----------------------------------------------------------------------------- */

/* CPU, default execution, the model's context, prefill chunk 512. */
int mlxe_backend_options_default(mlxe_backend_options* res);

/* Loads the model at model_path (UTF-8): a GGUF file or a Hugging Face directory. options
 * may be NULL for the defaults. On failure *res is a null handle. Free with
 * mlxe_backend_free(). */
int mlxe_backend_new(mlxe_backend* res, const char* model_path, const mlxe_backend_options* options);

/* Frees a backend and all its sequences. */
int mlxe_backend_free(mlxe_backend b);

/* Length of one logits row. */
int mlxe_backend_vocab_size(size_t* res, mlxe_backend b);

/* The most positions one sequence may hold. */
int mlxe_backend_context_length(size_t* res, mlxe_backend b);

int mlxe_backend_capabilities(mlxe_capabilities* res, mlxe_backend b);

int mlxe_backend_device_info(mlxe_device_info* res, mlxe_backend b);

/* Whether the backend's device is usable. */
int mlxe_backend_is_ready(bool* res, mlxe_backend b);

/* ---- Sequences (KV slots) ---------------------------------------------------------------- */

/* Creates an empty sequence. Ids are never reused within a backend. */
int mlxe_seq_new(mlxe_seq* res, mlxe_backend b);

/* Frees a sequence; its id becomes invalid (later use fails with MLXE_ERROR). */
int mlxe_seq_free(mlxe_backend b, mlxe_seq seq);

/* Empties a sequence; the id stays valid. */
int mlxe_seq_reset(mlxe_backend b, mlxe_seq seq);

/* Keeps the first n positions (rolls back a rejected speculative draft). */
int mlxe_seq_truncate(mlxe_backend b, mlxe_seq seq, size_t n);

/* Positions the sequence holds (the position of its next token). */
int mlxe_seq_len(size_t* res, mlxe_backend b, mlxe_seq seq);

/* Makes dst a copy of the first n positions of src (dst's old content is dropped). */
int mlxe_seq_copy_prefix(mlxe_backend b, mlxe_seq src, mlxe_seq dst, size_t n);

/* Appends n_tokens tokens to seq. Writes the last position's logits (vocab floats), or every
 * new position's (n_tokens * vocab, row-major) when all_logits, into res, which holds
 * res_capacity floats; res may be NULL to discard them. Capacity is checked before running
 * (MLXE_ERROR_BUFFER_TOO_SMALL). On any failure the sequence is unchanged. */
int mlxe_prefill(
    float* res,
    size_t res_capacity,
    mlxe_backend b,
    mlxe_seq seq,
    const uint32_t* tokens,
    size_t n_tokens,
    bool all_logits);

/* One decode step for n sequences in one forward pass: tokens[i] is appended to seqs[i], each
 * at its own position. Writes n * vocab logits (row i for seqs[i]) into res (capacity in
 * floats; NULL discards). Fails before running on an unknown or repeated id, a full sequence
 * (MLXE_ERROR_CONTEXT_FULL) or a short buffer; on any failure no sequence changes. */
int mlxe_decode(
    float* res,
    size_t res_capacity,
    mlxe_backend b,
    const mlxe_seq* seqs,
    const uint32_t* tokens,
    size_t n);

/* A self-describing snapshot of seq's KV (see docs/BACKEND.md). Release with
 * mlxe_buffer_free(). */
int mlxe_seq_serialize(mlxe_buffer* res, mlxe_backend b, mlxe_seq seq);

/* A new sequence holding a snapshot's KV. Fails, creating nothing, on a truncated or
 * corrupted buffer or one written by a different model. */
int mlxe_seq_hydrate(mlxe_seq* res, mlxe_backend b, const uint8_t* data, size_t len);

/* Releases a buffer returned by mlx-engine (pass it back unchanged). */
int mlxe_buffer_free(mlxe_buffer buf);

/* ---- Samplers ---------------------------------------------------------------------------- */

/* Greedy (temperature 0), no truncation, no penalties, no bias, OS seed, no logprobs. */
int mlxe_sampler_params_default(mlxe_sampler_params* res);

/* Creates a sampler; fails on settings out of range (e.g. top_p outside (0, 1], a bias outside
 * [-100, 100]). The bias arrays are copied; a bias token outside the vocabulary fails at the
 * first mlxe_sampler_sample(). With a grammar_kind other than NONE, the grammar is compiled for
 * grammar_backend's tokenizer (the sampler then outlives that backend safely); a grammar
 * llguidance refuses fails with its message in mlxe_last_error(). A constrained sampler's draws
 * follow the grammar; once it is complete only end-of-generation tokens can be drawn. Free
 * with mlxe_sampler_free(). */
int mlxe_sampler_new(mlxe_sampler* res, const mlxe_sampler_params* params);

int mlxe_sampler_free(mlxe_sampler s);

/* Draws a token from one logits row (n_vocab floats); history (the sequence's tokens so far)
 * feeds the penalties and may be NULL when n_history is 0. */
int mlxe_sampler_sample(
    mlxe_sampled* res,
    mlxe_sampler s,
    const float* logits,
    size_t n_vocab,
    const uint32_t* history,
    size_t n_history);

/* ---- Speculative decoding ---------------------------------------------------------------- */

/* Prompt-lookup drafting: the tokens (at most res_capacity) that followed the most recent
 * earlier occurrence of the last n tokens of history, for the longest n in n_min..=n_max that
 * has one; *res_len is their count (0 when nothing matches). */
int mlxe_prompt_lookup(
    size_t* res_len,
    uint32_t* res,
    size_t res_capacity,
    const uint32_t* history,
    size_t n_history,
    size_t n_min,
    size_t n_max);

/* One speculative step on seq, whose KV holds every token of history but the last: scores the
 * last token and the n_drafts drafted tokens in one forward pass, keeps the prefix of the
 * draft that the sampler's draws agree with (the output is distributed exactly as plain
 * decoding's), rolls back the KV of the rejected tail, and writes the tokens to append (the
 * accepted drafts, then one token from the model) into res_tokens, their count into *res_len.
 * The last of them is the next token to feed. res_capacity must be >= n_drafts + 1 (else
 * MLXE_ERROR_BUFFER_TOO_SMALL, before anything runs). On error seq is unchanged. */
int mlxe_speculative_step(
    size_t* res_len,
    uint32_t* res_tokens,
    size_t res_capacity,
    mlxe_backend b,
    mlxe_seq seq,
    mlxe_sampler s,
    const uint32_t* history,
    size_t n_history,
    const uint32_t* drafts,
    size_t n_drafts);

/* ---- Text: tokenizer, token pieces, chat template ---------------------------------------- */

/* Tokenizes text_len bytes of UTF-8 text (need not be NUL-terminated; NULL if text_len is 0).
 * With add_special, BOS (and EOS) are added as the model's vocabulary asks; special-token text
 * such as "<|im_start|>" always becomes its token. Writes the id count to *res_len and the ids
 * into res (res_capacity ids): see the conventions above. Non-UTF-8 text fails. */
int mlxe_tokenize(
    uint32_t* res,
    size_t res_capacity,
    size_t* res_len,
    mlxe_backend b,
    const char* text,
    size_t text_len,
    bool add_special);

/* The bytes token stands for, for streaming: the pieces of generated tokens, appended, are the
 * generated text byte for byte. A piece may be an incomplete UTF-8 sequence (a character split
 * across tokens: hold bytes until they complete) and may contain NUL; it is not NUL-terminated.
 * Control tokens stand for their own text ("<|im_end|>"). Outputs as mlxe_tokenize(); an id
 * outside the vocabulary fails. */
int mlxe_token_piece(uint8_t* res, size_t res_capacity, size_t* res_len, mlxe_backend b, uint32_t token);

/* Decodes n_tokens ids to UTF-8 text in *res (release with mlxe_buffer_free()). SentencePiece's
 * leading dummy space is dropped, bytes that are not UTF-8 become U+FFFD, and with skip_special
 * control tokens are left out. An id outside the vocabulary fails. */
int mlxe_detokenize(
    mlxe_buffer* res,
    mlxe_backend b,
    const uint32_t* tokens,
    size_t n_tokens,
    bool skip_special);

/* Renders n_messages messages with the model's chat template into *res (UTF-8; release with
 * mlxe_buffer_free()). With add_generation_prompt the text ends where the assistant's reply
 * begins. Tokenize the result with add_special = false: the template writes its own special
 * tokens. Fails when the model has no template, on a template error, or on a NULL or non-UTF-8
 * field. */
int mlxe_chat_template_apply(
    mlxe_buffer* res,
    mlxe_backend b,
    const mlxe_chat_message* messages,
    size_t n_messages,
    bool add_generation_prompt);

/* The ids that end a generation (eos, eot and end-of-turn tokens such as "<|im_end|>"), sorted.
 * Outputs as mlxe_tokenize(). */
int mlxe_backend_eog_tokens(uint32_t* res, size_t res_capacity, size_t* res_len, mlxe_backend b);

/** @} */

#ifdef __cplusplus
}
#endif

#endif /* MLX_ENGINE_H */
