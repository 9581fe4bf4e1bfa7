/* Running one completion request: render and tokenize the prompt, submit
 * one scheduler request per choice, turn token ids into text (stop
 * strings, reasoning, tool calls) and answer as one JSON body or as SSE. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "gateway_internal.h"
#include "utf8.h"

typedef struct {
    sched_stream *stream;
    detokenizer detok;
    stop_matcher stop;
    text_router router;
    strbuf text;      /* everything after stop handling (non-streaming) */
    json_t *logprobs; /* chat: content array; completions: built at the end */
    json_t *lp_tokens, *lp_values, *lp_tops;
    const char *finish; /* NULL while running */
    int completion_tokens, cached_tokens;
    bool stopped_by_string;
    char error[256];
} gen_choice;

typedef struct {
    gateway *g;
    struct mg_connection *conn;
    gen_request *r;
    gen_choice choices[GW_MAX_N];
    char id[48];
    long created;
    int n_prompt;
    bool client_gone;
    double t_start, t_last;
    bool first_token_seen;
} job;

static json_t *str_lossy(const char *s, size_t n) {
    char *clean = utf8_sanitize(s, n);
    json_t *j = json_string(clean ? clean : "");
    free(clean);
    return j;
}

static json_t *token_entry(gateway *g, int32_t id, float logprob, bool chat) {
    size_t n;
    const uint8_t *b = tokenizer_token_bytes(g->vocab, id, &n);
    json_t *bytes = json_array();
    for (size_t i = 0; b && i < n; i++)
        json_array_append_new(bytes, json_integer(b[i]));
    json_t *e = json_pack("{s:o,s:f}", "token", str_lossy(b ? (const char *)b : "", b ? n : 0), "logprob", logprob);
    if (chat)
        json_object_set_new(e, "bytes", bytes);
    else
        json_decref(bytes);
    return e;
}

/* ---- SSE ---- */

static bool sse_send(job *j, json_t *chunk) {
    char *text = json_dumps(chunk, JSON_COMPACT);
    json_decref(chunk);
    if (!text)
        return false;
    bool ok = !j->client_gone && mg_printf(j->conn, "data: %s\n\n", text) > 0;
    free(text);
    if (!ok)
        j->client_gone = true;
    return ok;
}

static json_t *chunk_base(job *j) {
    return json_pack("{s:s,s:s,s:I,s:s,s:[]}", "id", j->id, "object",
                     j->r->chat ? "chat.completion.chunk" : "text_completion", "created", (json_int_t)j->created,
                     "model", j->g->cfg.model_name, "choices");
}

static void send_delta(job *j, int index, const strbuf *reasoning, const strbuf *content, json_t *tool_calls,
                       json_t *logprobs, const char *finish) {
    if (!reasoning->len && !content->len && !tool_calls && !logprobs && !finish)
        return;
    json_t *c = chunk_base(j), *choice = json_pack("{s:i}", "index", index);
    if (j->r->chat) {
        json_t *delta = json_object();
        if (reasoning->len)
            json_object_set_new(delta, "reasoning_content", json_stringn(reasoning->data, reasoning->len));
        if (content->len)
            json_object_set_new(delta, "content", json_stringn(content->data, content->len));
        if (tool_calls) {
            size_t i;
            json_t *call;
            json_array_foreach(tool_calls, i, call) json_object_set_new(call, "index", json_integer((json_int_t)i));
            json_object_set(delta, "tool_calls", tool_calls);
        }
        json_object_set_new(choice, "delta", delta);
        json_object_set_new(choice, "logprobs", logprobs ? json_pack("{s:o}", "content", logprobs) : json_null());
    } else {
        json_object_set_new(choice, "text", json_stringn(content->data ? content->data : "", content->len));
        json_object_set_new(choice, "logprobs", logprobs ? logprobs : json_null());
    }
    json_object_set_new(choice, "finish_reason", finish ? json_string(finish) : json_null());
    json_array_append_new(json_object_get(c, "choices"), choice);
    sse_send(j, c);
}

/* ---- one token ---- */

static bool is_stop_token(gateway *g, int32_t id) {
    if (id == g->eos_id)
        return true;
    for (int i = 0; i < g->n_eot; i++)
        if (id == g->eot_ids[i])
            return true;
    return false;
}

/* Completions-style logprobs of one token, for a streamed chunk or the
 * whole response. */
static void add_completion_logprob(job *j, gen_choice *c, const sched_client_event *ev, json_t **stream_lp) {
    size_t n;
    const uint8_t *b = tokenizer_token_bytes(j->g->vocab, ev->token, &n);
    json_t *tops = json_object();
    for (int k = 0; k < ev->n_top && k < j->r->top_logprobs; k++) {
        size_t tn;
        const uint8_t *tb = tokenizer_token_bytes(j->g->vocab, ev->top_ids[k], &tn);
        char *key = utf8_sanitize(tb ? (const char *)tb : "", tb ? tn : 0);
        json_object_set_new(tops, key ? key : "", json_real(ev->top_logprobs[k]));
        free(key);
    }
    json_t *tok = str_lossy(b ? (const char *)b : "", b ? n : 0);
    if (stream_lp)
        *stream_lp =
            json_pack("{s:[O],s:[f],s:[O]}", "tokens", tok, "token_logprobs", ev->logprob, "top_logprobs", tops);
    json_array_append(c->lp_tokens, tok);
    json_array_append_new(c->lp_values, json_real(ev->logprob));
    json_array_append(c->lp_tops, tops);
    json_decref(tok), json_decref(tops);
}

static json_t *chat_logprob(job *j, const sched_client_event *ev) {
    json_t *e = token_entry(j->g, ev->token, ev->logprob, true), *tops = json_array();
    for (int k = 0; k < ev->n_top && k < j->r->top_logprobs; k++)
        json_array_append_new(tops, token_entry(j->g, ev->top_ids[k], ev->top_logprobs[k], true));
    json_object_set_new(e, "top_logprobs", tops);
    return e;
}

static void on_token(job *j, int index, const sched_client_event *ev) {
    gen_choice *c = &j->choices[index];
    gen_request *r = j->r;
    double now = clock_now();
    if (!j->first_token_seen)
        gw_metrics_ttft(j->g, now - j->t_start), j->first_token_seen = true;
    else
        gw_metrics_itl(j->g, now - j->t_last);
    j->t_last = now;
    if (c->stop.stopped)
        return; /* a stop string ended it; the cancel is on its way */
    strbuf piece = {0}, emitted = {0}, reasoning = {0}, content = {0};
    json_t *lp = NULL;
    if (!is_stop_token(j->g, ev->token) && !tokenizer_is_control(j->g->vocab, ev->token)) {
        size_t cap = 0;
        detok_push(&c->detok, ev->token, &piece.data, &piece.len, &cap);
        if (r->logprobs) {
            if (r->chat) {
                lp = json_array();
                json_array_append_new(lp, chat_logprob(j, ev));
                json_array_extend(c->logprobs, lp);
            } else {
                add_completion_logprob(j, c, ev, r->stream ? &lp : NULL);
            }
        }
    }
    if (stop_feed(&c->stop, piece.data ? piece.data : "", piece.len, &emitted)) {
        c->stopped_by_string = true;
        sched_client_cancel(c->stream);
    }
    if (r->stream) {
        if (r->chat)
            router_feed(&c->router, emitted.data ? emitted.data : "", emitted.len, &reasoning, &content);
        else
            strbuf_append(&content, emitted.data ? emitted.data : "", emitted.len);
        send_delta(j, index, &reasoning, &content, NULL, r->stream ? lp : NULL, NULL);
        lp = NULL;
    } else {
        strbuf_append(&c->text, emitted.data ? emitted.data : "", emitted.len);
    }
    json_decref(lp);
    strbuf_free(&piece), strbuf_free(&emitted), strbuf_free(&reasoning), strbuf_free(&content);
}

static void on_finish(job *j, int index, const sched_client_event *ev) {
    gen_choice *c = &j->choices[index];
    c->completion_tokens = ev->completion_tokens, c->cached_tokens = ev->cached_tokens;
    strbuf tail = {0}, rest = {0}, reasoning = {0}, content = {0};
    size_t cap = 0;
    detok_flush(&c->detok, &tail.data, &tail.len, &cap);
    if (!c->stopped_by_string) {
        stop_feed(&c->stop, tail.data ? tail.data : "", tail.len, &rest);
        stop_flush(&c->stop, &rest);
    }
    c->finish = c->stopped_by_string                ? "stop"
                : ev->finish == SCHED_CLIENT_STOP   ? "stop"
                : ev->finish == SCHED_CLIENT_LENGTH ? "length"
                : ev->finish == SCHED_CLIENT_ERROR  ? "error"
                                                    : "stop";
    if (ev->finish == SCHED_CLIENT_ERROR)
        snprintf(c->error, sizeof c->error, "%s", ev->error[0] ? ev->error : "generation failed");
    if (!j->r->stream) {
        strbuf_append(&c->text, rest.data ? rest.data : "", rest.len);
    } else {
        json_t *calls = NULL;
        if (j->r->chat) {
            router_feed(&c->router, rest.data ? rest.data : "", rest.len, &reasoning, &content);
            calls = router_finish(&c->router, &reasoning, &content);
        } else {
            strbuf_append(&content, rest.data ? rest.data : "", rest.len);
        }
        if (calls)
            c->finish = "tool_calls";
        if (ev->finish == SCHED_CLIENT_ERROR) {
            sse_send(j, json_pack("{s:{s:s,s:s,s:n,s:n}}", "error", "message", c->error, "type", "server_error",
                                  "param", "code"));
        } else {
            send_delta(j, index, &reasoning, &content, calls, NULL, NULL);
            strbuf none = {0};
            send_delta(j, index, &none, &none, NULL, NULL, c->finish);
        }
        json_decref(calls);
    }
    strbuf_free(&tail), strbuf_free(&rest), strbuf_free(&reasoning), strbuf_free(&content);
}

/* Handles one event of choice i; returns 1 when it finished the choice. */
static int on_event(job *j, int i, const sched_client_event *ev) {
    if (ev->token >= 0)
        on_token(j, i, ev);
    if (ev->finish == SCHED_CLIENT_NOT_FINISHED)
        return 0;
    on_finish(j, i, ev);
    return 1;
}

/* ---- the whole request ---- */

static json_t *usage_json(job *j) {
    int completion = 0, cached = 0;
    for (int i = 0; i < j->r->n; i++)
        completion += j->choices[i].completion_tokens, cached = j->choices[i].cached_tokens;
    return json_pack("{s:i,s:i,s:i,s:{s:i}}", "prompt_tokens", j->n_prompt, "completion_tokens", completion,
                     "total_tokens", j->n_prompt + completion, "prompt_tokens_details", "cached_tokens", cached);
}

static json_t *final_choice(job *j, int index) {
    gen_choice *c = &j->choices[index];
    gen_request *r = j->r;
    const char *text = c->text.data ? c->text.data : "";
    if (!r->chat) {
        json_t *lp = json_null();
        if (r->logprobs)
            lp = json_pack("{s:O,s:O,s:O}", "tokens", c->lp_tokens, "token_logprobs", c->lp_values, "top_logprobs",
                           c->lp_tops);
        return json_pack("{s:i,s:s,s:o,s:s}", "index", index, "text", text, "logprobs", lp, "finish_reason", c->finish);
    }
    text_router router;
    router_init(&router, r->reasoning, r->tools != NULL);
    strbuf reasoning = {0}, content = {0};
    router_feed(&router, text, c->text.len, &reasoning, &content);
    json_t *calls = router_finish(&router, &reasoning, &content);
    router_free(&router);
    json_t *msg = json_pack("{s:s}", "role", "assistant");
    json_object_set_new(msg, "content",
                        content.len || !calls ? json_stringn(content.data ? content.data : "", content.len)
                                              : json_null());
    if (reasoning.len)
        json_object_set_new(msg, "reasoning_content", json_stringn(reasoning.data, reasoning.len));
    if (calls)
        json_object_set_new(msg, "tool_calls", calls);
    strbuf_free(&reasoning), strbuf_free(&content);
    return json_pack("{s:i,s:o,s:o,s:s}", "index", index, "message", msg, "logprobs",
                     r->logprobs ? json_pack("{s:O}", "content", c->logprobs) : json_null(), "finish_reason",
                     calls ? "tool_calls" : c->finish);
}

/* Tokens of the prompt, or -1 with e set. */
static int prompt_ids(job *j, int32_t **ids, size_t *n, gw_error *e) {
    gen_request *r = j->r;
    char err[512];
    int rc;
    if (r->prompt_ids) {
        *ids = malloc(r->n_prompt_ids * sizeof **ids);
        if (!*ids)
            return -1;
        memcpy(*ids, r->prompt_ids, r->n_prompt_ids * sizeof **ids);
        *n = r->n_prompt_ids;
        for (size_t i = 0; i < *n; i++)
            if ((uint32_t)(*ids)[i] >= tokenizer_vocab_size(j->g->vocab)) {
                gw_error_set(e, 400, "invalid_request_error", "prompt", "token id %d is not in the vocabulary",
                             (*ids)[i]);
                return -1;
            }
        return 0;
    }
    if (r->chat) {
        char *vars = json_dumps(r->template_vars, JSON_COMPACT), *text = NULL;
        rc = vars ? tk_client_apply_template(j->g->tk, vars, strlen(vars), &text, ids, n, err, sizeof err) : -2;
        free(vars), free(text);
    } else {
        rc = tk_client_tokenize(j->g->tk, r->prompt_text, strlen(r->prompt_text), true, true, ids, n, err, sizeof err);
    }
    if (rc == -1)
        gw_error_set(e, 400, "invalid_request_error", r->chat ? "messages" : "prompt", "%s", err);
    else if (rc)
        gw_error_set(e, 503, "server_error", "", "tokenizer unavailable: %s", err);
    else if (*n == 0)
        gw_error_set(e, 400, "invalid_request_error", "prompt", "the prompt is empty");
    return rc || *n == 0 ? -1 : 0;
}

static uint32_t context_limit(gateway *g) {
    char err[256];
    Inferno__SchedulerResponse *s = sched_client_stats(g->sched, err, sizeof err);
    uint32_t ctx = s && s->stats->n_workers ? s->stats->max_context : 0;
    sched_client_stats_free(s);
    return ctx;
}

static int submit_all(job *j, const int32_t *ids, size_t n, gw_error *e) {
    gen_request *r = j->r;
    gateway *g = j->g;
    uint32_t ctx = context_limit(g);
    if (ctx == 0) {
        gw_error_set(e, 503, "server_error", "", "no worker is available");
        return -1;
    }
    if (n >= ctx || (r->max_tokens > 0 && n + (size_t)r->max_tokens > ctx)) {
        gw_error_set(e, 400, "invalid_request_error", r->chat ? "messages" : "prompt",
                     "This model's maximum context length is %u tokens. However, you requested %zu tokens (%zu in the "
                     "prompt, %d for the completion). Please reduce the length of the prompt or completion.",
                     ctx, n + (size_t)(r->max_tokens > 0 ? r->max_tokens : 0), n,
                     r->max_tokens > 0 ? r->max_tokens : 0);
        e->code = "context_length_exceeded";
        return -1;
    }
    int32_t stops[1 + GW_MAX_EOT];
    int n_stops = 0;
    stops[n_stops++] = g->eos_id;
    for (int i = 0; i < g->n_eot; i++)
        stops[n_stops++] = g->eot_ids[i];
    uint64_t seed = r->has_seed ? r->seed : ((uint64_t)rand() << 32) ^ (uint64_t)rand() ^ (uint64_t)time(NULL);
    for (int i = 0; i < r->n; i++) {
        sched_submit_args a = {.prompt = ids,
                               .n_prompt = (int32_t)n,
                               .max_tokens = r->max_tokens > 0 ? r->max_tokens : (int32_t)(ctx - n),
                               .stop_ids = stops,
                               .n_stop_ids = n_stops};
        sched_sampling *s = &a.sampling;
        s->temperature = r->temperature, s->top_p = r->top_p, s->top_k = r->top_k, s->min_p = r->min_p;
        s->presence_penalty = r->presence_penalty, s->frequency_penalty = r->frequency_penalty;
        s->repetition_penalty = r->repetition_penalty, s->seed = seed + (uint64_t)i;
        s->logprobs = r->logprobs ? (r->top_logprobs > 0 ? r->top_logprobs : 1) : 0;
        s->bias_ids = r->bias_ids, s->bias_values = r->bias_values, s->n_bias = r->n_bias;
        char err[256];
        int rc = sched_client_submit(g->sched, &a, &j->choices[i].stream, err, sizeof err);
        if (rc != SCHED_CLIENT_OK) {
            if (rc == SCHED_CLIENT_OVERLOADED)
                gw_error_set(e, 503, "server_overloaded", "", "the server is overloaded: %s; retry later", err);
            else if (rc == SCHED_CLIENT_INVALID)
                gw_error_set(e, 400, "invalid_request_error", "", "%s", err);
            else
                gw_error_set(e, 503, "server_error", "", "%s", err);
            return -1;
        }
    }
    return 0;
}

void gw_generate(gateway *g, struct mg_connection *conn, gen_request *r) {
    job *j = calloc(1, sizeof *j);
    gw_error e = {0};
    int32_t *ids = NULL;
    size_t n_ids = 0;
    if (!j) {
        gw_error_set(&e, 500, "server_error", "", "out of memory");
        gw_send_error(g, conn, &e);
        return;
    }
    j->g = g, j->conn = conn, j->r = r, j->created = (long)time(NULL), j->t_start = clock_now();
    snprintf(j->id, sizeof j->id, "%s-%08x%08x", r->chat ? "chatcmpl" : "cmpl", (unsigned)rand(), (unsigned)rand());
    for (int i = 0; i < r->n; i++) {
        gen_choice *c = &j->choices[i];
        detok_init(&c->detok, g->vocab);
        stop_init(&c->stop, r->stops, r->n_stops);
        router_init(&c->router, r->chat && r->reasoning, r->chat && r->tools);
        c->logprobs = json_array(), c->lp_tokens = json_array(), c->lp_values = json_array();
        c->lp_tops = json_array();
    }
    if (prompt_ids(j, &ids, &n_ids, &e) || submit_all(j, ids, n_ids, &e)) {
        gw_send_error(g, conn, &e);
        goto out;
    }
    j->n_prompt = (int)n_ids;
    if (r->stream) {
        gw_metrics_request(g, 200);
        mg_printf(conn, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                        "Connection: close\r\nX-Accel-Buffering: no\r\n\r\n");
        if (r->chat)
            for (int i = 0; i < r->n; i++) {
                json_t *c = chunk_base(j);
                json_array_append_new(json_object_get(c, "choices"),
                                      json_pack("{s:i,s:{s:s,s:s},s:n,s:n}", "index", i, "delta", "role", "assistant",
                                                "content", "", "logprobs", "finish_reason"));
                sse_send(j, c);
            }
    }
    /* gather events from every choice until all finish, the client leaves
     * or the request runs out of time */
    int running = r->n;
    double deadline = clock_now() + g->cfg.request_timeout_s, last_write = clock_now();
    while (running > 0 && !j->client_gone) {
        bool any = false;
        for (int i = 0; i < r->n; i++) {
            /* take what has arrived; while nothing has, wait a little */
            sched_client_event ev;
            while (!j->choices[i].finish && sched_client_next(j->choices[i].stream, &ev, any ? 0 : 20)) {
                any = true;
                running -= on_event(j, i, &ev);
            }
        }
        if (clock_now() > deadline) {
            for (int i = 0; i < r->n; i++)
                if (!j->choices[i].finish)
                    sched_client_cancel(j->choices[i].stream);
            deadline = clock_now() + 30; /* the cancels answer soon */
        }
        /* an idle stream still notices a client that left: SSE comments */
        if (r->stream && running > 0 && clock_now() - last_write > 2.0) {
            if (mg_printf(conn, ": keep-alive\n\n") <= 0)
                j->client_gone = true;
            last_write = clock_now();
        }
        if (any)
            last_write = clock_now();
    }
    long completion = 0;
    for (int i = 0; i < r->n; i++)
        completion += j->choices[i].completion_tokens;
    gw_metrics_tokens(g, (long)n_ids, completion);
    if (j->client_gone)
        goto out; /* sched_stream_free below cancels what still runs */
    if (r->stream) {
        if (r->include_usage) {
            json_t *c = chunk_base(j);
            json_object_set_new(c, "usage", usage_json(j));
            sse_send(j, c);
        }
        if (!j->client_gone)
            mg_printf(conn, "data: [DONE]\n\n");
        goto out;
    }
    for (int i = 0; i < r->n; i++)
        if (j->choices[i].error[0]) {
            /* the request was lost (a scheduler restart, no live worker): retryable */
            gw_error_set(&e, 503, "server_error", "", "%s", j->choices[i].error);
            gw_send_error(g, conn, &e);
            goto out;
        }
    json_t *body =
        json_pack("{s:s,s:s,s:I,s:s,s:[]}", "id", j->id, "object", r->chat ? "chat.completion" : "text_completion",
                  "created", (json_int_t)j->created, "model", g->cfg.model_name, "choices");
    for (int i = 0; i < r->n; i++)
        json_array_append_new(json_object_get(body, "choices"), final_choice(j, i));
    json_object_set_new(body, "usage", usage_json(j));
    gw_send_json(g, conn, 200, body);
out:
    for (int i = 0; i < r->n; i++) {
        gen_choice *c = &j->choices[i];
        sched_stream_free(c->stream);
        stop_free(&c->stop), router_free(&c->router), strbuf_free(&c->text);
        json_decref(c->logprobs), json_decref(c->lp_tokens), json_decref(c->lp_values), json_decref(c->lp_tops);
    }
    free(ids);
    free(j);
}
