/* The CUDA engine's attention kernels (worker-cuda/step.cu runs them):
 * attention_kernel for decode (a block per token), attention_prefill_kernel
 * for prompts (a block per tile of tokens). Both read the paged KV cache
 * that qkv_head_finish (device.cuh) writes. */
#ifndef INFERNO_CUDA_ATTENTION_CUH
#define INFERNO_CUDA_ATTENTION_CUH

#include <cooperative_groups.h>

#include "device.cuh"

/* Causal attention over each token's cached positions 0..pos[t]
 * (flash-decoding): block (g, t, z) takes the GSUB query heads of head
 * group g (GSUB divides the GQA group), which share one KV head, so each key and value row is read once
 * for all of them, and the z-th of gridDim.z equal slices of the
 * positions. Its 4 warps split the slice, ATTN_BATCH positions at a time,
 * each keeping an online softmax per head; the block merges them. With one slice the result is final;
 * otherwise each slice leaves (max, sum, unnormalized output) in part, and
 * the last block of a (group, token) to finish merges them (attention_merge:
 * no kernel of its own, so no launch and no kernel boundary), or, where the
 * slices are launched as one cluster, the cluster merges them in shared
 * memory (attention_cluster_merge). Lane l holds elements
 * l * EPL .. l * EPL + EPL - 1 of a head (EPL = head_dim / 32 rounded up),
 * so that a key or value row is one vector load a lane. Grid
 * (n_heads / GSUB, T, slices), block 128. */
#define ATTN_WARPS 4
#define ATTN_BATCH 8

/* EPL consecutive KV elements as floats: vector loads (16 bytes of float,
 * 8 of half for EPL 4) when EPL is 2, 4 or 8 and the row holds them all. */
template <int EPL> __device__ __forceinline__ void kv_load_row(const float *p, bool whole, float out[EPL]) {
    if (whole && EPL % 4 == 0) {
#pragma unroll
        for (int i = 0; i < EPL; i += 4) {
            float4 v = *(const float4 *)(p + i);
            out[i] = v.x, out[i + 1] = v.y, out[i + 2] = v.z, out[i + 3] = v.w;
        }
    } else if (whole && EPL == 2) {
        float2 v = *(const float2 *)p;
        out[0] = v.x, out[1] = v.y;
    } else {
#pragma unroll
        for (int i = 0; i < EPL; i++)
            out[i] = p[i];
    }
}

template <int EPL> __device__ __forceinline__ void kv_load_row(const __half *p, bool whole, float out[EPL]) {
    if (whole && EPL % 4 == 0) {
#pragma unroll
        for (int i = 0; i < EPL; i += 4) {
            uint2 raw = *(const uint2 *)(p + i);
            float2 a = __half22float2(*(const __half2 *)&raw.x), b = __half22float2(*(const __half2 *)&raw.y);
            out[i] = a.x, out[i + 1] = a.y, out[i + 2] = b.x, out[i + 3] = b.y;
        }
    } else if (whole && EPL == 2) {
        float2 v = __half22float2(*(const __half2 *)p);
        out[0] = v.x, out[1] = v.y;
    } else {
#pragma unroll
        for (int i = 0; i < EPL; i++)
            out[i] = __half2float(p[i]);
    }
}

/* Four fp8 (e4m3) KV elements, packed in a word, as floats: two
 * conversions to half pairs (one instruction each on sm_89 and later). */
__device__ __forceinline__ float4 fp8x4_to_float4(uint32_t w) {
    __half2 lo = __half2(__nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(w & 0xffffu), __NV_E4M3));
    __half2 hi = __half2(__nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(w >> 16), __NV_E4M3));
    float2 a = __half22float2(lo), b = __half22float2(hi);
    return make_float4(a.x, a.y, b.x, b.y);
}

struct attention_args {
    const float *q;                          /* [T][q_dim] */
    const void *k_cache, *v_cache;           /* [slots][kv_dim] of KV (float, half or fp8) */
    const int32_t *pos, *table_off, *tables; /* per token: position, its table in tables */
    float *out;                              /* [T][q_dim], or NULL: */
    __nv_bfloat16 *out_hi, *out_lo;          /* [T][q_dim] each: the output split (bf16_split) for the tensor cores */
    float *part;                             /* [T][n_heads][slices][head_dim + 2] */
    unsigned *done;                          /* [T][n_heads / GSUB]: slices finished, 0 between kernels */
    uint32_t n_heads, group, head_dim, q_dim, kv_dim, block_size;
    uint32_t window; /* a token sees its `window` latest positions; 0 = all (sliding-window layers) */
    float scale;
    uint32_t tokens, slices; /* attention_tc_kernel's: the step's tokens, and slices (at most) of a token */
};

/* Element `at` of the output: as float32, or split into hi and lo. */
__device__ __forceinline__ void attention_store(const attention_args &a, size_t at, float o) {
    if (a.out)
        a.out[at] = o;
    else
        bf16_split(o, a.out_hi[at], a.out_lo[at]);
}

/* Combines head h's slices for token t: out = sum_z e^(m_z - M) o_z /
 * sum_z e^(m_z - M) l_z. The first warp weighs the slices (one a lane, so
 * at most 32), then every thread sums its elements over them. weight: 32
 * floats of shared memory. Other blocks wrote part: read with __ldcg. */
template <bool NAMED = false>
__device__ void attention_merge(const attention_args &a, uint32_t t, uint32_t h, uint32_t slices, float *weight) {
    uint32_t hd = a.head_dim, lane = threadIdx.x % WARP;
    const float *part = a.part + ((size_t)t * a.n_heads + h) * slices * (hd + 2);
    block_sync<NAMED>(); /* weight may still be read for the previous head */
    if (threadIdx.x < WARP) {
        float mz = lane < slices ? __ldcg(part + lane * (hd + 2)) : -INFINITY;
        float m_all = warp_max(mz), w = mz == -INFINITY ? 0.0f : expf(mz - m_all);
        float l_all = warp_sum(lane < slices ? w * __ldcg(part + lane * (hd + 2) + 1) : 0.0f);
        weight[lane] = w / l_all;
    }
    block_sync<NAMED>();
    for (uint32_t i = threadIdx.x; i < hd; i += blockDim.x) {
        float o = 0.0f;
        for (uint32_t z = 0; z < slices; z++)
            o += weight[z] * __ldcg(part + z * (hd + 2) + 2 + i);
        attention_store(a, (size_t)t * a.q_dim + h * hd + i, o);
    }
}

/* Whether this block's slices were launched as one cluster. */
__device__ __forceinline__ bool attention_clustered(uint32_t slices) {
    return slices > 1 && cooperative_groups::this_cluster().num_blocks() == slices;
}

/* The two halves of a cluster barrier: a clustered kernel arrives at its
 * start, and attention_block_finish waits before its first remote store
 * (a block's shared memory may be written by another only once the block
 * has started), by when every block has long arrived. */
__device__ __forceinline__ void attention_cluster_arrive(uint32_t slices) {
    if (attention_clustered(slices))
        asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
}

__device__ __forceinline__ void attention_cluster_wait() { asm volatile("barrier.cluster.wait.aligned;" ::: "memory"); }

/* The slices of a (head group, token) launched as one thread-block cluster
 * (gridDim.z = the cluster's size) merge in shared memory instead of
 * through part and a global counter: element e of the group's output
 * (gsub * head_dim of them) belongs to block e / blockDim.x of the
 * cluster, and every block stores its unnormalized element e and its
 * (max, sum) per head straight into that block's shared memory
 * (distributed shared memory: remote stores, which wait on nothing; the
 * owner then reads only its own shared memory). After one cluster
 * barrier the owners weigh the slices and store their elements; the
 * others leave. (The owners had read every slice's (max, sum) and
 * elements from the other blocks, a round trip a slice, between two
 * cluster barriers; H200, 0.6b bf16, f16 KV, alternating runs: batch 1
 * 1,305-1,332 -> 1,320-1,347 tok/s, batch 2 1,780-1,798 -> 1,806-1,816,
 * 8 3,138-3,146 -> 3,157-3,161. The cluster merge itself had replaced
 * attention_merge's chain of a fence, a global counter and two L2 round
 * trips: batch 1, 12.7 -> 11.4 us under ncu.) Dynamic shared memory:
 * attention_merge_bytes; gsub * head_dim <= slices * blockDim.x, gsub *
 * slices <= blockDim.x, slices a power of 2 up to 32. */
__host__ __device__ __forceinline__ size_t attention_merge_bytes(uint32_t slices, uint32_t gsub, uint32_t threads) {
    return ((size_t)slices * threads + (size_t)slices * gsub * 2) * sizeof(float);
}

/* Block z's share of the merge: its unnormalized output o of element e,
 * and (thread 0, for head g) its (max, sum), into their owner's
 * shared memory (merge_in: [slices][blockDim.x] elements, then
 * [slices][gsub][2] maxima and sums). */
__device__ __forceinline__ void attention_cluster_push(float *merge_in, uint32_t z, uint32_t e, float o) {
    cooperative_groups::this_cluster().map_shared_rank(merge_in, e / blockDim.x)[z * blockDim.x + e % blockDim.x] = o;
}

__device__ __forceinline__ void attention_cluster_push_ml(float *merge_in, uint32_t z, uint32_t slices, uint32_t gsub,
                                                          uint32_t g, uint32_t n_elems, float m, float l) {
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    uint32_t owners = (n_elems + blockDim.x - 1) / blockDim.x;
    for (uint32_t r = 0; r < owners; r++) {
        float *ml = cluster.map_shared_rank(merge_in, r) + slices * blockDim.x + (z * gsub + g) * 2;
        ml[0] = m, ml[1] = l;
    }
}

/* The owners' part, after every block's attention_cluster_push. */
__device__ void attention_cluster_merge(const attention_args &a, uint32_t t, uint32_t h0, uint32_t gsub,
                                        const float *merge_in, uint32_t slices) {
    namespace cg = cooperative_groups;
    __shared__ float weight[8][32]; /* [g][z]: slice z's share of head g's output */
    cg::cluster_group cluster = cg::this_cluster();
    cluster.sync(); /* every slice's pushes are in place; nothing remote is touched after this */
    uint32_t i = threadIdx.x, g = i / slices, z = i % slices, hd = a.head_dim, n = gsub * hd;
    uint32_t first = cluster.block_rank() * blockDim.x, e = first + i;
    if (first >= n) /* no element of this block's */
        return;
    /* thread (g, z) weighs slice z of head g; the slices of a head are
     * `slices` consecutive lanes, so the shuffles stay among them */
    float mz = -INFINITY, lz = 0.0f;
    if (g < gsub) {
        const float *ml_z = merge_in + slices * blockDim.x + (z * gsub + g) * 2;
        mz = ml_z[0], lz = ml_z[1];
    }
    float m_all = mz;
    for (uint32_t o = slices / 2; o > 0; o /= 2)
        m_all = fmaxf(m_all, __shfl_xor_sync(0xffffffffu, m_all, o));
    float w = mz == -INFINITY ? 0.0f : expf(mz - m_all), l_all = w * lz;
    for (uint32_t o = slices / 2; o > 0; o /= 2)
        l_all += __shfl_xor_sync(0xffffffffu, l_all, o);
    if (g < gsub)
        weight[g][z] = w / l_all;
    __syncthreads();
    if (e >= n)
        return;
    uint32_t h = e / hd, k = e % hd;
    float o = 0.0f;
    for (uint32_t s = 0; s < slices; s++)
        o += weight[h][s] * merge_in[s * blockDim.x + i];
    attention_store(a, (size_t)t * a.q_dim + (h0 + h) * hd + k, o);
}

/* The end of a decode attention block (WARPS warps): merges its warps'
 * (max, sum, output) for each of its gsub heads h0.. (m_w, l_w:
 * [WARPS][gsub]; acc_w: [WARPS][gsub][acc_ld], in shared memory, written
 * before the call) into the output, or with several slices into part as
 * slice z, where the last slice to finish (counted in *done) merges them.
 * Slices launched as one cluster merge through shared memory instead
 * (attention_cluster_merge; acc_w's warp-0 rows then hold the block's
 * output). */
template <int WARPS, bool NAMED = false>
__device__ void attention_block_finish(const attention_args &a, uint32_t t, uint32_t h0, uint32_t gsub,
                                       const float *m_w, const float *l_w, float *acc_w, uint32_t acc_ld, float *weight,
                                       uint32_t z, uint32_t slices, unsigned *done) {
    extern __shared__ float merge_in[]; /* clustered: attention_merge_bytes */
    uint32_t hd = a.head_dim;
    /* the persistent kernel (NAMED) is never launched as clusters */
    bool clustered = !NAMED && attention_clustered(slices);
    if (clustered)
        attention_cluster_wait();
    block_sync<NAMED>();
    for (uint32_t g = 0; g < gsub; g++) {
        float m_all = -INFINITY, l_all = 0.0f;
#pragma unroll
        for (int w = 0; w < WARPS; w++)
            m_all = fmaxf(m_all, m_w[w * gsub + g]);
#pragma unroll
        for (int w = 0; w < WARPS; w++)
            l_all += m_w[w * gsub + g] == -INFINITY ? 0.0f : l_w[w * gsub + g] * expf(m_w[w * gsub + g] - m_all);
        uint32_t h = h0 + g;
        float *part = a.part + (((size_t)t * a.n_heads + h) * slices + z) * (hd + 2);
        for (uint32_t i = threadIdx.x; i < hd; i += blockDim.x) {
            float o = 0.0f;
#pragma unroll
            for (int w = 0; w < WARPS; w++)
                o += m_w[w * gsub + g] == -INFINITY
                         ? 0.0f
                         : acc_w[(w * gsub + g) * acc_ld + i] * expf(m_w[w * gsub + g] - m_all);
            if (slices == 1)
                attention_store(a, (size_t)t * a.q_dim + h * hd + i, o / l_all);
            else if (clustered)
                attention_cluster_push(merge_in, z, g * hd + i, o);
            else
                part[2 + i] = o;
        }
        if (slices > 1 && threadIdx.x == 0) {
            if (clustered)
                attention_cluster_push_ml(merge_in, z, slices, gsub, g, gsub * hd, m_all, l_all);
            else
                part[0] = m_all, part[1] = l_all;
        }
    }
    if (clustered) {
        attention_cluster_merge(a, t, h0, gsub, merge_in, slices);
        return;
    }
    if (slices == 1 || !block_is_last<NAMED>(done, slices))
        return;
    for (uint32_t g = 0; g < gsub; g++)
        attention_merge<NAMED>(a, t, h0 + g, slices, weight);
}

/* One online-softmax step of a head over B positions: their scores s
 * (those of j < n_in count; the rest are padding) and this lane's E
 * elements of their value rows; m, l and acc are the running maximum, sum
 * of weights and weighted sum of values. Scores in natural-log units, or
 * in powers of 2 with BASE2 (exp2f is a few instructions, expf many more). */
template <int B, int E, bool BASE2>
__device__ __forceinline__ void softmax_step(const float (&s)[B], int n_in, const float (&v)[B][E], float &m, float &l,
                                             float (&acc)[E]) {
    float m_new = m;
#pragma unroll
    for (int j = 0; j < B; j++)
        if (j < n_in)
            m_new = fmaxf(m_new, s[j]);
    if (m_new == -INFINITY) /* no position yet */
        return;
    float corr = BASE2 ? exp2f(m - m_new) : expf(m - m_new);
    l *= corr;
#pragma unroll
    for (int i = 0; i < E; i++)
        acc[i] *= corr;
#pragma unroll
    for (int j = 0; j < B; j++) {
        float w = j < n_in ? (BASE2 ? exp2f(s[j] - m_new) : expf(s[j] - m_new)) : 0.0f;
        l += w;
#pragma unroll
        for (int i = 0; i < E; i++)
            acc[i] += w * v[j][i];
    }
    m = m_new;
}

template <int EPL, int GSUB, typename KV>
__global__ void __launch_bounds__(ATTN_WARPS *WARP) attention_kernel(attention_args a) {
    __shared__ float m_w[ATTN_WARPS][GSUB], l_w[ATTN_WARPS][GSUB], acc_w[ATTN_WARPS][GSUB][EPL * WARP];
    __shared__ float weight[WARP];
    attention_cluster_arrive(gridDim.z);
    pdl_enter();
    uint32_t t = blockIdx.y, lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, hd = a.head_dim;
    uint32_t h0 = blockIdx.x * GSUB, kvh = h0 / a.group, slices = gridDim.z;
    const int32_t *table = a.tables + a.table_off[t];
    int n_pos = a.pos[t] + 1, first = a.window && n_pos > (int)a.window ? n_pos - (int)a.window : 0;
    int len = (n_pos - first + (int)slices - 1) / (int)slices;
    int begin = first + (int)blockIdx.z * len, end = min(begin + len, n_pos);
    /* vector loads need every row start aligned to the vector: kv_dim and head_dim multiples of EPL */
    bool vec_ok = a.kv_dim % EPL == 0 && hd % EPL == 0;
    float q[GSUB][EPL], acc[GSUB][EPL], m[GSUB], l[GSUB];
#pragma unroll
    for (int g = 0; g < GSUB; g++) {
        m[g] = -INFINITY, l[g] = 0.0f;
#pragma unroll
        for (int i = 0; i < EPL; i++) {
            uint32_t d = lane * EPL + i;
            q[g][i] = d < hd ? a.q[(size_t)t * a.q_dim + (h0 + g) * hd + d] * a.scale : 0.0f;
            acc[g][i] = 0.0f;
        }
    }
    /* ATTN_BATCH positions per step: their loads all in flight at once, one
     * softmax rescale for the lot */
    for (int p0 = begin + (int)warp * ATTN_BATCH; p0 < end; p0 += ATTN_WARPS * ATTN_BATCH) {
        float kr[ATTN_BATCH][EPL], vr[ATTN_BATCH][EPL];
#pragma unroll
        for (int j = 0; j < ATTN_BATCH; j++) {
            int p = p0 + j;
            size_t slot = p < end ? (size_t)table[p / a.block_size] * a.block_size + p % a.block_size : 0;
            const KV *k = (const KV *)a.k_cache + slot * a.kv_dim + kvh * hd + lane * EPL;
            const KV *v = (const KV *)a.v_cache + slot * a.kv_dim + kvh * hd + lane * EPL;
            if (p < end && lane * EPL + EPL <= hd) { /* the usual case: the lane's EPL elements, vector loads */
                kv_load_row<EPL>(k, vec_ok, kr[j]);
                kv_load_row<EPL>(v, vec_ok, vr[j]);
            } else {
#pragma unroll
                for (int i = 0; i < EPL; i++) {
                    bool in = p < end && lane * EPL + i < hd;
                    kr[j][i] = in ? kv_load(k[i]) : 0.0f, vr[j][i] = in ? kv_load(v[i]) : 0.0f;
                }
            }
        }
#pragma unroll
        for (int g = 0; g < GSUB; g++) {
            float s[ATTN_BATCH];
#pragma unroll
            for (int j = 0; j < ATTN_BATCH; j++) {
                s[j] = 0.0f;
#pragma unroll
                for (int i = 0; i < EPL; i++)
                    s[j] += q[g][i] * kr[j][i];
            }
#pragma unroll
            for (int j = 0; j < ATTN_BATCH; j++)
                s[j] = warp_sum(s[j]);
            softmax_step<ATTN_BATCH, EPL, false>(s, end - p0, vr, m[g], l[g], acc[g]);
        }
    }
#pragma unroll
    for (int g = 0; g < GSUB; g++) {
        if (lane == 0)
            m_w[warp][g] = m[g], l_w[warp][g] = l[g];
#pragma unroll
        for (int i = 0; i < EPL; i++)
            acc_w[warp][g][lane * EPL + i] = acc[g][i];
    }
    attention_block_finish<ATTN_WARPS>(a, t, h0, GSUB, &m_w[0][0], &l_w[0][0], &acc_w[0][0][0], EPL * WARP, weight,
                                       blockIdx.z, gridDim.z, a.done + (size_t)t * gridDim.x + blockIdx.x);
}

/* attention_kernel for head sizes 16, 32, 64 and 128 (256 works, but was
 * slower than attention_kernel on Gemma 3's shapes), with a group of
 * head_dim / 8 lanes per position: each lane holds 8 elements of a key or
 * value row (one 16-byte load of half, two of float, an 8-byte one of
 * fp8), so a warp takes 32 * 8 / head_dim positions at once and a score
 * needs log2(head_dim / 8) shuffles, where attention_kernel spends 5 on
 * each. Each lane group
 * keeps its own online softmax over a batch of positions at a time (in
 * powers of 2); the groups of a warp merge at the end, then the warps and
 * slices as in attention_kernel (same grid, block and part protocol). The
 * H200 at 256 sequences of 512 positions, half KV: 404 us a layer with
 * attention_kernel (bound by instructions), 192 us with this one at 4
 * positions a batch, 146 us (78% of the memory's peak) at 8 positions,
 * held as loaded, 4 blocks an SM; 141 us (81%) with batches that lie in
 * one KV block. Float KV: 247 us, 91% of peak; fp8: 117 us, bound by
 * issue. */
#define ATTL_BATCH 4
#define LOG2E      1.4426950408889634f
#define LN2        0.6931471805599453f

/* 8 consecutive KV elements (16-byte aligned) as floats, or zeros when !in. */
__device__ __forceinline__ void kv_load8(const float *p, bool in, float out[8]) {
    float4 a = in ? *(const float4 *)p : make_float4(0, 0, 0, 0), b = in ? *(const float4 *)(p + 4) : a;
    out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w, out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
}

__device__ __forceinline__ void kv_load8(const __half *p, bool in, float out[8]) {
    uint4 raw = in ? *(const uint4 *)p : make_uint4(0, 0, 0, 0);
    const __half2 *h = (const __half2 *)&raw;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 f = __half22float2(h[i]);
        out[2 * i] = f.x, out[2 * i + 1] = f.y;
    }
}

/* Brings the line holding p into this SM's L1 (no registers held). */
__device__ __forceinline__ void prefetch_l1(const void *p) { asm volatile("prefetch.global.L1 [%0];" ::"l"(p)); }

/* One head's scores of ATTL_BATCH positions (lane groups of `lanes` lanes,
 * 8 elements a lane, summed by shuffles; q pre-scaled into powers of 2) and
 * its online-softmax step over them (n_in of them real). */
__device__ __forceinline__ void lanes_softmax_step(const float (&q)[8], const float (&kr)[ATTL_BATCH][8],
                                                   const float (&vr)[ATTL_BATCH][8], uint32_t lanes, int n_in, float &m,
                                                   float &l, float (&acc)[8]) {
    float s[ATTL_BATCH];
#pragma unroll
    for (int j = 0; j < ATTL_BATCH; j++) {
        s[j] = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++)
            s[j] += q[i] * kr[j][i];
        for (uint32_t o = lanes / 2; o > 0; o /= 2)
            s[j] += __shfl_xor_sync(0xffffffffu, s[j], o);
    }
    softmax_step<ATTL_BATCH, 8, true>(s, n_in, vr, m, l, acc);
}

/* The lane groups of a warp into one, for one head: every lane ends with
 * the warp's maximum (powers of 2), sum and its 8 output elements. */
__device__ __forceinline__ void lanes_merge_groups(uint32_t lanes, float &m, float &l, float (&acc)[8]) {
    for (uint32_t o = lanes; o < WARP; o *= 2) {
        float m_o = __shfl_xor_sync(0xffffffffu, m, o), l_o = __shfl_xor_sync(0xffffffffu, l, o);
        float m_all = fmaxf(m, m_o);
        float mine = m == -INFINITY ? 0.0f : exp2f(m - m_all);
        float theirs = m_o == -INFINITY ? 0.0f : exp2f(m_o - m_all);
        l = l * mine + l_o * theirs;
#pragma unroll
        for (int i = 0; i < 8; i++)
            acc[i] = acc[i] * mine + __shfl_xor_sync(0xffffffffu, acc[i], o) * theirs;
        m = m_all;
    }
}

/* A lane's 8 elements of a key or value row as loaded: one 16-byte word
 * of half, two of float, one 8-byte word of fp8; kv_unpack8 converts them
 * where they are used. */
template <typename KV> struct kv_raw8 {
    typedef uint4 word;
    static const int N = sizeof(KV) / 2;
    word w[N];
};
template <> struct kv_raw8<__nv_fp8_e4m3> {
    typedef uint2 word;
    static const int N = 1;
    word w[N];
};

__device__ __forceinline__ void kv_unpack8(const kv_raw8<__nv_fp8_e4m3> &r, float (&out)[8]) {
    float4 a = fp8x4_to_float4(r.w[0].x), b = fp8x4_to_float4(r.w[0].y);
    out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w, out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
}

__device__ __forceinline__ void kv_unpack8(const kv_raw8<__half> &r, float (&out)[8]) {
    const __half2 *h = (const __half2 *)&r.w[0];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 f = __half22float2(h[i]);
        out[2 * i] = f.x, out[2 * i + 1] = f.y;
    }
}

__device__ __forceinline__ void kv_unpack8(const kv_raw8<float> &r, float (&out)[8]) {
    const float *f = (const float *)&r.w[0];
#pragma unroll
    for (int i = 0; i < 8; i++)
        out[i] = f[i];
}

/* The online-softmax step of GSUB heads over B positions of a lane group
 * (n_in of them real), from the rows as loaded: all the scores first, so
 * that the shuffles of every head and position are in flight together,
 * then each value row is converted once for all the heads. q is
 * pre-scaled into powers of 2. */
template <int GSUB, int B, typename KV>
__device__ __forceinline__ void lanes_softmax_rows(const float (&q)[GSUB][8], const kv_raw8<KV> (&k)[B],
                                                   const kv_raw8<KV> (&v)[B], uint32_t lanes, int lo, int hi,
                                                   float (&m)[GSUB], float (&l)[GSUB], float (&acc)[GSUB][8]) {
    float s[GSUB][B];
#pragma unroll
    for (int j = 0; j < B; j++) {
        float kf[8];
        kv_unpack8(k[j], kf);
#pragma unroll
        for (int g = 0; g < GSUB; g++) {
            s[g][j] = 0.0f;
#pragma unroll
            for (int i = 0; i < 8; i++)
                s[g][j] += q[g][i] * kf[i];
        }
    }
    for (uint32_t o = lanes / 2; o > 0; o /= 2)
#pragma unroll
        for (int j = 0; j < B; j++)
#pragma unroll
            for (int g = 0; g < GSUB; g++)
                s[g][j] += __shfl_xor_sync(0xffffffffu, s[g][j], o);
#pragma unroll
    for (int g = 0; g < GSUB; g++) { /* s becomes the positions' weights */
        float m_new = m[g];
#pragma unroll
        for (int j = 0; j < B; j++)
            if (j >= lo && j < hi)
                m_new = fmaxf(m_new, s[g][j]);
        float corr = m_new == -INFINITY ? 1.0f : exp2f(m[g] - m_new);
        l[g] *= corr;
#pragma unroll
        for (int i = 0; i < 8; i++)
            acc[g][i] *= corr;
#pragma unroll
        for (int j = 0; j < B; j++) {
            s[g][j] = j >= lo && j < hi && m_new != -INFINITY ? exp2f(s[g][j] - m_new) : 0.0f;
            l[g] += s[g][j];
        }
        m[g] = m_new;
    }
#pragma unroll
    for (int j = 0; j < B; j++) {
        if (j < lo || j >= hi) /* rows outside the range may be stale cache rows: not even 0 x them */
            continue;
        float vf[8];
        kv_unpack8(v[j], vf);
#pragma unroll
        for (int g = 0; g < GSUB; g++)
#pragma unroll
            for (int i = 0; i < 8; i++)
                acc[g][i] += s[g][j] * vf[i];
    }
}

/* Up to 2 heads a block: 4 blocks an SM (at most 128 registers), 5 for
 * fp8 (102); the H200 at 256 sequences, half KV: 166 registers and 3
 * blocks an SM took 162 us a layer, 128 and 4 take 146 (78% of the
 * memory's peak); fp8: 129 us at 4 blocks, 123 at 5. */
template <int GSUB, typename KV, bool FINISH>
__device__ __forceinline__ void attention_lanes(const attention_args &a, const rope_args &ra) {
    /* positions a lane group takes at once: 8 of half or fp8, 4 of float
     * (the same 256 bytes of loads in flight a lane, and registers; the
     * H200 at 256 sequences, half KV: 146 us a layer with 8, 152 with 4;
     * fp8 at 16 took 145 us against 128 at 8); 4 past 2 heads a block,
     * whose scores and outputs need the registers */
    constexpr int B = sizeof(KV) <= 2 && GSUB <= 2 ? 2 * ATTL_BATCH : ATTL_BATCH;
    __shared__ float m_w[ATTN_WARPS][GSUB], l_w[ATTN_WARPS][GSUB], acc_w[ATTN_WARPS][GSUB][256];
    __shared__ float weight[WARP];
    uint32_t t = blockIdx.y, lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, hd = a.head_dim;
    uint32_t lanes = hd / 8, sub = lane % lanes, grp = lane / lanes, n_grp = WARP / lanes;
    uint32_t h0 = blockIdx.x * GSUB, kvh = h0 / a.group, slices = gridDim.z;
    const int32_t *table = a.tables + a.table_off[t];
    int n_pos = a.pos[t] + 1, first = a.window && n_pos > (int)a.window ? n_pos - (int)a.window : 0;
    int len = (n_pos - first + (int)slices - 1) / (int)slices;
    int begin = first + (int)blockIdx.z * len, end = min(begin + len, n_pos);
    /* the warp's lane groups take B consecutive positions each, batches
     * starting at multiples of B (positions before begin are left out like
     * those from end on); the loop test is the warp's, so that every lane
     * reaches the shuffles */
    int per_warp = (int)n_grp * B, stride = ATTN_WARPS * per_warp;
    /* a position's slot: shifts for the usual power-of-two block size (a
     * division costs more than the rest of a position's addressing) */
    uint32_t bs = a.block_size, bs_shift = __ffs(bs) - 1;
    bool bs_pow2 = (bs & (bs - 1)) == 0;
    auto slot_of = [&](int p) {
        uint32_t blk = bs_pow2 ? (uint32_t)p >> bs_shift : (uint32_t)p / bs;
        uint32_t in_blk = bs_pow2 ? (uint32_t)p & (bs - 1) : (uint32_t)p % bs;
        return (size_t)table[blk] * bs + in_blk;
    };
    /* With a power-of-two block size of at least B, a batch lies in one
     * block: one table lookup and rows kv_dim apart, all of them loaded
     * (the block is the sequence's, or block 0 for a batch wholly past
     * end) and the ones outside [begin, end) left out of the sums. Each
     * position's own addressing and bounds had been most of the ~40% of
     * the kernel's instructions that are integer (fp8 KV: issue-bound, 72%
     * of issue slots busy). */
    bool one_block = bs_pow2 && bs >= (uint32_t)B;
    int w_first = (begin & ~(B - 1)) + (int)warp * per_warp;
    typedef typename kv_raw8<KV>::word word;
    auto fetch = [&](int p0, kv_raw8<KV>(&kr)[B], kv_raw8<KV>(&vr)[B]) {
        if (one_block) {
            size_t at = (p0 < end ? slot_of(p0) : 0) * a.kv_dim + kvh * hd + sub * 8;
            const KV *k = (const KV *)a.k_cache + at, *v = (const KV *)a.v_cache + at;
#pragma unroll
            for (int j = 0; j < B; j++)
#pragma unroll
                for (int i = 0; i < kv_raw8<KV>::N; i++)
                    kr[j].w[i] = ((const word *)(k + (size_t)j * a.kv_dim))[i],
                    vr[j].w[i] = ((const word *)(v + (size_t)j * a.kv_dim))[i];
            return;
        }
#pragma unroll
        for (int j = 0; j < B; j++) {
            int p = p0 + j;
            bool in = p >= begin && p < end;
            size_t at = (in ? slot_of(p) : 0) * a.kv_dim + kvh * hd + sub * 8;
            const word *k = (const word *)((const KV *)a.k_cache + at), *v = (const word *)((const KV *)a.v_cache + at);
#pragma unroll
            for (int i = 0; i < kv_raw8<KV>::N; i++)
                kr[j].w[i] = in ? k[i] : word{}, vr[j].w[i] = in ? v[i] : word{};
        }
    };
    /* the cache rows of the first batch are fetched into L1 while the
     * previous kernel (the q|k|v projection, which stores this step's
     * rows) finishes: no sequence has more than T (gridDim.y) tokens in a
     * step, so a token's positions before pos + 1 - T were stored by
     * earlier steps; positions and block tables come from the host.
     * (Loading them into registers here cost 12 registers, and batch-256
     * speed.) */
    int settled = min(end, n_pos - (int)gridDim.y);
#pragma unroll
    for (int j = 0; j < B; j++) {
        int p = w_first + (int)grp * B + j;
        if (p >= begin && p < settled) {
            size_t at = slot_of(p) * a.kv_dim + kvh * hd + sub * 8;
            prefetch_l1((const KV *)a.k_cache + at), prefetch_l1((const KV *)a.v_cache + at);
        }
    }
    attention_cluster_arrive(slices);
    pdl_enter();
    const float *q_in = a.q + (size_t)t * a.q_dim + h0 * hd; /* the block's heads, [GSUB][hd] */
    float *q_s = &acc_w[0][0][0];
    if (FINISH) {
        /* the step's q|k|v heads of this block, a warp each: its query
         * heads into shared memory (acc_w's, free until the end); the KV
         * head's key and value row for the new position into the cache,
         * by each block whose slice holds it (the same bits from each),
         * before any of its warps reads that row */
        uint32_t n_kv = a.kv_dim / hd;
        for (uint32_t k = warp; k < GSUB + 2; k += ATTN_WARPS) {
            if (k >= GSUB && end != n_pos)
                break;
            uint32_t j = k < GSUB ? h0 + k : k == GSUB ? a.n_heads + kvh : a.n_heads + n_kv + kvh;
            float out[4] = {}, out2[2], out1[1];
            if (hd == 128)
                qkv_head_finish_warp<4>(ra, j, t, out);
            else if (hd == 64)
                qkv_head_finish_warp<2>(ra, j, t, out2), out[0] = out2[0], out[1] = out2[1];
            else
                qkv_head_finish_warp<1>(ra, j, t, out1), out[0] = out1[0];
#pragma unroll
            for (uint32_t e = 0; e < 4; e++)
                if (k < GSUB && lane + WARP * e < hd)
                    q_s[k * hd + lane + WARP * e] = out[e];
        }
        __syncthreads();
        q_in = q_s;
    }
    float q[GSUB][8], acc[GSUB][8], m[GSUB], l[GSUB];
#pragma unroll
    for (int g = 0; g < GSUB; g++) {
        m[g] = -INFINITY, l[g] = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++)
            q[g][i] = q_in[g * hd + sub * 8 + i] * a.scale * LOG2E, acc[g][i] = 0.0f;
    }
    if (FINISH)
        __syncthreads(); /* q is read before any warp's output overwrites it */
    trace_mark(0);
    for (int w0 = w_first; w0 < end; w0 += stride) {
        int p0 = w0 + (int)grp * B;
        kv_raw8<KV> kr[B], vr[B];
        fetch(p0, kr, vr);
        lanes_softmax_rows<GSUB, B, KV>(q, kr, vr, lanes, begin - p0, end - p0, m, l, acc);
    }
    /* the lane groups of the warp into one */
#pragma unroll
    for (int g = 0; g < GSUB; g++) {
        lanes_merge_groups(lanes, m[g], l[g], acc[g]);
        if (lane == 0) /* the maximum back in natural-log units, as attention_block_finish's */
            m_w[warp][g] = m[g] * LN2, l_w[warp][g] = l[g];
        if (grp == 0)
#pragma unroll
            for (int i = 0; i < 8; i++)
                acc_w[warp][g][sub * 8 + i] = acc[g][i];
    }
    trace_mark(1);
    attention_block_finish<ATTN_WARPS>(a, t, h0, GSUB, &m_w[0][0], &l_w[0][0], &acc_w[0][0][0], 256, weight, blockIdx.z,
                                       gridDim.z, a.done + (size_t)t * gridDim.x + blockIdx.x);
    trace_mark(2);
}

template <int GSUB, typename KV>
__global__ void __launch_bounds__(ATTN_WARPS *WARP, GSUB > 2          ? 1
                                                    : sizeof(KV) == 1 ? 5
                                                                      : 4) attention_lanes_kernel(attention_args a) {
    attention_lanes<GSUB, KV, false>(a, rope_args{});
}

/* attention_lanes_kernel that first finishes its heads of the q|k|v
 * product (qkv_head_finish_warp: bias, q/k norm, RoPE, the new key and
 * value into the cache), for steps of one token a sequence (no block needs
 * a row that another block of the grid stores) past the GEMV sizes, where
 * it saves qk_rope_warp_kernel's launch. */
template <int GSUB, typename KV>
__global__ void __launch_bounds__(ATTN_WARPS *WARP, GSUB > 2          ? 1
                                                    : sizeof(KV) == 1 ? 5
                                                                      : 4)
    attention_lanes_finish_kernel(attention_args a, rope_args ra) {
    attention_lanes<GSUB, KV, true>(a, ra);
}

/* Causal attention for prompts (flash-attention style, on the tensor
 * cores): block (kv head, tile) takes a tile of up to ATTP_ROWS / group
 * consecutive tokens of one sequence, with the `group` query heads that
 * share the kv head: ATTP_ROWS query rows, 16 a warp. It walks the tile's
 * key positions ATTP_KEYS at a time; the keys and values of those
 * positions are read into shared memory once for all the rows, and each
 * warp computes S = Q K^T and O += P V for its rows with mma.sync
 * (m16n8k16, bf16 in, float32 accumulate), keeping an online softmax per
 * row in registers. Every operand is split into a bf16 high part and the
 * bf16 rounding of the remainder, and a product is hi*hi + hi*lo + lo*hi:
 * ~16 mantissa bits, close to float32 (the GEMMs' split, one more term).
 * A tile with more than ATTP_SLICE_KEYS positions is split into up to
 * gridDim.z slices of them, so that no block walks a long prefix alone
 * while others idle: each slice leaves (max, sum, unnormalized output) per
 * row in part, and the last to finish merges them, as attention_kernel.
 * tiles: [n][2] (first token, tokens). Grid (n_kv_heads, n_tiles, slices
 * up to ATTP_MAX_SLICES), block 128, attp_shape<HD>::SMEM bytes of dynamic
 * shared memory. The H200 at 512 tokens (0.6b): 117 us a layer in float32
 * on the CUDA cores, bound by shared-memory traffic; 79 us on the tensor
 * cores; 51-53 us once the Q loads and the merge's loads were issued
 * together rather than one round trip each, and fragments came by
 * ldmatrix (V untransposed, .trans). */
#define ATTP_ROWS       64
#define ATTP_KEYS       32

/* Shared memory: K and V as [key][dim], each as hi and lo bf16, rows
 * padded by 8 so that the 8 rows of an ldmatrix hit distinct banks; then
 * two buffers of K and V rows as the cache holds them, filled by cp.async a
 * tile ahead. */
template <int HD> struct attp_shape {
    static const int LD = HD + 8;
    static const size_t TILES = (size_t)4 * ATTP_KEYS * LD * 2;
    static const size_t STAGE = (size_t)ATTP_KEYS * HD * 4; /* one buffer's K or V rows as read (float at most) */
    static const size_t SMEM = TILES + 4 * STAGE;
};

__device__ __forceinline__ float4 kv_load4(const float *p) { return *(const float4 *)p; }
__device__ __forceinline__ float4 kv_load4(const __nv_fp8_e4m3 *p) { return fp8x4_to_float4(*(const uint32_t *)p); }
__device__ __forceinline__ float4 kv_load4(const __half *p) {
    uint2 raw = *(const uint2 *)p;
    float2 a = __half22float2(*(const __half2 *)&raw.x), b = __half22float2(*(const __half2 *)&raw.y);
    return make_float4(a.x, a.y, b.x, b.y);
}

/* 16 bytes global -> shared without registers (sm_80), and the waits. */
__device__ __forceinline__ void cp_async16(void *smem, const void *global) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"((uint32_t)__cvta_generic_to_shared(smem)),
                 "l"(global));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

/* Four 8x8 bf16 matrices from shared memory, lane l giving the address of
 * row l % 8 of matrix l / 8: r[i] is matrix i, rows g = lane / 4 and
 * columns 2 (lane % 4) and the next (as a B fragment wants K^T), or with
 * trans its transpose (as it wants V). */
__device__ __forceinline__ void ldmatrix4(uint32_t r[4], const uint16_t *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"((uint32_t)__cvta_generic_to_shared(p)));
}
__device__ __forceinline__ void ldmatrix4_trans(uint32_t r[4], const uint16_t *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"((uint32_t)__cvta_generic_to_shared(p)));
}

template <int HD, typename KV>
__global__ void __launch_bounds__(128) attention_prefill_kernel(attention_args a, const int32_t *tiles) {
    typedef attp_shape<HD> S;
    const int NK = ATTP_KEYS / 8, ND = HD / 8, KS = HD / 16; /* key chunks, output dim chunks, k16 steps of a dot */
    extern __shared__ float4 smem4[];
    uint16_t *k_hi = (uint16_t *)smem4, *k_lo = k_hi + ATTP_KEYS * S::LD;
    uint16_t *v_hi = k_lo + ATTP_KEYS * S::LD, *v_lo = v_hi + ATTP_KEYS * S::LD;
    char *stage = (char *)smem4 + S::TILES;
    /* Up to pdl_enter only what the host staged (tiles, positions, block
     * tables) is read: the q|k|v kernel before this one is still running. */
    int tid = threadIdx.x, warp = tid / WARP, lane = tid % WARP, g = lane / 4, t4 = lane % 4;
    int kvh = blockIdx.x, group = (int)a.group;
    /* this lane's row for ldmatrix: K matrices are (keys 8 n.., dims 16 s..) and
     * (.., 16 s + 8..) for chunks n = 2 n2, 2 n2 + 1; V's (keys 16 j.., dims 8 d..)
     * and (16 j + 8.., ..) for d = 2 d2, 2 d2 + 1 */
    int mat = lane / 8, k_lane = (8 * (mat / 2) + lane % 8) * S::LD + 8 * (mat % 2);
    int v_lane = (8 * (mat % 2) + lane % 8) * S::LD + 8 * (mat / 2);
    int t0 = tiles[2 * blockIdx.y], n_rows = tiles[2 * blockIdx.y + 1] * group;
    const int32_t *table = a.tables + a.table_off[t0];
    int pos_last = a.pos[t0 + n_rows / group - 1], first = 0;
    if (a.window && a.pos[t0] + 1 > (int)a.window)
        first = a.pos[t0] + 1 - (int)a.window;
    /* this block's slice of the tile's positions first..pos_last */
    int n_keys = pos_last + 1 - first;
    int slices = min((int)gridDim.z, (n_keys + ATTP_SLICE_KEYS - 1) / ATTP_SLICE_KEYS);
    int len = ((n_keys + slices - 1) / slices + ATTP_KEYS - 1) / ATTP_KEYS * ATTP_KEYS;
    int begin = first + (int)blockIdx.z * len, end = min(begin + len, pos_last + 1);
    if ((int)blockIdx.z >= slices)
        return;
    /* this thread's rows: warp * 16 + g (half 0) and + 8 (half 1); row r is token
     * t0 + r / group, query head kvh * group + r % group */
    int qrow[2], tok_pos[2], tok_first[2];
    for (int h = 0; h < 2; h++) {
        qrow[h] = warp * 16 + g + 8 * h;
        tok_pos[h] = qrow[h] < n_rows ? a.pos[t0 + qrow[h] / group] : -1;
        tok_first[h] = a.window && tok_pos[h] + 1 > (int)a.window ? tok_pos[h] + 1 - (int)a.window : 0;
    }
    bool busy = warp * 16 < n_rows;
    /* K/V rows: thread tid fetches position p0 + tid / 4 of each tile, its
     * cache offset looked up a tile ahead */
    auto kv_at = [&](int p) {
        return p < end
                   ? ((size_t)table[p / a.block_size] * a.block_size + p % a.block_size) * a.kv_dim + (size_t)kvh * HD
                   : 0;
    };
    size_t at_next = kv_at(begin + tid / 4);
    pdl_enter();
    /* tile p0's rows into stage buffer buf: 4 threads a key, 16 bytes each at a time */
    const int CHUNKS = HD * (int)sizeof(KV) / 16;
    auto fetch = [&](int p0, int buf) {
        int j = tid / 4, p = p0 + j;
        char *ks = stage + ((size_t)buf * 2 * ATTP_KEYS + j) * HD * sizeof(KV), *vs = ks + ATTP_KEYS * HD * sizeof(KV);
        if (p < end) {
            const char *kg = (const char *)((const KV *)a.k_cache + at_next),
                       *vg = (const char *)((const KV *)a.v_cache + at_next);
            for (int c = tid % 4; c < CHUNKS; c += 4)
                cp_async16(ks + 16 * c, kg + 16 * c), cp_async16(vs + 16 * c, vg + 16 * c);
        } else
            for (int c = tid % 4; c < CHUNKS; c += 4)
                *(uint4 *)(ks + 16 * c) = make_uint4(0, 0, 0, 0), *(uint4 *)(vs + 16 * c) = make_uint4(0, 0, 0, 0);
        cp_async_commit();
        at_next = kv_at(p + ATTP_KEYS);
    };
    fetch(begin, 0); /* in flight while Q loads */
    /* Q fragments, scaled into log2 units: step s, register i holds row half
     * i % 2, dims 16 s + 8 (i / 2) + 2 t4 and the next. All loads are issued
     * before the first use (an empty row reads row 0 and is zeroed after), so
     * they overlap instead of paying an L2 round trip each. */
    const float *q_row[2];
    for (int h = 0; h < 2; h++) {
        int r = qrow[h] < n_rows ? qrow[h] : 0;
        q_row[h] = a.q + (size_t)(t0 + r / group) * a.q_dim + (kvh * group + r % group) * HD + 2 * t4;
    }
    float2 q_raw[KS][4];
    for (int s = 0; s < KS; s++)
        for (int i = 0; i < 4; i++)
            q_raw[s][i] = *(const float2 *)(q_row[i % 2] + 16 * s + 8 * (i / 2));
    float q_scale[2];
    for (int h = 0; h < 2; h++)
        q_scale[h] = qrow[h] < n_rows ? a.scale * LOG2E : 0.0f;
    uint32_t q_hi[KS][4], q_lo[KS][4];
    for (int s = 0; s < KS; s++)
        for (int i = 0; i < 4; i++)
            bf16_split2(q_raw[s][i].x * q_scale[i % 2], q_raw[s][i].y * q_scale[i % 2], q_hi[s][i], q_lo[s][i]);
    float o[ND][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    for (int d = 0; d < ND; d++)
        o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
    for (int p0 = begin, buf = 0; p0 < end; p0 += ATTP_KEYS, buf ^= 1) {
        if (p0 + ATTP_KEYS < end) {
            fetch(p0 + ATTP_KEYS, buf ^ 1); /* its buffer was converted before the last barrier */
            cp_async_wait<1>();
        } else
            cp_async_wait<0>();
        __syncthreads(); /* the tile's rows are in, and the previous tile's products are done */
        const KV *ks = (const KV *)(stage + (size_t)buf * 2 * ATTP_KEYS * HD * sizeof(KV)), *vs = ks + ATTP_KEYS * HD;
        for (int i = tid; i < 2 * ATTP_KEYS * HD / 4; i += 128) { /* K, then V: 4 dims of a row a thread */
            int kv = i / (ATTP_KEYS * HD / 4), j = i / (HD / 4) % ATTP_KEYS, c = (i % (HD / 4)) * 4;
            float4 x = kv_load4((kv ? vs : ks) + j * HD + c);
            uint32_t h01, l01, h23, l23;
            bf16_split2(x.x, x.y, h01, l01), bf16_split2(x.z, x.w, h23, l23);
            *(uint2 *)((kv ? v_hi : k_hi) + j * S::LD + c) = make_uint2(h01, h23);
            *(uint2 *)((kv ? v_lo : k_lo) + j * S::LD + c) = make_uint2(l01, l23);
        }
        __syncthreads();
        if (!busy)
            continue;
        /* S = Q K^T: chunk n holds keys p0 + 8 n + 2 t4 (+1), rows of half 0 in [0..1], half 1 in [2..3] */
        float sc[NK][4] = {};
        for (int s = 0; s < KS; s++) {     /* hi*hi + hi*lo + lo*hi, the NK chunks interleaved */
            uint32_t bh[NK][2], bl[NK][2]; /* chunks 2 n2 and 2 n2 + 1 from one ldmatrix each */
            for (int n2 = 0; n2 < NK / 2; n2++) {
                int at = k_lane + 16 * n2 * S::LD + 16 * s;
                ldmatrix4(&bh[2 * n2][0], k_hi + at), ldmatrix4(&bl[2 * n2][0], k_lo + at);
            }
            for (int n = 0; n < NK; n++)
                mma_bf16(sc[n], q_hi[s], bh[n][0], bh[n][1]);
            for (int n = 0; n < NK; n++)
                mma_bf16(sc[n], q_hi[s], bl[n][0], bl[n][1]);
            for (int n = 0; n < NK; n++)
                mma_bf16(sc[n], q_lo[s], bh[n][0], bh[n][1]);
        }
        /* online softmax per row: a row's scores lie in the 4 threads of a group */
        float corr[2];
        for (int h = 0; h < 2; h++) {
            float mx = -INFINITY;
            for (int n = 0; n < NK; n++)
                for (int e = 0; e < 2; e++) {
                    int p = p0 + 8 * n + 2 * t4 + e;
                    float &s = sc[n][2 * h + e];
                    if (p > tok_pos[h] || p < tok_first[h] || p >= end)
                        s = -INFINITY;
                    mx = fmaxf(mx, s);
                }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            float m_new = fmaxf(m[h], mx);
            corr[h] = m_new == -INFINITY ? 1.0f : exp2f(m[h] - m_new);
            float sum = 0.0f;
            for (int n = 0; n < NK; n++)
                for (int e = 0; e < 2; e++) {
                    float &s = sc[n][2 * h + e];
                    s = m_new == -INFINITY ? 0.0f : exp2f(s - m_new);
                    sum += s;
                }
            l[h] = l[h] * corr[h] + sum; /* this thread's share; the group's are added at the end */
            m[h] = m_new;
        }
        for (int d = 0; d < ND; d++)
            o[d][0] *= corr[0], o[d][1] *= corr[0], o[d][2] *= corr[1], o[d][3] *= corr[1];
        /* O += P V: P's A fragment for keys 16 j.. is score chunks 2 j and 2 j + 1 */
        for (int j = 0; j < NK / 2; j++) {
            uint32_t p_hi[4], p_lo[4];
            bf16_split2(sc[2 * j][0], sc[2 * j][1], p_hi[0], p_lo[0]);
            bf16_split2(sc[2 * j][2], sc[2 * j][3], p_hi[1], p_lo[1]);
            bf16_split2(sc[2 * j + 1][0], sc[2 * j + 1][1], p_hi[2], p_lo[2]);
            bf16_split2(sc[2 * j + 1][2], sc[2 * j + 1][3], p_hi[3], p_lo[3]);
            for (int d2 = 0; d2 < ND / 2; d2++) { /* output chunks 2 d2 and 2 d2 + 1 */
                uint32_t vh[4], vl[4];
                int at = v_lane + 16 * j * S::LD + 16 * d2;
                ldmatrix4_trans(vh, v_hi + at), ldmatrix4_trans(vl, v_lo + at);
                for (int e = 0; e < 2; e++) {
                    mma_bf16(o[2 * d2 + e], p_hi, vh[2 * e], vh[2 * e + 1]);
                    mma_bf16(o[2 * d2 + e], p_hi, vl[2 * e], vl[2 * e + 1]);
                    mma_bf16(o[2 * d2 + e], p_lo, vh[2 * e], vh[2 * e + 1]);
                }
            }
        }
    }
    for (int h = 0; h < 2; h++) {
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
    }
    /* one slice: the result; else this slice's part, and the last slice merges */
    size_t part_stride = (size_t)gridDim.z * (HD + 2);
    for (int h = 0; h < 2; h++) {
        if (qrow[h] >= n_rows)
            continue;
        size_t r = (size_t)(t0 + qrow[h] / group) * a.n_heads + kvh * group + qrow[h] % group;
        float inv = slices == 1 ? 1.0f / l[h] : 1.0f;
        float *out = slices == 1 ? a.out + r * HD : a.part + r * part_stride + blockIdx.z * (HD + 2) + 2;
        if (slices > 1 && t4 == 0) /* the maximum back in natural-log units, as attention_merge's */
            out[-2] = m[h] * LN2, out[-1] = l[h];
        for (int d = 0; d < ND; d++) /* part rows are 8-byte aligned */
            *(float2 *)(out + 8 * d + 2 * t4) = make_float2(o[d][2 * h] * inv, o[d][2 * h + 1] * inv);
    }
    if (slices == 1 || !block_is_last(a.done + (size_t)blockIdx.y * gridDim.x + blockIdx.x, (unsigned)slices))
        return;
    /* each row's slice weights once (e^(m_z - M) / sum_z e^(m_z - M) l_z), then
     * the outputs two at a time. The parts are in L2: every load of a batch is
     * issued before the first is used (the compiler cannot move them past the
     * stores to out, which it must assume alias them), so a batch costs one
     * round trip. */
    __shared__ float weight[ATTP_ROWS][ATTP_MAX_SLICES];
    __shared__ size_t row_at[ATTP_ROWS];
    for (int r = tid; r < n_rows; r += 128) {
        size_t row = (size_t)(t0 + r / group) * a.n_heads + kvh * group + r % group;
        const float *part = a.part + row * part_stride;
        float mz[ATTP_MAX_SLICES], lz[ATTP_MAX_SLICES], m_all = -INFINITY, l_all = 0.0f;
        for (int z = 0; z < ATTP_MAX_SLICES; z++) {
            mz[z] = z < slices ? __ldcg(part + z * (HD + 2)) : -INFINITY;
            lz[z] = z < slices ? __ldcg(part + z * (HD + 2) + 1) : 0.0f;
        }
        for (int z = 0; z < ATTP_MAX_SLICES; z++)
            m_all = fmaxf(m_all, mz[z]);
        for (int z = 0; z < ATTP_MAX_SLICES; z++) {
            mz[z] = mz[z] == -INFINITY ? 0.0f : expf(mz[z] - m_all);
            l_all += mz[z] * lz[z];
        }
        for (int z = 0; z < ATTP_MAX_SLICES; z++)
            weight[r][z] = mz[z] / l_all;
        row_at[r] = row;
    }
    __syncthreads();
    const int BATCH = 4, n_pairs = n_rows * HD / 2;
    for (int i0 = tid; i0 < n_pairs; i0 += 128 * BATCH) {
        float2 v[BATCH][ATTP_MAX_SLICES];
        for (int k = 0; k < BATCH; k++) {
            int i = min(i0 + 128 * k, n_pairs - 1), r = i / (HD / 2), d = i % (HD / 2) * 2;
            const float *part = a.part + row_at[r] * part_stride + 2 + d;
            for (int z = 0; z < ATTP_MAX_SLICES; z++)
                v[k][z] = z < slices ? __ldcg((const float2 *)(part + z * (HD + 2))) : make_float2(0.0f, 0.0f);
        }
        for (int k = 0; k < BATCH && i0 + 128 * k < n_pairs; k++) {
            int i = i0 + 128 * k, r = i / (HD / 2), d = i % (HD / 2) * 2;
            float2 sum = make_float2(0.0f, 0.0f);
            for (int z = 0; z < ATTP_MAX_SLICES; z++)
                sum.x += weight[r][z] * v[k][z].x, sum.y += weight[r][z] * v[k][z].y;
            *(float2 *)(a.out + row_at[r] * HD + d) = sum;
        }
    }
}

#endif
