/* The CUDA forward pass: the same step as worker-cpu/engine.c, stage for
 * stage, on one GPU.
 *
 *   x = embed(tokens) * embed_scale                          [T][hidden]
 *   per layer:
 *     xn  = rmsnorm(x) * attn_norm
 *     qkv = xn Wqkv^T             (q|k|v stacked: [q_dim + 2 kv_dim][hidden])
 *     q, k, v: + bias, per-head RMSNorm, RoPE (the layer's base); k, v -> the KV blocks
 *              (float32, f16 or fp8 e4m3: --kv-type)
 *     att = causal softmax(q K^T / sqrt(hd)) V over each sequence's blocks
 *           (or the layer's sliding window of them)
 *     x  += att Wo^T                        (gemma3: rmsnorm(att Wo^T) * post_attn_norm)
 *     xn  = rmsnorm(x) * ffn_norm
 *     act = silu(xn Wgate^T) * (xn Wup^T)   (gate|up stacked: [2 ffn][hidden]; gemma3: tanh GELU)
 *     x  += act Wdown^T                     (gemma3: rmsnorm(act Wdown^T) * post_ffn_norm)
 *   logits = (rmsnorm(x) * output_norm) Wout^T, for the rows asked for
 *
 * Matrix products take one of two paths by the number of tokens T:
 *   - T <= GEMV_MAX_T (decode): our weight-streaming kernel, float32
 *     activations against BF16 or 8-bit weights (Q8_0, and the low-bit
 *     types widened to 8 bits at load), the result fused with its use
 *     (store, residual add, SwiGLU);
 *   - larger T (prefill, big decode batches): cuBLAS on the tensor cores.
 *     The float32 activations go in as two bf16 matrices, hi = bf16(x) and
 *     lo = bf16(x - hi), and two products are summed: ~16 mantissa bits of
 *     activation, so the result stays within the reference tolerances that
 *     plain bf16 activations break. Up to STACK_MAX_T tokens the two are one
 *     product over [hi; lo] (a small product takes about as long at 2T
 *     columns as at T), whose halves the next kernel sums as it reads them.
 *     8-bit weights are expanded to a bf16 scratch matrix first.
 *
 * Decode steps (every sequence one token, T <= GEMV_MAX_T) replay a CUDA
 * graph captured once per batch size: the step's inputs live in fixed
 * device buffers, so one launch runs all layers.
 *
 * Threading: one stream, one step at a time (the caller's thread). */
#include <cublas_v2.h>
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" { /* the C headers this file shares with the rest of the tree */
#include "engine_cuda.h"
#include "fp16.h"
#include "tensor_types.h"
}
#include "kernels.cuh"
#include "gemv.cuh"
#include "attention.cuh"
#include "sample.cuh"
#include "sample_wide.cuh"
#include "persistent.cuh"

#define GEMV_MAX_T         8
#define GRAPH_MAX_T        GEMV_MAX_T
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
    uint32_t q_dim, kv_dim, qkv_dim;
    uint32_t gsub;                     /* query heads per attention block: the largest divisor of the group up to 8 */
    void (*attention)(attention_args); /* attention_kernel for this head size, or NULL */
    /* attention_lanes_finish_kernel, or NULL: decode steps past the GEMV
     * sizes leave the q|k|v heads' finish to attention (INFERNO_CUDA_FUSE_HEADS=0: not) */
    void (*attention_finish)(attention_args, rope_args);
    uint32_t attn_finish_wave; /* its blocks resident at once: past one wave, each wave would wait on the finish */
    unsigned attn_cluster;     /* decode attention's slices as clusters of up to this many; 1: not */
    void (*attention_prefill)(attention_args, const int32_t *); /* or NULL */
    size_t attention_prefill_smem;
    int tile_tokens; /* tokens per attention_prefill_kernel tile; 0: none for this head size */
    int n_tiles;     /* this step's tiles (0: attention_kernel), at in.dev + tiles_at */
    int tile_slices; /* attention_prefill_kernel's gridDim.z */
    size_t tiles_at;
    char describe[320];
    cudaStream_t stream;
    cublasHandle_t blas;
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

static int fail(char *err, size_t errlen, const char *fmt, ...) {
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
 * while the previous kernel finishes, and wait in pdl_wait (kernels.cuh). */
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

/* Whether the device runs kernel as thread-block clusters of `size`
 * blocks of `threads` (sm_90 and later; past 8 blocks, where allowed). */
template <typename... Params> static bool cluster_fits(void (*kernel)(Params...), unsigned threads, unsigned size) {
    if (size > 8 && cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess)
        return (void)cudaGetLastError(), false;
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = size, attr.val.clusterDim.y = 1, attr.val.clusterDim.z = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(size), cfg.blockDim = dim3(threads), cfg.attrs = &attr, cfg.numAttrs = 1;
    int clusters = 0;
    if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) != cudaSuccess)
        return (void)cudaGetLastError(), false;
    return clusters > 0;
}

/* Whether the environment leaves a feature on: name=0 turns it off (for comparisons). */
static bool env_allows(const char *name) {
    const char *v = getenv(name);
    return !(v && !strcmp(v, "0"));
}

static const char *kv_type_name(int kv_type) {
    return kv_type == CUDA_KV_FP8 ? "fp8 (e4m3)" : kv_type == CUDA_KV_F16 ? "f16" : "f32";
}

/* Whether attention_lanes_kernel takes this head size (Gemma 3's 256
 * takes attention_kernel: one lane group a warp, and attention_kernel's 8
 * positions a step were faster there). */
static bool lanes_head_dim(uint32_t hd) { return hd >= 16 && hd <= 128 && (hd & (hd - 1)) == 0; }

/* KERNEL (attention_lanes_kernel or its finishing variant) for G heads a
 * block and the engine's KV type: the cases of a switch on e->gsub */
#define ATTL_CASE(KERNEL, G)                                                                                           \
    case G:                                                                                                            \
        return e->kv_type == CUDA_KV_FP8   ? KERNEL<G, __nv_fp8_e4m3>                                                  \
               : e->kv_type == CUDA_KV_F16 ? KERNEL<G, __half>                                                         \
                                           : KERNEL<G, float>;
#define ATTL_CASES(KERNEL)                                                                                             \
    ATTL_CASE(KERNEL, 1) ATTL_CASE(KERNEL, 2) ATTL_CASE(KERNEL, 4) ATTL_CASE(KERNEL, 7) ATTL_CASE(KERNEL, 8)

/* The attention kernel for this head size and heads per block; NULL when none is built. */
typedef void (*attention_fn)(attention_args);
static attention_fn attention_kernel_for(const cuda_engine *e) {
    uint32_t hd = e->m->head_dim;
    if (lanes_head_dim(hd))
        switch (e->gsub) { ATTL_CASES(attention_lanes_kernel) }
    if (e->kv_type == CUDA_KV_FP8) /* fp8 rows only in attention_lanes_kernel (cuda_create says so) */
        return NULL;
    int epl = (int)(hd + WARP - 1) / WARP, key = epl * 16 + (int)e->gsub;
    switch (key) {
#define ATTN_CASE(EPL, G)                                                                                              \
    case EPL * 16 + G:                                                                                                 \
        return e->kv_type == CUDA_KV_F16 ? attention_kernel<EPL, G, __half> : attention_kernel<EPL, G, float>;
#define ATTN_CASES(EPL) ATTN_CASE(EPL, 1) ATTN_CASE(EPL, 2) ATTN_CASE(EPL, 4) ATTN_CASE(EPL, 7) ATTN_CASE(EPL, 8)
        ATTN_CASES(1) ATTN_CASES(2) ATTN_CASES(3) ATTN_CASES(4) ATTN_CASES(8)
#undef ATTN_CASES
#undef ATTN_CASE
    }
    return NULL;
}

/* attention_lanes_finish_kernel for this engine, or NULL. */
typedef void (*attention_finish_fn)(attention_args, rope_args);
static attention_finish_fn attention_finish_for(const cuda_engine *e) {
    uint32_t hd = e->m->head_dim;
    if (!lanes_head_dim(hd) || !env_allows("INFERNO_CUDA_FUSE_HEADS"))
        return NULL;
    switch (e->gsub) { ATTL_CASES(attention_lanes_finish_kernel) }
    return NULL;
}
#undef ATTL_CASES
#undef ATTL_CASE

/* The prompt attention kernel for this head size (and its shared memory),
 * or NULL. */
typedef void (*attention_prefill_fn)(attention_args, const int32_t *);
static attention_prefill_fn attention_prefill_for(uint32_t head_dim, int kv_type, size_t *smem) {
    switch (head_dim) {
#define ATTP_CASE(HD)                                                                                                  \
    case HD:                                                                                                           \
        *smem = attp_shape<HD>::SMEM;                                                                                  \
        return kv_type == CUDA_KV_FP8   ? attention_prefill_kernel<HD, __nv_fp8_e4m3>                                  \
               : kv_type == CUDA_KV_F16 ? attention_prefill_kernel<HD, __half>                                         \
                                        : attention_prefill_kernel<HD, float>;
        /* not 256 (Gemma 3): its tiles hold 8 tokens against 32 rows of 1 KiB, and
         * attention_kernel's 512 blocks were faster (H200: 128k against 104k tok/s) */
        ATTP_CASE(16) ATTP_CASE(32) ATTP_CASE(64) ATTP_CASE(128)
#undef ATTP_CASE
    }
    return NULL;
}

/* ---- loading weights ---- */

/* The allocation is padded to the next 16 bytes and 16 more (zeros): the
 * persistent kernel's bulk copies read whole 16-byte units. */
static int upload(void **dev, const void *host, size_t bytes, char *err, size_t errlen) {
    size_t padded = (bytes + 31) & ~(size_t)15;
    CUDA_CHECK(cudaMalloc(dev, padded));
    CUDA_CHECK(cudaMemset((char *)*dev + bytes, 0, padded - bytes));
    CUDA_CHECK(cudaMemcpy(*dev, host, bytes, cudaMemcpyHostToDevice));
    return 0;
}

/* Stacks the rows of parts (same cols) into one GPU matrix: DMAT_Q8 when
 * tensor_split_row takes every part (exactly: its quants, scales and
 * offsets, in the finest group a part needs), else BF16 (other types
 * dequantized once, on the host). */
static int upload_matrix(const weight *const *parts, int n_parts, const char *what, dmat *out, char *err,
                         size_t errlen) {
    uint64_t rows = 0, cols = parts[0]->cols;
    bool q8 = true;
    uint32_t group = 32;
    for (int i = 0; i < n_parts; i++) {
        rows += parts[i]->rows;
        uint32_t g = tensor_split_group(parts[i]->type);
        q8 = q8 && g;
        group = g && g < group ? g : group;
        if (parts[i]->cols != cols)
            return fail(err, errlen, "cuda engine: %s: parts of %llu and %llu columns", what, (unsigned long long)cols,
                        (unsigned long long)parts[i]->cols);
    }
    if (cols % 32 || rows > UINT32_MAX)
        return fail(err, errlen, "cuda engine: %s: %llu columns, not a multiple of 32", what, (unsigned long long)cols);
    memset(out, 0, sizeof *out);
    out->type = q8 ? DMAT_Q8 : DMAT_BF16;
    out->rows = (uint32_t)rows, out->cols = (uint32_t)cols, out->group = group;
    size_t n = (size_t)rows * cols, n_groups = n / group;
    void *host = malloc(q8 ? n : n * 2);
    float *scale = q8 ? (float *)malloc(n_groups * sizeof(float)) : NULL;
    float *offset = q8 ? (float *)malloc(n_groups * sizeof(float)) : NULL, *row_f32 = (float *)malloc(cols * 4);
    if (!host || (q8 && (!scale || !offset)) || !row_f32) {
        free(host), free(scale), free(offset), free(row_f32);
        return fail(err, errlen, "cuda engine: %s: out of host memory", what);
    }
    bool any_offset = false;
    int split_rc = 0;
    size_t r = 0;
    for (int i = 0; i < n_parts; i++)
        for (uint64_t pr = 0; pr < parts[i]->rows; pr++, r++) {
            const uint8_t *src = (const uint8_t *)parts[i]->data + pr * parts[i]->row_bytes;
            if (q8) {
                size_t g0 = r * (cols / group);
                split_rc |= tensor_split_row(parts[i]->type, src, cols, group, (int8_t *)host + r * cols, scale + g0,
                                             offset + g0);
                for (size_t g = g0; g < g0 + cols / group; g++)
                    any_offset = any_offset || offset[g] != 0.0f;
            } else if (parts[i]->type == TENSOR_BF16) {
                memcpy((uint16_t *)host + r * cols, src, cols * 2);
            } else {
                tensor_dequantize_row(parts[i]->type, src, row_f32, cols);
                for (uint64_t k = 0; k < cols; k++)
                    ((uint16_t *)host)[r * cols + k] = bf16_from_f32(row_f32[k]);
            }
        }
    if (split_rc) { /* tensor_split_group said yes: not reached unless the two disagree */
        free(host), free(scale), free(offset), free(row_f32);
        return fail(err, errlen, "cuda engine: %s: a part cannot be split into 8-bit quants", what);
    }
    int rc = q8 ? upload((void **)&out->qs, host, n, err, errlen) ||
                      upload((void **)&out->scale, scale, n_groups * sizeof(float), err, errlen) ||
                      (any_offset && upload((void **)&out->offset, offset, n_groups * sizeof(float), err, errlen))
                : upload((void **)&out->w, host, n * 2, err, errlen);
    free(host), free(scale), free(offset), free(row_f32);
    return rc ? -1 : 0;
}

/* A model vector as float32 on the GPU; NULL when absent. */
static int upload_vector(const weight *w, float **out, char *err, size_t errlen) {
    *out = NULL;
    if (!w->data)
        return 0;
    float *v = (float *)malloc(w->cols * sizeof(float));
    if (!v)
        return fail(err, errlen, "cuda engine: out of host memory");
    tensor_dequantize_row(w->type, w->data, v, w->cols);
    int rc = upload((void **)out, v, w->cols * sizeof(float), err, errlen);
    free(v);
    return rc;
}

static void free_matrix(dmat *d) { cudaFree(d->w), cudaFree(d->qs), cudaFree(d->scale), cudaFree(d->offset); }

static void free_activations(cuda_engine *e) {
    cudaFree(e->x), cudaFree(e->xn), cudaFree(e->qkv), cudaFree(e->q), cudaFree(e->att), cudaFree(e->gu);
    cudaFree(e->act), cudaFree(e->hi), cudaFree(e->stack), cudaFree(e->logits), cudaFree(e->ids), cudaFree(e->part);
    cudaFree(e->attn_done), cudaFree(e->keys), cudaFreeHost(e->keys_host), cudaFreeHost(e->ids_host);
    cudaFree(e->sample_slices), cudaFree(e->sample_hist);
    e->attn_done = NULL, e->keys = e->keys_host = NULL, e->ids_host = NULL;
    e->x = e->xn = e->qkv = e->q = e->att = e->gu = e->act = e->logits = e->part = NULL;
    e->hi = NULL, e->stack = NULL, e->ids = NULL, e->sample_slices = NULL, e->sample_hist = NULL;
}

static void drop_graphs(cuda_engine *e) {
    for (int i = 0; i <= GRAPH_MAX_T; i++)
        if (e->graph[i]) {
            cudaGraphExecDestroy(e->graph[i]);
            e->graph[i] = NULL;
        }
}

static void cuda_destroy(cuda_engine *e) {
    if (!e)
        return;
    drop_graphs(e);
    if (e->stream)
        cudaStreamSynchronize(e->stream);
    for (uint32_t l = 0; e->layers && l < e->m->n_layers; l++) {
        dlayer *L = &e->layers[l];
        free_matrix(&L->qkv), free_matrix(&L->wo), free_matrix(&L->gate_up), free_matrix(&L->down);
        cudaFree(L->attn_norm), cudaFree(L->ffn_norm), cudaFree(L->q_norm), cudaFree(L->k_norm);
        cudaFree(L->post_attn_norm), cudaFree(L->post_ffn_norm);
        cudaFree(L->qkv_bias), cudaFree(L->k_cache), cudaFree(L->v_cache);
    }
    free(e->layers);
    if (e->output.w != e->embd.w || e->output.qs != e->embd.qs)
        free_matrix(&e->output);
    free_matrix(&e->embd);
    cudaFree(e->output_norm), cudaFree(e->inv_freq), cudaFree(e->wscratch), cudaFree(e->in.dev), cudaFree(e->qkv_done);
    cudaFree(e->persist_layers), cudaFree(e->grid_bar), cudaFree(e->trace);
    cudaFreeHost(e->in.host);
    cudaFree(e->smp.dev), cudaFreeHost(e->smp.host);
    free_activations(e);
    if (e->blas)
        cublasDestroy(e->blas);
    if (e->stream)
        cudaStreamDestroy(e->stream);
    free(e);
}

/* Stacked parts of every layer and the vectors, onto the GPU. */
static int load_layers(cuda_engine *e, char *err, size_t errlen) {
    const model_desc *m = e->m;
    size_t kv_bytes = (size_t)e->n_blocks * e->block_size * e->kv_dim * kv_elem_bytes(e->kv_type);
    for (uint32_t l = 0; l < m->n_layers; l++) {
        const layer_weights *W = &m->layers[l];
        dlayer *L = &e->layers[l];
        char what[64];
        const weight *qkv[3] = {&W->wq, &W->wk, &W->wv}, *gu[2] = {&W->w_gate, &W->w_up};
        snprintf(what, sizeof what, "blk.%u.attn_qkv", l);
        if (upload_matrix(qkv, 3, what, &L->qkv, err, errlen))
            return -1;
        snprintf(what, sizeof what, "blk.%u.attn_output", l);
        const weight *wo = &W->wo, *down = &W->w_down;
        if (upload_matrix(&wo, 1, what, &L->wo, err, errlen))
            return -1;
        snprintf(what, sizeof what, "blk.%u.ffn_gate_up", l);
        if (upload_matrix(gu, 2, what, &L->gate_up, err, errlen))
            return -1;
        snprintf(what, sizeof what, "blk.%u.ffn_down", l);
        if (upload_matrix(&down, 1, what, &L->down, err, errlen))
            return -1;
        if (upload_vector(&W->attn_norm, &L->attn_norm, err, errlen) ||
            upload_vector(&W->ffn_norm, &L->ffn_norm, err, errlen) ||
            upload_vector(&W->q_norm, &L->q_norm, err, errlen) || upload_vector(&W->k_norm, &L->k_norm, err, errlen) ||
            upload_vector(&W->post_attn_norm, &L->post_attn_norm, err, errlen) ||
            upload_vector(&W->post_ffn_norm, &L->post_ffn_norm, err, errlen))
            return -1;
        if (W->bq.data || W->bk.data || W->bv.data) {
            float *bias = (float *)calloc(e->qkv_dim, sizeof(float));
            if (!bias)
                return fail(err, errlen, "cuda engine: out of host memory");
            const weight *b[3] = {&W->bq, &W->bk, &W->bv};
            uint32_t at[3] = {0, e->q_dim, e->q_dim + e->kv_dim};
            for (int i = 0; i < 3; i++)
                if (b[i]->data)
                    tensor_dequantize_row(b[i]->type, b[i]->data, bias + at[i], b[i]->cols);
            int rc = upload((void **)&L->qkv_bias, bias, e->qkv_dim * sizeof(float), err, errlen);
            free(bias);
            if (rc)
                return -1;
        }
        CUDA_CHECK(cudaMalloc(&L->k_cache, kv_bytes));
        CUDA_CHECK(cudaMalloc(&L->v_cache, kv_bytes));
        CUDA_CHECK(cudaMemset(L->k_cache, 0, kv_bytes));
        CUDA_CHECK(cudaMemset(L->v_cache, 0, kv_bytes));
    }
    return 0;
}

/* ---- the persistent decode kernel ---- */

/* Sets up decode_persistent_kernel when INFERNO_CUDA_PERSISTENT=1 asks for
 * it and the model and device allow it (sm_90 bulk copies, cooperative
 * launch; Qwen-style layers: no post norms, SwiGLU, head_dim a power of 2
 * from 16 to 256, at most 8 query heads a KV head; a float or half KV
 * cache); e->persist stays false otherwise, and decode steps take the
 * kernel-per-stage path. Not the default: it is slower yet (README, CUDA
 * engine). */
static int persist_setup(cuda_engine *e, const cudaDeviceProp *prop, char *err, size_t errlen) {
    const model_desc *m = e->m;
    const char *env = getenv("INFERNO_CUDA_PERSISTENT");
    uint32_t hd = m->head_dim, G = m->n_heads / m->n_kv_heads;
    bool ok = prop->major >= 9 && prop->cooperativeLaunch && env && !strcmp(env, "1") && m->ffn_act != FFN_GELU_TANH &&
              hd >= 16 && hd <= 256 && (hd & (hd - 1)) == 0 && G <= 8 && e->kv_type != CUDA_KV_FP8;
    for (uint32_t l = 0; ok && l < m->n_layers; l++)
        ok = !e->layers[l].post_attn_norm && !e->layers[l].post_ffn_norm;
    if (!ok)
        return 0;
    size_t widest = m->ffn > m->hidden ? m->ffn : m->hidden;
    widest = widest > e->q_dim ? widest : e->q_dim;
    int gmax = G <= 2 ? 2 : 8;
    static void (*const kernels[4][2])(const persist_args) = {
        {decode_persistent_kernel<1, 2>, decode_persistent_kernel<1, 8>},
        {decode_persistent_kernel<2, 2>, decode_persistent_kernel<2, 8>},
        {decode_persistent_kernel<4, 2>, decode_persistent_kernel<4, 8>},
        {decode_persistent_kernel<8, 2>, decode_persistent_kernel<8, 8>}};
    /* the largest row set a piece may hold (a gate|up pair, or a row; 8-bit: quants, scales and offsets at
     * the finest group, 16, and their copies' alignment): the ring must take it whole */
    size_t largest_set = (size_t)e->output.cols * 2 + e->output.cols / 2 + 64;
    for (uint32_t l = 0; l < m->n_layers; l++) {
        const dmat *all[4] = {&e->layers[l].qkv, &e->layers[l].wo, &e->layers[l].gate_up, &e->layers[l].down};
        for (int i = 0; i < 4; i++) {
            size_t row = ((size_t)all[i]->cols * 2 + all[i]->cols / 2 + 64) * (i == 2 ? 2 : 1);
            largest_set = row > largest_set ? row : largest_set;
        }
    }
    for (int b = 0; b < 4; b++) {
        int nt = 1 << b;
        void (*kernel)(const persist_args) = kernels[b][gmax == 8];
        cudaFuncAttributes attr;
        CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
        size_t stage = (persist_stage_floats(nt, gmax, (uint32_t)widest, hd) * 4 + 15) & ~(size_t)15;
        size_t layers = m->n_layers * sizeof(persist_layer),
               avail = prop->sharedMemPerBlockOptin - attr.sharedSizeBytes;
        if (avail < stage + layers + 4 * largest_set)
            return 0;
        size_t ring = (avail - stage - layers) & ~(size_t)127;
        int blocks = 0;
        CUDA_CHECK(
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)(ring + stage + layers)));
        CUDA_CHECK(
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, PK_THREADS + WARP, ring + stage + layers));
        if (blocks < 1)
            return 0;
        e->persist_nt[b].kernel = kernel;
        e->persist_nt[b].ring_bytes = (uint32_t)ring;
        /* pieces of ~48 KiB: big enough that a warp gets two row sets of the small matrices, small enough that
         * the ring holds several */
        e->persist_nt[b].piece_bytes = (uint32_t)(ring / 4 < 49152 ? ring / 4 : 49152);
        e->persist_nt[b].stage_bytes = (uint32_t)stage;
        e->persist_nt[b].smem = ring + stage + layers;
    }
    persist_layer *host = (persist_layer *)calloc(m->n_layers, sizeof *host);
    if (!host)
        return fail(err, errlen, "cuda engine: out of host memory");
    for (uint32_t l = 0; l < m->n_layers; l++) {
        const dlayer *L = &e->layers[l];
        host[l] = (persist_layer){L->qkv,      L->wo,      L->gate_up,         L->down,     L->attn_norm,
                                  L->ffn_norm, L->q_norm,  L->k_norm,          L->qkv_bias, e->inv_freq + l * (hd / 2),
                                  L->k_cache,  L->v_cache, m->layers[l].window};
    }
    int rc = upload((void **)&e->persist_layers, host, m->n_layers * sizeof *host, err, errlen);
    free(host);
    if (rc)
        return -1;
    CUDA_CHECK(cudaMalloc((void **)&e->grid_bar, sizeof *e->grid_bar));
    const char *trace = getenv("INFERNO_CUDA_TRACE");
    if (trace && !strcmp(trace, "1")) {
        size_t n = (size_t)(3 + 5 * m->n_layers) * (e->n_sm + 1);
        CUDA_CHECK(cudaMallocManaged((void **)&e->trace, n * sizeof *e->trace));
        CUDA_CHECK(cudaMemset(e->trace, 0, n * sizeof *e->trace));
    }
    e->persist = true;
    return 0;
}

/* INFERNO_CUDA_TRACE: the phases of the last persistent step, every 8th
 * step, on stderr: per kind of phase (averaged over layers), the slowest
 * block's time from the barrier before to its arrival, and the barrier's
 * own time (last arrival to block 0's exit); the head, from its barrier to
 * the last block's end. Decode steps then run without graphs (each is
 * enqueued, so each can be read). */
static void persist_trace_report(cuda_engine *e) {
    if (e->trace_steps++ % 8 != 7)
        return;
    cudaStreamSynchronize(e->stream);
    int nb = e->n_sm, L = (int)e->m->n_layers, P = 1 + 5 * L;
    const unsigned long long *tr = e->trace;
    double work[6] = {0}, wait[6] = {0};
    unsigned long long prev = tr[(size_t)P * (nb + 1)], end = 0;
    for (int p = 0; p < P; p++) {
        const unsigned long long *row = tr + (size_t)p * (nb + 1);
        unsigned long long last = 0;
        for (int b = 0; b < nb; b++)
            last = row[b] > last ? row[b] : last;
        int k = p == 0 ? 0 : 1 + (p - 1) % 5;
        work[k] += (double)(last - prev) / (k ? L : 1), wait[k] += (double)(row[nb] - last) / (k ? L : 1);
        prev = row[nb];
    }
    for (int b = 0; b < nb; b++)
        end = tr[(size_t)(P + 1) * (nb + 1) + b] > end ? tr[(size_t)(P + 1) * (nb + 1) + b] : end;
    static const char *kinds[6] = {"embed", "qkv", "attn", "o", "ffn", "down"};
    fprintf(stderr, "persistent step: %.1f us, head %.1f us; per phase (us, slowest block / barrier):",
            (double)(end - tr[(size_t)P * (nb + 1)]) / 1e3, (double)(end - prev) / 1e3);
    for (int k = 0; k < 6; k++)
        fprintf(stderr, " %s %.2f / %.2f", kinds[k], work[k] / 1e3, wait[k] / 1e3);
    fprintf(stderr, "\n");
}

/* A decode step (T <= 8 sequences, one token each) as one persistent
 * kernel; inputs staged as enqueue_step's. */
static int persist_enqueue(cuda_engine *e, int T, char *err, size_t errlen) {
    const model_desc *m = e->m;
    int b = T <= 1 ? 0 : T <= 2 ? 1 : T <= 4 ? 2 : 3;
    const int32_t *tokens = e->in.dev, *pos = tokens + T, *slot = pos + T, *table_off = slot + T,
                  *tables = table_off + T + T; /* after out_src, T rows */
    uint32_t slices = (uint32_t)e->n_sm / ((uint32_t)T * m->n_kv_heads);
    slices = slices < 1 ? 1 : slices > ATTN_MAX_SLICES ? ATTN_MAX_SLICES : slices;
    persist_args a = {e->persist_layers,
                      e->embd,
                      e->output,
                      e->output_norm,
                      tokens,
                      pos,
                      slot,
                      table_off,
                      tables,
                      e->x,
                      e->qkv,
                      e->att,
                      e->act,
                      e->part,
                      e->logits,
                      e->attn_done,
                      e->grid_bar,
                      (uint32_t)T,
                      m->n_layers,
                      m->hidden,
                      m->ffn,
                      m->vocab,
                      m->n_heads,
                      m->n_kv_heads,
                      m->head_dim,
                      e->q_dim,
                      e->kv_dim,
                      (uint32_t)e->block_size,
                      slices,
                      e->persist_nt[b].ring_bytes,
                      e->persist_nt[b].piece_bytes,
                      e->persist_nt[b].stage_bytes,
                      m->rms_eps,
                      m->embed_scale,
                      m->attn_scale,
                      e->kv_type,
                      NULL};
    if (e->trace) {
        persist_trace_report(e);
        a.trace = e->trace;
    }
    CUDA_CHECK(cudaMemsetAsync(e->grid_bar, 0, sizeof *e->grid_bar, e->stream));
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeCooperative;
    attr.val.cooperative = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(e->n_sm), cfg.blockDim = dim3(PK_THREADS + WARP), cfg.dynamicSmemBytes = e->persist_nt[b].smem;
    cfg.stream = e->stream, cfg.attrs = &attr, cfg.numAttrs = 1;
    CUDA_CHECK(cudaLaunchKernelEx(&cfg, e->persist_nt[b].kernel, a));
    return 0;
}

static int cuda_create(const model_desc *m, const cuda_engine_config *cfg, cuda_engine **out, char *err,
                       size_t errlen) {
    *out = NULL;
    uint32_t epl = (m->head_dim + WARP - 1) / WARP; /* attention kernels exist for 1-4 and 8 */
    if (m->head_dim % 2 || (epl > 4 && epl != 8) || m->n_kv_heads == 0 || m->n_heads % m->n_kv_heads)
        return fail(err, errlen, "cuda engine: head_dim %u (want an even number up to 128, or 256), %u/%u heads",
                    m->head_dim, m->n_heads, m->n_kv_heads);
    int n_devices = 0;
    cudaError_t rc = cudaGetDeviceCount(&n_devices);
    if (rc != cudaSuccess || n_devices == 0)
        return fail(err, errlen, "cuda engine: no CUDA device (%s)",
                    rc != cudaSuccess ? cudaGetErrorString(rc) : "none found");
    cuda_engine *e = (cuda_engine *)calloc(1, sizeof *e);
    if (!e)
        return fail(err, errlen, "cuda engine: out of memory");
    e->m = m;
    e->device = cfg ? cfg->device : 0;
    e->use_graphs = !cfg || cfg->graphs >= 0;
    e->kv_type = cfg ? cfg->kv_type : CUDA_KV_F32;
    /* fp8 rows are read by attention_lanes_kernel alone */
    if (e->kv_type < CUDA_KV_F32 || e->kv_type > CUDA_KV_FP8 ||
        (e->kv_type == CUDA_KV_FP8 && !lanes_head_dim(m->head_dim))) {
        fail(err, errlen, "cuda engine: KV type %d with head_dim %u (fp8 needs a power of 2 from 16 to 128)",
             e->kv_type, m->head_dim);
        free(e);
        return -1;
    }
    if (m->vocab > WIDE_MAX_VOCAB) { /* sample_wide_kernel's fixed-point sums */
        fail(err, errlen, "cuda engine: a vocabulary of %u ids (the GPU sampler takes up to %u)", m->vocab,
             WIDE_MAX_VOCAB);
        free(e);
        return -1;
    }
    e->block_size = cfg && cfg->block_size > 0 ? cfg->block_size : 16;
    int kv_tokens = cfg && cfg->kv_tokens > 0 ? cfg->kv_tokens : 4096;
    e->n_blocks = cfg && cfg->n_blocks > 0 ? cfg->n_blocks : (kv_tokens + e->block_size - 1) / e->block_size;
    e->q_dim = m->n_heads * m->head_dim, e->kv_dim = m->n_kv_heads * m->head_dim;
    e->qkv_dim = e->q_dim + 2 * e->kv_dim;
    for (uint32_t g = 1; g <= 8; g++) /* the attention kernels built: 1, 2, 4, 7, 8 heads a block */
        if ((m->n_heads / m->n_kv_heads) % g == 0 && g != 3 && g != 5 && g != 6)
            e->gsub = g;
    if (e->device < 0 || e->device >= n_devices) {
        fail(err, errlen, "cuda engine: device %d of %d", e->device, n_devices);
        free(e);
        return -1;
    }
    cudaDeviceProp prop;
    int ok = cudaSetDevice(e->device) == cudaSuccess && cudaGetDeviceProperties(&prop, e->device) == cudaSuccess &&
             cudaStreamCreateWithFlags(&e->stream, cudaStreamNonBlocking) == cudaSuccess &&
             cublasCreate(&e->blas) == CUBLAS_STATUS_SUCCESS && cublasSetStream(e->blas, e->stream) == 0;
    e->layers = (dlayer *)calloc(m->n_layers, sizeof *e->layers);
    if (!ok || !e->layers) {
        fail(err, errlen, "cuda engine: cannot set up device %d: %s", e->device,
             cudaGetErrorString(cudaGetLastError()));
        cuda_destroy(e);
        return -1;
    }
    const weight *embd = &m->token_embd, *output = &m->output;
    if (load_layers(e, err, errlen) || upload_matrix(&embd, 1, "token_embd", &e->embd, err, errlen) ||
        (m->tied_output ? (e->output = e->embd, 0) : upload_matrix(&output, 1, "output", &e->output, err, errlen)) ||
        upload_vector(&m->output_norm, &e->output_norm, err, errlen)) {
        cuda_destroy(e);
        return -1;
    }
    /* the RoPE tables, per layer, as the CPU engine's */
    uint32_t half = m->head_dim / 2;
    float *inv_freq = (float *)malloc((size_t)m->n_layers * half * sizeof(float));
    for (uint32_t l = 0; inv_freq && l < m->n_layers; l++)
        model_rope_inv_freq(m, l, inv_freq + l * half);
    if (!inv_freq || upload((void **)&e->inv_freq, inv_freq, (size_t)m->n_layers * half * sizeof(float), err, errlen)) {
        if (!inv_freq)
            fail(err, errlen, "cuda engine: out of host memory");
        free(inv_freq);
        cuda_destroy(e);
        return -1;
    }
    free(inv_freq);
    size_t heads = (size_t)m->n_heads + 2 * m->n_kv_heads;
    e->attention = attention_kernel_for(e);
    attention_prefill_fn prefill = attention_prefill_for(m->head_dim, e->kv_type, &e->attention_prefill_smem);
    uint32_t group = m->n_heads / m->n_kv_heads;
    if (prefill && group <= ATTP_ROWS &&
        cudaFuncSetAttribute(prefill, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)e->attention_prefill_smem) ==
            cudaSuccess)
        e->attention_prefill = prefill, e->tile_tokens = ATTP_ROWS / group;
    if (cudaMalloc((void **)&e->qkv_done, heads * sizeof *e->qkv_done) != cudaSuccess ||
        cudaMemset(e->qkv_done, 0, heads * sizeof *e->qkv_done) != cudaSuccess) {
        fail(err, errlen, "cuda engine: out of device memory");
        cuda_destroy(e);
        return -1;
    }
    e->n_sm = prop.multiProcessorCount;
    e->attention_finish = attention_finish_for(e);
    int finish_per_sm = 0;
    if (e->attention_finish && cudaOccupancyMaxActiveBlocksPerMultiprocessor(&finish_per_sm, e->attention_finish,
                                                                             ATTN_WARPS * WARP, 0) != cudaSuccess)
        (void)cudaGetLastError(), e->attention_finish = NULL;
    e->attn_finish_wave = (uint32_t)finish_per_sm * e->n_sm;
    if (persist_setup(e, &prop, err, errlen)) {
        cuda_destroy(e);
        return -1;
    }
    /* the sampler's pick holds a block's part of a row's keys in shared
     * memory where they fit (vocabularies up to ~440k ids on the H200) */
    cudaFuncAttributes pick;
    size_t pick_smem = sample_pick_smem(m->vocab);
    e->pick_keys_fit = cudaFuncGetAttributes(&pick, sample_pick_kernel) == cudaSuccess &&
                       pick.sharedSizeBytes + pick_smem <= prop.sharedMemPerBlockOptin &&
                       cudaFuncSetAttribute(sample_pick_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            (int)pick_smem) == cudaSuccess;
    cudaFuncAttributes wide;
    e->wide_keys_fit = cudaFuncGetAttributes(&wide, sample_wide_kernel) == cudaSuccess &&
                       wide.sharedSizeBytes + pick_smem <= prop.sharedMemPerBlockOptin &&
                       cudaFuncSetAttribute(sample_wide_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            (int)pick_smem) == cudaSuccess;
    (void)cudaGetLastError();
    const char *profile = getenv("INFERNO_CUDA_PROFILE_DECODE");
    e->profile_decode = profile ? atoi(profile) : 0;
    e->pdl = prop.major >= 9 && env_allows("INFERNO_CUDA_PDL");
    e->staged = prop.major >= 9 && env_allows("INFERNO_CUDA_STAGED");
    /* decode attention's slices as one cluster (attention_cluster_merge):
     * the largest power of 2 up to 16 that the device schedules */
    e->attn_cluster = 1;
    if (prop.major >= 9 && e->attention && env_allows("INFERNO_CUDA_ATTN_CLUSTER"))
        for (unsigned c = 2; c <= 16 && cluster_fits(e->attention, ATTN_WARPS * WARP, c); c *= 2)
            e->attn_cluster = c;
    /* how the GPU holds the weights (the first layer's q), and from which type */
    char held[64];
    uint32_t wtype = m->layers[0].wq.type;
    if (e->layers[0].qkv.type == DMAT_BF16 || wtype == TENSOR_Q8_0)
        snprintf(held, sizeof held, "%s", e->layers[0].qkv.type == DMAT_BF16 ? "bf16" : "q8_0");
    else
        snprintf(held, sizeof held, "%s as 8-bit", tensor_type_name(wtype));
    char cluster[48] = "";
    if (e->attn_cluster > 1)
        snprintf(cluster, sizeof cluster, ", attention clusters of %u", e->attn_cluster);
    snprintf(e->describe, sizeof e->describe, "%.150s, %s weights, %s KV%s%s%s", prop.name, held,
             kv_type_name(e->kv_type), e->pdl ? ", PDL" : "", cluster, e->persist ? ", persistent decode" : "");
    *out = e;
    return 0;
}

/* ---- one step ---- */

static int reserve(cuda_engine *e, int T, int rows, char *err, size_t errlen) {
    const model_desc *m = e->m;
    if (T > e->cap_tokens || rows > e->cap_rows) {
        drop_graphs(e); /* they point at the old buffers */
        CUDA_CHECK(cudaStreamSynchronize(e->stream));
        free_activations(e);
        int cap = T > e->cap_tokens ? (T < 16 ? 16 : T) : e->cap_tokens;
        int cap_rows = rows > e->cap_rows ? (rows < 16 ? 16 : rows) : e->cap_rows;
        size_t widest = m->ffn > m->hidden ? m->ffn : m->hidden;
        widest = widest > e->q_dim ? widest : e->q_dim;
        CUDA_CHECK(cudaMalloc((void **)&e->x, (size_t)cap * m->hidden * 4));
        CUDA_CHECK(cudaMalloc((void **)&e->xn, (size_t)cap * widest * 4));
        CUDA_CHECK(cudaMalloc((void **)&e->qkv, (size_t)cap * e->qkv_dim * 4));
        CUDA_CHECK(cudaMalloc((void **)&e->q, (size_t)cap * e->q_dim * 4));
        CUDA_CHECK(cudaMalloc((void **)&e->att, (size_t)cap * e->q_dim * 4));
        CUDA_CHECK(cudaMalloc((void **)&e->gu, (size_t)cap * 2 * m->ffn * 4));
        CUDA_CHECK(cudaMalloc((void **)&e->act, (size_t)cap * m->ffn * 4));
        CUDA_CHECK(cudaMalloc((void **)&e->hi, (size_t)2 * cap * widest * 2));
        uint32_t rows = e->qkv_dim > 2 * m->ffn ? e->qkv_dim : 2 * m->ffn;
        e->stack_rows = rows > m->hidden ? rows : m->hidden;
        CUDA_CHECK(
            cudaMalloc((void **)&e->stack, (size_t)2 * (cap < STACK_MAX_T ? cap : STACK_MAX_T) * e->stack_rows * 4));
        CUDA_CHECK(cudaMalloc((void **)&e->logits, (size_t)cap_rows * m->vocab * 4));
        CUDA_CHECK(cudaMalloc((void **)&e->ids, (size_t)cap_rows * 4));
        CUDA_CHECK(cudaMalloc((void **)&e->keys, (size_t)cap_rows * ARGMAX_SLOTS * 8));
        CUDA_CHECK(cudaMallocHost((void **)&e->keys_host, (size_t)cap_rows * ARGMAX_SLOTS * 8));
        CUDA_CHECK(cudaMallocHost((void **)&e->ids_host, (size_t)cap_rows * 4));
        CUDA_CHECK(cudaMalloc((void **)&e->sample_slices, (size_t)cap_rows * SAMPLE_SLICES * sizeof(sample_slice)));
        CUDA_CHECK(cudaMalloc((void **)&e->sample_hist, (size_t)cap_rows * 256 * 4));
        CUDA_CHECK(
            cudaMalloc((void **)&e->part, ((size_t)cap * ATTP_MAX_SLICES + 256) * m->n_heads * (m->head_dim + 2) * 4));
        CUDA_CHECK(cudaMalloc((void **)&e->attn_done, (size_t)cap * m->n_heads * sizeof *e->attn_done));
        CUDA_CHECK(cudaMemsetAsync(e->attn_done, 0, (size_t)cap * m->n_heads * sizeof *e->attn_done, e->stream));
        e->cap_tokens = cap, e->cap_rows = cap_rows;
    }
    return 0;
}

/* Warps that share a row in gemv_kernel: enough that the grid gives every
 * SM two blocks (H200: o and down, 1024 rows, go from 8 to 2 rows a block;
 * more warps on the q|k|v rows were slower), as long as each lane keeps 8
 * columns of its own. */
static uint32_t gemv_warps_per_row(const cuda_engine *e, uint32_t rows, uint32_t cols) {
    uint32_t wpr = 1;
    while (wpr < GEMV_WARPS && (size_t)rows * wpr < (size_t)2 * e->n_sm * GEMV_WARPS && cols >= 2 * wpr * WARP * 8)
        wpr *= 2;
    return wpr;
}

/* Whether a GEMV of T tokens is gemv_rows_staged (gemv.cuh says when
 * it wins), its shared memory within the default 48 KiB. */
static bool gemv_staged(const cuda_engine *e, int T, size_t staged_bytes) {
    return e->staged && T >= 2 && T <= GEMV_MAX_T && staged_bytes && staged_bytes <= 48 * 1024;
}

/* y (=, +=, silu-pair) x W^T for T rows of x (float32, [T][cols]), each
 * row first RMS-normalized and scaled by gain when one is given; y has
 * leading dimension ldy. Picks the GEMV kernel or cuBLAS by T. Past the
 * GEMV sizes a pair's y may be NULL: its result is left split in e->hi
 * (hi, then lo), for a next call with x NULL. */
static int matmul_halves(cuda_engine *e, const dmat *w, const float *x, const float *gain, int T, float *y,
                         uint32_t ldy, int mode, const float **halves, char *err, size_t errlen) {
    float eps = e->m->rms_eps;
    bool pair = mode == OUT_SILU_PAIR || mode == OUT_GELU_PAIR;
    uint32_t rows = pair ? w->rows / 2 : w->rows;
    if (T <= GEMV_MAX_T) {
        typedef void (*gemv_fn)(dmat, uint32_t, uint32_t, const float *, const float *, float, float *, uint32_t);
#define GEMV_ROW(NT)                                                                                                   \
    {                                                                                                                  \
        gemv_kernel<NT, OUT_STORE>, gemv_kernel<NT, OUT_ADD>, gemv_kernel<NT, OUT_SILU_PAIR>,                          \
            gemv_kernel<NT, OUT_GELU_PAIR>                                                                             \
    }
        static const gemv_fn by_tokens[GEMV_MAX_T][4] = {GEMV_ROW(1), GEMV_ROW(2), GEMV_ROW(3), GEMV_ROW(4),
                                                         GEMV_ROW(5), GEMV_ROW(6), GEMV_ROW(7), GEMV_ROW(8)};
#undef GEMV_ROW
        uint32_t wpr = gemv_warps_per_row(e, rows, w->cols), rows_per_block = GEMV_WARPS / wpr;
        dim3 grid((rows + rows_per_block - 1) / rows_per_block), block(GEMV_WARPS * WARP);
        size_t staged_bytes = gemv_staged_bytes(*w, wpr, pair);
        if (gemv_staged(e, T, staged_bytes)) {
#define GEMV_ROW(NT, Q8)                                                                                               \
    {                                                                                                                  \
        gemv_staged_kernel<NT, OUT_STORE, Q8>, gemv_staged_kernel<NT, OUT_ADD, Q8>,                                    \
            gemv_staged_kernel<NT, OUT_SILU_PAIR, Q8>, gemv_staged_kernel<NT, OUT_GELU_PAIR, Q8>                       \
    }
#define GEMV_ROWS(Q8)                                                                                                  \
    {                                                                                                                  \
        GEMV_ROW(2, Q8), GEMV_ROW(3, Q8), GEMV_ROW(4, Q8), GEMV_ROW(5, Q8), GEMV_ROW(6, Q8), GEMV_ROW(7, Q8),          \
            GEMV_ROW(8, Q8)                                                                                            \
    }
            static const gemv_fn staged[2][GEMV_MAX_T - 1][4] = {GEMV_ROWS(false), GEMV_ROWS(true)};
#undef GEMV_ROWS
#undef GEMV_ROW
            CUDA_CHECK(launch_shared(e, staged[w->type == DMAT_Q8][T - 2][mode], grid, block, staged_bytes, *w, rows,
                                     wpr, x, gain, eps, y, ldy));
            return 0;
        }
        CUDA_CHECK(launch(e, by_tokens[T - 1][mode], grid, block, *w, rows, wpr, x, gain, eps, y, ldy));
        return 0;
    }
    /* tensor cores: x (normalized) as hi + lo bf16, two products summed in
     * float32; x NULL: the previous product's gated_mul_kernel split it.
     * Up to STACK_MAX_T tokens, one product over [hi; lo] (small products
     * take about as long at 2T columns as at T: H200, 256 tokens) */
    __nv_bfloat16 *hi = e->hi, *lo = e->hi + (size_t)T * w->cols;
    if (x == e->x && e->x_owed) { /* the residual still owed to x, added on the way */
        CUDA_CHECK(launch(e, rmsnorm_kernel, dim3(T), dim3(256), e->x, e->x_owed, e->x_owed_lo, (const int32_t *)NULL,
                          gain, eps, w->cols, (float *)NULL, hi, lo));
        e->x_owed = NULL;
    } else if (x) /* rmsnorm_kernel writes x only when it adds to it */
        CUDA_CHECK(launch(e, rmsnorm_kernel, dim3(T), dim3(256), (float *)x, (const float *)NULL, (size_t)0,
                          (const int32_t *)NULL, gain, eps, w->cols, (float *)NULL, hi, lo));
    const __nv_bfloat16 *wb = w->w;
    if (w->type == DMAT_Q8) {
        size_t n = (size_t)w->rows * w->cols;
        if (n > e->wscratch_elems) {
            CUDA_CHECK(cudaStreamSynchronize(e->stream));
            cudaFree(e->wscratch);
            e->wscratch = NULL;
            CUDA_CHECK(cudaMalloc((void **)&e->wscratch, n * 2));
            e->wscratch_elems = n;
        }
        CUDA_CHECK(launch(e, dequant_q8_kernel, dim3(1024), dim3(256), *w, e->wscratch));
        wb = e->wscratch;
    }
    bool stacked = T <= STACK_MAX_T && w->rows <= e->stack_rows;
    float *out = stacked ? e->stack : pair ? e->gu : y;
    uint32_t ldo = stacked || pair ? w->rows : ldy;
    float one = 1.0f, beta0 = mode == OUT_ADD && !stacked ? 1.0f : 0.0f;
    /* column-major view: out^T [rows][T] = W [rows][cols] . x^T [cols][T] */
    CUBLAS_CHECK(cublasGemmEx(e->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)w->rows, stacked ? 2 * T : T, (int)w->cols, &one,
                              wb, CUDA_R_16BF, (int)w->cols, hi, CUDA_R_16BF, (int)w->cols, &beta0, out, CUDA_R_32F,
                              (int)ldo, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (!stacked)
        CUBLAS_CHECK(cublasGemmEx(e->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)w->rows, T, (int)w->cols, &one, wb,
                                  CUDA_R_16BF, (int)w->cols, lo, CUDA_R_16BF, (int)w->cols, &one, out, CUDA_R_32F,
                                  (int)ldo, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    const float *lo_half = stacked ? out + (size_t)T * ldo : NULL;
    if (pair) /* y NULL: split for the next product, whose cols are these rows */
        CUDA_CHECK(launch(e, mode == OUT_GELU_PAIR ? gated_mul_kernel<OUT_GELU_PAIR> : gated_mul_kernel<OUT_SILU_PAIR>,
                          dim3((rows + 1023) / 1024, T), dim3(256), (const float *)out, lo_half, rows, y,
                          y ? NULL : e->hi, y ? NULL : e->hi + (size_t)T * rows));
    else if (stacked && mode == OUT_ADD && y == e->x && ldy == w->rows)
        e->x_owed = out, e->x_owed_lo = (size_t)T * ldo; /* for the next norm of x */
    else if (stacked && halves)
        *halves = out; /* the caller sums them */
    else if (stacked)
        CUDA_CHECK(launch(e, mode == OUT_ADD ? stacked_sum_kernel<true> : stacked_sum_kernel<false>,
                          dim3((w->rows + 1023) / 1024, T), dim3(256), (const float *)out, w->rows, y, ldy));
    return 0;
}

/* y (=, +=, silu-pair) x W^T, as matmul_halves, the result always in y. */
static int matmul(cuda_engine *e, const dmat *w, const float *x, const float *gain, int T, float *y, uint32_t ldy,
                  int mode, char *err, size_t errlen) {
    return matmul_halves(e, w, x, gain, T, y, ldy, mode, NULL, err, errlen);
}

/* q, k, v = rmsnorm(x) * gain Wqkv^T, then per head: bias, q/k norm,
 * RoPE, k and v into the KV cache (ra). Decode steps do it all in one
 * kernel (gemv_qkv_kernel); otherwise a product into e->qkv, then
 * qk_rope_kernel, or (defer not NULL) the head work is left to the
 * attention kernel, with *defer its arguments. */
static int qkv_project(cuda_engine *e, const dmat *w, const float *gain, int T, const rope_args &ra, rope_args *defer,
                       char *err, size_t errlen) {
    uint32_t hd = e->m->head_dim, heads = e->m->n_heads + 2 * e->m->n_kv_heads;
    if (T <= GEMV_MAX_T && hd % 8 == 0 && hd <= 256) {
        typedef void (*qkv_fn)(dmat, uint32_t, const float *, const float *, float, float *, rope_args, unsigned *);
#define QKV_ROW(S)                                                                                                     \
    {                                                                                                                  \
        gemv_qkv_kernel<1, S>, gemv_qkv_kernel<2, S>, gemv_qkv_kernel<3, S>, gemv_qkv_kernel<4, S>,                    \
            gemv_qkv_kernel<5, S>, gemv_qkv_kernel<6, S>, gemv_qkv_kernel<7, S>, gemv_qkv_kernel<8, S>                 \
    }
        static const qkv_fn by_tokens[3][GEMV_MAX_T] = {QKV_ROW(QKV_REGISTERS), QKV_ROW(QKV_STAGED_BF16),
                                                        QKV_ROW(QKV_STAGED_Q8)};
#undef QKV_ROW
        uint32_t wpr = gemv_warps_per_row(e, w->rows, w->cols);
        size_t staged_bytes = gemv_staged_bytes(*w, wpr, false);
        bool staged = gemv_staged(e, T, staged_bytes);
        int how = !staged ? QKV_REGISTERS : w->type == DMAT_Q8 ? QKV_STAGED_Q8 : QKV_STAGED_BF16;
        CUDA_CHECK(launch_shared(e, by_tokens[how][T - 1], dim3(w->rows * wpr / GEMV_WARPS), dim3(GEMV_WARPS * WARP),
                                 staged ? staged_bytes : 0, *w, wpr, (const float *)e->x, gain, e->m->rms_eps, e->qkv,
                                 ra, e->qkv_done));
        return 0;
    }
    const float *halves = NULL;
    if (matmul_halves(e, w, e->x, gain, T, e->qkv, e->qkv_dim, OUT_STORE, &halves, err, errlen))
        return -1;
    rope_args rh = ra; /* a stacked product: its halves, summed as they are read */
    if (halves)
        rh.qkv = halves, rh.qkv2 = halves + (size_t)T * e->qkv_dim;
    if (defer) {
        *defer = rh;
        return 0;
    }
    if (hd == 16 || hd == 32 || hd == 64 || hd == 128 || hd == 256) {
        void (*kernel)(rope_args, uint32_t) = hd <= 32    ? qk_rope_warp_kernel<1>
                                              : hd == 64  ? qk_rope_warp_kernel<2>
                                              : hd == 128 ? qk_rope_warp_kernel<4>
                                                          : qk_rope_warp_kernel<8>;
        CUDA_CHECK(launch(e, kernel, dim3((heads + 7) / 8, T), dim3(256), rh, heads));
    } else
        CUDA_CHECK(launch(e, qk_rope_kernel, dim3(heads, T), dim3((hd + WARP - 1) / WARP * WARP), rh));
    return 0;
}

/* Whether a step's output head is gemv_head_kernel, which leaves each
 * row's argmax in e->keys as it goes. */
static bool head_fills_keys(int rows, bool persistent) { return !persistent && rows <= GEMV_MAX_T; }

/* Every kernel of one step, on e->stream, reading the inputs already in
 * e->in.dev; persistent: the step is single tokens of up to 8 sequences,
 * for decode_persistent_kernel. Captured as a graph for decode steps. */
static int enqueue_step(cuda_engine *e, int T, int rows, bool persistent, char *err, size_t errlen) {
    if (persistent)
        return persist_enqueue(e, T, err, errlen);
    const model_desc *m = e->m;
    const int32_t *tokens = e->in.dev, *pos = tokens + T, *slot = pos + T, *table_off = slot + T,
                  *out_src = table_off + T, *tables = out_src + rows;
    uint32_t H = m->hidden, hd = m->head_dim;
    e->x_owed = NULL;
    unsigned long long *keys = head_fills_keys(rows, persistent) ? e->keys : NULL;
    CUDA_CHECK(launch(e, embed_kernel, dim3(T), dim3(256), e->embd, tokens, m->embed_scale, e->x, keys,
                      (uint32_t)rows * ARGMAX_SLOTS));
    int ffn_mode = m->ffn_act == FFN_GELU_TANH ? OUT_GELU_PAIR : OUT_SILU_PAIR;
    /* decode attention: enough slices of the positions to give the GPU
     * ~256 blocks; from T alone, so that a captured decode graph fits every
     * later step */
    uint32_t groups = m->n_heads / e->gsub, slices = 256 / ((uint32_t)T * groups);
    slices = slices < 1 ? 1 : slices > ATTN_MAX_SLICES ? ATTN_MAX_SLICES : slices;
    /* as one cluster where the device allows, for steps of few tokens: the
     * slices then merge in shared memory (attention_cluster_merge; past 8
     * tokens the blocks that finish early had better leave: Gemma-shaped,
     * 32 sequences, 15.8k -> 14.7k tok/s as clusters) */
    bool clustered = e->attn_cluster > 1 && slices > 1 && T <= ATTN_CLUSTER_MAX_T;
    if (clustered) {
        while (slices & (slices - 1))
            slices &= slices - 1;
        slices = slices > e->attn_cluster ? e->attn_cluster : slices;
    }
    /* past the GEMV sizes, decode attention leaves its output split for
     * the o product, and (one token a sequence) finishes the q|k|v heads
     * where its grid is one wave: each wave of blocks waits on the finish's
     * loads (H200, 0.6b, f16 KV: batch 16 8,454 -> 8,781 tok/s, 64 25.1k
     * -> 25.5k, but 256, 4 waves, 42.6k -> 41.7k) */
    bool split_att = T > GEMV_MAX_T && !e->n_tiles && e->attention;
    bool fuse_heads =
        split_att && e->one_each && e->attention_finish && groups * (uint32_t)T * slices <= e->attn_finish_wave;
    for (uint32_t l = 0; l < m->n_layers; l++) {
        const dlayer *L = &e->layers[l];
        rope_args ra = {e->qkv,     L->qkv_bias, L->q_norm, L->k_norm,  e->inv_freq + l * (hd / 2),
                        pos,        slot,        e->q,      L->k_cache, L->v_cache,
                        m->n_heads, hd,          e->q_dim,  e->kv_dim,  m->rms_eps,
                        e->kv_type};
        rope_args finish;
        if (qkv_project(e, &L->qkv, L->attn_norm, T, ra, fuse_heads ? &finish : NULL, err, errlen))
            return -1;
        attention_args aa = {e->q,
                             L->k_cache,
                             L->v_cache,
                             pos,
                             table_off,
                             tables,
                             e->att,
                             NULL,
                             NULL,
                             e->part,
                             e->attn_done,
                             m->n_heads,
                             m->n_heads / m->n_kv_heads,
                             hd,
                             e->q_dim,
                             e->kv_dim,
                             (uint32_t)e->block_size,
                             m->layers[l].window,
                             m->attn_scale};
        if (e->n_tiles) { /* n_tiles is 0 without attention_prefill */
            CUDA_CHECK(launch_shared(e, e->attention_prefill, dim3(m->n_kv_heads, e->n_tiles, e->tile_slices),
                                     dim3(128), e->attention_prefill_smem, aa,
                                     (const int32_t *)e->in.dev + e->tiles_at));
        } else {
            if (!e->attention)
                return fail(err, errlen, "cuda engine: head_dim %u, group %u: no attention kernel", hd, e->gsub);
            if (split_att)
                aa.out = NULL, aa.out_hi = e->hi, aa.out_lo = e->hi + (size_t)T * e->q_dim;
            if (fuse_heads)
                CUDA_CHECK(
                    launch(e, e->attention_finish, dim3(groups, T, slices), dim3(ATTN_WARPS * WARP), aa, finish));
            else
                CUDA_CHECK(launch_cluster(e, e->attention, dim3(groups, T, slices), dim3(ATTN_WARPS * WARP), 0,
                                          dim3(1, 1, clustered ? slices : 1), aa));
        }
        /* the block outputs: added to x, or (gemma3) normalized into xn first */
        if (matmul(e, &L->wo, split_att ? NULL : e->att, NULL, T, L->post_attn_norm ? e->xn : e->x, H,
                   L->post_attn_norm ? OUT_STORE : OUT_ADD, err, errlen))
            return -1;
        if (L->post_attn_norm)
            CUDA_CHECK(launch(e, add_rmsnorm_kernel, dim3(T), dim3(256), e->x, (const float *)e->xn,
                              (const float *)L->post_attn_norm, m->rms_eps, H));
        /* prompt steps: the gated product goes to the down product already split */
        float *act = T > GEMV_MAX_T ? NULL : e->act;
        if (matmul(e, &L->gate_up, e->x, L->ffn_norm, T, act, m->ffn, ffn_mode, err, errlen) ||
            matmul(e, &L->down, act, NULL, T, L->post_ffn_norm ? e->xn : e->x, H,
                   L->post_ffn_norm ? OUT_STORE : OUT_ADD, err, errlen))
            return -1;
        if (L->post_ffn_norm)
            CUDA_CHECK(launch(e, add_rmsnorm_kernel, dim3(T), dim3(256), e->x, (const float *)e->xn,
                              (const float *)L->post_ffn_norm, m->rms_eps, H));
    }
    CUDA_CHECK(launch(e, rmsnorm_kernel, dim3(rows), dim3(256), e->x, e->x_owed, e->x_owed_lo, out_src,
                      (const float *)e->output_norm, m->rms_eps, H, e->xn, (__nv_bfloat16 *)NULL,
                      (__nv_bfloat16 *)NULL));
    if (!keys)
        return matmul(e, &e->output, e->xn, NULL, rows, e->logits, m->vocab, OUT_STORE, err, errlen);
    typedef void (*head_fn)(dmat, const float *, float *, uint32_t, unsigned long long *);
    static const head_fn by_rows[GEMV_MAX_T] = {gemv_head_kernel<1>, gemv_head_kernel<2>, gemv_head_kernel<3>,
                                                gemv_head_kernel<4>, gemv_head_kernel<5>, gemv_head_kernel<6>,
                                                gemv_head_kernel<7>, gemv_head_kernel<8>};
    CUDA_CHECK(launch(e, by_rows[rows - 1], dim3(e->n_sm * HEAD_BLOCKS_PER_SM), dim3(GEMV_WARPS * WARP), e->output,
                      (const float *)e->xn, e->logits, m->vocab, keys));
    return 0;
}

/* Copies the step's int32 inputs to the device (fixed buffer, so graphs
 * captured against it stay valid while it does not grow). */
static int stage_inputs(cuda_engine *e, const engine_batch *b, int rows, char *err, size_t errlen) {
    int T = b->n_tokens;
    size_t tl = 0;
    for (int32_t s = 0; s < b->n_seqs; s++)
        tl += (size_t)(b->seqs[s].pos0 + b->seqs[s].n_tokens + e->block_size - 1) / e->block_size;
    /* prompt tiles: mostly-prompt steps past the decode sizes (a step of
     * single tokens keeps attention_kernel, which has no empty rows) */
    e->n_tiles = 0, e->tile_slices = 1, e->tiles_at = 4 * (size_t)T + rows + tl;
    if (e->tile_tokens && T > GEMV_MAX_T && T >= 4 * b->n_seqs)
        for (int32_t s = 0; s < b->n_seqs; s++) {
            e->n_tiles += (b->seqs[s].n_tokens + e->tile_tokens - 1) / e->tile_tokens;
            if (b->seqs[s].pos0 + b->seqs[s].n_tokens > ATTP_SLICE_KEYS)
                e->tile_slices = ATTP_MAX_SLICES;
        }
    size_t need = e->tiles_at + 2 * (size_t)e->n_tiles;
    if (need > e->in.cap) {
        drop_graphs(e);
        CUDA_CHECK(cudaStreamSynchronize(e->stream));
        cudaFreeHost(e->in.host), cudaFree(e->in.dev);
        e->in.host = NULL, e->in.dev = NULL, e->in.cap = 0;
        size_t cap = need < 4096 ? 4096 : need * 2;
        CUDA_CHECK(cudaMallocHost((void **)&e->in.host, cap * 4));
        CUDA_CHECK(cudaMalloc((void **)&e->in.dev, cap * 4));
        e->in.cap = cap;
    }
    /* the host buffer is free: every step ends with the stream synchronized */
    int32_t *tokens = e->in.host, *pos = tokens + T, *slot = pos + T, *table_off = slot + T, *out_src = table_off + T,
            *tables = out_src + rows;
    size_t off = 0;
    int r = 0;
    for (int32_t s = 0; s < b->n_seqs; s++) {
        const engine_seq *q = &b->seqs[s];
        int32_t n_table = (q->pos0 + q->n_tokens + e->block_size - 1) / e->block_size;
        memcpy(tables + off, q->block_table, (size_t)n_table * 4);
        for (int32_t i = 0; i < q->n_tokens; i++) {
            int32_t t = q->start + i, p = q->pos0 + i;
            tokens[t] = b->tokens[t];
            pos[t] = p;
            slot[t] = q->block_table[p / e->block_size] * e->block_size + p % e->block_size;
            table_off[t] = (int32_t)off;
            if (q->all_logits || i == q->n_tokens - 1)
                out_src[r++] = t;
        }
        off += (size_t)n_table;
    }
    int32_t *tile = e->in.host + e->tiles_at;
    for (int32_t s = 0; e->n_tiles && s < b->n_seqs; s++)
        for (int32_t i = 0; i < b->seqs[s].n_tokens; i += e->tile_tokens, tile += 2)
            tile[0] = b->seqs[s].start + i, tile[1] = min(e->tile_tokens, b->seqs[s].n_tokens - i);
    CUDA_CHECK(cudaMemcpyAsync(e->in.dev, e->in.host, need * 4, cudaMemcpyHostToDevice, e->stream));
    return 0;
}

/* The step up to the logits on the device (e->logits, one row per output row). */
static int run_step(cuda_engine *e, const engine_batch *b, char *err, size_t errlen) {
    int max_pos;
    if (engine_batch_check(b, e->m->vocab, e->block_size, e->n_blocks, &max_pos, err, errlen))
        return -1;
    int T = b->n_tokens, rows = engine_batch_rows(b);
    if (reserve(e, T, rows, err, errlen) || stage_inputs(e, b, rows, err, errlen))
        return -1;
    /* decode steps replay one graph per T: every launch shape depends on T alone */
    bool one_each = T == rows && T == b->n_seqs, persistent = e->persist && one_each && T <= 8;
    bool decode = one_each && T <= GRAPH_MAX_T && e->use_graphs && !(persistent && e->trace);
    e->keys_fused = head_fills_keys(rows, persistent), e->one_each = one_each;
    if (e->profile_decode && e->decode_steps == e->profile_decode)
        CUDA_CHECK(cudaProfilerStop());
    if (e->profile_decode && one_each && ++e->decode_steps == e->profile_decode)
        CUDA_CHECK(cudaProfilerStart());
    if (decode && !e->graph[T]) {
        cudaGraph_t g;
        CUDA_CHECK(cudaStreamBeginCapture(e->stream, cudaStreamCaptureModeThreadLocal));
        int rc = enqueue_step(e, T, rows, persistent, err, errlen);
        cudaError_t end = cudaStreamEndCapture(e->stream, &g);
        if (rc)
            return -1;
        if (end != cudaSuccess)
            return fail(err, errlen, "cuda: capturing a decode step: %s", cudaGetErrorString(end));
        end = cudaGraphInstantiate(&e->graph[T], g, 0);
        cudaGraphDestroy(g);
        if (end != cudaSuccess)
            return fail(err, errlen, "cuda: instantiating a decode step: %s", cudaGetErrorString(end));
    }
    if (decode)
        CUDA_CHECK(cudaGraphLaunch(e->graph[T], e->stream));
    else if (enqueue_step(e, T, rows, persistent, err, errlen))
        return -1;
    return 0;
}

/* ids[r] = the argmax of e->logits row r (from the keys that the step's
 * output head left, or argmax_kernel's); waits for the step. */
static int argmax_ids(cuda_engine *e, int rows, int32_t *ids, char *err, size_t errlen) {
    if (!e->keys_fused) {
        uint32_t vocab = e->m->vocab;
        CUDA_CHECK(cudaMemsetAsync(e->keys, 0, (size_t)rows * ARGMAX_SLOTS * 8, e->stream));
        CUDA_CHECK(launch(e, argmax_kernel, dim3((vocab + ARGMAX_SPAN - 1) / ARGMAX_SPAN, rows), dim3(256),
                          (const float *)e->logits, vocab, e->keys));
    }
    CUDA_CHECK(
        cudaMemcpyAsync(e->keys_host, e->keys, (size_t)rows * ARGMAX_SLOTS * 8, cudaMemcpyDeviceToHost, e->stream));
    CUDA_CHECK(cudaStreamSynchronize(e->stream));
    for (int r = 0; r < rows; r++) {
        const unsigned long long *slots = e->keys_host + (size_t)r * ARGMAX_SLOTS;
        unsigned long long best = 0;
        for (int i = 0; i < ARGMAX_SLOTS; i++)
            best = slots[i] > best ? slots[i] : best;
        ids[r] = best ? (int32_t) ~(uint32_t)best : 0; /* argmax_key: the id's complement in the low half */
    }
    return 0;
}

static int cuda_forward(cuda_engine *e, const engine_batch *b, float *logits, int32_t *argmax, char *err,
                        size_t errlen) {
    if (run_step(e, b, err, errlen))
        return -1;
    int rows = engine_batch_rows(b);
    if (logits)
        CUDA_CHECK(
            cudaMemcpyAsync(logits, e->logits, (size_t)rows * e->m->vocab * 4, cudaMemcpyDeviceToHost, e->stream));
    if (argmax)
        return argmax_ids(e, rows, argmax, err, errlen);
    CUDA_CHECK(cudaStreamSynchronize(e->stream));
    return 0;
}

/* Copies the rows' plans to the device as sample_rows and their edits
 * (*n_edits of them: their ids, then their values). */
static int stage_plans(cuda_engine *e, const sample_plan *plans, int rows, size_t *n_edits_out, char *err,
                       size_t errlen) {
    size_t n_edits = 0;
    for (int r = 0; r < rows; r++)
        n_edits += (size_t)plans[r].n_bias + (size_t)plans[r].n_seen;
    size_t head = (size_t)rows * sizeof(sample_row), need = head + n_edits * 8;
    if (need > e->smp.cap) {
        CUDA_CHECK(cudaStreamSynchronize(e->stream));
        cudaFreeHost(e->smp.host), cudaFree(e->smp.dev);
        e->smp.host = e->smp.dev = NULL, e->smp.cap = 0;
        size_t cap = need < 65536 ? 65536 : need * 2;
        CUDA_CHECK(cudaMallocHost(&e->smp.host, cap));
        CUDA_CHECK(cudaMalloc(&e->smp.dev, cap));
        e->smp.cap = cap;
    }
    sample_row *sr = (sample_row *)e->smp.host;
    int32_t *ids = (int32_t *)((char *)e->smp.host + head);
    float *values = (float *)(ids + n_edits);
    int32_t at = 0;
    for (int r = 0; r < rows; r++) {
        const sample_plan *p = &plans[r];
        sr[r] = (sample_row){p->temperature,
                             p->top_p,
                             p->min_p,
                             p->top_k,
                             p->repetition_penalty,
                             p->presence_penalty,
                             p->frequency_penalty,
                             p->uniform,
                             at,
                             p->n_bias,
                             0,
                             p->n_seen};
        for (int32_t i = 0; i < p->n_bias; i++, at++)
            ids[at] = p->bias_ids[i], values[at] = p->bias_values[i];
        sr[r].seen_at = at;
        for (int32_t i = 0; i < p->n_seen; i++, at++)
            ids[at] = p->seen_ids[i], values[at] = (float)p->seen_counts[i];
    }
    CUDA_CHECK(cudaMemcpyAsync(e->smp.dev, e->smp.host, need, cudaMemcpyHostToDevice, e->stream));
    *n_edits_out = n_edits;
    return 0;
}

/* Samples the rows of e->logits by plans into ids (host). */
static int sample_rows(cuda_engine *e, int rows, const sample_plan *plans, int32_t *ids, char *err, size_t errlen) {
    uint32_t vocab = e->m->vocab;
    size_t n_edits = 0;
    if (stage_plans(e, plans, rows, &n_edits, err, errlen))
        return -1;
    const sample_row *dev_rows = (const sample_row *)e->smp.dev;
    const int32_t *edit_ids = (const int32_t *)(dev_rows + rows);
    CUDA_CHECK(launch(e, sample_edit_kernel, dim3(SAMPLE_SLICES, rows), dim3(SAMPLE_SLICE_THREADS), e->logits, vocab,
                      dev_rows, edit_ids, (const float *)(edit_ids + n_edits), e->sample_slices, e->sample_hist));
    CUDA_CHECK(launch(e, sample_sum_kernel, dim3(SAMPLE_SLICES, rows), dim3(SAMPLE_SLICE_THREADS),
                      (const float *)e->logits, vocab, dev_rows, e->sample_slices, e->sample_hist));
    bool keys_in_smem = rows <= SAMPLE_SMEM_ROWS && e->pick_keys_fit;
    CUDA_CHECK(launch_cluster(e, sample_pick_kernel, dim3(SAMPLE_PICK_BLOCKS, rows), dim3(SAMPLE_THREADS),
                              keys_in_smem ? sample_pick_smem(vocab) : 0, dim3(SAMPLE_PICK_BLOCKS),
                              (const float *)e->logits, vocab, dev_rows, (const sample_slice *)e->sample_slices,
                              (const uint32_t *)e->sample_hist, keys_in_smem, e->ids));
    /* rows whose kept set the pick's candidates may not hold: the pick
     * leaves them to sample_wide_kernel (its other rows return at once) */
    bool wide = false;
    for (int r = 0; r < rows && !wide; r++)
        wide = sample_may_be_wide(((const sample_row *)e->smp.host)[r], vocab);
    if (wide)
        CUDA_CHECK(launch_cluster(e, sample_wide_kernel, dim3(SAMPLE_PICK_BLOCKS, rows), dim3(SAMPLE_THREADS),
                                  e->wide_keys_fit ? sample_pick_smem(vocab) : 0, dim3(SAMPLE_PICK_BLOCKS),
                                  (const float *)e->logits, vocab, dev_rows, (const sample_slice *)e->sample_slices,
                                  e->wide_keys_fit, e->ids));
    /* through pinned memory: a copy into pageable memory took 13 us (H200) */
    CUDA_CHECK(cudaMemcpyAsync(e->ids_host, e->ids, (size_t)rows * 4, cudaMemcpyDeviceToHost, e->stream));
    CUDA_CHECK(cudaStreamSynchronize(e->stream));
    memcpy(ids, e->ids_host, (size_t)rows * 4);
    for (int r = 0; r < rows; r++)
        if (ids[r] < 0 || (uint32_t)ids[r] >= vocab)
            return fail(err, errlen, "cuda engine: sampling row %d drew no token (%d)", r, ids[r]);
    return 0;
}

static int cuda_forward_sample(cuda_engine *e, const engine_batch *b, const sample_plan *plans, int32_t *ids, char *err,
                               size_t errlen) {
    if (run_step(e, b, err, errlen))
        return -1;
    int rows = engine_batch_rows(b);
    bool greedy = true; /* plain greedy rows: no edits to the logits first */
    for (int r = 0; r < rows && greedy; r++)
        greedy = plans[r].temperature <= 0.0f && plans[r].n_bias == 0 && plans[r].n_seen == 0;
    if (greedy)
        return argmax_ids(e, rows, ids, err, errlen);
    return sample_rows(e, rows, plans, ids, err, errlen);
}

static int cuda_sample_logits(cuda_engine *e, const float *logits, int rows, const sample_plan *plans, int32_t *ids,
                              char *err, size_t errlen) {
    if (reserve(e, 1, rows, err, errlen))
        return -1;
    CUDA_CHECK(cudaMemcpyAsync(e->logits, logits, (size_t)rows * e->m->vocab * 4, cudaMemcpyHostToDevice, e->stream));
    return sample_rows(e, rows, plans, ids, err, errlen);
}

static int cuda_block_size(const cuda_engine *e) { return e->block_size; }
static int cuda_n_blocks(const cuda_engine *e) { return e->n_blocks; }
static const char *cuda_describe(const cuda_engine *e) { return e->describe; }

static const cuda_engine_api api = {INFERNO_CUDA_ABI, cuda_create,         cuda_destroy,
                                    cuda_forward,     cuda_forward_sample, cuda_sample_logits,
                                    cuda_block_size,  cuda_n_blocks,       cuda_describe};

extern "C" const cuda_engine_api *inferno_cuda_api(void) { return &api; }
