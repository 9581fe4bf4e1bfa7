/* The CUDA engine: the model's weights onto one GPU (bf16, or 8-bit
 * quants with scales), the KV cache, the engine's life, and the table of
 * entry points that backend.c loads (inferno_cuda_api). The forward step
 * is step.cu's and sampling sampling.cu's; engine_internal.cuh says how
 * they share the engine.
 *
 * Threading: one stream, one step at a time (the caller's thread). */
#include "engine_internal.cuh"

/* cuBLAS's workspace: what NVIDIA's documentation recommends for Hopper */
#define CUBLAS_WORKSPACE_BYTES ((size_t)32 << 20)

static const char *kv_type_name(int kv_type) {
    return kv_type == CUDA_KV_FP8 ? "fp8 (e4m3)" : kv_type == CUDA_KV_F16 ? "f16" : "f32";
}

/* ---- loading weights ---- */

/* The allocation is padded to the next 16 bytes and 16 more (zeros): the
 * persistent kernel's bulk copies read whole 16-byte units. */
int upload(void **dev, const void *host, size_t bytes, char *err, size_t errlen) {
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

/* A launched graph may still run: CUDA frees it when it completes. */
void drop_graph(cuda_engine *e, int T) {
    if (e->graph[T])
        cudaGraphExecDestroy(e->graph[T]);
    e->graph[T] = NULL;
}

void drop_graphs(cuda_engine *e) {
    for (int i = 0; i <= GRAPH_MAX_T; i++)
        drop_graph(e, i);
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
    cudaFree(e->blas_workspace);
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
    if (m->vocab > sample_max_vocab()) { /* sample_wide_kernel's fixed-point sums */
        fail(err, errlen, "cuda engine: a vocabulary of %u ids (the GPU sampler takes up to %u)", m->vocab,
             sample_max_vocab());
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
             cublasCreate(&e->blas) == CUBLAS_STATUS_SUCCESS && cublasSetStream(e->blas, e->stream) == 0 &&
             cudaMalloc(&e->blas_workspace, CUBLAS_WORKSPACE_BYTES) == cudaSuccess &&
             cublasSetWorkspace(e->blas, e->blas_workspace, CUBLAS_WORKSPACE_BYTES) == CUBLAS_STATUS_SUCCESS;
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
    if (cudaMalloc((void **)&e->qkv_done, heads * sizeof *e->qkv_done) != cudaSuccess ||
        cudaMemset(e->qkv_done, 0, heads * sizeof *e->qkv_done) != cudaSuccess) {
        fail(err, errlen, "cuda engine: out of device memory");
        cuda_destroy(e);
        return -1;
    }
    e->n_sm = prop.multiProcessorCount;
    attention_setup(e, &prop);
    if (persist_setup(e, &prop, err, errlen)) {
        cuda_destroy(e);
        return -1;
    }
    sample_setup(e, &prop);
    const char *profile = getenv("INFERNO_CUDA_PROFILE_DECODE");
    e->profile_decode = profile ? atoi(profile) : 0;
    e->pdl = prop.major >= 9 && env_allows("INFERNO_CUDA_PDL");
    e->staged = prop.major >= 9 && env_allows("INFERNO_CUDA_STAGED");
    gemv_wide_setup(e, &prop);
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
    snprintf(e->describe, sizeof e->describe, "%.150s, %s weights, %s KV%s%s%s%s", prop.name, held,
             kv_type_name(e->kv_type), e->pdl ? ", PDL" : "", cluster,
             e->attention_tc ? ", tensor-core decode attention" : "", e->persist ? ", persistent decode" : "");
    *out = e;
    return 0;
}

static int cuda_block_size(const cuda_engine *e) { return e->block_size; }
static int cuda_n_blocks(const cuda_engine *e) { return e->n_blocks; }
static const char *cuda_describe(const cuda_engine *e) { return e->describe; }

static const cuda_engine_api api = {INFERNO_CUDA_ABI, cuda_create,         cuda_destroy,
                                    cuda_forward,     cuda_forward_sample, cuda_sample_logits,
                                    cuda_block_size,  cuda_n_blocks,       cuda_describe};

extern "C" __attribute__((visibility("default"))) const cuda_engine_api *inferno_cuda_api(void) { return &api; }
