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
#include "engine_internal.cuh"
#include "kernels.cuh"
#include "gemv.cuh"
#include "attention.cuh"
#include "attention_tc.cuh"
#include "persistent.cuh"

/* ---- the kernels for this engine's shapes ---- */

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

/* attention_tc_kernel for this engine (and its shared memory), or NULL. */
typedef void (*attention_tc_fn)(attention_args);
static attention_tc_fn attention_tc_for(const cuda_engine *e, size_t *smem) {
    uint32_t group = e->m->n_heads / e->m->n_kv_heads;
    if (e->kv_type != CUDA_KV_F16 || group > 8)
        return NULL;
    switch (e->m->head_dim) {
#define ATTT_CASE(HD)                                                                                                  \
    case HD: *smem = attt_shape<HD>::SMEM; return attention_tc_kernel<HD>;
        ATTT_CASE(16) ATTT_CASE(32) ATTT_CASE(64) ATTT_CASE(128)
#undef ATTT_CASE
    }
    return NULL;
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

/* The engine's attention kernels: decode (attention_kernel_for), with the
 * q|k|v heads' finish (and how many of its blocks are resident at once:
 * past one wave, each wave would wait on the finish), prompt tiles, and
 * decode attention's slices as one cluster (attention_cluster_merge): the
 * largest power of 2 up to 16 that the device schedules. */
void attention_setup(cuda_engine *e, const cudaDeviceProp *prop) {
    const model_desc *m = e->m;
    e->attention = attention_kernel_for(e);
    attention_prefill_fn prefill = attention_prefill_for(m->head_dim, e->kv_type, &e->attention_prefill_smem);
    uint32_t group = m->n_heads / m->n_kv_heads;
    if (prefill && group <= ATTP_ROWS &&
        cudaFuncSetAttribute(prefill, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)e->attention_prefill_smem) ==
            cudaSuccess)
        e->attention_prefill = prefill, e->tile_tokens = ATTP_ROWS / group;
    /* decode attention on the tensor cores where it wins: with GQA groups
     * past 2 (attention_lanes_kernel then runs one block an SM) and steps
     * that read 48 MiB of cache a layer or more. H200, Qwen2.5-shaped (7
     * query heads a KV head), tok/s: 256 sequences at 512 positions 54.8k
     * -> 62.1k, 128 at 2,048 25.3k -> 28.1k; but 16 at 512 5.5k -> 4.8k,
     * 128 at 512 35.8k -> 35.2k; 0.6b (groups of 2) 42.0k -> 41.3k at 256.
     * INFERNO_CUDA_ATTN_TC=1: every decode step past the GEMV sizes
     * (tests), 0: none. */
    const char *tc_env = getenv("INFERNO_CUDA_ATTN_TC");
    bool tc_forced = tc_env && !strcmp(tc_env, "1"), tc_off = tc_env && !strcmp(tc_env, "0");
    e->attention_tc = tc_off || (group <= 2 && !tc_forced) ? NULL : attention_tc_for(e, &e->attention_tc_smem);
    e->attention_tc_min_bytes = tc_forced ? 0 : (size_t)48 << 20;
    int tc_per_sm = 0;
    if (e->attention_tc && (cudaFuncSetAttribute(e->attention_tc, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 (int)e->attention_tc_smem) != cudaSuccess ||
                            cudaOccupancyMaxActiveBlocksPerMultiprocessor(
                                &tc_per_sm, e->attention_tc, ATTT_WARPS * WARP, e->attention_tc_smem) != cudaSuccess ||
                            tc_per_sm < 1))
        e->attention_tc = NULL;
    e->attention_tc_blocks = tc_per_sm * e->n_sm;
    e->attention_finish = attention_finish_for(e);
    int finish_per_sm = 0;
    if (e->attention_finish && cudaOccupancyMaxActiveBlocksPerMultiprocessor(&finish_per_sm, e->attention_finish,
                                                                             ATTN_WARPS * WARP, 0) != cudaSuccess)
        e->attention_finish = NULL;
    e->attn_finish_wave = (uint32_t)finish_per_sm * e->n_sm;
    e->attn_cluster = 1;
    if (prop->major >= 9 && e->attention && env_allows("INFERNO_CUDA_ATTN_CLUSTER"))
        for (unsigned c = 2; c <= 16 && cluster_fits(e->attention, ATTN_WARPS * WARP, c); c *= 2)
            e->attn_cluster = c;
    (void)cudaGetLastError();
}

/* ---- the persistent decode kernel ---- */

/* Sets up decode_persistent_kernel when INFERNO_CUDA_PERSISTENT=1 asks for
 * it and the model and device allow it (sm_90 bulk copies, cooperative
 * launch; Qwen-style layers: no post norms, SwiGLU, head_dim a power of 2
 * from 16 to 256, at most 8 query heads a KV head; a float or half KV
 * cache); e->persist stays false otherwise, and decode steps take the
 * kernel-per-stage path. Not the default: it is slower yet (README, CUDA
 * engine). */
int persist_setup(cuda_engine *e, const cudaDeviceProp *prop, char *err, size_t errlen) {
    const model_desc *m = e->m;
    const char *env = getenv("INFERNO_CUDA_PERSISTENT");
    uint32_t hd = m->head_dim, G = m->n_heads / m->n_kv_heads;
    bool ok = prop->major >= 9 && prop->cooperativeLaunch && env && !strcmp(env, "1") && m->ffn_act != FFN_GELU_TANH &&
              hd >= 16 && hd <= 256 && (hd & (hd - 1)) == 0 && G <= 8 && e->kv_type != CUDA_KV_FP8;
    for (uint32_t l = 0; ok && l < m->n_layers; l++)
        ok = !e->layers[l].post_attn_norm && !e->layers[l].post_ffn_norm;
    if (!ok)
        return 0;
    size_t widest = widest_row(e);
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

/* ---- one step ---- */

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

/* The most shared memory a gemv_wide_rows block takes, so that two kernels' blocks fit an SM
 * (228 KiB on sm_90). */
#define WIDE_MAX_BYTES (112 * 1024)

/* Lets kernel take WIDE_MAX_BYTES of dynamic shared memory. */
template <typename... Params> static bool wide_smem(void (*kernel)(Params...)) {
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, WIDE_MAX_BYTES) == cudaSuccess;
}

/* gemv_wide_kernel and gemv_qkv_wide_kernel by mode (OUT_*) and tiles of 16 staged rows, less one */
typedef void (*wide_fn)(dmat, uint32_t, uint32_t, const float *, const float *, float, float *);
typedef void (*qkv_wide_fn)(dmat, uint32_t, const float *, const float *, float, float *, rope_args, unsigned *);
#define WIDE_TILES(MODE)                                                                                               \
    { gemv_wide_kernel<MODE, 1>, gemv_wide_kernel<MODE, 2>, gemv_wide_kernel<MODE, 3>, gemv_wide_kernel<MODE, 4> }
static const wide_fn wide_kernels[4][WIDE_MAX_ROWS / 16] = {WIDE_TILES(OUT_STORE), WIDE_TILES(OUT_ADD),
                                                            WIDE_TILES(OUT_SILU_PAIR), WIDE_TILES(OUT_GELU_PAIR)};
#undef WIDE_TILES
static const qkv_wide_fn qkv_wide_kernels[WIDE_MAX_ROWS / 16] = {gemv_qkv_wide_kernel<1>, gemv_qkv_wide_kernel<2>,
                                                                 gemv_qkv_wide_kernel<3>, gemv_qkv_wide_kernel<4>};

void gemv_wide_setup(cuda_engine *e, const cudaDeviceProp *prop) {
    e->wide = prop->major >= 9 && env_allows("INFERNO_CUDA_WIDE");
    for (int t = 0; t < WIDE_MAX_ROWS / 16; t++) {
        for (int mode = 0; mode < 4; mode++)
            e->wide = e->wide && wide_smem(wide_kernels[mode][t]);
        e->wide = e->wide && wide_smem(qkv_wide_kernels[t]);
    }
    (void)cudaGetLastError(); /* a refusal above leaves its error; the GEMVs then stay as they were */
}

/* Rows a gemv_wide_rows block takes for a one-token GEMV of w (rows
 * outputs), or 0 where it does not (not bf16, or too large for an SM
 * beside the next kernel); with a head size, a divisor of it (q|k|v). */
static uint32_t gemv_wide_rows_per_block(const cuda_engine *e, const dmat *w, uint32_t rows, bool pair,
                                         uint32_t head_dim) {
    if (!e->wide || w->type != DMAT_BF16 || w->cols % 32)
        return 0;
    uint32_t n_sm = (uint32_t)e->n_sm, per_block = (rows + n_sm - 1) / n_sm;
    if (head_dim) {
        per_block = head_dim;
        while (per_block % 2 == 0 && (rows + per_block / 2 - 1) / (per_block / 2) <= n_sm)
            per_block /= 2;
        if ((rows + per_block - 1) / per_block > n_sm)
            return 0;
    }
    bool fits = gemv_wide_tiles(per_block, pair) <= WIDE_MAX_ROWS / 16 &&
                gemv_wide_bytes(*w, per_block, pair) <= WIDE_MAX_BYTES;
    return fits ? per_block : 0;
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
    uint32_t per_block = T == 1 ? gemv_wide_rows_per_block(e, w, rows, pair, 0) : 0;
    if (per_block) {
        CUDA_CHECK(launch_shared(e, wide_kernels[mode][gemv_wide_tiles(per_block, pair) - 1],
                                 dim3((rows + per_block - 1) / per_block), dim3(GEMV_WARPS * WARP),
                                 gemv_wide_bytes(*w, per_block, pair), *w, rows, per_block, x, gain, eps, y));
        return 0;
    }
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
        if (wscratch_reserve(e, (size_t)w->rows * w->cols, err, errlen))
            return -1;
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
        /* staged from 2 tokens on (gemv_staged) */
#define QKV_ROW(S, FIRST)                                                                                              \
    {                                                                                                                  \
        FIRST, gemv_qkv_kernel<2, S>, gemv_qkv_kernel<3, S>, gemv_qkv_kernel<4, S>, gemv_qkv_kernel<5, S>,             \
            gemv_qkv_kernel<6, S>, gemv_qkv_kernel<7, S>, gemv_qkv_kernel<8, S>                                        \
    }
        static const qkv_fn by_tokens[3][GEMV_MAX_T] = {QKV_ROW(QKV_REGISTERS, (gemv_qkv_kernel<1, QKV_REGISTERS>)),
                                                        QKV_ROW(QKV_STAGED_BF16, NULL), QKV_ROW(QKV_STAGED_Q8, NULL)};
#undef QKV_ROW
        uint32_t per_block = T == 1 ? gemv_wide_rows_per_block(e, w, w->rows, false, hd) : 0;
        if (per_block) {
            CUDA_CHECK(launch_shared(e, qkv_wide_kernels[gemv_wide_tiles(per_block, false) - 1],
                                     dim3(w->rows / per_block), dim3(GEMV_WARPS * WARP),
                                     gemv_wide_bytes(*w, per_block, false), *w, per_block, (const float *)e->x, gain,
                                     e->m->rms_eps, e->qkv, ra, e->qkv_done));
            return 0;
        }
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

/* Whether the step staged (stage_inputs) runs decode attention on the
 * tensor cores: large steps past the GEMV sizes, with a half cache
 * (attention_setup: where it wins). */
static bool attention_tc_now(const cuda_engine *e, int T) {
    return T > GEMV_MAX_T && !e->n_tiles && e->attention && e->attention_tc &&
           e->step_kv_bytes >= e->attention_tc_min_bytes;
}

/* attention_tc_kernel's grid for T tokens, and *slices of a token: its
 * work items (token, kv head, slice) over one wave of warps, each taking
 * every W-th, with slices (up to part's room, T slices <= 4 T + 256) such
 * that the warps' shares are most even (a warp with one item more than
 * the mean holds up the kernel: 1,152 items on 1,056 warps run as long as
 * 2,112), fewer where it makes no difference. */
static uint32_t attention_tc_grid(const cuda_engine *e, int T, uint32_t *slices) {
    uint32_t items = (uint32_t)T * e->m->n_kv_heads, warps = (uint32_t)e->attention_tc_blocks * ATTT_WARPS;
    uint32_t room = (256 + 4 * (uint32_t)T) / (uint32_t)T;
    double best = 0.0;
    *slices = 1;
    for (uint32_t s = 1; s <= ATTN_MAX_SLICES && s <= room; s++) {
        uint32_t rounds = (items * s + warps - 1) / warps;
        double even = (double)(items * s) / ((double)rounds * warps);
        if (even > best + 0.02)
            *slices = s, best = even;
    }
    uint32_t blocks = (items * *slices + ATTT_WARPS - 1) / ATTT_WARPS;
    return blocks < (uint32_t)e->attention_tc_blocks ? blocks : (uint32_t)e->attention_tc_blocks;
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
        clustered = e->gsub * hd <= slices * ATTN_WARPS * WARP; /* the merge's owners are blocks of the cluster */
    }
    /* past the GEMV sizes, decode attention leaves its output split for
     * the o product, and (one token a sequence) finishes the q|k|v heads
     * where its grid is one wave: each wave of blocks waits on the finish's
     * loads (H200, 0.6b, f16 KV: batch 16 8,454 -> 8,781 tok/s, 64 25.1k
     * -> 25.5k, but 256, 4 waves, 42.6k -> 41.7k) */
    bool split_att = T > GEMV_MAX_T && !e->n_tiles && e->attention, tc = attention_tc_now(e, T);
    uint32_t tc_slices = 1, tc_blocks = tc ? attention_tc_grid(e, T, &tc_slices) : 0;
    bool fuse_heads =
        split_att && !tc && e->one_each && e->attention_finish && groups * (uint32_t)T * slices <= e->attn_finish_wave;
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
            if (tc) {
                aa.tokens = (uint32_t)T, aa.slices = tc_slices;
                CUDA_CHECK(launch_shared(e, e->attention_tc, dim3(tc_blocks), dim3(ATTT_WARPS * WARP),
                                         e->attention_tc_smem, aa));
            } else if (fuse_heads)
                CUDA_CHECK(
                    launch(e, e->attention_finish, dim3(groups, T, slices), dim3(ATTN_WARPS * WARP), aa, finish));
            else
                CUDA_CHECK(launch_cluster(e, e->attention, dim3(groups, T, slices), dim3(ATTN_WARPS * WARP),
                                          clustered ? attention_merge_bytes(slices, e->gsub, ATTN_WARPS * WARP) : 0,
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

/* The step up to the logits on the device (e->logits, one row per output row). */
int run_step(cuda_engine *e, const engine_batch *b, char *err, size_t errlen) {
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
    /* a graph fixes the attention kernel that its capture chose */
    bool tc = attention_tc_now(e, T);
    if (decode && e->graph[T] && e->graph_tc[T] != tc)
        drop_graph(e, T);
    if (decode && !e->graph[T] && T > GEMV_MAX_T && wscratch_reserve(e, widest_q8(e), err, errlen))
        return -1;
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
        e->graph_tc[T] = tc;
    }
    if (decode)
        CUDA_CHECK(cudaGraphLaunch(e->graph[T], e->stream));
    else if (enqueue_step(e, T, rows, persistent, err, errlen))
        return -1;
    return 0;
}

/* ids[r] = the argmax of e->logits row r (from the keys that the step's
 * output head left, or argmax_kernel's); waits for the step. */
int argmax_ids(cuda_engine *e, int rows, int32_t *ids, char *err, size_t errlen) {
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

#ifdef INFERNO_KERNEL_TRACE
/* Prints the records of one step (INFERNO_CUDA_TRACE_STEP=N, counting
 * cuda_forward's calls), a kernel (grid) a line: its blocks, those
 * recorded, the SMs they ran on, when its first and last blocks landed
 * and were released, and the last block's time at each trace_mark (-1:
 * none); microseconds from the step's first release. With
 * INFERNO_CUDA_TRACE_RAW=FILE, every block's record to FILE. */
static int trace_dump(int step, char *err, size_t errlen) {
    unsigned n = 0;
    CUDA_CHECK(cudaMemcpyFromSymbol(&n, trace_n, sizeof n));
    n = n < TRACE_CAP ? n : TRACE_CAP;
    trace_rec *r = (trace_rec *)calloc(n ? n : 1, sizeof *r);
    if (!r)
        return fail(err, errlen, "trace: out of memory for %u records", n);
    cudaError_t rc = cudaMemcpyFromSymbol(r, trace_buf, n * sizeof *r);
    if (rc != cudaSuccess) {
        free(r);
        return fail(err, errlen, "trace: %s", cudaGetErrorString(rc));
    }
    qsort(r, n, sizeof *r, [](const void *a, const void *b) {
        unsigned long long x = ((const trace_rec *)a)->grid, y = ((const trace_rec *)b)->grid;
        return x < y ? -1 : x > y;
    });
    unsigned long long base = ~0ull;
    for (unsigned i = 0; i < n; i++)
        base = r[i].t1 < base ? r[i].t1 : base;
    const char *raw = getenv("INFERNO_CUDA_TRACE_RAW");
    if (raw) {
        FILE *f = fopen(raw, "w");
        for (unsigned i = 0; f && i < n; i++) {
            fprintf(f, "%llu %u %u %lld %lld", r[i].grid, r[i].blocks, r[i].sm, (long long)(r[i].t0 - base),
                    (long long)(r[i].t1 - base));
            for (int k = 0; k < 4; k++)
                fprintf(f, " %lld %lld", r[i].mark[k] ? (long long)(r[i].mark[k] - base) : -1LL,
                        (long long)r[i].clk[k]);
            fprintf(f, " %u\n", r[i].dyn_smem);
        }
        if (f)
            fclose(f);
    }
    fprintf(stderr, "trace step %d: %u records\n  grid blocks seen sms land0 land1 rel0 rel1 mark0 mark1 mark2 mark3\n",
            step, n);
    for (unsigned i = 0, j; i < n; i = j) {
        unsigned long long land0 = ~0ull, land1 = 0, rel0 = ~0ull, rel1 = 0, mark[4] = {0, 0, 0, 0};
        unsigned char on_sm[1024] = {0};
        unsigned sms = 0;
        for (j = i; j < n && r[j].grid == r[i].grid; j++) {
            if (r[j].sm < sizeof on_sm && !on_sm[r[j].sm]++)
                sms++;
            land0 = r[j].t0 < land0 ? r[j].t0 : land0, land1 = r[j].t0 > land1 ? r[j].t0 : land1;
            rel0 = r[j].t1 < rel0 ? r[j].t1 : rel0, rel1 = r[j].t1 > rel1 ? r[j].t1 : rel1;
            for (int k = 0; k < 4; k++)
                mark[k] = r[j].mark[k] > mark[k] ? r[j].mark[k] : mark[k];
        }
        auto us = [&](unsigned long long t) { return t ? ((long long)t - (long long)base) / 1e3 : -1.0; };
        fprintf(stderr, "  %llu %u %u %u %.2f %.2f %.2f %.2f %.2f %.2f %.2f %.2f\n", r[i].grid, r[i].blocks, j - i, sms,
                us(land0), us(land1), us(rel0), us(rel1), us(mark[0]), us(mark[1]), us(mark[2]), us(mark[3]));
    }
    free(r);
    return 0;
}

/* Around each forward step (begin, then its end): the one that
 * INFERNO_CUDA_TRACE_STEP names, counting the process's steps, is recorded
 * and printed. */
static int trace_step(bool begin, char *err, size_t errlen) {
    static const int want = getenv("INFERNO_CUDA_TRACE_STEP") ? atoi(getenv("INFERNO_CUDA_TRACE_STEP")) : -1;
    static int step = 0;
    if (begin)
        ++step;
    if (step != want)
        return 0;
    int on = begin;
    unsigned zero = 0;
    CUDA_CHECK(cudaDeviceSynchronize());
    if (begin)
        CUDA_CHECK(cudaMemcpyToSymbol(trace_n, &zero, sizeof zero));
    CUDA_CHECK(cudaMemcpyToSymbol(trace_on, &on, sizeof on));
    return begin ? 0 : trace_dump(step, err, errlen);
}
#endif

int cuda_forward(cuda_engine *e, const engine_batch *b, float *logits, int32_t *argmax, char *err, size_t errlen) {
#ifdef INFERNO_KERNEL_TRACE
    if (trace_step(true, err, errlen))
        return -1;
#endif
    if (run_step(e, b, err, errlen))
        return -1;
#ifdef INFERNO_KERNEL_TRACE
    if (trace_step(false, err, errlen))
        return -1;
#endif
    int rows = engine_batch_rows(b);
    if (logits)
        CUDA_CHECK(
            cudaMemcpyAsync(logits, e->logits, (size_t)rows * e->m->vocab * 4, cudaMemcpyDeviceToHost, e->stream));
    if (argmax)
        return argmax_ids(e, rows, argmax, err, errlen);
    CUDA_CHECK(cudaStreamSynchronize(e->stream));
    return 0;
}
