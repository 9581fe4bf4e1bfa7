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
            tensor_kquant_scale_min(sub, b[i].scales, &sc0, &m0);
            tensor_kquant_scale_min(sub + 1, b[i].scales, &sc1, &m1);
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
            tensor_kquant_scale_min(sub, b[i].scales, &sc0, &m0);
            tensor_kquant_scale_min(sub + 1, b[i].scales, &sc1, &m1);
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

/* ---- rows as 8-bit integers, a scale and an offset per group ---- */

static void set_groups(uint64_t v, uint32_t len, uint32_t group, float s, float o, float *scale, float *offset) {
    for (uint64_t g = v / group; g < (v + len) / group; g++)
        scale[g] = s, offset[g] = o;
}

/* The 32-value types: x = (q - zero) d + m. */
static void split_32(uint32_t type, uint32_t bytes, const uint8_t *p, uint64_t nb, uint32_t group, int8_t *q,
                     float *scale, float *offset) {
    bool has_min = type == TENSOR_Q4_1 || type == TENSOR_Q5_1, five = type == TENSOR_Q5_0 || type == TENSOR_Q5_1;
    int zero = has_min ? 0 : type == TENSOR_Q4_0 ? 8 : 16;
    for (uint64_t b = 0; b < nb; b++, p += bytes, q += 32) {
        float d = fp16_to_f32((uint16_t)(p[0] | p[1] << 8)),
              m = has_min ? fp16_to_f32((uint16_t)(p[2] | p[3] << 8)) : 0;
        set_groups(32 * b, 32, group, d, -m, scale, offset);
        if (type == TENSOR_Q8_0) {
            memcpy(q, p + 2, 32);
            continue;
        }
        const uint8_t *qs = p + (has_min ? 4 : 2) + (five ? 4 : 0);
        uint32_t qh = five ? q5_high_bits(p + (has_min ? 4 : 2)) : 0;
        for (int j = 0; j < 16; j++) {
            q[j] = (int8_t)(((qs[j] & 0x0f) | (int)((qh >> j) & 1) << 4) - zero);
            q[j + 16] = (int8_t)(((qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4) - zero);
        }
    }
}

uint32_t tensor_split_group(uint32_t type) {
    switch (type) {
    case TENSOR_Q8_0:
    case TENSOR_Q4_0:
    case TENSOR_Q4_1:
    case TENSOR_Q5_0:
    case TENSOR_Q5_1:
    case TENSOR_Q4_K:
    case TENSOR_Q5_K: return 32;
    case TENSOR_Q6_K: return 16;
    default: return 0;
    }
}

int tensor_split_row(uint32_t type, const void *src, uint64_t n, uint32_t group, int8_t *q, float *scale,
                     float *offset) {
    uint32_t elems, bytes;
    if ((group != 16 && group != 32) || group > tensor_split_group(type) ||
        !tensor_type_geometry(type, &elems, &bytes) || n % elems)
        return -1;
    switch (type) {
    case TENSOR_Q8_0:
    case TENSOR_Q4_0:
    case TENSOR_Q4_1:
    case TENSOR_Q5_0:
    case TENSOR_Q5_1: split_32(type, bytes, src, n / 32, group, q, scale, offset); return 0;
    case TENSOR_Q4_K:
    case TENSOR_Q5_K: {
        const uint8_t *p = src;
        for (uint64_t i = 0; i < n / QK_K; i++, p += bytes) {
            const block_q4_K *b4 = (const block_q4_K *)p;
            const block_q5_K *b5 = (const block_q5_K *)p;
            float d = fp16_to_f32(b4->d), dmin = fp16_to_f32(b4->dmin);
            const uint8_t *qs = type == TENSOR_Q4_K ? b4->qs : b5->qs;
            for (int sub = 0; sub < 8; sub++, q += 32) {
                uint8_t sc, m;
                tensor_kquant_scale_min(sub, b4->scales, &sc, &m);
                set_groups(i * QK_K + 32 * (uint64_t)sub, 32, group, d * sc, dmin * m, scale, offset);
                for (int l = 0; l < 32; l++) {
                    int v = sub % 2 ? qs[32 * (sub / 2) + l] >> 4 : qs[32 * (sub / 2) + l] & 0x0f;
                    q[l] = (int8_t)(type == TENSOR_Q5_K ? v + 16 * ((b5->qh[l] >> sub) & 1) : v);
                }
            }
        }
        return 0;
    }
    case TENSOR_Q6_K: {
        const block_q6_K *b = src;
        for (uint64_t i = 0; i < n / QK_K; i++, q += QK_K) {
            float d = fp16_to_f32(b[i].d);
            for (int s = 0; s < 16; s++)
                set_groups(i * QK_K + 16 * (uint64_t)s, 16, group, d * b[i].scales[s], 0.0f, scale, offset);
            for (int h = 0; h < 2; h++)
                for (int c = 0; c < 4; c++)
                    for (int l = 0; l < 32; l++) {
                        int lo = b[i].ql[64 * h + 32 * (c & 1) + l] >> (4 * (c >> 1)) & 0x0f;
                        int hi = b[i].qh[32 * h + l] >> (2 * c) & 3;
                        q[128 * h + 32 * c + l] = (int8_t)((lo | hi << 4) - 32);
                    }
        }
        return 0;
    }
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

/* Q5_0: d = -max/16 where max is the value of largest magnitude, so max
 * itself maps to q = 0 (as llama.cpp's reference quantizer). */
static void quantize_q5_0(const float *x, block_q5_0 *b, uint64_t nb) {
    for (uint64_t i = 0; i < nb; i++, x += 32) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 32; j++)
            if (fabsf(x[j]) > amax)
                amax = fabsf(x[j]), max = x[j];
        float d = max / -16.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        uint32_t qh = 0;
        b[i].d = fp16_from_f32(d);
        for (int j = 0; j < 16; j++) {
            int lo = (int)fminf(31.0f, floorf(x[j] * id + 16.5f));
            int hi = (int)fminf(31.0f, floorf(x[j + 16] * id + 16.5f));
            lo = lo < 0 ? 0 : lo, hi = hi < 0 ? 0 : hi;
            b[i].qs[j] = (uint8_t)((lo & 0x0f) | (hi & 0x0f) << 4);
            qh |= (uint32_t)(lo >> 4) << j | (uint32_t)(hi >> 4) << (j + 16);
        }
        for (int k = 0; k < 4; k++)
            b[i].qh[k] = (uint8_t)(qh >> (8 * k));
    }
}

static int clamp_round(float v, int lo, int hi) {
    int q = (int)lrintf(v);
    return q < lo ? lo : q > hi ? hi : q;
}

/* Q4_K, plainly: each sub-block of 32 spans [min(0, lo), hi] in 15 steps;
 * its step and -min become 6-bit multiples of the super-block's d and dmin.
 * (llama.cpp searches scales to lower the error; any valid encoding serves
 * our tests, which compare kernels against this file's dequantizer.) */
static void quantize_q4_K(const float *x, block_q4_K *b, uint64_t nb) {
    for (uint64_t i = 0; i < nb; i++, x += QK_K) {
        float step[8], neg_min[8], max_step = 0.0f, max_min = 0.0f;
        for (int s = 0; s < 8; s++) {
            float lo = 0.0f, hi = -INFINITY;
            for (int j = 0; j < 32; j++)
                lo = fminf(lo, x[32 * s + j]), hi = fmaxf(hi, x[32 * s + j]);
            step[s] = (hi - lo) / 15.0f, neg_min[s] = -lo;
            max_step = fmaxf(max_step, step[s]), max_min = fmaxf(max_min, neg_min[s]);
        }
        float d = max_step / 63.0f, dmin = max_min / 63.0f;
        b[i].d = fp16_from_f32(d), b[i].dmin = fp16_from_f32(dmin);
        d = fp16_to_f32(b[i].d), dmin = fp16_to_f32(b[i].dmin);
        memset(b[i].scales, 0, sizeof b[i].scales);
        for (int s = 0; s < 8; s++) {
            int sc = d > 0.0f ? clamp_round(step[s] / d, 0, 63) : 0;
            int m = dmin > 0.0f ? clamp_round(neg_min[s] / dmin, 0, 63) : 0;
            if (s < 4) {
                b[i].scales[s] |= (uint8_t)sc, b[i].scales[s + 4] |= (uint8_t)m;
            } else {
                b[i].scales[s + 4] = (uint8_t)((sc & 0x0f) | (m & 0x0f) << 4);
                b[i].scales[s - 4] |= (uint8_t)((sc >> 4) << 6), b[i].scales[s] |= (uint8_t)((m >> 4) << 6);
            }
            float scale = d * (float)sc, offset = dmin * (float)m;
            uint8_t *q = b[i].qs + 32 * (s / 2);
            for (int j = 0; j < 32; j++) {
                int v = scale > 0.0f ? clamp_round((x[32 * s + j] + offset) / scale, 0, 15) : 0;
                q[j] = (uint8_t)(s % 2 ? (q[j] & 0x0f) | v << 4 : v);
            }
        }
    }
}

/* Q6_K: each sub-block of 16 gets a step of max|x|/31, an 8-bit multiple
 * of the super-block's d; quants are 6-bit, offset by 32. */
static void quantize_q6_K(const float *x, block_q6_K *b, uint64_t nb) {
    for (uint64_t i = 0; i < nb; i++, x += QK_K) {
        float step[16], max_step = 0.0f;
        for (int s = 0; s < 16; s++) {
            float amax = 0.0f;
            for (int j = 0; j < 16; j++)
                amax = fmaxf(amax, fabsf(x[16 * s + j]));
            step[s] = amax / 31.0f, max_step = fmaxf(max_step, step[s]);
        }
        float d = max_step / 127.0f;
        b[i].d = fp16_from_f32(d);
        d = fp16_to_f32(b[i].d);
        memset(b[i].ql, 0, sizeof b[i].ql), memset(b[i].qh, 0, sizeof b[i].qh);
        for (int s = 0; s < 16; s++)
            b[i].scales[s] = (int8_t)(d > 0.0f ? clamp_round(step[s] / d, 0, 127) : 0);
        /* the inverse of dequant_q6_K's layout: value 128 h + 32 c + l */
        for (int h = 0; h < 2; h++)
            for (int c = 0; c < 4; c++)
                for (int l = 0; l < 32; l++) {
                    int k = 128 * h + 32 * c + l;
                    float scale = d * (float)b[i].scales[8 * h + 2 * c + l / 16];
                    int q = (scale > 0.0f ? clamp_round(x[k] / scale, -32, 31) : 0) + 32;
                    b[i].ql[64 * h + 32 * (c & 1) + l] |= (uint8_t)((q & 0x0f) << (4 * (c >> 1)));
                    b[i].qh[32 * h + l] |= (uint8_t)((q >> 4) << (2 * c));
                }
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
    case TENSOR_Q5_0:
        if (n % 32)
            return -1;
        if (type == TENSOR_Q8_0)
            quantize_q8_0(src, dst, n / 32);
        else
            quantize_q5_0(src, dst, n / 32);
        return 0;
    case TENSOR_Q4_K:
    case TENSOR_Q6_K:
        if (n % QK_K)
            return -1;
        if (type == TENSOR_Q4_K)
            quantize_q4_K(src, dst, n / QK_K);
        else
            quantize_q6_K(src, dst, n / QK_K);
        return 0;
    default: return -1;
    }
}
