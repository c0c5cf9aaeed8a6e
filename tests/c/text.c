/*
 * text: the model's text side through the C ABI on the real Qwen2.5 0.5B GGUF, checked against
 * facts established independently of mlx-engine:
 *  - "The capital of France is" is [785, 6722, 315, 9625, 374] (llama.cpp and transformers'
 *    Qwen2 tokenizer agree; tests/tokenizer_parity.rs);
 *  - <|endoftext|> = 151643, <|im_start|> = 151644, <|im_end|> = 151645 (the model's
 *    tokenizer_config.json), <|im_end|> and <|endoftext|> end a generation;
 *  - Qwen 2.5's template renders a lone user turn as ChatML after its default system prompt.
 * Then bad input: null pointers, short buffers, invalid ids, invalid UTF-8; each must return a
 * status with a message.
 *
 *   text QWEN.gguf
 *
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

static const char FRANCE[] = "The capital of France is";
static const uint32_t FRANCE_IDS[5] = {785, 6722, 315, 9625, 374};
static const uint32_t ENDOFTEXT = 151643, IM_START = 151644, IM_END = 151645;

/* Whether len bytes are valid UTF-8 (complete sequences only). */
static int valid_utf8(const uint8_t* s, size_t len) {
  size_t i = 0;
  while (i < len) {
    size_t n = s[i] < 0x80 ? 1 : (s[i] >> 5) == 0x6 ? 2 : (s[i] >> 4) == 0xE ? 3 : (s[i] >> 3) == 0x1E ? 4 : 0;
    if (n == 0 || i + n > len) return 0;
    for (size_t k = 1; k < n; k++)
      if ((s[i + k] & 0xC0) != 0x80) return 0;
    i += n;
  }
  return 1;
}

/* Tokenizes a NUL-terminated string into ids (at most cap); returns the count. */
static size_t tokenize(mlxe_backend b, const char* text, bool add_special, uint32_t* ids, size_t cap) {
  size_t n = 0;
  CHECK(mlxe_tokenize(ids, cap, &n, b, text, strlen(text), add_special));
  return n;
}

static void check_tokenize(mlxe_backend b) {
  uint32_t ids[64];
  size_t n = tokenize(b, FRANCE, false, ids, 64);
  EXPECT(n == 5 && memcmp(ids, FRANCE_IDS, sizeof FRANCE_IDS) == 0);
  /* Qwen adds no BOS: add_special changes nothing here. */
  EXPECT(tokenize(b, FRANCE, true, ids, 64) == 5 && memcmp(ids, FRANCE_IDS, sizeof FRANCE_IDS) == 0);
  /* Special-token text becomes its token. */
  n = tokenize(b, "<|im_start|>user<|im_end|>", false, ids, 64);
  EXPECT(n == 3 && ids[0] == IM_START && ids[2] == IM_END);
  /* The size query, then a short buffer: the count needed comes back both times. */
  size_t needed = 0;
  FAILS(mlxe_tokenize(NULL, 0, &needed, b, FRANCE, strlen(FRANCE), false), MLXE_ERROR_BUFFER_TOO_SMALL);
  EXPECT(needed == 5);
  needed = 0;
  FAILS(mlxe_tokenize(ids, 4, &needed, b, FRANCE, strlen(FRANCE), false), MLXE_ERROR_BUFFER_TOO_SMALL);
  EXPECT(needed == 5);
  /* Empty text: no ids, and NULL text is fine with length 0. */
  CHECK(mlxe_tokenize(NULL, 0, &needed, b, NULL, 0, false));
  EXPECT(needed == 0);
  /* Text of stated length need not be NUL-terminated: the first 11 bytes are "The capital". */
  CHECK(mlxe_tokenize(ids, 64, &n, b, FRANCE, 11, false));
  EXPECT(n == 2 && ids[0] == 785 && ids[1] == 6722);
  /* Bad input. */
  FAILS(mlxe_tokenize(ids, 64, NULL, b, FRANCE, strlen(FRANCE), false), MLXE_ERROR);
  FAILS(mlxe_tokenize(NULL, 8, &n, b, FRANCE, strlen(FRANCE), false), MLXE_ERROR);
  FAILS(mlxe_tokenize(ids, 64, &n, b, NULL, 5, false), MLXE_ERROR);
  const char bad_utf8[] = {'a', (char)0xC3, 'b', 0};
  FAILS(mlxe_tokenize(ids, 64, &n, b, bad_utf8, 3, false), MLXE_ERROR);
  EXPECT(strstr(mlxe_last_error(), "UTF-8") != NULL);
  mlxe_backend null_backend = {NULL};
  FAILS(mlxe_tokenize(ids, 64, &n, null_backend, FRANCE, strlen(FRANCE), false), MLXE_ERROR);
}

/* Pieces of the ids of `text`, appended, are `text` byte for byte. */
static void check_pieces_rebuild(mlxe_backend b, const char* text, int expect_partial) {
  uint32_t ids[64];
  size_t n = tokenize(b, text, false, ids, 64);
  uint8_t joined[256];
  size_t len = 0;
  int partial = 0;
  for (size_t i = 0; i < n; i++) {
    size_t piece_len = 0;
    CHECK(mlxe_token_piece(joined + len, sizeof joined - len, &piece_len, b, ids[i]));
    partial |= !valid_utf8(joined + len, piece_len);
    len += piece_len;
  }
  EXPECT(len == strlen(text) && memcmp(joined, text, len) == 0);
  EXPECT(partial == expect_partial);
}

static void check_pieces(mlxe_backend b) {
  check_pieces_rebuild(b, FRANCE, 0);
  /* U+1D11E (musical G clef, 4 bytes) is split across byte-level tokens: some piece alone is
   * an incomplete UTF-8 sequence. */
  check_pieces_rebuild(b, "clef \xF0\x9D\x84\x9E!", 1);
  uint8_t piece[64];
  size_t len = 0;
  CHECK(mlxe_token_piece(piece, sizeof piece, &len, b, 9625));
  EXPECT(len == 7 && memcmp(piece, " France", 7) == 0);
  CHECK(mlxe_token_piece(piece, sizeof piece, &len, b, IM_END));
  EXPECT(len == 10 && memcmp(piece, "<|im_end|>", 10) == 0);
  FAILS(mlxe_token_piece(piece, 3, &len, b, 9625), MLXE_ERROR_BUFFER_TOO_SMALL);
  EXPECT(len == 7);
  FAILS(mlxe_token_piece(piece, sizeof piece, &len, b, 4000000000u), MLXE_ERROR);
  EXPECT(strstr(mlxe_last_error(), "4000000000") != NULL);
  FAILS(mlxe_token_piece(piece, sizeof piece, NULL, b, 9625), MLXE_ERROR);
}

static void check_detokenize(mlxe_backend b) {
  mlxe_buffer text;
  CHECK(mlxe_detokenize(&text, b, FRANCE_IDS, 5, false));
  EXPECT(text.len == strlen(FRANCE) && memcmp(text.data, FRANCE, text.len) == 0);
  CHECK(mlxe_buffer_free(text));
  uint32_t with_end[6] = {785, 6722, 315, 9625, 374, IM_END};
  CHECK(mlxe_detokenize(&text, b, with_end, 6, false));
  EXPECT(text.len == strlen(FRANCE) + 10 && memcmp(text.data + strlen(FRANCE), "<|im_end|>", 10) == 0);
  CHECK(mlxe_buffer_free(text));
  CHECK(mlxe_detokenize(&text, b, with_end, 6, true));
  EXPECT(text.len == strlen(FRANCE));
  CHECK(mlxe_buffer_free(text));
  CHECK(mlxe_detokenize(&text, b, NULL, 0, false));
  EXPECT(text.len == 0);
  CHECK(mlxe_buffer_free(text));
  uint32_t invalid[2] = {785, 999999999u};
  FAILS(mlxe_detokenize(&text, b, invalid, 2, false), MLXE_ERROR);
  EXPECT(strstr(mlxe_last_error(), "999999999") != NULL);
  FAILS(mlxe_detokenize(&text, b, NULL, 3, false), MLXE_ERROR);
  FAILS(mlxe_detokenize(NULL, b, FRANCE_IDS, 5, false), MLXE_ERROR);
}

static void check_chat_template(mlxe_backend b) {
  static const char want[] =
      "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
      "assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
  mlxe_chat_message user = {"user", "Hi"};
  mlxe_buffer text;
  CHECK(mlxe_chat_template_apply(&text, b, &user, 1, true));
  EXPECT(text.len == strlen(want) && memcmp(text.data, want, text.len) == 0);
  CHECK(mlxe_buffer_free(text));
  /* Without the generation prompt the text ends after the user turn. */
  mlxe_chat_message turns[2] = {{"system", "Be brief."}, {"user", "Hi"}};
  static const char want_turns[] =
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n";
  CHECK(mlxe_chat_template_apply(&text, b, turns, 2, false));
  EXPECT(text.len == strlen(want_turns) && memcmp(text.data, want_turns, text.len) == 0);
  CHECK(mlxe_buffer_free(text));
  mlxe_chat_message no_content = {"user", NULL};
  FAILS(mlxe_chat_template_apply(&text, b, &no_content, 1, true), MLXE_ERROR);
  EXPECT(strstr(mlxe_last_error(), "messages[0].content") != NULL);
  char bad_role[] = {'u', (char)0xFF, 0};
  mlxe_chat_message bad = {bad_role, "Hi"};
  FAILS(mlxe_chat_template_apply(&text, b, &bad, 1, true), MLXE_ERROR);
  FAILS(mlxe_chat_template_apply(&text, b, NULL, 1, true), MLXE_ERROR);
  FAILS(mlxe_chat_template_apply(NULL, b, &user, 1, true), MLXE_ERROR);
}

static void check_eog(mlxe_backend b) {
  uint32_t ids[16];
  size_t n = 0;
  CHECK(mlxe_backend_eog_tokens(ids, 16, &n, b));
  int endoftext = 0, im_end = 0;
  for (size_t i = 0; i < n; i++) {
    endoftext |= ids[i] == ENDOFTEXT;
    im_end |= ids[i] == IM_END;
    EXPECT(i == 0 || ids[i - 1] < ids[i]);
    EXPECT(ids[i] != IM_START);
  }
  EXPECT(endoftext && im_end);
  FAILS(mlxe_backend_eog_tokens(ids, 1, &n, b), MLXE_ERROR_BUFFER_TOO_SMALL);
  EXPECT(n >= 2);
  FAILS(mlxe_backend_eog_tokens(ids, 16, NULL, b), MLXE_ERROR);
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s QWEN.gguf\n", argv[0]);
    return 2;
  }
  mlxe_backend b;
  CHECK(mlxe_backend_new(&b, argv[1], NULL));
  check_tokenize(b);
  check_pieces(b);
  check_detokenize(b);
  check_chat_template(b);
  check_eog(b);
  CHECK(mlxe_backend_free(b));
  printf("ok\n");
  return 0;
}
