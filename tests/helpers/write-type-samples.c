/* write-type-samples OUT.gguf: a small GGUF with one tensor of every type we
 * dequantize (random block bytes with finite, moderate scales) and one
 * metadata key of every value type. tests/python compares our dequantizer
 * with the gguf package's on it, and it seeds the fuzzer's corpus. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fp16.h"
#include "gguf.h"

static uint64_t rng = 0x1234567887654321ull;
static uint32_t next_u32(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

/* Random fp16 in [-2, 2] (avoids inf/NaN that random bits would give). */
static uint16_t random_half(void) { return fp16_from_f32(((float)(next_u32() % 20001) - 10000.0f) / 5000.0f); }

static void put_half(uint8_t *p, uint16_t h) { memcpy(p, &h, 2); }

/* Fills n_blocks blocks of type t with random bytes, then overwrites each
 * block's fp16 scale fields with sane values. */
static void *random_blocks(uint32_t t, uint64_t n_elems, uint64_t *n_bytes) {
    tensor_row_bytes(t, n_elems, n_bytes);
    uint8_t *data = malloc(*n_bytes);
    for (uint64_t i = 0; i < *n_bytes; i++)
        data[i] = (uint8_t)next_u32();
    uint32_t be, bb;
    tensor_type_geometry(t, &be, &bb);
    for (uint64_t off = 0; off < *n_bytes; off += bb) {
        uint8_t *b = data + off;
        switch (t) {
        case TENSOR_F16: put_half(b, random_half()); break;
        case TENSOR_F32: {
            float f = ((float)(next_u32() % 2001) - 1000.0f) / 100.0f;
            memcpy(b, &f, 4);
            break;
        }
        case TENSOR_BF16: {
            uint16_t h = bf16_from_f32(((float)(next_u32() % 2001) - 1000.0f) / 100.0f);
            memcpy(b, &h, 2);
            break;
        }
        case TENSOR_Q4_1:
        case TENSOR_Q5_1:
        case TENSOR_Q4_K:
        case TENSOR_Q5_K: put_half(b, random_half()), put_half(b + 2, random_half()); break;
        case TENSOR_Q6_K: put_half(b + offsetof(block_q6_K, d), random_half()); break;
        default: put_half(b, random_half()); break; /* Q4_0, Q5_0, Q8_0: d first */
        }
    }
    return data;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: write-type-samples OUT.gguf\n");
        return 2;
    }
    static const uint32_t types[] = {TENSOR_F32,  TENSOR_F16,  TENSOR_BF16, TENSOR_Q4_0, TENSOR_Q4_1, TENSOR_Q5_0,
                                     TENSOR_Q5_1, TENSOR_Q8_0, TENSOR_Q4_K, TENSOR_Q5_K, TENSOR_Q6_K};
    gguf_writer *w = gguf_writer_new();
    uint8_t u8 = 7;
    int8_t i8 = -7;
    uint16_t u16 = 700;
    int16_t i16 = -700;
    int64_t i64 = -7000000000ll;
    double f64 = -0.125;
    const char *strs[] = {"alpha", "beta", "\xce\xb3"};
    float fl[3] = {0.5f, -1.5f, 2.25f};
    int rc = gguf_writer_add_str(w, "general.architecture", "samples") ||
             gguf_writer_add_scalar(w, "s.u8", GGUF_TYPE_UINT8, &u8) ||
             gguf_writer_add_scalar(w, "s.i8", GGUF_TYPE_INT8, &i8) ||
             gguf_writer_add_scalar(w, "s.u16", GGUF_TYPE_UINT16, &u16) ||
             gguf_writer_add_scalar(w, "s.i16", GGUF_TYPE_INT16, &i16) || gguf_writer_add_u32(w, "s.u32", 70000) ||
             gguf_writer_add_i32(w, "s.i32", -70000) || gguf_writer_add_f32(w, "s.f32", 0.25f) ||
             gguf_writer_add_bool(w, "s.bool", true) || gguf_writer_add_str(w, "s.str", "text") ||
             gguf_writer_add_u64(w, "s.u64", 1ull << 40) || gguf_writer_add_scalar(w, "s.i64", GGUF_TYPE_INT64, &i64) ||
             gguf_writer_add_scalar(w, "s.f64", GGUF_TYPE_FLOAT64, &f64) ||
             gguf_writer_add_str_array(w, "s.arr_str", strs, NULL, 3) ||
             gguf_writer_add_array(w, "s.arr_f32", GGUF_TYPE_FLOAT32, fl, 3);
    void *bufs[sizeof types / sizeof types[0]];
    for (size_t i = 0; i < sizeof types / sizeof types[0] && !rc; i++) {
        uint64_t ne[2] = {512, 3}, n_bytes;
        bufs[i] = random_blocks(types[i], ne[0] * ne[1], &n_bytes);
        char name[32];
        snprintf(name, sizeof name, "sample.%s", tensor_type_name(types[i]));
        rc = gguf_writer_add_tensor(w, name, types[i], 2, ne, bufs[i], n_bytes);
    }
    if (rc || gguf_writer_write(w, argv[1])) {
        fprintf(stderr, "write-type-samples: %s\n", gguf_writer_error(w));
        return 1;
    }
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        free(bufs[i]);
    gguf_writer_free(w);
    return 0;
}
