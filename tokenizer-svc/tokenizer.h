/* The tokenizer built from a GGUF file's tokenizer.ggml.* metadata, in one
 * of two kinds:
 *   - "gpt2": byte-level BPE with Qwen2's pre-tokenizer, matching Hugging
 *     Face tokenizers. The text is split by the pre-tokenizer regex (pcre2,
 *     UTF + UCP, JIT) and each piece byte-pair merged by merge rank.
 *   - "llama": SentencePiece-style (Gemma): merges by token score, byte
 *     fallback, matching llama.cpp (tokenizer_spm.c).
 * encode: added tokens (<|im_start|>, <start_of_turn>, ...) found in the
 * text are emitted as single ids (leftmost-longest). A loaded tokenizer is
 * immutable: encode and decode may run concurrently from any number of
 * threads. */
#ifndef INFERNO_TOKENIZER_H
#define INFERNO_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

typedef struct tokenizer tokenizer;

/* A growable array of token ids. */
typedef struct {
    int32_t *ids;
    size_t n, cap;
} token_list;

int token_list_push(token_list *l, int32_t id);
void token_list_free(token_list *l);

/* Builds the tokenizer from f (which may be closed afterwards). */
int tokenizer_load(const gguf_file *f, tokenizer **out, char *err, size_t errlen);
int tokenizer_load_file(const char *path, tokenizer **out, char *err, size_t errlen);
void tokenizer_free(tokenizer *tk);

uint32_t tokenizer_vocab_size(const tokenizer *tk);
int32_t tokenizer_bos(const tokenizer *tk); /* -1 when the model has none */
int32_t tokenizer_eos(const tokenizer *tk);
/* Whether a raw prompt should start with BOS (tokenizer.ggml.add_bos_token;
 * true for Gemma, false for Qwen). */
bool tokenizer_adds_bos(const tokenizer *tk);
/* Id of the token whose text is exactly s, or -1. */
int32_t tokenizer_find(const tokenizer *tk, const char *s, size_t len);
/* The chat template stored in the GGUF; for a Gemma vocabulary without one
 * (the base models), Gemma's own; else NULL. */
const char *tokenizer_chat_template(const tokenizer *tk);
/* True for control tokens (<|im_end|>, <|endoftext|>, ...). */
bool tokenizer_is_control(const tokenizer *tk, int32_t id);

/* Appends the ids of text to out. parse_special: match added tokens in the
 * text (an SPM vocabulary's user-defined tokens are matched always). Input
 * need not be valid UTF-8. Returns 0, or -1 on out of memory. */
int tokenizer_encode(const tokenizer *tk, const char *text, size_t len, bool parse_special, token_list *out);

/* The raw bytes a token stands for (may be a partial UTF-8 character), or
 * NULL for an id out of range. */
const uint8_t *tokenizer_token_bytes(const tokenizer *tk, int32_t id, size_t *len);

/* Text of ids as transformers' decode gives it: invalid UTF-8 replaced by
 * U+FFFD. *text is malloc'ed and NUL-terminated. Ids out of range are an
 * error (-1). */
int tokenizer_decode(const tokenizer *tk, const int32_t *ids, size_t n, char **text, size_t *len);

/* Incremental detokenizer for streaming: push ids one at a time and get the
 * text that became complete; a partial UTF-8 character is held back until
 * the bytes that finish it arrive (or flush). Concatenating every piece
 * equals tokenizer_decode of all the ids. */
typedef struct {
    const tokenizer *tk;
    uint8_t pending[8];
    size_t n_pending;
} detokenizer;

void detok_init(detokenizer *d, const tokenizer *tk);
/* Appends the newly complete text to (*out, *len, *cap). -1 on a bad id. */
int detok_push(detokenizer *d, int32_t id, char **out, size_t *len, size_t *cap);
int detok_flush(detokenizer *d, char **out, size_t *len, size_t *cap);

#endif
