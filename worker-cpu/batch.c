/* Batch bookkeeping shared by the engines (see batch.h). */
#include "batch.h"

#include <stdio.h>

int32_t engine_batch_rows(const engine_batch *b) {
    int32_t rows = 0;
    for (int32_t s = 0; s < b->n_seqs; s++)
        rows += b->seqs[s].all_logits ? b->seqs[s].n_tokens : 1;
    return rows;
}

int engine_batch_check(const engine_batch *b, uint32_t vocab, int block_size, int n_blocks, int *max_pos, char *err,
                       size_t errlen) {
    int32_t covered = 0;
    *max_pos = 0;
    if (b->n_tokens <= 0 || b->n_seqs <= 0) {
        snprintf(err, errlen, "engine: empty batch");
        return -1;
    }
    for (int32_t i = 0; i < b->n_tokens; i++)
        if (b->tokens[i] < 0 || (uint32_t)b->tokens[i] >= vocab) {
            snprintf(err, errlen, "engine: token %d at %d is outside the vocabulary (%u)", b->tokens[i], i, vocab);
            return -1;
        }
    for (int32_t s = 0; s < b->n_seqs; s++) {
        const engine_seq *q = &b->seqs[s];
        int64_t end = (int64_t)q->pos0 + q->n_tokens;
        if (q->n_tokens <= 0 || q->start != covered || q->pos0 < 0 || end > (int64_t)q->n_table * block_size) {
            snprintf(err, errlen, "engine: sequence %d: tokens [%d, +%d) at position %d do not fit its %d blocks", s,
                     q->start, q->n_tokens, q->pos0, q->n_table);
            return -1;
        }
        for (int32_t i = 0; i < (end + block_size - 1) / block_size; i++)
            if (q->block_table[i] < 0 || q->block_table[i] >= n_blocks) {
                snprintf(err, errlen, "engine: sequence %d: block id %d out of range (pool of %d)", s,
                         q->block_table[i], n_blocks);
                return -1;
            }
        covered += q->n_tokens;
        if (end > *max_pos)
            *max_pos = (int)end;
    }
    if (covered != b->n_tokens) {
        snprintf(err, errlen, "engine: sequences cover %d of %d tokens", covered, b->n_tokens);
        return -1;
    }
    return 0;
}
