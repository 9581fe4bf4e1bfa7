/* Byte-level BPE: vocabulary and merges from GGUF metadata, pcre2
 * pre-tokenization, heap-ordered merges. See tokenizer.h. */
#include <utf8proc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"
#include "utf8.h"

/* Qwen2's pre-tokenizer (tokenizer.json "Split" regex): contractions, words
 * with one leading non-letter, single digits, punctuation runs, newlines,
 * and whitespace that does not swallow the space before a word. */
static const char QWEN2_PATTERN[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}|"
                                    " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* Gemma's chat template (text turns), for the Gemma GGUFs that carry none:
 * the base models' files. A system message is folded into the first user
 * turn; the assistant's role is "model". */
static const char GEMMA_TEMPLATE[] =
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<start_of_turn>model\n' }}"
    "{%- endif -%}";

int token_list_push(token_list *l, int32_t id) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        int32_t *p = realloc(l->ids, cap * sizeof *p);
        if (!p)
            return -1;
        l->ids = p, l->cap = cap;
    }
    l->ids[l->n++] = id;
    return 0;
}

void token_list_free(token_list *l) {
    free(l->ids);
    l->ids = NULL, l->n = l->cap = 0;
}

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33, x *= 0xff51afd7ed558ccdull, x ^= x >> 33;
    return x;
}

static int32_t index_find(const tokenizer *tk, const struct vocab_index *x, const char *s, size_t len) {
    for (uint64_t i = hash_bytes(s, len) & x->mask; x->slots[i]; i = (i + 1) & x->mask) {
        int32_t id = x->slots[i] - 1;
        if (tk->text_len[id] == len && !memcmp(tk->text[id], s, len))
            return id;
    }
    return -1;
}

/* Adds id unless a token of the same text is there: the first occurrence wins, as in HF's vocab map. */
static void index_add(const tokenizer *tk, struct vocab_index *x, int32_t id) {
    if (index_find(tk, x, tk->text[id], tk->text_len[id]) >= 0)
        return;
    uint64_t i = hash_bytes(tk->text[id], tk->text_len[id]) & x->mask;
    while (x->slots[i])
        i = (i + 1) & x->mask;
    x->slots[i] = id + 1;
}

static int index_init(struct vocab_index *x, uint64_t n) {
    uint64_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    x->slots = calloc(cap, sizeof *x->slots);
    x->mask = cap - 1;
    return x->slots ? 0 : -1;
}

int32_t tokenizer_find(const tokenizer *tk, const char *s, size_t len) { return index_find(tk, &tk->index, s, len); }

/* GPT-2's byte-level alphabet: printable bytes stand for themselves, the
 * other 68 (controls, space, 0x7f-0xa0, 0xad) map to U+0100 onwards. */
static void byte_alphabet(uint32_t byte_to_cp[256]) {
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; b++) {
        bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
        byte_to_cp[b] = printable ? b : next++;
    }
}

static size_t put_utf8(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    out[0] = (char)(0xe0 | cp >> 12), out[1] = (char)(0x80 | ((cp >> 6) & 0x3f)), out[2] = (char)(0x80 | (cp & 0x3f));
    return 3;
}

/* The bytes a token's text decodes to: each character mapped back through
 * the byte alphabet; a token with any character outside it (an added token
 * written in plain text) is taken as its UTF-8 bytes, as HF's ByteLevel
 * decoder does. */
static int token_raw_bytes(tokenizer *tk, uint32_t id, const int32_t cp_to_byte[324]) {
    const uint8_t *s = (const uint8_t *)tk->text[id];
    uint32_t n = tk->text_len[id], o = 0;
    uint8_t *out = malloc(n ? n : 1);
    if (!out)
        return -1;
    bool mapped = true;
    for (uint32_t i = 0; i < n && mapped;) {
        size_t k = utf8_seq_len(s + i, n - i);
        uint32_t cp = 0;
        if (k == 1)
            cp = s[i];
        else if (k == 2)
            cp = (uint32_t)(s[i] & 0x1f) << 6 | (s[i + 1] & 0x3f);
        else
            mapped = false;
        if (mapped && (cp >= 324 || cp_to_byte[cp] < 0))
            mapped = false;
        if (mapped)
            out[o++] = (uint8_t)cp_to_byte[cp], i += (uint32_t)k;
    }
    if (!mapped) {
        memcpy(out, s, n);
        o = n;
    }
    tk->bytes[id] = out;
    tk->bytes_len[id] = o;
    return 0;
}

static int fail(char *err, size_t errlen, const char *msg, const char *detail) {
    snprintf(err, errlen, "tokenizer: %s%s%s", msg, detail ? ": " : "", detail ? detail : "");
    return -1;
}

static int load_vocab(tokenizer *tk, const gguf_file *f, char *err, size_t errlen) {
    gguf_array tokens, types;
    char why[256];
    if (gguf_get_array(f, "tokenizer.ggml.tokens", &tokens, why, sizeof why) || tokens.elem_type != GGUF_TYPE_STRING)
        return fail(err, errlen, "tokenizer.ggml.tokens missing or not strings", why);
    if (tokens.count == 0 || tokens.count > (1u << 24))
        return fail(err, errlen, "tokenizer.ggml.tokens: implausible vocabulary size", NULL);
    bool have_types = !gguf_get_array(f, "tokenizer.ggml.token_type", &types, NULL, 0) && types.count == tokens.count &&
                      types.elem_type != GGUF_TYPE_STRING;
    tk->n_vocab = (uint32_t)tokens.count;
    tk->text = calloc(tk->n_vocab, sizeof *tk->text);
    tk->text_len = calloc(tk->n_vocab, sizeof *tk->text_len);
    tk->bytes = calloc(tk->n_vocab, sizeof *tk->bytes);
    tk->bytes_len = calloc(tk->n_vocab, sizeof *tk->bytes_len);
    tk->type = calloc(tk->n_vocab, sizeof *tk->type);
    if (!tk->text || !tk->text_len || !tk->bytes || !tk->bytes_len || !tk->type || index_init(&tk->index, tk->n_vocab))
        return fail(err, errlen, "out of memory", NULL);

    uint32_t byte_to_cp[256];
    int32_t cp_to_byte[324];
    byte_alphabet(byte_to_cp);
    for (int i = 0; i < 324; i++)
        cp_to_byte[i] = -1;
    for (int b = 0; b < 256; b++)
        cp_to_byte[byte_to_cp[b]] = b;

    for (uint32_t id = 0; id < tk->n_vocab; id++) {
        const gguf_str *s = &tokens.strs[id];
        if (s->len > 4096)
            return fail(err, errlen, "tokenizer.ggml.tokens: token longer than 4096 bytes", NULL);
        tk->text[id] = malloc(s->len + 1);
        if (!tk->text[id])
            return fail(err, errlen, "out of memory", NULL);
        memcpy(tk->text[id], s->ptr, s->len);
        tk->text[id][s->len] = 0;
        tk->text_len[id] = (uint32_t)s->len;
        tk->type[id] = have_types ? (int32_t)gguf_array_get_i64(&types, id) : TOKEN_NORMAL;
        if (!tk->spm && token_raw_bytes(tk, id, cp_to_byte))
            return fail(err, errlen, "out of memory", NULL);
        index_add(tk, &tk->index, (int32_t)id);
    }
    if (tk->spm)
        return spm_load_vocab(tk, f, err, errlen);
    for (int b = 0; b < 256; b++) {
        char ch[4];
        size_t n = put_utf8(byte_to_cp[b], ch);
        tk->byte_token[b] = tokenizer_find(tk, ch, n);
        if (tk->byte_token[b] < 0) {
            snprintf(why, sizeof why, "no token for byte 0x%02x", b);
            return fail(err, errlen, "vocabulary is not byte-level", why);
        }
    }
    return 0;
}

static int load_merges(tokenizer *tk, const gguf_file *f, char *err, size_t errlen) {
    gguf_array merges;
    char why[256];
    if (gguf_get_array(f, "tokenizer.ggml.merges", &merges, why, sizeof why) || merges.elem_type != GGUF_TYPE_STRING)
        return fail(err, errlen, "tokenizer.ggml.merges missing or not strings", why);
    uint64_t cap = 16;
    while (cap < 2 * merges.count + 2)
        cap *= 2;
    tk->merges = calloc(cap, sizeof *tk->merges);
    tk->merges_mask = cap - 1;
    if (!tk->merges)
        return fail(err, errlen, "out of memory", NULL);
    char buf[8192];
    for (uint64_t r = 0; r < merges.count; r++) {
        const gguf_str *s = &merges.strs[r];
        const char *space = s->len < sizeof buf ? memchr(s->ptr, ' ', s->len) : NULL;
        if (!space) {
            snprintf(why, sizeof why, "merge %llu is not 'left right'", (unsigned long long)r);
            return fail(err, errlen, "tokenizer.ggml.merges", why);
        }
        size_t ll = (size_t)(space - s->ptr), rl = s->len - ll - 1;
        memcpy(buf, s->ptr, ll);
        memcpy(buf + ll, space + 1, rl);
        int32_t left = tokenizer_find(tk, s->ptr, ll), right = tokenizer_find(tk, space + 1, rl),
                merged = tokenizer_find(tk, buf, ll + rl);
        if (left < 0 || right < 0 || merged < 0)
            continue; /* HF refuses such files; we skip the merge */
        uint64_t key = ((uint64_t)left << 32 | (uint32_t)right) + 1;
        uint64_t i = hash_u64(key) & tk->merges_mask;
        while (tk->merges[i].key && tk->merges[i].key != key)
            i = (i + 1) & tk->merges_mask;
        if (!tk->merges[i].key) /* keep the first (lowest) rank of a duplicate */
            tk->merges[i] = (struct merge_entry){key, (int32_t)r, merged};
    }
    return 0;
}

static const struct merge_entry *find_merge(const tokenizer *tk, int32_t left, int32_t right) {
    uint64_t key = ((uint64_t)left << 32 | (uint32_t)right) + 1;
    for (uint64_t i = hash_u64(key) & tk->merges_mask; tk->merges[i].key; i = (i + 1) & tk->merges_mask)
        if (tk->merges[i].key == key)
            return &tk->merges[i];
    return NULL;
}

static int cmp_desc(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

static int load_specials(tokenizer *tk, const gguf_file *f, char *err, size_t errlen) {
    uint32_t id;
    tk->bos = !gguf_get_u32(f, "tokenizer.ggml.bos_token_id", &id, NULL, 0) && id < tk->n_vocab ? (int32_t)id : -1;
    tk->eos = !gguf_get_u32(f, "tokenizer.ggml.eos_token_id", &id, NULL, 0) && id < tk->n_vocab ? (int32_t)id : -1;
    tk->unk = !gguf_get_u32(f, "tokenizer.ggml.unknown_token_id", &id, NULL, 0) && id < tk->n_vocab ? (int32_t)id : -1;
    /* llama.cpp's defaults when the keys are absent */
    tk->add_bos = tk->spm, tk->add_space_prefix = tk->spm;
    gguf_get_bool(f, "tokenizer.ggml.add_bos_token", &tk->add_bos, NULL, 0);
    gguf_get_bool(f, "tokenizer.ggml.add_space_prefix", &tk->add_space_prefix, NULL, 0);
    tk->add_bos = tk->add_bos && tk->bos >= 0;
    gguf_str tmpl;
    if (!gguf_get_str(f, "tokenizer.chat_template", &tmpl, NULL, 0)) {
        tk->chat_template = malloc(tmpl.len + 1);
        if (!tk->chat_template)
            return fail(err, errlen, "out of memory", NULL);
        memcpy(tk->chat_template, tmpl.ptr, tmpl.len);
        tk->chat_template[tmpl.len] = 0;
    } else if (tk->spm && tokenizer_find(tk, "<start_of_turn>", 15) >= 0 &&
               !(tk->chat_template = strdup(GEMMA_TEMPLATE))) {
        return fail(err, errlen, "out of memory", NULL);
    }
    /* added tokens: a hash of their own, probed at each of their lengths (longest first) */
    uint32_t n_added = 0;
    for (uint32_t i = 0; i < tk->n_vocab; i++)
        n_added += (tk->type[i] == TOKEN_CONTROL || tk->type[i] == TOKEN_USER_DEFINED) && tk->text_len[i] > 0;
    tk->added_lens = malloc((n_added ? n_added : 1) * sizeof *tk->added_lens);
    if (!tk->added_lens || index_init(&tk->added, n_added))
        return fail(err, errlen, "out of memory", NULL);
    for (uint32_t i = 0; i < tk->n_vocab; i++) {
        if ((tk->type[i] == TOKEN_CONTROL || tk->type[i] == TOKEN_USER_DEFINED) && tk->text_len[i] > 0) {
            index_add(tk, &tk->added, (int32_t)i);
            tk->added_lens[tk->n_added_lens++] = tk->text_len[i];
            uint8_t c = (uint8_t)tk->text[i][0];
            tk->added_first[c >> 3] |= (uint8_t)(1u << (c & 7));
        }
    }
    qsort(tk->added_lens, tk->n_added_lens, sizeof *tk->added_lens, cmp_desc);
    uint32_t distinct = 0;
    for (uint32_t i = 0; i < tk->n_added_lens; i++)
        if (!distinct || tk->added_lens[distinct - 1] != tk->added_lens[i])
            tk->added_lens[distinct++] = tk->added_lens[i];
    tk->n_added_lens = distinct;
    return 0;
}

int tokenizer_load(const gguf_file *f, tokenizer **out, char *err, size_t errlen) {
    *out = NULL;
    gguf_str model;
    bool gpt2 =
        !gguf_get_str(f, "tokenizer.ggml.model", &model, NULL, 0) && model.len == 4 && !memcmp(model.ptr, "gpt2", 4);
    bool llama = !gpt2 && model.len == 5 && !memcmp(model.ptr, "llama", 5);
    if (!gpt2 && !llama)
        return fail(err, errlen, "tokenizer.ggml.model must be gpt2 (byte-level BPE) or llama (SentencePiece)", NULL);
    tokenizer *tk = calloc(1, sizeof *tk);
    if (!tk)
        return fail(err, errlen, "out of memory", NULL);
    tk->spm = llama;
    if (load_vocab(tk, f, err, errlen) || (gpt2 && load_merges(tk, f, err, errlen)) ||
        load_specials(tk, f, err, errlen)) {
        tokenizer_free(tk);
        return -1;
    }
    if (tk->spm) {
        *out = tk;
        return 0;
    }
    int code;
    PCRE2_SIZE offset;
    tk->re = pcre2_compile((PCRE2_SPTR)QWEN2_PATTERN, PCRE2_ZERO_TERMINATED,
                           PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &code, &offset, NULL);
    if (!tk->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        tokenizer_free(tk);
        return fail(err, errlen, "pre-tokenizer regex", (const char *)msg);
    }
    pcre2_jit_compile(tk->re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter if JIT is unavailable */
    *out = tk;
    return 0;
}

int tokenizer_load_file(const char *path, tokenizer **out, char *err, size_t errlen) {
    gguf_file *f;
    if (gguf_open(path, &f, err, errlen))
        return -1;
    int rc = tokenizer_load(f, out, err, errlen);
    gguf_close(f);
    return rc;
}

void tokenizer_free(tokenizer *tk) {
    if (!tk)
        return;
    for (uint32_t i = 0; i < tk->n_vocab; i++) {
        if (tk->text)
            free(tk->text[i]);
        if (tk->bytes)
            free(tk->bytes[i]);
    }
    free(tk->text), free(tk->text_len), free(tk->bytes), free(tk->bytes_len), free(tk->type), free(tk->scores);
    free(tk->index.slots), free(tk->merges), free(tk->added.slots), free(tk->added_lens);
    free(tk->chat_template);
    if (tk->re)
        pcre2_code_free(tk->re);
    free(tk);
}

uint32_t tokenizer_vocab_size(const tokenizer *tk) { return tk->n_vocab; }
int32_t tokenizer_bos(const tokenizer *tk) { return tk->bos; }
int32_t tokenizer_eos(const tokenizer *tk) { return tk->eos; }
bool tokenizer_adds_bos(const tokenizer *tk) { return tk->add_bos; }
const char *tokenizer_chat_template(const tokenizer *tk) { return tk->chat_template; }
bool tokenizer_is_control(const tokenizer *tk, int32_t id) {
    return id >= 0 && (uint32_t)id < tk->n_vocab && tk->type[id] == TOKEN_CONTROL;
}

const uint8_t *tokenizer_token_bytes(const tokenizer *tk, int32_t id, size_t *len) {
    if (id < 0 || (uint32_t)id >= tk->n_vocab)
        return NULL;
    *len = tk->bytes_len[id];
    return tk->bytes[id];
}

/* ---- BPE over one pre-tokenized piece ---- */

struct bpe_symbol {
    int32_t id;
    int32_t prev, next; /* linked list over the piece; -1 at the ends */
};

struct bpe_candidate {
    int32_t rank, pos; /* ordered by rank, then leftmost position (as HF's word.rs) */
    int32_t left, right;
};

static bool cand_less(const struct bpe_candidate *a, const struct bpe_candidate *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

struct bpe_heap {
    struct bpe_candidate *v;
    size_t n;
};

static void heap_push(struct bpe_heap *h, struct bpe_candidate c) {
    size_t i = h->n++;
    h->v[i] = c;
    while (i && cand_less(&h->v[i], &h->v[(i - 1) / 2])) {
        struct bpe_candidate t = h->v[i];
        h->v[i] = h->v[(i - 1) / 2], h->v[(i - 1) / 2] = t;
        i = (i - 1) / 2;
    }
}

static struct bpe_candidate heap_pop(struct bpe_heap *h) {
    struct bpe_candidate top = h->v[0];
    h->v[0] = h->v[--h->n];
    for (size_t i = 0;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->n && cand_less(&h->v[l], &h->v[m]))
            m = l;
        if (r < h->n && cand_less(&h->v[r], &h->v[m]))
            m = r;
        if (m == i)
            break;
        struct bpe_candidate t = h->v[i];
        h->v[i] = h->v[m], h->v[m] = t;
        i = m;
    }
    return top;
}

static void consider_pair(const tokenizer *tk, struct bpe_heap *h, const struct bpe_symbol *sym, int32_t pos) {
    int32_t next = sym[pos].next;
    if (next < 0)
        return;
    const struct merge_entry *m = find_merge(tk, sym[pos].id, sym[next].id);
    if (m)
        heap_push(h, (struct bpe_candidate){m->rank, pos, sym[pos].id, sym[next].id});
}

static int bpe_piece(const tokenizer *tk, const uint8_t *s, size_t n, token_list *out) {
    if (n == 1)
        return token_list_push(out, tk->byte_token[s[0]]);
    struct bpe_symbol stack_sym[64];
    struct bpe_candidate stack_heap[128];
    /* every merge adds at most two candidates, so 3n bounds the heap */
    struct bpe_symbol *sym = n <= 64 ? stack_sym : malloc(n * sizeof *sym);
    struct bpe_heap h = {n <= 42 ? stack_heap : malloc(3 * n * sizeof *h.v), 0};
    if (!sym || !h.v) {
        if (sym != stack_sym)
            free(sym);
        if (h.v != stack_heap)
            free(h.v);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        sym[i] = (struct bpe_symbol){tk->byte_token[s[i]], (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1};
    for (size_t i = 0; i + 1 < n; i++)
        consider_pair(tk, &h, sym, (int32_t)i);
    while (h.n) {
        struct bpe_candidate c = heap_pop(&h);
        int32_t next = sym[c.pos].next;
        /* stale: either side merged away or changed since this was queued */
        if (sym[c.pos].id != c.left || next < 0 || sym[next].id != c.right)
            continue;
        sym[c.pos].id = find_merge(tk, c.left, c.right)->merged;
        sym[c.pos].next = sym[next].next;
        if (sym[next].next >= 0)
            sym[sym[next].next].prev = c.pos;
        sym[next].id = -1;
        if (sym[c.pos].prev >= 0)
            consider_pair(tk, &h, sym, sym[c.pos].prev);
        consider_pair(tk, &h, sym, c.pos);
    }
    int rc = 0;
    for (int32_t i = 0; i >= 0 && !rc; i = sym[i].next)
        rc = token_list_push(out, sym[i].id);
    if (sym != stack_sym)
        free(sym);
    if (h.v != stack_heap)
        free(h.v);
    return rc;
}

/* Pre-tokenizes text (no added tokens in it) and BPE-encodes each piece. */
static int encode_normalized(const tokenizer *tk, const uint8_t *s, size_t n, token_list *out) {
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(tk->re, NULL);
    if (!md)
        return -1;
    int rc = 0;
    size_t pos = 0;
    while (pos < n && !rc) {
        int m = pcre2_match(tk->re, s, n, pos, 0, md, NULL);
        size_t start = n, end = n;
        if (m > 0) {
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            start = ov[0], end = ov[1];
        }
        if (start > pos) /* bytes no alternative matched (invalid UTF-8): their own piece */
            rc = bpe_piece(tk, s + pos, start - pos, out);
        if (!rc && end > start)
            rc = bpe_piece(tk, s + start, end - start, out);
        pos = end > pos ? end : pos + 1;
    }
    pcre2_match_data_free(md);
    return rc;
}

/* Qwen2's normalizer is NFC. Code points below U+0300 (lead bytes below
 * 0xCC) are never changed by it, so most text skips the call; text that is
 * not valid UTF-8 (HF never sees such) is tokenized as it is. */
static int encode_plain(const tokenizer *tk, const uint8_t *s, size_t n, token_list *out) {
    bool maybe_changes = false;
    for (size_t i = 0; i < n && !maybe_changes; i++)
        maybe_changes = s[i] >= 0xcc;
    utf8proc_uint8_t *nfc = NULL;
    utf8proc_ssize_t len =
        maybe_changes ? utf8proc_map(s, (utf8proc_ssize_t)n, &nfc, UTF8PROC_STABLE | UTF8PROC_COMPOSE) : -1;
    int rc = len >= 0 ? encode_normalized(tk, nfc, (size_t)len, out) : encode_normalized(tk, s, n, out);
    free(nfc);
    return rc;
}

/* Longest added token starting at s, or -1. Without parse_special, only
 * an SPM vocabulary's user-defined tokens (Gemma's runs of newlines and
 * tabs) are matched, as llama.cpp does. */
static int32_t match_added(const tokenizer *tk, const uint8_t *s, size_t n, bool parse_special) {
    if (!(tk->added_first[s[0] >> 3] & (1u << (s[0] & 7))))
        return -1;
    for (uint32_t i = 0; i < tk->n_added_lens; i++) {
        if (tk->added_lens[i] > n)
            continue;
        int32_t id = index_find(tk, &tk->added, (const char *)s, tk->added_lens[i]);
        if (id >= 0 && (parse_special || tk->type[id] == TOKEN_USER_DEFINED))
            return id;
    }
    return -1;
}

static int encode_piece(const tokenizer *tk, const uint8_t *s, size_t n, token_list *out) {
    return tk->spm ? spm_encode_plain(tk, s, n, out) : encode_plain(tk, s, n, out);
}

int tokenizer_encode(const tokenizer *tk, const char *text, size_t len, bool parse_special, token_list *out) {
    const uint8_t *s = (const uint8_t *)text;
    size_t start = 0;
    for (size_t i = 0; (parse_special || tk->spm) && i < len; i++) {
        int32_t id = match_added(tk, s + i, len - i, parse_special);
        if (id < 0)
            continue;
        if ((i > start && encode_piece(tk, s + start, i - start, out)) || token_list_push(out, id))
            return -1;
        i += tk->text_len[id] - 1;
        start = i + 1;
    }
    return start < len ? encode_piece(tk, s + start, len - start, out) : 0;
}

int tokenizer_decode(const tokenizer *tk, const int32_t *ids, size_t n, char **text, size_t *len) {
    uint8_t *raw = NULL;
    size_t raw_len = 0, raw_cap = 0;
    *text = NULL, *len = 0;
    for (size_t i = 0; i < n; i++) {
        size_t k;
        const uint8_t *b = tokenizer_token_bytes(tk, ids[i], &k);
        if (!b) {
            free(raw);
            return -1;
        }
        if (raw_len + k > raw_cap) {
            raw_cap = 2 * (raw_len + k) + 64;
            uint8_t *p = realloc(raw, raw_cap);
            if (!p) {
                free(raw);
                return -1;
            }
            raw = p;
        }
        memcpy(raw + raw_len, b, k);
        raw_len += k;
    }
    size_t cap = 0;
    int rc = utf8_append_lossy(text, len, &cap, raw ? raw : (const uint8_t *)"", raw_len);
    free(raw);
    return rc;
}

/* ---- incremental detokenizer ---- */

void detok_init(detokenizer *d, const tokenizer *tk) {
    d->tk = tk;
    d->n_pending = 0;
}

int detok_push(detokenizer *d, int32_t id, char **out, size_t *len, size_t *cap) {
    size_t k;
    const uint8_t *b = tokenizer_token_bytes(d->tk, id, &k);
    if (!b)
        return -1;
    uint8_t stack[256];
    size_t n = d->n_pending + k;
    uint8_t *buf = n <= sizeof stack ? stack : malloc(n);
    if (!buf)
        return -1;
    memcpy(buf, d->pending, d->n_pending);
    memcpy(buf + d->n_pending, b, k);
    size_t tail = utf8_incomplete_tail(buf, n);
    int rc = utf8_append_lossy(out, len, cap, buf, n - tail);
    memcpy(d->pending, buf + n - tail, tail);
    d->n_pending = tail;
    if (buf != stack)
        free(buf);
    return rc;
}

int detok_flush(detokenizer *d, char **out, size_t *len, size_t *cap) {
    int rc = utf8_append_lossy(out, len, cap, d->pending, d->n_pending);
    d->n_pending = 0;
    return rc;
}
