/* libFuzzer target for the chat-template engine: the input is a template
 * (chat templates come from GGUF files, so they are untrusted), rendered
 * with a fixed conversation. Errors are fine; crashes, hangs and leaks are
 * not. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>

#include "jinja.h"

static json_t *vars;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    vars = json_loads("{\"messages\": [{\"role\": \"system\", \"content\": \"sys\"}, {\"role\": \"user\", \"content\": "
                      "\"hi <think>x</think>\"}, {\"role\": \"assistant\", \"content\": \"\", \"tool_calls\": "
                      "[{\"function\": {\"name\": \"f\", \"arguments\": {\"a\": [1, 2.5, null]}}}]}], \"tools\": "
                      "[{\"type\": \"function\", \"function\": {\"name\": \"f\"}}], \"add_generation_prompt\": true, "
                      "\"bos_token\": \"<s>\", \"n\": 3}",
                      0, NULL);
    return vars ? 0 : 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[512];
    jinja_template *t = jinja_compile((const char *)data, size, err, sizeof err);
    if (!t)
        return 0;
    char *out;
    size_t len;
    jinja_options opt = {.now = "2026-11-22 12:00:00"};
    if (!jinja_render(t, vars, &opt, &out, &len, err, sizeof err))
        free(out);
    jinja_free(t);
    return 0;
}
