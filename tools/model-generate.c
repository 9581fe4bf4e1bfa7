/* model-generate: run the CPU engine in-process on one prompt.
 *
 *   model-generate --model FILE.gguf --prompt TEXT [--chat] [--max-tokens N]
 *                  [--temperature T --top-p P --top-k K --min-p P --seed S
 *                   --repetition-penalty R --presence-penalty P --frequency-penalty F]
 *                  [--threads N] [--kernels reference|avx2|avx512] [--backend cpu|cuda]
 *   For tests: --prompt-ids 1,2,3  --print-ids  --dump-logits FILE  --ignore-eos
 *
 * Streams the text to stdout, then prints prefill and decode speed to stderr. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "cli.h"
#include "backend.h"
#include "jinja.h"
#include "sampler.h"
#include "tokenizer_service.h"

#define PROG          "model-generate"
#define PREFILL_CHUNK 512

static void usage(FILE *out) {
    fprintf(out, "usage: " PROG " --model FILE.gguf (--prompt TEXT | --prompt-ids 1,2,3) [options]\n"
                 "  --chat                 wrap the prompt as a user message in the model's chat template\n"
                 "  --max-tokens N         tokens to generate (default 64)\n"
                 "  --temperature T        0 = greedy (default)\n"
                 "  --top-k K --top-p P --min-p P --seed S\n"
                 "  --repetition-penalty R --presence-penalty P --frequency-penalty F\n"
                 "  --threads N            CPU threads (default 2)\n"
                 "  --kernels NAME         reference, avx2 or avx512 (default: best available)\n"
                 "  --backend NAME         cpu (default) or cuda\n"
                 "  --kv-type TYPE         KV cache precision: f32 (default), f16, or fp8 (cuda)\n"
                 "  --print-ids            print the generated ids, comma separated, on one line\n"
                 "  --dump-logits FILE     write the float32 logits of the last prompt position\n"
                 "  --ignore-eos           keep generating past end-of-sequence tokens\n");
}

static int parse_ids(const char *s, token_list *out) {
    for (char *end; *s;) {
        long v = strtol(s, &end, 10);
        if (end == s || v < 0 || v > 0x7fffffff)
            return -1;
        token_list_push(out, (int32_t)v);
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return -1;
    }
    return out->n ? 0 : -1;
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *prompt = NULL, *prompt_ids = NULL, *dump = NULL, *kernels = NULL, *backend = "cpu",
               *kv_type = NULL;
    bool chat = false, print_ids = false, ignore_eos = false;
    int max_tokens = 64, threads = 2;
    sampling_params sp = sampling_defaults();
    const cli_flag flags[] = {{"--model", CLI_STRING, &model_path},
                              {"--prompt", CLI_STRING, &prompt},
                              {"--prompt-ids", CLI_STRING, &prompt_ids},
                              {"--chat", CLI_SWITCH, &chat},
                              {"--max-tokens", CLI_INT, &max_tokens},
                              {"--threads", CLI_INT, &threads},
                              {"--kernels", CLI_STRING, &kernels},
                              {"--backend", CLI_STRING, &backend},
                              {"--kv-type", CLI_STRING, &kv_type},
                              {"--print-ids", CLI_SWITCH, &print_ids},
                              {"--ignore-eos", CLI_SWITCH, &ignore_eos},
                              {"--dump-logits", CLI_STRING, &dump},
                              {"--temperature", CLI_FLOAT, &sp.temperature},
                              {"--top-k", CLI_INT, &sp.top_k},
                              {"--top-p", CLI_FLOAT, &sp.top_p},
                              {"--min-p", CLI_FLOAT, &sp.min_p},
                              {"--seed", CLI_U64, &sp.seed},
                              {"--repetition-penalty", CLI_FLOAT, &sp.repetition_penalty},
                              {"--presence-penalty", CLI_FLOAT, &sp.presence_penalty},
                              {"--frequency-penalty", CLI_FLOAT, &sp.frequency_penalty},
                              {NULL}};
    int parsed = cli_parse(argc, argv, PROG, usage, flags);
    if (parsed != CLI_RUN)
        return parsed;
    if (!model_path || (!prompt && !prompt_ids) || max_tokens < 0 || threads < 1) {
        usage(stderr);
        return 2;
    }
    char err[1024];
    model_desc *m;
    tokenizer *tk;
    if (model_open(model_path, &m, err, sizeof err) || tokenizer_load(m->file, &tk, err, sizeof err)) {
        fprintf(stderr, PROG ": %s\n", err);
        return 1;
    }
    token_list ids = {0};
    if (prompt_ids) {
        if (parse_ids(prompt_ids, &ids)) {
            fprintf(stderr, PROG ": --prompt-ids: expected comma-separated token ids\n");
            return 2;
        }
    } else if (chat) {
        const char *src = tokenizer_chat_template(tk);
        jinja_template *t = src ? jinja_compile(src, strlen(src), err, sizeof err) : NULL;
        json_t *vars = json_pack("{s:[{s:s,s:s}], s:b}", "messages", "role", "user", "content", prompt,
                                 "add_generation_prompt", 1);
        char *text;
        size_t len;
        if (!t || tokenizer_template_vars(tk, vars) || jinja_render(t, vars, NULL, &text, &len, err, sizeof err)) {
            fprintf(stderr, PROG ": chat template: %s\n", src ? err : "the model has none");
            return 1;
        }
        tokenizer_encode(tk, text, len, true, &ids);
        free(text);
        json_decref(vars);
        jinja_free(t);
    } else {
        if (tokenizer_adds_bos(tk))
            token_list_push(&ids, tokenizer_bos(tk));
        tokenizer_encode(tk, prompt, strlen(prompt), true, &ids);
    }
    int32_t n_prompt = (int32_t)ids.n, total = n_prompt + max_tokens;
    engine_config cfg = {.backend = backend,
                         .n_threads = threads,
                         .block_size = 16,
                         .kv_tokens = total + 16,
                         .kernels = kernels,
                         .kv_type = kv_type};
    engine *e;
    if (engine_open(m, &cfg, &e, err, sizeof err)) {
        fprintf(stderr, PROG ": %s\n", err);
        return 1;
    }
    int32_t n_table = (total + 15) / 16;
    int32_t *table = malloc((size_t)n_table * sizeof *table);
    for (int32_t i = 0; i < n_table; i++)
        table[i] = i;
    float *logits = malloc((size_t)m->vocab * sizeof *logits);
    sampler smp;
    sampler_init(&smp, &sp);
    token_list generated = {0};
    detokenizer dt;
    detok_init(&dt, tk);

    double t0 = clock_now();
    for (int32_t done = 0; done < n_prompt;) { /* prefill in chunks */
        int32_t n = n_prompt - done < PREFILL_CHUNK ? n_prompt - done : PREFILL_CHUNK;
        engine_seq s = {0, n, done, table, n_table, false};
        engine_batch b = {ids.ids + done, n, &s, 1};
        if (engine_step(e, &b, logits, NULL, err, sizeof err)) {
            fprintf(stderr, PROG ": %s\n", err);
            return 1;
        }
        done += n;
    }
    double t1 = clock_now();
    if (dump) {
        FILE *fp = fopen(dump, "wb");
        if (!fp || fwrite(logits, sizeof *logits, m->vocab, fp) != m->vocab || fclose(fp)) {
            fprintf(stderr, PROG ": %s: cannot write\n", dump);
            return 1;
        }
    }
    /* the first token from the prefill's logits; each later one from a step
     * that samples in the engine (on a GPU, only the id comes back) */
    uint32_t *seen = calloc(m->vocab, sizeof *seen);
    int32_t *seen_buf = malloc(2 * (size_t)total * sizeof *seen_buf);
    if (!seen || !seen_buf) {
        fprintf(stderr, PROG ": out of memory\n");
        return 1;
    }
    int32_t n_gen = 0, tok = -1;
    for (; n_gen < max_tokens; n_gen++) {
        if (n_gen == 0) {
            tok = sampler_sample(&smp, logits, (int32_t)m->vocab, ids.ids, (int32_t)ids.n, n_prompt, NULL);
        } else {
            sample_plan plan;
            sampler_plan(&smp, ids.ids, (int32_t)ids.n, n_prompt, (int32_t)m->vocab, seen, seen_buf, seen_buf + total,
                         &plan);
            engine_seq s = {0, 1, (int32_t)ids.n - 1, table, n_table, false};
            engine_batch b = {&ids.ids[ids.n - 1], 1, &s, 1};
            if (engine_step_sample(e, &b, &plan, &tok, err, sizeof err)) {
                fprintf(stderr, PROG ": %s\n", err);
                return 1;
            }
        }
        token_list_push(&ids, tok);
        token_list_push(&generated, tok);
        if (!print_ids) {
            char *piece = NULL;
            size_t len = 0, cap = 0;
            detok_push(&dt, tok, &piece, &len, &cap);
            fwrite(piece, 1, len, stdout);
            fflush(stdout);
            free(piece);
        }
        if (!ignore_eos && (tok == tokenizer_eos(tk) || tokenizer_is_control(tk, tok))) {
            n_gen++;
            break;
        }
    }
    free(seen), free(seen_buf);
    double t2 = clock_now();
    if (print_ids) {
        for (size_t i = 0; i < generated.n; i++)
            printf("%s%d", i ? "," : "", generated.ids[i]);
        printf("\n");
    } else {
        char *rest = NULL;
        size_t len = 0, cap = 0;
        detok_flush(&dt, &rest, &len, &cap);
        fwrite(rest, 1, len, stdout);
        free(rest);
        printf("\n");
    }
    double gb = (double)m->weight_bytes / 1e9;
    int32_t decode_steps = n_gen > 1 ? n_gen - 1 : 0;
    fprintf(stderr,
            PROG ": %s: prefill %d tokens in %.3f s (%.1f tok/s), decode %d tokens in %.3f s "
                 "(%.1f tok/s, %.1f GB/s of weights)\n",
            engine_describe(e), n_prompt, t1 - t0, n_prompt / (t1 - t0), decode_steps, t2 - t1,
            decode_steps / (t2 - t1 + 1e-12), decode_steps * gb / (t2 - t1 + 1e-12));
    free(logits), free(table);
    token_list_free(&ids), token_list_free(&generated);
    engine_close(e);
    tokenizer_free(tk);
    model_close(m);
    return 0;
}
