/* scheduler-svc: continuous batching over the registered workers.
 *
 *   scheduler-svc [--listen URL] [--also-listen URL] [--max-step-tokens N]
 *                 [--max-running N] [--max-waiting N] [--step-timeout-ms N]
 *
 * Threading: see service.h; the main thread only waits for SIGINT/SIGTERM. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "service.h"

#define PROG "scheduler-svc"

static volatile sig_atomic_t stop_flag;
static void on_signal(int sig) { (void)sig, stop_flag = 1; }

static void usage(FILE *out) {
    fprintf(out, "usage: " PROG " [--listen URL] [--also-listen URL] [--max-step-tokens N] [--max-running N]\n"
                 "                     [--max-waiting N] [--step-timeout-ms N]\n"
                 "  --listen           nng URL for gateways and workers (default ipc:///tmp/inferno-scheduler.ipc)\n"
                 "  --also-listen      a second URL, e.g. tcp://0.0.0.0:7000 for workers on other hosts\n"
                 "  --max-step-tokens  tokens in one batched step (default 512)\n"
                 "  --max-running      sequences in one step (default 64)\n"
                 "  --max-waiting      queued requests before answering overloaded (default 256)\n"
                 "  --step-timeout-ms  a worker slower than this is declared dead (default 120000)\n"
                 "  --pipeline N       steps out to a worker at once: 2 sends the next while one runs\n"
                 "                     (default), 1 waits for each answer\n");
}

int main(int argc, char **argv) {
    const char *url = "ipc:///tmp/inferno-scheduler.ipc", *also = NULL;
    sched_service_config cfg;
    sched_service_defaults(&cfg);
    const cli_flag flags[] = {{"--listen", CLI_STRING, &url},
                              {"--also-listen", CLI_STRING, &also},
                              {"--max-step-tokens", CLI_INT, &cfg.max_step_tokens},
                              {"--max-running", CLI_INT, &cfg.max_running},
                              {"--max-waiting", CLI_INT, &cfg.max_waiting},
                              {"--step-timeout-ms", CLI_INT, &cfg.step_timeout_ms},
                              {"--pipeline", CLI_INT, &cfg.pipeline},
                              {NULL}};
    int rc = cli_parse(argc, argv, PROG, usage, flags);
    if (rc != CLI_RUN)
        return rc;
    if (cfg.max_step_tokens < 1 || cfg.max_running < 1 || cfg.max_waiting < 1 || cfg.step_timeout_ms < 1 ||
        cfg.pipeline < 1 || cfg.pipeline > 2) {
        usage(stderr);
        return 2;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    char err[512];
    sched_service *s = sched_service_create(&cfg);
    if (!s || sched_service_start(s, url, err, sizeof err) ||
        (also && sched_service_listen(s, also, err, sizeof err))) {
        fprintf(stderr, PROG ": %s\n", s ? err : "out of memory");
        sched_service_free(s);
        return 1;
    }
    fprintf(stderr, PROG ": listening on %s%s%s\n", url, also ? " and " : "", also ? also : "");
    while (!stop_flag)
        pause();
    sched_service_free(s);
    return 0;
}
