/* Decode attention on the tensor cores, for a half KV cache (step.cu runs
 * it for large steps past the GEMV sizes: attention_setup).
 * Included after attention.cuh, whose mma, ldmatrix and cp.async helpers
 * it shares. */
#ifndef INFERNO_CUDA_ATTENTION_TC_CUH
#define INFERNO_CUDA_ATTENTION_TC_CUH

#include "attention.cuh"

/* Work items are (token, kv head, slice): the `group` query heads that
 * share the kv head (rows of an m16n8k16 A fragment: at most 8 of its 16
 * rows are used) over the z-th slice of the token's positions. Each warp
 * takes items gw, gw + W, ... (gw its index in the grid, W the grid's
 * warps) and walks their positions ATTT_KEYS (a chunk) at a time with an
 * online softmax, through a ring of ATTT_STAGES chunks in shared memory
 * filled by cp.async ATTT_STAGES - 1 chunks ahead, across item
 * boundaries: the loads never drain while a warp has work, and no warp
 * waits for another. (A block per item, its 4 warps splitting the
 * positions and merging at the end, ramped up and down every ~9 chunks a
 * warp: 153 us a layer at 74% of DRAM's peak, H200, 256 sequences.) A
 * chunk is S = Q K^T (keys as B fragments, untransposed) and O += P V (V
 * by ldmatrix .trans) with f16 operands and float32 accumulation: the
 * cache's halves are exact operands, q and p are split into an f16 high
 * part and the f16 rounding of the remainder (two products each, ~22
 * mantissa bits). Why: a group's query heads share each product, so a
 * KV row costs the same for 7 of them as for 1, where
 * attention_lanes_kernel's registers grow with the heads (one block an
 * SM past 2); with groups of 2 it is no faster than that kernel (H200, 256
 * sequences at 512 positions: 145 against 143 us a layer, both at ~80% of
 * DRAM's peak; README). A token's slices (up to a.slices, each of at
 * least ATTT_SLICE_KEYS positions) leave (max, sum, unnormalized output)
 * in part and the last warp to finish one merges them. Head sizes 16 to 128 (multiples of 16); any number of
 * blocks of 128 threads, attt_shape<HD>::SMEM bytes of dynamic shared
 * memory each. */
#define ATTT_WARPS      4
#define ATTT_KEYS       16
#define ATTT_STAGES     3
#define ATTT_SLICE_KEYS 32 /* a slice's fewest positions: then no slice is empty */

template <int HD> struct attt_shape {
    static const int LD = HD + 8;                /* halves a row: 8 rows of an ldmatrix hit distinct banks */
    static const int STAGE = 2 * ATTT_KEYS * LD; /* halves: a chunk's K rows, then its V rows */
    static const int RING = ATTT_STAGES * STAGE; /* halves, a warp's */
    static const size_t SMEM = (size_t)ATTT_WARPS * RING * 2;
};

/* c += a b for a 16x16 (row) and b 16x8 (column) fragment, f16 in,
 * float32 accumulate; a's rows 8..15 zero (a1 = a3 = 0). */
__device__ __forceinline__ void mma_f16_top(float c[4], uint32_t a0, uint32_t a2, uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
}

/* x and y as an f16 pair hi and the f16 pair of what hi leaves out. */
__device__ __forceinline__ void f16_split2(float x, float y, uint32_t &hi, uint32_t &lo) {
    __half2 h = __floats2half2_rn(x, y);
    float2 back = __half22float2(h);
    __half2 r = __floats2half2_rn(x - back.x, y - back.y);
    hi = *(const uint32_t *)&h, lo = *(const uint32_t *)&r;
}

/* cp_async16, or 16 zero bytes where !in (global is then not read). */
__device__ __forceinline__ void cp_async16_or_zero(void *smem, const void *global, bool in) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"((uint32_t)__cvta_generic_to_shared(smem)),
                 "l"(global), "r"(in ? 16 : 0));
}

/* A warp's place in its walk over work items: item i (t, kvh, slice z of
 * `slices`), positions [begin, end), chunk c of n_chunks starting at base
 * + ATTT_KEYS c (a multiple of ATTT_KEYS; rows outside [begin, end) are
 * zeros and masked). valid: false past the warp's last item. */
struct attt_cursor {
    int i, c, t, kvh, z, slices, begin, end, base, n_chunks;
    int tab;     /* the token's table: a.tables + tab */
    int32_t blk; /* the block of chunk c's first row, where a chunk lies in one block (attt_lookup) */
    bool valid;
};

/* Item i's geometry into cur (chunk 0); false when its token has fewer
 * slices than z + 1 (few positions). */
__device__ __forceinline__ bool attt_item(const attention_args &a, int i, attt_cursor &cur) {
    int n_kv = (int)(a.n_heads / a.group);
    cur.i = i, cur.c = 0, cur.z = i % (int)a.slices, cur.kvh = i / (int)a.slices % n_kv;
    cur.t = i / ((int)a.slices * n_kv), cur.tab = a.table_off[cur.t];
    int n_pos = a.pos[cur.t] + 1, first = a.window && n_pos > (int)a.window ? n_pos - (int)a.window : 0;
    int n = n_pos - first, s = min((int)a.slices, (n + ATTT_SLICE_KEYS - 1) / ATTT_SLICE_KEYS);
    int len = ((n + s - 1) / s + ATTT_KEYS - 1) / ATTT_KEYS * ATTT_KEYS;
    cur.slices = (n + len - 1) / len; /* with len rounded up, maybe fewer than s */
    cur.begin = first + cur.z * len, cur.end = min(cur.begin + len, n_pos);
    cur.base = cur.begin & ~(ATTT_KEYS - 1);
    cur.n_chunks = (cur.end - 1 - cur.base) / ATTT_KEYS + 1;
    return cur.z < cur.slices;
}

/* The warp's first item from i on (stride: the grid's warps). */
__device__ __forceinline__ void attt_seek(const attention_args &a, int i, int stride, attt_cursor &cur) {
    int n_items = (int)(a.tokens * (a.n_heads / a.group) * a.slices);
    for (; i < n_items; i += stride)
        if (attt_item(a, i, cur))
            break;
    cur.valid = i < n_items;
}

__device__ __forceinline__ void attt_advance(const attention_args &a, int stride, attt_cursor &cur) {
    if (++cur.c >= cur.n_chunks)
        attt_seek(a, cur.i + stride, stride, cur);
}

/* cur.blk for its chunk, where a chunk lies in one block (of 1 << bs_shift
 * positions): loaded here, used a chunk later, so that the fetch does not
 * wait on the table. */
__device__ __forceinline__ void attt_lookup(const attention_args &a, bool one_block, uint32_t bs_shift,
                                            attt_cursor &cur) {
    if (cur.valid && one_block)
        cur.blk = a.tables[cur.tab + ((uint32_t)(cur.base + cur.c * ATTT_KEYS) >> bs_shift)];
}

/* A token's slices of kv head kvh merged by one warp: part holds each
 * slice's (max in natural-log units, sum, unnormalized output) per head,
 * slice z of row r at (r * a.slices + z) * (HD + 2). */
template <int HD> __device__ void attt_merge(const attention_args &a, int t, int kvh, int slices) {
    int lane = threadIdx.x % WARP;
    for (int g = 0; g < (int)a.group; g++) {
        size_t row = (size_t)t * a.n_heads + kvh * a.group + g;
        const float *part = a.part + row * a.slices * (HD + 2);
        float mz = lane < slices ? __ldcg(part + lane * (HD + 2)) : -INFINITY;
        float m_all = warp_max(mz), w = lane < slices ? expf(mz - m_all) : 0.0f;
        float l_all = warp_sum(lane < slices ? w * __ldcg(part + lane * (HD + 2) + 1) : 0.0f);
        w /= l_all;
        for (int d0 = 0; d0 < HD; d0 += WARP) { /* every lane to the shuffles, also past HD (16) */
            int d = d0 + lane;
            float o = 0.0f;
            for (int z = 0; z < slices; z++) {
                float wz = __shfl_sync(0xffffffffu, w, z);
                o += d < HD ? wz * __ldcg(part + z * (HD + 2) + 2 + d) : 0.0f;
            }
            if (d < HD)
                attention_store(a, row * HD + d, o);
        }
    }
}

template <int HD> __global__ void __launch_bounds__(ATTT_WARPS *WARP) attention_tc_kernel(attention_args a) {
    typedef attt_shape<HD> S;
    const int KS = HD / 16, ND = HD / 8;           /* k16 steps of a score, n8 chunks of the output */
    const int PIECES = HD / 8, PER_LANE = HD / 16; /* a row's 16-byte pieces; a chunk's K pieces a lane */
    extern __shared__ float4 smem4[];
    int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP, g = lane / 4, t4 = lane % 4;
    int group = (int)a.group, stride = (int)gridDim.x * ATTT_WARPS;
    uint16_t *ring = (uint16_t *)smem4 + warp * S::RING;
    /* With a power-of-two block size of at least a chunk, a chunk lies in
     * one block: one lookup (attt_lookup, a chunk ahead), rows kv_dim
     * apart, every row of the block loaded (rows outside [begin, end) as
     * zeros); otherwise a lookup a row. */
    uint32_t bs = a.block_size, bs_shift = __ffs(bs) - 1;
    bool one_block = (bs & (bs - 1)) == 0 && bs >= ATTT_KEYS;
    /* The chunk at `in` into ring stage `stage_in`: a cp.async of the warp
     * covers ROWS whole rows, lane l piece l % PIECES of row l / PIECES
     * first. One commit group a chunk (empty past the warp's items), so
     * that the waits count alike. */
    const int ROWS = WARP / PIECES;
    int row0 = lane / PIECES, piece = lane % PIECES, issued = 0, stage_in = 0;
    auto fetch = [&](const attt_cursor &in) {
        if (in.valid) {
            int p0 = in.base + in.c * ATTT_KEYS;
            uint16_t *ks = ring + stage_in * S::STAGE + row0 * S::LD + piece * 8, *vs = ks + ATTT_KEYS * S::LD;
            unsigned first = (unsigned)(in.begin - p0 - row0), n = (unsigned)(in.end - in.begin);
            if (one_block) {
                size_t at =
                    ((size_t)in.blk * bs + ((uint32_t)p0 & (bs - 1)) + row0) * a.kv_dim + in.kvh * HD + piece * 8;
                const __half *kg = (const __half *)a.k_cache + at, *vg = (const __half *)a.v_cache + at;
#pragma unroll
                for (int i = 0; i < PER_LANE; i++) {
                    bool inside = (unsigned)(i * ROWS) - first < n; /* begin <= row's position < end */
                    size_t step = (size_t)i * ROWS * a.kv_dim;
                    cp_async16_or_zero(ks + i * ROWS * S::LD, kg + step, inside);
                    cp_async16_or_zero(vs + i * ROWS * S::LD, vg + step, inside);
                }
            } else {
                const int32_t *table = a.tables + in.tab;
#pragma unroll
                for (int i = 0; i < PER_LANE; i++) {
                    int p = p0 + row0 + i * ROWS;
                    bool inside = p >= in.begin && p < in.end;
                    size_t at = inside ? ((size_t)table[(uint32_t)p / bs] * bs + (uint32_t)p % bs) * a.kv_dim +
                                             in.kvh * HD + piece * 8
                                       : 0;
                    cp_async16_or_zero(ks + i * ROWS * S::LD, (const __half *)a.k_cache + at, inside);
                    cp_async16_or_zero(vs + i * ROWS * S::LD, (const __half *)a.v_cache + at, inside);
                }
            }
        }
        cp_async_commit();
        issued++, stage_in = stage_in + 1 == ATTT_STAGES ? 0 : stage_in + 1;
    };
    attt_cursor next, cur; /* the next chunk to fetch; the chunk to compute */
    auto fetch_next = [&]() { fetch(next), attt_advance(a, stride, next), attt_lookup(a, one_block, bs_shift, next); };
    attt_seek(a, blockIdx.x * ATTT_WARPS + warp, stride, next);
    attt_lookup(a, one_block, bs_shift, next);
    cur = next;
    /* Chunks of the first item wholly before pos + 1 - T were stored by
     * earlier steps (no sequence has more than T tokens in a step):
     * fetched while the previous kernel (the q|k|v heads' finish) runs. */
    while (issued < ATTT_STAGES - 1 && (!next.valid || (next.i == cur.i && next.base + (next.c + 1) * ATTT_KEYS <=
                                                                               a.pos[next.t] + 1 - (int)a.tokens)))
        fetch_next();
    pdl_enter();
    while (issued < ATTT_STAGES - 1)
        fetch_next();
    /* ldmatrix rows of this lane, as attention_prefill_kernel's */
    int mat = lane / 8, k_lane = (8 * (mat / 2) + lane % 8) * S::LD + 8 * (mat % 2);
    int v_lane = (8 * (mat % 2) + lane % 8) * S::LD + 8 * (mat / 2);
    uint32_t q_hi[KS][2], q_lo[KS][2];
    float o[ND][4], m = -INFINITY, l = 0.0f; /* row g's: o[d][0..1] at dims 8 d + 2 t4 (+1) */
    for (int stage_out = 0; cur.valid; stage_out = stage_out + 1 == ATTT_STAGES ? 0 : stage_out + 1) {
        if (cur.c == 0) {
            /* Q as A fragments (row g = query head kvh * group + g; rows
             * g + 8 and g >= group zero), scaled into powers of 2: step s
             * holds dims 16 s + 2 t4 (+1) and 16 s + 8 + 2 t4 (+1) */
            bool row_in = g < group;
            const float *q_row = a.q + (size_t)cur.t * a.q_dim + (cur.kvh * group + (row_in ? g : 0)) * HD + 2 * t4;
            float2 raw[KS][2];
#pragma unroll
            for (int s = 0; s < KS; s++)
                raw[s][0] = *(const float2 *)(q_row + 16 * s), raw[s][1] = *(const float2 *)(q_row + 16 * s + 8);
            float scale = row_in ? a.scale * LOG2E : 0.0f;
#pragma unroll
            for (int s = 0; s < KS; s++)
#pragma unroll
                for (int i = 0; i < 2; i++)
                    f16_split2(raw[s][i].x * scale, raw[s][i].y * scale, q_hi[s][i], q_lo[s][i]);
            m = -INFINITY, l = 0.0f;
#pragma unroll
            for (int d = 0; d < ND; d++)
                o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
        }
        fetch_next(); /* into the stage the last chunk left */
        cp_async_wait<ATTT_STAGES - 1>();
        __syncwarp(); /* every lane's pieces of this chunk are in */
        const uint16_t *ks = ring + stage_out * S::STAGE, *vs = ks + ATTT_KEYS * S::LD;
        int p0 = cur.base + cur.c * ATTT_KEYS;
        /* S = Q K^T: sc[n][e] is row g's score of key p0 + 8 n + 2 t4 + e */
        float sc[2][4] = {}, sc_lo[2][4] = {}; /* hi and lo apart: two chains of KS products, not one of 2 KS */
#pragma unroll
        for (int s = 0; s < KS; s++) {
            uint32_t kb[4];
            ldmatrix4(kb, ks + k_lane + 16 * s);
#pragma unroll
            for (int n = 0; n < 2; n++) {
                mma_f16_top(sc[n], q_hi[s][0], q_hi[s][1], kb[2 * n], kb[2 * n + 1]);
                mma_f16_top(sc_lo[n], q_lo[s][0], q_lo[s][1], kb[2 * n], kb[2 * n + 1]);
            }
        }
#pragma unroll
        for (int n = 0; n < 2; n++)
            sc[n][0] += sc_lo[n][0], sc[n][1] += sc_lo[n][1];
        /* online softmax of row g: its 16 scores lie in the 4 lanes of g */
        float mx = -INFINITY;
#pragma unroll
        for (int n = 0; n < 2; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                int p = p0 + 8 * n + 2 * t4 + e;
                if (p < cur.begin || p >= cur.end)
                    sc[n][e] = -INFINITY;
                mx = fmaxf(mx, sc[n][e]);
            }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        float m_new = fmaxf(m, mx), corr = exp2f(m - m_new); /* a chunk holds a position: m_new is finite */
        float sum = 0.0f;
#pragma unroll
        for (int n = 0; n < 2; n++)
#pragma unroll
            for (int e = 0; e < 2; e++)
                sc[n][e] = exp2f(sc[n][e] - m_new), sum += sc[n][e];
        l = l * corr + sum; /* this lane's share; the row's 4 are added at the end */
        m = m_new;
#pragma unroll
        for (int d = 0; d < ND; d++)
            o[d][0] *= corr, o[d][1] *= corr;
        /* O += P V: P's A fragment is row g's keys 2 t4 (+1) and 8 + 2 t4 (+1) */
        uint32_t p_hi[2], p_lo[2];
        f16_split2(sc[0][0], sc[0][1], p_hi[0], p_lo[0]);
        f16_split2(sc[1][0], sc[1][1], p_hi[1], p_lo[1]);
#pragma unroll
        for (int d2 = 0; d2 < ND / 2; d2++) { /* output chunks 2 d2 and 2 d2 + 1 */
            uint32_t vb[4];
            ldmatrix4_trans(vb, vs + v_lane + 16 * d2);
#pragma unroll
            for (int e = 0; e < 2; e++) {
                mma_f16_top(o[2 * d2 + e], p_hi[0], p_hi[1], vb[2 * e], vb[2 * e + 1]);
                mma_f16_top(o[2 * d2 + e], p_lo[0], p_lo[1], vb[2 * e], vb[2 * e + 1]);
            }
        }
        __syncwarp();                    /* this chunk's stage is read before a fetch overwrites it */
        if (cur.c == cur.n_chunks - 1) { /* the item's output, or its slice's part */
            float l_row = l + __shfl_xor_sync(0xffffffffu, l, 1);
            l_row += __shfl_xor_sync(0xffffffffu, l_row, 2);
            size_t row = (size_t)cur.t * a.n_heads + cur.kvh * group + g;
            if (cur.slices == 1) {
                if (g < group)
#pragma unroll
                    for (int d = 0; d < ND; d++)
#pragma unroll
                        for (int e = 0; e < 2; e++)
                            attention_store(a, row * HD + 8 * d + 2 * t4 + e, o[d][e] / l_row);
            } else {
                float *part = a.part + (row * a.slices + cur.z) * (HD + 2);
                if (g < group) {
                    if (t4 == 0) /* the maximum back in natural-log units */
                        part[0] = m * LN2, part[1] = l_row;
#pragma unroll
                    for (int d = 0; d < ND; d++)
                        part[2 + 8 * d + 2 * t4] = o[d][0], part[3 + 8 * d + 2 * t4] = o[d][1];
                }
                __threadfence(); /* the part is visible before the slice is counted */
                __syncwarp();
                unsigned *done = a.done + (size_t)cur.t * (a.n_heads / a.group) + cur.kvh, seen = 0;
                if (lane == 0)
                    seen = atomicAdd(done, 1u);
                if (__shfl_sync(0xffffffffu, seen, 0) == (unsigned)cur.slices - 1) {
                    if (lane == 0)
                        *done = 0;
                    __threadfence();
                    attt_merge<HD>(a, cur.t, cur.kvh, cur.slices);
                }
            }
        }
        attt_advance(a, stride, cur);
    }
    cp_async_wait<0>(); /* the empty groups past the warp's items */
}

#endif
