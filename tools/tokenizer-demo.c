/* tokenizer-demo: the tokenizer and chat-template engine from the command line.
 *
 *   tokenizer-demo --model FILE.gguf TEXT        ids and pieces of TEXT
 *   tokenizer-demo --model FILE.gguf --jsonl     stdin: a JSON string a line; stdout: a JSON id array a line
 *   tokenizer-demo --model FILE.gguf --decode    stdin: a JSON id array a line; stdout: a JSON string a line
 *   tokenizer-demo --render TEMPLATE_FILE        stdin: render variables (JSON object) a line;
 *                                                stdout: the text as a JSON string, or {"error": "..."}
 *   tokenizer-demo --model FILE.gguf --bench FILE   encode speed on a text file (MB/s, tokens/s) */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jinja.h"
#include "tokenizer.h"

#define PROG "tokenizer-demo"

static void usage(FILE *out) {
    fprintf(out, "usage: " PROG " --model FILE.gguf [TEXT]\n"
                 "       " PROG " --model FILE.gguf --jsonl | --decode | --bench TEXTFILE [--repeat N]\n"
                 "       " PROG " --render TEMPLATE_FILE [--now 'YYYY-MM-DD HH:MM:SS']\n"
                 "  TEXT        print the ids and pieces of TEXT\n"
                 "  --jsonl     read one JSON string per line, write one JSON array of ids per line\n"
                 "  --decode    read one JSON array of ids per line, write one JSON string per line\n"
                 "  --no-special  do not match special tokens in the text\n"
                 "  --render    render a chat template: one JSON object of variables per line in,\n"
                 "              the text as a JSON string (or {\"error\": ...}) per line out\n"
                 "  --now       the time strftime_now() sees (default: the current local time)\n"
                 "  --bench     encode a text file and report MB/s and tokens/s (single thread)\n");
}

static char *read_file(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0, k;
    do {
        if (n + 65536 > cap) {
            cap = 2 * cap + 65536;
            char *p = realloc(buf, cap + 1);
            if (!p) {
                free(buf);
                fclose(fp);
                return NULL;
            }
            buf = p;
        }
        k = fread(buf + n, 1, cap - n, fp);
        n += k;
    } while (k > 0);
    fclose(fp);
    buf[n] = 0;
    *len = n;
    return buf;
}

static void print_json_line(json_t *j) {
    char *s = json_dumps(j, JSON_ENCODE_ANY | JSON_COMPACT);
    puts(s ? s : "null");
    free(s);
}

static int run_jsonl(const tokenizer *tk, bool special) {
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int rc = 0;
    while ((n = getline(&line, &cap, stdin)) > 0) {
        json_error_t e;
        json_t *j = json_loadb(line, (size_t)n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
        if (!json_is_string(j)) {
            fprintf(stderr, PROG ": line is not a JSON string: %s\n", e.text);
            json_decref(j);
            rc = 1;
            puts("null");
            continue;
        }
        token_list ids = {0};
        tokenizer_encode(tk, json_string_value(j), json_string_length(j), special, &ids);
        json_t *arr = json_array();
        for (size_t i = 0; i < ids.n; i++)
            json_array_append_new(arr, json_integer(ids.ids[i]));
        print_json_line(arr);
        json_decref(arr);
        json_decref(j);
        token_list_free(&ids);
    }
    free(line);
    return rc;
}

static int run_decode(const tokenizer *tk) {
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int rc = 0;
    while ((n = getline(&line, &cap, stdin)) > 0) {
        json_t *j = json_loadb(line, (size_t)n, 0, NULL);
        size_t count = json_is_array(j) ? json_array_size(j) : 0;
        int32_t *ids = malloc((count ? count : 1) * sizeof *ids);
        for (size_t i = 0; i < count; i++)
            ids[i] = (int32_t)json_integer_value(json_array_get(j, i));
        char *text;
        size_t len;
        if (!json_is_array(j) || tokenizer_decode(tk, ids, count, &text, &len)) {
            fprintf(stderr, PROG ": line is not an array of valid token ids\n");
            puts("null");
            rc = 1;
        } else {
            json_t *s = json_stringn(text, len);
            print_json_line(s);
            json_decref(s);
            free(text);
        }
        free(ids);
        json_decref(j);
    }
    free(line);
    return rc;
}

static int run_render(const char *path, const char *now) {
    size_t len;
    char *src = read_file(path, &len);
    if (!src) {
        fprintf(stderr, PROG ": %s: cannot read\n", path);
        return 1;
    }
    char err[1024];
    jinja_template *t = jinja_compile(src, len, err, sizeof err);
    free(src);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, stdin)) > 0) {
        json_t *vars = json_loadb(line, (size_t)n, 0, NULL), *result;
        char *text = NULL;
        size_t text_len;
        jinja_options opt = {.now = now};
        if (!t)
            result = json_pack("{s:s}", "error", err);
        else if (!json_is_object(vars))
            result = json_pack("{s:s}", "error", "render variables must be a JSON object");
        else if (jinja_render(t, vars, &opt, &text, &text_len, err, sizeof err))
            result = json_pack("{s:s}", "error", err);
        else
            result = json_stringn(text, text_len);
        print_json_line(result);
        json_decref(result);
        json_decref(vars);
        free(text);
    }
    free(line);
    jinja_free(t);
    return 0;
}

static int run_bench(const tokenizer *tk, const char *path, int repeat) {
    size_t len;
    char *text = read_file(path, &len);
    if (!text) {
        fprintf(stderr, PROG ": %s: cannot read\n", path);
        return 1;
    }
    token_list ids = {0};
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int r = 0; r < repeat; r++) {
        ids.n = 0;
        tokenizer_encode(tk, text, len, true, &ids);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
    printf("encode: %zu bytes -> %zu tokens, %.3f s for %d runs: %.2f MB/s, %.0f tokens/s\n", len, ids.n, s, repeat,
           (double)len * repeat / s / 1e6, (double)ids.n * repeat / s);
    token_list_free(&ids);
    free(text);
    return 0;
}

int main(int argc, char **argv) {
    const char *model = NULL, *text = NULL, *render = NULL, *bench = NULL, *now = NULL;
    bool jsonl = false, decode = false, special = true;
    int repeat = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--version")) {
            printf(PROG " " INFERNO_VERSION "\n");
            return 0;
        } else if (!strcmp(a, "--model") && i + 1 < argc)
            model = argv[++i];
        else if (!strcmp(a, "--render") && i + 1 < argc)
            render = argv[++i];
        else if (!strcmp(a, "--bench") && i + 1 < argc)
            bench = argv[++i];
        else if (!strcmp(a, "--now") && i + 1 < argc)
            now = argv[++i];
        else if (!strcmp(a, "--repeat") && i + 1 < argc)
            repeat = atoi(argv[++i]);
        else if (!strcmp(a, "--jsonl"))
            jsonl = true;
        else if (!strcmp(a, "--decode"))
            decode = true;
        else if (!strcmp(a, "--no-special"))
            special = false;
        else if (a[0] == '-' && a[1] == '-') {
            fprintf(stderr, PROG ": unknown flag %s (see --help)\n", a);
            return 2;
        } else
            text = a;
    }
    if (render)
        return run_render(render, now);
    if (!model || (!text && !jsonl && !decode && !bench)) {
        usage(stderr);
        return 2;
    }
    char err[512];
    tokenizer *tk;
    if (tokenizer_load_file(model, &tk, err, sizeof err)) {
        fprintf(stderr, PROG ": %s\n", err);
        return 1;
    }
    int rc = 0;
    if (jsonl)
        rc = run_jsonl(tk, special);
    else if (decode)
        rc = run_decode(tk);
    else if (bench)
        rc = run_bench(tk, bench, repeat > 0 ? repeat : 1);
    else {
        token_list ids = {0};
        tokenizer_encode(tk, text, strlen(text), special, &ids);
        for (size_t i = 0; i < ids.n; i++) {
            char *piece;
            size_t len;
            tokenizer_decode(tk, &ids.ids[i], 1, &piece, &len);
            json_t *s = json_stringn(piece, len);
            char *q = json_dumps(s, JSON_ENCODE_ANY);
            printf("%8d  %s\n", ids.ids[i], q);
            free(q), json_decref(s), free(piece);
        }
        printf("%zu tokens\n", ids.n);
        token_list_free(&ids);
    }
    tokenizer_free(tk);
    return rc;
}
