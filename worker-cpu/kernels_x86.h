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
/* Prompt matmuls pass every token tile over a block of weight rows this
 * big while it sits in L2, rather than every token over 4 rows at a time,
 * which re-read all the activations from L3 for each 4 rows (F16 6144 x
 * 1024, 128 tokens, 2 threads: median 54 -> 60 GMAC/s; Q8_0 unchanged). */
#define ROW_BLOCK_BYTES (160u << 10)

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
 * the row-sequential GEMV. Otherwise RB x TBV tiles over one block of rows
 * (ROW_BLOCK_BYTES) at a time, every token tile in turn, then the last
 * 1..TBV-1 activation rows in a narrower tile over the same block while it
 * is still in L2 (a GEMV pass after the tiles would stream every weight a
 * second time: batch 8 with 3-wide tiles ran at half speed). */
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
        uint64_t r = r0, block = ROW_BLOCK_BYTES / w->row_bytes / RB * RB;                                             \
        block = block < RB ? RB : block;                                                                               \
        for (uint64_t b0 = r0; b0 + RB <= r1; b0 += block) {                                                           \
            uint64_t b1 = b0 + block < r1 ? b0 + block : r1 - (r1 - b0) % RB;                                          \
            for (int t = 0; t < full; t += TBV)                                                                        \
                for (r = b0; r < b1; r += RB)                                                                          \
                    TILE(w, a, r, t, RB, TBV);                                                                         \
            for (r = b0; r < b1; r += RB)                                                                              \
                TILE_TAIL(TILE, TBV, RB);                                                                              \
        }                                                                                                              \
        r = r1 - (r1 - r0) % RB;                                                                                       \
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

/* ---- attention over one run of consecutive KV rows of dim elements ----
 * 256-bit in both sets: at the context lengths a decode step sees, these
 * are bound by loads, not vector width. ELEM is the KV element (float or
 * half), LOAD8 reads 8 of them as floats, SCALAR one. */

/* attn_scores: four keys at a time, two accumulators each, so no FMA waits
 * on the one before it (one dot product a call was a 16-deep FMA chain a
 * key). A partial group repeats its last key, so every score takes the
 * same arithmetic whichever lane it lands in, and results do not depend on
 * where the KV blocks split a sequence.
 * attn_values: out += sum_i p[i] v_i with 64 output dims in registers
 * across all n keys; each lane adds its keys in order. */
#define DEFINE_ATTENTION(SCORES, VALUES, ELEM, LOAD8, SCALAR)                                                          \
    KERNEL_TARGET static void SCORES(const float *q, const void *k, int n, int dim, float scale, float *scores) {      \
        for (int i = 0; i < n; i += 4) {                                                                               \
            const ELEM *key[4];                                                                                        \
            __m256 acc[4][2];                                                                                          \
            _Pragma("GCC unroll 4") for (int j = 0; j < 4; j++) {                                                      \
                key[j] = (const ELEM *)k + (size_t)(i + j < n ? i + j : n - 1) * dim;                                  \
                acc[j][0] = acc[j][1] = _mm256_setzero_ps();                                                           \
            }                                                                                                          \
            int d = 0;                                                                                                 \
            for (; d + 16 <= dim; d += 16) {                                                                           \
                __m256 q0 = _mm256_loadu_ps(q + d), q1 = _mm256_loadu_ps(q + d + 8);                                   \
                _Pragma("GCC unroll 4") for (int j = 0; j < 4; j++) {                                                  \
                    acc[j][0] = _mm256_fmadd_ps(q0, LOAD8(key[j] + d), acc[j][0]);                                     \
                    acc[j][1] = _mm256_fmadd_ps(q1, LOAD8(key[j] + d + 8), acc[j][1]);                                 \
                }                                                                                                      \
            }                                                                                                          \
            if (d + 8 <= dim) {                                                                                        \
                __m256 q0 = _mm256_loadu_ps(q + d);                                                                    \
                _Pragma("GCC unroll 4") for (int j = 0; j < 4; j++) acc[j][0] =                                        \
                    _mm256_fmadd_ps(q0, LOAD8(key[j] + d), acc[j][0]);                                                 \
                d += 8;                                                                                                \
            }                                                                                                          \
            /* the four horizontal sums at once: lane j of the result is key j's */                                    \
            __m256 h01 = _mm256_hadd_ps(_mm256_add_ps(acc[0][0], acc[0][1]), _mm256_add_ps(acc[1][0], acc[1][1]));     \
            __m256 h23 = _mm256_hadd_ps(_mm256_add_ps(acc[2][0], acc[2][1]), _mm256_add_ps(acc[3][0], acc[3][1]));     \
            __m256 h = _mm256_hadd_ps(h01, h23);                                                                       \
            float sum[4];                                                                                              \
            _mm_storeu_ps(sum, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));                    \
            for (int j = 0; j < 4 && i + j < n; j++) {                                                                 \
                for (int r = d; r < dim; r++)                                                                          \
                    sum[j] += q[r] * SCALAR(key[j][r]);                                                                \
                scores[i + j] = sum[j] * scale;                                                                        \
            }                                                                                                          \
        }                                                                                                              \
    }                                                                                                                  \
    KERNEL_TARGET static void VALUES(const float *p, const void *v, int n, int dim, float *out) {                      \
        const ELEM *rows = v;                                                                                          \
        int d = 0;                                                                                                     \
        for (; d + 64 <= dim; d += 64) {                                                                               \
            __m256 acc[8];                                                                                             \
            _Pragma("GCC unroll 8") for (int u = 0; u < 8; u++) acc[u] = _mm256_loadu_ps(out + d + 8 * u);             \
            for (int i = 0; i < n; i++) {                                                                              \
                __m256 pi = _mm256_set1_ps(p[i]);                                                                      \
                const ELEM *row = rows + (size_t)i * dim + d;                                                          \
                _Pragma("GCC unroll 8") for (int u = 0; u < 8; u++) acc[u] =                                           \
                    _mm256_fmadd_ps(pi, LOAD8(row + 8 * u), acc[u]);                                                   \
            }                                                                                                          \
            _Pragma("GCC unroll 8") for (int u = 0; u < 8; u++) _mm256_storeu_ps(out + d + 8 * u, acc[u]);             \
        }                                                                                                              \
        for (; d + 8 <= dim; d += 8) {                                                                                 \
            __m256 acc = _mm256_loadu_ps(out + d);                                                                     \
            for (int i = 0; i < n; i++)                                                                                \
                acc = _mm256_fmadd_ps(_mm256_set1_ps(p[i]), LOAD8(rows + (size_t)i * dim + d), acc);                   \
            _mm256_storeu_ps(out + d, acc);                                                                            \
        }                                                                                                              \
        for (; d < dim; d++)                                                                                           \
            for (int i = 0; i < n; i++)                                                                                \
                out[d] += p[i] * SCALAR(rows[(size_t)i * dim + d]);                                                    \
    }

#define KV_LOAD8_F32(p)  _mm256_loadu_ps(p)
#define KV_LOAD8_F16(p)  _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define KV_SCALAR_F32(x) (x)
DEFINE_ATTENTION(attn_scores_f32, attn_values_f32, float, KV_LOAD8_F32, KV_SCALAR_F32)
DEFINE_ATTENTION(attn_scores_f16, attn_values_f16, uint16_t, KV_LOAD8_F16, fp16_to_f32)

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
