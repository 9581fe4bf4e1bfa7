/* GGUF reader/writer tests: the shared reference files, a writer round trip
 * over every value type, and hand-made malformed files that must each fail
 * with a clear message (never a crash: this binary runs under ASan+UBSan). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fp16.h"
#include "gguf.h"
#include "test_util.h"

static gguf_file *open_ok(const char *path) {
    char err[512] = "";
    gguf_file *f = NULL;
    if (gguf_open(path, &f, err, sizeof err))
        fail_msg("%s", err);
    return f;
}

/* ---- reference files ---- */

static void check_tinyA_metadata(gguf_file *f) {
    uint32_t u;
    float x;
    gguf_str s;
    gguf_array a;
    assert_int_equal(gguf_version(f), 3);
    assert_int_equal(gguf_alignment(f), 32);
    assert_int_equal(gguf_kv_count(f), 25);
    assert_int_equal(gguf_get_str(f, "general.architecture", &s, NULL, 0), 0);
    assert_true(s.len == 5 && !memcmp(s.ptr, "qwen3", 5));
    struct {
        const char *key;
        uint32_t want;
    } u32s[] = {{"qwen3.block_count", 2},
                {"qwen3.context_length", 4096},
                {"qwen3.embedding_length", 32},
                {"qwen3.feed_forward_length", 96},
                {"qwen3.attention.head_count", 4},
                {"qwen3.attention.head_count_kv", 2},
                {"qwen3.attention.key_length", 16},
                {"qwen3.attention.value_length", 16},
                {"tokenizer.ggml.eos_token_id", 151645},
                {"tokenizer.ggml.bos_token_id", 151643},
                {"tokenizer.ggml.padding_token_id", 151643}};
    for (size_t i = 0; i < sizeof u32s / sizeof u32s[0]; i++) {
        assert_int_equal(gguf_get_u32(f, u32s[i].key, &u, NULL, 0), 0);
        assert_int_equal(u, u32s[i].want);
    }
    assert_int_equal(gguf_get_f32(f, "qwen3.rope.freq_base", &x, NULL, 0), 0);
    assert_true(x == 1e6f);
    assert_int_equal(gguf_get_f32(f, "qwen3.attention.layer_norm_rms_epsilon", &x, NULL, 0), 0);
    assert_true(x == 1e-6f);
    assert_int_equal(gguf_get_str(f, "tokenizer.ggml.pre", &s, NULL, 0), 0);
    assert_true(s.len == 5 && !memcmp(s.ptr, "qwen2", 5));

    assert_int_equal(gguf_get_array(f, "tokenizer.ggml.tokens", &a, NULL, 0), 0);
    assert_int_equal(a.elem_type, GGUF_TYPE_STRING);
    assert_int_equal(a.count, 151936);
    assert_true(a.strs[151644].len == 12 && !memcmp(a.strs[151644].ptr, "<|im_start|>", 12));
    assert_true(a.strs[0].len == 1 && a.strs[0].ptr[0] == '!');
    assert_int_equal(gguf_get_array(f, "tokenizer.ggml.token_type", &a, NULL, 0), 0);
    assert_int_equal(a.elem_type, GGUF_TYPE_INT32);
    assert_int_equal(gguf_array_get_i64(&a, 0), 1);
    assert_int_equal(gguf_array_get_i64(&a, 151644), 3); /* control */
    assert_int_equal(gguf_array_get_i64(&a, 151667), 4); /* <think>: user-defined */
    assert_int_equal(gguf_array_get_i64(&a, 151935), 5); /* padding: unused */
    assert_int_equal(gguf_get_array(f, "tokenizer.ggml.merges", &a, NULL, 0), 0);
    assert_int_equal(a.count, 151387);
    assert_true(a.strs[2].len == 3 && !memcmp(a.strs[2].ptr, "i n", 3));

    /* type mismatches are reported, not coerced */
    char err[256];
    assert_int_equal(gguf_get_u32(f, "general.architecture", &u, err, sizeof err), -1);
    assert_non_null(strstr(err, "general.architecture"));
    assert_int_equal(gguf_get_u32(f, "no.such.key", &u, err, sizeof err), -1);
    assert_non_null(strstr(err, "missing"));
}

static void check_tinyA_tensors(gguf_file *f, uint32_t matrix_type) {
    assert_int_equal(gguf_tensor_count(f), 24);
    const gguf_tensor *t = gguf_find_tensor(f, "token_embd.weight");
    assert_non_null(t);
    assert_int_equal(t->type, matrix_type);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->ne[0], 32);
    assert_int_equal(t->ne[1], 151936);
    struct {
        const char *name;
        uint64_t ne0, ne1;
    } shapes[] = {
        {"blk.0.attn_q.weight", 32, 64},      {"blk.0.attn_k.weight", 32, 32},     {"blk.0.attn_v.weight", 32, 32},
        {"blk.1.attn_output.weight", 64, 32}, {"blk.1.ffn_gate.weight", 32, 96},   {"blk.1.ffn_up.weight", 32, 96},
        {"blk.1.ffn_down.weight", 96, 32},    {"blk.0.attn_q_norm.weight", 16, 1}, {"output_norm.weight", 32, 1}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        t = gguf_find_tensor(f, shapes[i].name);
        assert_non_null(t);
        assert_int_equal(t->ne[0], shapes[i].ne0);
        assert_int_equal(t->ne[1], shapes[i].ne1);
        assert_int_equal(t->type, shapes[i].ne1 == 1 ? TENSOR_F32 : matrix_type);
    }
    assert_null(gguf_find_tensor(f, "output.weight")); /* tied embeddings */
}

static void test_reference_files(void **state) {
    (void)state;
    const char *files[] = {"tinyA-f32.gguf", "tinyA-bf16.gguf", "tinyA-q8_0.gguf"};
    uint32_t types[] = {TENSOR_F32, TENSOR_BF16, TENSOR_Q8_0};
    for (int i = 0; i < 3; i++) {
        gguf_file *f = open_ok(ref_path(files[i]));
        check_tinyA_metadata(f);
        check_tinyA_tensors(f, types[i]);
        gguf_close(f);
    }
}

/* bf16 holds the f32 weights exactly; q8_0 is within half a quantization
 * step (amax/254 per 32-value block) of them, plus the rounding of the
 * block scale to fp16 (relative 2^-11, times at most 127 steps). */
static void test_reference_dequant_agrees(void **state) {
    (void)state;
    gguf_file *f32 = open_ok(ref_path("tinyA-f32.gguf")), *bf = open_ok(ref_path("tinyA-bf16.gguf")),
              *q8 = open_ok(ref_path("tinyA-q8_0.gguf"));
    for (uint64_t i = 0; i < gguf_tensor_count(f32); i++) {
        const gguf_tensor *a = gguf_tensor_at(f32, i), *b = gguf_find_tensor(bf, a->name),
                          *c = gguf_find_tensor(q8, a->name);
        assert_non_null(b);
        assert_non_null(c);
        float *x = malloc(a->n_elements * 4), *y = malloc(a->n_elements * 4), *z = malloc(a->n_elements * 4);
        assert_int_equal(tensor_dequantize_row(a->type, a->data, x, a->n_elements), 0);
        assert_int_equal(tensor_dequantize_row(b->type, b->data, y, b->n_elements), 0);
        assert_int_equal(tensor_dequantize_row(c->type, c->data, z, c->n_elements), 0);
        assert_memory_equal(x, y, a->n_elements * 4);
        for (uint64_t k = 0; k < a->n_elements; k += 32) {
            uint64_t n = a->n_elements - k < 32 ? a->n_elements - k : 32;
            float amax = 0;
            for (uint64_t j = 0; j < n; j++)
                amax = fmaxf(amax, fabsf(x[k + j]));
            for (uint64_t j = 0; j < n; j++)
                assert_true(fabsf(x[k + j] - z[k + j]) <= amax / 254.0f + amax / 2048.0f + 1e-7f);
        }
        free(x), free(y), free(z);
    }
    gguf_close(f32), gguf_close(bf), gguf_close(q8);
}

/* ---- writer round trip ---- */

static char tmp_path[256];

static void make_tmp_path(void) {
    snprintf(tmp_path, sizeof tmp_path, "/tmp/inferno-test-gguf-%d.gguf", (int)getpid());
}

static void test_writer_round_trip(void **state) {
    (void)state;
    make_tmp_path();
    gguf_writer *w = gguf_writer_new();
    uint8_t u8 = 200;
    int8_t i8 = -100;
    uint16_t u16 = 60000;
    int16_t i16 = -30000;
    int64_t i64 = -(1ll << 40);
    double f64 = 3.25;
    assert_int_equal(gguf_writer_add_scalar(w, "t.u8", GGUF_TYPE_UINT8, &u8), 0);
    assert_int_equal(gguf_writer_add_scalar(w, "t.i8", GGUF_TYPE_INT8, &i8), 0);
    assert_int_equal(gguf_writer_add_scalar(w, "t.u16", GGUF_TYPE_UINT16, &u16), 0);
    assert_int_equal(gguf_writer_add_scalar(w, "t.i16", GGUF_TYPE_INT16, &i16), 0);
    assert_int_equal(gguf_writer_add_u32(w, "t.u32", 4000000000u), 0);
    assert_int_equal(gguf_writer_add_i32(w, "t.i32", -7), 0);
    assert_int_equal(gguf_writer_add_f32(w, "t.f32", 0.5f), 0);
    assert_int_equal(gguf_writer_add_bool(w, "t.bool", true), 0);
    assert_int_equal(gguf_writer_add_str(w, "t.str", "héllo"), 0);
    assert_int_equal(gguf_writer_add_u64(w, "t.u64", 1ull << 63), 0);
    assert_int_equal(gguf_writer_add_scalar(w, "t.i64", GGUF_TYPE_INT64, &i64), 0);
    assert_int_equal(gguf_writer_add_scalar(w, "t.f64", GGUF_TYPE_FLOAT64, &f64), 0);
    int32_t ints[3] = {1, -2, 3};
    assert_int_equal(gguf_writer_add_array(w, "t.arr_i32", GGUF_TYPE_INT32, ints, 3), 0);
    const char *strs[] = {"a", "", "ccc"};
    assert_int_equal(gguf_writer_add_str_array(w, "t.arr_str", strs, NULL, 3), 0);
    assert_int_equal(gguf_writer_add_str_array(w, "t.arr_empty", strs, NULL, 0), 0);
    assert_int_equal(gguf_writer_add_u32(w, "general.alignment", 64), 0);
    assert_int_equal(gguf_writer_add_u32(w, "t.u32", 1), -1); /* duplicate */
    assert_non_null(strstr(gguf_writer_error(w), "duplicate"));

    float vec[7] = {1, 2, 3, 4, 5, 6, 7};
    uint64_t ne_vec[1] = {7};
    block_q8_0 q8[4];
    memset(q8, 0, sizeof q8);
    for (int b = 0; b < 4; b++) {
        q8[b].d = fp16_from_f32(0.25f * (float)(b + 1));
        for (int j = 0; j < 32; j++)
            q8[b].qs[j] = (int8_t)(j - 16);
    }
    uint64_t ne_q8[2] = {64, 2};
    assert_int_equal(gguf_writer_add_tensor(w, "vec", TENSOR_F32, 1, ne_vec, vec, sizeof vec), 0);
    assert_int_equal(gguf_writer_add_tensor(w, "q8", TENSOR_Q8_0, 2, ne_q8, q8, sizeof q8), 0);
    assert_int_equal(gguf_writer_add_tensor(w, "q8", TENSOR_Q8_0, 2, ne_q8, q8, sizeof q8), -1);
    assert_int_equal(gguf_writer_add_tensor(w, "bad", TENSOR_Q8_0, 2, ne_q8, q8, sizeof q8 - 1), -1);
    assert_int_equal(gguf_writer_write(w, tmp_path), 0);
    gguf_writer_free(w);

    gguf_file *f = open_ok(tmp_path);
    assert_int_equal(gguf_alignment(f), 64);
    assert_int_equal(gguf_kv_count(f), 16);
    uint64_t u;
    int64_t s;
    double d;
    bool b;
    gguf_str str;
    gguf_array a;
    assert_int_equal(gguf_get_u64(f, "t.u8", &u, NULL, 0), 0), assert_int_equal(u, 200);
    assert_int_equal(gguf_get_i64(f, "t.i8", &s, NULL, 0), 0), assert_int_equal(s, -100);
    assert_int_equal(gguf_get_u64(f, "t.u16", &u, NULL, 0), 0), assert_int_equal(u, 60000);
    assert_int_equal(gguf_get_i64(f, "t.i16", &s, NULL, 0), 0), assert_int_equal(s, -30000);
    assert_int_equal(gguf_get_u64(f, "t.u32", &u, NULL, 0), 0), assert_int_equal(u, 4000000000u);
    assert_int_equal(gguf_get_i64(f, "t.i32", &s, NULL, 0), 0), assert_int_equal(s, -7);
    assert_int_equal(gguf_get_u64(f, "t.i32", &u, NULL, 0), -1); /* negative does not fit */
    assert_int_equal(gguf_get_f64(f, "t.f32", &d, NULL, 0), 0), assert_true(d == 0.5);
    assert_int_equal(gguf_get_bool(f, "t.bool", &b, NULL, 0), 0), assert_true(b);
    assert_int_equal(gguf_get_str(f, "t.str", &str, NULL, 0), 0);
    assert_true(str.len == 6 && !memcmp(str.ptr, "héllo", 6));
    assert_int_equal(gguf_get_u64(f, "t.u64", &u, NULL, 0), 0), assert_true(u == 1ull << 63);
    assert_int_equal(gguf_get_i64(f, "t.u64", &s, NULL, 0), -1); /* does not fit int64 */
    assert_int_equal(gguf_get_i64(f, "t.i64", &s, NULL, 0), 0), assert_true(s == -(1ll << 40));
    assert_int_equal(gguf_get_f64(f, "t.f64", &d, NULL, 0), 0), assert_true(d == 3.25);
    assert_int_equal(gguf_get_array(f, "t.arr_i32", &a, NULL, 0), 0);
    assert_int_equal(a.count, 3), assert_int_equal(gguf_array_get_i64(&a, 1), -2);
    assert_int_equal(gguf_get_array(f, "t.arr_str", &a, NULL, 0), 0);
    assert_int_equal(a.count, 3);
    assert_true(a.strs[1].len == 0 && a.strs[2].len == 3 && !memcmp(a.strs[2].ptr, "ccc", 3));
    assert_int_equal(gguf_get_array(f, "t.arr_empty", &a, NULL, 0), 0), assert_int_equal(a.count, 0);

    const gguf_tensor *t = gguf_find_tensor(f, "vec");
    assert_non_null(t);
    assert_int_equal(t->offset % 64, 0);
    assert_memory_equal(t->data, vec, sizeof vec);
    t = gguf_find_tensor(f, "q8");
    assert_non_null(t);
    assert_int_equal(t->offset, 64); /* 28 bytes of vec padded to the 64-byte alignment */
    assert_int_equal(t->n_bytes, sizeof q8);
    float out[128];
    assert_int_equal(tensor_dequantize_row(t->type, t->data, out, 128), 0);
    assert_true(out[0] == -16 * 0.25f && out[127] == 15 * 1.0f);
    gguf_close(f);
    unlink(tmp_path);
}

/* ---- malformed files ---- */

typedef struct {
    uint8_t b[4096];
    size_t n;
} bytes;

static void put(bytes *x, const void *p, size_t n) {
    assert_true(x->n + n <= sizeof x->b);
    memcpy(x->b + x->n, p, n);
    x->n += n;
}
static void put_u32(bytes *x, uint32_t v) { put(x, &v, 4); }
static void put_u64(bytes *x, uint64_t v) { put(x, &v, 8); }
static void put_str(bytes *x, const char *s) { put_u64(x, strlen(s)), put(x, s, strlen(s)); }
static void put_header(bytes *x, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    put(x, "GGUF", 4), put_u32(x, version), put_u64(x, n_tensors), put_u64(x, n_kv);
}
static void put_kv_u32(bytes *x, const char *key, uint32_t v) {
    put_str(x, key), put_u32(x, GGUF_TYPE_UINT32), put_u32(x, v);
}
static void put_tensor(bytes *x, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type, uint64_t off) {
    put_str(x, name), put_u32(x, n_dims);
    for (uint32_t d = 0; d < n_dims; d++)
        put_u64(x, ne[d]);
    put_u32(x, type), put_u64(x, off);
}
static void pad_to(bytes *x, size_t align) {
    while (x->n % align)
        x->b[x->n++] = 0;
}
static void put_zeros(bytes *x, size_t n) {
    assert_true(x->n + n <= sizeof x->b);
    memset(x->b + x->n, 0, n);
    x->n += n;
}

static void expect_error(const bytes *x, const char *needle) {
    char err[512] = "";
    gguf_file *f = (gguf_file *)1;
    int rc = gguf_open_memory(x->b, x->n, &f, err, sizeof err);
    if (rc == 0)
        fail_msg("expected an error containing '%s', file was accepted", needle);
    assert_null(f);
    if (!strstr(err, needle))
        fail_msg("expected an error containing '%s', got '%s'", needle, err);
}

/* One valid file: two keys, a 64-element F32 tensor and a Q8_0 matrix. */
static void build_valid(bytes *x) {
    x->n = 0;
    put_header(x, 3, 2, 2);
    put_kv_u32(x, "general.alignment", 32);
    put_str(x, "k.str"), put_u32(x, GGUF_TYPE_STRING), put_str(x, "value");
    uint64_t ne_a[1] = {64}, ne_b[2] = {32, 2};
    put_tensor(x, "a", 1, ne_a, TENSOR_F32, 0);
    put_tensor(x, "b", 2, ne_b, TENSOR_Q8_0, 256);
    pad_to(x, 32);
    put_zeros(x, 256 + 68);
}

static void test_valid_builder_opens(void **state) {
    (void)state;
    bytes x;
    build_valid(&x);
    char err[512] = "";
    gguf_file *f;
    assert_int_equal(gguf_open_memory(x.b, x.n, &f, err, sizeof err), 0);
    assert_int_equal(gguf_tensor_count(f), 2);
    gguf_close(f);
}

/* Every proper prefix of a valid file is an error, never a crash. */
static void test_every_truncation_fails(void **state) {
    (void)state;
    bytes x;
    build_valid(&x);
    for (size_t n = 0; n < x.n; n++) {
        char err[512] = "";
        gguf_file *f;
        uint8_t *copy = malloc(n ? n : 1); /* exact-size buffer: ASan catches any over-read */
        memcpy(copy, x.b, n);
        int rc = gguf_open_memory(copy, n, &f, err, sizeof err);
        free(copy);
        if (rc == 0)
            fail_msg("prefix of %zu bytes (of %zu) was accepted", n, x.n);
        assert_true(strlen(err) > 0);
    }
}

static void test_malformed_headers(void **state) {
    (void)state;
    bytes x = {.n = 0};
    put(&x, "GGUX", 4), put_u32(&x, 3), put_u64(&x, 0), put_u64(&x, 0);
    expect_error(&x, "bad magic");
    x.n = 0, put_header(&x, 1, 0, 0);
    expect_error(&x, "version 1");
    x.n = 0, put_header(&x, 0x03000000, 0, 0);
    expect_error(&x, "big-endian");
    x.n = 0, put_header(&x, 3, 0, 1ull << 60);
    expect_error(&x, "metadata count");
    x.n = 0, put_header(&x, 3, 1ull << 62, 0);
    expect_error(&x, "tensor count");
}

static void test_malformed_metadata(void **state) {
    (void)state;
    bytes x = {.n = 0};
    put_header(&x, 3, 0, 1), put_u64(&x, 1ull << 40), put(&x, "abcdefgh", 8);
    expect_error(&x, "string length");
    x.n = 0, put_header(&x, 3, 0, 1), put_str(&x, "k"), put_u32(&x, 99), put_u32(&x, 0);
    expect_error(&x, "key k: unknown value type 99");
    x.n = 0, put_header(&x, 3, 0, 1), put_str(&x, "k"), put_u32(&x, GGUF_TYPE_ARRAY), put_u32(&x, GGUF_TYPE_ARRAY),
    put_u64(&x, 1), put_zeros(&x, 16);
    expect_error(&x, "nested arrays");
    x.n = 0, put_header(&x, 3, 0, 1), put_str(&x, "k"), put_u32(&x, GGUF_TYPE_ARRAY), put_u32(&x, GGUF_TYPE_UINT32),
    put_u64(&x, 1ull << 61), put_zeros(&x, 16);
    expect_error(&x, "key k: array of 2305843009213693952 elements past end");
    x.n = 0, put_header(&x, 3, 0, 1), put_str(&x, "k"), put_u32(&x, GGUF_TYPE_ARRAY), put_u32(&x, GGUF_TYPE_STRING),
    put_u64(&x, 1ull << 40), put_zeros(&x, 16);
    expect_error(&x, "strings past end");
    x.n = 0, put_header(&x, 3, 0, 2), put_kv_u32(&x, "dup", 1), put_kv_u32(&x, "dup", 2);
    expect_error(&x, "key dup: duplicate key");
    x.n = 0, put_header(&x, 3, 0, 1), put_kv_u32(&x, "general.alignment", 48);
    expect_error(&x, "general.alignment: 48 is not a power of two");
    x.n = 0, put_header(&x, 3, 0, 1), put_str(&x, "general.alignment"), put_u32(&x, GGUF_TYPE_UINT64), put_u64(&x, 32);
    expect_error(&x, "general.alignment: type u64");
    x.n = 0, put_header(&x, 3, 0, 1), put_str(&x, ""), put_u32(&x, GGUF_TYPE_UINT32), put_u32(&x, 1), put_zeros(&x, 8);
    expect_error(&x, "empty or contains a NUL");
    x.n = 0, put_header(&x, 3, 0, 1), put_str(&x, "b"), put_u32(&x, GGUF_TYPE_BOOL), put(&x, "\x02", 1),
    put_zeros(&x, 16);
    expect_error(&x, "key b: bool value 2");
}

/* A file with one tensor described by the arguments and 1 KiB of data. */
static void one_tensor(bytes *x, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type, uint64_t off) {
    x->n = 0;
    put_header(x, 3, 1, 0);
    put_tensor(x, name, n_dims, ne, type, off);
    pad_to(x, 32);
    put_zeros(x, 1024);
}

static void test_malformed_tensors(void **state) {
    (void)state;
    bytes x;
    uint64_t ne[5] = {32, 2, 1, 1, 1};
    one_tensor(&x, "t", 5, ne, TENSOR_F32, 0);
    expect_error(&x, "tensor t: 5 dimensions");
    one_tensor(&x, "t", 0, ne, TENSOR_F32, 0);
    expect_error(&x, "tensor t: 0 dimensions");
    uint64_t zero[2] = {32, 0};
    one_tensor(&x, "t", 2, zero, TENSOR_F32, 0);
    expect_error(&x, "tensor t: dimension 1 is 0");
    uint64_t huge[3] = {1ull << 32, 1ull << 32, 4};
    one_tensor(&x, "t", 3, huge, TENSOR_F32, 0);
    expect_error(&x, "overflowing");
    one_tensor(&x, "t", 2, ne, 77, 0);
    expect_error(&x, "tensor t: unknown tensor type 77");
    uint64_t odd[2] = {33, 1};
    one_tensor(&x, "t", 2, odd, TENSOR_Q8_0, 0);
    expect_error(&x, "row length 33 is not a multiple of the Q8_0 block size 32");
    one_tensor(&x, "t", 2, ne, TENSOR_F32, 16);
    expect_error(&x, "offset 16 is not a multiple of the alignment 32");
    one_tensor(&x, "t", 2, ne, TENSOR_F32, 1024);
    expect_error(&x, "tensor t: offset 1024 + 256 bytes past end of file");
    one_tensor(&x, "t", 2, ne, TENSOR_F32, UINT64_MAX - 31);
    expect_error(&x, "past end of file");
    uint64_t big[2] = {1ull << 40, 1};
    one_tensor(&x, "t", 2, big, TENSOR_F32, 0);
    expect_error(&x, "past end of file");

    x.n = 0;
    put_header(&x, 3, 2, 0);
    put_tensor(&x, "a", 2, ne, TENSOR_F32, 0);
    put_tensor(&x, "b", 2, ne, TENSOR_F32, 128);
    pad_to(&x, 32), put_zeros(&x, 1024);
    expect_error(&x, "tensor b: overlaps tensor a");
    x.n = 0;
    put_header(&x, 3, 2, 0);
    put_tensor(&x, "a", 2, ne, TENSOR_F32, 0);
    put_tensor(&x, "a", 2, ne, TENSOR_F32, 256);
    pad_to(&x, 32), put_zeros(&x, 1024);
    expect_error(&x, "tensor a: duplicate tensor name");
}

/* GGUF v2 has v3's little-endian layout: the same writer output with the
 * version field 2 reads back identically. */
static void test_version_2(void **state) {
    (void)state;
    make_tmp_path();
    gguf_writer *w = gguf_writer_new();
    float v[32];
    for (int i = 0; i < 32; i++)
        v[i] = (float)i;
    uint64_t ne[1] = {32};
    assert_int_equal(gguf_writer_set_version(w, 2), 0);
    assert_int_equal(gguf_writer_set_version(w, 1), -1);
    assert_int_equal(gguf_writer_add_str(w, "general.architecture", "qwen3"), 0);
    assert_int_equal(gguf_writer_add_tensor(w, "t", TENSOR_F32, 1, ne, v, sizeof v), 0);
    assert_int_equal(gguf_writer_write(w, tmp_path), 0);
    gguf_writer_free(w);
    gguf_file *f = open_ok(tmp_path);
    assert_int_equal(gguf_version(f), 2);
    gguf_str s;
    assert_int_equal(gguf_get_str(f, "general.architecture", &s, NULL, 0), 0);
    assert_true(s.len == 5 && !memcmp(s.ptr, "qwen3", 5));
    assert_memory_equal(gguf_find_tensor(f, "t")->data, v, sizeof v);
    gguf_close(f);
    unlink(tmp_path);
}

static void test_open_errors_name_the_path(void **state) {
    (void)state;
    char err[512];
    gguf_file *f;
    assert_int_equal(gguf_open("/nonexistent/model.gguf", &f, err, sizeof err), -1);
    assert_non_null(strstr(err, "/nonexistent/model.gguf"));
    assert_int_equal(gguf_open("/dev/null", &f, err, sizeof err), -1);
    assert_int_equal(gguf_open("/tmp", &f, err, sizeof err), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_files),           cmocka_unit_test(test_reference_dequant_agrees),
        cmocka_unit_test(test_writer_round_trip),         cmocka_unit_test(test_valid_builder_opens),
        cmocka_unit_test(test_every_truncation_fails),    cmocka_unit_test(test_malformed_headers),
        cmocka_unit_test(test_malformed_metadata),        cmocka_unit_test(test_malformed_tensors),
        cmocka_unit_test(test_version_2),              cmocka_unit_test(test_open_errors_name_the_path),
    };
    return cmocka_run_group_tests_name("gguf", tests, NULL, NULL);
}
