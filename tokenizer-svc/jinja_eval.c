/* Jinja evaluator: walks the AST with a scope chain, writing text into a
 * buffer. Errors longjmp out to jinja_render, which frees the render arena
 * in one go; nothing here needs cleanup on the error path. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jinja_internal.h"

#define MAX_MACRO_DEPTH 64
#define MAX_STEPS       20000000

void rerr(render_ctx *c, const char *kind, const char *fmt, ...) {
    int n = kind ? snprintf(c->err, c->errlen, "%s: line %d: ", kind, c->line) : 0;
    va_list ap;
    va_start(ap, fmt);
    if (n >= 0 && (size_t)n < c->errlen)
        vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    longjmp(c->fail, 1);
}

value v_strbuf(strbuf *b) { return v_str(b->p ? b->p : "", b->n); }

jstr to_str(render_ctx *c, value v) {
    if (v.t == V_STR)
        return v.s;
    strbuf b = {.a = c->a};
    v_str_into(&b, v);
    return (jstr){b.p ? b.p : "", b.n};
}

size_t utf8_chars(jstr s) {
    size_t n = 0;
    for (size_t i = 0; i < s.n; i++)
        n += ((unsigned char)s.p[i] & 0xc0) != 0x80;
    return n;
}

value arg_get(const call_args *a, int i, const char *kw, value dflt) {
    if (kw)
        for (int k = 0; k < a->n_kw; k++)
            if (a->kw_names[k].n == strlen(kw) && !memcmp(a->kw_names[k].p, kw, a->kw_names[k].n))
                return a->kw[k];
    return i >= 0 && i < a->n_pos ? a->pos[i] : dflt;
}

/* ---- scopes ---- */

static value *scope_find(scope *s, const char *name, size_t n) {
    for (; s; s = s->parent) {
        value *v = dict_get(&s->vars, name, n);
        if (v)
            return v;
    }
    return NULL;
}

static void scope_set(render_ctx *c, scope *s, jstr name, value v) { dict_set(c->a, &s->vars, name, v); }

static scope *scope_new(render_ctx *c, scope *parent) {
    scope *s = arena_alloc(c->a, sizeof *s);
    s->parent = parent;
    return s;
}

/* ---- iteration ---- */

struct vlist *iterate(render_ctx *c, value v) {
    struct vlist *out = arena_alloc(c->a, sizeof *out);
    switch (v.t) {
    case V_LIST: return v.l;
    case V_UNDEF: return out;
    case V_DICT:
        for (size_t i = 0; i < v.d->n; i++)
            list_push(c->a, out, v_str(v.d->k[i].p, v.d->k[i].n));
        return out;
    case V_STR:
        for (size_t i = 0; i < v.s.n;) {
            size_t k = 1;
            while (i + k < v.s.n && ((unsigned char)v.s.p[i + k] & 0xc0) == 0x80)
                k++;
            list_push(c->a, out, v_str(v.s.p + i, k));
            i += k;
        }
        return out;
    default: rerr(c, "TypeError", "'%s' object is not iterable", v_type_name(v));
    }
}

/* ---- attribute and item access ---- */

/* An undefined value remembers why it is undefined, in jinja2's words, for
 * the error raised if it is then used. */
static value undefined_because(render_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static value undefined_because(render_ctx *c, const char *fmt, ...) {
    char buf[300];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    value v = v_undef();
    size_t len = n < 0 ? 0 : (size_t)n >= sizeof buf ? sizeof buf - 1 : (size_t)n;
    v.s = (jstr){arena_strndup(c->a, buf, len), len};
    return v;
}

static value undefined_named(render_ctx *c, const char *name, size_t n) {
    return undefined_because(c, "'%.*s' is undefined", (int)n, name);
}

static void require_defined(render_ctx *c, value obj) {
    if (obj.t == V_UNDEF)
        rerr(c, "UndefinedError", "%.*s", (int)obj.s.n, obj.s.p ? obj.s.p : "value is undefined");
}

value get_attr(render_ctx *c, value obj, const char *name, size_t n) {
    require_defined(c, obj);
    if (obj.t == V_DICT && obj.d->is_namespace) {
        value *v = dict_get(obj.d, name, n);
        return v ? *v : undefined_because(c, "'Namespace' object has no attribute '%.*s'", (int)n, name);
    }
    if (is_method(obj, name, n)) {
        value f = {.t = V_FUNC};
        f.fn = arena_alloc(c->a, sizeof *f.fn);
        f.fn->kind = FN_METHOD, f.fn->name = (jstr){name, n}, f.fn->self = obj;
        return f;
    }
    if (obj.t == V_DICT) {
        value *v = dict_get(obj.d, name, n);
        if (v)
            return *v;
    }
    return undefined_because(c, "'%s object' has no attribute '%.*s'", v_type_name(obj), (int)n, name);
}

/* Python index normalisation; false when out of range. */
static bool norm_index(int64_t *i, size_t n) {
    if (*i < 0)
        *i += (int64_t)n;
    return *i >= 0 && (uint64_t)*i < n;
}

static value get_item(render_ctx *c, value obj, value key) {
    require_defined(c, obj);
    if (obj.t == V_DICT && key.t == V_STR) {
        value *v = dict_get(obj.d, key.s.p, key.s.n);
        return v ? *v : get_attr(c, obj, key.s.p, key.s.n);
    }
    if ((obj.t == V_LIST || obj.t == V_STR) && (key.t == V_INT || key.t == V_BOOL)) {
        int64_t i = key.t == V_INT ? key.i : key.b;
        struct vlist *items = iterate(c, obj);
        return norm_index(&i, items->n) ? items->v[i]
                                        : undefined_because(c, "'%s object' has no element %lld", v_type_name(obj),
                                                            (long long)(key.t == V_INT ? key.i : key.b));
    }
    if (key.t == V_STR)
        return get_attr(c, obj, key.s.p, key.s.n);
    if (key.t == V_INT)
        return undefined_because(c, "'%s object' has no element %lld", v_type_name(obj), (long long)key.i);
    return undefined_because(c, "'%s object' has no element of type %s", v_type_name(obj), v_type_name(key));
}

static int64_t slice_bound(render_ctx *c, value v, int64_t dflt) {
    if (v.t == V_UNDEF || v.t == V_NONE)
        return dflt;
    if (v.t != V_INT)
        rerr(c, "TypeError", "slice indices must be integers");
    return v.i;
}

static value get_slice(render_ctx *c, value obj, const node *n, scope *s) {
    require_defined(c, obj);
    if (obj.t != V_LIST && obj.t != V_STR)
        rerr(c, "TypeError", "'%s' object is not subscriptable", v_type_name(obj));
    struct vlist *items = iterate(c, obj);
    int64_t len = (int64_t)items->n;
    int64_t step = n->args.n ? slice_bound(c, eval_expr(c, n->args.v[0], s), 1) : 1;
    if (step == 0)
        rerr(c, "ValueError", "slice step cannot be zero");
    value vs = n->b ? eval_expr(c, n->b, s) : v_none(), ve = n->c ? eval_expr(c, n->c, s) : v_none();
    int64_t start = slice_bound(c, vs, step > 0 ? 0 : len - 1), stop = slice_bound(c, ve, step > 0 ? len : -len - 1);
    /* clamp as Python's PySlice_AdjustIndices */
    if (start < 0)
        start += len;
    if (stop < 0)
        stop += len;
    if (step > 0) {
        start = start < 0 ? 0 : start > len ? len : start;
        stop = stop < 0 ? 0 : stop > len ? len : stop;
    } else {
        start = start < -1 ? -1 : start > len - 1 ? len - 1 : start;
        stop = stop < -1 ? -1 : stop > len - 1 ? len - 1 : stop;
    }
    value out = v_list(c->a);
    strbuf sb = {.a = c->a};
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
        if (obj.t == V_STR)
            sb_put(&sb, items->v[i].s.p, items->v[i].s.n);
        else
            list_push(c->a, out.l, items->v[i]);
    }
    return obj.t == V_STR ? v_strbuf(&sb) : out;
}

/* ---- operators ---- */

static bool is_num(value v) { return v.t == V_INT || v.t == V_FLOAT || v.t == V_BOOL; }
static double num(value v) { return v.t == V_FLOAT ? v.f : v.t == V_INT ? (double)v.i : (double)v.b; }
static int64_t inum(value v) { return v.t == V_INT ? v.i : v.t == V_BOOL ? v.b : 0; }

static const char *op_name(int op) {
    static const char *names[] = {"+", "-", "*", "/", "//", "%", "**"};
    return op <= OP_POW ? names[op] : "?";
}

static value repeat(render_ctx *c, value seq, int64_t times) {
    if (times > 1000000)
        rerr(c, "ValueError", "repetition count too large");
    if (seq.t == V_STR) {
        strbuf b = {.a = c->a};
        for (int64_t i = 0; i < times; i++)
            sb_put(&b, seq.s.p, seq.s.n);
        return v_strbuf(&b);
    }
    value out = v_list(c->a);
    for (int64_t i = 0; i < times; i++)
        for (size_t k = 0; k < seq.l->n; k++)
            list_push(c->a, out.l, seq.l->v[k]);
    return out;
}

static value binary(render_ctx *c, int op, value a, value b) {
    if (is_num(a) && is_num(b)) {
        bool ints = a.t != V_FLOAT && b.t != V_FLOAT;
        int64_t x = inum(a), y = inum(b), r;
        double fx = num(a), fy = num(b);
        switch (op) {
        case OP_ADD:
            if (ints && !__builtin_add_overflow(x, y, &r))
                return v_int(r);
            return v_float(fx + fy);
        case OP_SUB:
            if (ints && !__builtin_sub_overflow(x, y, &r))
                return v_int(r);
            return v_float(fx - fy);
        case OP_MUL:
            if (ints && !__builtin_mul_overflow(x, y, &r))
                return v_int(r);
            return v_float(fx * fy);
        case OP_DIV:
            if (fy == 0)
                rerr(c, "ZeroDivisionError", "division by zero");
            return v_float(fx / fy);
        case OP_FLOORDIV:
        case OP_MOD:
            if (fy == 0)
                rerr(c, "ZeroDivisionError", "integer division or modulo by zero");
            if (ints && !(x == INT64_MIN && y == -1)) {
                int64_t q = x / y, m = x % y;
                if (m && ((m < 0) != (y < 0)))
                    q--, m += y; /* Python floors */
                return op == OP_FLOORDIV ? v_int(q) : v_int(m);
            } else {
                double q = floor(fx / fy), m = fx - q * fy;
                return op == OP_FLOORDIV ? v_float(q) : v_float(m);
            }
        case OP_POW:
            if (ints && y >= 0) {
                int64_t acc = 1;
                bool overflow = false;
                for (int64_t i = 0; i < y && !overflow; i++)
                    overflow = __builtin_mul_overflow(acc, x, &acc);
                if (!overflow)
                    return v_int(acc);
            }
            return v_float(pow(fx, fy));
        }
    }
    if (op == OP_ADD && a.t == V_STR && b.t == V_STR) {
        strbuf s = {.a = c->a};
        sb_put(&s, a.s.p, a.s.n);
        sb_put(&s, b.s.p, b.s.n);
        return v_strbuf(&s);
    }
    if (op == OP_ADD && a.t == V_LIST && b.t == V_LIST) {
        value out = v_list(c->a);
        for (size_t i = 0; i < a.l->n; i++)
            list_push(c->a, out.l, a.l->v[i]);
        for (size_t i = 0; i < b.l->n; i++)
            list_push(c->a, out.l, b.l->v[i]);
        return out;
    }
    if (op == OP_MUL && (a.t == V_STR || a.t == V_LIST) && (b.t == V_INT || b.t == V_BOOL))
        return repeat(c, a, inum(b));
    if (op == OP_MUL && (b.t == V_STR || b.t == V_LIST) && (a.t == V_INT || a.t == V_BOOL))
        return repeat(c, b, inum(a));
    require_defined(c, a);
    require_defined(c, b);
    rerr(c, "TypeError", "unsupported operand type(s) for %s: '%s' and '%s'", op_name(op), v_type_name(a),
         v_type_name(b));
}

int compare_values(render_ctx *c, value a, value b) {
    if (is_num(a) && is_num(b)) {
        double x = num(a), y = num(b);
        return (x > y) - (x < y);
    }
    if (a.t == V_STR && b.t == V_STR) {
        size_t n = a.s.n < b.s.n ? a.s.n : b.s.n;
        int r = memcmp(a.s.p, b.s.p, n);
        return r ? r : (a.s.n > b.s.n) - (a.s.n < b.s.n);
    }
    if (a.t == V_LIST && b.t == V_LIST) {
        for (size_t i = 0; i < a.l->n && i < b.l->n; i++) {
            int r = compare_values(c, a.l->v[i], b.l->v[i]);
            if (r)
                return r;
        }
        return (a.l->n > b.l->n) - (a.l->n < b.l->n);
    }
    rerr(c, "TypeError", "'<' not supported between instances of '%s' and '%s'", v_type_name(a), v_type_name(b));
}

static bool contains(render_ctx *c, value container, value item) {
    switch (container.t) {
    case V_STR:
        if (item.t != V_STR)
            rerr(c, "TypeError", "'in <string>' requires string as left operand, not %s", v_type_name(item));
        return item.s.n == 0 || memmem(container.s.p, container.s.n, item.s.p, item.s.n) != NULL;
    case V_LIST:
        for (size_t i = 0; i < container.l->n; i++)
            if (v_equal(container.l->v[i], item))
                return true;
        return false;
    case V_DICT: return item.t == V_STR && dict_get(container.d, item.s.p, item.s.n) != NULL;
    case V_UNDEF: return false;
    default: rerr(c, "TypeError", "argument of type '%s' is not iterable", v_type_name(container));
    }
}

static value compare(render_ctx *c, int op, value a, value b) {
    switch (op) {
    case OP_EQ: return v_bool(v_equal(a, b));
    case OP_NE: return v_bool(!v_equal(a, b));
    case OP_LT: return v_bool(compare_values(c, a, b) < 0);
    case OP_LE: return v_bool(compare_values(c, a, b) <= 0);
    case OP_GT: return v_bool(compare_values(c, a, b) > 0);
    case OP_GE: return v_bool(compare_values(c, a, b) >= 0);
    case OP_IN: return v_bool(contains(c, b, a));
    default: return v_bool(!contains(c, b, a));
    }
}

/* ---- calls ---- */

static void exec_body(render_ctx *c, const node_list *body, scope *s, strbuf *out);

static call_args eval_args(render_ctx *c, const node *n, scope *s) {
    call_args a = {0};
    a.n_pos = n->args.n, a.n_kw = n->kw_args.n, a.kw_names = n->kw_names;
    a.pos = arena_alloc(c->a, (size_t)(a.n_pos + 1) * sizeof *a.pos);
    a.kw = arena_alloc(c->a, (size_t)(a.n_kw + 1) * sizeof *a.kw);
    for (int i = 0; i < a.n_pos; i++)
        a.pos[i] = eval_expr(c, n->args.v[i], s);
    for (int i = 0; i < a.n_kw; i++)
        a.kw[i] = eval_expr(c, n->kw_args.v[i], s);
    return a;
}

static value call_macro(render_ctx *c, const node *m, call_args *args) {
    if (c->depth >= MAX_MACRO_DEPTH)
        rerr(c, "RuntimeError", "macro recursion deeper than %d", MAX_MACRO_DEPTH);
    scope *s = scope_new(c, c->globals);
    for (int i = 0; i < m->n_targets; i++) {
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)m->targets[i].n, m->targets[i].p);
        value v = arg_get(args, i, name, v_undef());
        if (v.t == V_UNDEF && m->args.v[i])
            v = eval_expr(c, m->args.v[i], s);
        scope_set(c, s, m->targets[i], v);
    }
    if (args->n_pos > m->n_targets)
        rerr(c, "TypeError", "macro '%.*s' takes not more than %d argument(s)", (int)m->name.n, m->name.p,
             m->n_targets);
    strbuf out = {.a = c->a};
    int saved_line = c->line;
    c->depth++;
    exec_body(c, &m->body, s, &out);
    c->depth--;
    c->line = saved_line;
    return v_strbuf(&out);
}

value call_value(render_ctx *c, value fn, call_args *args) {
    if (fn.t != V_FUNC) {
        require_defined(c, fn);
        rerr(c, "TypeError", "'%s' object is not callable", v_type_name(fn));
    }
    switch (fn.fn->kind) {
    case FN_MACRO: return call_macro(c, fn.fn->macro, args);
    case FN_METHOD: return call_method(c, fn.fn->self, fn.fn->name, args);
    default: return call_global(c, fn.fn->name, args);
    }
}

/* ---- expressions ---- */

value eval_expr(render_ctx *c, const node *n, scope *s) {
    if (--c->steps < 0)
        rerr(c, "RuntimeError", "template evaluation exceeded its budget");
    c->line = n->line;
    switch (n->kind) {
    case N_LITERAL: return n->lit;
    case N_NAME: {
        value *v = scope_find(s, n->name.p, n->name.n);
        if (v)
            return *v;
        if (is_global(n->name.p, n->name.n)) {
            value f = {.t = V_FUNC};
            f.fn = arena_alloc(c->a, sizeof *f.fn);
            f.fn->kind = FN_GLOBAL, f.fn->name = n->name;
            return f;
        }
        return undefined_named(c, n->name.p, n->name.n);
    }
    case N_LIST: {
        value l = v_list(c->a);
        l.l->is_tuple = n->op == 1;
        for (int i = 0; i < n->args.n; i++)
            list_push(c->a, l.l, eval_expr(c, n->args.v[i], s));
        return l;
    }
    case N_DICT: {
        value d = v_dict(c->a);
        for (int i = 0; i + 1 < n->args.n; i += 2) {
            value k = eval_expr(c, n->args.v[i], s);
            dict_set(c->a, d.d, to_str(c, k), eval_expr(c, n->args.v[i + 1], s));
        }
        return d;
    }
    case N_ATTR: return get_attr(c, eval_expr(c, n->a, s), n->name.p, n->name.n);
    case N_INDEX: {
        value obj = eval_expr(c, n->a, s);
        return get_item(c, obj, eval_expr(c, n->b, s));
    }
    case N_SLICE: return get_slice(c, eval_expr(c, n->a, s), n, s);
    case N_CALL: {
        value fn = eval_expr(c, n->a, s);
        call_args args = eval_args(c, n, s);
        c->line = n->line;
        return call_value(c, fn, &args);
    }
    case N_FILTER: {
        value v = eval_expr(c, n->a, s);
        call_args args = eval_args(c, n, s);
        c->line = n->line;
        return apply_filter(c, n->name, v, &args);
    }
    case N_TEST: {
        value v = eval_expr(c, n->a, s);
        call_args args = eval_args(c, n, s);
        c->line = n->line;
        return v_bool(apply_test(c, n->name, v, &args) != (n->op != 0));
    }
    case N_NOT: return v_bool(!v_truthy(eval_expr(c, n->a, s)));
    case N_NEG:
    case N_POS: {
        value v = eval_expr(c, n->a, s);
        if (!is_num(v))
            rerr(c, "TypeError", "bad operand type for unary %s: '%s'", n->kind == N_NEG ? "-" : "+", v_type_name(v));
        if (n->kind == N_POS)
            return v;
        return v.t == V_FLOAT ? v_float(-v.f) : v_int(-inum(v));
    }
    case N_BINOP: {
        value a = eval_expr(c, n->a, s);
        return binary(c, n->op, a, eval_expr(c, n->b, s));
    }
    case N_COMPARE: {
        value a = eval_expr(c, n->a, s);
        return compare(c, n->op, a, eval_expr(c, n->b, s));
    }
    case N_AND: {
        value a = eval_expr(c, n->a, s);
        return v_truthy(a) ? eval_expr(c, n->b, s) : a;
    }
    case N_OR: {
        value a = eval_expr(c, n->a, s);
        return v_truthy(a) ? a : eval_expr(c, n->b, s);
    }
    case N_CONDEXPR:
        if (v_truthy(eval_expr(c, n->a, s)))
            return eval_expr(c, n->b, s);
        return n->c ? eval_expr(c, n->c, s) : v_undef();
    case N_CONCAT: {
        value a = eval_expr(c, n->a, s), b = eval_expr(c, n->b, s);
        strbuf out = {.a = c->a};
        if (a.t != V_UNDEF)
            v_str_into(&out, a);
        if (b.t != V_UNDEF)
            v_str_into(&out, b);
        return v_strbuf(&out);
    }
    default: rerr(c, "RuntimeError", "statement used as expression");
    }
}

/* ---- statements ---- */

static void assign_targets(render_ctx *c, scope *s, const node *n, value v) {
    if (n->n_targets == 1) {
        scope_set(c, s, n->targets[0], v);
        return;
    }
    struct vlist *items = iterate(c, v);
    if ((int)items->n != n->n_targets)
        rerr(c, "ValueError", "cannot unpack %zu values into %d names", items->n, n->n_targets);
    for (int i = 0; i < n->n_targets; i++)
        scope_set(c, s, n->targets[i], items->v[i]);
}

static value loop_info(render_ctx *c, struct vlist *items, size_t i) {
    value loop = v_dict(c->a);
    size_t n = items->n;
    struct {
        const char *k;
        value v;
    } f[] = {
        {"index", v_int((int64_t)i + 1)},
        {"index0", v_int((int64_t)i)},
        {"revindex", v_int((int64_t)(n - i))},
        {"revindex0", v_int((int64_t)(n - i - 1))},
        {"first", v_bool(i == 0)},
        {"last", v_bool(i + 1 == n)},
        {"length", v_int((int64_t)n)},
        {"depth", v_int(1)},
        {"depth0", v_int(0)},
    };
    for (size_t k = 0; k < sizeof f / sizeof f[0]; k++)
        dict_set(c->a, loop.d, (jstr){f[k].k, strlen(f[k].k)}, f[k].v);
    if (i > 0)
        dict_set(c->a, loop.d, (jstr){"previtem", 8}, items->v[i - 1]);
    if (i + 1 < n)
        dict_set(c->a, loop.d, (jstr){"nextitem", 8}, items->v[i + 1]);
    return loop;
}

static void exec_for(render_ctx *c, const node *n, scope *s, strbuf *out) {
    struct vlist *all = iterate(c, eval_expr(c, n->a, s)), *items = all;
    if (n->b) { /* inline filter: applied before loop.* is computed */
        items = arena_alloc(c->a, sizeof *items);
        for (size_t i = 0; i < all->n; i++) {
            scope *fs = scope_new(c, s);
            assign_targets(c, fs, n, all->v[i]);
            if (v_truthy(eval_expr(c, n->b, fs)))
                list_push(c->a, items, all->v[i]);
        }
    }
    for (size_t i = 0; i < items->n; i++) {
        scope *body = scope_new(c, s); /* fresh each iteration, as jinja2 */
        assign_targets(c, body, n, items->v[i]);
        scope_set(c, body, (jstr){"loop", 4}, loop_info(c, items, i));
        exec_body(c, &n->body, body, out);
        if (c->loop_ctl == LOOP_BREAK) {
            c->loop_ctl = LOOP_NONE;
            break;
        }
        c->loop_ctl = LOOP_NONE;
    }
    if (items->n == 0)
        exec_body(c, &n->alt, s, out);
}

static void exec_stmt(render_ctx *c, const node *n, scope *s, strbuf *out) {
    c->line = n->line;
    switch (n->kind) {
    case S_TEXT: sb_put(out, n->lit.s.p, n->lit.s.n); break;
    case S_OUTPUT: {
        value v = eval_expr(c, n->a, s);
        if (v.t != V_UNDEF)
            v_str_into(out, v);
        break;
    }
    case S_IF: exec_body(c, v_truthy(eval_expr(c, n->a, s)) ? &n->body : &n->alt, s, out); break;
    case S_FOR: exec_for(c, n, s, out); break;
    case S_SET: {
        value v = eval_expr(c, n->a, s);
        if (n->name.p) {
            value *ns = scope_find(s, n->targets[0].p, n->targets[0].n);
            if (!ns || ns->t != V_DICT || !ns->d->is_namespace)
                rerr(c, "TemplateRuntimeError", "cannot assign attribute on non-namespace object");
            dict_set(c->a, ns->d, n->name, v);
        } else {
            assign_targets(c, s, n, v);
        }
        break;
    }
    case S_SET_BLOCK: {
        strbuf captured = {.a = c->a};
        exec_body(c, &n->body, s, &captured);
        scope_set(c, s, n->targets[0], v_strbuf(&captured));
        break;
    }
    case S_MACRO: {
        value f = {.t = V_FUNC};
        f.fn = arena_alloc(c->a, sizeof *f.fn);
        f.fn->kind = FN_MACRO, f.fn->name = n->name, f.fn->macro = n;
        scope_set(c, s, n->name, f);
        break;
    }
    case S_BREAK: c->loop_ctl = LOOP_BREAK; break;
    case S_CONTINUE: c->loop_ctl = LOOP_CONTINUE; break;
    default: rerr(c, "RuntimeError", "expression used as statement");
    }
}

static void exec_body(render_ctx *c, const node_list *body, scope *s, strbuf *out) {
    for (int i = 0; i < body->n && c->loop_ctl == LOOP_NONE; i++)
        exec_stmt(c, body->v[i], s, out);
}

/* ---- public API ---- */

jinja_template *jinja_compile(const char *src, size_t len, char *err, size_t errlen) {
    jinja_template *t = calloc(1, sizeof *t);
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    /* the AST points into the source: keep a copy with the template */
    const char *copy = arena_strndup(&t->a, src, len);
    if (jinja_parse(t, copy, len, err, errlen)) {
        jinja_free(t);
        return NULL;
    }
    return t;
}

void jinja_free(jinja_template *t) {
    if (!t)
        return;
    arena_free(&t->a);
    free(t);
}

int jinja_render(const jinja_template *t, json_t *vars, const jinja_options *opt, char **out, size_t *out_len,
                 char *err, size_t errlen) {
    arena a = {0};
    render_ctx c = {.a = &a, .err = err, .errlen = errlen, .opt = opt, .line = 1, .steps = MAX_STEPS};
    /* volatile: both are read after longjmp returns to setjmp */
    strbuf *volatile buf = calloc(1, sizeof *buf);
    volatile int rc = 0;
    *out = NULL, *out_len = 0;
    if (!buf) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (setjmp(c.fail)) {
        free(buf->p);
        rc = -1;
    } else {
        c.globals = scope_new(&c, NULL);
        value v = json_is_object(vars) ? v_from_json(&a, vars) : v_dict(&a);
        c.globals->vars = *v.d;
        exec_body(&c, &t->body, c.globals, buf);
        *out = buf->p ? buf->p : calloc(1, 1);
        *out_len = buf->n;
    }
    free(buf);
    arena_free(&a);
    return rc;
}
