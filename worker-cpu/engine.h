/* The CPU engine: one forward step over a batch of sequences with a paged
 * KV cache. The caller (model-generate, the worker service, the scheduler's
 * decisions) owns the block tables; the engine owns the KV memory: a pool of
 * n_blocks blocks of block_size positions, each holding every layer's keys
 * and values for those positions.
 *
 * A step takes each sequence's new tokens (a prefill chunk or one decode
 * token), the position of its first new token, and its block table; it
 * writes their keys and values into the blocks and returns logits for the
 * last new token of each sequence (or for every new token, on request).
 *
 * Threading: a step runs on the caller's thread plus n_threads-1 pool
 * workers; an engine is not re-entrant (one step at a time). */
#ifndef INFERNO_ENGINE_H
#define INFERNO_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "batch.h"
#include "model.h"

typedef struct cpu_engine cpu_engine;

typedef struct {
    int n_threads;       /* default 1 */
    int block_size;      /* positions per KV block, default 16 */
    int n_blocks;        /* KV pool size; 0: enough for kv_tokens */
    int kv_tokens;       /* with n_blocks 0: positions to hold (default 4096) */
    const char *kernels; /* "reference", "avx2", "avx512", NULL: best available */
    bool kv_f16;         /* a half-precision KV cache (float32 otherwise) */
} cpu_engine_config;

int cpu_engine_create(const model_desc *m, const cpu_engine_config *cfg, cpu_engine **out, char *err, size_t errlen);
void cpu_engine_free(cpu_engine *e);

int cpu_engine_block_size(const cpu_engine *e);
int cpu_engine_n_blocks(const cpu_engine *e);
const char *cpu_engine_kernels(const cpu_engine *e);

/* Runs the step; logits holds engine_batch_rows(b) * vocab floats.
 * Every index is checked: a bad token, position or block id is an error. */
int cpu_engine_forward(cpu_engine *e, const engine_batch *b, float *logits, char *err, size_t errlen);

#endif
