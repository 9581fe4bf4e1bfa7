/* A Jinja2 subset for chat templates, rendering as transformers does:
 * trim_blocks, lstrip_blocks, loop controls, a tojson filter that is
 * json.dumps(ensure_ascii=False), raise_exception() and strftime_now().
 *
 * Supported: {{ }}, {% if/elif/else %}, {% for %} (else, loop.*, unpacking,
 * inline if), {% set %} (also ns.attr and block set), {% macro %}, break and
 * continue, whitespace control (- and +), comments, raw; the expression
 * grammar with Python semantics (slices, `in`, `~`, inline if, literals);
 * the filters, tests and str/dict methods real chat templates use.
 *
 * A compiled template is immutable and may be rendered from several threads
 * at once. Errors name the template line: "line 12: unknown filter 'x'";
 * raise_exception(msg) fails with "TemplateError: msg". */
#ifndef INFERNO_JINJA_H
#define INFERNO_JINJA_H

#include <jansson.h>
#include <stddef.h>

typedef struct jinja_template jinja_template;

typedef struct {
    /* What strftime_now() formats: "YYYY-MM-DD HH:MM:SS", or NULL for the
     * current local time. */
    const char *now;
} jinja_options;

/* NULL on a syntax error, described in err. */
jinja_template *jinja_compile(const char *src, size_t len, char *err, size_t errlen);
void jinja_free(jinja_template *t);

/* Renders with vars (a JSON object: messages, tools, add_generation_prompt,
 * bos_token, ...). On success *out is malloc'ed and NUL-terminated. */
int jinja_render(const jinja_template *t, json_t *vars, const jinja_options *opt, char **out, size_t *out_len,
                 char *err, size_t errlen);

#endif
