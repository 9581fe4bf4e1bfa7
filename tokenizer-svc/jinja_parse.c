/* Jinja lexer and parser. The template is first cut into chunks (text,
 * {{ expression }}, {% statement %}) with whitespace control applied as
 * jinja2 does with trim_blocks and lstrip_blocks; then each tag's inside is
 * tokenized and parsed by recursive descent, in jinja2's precedence order. */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jinja_internal.h"

/* ---- arena ---- */

struct arena_block {
    struct arena_block *next;
    size_t used, size;
    _Alignas(16) char data[];
};

void *arena_alloc(arena *a, size_t n) {
    n = (n + 15) & ~(size_t)15;
    struct arena_block *b = a->head;
    if (!b || b->used + n > b->size) {
        size_t size = n > 65536 ? n : 65536;
        b = malloc(sizeof *b + size);
        if (!b)
            abort(); /* out of memory while rendering: nothing sane to return */
        b->next = a->head, b->used = 0, b->size = size;
        a->head = b;
    }
    void *p = b->data + b->used;
    b->used += n;
    memset(p, 0, n);
    return p;
}

void arena_free(arena *a) {
    for (struct arena_block *b = a->head, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    a->head = NULL;
}

char *arena_strndup(arena *a, const char *s, size_t n) {
    char *p = arena_alloc(a, n + 1);
    memcpy(p, s, n);
    return p;
}

/* ---- chunks ---- */

enum chunk_kind { CH_TEXT, CH_EXPR, CH_STMT };

typedef struct {
    enum chunk_kind kind;
    const char *p;
    size_t n;
    int line;
} chunk;

typedef struct {
    jinja_template *t;
    const char *src;
    size_t len;
    chunk *chunks;
    int n_chunks, cap_chunks, pos;
    /* tokens of the tag being parsed */
    struct token *tok;
    int n_tok, cap_tok, tpos;
    int line;
    int depth;             /* expression and block nesting: bounded, templates are untrusted */
    const char *line_mark; /* line_of's resume point */
    int line_at_mark;
    char *err;
    size_t errlen;
    jmp_buf fail;
} parser;

#define MAX_NESTING 200

static void perr(parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void perr(parser *p, const char *fmt, ...) {
    int n = snprintf(p->err, p->errlen, "TemplateSyntaxError: line %d: ", p->line);
    va_list ap;
    va_start(ap, fmt);
    if (n >= 0 && (size_t)n < p->errlen)
        vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    longjmp(p->fail, 1);
}

/* Line number of a position; positions are asked for in increasing order
 * while chunking, so counting resumes from the last one (linear overall). */
static int line_of(parser *p, const char *at) {
    if (at < p->line_mark)
        p->line_mark = p->src, p->line_at_mark = 1;
    for (; p->line_mark < at; p->line_mark++)
        p->line_at_mark += *p->line_mark == '\n';
    return p->line_at_mark;
}

static void add_chunk(parser *p, enum chunk_kind kind, const char *s, size_t n) {
    if (kind == CH_TEXT && n == 0)
        return;
    if (p->n_chunks == p->cap_chunks) {
        p->cap_chunks = p->cap_chunks ? 2 * p->cap_chunks : 64;
        chunk *c = realloc(p->chunks, (size_t)p->cap_chunks * sizeof *c);
        if (!c)
            perr(p, "out of memory");
        p->chunks = c;
    }
    p->chunks[p->n_chunks++] = (chunk){kind, s, n, line_of(p, s)};
}

/* End of a tag starting at s (after the opening two characters): the
 * position of the closing "}}", "%}" or "#}", skipping string literals. */
static const char *tag_end(const char *s, const char *end, char close) {
    char quote = 0;
    for (; s + 1 < end; s++) {
        if (quote) {
            if (*s == '\\')
                s++;
            else if (*s == quote)
                quote = 0;
        } else if (close != '#' && (*s == '\'' || *s == '"')) {
            quote = *s;
        } else if (*s == close && s[1] == '}') {
            return s;
        }
    }
    return NULL;
}

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

static void split_chunks(parser *p) {
    const char *s = p->src, *end = p->src + p->len;
    bool strip_next = false; /* the previous tag ended with '-' */
    bool line_start = true;  /* the text about to start begins a line */
    while (s < end) {
        const char *tag = s;
        while (tag + 1 < end && !(tag[0] == '{' && (tag[1] == '{' || tag[1] == '%' || tag[1] == '#')))
            tag++;
        if (tag + 1 >= end)
            tag = end;
        const char *text = s, *text_end = tag;
        if (strip_next)
            while (text < text_end && is_space(*text))
                text++;
        if (tag < end) {
            char kind = tag[1], mod = tag + 2 < end ? tag[2] : 0;
            if (mod == '-') {
                while (text_end > text && is_space(text_end[-1]))
                    text_end--;
            } else if (kind != '{' && mod != '+') {
                /* lstrip_blocks: drop spaces and tabs between the line start and the tag */
                const char *ls = text_end;
                while (ls > text && (ls[-1] == ' ' || ls[-1] == '\t'))
                    ls--;
                if ((ls > text && ls[-1] == '\n') || (ls == text && line_start && !strip_next))
                    text_end = ls;
            }
        }
        add_chunk(p, CH_TEXT, text, (size_t)(text_end - text));
        if (tag >= end)
            break;
        char kind = tag[1];
        char close = kind == '{' ? '}' : kind == '%' ? '%' : '#';
        const char *inner = tag + 2;
        if (inner < end && (*inner == '-' || *inner == '+'))
            inner++;
        const char *close_at = tag_end(inner, end, close);
        if (!close_at) {
            p->line = line_of(p, tag);
            perr(p, "unclosed tag '%c%c'", tag[0], tag[1]);
        }
        const char *inner_end = close_at;
        char end_mod = close_at > inner ? close_at[-1] : 0;
        if (end_mod == '-' || end_mod == '+')
            inner_end--;
        s = close_at + 2;
        strip_next = end_mod == '-';
        line_start = false;
        if (kind != '{' && end_mod != '-' && end_mod != '+' && s < end && *s == '\n') {
            s++; /* trim_blocks */
            line_start = true;
        }
        if (kind == '#')
            continue;
        if (kind == '%') {
            /* {% raw %} ... {% endraw %}: copy verbatim */
            const char *a = inner, *b = inner_end;
            while (a < b && is_space(*a))
                a++;
            while (b > a && is_space(b[-1]))
                b--;
            if (b - a == 3 && !memcmp(a, "raw", 3)) {
                const char *r = s;
                for (; r + 1 < end; r++) {
                    if (r[0] != '{' || r[1] != '%')
                        continue;
                    const char *q = r + 2;
                    if (*q == '-' || *q == '+')
                        q++;
                    while (q < end && is_space(*q))
                        q++;
                    if (end - q >= 6 && !memcmp(q, "endraw", 6))
                        break;
                }
                if (r + 1 >= end)
                    perr(p, "unclosed raw block");
                const char *raw_end = r;
                if (r[2] == '-')
                    while (raw_end > s && is_space(raw_end[-1]))
                        raw_end--;
                add_chunk(p, CH_TEXT, s, (size_t)(raw_end - s));
                const char *c2 = tag_end(r + 2, end, '%');
                if (!c2)
                    perr(p, "unclosed endraw tag");
                strip_next = c2[-1] == '-';
                s = c2 + 2;
                if (c2[-1] != '-' && c2[-1] != '+' && s < end && *s == '\n')
                    s++;
                continue;
            }
        }
        add_chunk(p, kind == '{' ? CH_EXPR : CH_STMT, inner, (size_t)(inner_end - inner));
    }
}

/* ---- tokens ---- */

enum tok_kind { T_NAME, T_STRING, T_INT, T_FLOAT, T_OP, T_END };

struct token {
    enum tok_kind kind;
    const char *p; /* T_NAME/T_OP: source text; T_STRING: unescaped (arena) */
    size_t n;
    int64_t i;
    double f;
};

static void push_tok(parser *p, struct token t) {
    if (p->n_tok == p->cap_tok) {
        p->cap_tok = p->cap_tok ? 2 * p->cap_tok : 64;
        struct token *v = realloc(p->tok, (size_t)p->cap_tok * sizeof *v);
        if (!v)
            perr(p, "out of memory");
        p->tok = v;
    }
    p->tok[p->n_tok++] = t;
}

static const char *unescape_string(parser *p, const char *s, const char *end, char quote, struct token *t) {
    char *out = arena_alloc(&p->t->a, (size_t)(end - s) + 1);
    size_t n = 0;
    for (s++; s < end && *s != quote; s++) {
        if (*s != '\\' || s + 1 >= end) {
            out[n++] = *s;
            continue;
        }
        switch (*++s) {
        case 'n': out[n++] = '\n'; break;
        case 't': out[n++] = '\t'; break;
        case 'r': out[n++] = '\r'; break;
        case '0': out[n++] = '\0'; break;
        case '\\':
        case '\'':
        case '"': out[n++] = *s; break;
        case '\n': break;
        default: out[n++] = '\\', out[n++] = *s; break;
        }
    }
    if (s >= end)
        perr(p, "unterminated string literal");
    t->kind = T_STRING, t->p = out, t->n = n;
    return s + 1;
}

static void tokenize(parser *p, const chunk *c) {
    p->n_tok = 0, p->tpos = 0, p->line = c->line;
    const char *s = c->p, *end = c->p + c->n;
    static const char *two[] = {"==", "!=", "<=", ">=", "//", "**"};
    while (s < end) {
        if (is_space(*s)) {
            s++;
            continue;
        }
        struct token t = {0};
        if (isalpha((unsigned char)*s) || *s == '_') {
            const char *b = s;
            while (s < end && (isalnum((unsigned char)*s) || *s == '_'))
                s++;
            t.kind = T_NAME, t.p = b, t.n = (size_t)(s - b);
        } else if (isdigit((unsigned char)*s)) {
            const char *b = s;
            bool is_float = false;
            while (s < end && (isdigit((unsigned char)*s) || *s == '_'))
                s++;
            if (s + 1 < end && *s == '.' && isdigit((unsigned char)s[1])) {
                is_float = true;
                for (s++; s < end && isdigit((unsigned char)*s); s++) {
                }
            }
            if (s < end && (*s == 'e' || *s == 'E')) {
                is_float = true;
                s++;
                if (s < end && (*s == '+' || *s == '-'))
                    s++;
                while (s < end && isdigit((unsigned char)*s))
                    s++;
            }
            char buf[64];
            size_t k = 0;
            for (const char *q = b; q < s && k < sizeof buf - 1; q++)
                if (*q != '_')
                    buf[k++] = *q;
            buf[k] = 0;
            t.kind = is_float ? T_FLOAT : T_INT;
            if (is_float)
                t.f = strtod(buf, NULL);
            else
                t.i = strtoll(buf, NULL, 10);
        } else if (*s == '\'' || *s == '"') {
            s = unescape_string(p, s, end, *s, &t);
        } else {
            t.kind = T_OP, t.p = s, t.n = 1;
            for (size_t k = 0; k < sizeof two / sizeof two[0]; k++)
                if (s + 1 < end && s[0] == two[k][0] && s[1] == two[k][1])
                    t.n = 2;
            if (!strchr("+-*/%~<>=|.,:()[]{}!", *s))
                perr(p, "unexpected character '%c'", *s);
            s += t.n;
        }
        push_tok(p, t);
    }
    push_tok(p, (struct token){.kind = T_END});
}

static struct token *cur(parser *p) { return &p->tok[p->tpos]; }
static bool tok_is(const struct token *t, enum tok_kind k, const char *s) {
    return t->kind == k && t->n == strlen(s) && !memcmp(t->p, s, t->n);
}
static bool at_name(parser *p, const char *s) { return tok_is(cur(p), T_NAME, s); }
static bool at_op(parser *p, const char *s) { return tok_is(cur(p), T_OP, s); }
static bool accept_op(parser *p, const char *s) {
    if (!at_op(p, s))
        return false;
    p->tpos++;
    return true;
}
static bool accept_name(parser *p, const char *s) {
    if (!at_name(p, s))
        return false;
    p->tpos++;
    return true;
}
static void expect_op(parser *p, const char *s) {
    if (!accept_op(p, s))
        perr(p, "expected '%s'", s);
}
static jstr expect_name(parser *p) {
    struct token *t = cur(p);
    if (t->kind != T_NAME)
        perr(p, "expected a name");
    p->tpos++;
    return (jstr){t->p, t->n};
}

/* ---- AST helpers ---- */

static node *new_node(parser *p, enum node_kind kind) {
    node *n = arena_alloc(&p->t->a, sizeof *n);
    n->kind = kind, n->line = p->line;
    return n;
}

static void list_add(parser *p, node_list *l, node *n) {
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 4;
        node **v = arena_alloc(&p->t->a, (size_t)cap * sizeof *v);
        if (l->n)
            memcpy(v, l->v, (size_t)l->n * sizeof *v);
        l->v = v, l->cap = cap;
    }
    l->v[l->n++] = n;
}

/* ---- expressions ---- */

static node *parse_expr(parser *p);
static node *parse_or(parser *p);
static node *parse_unary(parser *p);

/* (args, name=value, ...) after the opening parenthesis */
static void parse_call_args(parser *p, node *n) {
    int kw_cap = 0;
    while (!accept_op(p, ")")) {
        if (cur(p)->kind == T_NAME && tok_is(&p->tok[p->tpos + 1], T_OP, "=")) {
            jstr name = expect_name(p);
            p->tpos++;
            if (n->kw_args.n == kw_cap) {
                kw_cap = kw_cap ? 2 * kw_cap : 4;
                jstr *v = arena_alloc(&p->t->a, (size_t)kw_cap * sizeof *v);
                if (n->kw_args.n)
                    memcpy(v, n->kw_names, (size_t)n->kw_args.n * sizeof *v);
                n->kw_names = v;
            }
            n->kw_names[n->kw_args.n] = name;
            list_add(p, &n->kw_args, parse_expr(p));
        } else {
            list_add(p, &n->args, parse_expr(p));
        }
        if (!at_op(p, ")"))
            expect_op(p, ",");
    }
}

static node *parse_primary(parser *p) {
    struct token *t = cur(p);
    node *n;
    switch (t->kind) {
    case T_NAME:
        p->tpos++;
        n = new_node(p, N_LITERAL);
        if (tok_is(t, T_NAME, "true") || tok_is(t, T_NAME, "True"))
            n->lit = v_bool(true);
        else if (tok_is(t, T_NAME, "false") || tok_is(t, T_NAME, "False"))
            n->lit = v_bool(false);
        else if (tok_is(t, T_NAME, "none") || tok_is(t, T_NAME, "None"))
            n->lit = v_none();
        else
            n->kind = N_NAME, n->name = (jstr){t->p, t->n};
        return n;
    case T_STRING: {
        /* adjacent literals concatenate, as in Python */
        size_t total = 0;
        int k = p->tpos;
        while (p->tok[k].kind == T_STRING)
            total += p->tok[k++].n;
        char *s = arena_alloc(&p->t->a, total + 1);
        size_t o = 0;
        for (; p->tpos < k; p->tpos++) {
            memcpy(s + o, p->tok[p->tpos].p, p->tok[p->tpos].n);
            o += p->tok[p->tpos].n;
        }
        n = new_node(p, N_LITERAL);
        n->lit = v_str(s, total);
        return n;
    }
    case T_INT:
        p->tpos++;
        n = new_node(p, N_LITERAL);
        n->lit = v_int(t->i);
        return n;
    case T_FLOAT:
        p->tpos++;
        n = new_node(p, N_LITERAL);
        n->lit = v_float(t->f);
        return n;
    case T_OP:
        if (accept_op(p, "(")) {
            if (accept_op(p, ")")) {
                n = new_node(p, N_LIST); /* empty tuple */
                n->op = 1;
                return n;
            }
            node *e = parse_expr(p);
            if (accept_op(p, ",")) { /* tuple: a list that prints as one */
                n = new_node(p, N_LIST);
                n->op = 1;
                list_add(p, &n->args, e);
                while (!accept_op(p, ")")) {
                    list_add(p, &n->args, parse_expr(p));
                    if (!at_op(p, ")"))
                        expect_op(p, ",");
                }
                return n;
            }
            expect_op(p, ")");
            return e;
        }
        if (accept_op(p, "[")) {
            n = new_node(p, N_LIST);
            while (!accept_op(p, "]")) {
                list_add(p, &n->args, parse_expr(p));
                if (!at_op(p, "]"))
                    expect_op(p, ",");
            }
            return n;
        }
        if (accept_op(p, "{")) {
            n = new_node(p, N_DICT);
            while (!accept_op(p, "}")) {
                list_add(p, &n->args, parse_expr(p));
                expect_op(p, ":");
                list_add(p, &n->args, parse_expr(p));
                if (!at_op(p, "}"))
                    expect_op(p, ",");
            }
            return n;
        }
        perr(p, "unexpected '%.*s'", (int)t->n, t->p);
    case T_END:
    default: perr(p, "unexpected end of expression");
    }
}

static node *parse_subscript(parser *p, node *target) {
    node *parts[3] = {NULL, NULL, NULL};
    int k = 0;
    bool slice = false;
    while (!at_op(p, "]")) {
        if (accept_op(p, ":")) {
            slice = true;
            if (++k > 2)
                perr(p, "too many ':' in a slice");
            continue;
        }
        parts[k] = parse_expr(p);
    }
    expect_op(p, "]");
    node *n = new_node(p, slice ? N_SLICE : N_INDEX);
    n->a = target;
    if (slice) {
        n->b = parts[0], n->c = parts[1];
        if (parts[2])
            list_add(p, &n->args, parts[2]);
    } else {
        if (!parts[0])
            perr(p, "empty subscript");
        n->b = parts[0];
    }
    return n;
}

static node *parse_postfix(parser *p, node *n) {
    for (;;) {
        if (accept_op(p, ".")) {
            node *a = new_node(p, N_ATTR);
            a->a = n;
            if (cur(p)->kind == T_INT) { /* x.0 means x[0] */
                a->kind = N_INDEX;
                a->b = new_node(p, N_LITERAL);
                a->b->lit = v_int(cur(p)->i);
                p->tpos++;
            } else {
                a->name = expect_name(p);
            }
            n = a;
        } else if (accept_op(p, "[")) {
            n = parse_subscript(p, n);
        } else if (accept_op(p, "(")) {
            node *c = new_node(p, N_CALL);
            c->a = n;
            parse_call_args(p, c);
            n = c;
        } else {
            return n;
        }
    }
}

static node *parse_filters_and_tests(parser *p, node *n) {
    for (;;) {
        if (accept_op(p, "|")) {
            node *f = new_node(p, N_FILTER);
            f->a = n;
            f->name = expect_name(p);
            if (accept_op(p, "("))
                parse_call_args(p, f);
            n = f;
        } else if (accept_name(p, "is")) {
            node *t = new_node(p, N_TEST);
            t->a = n;
            t->op = accept_name(p, "not");
            t->name = expect_name(p);
            if (accept_op(p, "(")) {
                parse_call_args(p, t);
            } else {
                struct token *c = cur(p);
                bool arg_start = c->kind == T_STRING || c->kind == T_INT || c->kind == T_FLOAT ||
                                 (c->kind == T_NAME && !at_name(p, "else") && !at_name(p, "or") && !at_name(p, "and") &&
                                  !at_name(p, "if")) ||
                                 at_op(p, "(") || at_op(p, "[") || at_op(p, "{");
                if (arg_start)
                    list_add(p, &t->args, parse_postfix(p, parse_primary(p)));
            }
            n = t;
        } else if (accept_op(p, "(")) {
            node *c = new_node(p, N_CALL);
            c->a = n;
            parse_call_args(p, c);
            n = c;
        } else {
            return n;
        }
    }
}

/* As jinja2: a sign applies to the primary before any filter, so -3|abs is
 * abs(-3); filters and tests then apply to the signed value. */
static node *parse_unary_inner(parser *p, bool with_filters);

static node *parse_unary_filtered(parser *p, bool with_filters) {
    if (++p->depth > MAX_NESTING)
        perr(p, "expression nested too deeply");
    node *n = parse_unary_inner(p, with_filters);
    p->depth--;
    return n;
}

static node *parse_unary(parser *p) { return parse_unary_filtered(p, true); }

static node *parse_unary_inner(parser *p, bool with_filters) {
    node *n;
    if (accept_op(p, "-") || (at_op(p, "+") && accept_op(p, "+"))) {
        bool neg = p->tok[p->tpos - 1].p[0] == '-';
        n = new_node(p, neg ? N_NEG : N_POS);
        n->a = parse_unary_filtered(p, false);
    } else {
        n = parse_postfix(p, parse_primary(p));
    }
    return with_filters ? parse_filters_and_tests(p, n) : n;
}

static node *binop(parser *p, int op, node *a, node *b) {
    node *n = new_node(p, N_BINOP);
    n->op = op, n->a = a, n->b = b;
    return n;
}

static node *parse_pow(parser *p) {
    node *n = parse_unary(p);
    while (accept_op(p, "**"))
        n = binop(p, OP_POW, n, parse_unary(p));
    return n;
}

static node *parse_math2(parser *p) {
    node *n = parse_pow(p);
    for (;;) {
        if (accept_op(p, "*"))
            n = binop(p, OP_MUL, n, parse_pow(p));
        else if (accept_op(p, "//"))
            n = binop(p, OP_FLOORDIV, n, parse_pow(p));
        else if (accept_op(p, "/"))
            n = binop(p, OP_DIV, n, parse_pow(p));
        else if (accept_op(p, "%"))
            n = binop(p, OP_MOD, n, parse_pow(p));
        else
            return n;
    }
}

static node *parse_concat(parser *p) {
    node *n = parse_math2(p);
    while (accept_op(p, "~")) {
        node *c = new_node(p, N_CONCAT);
        c->a = n, c->b = parse_math2(p);
        n = c;
    }
    return n;
}

static node *parse_math1(parser *p) {
    node *n = parse_concat(p);
    for (;;) {
        if (accept_op(p, "+"))
            n = binop(p, OP_ADD, n, parse_concat(p));
        else if (accept_op(p, "-"))
            n = binop(p, OP_SUB, n, parse_concat(p));
        else
            return n;
    }
}

static node *parse_compare(parser *p) {
    node *n = parse_math1(p);
    for (;;) {
        int op;
        if (accept_op(p, "=="))
            op = OP_EQ;
        else if (accept_op(p, "!="))
            op = OP_NE;
        else if (accept_op(p, "<="))
            op = OP_LE;
        else if (accept_op(p, ">="))
            op = OP_GE;
        else if (accept_op(p, "<"))
            op = OP_LT;
        else if (accept_op(p, ">"))
            op = OP_GT;
        else if (accept_name(p, "in"))
            op = OP_IN;
        else if (at_name(p, "not") && tok_is(&p->tok[p->tpos + 1], T_NAME, "in")) {
            p->tpos += 2;
            op = OP_NOT_IN;
        } else
            return n;
        node *c = new_node(p, N_COMPARE);
        c->op = op, c->a = n, c->b = parse_math1(p);
        n = c;
    }
}

static node *parse_not(parser *p) {
    if (accept_name(p, "not")) {
        node *n = new_node(p, N_NOT);
        n->a = parse_not(p);
        return n;
    }
    return parse_compare(p);
}

static node *parse_and(parser *p) {
    node *n = parse_not(p);
    while (accept_name(p, "and")) {
        node *a = new_node(p, N_AND);
        a->a = n, a->b = parse_not(p);
        n = a;
    }
    return n;
}

static node *parse_or(parser *p) {
    node *n = parse_and(p);
    while (accept_name(p, "or")) {
        node *o = new_node(p, N_OR);
        o->a = n, o->b = parse_and(p);
        n = o;
    }
    return n;
}

static node *parse_expr(parser *p) {
    node *n = parse_or(p);
    while (accept_name(p, "if")) {
        node *c = new_node(p, N_CONDEXPR);
        c->b = n;
        c->a = parse_or(p);
        c->c = accept_name(p, "else") ? parse_expr(p) : NULL;
        n = c;
    }
    return n;
}

/* ---- statements ---- */

static void expect_end(parser *p) {
    if (cur(p)->kind != T_END)
        perr(p, "unexpected '%.*s' at end of tag", (int)cur(p)->n, cur(p)->p);
}

/* Parses chunks into body until a statement whose keyword is one of stops
 * (returned, its tokens loaded and positioned after the keyword), or the
 * end of the template (NULL; an error when stops were expected). */
static const char *parse_body(parser *p, node_list *body, const char *const *stops);

static void parse_targets(parser *p, node *n) {
    jstr names[8];
    int k = 0;
    do {
        if (k == 8)
            perr(p, "too many targets");
        names[k++] = expect_name(p);
    } while (accept_op(p, ","));
    n->targets = arena_alloc(&p->t->a, (size_t)k * sizeof *names);
    memcpy(n->targets, names, (size_t)k * sizeof *names);
    n->n_targets = k;
}

static node *parse_if(parser *p) {
    static const char *const stops[] = {"elif", "else", "endif", NULL};
    node *n = new_node(p, S_IF);
    n->a = parse_expr(p);
    expect_end(p);
    const char *stop = parse_body(p, &n->body, stops);
    if (!strcmp(stop, "elif")) {
        list_add(p, &n->alt, parse_if(p)); /* the nested if consumes the endif */
        return n;
    }
    if (!strcmp(stop, "else")) {
        expect_end(p);
        static const char *const end_only[] = {"endif", NULL};
        parse_body(p, &n->alt, end_only);
    }
    expect_end(p);
    return n;
}

static node *parse_for(parser *p) {
    node *n = new_node(p, S_FOR);
    parse_targets(p, n);
    if (!accept_name(p, "in"))
        perr(p, "expected 'in' in for loop");
    n->a = parse_or(p);
    if (accept_name(p, "if"))
        n->b = parse_or(p);
    accept_name(p, "recursive");
    expect_end(p);
    static const char *const stops[] = {"else", "endfor", NULL};
    if (!strcmp(parse_body(p, &n->body, stops), "else")) {
        expect_end(p);
        static const char *const end_only[] = {"endfor", NULL};
        parse_body(p, &n->alt, end_only);
    }
    expect_end(p);
    return n;
}

static node *parse_set(parser *p) {
    node *n = new_node(p, S_SET);
    parse_targets(p, n);
    if (n->n_targets == 1 && accept_op(p, ".")) {
        n->name = expect_name(p); /* set ns.attr = value */
    }
    if (accept_op(p, "=")) {
        n->a = parse_expr(p);
        expect_end(p);
        return n;
    }
    if (n->n_targets != 1 || n->name.p)
        perr(p, "block set needs a single name");
    expect_end(p);
    n->kind = S_SET_BLOCK;
    static const char *const stops[] = {"endset", NULL};
    parse_body(p, &n->body, stops);
    expect_end(p);
    return n;
}

static node *parse_macro(parser *p) {
    node *n = new_node(p, S_MACRO);
    n->name = expect_name(p);
    expect_op(p, "(");
    jstr names[32];
    int k = 0;
    while (!accept_op(p, ")")) {
        if (k == 32)
            perr(p, "too many macro parameters");
        names[k] = expect_name(p);
        /* defaults are kept per parameter in args (NULL: required) */
        list_add(p, &n->args, accept_op(p, "=") ? parse_expr(p) : NULL);
        k++;
        if (!at_op(p, ")"))
            expect_op(p, ",");
    }
    n->targets = arena_alloc(&p->t->a, (size_t)(k ? k : 1) * sizeof *names);
    memcpy(n->targets, names, (size_t)k * sizeof *names);
    n->n_targets = k;
    expect_end(p);
    static const char *const stops[] = {"endmacro", NULL};
    parse_body(p, &n->body, stops);
    accept_name(p, "endmacro"); /* {% endmacro name %} is allowed */
    if (cur(p)->kind == T_NAME)
        p->tpos++;
    expect_end(p);
    return n;
}

static const char *parse_body(parser *p, node_list *body, const char *const *stops) {
    if (++p->depth > MAX_NESTING)
        perr(p, "blocks nested too deeply");
    const char *stop = NULL;
    while (p->pos < p->n_chunks) {
        const chunk *c = &p->chunks[p->pos++];
        p->line = c->line;
        if (c->kind == CH_TEXT) {
            node *n = new_node(p, S_TEXT);
            n->lit = v_str(c->p, c->n);
            list_add(p, body, n);
            continue;
        }
        tokenize(p, c);
        if (c->kind == CH_EXPR) {
            node *n = new_node(p, S_OUTPUT);
            n->a = parse_expr(p);
            expect_end(p);
            list_add(p, body, n);
            continue;
        }
        jstr kw = expect_name(p);
        for (int i = 0; stops && stops[i] && !stop; i++)
            if (kw.n == strlen(stops[i]) && !memcmp(kw.p, stops[i], kw.n))
                stop = stops[i];
        if (stop)
            break;
        node *n;
#define KW(s) (kw.n == sizeof(s) - 1 && !memcmp(kw.p, s, kw.n))
        if (KW("if"))
            n = parse_if(p);
        else if (KW("for"))
            n = parse_for(p);
        else if (KW("set"))
            n = parse_set(p);
        else if (KW("macro"))
            n = parse_macro(p);
        else if (KW("break"))
            n = new_node(p, S_BREAK), expect_end(p);
        else if (KW("continue"))
            n = new_node(p, S_CONTINUE), expect_end(p);
        else if (KW("generation") || KW("endgeneration"))
            continue; /* training-only markers */
        else
            perr(p, "unknown tag '%.*s'", (int)kw.n, kw.p);
#undef KW
        list_add(p, body, n);
    }
    if (stops && !stop)
        perr(p, "missing '%s' (unexpected end of template)", stops[0]);
    p->depth--;
    return stop;
}

int jinja_parse(jinja_template *t, const char *src, size_t len, char *err, size_t errlen) {
    parser p = {
        .t = t, .src = src, .len = len, .err = err, .errlen = errlen, .line = 1, .line_mark = src, .line_at_mark = 1};
    int rc = 0;
    if (setjmp(p.fail)) {
        rc = -1;
    } else {
        split_chunks(&p);
        parse_body(&p, &t->body, NULL);
    }
    free(p.chunks);
    free(p.tok);
    return rc;
}
