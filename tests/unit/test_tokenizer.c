/* Tokenizer library: exact ids for every reference string, decode, the
 * streaming detokenizer, and Python-compatible replacement of bad UTF-8. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"
#include "utf8.h"
#include "test_util.h"

static tokenizer *tk;
static json_t *ref;

static int setup(void **state) {
    (void)state;
    char err[512];
    if (tokenizer_load_file(ref_path("tinyA-q8_0.gguf"), &tk, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    ref = json_load_file(ref_path("tokenizer_ref.json"), 0, NULL);
    return ref ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    tokenizer_free(tk);
    json_decref(ref);
    return 0;
}

static void test_metadata(void **state) {
    (void)state;
    assert_int_equal(tokenizer_vocab_size(tk), 151936);
    assert_int_equal(tokenizer_eos(tk), 151645);
    assert_int_equal(tokenizer_bos(tk), 151643);
    assert_int_equal(tokenizer_find(tk, "<|im_start|>", 12), 151644);
    assert_true(tokenizer_is_control(tk, 151645));
    assert_false(tokenizer_is_control(tk, 151667)); /* <think> is user-defined */
    assert_non_null(tokenizer_chat_template(tk));
}

static void test_reference_encode_decode(void **state) {
    (void)state;
    size_t i;
    json_t *row;
    json_array_foreach(ref, i, row) {
        json_t *text = json_object_get(row, "text"), *want = json_object_get(row, "ids");
        token_list ids = {0};
        assert_int_equal(tokenizer_encode(tk, json_string_value(text), json_string_length(text), true, &ids), 0);
        if (ids.n != json_array_size(want))
            fail_msg("string %zu: %zu ids, want %zu", i, ids.n, json_array_size(want));
        for (size_t k = 0; k < ids.n; k++)
            if (ids.ids[k] != json_integer_value(json_array_get(want, k)))
                fail_msg("string %zu: id %zu is %d, want %lld", i, k, ids.ids[k],
                         (long long)json_integer_value(json_array_get(want, k)));
        char *out;
        size_t len;
        assert_int_equal(tokenizer_decode(tk, ids.ids, ids.n, &out, &len), 0);
        json_t *decoded = json_object_get(row, "decoded");
        if (len != json_string_length(decoded) || memcmp(out, json_string_value(decoded), len))
            fail_msg("string %zu: decode differs", i);
        free(out);
        token_list_free(&ids);
    }
}

/* Feeding ids one by one gives pieces that are each valid UTF-8 and that
 * concatenate to the full decode. */
static void test_streaming_detokenizer(void **state) {
    (void)state;
    size_t i;
    json_t *row;
    json_array_foreach(ref, i, row) {
        json_t *ids = json_object_get(row, "ids");
        detokenizer d;
        detok_init(&d, tk);
        char *all = NULL;
        size_t all_len = 0, all_cap = 0;
        for (size_t k = 0; k <= json_array_size(ids); k++) {
            char *piece = NULL;
            size_t len = 0, cap = 0;
            if (k < json_array_size(ids))
                assert_int_equal(
                    detok_push(&d, (int32_t)json_integer_value(json_array_get(ids, k)), &piece, &len, &cap), 0);
            else
                assert_int_equal(detok_flush(&d, &piece, &len, &cap), 0);
            for (size_t o = 0; o < len;) { /* each piece is whole characters */
                size_t n = utf8_seq_len((const uint8_t *)piece + o, len - o);
                assert_true(n > 0);
                o += n;
            }
            if (len)
                utf8_append_lossy(&all, &all_len, &all_cap, (const uint8_t *)piece, len);
            free(piece);
        }
        json_t *decoded = json_object_get(row, "decoded");
        if (all_len != json_string_length(decoded) || (all_len && memcmp(all, json_string_value(decoded), all_len)))
            fail_msg("string %zu: streamed text differs from decode", i);
        free(all);
    }
    /* a bad id is an error, not a crash */
    detokenizer d;
    detok_init(&d, tk);
    char *p = NULL;
    size_t len = 0, cap = 0;
    assert_int_equal(detok_push(&d, -1, &p, &len, &cap), -1);
    assert_int_equal(detok_push(&d, 151936, &p, &len, &cap), -1);
    free(p);
}

/* Expected outputs are Python's bytes.decode("utf-8", "replace"). */
static void test_lossy_utf8(void **state) {
    (void)state;
    struct {
        const char *in;
        size_t n;
        const char *out;
    } cases[] = {
        {"\xe2\x82"
         "A",
         3,
         "\xef\xbf\xbd"
         "A"},
        {"\xf0\x80", 2, "\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xed\xa0\x80", 3, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xe2\x82\xac", 3, "\xe2\x82\xac"},
        {"\xf0\x9f\x98", 3, "\xef\xbf\xbd"},
        {"\xc0\xaf", 2, "\xef\xbf\xbd\xef\xbf\xbd"},
        {"a\xffz", 3, "a\xef\xbf\xbdz"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *out = NULL;
        size_t len = 0, cap = 0;
        assert_int_equal(utf8_append_lossy(&out, &len, &cap, (const uint8_t *)cases[i].in, cases[i].n), 0);
        assert_string_equal(out, cases[i].out);
        free(out);
    }
    assert_int_equal(utf8_incomplete_tail((const uint8_t *)"a\xe2\x82", 3), 2);
    assert_int_equal(utf8_incomplete_tail((const uint8_t *)"a\xe2\x82\xac", 4), 0);
    assert_int_equal(utf8_incomplete_tail((const uint8_t *)"\xf0\x9f", 2), 2);
    assert_int_equal(utf8_incomplete_tail((const uint8_t *)"\xf0\x80", 2), 0); /* can never complete */
}

/* Any bytes encode; their ids decode to the same bytes (as lossy text). */
static void test_arbitrary_bytes(void **state) {
    (void)state;
    uint8_t buf[512];
    uint64_t x = 88172645463325252ull;
    for (int round = 0; round < 200; round++) {
        size_t n = (size_t)(round * 7 % 500) + 1;
        for (size_t i = 0; i < n; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            buf[i] = (uint8_t)(round % 2 ? x : (x % 96) + 32); /* alternate raw bytes and ASCII */
        }
        token_list ids = {0};
        assert_int_equal(tokenizer_encode(tk, (const char *)buf, n, round % 3 == 0, &ids), 0);
        uint8_t *joined = malloc(n * 2 + 16);
        size_t m = 0;
        for (size_t k = 0; k < ids.n; k++) {
            size_t len;
            const uint8_t *b = tokenizer_token_bytes(tk, ids.ids[k], &len);
            assert_non_null(b);
            memcpy(joined + m, b, len);
            m += len;
        }
        assert_int_equal(m, n);
        assert_memory_equal(joined, buf, n);
        free(joined);
        token_list_free(&ids);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metadata),
        cmocka_unit_test(test_reference_encode_decode),
        cmocka_unit_test(test_streaming_detokenizer),
        cmocka_unit_test(test_lossy_utf8),
        cmocka_unit_test(test_arbitrary_bytes),
    };
    return cmocka_run_group_tests_name("tokenizer", tests, setup, teardown);
}
