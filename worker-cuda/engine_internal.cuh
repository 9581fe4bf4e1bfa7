/* The CUDA engine's internals, shared by its translation units:
 *   engine.cu    loading the model, the engine's life, the API table;
 *   step.cu      the forward step (what runs on the GPU, stage for stage);
 *   sampling.cu  sampling the step's logits on the GPU.
 * Host code and device.cuh's types only: each kernel is defined in the one
 * unit that launches it (step.cu: kernels.cuh, gemv.cuh, attention.cuh,
 * persistent.cuh; sampling.cu: sample.cuh, sample_wide.cuh).
 *
 * Threading: one stream, one step at a time (the caller's thread). */
#ifndef INFERNO_CUDA_ENGINE_INTERNAL_CUH
#define INFERNO_CUDA_ENGINE_INTERNAL_CUH

#include <cublas_v2.h>
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" { /* the C headers the engine shares with the rest of the tree */
#include "engine_cuda.h"
#include "fp16.h"
#include "tensor_types.h"
}
#include "device.cuh"

/* defined by the kernel headers of the unit that launches them */
struct attention_args;
struct persist_layer;
struct persist_args;
struct sample_slice;

#define GEMV_MAX_T 8
/* decode steps (one token a sequence) of up to this many tokens replay a
 * CUDA graph captured for their size: past the GEMV sizes too (H200, 0.6b,
 * f16 KV: batch 32 15.5k -> 16.8k tok/s, 256 42.5k -> 43.0k; their ~290
 * launches had each waited on the one before) */
#define GRAPH_MAX_T        256
#define ATTN_MAX_SLICES    32
#define ATTN_CLUSTER_MAX_T 8
/* tensor-core products of up to this many tokens take [hi; lo] as one
 * operand of 2T columns (one product; the halves summed after) */
#define STACK_MAX_T 512

typedef struct {
    dmat qkv, wo, gate_up, down;
    float *attn_norm, *ffn_norm, *q_norm, *k_norm; /* [hidden], [hidden], [hd], [hd]; q/k NULL without */
    float *post_attn_norm, *post_ffn_norm;         /* [hidden] (gemma3), else NULL */
    float *qkv_bias;                               /* [q_dim + 2 kv_dim] or NULL */
    void *k_cache, *v_cache;                       /* [n_blocks * block_size][kv_dim], float or half */
} dlayer;

/* Per-step inputs, as one int32 array in host and device memory:
 * tokens[T] pos[T] slot[T] table_off[T] out_src[R] tables[...]. */
typedef struct {
    int32_t *host, *dev;
    size_t cap;
} step_inputs;

/* Per-step sampling inputs, in host and device memory: sample_row[rows],
 * then the edits' int32 ids and float values. */
typedef struct {
    void *host, *dev;
    size_t cap; /* bytes */
} sample_inputs;

struct cuda_engine {
    const model_desc *m;
    int device, block_size, n_blocks;
    int n_sm; /* multiprocessors */
    bool use_graphs;
    bool pdl;    /* programmatic dependent launch (sm_90 and later; INFERNO_CUDA_PDL=0 turns it off) */
    int kv_type; /* the KV cache's elements: CUDA_KV_F32, _F16 or _FP8 */
    bool staged; /* GEMVs of 2 to 8 tokens stage their rows in shared memory (gemv_rows_staged) */
    bool wide;   /* one-token bf16 GEMVs run as one wave of whole-row copies (gemv_wide_rows) */
    uint32_t q_dim, kv_dim, qkv_dim;
    uint32_t gsub;                     /* query heads per attention block: the largest divisor of the group up to 8 */
    void (*attention)(attention_args); /* attention_kernel for this head size, or NULL */
    /* attention_lanes_finish_kernel, or NULL: decode steps past the GEMV
     * sizes leave the q|k|v heads' finish to attention (INFERNO_CUDA_FUSE_HEADS=0: not) */
    void (*attention_finish)(attention_args, rope_args);
    uint32_t attn_finish_wave; /* its blocks resident at once: past one wave, each wave would wait on the finish */
    unsigned attn_cluster;     /* decode attention's slices as clusters of up to this many; 1: not */
    /* attention_tc_kernel (half KV, head sizes 16 to 128, groups 3 to 8)
     * for large decode steps past the GEMV sizes, or NULL (attention_setup) */
    void (*attention_tc)(attention_args);
    size_t attention_tc_smem;
    int attention_tc_blocks;       /* its blocks resident at once */
    size_t attention_tc_min_bytes; /* taken by steps that read this much KV cache a layer */
    size_t step_kv_bytes;          /* this step's: its tokens' keys and values, one layer */
    void (*attention_prefill)(attention_args, const int32_t *); /* or NULL */
    size_t attention_prefill_smem;
    int tile_tokens; /* tokens per attention_prefill_kernel tile; 0: none for this head size */
    int n_tiles;     /* this step's tiles (0: attention_kernel), at in.dev + tiles_at */
    int tile_slices; /* attention_prefill_kernel's gridDim.z */
    size_t tiles_at;
    char describe[320];
    cudaStream_t stream;
    cublasHandle_t blas;
    void *blas_workspace; /* cuBLAS's, its own (not allocated while a graph is captured, nor one per graph) */
    dlayer *layers;
    dmat embd, output; /* output may be the embedding itself (tied) */
    float *output_norm, *inv_freq;
    /* activations, grown on demand to cap_tokens rows (logits: cap_rows) */
    int cap_tokens, cap_rows;
    float *x, *xn, *qkv, *q, *att, *gu, *act, *logits;
    float *part;         /* attention slices: [T * slices][n_heads][head_dim + 2], T * slices <= 4 T + 256 */
    unsigned *attn_done; /* attention slices finished, [T][n_heads] (attention_args.done) */
    unsigned *qkv_done;  /* q|k|v GEMV blocks finished per head, [n_heads + 2 n_kv_heads] (gemv_qkv_kernel) */
    /* the tensor-core products' operand: hi [T][cols], then lo [T][cols] */
    __nv_bfloat16 *hi, *wscratch; /* wscratch: a Q8_0 matrix as bf16 */
    float *stack;                 /* a stacked product's result: [2 min(cap, STACK_MAX_T)][stack_rows] */
    uint32_t stack_rows;          /* the most rows of a layer matrix */
    /* a stacked product's halves (at x_owed and x_owed + x_owed_lo) not yet
     * added to x: the next rmsnorm_kernel of x adds them, saving a pass */
    const float *x_owed;
    size_t x_owed_lo;
    size_t wscratch_elems;
    int32_t *ids;
    /* greedy ids: argmax keys, device [cap_rows][ARGMAX_SLOTS], and
     * (pinned) their host copy and the sampled ids' */
    unsigned long long *keys, *keys_host;
    int32_t *ids_host;
    /* sampling's scratch (sample.cuh): [cap_rows][SAMPLE_SLICES] slices, [cap_rows][256] top-byte counts */
    sample_slice *sample_slices;
    uint32_t *sample_hist;
    bool pick_keys_fit; /* sample_pick_kernel's keys_in_smem is possible */
    bool wide_keys_fit; /* and sample_wide_kernel's */
    bool keys_fused;    /* the last step's output head was gemv_head_kernel, which filled keys */
    bool one_each;      /* the step is one token a sequence */
    step_inputs in;
    sample_inputs smp;
    /* decode graphs by batch size (attention finds each token's table through an offset, so tables of any
     * length fit) */
    cudaGraphExec_t graph[GRAPH_MAX_T + 1];
    bool graph_tc[GRAPH_MAX_T + 1]; /* whether graph[T] runs attention_tc_kernel (a choice by the step's cache bytes) */
    /* the persistent decode kernel (persistent.cuh), per token bucket (1, 2, 4, 8); persist false: none */
    bool persist;
    persist_layer *persist_layers; /* device, [n_layers] */
    unsigned *grid_bar;
    unsigned long long *trace; /* INFERNO_CUDA_TRACE (persist_trace_report) */
    int trace_steps;
    /* INFERNO_CUDA_PROFILE_DECODE=N: the Nth decode step runs between
     * cudaProfilerStart and Stop, for `ncu --profile-from-start off` */
    int profile_decode, decode_steps;
    struct {
        void (*kernel)(const persist_args);
        uint32_t ring_bytes, piece_bytes, stage_bytes;
        size_t smem;
    } persist_nt[4];
};

/* ---- errors ---- */

static inline int fail(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

#define CUDA_CHECK(call)                                                                                               \
    do {                                                                                                               \
        cudaError_t rc_ = (call);                                                                                      \
        if (rc_ != cudaSuccess)                                                                                        \
            return fail(err, errlen, "cuda: %s: %s (%s:%d)", #call, cudaGetErrorString(rc_), __FILE__, __LINE__);      \
    } while (0)

#define CUBLAS_CHECK(call)                                                                                             \
    do {                                                                                                               \
        cublasStatus_t rc_ = (call);                                                                                   \
        if (rc_ != CUBLAS_STATUS_SUCCESS)                                                                              \
            return fail(err, errlen, "cublas: %s: %s (%s:%d)", #call, cublasGetStatusString(rc_), __FILE__, __LINE__); \
    } while (0)

/* Launches kernel on the engine's stream, as a programmatic dependent
 * launch where the device has it: the kernel's blocks may be scheduled
 * while the previous kernel finishes, and wait in pdl_wait (device.cuh). */
template <typename... Params, typename... Args>
static cudaError_t launch_cluster(const cuda_engine *e, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                                  dim3 cluster, Args... args) {
    cudaLaunchAttribute attrs[2];
    unsigned n = 0;
    if (e->pdl) {
        attrs[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attrs[n++].val.programmaticStreamSerializationAllowed = 1;
    }
    if (cluster.x * cluster.y * cluster.z > 1) { /* thread-block clusters of that shape */
        attrs[n].id = cudaLaunchAttributeClusterDimension;
        attrs[n].val.clusterDim.x = cluster.x, attrs[n].val.clusterDim.y = cluster.y;
        attrs[n++].val.clusterDim.z = cluster.z;
    }
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem, cfg.stream = e->stream;
    cfg.attrs = attrs, cfg.numAttrs = n;
    return cudaLaunchKernelEx(&cfg, kernel, args...);
}

template <typename... Params, typename... Args>
static cudaError_t launch_shared(const cuda_engine *e, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                                 Args... args) {
    return launch_cluster(e, kernel, grid, block, smem, dim3(1), args...);
}

template <typename... Params, typename... Args>
static cudaError_t launch(const cuda_engine *e, void (*kernel)(Params...), dim3 grid, dim3 block, Args... args) {
    return launch_shared(e, kernel, grid, block, 0, args...);
}

/* Whether the environment leaves a feature on: name=0 turns it off (for comparisons). */
static inline bool env_allows(const char *name) {
    const char *v = getenv(name);
    return !(v && !strcmp(v, "0"));
}

/* Whether attention_lanes_kernel takes this head size (Gemma 3's 256
 * takes attention_kernel: one lane group a warp, and attention_kernel's 8
 * positions a step were faster there). */
static inline bool lanes_head_dim(uint32_t hd) { return hd >= 16 && hd <= 128 && (hd & (hd - 1)) == 0; }

/* ---- across the units ---- */

/* engine.cu */
int upload(void **dev, const void *host, size_t bytes, char *err, size_t errlen);
void drop_graph(cuda_engine *e, int T);
void drop_graphs(cuda_engine *e);

/* buffers.cu: the step's buffers (activations for T tokens and rows logit
 * rows; room for n bf16 weights; the step's inputs) */
size_t widest_row(const cuda_engine *e);
void free_activations(cuda_engine *e);
int reserve(cuda_engine *e, int T, int rows, char *err, size_t errlen);
int wscratch_reserve(cuda_engine *e, size_t n, char *err, size_t errlen);
size_t widest_q8(const cuda_engine *e);
int stage_inputs(cuda_engine *e, const engine_batch *b, int rows, char *err, size_t errlen);

/* step.cu: the attention kernels for this engine's shapes and device,
 * the persistent kernel's set-up, and the step */
void attention_setup(cuda_engine *e, const cudaDeviceProp *prop);
void gemv_wide_setup(cuda_engine *e, const cudaDeviceProp *prop);
int persist_setup(cuda_engine *e, const cudaDeviceProp *prop, char *err, size_t errlen);
int run_step(cuda_engine *e, const engine_batch *b, char *err, size_t errlen);
int argmax_ids(cuda_engine *e, int rows, int32_t *ids, char *err, size_t errlen);
int cuda_forward(cuda_engine *e, const engine_batch *b, float *logits, int32_t *argmax, char *err, size_t errlen);

/* sampling.cu */
uint32_t sample_max_vocab(void);
void sample_setup(cuda_engine *e, const cudaDeviceProp *prop);
int sample_reserve(cuda_engine *e, int cap_rows, char *err, size_t errlen);
int cuda_forward_sample(cuda_engine *e, const engine_batch *b, const sample_plan *plans, int32_t *ids, char *err,
                        size_t errlen);
int cuda_sample_logits(cuda_engine *e, const float *logits, int rows, const sample_plan *plans, int32_t *ids, char *err,
                       size_t errlen);

#endif
