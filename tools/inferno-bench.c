/* inferno-bench: engine speed on one model.
 *
 *   inferno-bench --model FILE.gguf [--prompt N] [--gen N] [--batch 1,8,32] [--repeat N]
 *                 [--threads N] [--kernels NAME] [--backend cpu|cuda] [--kv-type f32|f16|fp8] [--json]
 *
 * Prefill: one sequence of N prompt tokens in one step. Decode: B sequences
 * (each with an N-token prompt already in the cache) step together, one
 * token each, for --gen steps. Achieved bandwidth counts the weight bytes a
 * step reads (every matrix once) over the step time. Token ids are fixed
 * pseudo-random values, so runs are comparable. Steps ask only for each
 * row's argmax, as greedy serving would (on the GPU, the logits then stay
 * there); the first decode step of each batch size is a warm-up (on the
 * GPU, it captures the step's graph) and is not timed. --repeat N times
 * each measurement N times and reports the median: shared VMs vary by 15%
 * from one run to the next. --temperature T (and --top-p P, --top-k K) makes
 * the decode steps sample instead (engine_step_sample, as the worker does;
 * on the GPU the sample kernels), each row with a fixed draw. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "cli.h"
#include "backend.h"
#include "sampler.h"

#define PROG "inferno-bench"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: " PROG " --model FILE.gguf [--prompt N] [--gen N] [--batch 1,8,32] [--repeat N] [--threads N]\n"
            "                     [--kernels reference|avx2|avx512] [--backend cpu|cuda] [--kv-type f32|f16|fp8]\n"
            "                     [--temperature T [--top-p P] [--top-k K]] [--json]\n");
}

int main(int argc, char **argv) {
    const char *path = NULL, *batches = "1,8,32", *kernels = NULL, *backend = "cpu", *kv_type = NULL;
    int prompt = 128, gen = 32, threads = 2, repeat = 1, top_k = 0;
    float temperature = 0.0f, top_p = 1.0f;
    bool json = false;
    const cli_flag flags[] = {{"--model", CLI_STRING, &path},
                              {"--prompt", CLI_INT, &prompt},
                              {"--gen", CLI_INT, &gen},
                              {"--repeat", CLI_INT, &repeat},
                              {"--batch", CLI_STRING, &batches},
                              {"--threads", CLI_INT, &threads},
                              {"--kernels", CLI_STRING, &kernels},
                              {"--json", CLI_SWITCH, &json},
                              {"--backend", CLI_STRING, &backend},
                              {"--kv-type", CLI_STRING, &kv_type},
                              {"--temperature", CLI_FLOAT, &temperature},
                              {"--top-p", CLI_FLOAT, &top_p},
                              {"--top-k", CLI_INT, &top_k},
                              {NULL}};
    int parsed = cli_parse(argc, argv, PROG, usage, flags);
    if (parsed != CLI_RUN)
        return parsed;
    if (!path || prompt < 1 || gen < 1 || threads < 1 || repeat < 1 || repeat > 100 || temperature < 0.0f ||
        !(top_p > 0.0f && top_p <= 1.0f) || top_k < 0) {
        usage(stderr);
        return 2;
    }
    int bs[16], nb = 0, max_b = 1;
    for (const char *s = batches; *s && nb < 16;) {
        bs[nb] = atoi(s);
        if (bs[nb] < 1) {
            fprintf(stderr, PROG ": --batch: expected sizes like 1,8,32\n");
            return 2;
        }
        max_b = bs[nb] > max_b ? bs[nb] : max_b;
        nb++;
        s = strchr(s, ',') ? strchr(s, ',') + 1 : s + strlen(s);
    }
    char err[1024];
    model_desc *m;
    if (model_open(path, &m, err, sizeof err)) {
        fprintf(stderr, PROG ": %s\n", err);
        return 1;
    }
    int bsz = 16, per_seq = (prompt + gen + bsz) / bsz;
    engine_config cfg = {.backend = backend,
                         .n_threads = threads,
                         .block_size = bsz,
                         .n_blocks = per_seq * max_b,
                         .kernels = kernels,
                         .kv_type = kv_type};
    engine *e;
    if (engine_open(m, &cfg, &e, err, sizeof err)) {
        fprintf(stderr, PROG ": %s\n", err);
        return 1;
    }
    int32_t *tables = malloc((size_t)per_seq * max_b * sizeof *tables);
    for (int i = 0; i < per_seq * max_b; i++)
        tables[i] = i;
    int32_t *toks = malloc((size_t)(prompt > max_b ? prompt : max_b) * sizeof *toks);
    for (int i = 0; i < (prompt > max_b ? prompt : max_b); i++)
        toks[i] = (int32_t)((i * 2654435761u) % (m->vocab - 1000));
    int32_t *ids = malloc((size_t)(prompt > max_b ? prompt : max_b) * sizeof *ids);
    double gb = (double)m->weight_bytes / 1e9;

    /* prefill: warm up once, then time the prompt --repeat times (once:
     * the faster of the warm-up and the timed run) */
    engine_seq s = {0, prompt, 0, tables, per_seq, false};
    engine_batch b = {toks, prompt, &s, 1};
    double times[100];
    double t0 = clock_now();
    if (engine_step(e, &b, NULL, ids, err, sizeof err)) {
        fprintf(stderr, PROG ": %s\n", err);
        return 1;
    }
    double warm = clock_now() - t0;
    for (int r = 0; r < repeat; r++) {
        t0 = clock_now();
        engine_step(e, &b, NULL, ids, err, sizeof err);
        times[r] = clock_now() - t0;
    }
    double prefill_s = repeat == 1 && warm < times[0] ? warm : median(times, repeat);
    double prefill_tps = prompt / prefill_s;

    /* sampled decode: one plan for every row, its draw fixed (0.5) */
    sample_plan *plans = malloc((size_t)max_b * sizeof *plans);
    for (int q = 0; q < max_b; q++)
        plans[q] = (sample_plan){
            .temperature = temperature, .top_p = top_p, .top_k = top_k, .repetition_penalty = 1.0f, .uniform = 0.5};
    double decode_tps[16], decode_gbs[16];
    for (int k = 0; k < nb; k++) {
        int B = bs[k];
        engine_seq *seqs = calloc((size_t)B, sizeof *seqs);
        for (int q = 0; q < B; q++) { /* each sequence's prompt into its own blocks */
            engine_seq sp = {0, prompt, 0, tables + (size_t)q * per_seq, per_seq, false};
            engine_batch bp = {toks, prompt, &sp, 1};
            if (q > 0)
                engine_step(e, &bp, NULL, ids, err, sizeof err);
        }
        /* a repeat rewrites the same positions' KV slots with the same values */
        for (int r = 0; r < repeat; r++) {
            double start = 0;
            for (int step = 0; step <= gen; step++) {
                if (step == 1)
                    start = clock_now();
                for (int q = 0; q < B; q++)
                    seqs[q] = (engine_seq){q, 1, prompt + step, tables + (size_t)q * per_seq, per_seq, false};
                engine_batch bd = {toks, B, seqs, B};
                if (temperature > 0.0f ? engine_step_sample(e, &bd, plans, ids, err, sizeof err)
                                       : engine_step(e, &bd, NULL, ids, err, sizeof err)) {
                    fprintf(stderr, PROG ": %s\n", err);
                    return 1;
                }
            }
            times[r] = clock_now() - start;
        }
        double el = median(times, repeat);
        decode_tps[k] = (double)B * gen / el;
        decode_gbs[k] = gb * gen / el;
        free(seqs);
    }
    if (json) {
        printf("{\"model\": \"%s\", \"backend\": \"%s\", \"engine\": \"%s\", \"threads\": %d, \"weight_gb\": %.4f, "
               "\"prompt\": %d, \"repeat\": %d, "
               "\"prefill_tokens_per_s\": %.2f, \"prefill_gb_per_s\": %.2f, \"decode\": [",
               path, engine_backend(e), engine_describe(e), threads, gb, prompt, repeat, prefill_tps, gb / prefill_s);
        for (int k = 0; k < nb; k++)
            printf("%s{\"batch\": %d, \"tokens_per_s\": %.2f, \"gb_per_s\": %.2f}", k ? ", " : "", bs[k], decode_tps[k],
                   decode_gbs[k]);
        printf("]}\n");
    } else {
        printf("model %s (%s, %.2f GB of weights), %s engine: %s\n", path, m->name, gb, engine_backend(e),
               engine_describe(e));
        printf("  prefill  %4d tokens   %9.1f tok/s\n", prompt, prefill_tps);
        for (int k = 0; k < nb; k++)
            printf("  decode   batch %4d   %9.1f tok/s   %6.1f GB/s\n", bs[k], decode_tps[k], decode_gbs[k]);
    }
    free(ids), free(toks), free(tables), free(plans);
    engine_close(e);
    model_close(m);
    return 0;
}
