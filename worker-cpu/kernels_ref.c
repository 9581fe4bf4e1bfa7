/* Reference kernels: plain C, float activations, any weight type the GGUF
 * layer can dequantize. Slow and obviously right. */
#include <stdlib.h>
#include <string.h>

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

static float dot_ref(const float *a, const float *b, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static void axpy_ref(float *y, float alpha, const float *x, int n) {
    for (int i = 0; i < n; i++)
        y[i] += alpha * x[i];
}

const kernel_set *kernels_reference(void) {
    static kernel_set k = {.name = "reference", .quantize_q8_0 = quantize_q8_0_ref, .dot = dot_ref, .axpy = axpy_ref};
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
