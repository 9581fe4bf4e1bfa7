/* Jinja filters, tests, methods and global functions, with the semantics
 * of jinja2 and Python's str/dict methods that chat templates rely on. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <utf8proc.h>

#include "utf8.h"

#include "jinja_internal.h"

#define NAME_IS(name, lit) ((name).n == sizeof(lit) - 1 && !memcmp((name).p, lit, (name).n))

/* ---- string helpers ---- */

/* Code point at s[i] (valid UTF-8 assumed; bad bytes read as themselves). */
static uint32_t cp_at(const char *s, size_t n, size_t i, size_t *len) {
    const unsigned char *u = (const unsigned char *)s + i;
    if (u[0] < 0x80 || i + 1 >= n) {
        *len = 1;
        return u[0];
    }
    if ((u[0] & 0xe0) == 0xc0) {
        *len = 2;
        return (uint32_t)(u[0] & 0x1f) << 6 | (u[1] & 0x3f);
    }
    if ((u[0] & 0xf0) == 0xe0 && i + 2 < n) {
        *len = 3;
        return (uint32_t)(u[0] & 0x0f) << 12 | (uint32_t)(u[1] & 0x3f) << 6 | (u[2] & 0x3f);
    }
    if (i + 3 < n) {
        *len = 4;
        return (uint32_t)(u[0] & 0x07) << 18 | (uint32_t)(u[1] & 0x3f) << 12 | (uint32_t)(u[2] & 0x3f) << 6 |
               (u[3] & 0x3f);
    }
    *len = 1;
    return u[0];
}

/* Python's str.isspace() characters. */
static bool py_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

/* strip/lstrip/rstrip: chars NULL means whitespace. */
static jstr strip(jstr s, const jstr *chars, bool left, bool right) {
    size_t b = 0, e = s.n, len;
    while (left && b < e) {
        uint32_t c = cp_at(s.p, s.n, b, &len);
        bool hit = chars ? memmem(chars->p, chars->n, s.p + b, len) != NULL : py_space(c);
        if (!hit)
            break;
        b += len;
    }
    while (right && e > b) {
        size_t start = e - 1;
        while (start > b && ((unsigned char)s.p[start] & 0xc0) == 0x80)
            start--;
        uint32_t c = cp_at(s.p, s.n, start, &len);
        bool hit = chars ? memmem(chars->p, chars->n, s.p + start, e - start) != NULL : py_space(c);
        if (!hit)
            break;
        e = start;
    }
    return (jstr){s.p + b, e - b};
}

/* Python's upper/lower/title/capitalize over Unicode (simple case
 * mappings from utf8proc). title: a cased letter after an uncased
 * character starts a word. */
static value str_case(render_ctx *c, jstr s, int mode) { /* 0 upper, 1 lower, 2 title, 3 capitalize */
    strbuf b = {.a = c->a};
    bool prev_cased = false;
    for (size_t i = 0, len; i < s.n; i += len) {
        if (!utf8_seq_len((const uint8_t *)s.p + i, s.n - i)) { /* not UTF-8: keep the byte as it is */
            sb_put(&b, s.p + i, len = 1);
            prev_cased = false;
            continue;
        }
        uint32_t cp = cp_at(s.p, s.n, i, &len);
        bool upper = mode == 0 || (mode == 2 && !prev_cased) || (mode == 3 && i == 0);
        int32_t mapped = upper ? (mode == 2 ? utf8proc_totitle((int32_t)cp) : utf8proc_toupper((int32_t)cp))
                               : utf8proc_tolower((int32_t)cp);
        uint8_t enc[4];
        utf8proc_ssize_t n = utf8proc_encode_char(mapped, enc);
        if (n > 0)
            sb_put(&b, (const char *)enc, (size_t)n);
        else
            sb_put(&b, s.p + i, len);
        const utf8proc_property_t *prop = utf8proc_get_property((int32_t)cp);
        prev_cased = utf8proc_toupper((int32_t)cp) != (int32_t)cp || utf8proc_tolower((int32_t)cp) != (int32_t)cp ||
                     prop->category == UTF8PROC_CATEGORY_LT;
    }
    return v_strbuf(&b);
}

static value str_replace(render_ctx *c, jstr s, jstr old, jstr new_s, int64_t count) {
    strbuf b = {.a = c->a};
    size_t i = 0;
    int64_t done = 0;
    while (i <= s.n && (count < 0 || done < count)) {
        const char *hit = old.n ? memmem(s.p + i, s.n - i, old.p, old.n) : (i < s.n || done == 0 ? s.p + i : NULL);
        if (!hit || (!old.n && i > s.n))
            break;
        size_t at = (size_t)(hit - s.p);
        sb_put(&b, s.p + i, at - i);
        sb_put(&b, new_s.p, new_s.n);
        done++;
        if (!old.n) { /* empty pattern: insert between characters */
            if (at >= s.n) {
                i = s.n + 1;
                break;
            }
            size_t len;
            cp_at(s.p, s.n, at, &len);
            sb_put(&b, s.p + at, len);
            i = at + len;
        } else {
            i = at + old.n;
        }
    }
    if (i < s.n)
        sb_put(&b, s.p + i, s.n - i);
    return v_strbuf(&b);
}

static value str_split(render_ctx *c, jstr s, value sep, int64_t maxsplit) {
    value out = v_list(c->a);
    if (sep.t == V_NONE || sep.t == V_UNDEF) { /* runs of whitespace, ends ignored */
        size_t i = 0, len;
        int64_t splits = 0;
        while (i < s.n) {
            while (i < s.n && py_space(cp_at(s.p, s.n, i, &len)))
                i += len;
            if (i >= s.n)
                break;
            if (maxsplit >= 0 && splits == maxsplit) {
                jstr rest = strip((jstr){s.p + i, s.n - i}, NULL, false, true);
                list_push(c->a, out.l, v_str(rest.p, rest.n));
                break;
            }
            size_t b = i;
            while (i < s.n && !py_space(cp_at(s.p, s.n, i, &len)))
                i += len;
            list_push(c->a, out.l, v_str(s.p + b, i - b));
            splits++;
        }
        return out;
    }
    if (sep.t != V_STR || sep.s.n == 0)
        rerr(c, "ValueError", "empty separator");
    size_t i = 0;
    for (int64_t k = 0; maxsplit < 0 || k < maxsplit; k++) {
        const char *hit = memmem(s.p + i, s.n - i, sep.s.p, sep.s.n);
        if (!hit)
            break;
        list_push(c->a, out.l, v_str(s.p + i, (size_t)(hit - s.p) - i));
        i = (size_t)(hit - s.p) + sep.s.n;
    }
    list_push(c->a, out.l, v_str(s.p + i, s.n - i));
    return out;
}

static bool affix_match(jstr s, value affix, bool suffix) {
    if (affix.t == V_LIST) {
        for (size_t i = 0; i < affix.l->n; i++)
            if (affix_match(s, affix.l->v[i], suffix))
                return true;
        return false;
    }
    if (affix.t != V_STR || affix.s.n > s.n)
        return false;
    return !memcmp(suffix ? s.p + s.n - affix.s.n : s.p, affix.s.p, affix.s.n);
}

static jstr need_str(render_ctx *c, value v, const char *what) {
    if (v.t != V_STR)
        rerr(c, "TypeError", "%s expects a string, got %s", what, v_type_name(v));
    return v.s;
}

static int64_t need_int(render_ctx *c, value v, int64_t dflt) {
    if (v.t == V_UNDEF || v.t == V_NONE)
        return dflt;
    if (v.t == V_INT)
        return v.i;
    if (v.t == V_BOOL)
        return v.b;
    rerr(c, "TypeError", "expected an integer, got %s", v_type_name(v));
}

/* ---- methods ---- */

static const char *const str_methods[] = {
    "strip",      "lstrip", "rstrip", "split", "startswith", "endswith", "replace", "upper",   "lower", "title",
    "capitalize", "find",   "count",  "join",  "splitlines", "isdigit",  "isalpha", "isspace", NULL};
static const char *const dict_methods[] = {"items", "keys", "values", "get", NULL};
static const char *const list_methods[] = {"index", "count", NULL};

static bool in_table(const char *const *t, const char *name, size_t n) {
    for (; *t; t++)
        if (strlen(*t) == n && !memcmp(*t, name, n))
            return true;
    return false;
}

bool is_method(value self, const char *name, size_t n) {
    if (self.t == V_STR)
        return in_table(str_methods, name, n);
    if (self.t == V_DICT)
        return in_table(dict_methods, name, n);
    if (self.t == V_LIST)
        return in_table(list_methods, name, n);
    return false;
}

static value dict_items(render_ctx *c, struct vdict *d) {
    value out = v_list(c->a);
    for (size_t i = 0; i < d->n; i++) {
        value pair = v_list(c->a);
        pair.l->is_tuple = true;
        list_push(c->a, pair.l, v_str(d->k[i].p, d->k[i].n));
        list_push(c->a, pair.l, d->v[i]);
        list_push(c->a, out.l, pair);
    }
    return out;
}

value call_method(render_ctx *c, value self, jstr name, call_args *a) {
    value a0 = arg_get(a, 0, NULL, v_undef()), a1 = arg_get(a, 1, NULL, v_undef());
    if (self.t == V_DICT) {
        if (NAME_IS(name, "items"))
            return dict_items(c, self.d);
        if (NAME_IS(name, "keys"))
            return (value){.t = V_LIST, .l = iterate(c, self)};
        if (NAME_IS(name, "values")) {
            value out = v_list(c->a);
            for (size_t i = 0; i < self.d->n; i++)
                list_push(c->a, out.l, self.d->v[i]);
            return out;
        }
        if (NAME_IS(name, "get")) {
            value *v = a0.t == V_STR ? dict_get(self.d, a0.s.p, a0.s.n) : NULL;
            return v ? *v : (a1.t == V_UNDEF ? v_none() : a1);
        }
    }
    if (self.t == V_LIST) {
        int64_t count = 0;
        for (size_t i = 0; i < self.l->n; i++) {
            if (!v_equal(self.l->v[i], a0))
                continue;
            if (NAME_IS(name, "index"))
                return v_int((int64_t)i);
            count++;
        }
        if (NAME_IS(name, "index"))
            rerr(c, "ValueError", "value is not in list");
        return v_int(count);
    }
    jstr s = self.s;
    if (NAME_IS(name, "strip") || NAME_IS(name, "lstrip") || NAME_IS(name, "rstrip")) {
        bool l = name.p[0] != 'r', r = name.p[0] != 'l';
        jstr chars = a0.t == V_STR ? a0.s : (jstr){0};
        jstr out = strip(s, a0.t == V_STR ? &chars : NULL, l, r);
        return v_str(out.p, out.n);
    }
    if (NAME_IS(name, "split"))
        return str_split(c, s, arg_get(a, 0, "sep", v_none()), need_int(c, arg_get(a, 1, "maxsplit", v_undef()), -1));
    if (NAME_IS(name, "startswith"))
        return v_bool(affix_match(s, a0, false));
    if (NAME_IS(name, "endswith"))
        return v_bool(affix_match(s, a0, true));
    if (NAME_IS(name, "replace"))
        return str_replace(c, s, need_str(c, a0, "replace"), need_str(c, a1, "replace"),
                           need_int(c, arg_get(a, 2, "count", v_undef()), -1));
    if (NAME_IS(name, "upper"))
        return str_case(c, s, 0);
    if (NAME_IS(name, "lower"))
        return str_case(c, s, 1);
    if (NAME_IS(name, "title"))
        return str_case(c, s, 2);
    if (NAME_IS(name, "capitalize")) {
        value lower = str_case(c, s, 1);
        return str_case(c, lower.s, 3);
    }
    if (NAME_IS(name, "find") || NAME_IS(name, "count")) {
        jstr sub = need_str(c, a0, "find");
        if (NAME_IS(name, "find")) {
            const char *hit = memmem(s.p, s.n, sub.p, sub.n);
            return v_int(hit ? (int64_t)utf8_chars((jstr){s.p, (size_t)(hit - s.p)}) : -1);
        }
        int64_t n = 0;
        for (size_t i = 0; sub.n && i + sub.n <= s.n;) {
            const char *hit = memmem(s.p + i, s.n - i, sub.p, sub.n);
            if (!hit)
                break;
            n++, i = (size_t)(hit - s.p) + sub.n;
        }
        return v_int(sub.n ? n : (int64_t)utf8_chars(s) + 1);
    }
    if (NAME_IS(name, "join")) {
        struct vlist *items = iterate(c, a0);
        strbuf b = {.a = c->a};
        for (size_t i = 0; i < items->n; i++) {
            if (i)
                sb_put(&b, s.p, s.n);
            jstr part = need_str(c, items->v[i], "join");
            sb_put(&b, part.p, part.n);
        }
        return v_strbuf(&b);
    }
    if (NAME_IS(name, "splitlines")) {
        value out = v_list(c->a);
        size_t b = 0;
        for (size_t i = 0; i < s.n; i++) {
            if (s.p[i] != '\n' && s.p[i] != '\r')
                continue;
            list_push(c->a, out.l, v_str(s.p + b, i - b));
            if (s.p[i] == '\r' && i + 1 < s.n && s.p[i + 1] == '\n')
                i++;
            b = i + 1;
        }
        if (b < s.n)
            list_push(c->a, out.l, v_str(s.p + b, s.n - b));
        return out;
    }
    bool all = s.n > 0;
    for (size_t i = 0; i < s.n; i++) {
        char ch = s.p[i];
        if (NAME_IS(name, "isdigit"))
            all = all && ch >= '0' && ch <= '9';
        else if (NAME_IS(name, "isalpha"))
            all = all && ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'z');
        else
            all = all && py_space((unsigned char)ch);
    }
    return v_bool(all);
}

/* ---- tests ---- */

bool apply_test(render_ctx *c, jstr name, value v, call_args *a) {
    value a0 = arg_get(a, 0, NULL, v_undef());
    if (NAME_IS(name, "defined"))
        return v.t != V_UNDEF;
    if (NAME_IS(name, "undefined"))
        return v.t == V_UNDEF;
    if (NAME_IS(name, "none"))
        return v.t == V_NONE;
    if (NAME_IS(name, "string"))
        return v.t == V_STR;
    if (NAME_IS(name, "number"))
        return v.t == V_INT || v.t == V_FLOAT;
    if (NAME_IS(name, "integer"))
        return v.t == V_INT;
    if (NAME_IS(name, "float"))
        return v.t == V_FLOAT;
    if (NAME_IS(name, "boolean"))
        return v.t == V_BOOL;
    if (NAME_IS(name, "true"))
        return v.t == V_BOOL && v.b;
    if (NAME_IS(name, "false"))
        return v.t == V_BOOL && !v.b;
    if (NAME_IS(name, "mapping"))
        return v.t == V_DICT;
    if (NAME_IS(name, "iterable"))
        return v.t == V_LIST || v.t == V_DICT || v.t == V_STR;
    if (NAME_IS(name, "sequence"))
        return v.t == V_LIST || v.t == V_DICT || v.t == V_STR;
    if (NAME_IS(name, "callable"))
        return v.t == V_FUNC;
    if (NAME_IS(name, "equalto") || NAME_IS(name, "eq") || NAME_IS(name, "sameas"))
        return v_equal(v, a0);
    if (NAME_IS(name, "ne"))
        return !v_equal(v, a0);
    if (NAME_IS(name, "lt"))
        return compare_values(c, v, a0) < 0;
    if (NAME_IS(name, "le"))
        return compare_values(c, v, a0) <= 0;
    if (NAME_IS(name, "gt"))
        return compare_values(c, v, a0) > 0;
    if (NAME_IS(name, "ge"))
        return compare_values(c, v, a0) >= 0;
    if (NAME_IS(name, "in")) {
        struct vlist *items = a0.t == V_STR ? NULL : iterate(c, a0);
        if (!items)
            return v.t == V_STR && memmem(a0.s.p, a0.s.n, v.s.p, v.s.n);
        for (size_t i = 0; i < items->n; i++)
            if (v_equal(items->v[i], v))
                return true;
        return false;
    }
    if (NAME_IS(name, "odd") || NAME_IS(name, "even") || NAME_IS(name, "divisibleby")) {
        int64_t x = need_int(c, v, 0);
        if (NAME_IS(name, "odd"))
            return x % 2 != 0;
        if (NAME_IS(name, "even"))
            return x % 2 == 0;
        int64_t d = need_int(c, a0, 1);
        return d != 0 && x % d == 0;
    }
    if (NAME_IS(name, "lower") || NAME_IS(name, "upper")) {
        if (v.t != V_STR)
            return false;
        value conv = str_case(c, v.s, NAME_IS(name, "lower") ? 1 : 0);
        return !memcmp(conv.s.p, v.s.p, v.s.n);
    }
    rerr(c, "TemplateAssertionError", "no test named '%.*s'", (int)name.n, name.p);
}

/* ---- filters ---- */

/* For select/reject(attr): the predicate given by a test name (or
 * truthiness when none) and its optional argument. */
static bool filter_pred(render_ctx *c, value item, call_args *a, int first) {
    value test = arg_get(a, first, NULL, v_undef());
    if (test.t != V_STR)
        return v_truthy(item);
    call_args rest = {a->pos + first + 1, a->n_pos > first + 1 ? a->n_pos - first - 1 : 0, NULL, NULL, 0};
    return apply_test(c, test.s, item, &rest);
}

static value select_items(render_ctx *c, value v, call_args *a, bool by_attr, bool keep) {
    struct vlist *items = iterate(c, v);
    value out = v_list(c->a);
    jstr attr = by_attr ? need_str(c, arg_get(a, 0, NULL, v_undef()), "selectattr") : (jstr){0};
    for (size_t i = 0; i < items->n; i++) {
        value probe = by_attr ? get_attr(c, items->v[i], attr.p, attr.n) : items->v[i];
        if (filter_pred(c, probe, a, by_attr ? 1 : 0) == keep)
            list_push(c->a, out.l, items->v[i]);
    }
    return out;
}

typedef struct {
    render_ctx *c;
    jstr attr;
    bool reverse;
} sort_spec;
static value sort_key(sort_spec *s, value v) { return s->attr.n ? get_attr(s->c, v, s->attr.p, s->attr.n) : v; }

static value sort_list(render_ctx *c, struct vlist *items, jstr attr, bool reverse) {
    sort_spec spec = {c, attr, reverse};
    value out = v_list(c->a);
    for (size_t i = 0; i < items->n; i++)
        list_push(c->a, out.l, items->v[i]);
    for (size_t i = 1; i < out.l->n; i++) /* stable insertion sort: template lists are short */
        for (size_t j = i; j > 0; j--) {
            int r = compare_values(c, sort_key(&spec, out.l->v[j - 1]), sort_key(&spec, out.l->v[j]));
            if (reverse ? r >= 0 : r <= 0)
                break;
            value t = out.l->v[j];
            out.l->v[j] = out.l->v[j - 1], out.l->v[j - 1] = t;
        }
    return out;
}

static value filter_tojson(render_ctx *c, value v, call_args *a) {
    value indent = arg_get(a, 0, "indent", v_none()), seps = arg_get(a, -1, "separators", v_none());
    bool sort_keys = v_truthy(arg_get(a, -1, "sort_keys", v_bool(false)));
    int ind = indent.t == V_INT ? (int)indent.i : -1;
    const char *item_sep = ind >= 0 ? "," : ", ", *key_sep = ": ";
    if (seps.t == V_LIST && seps.l->n == 2 && seps.l->v[0].t == V_STR && seps.l->v[1].t == V_STR) {
        item_sep = arena_strndup(c->a, seps.l->v[0].s.p, seps.l->v[0].s.n);
        key_sep = arena_strndup(c->a, seps.l->v[1].s.p, seps.l->v[1].s.n);
    }
    strbuf b = {.a = c->a};
    if (v_json_into(&b, v, ind, item_sep, key_sep, sort_keys, 0))
        rerr(c, "TypeError", "Object of type %s is not JSON serializable", v_type_name(v));
    return v_strbuf(&b);
}

static value html_escape(render_ctx *c, jstr s) {
    strbuf b = {.a = c->a};
    for (size_t i = 0; i < s.n; i++) {
        switch (s.p[i]) {
        case '&': sb_puts(&b, "&amp;"); break;
        case '<': sb_puts(&b, "&lt;"); break;
        case '>': sb_puts(&b, "&gt;"); break;
        case '"': sb_puts(&b, "&#34;"); break;
        case '\'': sb_puts(&b, "&#39;"); break;
        default: sb_put(&b, s.p + i, 1);
        }
    }
    return v_strbuf(&b);
}

value apply_filter(render_ctx *c, jstr name, value v, call_args *a) {
    value a0 = arg_get(a, 0, NULL, v_undef());
    if (NAME_IS(name, "tojson"))
        return filter_tojson(c, v, a);
    if (NAME_IS(name, "safe"))
        return v;
    if (NAME_IS(name, "string"))
        return v.t == V_STR ? v : (value){.t = V_STR, .s = to_str(c, v)};
    if (NAME_IS(name, "e") || NAME_IS(name, "escape"))
        return html_escape(c, to_str(c, v));
    if (NAME_IS(name, "length") || NAME_IS(name, "count")) {
        if (v.t == V_STR)
            return v_int((int64_t)utf8_chars(v.s));
        if (v.t == V_LIST)
            return v_int((int64_t)v.l->n);
        if (v.t == V_DICT)
            return v_int((int64_t)v.d->n);
        if (v.t == V_UNDEF)
            return v_int(0);
        rerr(c, "TypeError", "object of type '%s' has no len()", v_type_name(v));
    }
    if (NAME_IS(name, "trim") || NAME_IS(name, "strip")) {
        jstr chars = a0.t == V_STR ? a0.s : (jstr){0};
        jstr s = strip(to_str(c, v), a0.t == V_STR ? &chars : NULL, true, true);
        return v_str(s.p, s.n);
    }
    if (NAME_IS(name, "upper"))
        return str_case(c, to_str(c, v), 0);
    if (NAME_IS(name, "lower"))
        return str_case(c, to_str(c, v), 1);
    if (NAME_IS(name, "title"))
        return str_case(c, to_str(c, v), 2);
    if (NAME_IS(name, "capitalize"))
        return str_case(c, str_case(c, to_str(c, v), 1).s, 3);
    if (NAME_IS(name, "replace"))
        return str_replace(c, to_str(c, v), need_str(c, a0, "replace"),
                           need_str(c, arg_get(a, 1, NULL, v_undef()), "replace"),
                           need_int(c, arg_get(a, 2, "count", v_undef()), -1));
    if (NAME_IS(name, "items")) {
        if (v.t == V_UNDEF)
            return v_list(c->a);
        if (v.t != V_DICT)
            rerr(c, "TypeError", "items filter needs a mapping, got %s", v_type_name(v));
        return call_method(c, v, (jstr){"items", 5}, a);
    }
    if (NAME_IS(name, "list"))
        return (value){.t = V_LIST, .l = iterate(c, v)};
    if (NAME_IS(name, "first") || NAME_IS(name, "last")) {
        struct vlist *items = iterate(c, v);
        if (!items->n)
            return v_undef();
        return NAME_IS(name, "first") ? items->v[0] : items->v[items->n - 1];
    }
    if (NAME_IS(name, "join")) {
        struct vlist *items = iterate(c, v);
        jstr sep = a0.t == V_STR ? a0.s : (jstr){"", 0};
        value attr = arg_get(a, 1, "attribute", v_undef());
        strbuf b = {.a = c->a};
        for (size_t i = 0; i < items->n; i++) {
            if (i)
                sb_put(&b, sep.p, sep.n);
            value item = attr.t == V_STR ? get_attr(c, items->v[i], attr.s.p, attr.s.n) : items->v[i];
            jstr part = to_str(c, item);
            sb_put(&b, part.p, part.n);
        }
        return v_strbuf(&b);
    }
    if (NAME_IS(name, "default") || NAME_IS(name, "d")) {
        bool boolean = v_truthy(arg_get(a, 1, "boolean", v_bool(false)));
        bool use_default = v.t == V_UNDEF || (boolean && !v_truthy(v));
        return use_default ? (a0.t == V_UNDEF ? v_str("", 0) : a0) : v;
    }
    if (NAME_IS(name, "select"))
        return select_items(c, v, a, false, true);
    if (NAME_IS(name, "reject"))
        return select_items(c, v, a, false, false);
    if (NAME_IS(name, "selectattr"))
        return select_items(c, v, a, true, true);
    if (NAME_IS(name, "rejectattr"))
        return select_items(c, v, a, true, false);
    if (NAME_IS(name, "map")) {
        struct vlist *items = iterate(c, v);
        value attr = arg_get(a, -1, "attribute", v_undef()), out = v_list(c->a);
        call_args rest = {a->pos + 1, a->n_pos > 1 ? a->n_pos - 1 : 0, NULL, NULL, 0};
        for (size_t i = 0; i < items->n; i++) {
            value item = items->v[i];
            if (attr.t == V_STR)
                item = get_attr(c, item, attr.s.p, attr.s.n);
            else if (a0.t == V_STR)
                item = apply_filter(c, a0.s, item, &rest);
            list_push(c->a, out.l, item);
        }
        return out;
    }
    if (NAME_IS(name, "sort")) {
        value attr = arg_get(a, -1, "attribute", v_undef());
        return sort_list(c, iterate(c, v), attr.t == V_STR ? attr.s : (jstr){0},
                         v_truthy(arg_get(a, 0, "reverse", v_bool(false))));
    }
    if (NAME_IS(name, "dictsort")) {
        if (v.t != V_DICT)
            rerr(c, "TypeError", "dictsort needs a mapping");
        value items = dict_items(c, v.d);
        return sort_list(c, items.l, (jstr){0}, false);
    }
    if (NAME_IS(name, "unique")) {
        struct vlist *items = iterate(c, v);
        value out = v_list(c->a);
        for (size_t i = 0; i < items->n; i++) {
            bool seen = false;
            for (size_t k = 0; k < out.l->n && !seen; k++)
                seen = v_equal(out.l->v[k], items->v[i]);
            if (!seen)
                list_push(c->a, out.l, items->v[i]);
        }
        return out;
    }
    if (NAME_IS(name, "sum")) {
        struct vlist *items = iterate(c, v);
        value acc = v_int(0);
        for (size_t i = 0; i < items->n; i++) {
            value x = items->v[i];
            if (x.t != V_INT && x.t != V_FLOAT)
                rerr(c, "TypeError", "sum of non-numbers");
            acc = acc.t == V_INT && x.t == V_INT
                      ? v_int(acc.i + x.i)
                      : v_float((acc.t == V_INT ? (double)acc.i : acc.f) + (x.t == V_INT ? (double)x.i : x.f));
        }
        return acc;
    }
    if (NAME_IS(name, "int")) {
        if (v.t == V_INT)
            return v;
        if (v.t == V_BOOL)
            return v_int(v.b);
        if (v.t == V_FLOAT)
            return isfinite(v.f) && fabs(v.f) < 9.2e18 ? v_int((int64_t)v.f) : a0.t == V_INT ? a0 : v_int(0);
        if (v.t == V_STR) {
            char *end, *s = arena_strndup(c->a, v.s.p, v.s.n);
            long long x = strtoll(s, &end, 10);
            return end != s && *strip((jstr){end, strlen(end)}, NULL, true, true).p == 0
                       ? v_int(x)
                       : (a0.t == V_INT ? a0 : v_int(0));
        }
        return a0.t == V_INT ? a0 : v_int(0);
    }
    if (NAME_IS(name, "float")) {
        if (v.t == V_FLOAT)
            return v;
        if (v.t == V_INT)
            return v_float((double)v.i);
        if (v.t == V_STR) {
            char *end, *s = arena_strndup(c->a, v.s.p, v.s.n);
            double x = strtod(s, &end);
            return end != s ? v_float(x) : v_float(0);
        }
        return v_float(0);
    }
    if (NAME_IS(name, "abs")) {
        if (v.t == V_INT)
            return v_int(v.i < 0 ? -v.i : v.i);
        if (v.t == V_FLOAT)
            return v_float(fabs(v.f));
        rerr(c, "TypeError", "bad operand type for abs(): '%s'", v_type_name(v));
    }
    if (NAME_IS(name, "round")) {
        double x = v.t == V_INT ? (double)v.i : v.t == V_FLOAT ? v.f : 0;
        double scale = pow(10, (double)need_int(c, arg_get(a, 0, "precision", v_undef()), 0));
        return v_float(round(x * scale) / scale);
    }
    if (NAME_IS(name, "indent")) {
        int64_t width = need_int(c, arg_get(a, 0, "width", v_undef()), 4);
        bool first = v_truthy(arg_get(a, 1, "first", v_bool(false)));
        jstr s = to_str(c, v);
        strbuf b = {.a = c->a};
        for (size_t i = 0; i < s.n; i++) {
            if ((i == 0 && first) || (i > 0 && s.p[i - 1] == '\n' && s.p[i] != '\n'))
                for (int64_t k = 0; k < width && k < 256; k++)
                    sb_puts(&b, " ");
            sb_put(&b, s.p + i, 1);
        }
        return v_strbuf(&b);
    }
    rerr(c, "TemplateAssertionError", "no filter named '%.*s'", (int)name.n, name.p);
}

/* ---- globals ---- */

static const char *const globals[] = {"range", "namespace", "dict", "raise_exception", "strftime_now", NULL};

bool is_global(const char *name, size_t n) { return in_table(globals, name, n); }

value call_global(render_ctx *c, jstr name, call_args *a) {
    if (NAME_IS(name, "raise_exception")) {
        jstr msg = to_str(c, arg_get(a, 0, NULL, v_str("", 0)));
        rerr(c, NULL, "TemplateError: %.*s", (int)msg.n, msg.p);
    }
    if (NAME_IS(name, "range")) {
        int64_t start = 0, stop, step = need_int(c, arg_get(a, 2, NULL, v_undef()), 1);
        if (a->n_pos >= 2)
            start = need_int(c, a->pos[0], 0), stop = need_int(c, a->pos[1], 0);
        else
            stop = need_int(c, arg_get(a, 0, NULL, v_int(0)), 0);
        if (step == 0)
            rerr(c, "ValueError", "range() arg 3 must not be zero");
        value out = v_list(c->a);
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
            if (out.l->n >= 100000)
                rerr(c, "OverflowError", "range too large");
            list_push(c->a, out.l, v_int(i));
        }
        return out;
    }
    if (NAME_IS(name, "namespace") || NAME_IS(name, "dict")) {
        value d = v_dict(c->a);
        d.d->is_namespace = NAME_IS(name, "namespace");
        value init = arg_get(a, 0, NULL, v_undef());
        if (init.t == V_DICT)
            for (size_t i = 0; i < init.d->n; i++)
                dict_set(c->a, d.d, init.d->k[i], init.d->v[i]);
        for (int i = 0; i < a->n_kw; i++)
            dict_set(c->a, d.d, a->kw_names[i], a->kw[i]);
        return d;
    }
    /* strftime_now(format) */
    jstr fmt = need_str(c, arg_get(a, 0, NULL, v_undef()), "strftime_now");
    struct tm tm = {0};
    time_t now = time(NULL);
    if (c->opt && c->opt->now &&
        sscanf(c->opt->now, "%d-%d-%d %d:%d:%d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour, &tm.tm_min,
               &tm.tm_sec) == 6) {
        tm.tm_year -= 1900, tm.tm_mon -= 1, tm.tm_isdst = -1;
        mktime(&tm); /* fills in the weekday and day of year */
    } else {
        localtime_r(&now, &tm);
    }
    char buf[512];
    char *f = arena_strndup(c->a, fmt.p, fmt.n);
    size_t n = strftime(buf, sizeof buf, f, &tm);
    return v_str(arena_strndup(c->a, buf, n), n);
}
