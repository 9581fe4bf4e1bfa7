/* libFuzzer target for inferno-worker-cpu's request handler: any bytes off
 * the wire get a parseable response (an error when they are not a valid
 * request), and a valid step with bad indices never touches memory outside
 * the KV pool. Model: tinyA (INFERNO_FUZZ_MODEL). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "inferno.pb-c.h"
#include "worker_service.h"

static worker_state *w;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    const char *path = getenv("INFERNO_FUZZ_MODEL");
    char err[512];
    model_desc *m;
    engine *e;
    engine_config cfg = {.n_threads = 1, .block_size = 4, .n_blocks = 8};
    if (model_open(path ? path : "../shared/reference/tinyA-q8_0.gguf", &m, err, sizeof err) ||
        engine_open(m, &cfg, &e, err, sizeof err)) {
        fprintf(stderr, "fuzz_worker_svc: %s\n", err);
        exit(1);
    }
    w = worker_state_create(m, e, 151645, "fuzz");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *out;
    size_t len;
    if (worker_handle(w, data, size, &out, &len))
        abort();
    Inferno__WorkerResponse *r = inferno__worker_response__unpack(NULL, len, out);
    if (!r)
        abort();
    inferno__worker_response__free_unpacked(r, NULL);
    free(out);
    return 0;
}
