/*
 * leak_loop: many short generations through the C ABI, for leak checkers.
 *
 *   leak_loop MODEL.gguf N_CALLS
 *
 * Loads the model once, then N_CALLS times: a new sequence, a prefill of 4 tokens, a sampler,
 * 4 sampled and decoded tokens, a snapshot serialized and freed, the sampler and the sequence
 * freed. Prints MLX's active bytes after the first call and after the last (they must be
 * equal: nothing of a freed sequence stays alive) and exits 0, or 1 on any failure (with
 * mlxe_last_error() on stderr). Run under valgrind by benches/leaks/valgrind.sh.
 */
#include "mlx_engine.h"

#include <stdio.h>
#include <stdlib.h>

#define CHECK(call)                                                               \
  do {                                                                            \
    int status_ = (call);                                                         \
    if (status_ != MLXE_OK) {                                                     \
      fprintf(stderr, "%s failed (%d): %s\n", #call, status_, mlxe_last_error()); \
      exit(1);                                                                    \
    }                                                                             \
  } while (0)

enum { PROMPT = 4, NEW_TOKENS = 4 };

/* One generation: everything it creates is freed before it returns. */
static void generate_once(mlxe_backend b, float* logits, size_t vocab, uint64_t seed) {
  uint32_t history[PROMPT + NEW_TOKENS] = {1, 2, 3, (uint32_t)(seed % vocab)};
  mlxe_seq seq;
  CHECK(mlxe_seq_new(&seq, b));
  CHECK(mlxe_prefill(logits, vocab, b, seq, history, PROMPT, false));
  mlxe_sampler_params params;
  CHECK(mlxe_sampler_params_default(&params));
  params.temperature = 0.8f;
  params.seed = seed;
  params.has_seed = true;
  mlxe_sampler sampler;
  CHECK(mlxe_sampler_new(&sampler, &params));
  for (size_t i = 0; i < NEW_TOKENS; i++) {
    mlxe_sampled sampled;
    CHECK(mlxe_sampler_sample(&sampled, sampler, logits, vocab, history, PROMPT + i));
    history[PROMPT + i] = sampled.token;
    CHECK(mlxe_decode(logits, vocab, b, &seq, &sampled.token, 1));
  }
  mlxe_buffer snapshot;
  CHECK(mlxe_seq_serialize(&snapshot, b, seq));
  CHECK(mlxe_buffer_free(snapshot));
  CHECK(mlxe_sampler_free(sampler));
  CHECK(mlxe_seq_free(b, seq));
}

/* MLX's active bytes for this backend. */
static size_t active_bytes(mlxe_backend b) {
  mlxe_device_info info;
  CHECK(mlxe_backend_device_info(&info, b));
  return info.active_bytes;
}

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s MODEL.gguf N_CALLS\n", argv[0]);
    return 2;
  }
  size_t calls = (size_t)strtoul(argv[2], NULL, 10);
  mlxe_backend_options options;
  CHECK(mlxe_backend_options_default(&options));
  mlxe_backend b;
  CHECK(mlxe_backend_new(&b, argv[1], &options));
  size_t vocab;
  CHECK(mlxe_backend_vocab_size(&vocab, b));
  float* logits = malloc(vocab * sizeof(float));
  size_t after_first = 0;
  for (size_t i = 0; i < calls; i++) {
    generate_once(b, logits, vocab, i);
    if (i == 0) {
      after_first = active_bytes(b);
    }
  }
  printf("calls %zu active_bytes_after_first %zu active_bytes_after_last %zu\n", calls,
         after_first, active_bytes(b));
  CHECK(mlxe_backend_free(b));
  free(logits);
  return 0;
}
