/* Sampling a step's logits on the GPU (sample.cuh, sample_wide.cuh): each
 * row's plan (temperature, top-k, top-p, min-p, penalties, bias, seed) is
 * staged as a sample_row with its edits, and only the drawn ids come back.
 *
 * Threading: the engine's stream, in the caller's thread. */
#include "engine_internal.cuh"
#include "sample.cuh"
#include "sample_wide.cuh"

/* The largest vocabulary sample_wide_kernel's fixed-point sums take. */
uint32_t sample_max_vocab(void) { return WIDE_MAX_VOCAB; }

/* Whether the pick (and the wide draw) can hold a block's part of a row's
 * keys in shared memory (vocabularies up to ~440k ids on the H200). */
void sample_setup(cuda_engine *e, const cudaDeviceProp *prop) {
    const model_desc *m = e->m;
    cudaFuncAttributes pick;
    size_t pick_smem = sample_pick_smem(m->vocab);
    e->pick_keys_fit = cudaFuncGetAttributes(&pick, sample_pick_kernel) == cudaSuccess &&
                       pick.sharedSizeBytes + pick_smem <= prop->sharedMemPerBlockOptin &&
                       cudaFuncSetAttribute(sample_pick_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            (int)pick_smem) == cudaSuccess;
    cudaFuncAttributes wide;
    e->wide_keys_fit = cudaFuncGetAttributes(&wide, sample_wide_kernel) == cudaSuccess &&
                       wide.sharedSizeBytes + pick_smem <= prop->sharedMemPerBlockOptin &&
                       cudaFuncSetAttribute(sample_wide_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            (int)pick_smem) == cudaSuccess;
    (void)cudaGetLastError(); /* a probe that failed leaves its error */
}

/* The sampling scratch for cap_rows rows: [cap_rows][SAMPLE_SLICES]
 * slices, [cap_rows][256] top-byte counts. */
int sample_reserve(cuda_engine *e, int cap_rows, char *err, size_t errlen) {
    CUDA_CHECK(cudaMalloc((void **)&e->sample_slices, (size_t)cap_rows * SAMPLE_SLICES * sizeof(sample_slice)));
    CUDA_CHECK(cudaMalloc((void **)&e->sample_hist, (size_t)cap_rows * 256 * 4));
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

int cuda_forward_sample(cuda_engine *e, const engine_batch *b, const sample_plan *plans, int32_t *ids, char *err,
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

int cuda_sample_logits(cuda_engine *e, const float *logits, int rows, const sample_plan *plans, int32_t *ids, char *err,
                       size_t errlen) {
    if (reserve(e, 1, rows, err, errlen))
        return -1;
    CUDA_CHECK(cudaMemcpyAsync(e->logits, logits, (size_t)rows * e->m->vocab * 4, cudaMemcpyHostToDevice, e->stream));
    return sample_rows(e, rows, plans, ids, err, errlen);
}
