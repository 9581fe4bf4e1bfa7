/* Tile loops shared by the AVX2 and AVX-512 kernel files. Each file
 * defines VEC (the float vector), VLEN, the loads, FMA and horizontal sum,
 * then includes this to get the float-weight matmuls: RB weight rows times
 * TB activation rows per tile, so each weight vector loaded is used TB times
 * and each activation vector RB times. */
#ifndef KERNEL_TARGET
#error "define KERNEL_TARGET and the vector primitives before including kernels_x86.h"
#endif

#define RB 4 /* weight rows per tile */
#define TB 4 /* activation rows per tile */

/* One tile: rows r..r+rb, tokens t..t+tb (rb <= RB, tb <= TB, constants after inlining). */
#define DEFINE_FLOAT_TILE(NAME, LOAD, SCALAR)                                                                       \
    KERNEL_TARGET static inline __attribute__((always_inline)) void NAME(const weight *w, const matmul_args *a,    \
                                                                         uint64_t r, int t, const int rb,          \
                                                                         const int tb) {                           \
        VEC acc[RB][TB];                                                                                           \
        _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) \
            acc[i][j] = VZERO();                                                                                   \
        const uint8_t *wrow[RB];                                                                                   \
        const float *xrow[TB];                                                                                     \
        _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) wrow[i] = (const uint8_t *)w->data + (r + i) * w->row_bytes; \
        _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) xrow[j] = a->x + (size_t)(t + j) * w->cols;           \
        uint64_t c = 0;                                                                                            \
        for (; c + VLEN <= w->cols; c += VLEN) {                                                                   \
            VEC xv[TB];                                                                                            \
            _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) xv[j] = VLOAD_F32(xrow[j] + c);                   \
            _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) {                                                 \
                VEC wv = LOAD(wrow[i], c);                                                                         \
                _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) acc[i][j] = VFMA(wv, xv[j], acc[i][j]);       \
            }                                                                                                      \
        }                                                                                                          \
        _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) { \
            float s = VSUM(acc[i][j]);                                                                             \
            for (uint64_t k = c; k < w->cols; k++)                                                                 \
                s += SCALAR(wrow[i], k) * xrow[j][k];                                                              \
            a->y[(size_t)(t + j) * a->y_stride + r + i] = s;                                                       \
        }                                                                                                          \
    }

/* The matmul over rows r0..r1 built from tiles. */
#define DEFINE_TILED_MATMUL(NAME, TILE)                                                                            \
    KERNEL_TARGET static void NAME(const weight *w, const matmul_args *a, uint64_t r0, uint64_t r1) {              \
        int t = 0;                                                                                                 \
        for (; t + TB <= a->T; t += TB) {                                                                          \
            uint64_t r = r0;                                                                                       \
            for (; r + RB <= r1; r += RB) TILE(w, a, r, t, RB, TB);                                                \
            for (; r < r1; r++) TILE(w, a, r, t, 1, TB);                                                           \
        }                                                                                                          \
        for (; t < a->T; t++) {                                                                                    \
            uint64_t r = r0;                                                                                       \
            for (; r + RB <= r1; r += RB) TILE(w, a, r, t, RB, 1);                                                 \
            for (; r < r1; r++) TILE(w, a, r, t, 1, 1);                                                            \
        }                                                                                                          \
    }

static inline float scalar_f32(const uint8_t *p, uint64_t k) {
    float f;
    memcpy(&f, p + 4 * k, 4);
    return f;
}
static inline float scalar_f16(const uint8_t *p, uint64_t k) {
    uint16_t h;
    memcpy(&h, p + 2 * k, 2);
    return fp16_to_f32(h);
}
static inline float scalar_bf16(const uint8_t *p, uint64_t k) {
    uint16_t h;
    memcpy(&h, p + 2 * k, 2);
    return bf16_to_f32(h);
}

/* Q8_0 activations: the reference quantizer rounds exactly as llama.cpp's. */
static void quantize_q8_0_rows(const float *x, block_q8_0 *q, uint64_t n) { tensor_quantize_row(TENSOR_Q8_0, x, q, n); }
