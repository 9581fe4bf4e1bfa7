/* CPU engine against the transformers references (../shared/reference):
 * top-8 ids and logits at every prompt position, the full last-position
 * logits, greedy continuations; then batch invariance and paged == contiguous.
 * Runs every kernel set this CPU has. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "kernels.h"
#include "sampler.h"
#include "test_util.h"

static float *read_floats(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    *n = (size_t)ftell(fp) / 4;
    rewind(fp);
    float *v = malloc(*n * 4);
    assert_int_equal(fread(v, 4, *n, fp), *n);
    fclose(fp);
    return v;
}

/* Whether a kernel set (below) keeps its KV cache in fp8. */
static bool kv_fp8_set(const char *kernels) { return kernels && strstr(kernels, "-fp8"); }

/* kernels: a CPU kernel set, NULL for the best one, or "cuda" for the GPU
 * engine; "cpu-f16" and "cuda-f16": the best CPU set or the GPU engine with
 * a half-precision KV cache; "cuda-fp8": the GPU engine with an fp8 one;
 * "cuda-persistent": the GPU engine with its persistent decode kernel;
 * "-nographs" after a GPU one: decode steps launched without CUDA graphs */
static engine *make_engine(const model_desc *m, const char *kernels, int threads, int block_size) {
    bool cuda = kernels && !strncmp(kernels, "cuda", 4), kv_f16 = kernels && strstr(kernels, "-f16"),
         kv_fp8 = kv_fp8_set(kernels);
    engine_config cfg = {.backend = cuda ? "cuda" : "cpu",
                         .n_threads = threads,
                         .block_size = block_size,
                         .n_blocks = 128,
                         .graphs = kernels && strstr(kernels, "-nographs") ? -1 : 0,
                         .kernels = cuda || kv_f16 ? NULL : kernels,
                         .kv_type = kv_f16   ? "f16"
                                    : kv_fp8 ? "fp8"
                                             : NULL};
    engine *e;
    char err[512];
    /* "cuda-persistent": the persistent decode kernel, as an operator turns it on */
    bool persistent = kernels && strstr(kernels, "-persistent");
    if (persistent)
        setenv("INFERNO_CUDA_PERSISTENT", "1", 1);
    int rc = engine_open(m, &cfg, &e, err, sizeof err);
    if (persistent)
        unsetenv("INFERNO_CUDA_PERSISTENT");
    if (rc)
        fail_msg("%s", err);
    return e;
}

/* The engine's own argmax of each logits row (the GPU's keys) is the host's. */
static void check_argmax(const float *logits, const int32_t *argmax, int32_t rows, int32_t vocab) {
    for (int32_t r = 0; r < rows; r++)
        if (argmax[r] != sampler_argmax(logits + (size_t)r * vocab, vocab))
            fail_msg("row %d of %d: the engine's argmax %d, the host's %d", r, rows, argmax[r],
                     sampler_argmax(logits + (size_t)r * vocab, vocab));
}

/* All-position logits of one prompt, run as a single prefill. */
static float *prompt_logits(engine *e, const model_desc *m, const int32_t *ids, int32_t n) {
    int32_t table[64], argmax[512];
    for (int i = 0; i < 64; i++)
        table[i] = i;
    assert_true(n <= 512);
    engine_seq s = {0, n, 0, table, 64, true};
    engine_batch b = {ids, n, &s, 1};
    float *logits = malloc((size_t)n * m->vocab * sizeof *logits);
    char err[512];
    if (engine_step(e, &b, logits, argmax, err, sizeof err))
        fail_msg("%s", err);
    check_argmax(logits, argmax, n, (int32_t)m->vocab);
    return logits;
}

struct tolerance {
    bool exact;       /* float activations: 1e-3 absolute, top-8 ids identical */
    double mean, max; /* 8-bit activations: last-position error bounds */
    double top1;      /* fraction of positions whose top-1 must agree */
};

/* An fp8 KV cache (3 mantissa bits) moves tinyA's last-position logits by
 * ~0.1 on average and 0.91 at worst (H200), with bf16 or q8_0 weights. */
static const struct tolerance kv_fp8_tolerance = {.mean = 0.15, .max = 1.5, .top1 = 0.95};

/* Checks one model file against its reference json with one kernel set. */
static void check_reference(const char *gguf, const char *ref_json, const char *ref_logits, const char *kernels,
                            struct tolerance tol) {
    char err[512];
    model_desc *m;
    if (model_open(ref_path(gguf), &m, err, sizeof err))
        fail_msg("%s", err);
    json_t *ref = json_load_file(ref_path(ref_json), 0, NULL);
    assert_non_null(ref);
    size_t n_full;
    float *full = read_floats(ref_path(ref_logits), &n_full);
    engine *e = make_engine(m, kernels, 2, 16);
    size_t pi;
    json_t *prompt;
    int positions = 0, top1_agree = 0;
    double err_sum = 0, err_max = 0;
    size_t err_n = 0;
    json_array_foreach(json_object_get(ref, "prompts"), pi, prompt) {
        json_t *ids_j = json_object_get(prompt, "ids"), *top_ids = json_object_get(prompt, "top_ids"),
               *top_logits = json_object_get(prompt, "top_logits");
        int32_t n = (int32_t)json_array_size(ids_j), ids[256];
        for (int32_t i = 0; i < n; i++)
            ids[i] = (int32_t)json_integer_value(json_array_get(ids_j, i));
        float *logits = prompt_logits(e, m, ids, n);
        for (int32_t t = 0; t < n; t++) {
            const float *row = logits + (size_t)t * m->vocab;
            json_t *want_ids = json_array_get(top_ids, (size_t)t), *want_logits = json_array_get(top_logits, (size_t)t);
            positions++;
            top1_agree += sampler_argmax(row, (int32_t)m->vocab) == json_integer_value(json_array_get(want_ids, 0));
            for (size_t k = 0; tol.exact && k < json_array_size(want_ids); k++) {
                int32_t id = (int32_t)json_integer_value(json_array_get(want_ids, k));
                double want = json_real_value(json_array_get(want_logits, k));
                if (fabs(row[id] - want) > 1e-3)
                    fail_msg("%s/%s prompt %zu pos %d: logit[%d] %f, want %f", gguf, kernels, pi, t, id, row[id], want);
                /* top-8 ids identical: nothing outside the reference's top 8 may beat its 8th */
                if (k == json_array_size(want_ids) - 1)
                    for (uint32_t v = 0; v < m->vocab; v++) {
                        bool in_top = false;
                        for (size_t q = 0; q < json_array_size(want_ids) && !in_top; q++)
                            in_top = json_integer_value(json_array_get(want_ids, q)) == v;
                        if (!in_top && row[v] > row[id])
                            fail_msg("%s/%s prompt %zu pos %d: id %u enters the top 8", gguf, kernels, pi, t, v);
                    }
            }
        }
        /* the full last-position logits */
        size_t off = (size_t)json_integer_value(json_object_get(prompt, "last_logits_offset"));
        assert_true(off + m->vocab <= n_full);
        const float *last = logits + (size_t)(n - 1) * m->vocab;
        for (uint32_t v = 0; v < m->vocab; v++) {
            double d = fabs(last[v] - full[off + v]);
            err_sum += d, err_n++;
            err_max = d > err_max ? d : err_max;
            if (tol.exact && d > 1e-3)
                fail_msg("%s/%s prompt %zu: last logit[%u] %f, want %f", gguf, kernels, pi, v, last[v], full[off + v]);
        }
        free(logits);
        if (tol.exact) { /* greedy continuation, one decode step at a time */
            json_t *greedy = json_object_get(prompt, "greedy");
            int32_t table[64];
            for (int i = 0; i < 64; i++)
                table[i] = i;
            int32_t tok, seq[512];
            float *row = malloc(m->vocab * sizeof *row);
            memcpy(seq, ids, (size_t)n * 4);
            logits = prompt_logits(e, m, ids, n);
            tok = sampler_argmax(logits + (size_t)(n - 1) * m->vocab, (int32_t)m->vocab);
            free(logits);
            for (size_t g = 0; g < json_array_size(greedy); g++) {
                if (tok != json_integer_value(json_array_get(greedy, g)))
                    fail_msg("%s/%s prompt %zu: greedy token %zu is %d, want %lld", gguf, kernels, pi, g, tok,
                             (long long)json_integer_value(json_array_get(greedy, g)));
                seq[n + g] = tok;
                engine_seq s = {0, 1, n + (int32_t)g, table, 64, false};
                engine_batch b = {&seq[n + g], 1, &s, 1};
                if (g % 2) { /* the engine's greedy sampling (the GPU: its output head's argmax keys) */
                    sample_plan plain = {.repetition_penalty = 1.0f};
                    assert_int_equal(engine_step_sample(e, &b, &plain, &tok, err, sizeof err), 0);
                    continue;
                }
                assert_int_equal(engine_step(e, &b, row, &tok, err, sizeof err), 0);
                check_argmax(row, &tok, 1, (int32_t)m->vocab);
            }
            free(row);
        }
    }
    if (!tol.exact) {
        double mean = err_sum / (double)err_n, agree = (double)top1_agree / positions;
        print_message("%s/%s: last-position |error| mean %.4f max %.4f, top-1 agree %d/%d\n", gguf, kernels, mean,
                      err_max, top1_agree, positions);
        assert_true(mean < tol.mean);
        assert_true(err_max < tol.max);
        assert_true(agree >= tol.top1);
    }
    engine_close(e);
    free(full);
    json_decref(ref);
    model_close(m);
}

/* The CPU kernel sets, then the CUDA engine as one more "kernel set". */
static const char *kernel_sets[] = {"reference", "avx2",     "avx512",   "cpu-f16",
                                    "cuda",      "cuda-f16", "cuda-fp8", "cuda-persistent"};
#define N_KERNEL_SETS 8

/* The GPU engine where it can start (libinferno-cuda.so built, a device
 * present); said once, so that a run without a GPU shows what it skipped. */
static bool have_cuda(void) {
    static int state; /* 0 unknown, 1 yes, -1 no */
    if (!state) {
        char err[512];
        model_desc *m;
        engine *e = NULL;
        engine_config cfg = {.backend = "cuda", .n_blocks = 4};
        state = model_open(ref_path("tinyA-bf16.gguf"), &m, err, sizeof err) == 0 &&
                        engine_open(m, &cfg, &e, err, sizeof err) == 0
                    ? 1
                    : -1;
        if (state < 0)
            print_message("cuda engine not tested here: %s\n", err);
        engine_close(e);
        model_close(m);
    }
    return state > 0;
}

static bool have(const char *k) {
    return !strcmp(k, "reference") || !strcmp(k, "cpu-f16") || (!strcmp(k, "avx2") && kernels_avx2()) ||
           (!strcmp(k, "avx512") && kernels_avx512()) || (!strncmp(k, "cuda", 4) && have_cuda());
}

/* Float32 activations match the reference to 1e-3. A half-precision KV
 * cache rounds keys and values to 11 bits, which the reference README
 * says is enough to move logits past that (measured on the H100: 2e-3 at
 * worst) and greedy sequences after near-ties, so it gets bounds of its own. */
static void test_reference_f32_bf16(void **state) {
    (void)state;
    struct tolerance exact = {.exact = true}, kv_f16 = {.mean = 0.005, .max = 0.05, .top1 = 0.97};
    for (int k = 0; k < N_KERNEL_SETS; k++) {
        if (!have(kernel_sets[k]))
            continue;
        struct tolerance tol = strstr(kernel_sets[k], "-f16") ? kv_f16
                               : kv_fp8_set(kernel_sets[k])   ? kv_fp8_tolerance
                                                              : exact;
        check_reference("tinyA-f32.gguf", "tinyA-exact.ref.json", "tinyA-exact.logits.f32", kernel_sets[k], tol);
        check_reference("tinyA-bf16.gguf", "tinyA-exact.ref.json", "tinyA-exact.logits.f32", kernel_sets[k], tol);
    }
}

/* Q8_0 weights: float activations match the dequantized reference to 1e-3;
 * 8-bit activations (the fast kernels) within the README's bounds, as must
 * the GPU (whose tensor-core path reads the weights rounded to bf16). */
static void test_reference_q8_0(void **state) {
    (void)state;
    check_reference("tinyA-q8_0.gguf", "tinyA-q8_0.ref.json", "tinyA-q8_0.logits.f32", "reference",
                    (struct tolerance){.exact = true});
    struct tolerance q8 = {.mean = 0.08, .max = 0.5, .top1 = 0.9};
    for (int k = 1; k < N_KERNEL_SETS; k++)
        if (have(kernel_sets[k]))
            check_reference("tinyA-q8_0.gguf", "tinyA-q8_0.ref.json", "tinyA-q8_0.logits.f32", kernel_sets[k],
                            kv_fp8_set(kernel_sets[k]) ? kv_fp8_tolerance : q8);
}

/* A sequence's logits do not depend on what else is in the batch, nor on
 * where its KV blocks sit or how big they are. On the GPU a batch of more
 * than 8 tokens takes the tensor-core path (activations as two bf16
 * halves; Q8_0 weights rounded to bf16) where a lone decode token takes
 * the float32 one, so there the bounds are those paths' difference. */
static void test_batch_and_paging_invariance(void **state) {
    (void)state;
    static const char *by_run[] = {NULL, "cpu-f16", "cuda", "cuda-f16", "cuda-fp8", "cuda-persistent"};
    for (int run = 0; run < 12; run++) {
        int file = run % 2;
        const char *kernels = by_run[run / 2];
        float tolerance = run < 4 ? 1e-4f : file ? (kv_fp8_set(kernels) ? 0.3f : 0.1f) : 2e-3f;
        if (kernels && !have(kernels))
            continue;
        char err[512];
        model_desc *m;
        assert_int_equal(model_open(ref_path(file ? "tinyA-q8_0.gguf" : "tinyA-bf16.gguf"), &m, err, sizeof err), 0);
        uint32_t V = m->vocab;
        /* 8 sequences of different lengths; the probe is sequence 3 */
        int32_t lens[8] = {5, 17, 1, 23, 9, 40, 2, 12}, toks[8][64];
        for (int s = 0; s < 8; s++)
            for (int i = 0; i < 64; i++)
                toks[s][i] = (int32_t)((s * 7919 + i * 104729) % 151000);
        /* alone, contiguous blocks of 16: prefill 20, then 3 decode steps */
        engine *alone = make_engine(m, kernels, 2, 16);
        int32_t table[64];
        for (int i = 0; i < 64; i++)
            table[i] = i;
        float *want = malloc((size_t)4 * V * sizeof *want), *got = malloc((size_t)4 * V * sizeof *got);
        engine_seq s = {0, 20, 0, table, 64, false};
        engine_batch b = {toks[3], 20, &s, 1};
        assert_int_equal(engine_step(alone, &b, want, NULL, err, sizeof err), 0);
        for (int d = 0; d < 3; d++) {
            engine_seq sd = {0, 1, 20 + d, table, 64, false};
            engine_batch bd = {&toks[3][20 + d], 1, &sd, 1};
            assert_int_equal(engine_step(alone, &bd, want + (size_t)(d + 1) * V, NULL, err, sizeof err), 0);
        }
        engine_close(alone);

        /* in a batch of 8, shuffled blocks of 4 positions: every other sequence
         * prefills or decodes beside it at each step */
        engine *mixed = make_engine(m, kernels, 2, 4);
        int32_t tables[8][16], pos[8] = {0};
        for (int q = 0; q < 8; q++) /* a permutation of the 128 blocks: no two sequences share one */
            for (int i = 0; i < 16; i++)
                tables[q][i] = (q * 16 + i) * 37 % 128;
        int32_t steps[4][8] = {
            {5, 17, 1, 20, 9, 3, 2, 12}, {0, 0, 1, 1, 0, 30, 1, 0}, {1, 0, 0, 1, 0, 0, 1, 0}, {0, 0, 1, 1, 0, 7, 0, 0}};
        for (int step = 0; step < 4; step++) {
            engine_seq seqs[8];
            int32_t flat[128], n = 0, ns = 0, probe_row = -1;
            for (int q = 0; q < 8; q++) {
                int32_t take = steps[step][q];
                if (!take || pos[q] + take > lens[q] + 40)
                    continue;
                if (q == 3)
                    probe_row = ns;
                seqs[ns++] = (engine_seq){n, take, pos[q], tables[q], 16, false};
                memcpy(flat + n, toks[q] + pos[q], (size_t)take * 4);
                n += take;
                pos[q] += take;
            }
            engine_batch mb = {flat, n, seqs, ns};
            float *rows = malloc((size_t)ns * V * sizeof *rows);
            int32_t argmax[8];
            assert_int_equal(engine_step(mixed, &mb, rows, argmax, err, sizeof err), 0);
            check_argmax(rows, argmax, ns, (int32_t)V);
            assert_true(probe_row >= 0);
            memcpy(got + (size_t)step * V, rows + (size_t)probe_row * V, V * sizeof *got);
            free(rows);
        }
        size_t worst = 0;
        for (size_t i = 0; i < (size_t)4 * V; i++)
            worst = fabsf(got[i] - want[i]) > fabsf(got[worst] - want[worst]) ? i : worst;
        print_message("%s %s: batched against alone, max |difference| %g\n", kernels ? kernels : "cpu",
                      file ? "q8_0" : "bf16", fabsf(got[worst] - want[worst]));
        if (fabsf(got[worst] - want[worst]) > tolerance)
            fail_msg("%s row %zu: batched %f, alone %f", kernels ? kernels : "cpu", worst / V, got[worst], want[worst]);
        engine_close(mixed);
        free(want), free(got);
        model_close(m);
    }
}

enum { WIDE_PROMPT = 6, WIDE_DECODE = 3, WIDE_PROBES = 3 };

/* Sequence s's tokens in test_wide_decode: s * 7919 + i * 104729 (mod 151000). */
static int32_t wide_token(int32_t s, int i) { return (int32_t)((s * 7919 + i * 104729) % 151000); }

/* n sequences prefilled in one step, then WIDE_DECODE decode steps of one
 * token each; out gets the probes' logits, [WIDE_PROBES][WIDE_DECODE][V]. */
static void wide_run(const model_desc *m, const char *kernels, int32_t n, const int32_t *probes, float *out) {
    uint32_t V = m->vocab;
    char err[512];
    engine *e = make_engine(m, kernels, 2, 16);
    int32_t *tables = malloc((size_t)n * 4), *flat = malloc((size_t)n * WIDE_PROMPT * 4),
            *argmax = malloc((size_t)n * 4);
    engine_seq *seqs = malloc((size_t)n * sizeof *seqs);
    float *rows = malloc((size_t)n * V * 4);
    for (int32_t s = 0; s < n; s++) {
        tables[s] = s; /* one block of 16 positions each */
        seqs[s] = (engine_seq){s * WIDE_PROMPT, WIDE_PROMPT, 0, &tables[s], 1, false};
        for (int i = 0; i < WIDE_PROMPT; i++)
            flat[s * WIDE_PROMPT + i] = wide_token(s, i);
    }
    engine_batch pb = {flat, n * WIDE_PROMPT, seqs, n};
    assert_int_equal(engine_step(e, &pb, rows, NULL, err, sizeof err), 0);
    for (int d = 0; d < WIDE_DECODE; d++) {
        for (int32_t s = 0; s < n; s++) {
            seqs[s] = (engine_seq){s, 1, WIDE_PROMPT + d, &tables[s], 1, false};
            flat[s] = wide_token(s, WIDE_PROMPT + d);
        }
        engine_batch db = {flat, n, seqs, n};
        assert_int_equal(engine_step(e, &db, rows, argmax, err, sizeof err), 0);
        check_argmax(rows, argmax, n, (int32_t)V);
        for (int p = 0; p < WIDE_PROBES; p++)
            memcpy(out + ((size_t)p * WIDE_DECODE + d) * V, rows + (size_t)probes[p] * V, V * 4);
    }
    engine_close(e);
    free(tables), free(flat), free(argmax), free(seqs), free(rows);
}

static float max_difference(const float *a, const float *b, size_t n) {
    float worst = 0.0f;
    for (size_t i = 0; i < n; i++)
        worst = fmaxf(worst, fabsf(a[i] - b[i]));
    return worst;
}

/* Decode steps of many sequences, one token each: a probe sequence's
 * logits equal its own alone. Past the GPU's GEMV sizes the CUDA engine's
 * attention leaves its output split for the o product and, where its grid
 * is one wave, finishes the q|k|v heads itself: that must give the same
 * bits as the finish kernel (INFERNO_CUDA_FUSE_HEADS=0), and decode graphs
 * (captured at the first decode step, replayed at the next two) the same
 * bits as launches one by one. 12 sequences give
 * attention several slices of the positions (merged by the last), 120 one
 * slice. Alone, the prompt runs on the GEMVs, so a half or fp8 cache may
 * round its rows differently: bounds as the batch invariance test's. */
static void test_wide_decode(void **state) {
    (void)state;
    static const char *by_run[] = {NULL, "cuda", "cuda-f16", "cuda-fp8"};
    static const int32_t widths[] = {12, 120};
    char err[512];
    model_desc *m;
    assert_int_equal(model_open(ref_path("tinyA-bf16.gguf"), &m, err, sizeof err), 0);
    uint32_t V = m->vocab;
    size_t n_out = (size_t)WIDE_PROBES * WIDE_DECODE * V;
    float *wide = malloc(n_out * 4), *plain = malloc(n_out * 4), *alone = malloc(n_out * 4), *rows = malloc(V * 4);
    for (int run = 0; run < 4; run++) {
        const char *kernels = by_run[run];
        if (kernels && !have(kernels))
            continue;
        float tolerance = run == 0 ? 1e-4f : run == 1 ? 2e-3f : run == 2 ? 1e-2f : 0.3f;
        for (int wi = 0; wi < 2; wi++) {
            int32_t n = widths[wi], probes[WIDE_PROBES] = {0, n / 2 + 1, n - 1};
            wide_run(m, kernels, n, probes, wide);
            if (kernels) {
                setenv("INFERNO_CUDA_FUSE_HEADS", "0", 1);
                wide_run(m, kernels, n, probes, plain);
                unsetenv("INFERNO_CUDA_FUSE_HEADS");
                float d = max_difference(wide, plain, n_out);
                print_message("%s: %d sequences a step, heads finished in attention against by their own kernel: "
                              "max |difference| %g\n",
                              kernels, n, d);
                if (d != 0.0f)
                    fail_msg("%s, %d sequences: the heads' finish in attention differs by %g", kernels, n, d);
                char eager[64];
                snprintf(eager, sizeof eager, "%s-nographs", kernels);
                wide_run(m, eager, n, probes, plain);
                d = max_difference(wide, plain, n_out);
                print_message("%s: %d sequences a step, decode graphs against none: max |difference| %g\n", kernels, n,
                              d);
                if (d != 0.0f)
                    fail_msg("%s, %d sequences: decode steps differ by %g with graphs and without", kernels, n, d);
            }
            for (int p = 0; p < WIDE_PROBES; p++) { /* alone: the prompt, then one token a step */
                engine *e = make_engine(m, kernels, 2, 16);
                int32_t mine[WIDE_PROMPT + WIDE_DECODE], table = 5;
                for (int i = 0; i < WIDE_PROMPT + WIDE_DECODE; i++)
                    mine[i] = wide_token(probes[p], i);
                engine_seq sp = {0, WIDE_PROMPT, 0, &table, 1, false};
                engine_batch b = {mine, WIDE_PROMPT, &sp, 1};
                assert_int_equal(engine_step(e, &b, rows, NULL, err, sizeof err), 0);
                for (int d = 0; d < WIDE_DECODE; d++) {
                    engine_seq sd = {0, 1, WIDE_PROMPT + d, &table, 1, false};
                    engine_batch bd = {mine + WIDE_PROMPT + d, 1, &sd, 1};
                    assert_int_equal(
                        engine_step(e, &bd, alone + ((size_t)p * WIDE_DECODE + d) * V, NULL, err, sizeof err), 0);
                }
                engine_close(e);
            }
            float d = max_difference(wide, alone, n_out);
            print_message("%s: %d sequences a decode step against alone, max |difference| %g\n",
                          kernels ? kernels : "cpu", n, d);
            if (d > tolerance)
                fail_msg("%s, %d sequences: a sequence's logits in a wide decode step differ from its own by %g",
                         kernels ? kernels : "cpu", n, d);
        }
    }
    free(wide), free(plain), free(alone), free(rows);
    model_close(m);
}

/* Sequence s's prompt length in test_decode_attention_tc: 20 to 219 positions. */
static int32_t tc_prompt_len(int32_t s) { return 20 + (s * 37) % 200; }

/* n sequences' prompts (one step each) on a half cache in blocks of
 * block_size, sequence s's j-th block being block j * n + s (tables
 * interleaved, out of order), then one decode step of all n: its logits
 * into out, [n][V]. tc: whether the engine says it has tensor-core decode
 * attention. */
static void tc_decode_run(const model_desc *m, int32_t n, int block_size, float *out, bool *tc) {
    uint32_t V = m->vocab;
    int32_t per_seq = 221 / block_size + 2; /* the longest prompt (219) and a token */
    engine_config cfg = {
        .backend = "cuda", .n_threads = 1, .block_size = block_size, .n_blocks = n * per_seq, .kv_type = "f16"};
    engine *e;
    char err[512];
    if (engine_open(m, &cfg, &e, err, sizeof err))
        fail_msg("%s", err);
    *tc = strstr(engine_describe(e), "tensor-core decode attention") != NULL;
    int32_t *tables = malloc((size_t)n * per_seq * 4), *ids = malloc(256 * 4), *next = malloc((size_t)n * 4);
    engine_seq *seqs = malloc((size_t)n * sizeof *seqs);
    float *rows = malloc((size_t)V * 4);
    for (int32_t s = 0; s < n; s++) {
        for (int32_t j = 0; j < per_seq; j++)
            tables[s * per_seq + j] = j * n + s;
        int32_t len = tc_prompt_len(s);
        for (int i = 0; i < len; i++)
            ids[i] = wide_token(s, i);
        engine_seq sp = {0, len, 0, tables + s * per_seq, per_seq, false};
        engine_batch b = {ids, len, &sp, 1};
        assert_int_equal(engine_step(e, &b, rows, NULL, err, sizeof err), 0);
        seqs[s] = (engine_seq){s, 1, len, tables + s * per_seq, per_seq, false};
        next[s] = wide_token(s, len);
    }
    engine_batch db = {next, n, seqs, n};
    assert_int_equal(engine_step(e, &db, out, NULL, err, sizeof err), 0);
    engine_close(e);
    free(tables), free(ids), free(next), free(seqs), free(rows);
}

/* Large decode steps on a half cache run attention on the tensor cores
 * (attention_tc_kernel; INFERNO_CUDA_ATTN_TC=1 takes it for every step
 * past the GEMV sizes): its logits against the CUDA-core kernel's
 * (INFERNO_CUDA_ATTN_TC=0), with contexts of many chunks, a token's
 * positions in several slices merged by the last (12 and 40 sequences on
 * the GPU's ~1,000 warps), block sizes that hold a chunk of 16 positions
 * (16, 64) and ones that do not (5, 8). Both sum in float32 from ~22-bit
 * operands, so they differ by rounding alone (1.5e-4 measured). */
static void test_decode_attention_tc(void **state) {
    (void)state;
    if (!have("cuda-f16"))
        return;
    static const int block_sizes[] = {16, 64, 5, 8};
    static const int32_t widths[] = {12, 40};
    model_desc *m;
    char err[512];
    assert_int_equal(model_open(ref_path("tinyA-bf16.gguf"), &m, err, sizeof err), 0);
    size_t n_out = (size_t)40 * m->vocab;
    float *tc_rows = malloc(n_out * 4), *cores_rows = malloc(n_out * 4);
    for (size_t b = 0; b < sizeof block_sizes / sizeof block_sizes[0]; b++)
        for (int wi = 0; wi < 2; wi++) {
            int32_t n = widths[wi];
            bool tc, cores_tc;
            setenv("INFERNO_CUDA_ATTN_TC", "1", 1); /* whatever the step's size (tinyA's groups are 2) */
            tc_decode_run(m, n, block_sizes[b], tc_rows, &tc);
            setenv("INFERNO_CUDA_ATTN_TC", "0", 1);
            tc_decode_run(m, n, block_sizes[b], cores_rows, &cores_tc);
            unsetenv("INFERNO_CUDA_ATTN_TC");
            if (!tc || cores_tc)
                fail_msg("INFERNO_CUDA_ATTN_TC: tensor-core attention %s with it 1, %s with it 0", tc ? "on" : "off",
                         cores_tc ? "on" : "off");
            float d = max_difference(tc_rows, cores_rows, (size_t)n * m->vocab);
            print_message("cuda-f16, block size %d, %d sequences: decode attention on the tensor cores against "
                          "the CUDA cores: max |difference| %g\n",
                          block_sizes[b], n, d);
            if (d > 1e-3f)
                fail_msg("block size %d, %d sequences: tensor-core decode attention differs by %g", block_sizes[b], n,
                         d);
        }
    free(tc_rows), free(cores_rows);
    model_close(m);
}

static void test_bad_batches(void **state) {
    (void)state;
    char err[512];
    model_desc *m;
    assert_int_equal(model_open(ref_path("tinyA-f32.gguf"), &m, err, sizeof err), 0);
    engine *e = make_engine(m, NULL, 1, 16);
    float *logits = malloc(m->vocab * sizeof *logits);
    int32_t table[2] = {0, 1}, bad_table[2] = {0, 128}, toks[3] = {1, 2, 151936};
    struct {
        engine_seq s;
        int32_t n;
        const char *needle;
    } cases[] = {
        {{0, 3, 0, table, 2, false}, 3, "outside the vocabulary"},
        {{0, 2, 31, table, 2, false}, 2, "do not fit"},
        {{0, 2, 20, bad_table, 2, false}, 2, "block id 128 out of range"},
        {{1, 2, 0, table, 2, false}, 2, "do not fit"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        engine_batch b = {toks, cases[i].n, &cases[i].s, 1};
        assert_int_equal(engine_step(e, &b, logits, NULL, err, sizeof err), -1);
        if (!strstr(err, cases[i].needle))
            fail_msg("case %zu: '%s' lacks '%s'", i, err, cases[i].needle);
    }
    free(logits);
    engine_close(e);
    /* KV types: fp8 is the GPU engine's alone; anything else is refused by name */
    const char *bad_kv[][2] = {{"cpu", "fp8"}, {"cpu", "q8_0"}, {"cuda", "bf16"}};
    for (size_t i = 0; i < sizeof bad_kv / sizeof bad_kv[0]; i++) {
        engine_config cfg = {.backend = bad_kv[i][0], .n_blocks = 4, .kv_type = bad_kv[i][1]};
        engine *bad = NULL;
        assert_int_equal(engine_open(m, &cfg, &bad, err, sizeof err), -1);
        assert_null(bad);
        if (!strstr(err, bad_kv[i][1]))
            fail_msg("KV type %s on %s: '%s' does not name it", bad_kv[i][1], bad_kv[i][0], err);
    }
    model_close(m);
    assert_int_equal(model_open("/nonexistent.gguf", &m, err, sizeof err), -1);
    assert_null(m);
    assert_non_null(strstr(err, "/nonexistent.gguf"));
}

/* Sampling: greedy is argmax, a seed reproduces, filters keep what they must. */
static void test_sampler(void **state) {
    (void)state;
    enum { V = 1000 };
    float base[V], logits[V];
    for (int i = 0; i < V; i++)
        base[i] = sinf((float)i * 0.37f) * 3.0f;
    sampling_params p = sampling_defaults();
    sampler s;
    sampler_init(&s, &p);
    memcpy(logits, base, sizeof logits);
    int32_t greedy = sampler_sample(&s, logits, V, NULL, 0, 0, NULL);
    int32_t largest = 0; /* found here by hand: the sampler's own argmax would check itself */
    for (int i = 1; i < V; i++)
        largest = base[i] > base[largest] ? i : largest;
    assert_int_equal(greedy, largest);
    p.temperature = 0.8f, p.top_k = 50, p.top_p = 0.9f, p.seed = 7, p.logprobs = 5;
    int32_t first[20], second[20];
    for (int run = 0; run < 2; run++) {
        sampler_init(&s, &p);
        for (int i = 0; i < 20; i++) {
            memcpy(logits, base, sizeof logits);
            sample_result r;
            (run ? second : first)[i] = sampler_sample(&s, logits, V, NULL, 0, 0, &r);
            assert_int_equal(r.n_top, 5);
            assert_true(r.top_logprobs[0] >= r.top_logprobs[4]);
            assert_true(r.logprob <= 0.0f);
        }
    }
    assert_memory_equal(first, second, sizeof first);
    /* top_k 1 is greedy whatever the temperature; a huge bias wins; min_p 1 keeps only the max */
    p = sampling_defaults();
    p.temperature = 5.0f, p.top_k = 1;
    sampler_init(&s, &p);
    memcpy(logits, base, sizeof logits);
    assert_int_equal(sampler_sample(&s, logits, V, NULL, 0, 0, NULL), greedy);
    int32_t bias_id = 3;
    float bias_val = 100.0f;
    p = sampling_defaults();
    p.bias_ids = &bias_id, p.bias_values = &bias_val, p.n_bias = 1;
    sampler_init(&s, &p);
    memcpy(logits, base, sizeof logits);
    assert_int_equal(sampler_sample(&s, logits, V, NULL, 0, 0, NULL), 3);
    p = sampling_defaults();
    p.temperature = 1.0f, p.min_p = 1.0f;
    sampler_init(&s, &p);
    for (int i = 0; i < 10; i++) {
        memcpy(logits, base, sizeof logits);
        assert_int_equal(sampler_sample(&s, logits, V, NULL, 0, 0, NULL), greedy);
    }
    /* a nucleus of more than half the tokens is walked largest first: a draw
     * near 0 takes the largest, near 1 the smallest kept */
    {
        float five[5] = {5.0f, 4.0f, 3.0f, 2.0f, 1.0f};
        sample_plan plan = {.temperature = 1.0f, .top_p = 0.999f, .uniform = 1e-9};
        assert_int_equal(sampler_draw(&plan, five, 5), 0);
        plan.uniform = 1.0 - 1e-9;
        assert_int_equal(sampler_draw(&plan, five, 5), 4);
    }
    /* repetition and frequency penalties push the greedy token down */
    p = sampling_defaults();
    p.frequency_penalty = 100.0f;
    sampler_init(&s, &p);
    memcpy(logits, base, sizeof logits);
    int32_t hist[2] = {greedy, greedy};
    assert_int_not_equal(sampler_sample(&s, logits, V, hist, 2, 0, NULL), greedy);
    p = sampling_defaults();
    p.repetition_penalty = 1000.0f;
    sampler_init(&s, &p);
    memcpy(logits, base, sizeof logits);
    assert_int_not_equal(sampler_sample(&s, logits, V, hist, 2, 2, NULL), greedy);
}

/* A small deterministic generator for the tests' logits. */
static uint64_t test_rng = 88172645463325252ull;
static double rand01(void) {
    test_rng ^= test_rng << 13, test_rng ^= test_rng >> 7, test_rng ^= test_rng << 17;
    return (double)(test_rng >> 11) / 9007199254740992.0;
}

/* Sampling parameters that reach every branch of the draw. */
static sampling_params plan_case(int c, const int32_t *bias_ids, const float *bias_values) {
    sampling_params p = sampling_defaults();
    p.seed = (uint64_t)c * 7919u;
    switch (c % 12) {
    case 0: break; /* greedy */
    case 1:
        p.n_bias = 2, p.bias_ids = bias_ids, p.bias_values = bias_values; /* greedy with bias */
        break;
    case 2: p.temperature = 1.0f; break; /* the whole vocabulary, id order */
    case 3: p.temperature = 0.7f, p.top_k = 1; break;
    case 4: p.temperature = 0.9f, p.top_k = 20; break;
    case 5: p.temperature = 1.3f, p.top_k = 256; break;
    case 6: /* more than the GPU's candidates (every other round with top-p and min-p in it) */
        p.temperature = 1.0f, p.top_k = c % 24 < 12 ? 300 : 1000;
        p.top_p = c % 24 < 12 ? 1.0f : 0.6f, p.min_p = c % 24 < 12 ? 0.0f : 0.01f;
        break;
    case 7: p.temperature = 0.8f, p.top_p = 0.9f; break;
    case 8: p.temperature = 1.0f, p.min_p = 0.05f; break;
    case 9: p.temperature = 0.6f, p.top_k = 40, p.top_p = 0.8f, p.min_p = 0.02f; break;
    case 10: p.temperature = 1.0f, p.repetition_penalty = 1.3f, p.presence_penalty = 0.5f; break;
    default:
        p.temperature = 0.5f, p.top_p = 0.95f, p.frequency_penalty = 0.7f;
        p.n_bias = 2, p.bias_ids = bias_ids, p.bias_values = bias_values;
    }
    return p;
}

/* A row of logits: peaked (a few strong tokens), flat (top-p sets larger
 * than the GPU's candidate list) or with many exact ties. */
static void plan_row(float *row, int32_t V, int kind) {
    for (int32_t i = 0; i < V; i++) {
        double g = sqrt(-2.0 * log(rand01() + 1e-12)) * cos(6.283185307179586 * rand01());
        row[i] = kind == 0 ? (float)(g * 3.0) : kind == 1 ? (float)(g * 0.05) : floorf((float)g * 2.0f) / 2.0f;
    }
    if (kind == 0)
        for (int j = 0; j < 8; j++)
            row[(int32_t)(rand01() * V)] += 12.0f;
}

/* sampler_sample == sampler_plan + sampler_apply_edits + sampler_draw: the
 * split that engines sample with gives the same tokens. */
static void test_sample_plans(void **state) {
    (void)state;
    enum { V = 3000, H = 40 };
    float *base = malloc(V * sizeof *base), *a = malloc(V * sizeof *a), *b = malloc(V * sizeof *b);
    uint32_t *seen = calloc(V, sizeof *seen);
    int32_t hist[H], seen_ids[H], seen_counts[H], bias_ids[2] = {5, 17};
    float bias_values[2] = {4.0f, -2.5f};
    for (int i = 0; i < H; i++)
        hist[i] = (int32_t)(rand01() * 50);
    for (int c = 0; c < 240; c++) {
        plan_row(base, V, c % 3);
        sampling_params p = plan_case(c, bias_ids, bias_values);
        sampler s1, s2;
        sampler_init(&s1, &p), sampler_init(&s2, &p);
        memcpy(a, base, V * sizeof *a), memcpy(b, base, V * sizeof *b);
        int32_t want = sampler_sample(&s1, a, V, hist, H, 10, NULL);
        sample_plan plan;
        sampler_plan(&s2, hist, H, 10, V, seen, seen_ids, seen_counts, &plan);
        sampler_apply_edits(&plan, b, V);
        assert_int_equal(sampler_draw(&plan, b, V), want);
        for (int32_t i = 0; i < V; i++)
            assert_true(seen[i] == 0); /* left zeroed */
    }
    free(base), free(a), free(b), free(seen);
}

/* Each engine's own sampling (the GPU's sample kernels) against the host's,
 * on the same full-vocabulary logits: the same token for every row and plan
 * (flat rows' top-p and min-p sets, and top_k past the pick's candidates,
 * are sample_wide_kernel's). */
static void test_engine_sampling(void **state) {
    (void)state;
    model_desc *m;
    char err[512];
    if (model_open(ref_path("tinyA-bf16.gguf"), &m, err, sizeof err))
        fail_msg("%s", err);
    int32_t V = (int32_t)m->vocab;
    enum { ROWS = 48, H = 30 };
    float *logits = malloc((size_t)ROWS * V * sizeof *logits), *row = malloc(V * sizeof *row);
    uint32_t *seen = calloc(V, sizeof *seen);
    int32_t hist[H], seen_ids[ROWS][H], seen_counts[ROWS][H], bias_ids[2] = {151645, 9707}, want[ROWS], got[ROWS];
    float bias_values[2] = {6.0f, -1.5f};
    sample_plan plans[ROWS];
    for (int k = 0; k < N_KERNEL_SETS; k++) {
        const char *kernels = kernel_sets[k];
        if (!have(kernels) || (strcmp(kernels, "cuda") && strcmp(kernels, "reference")))
            continue;
        engine *e = make_engine(m, kernels, 1, 16);
        for (int round = 0; round < 3; round++) {
            for (int r = 0; r < ROWS; r++) {
                plan_row(logits + (size_t)r * V, V, (r + round) % 3);
                for (int i = 0; i < H; i++)
                    hist[i] = (int32_t)(rand01() * 2000);
                sampling_params p = plan_case(r + 12 * round, bias_ids, bias_values);
                sampler s;
                sampler_init(&s, &p);
                sampler_plan(&s, hist, H, 12, V, seen, seen_ids[r], seen_counts[r], &plans[r]);
                memcpy(row, logits + (size_t)r * V, V * sizeof *row);
                sampler_apply_edits(&plans[r], row, V);
                want[r] = sampler_draw(&plans[r], row, V);
            }
            if (engine_sample_logits(e, logits, ROWS, plans, got, err, sizeof err))
                fail_msg("%s", err);
            for (int r = 0; r < ROWS; r++)
                if (got[r] != want[r])
                    fail_msg("%s: row %d (case %d): token %d, the host's %d", kernels, r, (r + 12 * round) % 12, got[r],
                             want[r]);
        }
        engine_close(e);
    }
    free(logits), free(row), free(seen);
    model_close(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_f32_bf16),
        cmocka_unit_test(test_reference_q8_0),
        cmocka_unit_test(test_batch_and_paging_invariance),
        cmocka_unit_test(test_wide_decode),
        cmocka_unit_test(test_decode_attention_tc),
        cmocka_unit_test(test_bad_batches),
        cmocka_unit_test(test_sampler),
        cmocka_unit_test(test_sample_plans),
        cmocka_unit_test(test_engine_sampling),
    };
    return cmocka_run_group_tests_name("engine", tests, NULL, NULL);
}
