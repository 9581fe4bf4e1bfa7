/* Tokenizer service: request handling and the nng REP socket. Threading
 * model in service.h. */
#include "json_depth.h"
#include "tokenizer_service.h"

#include <jansson.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inferno.pb-c.h"
#include "protocol.h"

typedef Inferno__TokenizerRequest Request;
typedef Inferno__TokenizerResponse Response;

/* ---- request handling ---- */

static void set_error(Response *r, Inferno__Error *e, Inferno__ErrorCode code, const char *msg) {
    e->code = code;
    e->message = (char *)msg;
    r->body_case = INFERNO__TOKENIZER_RESPONSE__BODY_ERROR;
    r->error = e;
}

static int pack(const Response *r, uint8_t **out, size_t *len) {
    *len = inferno__tokenizer_response__get_packed_size(r);
    *out = malloc(*len ? *len : 1);
    if (!*out)
        return -1;
    inferno__tokenizer_response__pack(r, *out);
    return 0;
}

int tokenizer_template_vars(const tokenizer *tk, json_t *vars) {
    const char *keys[2] = {"bos_token", "eos_token"};
    int32_t ids[2] = {tokenizer_bos(tk), tokenizer_eos(tk)};
    for (int i = 0; i < 2; i++) {
        size_t n;
        const uint8_t *text = ids[i] >= 0 ? tokenizer_token_bytes(tk, ids[i], &n) : NULL;
        if (text && !json_object_get(vars, keys[i]) &&
            json_object_set_new(vars, keys[i], json_stringn((const char *)text, n)))
            return -1;
    }
    return 0;
}

int tokenizer_service_handle(const tokenizer_service_state *st, const uint8_t *req_bytes, size_t req_len,
                             uint8_t **resp, size_t *resp_len) {
    Response r = INFERNO__TOKENIZER_RESPONSE__INIT;
    Inferno__Error e = INFERNO__ERROR__INIT;
    Inferno__TokenizeResponse tok = INFERNO__TOKENIZE_RESPONSE__INIT;
    Inferno__DetokenizeResponse detok = INFERNO__DETOKENIZE_RESPONSE__INIT;
    Inferno__ApplyTemplateResponse tmpl = INFERNO__APPLY_TEMPLATE_RESPONSE__INIT;
    Inferno__TokenizerInfoResponse info = INFERNO__TOKENIZER_INFO_RESPONSE__INIT;
    r.version = INFERNO_PROTOCOL_VERSION;
    token_list ids = {0};
    char *text = NULL, *rendered = NULL, msg[1100];
    size_t text_len = 0;

    Request *q = inferno__tokenizer_request__unpack(NULL, req_len, req_bytes);
    if (!q) {
        set_error(&r, &e, INFERNO__ERROR_CODE__ERROR_BAD_REQUEST, "malformed TokenizerRequest");
        goto reply;
    }
    r.request_id = q->request_id;
    if (q->version != INFERNO_PROTOCOL_VERSION) {
        snprintf(msg, sizeof msg, "protocol version %u not supported (this service speaks %d)", q->version,
                 INFERNO_PROTOCOL_VERSION);
        set_error(&r, &e, INFERNO__ERROR_CODE__ERROR_VERSION, msg);
        goto reply;
    }
    switch (q->body_case) {
    case INFERNO__TOKENIZER_REQUEST__BODY_TOKENIZE: {
        const Inferno__TokenizeRequest *t = q->tokenize;
        if (t->add_bos && tokenizer_adds_bos(st->tk) && token_list_push(&ids, tokenizer_bos(st->tk)))
            goto oom;
        if (tokenizer_encode(st->tk, (const char *)t->text.data, t->text.len, t->parse_special, &ids))
            goto oom;
        tok.n_ids = ids.n, tok.ids = ids.ids;
        r.body_case = INFERNO__TOKENIZER_RESPONSE__BODY_TOKENIZE, r.tokenize = &tok;
        break;
    }
    case INFERNO__TOKENIZER_REQUEST__BODY_DETOKENIZE: {
        const Inferno__DetokenizeRequest *d = q->detokenize;
        for (size_t i = 0; i < d->n_ids; i++) {
            if (d->ids[i] < 0 || (uint32_t)d->ids[i] >= tokenizer_vocab_size(st->tk)) {
                snprintf(msg, sizeof msg, "token id %d out of range (vocabulary of %u)", d->ids[i],
                         tokenizer_vocab_size(st->tk));
                set_error(&r, &e, INFERNO__ERROR_CODE__ERROR_BAD_REQUEST, msg);
                goto reply;
            }
            if ((!d->skip_special || !tokenizer_is_control(st->tk, d->ids[i])) && token_list_push(&ids, d->ids[i]))
                goto oom;
        }
        if (tokenizer_decode(st->tk, ids.ids, ids.n, &text, &text_len))
            goto oom;
        detok.text.data = (uint8_t *)text, detok.text.len = text_len;
        r.body_case = INFERNO__TOKENIZER_RESPONSE__BODY_DETOKENIZE, r.detokenize = &detok;
        break;
    }
    case INFERNO__TOKENIZER_REQUEST__BODY_APPLY_TEMPLATE: {
        const Inferno__ApplyTemplateRequest *a = q->apply_template;
        if (!st->chat_template) {
            set_error(&r, &e, INFERNO__ERROR_CODE__ERROR_TEMPLATE, "the model has no chat template");
            goto reply;
        }
        json_error_t je = {.text = "nested too deeply"};
        json_t *vars = json_nests_deeper((const char *)a->vars_json.data, a->vars_json.len, JSON_MAX_DEPTH)
                           ? NULL
                           : json_loadb((const char *)a->vars_json.data, a->vars_json.len, 0, &je);
        if (!json_is_object(vars)) {
            snprintf(msg, sizeof msg, "vars_json is not a JSON object: %s", vars ? "wrong type" : je.text);
            json_decref(vars);
            set_error(&r, &e, INFERNO__ERROR_CODE__ERROR_BAD_REQUEST, msg);
            goto reply;
        }
        size_t len;
        if (tokenizer_template_vars(st->tk, vars)) {
            json_decref(vars);
            goto oom;
        }
        int rc = jinja_render(st->chat_template, vars, NULL, &rendered, &len, msg, sizeof msg);
        json_decref(vars);
        if (rc) {
            set_error(&r, &e, INFERNO__ERROR_CODE__ERROR_TEMPLATE, msg);
            goto reply;
        }
        if (a->tokenize && tokenizer_encode(st->tk, rendered, len, true, &ids))
            goto oom;
        tmpl.text.data = (uint8_t *)rendered, tmpl.text.len = len;
        tmpl.n_ids = ids.n, tmpl.ids = ids.ids;
        r.body_case = INFERNO__TOKENIZER_RESPONSE__BODY_APPLY_TEMPLATE, r.apply_template = &tmpl;
        break;
    }
    case INFERNO__TOKENIZER_REQUEST__BODY_INFO:
        info.vocab_size = tokenizer_vocab_size(st->tk);
        info.bos_id = tokenizer_bos(st->tk);
        info.eos_id = tokenizer_eos(st->tk);
        info.has_chat_template = st->chat_template != NULL;
        info.model_path = (char *)(st->model_path ? st->model_path : "");
        r.body_case = INFERNO__TOKENIZER_RESPONSE__BODY_INFO, r.info = &info;
        break;
    default: set_error(&r, &e, INFERNO__ERROR_CODE__ERROR_BAD_REQUEST, "request has no body"); break;
    }
reply:;
    int rc = pack(&r, resp, resp_len);
    if (q)
        inferno__tokenizer_request__free_unpacked(q, NULL);
    token_list_free(&ids);
    free(text);
    free(rendered);
    return rc;
oom:
    set_error(&r, &e, INFERNO__ERROR_CODE__ERROR_INTERNAL, "out of memory");
    goto reply;
}

/* ---- nng ---- */

struct worker {
    tokenizer_service *svc;
    nng_aio *aio;
    nng_ctx ctx;
    bool sending;
};

struct tokenizer_service {
    tokenizer_service_state st;
    nng_socket sock;
    struct worker *workers;
    int n_workers;
};

static void worker_cb(void *arg) {
    struct worker *w = arg;
    int rv = nng_aio_result(w->aio);
    if (w->sending) {
        if (rv != 0)
            nng_msg_free(nng_aio_get_msg(w->aio)); /* not sent: still ours */
        w->sending = false;
        nng_ctx_recv(w->ctx, w->aio);
        return;
    }
    if (rv == NNG_ECLOSED || rv == NNG_ECANCELED)
        return;
    if (rv != 0) {
        nng_ctx_recv(w->ctx, w->aio);
        return;
    }
    nng_msg *in = nng_aio_get_msg(w->aio), *out = NULL;
    uint8_t *resp = NULL;
    size_t len = 0;
    if (tokenizer_service_handle(&w->svc->st, nng_msg_body(in), nng_msg_len(in), &resp, &len) ||
        nng_msg_alloc(&out, len) != 0) {
        /* out of memory: drop this request; the client's retry or timeout handles it */
        nng_msg_free(in);
        free(resp);
        nng_ctx_recv(w->ctx, w->aio);
        return;
    }
    nng_msg_free(in);
    memcpy(nng_msg_body(out), resp, len);
    free(resp);
    nng_aio_set_msg(w->aio, out);
    w->sending = true;
    nng_ctx_send(w->ctx, w->aio);
}

int tokenizer_service_start(const tokenizer_service_state *st, const char *url, int n_workers, tokenizer_service **out,
                            char *err, size_t errlen) {
    *out = NULL;
    tokenizer_service *svc = calloc(1, sizeof *svc);
    if (!svc) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    svc->st = *st;
    int rv;
    if ((rv = nng_rep0_open(&svc->sock)) != 0) {
        snprintf(err, errlen, "nng_rep0_open: %s", nng_strerror(rv));
        free(svc);
        return -1;
    }
    nng_socket_set_size(svc->sock, NNG_OPT_RECVMAXSZ, INFERNO_MAX_MESSAGE_BYTES);
    svc->workers = calloc((size_t)n_workers, sizeof *svc->workers);
    svc->n_workers = n_workers;
    for (int i = 0; i < n_workers && svc->workers; i++) {
        struct worker *w = &svc->workers[i];
        w->svc = svc;
        if ((rv = nng_aio_alloc(&w->aio, worker_cb, w)) != 0 || (rv = nng_ctx_open(&w->ctx, svc->sock)) != 0) {
            snprintf(err, errlen, "nng context: %s", nng_strerror(rv));
            tokenizer_service_stop(svc);
            return -1;
        }
    }
    if ((rv = nng_listen(svc->sock, url, NULL, 0)) != 0) {
        snprintf(err, errlen, "listen on %s: %s", url, nng_strerror(rv));
        tokenizer_service_stop(svc);
        return -1;
    }
    for (int i = 0; i < n_workers; i++)
        nng_ctx_recv(svc->workers[i].ctx, svc->workers[i].aio);
    *out = svc;
    return 0;
}

void tokenizer_service_stop(tokenizer_service *svc) {
    if (!svc)
        return;
    nng_close(svc->sock);
    for (int i = 0; svc->workers && i < svc->n_workers; i++) {
        if (svc->workers[i].aio) {
            nng_aio_stop(svc->workers[i].aio);
            nng_aio_free(svc->workers[i].aio);
        }
    }
    free(svc->workers);
    free(svc);
}
