/* tokenizer-svc client (see tk_client.h). */
#include "tk_client.h"

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inferno.pb-c.h"
#include "protocol.h"
#include "rpc.h"

#define TK_TIMEOUT_MS 10000

struct tk_client {
    nng_socket sock;
    int timeout_ms;
};

int tk_client_open(const char *url, tk_client **out, char *err, size_t errlen) {
    tk_client *c = calloc(1, sizeof *c);
    int rv = 0;
    if (!c || (rv = nng_req0_open(&c->sock))) {
        snprintf(err, errlen, "tokenizer client: %s", rv ? nng_strerror(rv) : "out of memory");
        free(c);
        return -1;
    }
    c->timeout_ms = TK_TIMEOUT_MS;
    nng_socket_set_size(c->sock, NNG_OPT_RECVMAXSZ, INFERNO_MAX_MESSAGE_BYTES);
    if ((rv = nng_dial(c->sock, url, NULL, NNG_FLAG_NONBLOCK))) {
        snprintf(err, errlen, "tokenizer client: dial %s: %s", url, nng_strerror(rv));
        nng_close(c->sock);
        free(c);
        return -1;
    }
    *out = c;
    return 0;
}

void tk_client_set_timeout(tk_client *c, int timeout_ms) { c->timeout_ms = timeout_ms; }

void tk_client_close(tk_client *c) {
    if (c) {
        nng_close(c->sock);
        free(c);
    }
}

/* One exchange; returns the response (checked for an Error body) or NULL. */
static Inferno__TokenizerResponse *call(tk_client *c, Inferno__TokenizerRequest *q, int *rc, char *err, size_t errlen) {
    q->version = INFERNO_PROTOCOL_VERSION;
    *rc = -2;
    Inferno__TokenizerResponse *r = (Inferno__TokenizerResponse *)rpc_call(
        c->sock, NULL, &q->base, &inferno__tokenizer_response__descriptor, c->timeout_ms, "tokenizer", err, errlen);
    if (!r)
        return NULL;
    if (r->body_case == INFERNO__TOKENIZER_RESPONSE__BODY_ERROR) {
        snprintf(err, errlen, "%s", r->error->message ? r->error->message : "tokenizer error");
        *rc = -1;
        inferno__tokenizer_response__free_unpacked(r, NULL);
        return NULL;
    }
    *rc = 0;
    return r;
}

static int copy_ids(const int32_t *src, size_t n, int32_t **ids, size_t *n_ids) {
    *ids = malloc((n ? n : 1) * sizeof **ids);
    if (!*ids)
        return -1;
    if (n)
        memcpy(*ids, src, n * sizeof **ids);
    *n_ids = n;
    return 0;
}

int tk_client_apply_template(tk_client *c, const char *vars_json, size_t len, char **text, int32_t **ids, size_t *n_ids,
                             char *err, size_t errlen) {
    Inferno__ApplyTemplateRequest a = INFERNO__APPLY_TEMPLATE_REQUEST__INIT;
    a.vars_json.data = (uint8_t *)vars_json, a.vars_json.len = len, a.tokenize = true;
    Inferno__TokenizerRequest q = INFERNO__TOKENIZER_REQUEST__INIT;
    q.body_case = INFERNO__TOKENIZER_REQUEST__BODY_APPLY_TEMPLATE, q.apply_template = &a;
    int rc;
    Inferno__TokenizerResponse *r = call(c, &q, &rc, err, errlen);
    if (!r)
        return rc;
    if (r->body_case != INFERNO__TOKENIZER_RESPONSE__BODY_APPLY_TEMPLATE) {
        inferno__tokenizer_response__free_unpacked(r, NULL);
        snprintf(err, errlen, "tokenizer: unexpected answer");
        return -2;
    }
    *text = strndup((const char *)r->apply_template->text.data, r->apply_template->text.len);
    rc = *text && !copy_ids(r->apply_template->ids, r->apply_template->n_ids, ids, n_ids) ? 0 : -2;
    inferno__tokenizer_response__free_unpacked(r, NULL);
    return rc;
}

int tk_client_tokenize(tk_client *c, const char *text, size_t len, bool parse_special, bool add_bos, int32_t **ids,
                       size_t *n_ids, char *err, size_t errlen) {
    Inferno__TokenizeRequest t = INFERNO__TOKENIZE_REQUEST__INIT;
    t.text.data = (uint8_t *)text, t.text.len = len, t.parse_special = parse_special, t.add_bos = add_bos;
    Inferno__TokenizerRequest q = INFERNO__TOKENIZER_REQUEST__INIT;
    q.body_case = INFERNO__TOKENIZER_REQUEST__BODY_TOKENIZE, q.tokenize = &t;
    int rc;
    Inferno__TokenizerResponse *r = call(c, &q, &rc, err, errlen);
    if (!r)
        return rc;
    rc = r->body_case == INFERNO__TOKENIZER_RESPONSE__BODY_TOKENIZE &&
                 !copy_ids(r->tokenize->ids, r->tokenize->n_ids, ids, n_ids)
             ? 0
             : -2;
    inferno__tokenizer_response__free_unpacked(r, NULL);
    return rc;
}

int tk_client_detokenize(tk_client *c, const int32_t *ids, size_t n, char **text, size_t *len, char *err,
                         size_t errlen) {
    Inferno__DetokenizeRequest d = INFERNO__DETOKENIZE_REQUEST__INIT;
    d.ids = (int32_t *)ids, d.n_ids = n;
    Inferno__TokenizerRequest q = INFERNO__TOKENIZER_REQUEST__INIT;
    q.body_case = INFERNO__TOKENIZER_REQUEST__BODY_DETOKENIZE, q.detokenize = &d;
    int rc;
    Inferno__TokenizerResponse *r = call(c, &q, &rc, err, errlen);
    if (!r)
        return rc;
    if (r->body_case != INFERNO__TOKENIZER_RESPONSE__BODY_DETOKENIZE) {
        inferno__tokenizer_response__free_unpacked(r, NULL);
        return -2;
    }
    *len = r->detokenize->text.len;
    *text = malloc(*len + 1);
    if (*text) {
        memcpy(*text, r->detokenize->text.data, *len);
        (*text)[*len] = 0;
    }
    inferno__tokenizer_response__free_unpacked(r, NULL);
    return *text ? 0 : -2;
}

int tk_client_info(tk_client *c, bool *has_template, char *err, size_t errlen) {
    Inferno__TokenizerInfoRequest i = INFERNO__TOKENIZER_INFO_REQUEST__INIT;
    Inferno__TokenizerRequest q = INFERNO__TOKENIZER_REQUEST__INIT;
    q.body_case = INFERNO__TOKENIZER_REQUEST__BODY_INFO, q.info = &i;
    int rc;
    Inferno__TokenizerResponse *r = call(c, &q, &rc, err, errlen);
    if (!r)
        return rc;
    rc = r->body_case == INFERNO__TOKENIZER_RESPONSE__BODY_INFO ? 0 : -2;
    if (!rc)
        *has_template = r->info->has_chat_template;
    inferno__tokenizer_response__free_unpacked(r, NULL);
    return rc;
}
