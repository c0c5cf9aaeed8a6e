/*
 * speculative: greedy generation through the C ABI's speculative building blocks.
 *
 *   speculative MODEL.gguf N_NEW DRAFT_MAX TOKEN [TOKEN...]
 *
 * Prefills all prompt tokens but the last, samples nothing yet, then repeats: draft up to
 * DRAFT_MAX tokens with mlxe_prompt_lookup (n-grams of 3 down to 1 over the history), run one
 * mlxe_speculative_step with a greedy sampler, append the tokens it returns. Prints the first
 * N_NEW new token ids on one line, then "drafted D accepted A" on a second. Also checks a
 * hand-computed lookup and that a short result buffer is refused before anything runs.
 * Exit status 0 on success, 1 on any failure (with mlxe_last_error() on stderr).
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

#define EXPECT(cond)                                         \
  do {                                                       \
    if (!(cond)) {                                           \
      fprintf(stderr, "expectation failed: %s\n", #cond);    \
      exit(1);                                               \
    }                                                        \
  } while (0)

/* "5 6 1 5 6 2 5 6": the bigram 5 6 last occurred at 3, followed by 2 5 6. */
static void check_lookup(void) {
  const uint32_t h[] = {5, 6, 1, 5, 6, 2, 5, 6};
  uint32_t out[4];
  size_t n = 99;
  CHECK(mlxe_prompt_lookup(&n, out, 4, h, 8, 2, 2));
  EXPECT(n == 3 && out[0] == 2 && out[1] == 5 && out[2] == 6);
  CHECK(mlxe_prompt_lookup(&n, out, 4, h, 2, 2, 2));
  EXPECT(n == 0);
  EXPECT(mlxe_prompt_lookup(&n, out, 4, h, 8, 0, 2) == MLXE_ERROR);
}

int main(int argc, char** argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: %s MODEL.gguf N_NEW DRAFT_MAX TOKEN [TOKEN...]\n", argv[0]);
    return 2;
  }
  check_lookup();
  size_t n_new = (size_t)strtoul(argv[2], NULL, 10);
  size_t draft_max = (size_t)strtoul(argv[3], NULL, 10);
  size_t n_prompt = (size_t)(argc - 4);
  size_t cap = n_prompt + n_new + draft_max + 1;
  uint32_t* history = malloc(cap * sizeof(uint32_t));
  uint32_t* drafts = malloc((draft_max + 1) * sizeof(uint32_t));
  uint32_t* tokens = malloc((draft_max + 1) * sizeof(uint32_t));
  for (size_t i = 0; i < n_prompt; i++) {
    history[i] = (uint32_t)strtoul(argv[4 + i], NULL, 10);
  }

  mlxe_backend_options options;
  CHECK(mlxe_backend_options_default(&options));
  mlxe_backend b;
  CHECK(mlxe_backend_new(&b, argv[1], &options));
  mlxe_sampler_params params;
  CHECK(mlxe_sampler_params_default(&params));
  mlxe_sampler s;
  CHECK(mlxe_sampler_new(&s, &params));
  mlxe_seq seq;
  CHECK(mlxe_seq_new(&seq, b));
  if (n_prompt > 1) {
    CHECK(mlxe_prefill(NULL, 0, b, seq, history, n_prompt - 1, false));
  }

  /* A result buffer without room for the bonus token is refused, leaving seq as it was. */
  size_t n = 0;
  EXPECT(mlxe_speculative_step(&n, tokens, 1, b, seq, s, history, n_prompt, history, 1) ==
         MLXE_ERROR_BUFFER_TOO_SMALL);
  size_t len;
  CHECK(mlxe_seq_len(&len, b, seq));
  EXPECT(len == n_prompt - 1);

  size_t n_hist = n_prompt, drafted = 0, accepted = 0;
  while (n_hist < n_prompt + n_new) {
    size_t n_drafts = 0;
    CHECK(mlxe_prompt_lookup(&n_drafts, drafts, draft_max, history, n_hist, 1, 3));
    CHECK(mlxe_speculative_step(&n, tokens, draft_max + 1, b, seq, s, history, n_hist, drafts,
                                n_drafts));
    drafted += n_drafts;
    accepted += n - 1;
    for (size_t i = 0; i < n; i++) {
      history[n_hist++] = tokens[i];
    }
    CHECK(mlxe_seq_len(&len, b, seq));
    EXPECT(len == n_hist - 1);
  }
  for (size_t i = 0; i < n_new; i++) {
    printf(i ? " %u" : "%u", history[n_prompt + i]);
  }
  printf("\ndrafted %zu accepted %zu\n", drafted, accepted);

  CHECK(mlxe_seq_free(b, seq));
  CHECK(mlxe_sampler_free(s));
  CHECK(mlxe_backend_free(b));
  free(tokens);
  free(drafts);
  free(history);
  return 0;
}
