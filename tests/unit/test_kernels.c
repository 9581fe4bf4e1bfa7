/* The CPU matmul kernels, type by type, against a double-precision dot
 * product of the dequantized weights: every kernel set this CPU has, the
 * quantized types with 8-bit activations (so the expected value uses the
 * same quantized activations and the kernel must agree to float rounding),
 * odd row counts, row ranges that start and end mid-tile, rows long enough
 * to split a range into several L2 row blocks, and token counts that
 * exercise both the tiles and the leftover GEMV. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fp16.h"
#include "kernels.h"

enum { ROWS = 37, MAX_T = 17 };

static float uniform(uint32_t *state) {
    *state = *state * 1664525u + 1013904223u;
    return (float)(*state >> 8) / (float)(1u << 24) * 2.0f - 1.0f;
}

struct problem {
    weight w;
    float *wf;      /* [ROWS][cols] dequantized weights */
    float *x;       /* [T][cols] activations */
    float *xf;      /* [T][cols] activations as the 8-bit path sees them */
    block_q8_0 *xq; /* [T][cols/32] */
    float *xs;      /* [T][cols/16] */
};

static void make_problem(struct problem *p, uint32_t type, uint64_t cols, int T, uint32_t seed) {
    uint64_t row_bytes;
    assert_true(tensor_row_bytes(type, cols, &row_bytes));
    float *values = malloc(ROWS * cols * sizeof *values);
    uint8_t *data = malloc(ROWS * row_bytes);
    p->wf = malloc(ROWS * cols * sizeof *p->wf);
    for (uint64_t i = 0; i < ROWS * cols; i++) /* rows of different scales and a positive skew */
        values[i] = (uniform(&seed) + 0.2f) * (float)(1 + (i / cols) % 5);
    for (int r = 0; r < ROWS; r++) {
        assert_int_equal(tensor_quantize_row(type, values + r * cols, data + r * row_bytes, cols), 0);
        assert_int_equal(tensor_dequantize_row(type, data + r * row_bytes, p->wf + r * cols, cols), 0);
    }
    free(values);
    p->w = (weight){.type = type, .rows = ROWS, .cols = cols, .row_bytes = row_bytes, .data = data};
    p->x = malloc(T * cols * sizeof *p->x), p->xf = malloc(T * cols * sizeof *p->xf);
    p->xq = malloc(T * cols / 32 * sizeof *p->xq), p->xs = malloc(T * cols / 16 * sizeof *p->xs);
    for (uint64_t i = 0; i < T * cols; i++)
        p->x[i] = uniform(&seed) * 3.0f;
    for (int t = 0; t < T; t++) {
        assert_int_equal(tensor_quantize_row(TENSOR_Q8_0, p->x + t * cols, p->xq + t * cols / 32, cols), 0);
        assert_int_equal(tensor_dequantize_row(TENSOR_Q8_0, p->xq + t * cols / 32, p->xf + t * cols, cols), 0);
        for (uint64_t s = 0; s < cols / 16; s++) {
            double sum = 0;
            for (int k = 0; k < 16; k++)
                sum += p->xf[t * cols + 16 * s + k];
            p->xs[t * cols / 16 + s] = (float)sum;
        }
    }
}

static void free_problem(struct problem *p) {
    free((void *)p->w.data), free(p->wf), free(p->x), free(p->xf), free(p->xq), free(p->xs);
}

/* Runs one kernel over rows r0..r1 and checks them; the rows outside keep their sentinel. */
static void check_kernel(const kernel_set *k, uint32_t type, uint64_t cols, int T, uint64_t r0, uint64_t r1) {
    struct problem p;
    make_problem(&p, type, cols, T, (uint32_t)(type * 131 + cols + (uint64_t)T * 7));
    bool q8 = k->q8_activations && (type == TENSOR_Q8_0 || kernels_low_bit(type));
    size_t y_stride = ROWS + 3;
    float *y = malloc((size_t)T * y_stride * sizeof *y);
    for (size_t i = 0; i < (size_t)T * y_stride; i++)
        y[i] = -12345.0f;
    matmul_args a = {.x = p.x, .xq = p.xq, .xs = p.xs, .T = T, .y = y, .y_stride = y_stride};
    k->matmul[type](&p.w, &a, r0, r1);
    const float *x = q8 ? p.xf : p.x;
    for (int t = 0; t < T; t++)
        for (uint64_t r = 0; r < y_stride; r++) {
            float got = y[t * y_stride + r];
            if (r < r0 || r >= r1) {
                if (got != -12345.0f)
                    fail_msg("%s %s: row %llu outside %llu..%llu written", k->name, tensor_type_name(type),
                             (unsigned long long)r, (unsigned long long)r0, (unsigned long long)r1);
                continue;
            }
            double want = 0, mag = 0;
            for (uint64_t c = 0; c < cols; c++)
                want += (double)p.wf[r * cols + c] * x[t * cols + c], mag += fabs(p.wf[r * cols + c] * x[t * cols + c]);
            if (fabs(got - want) > 2e-6 * mag + 1e-6)
                fail_msg("%s %s cols %llu T %d: y[%d][%llu] = %.6f, want %.6f (sum |w x| %.1f)", k->name,
                         tensor_type_name(type), (unsigned long long)cols, T, t, (unsigned long long)r, got, want, mag);
        }
    free(y);
    free_problem(&p);
}

static void test_every_type_every_set(void **state) {
    (void)state;
    const kernel_set *sets[] = {kernels_reference(), kernels_avx2(), kernels_avx512()};
    const uint32_t types[] = {TENSOR_F32, TENSOR_F16, TENSOR_BF16, TENSOR_Q8_0, TENSOR_Q5_0, TENSOR_Q4_K, TENSOR_Q6_K};
    const int token_counts[] = {1, 2, 3, 4, 5, 9, 16, MAX_T};
    int checked = 0;
    for (size_t s = 0; s < sizeof sets / sizeof sets[0]; s++) {
        if (!sets[s])
            continue;
        for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
            assert_non_null(sets[s]->matmul[types[i]]);
            for (size_t n = 0; n < sizeof token_counts / sizeof token_counts[0]; n++) {
                check_kernel(sets[s], types[i], 512, token_counts[n], 0, ROWS);
                check_kernel(sets[s], types[i], 768, token_counts[n], 3, ROWS - 2);
                checked += 2;
                if (types[i] != TENSOR_Q4_K && types[i] != TENSOR_Q6_K) /* rows of 9 blocks of 32 */
                    check_kernel(sets[s], types[i], 288, token_counts[n], 1, ROWS), checked++;
                /* rows long enough that a prompt matmul's L2 row blocks (ROW_BLOCK_BYTES) hold a few each */
                check_kernel(sets[s], types[i], 16384, token_counts[n], 2, ROWS), checked++;
            }
        }
        print_message("%s: %d matmuls checked\n", sets[s]->name, checked);
    }
}

/* Each set's activation quantizer writes the reference's blocks byte for
 * byte: random rows, rows whose quants are exact halves (roundf takes them
 * away from zero, SIMD rounding modes to even), all-zero and tiny rows. */
static void test_quantize_q8_0_matches_reference(void **state) {
    (void)state;
    enum { COLS = 32 * 64 };
    static float x[COLS];
    static block_q8_0 want[COLS / 32], got[COLS / 32];
    uint32_t rng = 7;
    for (int round = 0; round < 4; round++) {
        for (int i = 0; i < COLS; i++) {
            int block = i / 32, k = i % 32;
            float scale = powf(10.0f, (float)(block % 9) - 4.0f);
            x[i] = uniform(&rng) * scale;
            if (block % 8 == 1) /* max 127 -> d = 1: every other value a half */
                x[i] = k == 0 ? 127.0f : (float)(k - 16) + (k % 2 ? 0.5f : 0.0f);
            if (block % 8 == 2)
                x[i] = 0.0f;
            if (block % 8 == 3) /* tiny; not so tiny that 1 / d overflows (the reference's cast of inf is undefined) */
                x[i] = uniform(&rng) * 1e-30f;
            if (block % 8 == 4 && round % 2)
                x[i] = -x[i];
        }
        assert_int_equal(tensor_quantize_row(TENSOR_Q8_0, x, want, COLS), 0);
        const kernel_set *sets[] = {kernels_reference(), kernels_avx2(), kernels_avx512()};
        for (size_t s = 0; s < sizeof sets / sizeof sets[0]; s++) {
            if (!sets[s] || !sets[s]->quantize_q8_0)
                continue;
            memset(got, 0xa5, sizeof got);
            sets[s]->quantize_q8_0(x, got, COLS);
            for (int b = 0; b < COLS / 32; b++)
                if (memcmp(&got[b], &want[b], sizeof got[b]))
                    fail_msg("%s: Q8_0 block %d (round %d) differs from the reference quantizer's", sets[s]->name, b,
                             round);
        }
    }
}

/* Each set's attention kernels, both KV types, against double precision on
 * the same (rounded) keys and values: run lengths 1..9 (partial groups of
 * four keys) and head sizes with 16-, 8- and 1-wide remainders. A key's
 * score must be bit-identical whether scored alone or inside a run, which
 * is what lets a sequence's logits ignore where its KV blocks split. */
static void test_attention_kernels(void **state) {
    (void)state;
    enum { MAX_N = 9, MAX_DIM = 140 };
    static float q[MAX_DIM], p[MAX_N], kf[MAX_N * MAX_DIM], vf[MAX_N * MAX_DIM], out[MAX_DIM];
    static uint16_t kh[MAX_N * MAX_DIM], vh[MAX_N * MAX_DIM];
    const int dims[] = {16, 72, 128, 140, 3};
    const kernel_set *sets[] = {kernels_reference(), kernels_avx2(), kernels_avx512()};
    uint32_t rng = 11;
    for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
        int dim = dims[di];
        for (int i = 0; i < dim; i++)
            q[i] = uniform(&rng);
        for (int i = 0; i < MAX_N * dim; i++) {
            kh[i] = fp16_from_f32(uniform(&rng)), vh[i] = fp16_from_f32(uniform(&rng));
            kf[i] = fp16_to_f32(kh[i]), vf[i] = fp16_to_f32(vh[i]); /* the same values in both types */
        }
        for (int i = 0; i < MAX_N; i++)
            p[i] = uniform(&rng);
        for (size_t si = 0; si < sizeof sets / sizeof sets[0]; si++)
            for (int type = 0; type < KV_TYPES && sets[si]; type++)
                for (int n = 1; n <= MAX_N; n++) {
                    const void *k = type == KV_F16 ? (const void *)kh : kf, *v = type == KV_F16 ? (const void *)vh : vf;
                    float scores[MAX_N], alone;
                    sets[si]->attn_scores[type](q, k, n, dim, 0.5f, scores);
                    for (int i = 0; i < n; i++) {
                        double want = 0.0;
                        for (int d = 0; d < dim; d++)
                            want += (double)q[d] * kf[i * dim + d];
                        want *= 0.5;
                        if (fabs(scores[i] - want) > 1e-5 * (1.0 + fabs(want)))
                            fail_msg("%s kv type %d dim %d n %d: score %d is %g, want %g", sets[si]->name, type, dim, n,
                                     i, scores[i], want);
                        sets[si]->attn_scores[type](q, (const uint8_t *)k + (size_t)i * dim * (type ? 2 : 4), 1, dim,
                                                    0.5f, &alone);
                        if (memcmp(&alone, &scores[i], sizeof alone))
                            fail_msg("%s kv type %d dim %d: key %d scores %a alone, %a in a run of %d", sets[si]->name,
                                     type, dim, i, alone, scores[i], n);
                    }
                    for (int d = 0; d < dim; d++)
                        out[d] = (float)d; /* values add to what is there */
                    sets[si]->attn_values[type](p, v, n, dim, out);
                    for (int d = 0; d < dim; d++) {
                        double want = d;
                        for (int i = 0; i < n; i++)
                            want += (double)p[i] * vf[i * dim + d];
                        if (fabs(out[d] - want) > 1e-5 * (1.0 + fabs(want)))
                            fail_msg("%s kv type %d dim %d n %d: out[%d] is %g, want %g", sets[si]->name, type, dim, n,
                                     d, out[d], want);
                    }
                }
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_type_every_set),
        cmocka_unit_test(test_quantize_q8_0_matches_reference),
        cmocka_unit_test(test_attention_kernels),
    };
    return cmocka_run_group_tests_name("kernels", tests, NULL, NULL);
}
