/* AVX-512 kernels (16 floats a vector; VNNI int8 dot products for Q8_0). */
#include <immintrin.h>
#include <string.h>

#include "fp16.h"
#include "kernels.h"

#define KERNEL_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")))
#define VEC           __m512
#define VLEN          16
#define VZERO()       _mm512_setzero_ps()
#define VLOAD_F32(p)  _mm512_loadu_ps(p)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VADD(a, b)    _mm512_add_ps(a, b)
#define VSUM(v)       _mm512_reduce_add_ps(v)

KERNEL_TARGET static inline __m512 load_f32(const uint8_t *p, uint64_t c) {
    return _mm512_loadu_ps((const float *)p + c);
}
KERNEL_TARGET static inline __m512 load_f16(const uint8_t *p, uint64_t c) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 2 * c)));
}
KERNEL_TARGET static inline __m512 load_bf16(const uint8_t *p, uint64_t c) {
    __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p + 2 * c)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

#include "kernels_x86.h"

/* Q8_0 activations: the reference quantizer rounds exactly as llama.cpp's. */
static void quantize_q8_0_rows(const float *x, block_q8_0 *q, uint64_t n) { tensor_quantize_row(TENSOR_Q8_0, x, q, n); }

DEFINE_FLOAT_TILE(tile_f32, load_f32, scalar_f32, 4)
DEFINE_FLOAT_TILE(tile_f16, load_f16, scalar_f16, 2)
DEFINE_FLOAT_TILE(tile_bf16, load_bf16, scalar_bf16, 2)
DEFINE_FLOAT_GEMV(gemv_f32, load_f32, scalar_f32, 4)
DEFINE_FLOAT_GEMV(gemv_f16, load_f16, scalar_f16, 2)
DEFINE_FLOAT_GEMV(gemv_bf16, load_bf16, scalar_bf16, 2)
DEFINE_TILED_MATMUL(matmul_f32, tile_f32, gemv_f32)
DEFINE_TILED_MATMUL(matmul_f16, tile_f16, gemv_f16)
DEFINE_TILED_MATMUL(matmul_bf16, tile_bf16, gemv_bf16)

/* Q8_0 x Q8_0, two blocks per 512-bit register. vpdpbusd multiplies
 * unsigned by signed bytes, so activations go in offset by 128 (x ^ 0x80):
 * dpbusd(x + 128, w) = dot(x, w) + 128 sum(w), and sum(w) is one more
 * dpbusd per weight block (not per weight-activation pair). Each 256-bit
 * half is then scaled by its own block's dw * dx. */
KERNEL_TARGET static inline __m512i load2(const block_q8_0 *b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)b[0].qs)),
                              _mm256_loadu_si256((const __m256i *)b[1].qs), 1);
}

KERNEL_TARGET static inline __m512 scales2(const block_q8_0 *b) {
    return _mm512_insertf32x8(_mm512_set1_ps(_cvtsh_ss(b[0].d)), _mm256_set1_ps(_cvtsh_ss(b[1].d)), 1);
}

/* dot(x, w) for the two blocks at w and x (x already offset), as floats
 * scaled by dw * dx (scale given), added to acc. */
KERNEL_TARGET static inline __m512 q8_pair(__m512i xu, __m512i wv, __m512i wsum128, __m512 scale, __m512 acc) {
    __m512i dp = _mm512_sub_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), xu, wv), wsum128);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(dp), scale, acc);
}

KERNEL_TARGET static inline __m512i weight_sum128(__m512i wv) {
    return _mm512_slli_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(1), wv), 7);
}

/* Odd last block, one block at a time in 256 bits. */
KERNEL_TARGET static inline float q8_single(const block_q8_0 *w, const block_q8_0 *x) {
    __m256i wq = _mm256_loadu_si256((const __m256i *)w->qs), xq = _mm256_loadu_si256((const __m256i *)x->qs);
    __m256i dp = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xq, wq));
    __m128i h = _mm_add_epi32(_mm256_castsi256_si128(dp), _mm256_extracti128_si256(dp, 1));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xb1));
    return (float)_mm_cvtsi128_si32(h) * _cvtsh_ss(w->d) * _cvtsh_ss(x->d);
}

KERNEL_TARGET static inline __attribute__((always_inline)) void
tile_q8_0(const weight *w, const matmul_args *a, uint64_t r, int t, const int rb, const int tb) {
    uint64_t nb = w->cols / 32;
    __m512 acc[RB][TB];
    const block_q8_0 *wrow[RB], *xrow[TB];
    _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) wrow[i] =
        (const block_q8_0 *)((const uint8_t *)w->data + (r + i) * w->row_bytes);
    _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) xrow[j] = a->xq + (size_t)(t + j) * nb;
    _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++)
        acc[i][j] = _mm512_setzero_ps();
    const __m512i offset = _mm512_set1_epi8((char)0x80);
    uint64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        __m512i xu[TB];
        __m512 xs[TB];
        _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) {
            xu[j] = _mm512_xor_si512(load2(&xrow[j][b]), offset);
            xs[j] = scales2(&xrow[j][b]);
        }
        _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) {
            _mm_prefetch((const char *)&wrow[i][b] + (size_t)RB * w->row_bytes, _MM_HINT_T0);
            __m512i wv = load2(&wrow[i][b]), ws = weight_sum128(wv);
            __m512 wsc = scales2(&wrow[i][b]);
            _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) acc[i][j] =
                q8_pair(xu[j], wv, ws, _mm512_mul_ps(wsc, xs[j]), acc[i][j]);
        }
    }
    _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) {
        float s = _mm512_reduce_add_ps(acc[i][j]);
        if (b < nb)
            s += q8_single(&wrow[i][b], &xrow[j][b]);
        a->y[(size_t)(t + j) * a->y_stride + r + i] = s;
    }
}

/* Decode: one weight row as one stream, tb tokens, two accumulators each. */
KERNEL_TARGET static inline __attribute__((always_inline)) void gemv_q8_0(const weight *w, const matmul_args *a,
                                                                          uint64_t r, int t, const int tb) {
    uint64_t nb = w->cols / 32;
    const block_q8_0 *wrow = (const block_q8_0 *)((const uint8_t *)w->data + r * w->row_bytes);
    const __m512i offset = _mm512_set1_epi8((char)0x80);
    __m512 acc[TB][2];
    _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) acc[j][0] = acc[j][1] = _mm512_setzero_ps();
    uint64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        _mm_prefetch((const char *)(wrow + b) + PREFETCH_BYTES, _MM_HINT_T0);
        _mm_prefetch((const char *)(wrow + b) + PREFETCH_BYTES + 64, _MM_HINT_T0);
        _Pragma("GCC unroll 2") for (int u = 0; u < 2; u++) {
            __m512i wv = load2(&wrow[b + 2 * u]), ws = weight_sum128(wv);
            __m512 wsc = scales2(&wrow[b + 2 * u]);
            _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) {
                const block_q8_0 *x = a->xq + (size_t)(t + j) * nb + b + 2 * u;
                acc[j][u] =
                    q8_pair(_mm512_xor_si512(load2(x), offset), wv, ws, _mm512_mul_ps(wsc, scales2(x)), acc[j][u]);
            }
        }
    }
    _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) {
        float s = _mm512_reduce_add_ps(_mm512_add_ps(acc[j][0], acc[j][1]));
        for (uint64_t k = b; k < nb; k++)
            s += q8_single(&wrow[k], &a->xq[(size_t)(t + j) * nb + k]);
        a->y[(size_t)(t + j) * a->y_stride + r] = s;
    }
}
DEFINE_TILED_MATMUL(matmul_q8_0, tile_q8_0, gemv_q8_0)

/* The low-bit types, in 256 bits: a block of 32 quants is one vector. */
KERNEL_TARGET static inline float vsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

KERNEL_TARGET static float dot_avx512(const float *a, const float *b, int n) {
    __m512 acc = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
    float s = _mm512_reduce_add_ps(acc);
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

#define DOT_U8S8(u, s)     _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
#define Q5_HIGH(bits)      _mm256_maskz_mov_epi8((__mmask32)(bits), _mm256_set1_epi8(0x10))
#define VSUM256(v)         vsum256(v)
#define QUANT_TB           4
#define FLOAT_DOT(a, b, n) dot_avx512(a, b, n)
#include "kernels_quant.h"

/* ---- Q8_0 repacked: [cols int8 quants][nb fp16 scales, padded to 64 bytes] per row ---- */

/* [cols int8 quants][nb fp16 scales][nb int16 quant sums], padded to 64 */
static uint64_t packed_row_bytes(uint64_t cols) { return cols + ((cols / 32) * 4 + 63) / 64 * 64; }

static int repack_weight(const weight *src, weight *dst) {
    if (src->type == TENSOR_F16 || src->type == TENSOR_BF16)
        return copy_to_huge_pages(src, dst);
    if (src->type != TENSOR_Q8_0 || src->cols % 32)
        return -1;
    uint64_t nb = src->cols / 32, rb = packed_row_bytes(src->cols);
    uint8_t *out = alloc_weight_copy(src->rows * rb);
    if (!out)
        return -1;
    for (uint64_t r = 0; r < src->rows; r++) {
        const block_q8_0 *in = (const block_q8_0 *)((const uint8_t *)src->data + r * src->row_bytes);
        uint8_t *row = out + r * rb;
        memset(row + src->cols, 0, rb - src->cols);
        for (uint64_t b = 0; b < nb; b++) {
            int16_t sum = 0;
            for (int k = 0; k < 32; k++)
                sum = (int16_t)(sum + in[b].qs[k]);
            memcpy(row + 32 * b, in[b].qs, 32);
            memcpy(row + src->cols + 2 * b, &in[b].d, 2);
            memcpy(row + src->cols + 2 * nb + 2 * b, &sum, 2);
        }
    }
    *dst = *src;
    dst->data = out, dst->type = TENSOR_Q8_0_PACKED, dst->row_bytes = rb;
    return 0;
}

/* Lane l of the 16 block scales s -> the scale of the block lane 16k+l of
 * a 512-bit quant vector k belongs to: vector k holds blocks 2k and 2k+1. */
KERNEL_TARGET static inline __m512i pair_index(int k) {
    return _mm512_set_epi32(2 * k + 1, 2 * k + 1, 2 * k + 1, 2 * k + 1, 2 * k + 1, 2 * k + 1, 2 * k + 1, 2 * k + 1,
                            2 * k, 2 * k, 2 * k, 2 * k, 2 * k, 2 * k, 2 * k, 2 * k);
}

/* 128 x the quant sums of up to 16 blocks, as floats (0 beyond the mask):
 * dpbusd(x + 128, w) over-counts each block by 128 sum(w), subtracted once
 * per 16 blocks instead of once per block pair. */
KERNEL_TARGET static inline __m512 offset_sums(const int16_t *sums, __mmask16 bm) {
    __m512i v = _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(bm, sums));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_set1_ps(128.0f));
}

/* One tile of rb packed weight rows and tb activation rows; 16 blocks (512
 * values) per step, the scales of the 16 blocks multiplied once per step. */
KERNEL_TARGET static inline __attribute__((always_inline)) void
tile_q8p(const weight *w, const matmul_args *a, uint64_t r, int t, const int rb, const int tb) {
    uint64_t cols = w->cols, nb = cols / 32, xd_stride = (nb + 15) / 16 * 16;
    const uint8_t *wq[RB];
    const uint16_t *wd[RB];
    const int16_t *wsum[RB];
    __m512 acc[RB][TB];
    _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) {
        wq[i] = (const uint8_t *)w->data + (r + i) * w->row_bytes;
        wd[i] = (const uint16_t *)(wq[i] + cols);
        wsum[i] = (const int16_t *)(wd[i] + nb);
    }
    _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++)
        acc[i][j] = _mm512_setzero_ps();
    for (uint64_t b = 0; b < nb; b += 16) {
        uint64_t nbl = nb - b < 16 ? nb - b : 16;
        __mmask16 bm = (__mmask16)((1u << nbl) - 1);
        __m512 s[RB][TB];
        _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) {
            _mm_prefetch((const char *)(wq[i] + RB * w->row_bytes + 32 * b), _MM_HINT_T0);
            __m512 dw = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(bm, wd[i] + b));
            __m512 ws = offset_sums(wsum[i] + b, bm);
            _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) {
                s[i][j] = _mm512_mul_ps(dw, _mm512_loadu_ps(a->xd + (size_t)(t + j) * xd_stride + b));
                acc[i][j] = _mm512_fnmadd_ps(ws, s[i][j], acc[i][j]); /* the +128 offset, per block */
            }
        }
#define TILE_PAIR(K, QM)                                                                                               \
    do {                                                                                                               \
        __m512i idx = pair_index(K), xu[TB];                                                                           \
        _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) xu[j] =                                                   \
            _mm512_maskz_loadu_epi8(QM, a->xu + (size_t)(t + j) * cols + 32 * (b + 2 * (K)));                          \
        _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) {                                                         \
            __m512i wv = _mm512_maskz_loadu_epi8(QM, wq[i] + 32 * (b + 2 * (K)));                                      \
            _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) {                                                     \
                __m512i dp = _mm512_dpbusd_epi32(_mm512_setzero_si512(), xu[j], wv);                                   \
                acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dp), _mm512_permutexvar_ps(idx, s[i][j]), acc[i][j]);   \
            }                                                                                                          \
        }                                                                                                              \
    } while (0)
        if (nbl == 16) { /* a full group: constant indices, everything in registers */
            _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) TILE_PAIR(k, ~(__mmask64)0);
        } else {
            for (int k = 0; 2 * k < (int)nbl; k++)
                TILE_PAIR(k, 2 * k + 1 < (int)nbl ? ~(__mmask64)0 : (__mmask64)0xffffffffu);
        }
#undef TILE_PAIR
    }
    _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++)
        a->y[(size_t)(t + j) * a->y_stride + r + i] = _mm512_reduce_add_ps(acc[i][j]);
}

/* Decode: the same per row, rows walked in memory order with a prefetch
 * ahead; two accumulators per token. */
KERNEL_TARGET static inline __attribute__((always_inline)) void gemv_q8p(const weight *w, const matmul_args *a,
                                                                         uint64_t r, int t, const int tb) {
    uint64_t cols = w->cols, nb = cols / 32, xd_stride = (nb + 15) / 16 * 16;
    const uint8_t *wq = (const uint8_t *)w->data + r * w->row_bytes;
    const uint16_t *wd = (const uint16_t *)(wq + cols);
    const int16_t *wsum = (const int16_t *)(wd + nb);
    __m512 acc[TB][2];
    _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) acc[j][0] = acc[j][1] = _mm512_setzero_ps();
    for (uint64_t b = 0; b < nb; b += 16) {
        uint64_t nbl = nb - b < 16 ? nb - b : 16;
        __mmask16 bm = (__mmask16)((1u << nbl) - 1);
        __m512 dw = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(bm, wd + b)), s[TB];
        __m512 ws = offset_sums(wsum + b, bm);
        _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) {
            s[j] = _mm512_mul_ps(dw, _mm512_loadu_ps(a->xd + (size_t)(t + j) * xd_stride + b));
            acc[j][1] = _mm512_fnmadd_ps(ws, s[j], acc[j][1]); /* the +128 offset, per block */
        }
#define GEMV_PAIR(K, QM, A)                                                                                            \
    do {                                                                                                               \
        _mm_prefetch((const char *)(wq + 32 * (b + 2 * (K))) + PREFETCH_BYTES, _MM_HINT_T2);                           \
        __m512i wv = _mm512_maskz_loadu_epi8(QM, wq + 32 * (b + 2 * (K)));                                             \
        __m512i idx = pair_index(K);                                                                                   \
        _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) {                                                         \
            __m512i xu = _mm512_maskz_loadu_epi8(QM, a->xu + (size_t)(t + j) * cols + 32 * (b + 2 * (K)));             \
            __m512i dp = _mm512_dpbusd_epi32(_mm512_setzero_si512(), xu, wv);                                          \
            acc[j][A] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dp), _mm512_permutexvar_ps(idx, s[j]), acc[j][A]);          \
        }                                                                                                              \
    } while (0)
        if (nbl == 16) {
            _Pragma("GCC unroll 4") for (int k = 0; k < 8; k += 2) {
                GEMV_PAIR(k, ~(__mmask64)0, 0);
                GEMV_PAIR(k + 1, ~(__mmask64)0, 1);
            }
        } else {
            for (int k = 0; 2 * k < (int)nbl; k++)
                GEMV_PAIR(k, 2 * k + 1 < (int)nbl ? ~(__mmask64)0 : (__mmask64)0xffffffffu, 0);
        }
#undef GEMV_PAIR
    }
    _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) a->y[(size_t)(t + j) * a->y_stride + r] =
        _mm512_reduce_add_ps(_mm512_add_ps(acc[j][0], acc[j][1]));
}
/* 4 x 2 tiles: 4 x 4 would need 32 registers for accumulators and scales alone. */
DEFINE_TILED_MATMUL_TB(matmul_q8p, tile_q8p, gemv_q8p, 2)

const kernel_set *kernels_avx512(void) {
    static kernel_set k = {.name = "avx512",
                           .q8_activations = true,
                           .quantize_q8_0 = quantize_q8_0_rows,
                           .attn_scores = {attn_scores_f32, attn_scores_f16},
                           .attn_values = {attn_values_f32, attn_values_f16}};
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512vl") || !__builtin_cpu_supports("avx512vnni") ||
        !__builtin_cpu_supports("avx512dq") || !__builtin_cpu_supports("fma") || !cpu_has_f16c())
        return NULL;
    k.matmul[TENSOR_F32] = matmul_f32;
    k.matmul[TENSOR_F16] = matmul_f16;
    k.matmul[TENSOR_BF16] = matmul_bf16;
    k.matmul[TENSOR_Q8_0] = matmul_q8_0;
    k.matmul[TENSOR_Q8_0_PACKED] = matmul_q8p;
    kernels_add_quant(&k);
    k.repack = repack_weight;
    return &k;
}
