/* AVX2 + FMA + F16C kernels (8 floats a vector). */
#include <immintrin.h>
#include <string.h>

#include "fp16.h"
#include "kernels.h"

#define KERNEL_TARGET __attribute__((target("avx2,fma,f16c")))
#define VEC           __m256
#define VLEN          8
#define VZERO()       _mm256_setzero_ps()
#define VLOAD_F32(p)  _mm256_loadu_ps(p)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VADD(a, b)    _mm256_add_ps(a, b)

KERNEL_TARGET static inline float VSUM(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
KERNEL_TARGET static inline __m256 load_f32(const uint8_t *p, uint64_t c) {
    return _mm256_loadu_ps((const float *)p + c);
}
KERNEL_TARGET static inline __m256 load_f16(const uint8_t *p, uint64_t c) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * c)));
}
KERNEL_TARGET static inline __m256 load_bf16(const uint8_t *p, uint64_t c) {
    __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p + 2 * c)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

#include "kernels_x86.h"

DEFINE_FLOAT_TILE(tile_f32, load_f32, scalar_f32, 4)
DEFINE_FLOAT_TILE(tile_f16, load_f16, scalar_f16, 2)
DEFINE_FLOAT_TILE(tile_bf16, load_bf16, scalar_bf16, 2)
DEFINE_FLOAT_GEMV(gemv_f32, load_f32, scalar_f32, 4)
DEFINE_FLOAT_GEMV(gemv_f16, load_f16, scalar_f16, 2)
DEFINE_FLOAT_GEMV(gemv_bf16, load_bf16, scalar_bf16, 2)
/* 4 x 3 tiles: 12 accumulators, 3 activation vectors and the weight vector
 * fill the 16 ymm registers exactly; 4 x 4 spilled accumulators to the stack. */
DEFINE_TILED_MATMUL_TB(matmul_f32, tile_f32, gemv_f32, 3)
DEFINE_TILED_MATMUL_TB(matmul_f16, tile_f16, gemv_f16, 3)
DEFINE_TILED_MATMUL_TB(matmul_bf16, tile_bf16, gemv_bf16, 3)

/* x quantized to Q8_0 blocks exactly as the reference quantizer
 * (tensor_types.c) does, bit for bit: d = max|x| / 127, q = roundf(x / d)
 * with roundf's halves away from zero, which no SIMD rounding mode has:
 * truncate, then step away from zero where the dropped part is >= 0.5
 * (v - trunc(v) is exact). The reference, through libm calls per value,
 * was 7% of a Q8_0 prompt step. */
KERNEL_TARGET static void quantize_q8_0_avx2(const float *x, block_q8_0 *q, uint64_t n) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)), half = _mm256_set1_ps(0.5f);
    const __m256 one = _mm256_set1_ps(1.0f), sign_mask = _mm256_castsi256_ps(_mm256_set1_epi32(INT32_MIN));
    for (uint64_t b = 0; b < n / 32; b++, x += 32) {
        __m256 v[4], amax = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(x + 8 * k);
            amax = _mm256_max_ps(_mm256_and_ps(v[k], abs_mask), amax); /* a NaN lane leaves amax: fmaxf's rule */
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float d = _mm_cvtss_f32(m4) / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        q[b].d = fp16_from_f32(d);
        __m256i i32[4];
        for (int k = 0; k < 4; k++) {
            __m256 s = _mm256_mul_ps(v[k], _mm256_set1_ps(id));
            __m256 t = _mm256_round_ps(s, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            __m256 away = _mm256_and_ps(_mm256_cmp_ps(_mm256_and_ps(_mm256_sub_ps(s, t), abs_mask), half, _CMP_GE_OQ),
                                        _mm256_or_ps(one, _mm256_and_ps(s, sign_mask)));
            i32[k] = _mm256_cvttps_epi32(_mm256_add_ps(t, away));
        }
        /* packs work within 128-bit lanes: the permute puts the bytes back in order */
        __m256i i16 = _mm256_packs_epi32(i32[0], i32[1]), i16b = _mm256_packs_epi32(i32[2], i32[3]);
        __m256i i8 = _mm256_packs_epi16(i16, i16b);
        i8 = _mm256_permutevar8x32_epi32(i8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)q[b].qs, i8);
    }
}

/* Q8_0 x Q8_0: per 32-value block, |w| (unsigned) times x with w's sign
 * (signed) through maddubs, summed to 8 int32 lanes and scaled by dw*dx. */
KERNEL_TARGET static inline __m256 q8_block(const block_q8_0 *wb, const block_q8_0 *xb, __m256 acc) {
    __m256i wq = _mm256_loadu_si256((const __m256i *)wb->qs), xq = _mm256_loadu_si256((const __m256i *)xb->qs);
    __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xq, wq));
    __m256i p32 = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
    float scale = _cvtsh_ss(wb->d) * _cvtsh_ss(xb->d);
    return _mm256_fmadd_ps(_mm256_set1_ps(scale), _mm256_cvtepi32_ps(p32), acc);
}

KERNEL_TARGET static inline __attribute__((always_inline)) void
tile_q8_0(const weight *w, const matmul_args *a, uint64_t r, int t, const int rb, const int tb) {
    uint64_t nb = w->cols / 32;
    __m256 acc[RB][TB];
    const block_q8_0 *wrow[RB], *xrow[TB];
    _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) wrow[i] =
        (const block_q8_0 *)((const uint8_t *)w->data + (r + i) * w->row_bytes);
    _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) xrow[j] = a->xq + (size_t)(t + j) * nb;
    _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++)
        acc[i][j] = _mm256_setzero_ps();
    for (uint64_t b = 0; b < nb; b++)
        _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) {
            _mm_prefetch((const char *)&wrow[i][b] + (size_t)RB * w->row_bytes, _MM_HINT_T0);
            _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) acc[i][j] =
                q8_block(&wrow[i][b], &xrow[j][b], acc[i][j]);
        }
    _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++)
        a->y[(size_t)(t + j) * a->y_stride + r + i] = VSUM(acc[i][j]);
}
/* Decode: one weight row, tb tokens, two accumulators per token. */
KERNEL_TARGET static inline __attribute__((always_inline)) void gemv_q8_0(const weight *w, const matmul_args *a,
                                                                          uint64_t r, int t, const int tb) {
    uint64_t nb = w->cols / 32;
    const block_q8_0 *wrow = (const block_q8_0 *)((const uint8_t *)w->data + r * w->row_bytes);
    __m256 acc[TB][2];
    _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) acc[j][0] = acc[j][1] = _mm256_setzero_ps();
    uint64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        _mm_prefetch((const char *)(wrow + b) + PREFETCH_BYTES, _MM_HINT_T0);
        _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) {
            const block_q8_0 *x = a->xq + (size_t)(t + j) * nb;
            acc[j][0] = q8_block(&wrow[b], &x[b], acc[j][0]);
            acc[j][1] = q8_block(&wrow[b + 1], &x[b + 1], acc[j][1]);
        }
    }
    _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) {
        if (b < nb)
            acc[j][0] = q8_block(&wrow[b], &a->xq[(size_t)(t + j) * nb + b], acc[j][0]);
        a->y[(size_t)(t + j) * a->y_stride + r] = VSUM(_mm256_add_ps(acc[j][0], acc[j][1]));
    }
}
DEFINE_TILED_MATMUL(matmul_q8_0, tile_q8_0, gemv_q8_0)

/* u8 x s8 through maddubs (no saturation: u is at most 63 here and 2 x 63 x 128 < 32768) */
KERNEL_TARGET static inline __m256i dot_u8s8(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}
/* byte k takes bit k % 8 of byte k / 8 */
KERNEL_TARGET static inline __m256i q5_high(uint32_t bits) {
    const __m256i bytes = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3,
                                           3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), bytes);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

KERNEL_TARGET static float dot_avx2(const float *a, const float *b, int n) {
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    float s = VSUM(acc);
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

#define DOT_U8S8(u, s)     dot_u8s8(u, s)
#define Q5_HIGH(bits)      q5_high(bits)
#define VSUM256(v)         VSUM(v)
#define QUANT_TB           2
#define FLOAT_DOT(a, b, n) dot_avx2(a, b, n)
#include "kernels_quant.h"

/* Weights go onto 2 MiB pages, layouts unchanged. On a 2-core Zen 3 VM
 * two threads read 26 GB/s from 2 MiB pages against 20 from 4 KiB ones;
 * F16 prompts ran ~30% faster, decode's GB/s moved less than its noise. */
static int repack_weight(const weight *src, weight *dst) {
    if (src->type != TENSOR_F16 && src->type != TENSOR_BF16 && src->type != TENSOR_Q8_0)
        return -1;
    return copy_to_huge_pages(src, dst);
}

const kernel_set *kernels_avx2(void) {
    static kernel_set k = {.name = "avx2",
                           .q8_activations = true,
                           .quantize_q8_0 = quantize_q8_0_avx2,
                           .attn_scores = {attn_scores_f32, attn_scores_f16},
                           .attn_values = {attn_values_f32, attn_values_f16}};
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") || !cpu_has_f16c())
        return NULL;
    k.matmul[TENSOR_F32] = matmul_f32;
    k.matmul[TENSOR_F16] = matmul_f16;
    k.matmul[TENSOR_BF16] = matmul_bf16;
    k.matmul[TENSOR_Q8_0] = matmul_q8_0;
    kernels_add_quant(&k);
    k.repack = repack_weight;
    return &k;
}
