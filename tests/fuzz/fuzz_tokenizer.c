/* libFuzzer target for the tokenizer: any bytes must encode, and the ids
 * must give back exactly those bytes (NFC aside), both through decode and
 * through the streaming detokenizer. The vocabulary is tinyA's
 * (INFERNO_FUZZ_MODEL, default ../shared/reference/tinyA-q8_0.gguf). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"
#include "utf8.h"

static tokenizer *tk;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    const char *path = getenv("INFERNO_FUZZ_MODEL");
    char err[512];
    if (tokenizer_load_file(path ? path : "../shared/reference/tinyA-q8_0.gguf", &tk, err, sizeof err)) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", err);
        exit(1);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    token_list ids = {0};
    if (tokenizer_encode(tk, (const char *)data, size, size % 2 == 0, &ids))
        abort();
    /* byte-level: the tokens' bytes are the input's bytes, unless NFC changed them */
    bool nfc_stable = true;
    for (size_t i = 0; i < size; i++)
        nfc_stable = nfc_stable && data[i] < 0xcc;
    size_t total = 0;
    uint8_t *joined = malloc(size + 1);
    for (size_t i = 0; i < ids.n; i++) {
        size_t len;
        const uint8_t *b = tokenizer_token_bytes(tk, ids.ids[i], &len);
        if (!b || (nfc_stable && total + len > size))
            abort();
        if (nfc_stable)
            memcpy(joined + total, b, len);
        total += len;
    }
    if (nfc_stable && (total != size || memcmp(joined, data, size)))
        abort();
    free(joined);
    /* streaming equals whole decode */
    char *whole, *streamed = NULL;
    size_t whole_len, s_len = 0, s_cap = 0;
    if (tokenizer_decode(tk, ids.ids, ids.n, &whole, &whole_len))
        abort();
    detokenizer d;
    detok_init(&d, tk);
    for (size_t i = 0; i < ids.n; i++)
        detok_push(&d, ids.ids[i], &streamed, &s_len, &s_cap);
    detok_flush(&d, &streamed, &s_len, &s_cap);
    if (s_len != whole_len || (s_len && memcmp(streamed, whole, s_len)))
        abort();
    free(whole);
    free(streamed);
    token_list_free(&ids);
    return 0;
}
