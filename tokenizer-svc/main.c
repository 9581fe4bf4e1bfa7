/* tokenizer-svc: serves a model's tokenizer and chat template over nng.
 *
 *   tokenizer-svc --model FILE.gguf [--listen URL] [--workers N]
 *
 * Threading: the main thread loads the model, starts the service (whose
 * workers run on nng's thread pool, see service.h) and then only waits for
 * SIGINT or SIGTERM to shut down cleanly. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "gguf.h"
#include "tokenizer_service.h"

#define PROG "tokenizer-svc"

static void usage(FILE *out) {
    fprintf(out, "usage: " PROG " --model FILE.gguf [--listen URL] [--workers N]\n"
                 "  --listen   nng URL to serve on (default ipc:///tmp/inferno-tokenizer.ipc)\n"
                 "  --workers  requests handled concurrently (default 8)\n"
                 "  --version  print the version\n");
}

int main(int argc, char **argv) {
    const char *model = NULL, *url = "ipc:///tmp/inferno-tokenizer.ipc";
    int workers = 8;
    const cli_flag flags[] = {
        {"--model", CLI_STRING, &model}, {"--listen", CLI_STRING, &url}, {"--workers", CLI_INT, &workers}, {NULL}};
    int parsed = cli_parse(argc, argv, PROG, usage, flags);
    if (parsed != CLI_RUN)
        return parsed;
    if (!model || workers < 1 || workers > 1024) {
        usage(stderr);
        return 2;
    }
    /* block the signals before nng starts its threads, so only sigwait sees them */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);

    char err[1024];
    gguf_file *f;
    tokenizer *tk = NULL;
    jinja_template *tmpl = NULL;
    if (gguf_open(model, &f, err, sizeof err) || tokenizer_load(f, &tk, err, sizeof err)) {
        fprintf(stderr, PROG ": %s\n", err);
        return 1;
    }
    gguf_close(f);
    const char *src = tokenizer_chat_template(tk);
    if (src && !(tmpl = jinja_compile(src, strlen(src), err, sizeof err)))
        fprintf(stderr, PROG ": warning: the model's chat template does not compile: %s\n", err);
    tokenizer_service_state st = {tk, tmpl, model};
    tokenizer_service *svc;
    if (tokenizer_service_start(&st, url, workers, &svc, err, sizeof err)) {
        fprintf(stderr, PROG ": %s\n", err);
        return 1;
    }
    fprintf(stderr, PROG ": serving %s on %s (vocabulary %u, chat template %s, %d workers)\n", model, url,
            tokenizer_vocab_size(tk), tmpl ? "yes" : "no", workers);
    int sig;
    sigwait(&stop, &sig);
    fprintf(stderr, PROG ": signal %d, shutting down\n", sig);
    tokenizer_service_stop(svc);
    jinja_free(tmpl);
    tokenizer_free(tk);
    return 0;
}
