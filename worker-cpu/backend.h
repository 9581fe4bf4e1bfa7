/* One interface over the engines, for the programs that run steps (the
 * worker service, model-generate, inferno-bench, tests): the CPU engine,
 * linked in, or the CUDA engine, loaded on first use from
 * libinferno-cuda.so (INFERNO_CUDA_LIB, else ../lib/ beside the program),
 * so that nothing but --backend cuda ever needs the CUDA libraries.
 *
 * Threading: as the engine behind it, one step at a time. */
#ifndef INFERNO_BACKEND_H
#define INFERNO_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "batch.h"
#include "model.h"
#include "sampler.h"

typedef struct engine engine;

typedef struct {
    const char *backend; /* "cpu" (default) or "cuda" */
    int block_size;      /* positions per KV block, default 16 */
    int n_blocks;        /* KV pool size; 0: enough for kv_tokens */
    int kv_tokens;       /* with n_blocks 0: positions to hold (default 4096) */
    int n_threads;       /* cpu: threads, default 1 */
    const char *kernels; /* cpu: kernel set, NULL for the best available */
    int device;          /* cuda: device ordinal */
    int graphs;          /* cuda: -1 to run decode steps without CUDA graphs */
    const char *kv_type; /* the KV cache: "f32", "f16" or (cuda) "fp8"; NULL for the backend's default */
} engine_config;

int engine_open(const model_desc *m, const engine_config *cfg, engine **out, char *err, size_t errlen);
void engine_close(engine *e);

/* One step (see engine.h). logits (engine_batch_rows(b) x vocab floats)
 * and argmax (one id per row: the first largest logit) may each be NULL. */
int engine_step(engine *e, const engine_batch *b, float *logits, int32_t *argmax, char *err, size_t errlen);

/* One step that samples too: ids[r] gets the token of row r by plans[r]
 * (engine_batch_rows(b) of each). The CUDA engine samples on the GPU, so
 * only ids cross PCIe; the CPU engine samples here, as sampler_sample does. */
int engine_step_sample(engine *e, const engine_batch *b, const sample_plan *plans, int32_t *ids, char *err,
                       size_t errlen);

/* Samples given logits (rows x vocab, left as they are) by plans, as
 * engine_step_sample does after its forward pass: for tests. */
int engine_sample_logits(engine *e, const float *logits, int rows, const sample_plan *plans, int32_t *ids, char *err,
                         size_t errlen);

int engine_block_size(const engine *e);
int engine_n_blocks(const engine *e);
const char *engine_backend(const engine *e);  /* "cpu" or "cuda" */
const char *engine_describe(const engine *e); /* "avx512 kernels, 2 threads", "NVIDIA H200, bf16 weights" */

#endif
