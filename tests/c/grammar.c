/*
 * grammar: constrained sampling through the C ABI on the real Qwen2.5 0.5B GGUF.
 *  - the backend reports structured output;
 *  - a regular expression (a US phone number) and a JSON Schema enum constrain greedy and
 *    seeded generations: the output is checked here character by character (independently of
 *    llguidance), and each run ends with an end-of-generation token, not the token limit;
 *  - bad grammars fail mlxe_sampler_new with MLXE_ERROR and llguidance's message, leaving a
 *    null handle: an unclosed regex group, a Lark grammar naming an undefined rule, a schema
 *    that is not JSON, an unknown kind, a missing grammar text, a missing backend.
 *
 *   grammar QWEN.gguf
 *
 * Prints "ok" and exits 0 when every expectation holds; otherwise prints the failed line.
 */
#include "mlx_engine.h"

#include <ctype.h>
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

#define MAX_TOKENS 48

/* Whether token is one of the backend's end-of-generation ids. */
static int is_eog(mlxe_backend b, uint32_t token) {
  uint32_t ids[32];
  size_t n = 0;
  CHECK(mlxe_backend_eog_tokens(ids, 32, &n, b));
  for (size_t i = 0; i < n; i++)
    if (ids[i] == token) return 1;
  return 0;
}

/* Generates from a chat prompt with a sampler of this grammar; writes the text (without the
 * end token) to out and returns whether the run ended with an end-of-generation token. */
static int generate(mlxe_backend b, int kind, const char* grammar, float temperature, uint64_t seed,
                    const char* prompt, char* out, size_t cap) {
  mlxe_chat_message msg = {"user", prompt};
  mlxe_buffer rendered;
  CHECK(mlxe_chat_template_apply(&rendered, b, &msg, 1, true));
  uint32_t ids[512];
  size_t n_ids = 0;
  CHECK(mlxe_tokenize(ids, 512, &n_ids, b, (const char*)rendered.data, rendered.len, false));
  CHECK(mlxe_buffer_free(rendered));
  size_t vocab = 0;
  CHECK(mlxe_backend_vocab_size(&vocab, b));
  float* logits = malloc(vocab * sizeof(float));
  EXPECT(logits != NULL);
  mlxe_sampler_params p;
  CHECK(mlxe_sampler_params_default(&p));
  p.temperature = temperature;
  p.seed = seed;
  p.has_seed = true;
  p.grammar_kind = kind;
  p.grammar = grammar;
  p.grammar_backend = b;
  mlxe_sampler s;
  CHECK(mlxe_sampler_new(&s, &p));
  mlxe_seq seq;
  CHECK(mlxe_seq_new(&seq, b));
  CHECK(mlxe_prefill(logits, vocab, b, seq, ids, n_ids, false));
  size_t len = 0;
  int stopped = 0;
  for (int step = 0; step < MAX_TOKENS; step++) {
    mlxe_sampled t;
    CHECK(mlxe_sampler_sample(&t, s, logits, vocab, ids, n_ids));
    if (is_eog(b, t.token)) {
      stopped = 1;
      break;
    }
    size_t piece_len = 0;
    CHECK(mlxe_token_piece((uint8_t*)out + len, cap - len - 1, &piece_len, b, t.token));
    len += piece_len;
    ids[n_ids++] = t.token;
    CHECK(mlxe_decode(logits, vocab, b, &seq, &t.token, 1));
  }
  out[len] = '\0';
  CHECK(mlxe_seq_free(b, seq));
  CHECK(mlxe_sampler_free(s));
  free(logits);
  return stopped;
}

/* "(ddd) ddd-dddd" exactly. */
static int is_phone(const char* s) {
  const char* shape = "(ddd) ddd-dddd";
  if (strlen(s) != strlen(shape)) return 0;
  for (size_t i = 0; shape[i]; i++)
    if (shape[i] == 'd' ? !isdigit((unsigned char)s[i]) : s[i] != shape[i]) return 0;
  return 1;
}

/* A JSON string of one of the enum's values, optionally surrounded by nothing else. */
static int is_color(const char* s) {
  return strcmp(s, "\"red\"") == 0 || strcmp(s, "\"green\"") == 0 || strcmp(s, "\"blue\"") == 0;
}

/* mlxe_sampler_new fails with a message and leaves a null handle. */
static void expect_refused(mlxe_backend b, int kind, const char* grammar, int with_backend,
                           const char* needle) {
  mlxe_sampler_params p;
  CHECK(mlxe_sampler_params_default(&p));
  p.grammar_kind = kind;
  p.grammar = grammar;
  if (with_backend) p.grammar_backend = b;
  mlxe_sampler s = {(void*)&p};
  EXPECT(mlxe_sampler_new(&s, &p) == MLXE_ERROR);
  EXPECT(s.ctx == NULL);
  EXPECT(strstr(mlxe_last_error(), needle) != NULL);
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: grammar QWEN.gguf\n");
    return 2;
  }
  mlxe_backend b;
  CHECK(mlxe_backend_new(&b, argv[1], NULL));
  mlxe_capabilities caps;
  CHECK(mlxe_backend_capabilities(&caps, b));
  EXPECT(caps.structured_output);

  char out[1024];
  for (uint64_t seed = 0; seed < 2; seed++) {
    float t = seed == 0 ? 0.0f : 0.8f;
    EXPECT(generate(b, MLXE_GRAMMAR_REGEX, "\\(\\d{3}\\) \\d{3}-\\d{4}", t, seed,
                    "What is the office phone number?", out, sizeof out));
    if (!is_phone(out)) {
      fprintf(stderr, "not a phone number: '%s'\n", out);
      return 1;
    }
    EXPECT(generate(b, MLXE_GRAMMAR_JSON_SCHEMA, "{\"enum\": [\"red\", \"green\", \"blue\"]}", t,
                    seed, "Name a color of the flag of France.", out, sizeof out));
    if (!is_color(out)) {
      fprintf(stderr, "not one of the enum's values: '%s'\n", out);
      return 1;
    }
  }

  expect_refused(b, MLXE_GRAMMAR_REGEX, "(", 1, "regex");
  expect_refused(b, MLXE_GRAMMAR_LARK, "start: undefined_rule", 1, "undefined_rule");
  expect_refused(b, MLXE_GRAMMAR_JSON_SCHEMA, "{not json", 1, "JSON");
  expect_refused(b, 99, "x", 1, "grammar_kind");
  expect_refused(b, MLXE_GRAMMAR_REGEX, NULL, 1, "grammar");
  expect_refused(b, MLXE_GRAMMAR_JSON_OBJECT, NULL, 0, "backend");

  CHECK(mlxe_backend_free(b));
  printf("ok\n");
  return 0;
}
