/* AVX-512 kernels (16 floats a vector; VNNI int8 dot products for Q8_0). */
#include <immintrin.h>
#include <string.h>

#include "fp16.h"
#include "kernels.h"

#define KERNEL_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")))
#define VEC __m512
#define VLEN 16
#define VZERO() _mm512_setzero_ps()
#define VLOAD_F32(p) _mm512_loadu_ps(p)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VSUM(v) _mm512_reduce_add_ps(v)

KERNEL_TARGET static inline __m512 load_f32(const uint8_t *p, uint64_t c) { return _mm512_loadu_ps((const float *)p + c); }
KERNEL_TARGET static inline __m512 load_f16(const uint8_t *p, uint64_t c) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 2 * c)));
}
KERNEL_TARGET static inline __m512 load_bf16(const uint8_t *p, uint64_t c) {
    __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p + 2 * c)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

#include "kernels_x86.h"

DEFINE_FLOAT_TILE(tile_f32, load_f32, scalar_f32)
DEFINE_FLOAT_TILE(tile_f16, load_f16, scalar_f16)
DEFINE_FLOAT_TILE(tile_bf16, load_bf16, scalar_bf16)
DEFINE_TILED_MATMUL(matmul_f32, tile_f32)
DEFINE_TILED_MATMUL(matmul_f16, tile_f16)
DEFINE_TILED_MATMUL(matmul_bf16, tile_bf16)

/* Q8_0 x Q8_0, two blocks per 512-bit register: vpdpbusd takes |w| as
 * unsigned and x with w's sign; each 256-bit half is then scaled by its own
 * block's dw*dx. */
KERNEL_TARGET static inline __m512i load2(const block_q8_0 *b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)b[0].qs)),
                              _mm256_loadu_si256((const __m256i *)b[1].qs), 1);
}

KERNEL_TARGET static inline __attribute__((always_inline)) void tile_q8_0(const weight *w, const matmul_args *a,
                                                                          uint64_t r, int t, const int rb,
                                                                          const int tb) {
    uint64_t nb = w->cols / 32;
    __m512 acc[RB][TB];
    const block_q8_0 *wrow[RB], *xrow[TB];
    _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) wrow[i] = (const block_q8_0 *)((const uint8_t *)w->data + (r + i) * w->row_bytes);
    _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) xrow[j] = a->xq + (size_t)(t + j) * nb;
    _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) acc[i][j] = _mm512_setzero_ps();
    uint64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        __m512i xv[TB];
        float xd[TB][2];
        _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) {
            xv[j] = load2(&xrow[j][b]);
            xd[j][0] = _cvtsh_ss(xrow[j][b].d), xd[j][1] = _cvtsh_ss(xrow[j][b + 1].d);
        }
        _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) {
            __m512i wv = load2(&wrow[i][b]);
            __mmask64 neg = _mm512_movepi8_mask(wv);
            __m512i aw = _mm512_abs_epi8(wv);
            float wd0 = _cvtsh_ss(wrow[i][b].d), wd1 = _cvtsh_ss(wrow[i][b + 1].d);
            _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) {
                __m512i sx = _mm512_mask_sub_epi8(xv[j], neg, _mm512_setzero_si512(), xv[j]);
                __m512i dp = _mm512_dpbusd_epi32(_mm512_setzero_si512(), aw, sx);
                __m512 scale = _mm512_insertf32x8(_mm512_set1_ps(wd0 * xd[j][0]), _mm256_set1_ps(wd1 * xd[j][1]), 1);
                acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dp), scale, acc[i][j]);
            }
        }
    }
    _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) {
        float s = _mm512_reduce_add_ps(acc[i][j]);
        for (uint64_t k = b; k < nb; k++) { /* odd block count: one at a time */
            __m256i wq = _mm256_loadu_si256((const __m256i *)wrow[i][k].qs), xq = _mm256_loadu_si256((const __m256i *)xrow[j][k].qs);
            __m256i dp = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xq, wq));
            __m128i h = _mm_add_epi32(_mm256_castsi256_si128(dp), _mm256_extracti128_si256(dp, 1));
            h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
            h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xb1));
            s += (float)_mm_cvtsi128_si32(h) * _cvtsh_ss(wrow[i][k].d) * _cvtsh_ss(xrow[j][k].d);
        }
        a->y[(size_t)(t + j) * a->y_stride + r + i] = s;
    }
}
DEFINE_TILED_MATMUL(matmul_q8_0, tile_q8_0)

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

KERNEL_TARGET static void axpy_avx512(float *y, float alpha, const float *x, int n) {
    __m512 al = _mm512_set1_ps(alpha);
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(al, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] += alpha * x[i];
}

const kernel_set *kernels_avx512(void) {
    static kernel_set k = {.name = "avx512", .q8_activations = true, .quantize_q8_0 = quantize_q8_0_rows,
                           .dot = dot_avx512, .axpy = axpy_avx512};
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512vl") || !__builtin_cpu_supports("avx512vnni") ||
        !__builtin_cpu_supports("avx512dq") || !__builtin_cpu_supports("fma") || !__builtin_cpu_supports("f16c"))
        return NULL;
    k.matmul[TENSOR_F32] = matmul_f32;
    k.matmul[TENSOR_F16] = matmul_f16;
    k.matmul[TENSOR_BF16] = matmul_bf16;
    k.matmul[TENSOR_Q8_0] = matmul_q8_0;
    return &k;
}
