/* Reference kernels: plain C, float activations, any weight type the GGUF
 * layer can dequantize. Slow and obviously right. */
#include <stdlib.h>
#include <string.h>

#include "fp16.h"
#include "kernels.h"

static void matmul_ref(const weight *w, const matmul_args *a, uint64_t r0, uint64_t r1) {
    float row_buf[4096];
    float *row = w->cols <= 4096 ? row_buf : malloc(w->cols * sizeof *row);
    for (uint64_t r = r0; r < r1; r++) {
        tensor_dequantize_row(w->type, (const uint8_t *)w->data + r * w->row_bytes, row, w->cols);
        for (int t = 0; t < a->T; t++) {
            const float *x = a->x + (size_t)t * w->cols;
            float sum = 0.0f;
            for (uint64_t c = 0; c < w->cols; c++)
                sum += row[c] * x[c];
            a->y[(size_t)t * a->y_stride + r] = sum;
        }
    }
    if (row != row_buf)
        free(row);
}

static void quantize_q8_0_ref(const float *x, block_q8_0 *q, uint64_t n) { tensor_quantize_row(TENSOR_Q8_0, x, q, n); }

static float kv_at(const void *rows, size_t i, enum kv_type type) {
    return type == KV_F16 ? fp16_to_f32(((const uint16_t *)rows)[i]) : ((const float *)rows)[i];
}

static void attn_scores_ref(enum kv_type type, const float *q, const void *k, int n, int dim, float scale,
                            float *scores) {
    for (int i = 0; i < n; i++) {
        float s = 0.0f;
        for (int d = 0; d < dim; d++)
            s += q[d] * kv_at(k, (size_t)i * dim + d, type);
        scores[i] = s * scale;
    }
}

static void attn_values_ref(enum kv_type type, const float *p, const void *v, int n, int dim, float *out) {
    for (int i = 0; i < n; i++)
        for (int d = 0; d < dim; d++)
            out[d] += p[i] * kv_at(v, (size_t)i * dim + d, type);
}

static void attn_scores_ref_f32(const float *q, const void *k, int n, int dim, float scale, float *scores) {
    attn_scores_ref(KV_F32, q, k, n, dim, scale, scores);
}
static void attn_scores_ref_f16(const float *q, const void *k, int n, int dim, float scale, float *scores) {
    attn_scores_ref(KV_F16, q, k, n, dim, scale, scores);
}
static void attn_values_ref_f32(const float *p, const void *v, int n, int dim, float *out) {
    attn_values_ref(KV_F32, p, v, n, dim, out);
}
static void attn_values_ref_f16(const float *p, const void *v, int n, int dim, float *out) {
    attn_values_ref(KV_F16, p, v, n, dim, out);
}

const kernel_set *kernels_reference(void) {
    static kernel_set k = {.name = "reference",
                           .quantize_q8_0 = quantize_q8_0_ref,
                           .attn_scores = {attn_scores_ref_f32, attn_scores_ref_f16},
                           .attn_values = {attn_values_ref_f32, attn_values_ref_f16}};
    static const uint32_t types[] = {TENSOR_F32,  TENSOR_F16,  TENSOR_BF16, TENSOR_Q8_0, TENSOR_Q4_0, TENSOR_Q4_1,
                                     TENSOR_Q5_0, TENSOR_Q5_1, TENSOR_Q4_K, TENSOR_Q5_K, TENSOR_Q6_K};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        k.matmul[types[i]] = matmul_ref;
    return &k;
}

const kernel_set *kernels_select(void) {
    const char *want = getenv("INFERNO_KERNELS");
    const kernel_set *k512 = kernels_avx512(), *k2 = kernels_avx2();
    if (want && !strcmp(want, "reference"))
        return kernels_reference();
    if (want && !strcmp(want, "avx2") && k2)
        return k2;
    if (k512)
        return k512;
    return k2 ? k2 : kernels_reference();
}
