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
    assert_int_equal(tensor_quantize_row(TENSOR_Q4_K, x, q, 256), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fp16_round_trip_exhaustive),
        cmocka_unit_test(test_fp16_rounding),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_geometry),
        cmocka_unit_test(test_q8_0_quantize),
    };
    return cmocka_run_group_tests_name("tensor_types", tests, NULL, NULL);
}
