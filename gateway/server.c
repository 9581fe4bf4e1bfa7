/* The gateway's HTTP side: civetweb setup, routing, auth, body limits,
 * OpenAI error objects, and the small endpoints (models, health, metrics,
 * tokenize, detokenize). Threading: see gateway.h. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "json_depth.h"
#include "gateway_internal.h"

static const char *status_text(int status) {
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Error";
    }
}

static void send_text(gateway *g, struct mg_connection *conn, int status, const char *type, const char *body,
                      size_t len) {
    const char *extra = status == 401 ? "WWW-Authenticate: Bearer\r\n" : status == 503 ? "Retry-After: 1\r\n" : "";
    /* Counted before the bytes go out, so that a client that has its answer
     * and then reads /metrics always finds it counted. */
    gw_metrics_request(g, status);
    mg_printf(conn, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s\r\n", status, status_text(status),
              type, len, extra);
    mg_write(conn, body, len);
}

void gw_send_json(gateway *g, struct mg_connection *conn, int status, json_t *body) {
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    send_text(g, conn, status, "application/json", text ? text : "{}", text ? strlen(text) : 2);
    free(text);
}

void gw_send_error(gateway *g, struct mg_connection *conn, const gw_error *e) {
    json_t *err = json_pack("{s:s,s:s}", "message", e->message, "type", e->type ? e->type : "server_error");
    json_object_set_new(err, "param", e->param[0] ? json_string(e->param) : json_null());
    json_object_set_new(err, "code", e->code ? json_string(e->code) : json_null());
    gw_send_json(g, conn, e->status, json_pack("{s:o}", "error", err));
}

/* The body, up to the configured limit; NULL with e set (413, 400). */
static char *read_body(gateway *g, struct mg_connection *conn, size_t *len, gw_error *e) {
    const struct mg_request_info *ri = mg_get_request_info(conn);
    if (ri->content_length > (long long)g->cfg.max_body_bytes) {
        gw_error_set(e, 413, "invalid_request_error", "", "request body of %lld bytes exceeds the limit of %zu",
                     ri->content_length, g->cfg.max_body_bytes);
        return NULL;
    }
    size_t cap = ri->content_length > 0 ? (size_t)ri->content_length + 1 : 4096, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) {
            gw_error_set(e, 500, "server_error", "", "out of memory");
            return NULL;
        }
        if (n + 1 >= cap) {
            char *b = cap > g->cfg.max_body_bytes + 1 ? NULL : realloc(buf, 2 * cap);
            if (!b) {
                free(buf);
                gw_error_set(e, 413, "invalid_request_error", "", "request body exceeds the limit of %zu bytes",
                             g->cfg.max_body_bytes);
                return NULL;
            }
            buf = b, cap *= 2;
        }
        int got = mg_read(conn, buf + n, cap - n - 1);
        if (got <= 0)
            break;
        n += (size_t)got;
        if (n > g->cfg.max_body_bytes) {
            free(buf);
            gw_error_set(e, 413, "invalid_request_error", "", "request body exceeds the limit of %zu bytes",
                         g->cfg.max_body_bytes);
            return NULL;
        }
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

static bool authorized(gateway *g, struct mg_connection *conn) {
    if (!g->cfg.api_key || !*g->cfg.api_key)
        return true;
    const char *h = mg_get_header(conn, "Authorization");
    return h && !strncmp(h, "Bearer ", 7) && !strcmp(h + 7, g->cfg.api_key);
}

static void handle_completion(gateway *g, struct mg_connection *conn, bool chat) {
    gw_error e = {0};
    size_t len;
    char *body = read_body(g, conn, &len, &e);
    if (!body) {
        gw_send_error(g, conn, &e);
        return;
    }
    gen_request r;
    if (gw_parse_request(g, body, len, chat, &r, &e))
        gw_send_error(g, conn, &e);
    else
        gw_generate(g, conn, &r);
    gw_request_free(&r);
    free(body);
}

static void handle_models(gateway *g, struct mg_connection *conn) {
    gw_send_json(g, conn, 200,
                 json_pack("{s:s,s:[{s:s,s:s,s:I,s:s}]}", "object", "list", "data", "id", g->cfg.model_name, "object",
                           "model", "created", (json_int_t)0, "owned_by", "inferno"));
}

static void handle_health(gateway *g, struct mg_connection *conn) {
    char err[256] = "";
    bool has_template;
    bool tk_ok = tk_client_info(g->tk, &has_template, err, sizeof err) == 0;
    Inferno__SchedulerResponse *s = sched_client_stats(g->sched, err, sizeof err);
    size_t workers = s ? s->stats->n_workers : 0;
    sched_client_stats_free(s);
    bool ok = tk_ok && s && workers > 0;
    gw_send_json(g, conn, ok ? 200 : 503,
                 json_pack("{s:s,s:b,s:b,s:i}", "status", ok ? "ok" : "unavailable", "tokenizer", tk_ok, "scheduler",
                           s != NULL, "workers", (int)workers));
}

static void handle_metrics(gateway *g, struct mg_connection *conn) {
    char *text = gw_metrics_render(g);
    send_text(g, conn, 200, "text/plain; version=0.0.4", text ? text : "", text ? strlen(text) : 0);
    free(text);
}

/* llama.cpp's server shapes: {"content": "..."} -> {"tokens": [...]} and back */
static void handle_tokenize(gateway *g, struct mg_connection *conn, bool detokenize) {
    gw_error e = {0};
    size_t len;
    char *body = read_body(g, conn, &len, &e);
    json_t *req = body && !json_nests_deeper(body, len, JSON_MAX_DEPTH) ? json_loadb(body, len, 0, NULL) : NULL;
    free(body);
    if (!body) {
        gw_send_error(g, conn, &e);
        return;
    }
    char err[512];
    json_t *content = json_object_get(req, "content"), *tokens = json_object_get(req, "tokens");
    if (!detokenize && json_is_string(content)) {
        int32_t *ids;
        size_t n;
        json_t *special = json_object_get(req, "parse_special");
        /* as llama.cpp's server: add_special puts the model's BOS in front */
        int rc = tk_client_tokenize(g->tk, json_string_value(content), json_string_length(content),
                                    special ? json_is_true(special) : true,
                                    json_is_true(json_object_get(req, "add_special")), &ids, &n, err, sizeof err);
        if (rc == 0) {
            json_t *arr = json_array();
            for (size_t i = 0; i < n; i++)
                json_array_append_new(arr, json_integer(ids[i]));
            free(ids);
            gw_send_json(g, conn, 200, json_pack("{s:o}", "tokens", arr));
        } else {
            gw_error_set(&e, rc == -1 ? 400 : 503, rc == -1 ? "invalid_request_error" : "server_error", "content", "%s",
                         err);
            gw_send_error(g, conn, &e);
        }
    } else if (detokenize && json_is_array(tokens)) {
        size_t n = json_array_size(tokens);
        int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
        for (size_t i = 0; ids && i < n; i++) {
            json_t *v = json_array_get(tokens, i);
            json_int_t id = json_integer_value(v);
            if (!json_is_integer(v) || id < 0 || id >= (json_int_t)tokenizer_vocab_size(g->vocab)) {
                free(ids), ids = NULL;
                break;
            }
            ids[i] = (int32_t)id;
        }
        char *text;
        size_t tlen;
        if (!ids) {
            gw_error_set(&e, 400, "invalid_request_error", "tokens", "tokens must be ids of this model's vocabulary");
            gw_send_error(g, conn, &e);
        } else if (tk_client_detokenize(g->tk, ids, n, &text, &tlen, err, sizeof err) == 0) {
            json_t *s = json_stringn(text, tlen);
            gw_send_json(g, conn, 200, json_pack("{s:o}", "content", s ? s : json_string("")));
            free(text);
        } else {
            gw_error_set(&e, 503, "server_error", "", "%s", err);
            gw_send_error(g, conn, &e);
        }
        free(ids);
    } else {
        gw_error_set(&e, 400, "invalid_request_error", detokenize ? "tokens" : "content",
                     detokenize ? "expected {\"tokens\": [ids]}" : "expected {\"content\": \"text\"}");
        gw_send_error(g, conn, &e);
    }
    json_decref(req);
}

static int route(struct mg_connection *conn, void *arg) {
    gateway *g = arg;
    const struct mg_request_info *ri = mg_get_request_info(conn);
    const char *uri = ri->local_uri ? ri->local_uri : "";
    bool post = !strcmp(ri->request_method, "POST"), get = !strcmp(ri->request_method, "GET");
    gw_error e = {0};
    static const struct {
        const char *path;
        bool post, open; /* open: no API key needed */
    } routes[] = {{"/v1/chat/completions", true, false},
                  {"/v1/completions", true, false},
                  {"/v1/models", false, false},
                  {"/health", false, true},
                  {"/metrics", false, true},
                  {"/tokenize", true, false},
                  {"/detokenize", true, false}};
    int k = -1;
    for (int i = 0; i < (int)(sizeof routes / sizeof *routes); i++)
        if (!strcmp(uri, routes[i].path))
            k = i;
    if (k < 0) {
        gw_error_set(&e, 404, "invalid_request_error", "", "no route %s %s", ri->request_method, uri);
        e.code = "not_found";
        gw_send_error(g, conn, &e);
        return 1;
    }
    if (!routes[k].open && !authorized(g, conn)) {
        gw_error_set(&e, 401, "invalid_request_error", "", "missing or wrong API key (Authorization: Bearer ...)");
        e.code = "invalid_api_key";
        gw_send_error(g, conn, &e);
        return 1;
    }
    if (routes[k].post ? !post : !get) {
        gw_error_set(&e, 405, "invalid_request_error", "", "%s takes %s", uri, routes[k].post ? "POST" : "GET");
        gw_send_error(g, conn, &e);
        return 1;
    }
    switch (k) {
    case 0: handle_completion(g, conn, true); break;
    case 1: handle_completion(g, conn, false); break;
    case 2: handle_models(g, conn); break;
    case 3: handle_health(g, conn); break;
    case 4: handle_metrics(g, conn); break;
    case 5: handle_tokenize(g, conn, false); break;
    case 6: handle_tokenize(g, conn, true); break;
    }
    return 1;
}

int gateway_start(const gateway_config *cfg, gateway **out, char *err, size_t errlen) {
    gateway *g = calloc(1, sizeof *g);
    if (!g || gw_metrics_init(g)) {
        snprintf(err, errlen, "out of memory");
        free(g);
        return -1;
    }
    g->cfg = *cfg;
    srand((unsigned)time(NULL) ^ (unsigned)clock());
    if (tokenizer_load_file(cfg->model_path, &g->vocab, err, errlen))
        goto fail;
    g->eos_id = tokenizer_eos(g->vocab);
    /* chat models end a turn with these too */
    static const char *eot[GW_MAX_EOT] = {"<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>"};
    for (int i = 0; i < GW_MAX_EOT; i++) {
        int32_t id = tokenizer_find(g->vocab, eot[i], strlen(eot[i]));
        if (id >= 0 && id != g->eos_id)
            g->eot_ids[g->n_eot++] = id;
    }
    if (tk_client_open(cfg->tokenizer_url, &g->tk, err, errlen) ||
        sched_client_open(cfg->scheduler_url, &g->sched, err, errlen))
        goto fail;
    char ports[160], threads[16], timeout[32];
    snprintf(ports, sizeof ports, "%s:%d", cfg->host, cfg->port);
    snprintf(threads, sizeof threads, "%d", cfg->threads);
    snprintf(timeout, sizeof timeout, "%lld", (long long)(cfg->io_timeout_s > 0 ? cfg->io_timeout_s : 30) * 1000);
    const char *options[] = {"listening_ports",
                             ports,
                             "num_threads",
                             threads,
                             "request_timeout_ms",
                             timeout,
                             "enable_keep_alive",
                             "yes",
                             "max_request_size",
                             "16384",
                             "decode_url",
                             "yes",
                             NULL};
    struct mg_callbacks cb = {0};
    mg_init_library(0);
    g->http = mg_start(&cb, g, options);
    if (!g->http) {
        snprintf(err, errlen, "cannot listen on %s (in use?)", ports);
        goto fail;
    }
    mg_set_request_handler(g->http, "/", route, g);
    *out = g;
    return 0;
fail:
    gateway_stop(g);
    return -1;
}

void gateway_stop(gateway *g) {
    if (!g)
        return;
    if (g->http)
        mg_stop(g->http);
    sched_client_close(g->sched);
    tk_client_close(g->tk);
    tokenizer_free(g->vocab);
    gw_metrics_free(g);
    free(g);
}
