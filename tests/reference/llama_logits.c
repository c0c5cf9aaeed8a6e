/* llama_logits: teacher-forced logits of every position from llama.cpp itself (libllama).
 *
 *   llama_logits MODEL.gguf OUT.f32 ID,ID,...
 *
 * Loads MODEL on the CPU, decodes the token ids as one batch with logits requested at every
 * position, and writes n_tokens x n_vocab float32 values (row-major, little-endian) to OUT.
 * The KV cache is float32 (K and V), so the reference rounds no more than the weights do.
 * Used by tests/reference/llama_cpp_goldens.py, which compiles it against the llama.cpp build.
 * Exit status 0 on success; messages on stderr. */
#include <llama.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void quiet(enum ggml_log_level level, const char *text, void *data) {
    (void)data;
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static int parse_ids(const char *list, llama_token **out) {
    int n = 1;
    for (const char *p = list; *p; ++p) n += *p == ',';
    llama_token *ids = malloc(sizeof(llama_token) * (size_t)n);
    if (!ids) return -1;
    int count = 0;
    const char *p = list;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0) { free(ids); return -1; }
        ids[count++] = (llama_token)v;
        p = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') { free(ids); return -1; }
    }
    *out = ids;
    return count;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL.gguf OUT.f32 ID,ID,...\n", argv[0]);
        return 2;
    }
    llama_token *ids = NULL;
    const int n = parse_ids(argv[3], &ids);
    if (n <= 0) { fprintf(stderr, "bad token list\n"); return 2; }

    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) { fprintf(stderr, "cannot load %s\n", argv[1]); return 1; }

    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)(n < 64 ? 64 : n);
    cp.n_batch = (uint32_t)n;
    cp.n_ubatch = (uint32_t)n;
    cp.n_seq_max = 1;
    cp.n_threads = 2;
    cp.n_threads_batch = 2;
    cp.type_k = GGML_TYPE_F32;
    cp.type_v = GGML_TYPE_F32;
    cp.no_perf = true;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "cannot create a context\n"); return 1; }

    struct llama_batch batch = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; ++i) {
        batch.token[i] = ids[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    batch.n_tokens = n;
    if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "llama_decode failed\n"); return 1; }

    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    FILE *out = fopen(argv[2], "wb");
    if (!out) { fprintf(stderr, "cannot write %s\n", argv[2]); return 1; }
    for (int i = 0; i < n; ++i) {
        const float *row = llama_get_logits_ith(ctx, i);
        if (!row || fwrite(row, sizeof(float), (size_t)n_vocab, out) != (size_t)n_vocab) {
            fprintf(stderr, "no logits for position %d\n", i);
            return 1;
        }
    }
    if (fclose(out) != 0) return 1;
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    free(ids);
    return 0;
}
