/* Low-bit weight kernels shared by the AVX2 and AVX-512 kernel files:
 * Q5_0, Q4_K and Q6_K weights against 8-bit activations (a->xq, Q8_0
 * blocks of 32, and a->xs, their sums per 16 values).
 *
 * Every type decodes one 32-value block of a weight row into the same form,
 *     w[i] = s[i / 4] * q[i] - (i < 16 ? m_lo : m_hi),   q[i] in 0..63,
 * so one loop serves all: the integer dot of q with the activation quants
 * (u8 x s8, four products summed per int32 lane), scaled per lane, minus the
 * offsets times the activation sums. The block boundaries line up because
 * 32 divides a k-quant's 256 and rows start on a super-block.
 *
 * The including file defines KERNEL_TARGET, includes kernels_x86.h, and
 * defines:
 *     DOT_U8S8(u, s)   the int32 x 8 sums of 4 u8 x s8 products
 *     Q5_HIGH(bits)    the 32-bit mask as 32 bytes, 0x10 where a bit is set
 *     VSUM256(v)       the sum of a __m256's lanes
 *     QUANT_TB         activation rows per tile (at most TB)
 *     FLOAT_DOT(a,b,n) the file's float dot product */
#ifndef DOT_U8S8
#error "define DOT_U8S8 and Q5_HIGH before including kernels_quant.h"
#endif

typedef struct {
    __m256i q;        /* 32 unsigned quants */
    __m256 s;         /* the scale of each int32 lane (4 quants) */
    float m_lo, m_hi; /* the offsets of values 0..15 and 16..31 */
} wblock;

KERNEL_TARGET static inline __m256i low_nibbles(__m256i v) { return _mm256_and_si256(v, _mm256_set1_epi8(0x0f)); }

/* Q5_0: 16 bytes of nibbles (values j and j + 16) and 32 fifth bits; w = d (q - 16). */
KERNEL_TARGET static inline void decode_q5_0(const uint8_t *row, uint64_t b, wblock *o) {
    const block_q5_0 *blk = (const block_q5_0 *)row + b;
    __m128i qs = _mm_loadu_si128((const __m128i *)blk->qs);
    __m256i nib = low_nibbles(_mm256_set_m128i(_mm_srli_epi16(qs, 4), qs));
    uint32_t qh;
    memcpy(&qh, blk->qh, 4);
    float d = _cvtsh_ss(blk->d);
    o->q = _mm256_or_si256(nib, Q5_HIGH(qh));
    o->s = _mm256_set1_ps(d);
    o->m_lo = o->m_hi = 16.0f * d;
}

/* Q4_K: sub-block j of 8 in a super-block: w = d sc_j q - dmin m_j. */
KERNEL_TARGET static inline void decode_q4_K(const uint8_t *row, uint64_t b, wblock *o) {
    const block_q4_K *sb = (const block_q4_K *)row + b / 8;
    int j = (int)(b % 8);
    uint8_t sc, m;
    tensor_kquant_scale_min(j, sb->scales, &sc, &m);
    __m256i v = _mm256_loadu_si256((const __m256i *)(sb->qs + 32 * (j / 2)));
    o->q = low_nibbles(j & 1 ? _mm256_srli_epi16(v, 4) : v);
    o->s = _mm256_set1_ps(_cvtsh_ss(sb->d) * (float)sc);
    o->m_lo = o->m_hi = _cvtsh_ss(sb->dmin) * (float)m;
}

/* Q6_K: block k of 8 in a super-block lies in half h = k / 4, quarter c:
 * low nibbles from ql (shifted by 4 for c >= 2), two high bits from qh
 * (shifted by 2c); w = d sc (q - 32), one 8-bit scale per 16 values. */
KERNEL_TARGET static inline void decode_q6_K(const uint8_t *row, uint64_t b, wblock *o) {
    const block_q6_K *sb = (const block_q6_K *)row + b / 8;
    int k = (int)(b % 8), h = k / 4, c = k % 4;
    __m256i ql = _mm256_loadu_si256((const __m256i *)(sb->ql + 64 * h + 32 * (c & 1)));
    __m256i qh = _mm256_loadu_si256((const __m256i *)(sb->qh + 32 * h));
    ql = low_nibbles(_mm256_srl_epi16(ql, _mm_cvtsi32_si128(4 * (c >> 1))));
    qh = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * c)), _mm256_set1_epi8(3));
    o->q = _mm256_or_si256(ql, _mm256_slli_epi16(qh, 4));
    float d = _cvtsh_ss(sb->d), lo = d * (float)sb->scales[8 * h + 2 * c],
          hi = d * (float)sb->scales[8 * h + 2 * c + 1];
    o->s = _mm256_setr_ps(lo, lo, lo, lo, hi, hi, hi, hi);
    o->m_lo = 32.0f * lo, o->m_hi = 32.0f * hi;
}

/* Blocks per pass of a tile: the offsets of a pass are kept per row and
 * applied at its end as one dot product with the activation sums (FLOAT_DOT),
 * not a scalar multiply-add per block and token. */
#define QUANT_PASS 128

/* One tile: rb weight rows by tb activation rows; each weight block is
 * decoded once and used tb times. */
#define DEFINE_QUANT_TILE(NAME, DECODE)                                                                                \
    KERNEL_TARGET static inline __attribute__((always_inline)) void NAME(                                              \
        const weight *w, const matmul_args *a, uint64_t r, int t, const int rb, const int tb) {                        \
        uint64_t nb = w->cols / 32, ns = w->cols / 16, block_bytes = w->row_bytes / nb;                                \
        const uint8_t *wrow[RB];                                                                                       \
        __m256 acc[RB][TB];                                                                                            \
        float offset[RB][TB], m[RB][2 * QUANT_PASS];                                                                   \
        _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) {                                                         \
            wrow[i] = (const uint8_t *)w->data + (r + i) * w->row_bytes;                                               \
            _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) acc[i][j] = _mm256_setzero_ps(), offset[i][j] = 0;    \
        }                                                                                                              \
        for (uint64_t b0 = 0; b0 < nb; b0 += QUANT_PASS) {                                                             \
            uint64_t b1 = b0 + QUANT_PASS < nb ? b0 + QUANT_PASS : nb;                                                 \
            for (uint64_t b = b0; b < b1; b++) {                                                                       \
                __m256i xq[TB];                                                                                        \
                __m256 dx[TB];                                                                                         \
                _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) {                                                 \
                    const block_q8_0 *xb = a->xq + (size_t)(t + j) * nb + b;                                           \
                    xq[j] = _mm256_loadu_si256((const __m256i *)xb->qs);                                               \
                    dx[j] = _mm256_set1_ps(_cvtsh_ss(xb->d));                                                          \
                }                                                                                                      \
                _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) {                                                 \
                    _mm_prefetch((const char *)wrow[i] + RB * w->row_bytes + b * block_bytes, _MM_HINT_T0);            \
                    wblock wb;                                                                                         \
                    DECODE(wrow[i], b, &wb);                                                                           \
                    m[i][2 * (b - b0)] = wb.m_lo, m[i][2 * (b - b0) + 1] = wb.m_hi;                                    \
                    _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++) acc[i][j] = _mm256_fmadd_ps(                  \
                        _mm256_cvtepi32_ps(DOT_U8S8(wb.q, xq[j])), _mm256_mul_ps(wb.s, dx[j]), acc[i][j]);             \
                }                                                                                                      \
            }                                                                                                          \
            _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++)  \
                offset[i][j] += FLOAT_DOT(m[i], a->xs + (size_t)(t + j) * ns + 2 * b0, (int)(2 * (b1 - b0)));          \
        }                                                                                                              \
        _Pragma("GCC unroll 4") for (int i = 0; i < rb; i++) _Pragma("GCC unroll 4") for (int j = 0; j < tb; j++)      \
            a->y[(size_t)(t + j) * a->y_stride + r + i] = VSUM256(acc[i][j]) - offset[i][j];                           \
    }

DEFINE_QUANT_TILE(tile_q5_0, decode_q5_0)
DEFINE_QUANT_TILE(tile_q4_K, decode_q4_K)
DEFINE_QUANT_TILE(tile_q6_K, decode_q6_K)

/* Rows outer (a tile's weight rows stay in L1 while every token tile uses
 * them), RB rows a tile even for one token: four independent accumulator
 * chains, each activation block loaded once for four rows. QUANT_TB tokens
 * a tile, as many as the including file's registers hold. */
#define QUANT_TOKEN_TILES(TILE, RBV)                                                                                   \
    for (int t = 0; t < a->T; t += QUANT_TB) {                                                                         \
        switch (a->T - t < QUANT_TB ? a->T - t : QUANT_TB) {                                                           \
        case 1: TILE(w, a, r, t, RBV, 1); break;                                                                       \
        case 2: TILE(w, a, r, t, RBV, 2); break;                                                                       \
        case 3: TILE(w, a, r, t, RBV, 3); break;                                                                       \
        default: TILE(w, a, r, t, RBV, QUANT_TB); break;                                                               \
        }                                                                                                              \
    }
#define DEFINE_QUANT_MATMUL(NAME, TILE)                                                                                \
    KERNEL_TARGET static void NAME(const weight *w, const matmul_args *a, uint64_t r0, uint64_t r1) {                  \
        uint64_t r = r0;                                                                                               \
        for (; r + RB <= r1; r += RB)                                                                                  \
            QUANT_TOKEN_TILES(TILE, RB)                                                                                \
        for (; r < r1; r++)                                                                                            \
            QUANT_TOKEN_TILES(TILE, 1)                                                                                 \
    }

DEFINE_QUANT_MATMUL(matmul_q5_0, tile_q5_0)
DEFINE_QUANT_MATMUL(matmul_q4_K, tile_q4_K)
DEFINE_QUANT_MATMUL(matmul_q6_K, tile_q6_K)

/* The low-bit types (kernels_low_bit) into a kernel set. */
static inline void kernels_add_quant(kernel_set *k) {
    k->matmul[TENSOR_Q5_0] = matmul_q5_0;
    k->matmul[TENSOR_Q4_K] = matmul_q4_K;
    k->matmul[TENSOR_Q6_K] = matmul_q6_K;
}
