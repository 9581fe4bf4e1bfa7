/* Scheduler client (see sched_client.h). */
#include "clock.h"
#include "sched_client.h"

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "protocol.h"
#include "rpc.h"

#define CALL_TIMEOUT_MS     10000
#define POLL_WAIT_MS        1000
#define UNAVAILABLE_AFTER_S 10.0

struct sched_stream {
    sched_client *client;
    uint64_t request_id;
    uint64_t incarnation; /* of the scheduler that accepted it; 0 until then */
    sched_client_event *events;
    int32_t head, n_events, cap_events;
    bool finished; /* its finish event has arrived (or been made up) */
    pthread_cond_t cv;
    sched_stream *next;
};

struct sched_client {
    nng_socket sock;
    uint64_t client_id;
    pthread_mutex_t mu;
    sched_stream *streams;
    uint64_t next_request_id, ack;
    bool stop;
    pthread_t poller;
    nng_aio *poll_aio; /* the poller's: cancelled to end a poll at close */
};

/* One request/answer on a fresh context; NULL and err on failure. */
static Inferno__SchedulerResponse *call(sched_client *c, nng_aio *aio, Inferno__SchedulerRequest *q, int timeout_ms,
                                        char *err, size_t errlen) {
    q->version = INFERNO_PROTOCOL_VERSION;
    Inferno__SchedulerResponse *r = (Inferno__SchedulerResponse *)rpc_call(
        c->sock, aio, &q->base, &inferno__scheduler_response__descriptor, timeout_ms, "scheduler", err, errlen);
    if (!r)
        return NULL;
    if (r->version != INFERNO_PROTOCOL_VERSION) {
        snprintf(err, errlen, "scheduler: speaks protocol version %u, not %d", r->version, INFERNO_PROTOCOL_VERSION);
        inferno__scheduler_response__free_unpacked(r, NULL);
        return NULL;
    }
    return r;
}

/* Appends an event to a stream (mu held). */
static void push(sched_stream *st, const sched_client_event *ev) {
    if (st->finished)
        return;
    if (st->head + st->n_events == st->cap_events) {
        if (st->head > 0) {
            memmove(st->events, st->events + st->head, (size_t)st->n_events * sizeof *st->events);
            st->head = 0;
        } else {
            int32_t cap = st->cap_events ? 2 * st->cap_events : 16;
            sched_client_event *v = realloc(st->events, (size_t)cap * sizeof *v);
            if (!v)
                return;
            st->events = v, st->cap_events = cap;
        }
    }
    st->events[st->head + st->n_events++] = *ev;
    if (ev->finish != SCHED_CLIENT_NOT_FINISHED)
        st->finished = true;
    pthread_cond_signal(&st->cv);
}

static void fail_stream(sched_stream *st, const char *why) {
    sched_client_event ev = {.token = -1, .finish = SCHED_CLIENT_ERROR};
    snprintf(ev.error, sizeof ev.error, "%s", why);
    push(st, &ev);
}

static void deliver(sched_client *c, const Inferno__SchedEvent *e) {
    sched_stream *st = c->streams;
    while (st && st->request_id != e->request_id)
        st = st->next;
    if (!st)
        return; /* its stream is gone */
    sched_client_event ev = {.token = e->token, .logprob = e->logprob};
    size_t n_top = e->n_top_ids < e->n_top_logprobs ? e->n_top_ids : e->n_top_logprobs;
    ev.n_top = (int32_t)(n_top < SCHED_CLIENT_MAX_TOP ? n_top : SCHED_CLIENT_MAX_TOP);
    if (ev.n_top > 0) {
        memcpy(ev.top_ids, e->top_ids, (size_t)ev.n_top * sizeof(int32_t));
        memcpy(ev.top_logprobs, e->top_logprobs, (size_t)ev.n_top * sizeof(float));
    }
    switch (e->finish) {
    case INFERNO__FINISH_REASON__FINISH_STOP: ev.finish = SCHED_CLIENT_STOP; break;
    case INFERNO__FINISH_REASON__FINISH_LENGTH: ev.finish = SCHED_CLIENT_LENGTH; break;
    case INFERNO__FINISH_REASON__FINISH_CANCELLED: ev.finish = SCHED_CLIENT_CANCELLED; break;
    case INFERNO__FINISH_REASON__FINISH_ERROR: ev.finish = SCHED_CLIENT_ERROR; break;
    default: ev.finish = SCHED_CLIENT_NOT_FINISHED;
    }
    if (e->error)
        snprintf(ev.error, sizeof ev.error, "%s", e->error);
    ev.prompt_tokens = e->prompt_tokens, ev.cached_tokens = e->cached_tokens;
    ev.completion_tokens = e->completion_tokens;
    push(st, &ev);
}

static void *poller_main(void *arg) {
    sched_client *c = arg;
    double failing_since = 0;
    char err[256];
    pthread_mutex_lock(&c->mu);
    while (!c->stop) {
        Inferno__PollRequest poll = INFERNO__POLL_REQUEST__INIT;
        poll.client_id = c->client_id, poll.ack = c->ack, poll.wait_ms = POLL_WAIT_MS;
        Inferno__SchedulerRequest q = INFERNO__SCHEDULER_REQUEST__INIT;
        q.body_case = INFERNO__SCHEDULER_REQUEST__BODY_POLL, q.poll = &poll;
        pthread_mutex_unlock(&c->mu);
        Inferno__SchedulerResponse *r = call(c, c->poll_aio, &q, POLL_WAIT_MS + 4000, err, sizeof err);
        pthread_mutex_lock(&c->mu);
        if (r && r->body_case == INFERNO__SCHEDULER_RESPONSE__BODY_EVENTS) {
            failing_since = 0;
            const Inferno__Events *ev = r->events;
            for (size_t i = 0; i < ev->n_events; i++) {
                if (ev->events[i]->seq <= c->ack)
                    continue; /* seen already (an answer sent twice) */
                deliver(c, ev->events[i]);
                c->ack = ev->events[i]->seq;
            }
            /* a scheduler that restarted knows nothing of our requests */
            for (sched_stream *st = c->streams; st; st = st->next)
                if (st->incarnation && st->incarnation != ev->incarnation)
                    fail_stream(st, "the scheduler restarted; the request was lost");
        } else {
            if (failing_since == 0)
                failing_since = clock_now();
            if (clock_now() - failing_since > UNAVAILABLE_AFTER_S)
                for (sched_stream *st = c->streams; st; st = st->next)
                    if (st->incarnation)
                        fail_stream(st, r ? "scheduler: unexpected answer to a poll" : err);
        }
        if (r)
            inferno__scheduler_response__free_unpacked(r, NULL);
        if (failing_since != 0 && !c->stop) {
            pthread_mutex_unlock(&c->mu);
            usleep(100000);
            pthread_mutex_lock(&c->mu);
        }
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

int sched_client_open(const char *url, sched_client **out, char *err, size_t errlen) {
    sched_client *c = calloc(1, sizeof *c);
    int rv = 0;
    if (!c || (rv = nng_req0_open(&c->sock))) {
        snprintf(err, errlen, "scheduler client: %s", rv ? nng_strerror(rv) : "out of memory");
        free(c);
        return -1;
    }
    nng_socket_set_size(c->sock, NNG_OPT_RECVMAXSZ, INFERNO_MAX_MESSAGE_BYTES);
    if ((rv = nng_dial(c->sock, url, NULL, NNG_FLAG_NONBLOCK))) {
        snprintf(err, errlen, "scheduler client: dial %s: %s", url, nng_strerror(rv));
        nng_close(c->sock);
        free(c);
        return -1;
    }
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(&c->client_id, sizeof c->client_id, 1, f) != 1)
        c->client_id = 0;
    if (f)
        fclose(f);
    c->client_id ^= clock_start_id();
    c->next_request_id = 1;
    if ((rv = nng_aio_alloc(&c->poll_aio, NULL, NULL))) {
        snprintf(err, errlen, "scheduler client: %s", nng_strerror(rv));
        nng_close(c->sock);
        free(c);
        return -1;
    }
    pthread_mutex_init(&c->mu, NULL);
    pthread_create(&c->poller, NULL, poller_main, c);
    *out = c;
    return 0;
}

static void unlink_stream(sched_client *c, sched_stream *st) {
    for (sched_stream **p = &c->streams; *p; p = &(*p)->next)
        if (*p == st) {
            *p = st->next;
            return;
        }
}

static void stream_destroy(sched_stream *st) {
    pthread_cond_destroy(&st->cv);
    free(st->events);
    free(st);
}

void sched_client_close(sched_client *c) {
    if (!c)
        return;
    pthread_mutex_lock(&c->mu);
    c->stop = true;
    pthread_mutex_unlock(&c->mu);
    /* end the poll in flight while the socket is open, so its context
     * closes cleanly (closing the socket under it leaks nng's copy) */
    nng_aio_cancel(c->poll_aio);
    pthread_join(c->poller, NULL);
    nng_close(c->sock);
    nng_aio_free(c->poll_aio);
    while (c->streams) {
        sched_stream *st = c->streams;
        c->streams = st->next;
        stream_destroy(st);
    }
    pthread_mutex_destroy(&c->mu);
    free(c);
}

int sched_client_submit(sched_client *c, const sched_submit_args *a, sched_stream **out, char *err, size_t errlen) {
    sched_stream *st = calloc(1, sizeof *st);
    if (!st) {
        snprintf(err, errlen, "out of memory");
        return SCHED_CLIENT_OVERLOADED;
    }
    pthread_cond_init(&st->cv, NULL);
    st->client = c;
    /* the stream exists before the scheduler hears of it: its first tokens
     * may arrive before the answer to the submit */
    pthread_mutex_lock(&c->mu);
    st->request_id = c->next_request_id++;
    st->next = c->streams, c->streams = st;
    pthread_mutex_unlock(&c->mu);

    Inferno__SamplingParams sp = INFERNO__SAMPLING_PARAMS__INIT;
    const sched_sampling *s = &a->sampling;
    sp.temperature = s->temperature, sp.top_k = s->top_k, sp.top_p = s->top_p, sp.min_p = s->min_p;
    sp.repetition_penalty = s->repetition_penalty, sp.presence_penalty = s->presence_penalty;
    sp.frequency_penalty = s->frequency_penalty, sp.seed = s->seed, sp.logprobs = s->logprobs;
    sp.n_bias_ids = sp.n_bias_values = (size_t)(s->n_bias > 0 ? s->n_bias : 0);
    sp.bias_ids = (int32_t *)s->bias_ids, sp.bias_values = (float *)s->bias_values;
    Inferno__SubmitRequest sub = INFERNO__SUBMIT_REQUEST__INIT;
    sub.client_id = c->client_id, sub.request_id = st->request_id;
    sub.prompt = (int32_t *)a->prompt, sub.n_prompt = (size_t)(a->n_prompt > 0 ? a->n_prompt : 0);
    sub.max_tokens = a->max_tokens;
    sub.stop_ids = (int32_t *)a->stop_ids, sub.n_stop_ids = (size_t)(a->n_stop_ids > 0 ? a->n_stop_ids : 0);
    sub.sampling = &sp;
    Inferno__SchedulerRequest q = INFERNO__SCHEDULER_REQUEST__INIT;
    q.request_id = st->request_id;
    q.body_case = INFERNO__SCHEDULER_REQUEST__BODY_SUBMIT, q.submit = &sub;
    Inferno__SchedulerResponse *r = call(c, NULL, &q, CALL_TIMEOUT_MS, err, errlen);
    int rc = SCHED_CLIENT_OK;
    if (!r) {
        rc = SCHED_CLIENT_UNAVAILABLE;
    } else if (r->body_case == INFERNO__SCHEDULER_RESPONSE__BODY_ERROR) {
        snprintf(err, errlen, "%s", r->error->message ? r->error->message : "error");
        rc = r->error->code == INFERNO__ERROR_CODE__ERROR_OVERLOADED ? SCHED_CLIENT_OVERLOADED : SCHED_CLIENT_INVALID;
    } else if (r->body_case != INFERNO__SCHEDULER_RESPONSE__BODY_SUBMITTED) {
        snprintf(err, errlen, "scheduler: unexpected answer to a submit");
        rc = SCHED_CLIENT_UNAVAILABLE;
    }
    pthread_mutex_lock(&c->mu);
    if (rc == SCHED_CLIENT_OK) {
        st->incarnation = r->submitted->incarnation;
        *out = st;
    } else {
        unlink_stream(c, st);
    }
    pthread_mutex_unlock(&c->mu);
    if (r)
        inferno__scheduler_response__free_unpacked(r, NULL);
    if (rc != SCHED_CLIENT_OK) {
        /* a submit that timed out may still have been queued: make sure */
        if (rc == SCHED_CLIENT_UNAVAILABLE) {
            Inferno__CancelRequest can = INFERNO__CANCEL_REQUEST__INIT;
            can.client_id = c->client_id, can.request_id = st->request_id;
            Inferno__SchedulerRequest cq = INFERNO__SCHEDULER_REQUEST__INIT;
            cq.body_case = INFERNO__SCHEDULER_REQUEST__BODY_CANCEL, cq.cancel = &can;
            char ignored[64];
            Inferno__SchedulerResponse *cr = call(c, NULL, &cq, 1000, ignored, sizeof ignored);
            if (cr)
                inferno__scheduler_response__free_unpacked(cr, NULL);
        }
        stream_destroy(st);
    }
    return rc;
}

int sched_client_next(sched_stream *st, sched_client_event *ev, int timeout_ms) {
    sched_client *c = st->client;
    struct timespec until = clock_deadline(timeout_ms);
    pthread_mutex_lock(&c->mu);
    while (st->n_events == 0)
        if (pthread_cond_timedwait(&st->cv, &c->mu, &until))
            break;
    int got = st->n_events > 0;
    if (got) {
        *ev = st->events[st->head++];
        st->n_events--;
    }
    pthread_mutex_unlock(&c->mu);
    return got;
}

void sched_client_cancel(sched_stream *st) {
    sched_client *c = st->client;
    Inferno__CancelRequest can = INFERNO__CANCEL_REQUEST__INIT;
    can.client_id = c->client_id, can.request_id = st->request_id;
    Inferno__SchedulerRequest q = INFERNO__SCHEDULER_REQUEST__INIT;
    q.body_case = INFERNO__SCHEDULER_REQUEST__BODY_CANCEL, q.cancel = &can;
    char err[256];
    Inferno__SchedulerResponse *r = call(c, NULL, &q, CALL_TIMEOUT_MS, err, sizeof err);
    if (r)
        inferno__scheduler_response__free_unpacked(r, NULL);
}

void sched_stream_free(sched_stream *st) {
    if (!st)
        return;
    sched_client *c = st->client;
    pthread_mutex_lock(&c->mu);
    bool finished = st->finished;
    pthread_mutex_unlock(&c->mu);
    if (!finished)
        sched_client_cancel(st);
    pthread_mutex_lock(&c->mu);
    unlink_stream(c, st);
    pthread_mutex_unlock(&c->mu);
    stream_destroy(st);
}

Inferno__SchedulerResponse *sched_client_stats(sched_client *c, char *err, size_t errlen) {
    Inferno__StatsRequest sr = INFERNO__STATS_REQUEST__INIT;
    Inferno__SchedulerRequest q = INFERNO__SCHEDULER_REQUEST__INIT;
    q.body_case = INFERNO__SCHEDULER_REQUEST__BODY_STATS, q.stats = &sr;
    Inferno__SchedulerResponse *r = call(c, NULL, &q, 3000, err, errlen);
    if (r && r->body_case != INFERNO__SCHEDULER_RESPONSE__BODY_STATS) {
        snprintf(err, errlen, "scheduler: unexpected answer to stats");
        inferno__scheduler_response__free_unpacked(r, NULL);
        return NULL;
    }
    return r;
}

void sched_client_stats_free(Inferno__SchedulerResponse *r) {
    if (r)
        inferno__scheduler_response__free_unpacked(r, NULL);
}
