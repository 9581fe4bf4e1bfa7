/* Scheduling policy (see scheduler.h). Sequences live in one array in
 * arrival order; a state says whether each waits or runs.
 *
 * Pipelined steps: the service may plan step N+1 while step N is still on
 * the worker. A sequence then has positions sent but not computed
 * (n_sent > n_computed) and maybe a token sampled but not yet known
 * (pending), which step N+1 names as SCHED_TOKEN_PENDING. Such a sequence
 * is never preempted or given back its blocks (step N writes them); one
 * that finishes in step N had its step N+1 work computed for nothing, and
 * completing N+1 skips it like any sequence gone since its plan. The
 * worker runs steps in order, so a block freed while a step that writes
 * it is in flight is written by that step before any later owner's. */
#include "scheduler.h"

#include <stdlib.h>
#include <string.h>

#include "block_pool.h"
#include "radix.h"

enum seq_state { SEQ_WAITING, SEQ_RUNNING };

typedef struct {
    uint64_t id;
    enum seq_state state;
    int32_t *tokens; /* prompt, then generated */
    int32_t n_tokens, cap_tokens, n_prompt;
    int32_t n_computed; /* tokens whose KV is in the blocks */
    int32_t n_sent;     /* n_computed plus the positions of the step in flight */
    int32_t pending;    /* its samples in steps planned and not completed */
    int32_t *blocks;
    int32_t n_blocks, cap_blocks;
    int32_t max_tokens, n_generated, eos_id;
    int32_t stop_ids[SCHED_MAX_STOP_IDS], n_stop_ids;
    int32_t cached; /* prompt tokens found in the prefix cache at first admission */
    bool ever_admitted;
    uint64_t admitted; /* admission order, for choosing whom to preempt */
    uint64_t planned;  /* the step this sequence was last placed in */
} seq;

struct sched {
    sched_config cfg;
    block_pool *pool;
    radix_tree *cache;
    seq *seqs;
    int32_t n_seqs, cap_seqs;
    uint64_t admissions, steps;
    sched_stats stats;
    /* two plans, used in turn: a step's stays valid while the next is
     * planned (an empty plan does not take a turn) */
    sched_seq_step *plan_seqs[2];
    int32_t *plan_tokens[2];
    int plan_turn;
};

sched *sched_create(const sched_config *cfg) {
    sched *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->cfg = *cfg;
    s->pool = block_pool_create(cfg->n_blocks);
    s->cache = s->pool ? radix_create(s->pool, cfg->block_size) : NULL;
    for (int i = 0; i < 2; i++) {
        s->plan_seqs[i] = calloc((size_t)cfg->max_running, sizeof *s->plan_seqs[i]);
        s->plan_tokens[i] = calloc((size_t)cfg->max_step_tokens, sizeof *s->plan_tokens[i]);
    }
    if (!s->cache || !s->plan_seqs[0] || !s->plan_tokens[0] || !s->plan_seqs[1] || !s->plan_tokens[1]) {
        sched_free(s);
        return NULL;
    }
    return s;
}

static void release_blocks(sched *s, seq *q) {
    for (int32_t i = 0; i < q->n_blocks; i++)
        block_pool_unref(s->pool, q->blocks[i]);
    q->n_blocks = 0;
    q->n_computed = q->n_sent = q->pending = 0;
}

void sched_free(sched *s) {
    if (!s)
        return;
    for (int32_t i = 0; i < s->n_seqs; i++) {
        release_blocks(s, &s->seqs[i]);
        free(s->seqs[i].tokens), free(s->seqs[i].blocks);
    }
    radix_free(s->cache);
    block_pool_free(s->pool);
    free(s->seqs), free(s->plan_seqs[0]), free(s->plan_tokens[0]), free(s->plan_seqs[1]), free(s->plan_tokens[1]);
    free(s);
}

int sched_submit(sched *s, const sched_request *r) {
    int64_t context = (int64_t)r->n_prompt + r->max_tokens - r->n_generated;
    if (r->n_prompt < 1 || r->max_tokens < 1 || r->n_generated < 0 || r->n_generated >= r->max_tokens ||
        r->n_generated >= r->n_prompt || r->n_stop_ids < 0 || r->n_stop_ids > SCHED_MAX_STOP_IDS ||
        context > s->cfg.max_context || context > (int64_t)s->cfg.n_blocks * s->cfg.block_size)
        return SCHED_INVALID;
    int32_t waiting = 0;
    for (int32_t i = 0; i < s->n_seqs; i++)
        waiting += s->seqs[i].state == SEQ_WAITING;
    if (waiting >= s->cfg.max_waiting)
        return SCHED_OVERLOADED;
    if (s->n_seqs == s->cap_seqs) {
        int32_t cap = s->cap_seqs ? 2 * s->cap_seqs : 16;
        seq *v = realloc(s->seqs, (size_t)cap * sizeof *v);
        if (!v)
            return SCHED_OVERLOADED;
        s->seqs = v, s->cap_seqs = cap;
    }
    seq q = {.id = r->id,
             .state = SEQ_WAITING,
             .n_prompt = r->n_prompt - r->n_generated,
             .max_tokens = r->max_tokens,
             .n_generated = r->n_generated,
             .eos_id = r->eos_id,
             .n_stop_ids = r->n_stop_ids,
             .cap_tokens = (int32_t)context};
    if (r->n_stop_ids)
        memcpy(q.stop_ids, r->stop_ids, (size_t)r->n_stop_ids * sizeof *q.stop_ids);
    q.tokens = malloc((size_t)q.cap_tokens * sizeof *q.tokens);
    q.cap_blocks = (q.cap_tokens + s->cfg.block_size - 1) / s->cfg.block_size;
    q.blocks = malloc((size_t)q.cap_blocks * sizeof *q.blocks);
    if (!q.tokens || !q.blocks) {
        free(q.tokens), free(q.blocks);
        return SCHED_OVERLOADED;
    }
    memcpy(q.tokens, r->prompt, (size_t)r->n_prompt * sizeof *q.tokens);
    q.n_tokens = r->n_prompt;
    s->seqs[s->n_seqs++] = q;
    s->stats.prompt_tokens += (uint64_t)(r->n_prompt - r->n_generated);
    return SCHED_OK;
}

static void remove_seq(sched *s, int32_t i) {
    release_blocks(s, &s->seqs[i]);
    free(s->seqs[i].tokens), free(s->seqs[i].blocks);
    memmove(&s->seqs[i], &s->seqs[i + 1], (size_t)(s->n_seqs - i - 1) * sizeof *s->seqs);
    s->n_seqs--;
}

bool sched_cancel(sched *s, uint64_t id, sched_event_fn fn, void *ctx) {
    for (int32_t i = 0; i < s->n_seqs; i++)
        if (s->seqs[i].id == id) {
            remove_seq(s, i);
            if (fn)
                fn(ctx, id, SCHED_FINISHED, 0, FINISH_CANCELLED);
            return true;
        }
    return false;
}

/* A free block: from the pool, else by evicting cached prefixes. */
static int32_t take_block(sched *s) {
    int32_t b = block_pool_alloc(s->pool);
    if (b < 0 && radix_evict(s->cache, 1) > 0)
        b = block_pool_alloc(s->pool);
    return b;
}

/* Gives q blocks up to position `end` (exclusive); false when none are left. */
static bool grow_blocks(sched *s, seq *q, int32_t end) {
    while (q->n_blocks * s->cfg.block_size < end) {
        int32_t b = take_block(s);
        if (b < 0)
            return false;
        q->blocks[q->n_blocks++] = b;
    }
    return true;
}

/* Frees the newest running sequence's blocks and sends it back to wait,
 * keeping its tokens (it will be recomputed). False if none runs. */
static bool preempt_newest(sched *s, const seq *keep) {
    seq *victim = NULL;
    for (int32_t i = 0; i < s->n_seqs; i++) {
        seq *q = &s->seqs[i];
        /* never one in this step or the one in flight: the worker writes its blocks */
        if (q->state == SEQ_RUNNING && q != keep && q->planned != s->steps && q->n_sent == q->n_computed &&
            (!victim || q->admitted > victim->admitted))
            victim = q;
    }
    if (!victim)
        return false;
    release_blocks(s, victim);
    victim->state = SEQ_WAITING;
    s->stats.preemptions++;
    return true;
}

static bool blocks_for(sched *s, seq *q, int32_t end) {
    while (!grow_blocks(s, q, end))
        if (!preempt_newest(s, q))
            return false;
    return true;
}

/* Adds q's next n positions; a pending token goes as SCHED_TOKEN_PENDING. */
static void add_to_plan(sched *s, sched_step *p, seq *q, int32_t n, bool sample) {
    q->planned = s->steps;
    sched_seq_step *st = &p->seqs[p->n_seqs++];
    *st = (sched_seq_step){
        q->id, p->n_tokens, n, q->n_sent, q->blocks, q->n_blocks, sample, q->n_prompt, q->n_generated + q->pending};
    if (q->pending)
        p->tokens[p->n_tokens] = SCHED_TOKEN_PENDING;
    else
        memcpy(p->tokens + p->n_tokens, q->tokens + q->n_sent, (size_t)n * sizeof *p->tokens);
    p->n_tokens += n;
    q->n_sent += n;
    q->pending += sample;
}

/* A running sequence's next step is one token: the last prompt token, the
 * last sampled one, or the one the step in flight samples, unless that
 * token ends it by length. */
static bool decodes_next(const seq *q) {
    if (q->state != SEQ_RUNNING)
        return false;
    if (q->pending)
        return q->pending == 1 && q->n_sent == q->n_tokens && q->n_generated + q->pending < q->max_tokens;
    return q->n_tokens - q->n_sent == 1;
}

int32_t sched_plan(sched *s, sched_step *p) {
    *p = (sched_step){0, 0, s->plan_seqs[s->plan_turn], s->plan_tokens[s->plan_turn]};
    s->steps++;
    int32_t budget = s->cfg.max_step_tokens;
    /* decodes first: one token each */
    for (int32_t i = 0; i < s->n_seqs && p->n_seqs < s->cfg.max_running && budget > 0; i++) {
        seq *q = &s->seqs[i];
        if (!decodes_next(q))
            continue;
        if (!blocks_for(s, q, q->n_sent + 1))
            continue;
        add_to_plan(s, p, q, 1, true);
        budget--;
    }
    /* then prompts (running prefills first, in arrival order, then waiting
     * ones while fewer than max_running run: with a step in flight, some
     * that run are in no step, their last token still to come) */
    int32_t running = 0;
    for (int32_t i = 0; i < s->n_seqs; i++)
        running += s->seqs[i].state == SEQ_RUNNING;
    for (int pass = 0; pass < 2; pass++) {
        for (int32_t i = 0; i < s->n_seqs && p->n_seqs < s->cfg.max_running && budget > 0; i++) {
            seq *q = &s->seqs[i];
            if (pass == 0 ? q->state != SEQ_RUNNING || q->pending || q->n_tokens - q->n_sent <= 1
                          : q->state != SEQ_WAITING || running >= s->cfg.max_running)
                continue;
            int32_t hit_tokens = -1;
            if (q->state == SEQ_WAITING) {
                /* reuse the cached prefix, always leaving one token to compute */
                int32_t hit =
                    radix_match(s->cache, q->tokens, q->n_tokens, (q->n_tokens - 1) / s->cfg.block_size, q->blocks);
                q->n_blocks = hit;
                q->n_computed = q->n_sent = hit_tokens = hit * s->cfg.block_size;
                q->state = SEQ_RUNNING;
                q->admitted = ++s->admissions;
                running++;
            }
            int32_t n = q->n_tokens - q->n_sent < budget ? q->n_tokens - q->n_sent : budget;
            if (!blocks_for(s, q, q->n_sent + n)) {
                /* nothing to preempt and no blocks: wait for a finish (one
                 * in flight keeps its blocks: its step writes them) */
                if (q->n_sent == q->n_computed) {
                    release_blocks(s, q);
                    q->state = SEQ_WAITING;
                }
                break;
            }
            if (hit_tokens >= 0) {
                /* admitted now: a recompute after preemption counts in
                 * the stats, but the request's own cached count is that
                 * of its first admission */
                s->stats.prefix_hit_tokens += (uint64_t)hit_tokens;
                if (!q->ever_admitted)
                    q->cached = hit_tokens < q->n_prompt ? hit_tokens : q->n_prompt;
                q->ever_admitted = true;
            }
            add_to_plan(s, p, q, n, q->n_sent + n == q->n_tokens);
            budget -= n;
        }
    }
    if (p->n_seqs > 0)
        s->plan_turn ^= 1;
    return p->n_seqs;
}

static seq *find(sched *s, uint64_t id, int32_t *index) {
    for (int32_t i = 0; i < s->n_seqs; i++)
        if (s->seqs[i].id == id) {
            *index = i;
            return &s->seqs[i];
        }
    return NULL;
}

static bool is_stop(const seq *q, int32_t tok) {
    if (tok == q->eos_id)
        return true;
    for (int32_t i = 0; i < q->n_stop_ids; i++)
        if (tok == q->stop_ids[i])
            return true;
    return false;
}

void sched_complete(sched *s, const sched_step *step, const int32_t *sampled, sched_event_fn fn, void *ctx) {
    for (int32_t k = 0; k < step->n_seqs; k++) {
        int32_t i;
        seq *q = find(s, step->seqs[k].id, &i);
        if (!q || q->state != SEQ_RUNNING || q->n_computed != step->seqs[k].pos0)
            continue; /* cancelled or preempted since the plan */
        q->n_computed += step->seqs[k].n_tokens;
        s->stats.computed_tokens += (uint64_t)step->seqs[k].n_tokens;
        q->pending -= step->seqs[k].sample;
        /* full blocks are shareable from now on */
        radix_insert(s->cache, q->tokens, q->blocks, q->n_computed / s->cfg.block_size);
        if (!step->seqs[k].sample)
            continue;
        int32_t tok = sampled[k];
        q->tokens[q->n_tokens++] = tok;
        q->n_generated++;
        s->stats.generated_tokens++;
        if (fn)
            fn(ctx, q->id, SCHED_TOKEN, tok, FINISH_NONE);
        enum sched_finish why = is_stop(q, tok)                   ? FINISH_EOS
                                : q->n_generated >= q->max_tokens ? FINISH_LENGTH
                                                                  : FINISH_NONE;
        if (why != FINISH_NONE) {
            uint64_t id = q->id;
            int32_t cached = q->cached;
            remove_seq(s, i);
            if (fn)
                fn(ctx, id, SCHED_FINISHED, cached, why);
        }
    }
}

void sched_get_stats(const sched *s, sched_stats *out) {
    *out = s->stats;
    out->waiting = out->running = 0;
    for (int32_t i = 0; i < s->n_seqs; i++) {
        out->waiting += s->seqs[i].state == SEQ_WAITING;
        out->running += s->seqs[i].state == SEQ_RUNNING;
    }
    out->blocks_total = block_pool_size(s->pool);
    out->blocks_used = out->blocks_total - block_pool_n_free(s->pool);
    out->blocks_cached = radix_cached_blocks(s->cache);
}

int32_t sched_cached_prefix(sched *s, const int32_t *tokens, int32_t n) {
    int32_t max_blocks = n / s->cfg.block_size;
    if (max_blocks == 0)
        return 0;
    int32_t *blocks = malloc((size_t)max_blocks * sizeof *blocks);
    if (!blocks)
        return 0;
    int32_t hit = radix_match(s->cache, tokens, n, max_blocks, blocks);
    for (int32_t i = 0; i < hit; i++)
        block_pool_unref(s->pool, blocks[i]);
    free(blocks);
    return hit * s->cfg.block_size;
}

void sched_drain(sched *s, sched_drain_fn fn, void *ctx) {
    while (s->n_seqs > 0) {
        seq *q = &s->seqs[0];
        fn(ctx, q->id, q->tokens, q->n_tokens, q->n_generated);
        remove_seq(s, 0);
    }
}
