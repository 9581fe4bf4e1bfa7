/* SentencePiece-style tokenization for vocabularies with tokenizer.ggml.model
 * "llama" (Gemma, Llama 2): spaces become U+2581 ("▁"), the text is split
 * into characters, and adjacent pieces are merged while their concatenation
 * is a token, the highest-scoring merge first (ties: leftmost). A piece left
 * that is no token (a rare character) falls back to its bytes, <0xXX>. This
 * is the algorithm of llama.cpp's SPM tokenizer, so ids match it exactly. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"
#include "utf8.h"

static const char SPACE_MARK[] = "\xe2\x96\x81"; /* U+2581, SentencePiece's visible space */

/* "<0xAB>" -> 0xAB, or -1. */
static int byte_token_value(const char *s, uint32_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>')
        return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                       : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

int spm_load_vocab(tokenizer *tk, const gguf_file *f, char *err, size_t errlen) {
    gguf_array scores;
    char why[256];
    if (gguf_get_array(f, "tokenizer.ggml.scores", &scores, why, sizeof why) || scores.count != tk->n_vocab ||
        scores.elem_type == GGUF_TYPE_STRING) {
        snprintf(err, errlen, "tokenizer: tokenizer.ggml.scores missing, not numbers or not one per token%s%s",
                 *why ? ": " : "", why);
        return -1;
    }
    tk->scores = malloc(tk->n_vocab * sizeof *tk->scores);
    if (!tk->scores) {
        snprintf(err, errlen, "tokenizer: out of memory");
        return -1;
    }
    for (int b = 0; b < 256; b++)
        tk->byte_token[b] = -1;
    for (uint32_t id = 0; id < tk->n_vocab; id++) {
        tk->scores[id] = (float)gguf_array_get_f64(&scores, id);
        const char *s = tk->text[id];
        uint32_t n = tk->text_len[id], o = 0;
        uint8_t *out = malloc(n ? n : 1);
        if (!out) {
            snprintf(err, errlen, "tokenizer: out of memory");
            return -1;
        }
        int byte = tk->type[id] == TOKEN_BYTE ? byte_token_value(s, n) : -1;
        if (byte >= 0) {
            out[o++] = (uint8_t)byte;
            if (tk->byte_token[byte] < 0)
                tk->byte_token[byte] = (int32_t)id;
        } else {
            for (uint32_t i = 0; i < n;) {
                bool mark = i + 3 <= n && !memcmp(s + i, SPACE_MARK, 3);
                out[o++] = mark ? ' ' : (uint8_t)s[i];
                i += mark ? 3 : 1;
            }
        }
        tk->bytes[id] = out;
        tk->bytes_len[id] = o;
    }
    return 0;
}

/* ---- merging ---- */

struct spm_symbol {
    uint32_t offset, len; /* bytes of the escaped text; len 0 once merged into its left neighbour */
    int32_t prev, next;
};

struct spm_bigram {
    float score;
    int32_t left;
    uint32_t len; /* of the merged piece, to spot bigrams made stale by other merges */
};

static bool bigram_before(const struct spm_bigram *a, const struct spm_bigram *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

struct spm_heap {
    struct spm_bigram *v;
    size_t n;
};

static void spm_heap_push(struct spm_heap *h, struct spm_bigram g) {
    size_t i = h->n++;
    h->v[i] = g;
    for (; i && bigram_before(&h->v[i], &h->v[(i - 1) / 2]); i = (i - 1) / 2) {
        struct spm_bigram t = h->v[i];
        h->v[i] = h->v[(i - 1) / 2], h->v[(i - 1) / 2] = t;
    }
}

static struct spm_bigram spm_heap_pop(struct spm_heap *h) {
    struct spm_bigram top = h->v[0];
    h->v[0] = h->v[--h->n];
    for (size_t i = 0;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->n && bigram_before(&h->v[l], &h->v[m]))
            m = l;
        if (r < h->n && bigram_before(&h->v[r], &h->v[m]))
            m = r;
        if (m == i)
            break;
        struct spm_bigram t = h->v[i];
        h->v[i] = h->v[m], h->v[m] = t;
        i = m;
    }
    return top;
}

static void try_bigram(const tokenizer *tk, const char *text, const struct spm_symbol *sym, int32_t left,
                       struct spm_heap *h) {
    if (left < 0 || sym[left].next < 0)
        return;
    uint32_t len = sym[left].len + sym[sym[left].next].len;
    int32_t id = tokenizer_find(tk, text + sym[left].offset, len);
    if (id >= 0)
        spm_heap_push(h, (struct spm_bigram){tk->scores[id], left, len});
}

static int emit_piece(const tokenizer *tk, const char *s, uint32_t len, token_list *out) {
    int32_t id = tokenizer_find(tk, s, len);
    if (id >= 0)
        return token_list_push(out, id);
    for (uint32_t i = 0; i < len; i++) {
        int32_t b = tk->byte_token[(uint8_t)s[i]];
        if (b < 0)
            b = tk->unk;
        if (b >= 0 && token_list_push(out, b))
            return -1;
    }
    return 0;
}

int spm_encode_plain(const tokenizer *tk, const uint8_t *s, size_t n, token_list *out) {
    if (n > (1u << 28))
        return -1;
    /* the escaped text: every space as U+2581, one more in front with add_space_prefix */
    char *text = malloc(3 * (n + 1));
    struct spm_symbol *sym = malloc((n + 1) * sizeof *sym);
    struct spm_heap h = {malloc(3 * (n + 1) * sizeof *h.v), 0};
    int rc = -1;
    if (!text || !sym || !h.v)
        goto done;
    uint32_t len = 0;
    if (tk->add_space_prefix)
        memcpy(text, SPACE_MARK, 3), len = 3;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ')
            memcpy(text + len, SPACE_MARK, 3), len += 3;
        else
            text[len++] = (char)s[i];
    }
    int32_t n_sym = 0;
    for (uint32_t off = 0; off < len; n_sym++) {
        /* a malformed byte is a piece of its own (llama.cpp trusts the lead byte and may swallow the
         * escaped space after it; on valid UTF-8 the two agree) */
        uint32_t k = (uint32_t)utf8_seq_len((const uint8_t *)text + off, len - off);
        k = k ? k : 1;
        sym[n_sym] = (struct spm_symbol){off, k, n_sym - 1, off + k < len ? n_sym + 1 : -1};
        off += k;
    }
    for (int32_t i = 0; i + 1 < n_sym; i++)
        try_bigram(tk, text, sym, i, &h);
    while (h.n) {
        struct spm_bigram g = spm_heap_pop(&h);
        struct spm_symbol *left = &sym[g.left];
        if (left->len == 0 || left->next < 0)
            continue;
        struct spm_symbol *right = &sym[left->next];
        if (right->len == 0 || left->len + right->len != g.len)
            continue; /* one side changed since this bigram was queued */
        left->len += right->len;
        right->len = 0;
        left->next = right->next;
        if (right->next >= 0)
            sym[right->next].prev = g.left;
        try_bigram(tk, text, sym, left->prev, &h);
        try_bigram(tk, text, sym, g.left, &h);
    }
    rc = 0;
    for (int32_t i = n_sym ? 0 : -1; i >= 0 && !rc; i = sym[i].next)
        rc = emit_piece(tk, text + sym[i].offset, sym[i].len, out);
done:
    free(text), free(sym), free(h.v);
    return rc;
}
