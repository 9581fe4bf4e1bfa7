/* Block pool and radix tree: unit cases, then thousands of random inserts
 * and matches against a naive model (a flat list of cached block prefixes),
 * then eviction under reference counts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "block_pool.h"
#include "radix.h"

static void test_block_pool(void **state) {
    (void)state;
    block_pool *p = block_pool_create(3);
    int32_t a = block_pool_alloc(p), b = block_pool_alloc(p), c = block_pool_alloc(p);
    assert_int_equal(a, 0), assert_int_equal(b, 1), assert_int_equal(c, 2);
    assert_int_equal(block_pool_alloc(p), -1);
    block_pool_ref(p, b);
    assert_int_equal(block_pool_unref(p, b), 1);
    assert_int_equal(block_pool_n_free(p), 0);
    assert_int_equal(block_pool_unref(p, b), 0);
    assert_int_equal(block_pool_n_free(p), 1);
    assert_int_equal(block_pool_unref(p, b), -1); /* already free: refused, not corrupted */
    assert_int_equal(block_pool_alloc(p), b);     /* most recently freed first */
    assert_int_equal(block_pool_unref(p, 99), -1);
    block_pool_free(p);
}

static void test_radix_basics(void **state) {
    (void)state;
    block_pool *p = block_pool_create(16);
    radix_tree *t = radix_create(p, 2);
    int32_t seq1[8] = {1, 2, 3, 4, 5, 6, 7, 8}, seq2[8] = {1, 2, 3, 4, 9, 9, 9, 9}, got[4];
    int32_t b1[4], b2[4];
    for (int i = 0; i < 4; i++)
        b1[i] = block_pool_alloc(p);
    assert_int_equal(radix_insert(t, seq1, b1, 4), 4);
    assert_int_equal(radix_match(t, seq2, 8, 4, got), 2); /* shares two blocks */
    assert_int_equal(got[0], b1[0]), assert_int_equal(got[1], b1[1]);
    assert_int_equal(block_pool_refs(p, b1[0]), 3); /* owner, tree, this match */
    for (int i = 2; i < 4; i++)
        b2[i] = block_pool_alloc(p);
    b2[0] = got[0], b2[1] = got[1];
    assert_int_equal(radix_insert(t, seq2, b2, 4), 2); /* splits seq1's edge after 2 blocks */
    assert_int_equal(radix_check(t), 0);
    assert_int_equal(radix_cached_blocks(t), 6);
    assert_int_equal(radix_match(t, seq1, 7, 4, got), 3);     /* 7 tokens: 3 whole blocks at most */
    assert_int_equal(radix_match(t, seq1, 8, 1, got + 3), 1); /* max_blocks caps */
    int32_t other[4] = {5, 5, 5, 5};
    assert_int_equal(radix_match(t, other, 4, 4, got), 0);
    radix_free(t);
    block_pool_free(p);
}

/* ---- randomized against a naive model ---- */

enum { BS = 2, MAXB = 6, ALPHA = 3, POOL = 4096 };

typedef struct {
    int32_t tokens[MAXB * BS];
    int32_t k;     /* prefix length in blocks */
    int32_t block; /* block holding the k-th block */
} naive_entry;

static naive_entry naive[POOL];
static int32_t n_naive;

static int32_t naive_find(const int32_t *tokens, int32_t k) {
    for (int32_t i = 0; i < n_naive; i++)
        if (naive[i].k == k && !memcmp(naive[i].tokens, tokens, (size_t)k * BS * sizeof *tokens))
            return naive[i].block;
    return -1;
}

static void test_radix_random(void **state) {
    (void)state;
    block_pool *p = block_pool_create(POOL);
    radix_tree *t = radix_create(p, BS);
    uint64_t x = 12345;
#define RND(n) ((x = x * 6364136223846793005ull + 1442695040888963407ull), (int32_t)((x >> 33) % (uint64_t)(n)))
    n_naive = 0;
    for (int op = 0; op < 3000; op++) {
        int32_t nb = 1 + RND(MAXB), toks[MAXB * BS], blocks[MAXB], got[MAXB];
        for (int32_t i = 0; i < nb * BS; i++)
            toks[i] = RND(ALPHA);
        if (RND(3)) {
            /* a sequence runs: reuse the cached prefix, compute the rest, cache it, finish */
            int32_t hit = radix_match(t, toks, nb * BS, nb, blocks);
            for (int32_t i = hit; i < nb; i++) {
                blocks[i] = block_pool_alloc(p);
                assert_true(blocks[i] >= 0);
            }
            int32_t fresh = radix_insert(t, toks, blocks, nb);
            assert_int_equal(fresh, nb - hit);
            for (int32_t k = 1; k <= nb; k++)
                if (naive_find(toks, k) < 0) {
                    naive[n_naive] = (naive_entry){.k = k, .block = blocks[k - 1]};
                    memcpy(naive[n_naive++].tokens, toks, (size_t)k * BS * sizeof *toks);
                }
            for (int32_t i = 0; i < nb; i++)
                block_pool_unref(p, blocks[i]); /* the sequence finishes */
        } else {
            int32_t want = 0;
            while (want < nb && naive_find(toks, want + 1) >= 0)
                want++;
            int32_t hit = radix_match(t, toks, nb * BS, nb, got);
            assert_int_equal(hit, want);
            for (int32_t k = 0; k < hit; k++) {
                assert_int_equal(got[k], naive_find(toks, k + 1));
                block_pool_unref(p, got[k]);
            }
        }
        if (op % 100 == 0)
            assert_int_equal(radix_check(t), 0);
    }
    /* the tree alone holds every cached block, exactly once */
    assert_int_equal(radix_check(t), 0);
    assert_int_equal(radix_cached_blocks(t), n_naive);
    assert_int_equal(block_pool_n_free(p), POOL - n_naive);
    for (int32_t i = 0; i < n_naive; i++)
        assert_int_equal(block_pool_refs(p, naive[i].block), 1);
    radix_free(t);
    assert_int_equal(block_pool_n_free(p), POOL);
    block_pool_free(p);
}

/* Eviction frees least recently used leaves, never a block a sequence holds. */
static void test_radix_evict(void **state) {
    (void)state;
    block_pool *p = block_pool_create(8);
    radix_tree *t = radix_create(p, 1);
    int32_t a[3] = {1, 2, 3}, b[3] = {1, 2, 4}, c[2] = {7, 8};
    int32_t ba[3], bb[3], bc[2], got[3];
    for (int i = 0; i < 3; i++)
        ba[i] = block_pool_alloc(p);
    radix_insert(t, a, ba, 3);
    bb[0] = ba[0], bb[1] = ba[1], bb[2] = block_pool_alloc(p);
    radix_insert(t, b, bb, 3);
    for (int i = 0; i < 2; i++)
        bc[i] = block_pool_alloc(p);
    radix_insert(t, c, bc, 2);
    for (int i = 0; i < 3; i++)
        block_pool_unref(p, ba[i]);
    block_pool_unref(p, bb[2]);
    for (int i = 0; i < 2; i++)
        block_pool_unref(p, bc[i]);
    assert_int_equal(radix_cached_blocks(t), 6);
    assert_int_equal(block_pool_n_free(p), 2);
    /* a running sequence holds c's blocks; a is used more recently than b */
    assert_int_equal(radix_match(t, c, 2, 2, got), 2);
    int32_t held[2] = {got[0], got[1]};
    assert_int_equal(radix_match(t, a, 3, 3, got), 3);
    for (int i = 0; i < 3; i++)
        block_pool_unref(p, got[i]);
    assert_int_equal(radix_evict(t, 1), 1); /* b's own last block goes first */
    assert_int_equal(radix_match(t, b, 3, 3, got), 2);
    block_pool_unref(p, got[0]), block_pool_unref(p, got[1]);
    assert_int_equal(radix_evict(t, 10), 3); /* then a's tail and the shared prefix; c is held */
    assert_int_equal(radix_cached_blocks(t), 2);
    assert_int_equal(radix_check(t), 0);
    block_pool_unref(p, held[0]), block_pool_unref(p, held[1]);
    assert_int_equal(radix_evict(t, 10), 2);
    assert_int_equal(block_pool_n_free(p), 8);
    radix_free(t);
    block_pool_free(p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_block_pool),
        cmocka_unit_test(test_radix_basics),
        cmocka_unit_test(test_radix_random),
        cmocka_unit_test(test_radix_evict),
    };
    return cmocka_run_group_tests_name("radix", tests, NULL, NULL);
}
