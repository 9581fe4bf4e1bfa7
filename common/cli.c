/* Flag parsing (see cli.h). */
#include "cli.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static bool parse_value(const cli_flag *f, const char *v) {
    char *end;
    errno = 0;
    switch (f->type) {
    case CLI_STRING: *(const char **)f->out = v; return true;
    case CLI_INT: {
        long x = strtol(v, &end, 10);
        if (errno || *v == 0 || *end || x < -2147483647L - 1 || x > 2147483647L)
            return false;
        *(int *)f->out = (int)x;
        return true;
    }
    case CLI_FLOAT: {
        float x = strtof(v, &end);
        if (errno || *v == 0 || *end)
            return false;
        *(float *)f->out = x;
        return true;
    }
    case CLI_U64:
    case CLI_SIZE: {
        if (*v == '-')
            return false;
        unsigned long long x = strtoull(v, &end, 10);
        if (errno || *v == 0 || *end)
            return false;
        if (f->type == CLI_U64)
            *(uint64_t *)f->out = (uint64_t)x;
        else
            *(size_t *)f->out = (size_t)x;
        return true;
    }
    case CLI_SWITCH: return false;
    }
    return false;
}

int cli_parse(int argc, char **argv, const char *prog, void (*usage)(FILE *), const cli_flag *flags) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--version")) {
            printf("%s %s\n", prog, INFERNO_VERSION);
            return 0;
        }
        const cli_flag *f = flags;
        while (f->name && strcmp(f->name, a))
            f++;
        if (!f->name) {
            fprintf(stderr, "%s: unknown flag %s (see --help)\n", prog, a);
            return 2;
        }
        if (f->type == CLI_SWITCH) {
            *(bool *)f->out = true;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "%s: %s needs a value (see --help)\n", prog, a);
            return 2;
        }
        if (!parse_value(f, argv[++i])) {
            fprintf(stderr, "%s: %s: not a valid value: %s\n", prog, a, argv[i]);
            return 2;
        }
    }
    return CLI_RUN;
}
