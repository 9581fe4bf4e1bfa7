/* A client of scheduler-svc, for the gateway and tools: submit a request,
 * read its token stream, cancel it.
 *
 * Threading: thread-safe. One background thread long-polls the scheduler
 * for this client's events and hands each to its stream; any number of
 * threads may submit and read their own streams at once. If the scheduler
 * restarts or stops answering, every open stream ends with an error event
 * rather than waiting forever. */
#ifndef INFERNO_SCHED_CLIENT_H
#define INFERNO_SCHED_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "inferno.pb-c.h"

typedef struct sched_client sched_client;
typedef struct sched_stream sched_stream;

typedef struct {
    float temperature; /* 0: greedy */
    float top_p, min_p, repetition_penalty, presence_penalty, frequency_penalty;
    int32_t top_k, logprobs;
    uint64_t seed;
    const int32_t *bias_ids;
    const float *bias_values;
    int32_t n_bias;
} sched_sampling;

typedef struct {
    const int32_t *prompt;
    int32_t n_prompt;
    int32_t max_tokens;
    const int32_t *stop_ids; /* besides the model's EOS, at most 8 */
    int32_t n_stop_ids;
    sched_sampling sampling;
} sched_submit_args;

enum sched_client_finish {
    SCHED_CLIENT_NOT_FINISHED,
    SCHED_CLIENT_STOP,
    SCHED_CLIENT_LENGTH,
    SCHED_CLIENT_CANCELLED,
    SCHED_CLIENT_ERROR
};

#define SCHED_CLIENT_MAX_TOP 20

typedef struct {
    int32_t token; /* -1: none (a finish-only event) */
    float logprob;
    int32_t n_top;
    int32_t top_ids[SCHED_CLIENT_MAX_TOP];
    float top_logprobs[SCHED_CLIENT_MAX_TOP];
    enum sched_client_finish finish;
    char error[256];
    int32_t prompt_tokens, cached_tokens, completion_tokens; /* with a finish */
} sched_client_event;

enum { SCHED_CLIENT_OK = 0, SCHED_CLIENT_INVALID = -1, SCHED_CLIENT_OVERLOADED = -2, SCHED_CLIENT_UNAVAILABLE = -3 };

int sched_client_open(const char *url, sched_client **out, char *err, size_t errlen);
/* Frees every stream still open. */
void sched_client_close(sched_client *c);

/* Submits a request; returns SCHED_CLIENT_OK with a stream, or one of the
 * error codes with a message (INVALID: the request cannot run, such as a
 * prompt longer than the context; OVERLOADED: the queue is full;
 * UNAVAILABLE: the scheduler did not answer). */
int sched_client_submit(sched_client *c, const sched_submit_args *a, sched_stream **out, char *err, size_t errlen);

/* The stream's next event: 1, or 0 when none came within timeout_ms. The
 * last event of a stream has finish set. */
int sched_client_next(sched_stream *st, sched_client_event *ev, int timeout_ms);

/* Asks the scheduler to stop the request (its KV blocks are freed at once);
 * a CANCELLED finish event follows. */
void sched_client_cancel(sched_stream *st);

/* Frees a stream, cancelling its request if it has not finished. */
void sched_stream_free(sched_stream *st);

/* The scheduler's statistics; free with sched_client_stats_free. NULL (and
 * err) when it does not answer. */
Inferno__SchedulerResponse *sched_client_stats(sched_client *c, char *err, size_t errlen);
void sched_client_stats_free(Inferno__SchedulerResponse *r);

#endif
