#include "block_pool.h"

#include <stdlib.h>

struct block_pool {
    int32_t n, n_free;
    int32_t *refs;
    int32_t *free_stack; /* free ids; the most recently freed is reused first (warm in the worker's caches) */
};

block_pool *block_pool_create(int32_t n_blocks) {
    block_pool *p = calloc(1, sizeof *p);
    if (!p || n_blocks < 0)
        return NULL;
    p->n = n_blocks;
    p->refs = calloc((size_t)n_blocks + 1, sizeof *p->refs);
    p->free_stack = malloc(((size_t)n_blocks + 1) * sizeof *p->free_stack);
    if (!p->refs || !p->free_stack) {
        block_pool_free(p);
        return NULL;
    }
    for (int32_t i = 0; i < n_blocks; i++) /* lowest ids first */
        p->free_stack[p->n_free++] = n_blocks - 1 - i;
    return p;
}

void block_pool_free(block_pool *p) {
    if (!p)
        return;
    free(p->refs);
    free(p->free_stack);
    free(p);
}

int32_t block_pool_alloc(block_pool *p) {
    if (!p->n_free)
        return -1;
    int32_t id = p->free_stack[--p->n_free];
    p->refs[id] = 1;
    return id;
}

void block_pool_ref(block_pool *p, int32_t id) {
    if (id >= 0 && id < p->n && p->refs[id] > 0)
        p->refs[id]++;
}

int32_t block_pool_unref(block_pool *p, int32_t id) {
    if (id < 0 || id >= p->n || p->refs[id] <= 0)
        return -1;
    if (--p->refs[id] == 0)
        p->free_stack[p->n_free++] = id;
    return p->refs[id];
}

int32_t block_pool_refs(const block_pool *p, int32_t id) { return id >= 0 && id < p->n ? p->refs[id] : 0; }
int32_t block_pool_n_free(const block_pool *p) { return p->n_free; }
int32_t block_pool_size(const block_pool *p) { return p->n; }
