/* IEEE half and bfloat16 conversions, bit-exact and branch-light.
 * float -> half/bf16 rounds to nearest even; NaN stays NaN. */
#ifndef INFERNO_FP16_H
#define INFERNO_FP16_H

#include <stdint.h>
#include <string.h>

static inline uint32_t fp_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float fp_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float fp16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    if (exp == 0x1f) /* inf or NaN */
        return fp_bits_f32(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24, exact in float */
        float v = (float)mant * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    return fp_bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

static inline uint16_t fp16_from_f32(float f) {
    uint32_t u = fp_f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000;
    uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) /* NaN: keep a quiet NaN */
        return (uint16_t)(sign | 0x7e00);
    if (abs >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return (uint16_t)(sign | 0x7c00);
    if (abs < 0x38800000u) {
        /* result is subnormal or zero: value / 2^-24, rounded to nearest even */
        float v = fp_bits_f32(abs) * 16777216.0f;
        uint32_t q = (uint32_t)v;
        float frac = v - (float)q;
        if (frac > 0.5f || (frac == 0.5f && (q & 1)))
            q++;
        return (uint16_t)(sign | q);
    }
    /* normal: rebias exponent, round the 13 dropped mantissa bits to even */
    uint32_t r = abs - 0x38000000u;
    r += 0xfff + ((r >> 13) & 1);
    return (uint16_t)(sign | (r >> 13));
}

static inline float bf16_to_f32(uint16_t b) { return fp_bits_f32((uint32_t)b << 16); }

static inline uint16_t bf16_from_f32(float f) {
    uint32_t u = fp_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: force quiet */
        return (uint16_t)((u >> 16) | 64);
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

#endif
