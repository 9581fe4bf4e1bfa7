/* Radix tree of cached prefixes. Nodes own their edge (tokens and block
 * ids); children are found by their edge's first block. Sizes are modest
 * (at most one node per KV block), so children are kept in small arrays
 * and eviction scans for the least recently used evictable leaf. */
#include "radix.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

typedef struct rnode {
    struct rnode *parent;
    struct rnode **children;
    int32_t n_children, cap_children;
    int32_t *tokens; /* n_blocks * block_size */
    int32_t *blocks; /* n_blocks */
    int32_t n_blocks;
    uint64_t last_used;
} rnode;

struct radix_tree {
    block_pool *pool;
    int32_t bs;
    rnode root;
    uint64_t clock;
    int32_t n_cached;
};

radix_tree *radix_create(block_pool *pool, int32_t block_size) {
    if (!pool || block_size < 1)
        return NULL;
    radix_tree *t = calloc(1, sizeof *t);
    if (t)
        t->pool = pool, t->bs = block_size;
    return t;
}

static void free_node(radix_tree *t, rnode *n) {
    for (int32_t i = 0; i < n->n_children; i++)
        free_node(t, n->children[i]);
    for (int32_t i = 0; i < n->n_blocks; i++)
        block_pool_unref(t->pool, n->blocks[i]);
    free(n->children), free(n->tokens), free(n->blocks);
    if (n != &t->root)
        free(n);
}

void radix_free(radix_tree *t) {
    if (!t)
        return;
    free_node(t, &t->root);
    free(t);
}

static bool block_equal(const radix_tree *t, const int32_t *a, const int32_t *b) {
    return !memcmp(a, b, (size_t)t->bs * sizeof *a);
}

static rnode *find_child(const radix_tree *t, const rnode *n, const int32_t *block_tokens) {
    for (int32_t i = 0; i < n->n_children; i++)
        if (block_equal(t, n->children[i]->tokens, block_tokens))
            return n->children[i];
    return NULL;
}

/* Blocks of child's edge that equal tokens (at most max). */
static int32_t edge_match(const radix_tree *t, const rnode *child, const int32_t *tokens, int32_t max) {
    int32_t k = 0;
    while (k < child->n_blocks && k < max &&
           block_equal(t, child->tokens + (size_t)k * t->bs, tokens + (size_t)k * t->bs))
        k++;
    return k;
}

static int add_child(rnode *parent, rnode *child) {
    if (parent->n_children == parent->cap_children) {
        int32_t cap = parent->cap_children ? 2 * parent->cap_children : 4;
        rnode **c = realloc(parent->children, (size_t)cap * sizeof *c);
        if (!c)
            return -1;
        parent->children = c, parent->cap_children = cap;
    }
    parent->children[parent->n_children++] = child;
    child->parent = parent;
    return 0;
}

static void remove_child(rnode *parent, rnode *child) {
    for (int32_t i = 0; i < parent->n_children; i++)
        if (parent->children[i] == child) {
            parent->children[i] = parent->children[--parent->n_children];
            return;
        }
}

static rnode *new_node(const radix_tree *t, const int32_t *tokens, const int32_t *blocks, int32_t n_blocks) {
    rnode *n = calloc(1, sizeof *n);
    if (!n)
        return NULL;
    n->tokens = malloc((size_t)n_blocks * t->bs * sizeof *n->tokens);
    n->blocks = malloc((size_t)n_blocks * sizeof *n->blocks);
    if (!n->tokens || !n->blocks) {
        free(n->tokens), free(n->blocks), free(n);
        return NULL;
    }
    memcpy(n->tokens, tokens, (size_t)n_blocks * t->bs * sizeof *tokens);
    memcpy(n->blocks, blocks, (size_t)n_blocks * sizeof *blocks);
    n->n_blocks = n_blocks;
    return n;
}

/* Splits child's edge after k blocks: a new node takes the first k and
 * becomes child's parent. Returns the new node (NULL on out of memory). */
static rnode *split(radix_tree *t, rnode *child, int32_t k) {
    rnode *mid = new_node(t, child->tokens, child->blocks, k);
    if (!mid)
        return NULL;
    rnode *parent = child->parent;
    int32_t rest = child->n_blocks - k;
    memmove(child->tokens, child->tokens + (size_t)k * t->bs, (size_t)rest * t->bs * sizeof *child->tokens);
    memmove(child->blocks, child->blocks + k, (size_t)rest * sizeof *child->blocks);
    child->n_blocks = rest;
    mid->last_used = child->last_used;
    remove_child(parent, child);
    if (add_child(parent, mid) || add_child(mid, child))
        return NULL; /* only on out of memory, after which the tree is unusable anyway */
    return mid;
}

int32_t radix_match(radix_tree *t, const int32_t *tokens, int32_t n, int32_t max_blocks, int32_t *blocks) {
    int32_t avail = n / t->bs < max_blocks ? n / t->bs : max_blocks, got = 0;
    uint64_t now = ++t->clock;
    for (rnode *node = &t->root; got < avail;) {
        rnode *child = find_child(t, node, tokens + (size_t)got * t->bs);
        if (!child)
            break;
        int32_t k = edge_match(t, child, tokens + (size_t)got * t->bs, avail - got);
        for (int32_t i = 0; i < k; i++) {
            blocks[got + i] = child->blocks[i];
            block_pool_ref(t->pool, child->blocks[i]);
        }
        child->last_used = now;
        got += k;
        if (k < child->n_blocks)
            break;
        node = child;
    }
    return got;
}

int32_t radix_insert(radix_tree *t, const int32_t *tokens, const int32_t *blocks, int32_t n_blocks) {
    uint64_t now = ++t->clock;
    rnode *node = &t->root;
    for (int32_t i = 0; i < n_blocks;) {
        const int32_t *rest = tokens + (size_t)i * t->bs;
        rnode *child = find_child(t, node, rest);
        if (!child) {
            rnode *leaf = new_node(t, rest, blocks + i, n_blocks - i);
            if (!leaf || add_child(node, leaf))
                return 0;
            leaf->last_used = now;
            for (int32_t k = i; k < n_blocks; k++)
                block_pool_ref(t->pool, blocks[k]);
            t->n_cached += n_blocks - i;
            return n_blocks - i;
        }
        int32_t k = edge_match(t, child, rest, n_blocks - i);
        if (k < child->n_blocks && !(child = split(t, child, k)))
            return 0;
        child->last_used = now;
        i += k;
        node = child;
    }
    return 0;
}

/* The least recently used leaf whose blocks only the tree holds. */
static void find_victim(const radix_tree *t, rnode *n, rnode **best) {
    for (int32_t i = 0; i < n->n_children; i++)
        find_victim(t, n->children[i], best);
    if (n == &t->root || n->n_children)
        return;
    for (int32_t i = 0; i < n->n_blocks; i++)
        if (block_pool_refs(t->pool, n->blocks[i]) != 1)
            return;
    if (!*best || n->last_used < (*best)->last_used)
        *best = n;
}

int32_t radix_evict(radix_tree *t, int32_t n) {
    int32_t freed = 0;
    while (freed < n) {
        rnode *victim = NULL;
        find_victim(t, &t->root, &victim);
        if (!victim)
            break;
        remove_child(victim->parent, victim);
        freed += victim->n_blocks;
        t->n_cached -= victim->n_blocks;
        free_node(t, victim);
    }
    return freed;
}

int32_t radix_cached_blocks(const radix_tree *t) { return t->n_cached; }

static int check_node(const radix_tree *t, const rnode *n, int32_t *count) {
    if (n != &t->root && n->n_blocks < 1)
        return -1;
    for (int32_t i = 0; i < n->n_blocks; i++)
        if (block_pool_refs(t->pool, n->blocks[i]) < 1)
            return -1;
    *count += n->n_blocks;
    for (int32_t i = 0; i < n->n_children; i++) {
        if (n->children[i]->parent != n)
            return -1;
        for (int32_t j = 0; j < i; j++) /* children differ in their first block */
            if (block_equal(t, n->children[i]->tokens, n->children[j]->tokens))
                return -1;
        if (check_node(t, n->children[i], count))
            return -1;
    }
    return 0;
}

int radix_check(const radix_tree *t) {
    int32_t count = 0;
    if (check_node(t, &t->root, &count) || count != t->n_cached)
        return -1;
    return 0;
}
