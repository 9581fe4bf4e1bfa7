/* A guard to run before jansson's recursive parser: civetweb's request
 * threads have small stacks, and a body of 100,000 '[' overflowed one.
 * Nothing inferno accepts nests deeper than a few levels (tool schemas a
 * dozen or so), so every JSON text from outside is checked first. */
#ifndef INFERNO_JSON_DEPTH_H
#define INFERNO_JSON_DEPTH_H

#include <stdbool.h>
#include <stddef.h>

#define JSON_MAX_DEPTH 64

/* True when arrays/objects in the text nest deeper than max_depth (strings
 * and their escapes skipped; the text need not be valid JSON). */
bool json_nests_deeper(const char *text, size_t len, int max_depth);

#endif
