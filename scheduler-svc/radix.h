/* The prefix cache: a radix tree over token ids at block granularity. Each
 * edge carries whole blocks (block_size tokens each) and the KV block ids
 * holding them; an edge is split where two sequences part. The tree holds a
 * reference on every block in it (block_pool), so a cached prefix survives
 * the sequences that computed it; leaves whose blocks nobody else holds are
 * evicted least recently used first when blocks run short.
 *
 * Only full blocks are cached: a sequence writes its partly filled last
 * block privately, so shared blocks are never written (no copy-on-write
 * needed for KV writes). */
#ifndef INFERNO_RADIX_H
#define INFERNO_RADIX_H

#include <stdint.h>

#include "block_pool.h"

typedef struct radix_tree radix_tree;

radix_tree *radix_create(block_pool *pool, int32_t block_size);
/* Drops the tree's references on all its blocks. */
void radix_free(radix_tree *t);

/* Longest cached prefix of tokens[0..n) in whole blocks, at most max_blocks:
 * writes its block ids to blocks (taking one reference on each for the
 * caller) and returns how many. Marks the path as recently used. */
int32_t radix_match(radix_tree *t, const int32_t *tokens, int32_t n, int32_t max_blocks, int32_t *blocks);

/* Caches the first n_blocks full blocks of a sequence, whose KV lives in
 * blocks[0..n_blocks). Blocks already cached for the same tokens are kept
 * (the caller's duplicates are not adopted); new ones get a tree reference.
 * Returns the number of blocks newly cached. */
int32_t radix_insert(radix_tree *t, const int32_t *tokens, const int32_t *blocks, int32_t n_blocks);

/* Frees up to n blocks by evicting least recently used leaves whose blocks
 * only the tree holds; returns the number of blocks freed. */
int32_t radix_evict(radix_tree *t, int32_t n);

int32_t radix_cached_blocks(const radix_tree *t);
/* Checks internal invariants (edge lengths, child ordering, block refs);
 * returns 0, or -1 with nothing else said (for tests). */
int radix_check(const radix_tree *t);

#endif
