/* The scheduling policy, free of I/O: requests come in, steps go out to a
 * worker, sampled tokens come back. The service (next) wraps it with nng.
 *
 * Each step: every running sequence that is decoding gets its one token
 * first, so decodes never stall behind long prompts; the rest of the token
 * budget goes to prompts, in chunks, oldest request first. A new sequence
 * starts from the longest cached prefix (radix.h) and computes only the
 * rest. When KV blocks run out, unreferenced cached prefixes are evicted;
 * if that is not enough, the newest running sequence is preempted: its
 * blocks are freed and it waits again at the head of the queue with all its
 * tokens, to be recomputed. Not thread-safe: one owner thread. */
#ifndef INFERNO_SCHEDULER_H
#define INFERNO_SCHEDULER_H

#include <stdbool.h>
#include <stdint.h>

#include "protocol.h"

typedef struct sched sched;

typedef struct {
    int32_t block_size, n_blocks; /* the worker's KV pool */
    int32_t max_step_tokens;      /* token budget of one step */
    int32_t max_running;          /* sequences in one step */
    int32_t max_waiting;          /* queue bound: beyond it, submit says overloaded */
    int32_t max_context;          /* prompt + generated tokens of one sequence */
} sched_config;

typedef struct {
    uint64_t id;
    const int32_t *prompt;
    int32_t n_prompt;
    int32_t max_tokens; /* generated tokens in all, n_generated included */
    int32_t eos_id;     /* -1: none */
    /* more stop tokens (at most SCHED_MAX_STOP_IDS) besides eos_id */
    const int32_t *stop_ids;
    int32_t n_stop_ids;
    /* a resubmitted sequence (failover): the last n_generated tokens of
     * prompt were generated, and count against max_tokens */
    int32_t n_generated;
} sched_request;

#define SCHED_MAX_STOP_IDS 8

enum { SCHED_OK = 0, SCHED_INVALID = -1, SCHED_OVERLOADED = -2 };

/* A step's token that the step before it samples: the worker puts there
 * the token it drew for the sequence (see sched_plan). */
#define SCHED_TOKEN_PENDING INFERNO_TOKEN_PENDING

/* One sequence's part of a step: tokens[start..start+n_tokens) at positions
 * pos0.., its block table, and whether the worker samples after it. */
typedef struct {
    uint64_t id;
    int32_t start, n_tokens, pos0;
    const int32_t *block_table;
    int32_t n_table;
    bool sample;
    int32_t n_prompt, n_generated; /* for the sampler: penalties, seeds */
} sched_seq_step;

typedef struct {
    int32_t n_seqs, n_tokens;
    sched_seq_step *seqs;
    int32_t *tokens;
} sched_step;

enum sched_event_kind { SCHED_TOKEN, SCHED_FINISHED };
enum sched_finish { FINISH_NONE, FINISH_EOS, FINISH_LENGTH, FINISH_CANCELLED };

/* For FINISHED events, token holds the number of prompt tokens that came
 * from the prefix cache when the request was first admitted. */
typedef void (*sched_event_fn)(void *ctx, uint64_t id, enum sched_event_kind kind, int32_t token,
                               enum sched_finish why);

typedef struct {
    int32_t waiting, running;
    int32_t blocks_used, blocks_total, blocks_cached;
    uint64_t prompt_tokens, prefix_hit_tokens, generated_tokens, computed_tokens, preemptions;
} sched_stats;

sched *sched_create(const sched_config *cfg);
void sched_free(sched *s);

/* Queues a request (copied). SCHED_INVALID: empty or over max_context;
 * SCHED_OVERLOADED: the queue is full. */
int sched_submit(sched *s, const sched_request *r);
/* Stops a request now, freeing its blocks; emits FINISHED/CANCELLED.
 * Returns false for an unknown id. */
bool sched_cancel(sched *s, uint64_t id, sched_event_fn fn, void *ctx);

/* Plans the next step; out stays valid until the call after next. Returns
 * the number of sequences (0: nothing to do). It may be called once more
 * before the step is completed (pipelining: the worker gets step N+1 while
 * it runs N): a sequence that N samples then goes into N+1 as one
 * SCHED_TOKEN_PENDING token, unless that token ends it by length. Steps
 * are completed in the order they were planned. */
int32_t sched_plan(sched *s, sched_step *out);
/* The worker ran the planned step: sampled[i] is the token of seqs[i] when
 * it was sampled. Emits TOKEN and FINISHED events in sequence order. */
void sched_complete(sched *s, const sched_step *step, const int32_t *sampled, sched_event_fn fn, void *ctx);

void sched_get_stats(const sched *s, sched_stats *out);

/* Tokens of tokens[0..n) that this scheduler's prefix cache holds (for
 * placing a request where its prefix is). Marks the prefix recently used. */
int32_t sched_cached_prefix(sched *s, const int32_t *tokens, int32_t n);

/* Removes every sequence, handing each to fn with all its tokens so far
 * (prompt then generated) and how many were generated: what a dead worker's
 * sequences need to be resubmitted elsewhere. */
typedef void (*sched_drain_fn)(void *ctx, uint64_t id, const int32_t *tokens, int32_t n_tokens, int32_t n_generated);
void sched_drain(sched *s, sched_drain_fn fn, void *ctx);

#endif
