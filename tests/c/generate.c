/*
 * generate: greedy generation through the C ABI.
 *
 *   generate MODEL.gguf N_NEW TOKEN [TOKEN...]
 *
 * Loads the model, prefills the prompt tokens, then picks the argmax token N_NEW times,
 * decoding each. Half-way it serializes the sequence, hydrates the snapshot into a new
 * sequence and frees the old one, so the continuation runs on restored KV. Prints the new
 * token ids on one line, space-separated. Exit status 0 on success, 1 on any failure (with
 * mlxe_last_error() on stderr).
 */
#include "mlx_engine.h"

#include <stdio.h>
#include <stdlib.h>

#define CHECK(call)                                                          \
  do {                                                                       \
    int status_ = (call);                                                    \
    if (status_ != MLXE_OK) {                                                \
      fprintf(stderr, "%s failed (%d): %s\n", #call, status_, mlxe_last_error()); \
      exit(1);                                                               \
    }                                                                        \
  } while (0)

static uint32_t argmax(const float* row, size_t n) {
  size_t best = 0;
  for (size_t i = 1; i < n; i++) {
    if (row[i] > row[best]) {
      best = i;
    }
  }
  return (uint32_t)best;
}

/* Replaces *seq by a sequence hydrated from its own snapshot. */
static void round_trip(mlxe_backend b, mlxe_seq* seq) {
  mlxe_buffer snapshot;
  mlxe_seq restored;
  CHECK(mlxe_seq_serialize(&snapshot, b, *seq));
  CHECK(mlxe_seq_hydrate(&restored, b, snapshot.data, snapshot.len));
  CHECK(mlxe_buffer_free(snapshot));
  CHECK(mlxe_seq_free(b, *seq));
  *seq = restored;
}

int main(int argc, char** argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s MODEL.gguf N_NEW TOKEN [TOKEN...]\n", argv[0]);
    return 2;
  }
  size_t n_new = (size_t)strtoul(argv[2], NULL, 10);
  size_t n_prompt = (size_t)(argc - 3);
  uint32_t* prompt = malloc(n_prompt * sizeof(uint32_t));
  for (size_t i = 0; i < n_prompt; i++) {
    prompt[i] = (uint32_t)strtoul(argv[3 + i], NULL, 10);
  }

  mlxe_backend_options options;
  CHECK(mlxe_backend_options_default(&options));
  mlxe_backend b;
  CHECK(mlxe_backend_new(&b, argv[1], &options));
  size_t vocab;
  CHECK(mlxe_backend_vocab_size(&vocab, b));
  float* logits = malloc(vocab * sizeof(float));

  mlxe_seq seq;
  CHECK(mlxe_seq_new(&seq, b));
  CHECK(mlxe_prefill(logits, vocab, b, seq, prompt, n_prompt, false));
  for (size_t i = 0; i < n_new; i++) {
    uint32_t next = argmax(logits, vocab);
    printf(i ? " %u" : "%u", next);
    if (i + 1 == n_new) {
      break;
    }
    if (i == n_new / 2) {
      round_trip(b, &seq);
    }
    CHECK(mlxe_decode(logits, vocab, b, &seq, &next, 1));
  }
  printf("\n");

  CHECK(mlxe_seq_free(b, seq));
  CHECK(mlxe_backend_free(b));
  free(logits);
  free(prompt);
  return 0;
}
