/* CPU matrix kernels. Every kernel computes, for rows r0..r1 of a weight
 * matrix W and T activation rows x[t]:   y[t][r] = dot(W[r], x[t])
 *
 * Kernel sets: "reference" (plain C: each weight row dequantized to float,
 * float activations; the ground truth for tests), "avx2" and "avx512"
 * (SIMD, F16C, and for Q8_0, Q5_0, Q4_K and Q6_K weights 8-bit activations
 * in Q8_0 blocks with integer dot products, as llama.cpp does). kernels_select picks the best
 * the CPU supports at run time. */
#ifndef INFERNO_KERNELS_H
#define INFERNO_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "tensor_types.h"

/* Q8_0 weights repacked for SIMD (kernels_avx512.c): each row holds its
 * cols int8 quants contiguously, then its cols/32 fp16 scales and int16
 * quant sums, padded to 64 bytes: Q8_0's bytes plus 2 per block, in an
 * order that streams. Not a GGUF type. */
#define TENSOR_Q8_0_PACKED 200

typedef struct {
    const float *x;       /* [T][cols] */
    const block_q8_0 *xq; /* [T][cols/32]: x quantized, for Q8_0 weights when q8_activations */
    const uint8_t *xu;    /* [T][cols]: the quants of xq plus 128 (for Q8_0_PACKED) */
    const float *xd;      /* [T][cols/32 rounded up to 16]: the scales of xq */
    const float *xs;      /* [T][cols/16]: each 16 quants of xq summed, times their scale (low-bit types) */
    int T;
    float *y; /* y[t * y_stride + r] */
    size_t y_stride;
} matmul_args;

/* The low-bit types whose SIMD kernels (kernels_quant.h) take 8-bit
 * activations with their sums per 16 (a->xq and a->xs). */
static inline bool kernels_low_bit(uint32_t type) {
    return type == TENSOR_Q5_0 || type == TENSOR_Q4_K || type == TENSOR_Q6_K;
}

typedef void (*matmul_fn)(const weight *w, const matmul_args *a, uint64_t r0, uint64_t r1);

/* The KV cache's element type: float, or IEEE half (half the memory and
 * the bytes decode attention reads; llama.cpp's default). */
enum kv_type { KV_F32, KV_F16, KV_TYPES };
typedef void (*attn_scores_fn)(const float *q, const void *k, int n, int dim, float scale, float *scores);
typedef void (*attn_values_fn)(const float *p, const void *v, int n, int dim, float *out);

typedef struct {
    const char *name;
    matmul_fn matmul[256]; /* by tensor type; NULL: unsupported */
    bool q8_activations;   /* Q8_0, Q5_0, Q4_K and Q6_K weights want a->xq (and the last three a->xs) */
    void (*quantize_q8_0)(const float *x, block_q8_0 *q, uint64_t n);
    /* Optional: rewrite a weight into a layout (or onto pages) this set streams faster
     * (dst->data is malloc'ed), returning 0; -1 keeps the original. */
    int (*repack)(const weight *src, weight *dst);
    /* Attention over n consecutive KV rows of dim elements (one run of a KV block), by KV type:
     * scores[i] = dot(q, k_i) * scale, and out[0..dim) += sum_i p[i] * v_i. */
    attn_scores_fn attn_scores[KV_TYPES];
    attn_values_fn attn_values[KV_TYPES];
} kernel_set;

const kernel_set *kernels_reference(void);
const kernel_set *kernels_avx2(void);   /* NULL when the CPU lacks AVX2/FMA/F16C */
const kernel_set *kernels_avx512(void); /* NULL when the CPU lacks AVX-512 F/BW/VL/VNNI */
/* The best available; INFERNO_KERNELS=reference|avx2|avx512 overrides. */
const kernel_set *kernels_select(void);

#endif
