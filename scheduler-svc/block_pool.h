/* A worker's KV blocks as the scheduler accounts for them: ids 0..n-1, each
 * free or held by one or more owners (running sequences, the prefix cache).
 * Reference counted: a block returns to the free list when its last owner
 * lets go. Not thread-safe: the scheduler owns it from one thread. */
#ifndef INFERNO_BLOCK_POOL_H
#define INFERNO_BLOCK_POOL_H

#include <stdint.h>

typedef struct block_pool block_pool;

block_pool *block_pool_create(int32_t n_blocks);
void block_pool_free(block_pool *p);

/* A free block with one reference, or -1 when none is free. */
int32_t block_pool_alloc(block_pool *p);
void block_pool_ref(block_pool *p, int32_t id);
/* Drops a reference; returns the count left (0: the block is free again). */
int32_t block_pool_unref(block_pool *p, int32_t id);
int32_t block_pool_refs(const block_pool *p, int32_t id);
int32_t block_pool_n_free(const block_pool *p);
int32_t block_pool_size(const block_pool *p);

#endif
