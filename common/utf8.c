#include "utf8.h"

#include <stdlib.h>
#include <string.h>

size_t utf8_seq_len(const uint8_t *s, size_t n) {
    if (n == 0)
        return 0;
    uint8_t c = s[0];
    if (c < 0x80)
        return 1;
    size_t len;
    uint32_t cp, min;
    if ((c & 0xe0) == 0xc0) {
        len = 2, cp = c & 0x1f, min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
        len = 3, cp = c & 0x0f, min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
        len = 4, cp = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

char *utf8_sanitize(const char *src, size_t n) {
    char *out = malloc(3 * n + 1); /* each bad byte becomes 3 bytes */
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq_len((const uint8_t *)src + i, n - i);
        if (k) {
            memcpy(out + o, src + i, k);
            o += k, i += k;
        } else {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3, i += 1;
        }
    }
    out[o] = 0;
    return out;
}

/* Allowed range of the second byte for a lead byte (Unicode Table 3-7). */
static int second_byte_range(uint8_t lead, uint8_t *lo, uint8_t *hi) {
    *lo = 0x80, *hi = 0xbf;
    if (lead >= 0xc2 && lead <= 0xdf)
        return 2;
    if (lead >= 0xe0 && lead <= 0xef) {
        if (lead == 0xe0)
            *lo = 0xa0;
        if (lead == 0xed)
            *hi = 0x9f;
        return 3;
    }
    if (lead >= 0xf0 && lead <= 0xf4) {
        if (lead == 0xf0)
            *lo = 0x90;
        if (lead == 0xf4)
            *hi = 0x8f;
        return 4;
    }
    return 0;
}

/* Number of bytes (>= 1) of the maximal subpart at s: the longest prefix
 * of a well-formed sequence, or 1 for a byte that cannot start one. */
static size_t maximal_subpart(const uint8_t *s, size_t n) {
    uint8_t lo, hi;
    size_t need = (size_t)second_byte_range(s[0], &lo, &hi), k = 1;
    if (!need)
        return 1;
    if (k < n && s[k] >= lo && s[k] <= hi) {
        k++;
        while (k < need && k < n && (s[k] & 0xc0) == 0x80)
            k++;
    }
    return k;
}

size_t utf8_incomplete_tail(const uint8_t *s, size_t n) {
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        const uint8_t *p = s + n - back;
        if ((p[0] & 0xc0) == 0x80)
            continue; /* a continuation byte: look further back for the lead */
        uint8_t lo, hi;
        size_t need = (size_t)second_byte_range(p[0], &lo, &hi);
        if (need <= back)
            return 0; /* complete (or invalid): nothing held back */
        return maximal_subpart(p, back) == back ? back : 0;
    }
    return 0;
}

int utf8_append_lossy(char **out, size_t *len, size_t *cap, const uint8_t *src, size_t n) {
    if (*len + 3 * n + 1 > *cap) {
        size_t c = *cap ? *cap : 64;
        while (c < *len + 3 * n + 1)
            c *= 2;
        char *p = realloc(*out, c);
        if (!p)
            return -1;
        *out = p, *cap = c;
    }
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq_len(src + i, n - i);
        if (k) {
            memcpy(*out + *len, src + i, k);
            *len += k, i += k;
        } else {
            memcpy(*out + *len, "\xef\xbf\xbd", 3);
            *len += 3, i += maximal_subpart(src + i, n - i);
        }
    }
    (*out)[*len] = 0;
    return 0;
}
