/* Jinja values with Python semantics: truthiness, equality, str(), repr()
 * and json.dumps(ensure_ascii=False), including Python's float repr. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jinja_internal.h"

void sb_put(strbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p;
        if (b->a) {
            p = arena_alloc(b->a, cap);
            if (b->n)
                memcpy(p, b->p, b->n);
        } else {
            p = realloc(b->p, cap);
            if (!p)
                abort();
        }
        b->p = p, b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

void sb_puts(strbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

value v_list(arena *a) {
    value v = {.t = V_LIST};
    v.l = arena_alloc(a, sizeof *v.l);
    return v;
}

value v_dict(arena *a) {
    value v = {.t = V_DICT};
    v.d = arena_alloc(a, sizeof *v.d);
    return v;
}

void list_push(arena *a, struct vlist *l, value v) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 4;
        value *nv = arena_alloc(a, cap * sizeof *nv);
        if (l->n)
            memcpy(nv, l->v, l->n * sizeof *nv);
        l->v = nv, l->cap = cap;
    }
    l->v[l->n++] = v;
}

value *dict_get(const struct vdict *d, const char *k, size_t n) {
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].n == n && !memcmp(d->k[i].p, k, n))
            return &d->v[i];
    return NULL;
}

void dict_set(arena *a, struct vdict *d, jstr k, value v) {
    value *old = dict_get(d, k.p, k.n);
    if (old) {
        *old = v;
        return;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? 2 * d->cap : 4;
        jstr *nk = arena_alloc(a, cap * sizeof *nk);
        value *nv = arena_alloc(a, cap * sizeof *nv);
        if (d->n) {
            memcpy(nk, d->k, d->n * sizeof *nk);
            memcpy(nv, d->v, d->n * sizeof *nv);
        }
        d->k = nk, d->v = nv, d->cap = cap;
    }
    d->k[d->n] = k;
    d->v[d->n++] = v;
}

value v_cstr(arena *a, const char *s) {
    size_t n = strlen(s);
    return v_str(arena_strndup(a, s, n), n);
}

value v_from_json(arena *a, json_t *j) {
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        value d = v_dict(a);
        const char *k;
        json_t *v;
        json_object_foreach(j, k, v) {
            size_t n = strlen(k);
            dict_set(a, d.d, (jstr){arena_strndup(a, k, n), n}, v_from_json(a, v));
        }
        return d;
    }
    case JSON_ARRAY: {
        value l = v_list(a);
        for (size_t i = 0; i < json_array_size(j); i++)
            list_push(a, l.l, v_from_json(a, json_array_get(j, i)));
        return l;
    }
    case JSON_STRING:
        return v_str(arena_strndup(a, json_string_value(j), json_string_length(j)), json_string_length(j));
    case JSON_INTEGER: return v_int(json_integer_value(j));
    case JSON_REAL: return v_float(json_real_value(j));
    case JSON_TRUE: return v_bool(true);
    case JSON_FALSE: return v_bool(false);
    default: return v_none();
    }
}

bool v_truthy(value v) {
    switch (v.t) {
    case V_BOOL: return v.b;
    case V_INT: return v.i != 0;
    case V_FLOAT: return v.f != 0.0;
    case V_STR: return v.s.n > 0;
    case V_LIST: return v.l->n > 0;
    case V_DICT: return v.d->n > 0;
    case V_FUNC: return true;
    default: return false;
    }
}

static bool is_number(value v) { return v.t == V_INT || v.t == V_FLOAT || v.t == V_BOOL; }
static double as_double(value v) { return v.t == V_FLOAT ? v.f : v.t == V_INT ? (double)v.i : (double)v.b; }

bool v_equal(value a, value b) {
    if (is_number(a) && is_number(b)) {
        if (a.t != V_FLOAT && b.t != V_FLOAT)
            return (a.t == V_INT ? a.i : a.b) == (b.t == V_INT ? b.i : b.b);
        return as_double(a) == as_double(b);
    }
    if (a.t != b.t)
        return false;
    switch (a.t) {
    case V_UNDEF:
    case V_NONE: return true;
    case V_STR: return a.s.n == b.s.n && !memcmp(a.s.p, b.s.p, a.s.n);
    case V_LIST:
        if (a.l->n != b.l->n || a.l->is_tuple != b.l->is_tuple)
            return false;
        for (size_t i = 0; i < a.l->n; i++)
            if (!v_equal(a.l->v[i], b.l->v[i]))
                return false;
        return true;
    case V_DICT:
        if (a.d->n != b.d->n)
            return false;
        for (size_t i = 0; i < a.d->n; i++) {
            value *o = dict_get(b.d, a.d->k[i].p, a.d->k[i].n);
            if (!o || !v_equal(a.d->v[i], *o))
                return false;
        }
        return true;
    case V_FUNC: return a.fn == b.fn;
    default: return false;
    }
}

const char *v_type_name(value v) {
    static const char *names[] = {"Undefined", "NoneType", "bool", "int", "float", "str", "list", "dict", "function"};
    return names[v.t];
}

/* Python's repr(float): the shortest digits that round-trip, in fixed
 * notation for exponents -4..15 and scientific outside, ".0" when integral. */
void float_repr(double f, char out[40]) {
    if (isnan(f)) {
        strcpy(out, "nan");
        return;
    }
    if (isinf(f)) {
        strcpy(out, f < 0 ? "-inf" : "inf");
        return;
    }
    char buf[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*e", prec - 1, f);
        if (strtod(buf, NULL) == f)
            break;
    }
    /* buf: [-]d.ddde[+-]xx */
    char digits[24];
    int nd = 0, exp10;
    const char *s = buf;
    bool neg = *s == '-';
    if (neg)
        s++;
    for (; *s && *s != 'e'; s++)
        if (*s != '.')
            digits[nd++] = *s;
    exp10 = atoi(s + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = 0;
    char *o = out;
    if (neg)
        *o++ = '-';
    if (exp10 >= -4 && exp10 < 16) {
        if (exp10 < 0) {
            o += sprintf(o, "0.");
            for (int i = 0; i < -exp10 - 1; i++)
                *o++ = '0';
            o += sprintf(o, "%s", digits);
        } else {
            for (int i = 0; i <= exp10 || i < nd; i++) {
                if (i == exp10 + 1)
                    *o++ = '.';
                *o++ = i < nd ? digits[i] : '0';
            }
            if (nd <= exp10 + 1)
                o += sprintf(o, ".0");
        }
        *o = 0;
    } else {
        *o++ = digits[0];
        if (nd > 1) {
            *o++ = '.';
            for (int i = 1; i < nd; i++)
                *o++ = digits[i];
        }
        sprintf(o, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
    }
}

static void repr_str(strbuf *b, jstr s) {
    bool has_single = memchr(s.p, '\'', s.n) != NULL, has_double = memchr(s.p, '"', s.n) != NULL;
    char q = has_single && !has_double ? '"' : '\'';
    sb_put(b, &q, 1);
    for (size_t i = 0; i < s.n; i++) {
        unsigned char c = (unsigned char)s.p[i];
        char esc[8];
        if (c == (unsigned char)q || c == '\\') {
            esc[0] = '\\', esc[1] = (char)c;
            sb_put(b, esc, 2);
        } else if (c == '\n')
            sb_puts(b, "\\n");
        else if (c == '\r')
            sb_puts(b, "\\r");
        else if (c == '\t')
            sb_puts(b, "\\t");
        else if (c < 0x20 || c == 0x7f) {
            snprintf(esc, sizeof esc, "\\x%02x", c);
            sb_puts(b, esc);
        } else
            sb_put(b, (const char *)&c, 1);
    }
    sb_put(b, &q, 1);
}

static void scalar_str(strbuf *b, value v) {
    char buf[40];
    switch (v.t) {
    case V_NONE: sb_puts(b, "None"); break;
    case V_BOOL: sb_puts(b, v.b ? "True" : "False"); break;
    case V_INT:
        snprintf(buf, sizeof buf, "%lld", (long long)v.i);
        sb_puts(b, buf);
        break;
    case V_FLOAT:
        float_repr(v.f, buf);
        sb_puts(b, buf);
        break;
    case V_FUNC:
        sb_puts(b, "<function ");
        sb_put(b, v.fn->name.p, v.fn->name.n);
        sb_puts(b, ">");
        break;
    default: break;
    }
}

void v_repr_into(strbuf *b, value v) {
    switch (v.t) {
    case V_STR: repr_str(b, v.s); break;
    case V_UNDEF: break;
    case V_LIST:
        sb_puts(b, v.l->is_tuple ? "(" : "[");
        for (size_t i = 0; i < v.l->n; i++) {
            if (i)
                sb_puts(b, ", ");
            v_repr_into(b, v.l->v[i]);
        }
        sb_puts(b, v.l->is_tuple ? (v.l->n == 1 ? ",)" : ")") : "]");
        break;
    case V_DICT:
        if (v.d->is_namespace) {
            sb_puts(b, "<Namespace>");
            break;
        }
        sb_puts(b, "{");
        for (size_t i = 0; i < v.d->n; i++) {
            if (i)
                sb_puts(b, ", ");
            repr_str(b, v.d->k[i]);
            sb_puts(b, ": ");
            v_repr_into(b, v.d->v[i]);
        }
        sb_puts(b, "}");
        break;
    default: scalar_str(b, v);
    }
}

void v_str_into(strbuf *b, value v) {
    if (v.t == V_STR)
        sb_put(b, v.s.p, v.s.n);
    else
        v_repr_into(b, v);
}

static void json_str(strbuf *b, jstr s) {
    sb_puts(b, "\"");
    size_t run = 0;
    for (size_t i = 0; i < s.n; i++) {
        unsigned char c = (unsigned char)s.p[i];
        const char *esc = NULL;
        char u[8];
        if (c == '"')
            esc = "\\\"";
        else if (c == '\\')
            esc = "\\\\";
        else if (c == '\n')
            esc = "\\n";
        else if (c == '\r')
            esc = "\\r";
        else if (c == '\t')
            esc = "\\t";
        else if (c == '\b')
            esc = "\\b";
        else if (c == '\f')
            esc = "\\f";
        else if (c < 0x20) {
            snprintf(u, sizeof u, "\\u%04x", c);
            esc = u;
        }
        if (!esc) {
            run++;
            continue;
        }
        sb_put(b, s.p + i - run, run);
        run = 0;
        sb_puts(b, esc);
    }
    sb_put(b, s.p + s.n - run, run);
    sb_puts(b, "\"");
}

static void newline_indent(strbuf *b, int indent, int depth) {
    sb_puts(b, "\n");
    for (int i = 0; i < indent * depth; i++)
        sb_puts(b, " ");
}

static int cmp_jstr(const jstr *a, const jstr *b) {
    size_t n = a->n < b->n ? a->n : b->n;
    int c = memcmp(a->p, b->p, n);
    return c ? c : (a->n > b->n) - (a->n < b->n);
}

int v_json_into(strbuf *b, value v, int indent, const char *item_sep, const char *key_sep, bool sort_keys, int depth) {
    char buf[40];
    if (depth > 100)
        return -1;
    switch (v.t) {
    case V_NONE: sb_puts(b, "null"); return 0;
    case V_BOOL: sb_puts(b, v.b ? "true" : "false"); return 0;
    case V_INT:
        snprintf(buf, sizeof buf, "%lld", (long long)v.i);
        sb_puts(b, buf);
        return 0;
    case V_FLOAT:
        if (isnan(v.f))
            sb_puts(b, "NaN");
        else if (isinf(v.f))
            sb_puts(b, v.f < 0 ? "-Infinity" : "Infinity");
        else {
            float_repr(v.f, buf);
            sb_puts(b, buf);
        }
        return 0;
    case V_STR: json_str(b, v.s); return 0;
    case V_LIST:
        sb_puts(b, "[");
        for (size_t i = 0; i < v.l->n; i++) {
            if (i)
                sb_puts(b, item_sep);
            if (indent >= 0)
                newline_indent(b, indent, depth + 1);
            if (v_json_into(b, v.l->v[i], indent, item_sep, key_sep, sort_keys, depth + 1))
                return -1;
        }
        if (indent >= 0 && v.l->n)
            newline_indent(b, indent, depth);
        sb_puts(b, "]");
        return 0;
    case V_DICT: {
        size_t n = v.d->n, order[n ? n : 1];
        for (size_t i = 0; i < n; i++)
            order[i] = i;
        for (size_t i = 1; sort_keys && i < n; i++) /* insertion sort: dicts here are small */
            for (size_t j = i; j > 0 && cmp_jstr(&v.d->k[order[j - 1]], &v.d->k[order[j]]) > 0; j--) {
                size_t t = order[j];
                order[j] = order[j - 1], order[j - 1] = t;
            }
        sb_puts(b, "{");
        for (size_t i = 0; i < n; i++) {
            if (i)
                sb_puts(b, item_sep);
            if (indent >= 0)
                newline_indent(b, indent, depth + 1);
            json_str(b, v.d->k[order[i]]);
            sb_puts(b, key_sep);
            if (v_json_into(b, v.d->v[order[i]], indent, item_sep, key_sep, sort_keys, depth + 1))
                return -1;
        }
        if (indent >= 0 && n)
            newline_indent(b, indent, depth);
        sb_puts(b, "}");
        return 0;
    }
    default: return -1;
    }
}
