/* The tokenizer's state, shared by its two algorithms: byte-level BPE
 * (tokenizer.c, vocabularies with tokenizer.ggml.model "gpt2") and
 * SentencePiece-style merging by score with byte fallback (tokenizer_spm.c,
 * model "llama", as Gemma and Llama 2 use). Not part of the public API. */
#ifndef INFERNO_TOKENIZER_INTERNAL_H
#define INFERNO_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "tokenizer.h"

enum {
    TOKEN_NORMAL = 1,
    TOKEN_UNKNOWN = 2,
    TOKEN_CONTROL = 3,
    TOKEN_USER_DEFINED = 4,
    TOKEN_UNUSED = 5,
    TOKEN_BYTE = 6
};

/* (left id, right id) -> (rank, merged id), open addressing. */
struct merge_entry {
    uint64_t key; /* left << 32 | right, +1 so that 0 marks empty */
    int32_t rank, merged;
};

/* token text -> id, open addressing over the vocabulary. */
struct vocab_index {
    int32_t *slots; /* id + 1; 0 empty */
    uint64_t mask;
};

struct tokenizer {
    bool spm; /* SentencePiece-style (scores, byte fallback) rather than byte-level BPE */
    uint32_t n_vocab;
    char **text; /* token text as stored in the GGUF (BPE: byte-level alphabet; SPM: U+2581 for spaces) */
    uint32_t *text_len;
    uint8_t **bytes; /* the raw bytes each token decodes to */
    uint32_t *bytes_len;
    int32_t *type;
    float *scores; /* SPM: merge priority of each token, higher first */
    struct vocab_index index;
    struct merge_entry *merges; /* BPE only */
    uint64_t merges_mask;
    int32_t byte_token[256];  /* id of the single-byte token for each byte (SPM: <0xXX>; -1 if none) */
    struct vocab_index added; /* text -> id of the added tokens (control, user-defined) */
    uint32_t *added_lens;     /* their distinct lengths, longest first */
    uint32_t n_added_lens;
    uint8_t added_first[32]; /* bitmap of the first bytes of added tokens */
    int32_t bos, eos, unk;
    bool add_bos;          /* tokenizer.ggml.add_bos_token: raw prompts start with BOS */
    bool add_space_prefix; /* SPM: a space before each stretch of text between added tokens */
    char *chat_template;
    pcre2_code *re; /* BPE pre-tokenizer */
};

/* ---- tokenizer_spm.c ---- */

/* Token bytes (U+2581 as a space, <0xXX> as the byte) and the byte tokens. */
int spm_load_vocab(tokenizer *tk, const gguf_file *f, char *err, size_t errlen);
/* Encodes a stretch of text between added tokens (with add_space_prefix,
 * each such stretch starts with a space, as in llama.cpp). */
int spm_encode_plain(const tokenizer *tk, const uint8_t *s, size_t n, token_list *out);

#endif
