/* Sampling on the GPU: model/sampler.c's sampler_apply_edits and
 * sampler_draw for every logits row of a step, one block a row, so that
 * only token ids cross PCIe.
 *
 * The same choices as on the host, in the same order and arithmetic
 * (float logits / temperature, double exp and sums), so that a seeded
 * request draws the same tokens on either engine but for sums rounded in
 * another order:
 *   - greedy: the first largest logit;
 *   - temperature alone: the draw walks the vocabulary in id order, which
 *     the block does as a prefix sum over contiguous slices of ids;
 *   - with top-k, top-p or min-p: a radix select finds the SAMPLE_CANDS
 *     (or top_k) largest, a bitonic sort orders them as the host does
 *     (value down, then id up), and one thread walks them. When top-p or
 *     min-p would keep more than SAMPLE_CANDS tokens, or top_k is larger,
 *     the row's id is -1 and the host finishes it from the edited logits. */
#ifndef INFERNO_CUDA_SAMPLE_CUH
#define INFERNO_CUDA_SAMPLE_CUH

#include "kernels.cuh"

#define SAMPLE_THREADS 1024
#define SAMPLE_CANDS   256

/* One row's sample_plan on the device; its edits are at bias_at / seen_at
 * in the step's edit_ids and edit_values (a seen id's value: its count). */
struct sample_row {
    float temperature, top_p, min_p;
    int32_t top_k;
    float repetition, presence, frequency;
    double uniform;
    int32_t bias_at, n_bias, seen_at, n_seen;
};

/* f(i, row[i]) for i = first, first + stride, ... below end, in that
 * order, with ROW_UNROLL loads in flight at a time: a block's pass over a
 * 151,936-logit row waited on one L2 round trip a load otherwise. */
#define ROW_UNROLL 8
template <typename F>
__device__ __forceinline__ void row_for_each(const float *row, uint32_t first, uint32_t end, uint32_t stride, F f) {
    for (uint32_t i0 = first; i0 < end; i0 += ROW_UNROLL * stride) {
        float v[ROW_UNROLL];
#pragma unroll
        for (int k = 0; k < ROW_UNROLL; k++)
            v[k] = i0 + k * stride < end ? row[i0 + k * stride] : 0.0f;
#pragma unroll
        for (int k = 0; k < ROW_UNROLL; k++)
            if (i0 + k * stride < end)
                f(i0 + k * stride, v[k]);
    }
}

/* The exclusive prefix sum of v over the threads, in thread order; *total
 * gets the sum of all. */
__device__ __forceinline__ double block_exclusive_scan(double v, double *scratch, double *total) {
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    double incl = v;
    for (int o = 1; o < WARP; o *= 2) {
        double up = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o)
            incl += up;
    }
    __syncthreads();
    if (lane == WARP - 1)
        scratch[warp] = incl;
    __syncthreads();
    double before = 0, all = 0;
    for (int w = 0; w < SAMPLE_THREADS / WARP; w++) {
        before += w < warp ? scratch[w] : 0.0;
        all += scratch[w];
    }
    *total = all;
    return before + incl - v;
}

/* ids[r] = the token of logits row r by rows[r]; the edits are applied to
 * the row in place (the host fallback reads them). Grid rows, block
 * SAMPLE_THREADS. */
__global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_kernel(float *logits, uint32_t vocab, const sample_row *rows, const int32_t *edit_ids,
                  const float *edit_values, int32_t *ids) {
    __shared__ float s_f[WARP];
    __shared__ int32_t s_i[WARP];
    __shared__ double s_d[WARP];
    __shared__ uint32_t hist[256];
    __shared__ float cand_v[SAMPLE_CANDS];
    __shared__ int32_t cand_id[SAMPLE_CANDS];
    __shared__ uint32_t s_prefix, s_mask, s_want, s_n_gt;
    __shared__ int32_t s_token;
    pdl_enter();
    const sample_row p = rows[blockIdx.x];
    float *row = logits + (size_t)blockIdx.x * vocab;
    uint32_t tid = threadIdx.x;

    /* the bias in list order (an id may repeat), then the penalties (distinct ids) */
    if (tid == 0)
        for (int32_t i = 0; i < p.n_bias; i++) {
            int32_t id = edit_ids[p.bias_at + i];
            if (id >= 0 && (uint32_t)id < vocab)
                row[id] += edit_values[p.bias_at + i];
        }
    __syncthreads();
    bool repetition = p.repetition != 1.0f && p.repetition > 0.0f, occurrence = p.presence != 0 || p.frequency != 0;
    for (int32_t i = (int32_t)tid; i < p.n_seen; i += SAMPLE_THREADS) {
        int32_t id = edit_ids[p.seen_at + i];
        float count = edit_values[p.seen_at + i];
        if (id < 0 || (uint32_t)id >= vocab)
            continue;
        float l = row[id];
        if (repetition)
            l = l > 0 ? l / p.repetition : l * p.repetition;
        if (occurrence && count != 0.0f)
            l -= p.presence + p.frequency * count;
        row[id] = l;
    }
    __syncthreads();
    if (p.temperature <= 0.0f) {
        int32_t id = block_argmax(row, vocab, s_f, s_i);
        if (tid == 0)
            ids[blockIdx.x] = id;
        return;
    }
    const float T = p.temperature;
    float m = -INFINITY;
    row_for_each(row, tid, vocab, SAMPLE_THREADS, [&](uint32_t, float v) { m = fmaxf(m, v / T); });
    m = block_max(m);
    bool top_k = p.top_k > 0 && (uint32_t)p.top_k < vocab;
    bool nucleus = (p.top_p > 0.0f && p.top_p < 1.0f) || p.min_p > 0.0f;

    if (!top_k && !nucleus) { /* the draw over the whole vocabulary, in id order */
        uint32_t chunk = (vocab + SAMPLE_THREADS - 1) / SAMPLE_THREADS, lo = tid * chunk;
        uint32_t hi = min(lo + chunk, vocab);
        double mine = 0, total;
        row_for_each(row, lo, hi, 1, [&](uint32_t, float v) { mine += exp((double)(v / T - m)); });
        double before = block_exclusive_scan(mine, s_d, &total), r = p.uniform * total;
        if (tid == 0)
            s_token = (int32_t)vocab - 1;
        __syncthreads();
        if (before <= r && r < before + mine) {
            int32_t token = (int32_t)hi - 1;
            double acc = before;
            for (uint32_t i = lo; i < hi; i++) {
                acc += exp((double)(row[i] / T - m));
                if (acc > r) {
                    token = (int32_t)i;
                    break;
                }
            }
            s_token = token;
        }
        __syncthreads();
        if (tid == 0)
            ids[blockIdx.x] = s_token;
        return;
    }
    if (top_k && p.top_k > SAMPLE_CANDS) {
        if (tid == 0)
            ids[blockIdx.x] = -1; /* more than the GPU keeps: the host's */
        return;
    }
    uint32_t want = top_k ? (uint32_t)p.top_k : min((uint32_t)SAMPLE_CANDS, vocab);
    /* the full sum, for top-p and min-p without top-k (the host's total) */
    double full_total = 0;
    if (!top_k) {
        double mine = 0;
        row_for_each(row, tid, vocab, SAMPLE_THREADS, [&](uint32_t, float v) { mine += exp((double)(v / T - m)); });
        block_exclusive_scan(mine, s_d, &full_total);
    }

    /* radix select, 8 bits a pass from the top: the key of the want-th largest */
    if (tid == 0)
        s_prefix = 0, s_mask = 0, s_want = want;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (uint32_t i = tid; i < 256; i += SAMPLE_THREADS)
            hist[i] = 0;
        __syncthreads();
        uint32_t prefix = s_prefix, mask = s_mask;
        row_for_each(row, tid, vocab, SAMPLE_THREADS, [&](uint32_t, float v) {
            uint32_t key = order_key(v / T);
            if ((key & mask) == prefix)
                atomicAdd(&hist[(key >> shift) & 255], 1u);
        });
        __syncthreads();
        if (tid == 0) {
            uint32_t left = s_want, b = 255;
            for (;; b--) {
                if (hist[b] >= left || b == 0)
                    break;
                left -= hist[b];
            }
            s_prefix = prefix | (b << shift), s_mask = mask | (255u << shift), s_want = left;
        }
        __syncthreads();
    }
    /* gather: every key above the threshold, then the threshold's equals
     * with the lowest ids (the host's tie order), over contiguous slices */
    uint32_t kth = s_prefix, equal_wanted = s_want;
    if (tid == 0)
        s_n_gt = 0;
    __syncthreads();
    uint32_t chunk = (vocab + SAMPLE_THREADS - 1) / SAMPLE_THREADS, lo = tid * chunk, hi = min(lo + chunk, vocab);
    double n_equal = 0, ignored;
    row_for_each(row, lo, hi, 1, [&](uint32_t i, float logit) {
        float v = logit / T;
        uint32_t key = order_key(v);
        if (key > kth) {
            uint32_t at = atomicAdd(&s_n_gt, 1u);
            cand_v[at] = v, cand_id[at] = (int32_t)i;
        }
        n_equal += key == kth;
    });
    uint32_t rank = (uint32_t)block_exclusive_scan(n_equal, s_d, &ignored), n_gt = want - equal_wanted;
    for (uint32_t i = lo; i < hi && rank < equal_wanted; i++) {
        float v = row[i] / T;
        if (order_key(v) == kth) {
            cand_v[n_gt + rank] = v, cand_id[n_gt + rank] = (int32_t)i;
            rank++;
        }
    }
    for (uint32_t i = want + tid; i < SAMPLE_CANDS; i += SAMPLE_THREADS)
        cand_v[i] = -INFINITY, cand_id[i] = 0x7fffffff;
    __syncthreads();
    /* bitonic sort: value down, then id up */
    for (uint32_t size = 2; size <= SAMPLE_CANDS; size *= 2)
        for (uint32_t stride = size / 2; stride > 0; stride /= 2) {
            if (tid < SAMPLE_CANDS) {
                uint32_t other = tid ^ stride;
                if (other > tid) {
                    bool a_first =
                        cand_v[tid] > cand_v[other] || (cand_v[tid] == cand_v[other] && cand_id[tid] < cand_id[other]);
                    bool descending = (tid & size) == 0;
                    if (a_first != descending) {
                        float tv = cand_v[tid];
                        int32_t ti = cand_id[tid];
                        cand_v[tid] = cand_v[other], cand_id[tid] = cand_id[other];
                        cand_v[other] = tv, cand_id[other] = ti;
                    }
                }
            }
            __syncthreads();
        }
    if (tid != 0)
        return;
    /* the host's walk over the sorted candidates */
    int32_t n = (int32_t)want;
    float mx = cand_v[0];
    double total = 0;
    if (top_k)
        for (int32_t i = 0; i < n; i++)
            total += exp((double)(cand_v[i] - mx));
    else
        total = full_total;
    if (nucleus) {
        double cum = 0, pmax = exp((double)(cand_v[0] - mx)) / total;
        int32_t kept = 0;
        while (kept < n) {
            double pr = exp((double)(cand_v[kept] - mx)) / total;
            if (kept > 0 && ((p.top_p < 1.0f && cum >= p.top_p) || pr < p.min_p * pmax))
                break;
            cum += pr, kept++;
        }
        if (kept == n && !top_k && (uint32_t)n < vocab) {
            ids[blockIdx.x] = -1; /* the set goes on past the candidates: the host's */
            return;
        }
        n = kept;
        total = 0;
        for (int32_t i = 0; i < n; i++)
            total += exp((double)(cand_v[i] - mx));
    }
    double r = p.uniform * total, acc = 0;
    int32_t token = cand_id[n - 1];
    for (int32_t i = 0; i < n; i++) {
        acc += exp((double)(cand_v[i] - mx));
        if (acc > r) {
            token = cand_id[i];
            break;
        }
    }
    ids[blockIdx.x] = token;
}

#endif
