/* The CUDA engine's attention kernels (worker-cuda/engine.cu runs them):
 * attention_kernel for decode (a block per token), attention_prefill_kernel
 * for prompts (a block per tile of tokens). Both read the paged KV cache
 * that qkv_head_finish (kernels.cuh) writes. */
#ifndef INFERNO_CUDA_ATTENTION_CUH
#define INFERNO_CUDA_ATTENTION_CUH

#include "kernels.cuh"

/* Causal attention over each token's cached positions 0..pos[t]
 * (flash-decoding): block (g, t, z) takes the GSUB query heads of head
 * group g (GSUB divides the GQA group), which share one KV head, so each key and value row is read once
 * for all of them, and the z-th of gridDim.z equal slices of the
 * positions. Its 4 warps split the slice, ATTN_BATCH positions at a time,
 * each keeping an online softmax per head; the block merges them. With one slice the result is final;
 * otherwise each slice leaves (max, sum, unnormalized output) in part, and
 * the last block of a (group, token) to finish merges them (attention_merge:
 * no kernel of its own, so no launch and no kernel boundary). Lane l holds elements
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

struct attention_args {
    const float *q;                          /* [T][q_dim] */
    const void *k_cache, *v_cache;           /* [slots][kv_dim] of KV (float or half) */
    const int32_t *pos, *table_off, *tables; /* per token: position, its table in tables */
    float *out;                              /* [T][q_dim] */
    float *part;                             /* [T][n_heads][slices][head_dim + 2] */
    unsigned *done;                          /* [T][n_heads / GSUB]: slices finished, 0 between kernels */
    uint32_t n_heads, group, head_dim, q_dim, kv_dim, block_size;
    uint32_t window; /* a token sees its `window` latest positions; 0 = all (sliding-window layers) */
    float scale;
};

/* Combines head h's slices for token t: out = sum_z e^(m_z - M) o_z /
 * sum_z e^(m_z - M) l_z. The first warp weighs the slices (one a lane, so
 * at most 32), then every thread sums its elements over them. weight: 32
 * floats of shared memory. Other blocks wrote part: read with __ldcg. */
__device__ void attention_merge(const attention_args &a, uint32_t t, uint32_t h, uint32_t slices, float *weight) {
    uint32_t hd = a.head_dim, lane = threadIdx.x % WARP;
    const float *part = a.part + ((size_t)t * a.n_heads + h) * slices * (hd + 2);
    __syncthreads(); /* weight may still be read for the previous head */
    if (threadIdx.x < WARP) {
        float mz = lane < slices ? __ldcg(part + lane * (hd + 2)) : -INFINITY;
        float m_all = warp_max(mz), w = mz == -INFINITY ? 0.0f : expf(mz - m_all);
        float l_all = warp_sum(lane < slices ? w * __ldcg(part + lane * (hd + 2) + 1) : 0.0f);
        weight[lane] = w / l_all;
    }
    __syncthreads();
    for (uint32_t i = threadIdx.x; i < hd; i += blockDim.x) {
        float o = 0.0f;
        for (uint32_t z = 0; z < slices; z++)
            o += weight[z] * __ldcg(part + z * (hd + 2) + 2 + i);
        a.out[(size_t)t * a.q_dim + h * hd + i] = o;
    }
}

/* The end of a decode attention block: merges its warps' (max, sum,
 * output) for each of its GSUB heads (m_w, l_w: [ATTN_WARPS][GSUB]; acc_w:
 * [ATTN_WARPS][GSUB][acc_ld], in shared memory, written before the call)
 * into the output, or with several slices into part, where the last
 * slice's block merges them. */
template <int GSUB>
__device__ void attention_block_finish(const attention_args &a, uint32_t t, uint32_t h0, const float *m_w,
                                       const float *l_w, const float *acc_w, uint32_t acc_ld, float *weight) {
    uint32_t hd = a.head_dim, slices = gridDim.z;
    __syncthreads();
#pragma unroll
    for (int g = 0; g < GSUB; g++) {
        float m_all = -INFINITY, l_all = 0.0f;
#pragma unroll
        for (int w = 0; w < ATTN_WARPS; w++)
            m_all = fmaxf(m_all, m_w[w * GSUB + g]);
#pragma unroll
        for (int w = 0; w < ATTN_WARPS; w++)
            l_all += m_w[w * GSUB + g] == -INFINITY ? 0.0f : l_w[w * GSUB + g] * expf(m_w[w * GSUB + g] - m_all);
        uint32_t h = h0 + g;
        float *part = a.part + (((size_t)t * a.n_heads + h) * slices + blockIdx.z) * (hd + 2);
        for (uint32_t i = threadIdx.x; i < hd; i += blockDim.x) {
            float o = 0.0f;
#pragma unroll
            for (int w = 0; w < ATTN_WARPS; w++)
                o += m_w[w * GSUB + g] == -INFINITY
                         ? 0.0f
                         : acc_w[(w * GSUB + g) * acc_ld + i] * expf(m_w[w * GSUB + g] - m_all);
            if (slices == 1)
                a.out[(size_t)t * a.q_dim + h * hd + i] = o / l_all;
            else
                part[2 + i] = o;
        }
        if (slices > 1 && threadIdx.x == 0)
            part[0] = m_all, part[1] = l_all;
    }
    if (slices == 1 || !block_is_last(a.done + (size_t)t * gridDim.x + blockIdx.x, slices))
        return;
    for (int g = 0; g < GSUB; g++)
        attention_merge(a, t, h0 + g, slices, weight);
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
    attention_block_finish<GSUB>(a, t, h0, &m_w[0][0], &l_w[0][0], &acc_w[0][0][0], EPL * WARP, weight);
}

/* attention_kernel for head sizes 16, 32, 64 and 128 (256 works, but was
 * slower than attention_kernel on Gemma 3's shapes), with a group of
 * head_dim / 8 lanes per position: each lane holds 8 elements of a key or
 * value row (one 16-byte load of half, two of float), so a warp takes
 * 32 * 8 / head_dim positions at once and a score needs log2(head_dim / 8)
 * shuffles, where attention_kernel spends 5 on each. Each lane group
 * keeps its own online softmax over ATTL_BATCH positions at a time (in
 * powers of 2); the
 * groups of a warp merge at the end, then the warps and slices as in
 * attention_kernel (same grid, block and part protocol). The H200 at 256
 * sequences of 512 positions: float KV at the memory's speed either way,
 * half KV was bound by instructions: 404 us a layer with attention_kernel,
 * 192 us with this one. */
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

template <int GSUB, typename KV>
__global__ void __launch_bounds__(ATTN_WARPS *WARP) attention_lanes_kernel(attention_args a) {
    __shared__ float m_w[ATTN_WARPS][GSUB], l_w[ATTN_WARPS][GSUB], acc_w[ATTN_WARPS][GSUB][256];
    __shared__ float weight[WARP];
    uint32_t t = blockIdx.y, lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, hd = a.head_dim;
    uint32_t lanes = hd / 8, sub = lane % lanes, grp = lane / lanes, n_grp = WARP / lanes;
    uint32_t h0 = blockIdx.x * GSUB, kvh = h0 / a.group, slices = gridDim.z;
    const int32_t *table = a.tables + a.table_off[t];
    int n_pos = a.pos[t] + 1, first = a.window && n_pos > (int)a.window ? n_pos - (int)a.window : 0;
    int len = (n_pos - first + (int)slices - 1) / (int)slices;
    int begin = first + (int)blockIdx.z * len, end = min(begin + len, n_pos);
    /* the warp's lane groups take ATTL_BATCH consecutive positions each; the
     * loop test is the warp's, so that every lane reaches the shuffles */
    int per_warp = (int)n_grp * ATTL_BATCH, stride = ATTN_WARPS * per_warp;
    /* a position's slot: shifts for the usual power-of-two block size (a
     * division costs more than the rest of a position's addressing) */
    uint32_t bs = a.block_size, bs_shift = __ffs(bs) - 1;
    bool bs_pow2 = (bs & (bs - 1)) == 0;
    float kr[ATTL_BATCH][8], vr[ATTL_BATCH][8];
    /* the key and value rows of positions p0 .. p0 + ATTL_BATCH - 1 that lie
     * in [lo, hi); the others become zeros, or with keep stay as they are */
    auto load_kv = [&](int p0, int lo, int hi, bool keep) {
#pragma unroll
        for (int j = 0; j < ATTL_BATCH; j++) {
            int p = p0 + j;
            bool in = p >= lo && p < hi;
            if (keep && !in)
                continue;
            uint32_t blk = bs_pow2 ? (uint32_t)p >> bs_shift : (uint32_t)p / bs;
            uint32_t in_blk = bs_pow2 ? (uint32_t)p & (bs - 1) : (uint32_t)p % bs;
            size_t slot = in ? (size_t)table[blk] * bs + in_blk : 0;
            size_t at = slot * a.kv_dim + kvh * hd + sub * 8;
            kv_load8((const KV *)a.k_cache + at, in, kr[j]);
            kv_load8((const KV *)a.v_cache + at, in, vr[j]);
        }
    };
    /* The first batch is loaded while the previous kernel (the q|k|v
     * projection, which stores this step's rows) finishes: no sequence has
     * more than T (gridDim.y) tokens in a step, so a token's positions
     * before pos + 1 - T were stored by earlier steps. Positions and block
     * tables come from the host; no kernel of the step writes them. */
    int w_first = begin + (int)warp * per_warp, settled = n_pos - (int)gridDim.y;
    load_kv(w_first + (int)grp * ATTL_BATCH, begin, min(end, settled), false);
    pdl_enter();
    float q[GSUB][8], acc[GSUB][8], m[GSUB], l[GSUB];
#pragma unroll
    for (int g = 0; g < GSUB; g++) {
        m[g] = -INFINITY, l[g] = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++)
            q[g][i] = a.q[(size_t)t * a.q_dim + (h0 + g) * hd + sub * 8 + i] * a.scale * LOG2E, acc[g][i] = 0.0f;
    }
    for (int w0 = w_first; w0 < end; w0 += stride) {
        int p0 = w0 + (int)grp * ATTL_BATCH;
        if (w0 == w_first) /* what this step stored */
            load_kv(p0, max(begin, settled), end, true);
        else
            load_kv(p0, begin, end, false);
#pragma unroll
        for (int g = 0; g < GSUB; g++) {
            float s[ATTL_BATCH];
#pragma unroll
            for (int j = 0; j < ATTL_BATCH; j++) {
                s[j] = 0.0f;
#pragma unroll
                for (int i = 0; i < 8; i++)
                    s[j] += q[g][i] * kr[j][i];
                for (uint32_t o = lanes / 2; o > 0; o /= 2)
                    s[j] += __shfl_xor_sync(0xffffffffu, s[j], o);
            }
            softmax_step<ATTL_BATCH, 8, true>(s, end - p0, vr, m[g], l[g], acc[g]);
        }
    }
    /* the lane groups of the warp into one */
#pragma unroll
    for (int g = 0; g < GSUB; g++) {
        for (uint32_t o = lanes; o < WARP; o *= 2) {
            float m_o = __shfl_xor_sync(0xffffffffu, m[g], o), l_o = __shfl_xor_sync(0xffffffffu, l[g], o);
            float m_all = fmaxf(m[g], m_o);
            float mine = m[g] == -INFINITY ? 0.0f : exp2f(m[g] - m_all);
            float theirs = m_o == -INFINITY ? 0.0f : exp2f(m_o - m_all);
            l[g] = l[g] * mine + l_o * theirs;
#pragma unroll
            for (int i = 0; i < 8; i++)
                acc[g][i] = acc[g][i] * mine + __shfl_xor_sync(0xffffffffu, acc[g][i], o) * theirs;
            m[g] = m_all;
        }
        if (lane == 0) /* the maximum back in natural-log units, as attention_block_finish's */
            m_w[warp][g] = m[g] * LN2, l_w[warp][g] = l[g];
        if (grp == 0)
#pragma unroll
            for (int i = 0; i < 8; i++)
                acc_w[warp][g][sub * 8 + i] = acc[g][i];
    }
    attention_block_finish<GSUB>(a, t, h0, &m_w[0][0], &l_w[0][0], &acc_w[0][0][0], 256, weight);
}

/* Causal attention for prompts (flash-attention style, float32 on the CUDA
 * cores): block (kv head, tile) takes a tile of up to ATTP_ROWS / group
 * consecutive tokens of one sequence, with the `group` query heads that
 * share the kv head: ATTP_ROWS query rows. It walks the tile's key
 * positions ATTP_KEYS at a time; the keys and values of those positions
 * are read into shared memory once for all the rows (attention_kernel reads
 * them once per token and head group), and S = Q K^T and O += P V are
 * register-tiled products out of shared memory, with an online softmax
 * per row. A tile with more than ATTP_SLICE_KEYS positions is split into up
 * to gridDim.z slices of them, so that no block walks a long prefix alone
 * while others idle: each slice leaves (max, sum, unnormalized output) per
 * row in part, and the last to finish merges them, as attention_kernel.
 * tiles: [n][2] (first token, tokens). Grid (n_kv_heads, n_tiles, slices
 * up to ATTP_MAX_SLICES), block 128, attp_shape<HD>::SMEM bytes of dynamic
 * shared memory. */
#define ATTP_ROWS       32
#define ATTP_KEYS       32
#define ATTP_SLICE_KEYS 128
#define ATTP_MAX_SLICES 4

template <int HD> struct attp_shape {
    static const int LD = HD + 4; /* row stride of Q, K and V in shared memory: conflict-free float4 reads */
    static const int DG = HD / 4 < 8 ? HD / 4 : 8; /* O += P V: threads across a row's float4 chunks */
    static const int RG = 128 / DG;                /* ... and across rows */
    static const size_t SMEM =
        ((size_t)(ATTP_ROWS + 2 * ATTP_KEYS) * LD + ATTP_ROWS * (ATTP_KEYS + 1) + 3 * ATTP_ROWS) * 4;
};

__device__ __forceinline__ float4 kv_load4(const float *p) { return *(const float4 *)p; }
__device__ __forceinline__ float4 kv_load4(const __half *p) {
    uint2 raw = *(const uint2 *)p;
    float2 a = __half22float2(*(const __half2 *)&raw.x), b = __half22float2(*(const __half2 *)&raw.y);
    return make_float4(a.x, a.y, b.x, b.y);
}

template <int HD, typename KV>
__global__ void __launch_bounds__(128) attention_prefill_kernel(attention_args a, const int32_t *tiles) {
    typedef attp_shape<HD> S;
    const int SR = ATTP_ROWS / 16, OR = ATTP_ROWS / S::RG, OC = HD / 4 / S::DG, PLD = ATTP_KEYS + 1;
    extern __shared__ float4 smem4[];
    float *q_s = (float *)smem4, *k_s = q_s + ATTP_ROWS * S::LD, *v_s = k_s + ATTP_KEYS * S::LD;
    float *p_s = v_s + ATTP_KEYS * S::LD, *m_s = p_s + ATTP_ROWS * PLD, *l_s = m_s + ATTP_ROWS, *c_s = l_s + ATTP_ROWS;
    pdl_enter();
    int tid = threadIdx.x, kvh = blockIdx.x, group = (int)a.group;
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
    /* row r: token t0 + r / group, query head kvh * group + r % group, scaled */
    for (int i = tid; i < ATTP_ROWS * HD / 4; i += 128) {
        int r = i / (HD / 4), c = i % (HD / 4);
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (r < n_rows) {
            v = *(const float4 *)(a.q + (size_t)(t0 + r / group) * a.q_dim + (kvh * group + r % group) * HD + c * 4);
            v.x *= a.scale, v.y *= a.scale, v.z *= a.scale, v.w *= a.scale;
        }
        *(float4 *)(q_s + r * S::LD + c * 4) = v;
    }
    for (int r = tid; r < ATTP_ROWS; r += 128)
        m_s[r] = -INFINITY, l_s[r] = 0.0f;
    /* S: thread (sg, kg) has rows sg + 16 k and keys kg + 8 i; O: thread (orow, og) has rows
     * orow + RG k and float4 chunks og + DG i (interleaved, so that a warp's reads hit distinct banks) */
    int kg = tid % 8, sg = tid / 8, og = tid % S::DG, orow = tid / S::DG;
    int tok_pos[SR], tok_first[SR];
#pragma unroll
    for (int k = 0; k < SR; k++) {
        int r = sg + 16 * k;
        tok_pos[k] = r < n_rows ? a.pos[t0 + r / group] : -1;
        tok_first[k] = a.window && tok_pos[k] + 1 > (int)a.window ? tok_pos[k] + 1 - (int)a.window : 0;
    }
    float o[OR][OC][4];
#pragma unroll
    for (int k = 0; k < OR; k++)
#pragma unroll
        for (int i = 0; i < OC; i++)
            o[k][i][0] = o[k][i][1] = o[k][i][2] = o[k][i][3] = 0.0f;
    for (int p0 = begin; p0 < end; p0 += ATTP_KEYS) {
        __syncthreads(); /* the previous keys, values and P are used up (and Q, m, l are written) */
        for (int i = tid; i < ATTP_KEYS * HD / 4; i += 128) {
            int j = i / (HD / 4), c = i % (HD / 4), p = p0 + j;
            float4 kv = make_float4(0.0f, 0.0f, 0.0f, 0.0f), vv = kv;
            if (p < end) {
                size_t at = ((size_t)table[p / a.block_size] * a.block_size + p % a.block_size) * a.kv_dim +
                            (size_t)kvh * HD + c * 4;
                kv = kv_load4((const KV *)a.k_cache + at), vv = kv_load4((const KV *)a.v_cache + at);
            }
            *(float4 *)(k_s + j * S::LD + c * 4) = kv, *(float4 *)(v_s + j * S::LD + c * 4) = vv;
        }
        __syncthreads();
        float sc[SR][4];
#pragma unroll
        for (int k = 0; k < SR; k++)
            sc[k][0] = sc[k][1] = sc[k][2] = sc[k][3] = 0.0f;
#pragma unroll 4
        for (int c = 0; c < HD / 4; c++) {
            float4 qv[SR], kk[4];
#pragma unroll
            for (int k = 0; k < SR; k++)
                qv[k] = *(const float4 *)(q_s + (sg + 16 * k) * S::LD + c * 4);
#pragma unroll
            for (int i = 0; i < 4; i++)
                kk[i] = *(const float4 *)(k_s + (kg + 8 * i) * S::LD + c * 4);
#pragma unroll
            for (int k = 0; k < SR; k++)
#pragma unroll
                for (int i = 0; i < 4; i++)
                    sc[k][i] += qv[k].x * kk[i].x + qv[k].y * kk[i].y + qv[k].z * kk[i].z + qv[k].w * kk[i].w;
        }
        /* online softmax: a row's 32 scores lie in 8 consecutive lanes */
#pragma unroll
        for (int k = 0; k < SR; k++) {
            int r = sg + 16 * k;
            float mx = -INFINITY;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                int p = p0 + kg + 8 * i;
                if (p > tok_pos[k] || p < tok_first[k] || p >= end)
                    sc[k][i] = -INFINITY;
                mx = fmaxf(mx, sc[k][i]);
            }
            for (int w = 1; w < 8; w *= 2)
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, w));
            float m_old = m_s[r], m_new = fmaxf(m_old, mx), sum = 0.0f;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                float pv = m_new == -INFINITY ? 0.0f : expf(sc[k][i] - m_new);
                p_s[r * PLD + kg + 8 * i] = pv;
                sum += pv;
            }
            for (int w = 1; w < 8; w *= 2)
                sum += __shfl_xor_sync(0xffffffffu, sum, w);
            __syncwarp(); /* every lane of the row has read m_s[r] */
            if (kg == 0) {
                float corr = m_new == -INFINITY ? 1.0f : expf(m_old - m_new);
                c_s[r] = corr, l_s[r] = l_s[r] * corr + sum, m_s[r] = m_new;
            }
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < OR; k++) {
            float corr = c_s[orow + S::RG * k];
#pragma unroll
            for (int i = 0; i < OC; i++)
                o[k][i][0] *= corr, o[k][i][1] *= corr, o[k][i][2] *= corr, o[k][i][3] *= corr;
        }
#pragma unroll 4
        for (int j = 0; j < ATTP_KEYS; j++) {
            float4 vv[OC];
#pragma unroll
            for (int i = 0; i < OC; i++)
                vv[i] = *(const float4 *)(v_s + j * S::LD + (og + S::DG * i) * 4);
#pragma unroll
            for (int k = 0; k < OR; k++) {
                float pr = p_s[(orow + S::RG * k) * PLD + j];
#pragma unroll
                for (int i = 0; i < OC; i++) {
                    o[k][i][0] += pr * vv[i].x, o[k][i][1] += pr * vv[i].y;
                    o[k][i][2] += pr * vv[i].z, o[k][i][3] += pr * vv[i].w;
                }
            }
        }
    }
    /* one slice: the result; else this slice's part, and the last slice merges */
    size_t part_stride = (size_t)gridDim.z * (HD + 2);
#pragma unroll
    for (int k = 0; k < OR; k++) {
        int r = orow + S::RG * k;
        if (r >= n_rows)
            continue;
        size_t row = (size_t)(t0 + r / group) * a.n_heads + kvh * group + r % group;
        float inv = slices == 1 ? 1.0f / l_s[r] : 1.0f;
        float *out = slices == 1 ? a.out + row * HD : a.part + row * part_stride + blockIdx.z * (HD + 2) + 2;
        if (slices > 1 && og == 0)
            out[-2] = m_s[r], out[-1] = l_s[r];
#pragma unroll
        for (int i = 0; i < OC; i++) { /* part rows are 8-byte aligned: two float2 stores */
            float2 *o2 = (float2 *)(out + (og + S::DG * i) * 4);
            o2[0] = make_float2(o[k][i][0] * inv, o[k][i][1] * inv);
            o2[1] = make_float2(o[k][i][2] * inv, o[k][i][3] * inv);
        }
    }
    if (slices == 1 || !block_is_last(a.done + (size_t)blockIdx.y * gridDim.x + blockIdx.x, (unsigned)slices))
        return;
    for (int i = tid; i < n_rows * HD; i += 128) {
        int r = i / HD, d = i % HD;
        size_t row = (size_t)(t0 + r / group) * a.n_heads + kvh * group + r % group;
        const float *part = a.part + row * part_stride;
        float m_all = -INFINITY, l_all = 0.0f, sum = 0.0f;
        for (int z = 0; z < slices; z++)
            m_all = fmaxf(m_all, __ldcg(part + z * (HD + 2)));
        for (int z = 0; z < slices; z++) {
            float mz = __ldcg(part + z * (HD + 2)), w = mz == -INFINITY ? 0.0f : expf(mz - m_all);
            l_all += w * __ldcg(part + z * (HD + 2) + 1), sum += w * __ldcg(part + z * (HD + 2) + 2 + d);
        }
        a.out[row * HD + d] = sum / l_all;
    }
}

#endif
