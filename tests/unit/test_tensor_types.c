/* Tensor type table, fp16/bf16 conversions and the Q8_0 reference quantizer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <string.h>

#include "fp16.h"
#include "tensor_types.h"

/* Every half converts to float and back to itself (NaNs stay NaN). */
static void test_fp16_round_trip_exhaustive(void **state) {
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = fp16_to_f32((uint16_t)h);
        uint16_t back = fp16_from_f32(f);
        if (isnan(f))
            assert_true(isnan(fp16_to_f32(back)));
        else
            assert_int_equal(back, h);
    }
}

static void test_fp16_rounding(void **state) {
    (void)state;
    assert_int_equal(fp16_from_f32(1.0f), 0x3c00);
    assert_int_equal(fp16_from_f32(65504.0f), 0x7bff);
    assert_int_equal(fp16_from_f32(65520.0f), 0x7c00); /* halfway to inf rounds to even: inf */
    assert_int_equal(fp16_from_f32(65519.0f), 0x7bff);
    assert_int_equal(fp16_from_f32(1.0f + 1.0f / 2048.0f), 0x3c00); /* tie, to even */
    assert_int_equal(fp16_from_f32(1.0f + 3.0f / 2048.0f), 0x3c02); /* tie, to even (up) */
    assert_int_equal(fp16_from_f32(-0.0f), 0x8000);
    assert_int_equal(fp16_from_f32(5.9604645e-8f), 0x0001); /* smallest subnormal */
    assert_int_equal(fp16_from_f32(2.9802322e-8f), 0x0000); /* half of it: tie to even, zero */
    assert_true(fp16_to_f32(0x0001) == 5.9604645e-8f);
    assert_true(isinf(fp16_to_f32(0xfc00)) && fp16_to_f32(0xfc00) < 0);
}

static void test_bf16(void **state) {
    (void)state;
    assert_int_equal(bf16_from_f32(1.0f), 0x3f80);
    assert_true(bf16_to_f32(0x3f80) == 1.0f);
    /* 1 + 2^-8 is halfway between 1 and 1 + 2^-7: even wins (1.0) */
    assert_int_equal(bf16_from_f32(1.0f + 1.0f / 256.0f), 0x3f80);
    assert_int_equal(bf16_from_f32(1.0f + 3.0f / 256.0f), 0x3f82);
    assert_true(isnan(bf16_to_f32(bf16_from_f32(NAN))));
    for (uint32_t b = 0; b < 65536; b++) {
        float f = bf16_to_f32((uint16_t)b);
        if (!isnan(f))
            assert_int_equal(bf16_from_f32(f), b);
    }
}

static void test_geometry(void **state) {
    (void)state;
    uint64_t bytes;
    assert_true(tensor_row_bytes(TENSOR_Q8_0, 64, &bytes) && bytes == 68);
    assert_true(tensor_row_bytes(TENSOR_Q6_K, 512, &bytes) && bytes == 420);
    assert_true(tensor_row_bytes(TENSOR_BF16, 3, &bytes) && bytes == 6);
    assert_false(tensor_row_bytes(TENSOR_Q4_K, 100, &bytes));
    assert_false(tensor_row_bytes(99, 32, &bytes));
    assert_false(tensor_row_bytes(TENSOR_F32, UINT64_MAX / 2, &bytes));
    assert_string_equal(tensor_type_name(TENSOR_Q5_1), "Q5_1");
    assert_null(tensor_type_name(5));
    assert_true(tensor_type_can_dequantize(TENSOR_Q5_K));
    assert_false(tensor_type_can_dequantize(TENSOR_Q2_K));
}

/* Q8_0 round trip error is at most half a step plus the fp16 scale error. */
static void test_q8_0_quantize(void **state) {
    (void)state;
    float x[256], y[256];
    block_q8_0 q[8];
    for (int i = 0; i < 256; i++)
        x[i] = sinf((float)i * 0.37f) * (float)(1 + i % 7);
    assert_int_equal(tensor_quantize_row(TENSOR_Q8_0, x, q, 256), 0);
    assert_int_equal(tensor_dequantize_row(TENSOR_Q8_0, q, y, 256), 0);
    for (int b = 0; b < 8; b++) {
        float amax = 0;
        for (int j = 0; j < 32; j++)
            amax = fmaxf(amax, fabsf(x[32 * b + j]));
        for (int j = 0; j < 32; j++)
            assert_true(fabsf(x[32 * b + j] - y[32 * b + j]) <= amax / 254.0f + amax / 2048.0f);
    }
    float zeros[32] = {0};
    assert_int_equal(tensor_quantize_row(TENSOR_Q8_0, zeros, q, 32), 0);
    assert_int_equal(tensor_dequantize_row(TENSOR_Q8_0, q, y, 32), 0);
    for (int j = 0; j < 32; j++)
        assert_true(y[j] == 0.0f);
    assert_int_equal(tensor_quantize_row(TENSOR_Q5_K, x, q, 256), -1);
}

/* Q5_0, Q4_K and Q6_K (make-test-model's quantizers): every value within
 * its block's step of the input, and the whole row close in RMS. */
static void check_round_trip(uint32_t type, float max_rel_rms, float steps) {
    enum { N = 1024 };
    static float x[N], y[N];
    static uint8_t q[N * 2];
    for (int i = 0; i < N; i++) /* blocks of very different scales, skewed signs, an all-zero block */
        x[i] = i / 256 == 2 ? 0.0f : sinf((float)i * 0.37f) * (float)(1 + i % 7) * (i / 256 == 1 ? 0.01f : 1.0f) + 0.3f;
    assert_int_equal(tensor_quantize_row(type, x, q, N), 0);
    assert_int_equal(tensor_dequantize_row(type, q, y, N), 0);
    double err2 = 0, norm2 = 0;
    for (int s = 0; s < N / 256; s++) {
        float amax = 0.0f;
        for (int j = 0; j < 256; j++)
            amax = fmaxf(amax, fabsf(x[256 * s + j]));
        for (int j = 0; j < 256; j++) {
            float e = fabsf(x[256 * s + j] - y[256 * s + j]);
            if (e > steps * amax)
                fail_msg("%s: value %d: %f decodes to %f", tensor_type_name(type), 256 * s + j, x[256 * s + j],
                         y[256 * s + j]);
            err2 += (double)e * e, norm2 += (double)x[256 * s + j] * x[256 * s + j];
        }
    }
    print_message("%s: relative RMS error %.4f\n", tensor_type_name(type), sqrt(err2 / norm2));
    assert_true(sqrt(err2 / norm2) < max_rel_rms);
    for (int i = 512; i < 768; i++)
        assert_true(y[i] == 0.0f);
    assert_int_equal(tensor_quantize_row(type, x, q, type == TENSOR_Q5_0 ? 48 : 288), -1);
}

static void test_low_bit_quantize(void **state) {
    (void)state;
    check_round_trip(TENSOR_Q5_0, 0.05f, 1.0f / 16); /* -max/16 steps: +max clamps to 15 of them */
    check_round_trip(TENSOR_Q4_K, 0.10f, 2.0f / 15);
    check_round_trip(TENSOR_Q6_K, 0.025f, 1.0f / 31);
}

/* tensor_split_row gives the dequantizer's floats bit for bit, for every
 * type it takes: random quants, sane random scales. */
static void test_split_row(void **state) {
    (void)state;
    const uint32_t types[] = {TENSOR_Q8_0, TENSOR_Q4_0, TENSOR_Q4_1, TENSOR_Q5_0,
                              TENSOR_Q5_1, TENSOR_Q4_K, TENSOR_Q5_K, TENSOR_Q6_K};
    enum { N = 512 };
    static uint8_t raw[N * 2];
    static float want[N], scale[N / 16], offset[N / 16];
    static int8_t q[N];
    uint32_t seed = 1;
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        uint32_t elems, bytes;
        assert_true(tensor_type_geometry(types[t], &elems, &bytes));
        for (size_t i = 0; i < sizeof raw; i++)
            seed = seed * 1664525u + 1013904223u, raw[i] = (uint8_t)(seed >> 24);
        for (uint32_t b = 0; b < N / elems; b++) { /* the fp16 scale fields: 0.001 .. 0.1, either sign for d */
            uint8_t *blk = raw + (size_t)b * bytes;
            int at[2] = {types[t] == TENSOR_Q6_K ? 208 : 0, types[t] == TENSOR_Q6_K ? -1 : 2};
            for (int k = 0; k < 2; k++) {
                if (at[k] < 0 || (k == 1 && elems == 32 && types[t] != TENSOR_Q4_1 && types[t] != TENSOR_Q5_1))
                    continue;
                uint16_t h = fp16_from_f32((k ? 1.0f : -1.0f) * 0.001f * (float)(1 + (blk[at[k]] % 100)));
                blk[at[k]] = (uint8_t)h, blk[at[k] + 1] = (uint8_t)(h >> 8);
            }
        }
        assert_int_equal(tensor_dequantize_row(types[t], raw, want, N), 0);
        for (uint32_t group = 16; group <= 32; group += 16) {
            int rc = tensor_split_row(types[t], raw, N, group, q, scale, offset);
            if (types[t] == TENSOR_Q6_K && group == 32) {
                assert_int_equal(rc, -1);
                continue;
            }
            assert_int_equal(rc, 0);
            for (int i = 0; i < N; i++) {
                float got = (float)q[i] * scale[i / group] - offset[i / group];
                if (got != want[i])
                    fail_msg("%s group %u: value %d: %g, want %g", tensor_type_name(types[t]), group, i, got, want[i]);
            }
        }
    }
    assert_int_equal(tensor_split_group(TENSOR_Q6_K), 16);
    assert_int_equal(tensor_split_group(TENSOR_Q5_0), 32);
    assert_int_equal(tensor_split_group(TENSOR_BF16), 0);
    assert_int_equal(tensor_split_row(TENSOR_BF16, raw, 32, 32, q, scale, offset), -1);
    assert_int_equal(tensor_split_row(TENSOR_Q4_K, raw, 32, 32, q, scale, offset), -1);
    assert_int_equal(tensor_split_row(TENSOR_Q8_0, raw, 32, 8, q, scale, offset), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fp16_round_trip_exhaustive),
        cmocka_unit_test(test_fp16_rounding),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_geometry),
        cmocka_unit_test(test_q8_0_quantize),
        cmocka_unit_test(test_low_bit_quantize),
        cmocka_unit_test(test_split_row),
    };
    return cmocka_run_group_tests_name("tensor_types", tests, NULL, NULL);
}
