/* Text the model generates, on its way to the client: stop strings (never
 * part of the output, even when one spans tokens), Qwen3 reasoning
 * (<think>...</think> -> reasoning_content) and tool calls
 * (<tool_call>{json}</tool_call> -> tool_calls). Pure functions of text, so
 * they are tested without a model. */
#ifndef INFERNO_TEXTPROC_H
#define INFERNO_TEXTPROC_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct {
    char *data;
    size_t len, cap;
} strbuf;

int strbuf_append(strbuf *b, const char *s, size_t n);
void strbuf_free(strbuf *b);

#define STOP_MAX 4

typedef struct {
    const char *stops[STOP_MAX];
    int n_stops;
    strbuf pending; /* text that may still begin a stop string */
    bool stopped;
} stop_matcher;

void stop_init(stop_matcher *m, const char *const *stops, int n_stops);
/* Feeds newly generated text; appends to emit what can no longer be part of
 * a stop string. Returns true once a stop string is found: the text before
 * it has been emitted, the stop string and all after it dropped. */
bool stop_feed(stop_matcher *m, const char *text, size_t len, strbuf *emit);
/* End of generation: emits whatever was held back. */
void stop_flush(stop_matcher *m, strbuf *emit);
void stop_free(stop_matcher *m);

/* Splits streamed text into reasoning and content as it arrives, and holds
 * tool calls back to parse them whole at the end. */
enum route_state { ROUTE_START, ROUTE_THINK, ROUTE_CONTENT, ROUTE_TOOLS };
typedef struct {
    enum route_state state;
    bool reasoning, tools; /* what to look for */
    bool trim;             /* drop whitespace before the content starts */
    strbuf held;
} text_router;

void router_init(text_router *r, bool reasoning, bool tools);
/* Appends the parts of text that are certain to reasoning and content. */
void router_feed(text_router *r, const char *text, size_t len, strbuf *reasoning, strbuf *content);
/* End of text: flushes what was held; returns the parsed tool calls (a JSON
 * array, owned by the caller) or NULL when there were none. */
json_t *router_finish(text_router *r, strbuf *reasoning, strbuf *content);
void router_free(text_router *r);

/* Parses <tool_call> blocks out of text: returns the calls (or NULL) and
 * appends the text around them to content. */
json_t *parse_tool_calls(const char *text, size_t len, strbuf *content);

#endif
