/* The CUDA engine: the CPU engine's step (worker-cpu/engine.h) on one
 * NVIDIA GPU, with the same batch, block-table and logits conventions.
 *
 * It is built into its own shared library, build/lib/libinferno-cuda.so,
 * which programs load at run time (worker-cpu/backend.c) only when asked
 * for the cuda backend: the CPU binaries never need the CUDA libraries,
 * and a machine without nvcc still builds everything else. The library
 * exports one symbol, inferno_cuda_api(), returning the table below.
 *
 * Weights live on the GPU in BF16 or Q8_0 (per matrix: Q8_0 when the
 * file's matrix is Q8_0, BF16 otherwise, converting other types once at
 * load); activations and all accumulation are float32, the KV cache
 * float32, float16 or fp8 (e4m3), by kv_type.
 *
 * Threading: one stream; an engine is not re-entrant (one step at a time),
 * like the CPU engine. */
#ifndef INFERNO_ENGINE_CUDA_H
#define INFERNO_ENGINE_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "engine.h"
#include "model.h"
#include "sampler.h"

#define INFERNO_CUDA_ABI 3

/* cuda_engine_config.kv_type: how the KV cache holds keys and values */
#define CUDA_KV_F32 0 /* float32 (the default) */
#define CUDA_KV_F16 1 /* float16: half the memory and bandwidth */
#define CUDA_KV_FP8 2 /* fp8 e4m3 (3 mantissa bits, saturating at +-448, no scale): a quarter */

typedef struct cuda_engine cuda_engine;

typedef struct {
    int device;     /* CUDA device ordinal, default 0 */
    int block_size; /* positions per KV block, default 16 */
    int n_blocks;   /* KV pool size; 0: enough for kv_tokens */
    int kv_tokens;  /* with n_blocks 0: positions to hold (default 4096) */
    int graphs;     /* capture decode steps as CUDA graphs: 1 yes (default), -1 no */
    int kv_type;    /* CUDA_KV_F32, CUDA_KV_F16 or CUDA_KV_FP8 */
} cuda_engine_config;

typedef struct {
    int abi; /* INFERNO_CUDA_ABI */
    int (*create)(const model_desc *m, const cuda_engine_config *cfg, cuda_engine **out, char *err, size_t errlen);
    void (*destroy)(cuda_engine *e);
    /* As cpu_engine_forward; logits (host, rows x vocab) may be NULL, and
     * argmax (host, one id per logit row, computed on the GPU) may be NULL:
     * greedy decoding moves only ids across PCIe. */
    int (*forward)(cuda_engine *e, const engine_batch *b, float *logits, int32_t *argmax, char *err, size_t errlen);
    /* A step that samples on the GPU: ids (host, one per row) by plans
     * (host, one per row); the logits never leave the device, except a
     * row whose top-p/min-p set outgrows the GPU's candidate list, which
     * sampler_draw finishes on the host. */
    int (*forward_sample)(cuda_engine *e, const engine_batch *b, const sample_plan *plans, int32_t *ids, char *err,
                          size_t errlen);
    /* The same sampling over given logits (host, rows x vocab, left as
     * they are): for tests against the host's sampler. */
    int (*sample_logits)(cuda_engine *e, const float *logits, int rows, const sample_plan *plans, int32_t *ids,
                         char *err, size_t errlen);
    int (*block_size)(const cuda_engine *e);
    int (*n_blocks)(const cuda_engine *e);
    const char *(*describe)(const cuda_engine *e); /* "NVIDIA H100 80GB HBM3, bf16 weights" */
} cuda_engine_api;

#ifdef __cplusplus
extern "C"
#endif
    const cuda_engine_api *
    inferno_cuda_api(void);

#endif
