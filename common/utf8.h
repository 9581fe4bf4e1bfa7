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

/* Length of the maximal prefix of s that could start a valid sequence but
 * is cut short by the end of input (0 when s[0..n) does not end inside a
 * sequence). Used to hold back a partial character when streaming. */
size_t utf8_incomplete_tail(const uint8_t *s, size_t n);

/* Appends src to a malloc'ed buffer (*out, *len, *cap), replacing each
 * maximal ill-formed subpart with U+FFFD exactly as Python's
 * bytes.decode(errors="replace") and Rust's from_utf8_lossy do. Returns 0,
 * or -1 on out of memory. */
int utf8_append_lossy(char **out, size_t *len, size_t *cap, const uint8_t *src, size_t n);

#endif
