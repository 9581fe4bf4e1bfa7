/* Sampling rows whose kept set sample_pick_kernel cannot hold: a top-p or
 * min-p nucleus past its SAMPLE_CANDS candidates (flat rows, high-entropy
 * positions), or a top_k above them. The host had drawn these from the
 * copied row, ~6 ms a row (H200 host, 151,936 ids).
 *
 * No sort: every boundary the host finds by walking the sorted tokens
 * (value down, then id up) is where a sum over that order first reaches a
 * threshold, and a radix search finds it without ordering anything:
 *   - top_k: the first token where the count reaches top_k;
 *   - top-p: the first token where the mass reaches top_p of the total
 *     (the host stops after it);
 *   - min-p: a value bound (the host's test, as it makes it);
 *   - the draw: the first token where the mass passes uniform times the
 *     kept total.
 * A search takes the keys' bytes from the top, four passes of summed
 * counts or masses by byte over the cluster (the largest byte whose running
 * sum reaches what is left), and then the rank among equal values by id.
 *
 * Masses are e^(v/T - max) as 64-bit fixed point (wide_scale: 2^44, less
 * past 2^18 ids, so that no sum overflows), summed with
 * integer atomics: exact, so the same row always gives the same token
 * whatever order the threads add in. They differ from the host's double
 * sums by rounding only (~1e-13 of the total), as sample_pick_kernel's
 * sums do.
 *
 * Grid (SAMPLE_PICK_BLOCKS, rows) as clusters of SAMPLE_PICK_BLOCKS, block
 * SAMPLE_THREADS, sample_pick_smem(vocab) bytes of dynamic shared memory
 * with keys_in_smem. A row is this kernel's when sample_pick_kernel left
 * its id at -1; the others return at once. */
#ifndef INFERNO_CUDA_SAMPLE_WIDE_CUH
#define INFERNO_CUDA_SAMPLE_WIDE_CUH

#include "sample.cuh"

/* A weight of 1 in fixed point, for a vocabulary of n ids (at most
 * WIDE_MAX_VOCAB): no sum of a row's weights reaches 2^62 (wide_add). */
#define WIDE_MAX_VOCAB (1u << 20)
__host__ __device__ __forceinline__ double wide_scale(uint32_t n) {
    int bits = 0;
    while ((1u << bits) < n && bits < 31)
        bits++;
    return ldexp(1.0, bits < 18 ? 44 : 62 - bits);
}

/* A token's place in the host's order: its key (order_key(v / T)), then
 * its id; a comes first when its value is larger, or equal with a smaller id. */
struct wide_pos {
    uint32_t key;
    int32_t id;
};
__device__ __forceinline__ bool wide_first(uint32_t ka, int32_t ia, const wide_pos &b) {
    return ka > b.key || (ka == b.key && ia < b.id);
}

/* The radix search's step at shift, by a warp: the largest byte whose
 * running sum (from byte 255 down) reaches *left; *left becomes what is
 * left of it within that byte; false when the whole pass sums below it. */
__device__ __forceinline__ bool wide_step(const unsigned long long *sums, int shift, uint32_t *prefix, uint32_t *mask,
                                          unsigned long long *left, bool *found) {
    uint32_t lane = threadIdx.x % WARP, top = 255 - 8 * lane;
    unsigned long long mine = 0, want = *left;
#pragma unroll
    for (uint32_t k = 0; k < 8; k++)
        mine += sums[top - k];
    unsigned long long incl = warp_inclusive_scan(mine), before = incl - mine;
    unsigned long long all = __shfl_sync(0xffffffffu, incl, WARP - 1);
    bool here = before < want && want <= incl;
    __syncwarp(); /* every lane has read *left */
    if (lane == 0)
        *found = all >= want;
    if (here) {
        unsigned long long rest = want - before;
        uint32_t b = top;
        while (sums[b] < rest)
            rest -= sums[b--];
        *prefix |= b << shift, *mask |= 255u << shift, *left = rest;
    }
    __syncwarp();
    return *found;
}

/* Adds w to byte b's sum in parts, as two 15-bit digits and the rest,
 * each summed by a 32-bit atomic; the digits recombine exactly. No sum
 * overflows: a block adds at most once a key (below 2^17 of them) and the
 * rest sums to the block's mass over 2^30, below 2^32. (64-bit atomics on
 * shared memory are a compare-and-swap loop: with every thread on the one
 * byte of a flat row's keys, a search took ~100 us a pass.) */
__device__ __forceinline__ void wide_add(uint32_t (*parts)[256], uint32_t b, unsigned long long w) {
    if (w & 0x7fff)
        atomicAdd(&parts[0][b], (uint32_t)(w & 0x7fff));
    if ((w >> 15) & 0x7fff)
        atomicAdd(&parts[1][b], (uint32_t)((w >> 15) & 0x7fff));
    if (w >> 30)
        atomicAdd(&parts[2][b], (uint32_t)(w >> 30));
}

__global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_wide_kernel(const float *logits, uint32_t vocab, const sample_row *rows, const sample_slice *slices,
                       bool keys_in_smem, int32_t *ids) {
    namespace cg = cooperative_groups;
    __shared__ unsigned long long sums[4][256]; /* this block's, one array a pass (the others read them) */
    __shared__ uint32_t parts[3][256];          /* a pass's sums as three digits (wide_add) */
    __shared__ unsigned long long total_sums[256];
    __shared__ unsigned long long s_total[2]; /* this block's part of a total (two in turn) */
    __shared__ double s_d[WARP];
    __shared__ uint32_t s_prefix, s_mask, s_ties;
    __shared__ unsigned long long s_left;
    __shared__ bool s_found;
    __shared__ wide_pos s_hit; /* the first block's: a search's token */
    extern __shared__ uint32_t part_keys[];
    pdl_enter();
    if (ids[blockIdx.y] >= 0)
        return; /* the whole cluster: sample_pick_kernel drew this row */
    cg::cluster_group cluster = cg::this_cluster();
    const sample_row p = rows[blockIdx.y];
    const float *row = logits + (size_t)blockIdx.y * vocab;
    const float T = p.temperature, m = sample_row_max(slices + (size_t)blockIdx.y * SAMPLE_SLICES);
    const double scale = wide_scale(vocab);
    uint32_t tid = threadIdx.x, rank = blockIdx.x, part = (vocab + SAMPLE_PICK_BLOCKS - 1) / SAMPLE_PICK_BLOCKS;
    uint32_t part_lo = min(rank * part, vocab), n_part = min(part_lo + part, vocab) - part_lo;
    if (keys_in_smem)
        row_for_each(row, part_lo + tid, part_lo + n_part, SAMPLE_THREADS,
                     [&](uint32_t i, float v) { part_keys[i - part_lo] = order_key(v / T); });
    __syncthreads();
    auto for_keys = [&](uint32_t first, uint32_t end, uint32_t stride, auto f) {
        if (keys_in_smem)
            for (uint32_t j = first; j < end; j += stride)
                f((int32_t)(part_lo + j), part_keys[j]);
        else
            row_for_each(row + part_lo, first, end, stride,
                         [&](uint32_t j, float v) { f((int32_t)(part_lo + j), order_key(v / T)); });
    };
    auto weight = [&](uint32_t key) { return (unsigned long long)(exp((double)(order_value(key) - m)) * scale); };
    /* this thread's contiguous run of the block's part (the tie ranks go in id order) */
    uint32_t chunk = (n_part + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
    uint32_t run_lo = min(tid * chunk, n_part), run_hi = min(run_lo + chunk, n_part);

    /* The first token in the host's order where the running count (mass
     * false) or mass reaches want; false when the row sums below it. */
    auto search = [&](bool mass, unsigned long long want, wide_pos *hit) {
        if (tid == 0)
            s_prefix = 0, s_mask = 0, s_left = want;
        __syncthreads();
        for (int pass = 0; pass < 4; pass++) {
            int shift = 24 - 8 * pass;
            for (uint32_t i = tid; i < 3 * 256; i += SAMPLE_THREADS)
                parts[i / 256][i % 256] = 0;
            __syncthreads();
            /* a thread sums its keys of the two bytes it met last before
             * adding them: a flat row's keys share one or two top bytes,
             * on which the atomics of many rows' blocks queued (H200, 0.6b,
             * top-p 0.95: batch 32 12.2k -> 12.9k tok/s; batch 1 as it was) */
            uint32_t prefix = s_prefix, mask = s_mask, byte0 = 256, byte1 = 256;
            unsigned long long sum0 = 0, sum1 = 0;
            for_keys(tid, n_part, SAMPLE_THREADS, [&](int32_t, uint32_t key) {
                if ((key & mask) != prefix)
                    return;
                uint32_t byte = (key >> shift) & 255;
                unsigned long long w = mass ? weight(key) : 1ull;
                if (byte == byte0)
                    sum0 += w;
                else if (byte == byte1)
                    sum1 += w;
                else {
                    if (sum1)
                        wide_add(parts, byte1, sum1);
                    byte1 = byte0, sum1 = sum0, byte0 = byte, sum0 = w;
                }
            });
            if (sum0)
                wide_add(parts, byte0, sum0);
            if (sum1)
                wide_add(parts, byte1, sum1);
            __syncthreads();
            for (uint32_t i = tid; i < 256; i += SAMPLE_THREADS)
                sums[pass][i] =
                    ((unsigned long long)parts[2][i] << 30) + ((unsigned long long)parts[1][i] << 15) + parts[0][i];
            cluster.sync();
            for (uint32_t i = tid; i < 256; i += SAMPLE_THREADS) {
                unsigned long long sum = 0;
                for (uint32_t b = 0; b < SAMPLE_PICK_BLOCKS; b++)
                    sum += cluster.map_shared_rank(sums[pass], b)[i];
                total_sums[i] = sum;
            }
            __syncthreads();
            if (tid < WARP)
                wide_step(total_sums, shift, &s_prefix, &s_mask, &s_left, &s_found);
            __syncthreads();
            if (!s_found) /* the same in every block: the sums are the cluster's */
                return false;
        }
        /* the tokens of that value weigh the same: the crossing is the
         * j-th of them by id */
        uint32_t kth = s_prefix;
        unsigned long long unit = mass ? weight(kth) : 1ull, j = (s_left + unit - 1) / unit - 1;
        uint32_t n_equal = 0;
        for_keys(run_lo, run_hi, 1, [&](int32_t, uint32_t key) { n_equal += key == kth; });
        double block_equal;
        unsigned long long before = (unsigned long long)block_exclusive_scan(n_equal, s_d, &block_equal);
        if (tid == 0)
            s_ties = (uint32_t)block_equal;
        cluster.sync();
        for (uint32_t b = 0; b < rank; b++)
            before += *cluster.map_shared_rank(&s_ties, b);
        if (n_equal && before <= j && j < before + n_equal)
            for_keys(run_lo, run_hi, 1, [&](int32_t id, uint32_t key) {
                if (key == kth && before++ == j)
                    *cluster.map_shared_rank(&s_hit, 0) = wide_pos{kth, id};
            });
        cluster.sync();
        *hit = *cluster.map_shared_rank(&s_hit, 0);
        return true;
    };
    /* the cluster's sum of the weights of the tokens where keep(key, id) */
    int turn = 0;
    auto total = [&](auto keep) {
        unsigned long long mine = 0;
        for_keys(tid, n_part, SAMPLE_THREADS, [&](int32_t id, uint32_t key) {
            if (keep(key, id))
                mine += weight(key);
        });
        for (uint32_t o = WARP / 2; o > 0; o /= 2)
            mine += __shfl_xor_sync(0xffffffffu, mine, o);
        unsigned long long *slot = &s_total[turn];
        turn ^= 1;
        if (tid == 0)
            *slot = 0;
        __syncthreads();
        if (tid % WARP == 0)
            atomicAdd(slot, mine);
        cluster.sync();
        unsigned long long all = 0;
        for (uint32_t b = 0; b < SAMPLE_PICK_BLOCKS; b++)
            all += *cluster.map_shared_rank(slot, b);
        return all;
    };

    /* the kept set: the tokens up to end in the host's order, that pass min-p */
    wide_pos end = {0, (int32_t)vocab}; /* past every token */
    bool top_k = sample_top_k(p, vocab);
    if (top_k)
        search(false, (unsigned long long)p.top_k, &end);
    unsigned long long total0 = total([&](uint32_t key, int32_t id) {
        return !wide_first(end.key, end.id, {key, id});
    });
    if (p.top_p > 0.0f && p.top_p < 1.0f) {
        double want = ceil((double)p.top_p * (double)total0);
        wide_pos last;
        if (search(true, want < 1.0 ? 1ull : (unsigned long long)want, &last) && wide_first(last.key, last.id, end))
            end = last;
    }
    /* min-p as the host tests it: e^(v - max) / total < min_p * (1 / total) */
    double host_total = (double)total0 / scale, pmax = 1.0 / host_total;
    auto kept = [&](uint32_t key, int32_t id) {
        return !wide_first(end.key, end.id, {key, id}) &&
               !(p.min_p > 0.0f && exp((double)(order_value(key) - m)) / host_total < (double)p.min_p * pmax);
    };
    unsigned long long total_kept = total(kept);
    wide_pos token;
    if (total_kept == 0) /* nothing passes min-p (min_p > 1): the host keeps the first */
        search(false, 1ull, &token);
    else {
        double r = floor(p.uniform * (double)total_kept) + 1.0;
        search(true, r > (double)total_kept ? total_kept : (unsigned long long)r, &token);
    }
    if (rank == 0 && tid == 0)
        ids[blockIdx.y] = token.id;
    cluster.sync(); /* no block leaves while another may read its shared memory */
}

#endif
