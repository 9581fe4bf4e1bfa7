/* libFuzzer target for the gateway's request parsing: any HTTP body (bad
 * JSON, wrong types, huge numbers, invalid UTF-8) either parses or yields
 * an OpenAI error with a 4xx status, never a crash or a leak. Both
 * endpoints' parsers run on every input. Vocabulary: INFERNO_FUZZ_MODEL. */
#include <stdio.h>
#include <stdlib.h>

#include "gateway_internal.h"

static gateway g;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    const char *path = getenv("INFERNO_FUZZ_MODEL");
    char err[512];
    if (tokenizer_load_file(path ? path : "../shared/reference/tinyA-q8_0.gguf", &g.vocab, err, sizeof err)) {
        fprintf(stderr, "fuzz_gateway_request: %s\n", err);
        exit(1);
    }
    g.cfg.model_name = "tinyA";
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    for (int chat = 0; chat < 2; chat++) {
        gen_request r;
        gw_error e = {0};
        if (gw_parse_request(&g, (const char *)data, size, chat, &r, &e) && (e.status < 400 || e.status > 404))
            abort();
        if (r.n < 1 || r.n > GW_MAX_N || r.n_stops > 4 || r.n_bias > GW_MAX_BIAS)
            abort();
        gw_request_free(&r);
    }
    return 0;
}
