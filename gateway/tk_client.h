/* The gateway's client of tokenizer-svc: render a chat template and
 * tokenize, tokenize plain text, detokenize, info. Thread-safe: each call
 * uses its own nng context on one shared REQ socket. */
#ifndef INFERNO_TK_CLIENT_H
#define INFERNO_TK_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tk_client tk_client;

int tk_client_open(const char *url, tk_client **out, char *err, size_t errlen);
void tk_client_close(tk_client *c);
/* How long a call waits for its answer (default 10 s). */
void tk_client_set_timeout(tk_client *c, int timeout_ms);

/* Each returns 0, -1 with err for a request the tokenizer refused (a bad
 * template variable, say), or -2 with err when it did not answer. */
int tk_client_apply_template(tk_client *c, const char *vars_json, size_t len, char **text, int32_t **ids, size_t *n_ids,
                             char *err, size_t errlen);
/* add_bos: start with BOS if the model asks for it (Gemma). */
int tk_client_tokenize(tk_client *c, const char *text, size_t len, bool parse_special, bool add_bos, int32_t **ids,
                       size_t *n_ids, char *err, size_t errlen);
int tk_client_detokenize(tk_client *c, const int32_t *ids, size_t n, char **text, size_t *len, char *err,
                         size_t errlen);
int tk_client_info(tk_client *c, bool *has_template, char *err, size_t errlen);

#endif
