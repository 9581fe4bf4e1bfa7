/* Parsing and validating OpenAI request bodies (see gateway_internal.h).
 * Unknown fields are ignored, as OpenAI does; a known field of the wrong
 * type or out of range is a 400 naming it. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_depth.h"
#include "gateway_internal.h"

void gw_error_set(gw_error *e, int status, const char *type, const char *param, const char *fmt, ...) {
    e->status = status, e->type = type, e->code = NULL;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
}

static int bad(gw_error *e, const char *param, const char *what) {
    gw_error_set(e, 400, "invalid_request_error", param, "'%s': %s", param, what);
    return -1;
}

/* A number field in [lo, hi]; absent or null leaves *out as it is. */
static int get_number(json_t *body, const char *key, double lo, double hi, float *out, gw_error *e) {
    json_t *v = json_object_get(body, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_number(v))
        return bad(e, key, "must be a number");
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi)) {
        gw_error_set(e, 400, "invalid_request_error", key, "'%s' must be between %g and %g, got %g", key, lo, hi, x);
        return -1;
    }
    *out = (float)x;
    return 0;
}

static int get_int(json_t *body, const char *key, long long lo, long long hi, int *out, gw_error *e) {
    json_t *v = json_object_get(body, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_integer(v))
        return bad(e, key, "must be an integer");
    long long x = json_integer_value(v);
    if (x < lo || x > hi) {
        gw_error_set(e, 400, "invalid_request_error", key, "'%s' must be between %lld and %lld, got %lld", key, lo, hi,
                     x);
        return -1;
    }
    *out = (int)x;
    return 0;
}

static int get_bool(json_t *body, const char *key, bool *out, gw_error *e) {
    json_t *v = json_object_get(body, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v))
        return bad(e, key, "must be a boolean");
    *out = json_is_true(v);
    return 0;
}

/* content as a string: a string, null, or an array of {"type":"text"} parts */
static json_t *content_text(json_t *content, int index, gw_error *e) {
    char param[64];
    snprintf(param, sizeof param, "messages[%d].content", index);
    if (!content || json_is_null(content))
        return json_string("");
    if (json_is_string(content))
        return json_incref(content);
    if (!json_is_array(content)) {
        bad(e, param, "must be a string or an array of content parts");
        return NULL;
    }
    strbuf text = {0};
    size_t i;
    json_t *part;
    json_array_foreach(content, i, part) {
        json_t *type = json_object_get(part, "type"), *t = json_object_get(part, "text");
        if (!json_is_string(type) || strcmp(json_string_value(type), "text") || !json_is_string(t)) {
            strbuf_free(&text);
            bad(e, param, "only text content parts are supported");
            return NULL;
        }
        strbuf_append(&text, json_string_value(t), json_string_length(t));
    }
    json_t *s = json_stringn(text.data ? text.data : "", text.len);
    strbuf_free(&text);
    if (!s)
        bad(e, param, "is not valid UTF-8");
    return s;
}

static int parse_messages(gen_request *r, gw_error *e) {
    r->messages = json_object_get(r->body, "messages");
    if (!json_is_array(r->messages) || json_array_size(r->messages) == 0)
        return bad(e, "messages", "must be a non-empty array");
    json_t *norm = json_array();
    size_t i;
    json_t *m;
    json_array_foreach(r->messages, i, m) {
        char param[64];
        snprintf(param, sizeof param, "messages[%zu].role", i);
        json_t *role = json_object_get(m, "role");
        const char *rs = json_string_value(role);
        if (!json_is_object(m) || !rs) {
            json_decref(norm);
            return bad(e, param, "each message needs a string role");
        }
        if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant") && strcmp(rs, "tool") &&
            strcmp(rs, "developer")) {
            json_decref(norm);
            return bad(e, param, "must be system, user, assistant, tool or developer");
        }
        json_t *copy = json_copy(m);
        json_t *text = content_text(json_object_get(m, "content"), (int)i, e);
        if (!text) {
            json_decref(copy), json_decref(norm);
            return -1;
        }
        json_object_set_new(copy, "content", text);
        if (!strcmp(rs, "developer"))
            json_object_set_new(copy, "role", json_string("system"));
        /* tool call arguments arrive as JSON text; templates want objects */
        json_t *calls = json_object_get(copy, "tool_calls"), *call;
        size_t k;
        json_array_foreach(calls, k, call) {
            json_t *fn = json_object_get(call, "function");
            json_t *args = json_object_get(fn, "arguments");
            if (json_is_string(args) &&
                !json_nests_deeper(json_string_value(args), json_string_length(args), JSON_MAX_DEPTH)) {
                json_t *parsed = json_loads(json_string_value(args), 0, NULL);
                if (parsed)
                    json_object_set_new(fn, "arguments", parsed);
            }
        }
        json_array_append_new(norm, copy);
    }
    r->template_vars = json_pack("{s:o,s:b}", "messages", norm, "add_generation_prompt", 1);
    json_t *tools = json_object_get(r->body, "tools"), *choice = json_object_get(r->body, "tool_choice");
    if (tools && !json_is_null(tools) && !json_is_array(tools))
        return bad(e, "tools", "must be an array");
    if (choice && !json_is_null(choice) && !json_is_string(choice) && !json_is_object(choice))
        return bad(e, "tool_choice", "must be a string or an object");
    bool none = json_is_string(choice) && !strcmp(json_string_value(choice), "none");
    if (json_array_size(tools) > 0 && !none) {
        r->tools = tools;
        json_object_set(r->template_vars, "tools", tools);
    }
    json_t *kwargs = json_object_get(r->body, "chat_template_kwargs");
    if (kwargs && !json_is_null(kwargs)) {
        if (!json_is_object(kwargs))
            return bad(e, "chat_template_kwargs", "must be an object");
        const char *k;
        json_t *v;
        json_object_foreach(kwargs, k, v) {
            if (strcmp(k, "messages") && strcmp(k, "tools"))
                json_object_set(r->template_vars, k, v);
        }
    }
    json_t *thinking = json_object_get(r->template_vars, "enable_thinking");
    r->reasoning = !json_is_false(thinking);
    return 0;
}

static int parse_prompt(gen_request *r, gw_error *e) {
    json_t *p = json_object_get(r->body, "prompt");
    if (json_is_array(p) && json_array_size(p) == 1 && json_is_string(json_array_get(p, 0)))
        p = json_array_get(p, 0);
    if (json_is_string(p)) {
        r->prompt_text = json_string_value(p);
        return 0;
    }
    if (!json_is_array(p) || json_array_size(p) == 0)
        return bad(e, "prompt", "must be a string or a non-empty array of token ids");
    r->n_prompt_ids = json_array_size(p);
    r->prompt_ids = malloc(r->n_prompt_ids * sizeof *r->prompt_ids);
    for (size_t i = 0; r->prompt_ids && i < r->n_prompt_ids; i++) {
        json_t *v = json_array_get(p, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= INT32_MAX)
            return bad(e, "prompt", "token ids must be non-negative integers");
        r->prompt_ids[i] = (int32_t)json_integer_value(v);
    }
    return r->prompt_ids ? 0 : bad(e, "prompt", "too long");
}

static int parse_stop(gen_request *r, gw_error *e) {
    json_t *s = json_object_get(r->body, "stop");
    if (!s || json_is_null(s))
        return 0;
    if (json_is_string(s)) {
        r->stops[r->n_stops++] = json_string_value(s);
        return 0;
    }
    if (!json_is_array(s) || json_array_size(s) > 4)
        return bad(e, "stop", "must be a string or an array of at most 4 strings");
    size_t i;
    json_t *v;
    json_array_foreach(s, i, v) {
        if (!json_is_string(v))
            return bad(e, "stop", "must be a string or an array of at most 4 strings");
        r->stops[r->n_stops++] = json_string_value(v);
    }
    return 0;
}

static int parse_bias(gateway *g, gen_request *r, gw_error *e) {
    json_t *b = json_object_get(r->body, "logit_bias");
    if (!b || json_is_null(b))
        return 0;
    if (!json_is_object(b) || json_object_size(b) > GW_MAX_BIAS)
        return bad(e, "logit_bias", "must be an object of at most 300 token ids");
    const char *k;
    json_t *v;
    json_object_foreach(b, k, v) {
        char *end;
        errno = 0;
        long id = strtol(k, &end, 10);
        if (*k == 0 || *end || errno || id < 0 || id >= (long)tokenizer_vocab_size(g->vocab))
            return bad(e, "logit_bias", "keys must be token ids of this model");
        if (!json_is_number(v) || fabs(json_number_value(v)) > 100)
            return bad(e, "logit_bias", "values must be numbers between -100 and 100");
        r->bias_ids[r->n_bias] = (int32_t)id;
        r->bias_values[r->n_bias++] = (float)json_number_value(v);
    }
    return 0;
}

int gw_parse_request(gateway *g, const char *body, size_t len, bool chat, gen_request *r, gw_error *e) {
    *r = (gen_request){
        .chat = chat, .max_tokens = -1, .temperature = 1.0f, .top_p = 1.0f, .repetition_penalty = 1.0f, .n = 1};
    if (json_nests_deeper(body, len, JSON_MAX_DEPTH)) {
        gw_error_set(e, 400, "invalid_request_error", "", "the JSON body nests deeper than %d levels", JSON_MAX_DEPTH);
        return -1;
    }
    json_error_t je;
    r->body = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!r->body) {
        gw_error_set(e, 400, "invalid_request_error", "", "could not parse the JSON body: %s (line %d, column %d)",
                     je.text, je.line, je.column);
        return -1;
    }
    if (!json_is_object(r->body)) {
        gw_error_set(e, 400, "invalid_request_error", "", "the body must be a JSON object");
        return -1;
    }
    json_t *model = json_object_get(r->body, "model");
    if (model && !json_is_null(model) && !json_is_string(model))
        return bad(e, "model", "must be a string");
    if (json_is_string(model) && strcmp(json_string_value(model), g->cfg.model_name)) {
        gw_error_set(e, 404, "invalid_request_error", "model", "The model '%s' does not exist (this server has '%s')",
                     json_string_value(model), g->cfg.model_name);
        e->code = "model_not_found";
        return -1;
    }
    if ((chat ? parse_messages(r, e) : parse_prompt(r, e)) || parse_stop(r, e) || parse_bias(g, r, e))
        return -1;
    int max_completion = -1;
    if (get_int(r->body, "max_tokens", 1, INT32_MAX, &r->max_tokens, e) ||
        get_int(r->body, "max_completion_tokens", 1, INT32_MAX, &max_completion, e) ||
        get_number(r->body, "temperature", 0, 2, &r->temperature, e) ||
        get_number(r->body, "top_p", 0, 1, &r->top_p, e) || get_number(r->body, "min_p", 0, 1, &r->min_p, e) ||
        get_number(r->body, "presence_penalty", -2, 2, &r->presence_penalty, e) ||
        get_number(r->body, "frequency_penalty", -2, 2, &r->frequency_penalty, e) ||
        get_number(r->body, "repetition_penalty", 0.01, 10, &r->repetition_penalty, e) ||
        get_int(r->body, "top_k", -1, 1 << 20, &r->top_k, e) || get_int(r->body, "n", 1, GW_MAX_N, &r->n, e) ||
        get_bool(r->body, "stream", &r->stream, e) || get_bool(r->body, "ignore_eos", &r->ignore_eos, e))
        return -1;
    if (r->ignore_eos) { /* benchmarks ask for exact output lengths: the end ids get -inf */
        if (g->eos_id >= 0)
            r->bias_ids[r->n_bias] = g->eos_id, r->bias_values[r->n_bias++] = -INFINITY;
        for (int i = 0; i < g->n_eot; i++)
            r->bias_ids[r->n_bias] = g->eot_ids[i], r->bias_values[r->n_bias++] = -INFINITY;
    }
    if (max_completion > 0)
        r->max_tokens = max_completion;
    if (r->top_k < 0)
        r->top_k = 0;
    json_t *seed = json_object_get(r->body, "seed");
    if (seed && !json_is_null(seed)) {
        if (!json_is_integer(seed))
            return bad(e, "seed", "must be an integer");
        r->has_seed = true, r->seed = (uint64_t)json_integer_value(seed);
    }
    if (chat) {
        if (get_bool(r->body, "logprobs", &r->logprobs, e) ||
            get_int(r->body, "top_logprobs", 0, SCHED_CLIENT_MAX_TOP, &r->top_logprobs, e))
            return -1;
        if (r->top_logprobs > 0 && !r->logprobs)
            return bad(e, "top_logprobs", "requires logprobs to be true");
    } else {
        int lp = -1;
        if (get_int(r->body, "logprobs", 0, 5, &lp, e))
            return -1;
        r->logprobs = lp >= 0, r->top_logprobs = lp > 0 ? lp : 0;
    }
    json_t *so = json_object_get(r->body, "stream_options");
    if (so && !json_is_null(so)) {
        if (!json_is_object(so))
            return bad(e, "stream_options", "must be an object");
        if (get_bool(so, "include_usage", &r->include_usage, e))
            return -1;
    }
    json_t *user = json_object_get(r->body, "user");
    if (user && !json_is_null(user) && !json_is_string(user))
        return bad(e, "user", "must be a string");
    return 0;
}

void gw_request_free(gen_request *r) {
    json_decref(r->template_vars);
    json_decref(r->body);
    free(r->prompt_ids);
}
