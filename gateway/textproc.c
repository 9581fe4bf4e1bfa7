/* Stop strings, reasoning and tool-call parsing (see textproc.h). */
#include "json_depth.h"
#include "textproc.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int strbuf_append(strbuf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = 2 * (b->len + n) + 64;
        char *d = realloc(b->data, cap);
        if (!d)
            return -1;
        b->data = d, b->cap = cap;
    }
    if (n)
        memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
    return 0;
}

void strbuf_free(strbuf *b) {
    free(b->data);
    *b = (strbuf){0};
}

/* Drops the first n bytes of b. */
static void strbuf_consume(strbuf *b, size_t n) {
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    if (b->data)
        b->data[b->len] = 0;
}

static const char *find_bytes(const char *h, size_t hn, const char *needle, size_t nn) {
    if (nn == 0 || nn > hn)
        return NULL;
    for (size_t i = 0; i + nn <= hn; i++)
        if (h[i] == needle[0] && !memcmp(h + i, needle, nn))
            return h + i;
    return NULL;
}

/* Length of the longest suffix of text that is a proper prefix of word. */
static size_t partial_suffix(const char *text, size_t len, const char *word) {
    size_t wl = strlen(word);
    for (size_t k = wl - 1 < len ? wl - 1 : len; k > 0; k--)
        if (!memcmp(text + len - k, word, k))
            return k;
    return 0;
}

void stop_init(stop_matcher *m, const char *const *stops, int n_stops) {
    *m = (stop_matcher){0};
    for (int i = 0; i < n_stops && m->n_stops < STOP_MAX; i++)
        if (stops[i] && stops[i][0])
            m->stops[m->n_stops++] = stops[i];
}

bool stop_feed(stop_matcher *m, const char *text, size_t len, strbuf *emit) {
    if (m->stopped)
        return true;
    strbuf_append(&m->pending, text, len);
    const char *first = NULL;
    for (int i = 0; i < m->n_stops; i++) {
        const char *at = find_bytes(m->pending.data, m->pending.len, m->stops[i], strlen(m->stops[i]));
        if (at && (!first || at < first))
            first = at;
    }
    if (first) {
        strbuf_append(emit, m->pending.data, (size_t)(first - m->pending.data));
        m->pending.len = 0;
        m->stopped = true;
        return true;
    }
    size_t hold = 0;
    for (int i = 0; i < m->n_stops; i++) {
        size_t k = partial_suffix(m->pending.data, m->pending.len, m->stops[i]);
        hold = k > hold ? k : hold;
    }
    strbuf_append(emit, m->pending.data, m->pending.len - hold);
    strbuf_consume(&m->pending, m->pending.len - hold);
    return false;
}

void stop_flush(stop_matcher *m, strbuf *emit) {
    if (!m->stopped && m->pending.len)
        strbuf_append(emit, m->pending.data, m->pending.len);
    m->pending.len = 0;
}

void stop_free(stop_matcher *m) { strbuf_free(&m->pending); }

/* ---- reasoning and tool calls ---- */

static const char THINK_OPEN[] = "<think>", THINK_CLOSE[] = "</think>", TOOL_OPEN[] = "<tool_call>",
                  TOOL_CLOSE[] = "</tool_call>";

void router_init(text_router *r, bool reasoning, bool tools) {
    *r = (text_router){.state = reasoning ? ROUTE_START : ROUTE_CONTENT, .reasoning = reasoning, .tools = tools};
}

static size_t skip_space(const char *s, size_t n) {
    size_t i = 0;
    while (i < n && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t'))
        i++;
    return i;
}

void router_feed(text_router *r, const char *text, size_t len, strbuf *reasoning, strbuf *content) {
    strbuf_append(&r->held, text, len);
    for (;;) {
        strbuf *h = &r->held;
        if (r->state == ROUTE_START) {
            size_t ws = skip_space(h->data, h->len), rest = h->len - ws;
            if (rest < sizeof THINK_OPEN - 1 && !memcmp(h->data + ws, THINK_OPEN, rest))
                return; /* could still become <think> */
            if (!memcmp(h->data + ws, THINK_OPEN, sizeof THINK_OPEN - 1)) {
                strbuf_consume(h, ws + sizeof THINK_OPEN - 1);
                r->state = ROUTE_THINK;
            } else {
                r->state = ROUTE_CONTENT;
            }
            continue;
        }
        if (r->state == ROUTE_THINK) {
            const char *end = find_bytes(h->data, h->len, THINK_CLOSE, sizeof THINK_CLOSE - 1);
            if (end) {
                strbuf_append(reasoning, h->data, (size_t)(end - h->data));
                strbuf_consume(h, (size_t)(end - h->data) + sizeof THINK_CLOSE - 1);
                r->state = ROUTE_CONTENT;
                r->trim = true;
                continue;
            }
            size_t hold = partial_suffix(h->data, h->len, THINK_CLOSE);
            strbuf_append(reasoning, h->data, h->len - hold);
            strbuf_consume(h, h->len - hold);
            return;
        }
        if (r->state == ROUTE_CONTENT) {
            if (r->trim) { /* the blank lines after </think> are not content */
                strbuf_consume(h, skip_space(h->data, h->len));
                if (h->len == 0)
                    return;
                r->trim = false;
            }
            if (!r->tools) {
                strbuf_append(content, h->data, h->len);
                strbuf_consume(h, h->len);
                return;
            }
            const char *call = find_bytes(h->data, h->len, TOOL_OPEN, sizeof TOOL_OPEN - 1);
            if (call) {
                strbuf_append(content, h->data, (size_t)(call - h->data));
                strbuf_consume(h, (size_t)(call - h->data));
                r->state = ROUTE_TOOLS;
                return;
            }
            size_t hold = partial_suffix(h->data, h->len, TOOL_OPEN);
            strbuf_append(content, h->data, h->len - hold);
            strbuf_consume(h, h->len - hold);
            return;
        }
        return; /* ROUTE_TOOLS: everything waits for the end */
    }
}

json_t *router_finish(text_router *r, strbuf *reasoning, strbuf *content) {
    json_t *calls = NULL;
    if (r->state == ROUTE_TOOLS)
        calls = parse_tool_calls(r->held.data, r->held.len, content);
    else if (r->state == ROUTE_THINK)
        strbuf_append(reasoning, r->held.data, r->held.len);
    else
        strbuf_append(content, r->held.data, r->held.len);
    r->held.len = 0;
    return calls;
}

void router_free(text_router *r) { strbuf_free(&r->held); }

static void append_trimmed(strbuf *content, const char *s, size_t n) {
    size_t a = skip_space(s, n);
    while (n > a && (s[n - 1] == ' ' || s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == '\t'))
        n--;
    strbuf_append(content, s + a, n - a);
}

json_t *parse_tool_calls(const char *text, size_t len, strbuf *content) {
    json_t *calls = json_array();
    size_t at = 0;
    while (at < len) {
        const char *open = find_bytes(text + at, len - at, TOOL_OPEN, sizeof TOOL_OPEN - 1);
        if (!open) {
            append_trimmed(content, text + at, len - at);
            break;
        }
        append_trimmed(content, text + at, (size_t)(open - (text + at)));
        const char *body = open + sizeof TOOL_OPEN - 1;
        const char *close = find_bytes(body, (size_t)(text + len - body), TOOL_CLOSE, sizeof TOOL_CLOSE - 1);
        size_t body_len = close ? (size_t)(close - body) : (size_t)(text + len - body);
        json_error_t je;
        json_t *call = json_nests_deeper(body, body_len, JSON_MAX_DEPTH) ? NULL : json_loadb(body, body_len, 0, &je);
        json_t *name = json_object_get(call, "name"), *args = json_object_get(call, "arguments");
        if (json_is_string(name)) {
            char *args_text = args ? json_dumps(args, JSON_COMPACT | JSON_ENCODE_ANY) : strdup("{}");
            char id[40];
            snprintf(id, sizeof id, "call_%08x%04zx", (unsigned)rand(), json_array_size(calls));
            json_array_append_new(calls, json_pack("{s:s,s:s,s:{s:o,s:s}}", "id", id, "type", "function", "function",
                                                   "name", json_copy(name), "arguments", args_text ? args_text : "{}"));
            free(args_text);
        } else { /* not a call after all: keep it as text */
            append_trimmed(content, open, (size_t)(body + body_len - open) + (close ? sizeof TOOL_CLOSE - 1 : 0));
        }
        json_decref(call);
        at = (size_t)(body + body_len - text) + (close ? sizeof TOOL_CLOSE - 1 : 0);
    }
    if (json_array_size(calls) == 0) {
        json_decref(calls);
        return NULL;
    }
    return calls;
}
