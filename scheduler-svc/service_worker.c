/* The scheduler service's worker side: one thread per registered worker
 * runs plan -> step over nng -> complete; a worker whose connection drops
 * or whose step times out is lost, and its sequences are resubmitted (from
 * the tokens the scheduler keeps) to the other workers.
 *
 * Pipelining (cfg.pipeline 2): the thread sends step N+1 as soon as N is
 * sent, before N's answer, so the worker finds its next step waiting when
 * it answers, and the round trip to the scheduler (~200 us a step on the
 * H200 machines: nng's hand-offs between threads and processes) and the
 * scheduler's own work run while the worker computes. Each step in flight
 * has its own req context and aio (a slot); answers are taken in the order
 * the steps were sent, which is the order the worker runs them. */
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "protocol.h"
#include "service_internal.h"

static void pipe_cb(nng_pipe p, nng_pipe_ev ev, void *arg) {
    (void)p;
    svc_worker *w = arg;
    if (ev == NNG_PIPE_EV_REM_POST) {
        /* the process is gone (or the link is): a step in flight will never
         * be answered, so stop waiting for it */
        w->lost = 1;
        pthread_cond_signal(&w->wake);
    }
}

static void io_done(void *arg) {
    svc_step_slot *slot = arg;
    svc_worker *w = slot->w;
    pthread_mutex_lock(&w->io_mu);
    slot->done = true;
    pthread_cond_broadcast(&w->io_cv);
    pthread_mutex_unlock(&w->io_mu);
}

/* Waits for the slot's aio; cancels it once the worker is known to be lost
 * (the answer to a step in flight will never come). */
static int wait_io(svc_worker *w, svc_step_slot *slot) {
    bool cancelled = false;
    pthread_mutex_lock(&w->io_mu);
    while (!slot->done) {
        if (w->lost && !cancelled) {
            pthread_mutex_unlock(&w->io_mu);
            nng_aio_cancel(slot->aio);
            cancelled = true;
            pthread_mutex_lock(&w->io_mu);
            continue;
        }
        struct timespec until = clock_deadline(50);
        pthread_cond_timedwait(&w->io_cv, &w->io_mu, &until);
    }
    slot->done = false;
    pthread_mutex_unlock(&w->io_mu);
    return nng_aio_result(slot->aio);
}

static void add_released(svc_worker *w, uint64_t id) {
    if (w->n_released == w->cap_released) {
        int32_t cap = w->cap_released ? 2 * w->cap_released : 32;
        uint64_t *v = realloc(w->released, (size_t)cap * sizeof *v);
        if (!v)
            return; /* the worker keeps a small history a while longer */
        w->released = v, w->cap_released = cap;
    }
    w->released[w->n_released++] = id;
}

void svc_worker_drop(svc_request *r) {
    if (!r->worker)
        return;
    sched_cancel(r->worker->sch, r->seq_id, NULL, NULL);
    add_released(r->worker, r->seq_id);
    r->worker = NULL;
}

typedef struct {
    sched_service *s;
    svc_worker *w;
    const Inferno__StepResult *result;
} complete_ctx;

static void on_event(void *arg, uint64_t id, enum sched_event_kind kind, int32_t token, enum sched_finish why) {
    complete_ctx *c = arg;
    svc_request *r = svc_find_by_seq(c->s, id);
    if (!r)
        return;
    if (kind == SCHED_TOKEN) {
        const Inferno__SampledToken *t = NULL;
        for (size_t i = 0; i < c->result->n_tokens && !t; i++)
            if (c->result->tokens[i]->seq_id == id)
                t = c->result->tokens[i];
        svc_push_token(c->s, r, t, token);
        return;
    }
    add_released(c->w, id);
    svc_finish(c->s, r,
               why == FINISH_EOS      ? INFERNO__FINISH_REASON__FINISH_STOP
               : why == FINISH_LENGTH ? INFERNO__FINISH_REASON__FINISH_LENGTH
                                      : INFERNO__FINISH_REASON__FINISH_CANCELLED,
               NULL, token);
}

/* Packs the planned step (mu held: the plan points into the sched). */
static uint8_t *pack_step(sched_service *s, svc_worker *w, const sched_step *step, uint64_t request_id, size_t *len) {
    Inferno__StepSequence *seqs = calloc((size_t)step->n_seqs + 1, sizeof *seqs);
    Inferno__StepSequence **ptrs = calloc((size_t)step->n_seqs + 1, sizeof *ptrs);
    Inferno__SamplingParams greedy = INFERNO__SAMPLING_PARAMS__INIT;
    uint8_t *buf = NULL;
    if (!seqs || !ptrs)
        goto out;
    for (int32_t k = 0; k < step->n_seqs; k++) {
        const sched_seq_step *st = &step->seqs[k];
        svc_request *r = svc_find_by_seq(s, st->id);
        Inferno__StepSequence *q = &seqs[k];
        inferno__step_sequence__init(q);
        q->seq_id = st->id, q->pos0 = st->pos0;
        q->tokens = step->tokens + st->start, q->n_tokens = (size_t)st->n_tokens;
        q->block_table = (int32_t *)st->block_table, q->n_block_table = (size_t)st->n_table;
        q->sample = st->sample, q->sampling = r ? &r->sampling : &greedy;
        q->n_prompt = st->n_prompt, q->n_generated = st->n_generated;
        ptrs[k] = q;
    }
    Inferno__StepRequest sr = INFERNO__STEP_REQUEST__INIT;
    sr.n_seqs = (size_t)step->n_seqs, sr.seqs = ptrs;
    sr.n_released = (size_t)w->n_released, sr.released = w->released;
    Inferno__WorkerRequest wr = INFERNO__WORKER_REQUEST__INIT;
    wr.version = INFERNO_PROTOCOL_VERSION, wr.request_id = request_id;
    wr.body_case = INFERNO__WORKER_REQUEST__BODY_STEP, wr.step = &sr;
    *len = inferno__worker_request__get_packed_size(&wr);
    buf = malloc(*len);
    if (buf) {
        inferno__worker_request__pack(&wr, buf);
        w->n_released = 0;
    }
out:
    free(seqs), free(ptrs);
    return buf;
}

/* Sends one packed request on the slot's context and starts waiting for
 * its answer (mu not held); -1 with err if it could not be sent. */
static int send_step(svc_worker *w, svc_step_slot *slot, const uint8_t *buf, size_t len, char *err, size_t errlen) {
    nng_msg *m;
    if (nng_msg_alloc(&m, len)) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memcpy(nng_msg_body(m), buf, len);
    nng_aio_set_msg(slot->aio, m);
    nng_ctx_send(slot->ctx, slot->aio);
    int rv = wait_io(w, slot);
    if (rv) {
        nng_msg_free(m);
        snprintf(err, errlen, "send: %s", nng_strerror(rv));
        return -1;
    }
    slot->sent_at = clock_now();
    nng_ctx_recv(slot->ctx, slot->aio);
    return 0;
}

/* Waits for the answer to the slot's step (mu not held). */
static Inferno__WorkerResponse *receive_answer(svc_worker *w, svc_step_slot *slot, char *err, size_t errlen) {
    int rv = wait_io(w, slot);
    if (rv) {
        snprintf(err, errlen, "%s", rv == NNG_ECANCELED ? "connection lost" : nng_strerror(rv));
        return NULL;
    }
    nng_msg *m = nng_aio_get_msg(slot->aio);
    Inferno__WorkerResponse *resp = inferno__worker_response__unpack(NULL, nng_msg_len(m), nng_msg_body(m));
    nng_msg_free(m);
    if (!resp)
        snprintf(err, errlen, "malformed WorkerResponse");
    return resp;
}

static void fail_step(sched_service *s, const sched_step *step, const char *why) {
    for (int32_t k = 0; k < step->n_seqs; k++) {
        svc_request *r = svc_find_by_seq(s, step->seqs[k].id);
        if (r && r->worker) {
            svc_worker_drop(r);
            svc_finish(s, r, INFERNO__FINISH_REASON__FINISH_ERROR, why, 0);
        }
    }
}

/* Plans, packs and sends steps until cfg.pipeline of them are out, the
 * oldest in slot head (mu held; released while sending). -1: the worker is
 * lost. */
static int send_steps(sched_service *s, svc_worker *w, int head, int *n_out, uint64_t *request_id) {
    char err[512];
    while (*n_out < s->cfg.pipeline) {
        svc_step_slot *slot = &w->slots[(head + *n_out) % 2];
        int32_t n = sched_plan(w->sch, &slot->step);
        /* releases go alone only when no step is out to carry them */
        if (n == 0 && (w->n_released == 0 || *n_out > 0))
            return 0;
        size_t len;
        uint8_t *buf = pack_step(s, w, &slot->step, ++*request_id, &len);
        if (!buf) {
            /* no second plan now: it would take the turn of the plan
             * buffer that the step out still uses (see sched_plan) */
            fail_step(s, &slot->step, "scheduler out of memory");
            return 0;
        }
        slot->request_id = *request_id;
        pthread_mutex_unlock(&s->mu);
        int rc = send_step(w, slot, buf, len, err, sizeof err);
        free(buf);
        pthread_mutex_lock(&s->mu);
        if (!w->alive) /* lost meanwhile: its sequences moved already */
            return -1;
        if (rc) {
            svc_worker_lose(s, w, err);
            return -1;
        }
        ++*n_out;
    }
    return 0;
}

/* The worker's answer to the step in slot (mu held). */
static void complete_step(sched_service *s, svc_worker *w, svc_step_slot *slot, const Inferno__WorkerResponse *resp,
                          double seconds) {
    const sched_step *step = &slot->step;
    if (resp->body_case != INFERNO__WORKER_RESPONSE__BODY_STEP || resp->request_id != slot->request_id) {
        char err[512];
        snprintf(err, sizeof err, "worker %s: step failed: %s", w->url,
                 resp->body_case == INFERNO__WORKER_RESPONSE__BODY_ERROR && resp->error->message ? resp->error->message
                                                                                                 : "unexpected answer");
        fprintf(stderr, "scheduler-svc: %s\n", err);
        fail_step(s, step, err);
        return;
    }
    int32_t *sampled = calloc((size_t)step->n_seqs + 1, sizeof *sampled);
    for (int32_t k = 0; sampled && k < step->n_seqs; k++) {
        sampled[k] = -1;
        for (size_t i = 0; i < resp->step->n_tokens; i++)
            if (resp->step->tokens[i]->seq_id == step->seqs[k].id)
                sampled[k] = resp->step->tokens[i]->token;
    }
    if (sampled) {
        complete_ctx cc = {s, w, resp->step};
        sched_complete(w->sch, step, sampled, on_event, &cc);
    } else {
        fail_step(s, step, "scheduler out of memory");
    }
    free(sampled);
    w->steps++;
    svc_record_step(s, seconds);
    svc_flush_polls(s);
}

static void *worker_main(void *arg) {
    svc_worker *w = arg;
    sched_service *s = w->svc;
    uint64_t request_id = 0;
    int head = 0, n_out = 0; /* the oldest step out, and how many are out */
    double answered_at = 0;  /* of the last answer: a step queued behind it started then */
    char err[512];
    pthread_mutex_lock(&s->mu);
    while (w->alive) {
        if (w->lost) {
            svc_worker_lose(s, w, "connection lost");
            break;
        }
        if (send_steps(s, w, head, &n_out, &request_id))
            break;
        if (n_out == 0) {
            struct timespec until = clock_deadline(100);
            pthread_cond_timedwait(&w->wake, &s->mu, &until);
            continue;
        }
        svc_step_slot *slot = &w->slots[head];
        pthread_mutex_unlock(&s->mu);
        Inferno__WorkerResponse *resp = receive_answer(w, slot, err, sizeof err);
        double now = clock_now(), seconds = now - (slot->sent_at > answered_at ? slot->sent_at : answered_at);
        answered_at = now;
        pthread_mutex_lock(&s->mu);
        head = (head + 1) % 2, n_out--;
        if (!w->alive) { /* lost while we waited: its sequences moved already */
            if (resp)
                inferno__worker_response__free_unpacked(resp, NULL);
            break;
        }
        if (!resp) {
            svc_worker_lose(s, w, err);
            break;
        }
        complete_step(s, w, slot, resp, seconds);
        inferno__worker_response__free_unpacked(resp, NULL);
    }
    pthread_mutex_unlock(&s->mu);
    nng_close(w->sock); /* after this, no pipe callback touches w */
    pthread_mutex_lock(&s->mu);
    w->exited = true;
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static char *dup_or_empty(const char *x) { return strdup(x ? x : ""); }

svc_worker *svc_worker_add(sched_service *s, const Inferno__RegisterWorker *reg, char *err, size_t errlen) {
    const Inferno__WorkerInfo *info = reg->info;
    svc_worker *w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    w->svc = s, w->instance = reg->instance;
    w->url = dup_or_empty(reg->url), w->model = dup_or_empty(info->model), w->backend = dup_or_empty(info->backend);
    w->block_size = info->block_size, w->n_blocks = info->n_blocks, w->eos_id = info->eos_id;
    w->vocab_size = info->vocab_size;
    int64_t capacity = (int64_t)info->block_size * info->n_blocks;
    w->max_context = info->max_context > 0 && info->max_context < capacity ? (int32_t)info->max_context
                     : capacity < INT32_MAX                                ? (int32_t)capacity
                                                                           : INT32_MAX;
    sched_config cfg = {.block_size = w->block_size,
                        .n_blocks = w->n_blocks,
                        .max_step_tokens = s->cfg.max_step_tokens,
                        .max_running = s->cfg.max_running,
                        .max_waiting = s->cfg.max_waiting,
                        .max_context = w->max_context};
    w->sch = sched_create(&cfg);
    pthread_cond_init(&w->wake, NULL);
    pthread_cond_init(&w->io_cv, NULL);
    pthread_mutex_init(&w->io_mu, NULL);
    int rv = 0;
    bool sock_open = false;
    if (!w->url || !w->model || !w->backend || !w->sch || (rv = nng_req0_open(&w->sock))) {
        snprintf(err, errlen, "worker %s: %s", reg->url, rv ? nng_strerror(rv) : "out of memory");
        goto fail;
    }
    sock_open = true;
    nng_socket_set_size(w->sock, NNG_OPT_RECVMAXSZ, INFERNO_MAX_MESSAGE_BYTES);
    /* a step is never sent twice: a lost worker is failed over instead */
    nng_socket_set_ms(w->sock, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
    for (int i = 0; i < 2; i++) {
        svc_step_slot *slot = &w->slots[i];
        slot->w = w;
        if ((rv = nng_aio_alloc(&slot->aio, io_done, slot)) || (rv = nng_ctx_open(&slot->ctx, w->sock)) ||
            (rv = nng_ctx_set_ms(slot->ctx, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE))) {
            snprintf(err, errlen, "worker %s: %s", reg->url, nng_strerror(rv));
            goto fail;
        }
        nng_aio_set_timeout(slot->aio, s->cfg.step_timeout_ms);
    }
    nng_pipe_notify(w->sock, NNG_PIPE_EV_REM_POST, pipe_cb, w);
    if ((rv = nng_dial(w->sock, w->url, NULL, 0))) {
        snprintf(err, errlen, "worker %s: dial: %s", w->url, nng_strerror(rv));
        goto fail;
    }
    w->alive = true;
    if (pthread_create(&w->thread, NULL, worker_main, w)) {
        snprintf(err, errlen, "worker %s: cannot start a thread", w->url);
        goto fail;
    }
    w->next = s->workers, s->workers = w;
    fprintf(stderr, "scheduler-svc: worker %s registered (%s, %s, %d KV blocks of %d)\n", w->url, w->model, w->backend,
            w->n_blocks, w->block_size);
    return w;
fail:
    if (sock_open)
        nng_close(w->sock);
    for (int i = 0; i < 2; i++)
        if (w->slots[i].aio)
            nng_aio_free(w->slots[i].aio);
    sched_free(w->sch);
    pthread_cond_destroy(&w->wake), pthread_cond_destroy(&w->io_cv), pthread_mutex_destroy(&w->io_mu);
    free(w->url), free(w->model), free(w->backend), free(w);
    return NULL;
}

typedef struct {
    sched_service *s;
} drain_ctx;

static void on_drain(void *arg, uint64_t id, const int32_t *tokens, int32_t n_tokens, int32_t n_generated) {
    drain_ctx *d = arg;
    svc_request *r = svc_find_by_seq(d->s, id);
    if (!r)
        return;
    r->worker = NULL, r->orphaned_at = clock_now();
    r->tokens = malloc((size_t)n_tokens * sizeof *tokens);
    if (!r->tokens) {
        svc_finish(d->s, r, INFERNO__FINISH_REASON__FINISH_ERROR, "scheduler out of memory", 0);
        return;
    }
    memcpy(r->tokens, tokens, (size_t)n_tokens * sizeof *tokens);
    r->n_tokens = n_tokens, r->n_generated = n_generated;
    d->s->failovers++;
}

void svc_worker_lose(sched_service *s, svc_worker *w, const char *why) {
    if (!w->alive)
        return;
    w->alive = false;
    w->lost = 1;
    if (!s->stopping)
        fprintf(stderr, "scheduler-svc: worker %s lost (%s); moving its sequences\n", w->url, why);
    sched_stats st; /* its counters outlive it */
    sched_get_stats(w->sch, &st);
    s->prompt_tokens += st.prompt_tokens, s->prefix_hit_tokens += st.prefix_hit_tokens;
    s->generated_tokens += st.generated_tokens, s->preemptions += st.preemptions;
    drain_ctx d = {s};
    sched_drain(w->sch, on_drain, &d);
    pthread_cond_signal(&w->wake);
    if (!s->stopping)
        svc_place_orphans(s);
}

void svc_worker_reap(sched_service *s, bool all) {
    svc_worker **link = &s->workers;
    while (*link) {
        svc_worker *w = *link;
        if (!(w->exited || (all && !w->alive))) {
            link = &w->next;
            continue;
        }
        *link = w->next;
        pthread_mutex_unlock(&s->mu); /* the thread may still need mu to finish */
        pthread_join(w->thread, NULL);
        pthread_mutex_lock(&s->mu);
        nng_aio_free(w->slots[0].aio), nng_aio_free(w->slots[1].aio);
        sched_free(w->sch);
        pthread_cond_destroy(&w->wake), pthread_cond_destroy(&w->io_cv), pthread_mutex_destroy(&w->io_mu);
        free(w->released), free(w->url), free(w->model), free(w->backend), free(w);
        link = &s->workers; /* the list may have changed while unlocked */
    }
}
