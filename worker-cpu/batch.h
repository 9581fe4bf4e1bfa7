/* One forward step's input, as every engine (CPU, CUDA) takes it: the new
 * tokens of many sequences flattened together, each sequence with the
 * position of its first new token and its KV block table. */
#ifndef INFERNO_BATCH_H
#define INFERNO_BATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    int32_t start, n_tokens;    /* this sequence's tokens: batch tokens[start .. start+n_tokens) */
    int32_t pos0;               /* position of tokens[start] in the sequence */
    const int32_t *block_table; /* KV block ids covering positions 0 .. pos0+n_tokens-1 */
    int32_t n_table;
    bool all_logits; /* logits for every new token, not only the last */
} engine_seq;

typedef struct {
    const int32_t *tokens;
    int32_t n_tokens;
    const engine_seq *seqs;
    int32_t n_seqs;
} engine_batch;

/* Number of logit rows a batch produces (one per sequence, or n_tokens for
 * all_logits sequences), in sequence order. */
int32_t engine_batch_rows(const engine_batch *b);

/* Checks every index against the model's vocabulary and a KV pool of
 * n_blocks blocks of block_size positions; *max_pos gets the longest
 * sequence's length after the step. */
int engine_batch_check(const engine_batch *b, uint32_t vocab, int block_size, int n_blocks, int *max_pos, char *err,
                       size_t errlen);

#endif
