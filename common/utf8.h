/* UTF-8 helpers shared by the tools, the tokenizer and the gateway. */
#ifndef INFERNO_UTF8_H
#define INFERNO_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Length (1-4) of the well-formed UTF-8 sequence at s (n bytes available),
 * or 0 when it is malformed, overlong, a surrogate, or truncated. */
size_t utf8_seq_len(const uint8_t *s, size_t n);

/* Copies src into a new NUL-terminated string, replacing every malformed
 * byte with U+FFFD. Caller frees. NULL on out of memory. */
char *utf8_sanitize(const char *src, size_t n);

#endif
