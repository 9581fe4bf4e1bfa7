/* inferno-probe: asks one running service whether it is up, in lines a
 * shell script can read (deploy/inferno's status and start use it).
 *
 *   inferno-probe --scheduler URL   one "scheduler ..." line, then one
 *                                   "worker url=... ..." line per live worker
 *   inferno-probe --tokenizer URL   "tokenizer chat_template=0|1"
 *
 * Exit status 0 when the service answered, 1 when it did not (with a
 * one-line reason on stderr). Each line is space-separated key=value pairs
 * after its first word; URLs never hold spaces. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"
#include "sched_client.h"
#include "tk_client.h"

#define PROG "inferno-probe"

static int probe_scheduler(const char *url) {
    char err[256];
    sched_client *c;
    if (sched_client_open(url, &c, err, sizeof err)) {
        fprintf(stderr, PROG ": %s\n", err);
        return 1;
    }
    Inferno__SchedulerResponse *r = sched_client_stats(c, err, sizeof err);
    if (!r) {
        fprintf(stderr, PROG ": scheduler at %s: %s\n", url, err);
        sched_client_close(c);
        return 1;
    }
    const Inferno__SchedulerStats *s = r->stats;
    printf("scheduler workers=%zu waiting=%d running=%d requests=%llu generated_tokens=%llu failovers=%llu\n",
           s->n_workers, s->waiting, s->running, (unsigned long long)s->requests,
           (unsigned long long)s->generated_tokens, (unsigned long long)s->failovers);
    for (size_t i = 0; i < s->n_workers; i++) {
        const Inferno__WorkerStats *w = s->workers[i];
        printf("worker url=%s draining=%d waiting=%d running=%d blocks_used=%d blocks_total=%d blocks_cached=%d "
               "backend=%s\n",
               w->url, w->draining, w->waiting, w->running, w->blocks_used, w->blocks_total, w->blocks_cached,
               w->backend && *w->backend ? w->backend : "unknown");
    }
    sched_client_stats_free(r);
    sched_client_close(c);
    return 0;
}

static int probe_tokenizer(const char *url) {
    char err[256];
    tk_client *c;
    bool has_template = false;
    if (tk_client_open(url, &c, err, sizeof err)) {
        fprintf(stderr, PROG ": %s\n", err);
        return 1;
    }
    tk_client_set_timeout(c, 3000); /* as long as the scheduler probe waits */
    int rc = tk_client_info(c, &has_template, err, sizeof err);
    if (rc)
        fprintf(stderr, PROG ": tokenizer at %s: %s\n", url, err);
    else
        printf("tokenizer chat_template=%d\n", has_template);
    tk_client_close(c);
    return rc ? 1 : 0;
}

static void usage(FILE *out) {
    fprintf(out, "usage: " PROG " (--scheduler URL | --tokenizer URL)\n"
                 "  prints what the service reports; exit status 1 when it does not answer\n");
}

int main(int argc, char **argv) {
    const char *scheduler = NULL, *tokenizer = NULL;
    const cli_flag flags[] = {{"--scheduler", CLI_STRING, &scheduler}, {"--tokenizer", CLI_STRING, &tokenizer}, {NULL}};
    int parsed = cli_parse(argc, argv, PROG, usage, flags);
    if (parsed != CLI_RUN)
        return parsed;
    if (!scheduler == !tokenizer) {
        usage(stderr);
        return 2;
    }
    return scheduler ? probe_scheduler(scheduler) : probe_tokenizer(tokenizer);
}
