/* libFuzzer target for tokenizer-svc's request handler: the input is a
 * protobuf message off the wire. Every input must get a response that
 * parses, carrying an error when the request was bad. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inferno.pb-c.h"
#include "tokenizer_service.h"

static tokenizer_service_state st;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    const char *path = getenv("INFERNO_FUZZ_MODEL");
    char err[512];
    tokenizer *tk;
    if (tokenizer_load_file(path ? path : "../shared/reference/tinyA-q8_0.gguf", &tk, err, sizeof err)) {
        fprintf(stderr, "fuzz_tokenizer_svc: %s\n", err);
        exit(1);
    }
    const char *src = tokenizer_chat_template(tk);
    st = (tokenizer_service_state){tk, jinja_compile(src, strlen(src), err, sizeof err), "fuzz"};
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *out;
    size_t len;
    if (tokenizer_service_handle(&st, data, size, &out, &len))
        abort();
    Inferno__TokenizerResponse *r = inferno__tokenizer_response__unpack(NULL, len, out);
    if (!r)
        abort();
    inferno__tokenizer_response__free_unpacked(r, NULL);
    free(out);
    return 0;
}
