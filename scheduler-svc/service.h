/* scheduler-svc as a service: workers register with it, gateways submit
 * requests, poll for their token streams and cancel, over one nng REP
 * socket (SchedulerRequest / SchedulerResponse in proto/inferno.proto).
 *
 * Threading: the REP socket has a fixed set of contexts, each a small state
 * machine driven by nng's aio callbacks (receive, handle, reply or park a
 * long poll). Each live worker has its own thread that plans a step with
 * that worker's sched (scheduler.h), sends it, waits for the sampled tokens
 * and completes it. A housekeeping thread answers expired polls, forgets
 * silent clients and joins the threads of dead workers. One mutex guards
 * all scheduling state; nobody holds it across network I/O. */
#ifndef INFERNO_SCHED_SERVICE_H
#define INFERNO_SCHED_SERVICE_H

#include <stddef.h>
#include <stdint.h>

typedef struct sched_service sched_service;

typedef struct {
    int32_t max_step_tokens;   /* token budget of one step (default 512) */
    int32_t max_running;       /* sequences in one step (default 64) */
    int32_t max_waiting;       /* queued requests before "overloaded" (default 256) */
    int32_t step_timeout_ms;   /* a worker slower than this is declared dead (default 120000) */
    int32_t client_timeout_ms; /* a client that stops polling loses its requests (default 30000) */
    int32_t orphan_timeout_ms; /* a request with no live worker fails after this (default 60000) */
    int32_t pipeline;          /* steps out to a worker at once: 2 (default) sends step N+1 while
                                * N runs, so the worker never waits on the scheduler; 1 waits */
} sched_service_config;

void sched_service_defaults(sched_service_config *cfg);

sched_service *sched_service_create(const sched_service_config *cfg);
/* Listens on url and starts serving; 0 or -1 with err. */
int sched_service_start(sched_service *s, const char *url, char *err, size_t errlen);
/* Listens on one more URL (a tcp:// one for workers on other hosts, say)
 * after sched_service_start; 0 or -1 with err. */
int sched_service_listen(sched_service *s, const char *url, char *err, size_t errlen);
/* Stops serving (if started), stops worker threads, frees everything. */
void sched_service_free(sched_service *s);

/* Handles one packed SchedulerRequest without the network (for tests and
 * the fuzzer): polls are answered at once, registrations are refused. The
 * packed SchedulerResponse is malloc'ed; -1 only when out of memory. */
int sched_service_handle(sched_service *s, const uint8_t *req, size_t len, uint8_t **resp, size_t *resp_len);

#endif
