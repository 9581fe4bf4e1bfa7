/* Sampling on the GPU: model/sampler.c's sampler_apply_edits and
 * sampler_draw for every logits row of a step, so that only token ids
 * cross PCIe.
 *
 * The same choices as on the host, in the same order and arithmetic
 * (float logits / temperature, double exp and sums), so that a seeded
 * request draws the same tokens on either engine but for sums rounded in
 * another order:
 *   - greedy: the first largest logit;
 *   - temperature alone: the draw walks the vocabulary in id order, which
 *     the GPU does as prefix sums, over slices of ids and then within one;
 *   - with top-k, top-p or min-p: a radix select finds the SAMPLE_CANDS
 *     (or top_k) largest, a bitonic sort orders them as the host does
 *     (value down, then id up), and one thread walks them. When top-p or
 *     min-p would keep more than SAMPLE_CANDS tokens, or top_k is larger,
 *     the row's id is -1 and sample_wide_kernel (sample_wide.cuh) draws it.
 *
 * Three kernels, each over every row of the step (sampling.cu's sample_rows):
 *   sample_edit_kernel: SAMPLE_SLICES blocks a row, each on a contiguous
 *     slice of ids, apply the row's edits that fall in their slice and
 *     leave the slice's largest logit / T (greedy rows: its argmax_key);
 *   sample_sum_kernel: the same blocks leave their slice's sum of
 *     e^(v/T - max) with the row's max, and for rows that select
 *     candidates the counts of their keys' top byte (the radix select's
 *     first pass);
 *   sample_pick_kernel: a cluster of blocks a row draws the token from
 *     those (its first block alone, but for rows that select).
 * As one block a row, a step took ~120 us at batch 1 with temperature
 * alone and ~280 us with top-k (H200, 151,936 ids, ncu): one SM computed
 * all of a row's double exponentials and keys, pass after pass. */
#ifndef INFERNO_CUDA_SAMPLE_CUH
#define INFERNO_CUDA_SAMPLE_CUH

#include <cooperative_groups.h>

#include "device.cuh"

#define SAMPLE_THREADS       1024 /* sample_pick_kernel's blocks */
#define SAMPLE_SLICES        64   /* blocks a row in the edit and sum kernels: two a lane of a warp */
#define SAMPLE_SLICE_THREADS 256
#define SAMPLE_CANDS         256
static_assert(SAMPLE_SLICES == 2 * WARP, "sample_pick_kernel's scan gives each lane two slices");

/* One row's sample_plan on the device; its edits are at bias_at / seen_at
 * in the step's edit_ids and edit_values (a seen id's value: its count). */
struct sample_row {
    float temperature, top_p, min_p;
    int32_t top_k;
    float repetition, presence, frequency;
    double uniform;
    int32_t bias_at, n_bias, seen_at, n_seen;
};

/* What a block of the edit and sum kernels leaves for its slice of a row
 * (device [rows][SAMPLE_SLICES]). */
struct sample_slice {
    double sum;             /* of e^(v/T - the row's max) */
    float max;              /* the largest v/T */
    unsigned long long key; /* greedy rows: the slice's argmax_key */
};

/* Whether a row keeps its top_k largest, or a nucleus (top-p, min-p). */
__host__ __device__ __forceinline__ bool sample_top_k(const sample_row &p, uint32_t vocab) {
    return p.top_k > 0 && (uint32_t)p.top_k < vocab;
}
__host__ __device__ __forceinline__ bool sample_nucleus(const sample_row &p) {
    return (p.top_p > 0.0f && p.top_p < 1.0f) || p.min_p > 0.0f;
}

/* Whether a row draws from the largest candidates (top-k, top-p, min-p)
 * (false: temperature alone, or a top_k past them, sample_wide_kernel's). */
__device__ __forceinline__ bool sample_selects(const sample_row &p, uint32_t vocab) {
    bool top_k = sample_top_k(p, vocab);
    return (top_k || sample_nucleus(p)) && !(top_k && p.top_k > SAMPLE_CANDS);
}

/* Whether the pick may leave a row to sample_wide_kernel: a top_k past
 * its candidates, or a nucleus without top_k (which may outgrow them). */
__host__ __device__ __forceinline__ bool sample_may_be_wide(const sample_row &p, uint32_t vocab) {
    return p.temperature > 0.0f && (sample_top_k(p, vocab) ? p.top_k > SAMPLE_CANDS : sample_nucleus(p));
}

/* Slice z's ids, [*lo, *hi). */
__device__ __forceinline__ void sample_slice_ids(uint32_t vocab, uint32_t z, uint32_t *lo, uint32_t *hi) {
    uint32_t chunk = (vocab + SAMPLE_SLICES - 1) / SAMPLE_SLICES;
    *lo = min(z * chunk, vocab), *hi = min(*lo + chunk, vocab);
}

/* The row's largest v/T, from its slices (in every lane of the warp). */
__device__ __forceinline__ float sample_row_max(const sample_slice *s) {
    uint32_t lane = threadIdx.x % WARP;
    return warp_max(fmaxf(s[lane].max, s[lane + WARP].max));
}

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

/* Counts byte (key >> shift) & 255 of the keys (order_key(v / T)) of
 * row[first], row[first + stride], ... below end that match prefix under
 * mask into hist (shared memory). (Counting a warp's equal bytes with one
 * atomic, __match_any_sync, was slower: the pass is bound by its
 * instructions, not by the atomics.) */
__device__ __forceinline__ void hist_pass(const float *row, uint32_t first, uint32_t end, uint32_t stride, float T,
                                          uint32_t prefix, uint32_t mask, int shift, uint32_t *hist) {
    row_for_each(row, first, end, stride, [&](uint32_t, float v) {
        uint32_t key = order_key(v / T);
        if ((key & mask) == prefix)
            atomicAdd(&hist[(key >> shift) & 255], 1u);
    });
}

/* The inclusive prefix sum of v over the warp's lanes, in lane order. */
template <typename T> __device__ __forceinline__ T warp_inclusive_scan(T v) {
    uint32_t lane = threadIdx.x % WARP;
    for (uint32_t o = 1; o < WARP; o *= 2) {
        T up = __shfl_up_sync(0xffffffffu, v, o);
        if (lane >= o)
            v += up;
    }
    return v;
}

/* The exclusive prefix sum of v over the threads, in thread order; *total
 * gets the sum of all. scratch: 32 doubles of shared memory. */
__device__ __forceinline__ double block_exclusive_scan(double v, double *scratch, double *total) {
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, n_warps = blockDim.x / WARP;
    double incl = warp_inclusive_scan(v);
    __syncthreads();
    if (lane == WARP - 1)
        scratch[warp] = incl;
    __syncthreads();
    double before = 0, all = 0;
    for (int w = 0; w < n_warps; w++) {
        before += w < warp ? scratch[w] : 0.0;
        all += scratch[w];
    }
    *total = all;
    return before + incl - v;
}

/* Applies row blockIdx.y's edits within slice blockIdx.x in place (the
 * pick and sample_wide_kernel read them) and leaves the slice's max or argmax key;
 * block 0 of a row clears the row's top-byte counts (hist: [rows][256]).
 * Grid (SAMPLE_SLICES, rows), block SAMPLE_SLICE_THREADS. */
__global__ void __launch_bounds__(SAMPLE_SLICE_THREADS)
    sample_edit_kernel(float *logits, uint32_t vocab, const sample_row *rows, const int32_t *edit_ids,
                       const float *edit_values, sample_slice *slices, uint32_t *hist) {
    __shared__ unsigned long long best;
    pdl_enter();
    const sample_row p = rows[blockIdx.y];
    float *row = logits + (size_t)blockIdx.y * vocab;
    uint32_t tid = threadIdx.x, lo, hi;
    sample_slice_ids(vocab, blockIdx.x, &lo, &hi);
    auto mine = [&](int32_t id) { return id >= 0 && (uint32_t)id >= lo && (uint32_t)id < hi; };
    for (uint32_t i = tid; blockIdx.x == 0 && i < 256; i += blockDim.x)
        hist[(size_t)blockIdx.y * 256 + i] = 0;
    /* the bias in list order (an id may repeat), then the penalties (distinct ids) */
    if (tid == 0) {
        best = 0;
        for (int32_t i = 0; i < p.n_bias; i++)
            if (mine(edit_ids[p.bias_at + i]))
                row[edit_ids[p.bias_at + i]] += edit_values[p.bias_at + i];
    }
    __syncthreads();
    bool repetition = p.repetition != 1.0f && p.repetition > 0.0f, occurrence = p.presence != 0 || p.frequency != 0;
    for (int32_t i = (int32_t)tid; i < p.n_seen; i += (int32_t)blockDim.x) {
        int32_t id = edit_ids[p.seen_at + i];
        float count = edit_values[p.seen_at + i];
        if (!mine(id))
            continue;
        float l = row[id];
        if (repetition)
            l = l > 0 ? l / p.repetition : l * p.repetition;
        if (occurrence && count != 0.0f)
            l -= p.presence + p.frequency * count;
        row[id] = l;
    }
    __syncthreads();
    sample_slice *s = slices + (size_t)blockIdx.y * SAMPLE_SLICES + blockIdx.x;
    if (p.temperature <= 0.0f) {
        unsigned long long key = 0;
        row_for_each(row, lo + tid, hi, blockDim.x, [&](uint32_t i, float v) {
            unsigned long long k = argmax_key(v, i);
            key = k > key ? k : key;
        });
        key = warp_max_key(key);
        if (tid % WARP == 0)
            atomicMax(&best, key);
        __syncthreads();
        if (tid == 0)
            s->key = best;
        return;
    }
    float m = -INFINITY;
    row_for_each(row, lo + tid, hi, blockDim.x, [&](uint32_t, float v) { m = fmaxf(m, v / p.temperature); });
    m = block_max(m);
    if (tid == 0)
        s->max = m;
}

/* Slice blockIdx.x's sum of e^(v/T - max) for row blockIdx.y, and its
 * keys' top bytes counted into the row's hist where the row selects. Grid
 * (SAMPLE_SLICES, rows), block SAMPLE_SLICE_THREADS. */
__global__ void __launch_bounds__(SAMPLE_SLICE_THREADS)
    sample_sum_kernel(const float *logits, uint32_t vocab, const sample_row *rows, sample_slice *slices,
                      uint32_t *hist) {
    __shared__ double scratch[WARP];
    __shared__ uint32_t counts[256];
    pdl_enter();
    const sample_row p = rows[blockIdx.y];
    if (p.temperature <= 0.0f)
        return;
    const float *row = logits + (size_t)blockIdx.y * vocab;
    sample_slice *s = slices + (size_t)blockIdx.y * SAMPLE_SLICES;
    const float T = p.temperature, m = sample_row_max(s);
    uint32_t tid = threadIdx.x, lo, hi;
    sample_slice_ids(vocab, blockIdx.x, &lo, &hi);
    double mine = 0, total;
    row_for_each(row, lo + tid, hi, blockDim.x, [&](uint32_t, float v) { mine += exp((double)(v / T - m)); });
    block_exclusive_scan(mine, scratch, &total);
    if (tid == 0)
        s[blockIdx.x].sum = total;
    if (!sample_selects(p, vocab))
        return;
    for (uint32_t i = tid; i < 256; i += blockDim.x)
        counts[i] = 0;
    __syncthreads();
    hist_pass(row, lo + tid, hi, blockDim.x, T, 0, 0, 24, counts);
    __syncthreads();
    for (uint32_t i = tid; i < 256; i += blockDim.x)
        if (counts[i])
            atomicAdd(&hist[(size_t)blockIdx.y * 256 + i], counts[i]);
}

/* The radix select's step at shift, by a warp (every lane calls it):
 * the byte where the want-th largest key lies, given the pass's counts
 * (hist: 256 of them); the first largest byte from the top whose count
 * reaches what is left of want (or byte 0). prefix, mask and want move on
 * into *prefix_out, *mask_out and *want_out. Lane l sums bytes 255 - 8l
 * down to 248 - 8l, a scan over the lanes finds the lane where want is
 * reached, and that lane walks its 8 (one thread walking down from 255
 * took up to 256 dependent loads a pass). */
__device__ __forceinline__ void radix_step(const uint32_t *hist, int shift, uint32_t prefix, uint32_t mask,
                                           uint32_t want, uint32_t *prefix_out, uint32_t *mask_out,
                                           uint32_t *want_out) {
    uint32_t lane = threadIdx.x % WARP, top = 255 - 8 * lane, mine = 0;
#pragma unroll
    for (uint32_t k = 0; k < 8; k++)
        mine += hist[top - k];
    uint32_t incl = warp_inclusive_scan(mine), before = incl - mine;
    __syncwarp(); /* every lane has read want (which may be *want_out) */
    if ((before < want && want <= incl) || (lane == WARP - 1 && incl < want)) {
        uint32_t left = want - before, b = top;
        for (;; b--) {
            if (hist[b] >= left || b == 0)
                break;
            left -= hist[b];
        }
        *prefix_out = prefix | b << shift, *mask_out = mask | 255u << shift, *want_out = left;
    }
}

/* A float from its order_key. */
__device__ __forceinline__ float order_value(uint32_t key) {
    return __uint_as_float(key & 0x80000000u ? key & 0x7fffffffu : ~key);
}

/* ids[r] = the token of logits row r by rows[r], from its slices. Grid
 * (SAMPLE_PICK_BLOCKS, rows) as clusters of SAMPLE_PICK_BLOCKS, block
 * SAMPLE_THREADS: greedy rows and temperature alone take the cluster's
 * first block only; rows that select split the radix select's passes and
 * the gather over the cluster's blocks, each a contiguous part of the ids
 * (one block alone took ~200 us for a top-k row, H200, 151,936 ids: a pass
 * is ~150 keys a thread, each a division and an atomic), and the first
 * block sorts and walks the candidates. With keys_in_smem, each block
 * computes its part's keys once into sample_pick_smem(vocab) bytes of
 * dynamic shared memory (a top-k pick 60 -> 38 us at batch 1; but at 32
 * rows, batch 32 fell 13.5k -> 12.1k tok/s: sampling.cu's sample_rows
 * asks for it for few rows only). */
#define SAMPLE_PICK_BLOCKS 8
#define SAMPLE_SMEM_ROWS   8 /* the most rows for which sample_pick_kernel keeps keys in shared memory */
static inline size_t sample_pick_smem(uint32_t vocab) {
    return (size_t)(vocab + SAMPLE_PICK_BLOCKS - 1) / SAMPLE_PICK_BLOCKS * sizeof(uint32_t);
}
__global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_pick_kernel(const float *logits, uint32_t vocab, const sample_row *rows, const sample_slice *slices,
                       const uint32_t *row_hist, bool keys_in_smem, int32_t *ids) {
    namespace cg = cooperative_groups;
    __shared__ double s_d[WARP];
    __shared__ uint32_t hist[3][256];    /* this block's counts in the passes at shifts 16, 8, 0 (others read them) */
    __shared__ uint32_t total_hist[256]; /* the cluster's, of the current pass */
    __shared__ float cand_v[SAMPLE_CANDS];
    __shared__ int32_t cand_id[SAMPLE_CANDS];
    __shared__ double cand_e[SAMPLE_CANDS]; /* e^(v - the largest v) of the sorted candidates */
    __shared__ uint32_t s_prefix, s_mask, s_want, s_n_gt, s_n_equal;
    __shared__ int32_t s_token, s_slice;
    __shared__ double s_before, s_total;
    pdl_enter();
    const sample_row p = rows[blockIdx.y];
    const float *row = logits + (size_t)blockIdx.y * vocab;
    const sample_slice *s = slices + (size_t)blockIdx.y * SAMPLE_SLICES;
    uint32_t tid = threadIdx.x, lane = tid % WARP;
    int32_t *id_out = ids + blockIdx.y;
    bool top_k = sample_top_k(p, vocab), nucleus = sample_nucleus(p);
    if (blockIdx.x > 0 && !sample_selects(p, vocab))
        return; /* the first block's alone */
    if (p.temperature <= 0.0f) {
        if (tid < WARP) {
            unsigned long long key = warp_max_key(max(s[lane].key, s[lane + WARP].key));
            if (tid == 0)
                *id_out = key ? (int32_t) ~(uint32_t)key : 0; /* argmax_key: the id's complement */
        }
        return;
    }
    const float T = p.temperature, m = sample_row_max(s);
    /* the row's total and the slice whose ids the draw lands in: lane l
     * sums slices 2l and 2l + 1, then a scan over the lanes */
    if (tid < WARP) {
        double a = s[2 * lane].sum, b = s[2 * lane + 1].sum, incl = warp_inclusive_scan(a + b);
        double total = __shfl_sync(0xffffffffu, incl, WARP - 1), before = incl - (a + b), r = p.uniform * total;
        if (tid == 0)
            s_slice = -1, s_total = total;
        __syncwarp();
        if (before <= r && r < before + a)
            s_slice = (int32_t)(2 * lane), s_before = before;
        else if (before + a <= r && r < before + a + b)
            s_slice = (int32_t)(2 * lane + 1), s_before = before + a;
    }
    __syncthreads();

    if (!top_k && !nucleus) { /* the draw over the whole vocabulary, in id order */
        if (s_slice < 0) {    /* rounding put the draw past every slice */
            if (tid == 0)
                *id_out = (int32_t)vocab - 1;
            return;
        }
        uint32_t slice_lo, slice_hi;
        sample_slice_ids(vocab, (uint32_t)s_slice, &slice_lo, &slice_hi);
        uint32_t chunk = (slice_hi - slice_lo + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
        uint32_t lo = min(slice_lo + tid * chunk, slice_hi), hi = min(lo + chunk, slice_hi);
        double mine = 0, ignored, r = p.uniform * s_total;
        for (uint32_t i = lo; i < hi; i++)
            mine += exp((double)(row[i] / T - m));
        double before = s_before + block_exclusive_scan(mine, s_d, &ignored);
        if (tid == 0)
            s_token = (int32_t)slice_hi - 1;
        __syncthreads();
        if (lo < hi && before <= r && r < before + mine) {
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
            *id_out = s_token;
        return;
    }
    if (!sample_selects(p, vocab)) {
        if (tid == 0)
            *id_out = -1; /* top_k more than the candidates: sample_wide_kernel's */
        return;
    }
    /* from here on every block of the cluster, each on its part of the ids */
    cg::cluster_group cluster = cg::this_cluster();
    uint32_t rank = blockIdx.x, part = (vocab + SAMPLE_PICK_BLOCKS - 1) / SAMPLE_PICK_BLOCKS;
    uint32_t part_lo = min(rank * part, vocab), part_hi = min(part_lo + part, vocab);
    uint32_t want = top_k ? (uint32_t)p.top_k : min((uint32_t)SAMPLE_CANDS, vocab);
    double full_total = s_total; /* for top-p and min-p without top-k (the host's total) */
    /* this block's part of the keys, in shared memory: one division a
     * key (the passes and the gather had each computed them again: a
     * top-k pick was 60 us, bound by its instructions) */
    extern __shared__ uint32_t part_keys[]; /* [part], where keys_in_smem */
    uint32_t n_part = part_hi - part_lo;
    if (keys_in_smem)
        row_for_each(row, part_lo + tid, part_hi, SAMPLE_THREADS,
                     [&](uint32_t i, float v) { part_keys[i - part_lo] = order_key(v / T); });
    auto key_at = [&](uint32_t j) { return keys_in_smem ? part_keys[j] : order_key(row[part_lo + j] / T); };
    /* f(j, key j) for j = first, first + stride, ... below end, in that order */
    auto for_keys = [&](uint32_t first, uint32_t end, uint32_t stride, auto f) {
        if (keys_in_smem)
            for (uint32_t j = first; j < end; j += stride)
                f(j, part_keys[j]);
        else
            row_for_each(row + part_lo, first, end, stride, [&](uint32_t j, float v) { f(j, order_key(v / T)); });
    };
    for (uint32_t i = tid; i < 256; i += SAMPLE_THREADS)
        total_hist[i] = row_hist[(size_t)blockIdx.y * 256 + i]; /* the first pass's counts: sample_sum_kernel's */
    if (tid == 0)
        s_n_gt = 0;
    for (uint32_t i = want + tid; rank == 0 && i < SAMPLE_CANDS; i += SAMPLE_THREADS)
        cand_v[i] = -INFINITY, cand_id[i] = 0x7fffffff;
    __syncthreads();
    if (tid < WARP)
        radix_step(total_hist, 24, 0, 0, want, &s_prefix, &s_mask, &s_want);
    /* radix select, 8 bits a pass from the top: the key of the want-th
     * largest; every block counts its part, then sums the cluster's counts
     * and takes the same step */
    for (int pass = 0; pass < 3; pass++) {
        int shift = 16 - 8 * pass;
        for (uint32_t i = tid; i < 256; i += SAMPLE_THREADS)
            hist[pass][i] = 0;
        __syncthreads();
        uint32_t prefix = s_prefix, mask = s_mask;
        for_keys(tid, n_part, SAMPLE_THREADS, [&](uint32_t, uint32_t key) {
            if ((key & mask) == prefix)
                atomicAdd(&hist[pass][(key >> shift) & 255], 1u);
        });
        cluster.sync();
        for (uint32_t i = tid; i < 256; i += SAMPLE_THREADS) {
            uint32_t sum = 0;
            for (uint32_t b = 0; b < SAMPLE_PICK_BLOCKS; b++)
                sum += cluster.map_shared_rank(hist[pass], b)[i];
            total_hist[i] = sum;
        }
        __syncthreads();
        if (tid < WARP)
            radix_step(total_hist, shift, prefix, mask, s_want, &s_prefix, &s_mask, &s_want);
        __syncthreads();
    }
    /* gather into the first block's candidates: every key above the
     * threshold, then the threshold's equals with the lowest ids (the
     * host's tie order), each thread a contiguous run of its block's part */
    uint32_t kth = s_prefix, equal_wanted = s_want, n_gt = want - equal_wanted;
    float *cand_v0 = cluster.map_shared_rank(cand_v, 0);
    int32_t *cand_id0 = cluster.map_shared_rank(cand_id, 0);
    uint32_t *n_gt0 = cluster.map_shared_rank(&s_n_gt, 0);
    uint32_t chunk = (n_part + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
    uint32_t lo = min(tid * chunk, n_part), hi = min(lo + chunk, n_part);
    uint32_t n_equal = 0;
    for_keys(lo, hi, 1, [&](uint32_t j, uint32_t key) {
        if (key > kth) {
            uint32_t at = atomicAdd(n_gt0, 1u);
            cand_v0[at] = order_value(key), cand_id0[at] = (int32_t)(part_lo + j);
        }
        n_equal += key == kth;
    });
    double block_equal;
    uint32_t equal_rank = (uint32_t)block_exclusive_scan(n_equal, s_d, &block_equal);
    if (tid == 0)
        s_n_equal = (uint32_t)block_equal;
    cluster.sync(); /* every block's count of equals is in place */
    for (uint32_t b = 0; b < rank; b++)
        equal_rank += *cluster.map_shared_rank(&s_n_equal, b);
    for (uint32_t j = lo; n_equal > 0 && j < hi && equal_rank < equal_wanted; j++)
        if (key_at(j) == kth) {
            cand_v0[n_gt + equal_rank] = order_value(kth), cand_id0[n_gt + equal_rank] = (int32_t)(part_lo + j);
            equal_rank++;
        }
    cluster.sync(); /* the candidates are in place; no block reads another's shared memory after this */
    if (rank > 0)
        return;
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
    /* the host's walk over the sorted candidates, by thread 0, their
     * weights computed first by all (one at a time, a top-p walk's 768
     * double exponentials took tens of us) */
    if (tid < SAMPLE_CANDS)
        cand_e[tid] = exp((double)(cand_v[tid] - cand_v[0]));
    __syncthreads();
    if (tid != 0)
        return;
    int32_t n = (int32_t)want;
    double total = 0;
    if (top_k)
        for (int32_t i = 0; i < n; i++)
            total += cand_e[i];
    else
        total = full_total;
    if (nucleus) {
        double cum = 0, pmax = cand_e[0] / total;
        int32_t kept = 0;
        while (kept < n) {
            double pr = cand_e[kept] / total;
            if (kept > 0 && ((p.top_p < 1.0f && cum >= p.top_p) || pr < p.min_p * pmax))
                break;
            cum += pr, kept++;
        }
        if (kept == n && !top_k && (uint32_t)n < vocab) {
            *id_out = -1; /* the set goes on past the candidates: sample_wide_kernel's */
            return;
        }
        n = kept;
        total = 0;
        for (int32_t i = 0; i < n; i++)
            total += cand_e[i];
    }
    double r = p.uniform * total, acc = 0;
    int32_t token = cand_id[n - 1];
    for (int32_t i = 0; i < n; i++) {
        acc += cand_e[i];
        if (acc > r) {
            token = cand_id[i];
            break;
        }
    }
    *id_out = token;
}
#endif
