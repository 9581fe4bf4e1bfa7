/* The scheduler service's front: clients, their requests and event queues,
 * and the SchedulerRequest handlers (see service.h for the threading). */
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "protocol.h"
#include "service_internal.h"

/* Upper bounds of the step-time histogram, seconds. */
static const double step_bounds[SVC_STEP_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                     0.1,   0.25,   0.5,   1,    2.5,   10};

void svc_record_step(sched_service *s, double seconds) {
    int b = 0;
    while (b < SVC_STEP_BUCKETS && seconds > step_bounds[b])
        b++;
    s->step_counts[b]++;
    s->step_seconds_sum += seconds;
}

void sched_service_defaults(sched_service_config *cfg) {
    *cfg = (sched_service_config){.max_step_tokens = 512,
                                  .max_running = 64,
                                  .max_waiting = 256,
                                  .step_timeout_ms = 120000,
                                  .client_timeout_ms = 30000,
                                  .orphan_timeout_ms = 60000,
                                  .pipeline = 2};
}

sched_service *sched_service_create(const sched_service_config *cfg) {
    sched_service *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->cfg = *cfg;
    if (s->cfg.pipeline < 1 || s->cfg.pipeline > 2)
        s->cfg.pipeline = 2;
    pthread_mutex_init(&s->mu, NULL);
    /* sequence ids differ across scheduler restarts, so a worker never
     * confuses a new sequence with a stale one of the previous scheduler */
    s->next_seq_id = ((uint64_t)time(NULL) << 24) | 1;
    s->incarnation = clock_start_id();
    return s;
}

/* ---- clients and their events ---- */

static svc_client *client_get(sched_service *s, uint64_t id, bool create) {
    for (int32_t i = 0; i < s->n_clients; i++)
        if (s->clients[i]->id == id)
            return s->clients[i];
    if (!create)
        return NULL;
    if (s->n_clients == s->cap_clients) {
        int32_t cap = s->cap_clients ? 2 * s->cap_clients : 8;
        svc_client **v = realloc(s->clients, (size_t)cap * sizeof *v);
        if (!v)
            return NULL;
        s->clients = v, s->cap_clients = cap;
    }
    svc_client *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    /* event numbers keep growing across scheduler restarts (time based), so
     * a client's acknowledgement from before a restart covers no new event */
    c->id = id, c->next_seq = s->next_seq_id, c->last_seen = clock_now();
    s->clients[s->n_clients++] = c;
    return c;
}

static void drop_acked(svc_client *c, uint64_t ack) {
    int32_t k = 0;
    while (k < c->n_events && c->events[k]->seq <= ack)
        free(c->events[k++]);
    if (k == 0)
        return;
    memmove(c->events, c->events + k, (size_t)(c->n_events - k) * sizeof *c->events);
    c->n_events -= k;
}

static Inferno__SchedEvent *event_new(svc_client *c, uint64_t request_id, int32_t n_top, const char *error) {
    size_t elen = error ? strlen(error) + 1 : 0;
    Inferno__SchedEvent *e = malloc(sizeof *e + (size_t)n_top * (sizeof(int32_t) + sizeof(float)) + elen);
    if (!e)
        return NULL;
    if (c->n_events == c->cap_events) {
        int32_t cap = c->cap_events ? 2 * c->cap_events : 64;
        Inferno__SchedEvent **v = realloc(c->events, (size_t)cap * sizeof *v);
        if (!v) {
            free(e);
            return NULL;
        }
        c->events = v, c->cap_events = cap;
    }
    inferno__sched_event__init(e);
    e->seq = c->next_seq++, e->request_id = request_id, e->token = -1;
    e->top_ids = (int32_t *)(e + 1);
    e->top_logprobs = (float *)(e->top_ids + n_top);
    e->n_top_ids = e->n_top_logprobs = (size_t)n_top;
    if (error) {
        e->error = (char *)(e->top_logprobs + n_top);
        memcpy(e->error, error, elen);
    }
    c->events[c->n_events++] = e;
    return e;
}

void svc_push_token(sched_service *s, svc_request *r, const Inferno__SampledToken *t, int32_t token) {
    (void)s;
    int32_t n_top = t ? (int32_t)(t->n_top_ids < t->n_top_logprobs ? t->n_top_ids : t->n_top_logprobs) : 0;
    Inferno__SchedEvent *e = event_new(r->client, r->client_request_id, n_top, NULL);
    r->n_completion++;
    if (!e)
        return; /* out of memory: the finish event will still say how many */
    e->token = token;
    if (t)
        e->logprob = t->logprob;
    if (n_top > 0) {
        memcpy(e->top_ids, t->top_ids, (size_t)n_top * sizeof(int32_t));
        memcpy(e->top_logprobs, t->top_logprobs, (size_t)n_top * sizeof(float));
    }
}

static void request_free(svc_request *r) {
    free(r->sampling.bias_ids), free(r->sampling.bias_values), free(r->tokens);
    free(r);
}

static void request_remove(sched_service *s, svc_request *r) {
    for (int32_t i = 0; i < s->n_requests; i++)
        if (s->requests[i] == r) {
            s->requests[i] = s->requests[--s->n_requests];
            break;
        }
    request_free(r);
}

void svc_finish(sched_service *s, svc_request *r, Inferno__FinishReason why, const char *error, int32_t cached) {
    Inferno__SchedEvent *e = event_new(r->client, r->client_request_id, 0, error);
    if (e) {
        e->finish = why;
        e->prompt_tokens = r->n_prompt, e->cached_tokens = cached, e->completion_tokens = r->n_completion;
    }
    request_remove(s, r);
}

svc_request *svc_find_by_seq(sched_service *s, uint64_t seq_id) {
    for (int32_t i = 0; i < s->n_requests; i++)
        if (s->requests[i]->seq_id == seq_id)
            return s->requests[i];
    return NULL;
}

static svc_request *find_by_client(sched_service *s, const svc_client *c, uint64_t request_id) {
    for (int32_t i = 0; i < s->n_requests; i++)
        if (s->requests[i]->client == c && s->requests[i]->client_request_id == request_id)
            return s->requests[i];
    return NULL;
}

/* ---- placement ---- */

static int32_t worker_load(svc_worker *w) {
    sched_stats st;
    sched_get_stats(w->sch, &st);
    return st.waiting + st.running;
}

int svc_place(sched_service *s, svc_request *r) {
    const int32_t *tokens = r->tokens;
    int32_t n = r->n_tokens;
    /* cache affinity first: the worker holding the longest prefix, unless it
     * is much busier than the least loaded one; then load */
    svc_worker *best = NULL, *idlest = NULL;
    int32_t best_hit = 0, best_load = 0, idlest_load = 0;
    for (svc_worker *w = s->workers; w; w = w->next) {
        if (!w->alive || w->draining)
            continue;
        int32_t load = worker_load(w), hit = sched_cached_prefix(w->sch, tokens, n);
        if (!idlest || load < idlest_load)
            idlest = w, idlest_load = load;
        if (hit > best_hit)
            best = w, best_hit = hit, best_load = load;
    }
    if (!idlest) {
        r->worker = NULL;
        r->orphaned_at = clock_now();
        return SCHED_OK;
    }
    svc_worker *w = best && best_load <= idlest_load + 8 ? best : idlest;
    sched_request q = {.id = s->next_seq_id++,
                       .prompt = tokens,
                       .n_prompt = n,
                       .max_tokens = r->max_tokens,
                       .eos_id = w->eos_id,
                       .stop_ids = r->stop_ids,
                       .n_stop_ids = r->n_stop_ids,
                       .n_generated = r->n_generated};
    int rc = sched_submit(w->sch, &q);
    if (rc != SCHED_OK)
        return rc;
    r->seq_id = q.id, r->worker = w;
    free(r->tokens), r->tokens = NULL, r->n_tokens = 0;
    pthread_cond_signal(&w->wake);
    return SCHED_OK;
}

void svc_place_orphans(sched_service *s) {
    for (int32_t i = 0; i < s->n_requests; i++) {
        svc_request *r = s->requests[i];
        if (r->worker)
            continue;
        int rc = svc_place(s, r);
        if (rc == SCHED_INVALID) {
            svc_finish(s, r, INFERNO__FINISH_REASON__FINISH_ERROR, "request does not fit the worker's KV cache", 0);
            i--;
        } else if (rc == SCHED_OVERLOADED) {
            r->worker = NULL; /* try again at the next chance */
        }
    }
}

/* ---- handlers ---- */

typedef struct {
    Inferno__SchedulerResponse r;
    Inferno__Error error;
    char message[512];
    union {
        Inferno__Registered registered;
        Inferno__Submitted submitted;
        Inferno__Cancelled cancelled;
        Inferno__Events events;
    } u;
    Inferno__SchedulerStats stats;
    Inferno__WorkerStats *worker_stats, **worker_stats_ptrs;
    uint64_t step_counts[SVC_STEP_BUCKETS + 1];
} reply;

static void reply_error(reply *out, Inferno__ErrorCode code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void reply_error(reply *out, Inferno__ErrorCode code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out->message, sizeof out->message, fmt, ap);
    va_end(ap);
    out->error.code = code, out->error.message = out->message;
    out->r.body_case = INFERNO__SCHEDULER_RESPONSE__BODY_ERROR, out->r.error = &out->error;
}

static void handle_submit(sched_service *s, const Inferno__SubmitRequest *q, reply *out) {
    svc_client *c = client_get(s, q->client_id, true);
    if (!c)
        return reply_error(out, INFERNO__ERROR_CODE__ERROR_OVERLOADED, "out of memory");
    c->last_seen = clock_now();
    if (find_by_client(s, c, q->request_id))
        return reply_error(out, INFERNO__ERROR_CODE__ERROR_BAD_REQUEST, "request id already in use");
    if (q->n_prompt == 0 || q->max_tokens < 1)
        return reply_error(out, INFERNO__ERROR_CODE__ERROR_BAD_REQUEST, "empty prompt or max_tokens < 1");
    if (q->n_stop_ids > SCHED_MAX_STOP_IDS || q->n_prompt > (size_t)INT32_MAX / 2)
        return reply_error(out, INFERNO__ERROR_CODE__ERROR_BAD_REQUEST, "too many stop ids or prompt tokens");
    for (svc_worker *w = s->workers; w; w = w->next) {
        if (!w->alive)
            continue;
        for (size_t i = 0; i < q->n_prompt; i++)
            if (q->prompt[i] < 0 || (uint32_t)q->prompt[i] >= w->vocab_size)
                return reply_error(out, INFERNO__ERROR_CODE__ERROR_BAD_REQUEST, "prompt token out of the vocabulary");
        if ((int64_t)q->n_prompt + q->max_tokens > w->max_context) {
            return reply_error(out, INFERNO__ERROR_CODE__ERROR_BAD_REQUEST,
                               "prompt plus max_tokens exceed the context of %d tokens (%zu in the prompt + %d to "
                               "generate)",
                               w->max_context, q->n_prompt, q->max_tokens);
        }
    }
    int32_t waiting = 0;
    for (int32_t i = 0; i < s->n_requests; i++)
        waiting += !s->requests[i]->worker;
    for (svc_worker *w = s->workers; w; w = w->next)
        if (w->alive) {
            sched_stats st;
            sched_get_stats(w->sch, &st);
            waiting += st.waiting;
        }
    if (waiting >= s->cfg.max_waiting)
        return reply_error(out, INFERNO__ERROR_CODE__ERROR_OVERLOADED, "overloaded: too many requests waiting");
    svc_request *r = calloc(1, sizeof *r);
    if (!r || s->n_requests == INT32_MAX)
        return free(r), reply_error(out, INFERNO__ERROR_CODE__ERROR_OVERLOADED, "out of memory");
    r->client = c, r->client_request_id = q->request_id;
    r->n_prompt = (int32_t)q->n_prompt, r->max_tokens = q->max_tokens;
    r->n_stop_ids = (int32_t)q->n_stop_ids;
    if (q->n_stop_ids)
        memcpy(r->stop_ids, q->stop_ids, q->n_stop_ids * sizeof *q->stop_ids);
    r->tokens = malloc(q->n_prompt * sizeof *r->tokens);
    r->n_tokens = (int32_t)q->n_prompt;
    inferno__sampling_params__init(&r->sampling);
    if (q->sampling) {
        const Inferno__SamplingParams *p = q->sampling;
        size_t nb = p->n_bias_ids < p->n_bias_values ? p->n_bias_ids : p->n_bias_values;
        r->sampling = *p;
        r->sampling.base.unknown_fields = NULL, r->sampling.base.n_unknown_fields = 0;
        r->sampling.n_bias_ids = r->sampling.n_bias_values = nb;
        r->sampling.bias_ids = nb ? malloc(nb * sizeof(int32_t)) : NULL;
        r->sampling.bias_values = nb ? malloc(nb * sizeof(float)) : NULL;
        if (nb && r->sampling.bias_ids && r->sampling.bias_values) {
            memcpy(r->sampling.bias_ids, p->bias_ids, nb * sizeof(int32_t));
            memcpy(r->sampling.bias_values, p->bias_values, nb * sizeof(float));
        } else if (nb) {
            r->tokens = (free(r->tokens), NULL);
        }
    }
    if (s->n_requests == s->cap_requests) {
        int32_t cap = s->cap_requests ? 2 * s->cap_requests : 64;
        svc_request **v = realloc(s->requests, (size_t)cap * sizeof *v);
        if (v)
            s->requests = v, s->cap_requests = cap;
    }
    if (!r->tokens || s->n_requests == s->cap_requests) {
        request_free(r);
        return reply_error(out, INFERNO__ERROR_CODE__ERROR_OVERLOADED, "out of memory");
    }
    memcpy(r->tokens, q->prompt, q->n_prompt * sizeof *r->tokens);
    int rc = svc_place(s, r);
    if (rc != SCHED_OK) {
        request_free(r);
        if (rc == SCHED_OVERLOADED)
            return reply_error(out, INFERNO__ERROR_CODE__ERROR_OVERLOADED, "overloaded: the worker's queue is full");
        return reply_error(out, INFERNO__ERROR_CODE__ERROR_BAD_REQUEST,
                           "prompt plus max_tokens exceed the context or KV cache");
    }
    s->requests[s->n_requests++] = r;
    s->requests_total++;
    inferno__submitted__init(&out->u.submitted);
    out->u.submitted.prompt_tokens = r->n_prompt;
    out->u.submitted.worker = r->worker ? r->worker->url : "";
    out->u.submitted.incarnation = s->incarnation;
    out->r.body_case = INFERNO__SCHEDULER_RESPONSE__BODY_SUBMITTED, out->r.submitted = &out->u.submitted;
}

static void handle_cancel(sched_service *s, const Inferno__CancelRequest *q, reply *out) {
    svc_client *c = client_get(s, q->client_id, false);
    svc_request *r = c ? find_by_client(s, c, q->request_id) : NULL;
    inferno__cancelled__init(&out->u.cancelled);
    out->u.cancelled.found = r != NULL;
    if (r) {
        svc_worker_drop(r);
        svc_finish(s, r, INFERNO__FINISH_REASON__FINISH_CANCELLED, NULL, 0);
    }
    out->r.body_case = INFERNO__SCHEDULER_RESPONSE__BODY_CANCELLED, out->r.cancelled = &out->u.cancelled;
}

/* Fills out with c's events after ack (pointers into c's queue: valid
 * until the next call that touches it, so pack before unlocking). */
static void fill_events(sched_service *s, svc_client *c, uint64_t ack, reply *out) {
    drop_acked(c, ack);
    inferno__events__init(&out->u.events);
    out->u.events.n_events = (size_t)(c->n_events < SVC_MAX_EVENTS_PER_POLL ? c->n_events : SVC_MAX_EVENTS_PER_POLL);
    out->u.events.events = c->events;
    out->u.events.incarnation = s->incarnation;
    out->r.body_case = INFERNO__SCHEDULER_RESPONSE__BODY_EVENTS, out->r.events = &out->u.events;
}

static void fill_stats(sched_service *s, reply *out) {
    Inferno__SchedulerStats *st = &out->stats;
    inferno__scheduler_stats__init(st);
    int32_t n = 0;
    for (svc_worker *w = s->workers; w; w = w->next)
        n += w->alive;
    out->worker_stats = calloc((size_t)n + 1, sizeof *out->worker_stats);
    out->worker_stats_ptrs = calloc((size_t)n + 1, sizeof *out->worker_stats_ptrs);
    st->prompt_tokens = s->prompt_tokens, st->prefix_hit_tokens = s->prefix_hit_tokens;
    st->generated_tokens = s->generated_tokens, st->preemptions = s->preemptions;
    st->requests = s->requests_total, st->failovers = s->failovers;
    int32_t k = 0;
    for (svc_worker *w = s->workers; w && out->worker_stats; w = w->next) {
        if (!w->alive)
            continue;
        sched_stats ss;
        sched_get_stats(w->sch, &ss);
        Inferno__WorkerStats *ws = &out->worker_stats[k];
        inferno__worker_stats__init(ws);
        ws->url = w->url, ws->alive = true, ws->backend = w->backend, ws->draining = w->draining;
        ws->waiting = ss.waiting, ws->running = ss.running, ws->steps = w->steps;
        ws->blocks_used = ss.blocks_used, ws->blocks_total = ss.blocks_total, ws->blocks_cached = ss.blocks_cached;
        out->worker_stats_ptrs[k++] = ws;
        st->waiting += ss.waiting, st->running += ss.running;
        st->prompt_tokens += ss.prompt_tokens, st->prefix_hit_tokens += ss.prefix_hit_tokens;
        st->generated_tokens += ss.generated_tokens, st->preemptions += ss.preemptions;
        int32_t ctx = w->max_context < w->n_blocks * w->block_size ? w->max_context : w->n_blocks * w->block_size;
        if (!st->model || !*st->model || (uint32_t)ctx < st->max_context)
            st->max_context = (uint32_t)ctx;
        st->model = w->model;
    }
    for (int32_t i = 0; i < s->n_requests; i++)
        st->waiting += !s->requests[i]->worker;
    st->n_workers = (size_t)k, st->workers = out->worker_stats_ptrs;
    st->n_step_bounds = SVC_STEP_BUCKETS, st->step_bounds = (double *)step_bounds;
    uint64_t cum = 0;
    for (int b = 0; b <= SVC_STEP_BUCKETS; b++)
        out->step_counts[b] = cum += s->step_counts[b];
    st->n_step_counts = SVC_STEP_BUCKETS + 1, st->step_counts = out->step_counts;
    st->step_seconds_sum = s->step_seconds_sum;
    out->r.body_case = INFERNO__SCHEDULER_RESPONSE__BODY_STATS, out->r.stats = st;
}

static void handle_register(sched_service *s, const Inferno__RegisterWorker *q, reply *out) {
    if (!q->url || !*q->url || !q->info || q->info->block_size < 1 || q->info->n_blocks < 1 || q->info->vocab_size < 1)
        return reply_error(out, INFERNO__ERROR_CODE__ERROR_BAD_REQUEST, "registration without url or worker info");
    inferno__registered__init(&out->u.registered);
    svc_worker *known = NULL;
    for (svc_worker *w = s->workers; w; w = w->next) {
        if (!w->alive || strcmp(w->url, q->url))
            continue;
        if (w->instance == q->instance) {
            known = w;
            break;
        }
        svc_worker_lose(s, w, "re-registered by a new process"); /* it restarted: its KV is gone */
    }
    if (!known) {
        char err[256];
        if (!s->started)
            return reply_error(out, INFERNO__ERROR_CODE__ERROR_BAD_REQUEST, "not serving");
        if (!(known = svc_worker_add(s, q, err, sizeof err)))
            return reply_error(out, INFERNO__ERROR_CODE__ERROR_INTERNAL, "%s", err);
        out->u.registered.is_new = true;
    }
    if (q->draining && !known->draining) {
        known->draining = true; /* scale-down: a draining worker exits once active is 0 */
        fprintf(stderr, "scheduler-svc: worker %s is draining\n", known->url);
    }
    if (out->u.registered.is_new)
        svc_place_orphans(s);
    out->u.registered.active = worker_load(known);
    out->r.body_case = INFERNO__SCHEDULER_RESPONSE__BODY_REGISTERED, out->r.registered = &out->u.registered;
}

/* Handles q; returns true when the answer must wait (a parked poll). */
static bool handle(sched_service *s, const uint8_t *buf, size_t len, reply *out, bool may_park, front_ctx *fc,
                   svc_client **parked_on) {
    out->r.version = INFERNO_PROTOCOL_VERSION;
    Inferno__SchedulerRequest *q = inferno__scheduler_request__unpack(NULL, len, buf);
    if (!q) {
        reply_error(out, INFERNO__ERROR_CODE__ERROR_BAD_REQUEST, "malformed SchedulerRequest");
        return false;
    }
    out->r.request_id = q->request_id;
    bool parked = false;
    if (q->version != INFERNO_PROTOCOL_VERSION) {
        reply_error(out, INFERNO__ERROR_CODE__ERROR_VERSION, "protocol version %u not supported", q->version);
    } else if (q->body_case == INFERNO__SCHEDULER_REQUEST__BODY_SUBMIT) {
        handle_submit(s, q->submit, out);
    } else if (q->body_case == INFERNO__SCHEDULER_REQUEST__BODY_CANCEL) {
        handle_cancel(s, q->cancel, out);
    } else if (q->body_case == INFERNO__SCHEDULER_REQUEST__BODY_POLL) {
        svc_client *c = client_get(s, q->poll->client_id, true);
        if (!c) {
            reply_error(out, INFERNO__ERROR_CODE__ERROR_OVERLOADED, "out of memory");
        } else {
            c->last_seen = clock_now();
            drop_acked(c, q->poll->ack);
            if (c->n_events == 0 && may_park && q->poll->wait_ms > 0 && !c->parked) {
                c->parked = fc, c->parked_ack = q->poll->ack;
                c->parked_deadline = clock_now() + 1e-3 * (q->poll->wait_ms < 60000 ? q->poll->wait_ms : 60000);
                *parked_on = c;
                parked = true;
            } else {
                fill_events(s, c, q->poll->ack, out);
            }
        }
    } else if (q->body_case == INFERNO__SCHEDULER_REQUEST__BODY_STATS) {
        fill_stats(s, out);
    } else if (q->body_case == INFERNO__SCHEDULER_REQUEST__BODY_REGISTER_WORKER) {
        handle_register(s, q->register_worker, out);
    } else {
        reply_error(out, INFERNO__ERROR_CODE__ERROR_BAD_REQUEST, "request has no body");
    }
    inferno__scheduler_request__free_unpacked(q, NULL);
    return parked;
}

static void reply_free(reply *out) { free(out->worker_stats), free(out->worker_stats_ptrs); }

int sched_service_handle(sched_service *s, const uint8_t *req, size_t len, uint8_t **resp, size_t *resp_len) {
    reply out = {.r = INFERNO__SCHEDULER_RESPONSE__INIT, .error = INFERNO__ERROR__INIT};
    pthread_mutex_lock(&s->mu);
    svc_client *unused;
    handle(s, req, len, &out, false, NULL, &unused);
    *resp_len = inferno__scheduler_response__get_packed_size(&out.r);
    *resp = malloc(*resp_len ? *resp_len : 1);
    if (*resp)
        inferno__scheduler_response__pack(&out.r, *resp);
    pthread_mutex_unlock(&s->mu);
    reply_free(&out);
    return *resp ? 0 : -1;
}

/* ---- the network front: nng contexts ---- */

enum front_state { FRONT_RECV, FRONT_SEND, FRONT_PARKED };

struct front_ctx {
    sched_service *svc;
    nng_ctx ctx;
    nng_aio *aio;
    enum front_state state;
    uint64_t request_id; /* of a parked poll */
};

static nng_msg *pack_msg(const Inferno__SchedulerResponse *r) {
    nng_msg *m;
    size_t n = inferno__scheduler_response__get_packed_size(r);
    if (nng_msg_alloc(&m, n))
        return NULL;
    inferno__scheduler_response__pack(r, nng_msg_body(m));
    return m;
}

/* Answers c's parked poll with its events (mu held). The send itself is
 * started here: nng completes it on its own threads, never inline. */
static void answer_parked(sched_service *s, svc_client *c) {
    front_ctx *fc = c->parked;
    c->parked = NULL;
    reply out = {.r = INFERNO__SCHEDULER_RESPONSE__INIT};
    out.r.version = INFERNO_PROTOCOL_VERSION, out.r.request_id = fc->request_id;
    fill_events(s, c, c->parked_ack, &out);
    nng_msg *m = pack_msg(&out.r);
    if (!m) {
        fc->state = FRONT_RECV;
        nng_ctx_recv(fc->ctx, fc->aio);
        return;
    }
    fc->state = FRONT_SEND;
    nng_aio_set_msg(fc->aio, m);
    nng_ctx_send(fc->ctx, fc->aio);
}

void svc_flush_polls(sched_service *s) {
    for (int32_t i = 0; i < s->n_clients; i++)
        if (s->clients[i]->parked && s->clients[i]->n_events > 0)
            answer_parked(s, s->clients[i]);
}

static void front_cb(void *arg) {
    front_ctx *fc = arg;
    sched_service *s = fc->svc;
    int rv = nng_aio_result(fc->aio);
    if (fc->state == FRONT_SEND) {
        if (rv != 0)
            nng_msg_free(nng_aio_get_msg(fc->aio));
        fc->state = FRONT_RECV;
        nng_ctx_recv(fc->ctx, fc->aio);
        return;
    }
    if (rv == NNG_ECLOSED || rv == NNG_ECANCELED)
        return;
    if (rv != 0) {
        nng_ctx_recv(fc->ctx, fc->aio);
        return;
    }
    nng_msg *in = nng_aio_get_msg(fc->aio);
    reply out = {.r = INFERNO__SCHEDULER_RESPONSE__INIT, .error = INFERNO__ERROR__INIT};
    pthread_mutex_lock(&s->mu);
    svc_client *parked_on = NULL;
    bool parked = handle(s, nng_msg_body(in), nng_msg_len(in), &out, true, fc, &parked_on);
    nng_msg_free(in);
    if (parked) {
        fc->state = FRONT_PARKED, fc->request_id = out.r.request_id;
        pthread_mutex_unlock(&s->mu);
        return;
    }
    nng_msg *m = pack_msg(&out.r);
    svc_flush_polls(s); /* a cancel or registration may have made events */
    pthread_mutex_unlock(&s->mu);
    reply_free(&out);
    if (!m) {
        nng_ctx_recv(fc->ctx, fc->aio);
        return;
    }
    fc->state = FRONT_SEND;
    nng_aio_set_msg(fc->aio, m);
    nng_ctx_send(fc->ctx, fc->aio);
}

/* Cancels the requests of a client that stopped polling (mu held). */
static void client_forget(sched_service *s, int32_t index) {
    svc_client *c = s->clients[index];
    for (int32_t i = 0; i < s->n_requests; i++) {
        svc_request *r = s->requests[i];
        if (r->client != c)
            continue;
        svc_worker_drop(r);
        request_remove(s, r);
        i--;
    }
    drop_acked(c, UINT64_MAX);
    free(c->events);
    if (c->parked) { /* cannot happen for a silent client, but never leak a context */
        c->parked->state = FRONT_RECV;
        nng_ctx_recv(c->parked->ctx, c->parked->aio);
    }
    free(c);
    s->clients[index] = s->clients[--s->n_clients];
}

static void *housekeeper_main(void *arg) {
    sched_service *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stopping) {
        pthread_mutex_unlock(&s->mu);
        usleep(20000);
        pthread_mutex_lock(&s->mu);
        double now = clock_now();
        for (int32_t i = 0; i < s->n_clients; i++) {
            svc_client *c = s->clients[i];
            if (c->parked && now >= c->parked_deadline)
                answer_parked(s, c);
            else if (c->parked)
                c->last_seen = now;
            else if (now - c->last_seen > 1e-3 * s->cfg.client_timeout_ms)
                client_forget(s, i--);
        }
        for (int32_t i = 0; i < s->n_requests; i++) {
            svc_request *r = s->requests[i];
            if (!r->worker && now - r->orphaned_at > 1e-3 * s->cfg.orphan_timeout_ms) {
                svc_finish(s, r, INFERNO__FINISH_REASON__FINISH_ERROR, "no live worker to run the request", 0);
                i--;
            }
        }
        svc_place_orphans(s);
        svc_flush_polls(s);
        svc_worker_reap(s, false);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

int sched_service_start(sched_service *s, const char *url, char *err, size_t errlen) {
    int rv;
    if ((rv = nng_rep0_open(&s->sock)) ||
        (rv = nng_socket_set_size(s->sock, NNG_OPT_RECVMAXSZ, INFERNO_MAX_MESSAGE_BYTES))) {
        snprintf(err, errlen, "socket: %s", nng_strerror(rv));
        return -1;
    }
    s->front = calloc(SVC_FRONT_CONTEXTS, sizeof *s->front);
    if (!s->front) {
        snprintf(err, errlen, "out of memory");
        nng_close(s->sock);
        return -1;
    }
    for (int i = 0; i < SVC_FRONT_CONTEXTS; i++) {
        front_ctx *fc = &s->front[i];
        fc->svc = s;
        if ((rv = nng_aio_alloc(&fc->aio, front_cb, fc)) || (rv = nng_ctx_open(&fc->ctx, s->sock))) {
            snprintf(err, errlen, "context: %s", nng_strerror(rv));
            return -1; /* sched_service_free cleans up */
        }
    }
    if ((rv = nng_listen(s->sock, url, NULL, 0))) {
        snprintf(err, errlen, "listen on %s: %s", url, nng_strerror(rv));
        return -1;
    }
    s->started = true;
    for (int i = 0; i < SVC_FRONT_CONTEXTS; i++)
        nng_ctx_recv(s->front[i].ctx, s->front[i].aio);
    pthread_create(&s->housekeeper, NULL, housekeeper_main, s);
    return 0;
}

int sched_service_listen(sched_service *s, const char *url, char *err, size_t errlen) {
    int rv = nng_listen(s->sock, url, NULL, 0);
    if (rv)
        snprintf(err, errlen, "listen on %s: %s", url, nng_strerror(rv));
    return rv ? -1 : 0;
}

void sched_service_free(sched_service *s) {
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    bool started = s->started;
    s->stopping = true;
    for (int32_t i = 0; i < s->n_clients; i++)
        s->clients[i]->parked = NULL; /* their contexts are stopped below */
    for (svc_worker *w = s->workers; w; w = w->next)
        if (w->alive)
            svc_worker_lose(s, w, "scheduler stopping");
    pthread_mutex_unlock(&s->mu);
    if (started)
        pthread_join(s->housekeeper, NULL);
    if (s->front) {
        for (int i = 0; i < SVC_FRONT_CONTEXTS; i++)
            if (s->front[i].aio)
                nng_aio_stop(s->front[i].aio);
        /* a callback that was packing a reply as its aio stopped started a
         * send that nng refused without calling back: the reply is still
         * ours (a send that ran, or failed, left FRONT_SEND) */
        for (int i = 0; i < SVC_FRONT_CONTEXTS; i++)
            if (s->front[i].aio && s->front[i].state == FRONT_SEND) {
                nng_msg *unsent = nng_aio_get_msg(s->front[i].aio);
                if (unsent)
                    nng_msg_free(unsent);
            }
        nng_close(s->sock);
        for (int i = 0; i < SVC_FRONT_CONTEXTS; i++)
            if (s->front[i].aio)
                nng_aio_free(s->front[i].aio);
        free(s->front);
    }
    pthread_mutex_lock(&s->mu);
    svc_worker_reap(s, true);
    while (s->n_clients > 0)
        client_forget(s, s->n_clients - 1);
    while (s->n_requests > 0) /* orphans of no client */
        request_remove(s, s->requests[0]);
    pthread_mutex_unlock(&s->mu);
    free(s->clients), free(s->requests);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
