/* The gateway: the OpenAI HTTP API (JSON and SSE) over civetweb, in front
 * of tokenizer-svc and scheduler-svc.
 *
 * Threading: civetweb's pool runs each HTTP request on its own thread from
 * start to end (a streaming request holds its thread while it streams); the
 * scheduler client's poller thread feeds every stream's tokens; shared
 * state is the metrics (one mutex) and the immutable configuration and
 * vocabulary. */
#ifndef INFERNO_GATEWAY_H
#define INFERNO_GATEWAY_H

#include <stddef.h>

typedef struct gateway gateway;

typedef struct {
    const char *host; /* default 127.0.0.1 */
    int port;         /* default 8080 */
    const char *scheduler_url;
    const char *tokenizer_url;
    const char *model_path; /* its vocabulary, for streaming detokenization */
    const char *model_name; /* the "model" the API reports and accepts */
    const char *api_key;    /* NULL: no auth */
    size_t max_body_bytes;  /* default 4 MiB */
    int request_timeout_s;  /* default 600 */
    int io_timeout_s;       /* one socket read or write; default 30 */
    int threads;            /* concurrent HTTP connections (default 128) */
} gateway_config;

int gateway_start(const gateway_config *cfg, gateway **out, char *err, size_t errlen);
void gateway_stop(gateway *g);

#endif
