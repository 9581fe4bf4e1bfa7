/* inferno-worker-cpu / inferno-worker-cuda: an engine as a service for the
 * scheduler. One program: installed as inferno-worker-cuda it defaults to
 * --backend cuda.
 *
 *   inferno-worker-cpu --model FILE.gguf [--listen URL] [--threads N]
 *                      [--block-size N] [--kv-tokens N] [--backend cpu|cuda] [--device N]
 *                      [--scheduler URL [--advertise URL] [--drain-timeout S]]
 *
 * Threading: the main thread serves (see worker_service.h); the CPU
 * engine's pool adds threads-1 workers; with --scheduler, a registrar thread
 * announces the worker every second (registrar.h). SIGINT ends the loop
 * at once; SIGTERM first drains (the scheduler places nothing new here and
 * the worker exits once its requests are done), a second SIGTERM ends it. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "registrar.h"
#include "worker_service.h"
#include "tokenizer.h"

static const char *PROG = "inferno-worker-cpu";

static volatile sig_atomic_t stop_flag, drain_flag, may_drain;
static void on_signal(int sig) {
    if (sig == SIGTERM && may_drain && !drain_flag)
        drain_flag = 1;
    else
        stop_flag = 1;
}

typedef struct {
    const char *scheduler_url, *worker_url;
    registrar *reg;
    registrar_info info;
} announce;

/* Called once the worker listens: only then may the scheduler dial it. */
static void start_registrar(void *arg) {
    announce *a = arg;
    char err[512];
    if (registrar_start(a->scheduler_url, a->worker_url, &a->info, &a->reg, err, sizeof err))
        fprintf(stderr, "%s: %s\n", PROG, err);
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: %s --model FILE.gguf [--listen URL] [--threads N] [--block-size N] [--kv-tokens N]\n"
            "                          [--backend cpu|cuda] [--device N]\n"
            "                          [--scheduler URL [--advertise URL] [--drain-timeout S]]\n"
            "  --listen      nng URL (default ipc:///tmp/inferno-worker-0.ipc)\n"
            "  --scheduler   register with the scheduler at this URL (and again whenever it restarts)\n"
            "  --advertise   the URL the scheduler dials for steps (default: --listen's)\n"
            "  --drain-timeout  on SIGTERM, seconds to finish its requests before exiting (default 60)\n"
            "  --backend     engine: cpu (default for inferno-worker-cpu) or cuda\n"
            "  --device      CUDA device ordinal (default 0)\n"
            "  --threads     CPU threads for the engine (default 2)\n"
            "  --block-size  positions per KV block (default 16)\n"
            "  --kv-tokens   KV cache capacity in positions (default 16384)\n"
            "  --kv-type     KV cache precision: f32, f16 (half the memory) or, on cuda, fp8 (a quarter)\n",
            PROG);
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *url = "ipc:///tmp/inferno-worker-0.ipc", *scheduler_url = NULL, *advertise = NULL;
    int threads = 2, block_size = 16, kv_tokens = 16384, drain_timeout_s = 60, device = 0;
    const char *slash = strrchr(argv[0], '/'), *base = slash ? slash + 1 : argv[0];
    const char *backend = strstr(base, "cuda") ? "cuda" : "cpu", *kv_type = NULL;
    PROG = !strcmp(backend, "cuda") ? "inferno-worker-cuda" : PROG;
    const cli_flag flags[] = {{"--model", CLI_STRING, &model_path},    {"--listen", CLI_STRING, &url},
                              {"--threads", CLI_INT, &threads},        {"--block-size", CLI_INT, &block_size},
                              {"--kv-tokens", CLI_INT, &kv_tokens},    {"--scheduler", CLI_STRING, &scheduler_url},
                              {"--advertise", CLI_STRING, &advertise}, {"--drain-timeout", CLI_INT, &drain_timeout_s},
                              {"--backend", CLI_STRING, &backend},     {"--device", CLI_INT, &device},
                              {"--kv-type", CLI_STRING, &kv_type},     {NULL}};
    int parsed = cli_parse(argc, argv, PROG, usage, flags);
    if (parsed != CLI_RUN)
        return parsed;
    if (!model_path || threads < 1 || block_size < 1 || kv_tokens < block_size || drain_timeout_s < 0 ||
        drain_timeout_s > 86400) {
        usage(stderr);
        return 2;
    }
    char err[1024];
    model_desc *m;
    if (model_open(model_path, &m, err, sizeof err)) {
        fprintf(stderr, "%s: %s\n", PROG, err);
        return 1;
    }
    uint32_t eos;
    int32_t eos_id = gguf_get_u32(m->file, "tokenizer.ggml.eos_token_id", &eos, NULL, 0) ? -1 : (int32_t)eos;
    engine_config cfg = {.backend = backend,
                         .n_threads = threads,
                         .block_size = block_size,
                         .kv_tokens = kv_tokens,
                         .device = device,
                         .kv_type = kv_type};
    engine *e;
    if (engine_open(m, &cfg, &e, err, sizeof err)) {
        fprintf(stderr, "%s: %s\n", PROG, err);
        return 1;
    }
    worker_state *w = worker_state_create(m, e, eos_id, model_path);
    may_drain = scheduler_url != NULL;
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    fprintf(stderr, "%s: serving %s on %s (%s, %d KV blocks of %d)\n", PROG, model_path, url, engine_describe(e),
            engine_n_blocks(e), block_size);
    announce a = {scheduler_url, advertise ? advertise : url, NULL};
    a.info = (registrar_info){.model = model_path,
                              .backend = engine_backend(e),
                              .vocab_size = m->vocab,
                              .max_context = m->context,
                              .block_size = block_size,
                              .n_blocks = engine_n_blocks(e),
                              .eos_id = eos_id,
                              .drain = &drain_flag,
                              .drained = &stop_flag,
                              .drain_timeout_ms = drain_timeout_s * 1000};
    int rc = worker_serve(w, url, scheduler_url ? start_registrar : NULL, &a, &stop_flag, err, sizeof err);
    registrar_stop(a.reg);
    if (rc)
        fprintf(stderr, "%s: %s\n", PROG, err);
    worker_state_free(w);
    engine_close(e);
    model_close(m);
    return rc ? 1 : 0;
}
