/* Command-line flags for every inferno binary, from one table: --help and
 * --version, "--flag VALUE" pairs parsed strictly, switches without a
 * value, and one-line errors starting with the program name. */
#ifndef INFERNO_CLI_H
#define INFERNO_CLI_H

#include <stdio.h>

typedef enum {
    CLI_STRING, /* const char ** */
    CLI_INT,    /* int * */
    CLI_FLOAT,  /* float * */
    CLI_U64,    /* uint64_t * */
    CLI_SIZE,   /* size_t * */
    CLI_SWITCH  /* bool *: set by the flag alone, no value */
} cli_type;

typedef struct {
    const char *name; /* "--port" */
    cli_type type;
    void *out;
} cli_flag;

#define CLI_RUN (-1)

/* Parses argv against flags (ended by a {NULL} entry). Returns CLI_RUN when
 * the program should go on, else the status main should exit with: 0 after
 * --help or --version, 2 after a usage error (already reported). */
int cli_parse(int argc, char **argv, const char *prog, void (*usage)(FILE *), const cli_flag *flags);

#endif
