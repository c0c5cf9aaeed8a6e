/*
 * abi_all: calls every function of mlx_engine.h, success and failure paths, on a small model.
 *
 *   abi_all MODEL.gguf OTHER_MODEL.gguf
 *
 * OTHER_MODEL has the same shapes but different weights (for the foreign-snapshot check).
 * Prints "ok" and exits 0 when every expectation holds; otherwise prints the failed line.
 */
#include "mlx_engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPECT(cond)                                                             \
  do {                                                                           \
    if (!(cond)) {                                                               \
      fprintf(stderr, "line %d: expected %s (last error: %s)\n", __LINE__, #cond, \
              mlxe_last_error());                                                \
      exit(1);                                                                   \
    }                                                                            \
  } while (0)
#define CHECK(call) EXPECT((call) == MLXE_OK)
#define FAILS(call, code) EXPECT((call) == (code) && strlen(mlxe_last_error()) > 0)

static const uint32_t PROMPT[5] = {1, 17, 42, 99, 3};

static mlxe_backend load(const char* path, size_t max_context) {
  mlxe_backend_options options;
  CHECK(mlxe_backend_options_default(&options));
  EXPECT(options.device == MLXE_DEVICE_CPU && options.execution == MLXE_EXECUTION_DEFAULT);
  options.max_context = max_context;
  mlxe_backend b;
  CHECK(mlxe_backend_new(&b, path, &options));
  EXPECT(b.ctx != NULL);
  return b;
}

static void check_backend_info(mlxe_backend b) {
  mlxe_capabilities caps;
  CHECK(mlxe_backend_capabilities(&caps, b));
  EXPECT(caps.structured_output && !caps.multimodal && caps.kv_prefix_copy && caps.speculative_decoding);
  mlxe_device_info info;
  CHECK(mlxe_backend_device_info(&info, b));
  EXPECT(info.device == MLXE_DEVICE_CPU && info.execution != MLXE_EXECUTION_DEFAULT && info.active_bytes > 0);
  bool ready = false;
  CHECK(mlxe_backend_is_ready(&ready, b));
  EXPECT(ready);
  size_t context = 0;
  CHECK(mlxe_backend_context_length(&context, b));
  EXPECT(context == 32);
}

static size_t seq_len(mlxe_backend b, mlxe_seq seq) {
  size_t n = 0;
  CHECK(mlxe_seq_len(&n, b, seq));
  return n;
}

/* options.kv_type: float16 by default, float32 on request (twice the snapshot's data), anything
 * else refused by name. */
static void check_kv_type(const char* path) {
  mlxe_backend_options options;
  CHECK(mlxe_backend_options_default(&options));
  EXPECT(options.kv_type == MLXE_KV_F16);
  mlxe_backend b;
  options.kv_type = 7;
  FAILS(mlxe_backend_new(&b, path, &options), MLXE_ERROR);
  EXPECT(strstr(mlxe_last_error(), "kv_type") != NULL);
  size_t data[2];
  for (int t = 0; t < 2; ++t) {
    options.kv_type = t ? MLXE_KV_F32 : MLXE_KV_F16;
    CHECK(mlxe_backend_new(&b, path, &options));
    mlxe_seq s;
    CHECK(mlxe_seq_new(&s, b));
    size_t vocab = 0;
    CHECK(mlxe_backend_vocab_size(&vocab, b));
    float* logits = malloc(vocab * sizeof(float));
    CHECK(mlxe_prefill(logits, vocab, b, s, PROMPT, 5, false));
    free(logits);
    mlxe_buffer snap;
    CHECK(mlxe_seq_serialize(&snap, b, s));
    data[t] = snap.len - 72 - 32; /* header and checksum */
    CHECK(mlxe_buffer_free(snap));
    CHECK(mlxe_backend_free(b));
  }
  EXPECT(data[0] > 0 && data[1] == 2 * data[0]);
}

/* options.adapter: a LoRA adapter changes the logits; a missing one fails the load, by name. */
static void check_adapter(const char* path, const char* adapter_dir) {
  mlxe_backend_options options;
  CHECK(mlxe_backend_options_default(&options));
  EXPECT(options.adapter == NULL);
  options.adapter = "/nonexistent/adapter";
  mlxe_backend b;
  FAILS(mlxe_backend_new(&b, path, &options), MLXE_ERROR);
  EXPECT(strstr(mlxe_last_error(), "adapter_config.json") != NULL);
  float* logits[2];
  for (int with = 0; with < 2; ++with) {
    options.adapter = with ? adapter_dir : NULL;
    CHECK(mlxe_backend_new(&b, path, &options));
    size_t vocab = 0;
    CHECK(mlxe_backend_vocab_size(&vocab, b));
    logits[with] = malloc(vocab * sizeof(float));
    mlxe_seq s;
    CHECK(mlxe_seq_new(&s, b));
    CHECK(mlxe_prefill(logits[with], vocab, b, s, PROMPT, 5, false));
    CHECK(mlxe_backend_free(b));
    if (with) {
      float moved = 0;
      for (size_t i = 0; i < vocab; ++i) {
        const float d = logits[0][i] > logits[1][i] ? logits[0][i] - logits[1][i] : logits[1][i] - logits[0][i];
        if (d > moved) moved = d;
      }
      EXPECT(moved > 1e-3f);
    }
  }
  free(logits[0]);
  free(logits[1]);
}

/* prefill, decode, copy_prefix, truncate, reset and their failure paths. */
static void check_sequences(mlxe_backend b, size_t vocab) {
  float* logits = malloc(5 * vocab * sizeof(float));
  mlxe_seq a, c;
  CHECK(mlxe_seq_new(&a, b));
  CHECK(mlxe_seq_new(&c, b));
  EXPECT(a != 0 && c != 0 && a != c);
  FAILS(mlxe_prefill(logits, vocab, b, a, PROMPT, 5, true), MLXE_ERROR_BUFFER_TOO_SMALL);
  EXPECT(seq_len(b, a) == 0);
  CHECK(mlxe_prefill(logits, 5 * vocab, b, a, PROMPT, 5, true));
  EXPECT(seq_len(b, a) == 5);
  CHECK(mlxe_seq_copy_prefix(b, a, c, 3));
  EXPECT(seq_len(b, c) == 3);
  mlxe_seq pair[2] = {a, c};
  uint32_t next[2] = {7, 8};
  CHECK(mlxe_decode(logits, 2 * vocab, b, pair, next, 2));
  EXPECT(seq_len(b, a) == 6 && seq_len(b, c) == 4);
  mlxe_seq twice[2] = {a, a};
  FAILS(mlxe_decode(NULL, 0, b, twice, next, 2), MLXE_ERROR);
  CHECK(mlxe_seq_truncate(b, a, 2));
  EXPECT(seq_len(b, a) == 2);
  CHECK(mlxe_seq_reset(b, c));
  EXPECT(seq_len(b, c) == 0);
  uint32_t long_prompt[33] = {0};
  FAILS(mlxe_prefill(NULL, 0, b, c, long_prompt, 33, false), MLXE_ERROR_CONTEXT_FULL);
  CHECK(mlxe_seq_free(b, c));
  size_t n;
  FAILS(mlxe_seq_len(&n, b, c), MLXE_ERROR);
  FAILS(mlxe_seq_free(b, c), MLXE_ERROR);
  CHECK(mlxe_seq_free(b, a));
  free(logits);
}

/* serialize / hydrate, including a corrupted, a truncated and a foreign snapshot. */
static void check_snapshots(mlxe_backend b, mlxe_backend other) {
  mlxe_seq a, restored;
  CHECK(mlxe_seq_new(&a, b));
  CHECK(mlxe_prefill(NULL, 0, b, a, PROMPT, 5, false));
  mlxe_buffer snap;
  CHECK(mlxe_seq_serialize(&snap, b, a));
  EXPECT(snap.data != NULL && snap.len > 0);
  CHECK(mlxe_seq_hydrate(&restored, b, snap.data, snap.len));
  EXPECT(seq_len(b, restored) == 5);
  FAILS(mlxe_seq_hydrate(&restored, other, snap.data, snap.len), MLXE_ERROR);
  FAILS(mlxe_seq_hydrate(&restored, b, snap.data, snap.len - 1), MLXE_ERROR);
  snap.data[snap.len / 2] ^= 0x10;
  FAILS(mlxe_seq_hydrate(&restored, b, snap.data, snap.len), MLXE_ERROR);
  CHECK(mlxe_buffer_free(snap));
  mlxe_buffer empty = {NULL, 0};
  CHECK(mlxe_buffer_free(empty));
}

/* Draws `n` tokens with a seeded sampler at temperature 1. */
static void seeded_draws(const mlxe_sampler_params* base, const float* logits, size_t vocab, uint32_t* out, int n) {
  mlxe_sampler_params params = *base;
  params.temperature = 1.0f;
  params.seed = 42;
  params.has_seed = true;
  mlxe_sampler s;
  CHECK(mlxe_sampler_new(&s, &params));
  mlxe_sampled draw;
  for (int i = 0; i < n; i++) {
    CHECK(mlxe_sampler_sample(&draw, s, logits, vocab, NULL, 0));
    out[i] = draw.token;
  }
  CHECK(mlxe_sampler_free(s));
}

static void check_sampler(size_t vocab) {
  mlxe_sampler_params params;
  CHECK(mlxe_sampler_params_default(&params));
  EXPECT(params.temperature == 0.0f && params.n_logit_bias == 0 && !params.has_seed);
  mlxe_sampler s;
  params.n_logprobs = MLXE_MAX_LOGPROBS + 1;
  FAILS(mlxe_sampler_new(&s, &params), MLXE_ERROR);
  EXPECT(s.ctx == NULL);
  params.n_logprobs = 5;
  params.top_p = 0.0f;
  FAILS(mlxe_sampler_new(&s, &params), MLXE_ERROR);
  params.top_p = 1.0f;
  CHECK(mlxe_sampler_new(&s, &params));
  float* logits = calloc(vocab, sizeof(float));
  logits[11] = 5.0f;
  mlxe_sampled out;
  CHECK(mlxe_sampler_sample(&out, s, logits, vocab, PROMPT, 5));
  EXPECT(out.token == 11 && out.n_top == 5 && out.top_tokens[0] == 11 && out.logprob <= 0.0f);
  FAILS(mlxe_sampler_sample(&out, s, NULL, vocab, NULL, 0), MLXE_ERROR);
  CHECK(mlxe_sampler_free(s));

  uint32_t bias_token = 3;
  float bias = 100.0f;
  params.logit_bias_tokens = &bias_token;
  params.logit_bias_values = &bias;
  params.n_logit_bias = 1;
  CHECK(mlxe_sampler_new(&s, &params));
  CHECK(mlxe_sampler_sample(&out, s, logits, vocab, NULL, 0));
  EXPECT(out.token == 3);
  CHECK(mlxe_sampler_free(s));

  uint32_t first[8], second[8];
  params.n_logit_bias = 0;
  seeded_draws(&params, logits, vocab, first, 8);
  seeded_draws(&params, logits, vocab, second, 8);
  EXPECT(memcmp(first, second, sizeof first) == 0);
  mlxe_sampler null_sampler = {NULL};
  CHECK(mlxe_sampler_free(null_sampler));
  free(logits);
}

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s MODEL.gguf OTHER_MODEL.gguf ADAPTER_DIR\n", argv[0]);
    return 2;
  }
  EXPECT(strlen(mlxe_last_error()) == 0);
  const char* version = NULL;
  CHECK(mlxe_version(&version));
  EXPECT(version != NULL && strlen(version) > 0);
  mlxe_backend missing;
  FAILS(mlxe_backend_new(&missing, "/nonexistent/model.gguf", NULL), MLXE_ERROR);
  EXPECT(missing.ctx == NULL);
  FAILS(mlxe_backend_new(NULL, argv[1], NULL), MLXE_ERROR);

  check_adapter(argv[1], argv[3]);
  check_kv_type(argv[1]);
  mlxe_backend b = load(argv[1], 32);
  mlxe_backend other = load(argv[2], 32);
  check_backend_info(b);
  size_t vocab = 0;
  CHECK(mlxe_backend_vocab_size(&vocab, b));
  EXPECT(vocab > 11);
  FAILS(mlxe_backend_vocab_size(NULL, b), MLXE_ERROR);
  mlxe_backend null_backend = {NULL};
  FAILS(mlxe_backend_vocab_size(&vocab, null_backend), MLXE_ERROR);
  check_sequences(b, vocab);
  check_snapshots(b, other);
  check_sampler(vocab);
  CHECK(mlxe_backend_free(other));
  CHECK(mlxe_backend_free(b));
  CHECK(mlxe_backend_free(null_backend));
  printf("ok\n");
  return 0;
}
