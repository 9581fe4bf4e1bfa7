/* The step's device buffers: activations sized by the largest step so
 * far (reserve, free_activations), the bf16 scratch of Q8_0 matrices on
 * the tensor cores, and the step's int32 inputs (stage_inputs). Decode
 * graphs point at these buffers, so whatever moves one drops the graphs.
 *
 * Threading: the engine's (one stream, one step at a time). */
#include "engine_internal.cuh"

/* The widest activation row: hidden, ffn or q_dim columns. */
size_t widest_row(const cuda_engine *e) {
    size_t widest = e->m->ffn > e->m->hidden ? e->m->ffn : e->m->hidden;
    return widest > e->q_dim ? widest : e->q_dim;
}

/* Frees what reserve allocated (NULLs left, so twice is safe). */
void free_activations(cuda_engine *e) {
    cudaFree(e->x), cudaFree(e->xn), cudaFree(e->qkv), cudaFree(e->q), cudaFree(e->att), cudaFree(e->gu);
    cudaFree(e->act), cudaFree(e->hi), cudaFree(e->stack), cudaFree(e->logits), cudaFree(e->ids), cudaFree(e->part);
    cudaFree(e->attn_done), cudaFree(e->keys), cudaFreeHost(e->keys_host), cudaFreeHost(e->ids_host);
    cudaFree(e->sample_slices), cudaFree(e->sample_hist);
    e->attn_done = NULL, e->keys = e->keys_host = NULL, e->ids_host = NULL;
    e->x = e->xn = e->qkv = e->q = e->att = e->gu = e->act = e->logits = e->part = NULL;
    e->hi = NULL, e->stack = NULL, e->ids = NULL, e->sample_slices = NULL, e->sample_hist = NULL;
}

/* Activations for steps of up to T tokens and rows logit rows: grown to
 * the largest step so far (at least 16), never shrunk. */
int reserve(cuda_engine *e, int T, int rows, char *err, size_t errlen) {
    const model_desc *m = e->m;
    if (T > e->cap_tokens || rows > e->cap_rows) {
        drop_graphs(e); /* they point at the old buffers */
        CUDA_CHECK(cudaStreamSynchronize(e->stream));
        free_activations(e);
        int cap = T > e->cap_tokens ? (T < 16 ? 16 : T) : e->cap_tokens;
        int cap_rows = rows > e->cap_rows ? (rows < 16 ? 16 : rows) : e->cap_rows;
        size_t widest = widest_row(e);
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
        if (sample_reserve(e, cap_rows, err, errlen))
            return -1;
        CUDA_CHECK(
            cudaMalloc((void **)&e->part, ((size_t)cap * ATTP_MAX_SLICES + 256) * m->n_heads * (m->head_dim + 2) * 4));
        CUDA_CHECK(cudaMalloc((void **)&e->attn_done, (size_t)cap * m->n_heads * sizeof *e->attn_done));
        CUDA_CHECK(cudaMemsetAsync(e->attn_done, 0, (size_t)cap * m->n_heads * sizeof *e->attn_done, e->stream));
        e->cap_tokens = cap, e->cap_rows = cap_rows;
    }
    return 0;
}

/* Room in e->wscratch for n weights as bf16 (a Q8_0 matrix on the tensor
 * cores). Graphs captured against the old buffer are dropped; run_step
 * reserves before it captures one (no allocation while capturing). */
int wscratch_reserve(cuda_engine *e, size_t n, char *err, size_t errlen) {
    if (n <= e->wscratch_elems)
        return 0;
    drop_graphs(e);
    CUDA_CHECK(cudaStreamSynchronize(e->stream));
    cudaFree(e->wscratch);
    e->wscratch = NULL, e->wscratch_elems = 0;
    CUDA_CHECK(cudaMalloc((void **)&e->wscratch, n * 2));
    e->wscratch_elems = n;
    return 0;
}

/* The largest Q8_0 matrix that a step past the GEMV sizes dequantizes. */
size_t widest_q8(const cuda_engine *e) {
    size_t widest = e->output.type == DMAT_Q8 ? (size_t)e->output.rows * e->output.cols : 0;
    for (uint32_t l = 0; l < e->m->n_layers; l++) {
        const dmat *w[4] = {&e->layers[l].qkv, &e->layers[l].wo, &e->layers[l].gate_up, &e->layers[l].down};
        for (int i = 0; i < 4; i++)
            if (w[i]->type == DMAT_Q8 && (size_t)w[i]->rows * w[i]->cols > widest)
                widest = (size_t)w[i]->rows * w[i]->cols;
    }
    return widest;
}

/* Copies the step's int32 inputs to the device (fixed buffer, so graphs
 * captured against it stay valid while it does not grow). */
int stage_inputs(cuda_engine *e, const engine_batch *b, int rows, char *err, size_t errlen) {
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
    size_t off = 0, kv_rows = 0;
    int r = 0;
    for (int32_t s = 0; s < b->n_seqs; s++) {
        const engine_seq *q = &b->seqs[s];
        int32_t n_table = (q->pos0 + q->n_tokens + e->block_size - 1) / e->block_size;
        memcpy(tables + off, q->block_table, (size_t)n_table * 4);
        for (int32_t i = 0; i < q->n_tokens; i++) {
            int32_t t = q->start + i, p = q->pos0 + i;
            tokens[t] = b->tokens[t];
            pos[t] = p, kv_rows += (size_t)p + 1;
            slot[t] = q->block_table[p / e->block_size] * e->block_size + p % e->block_size;
            table_off[t] = (int32_t)off;
            if (q->all_logits || i == q->n_tokens - 1)
                out_src[r++] = t;
        }
        off += (size_t)n_table;
    }
    e->step_kv_bytes = kv_rows * e->kv_dim * 2 * kv_elem_bytes(e->kv_type);
    int32_t *tile = e->in.host + e->tiles_at;
    for (int32_t s = 0; e->n_tiles && s < b->n_seqs; s++)
        for (int32_t i = 0; i < b->seqs[s].n_tokens; i += e->tile_tokens, tile += 2)
            tile[0] = b->seqs[s].start + i, tile[1] = min(e->tile_tokens, b->seqs[s].n_tokens - i);
    CUDA_CHECK(cudaMemcpyAsync(e->in.dev, e->in.host, need * 4, cudaMemcpyHostToDevice, e->stream));
    return 0;
}
