/* inferno-probe: asks one running service whether it is up, in lines a
 * shell script can read (deploy/inferno's status and start use it).
 *
 *   inferno-probe --scheduler URL   one "scheduler ..." line, then one
 *                                   "worker url=... ..." line per live worker
 *   inferno-probe --tokenizer URL   "tokenizer chat_template=0|1"
 *   inferno-probe --send-raw URL    sends stdin, as it is, as one request to
 *                                   any service's socket and prints
 *                                   "reply bytes=N" (for the reliability
 *                                   tests: malformed protobuf on the wire)
 *
 * Exit status 0 when the service answered, 1 when it did not (with a
 * one-line reason on stderr). Each line is space-separated key=value pairs
 * after its first word; URLs never hold spaces. */
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
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

static int send_raw(const char *url) {
    enum { max_bytes = 1 << 20 };
    char *buf = malloc(max_bytes);
    size_t n = buf ? fread(buf, 1, max_bytes, stdin) : 0;
    nng_socket s;
    int rv = buf ? nng_req0_open(&s) : NNG_ENOMEM;
    if (rv) {
        fprintf(stderr, PROG ": %s\n", nng_strerror(rv));
        free(buf);
        return 1;
    }
    nng_socket_set_ms(s, NNG_OPT_SENDTIMEO, 3000);
    nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 3000);
    void *reply = NULL;
    size_t reply_len = 0;
    if ((rv = nng_dial(s, url, NULL, 0)) || (rv = nng_send(s, buf, n, 0)) ||
        (rv = nng_recv(s, &reply, &reply_len, NNG_FLAG_ALLOC)))
        fprintf(stderr, PROG ": %s: %s\n", url, nng_strerror(rv));
    else
        printf("reply bytes=%zu\n", reply_len);
    nng_free(reply, reply_len);
    nng_close(s);
    free(buf);
    return rv ? 1 : 0;
}

static void usage(FILE *out) {
    fprintf(out, "usage: " PROG " (--scheduler URL | --tokenizer URL | --send-raw URL)\n"
                 "  prints what the service reports; exit status 1 when it does not answer\n");
}

int main(int argc, char **argv) {
    const char *scheduler = NULL, *tokenizer = NULL, *raw = NULL;
    const cli_flag flags[] = {{"--scheduler", CLI_STRING, &scheduler},
                              {"--tokenizer", CLI_STRING, &tokenizer},
                              {"--send-raw", CLI_STRING, &raw},
                              {NULL}};
    int parsed = cli_parse(argc, argv, PROG, usage, flags);
    if (parsed != CLI_RUN)
        return parsed;
    if (!!scheduler + !!tokenizer + !!raw != 1) {
        usage(stderr);
        return 2;
    }
    if (raw)
        return send_raw(raw);
    return scheduler ? probe_scheduler(scheduler) : probe_tokenizer(tokenizer);
}
