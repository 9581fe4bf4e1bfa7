/* Tensor type table and reference (de)quantizers. Layouts follow the GGUF
 * specification; each loop below is written for clarity, not speed. */
#include "tensor_types.h"

#include <math.h>

#include "fp16.h"

struct type_info {
    uint32_t id;
    const char *name;
    uint32_t block_elems;
    uint32_t block_bytes;
};

static const struct type_info type_table[] = {
    {TENSOR_F32, "F32", 1, 4},
    {TENSOR_F16, "F16", 1, 2},
    {TENSOR_Q4_0, "Q4_0", 32, sizeof(block_q4_0)},
    {TENSOR_Q4_1, "Q4_1", 32, sizeof(block_q4_1)},
    {TENSOR_Q5_0, "Q5_0", 32, sizeof(block_q5_0)},
    {TENSOR_Q5_1, "Q5_1", 32, sizeof(block_q5_1)},
    {TENSOR_Q8_0, "Q8_0", 32, sizeof(block_q8_0)},
    {TENSOR_Q8_1, "Q8_1", 32, 36},
    {TENSOR_Q2_K, "Q2_K", QK_K, 84},
    {TENSOR_Q3_K, "Q3_K", QK_K, 110},
    {TENSOR_Q4_K, "Q4_K", QK_K, sizeof(block_q4_K)},
    {TENSOR_Q5_K, "Q5_K", QK_K, sizeof(block_q5_K)},
    {TENSOR_Q6_K, "Q6_K", QK_K, sizeof(block_q6_K)},
    {TENSOR_Q8_K, "Q8_K", QK_K, 292},
    {TENSOR_I8, "I8", 1, 1},
    {TENSOR_I16, "I16", 1, 2},
    {TENSOR_I32, "I32", 1, 4},
    {TENSOR_I64, "I64", 1, 8},
    {TENSOR_F64, "F64", 1, 8},
    {TENSOR_BF16, "BF16", 1, 2},
};

_Static_assert(sizeof(block_q4_0) == 18, "q4_0 layout");
_Static_assert(sizeof(block_q4_1) == 20, "q4_1 layout");
_Static_assert(sizeof(block_q5_0) == 22, "q5_0 layout");
_Static_assert(sizeof(block_q5_1) == 24, "q5_1 layout");
_Static_assert(sizeof(block_q8_0) == 34, "q8_0 layout");
_Static_assert(sizeof(block_q4_K) == 144, "q4_K layout");
_Static_assert(sizeof(block_q5_K) == 176, "q5_K layout");
_Static_assert(sizeof(block_q6_K) == 210, "q6_K layout");

static const struct type_info *type_lookup(uint32_t type) {
    for (size_t i = 0; i < sizeof type_table / sizeof type_table[0]; i++)
        if (type_table[i].id == type)
            return &type_table[i];
    return NULL;
}

const char *tensor_type_name(uint32_t type) {
    const struct type_info *t = type_lookup(type);
    return t ? t->name : NULL;
}

bool tensor_type_geometry(uint32_t type, uint32_t *block_elems, uint32_t *block_bytes) {
    const struct type_info *t = type_lookup(type);
    if (!t)
        return false;
    *block_elems = t->block_elems;
    *block_bytes = t->block_bytes;
    return true;
}

bool tensor_row_bytes(uint32_t type, uint64_t n, uint64_t *bytes) {
    const struct type_info *t = type_lookup(type);
    if (!t || n % t->block_elems)
        return false;
    uint64_t blocks = n / t->block_elems;
    if (blocks > UINT64_MAX / t->block_bytes)
        return false;
    *bytes = blocks * t->block_bytes;
    return true;
}

bool tensor_type_can_dequantize(uint32_t type) {
    switch (type) {
    case TENSOR_F32:
    case TENSOR_F16:
    case TENSOR_BF16:
    case TENSOR_Q4_0:
    case TENSOR_Q4_1:
    case TENSOR_Q5_0:
    case TENSOR_Q5_1:
    case TENSOR_Q8_0:
    case TENSOR_Q4_K:
    case TENSOR_Q5_K:
    case TENSOR_Q6_K: return true;
    default: return false;
    }
}

/* Unpacks the j-th (scale, min) pair of the 12-byte k-quant scale field:
 * pairs 0-3 sit in the low 6 bits of bytes 0-7; pairs 4-7 take their low
 * nibbles from bytes 8-11 and their top two bits from bytes 0-7. */
static void kquant_scale_min(int j, const uint8_t *s, uint8_t *scale, uint8_t *min) {
    if (j < 4) {
        *scale = s[j] & 63;
        *min = s[j + 4] & 63;
    } else {
        *scale = (uint8_t)((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4));
        *min = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

static void dequant_q4_0(const block_q4_0 *b, float *y, uint64_t nb) {
    for (uint64_t i = 0; i < nb; i++, y += 32) {
        float d = fp16_to_f32(b[i].d);
        for (int j = 0; j < 16; j++) {
            y[j] = (float)((b[i].qs[j] & 0x0f) - 8) * d;
            y[j + 16] = (float)((b[i].qs[j] >> 4) - 8) * d;
        }
    }
}

static void dequant_q4_1(const block_q4_1 *b, float *y, uint64_t nb) {
    for (uint64_t i = 0; i < nb; i++, y += 32) {
        float d = fp16_to_f32(b[i].d), m = fp16_to_f32(b[i].m);
        for (int j = 0; j < 16; j++) {
            y[j] = (float)(b[i].qs[j] & 0x0f) * d + m;
            y[j + 16] = (float)(b[i].qs[j] >> 4) * d + m;
        }
    }
}

/* Q5: the fifth bit of element j (0..31) is bit j of the 32-bit qh field. */
static uint32_t q5_high_bits(const uint8_t qh[4]) {
    return (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
}

static void dequant_q5_0(const block_q5_0 *b, float *y, uint64_t nb) {
    for (uint64_t i = 0; i < nb; i++, y += 32) {
        float d = fp16_to_f32(b[i].d);
        uint32_t qh = q5_high_bits(b[i].qh);
        for (int j = 0; j < 16; j++) {
            int lo = (b[i].qs[j] & 0x0f) | (int)((qh >> j) & 1) << 4;
            int hi = (b[i].qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
            y[j] = (float)(lo - 16) * d;
            y[j + 16] = (float)(hi - 16) * d;
        }
    }
}

static void dequant_q5_1(const block_q5_1 *b, float *y, uint64_t nb) {
    for (uint64_t i = 0; i < nb; i++, y += 32) {
        float d = fp16_to_f32(b[i].d), m = fp16_to_f32(b[i].m);
        uint32_t qh = q5_high_bits(b[i].qh);
        for (int j = 0; j < 16; j++) {
            int lo = (b[i].qs[j] & 0x0f) | (int)((qh >> j) & 1) << 4;
            int hi = (b[i].qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
            y[j] = (float)lo * d + m;
            y[j + 16] = (float)hi * d + m;
        }
    }
}

static void dequant_q8_0(const block_q8_0 *b, float *y, uint64_t nb) {
    for (uint64_t i = 0; i < nb; i++, y += 32) {
        float d = fp16_to_f32(b[i].d);
        for (int j = 0; j < 32; j++)
            y[j] = (float)b[i].qs[j] * d;
    }
}

/* Q4_K: 8 sub-blocks of 32; 64 values share 32 bytes (low nibbles first). */
static void dequant_q4_K(const block_q4_K *b, float *y, uint64_t nb) {
    for (uint64_t i = 0; i < nb; i++) {
        float d = fp16_to_f32(b[i].d), dmin = fp16_to_f32(b[i].dmin);
        const uint8_t *q = b[i].qs;
        for (int sub = 0; sub < 8; sub += 2, q += 32) {
            uint8_t sc0, m0, sc1, m1;
            kquant_scale_min(sub, b[i].scales, &sc0, &m0);
            kquant_scale_min(sub + 1, b[i].scales, &sc1, &m1);
            for (int l = 0; l < 32; l++)
                *y++ = d * sc0 * (q[l] & 0x0f) - dmin * m0;
            for (int l = 0; l < 32; l++)
                *y++ = d * sc1 * (q[l] >> 4) - dmin * m1;
        }
    }
}

/* Q5_K: as Q4_K, plus a fifth bit: sub-block s takes bit s of qh[l]. */
static void dequant_q5_K(const block_q5_K *b, float *y, uint64_t nb) {
    for (uint64_t i = 0; i < nb; i++) {
        float d = fp16_to_f32(b[i].d), dmin = fp16_to_f32(b[i].dmin);
        const uint8_t *q = b[i].qs;
        for (int sub = 0; sub < 8; sub += 2, q += 32) {
            uint8_t sc0, m0, sc1, m1;
            kquant_scale_min(sub, b[i].scales, &sc0, &m0);
            kquant_scale_min(sub + 1, b[i].scales, &sc1, &m1);
            for (int l = 0; l < 32; l++) {
                int hbit = (b[i].qh[l] >> sub) & 1;
                *y++ = d * sc0 * ((q[l] & 0x0f) + 16 * hbit) - dmin * m0;
            }
            for (int l = 0; l < 32; l++) {
                int hbit = (b[i].qh[l] >> (sub + 1)) & 1;
                *y++ = d * sc1 * ((q[l] >> 4) + 16 * hbit) - dmin * m1;
            }
        }
    }
}

/* Q6_K: two halves of 128; in each, ql holds 64 bytes of low nibbles and qh
 * 32 bytes of 2-bit pairs; 16 values share one signed 8-bit scale. */
static void dequant_q6_K(const block_q6_K *b, float *y, uint64_t nb) {
    for (uint64_t i = 0; i < nb; i++) {
        float d = fp16_to_f32(b[i].d);
        const uint8_t *ql = b[i].ql, *qh = b[i].qh;
        const int8_t *sc = b[i].scales;
        for (int half = 0; half < 2; half++, y += 128, ql += 64, qh += 32, sc += 8) {
            for (int l = 0; l < 32; l++) {
                int s = l / 16;
                int q1 = ((ql[l] & 0x0f) | ((qh[l] >> 0) & 3) << 4) - 32;
                int q2 = ((ql[l + 32] & 0x0f) | ((qh[l] >> 2) & 3) << 4) - 32;
                int q3 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
                int q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;
                y[l] = d * sc[s + 0] * q1;
                y[l + 32] = d * sc[s + 2] * q2;
                y[l + 64] = d * sc[s + 4] * q3;
                y[l + 96] = d * sc[s + 6] * q4;
            }
        }
    }
}

int tensor_dequantize_row(uint32_t type, const void *src, float *dst, uint64_t n) {
    switch (type) {
    case TENSOR_F32: {
        const uint8_t *s = src;
        for (uint64_t i = 0; i < n; i++)
            memcpy(&dst[i], s + 4 * i, 4);
        return 0;
    }
    case TENSOR_F16:
    case TENSOR_BF16: {
        const uint8_t *s = src;
        for (uint64_t i = 0; i < n; i++) {
            uint16_t h = (uint16_t)(s[2 * i] | s[2 * i + 1] << 8);
            dst[i] = type == TENSOR_F16 ? fp16_to_f32(h) : bf16_to_f32(h);
        }
        return 0;
    }
    case TENSOR_Q4_0: dequant_q4_0(src, dst, n / 32); return 0;
    case TENSOR_Q4_1: dequant_q4_1(src, dst, n / 32); return 0;
    case TENSOR_Q5_0: dequant_q5_0(src, dst, n / 32); return 0;
    case TENSOR_Q5_1: dequant_q5_1(src, dst, n / 32); return 0;
    case TENSOR_Q8_0: dequant_q8_0(src, dst, n / 32); return 0;
    case TENSOR_Q4_K: dequant_q4_K(src, dst, n / QK_K); return 0;
    case TENSOR_Q5_K: dequant_q5_K(src, dst, n / QK_K); return 0;
    case TENSOR_Q6_K: dequant_q6_K(src, dst, n / QK_K); return 0;
    default: return -1;
    }
}

static void quantize_q8_0(const float *x, block_q8_0 *b, uint64_t nb) {
    for (uint64_t i = 0; i < nb; i++, x += 32) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++)
            amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = fp16_from_f32(d);
        for (int j = 0; j < 32; j++)
            b[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

int tensor_quantize_row(uint32_t type, const float *src, void *dst, uint64_t n) {
    uint8_t *out = dst;
    switch (type) {
    case TENSOR_F32: memcpy(dst, src, n * sizeof(float)); return 0;
    case TENSOR_F16:
    case TENSOR_BF16:
        for (uint64_t i = 0; i < n; i++) {
            uint16_t h = type == TENSOR_F16 ? fp16_from_f32(src[i]) : bf16_from_f32(src[i]);
            out[2 * i] = (uint8_t)h;
            out[2 * i + 1] = (uint8_t)(h >> 8);
        }
        return 0;
    case TENSOR_Q8_0:
        if (n % 32)
            return -1;
        quantize_q8_0(src, dst, n / 32);
        return 0;
    default: return -1;
    }
}
