/* Worker service: request handling and the serving loop (see service.h). */
#include "clock.h"
#include "worker_service.h"

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "inferno.pb-c.h"
#include "protocol.h"
#include "sampler.h"

typedef struct {
    uint64_t id;
    int32_t *tokens;
    int32_t n, cap;
    /* the token this worker last drew for the sequence and its position
     * (-1: none): a pipelined step names it as INFERNO_TOKEN_PENDING */
    int32_t drawn, drawn_pos;
} seq_history;

struct worker_state {
    const model_desc *m;
    engine *e;
    int32_t eos_id;
    const char *model_name;
    seq_history *hist;
    int32_t n_hist, cap_hist;
    float *logits; /* [cap_logits][vocab]: only steps with logprobs take all logits to the host */
    int32_t cap_logits;
    int32_t *argmax; /* [cap_rows]: the ids of steps that sample in the engine */
    int32_t cap_rows;
    /* sample plans (steps without logprobs): one a row, and their penalty lists */
    sample_plan *plans; /* [cap_rows] */
    uint32_t *seen;     /* [vocab] zeroed counters for sampler_plan */
    int32_t *seen_buf;
    size_t cap_seen;
};

worker_state *worker_state_create(const model_desc *m, engine *e, int32_t eos_id, const char *model_name) {
    worker_state *w = calloc(1, sizeof *w);
    if (w)
        w->m = m, w->e = e, w->eos_id = eos_id, w->model_name = model_name;
    return w;
}

void worker_state_free(worker_state *w) {
    if (!w)
        return;
    for (int32_t i = 0; i < w->n_hist; i++)
        free(w->hist[i].tokens);
    free(w->hist), free(w->logits), free(w->argmax), free(w->plans), free(w->seen), free(w->seen_buf);
    free(w);
}

static seq_history *history(worker_state *w, uint64_t id, bool create) {
    for (int32_t i = 0; i < w->n_hist; i++)
        if (w->hist[i].id == id)
            return &w->hist[i];
    if (!create)
        return NULL;
    if (w->n_hist == w->cap_hist) {
        int32_t cap = w->cap_hist ? 2 * w->cap_hist : 64;
        seq_history *h = realloc(w->hist, (size_t)cap * sizeof *h);
        if (!h)
            return NULL;
        w->hist = h, w->cap_hist = cap;
    }
    w->hist[w->n_hist] = (seq_history){.id = id, .drawn_pos = -1};
    return &w->hist[w->n_hist++];
}

static void release(worker_state *w, uint64_t id) {
    for (int32_t i = 0; i < w->n_hist; i++)
        if (w->hist[i].id == id) {
            free(w->hist[i].tokens);
            w->hist[i] = w->hist[--w->n_hist];
            return;
        }
}

/* A pipelined step's first token may be the one this worker drew for the
 * sequence in the step before, which the scheduler did not know yet when
 * it planned this one (INFERNO_TOKEN_PENDING): filled in here, in the
 * request itself. Any other negative id is left for the engine to refuse. */
static int fill_pending(worker_state *w, Inferno__StepSequence *s, char *err, size_t errlen) {
    if (s->n_tokens == 0 || s->tokens[0] != INFERNO_TOKEN_PENDING)
        return 0;
    const seq_history *h = history(w, s->seq_id, false);
    if (s->n_tokens != 1 || !h || h->drawn_pos != s->pos0) {
        snprintf(err, errlen, "sequence %llu: no token drawn for position %d to fill in", (unsigned long long)s->seq_id,
                 s->pos0);
        return -1;
    }
    s->tokens[0] = h->drawn;
    return 0;
}

/* History covers positions 0..pos0 exactly, then the new tokens follow. */
static int extend_history(seq_history *h, int32_t pos0, const int32_t *tokens, int32_t n) {
    if (pos0 == 0 || pos0 > h->n)
        h->n = 0; /* a (re)start, or state lost: keep what the step shows */
    else
        h->n = pos0;
    if (h->n + n > h->cap) {
        int32_t cap = 2 * (h->n + n) + 16;
        int32_t *t = realloc(h->tokens, (size_t)cap * sizeof *t);
        if (!t)
            return -1;
        h->tokens = t, h->cap = cap;
    }
    memcpy(h->tokens + h->n, tokens, (size_t)n * sizeof *tokens);
    h->n += n;
    return 0;
}

static uint64_t mix_seed(uint64_t seed, int32_t k) {
    uint64_t z = seed + 0x9e3779b97f4a7c15ull * (uint64_t)(k + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static sampling_params params_from(const Inferno__SamplingParams *sp, int32_t n_generated) {
    sampling_params p = sampling_defaults();
    if (!sp)
        return p;
    p.temperature = sp->temperature > 0 ? sp->temperature : 0.0f;
    p.top_k = sp->top_k > 0 ? sp->top_k : 0;
    p.top_p = sp->top_p > 0 && sp->top_p < 1 ? sp->top_p : 1.0f;
    p.min_p = sp->min_p > 0 ? sp->min_p : 0.0f;
    p.repetition_penalty = sp->repetition_penalty > 0 ? sp->repetition_penalty : 1.0f;
    p.presence_penalty = sp->presence_penalty, p.frequency_penalty = sp->frequency_penalty;
    p.seed = mix_seed(sp->seed, n_generated);
    size_t nb = sp->n_bias_ids < sp->n_bias_values ? sp->n_bias_ids : sp->n_bias_values;
    p.bias_ids = sp->bias_ids, p.bias_values = sp->bias_values, p.n_bias = (int32_t)nb;
    p.logprobs = sp->logprobs < 0 ? 0 : sp->logprobs > SAMPLER_MAX_LOGPROBS ? SAMPLER_MAX_LOGPROBS : sp->logprobs;
    return p;
}

typedef Inferno__SampledToken SampledToken_t;

/* How a step's rows are sampled: ARGMAX when every row that samples takes
 * the largest logit as it is (no temperature, penalties, bias or
 * logprobs); PLANS when no row wants logprobs (the engine samples; on a
 * GPU only ids come back); else LOGITS (all logits to the host). */
enum { SAMPLE_ARGMAX, SAMPLE_PLANS, SAMPLE_LOGITS };

static int sampling_mode(const Inferno__StepRequest *q) {
    int mode = SAMPLE_ARGMAX;
    for (size_t i = 0; i < q->n_seqs; i++) {
        const Inferno__SamplingParams *sp = q->seqs[i]->sampling;
        if (!q->seqs[i]->sample || !sp)
            continue;
        if (sp->logprobs > 0)
            return SAMPLE_LOGITS;
        if (sp->temperature > 0 || sp->n_bias_ids > 0 || sp->presence_penalty != 0 || sp->frequency_penalty != 0 ||
            (sp->repetition_penalty > 0 && sp->repetition_penalty != 1.0f))
            mode = SAMPLE_PLANS;
    }
    return mode;
}

/* Fills w->plans for the rows of q (histories already extended by the step). */
static int make_plans(worker_state *w, const Inferno__StepRequest *q) {
    size_t need = 0;
    for (size_t i = 0; i < q->n_seqs; i++) {
        const seq_history *h = history(w, q->seqs[i]->seq_id, false);
        need += h ? 2 * (size_t)h->n : 0;
    }
    if (!w->seen && !(w->seen = calloc(w->m->vocab, sizeof *w->seen)))
        return -1;
    if (need > w->cap_seen) {
        free(w->seen_buf);
        w->cap_seen = 0;
        if (!(w->seen_buf = malloc(need * sizeof *w->seen_buf)))
            return -1;
        w->cap_seen = need;
    }
    int32_t *at = w->seen_buf;
    for (size_t i = 0; i < q->n_seqs; i++) {
        const Inferno__StepSequence *s = q->seqs[i];
        seq_history *h = history(w, s->seq_id, false);
        sampling_params p = s->sample ? params_from(s->sampling, s->n_generated) : sampling_defaults();
        sampler smp;
        sampler_init(&smp, &p);
        int32_t n = h ? h->n : 0, n_prompt = s->n_prompt > 0 && s->n_prompt <= n ? s->n_prompt : n;
        sampler_plan(&smp, h ? h->tokens : NULL, n, n_prompt, (int32_t)w->m->vocab, w->seen, at, at + n, &w->plans[i]);
        at += 2 * (size_t)n;
    }
    return 0;
}

/* Runs a step; on a bad request writes a message into err and returns -1. */
static int run_step(worker_state *w, const Inferno__StepRequest *q, Inferno__StepResult *res, char *err, size_t errlen);

int worker_handle(worker_state *w, const uint8_t *req, size_t len, uint8_t **resp, size_t *resp_len) {
    Inferno__WorkerResponse r = INFERNO__WORKER_RESPONSE__INIT;
    Inferno__Error e = INFERNO__ERROR__INIT;
    Inferno__WorkerInfo info = INFERNO__WORKER_INFO__INIT;
    Inferno__StepResult step = INFERNO__STEP_RESULT__INIT;
    r.version = INFERNO_PROTOCOL_VERSION;
    char msg[1024];
    Inferno__WorkerRequest *q = inferno__worker_request__unpack(NULL, len, req);
    if (!q) {
        e.code = INFERNO__ERROR_CODE__ERROR_BAD_REQUEST, e.message = "malformed WorkerRequest";
        r.body_case = INFERNO__WORKER_RESPONSE__BODY_ERROR, r.error = &e;
    } else if ((r.request_id = q->request_id), q->version != INFERNO_PROTOCOL_VERSION) {
        snprintf(msg, sizeof msg, "protocol version %u not supported (this worker speaks %d)", q->version,
                 INFERNO_PROTOCOL_VERSION);
        e.code = INFERNO__ERROR_CODE__ERROR_VERSION, e.message = msg;
        r.body_case = INFERNO__WORKER_RESPONSE__BODY_ERROR, r.error = &e;
    } else if (q->body_case == INFERNO__WORKER_REQUEST__BODY_INFO) {
        info.model = (char *)w->model_name, info.backend = (char *)engine_backend(w->e), info.vocab_size = w->m->vocab;
        info.block_size = engine_block_size(w->e), info.n_blocks = engine_n_blocks(w->e);
        info.eos_id = w->eos_id, info.max_context = w->m->context;
        r.body_case = INFERNO__WORKER_RESPONSE__BODY_INFO, r.info = &info;
    } else if (q->body_case == INFERNO__WORKER_REQUEST__BODY_STEP) {
        if (run_step(w, q->step, &step, msg, sizeof msg)) {
            e.code = INFERNO__ERROR_CODE__ERROR_BAD_REQUEST, e.message = msg;
            r.body_case = INFERNO__WORKER_RESPONSE__BODY_ERROR, r.error = &e;
        } else {
            r.body_case = INFERNO__WORKER_RESPONSE__BODY_STEP, r.step = &step;
        }
    } else {
        e.code = INFERNO__ERROR_CODE__ERROR_BAD_REQUEST, e.message = "request has no body";
        r.body_case = INFERNO__WORKER_RESPONSE__BODY_ERROR, r.error = &e;
    }
    *resp_len = inferno__worker_response__get_packed_size(&r);
    *resp = malloc(*resp_len ? *resp_len : 1);
    if (*resp)
        inferno__worker_response__pack(&r, *resp);
    for (size_t i = 0; i < step.n_tokens; i++) /* a step's tokens, also those of one that failed midway */
        free(step.tokens[i]);
    free(step.tokens);
    if (q)
        inferno__worker_request__free_unpacked(q, NULL);
    return *resp ? 0 : -1;
}

static int run_step(worker_state *w, const Inferno__StepRequest *q, Inferno__StepResult *res, char *err,
                    size_t errlen) {
    for (size_t i = 0; i < q->n_released; i++)
        release(w, q->released[i]);
    if (q->n_seqs == 0)
        return 0; /* a release-only step */
    int32_t n_tokens = 0;
    for (size_t i = 0; i < q->n_seqs; i++) {
        if (q->seqs[i]->n_tokens == 0) {
            snprintf(err, errlen, "sequence %llu: no tokens", (unsigned long long)q->seqs[i]->seq_id);
            return -1;
        }
        if (q->seqs[i]->n_tokens > (size_t)INT32_MAX - (size_t)n_tokens) {
            snprintf(err, errlen, "step too large");
            return -1;
        }
        /* checked here, not only by the engine: the histories take the step before the engine sees it */
        if (q->seqs[i]->pos0 < 0 || q->seqs[i]->pos0 > INT32_MAX - (int32_t)q->seqs[i]->n_tokens) {
            snprintf(err, errlen, "sequence %llu: position %d out of range", (unsigned long long)q->seqs[i]->seq_id,
                     q->seqs[i]->pos0);
            return -1;
        }
        n_tokens += (int32_t)q->seqs[i]->n_tokens;
        if (fill_pending(w, q->seqs[i], err, errlen))
            return -1;
    }
    int32_t *tokens = malloc((size_t)n_tokens * sizeof *tokens);
    engine_seq *seqs = calloc(q->n_seqs, sizeof *seqs);
    int32_t *argmax = NULL;
    int rc = -1;
    if (!tokens || !seqs) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    for (size_t i = 0, at = 0; i < q->n_seqs; i++) {
        const Inferno__StepSequence *s = q->seqs[i];
        memcpy(tokens + at, s->tokens, s->n_tokens * sizeof *tokens);
        seqs[i] =
            (engine_seq){(int32_t)at, (int32_t)s->n_tokens, s->pos0, s->block_table, (int32_t)s->n_block_table, false};
        at += s->n_tokens;
    }
    if ((int32_t)q->n_seqs > w->cap_rows) {
        free(w->argmax), free(w->plans);
        w->cap_rows = (int32_t)q->n_seqs;
        w->argmax = malloc((size_t)w->cap_rows * sizeof *w->argmax);
        w->plans = malloc((size_t)w->cap_rows * sizeof *w->plans);
        if (!w->argmax || !w->plans) {
            w->cap_rows = 0;
            snprintf(err, errlen, "out of memory");
            goto out;
        }
    }
    for (size_t i = 0; i < q->n_seqs; i++) {
        const Inferno__StepSequence *s = q->seqs[i];
        seq_history *h = history(w, s->seq_id, true);
        if (!h || extend_history(h, s->pos0, s->tokens, (int32_t)s->n_tokens)) {
            snprintf(err, errlen, "out of memory");
            goto out;
        }
    }
    engine_batch b = {tokens, n_tokens, seqs, (int32_t)q->n_seqs};
    /* unless logprobs are asked for, only ids leave the engine (for a GPU:
     * ids instead of n_seqs x vocab floats over PCIe) */
    int mode = sampling_mode(q);
    if (mode != SAMPLE_LOGITS)
        argmax = w->argmax;
    if (mode == SAMPLE_LOGITS && (int32_t)q->n_seqs > w->cap_logits) {
        free(w->logits);
        w->cap_logits = 0;
        if (!(w->logits = malloc(q->n_seqs * w->m->vocab * sizeof *w->logits))) {
            snprintf(err, errlen, "out of memory for %zu rows of logits", q->n_seqs);
            goto out;
        }
        w->cap_logits = (int32_t)q->n_seqs;
    }
    if (mode == SAMPLE_PLANS && make_plans(w, q)) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    double t0 = clock_now();
    if (mode == SAMPLE_PLANS ? engine_step_sample(w->e, &b, w->plans, argmax, err, errlen)
                             : engine_step(w->e, &b, argmax ? NULL : w->logits, argmax, err, errlen))
        goto out;
    res->tokens = calloc(q->n_seqs, sizeof *res->tokens);
    if (!res->tokens) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < q->n_seqs; i++) {
        const Inferno__StepSequence *s = q->seqs[i];
        seq_history *h = history(w, s->seq_id, false);
        if (!s->sample)
            continue;
        sample_result sr = {.token = argmax ? argmax[i] : -1};
        if (!argmax) {
            sampling_params p = params_from(s->sampling, s->n_generated);
            sampler smp;
            sampler_init(&smp, &p);
            int32_t n_prompt = s->n_prompt > 0 && s->n_prompt <= h->n ? s->n_prompt : h->n;
            sampler_sample(&smp, w->logits + i * w->m->vocab, (int32_t)w->m->vocab, h->tokens, h->n, n_prompt, &sr);
        }
        SampledToken_t *t = malloc(sizeof *t + (size_t)sr.n_top * (sizeof(int32_t) + sizeof(float)));
        if (!t) {
            snprintf(err, errlen, "out of memory");
            goto out;
        }
        inferno__sampled_token__init(t);
        t->seq_id = s->seq_id, t->token = sr.token, t->logprob = sr.logprob;
        h->drawn = sr.token, h->drawn_pos = s->pos0 + (int32_t)s->n_tokens;
        t->n_top_ids = t->n_top_logprobs = (size_t)sr.n_top;
        t->top_ids = (int32_t *)(t + 1);
        t->top_logprobs = (float *)(t->top_ids + sr.n_top);
        memcpy(t->top_ids, sr.top_ids, (size_t)sr.n_top * sizeof(int32_t));
        memcpy(t->top_logprobs, sr.top_logprobs, (size_t)sr.n_top * sizeof(float));
        res->tokens[res->n_tokens++] = t;
    }
    res->step_seconds = (float)(clock_now() - t0);
    rc = 0;
out:
    free(tokens);
    free(seqs);
    return rc;
}

int worker_serve(worker_state *w, const char *url, void (*on_ready)(void *), void *ctx, volatile sig_atomic_t *stop,
                 char *err, size_t errlen) {
    nng_socket sock;
    int rv;
    if ((rv = nng_rep0_open(&sock)) != 0 ||
        (rv = nng_socket_set_size(sock, NNG_OPT_RECVMAXSZ, INFERNO_MAX_MESSAGE_BYTES)) ||
        (rv = nng_socket_set_ms(sock, NNG_OPT_RECVTIMEO, 200)) || (rv = nng_listen(sock, url, NULL, 0)) != 0) {
        snprintf(err, errlen, "listen on %s: %s", url, nng_strerror(rv));
        return -1;
    }
    if (on_ready)
        on_ready(ctx);
    while (!*stop) {
        void *buf;
        size_t len;
        rv = nng_recv(sock, &buf, &len, NNG_FLAG_ALLOC);
        if (rv == NNG_ETIMEDOUT)
            continue;
        if (rv != 0) {
            snprintf(err, errlen, "receive: %s", nng_strerror(rv));
            nng_close(sock);
            return -1;
        }
        uint8_t *resp;
        size_t resp_len;
        int hrc = worker_handle(w, buf, len, &resp, &resp_len);
        nng_free(buf, len);
        if (hrc == 0) {
            nng_send(sock, resp, resp_len, 0);
            free(resp);
        }
    }
    nng_close(sock);
    return 0;
}
