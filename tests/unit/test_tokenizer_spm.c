/* The SentencePiece-style tokenizer (tokenizer.ggml.model "llama", as Gemma
 * uses) on a small vocabulary written here, with answers worked out by hand
 * from the algorithm llama.cpp implements: merges by score, ties to the
 * leftmost pair, byte fallback, user-defined tokens split out always and
 * control tokens only with parse_special. The real Gemma 3 vocabulary is
 * checked against llama.cpp's ids for 2,737 strings in test_real_gemma3.py
 * (make test-real). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"
#include "tokenizer.h"

enum { T_NORMAL = 1, T_UNKNOWN = 2, T_CONTROL = 3, T_USER = 4, T_BYTE = 6 };
enum { BYTE0 = 8 }; /* <0x00> .. <0xFF> are ids 8 .. 263 */

static const struct {
    const char *text;
    float score;
    int32_t type;
} PIECES[] = {
    {"\xe2\x96\x81", -1.0f, T_NORMAL},       /* 264 ▁ */
    {"a", -2.0f, T_NORMAL},                  /* 265 */
    {"b", -3.0f, T_NORMAL},                  /* 266 */
    {"c", -4.0f, T_NORMAL},                  /* 267 */
    {"h", -5.0f, T_NORMAL},                  /* 268 */
    {"e", -6.0f, T_NORMAL},                  /* 269 */
    {"l", -7.0f, T_NORMAL},                  /* 270 */
    {"o", -8.0f, T_NORMAL},                  /* 271 */
    {"he", -10.0f, T_NORMAL},                /* 272 */
    {"ll", -9.0f, T_NORMAL},                 /* 273: before "he" */
    {"hell", -20.0f, T_NORMAL},              /* 274 */
    {"hello", -30.0f, T_NORMAL},             /* 275 */
    {"\xe2\x96\x81hello", -40.0f, T_NORMAL}, /* 276 ▁hello */
    {"ab", -50.0f, T_NORMAL},                /* 277 */
    {"bc", -50.0f, T_NORMAL},                /* 278: ties with "ab" */
};

static tokenizer *tk;
static char path[64];

static int setup(void **state) {
    (void)state;
    const char *specials[8] = {"<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "\n", "\n\n"};
    int32_t special_types[8] = {T_CONTROL, T_CONTROL, T_CONTROL, T_UNKNOWN, T_CONTROL, T_CONTROL, T_USER, T_USER};
    enum { N = BYTE0 + 256 + sizeof PIECES / sizeof PIECES[0] };
    static char byte_names[256][8];
    const char *tokens[N];
    float scores[N];
    int32_t types[N];
    for (int i = 0; i < BYTE0; i++)
        tokens[i] = specials[i], scores[i] = -1000.0f, types[i] = special_types[i];
    for (int b = 0; b < 256; b++) {
        snprintf(byte_names[b], sizeof byte_names[b], "<0x%02X>", b);
        tokens[BYTE0 + b] = byte_names[b], scores[BYTE0 + b] = 0.0f, types[BYTE0 + b] = T_BYTE;
    }
    for (size_t i = 0; i < sizeof PIECES / sizeof PIECES[0]; i++)
        tokens[BYTE0 + 256 + i] = PIECES[i].text, scores[BYTE0 + 256 + i] = PIECES[i].score,
                             types[BYTE0 + 256 + i] = PIECES[i].type;
    strcpy(path, "/tmp/test_tokenizer_spm.XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0)
        return -1;
    close(fd);
    gguf_writer *w = gguf_writer_new();
    int rc = !w || gguf_writer_add_str(w, "general.architecture", "gemma3") ||
             gguf_writer_add_str(w, "tokenizer.ggml.model", "llama") ||
             gguf_writer_add_str_array(w, "tokenizer.ggml.tokens", tokens, NULL, N) ||
             gguf_writer_add_array(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores, N) ||
             gguf_writer_add_array(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types, N) ||
             gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 2) ||
             gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 1) ||
             gguf_writer_add_u32(w, "tokenizer.ggml.unknown_token_id", 3) ||
             gguf_writer_add_bool(w, "tokenizer.ggml.add_space_prefix", false) || gguf_writer_write(w, path);
    gguf_writer_free(w);
    char err[256];
    if (rc || tokenizer_load_file(path, &tk, err, sizeof err)) {
        fprintf(stderr, "%s\n", rc ? "writing the vocabulary failed" : err);
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    tokenizer_free(tk);
    unlink(path);
    return 0;
}

static void expect(const char *text, bool parse_special, const int32_t *want, size_t n) {
    token_list ids = {0};
    assert_int_equal(tokenizer_encode(tk, text, strlen(text), parse_special, &ids), 0);
    if (ids.n != n)
        fail_msg("'%s': %zu ids, want %zu", text, ids.n, n);
    for (size_t i = 0; i < n; i++)
        if (ids.ids[i] != want[i])
            fail_msg("'%s': id %zu is %d, want %d", text, i, ids.ids[i], want[i]);
    token_list_free(&ids);
}

#define EXPECT(text, special, ...)                                                                                     \
    do {                                                                                                               \
        const int32_t want_[] = {__VA_ARGS__};                                                                         \
        expect(text, special, want_, sizeof want_ / sizeof want_[0]);                                                  \
    } while (0)

static void test_merges_by_score(void **state) {
    (void)state;
    EXPECT("hello", true, 275); /* ll, then he, hell, hello */
    EXPECT(" hello", true, 276);
    EXPECT("hello hello", true, 275, 276);
    EXPECT("abc", true, 277, 267); /* "ab" and "bc" tie: the leftmost merges */
    EXPECT("cab", true, 267, 277);
    EXPECT("  ", true, 264, 264);  /* no "▁▁" token */
    EXPECT("hel", true, 272, 270); /* "el" is no token */
}

static void test_byte_fallback(void **state) {
    (void)state;
    EXPECT("h\xc3\xa9", true, 268, BYTE0 + 0xc3, BYTE0 + 0xa9); /* é is not in the vocabulary */
    EXPECT("\xff", true, BYTE0 + 0xff);                         /* nor is invalid UTF-8 */
    int32_t ids[] = {268, BYTE0 + 0xc3, BYTE0 + 0xa9, 276};
    char *text;
    size_t len;
    assert_int_equal(tokenizer_decode(tk, ids, 4, &text, &len), 0);
    assert_string_equal(text, "h\xc3\xa9 hello");
    free(text);
}

static void test_added_tokens(void **state) {
    (void)state;
    EXPECT("a\n\nb\nc", false, 265, 7, 266, 6, 267); /* user-defined: always, longest first */
    EXPECT("<start_of_turn>a<end_of_turn>", true, 4, 265, 5);
    token_list ids = {0}; /* without parse_special, control tokens are text */
    assert_int_equal(tokenizer_encode(tk, "<start_of_turn>", 15, false, &ids), 0);
    assert_true(ids.n > 1);
    assert_int_equal(ids.ids[0], BYTE0 + '<');
    token_list_free(&ids);
}

static void test_metadata(void **state) {
    (void)state;
    assert_int_equal(tokenizer_bos(tk), 2);
    assert_true(tokenizer_adds_bos(tk)); /* SPM's default when the key is absent */
    assert_true(tokenizer_is_control(tk, 5));
    const char *tmpl = tokenizer_chat_template(tk); /* Gemma's, the file having none */
    assert_non_null(tmpl);
    assert_non_null(strstr(tmpl, "<start_of_turn>"));
    size_t n;
    const uint8_t *b = tokenizer_token_bytes(tk, 276, &n);
    assert_int_equal(n, 6);
    assert_memory_equal(b, " hello", 6);
}

/* Any bytes encode, and the tokens' bytes give them back (U+2581 comes back
 * as a space, as in SentencePiece); run under ASan in `make test`. */
static void test_arbitrary_bytes(void **state) {
    (void)state;
    uint8_t buf[300], want[300];
    uint64_t x = 88172645463325252ull;
    static const char alphabet[] = "abchelo \n<>_\xe2\x96\x81\xc3\xa9";
    for (int round = 0; round < 300; round++) {
        size_t n = (size_t)(round * 7 % 290) + 1, m = 0;
        for (size_t i = 0; i < n; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            buf[i] = round % 2 ? (uint8_t)x : (uint8_t)alphabet[x % (sizeof alphabet - 1)];
        }
        for (size_t i = 0; i < n; i++) {
            bool mark = i + 3 <= n && !memcmp(buf + i, "\xe2\x96\x81", 3);
            want[m++] = mark ? ' ' : buf[i];
            i += mark ? 2 : 0;
        }
        token_list ids = {0};
        assert_int_equal(tokenizer_encode(tk, (const char *)buf, n, round % 3 == 0, &ids), 0);
        uint8_t joined[300];
        size_t k = 0;
        for (size_t i = 0; i < ids.n; i++) {
            size_t len;
            const uint8_t *b = tokenizer_token_bytes(tk, ids.ids[i], &len);
            assert_non_null(b);
            assert_true(k + len <= m);
            memcpy(joined + k, b, len);
            k += len;
        }
        assert_int_equal(k, m);
        assert_memory_equal(joined, want, m);
        token_list_free(&ids);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_merges_by_score), cmocka_unit_test(test_byte_fallback),
        cmocka_unit_test(test_added_tokens),    cmocka_unit_test(test_metadata),
        cmocka_unit_test(test_arbitrary_bytes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
