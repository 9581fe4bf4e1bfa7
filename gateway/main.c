/* inferno-gateway: the OpenAI-compatible HTTP API.
 *
 *   inferno-gateway --model FILE.gguf [--host H] [--port P] [--scheduler URL]
 *                   [--tokenizer URL] [--model-name NAME] [--api-key KEY]
 *                   [--max-body-bytes N] [--request-timeout S] [--io-timeout S]
 *                   [--threads N]
 *
 * INFERNO_API_KEY in the environment sets the key too. Threading: see
 * gateway.h; the main thread waits for SIGINT/SIGTERM. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "gateway.h"

#define PROG "inferno-gateway"

static volatile sig_atomic_t stop_flag;
static void on_signal(int sig) { (void)sig, stop_flag = 1; }

static void usage(FILE *out) {
    fprintf(out, "usage: " PROG " --model FILE.gguf [options]\n"
                 "  --host H              address to bind (default 127.0.0.1)\n"
                 "  --port P              TCP port (default 8080)\n"
                 "  --scheduler URL       scheduler-svc (default ipc:///tmp/inferno-scheduler.ipc)\n"
                 "  --tokenizer URL       tokenizer-svc (default ipc:///tmp/inferno-tokenizer.ipc)\n"
                 "  --model-name NAME     model id in the API (default: the file name without .gguf)\n"
                 "  --api-key KEY         require Authorization: Bearer KEY (or set INFERNO_API_KEY)\n"
                 "  --max-body-bytes N    largest request body (default 4194304)\n"
                 "  --request-timeout S   longest a request may run (default 600)\n"
                 "  --io-timeout S        longest one read or write on a client socket may wait; a client\n"
                 "                        that stalls longer is dropped (default 30)\n"
                 "  --threads N           concurrent HTTP connections (default 128)\n");
}

int main(int argc, char **argv) {
    gateway_config cfg = {.host = "127.0.0.1",
                          .port = 8080,
                          .scheduler_url = "ipc:///tmp/inferno-scheduler.ipc",
                          .tokenizer_url = "ipc:///tmp/inferno-tokenizer.ipc",
                          .max_body_bytes = 4u << 20,
                          .request_timeout_s = 600,
                          .io_timeout_s = 30,
                          .threads = 128,
                          .api_key = getenv("INFERNO_API_KEY")};
    const cli_flag flags[] = {{"--model", CLI_STRING, &cfg.model_path},
                              {"--host", CLI_STRING, &cfg.host},
                              {"--port", CLI_INT, &cfg.port},
                              {"--scheduler", CLI_STRING, &cfg.scheduler_url},
                              {"--tokenizer", CLI_STRING, &cfg.tokenizer_url},
                              {"--model-name", CLI_STRING, &cfg.model_name},
                              {"--api-key", CLI_STRING, &cfg.api_key},
                              {"--max-body-bytes", CLI_SIZE, &cfg.max_body_bytes},
                              {"--request-timeout", CLI_INT, &cfg.request_timeout_s},
                              {"--io-timeout", CLI_INT, &cfg.io_timeout_s},
                              {"--threads", CLI_INT, &cfg.threads},
                              {NULL}};
    int rc = cli_parse(argc, argv, PROG, usage, flags);
    if (rc != CLI_RUN)
        return rc;
    if (!cfg.model_path || cfg.port < 1 || cfg.port > 65535 || cfg.threads < 1 || cfg.request_timeout_s < 1 ||
        cfg.io_timeout_s < 1 || cfg.max_body_bytes < 1024) {
        usage(stderr);
        return 2;
    }
    char name[256];
    if (!cfg.model_name) {
        const char *base = strrchr(cfg.model_path, '/');
        snprintf(name, sizeof name, "%s", base ? base + 1 : cfg.model_path);
        size_t n = strlen(name);
        if (n > 5 && !strcmp(name + n - 5, ".gguf"))
            name[n - 5] = 0;
        cfg.model_name = name;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    char err[512];
    gateway *g;
    if (gateway_start(&cfg, &g, err, sizeof err)) {
        fprintf(stderr, PROG ": %s\n", err);
        return 1;
    }
    fprintf(stderr, PROG ": serving %s on http://%s:%d%s\n", cfg.model_name, cfg.host, cfg.port,
            cfg.api_key && *cfg.api_key ? " (API key required)" : "");
    while (!stop_flag)
        pause();
    gateway_stop(g);
    return 0;
}
