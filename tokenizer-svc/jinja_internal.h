/* Shared by the Jinja parser (jinja_parse.c), values (jinja_value.c) and
 * evaluator (jinja_eval.c). Everything is allocated from arenas: the AST
 * from the template's, render-time values from a per-render one. */
#ifndef INFERNO_JINJA_INTERNAL_H
#define INFERNO_JINJA_INTERNAL_H

#include <setjmp.h>
#include <stdbool.h>
#include <stdint.h>

#include "jinja.h"

/* ---- arena ---- */
struct arena_block;
typedef struct {
    struct arena_block *head;
} arena;

void *arena_alloc(arena *a, size_t n); /* zeroed; aborts on out of memory */
void arena_free(arena *a);
char *arena_strndup(arena *a, const char *s, size_t n);

/* ---- values ---- */
typedef struct {
    const char *p;
    size_t n;
} jstr;

enum vtype { V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_LIST, V_DICT, V_FUNC };

struct vlist;
struct vdict;
struct vfunc;

typedef struct value {
    enum vtype t;
    union {
        bool b;
        int64_t i;
        double f;
        jstr s;
        struct vlist *l;
        struct vdict *d;
        struct vfunc *fn;
    };
} value;

struct vlist {
    size_t n, cap;
    value *v;
    bool is_tuple; /* prints as (a, b) and never equals a list, as in Python */
};

struct vdict {
    size_t n, cap;
    jstr *k;
    value *v;
    bool is_namespace; /* attributes may be assigned ({% set ns.x = ... %}) */
};

struct node;
enum func_kind { FN_GLOBAL, FN_METHOD, FN_MACRO };
struct vfunc {
    enum func_kind kind;
    jstr name;
    value self;               /* FN_METHOD: the object */
    const struct node *macro; /* FN_MACRO */
};

/* String builder on the heap (the render's output) or in an arena. */
typedef struct {
    char *p;
    size_t n, cap;
    arena *a; /* NULL: malloc'ed */
} strbuf;

void sb_put(strbuf *b, const char *s, size_t n);
void sb_puts(strbuf *b, const char *s);

static inline value v_undef(void) { return (value){.t = V_UNDEF}; }
static inline value v_none(void) { return (value){.t = V_NONE}; }
static inline value v_bool(bool b) { return (value){.t = V_BOOL, .b = b}; }
static inline value v_int(int64_t i) { return (value){.t = V_INT, .i = i}; }
static inline value v_float(double f) { return (value){.t = V_FLOAT, .f = f}; }
static inline value v_str(const char *p, size_t n) { return (value){.t = V_STR, .s = {p, n}}; }

value v_list(arena *a);
value v_dict(arena *a);
void list_push(arena *a, struct vlist *l, value v);
void dict_set(arena *a, struct vdict *d, jstr k, value v);
value *dict_get(const struct vdict *d, const char *k, size_t n);
value v_cstr(arena *a, const char *s);
value v_from_json(arena *a, json_t *j);

bool v_truthy(value v);
bool v_equal(value a, value b);
const char *v_type_name(value v);
/* Python str() and repr() of a value, appended to b. */
void v_str_into(strbuf *b, value v);
void v_repr_into(strbuf *b, value v);
/* json.dumps(v, ensure_ascii=False, indent=indent (<0: None), separators,
 * sort_keys). Returns -1 for a value JSON cannot hold (undefined, function). */
int v_json_into(strbuf *b, value v, int indent, const char *item_sep, const char *key_sep, bool sort_keys, int depth);
void float_repr(double f, char out[40]);

/* ---- AST ---- */
enum node_kind {
    /* expressions */
    N_LITERAL,
    N_NAME,
    N_LIST,
    N_DICT,
    N_ATTR,
    N_INDEX,
    N_SLICE,
    N_CALL,
    N_FILTER,
    N_TEST,
    N_NOT,
    N_NEG,
    N_POS,
    N_BINOP,
    N_AND,
    N_OR,
    N_COMPARE,
    N_CONDEXPR,
    N_CONCAT,
    /* statements */
    S_TEXT,
    S_OUTPUT,
    S_IF,
    S_FOR,
    S_SET,
    S_SET_BLOCK,
    S_MACRO,
    S_BREAK,
    S_CONTINUE
};

typedef struct {
    struct node **v;
    int n, cap;
} node_list;

typedef struct node {
    enum node_kind kind;
    int line;
    int op;    /* N_BINOP/N_COMPARE operator (see OP_*); N_TEST: negated */
    value lit; /* N_LITERAL; S_TEXT (a string) */
    jstr name; /* N_NAME, N_ATTR, N_FILTER, N_TEST, S_MACRO, S_SET attribute */
    struct node *a, *b, *c;
    node_list args; /* call/filter/test arguments, list/dict items (dict: key, value pairs) */
    jstr *kw_names; /* keyword arguments (parallel to kw_args) */
    node_list kw_args;
    node_list body, alt; /* if: then/else; for: body/else; macro: body */
    jstr *targets;       /* for / set names */
    int n_targets;
} node;

enum {
    OP_ADD,
    OP_SUB,
    OP_MUL,
    OP_DIV,
    OP_FLOORDIV,
    OP_MOD,
    OP_POW,
    OP_EQ,
    OP_NE,
    OP_LT,
    OP_LE,
    OP_GT,
    OP_GE,
    OP_IN,
    OP_NOT_IN
};

struct jinja_template {
    arena a;
    node_list body;
};

/* jinja_parse.c */
int jinja_parse(jinja_template *t, const char *src, size_t len, char *err, size_t errlen);

#endif

/* ---- evaluation (jinja_eval.c, jinja_builtins.c) ---- */
typedef struct scope {
    struct scope *parent;
    struct vdict vars;
} scope;

typedef struct {
    arena *a;
    jmp_buf fail;
    char *err;
    size_t errlen;
    int line;
    scope *globals;
    const jinja_options *opt;
    int depth;     /* macro call depth */
    int loop_ctl;  /* LOOP_BREAK / LOOP_CONTINUE pending */
    int64_t steps; /* evaluation budget left: templates are untrusted */
} render_ctx;

enum { LOOP_NONE, LOOP_BREAK, LOOP_CONTINUE };

/* Evaluated call arguments. */
typedef struct {
    value *pos;
    int n_pos;
    const jstr *kw_names;
    value *kw;
    int n_kw;
} call_args;

void rerr(render_ctx *c, const char *kind, const char *fmt, ...) __attribute__((format(printf, 3, 4), noreturn));
value get_attr(render_ctx *c, value obj, const char *name, size_t n);
value call_value(render_ctx *c, value fn, call_args *args);
value eval_expr(render_ctx *c, const node *n, scope *s);
struct vlist *iterate(render_ctx *c, value v); /* items of a list, keys of a dict, chars of a str */
value arg_get(const call_args *a, int i, const char *kw, value dflt);
value v_strbuf(strbuf *b);
jstr to_str(render_ctx *c, value v); /* str(v) in the arena */
size_t utf8_chars(jstr s);

/* jinja_builtins.c */
value apply_filter(render_ctx *c, jstr name, value v, call_args *args);
bool apply_test(render_ctx *c, jstr name, value v, call_args *args);
value call_method(render_ctx *c, value self, jstr name, call_args *args);
bool is_method(value self, const char *name, size_t n);
value call_global(render_ctx *c, jstr name, call_args *args);
bool is_global(const char *name, size_t n);
int compare_values(render_ctx *c, value a, value b); /* <0, 0, >0; error when unordered */
