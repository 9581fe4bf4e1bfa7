/* Shared by the gateway's files: server.c (HTTP, routing, errors, the small
 * endpoints), request.c (parsing OpenAI requests), generate.c (running
 * one: tokens in, text and SSE out), metrics.c. */
#ifndef INFERNO_GATEWAY_INTERNAL_H
#define INFERNO_GATEWAY_INTERNAL_H

#include <civetweb.h>
#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "gateway.h"
#include "sched_client.h"
#include "textproc.h"
#include "tk_client.h"
#include "tokenizer.h"

#define GW_MAX_N    16
#define GW_MAX_BIAS 300 /* from the request; ignore_eos adds the model's end ids */
#define GW_MAX_EOT  4   /* end-of-turn ids besides EOS */

struct gateway {
    gateway_config cfg;
    struct mg_context *http;
    sched_client *sched;
    tk_client *tk;
    tokenizer *vocab;
    int32_t eos_id, eot_ids[GW_MAX_EOT];
    int n_eot;
    pthread_mutex_t metrics_mu;
    struct gw_metrics *metrics;
};

/* An OpenAI error: HTTP status, type, message, the parameter at fault. */
typedef struct {
    int status;
    const char *type, *code;
    char param[64];
    char message[512];
} gw_error;

void gw_error_set(gw_error *e, int status, const char *type, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Writes e as an OpenAI error response and counts it. */
void gw_send_error(gateway *g, struct mg_connection *conn, const gw_error *e);
void gw_send_json(gateway *g, struct mg_connection *conn, int status, json_t *body);

/* A parsed /v1/chat/completions or /v1/completions request. */
typedef struct {
    bool chat;
    json_t *body;             /* owned */
    json_t *messages, *tools; /* borrowed from body */
    json_t *template_vars;    /* owned: what the chat template renders */
    const char *prompt_text;  /* completions */
    int32_t *prompt_ids;      /* completions given ids; owned */
    size_t n_prompt_ids;
    int max_tokens; /* -1: up to the context */
    float temperature, top_p, min_p, presence_penalty, frequency_penalty, repetition_penalty;
    int top_k;
    bool has_seed;
    uint64_t seed;
    const char *stops[4];
    int n_stops;
    int n;
    bool logprobs;
    int top_logprobs;
    int32_t bias_ids[GW_MAX_BIAS + 1 + GW_MAX_EOT];
    float bias_values[GW_MAX_BIAS + 1 + GW_MAX_EOT];
    int n_bias;
    bool ignore_eos; /* llama.cpp's and vLLM's extension: end ids are never sampled */
    bool stream, include_usage;
    bool reasoning; /* split <think> into reasoning_content */
} gen_request;

int gw_parse_request(gateway *g, const char *body, size_t len, bool chat, gen_request *r, gw_error *e);
void gw_request_free(gen_request *r);

/* Runs a parsed request and writes the whole response. */
void gw_generate(gateway *g, struct mg_connection *conn, gen_request *r);

/* metrics.c */
int gw_metrics_init(gateway *g);
void gw_metrics_free(gateway *g);
void gw_metrics_request(gateway *g, int status);
void gw_metrics_ttft(gateway *g, double seconds);
void gw_metrics_itl(gateway *g, double seconds);
void gw_metrics_tokens(gateway *g, long prompt, long completion);
/* Prometheus text, the scheduler's figures included; malloc'ed. */
char *gw_metrics_render(gateway *g);

#endif
