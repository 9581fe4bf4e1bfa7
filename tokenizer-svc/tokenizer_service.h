/* The tokenizer service: answers TokenizerRequest messages (tokenize,
 * detokenize, apply the chat template, info) over an nng REP socket.
 *
 * Threading: the socket has n_workers contexts, each a small state machine
 * (receive, handle, send) driven by nng's own thread pool through aio
 * callbacks, so up to n_workers requests are handled at once. Handling
 * reads only immutable state (the tokenizer, the compiled template), so
 * there are no locks. */
#ifndef INFERNO_TOKENIZER_SERVICE_H
#define INFERNO_TOKENIZER_SERVICE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "jinja.h"
#include "tokenizer.h"

typedef struct tokenizer_service tokenizer_service;

/* What a request is answered from; template may be NULL (no chat template). */
typedef struct {
    const tokenizer *tk;
    const jinja_template *chat_template;
    const char *model_path;
} tokenizer_service_state;

/* Adds bos_token and eos_token (the tokens' text) to a chat template's
 * variables unless the caller set them, as transformers does: Gemma's
 * template starts with {{ bos_token }}. -1 on out of memory. */
int tokenizer_template_vars(const tokenizer *tk, json_t *vars);

/* Handles one packed TokenizerRequest and returns the packed response
 * (malloc'ed). Never fails on bad input: a malformed request gets an Error
 * response. Returns -1 only when out of memory. */
int tokenizer_service_handle(const tokenizer_service_state *st, const uint8_t *req, size_t req_len, uint8_t **resp,
                             size_t *resp_len);

/* Listens on url (ipc://, tcp://, inproc://) with n_workers contexts. */
int tokenizer_service_start(const tokenizer_service_state *st, const char *url, int n_workers, tokenizer_service **out,
                            char *err, size_t errlen);
void tokenizer_service_stop(tokenizer_service *svc);

#endif
