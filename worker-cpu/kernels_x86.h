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
/* Software prefetch distance for weight streams, in bytes: rows are short
 * (1-6 KB), too short for the hardware prefetcher to ramp up on its own. */
#define PREFETCH_BYTES 4096

/* One tile: rows r..r+rb, tokens t..t+tb (rb <= RB, tb <= TB, constants after inlining). */
#define DEFINE_FLOAT_TILE(NAME, LOAD, SCALAR, ELEM)                                                                    \
    KERNEL_TARGET static inline __attribute__((always_inline)) void NAME(                                              \
        const weight *w, const matmul_args *a, uint64_t r, int t, const int rb, const int tb) {                        \
        VEC acc[RB][TB];                                                                                               \
        _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++)      \
            acc[i][j] = VZERO();                                                                                       \
        const uint8_t *wrow[RB];                                                                                       \
        const float *xrow[TB];                                                                                         \
        _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) wrow[i] =                                                 \
            (const uint8_t *)w->data + (r + i) * w->row_bytes;                                                         \
        _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) xrow[j] = a->x + (size_t)(t + j) * w->cols;               \
        uint64_t c = 0;                                                                                                \
        for (; c + VLEN <= w->cols; c += VLEN) {                                                                       \
            _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) /* the next tile's rows */                            \
                _mm_prefetch((const char *)wrow[i] + (size_t)RB * w->row_bytes + c * ELEM, _MM_HINT_T0);               \
            VEC xv[TB];                                                                                                \
            _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) xv[j] = VLOAD_F32(xrow[j] + c);                       \
            _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) {                                                     \
                VEC wv = LOAD(wrow[i], c);                                                                             \
                _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) acc[i][j] = VFMA(wv, xv[j], acc[i][j]);           \
            }                                                                                                          \
        }                                                                                                              \
        _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) {    \
            float s = VSUM(acc[i][j]);                                                                                 \
            for (uint64_t k = c; k < w->cols; k++)                                                                     \
                s += SCALAR(wrow[i], k) * xrow[j][k];                                                                  \
            a->y[(size_t)(t + j) * a->y_stride + r + i] = s;                                                           \
        }                                                                                                              \
    }

/* Few activation rows (decode): weight-bandwidth bound. Walk the weight
 * rows in memory order as one stream (so the hardware prefetcher locks on),
 * prefetch a row ahead, and keep 4 independent accumulators per token so
 * the FMA latency never limits. One weight row, tb tokens. */
#define DEFINE_FLOAT_GEMV(NAME, LOAD, SCALAR, ELEM)                                                                    \
    KERNEL_TARGET static inline __attribute__((always_inline)) void NAME(const weight *w, const matmul_args *a,        \
                                                                         uint64_t r, int t, const int tb) {            \
        VEC acc[TB][4];                                                                                                \
        _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) _Pragma("GCC unroll 4") for (int u = 0; u < 4; u++)       \
            acc[j][u] = VZERO();                                                                                       \
        const uint8_t *wrow = (const uint8_t *)w->data + r * w->row_bytes;                                             \
        const float *xrow[TB];                                                                                         \
        _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) xrow[j] = a->x + (size_t)(t + j) * w->cols;               \
        uint64_t c = 0;                                                                                                \
        for (; c + 4 * VLEN <= w->cols; c += 4 * VLEN) {                                                               \
            _mm_prefetch((const char *)(wrow + PREFETCH_BYTES + c * ELEM), _MM_HINT_T0);                               \
            _mm_prefetch((const char *)(wrow + PREFETCH_BYTES + c * ELEM + 64), _MM_HINT_T0);                          \
            _Pragma("GCC unroll 4") for (int u = 0; u < 4; u++) {                                                      \
                VEC wv = LOAD(wrow, c + u * VLEN);                                                                     \
                _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) acc[j][u] =                                       \
                    VFMA(wv, VLOAD_F32(xrow[j] + c + u * VLEN), acc[j][u]);                                            \
            }                                                                                                          \
        }                                                                                                              \
        for (; c + VLEN <= w->cols; c += VLEN) {                                                                       \
            VEC wv = LOAD(wrow, c);                                                                                    \
            _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) acc[j][0] =                                           \
                VFMA(wv, VLOAD_F32(xrow[j] + c), acc[j][0]);                                                           \
        }                                                                                                              \
        _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) {                                                         \
            float s = VSUM(VADD(VADD(acc[j][0], acc[j][1]), VADD(acc[j][2], acc[j][3])));                              \
            for (uint64_t k = c; k < w->cols; k++)                                                                     \
                s += SCALAR(wrow, k) * xrow[j][k];                                                                     \
            a->y[(size_t)(t + j) * a->y_stride + r] = s;                                                               \
        }                                                                                                              \
    }

/* The matmul over rows r0..r1. Fewer than TBV activation rows (decode):
 * the row-sequential GEMV. Otherwise RB x TBV tiles, rows outer, and the
 * last 1..TBV-1 activation rows in a narrower tile of the same weight rows
 * while they are still in L1 (a GEMV pass after the tiles would stream
 * every weight a second time: batch 8 with 3-wide tiles ran at half speed). */
#define DEFINE_TILED_MATMUL(NAME, TILE, GEMV) DEFINE_TILED_MATMUL_TB(NAME, TILE, GEMV, TB)
/* TBV: activation rows per tile (<= TB), smaller where a tile needs more registers. */
#define DEFINE_TILED_MATMUL_TB(NAME, TILE, GEMV, TBV)                                                                  \
    KERNEL_TARGET static void NAME(const weight *w, const matmul_args *a, uint64_t r0, uint64_t r1) {                  \
        int full = a->T / TBV * TBV, left = a->T - full;                                                               \
        if (!full) {                                                                                                   \
            for (uint64_t g = r0; g < r1; g++)                                                                         \
                switch (left) {                                                                                        \
                case 1: GEMV(w, a, g, 0, 1); break;                                                                    \
                case 2: GEMV(w, a, g, 0, 2); break;                                                                    \
                default: GEMV(w, a, g, 0, 3); break;                                                                   \
                }                                                                                                      \
            return;                                                                                                    \
        }                                                                                                              \
        uint64_t r = r0;                                                                                               \
        for (; r + RB <= r1; r += RB) {                                                                                \
            for (int t = 0; t < full; t += TBV)                                                                        \
                TILE(w, a, r, t, RB, TBV);                                                                             \
            TILE_TAIL(TILE, TBV, RB);                                                                                  \
        }                                                                                                              \
        for (; r < r1; r++) { /* the last rows, one at a time */                                                       \
            for (int t = 0; t < full; t += TBV)                                                                        \
                TILE(w, a, r, t, 1, TBV);                                                                              \
            TILE_TAIL(TILE, TBV, 1);                                                                                   \
        }                                                                                                              \
    }
/* The last `left` (< TBV) activation rows against rows r..r+RBV; constant
 * TBV, so the impossible cases compile away. */
#define TILE_TAIL(TILE, TBV, RBV)                                                                                      \
    switch (left) {                                                                                                    \
    case 1: TILE(w, a, r, full, RBV, 1); break;                                                                        \
    case 2:                                                                                                            \
        if (TBV > 2)                                                                                                   \
            TILE(w, a, r, full, RBV, 2);                                                                               \
        break;                                                                                                         \
    case 3:                                                                                                            \
        if (TBV > 3)                                                                                                   \
            TILE(w, a, r, full, RBV, 3);                                                                               \
        break;                                                                                                         \
    }

/* F16C from CPUID (leaf 1, ECX bit 29): not every compiler's
 * __builtin_cpu_supports knows the name. */
#include <cpuid.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
static inline bool cpu_has_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c >> 29 & 1);
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

/* ---- weight copies on 2 MiB pages (the kernel sets' repack) ---- */

/* Room for a weight copy of n bytes. From 2 MiB on, on 2 MiB pages:
 * decode streams these, and 4 KiB pages would cost a TLB miss every 4 KiB.
 * Only the whole 2 MiB pages are advised, and smaller copies come from the
 * heap: khugepaged fills an advised 2 MiB range whatever part of it is
 * used, so a small matrix alone in one (tinyA has 15) would later grow the
 * worker's memory by 2 MiB, long after start. */
static uint8_t *alloc_weight_copy(size_t n) {
    const size_t huge = 2u << 20;
    if (n < huge)
        return aligned_alloc(64, (n + 63) / 64 * 64);
    uint8_t *out = aligned_alloc(huge, (n + huge - 1) / huge * huge);
    if (out)
        madvise(out, n / huge * huge, MADV_HUGEPAGE);
    return out;
}

/* 16-bit weights keep their layout; the copy only moves them onto
 * 2 MiB pages (file-backed mappings use 4 KiB ones). */
static int copy_to_huge_pages(const weight *src, weight *dst) {
    size_t n = src->rows * src->row_bytes;
    uint8_t *out = alloc_weight_copy(n);
    if (!out)
        return -1;
    memcpy(out, src->data, n);
    *dst = *src;
    dst->data = out;
    return 0;
}
