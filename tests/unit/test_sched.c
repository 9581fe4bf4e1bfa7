/* The scheduling policy against a fake worker. The fake keeps a KV cache of
 * token ids per block slot, writes each step's tokens through the block
 * tables it is given, and "samples" a hash of what it reads back through
 * them for positions 0..p. So any wrong block table, position, shared
 * prefix or lost token changes the output; correct scheduling reproduces
 * exactly what the same function gives on the true token sequence.
 *
 * Every test runs twice: each step completed before the next is planned,
 * and pipelined (step N+1 planned while N is in flight, as the service
 * does), where the fake worker fills in SCHED_TOKEN_PENDING with the token
 * it sampled for that sequence in the step before. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler.h"

enum { BS = 4, VOCAB = 1000, MAXR = 64, MAXLEN = 256 };

static int32_t next_token(const int32_t *toks, int32_t n) {
    uint64_t h = 1469598103934665603ull;
    for (int32_t i = 0; i < n; i++)
        h = (h ^ (uint64_t)toks[i]) * 1099511628211ull;
    return (int32_t)(h % VOCAB) + 1;
}

typedef struct {
    int32_t kv[512][BS];
    int32_t last[MAXR], last_pos[MAXR]; /* each sequence's last sampled token and its position */
    int32_t n_pending;                  /* SCHED_TOKEN_PENDING tokens filled in */
} fake_worker;

static int pipelined; /* the mode of the test running (its prestate) */

/* A planned step as the worker receives it: the service packs a plan as
 * soon as it is made, block tables included (a sequence that finishes
 * while its next step is in flight frees its table). */
typedef struct {
    sched_step st;
    sched_seq_step seqs[MAXR];
    int32_t tokens[512];
    int32_t tables[MAXR][MAXLEN / BS + 1];
} step_copy;

static int32_t plan(sched *s, step_copy *c) {
    sched_step p;
    int32_t n = sched_plan(s, &p);
    assert_true(n <= MAXR && p.n_tokens <= 512);
    c->st = (sched_step){p.n_seqs, p.n_tokens, c->seqs, c->tokens};
    memcpy(c->tokens, p.tokens, (size_t)p.n_tokens * sizeof *p.tokens);
    for (int32_t k = 0; k < n; k++) {
        c->seqs[k] = p.seqs[k];
        assert_true(p.seqs[k].n_table <= MAXLEN / BS + 1);
        memcpy(c->tables[k], p.seqs[k].block_table, (size_t)p.seqs[k].n_table * sizeof(int32_t));
        c->seqs[k].block_table = c->tables[k];
    }
    return n;
}

static void worker_step(fake_worker *w, const sched_step *st, int32_t *sampled) {
    for (int32_t k = 0; k < st->n_seqs; k++) {
        const sched_seq_step *q = &st->seqs[k];
        for (int32_t i = 0; i < q->n_tokens; i++) {
            int32_t pos = q->pos0 + i, tok = st->tokens[q->start + i];
            assert_true(pos / BS < q->n_table);
            if (tok == SCHED_TOKEN_PENDING) {
                assert_true(pipelined && q->n_tokens == 1 && w->last_pos[q->id] == pos);
                tok = w->last[q->id], w->n_pending++;
            }
            w->kv[q->block_table[pos / BS]][pos % BS] = tok;
        }
        if (q->sample) {
            int32_t last = q->pos0 + q->n_tokens, seen[MAXLEN];
            for (int32_t pos = 0; pos < last; pos++)
                seen[pos] = w->kv[q->block_table[pos / BS]][pos % BS];
            sampled[k] = next_token(seen, last);
            w->last[q->id] = sampled[k], w->last_pos[q->id] = last;
        }
    }
}

typedef struct {
    int32_t out[MAXR][MAXLEN];
    int32_t n_out[MAXR];
    int finished[MAXR];
    int reason[MAXR];
} results;

static void on_event(void *ctx, uint64_t id, enum sched_event_kind kind, int32_t token, enum sched_finish why) {
    results *r = ctx;
    if (kind == SCHED_TOKEN)
        r->out[id][r->n_out[id]++] = token;
    else
        r->finished[id]++, r->reason[id] = why;
}

/* What a request must produce: the function applied to its own tokens. */
static void expected(const int32_t *prompt, int32_t n, int32_t max_tokens, int32_t eos, int32_t *out, int32_t *n_out) {
    int32_t toks[MAXLEN];
    memcpy(toks, prompt, (size_t)n * 4);
    *n_out = 0;
    for (int32_t g = 0; g < max_tokens; g++) {
        int32_t t = next_token(toks, n + g);
        toks[n + g] = t;
        out[(*n_out)++] = t;
        if (t == eos)
            break;
    }
}

/* Runs steps until none is left or max_steps are done (none left in flight). */
static int run_to_end(sched *s, fake_worker *w, results *r, int max_steps) {
    static step_copy st[2];
    int32_t sampled[MAXR];
    int steps = 0, cur = 0;
    bool have = max_steps > 0 && plan(s, &st[0]) > 0;
    while (have) {
        /* pipelined: the next step is planned while this one is in flight */
        bool next = pipelined && steps + 1 < max_steps && plan(s, &st[cur ^ 1]) > 0;
        worker_step(w, &st[cur].st, sampled);
        sched_complete(s, &st[cur].st, sampled, on_event, r);
        if (++steps == max_steps)
            break;
        /* none could be planned beside it (or not pipelined): plan now */
        if (!next)
            next = plan(s, &st[cur ^ 1]) > 0;
        cur ^= 1, have = next;
    }
    return steps;
}

static sched *new_sched(int32_t n_blocks, int32_t max_step_tokens, int32_t max_running, int32_t max_waiting) {
    sched_config cfg = {.block_size = BS,
                        .n_blocks = n_blocks,
                        .max_step_tokens = max_step_tokens,
                        .max_running = max_running,
                        .max_waiting = max_waiting,
                        .max_context = MAXLEN};
    return sched_create(&cfg);
}

static void test_concurrent_equals_alone(void **state) {
    pipelined = *(int *)*state;
    sched *s = new_sched(90, 64, 16, 64);
    static fake_worker w;
    static results r;
    memset(&w, 0, sizeof w), memset(&r, 0, sizeof r);
    int32_t prompts[32][100], lens[32];
    uint64_t x = 7;
    for (int i = 0; i < 32; i++) { /* 8 families sharing 40-token prefixes, then their own tails */
        lens[i] = 41 + (int32_t)((x = x * 6364136223846793005ull + 1) >> 58);
        for (int32_t k = 0; k < lens[i]; k++)
            prompts[i][k] = k < 40 ? (i % 8) * 100 + k : (int32_t)((x = x * 6364136223846793005ull + 1) >> 54) % VOCAB;
        sched_request req = {(uint64_t)i, prompts[i], lens[i], 20, -1};
        assert_int_equal(sched_submit(s, &req), SCHED_OK);
    }
    run_to_end(s, &w, &r, 10000);
    for (int i = 0; i < 32; i++) {
        int32_t want[MAXLEN], n_want;
        expected(prompts[i], lens[i], 20, -1, want, &n_want);
        assert_int_equal(r.finished[i], 1);
        assert_int_equal(r.reason[i], FINISH_LENGTH);
        assert_int_equal(r.n_out[i], n_want);
        assert_memory_equal(r.out[i], want, (size_t)n_want * 4);
    }
    sched_stats st;
    sched_get_stats(s, &st);
    print_message(
        "32 requests: %llu prompt tokens, %llu reused from the prefix cache, %llu computed, %llu preemptions\n",
        (unsigned long long)st.prompt_tokens, (unsigned long long)st.prefix_hit_tokens,
        (unsigned long long)st.computed_tokens, (unsigned long long)st.preemptions);
    assert_true(st.prefix_hit_tokens > 0);
    assert_true(st.preemptions > 0); /* 90 blocks cannot hold 32 sequences of ~80 tokens */
    if (pipelined)
        assert_true(w.n_pending > 0);
    assert_int_equal(st.running + st.waiting, 0);
    assert_int_equal(st.blocks_used, st.blocks_cached); /* only the cache holds blocks now */
    sched_free(s);
}

static void test_prefix_reuse_skips_prefill(void **state) {
    pipelined = *(int *)*state;
    sched *s = new_sched(64, 512, 8, 8);
    static fake_worker w;
    static results r;
    memset(&w, 0, sizeof w), memset(&r, 0, sizeof r);
    int32_t a[64], b[64];
    for (int i = 0; i < 64; i++)
        a[i] = i + 1, b[i] = i < 60 ? i + 1 : 999;
    sched_request ra = {0, a, 64, 4, -1}, rb = {1, b, 64, 4, -1};
    assert_int_equal(sched_submit(s, &ra), SCHED_OK);
    run_to_end(s, &w, &r, 100);
    sched_stats before, after;
    sched_get_stats(s, &before);
    assert_int_equal(sched_submit(s, &rb), SCHED_OK);
    run_to_end(s, &w, &r, 100);
    sched_get_stats(s, &after);
    assert_int_equal(after.prefix_hit_tokens - before.prefix_hit_tokens, 60); /* 15 whole blocks */
    assert_int_equal(after.computed_tokens - before.computed_tokens, 4 + 3);  /* the tail, then 3 decode steps */
    int32_t want[8], n_want;
    expected(b, 64, 4, -1, want, &n_want);
    assert_memory_equal(r.out[1], want, (size_t)n_want * 4);
    sched_free(s);
}

static void test_cancel_frees_blocks(void **state) {
    pipelined = *(int *)*state;
    sched *s = new_sched(64, 32, 8, 8);
    static fake_worker w;
    static results r;
    memset(&w, 0, sizeof w), memset(&r, 0, sizeof r);
    int32_t p[4][30];
    for (int i = 0; i < 4; i++) {
        for (int k = 0; k < 30; k++)
            p[i][k] = i * 50 + k + 1;
        sched_request req = {(uint64_t)i, p[i], 30, 100, -1};
        assert_int_equal(sched_submit(s, &req), SCHED_OK);
    }
    run_to_end(s, &w, &r, 10); /* mid-stream */
    for (int i = 0; i < 4; i++)
        assert_true(sched_cancel(s, (uint64_t)i, on_event, &r));
    assert_false(sched_cancel(s, 99, NULL, NULL));
    sched_stats st;
    sched_get_stats(s, &st);
    assert_int_equal(st.running + st.waiting, 0);
    assert_int_equal(st.blocks_used, st.blocks_cached);
    for (int i = 0; i < 4; i++)
        assert_int_equal(r.reason[i], FINISH_CANCELLED);
    sched_step plan;
    assert_int_equal(sched_plan(s, &plan), 0);
    sched_free(s);
}

/* A long prompt arriving while others decode: every step still carries a
 * decode token for each of them. */
static void test_decodes_never_stall(void **state) {
    pipelined = *(int *)*state;
    sched *s = new_sched(200, 16, 8, 8);
    static fake_worker w;
    static results r;
    memset(&w, 0, sizeof w), memset(&r, 0, sizeof r);
    int32_t shortp[3] = {1, 2, 3}, longp[200];
    for (int i = 0; i < 200; i++)
        longp[i] = 500 + i % 300;
    sched_request a = {0, shortp, 3, 40, -1}, b = {1, longp, 200, 5, -1};
    assert_int_equal(sched_submit(s, &a), SCHED_OK);
    sched_step st;
    int32_t sampled[MAXR];
    sched_plan(s, &st), worker_step(&w, &st, sampled), sched_complete(s, &st, sampled, on_event, &r);
    assert_int_equal(sched_submit(s, &b), SCHED_OK);
    for (int step = 0; step < 12; step++) { /* 200 tokens need 13+ steps of 15 */
        assert_true(sched_plan(s, &st) >= 1);
        bool decoded = false;
        for (int32_t k = 0; k < st.n_seqs; k++)
            decoded = decoded || (st.seqs[k].id == 0 && st.seqs[k].n_tokens == 1 && st.seqs[k].sample);
        assert_true(decoded);
        assert_true(st.n_tokens <= 16);
        worker_step(&w, &st, sampled);
        sched_complete(s, &st, sampled, on_event, &r);
    }
    run_to_end(s, &w, &r, 1000);
    int32_t want[64], n_want;
    expected(longp, 200, 5, -1, want, &n_want);
    assert_memory_equal(r.out[1], want, (size_t)n_want * 4);
    sched_free(s);
}

static void test_limits(void **state) {
    pipelined = *(int *)*state;
    sched_config cfg = {
        .block_size = BS, .n_blocks = 8, .max_step_tokens = 16, .max_running = 4, .max_waiting = 2, .max_context = 24};
    sched *s = sched_create(&cfg);
    int32_t p[30] = {0};
    sched_request ok = {1, p, 4, 4, -1}, too_long = {2, p, 20, 10, -1}, empty = {3, p, 0, 4, -1};
    assert_int_equal(sched_submit(s, &too_long), SCHED_INVALID);
    assert_int_equal(sched_submit(s, &empty), SCHED_INVALID);
    assert_int_equal(sched_submit(s, &ok), SCHED_OK);
    ok.id = 2;
    assert_int_equal(sched_submit(s, &ok), SCHED_OK);
    ok.id = 3;
    assert_int_equal(sched_submit(s, &ok), SCHED_OVERLOADED);
    /* EOS ends a request early */
    static fake_worker w;
    memset(&w, 0, sizeof w);
    static results r;
    memset(&r, 0, sizeof r);
    int32_t want[8], n_want;
    expected(p, 4, 4, -1, want, &n_want);
    sched_cancel(s, 2, NULL, NULL);
    sched_cancel(s, 1, NULL, NULL);
    sched_request eos = {4, p, 4, 4, want[1]};
    assert_int_equal(sched_submit(s, &eos), SCHED_OK);
    run_to_end(s, &w, &r, 100);
    assert_int_equal(r.n_out[4], 2);
    assert_int_equal(r.reason[4], FINISH_EOS);
    sched_free(s);
}

/* Pipelined, step by step: a sequence's next step is planned before its
 * token is known (SCHED_TOKEN_PENDING at the next position); the step
 * planned past its EOS is computed for nothing and completes with no
 * event; none is planned past max_tokens. */
static void test_pipelined_eos(void **state) {
    (void)state;
    pipelined = 1;
    sched *s = new_sched(32, 64, 8, 8);
    static fake_worker w;
    static results r;
    memset(&w, 0, sizeof w), memset(&r, 0, sizeof r);
    int32_t prompt[5] = {11, 12, 13, 14, 15}, want[16], n_want;
    expected(prompt, 5, 10, -1, want, &n_want);
    sched_request eos = {0, prompt, 5, 10, want[2]}; /* ends at its third token */
    assert_int_equal(sched_submit(s, &eos), SCHED_OK);
    static step_copy c[4];
    int32_t sampled[MAXR];
    assert_int_equal(plan(s, &c[0]), 1); /* the prompt */
    for (int k = 1; k < 4; k++) {
        /* planned while step k-1 is in flight */
        assert_int_equal(plan(s, &c[k]), 1);
        assert_int_equal(c[k].st.seqs[0].pos0, 4 + k);
        assert_int_equal(c[k].st.seqs[0].n_tokens, 1);
        assert_int_equal(c[k].st.tokens[c[k].st.seqs[0].start], SCHED_TOKEN_PENDING);
        assert_int_equal(c[k].st.seqs[0].n_generated, k); /* counts the pending token */
        worker_step(&w, &c[k - 1].st, sampled);
        sched_complete(s, &c[k - 1].st, sampled, on_event, &r);
    }
    assert_int_equal(r.finished[0], 1); /* step 2 drew the EOS; step 3 was already planned */
    assert_int_equal(r.reason[0], FINISH_EOS);
    worker_step(&w, &c[3].st, sampled);
    sched_complete(s, &c[3].st, sampled, on_event, &r);
    assert_int_equal(r.n_out[0], 3);
    assert_memory_equal(r.out[0], want, 3 * sizeof(int32_t));
    sched_stats stats;
    sched_get_stats(s, &stats);
    assert_int_equal(stats.running + stats.waiting, 0);
    assert_int_equal(stats.computed_tokens, 5 + 2);
    assert_int_equal(stats.blocks_used, stats.blocks_cached);
    /* max_tokens 2: the step after the one drawing the second token is not planned */
    sched_request two = {1, prompt, 5, 2, -1};
    assert_int_equal(sched_submit(s, &two), SCHED_OK);
    assert_int_equal(plan(s, &c[0]), 1);
    assert_int_equal(plan(s, &c[1]), 1);
    assert_int_equal(plan(s, &c[2]), 0);
    worker_step(&w, &c[0].st, sampled);
    sched_complete(s, &c[0].st, sampled, on_event, &r);
    assert_int_equal(plan(s, &c[2]), 0);
    worker_step(&w, &c[1].st, sampled);
    sched_complete(s, &c[1].st, sampled, on_event, &r);
    assert_int_equal(r.n_out[1], 2);
    assert_int_equal(r.reason[1], FINISH_LENGTH);
    sched_free(s);
}

int main(void) {
    static int off = 0, on = 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_prestate(test_concurrent_equals_alone, &off),
        cmocka_unit_test_prestate(test_concurrent_equals_alone, &on),
        cmocka_unit_test_prestate(test_prefix_reuse_skips_prefill, &off),
        cmocka_unit_test_prestate(test_prefix_reuse_skips_prefill, &on),
        cmocka_unit_test_prestate(test_cancel_frees_blocks, &off),
        cmocka_unit_test_prestate(test_cancel_frees_blocks, &on),
        cmocka_unit_test_prestate(test_decodes_never_stall, &off),
        cmocka_unit_test_prestate(test_decodes_never_stall, &on),
        cmocka_unit_test_prestate(test_limits, &off),
        cmocka_unit_test_prestate(test_limits, &on),
        cmocka_unit_test(test_pipelined_eos),
    };
    return cmocka_run_group_tests_name("sched", tests, NULL, NULL);
}
