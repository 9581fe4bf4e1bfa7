/* The persistent decode kernel: a whole decode step (up to 8 sequences, one
 * token each) in one launch, one block per SM, the layers' stages as
 * phases separated by grid-wide barriers. Opt-in (INFERNO_CUDA_PERSISTENT=1):
 * correct, and slower than the kernel-per-stage graph so far (README).
 *
 * Why: a batch-1 step of the 0.6b takes ~30 us a layer in five kernels,
 * three times its weights' time in DRAM. Each kernel ramps up (first
 * loads, one L2 round trip each), waits on its input, and drains; the
 * weights, which no step writes, could stream all along. Here every block
 * streams its share of every matrix of the step, in the order the phases
 * use them, into a ring of shared memory (bulk copies completing on
 * mbarriers), as far ahead as the ring holds (~200 KiB, most of a layer):
 * the copies run through the barriers and the attention phase.
 *
 * Phases of a step (each ends with a grid barrier):
 *   embed:  x = embedding(tokens) * scale
 *   per layer:
 *     qkv:  every block normalizes x itself (x is in L2) and computes its
 *           rows of q|k|v
 *     attn: units (token, KV head, slice of positions) over the blocks;
 *           a unit finishes its query heads (bias, q norm, RoPE) itself,
 *           and the unit whose slice holds the new position first
 *           finishes and stores that position's k and v; slices merge as
 *           in attention_kernel (the last to finish)
 *     o:    x += att Wo^T, each block its rows
 *     ffn:  act = silu(xn Wgate^T) * (xn Wup^T), xn normalized per block
 *     down: x += act Wdown^T
 *   head:   logits = rmsnorm(x) Wout^T (no barrier after)
 *
 * Threading: PK_WARPS warps of a block compute; one more warp (its lane 0)
 * issues the ring's copies, in the order the pieces are consumed, as the
 * ring frees up (pk_produce: issuing a bulk copy stalls while the copy
 * engine is busy, so no computing thread may issue them). The computing
 * threads synchronize on barrier 1 (block_sync<true>), which the copy warp
 * never joins; their thread 0 does the block's part of each grid barrier.
 * All blocks must be resident at once (a cooperative launch, one block per
 * SM, grid = SM count), or the barriers would never open. Data other
 * blocks wrote in this launch is read with __ldcg (L2), never through L1.
 *
 * Row sets: a matrix's rows are split evenly over the blocks; gate|up is
 * read as row pairs (gate r, up r). A piece of the ring holds up to
 * PK_PIECE_SETS row sets of one matrix; warp w takes sets w and
 * w + PK_WARPS of it, the x values read once for both. */
#ifndef INFERNO_CUDA_PERSISTENT_CUH
#define INFERNO_CUDA_PERSISTENT_CUH

#include "attention.cuh"

#define PK_WARPS      8
#define PK_THREADS    (PK_WARPS * WARP) /* compute threads; one more warp issues the ring's copies */
#define PK_BARS       16                /* pieces in flight at most */
#define PK_PIECE_SETS (2 * PK_WARPS)
static_assert(PK_THREADS == NAMED_SYNC_THREADS, "block_sync<true> counts the computing threads");

struct persist_layer {
    dmat qkv, wo, gate_up, down;
    const float *attn_norm, *ffn_norm, *q_norm, *k_norm; /* [hidden], [hidden], [hd] or NULL, [hd] or NULL */
    const float *qkv_bias;                               /* [q_dim + 2 kv_dim] or NULL */
    const float *inv_freq;                               /* [hd / 2] */
    void *k_cache, *v_cache;                             /* [slots][kv_dim], float or half */
    uint32_t window;                                     /* 0: every position */
};

struct persist_args {
    const persist_layer *layers; /* device memory, [n_layers] */
    dmat embd, output;
    const float *output_norm;
    const int32_t *tokens, *pos, *slot, *table_off, *tables; /* the step's inputs, as step.cu stages them */
    float *x, *qkv, *att, *act, *part, *logits;              /* activations, as step.cu's */
    unsigned *attn_done;                                     /* [T][n_kv_heads], 0 between steps */
    unsigned *grid_bar;                                      /* 0 at launch */
    uint32_t T, n_layers, hidden, ffn, vocab, n_heads, n_kv_heads, head_dim, q_dim, kv_dim, block_size;
    uint32_t slices;      /* attention slices a (token, KV head) */
    uint32_t ring_bytes;  /* the ring of weights, at the start of dynamic shared memory */
    uint32_t piece_bytes; /* a piece's target size (a single row set may exceed it, never the ring) */
    uint32_t stage_bytes; /* the stage area, after the ring; then a copy of layers */
    float eps, embed_scale, attn_scale;
    int kv_type; /* CUDA_KV_F32 or CUDA_KV_F16 (persist_setup refuses fp8) */
    /* NULL, or (INFERNO_CUDA_TRACE) [1 + 5 n_layers + 2][gridDim.x + 1] timestamps (ns): per barrier, each
     * block's arrival and block 0's exit (column gridDim.x); then the launch's start (block 0) and each
     * block's end */
    unsigned long long *trace;
};

/* ---- the ring (bulk copies and mbarriers: device.cuh) ---- */

/* Dynamic shared memory: the ring, the stage area, then the layers'
 * descriptors, copied there at the start: reading them from global memory
 * put an L2 round trip (~1 us) into every piece's bookkeeping. */
extern __shared__ __align__(128) unsigned char pk_smem[];

__device__ __forceinline__ const persist_layer *pk_layers(const persist_args &a) {
    return (const persist_layer *)(pk_smem + a.ring_bytes + a.stage_bytes);
}

/* The matrices a step streams, in order: per layer q|k|v, o, gate|up, down; then the head. */
__device__ __forceinline__ const dmat &pk_matrix(const persist_args &a, uint32_t mi, bool &pair) {
    pair = mi < 4 * a.n_layers && mi % 4 == 2;
    if (mi == 4 * a.n_layers)
        return a.output;
    const persist_layer &L = pk_layers(a)[mi / 4];
    return mi % 4 == 0 ? L.qkv : mi % 4 == 1 ? L.wo : mi % 4 == 2 ? L.gate_up : L.down;
}

/* A piece: k row sets of a matrix from set r, laid out in the ring as the
 * sets' rows (gate rows, then up rows), then (8-bit) their scales, then
 * their offsets, each part 16-byte aligned (the scales' copy starts at the
 * aligned address below the first one: at = where row r's are). */
struct pk_piece {
    const dmat *m;
    uint32_t r, k, nm, bytes;
    uint32_t rows_at[2], scale_at[2], offset_at[2];
};

/* Where this block's row sets of matrix mi begin and end, and a walk over
 * its pieces (the computing threads and the copy warp each walk it). */
struct pk_cursor {
    uint32_t mi, r, r_end, n; /* matrix, next row set, end; pieces passed */
    uint64_t lin_end;         /* the ring's linear byte count after the last piece */
};

__device__ __forceinline__ void pk_range(const persist_args &a, pk_cursor &c) {
    for (; c.mi <= 4 * a.n_layers; c.mi++) {
        bool pair;
        const dmat &m = pk_matrix(a, c.mi, pair);
        uint64_t sets = pair ? m.rows / 2 : m.rows;
        c.r = (uint32_t)(sets * blockIdx.x / gridDim.x), c.r_end = (uint32_t)(sets * (blockIdx.x + 1) / gridDim.x);
        if (c.r < c.r_end)
            return;
    }
}

/* Lays out the piece at cursor c; with bar, also copies it to dst. */
__device__ void pk_layout(const persist_args &a, const pk_cursor &c, pk_piece &p, unsigned char *dst, uint64_t *bar) {
    bool pair;
    const dmat &m = pk_matrix(a, c.mi, pair);
    uint32_t nm = pair ? 2 : 1, half = pair ? m.rows / 2 : m.rows;
    uint32_t row_bytes = m.type == DMAT_BF16 ? m.cols * 2 : m.cols, spr = m.type == DMAT_Q8 ? m.cols / m.group : 0;
    uint32_t set_bytes = nm * (row_bytes + (m.offset ? 2 : 1) * spr * 4);
    uint32_t k = a.piece_bytes / set_bytes;
    k = k < 1 ? 1 : k > PK_PIECE_SETS ? PK_PIECE_SETS : k;
    k = min(k, c.r_end - c.r);
    p.m = &m, p.r = c.r, p.k = k, p.nm = nm;
    uint32_t at = 0;
    const unsigned char *rows = m.type == DMAT_BF16 ? (const unsigned char *)m.w : (const unsigned char *)m.qs;
    for (uint32_t n = 0; n < nm; n++) {
        p.rows_at[n] = at;
        if (bar)
            bulk_copy(dst + at, rows + (size_t)(c.r + n * half) * row_bytes, k * row_bytes, bar);
        at += k * row_bytes;
    }
    for (int v = 0; v < 2 && spr; v++) {
        const float *vec = v == 0 ? m.scale : m.offset;
        if (!vec)
            break;
        for (uint32_t n = 0; n < nm; n++) {
            size_t first = (size_t)(c.r + n * half) * spr * 4, lo = first & ~(size_t)15;
            size_t hi = ((size_t)(c.r + n * half + k) * spr * 4 + 15) & ~(size_t)15;
            (v == 0 ? p.scale_at : p.offset_at)[n] = at + (uint32_t)(first - lo);
            if (bar)
                bulk_copy(dst + at, (const unsigned char *)vec + lo, (uint32_t)(hi - lo), bar);
            at += (uint32_t)(hi - lo);
        }
    }
    p.bytes = at;
}

/* The linear start of a piece of bytes after lin_end: it never wraps. */
__device__ __forceinline__ uint64_t pk_alloc(uint64_t lin_end, uint32_t bytes, uint32_t ring) {
    uint32_t off = (uint32_t)(lin_end % ring);
    return off + bytes > ring ? lin_end + (ring - off) : lin_end;
}

__device__ __forceinline__ void pk_advance(const persist_args &a, pk_cursor &c, const pk_piece &p, uint64_t start) {
    c.lin_end = start + p.bytes, c.n++, c.r += p.k;
    if (c.r >= c.r_end) {
        c.mi++;
        pk_range(a, c);
    }
}

/* How far the compute threads have consumed the ring: written by their
 * thread 0 after each piece, read by the copy warp. */
struct pk_progress {
    uint64_t lin_end; /* the end of the last piece consumed */
    uint32_t n;       /* pieces consumed */
};

/* The copy warp's lane 0: every piece of the step into the ring, in order,
 * as soon as the ring has room and a barrier is free (the issue of a bulk
 * copy stalls while the copy engine is busy: no compute thread may wait
 * on it). */
__device__ void pk_produce(const persist_args &a, unsigned char *ring, uint64_t *bars,
                           const volatile pk_progress *done) {
    pk_cursor prod = {0, 0, 0, 0, 0};
    pk_range(a, prod);
    while (prod.mi <= 4 * a.n_layers) {
        pk_piece p;
        pk_layout(a, prod, p, NULL, NULL);
        uint64_t start = pk_alloc(prod.lin_end, p.bytes, a.ring_bytes);
        for (;;) {
            uint32_t n = done->n;
            __threadfence_block();
            uint64_t lin_end = done->lin_end; /* read after n: at least as new */
            /* in use: from the end of the last piece consumed (an empty ring takes any piece) */
            if (prod.n < n + PK_BARS && (prod.n == n || start + p.bytes - lin_end <= a.ring_bytes))
                break;
            __nanosleep(64);
        }
        /* the compute threads' reads of this space (generic proxy) before the copies' writes (async proxy) */
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        uint64_t *bar = &bars[prod.n % PK_BARS];
        mbar_expect_tx(bar, p.bytes);
        pk_layout(a, prod, p, ring + start % a.ring_bytes, bar);
        pk_advance(a, prod, p, start);
    }
}

/* An attention unit u of layer L: token t, KV head kvh, slice z of the
 * token's positions, which starts at begin and takes len of them (ending
 * at the token's position + 1 at most). */
struct pk_unit {
    uint32_t t, kvh, z;
    int pos, begin, len;
};

__device__ __forceinline__ pk_unit pk_unit_at(const persist_args &a, const persist_layer &L, uint32_t u) {
    uint32_t S = a.slices;
    pk_unit un;
    un.t = u / (a.n_kv_heads * S), un.kvh = u / S % a.n_kv_heads, un.z = u % S;
    un.pos = __ldg(a.pos + un.t);
    int n_pos = un.pos + 1, first = L.window && n_pos > (int)L.window ? n_pos - (int)L.window : 0;
    un.len = (n_pos - first + (int)S - 1) / (int)S, un.begin = first + (int)un.z * un.len;
    return un;
}

/* Into L2, the cache rows that this block's attention units of layer L
 * will read and that earlier steps wrote (positions before pos[t]): the
 * attention phase then waits on L2, not DRAM. By the computing threads
 * past the first warp, while thread 0 waits at a barrier. */
__device__ void pk_prefetch_kv(const persist_args &a, const persist_layer &L) {
    uint32_t S = a.slices, units = a.T * a.n_kv_heads * S, elem = kv_elem_bytes(a.kv_type);
    uint32_t lines = a.head_dim * elem / 128 ? a.head_dim * elem / 128 : 1, line_elems = 128 / elem;
    for (uint32_t u = blockIdx.x; u < units; u += gridDim.x) {
        pk_unit un = pk_unit_at(a, L, u);
        uint32_t t = un.t, kvh = un.kvh;
        int begin = un.begin, end = min(begin + un.len, un.pos); /* not the new position: this step writes it */
        const int32_t *table = a.tables + __ldg(a.table_off + t);
        uint32_t n = end > begin ? (uint32_t)(end - begin) * 2 * lines : 0;
        for (uint32_t i = threadIdx.x - WARP; i < n; i += PK_THREADS - WARP) {
            uint32_t p = begin + i / (2 * lines), line = i % lines;
            size_t slot = (size_t)__ldg(table + p / a.block_size) * a.block_size + p % a.block_size;
            const char *base = (const char *)(i / lines % 2 ? L.v_cache : L.k_cache);
            asm volatile("prefetch.global.L2 [%0];" ::"l"(
                base + ((slot * a.kv_dim + kvh * a.head_dim) + line * line_elems) * elem));
        }
    }
}

/* ---- the grid barrier ---- */

__device__ __forceinline__ unsigned load_acquire(const unsigned *p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

/* Every block's writes so far, visible to every block after it. *target
 * counts arrivals (gridDim.x a barrier) since the launch. */
__device__ __forceinline__ void grid_sync(const persist_args &a, unsigned &target,
                                          const persist_layer *prefetch = NULL) {
    block_sync<true>();
    target += gridDim.x;
    if (prefetch && threadIdx.x >= WARP)
        pk_prefetch_kv(a, *prefetch);
    if (threadIdx.x == 0) {
        __threadfence();
        unsigned long long *trace = a.trace ? a.trace + (size_t)(target / gridDim.x - 1) * (gridDim.x + 1) : NULL;
        if (trace)
            trace[blockIdx.x] = global_ns();
        atomicAdd(a.grid_bar, 1u);
        while (load_acquire(a.grid_bar) < target)
            ;
        __threadfence();
        if (trace && blockIdx.x == 0)
            trace[gridDim.x] = global_ns();
    }
    block_sync<true>();
}

/* ---- phases ---- */

/* xs[t][0..cols) = src[t] (__ldcg; rows past T zero), each row
 * RMS-normalized and scaled by gain when one is given. red: NT * PK_WARPS
 * floats of shared memory. */
template <int NT>
__device__ void pk_stage(const float *src, uint32_t cols, uint32_t T, const float *gain, float eps, float *xs,
                         float *red) {
    float ss[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) {
        ss[t] = 0.0f;
        for (uint32_t i = threadIdx.x * 4; i < cols; i += PK_THREADS * 4) {
            float4 v = t < (int)T ? __ldcg((const float4 *)(src + (size_t)t * cols + i)) : make_float4(0, 0, 0, 0);
            *(float4 *)(xs + t * cols + i) = v;
            ss[t] += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
    }
    if (gain) {
        block_sync<true>(); /* red may still be read */
#pragma unroll
        for (int t = 0; t < NT; t++) {
            float s = warp_sum(ss[t]);
            if (threadIdx.x % WARP == 0)
                red[t * PK_WARPS + threadIdx.x / WARP] = s;
        }
        block_sync<true>();
#pragma unroll
        for (int t = 0; t < NT; t++) {
            float s = 0.0f;
            for (int w = 0; w < PK_WARPS; w++)
                s += red[t * PK_WARPS + w];
            float scale = rsqrtf(s / (float)cols + eps);
            for (uint32_t i = threadIdx.x * 4; i < cols; i += PK_THREADS * 4) {
                float4 v = *(float4 *)(xs + t * cols + i), g = __ldg((const float4 *)(gain + i));
                *(float4 *)(xs + t * cols + i) =
                    make_float4(v.x * scale * g.x, v.y * scale * g.y, v.z * scale * g.z, v.w * scale * g.w);
            }
        }
    }
    block_sync<true>();
}

/* Eight weights of row `row` of the piece (matrix n of the set), column
 * chunk c (columns 8c..8c+7), as floats, already scaled (q * scale -
 * offset for 8-bit rows). */
__device__ __forceinline__ void pk_weights8(const pk_piece &p, const unsigned char *base, uint32_t n, uint32_t row,
                                            uint32_t c, float w[8]) {
    const dmat &m = *p.m;
    if (m.type == DMAT_BF16) {
        unpack8(DMAT_BF16, *(const uint4 *)(base + p.rows_at[n] + ((size_t)row * m.cols + c * 8) * 2), w);
        return;
    }
    int2 q = *(const int2 *)(base + p.rows_at[n] + (size_t)row * m.cols + c * 8);
    unpack8(DMAT_Q8, make_uint4((uint32_t)q.x, (uint32_t)q.y, 0, 0), w);
    uint32_t g = row * (m.cols / m.group) + c * 8 / m.group;
    float scale = *(const float *)(base + p.scale_at[n] + g * 4);
    float offset = m.offset ? *(const float *)(base + p.offset_at[n] + g * 4) : 0.0f;
#pragma unroll
    for (int i = 0; i < 8; i++)
        w[i] = fmaf(w[i], scale, -offset);
}

/* What a GEMV phase does with its dots. */
enum { PK_STORE, PK_ADD, PK_SILU };

/* One piece's dots against xs, and their outputs: out[t][r] (=, +=) the
 * dot, or (PK_SILU) silu(gate) * up; ld: out's leading dimension. */
template <int NT, int MODE>
__device__ void pk_piece_dots(const pk_piece &p, const unsigned char *base, const float *xs, uint32_t T, float *out,
                              uint32_t ld) {
    const int NM = MODE == PK_SILU ? 2 : 1;
    uint32_t lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, cols = p.m->cols;
    uint32_t s0 = warp, s1 = warp + PK_WARPS;
    if (s0 >= p.k)
        return;
    bool two = s1 < p.k;
    float acc[2][NM][NT];
#pragma unroll
    for (int j = 0; j < 2; j++)
#pragma unroll
        for (int n = 0; n < NM; n++)
#pragma unroll
            for (int t = 0; t < NT; t++)
                acc[j][n][t] = 0.0f;
    for (uint32_t c = lane; c < cols / 8; c += WARP) {
        float xv[NT][8];
#pragma unroll
        for (int t = 0; t < NT; t++) {
            float4 a = *(const float4 *)(xs + t * cols + c * 8), b = *(const float4 *)(xs + t * cols + c * 8 + 4);
            xv[t][0] = a.x, xv[t][1] = a.y, xv[t][2] = a.z, xv[t][3] = a.w;
            xv[t][4] = b.x, xv[t][5] = b.y, xv[t][6] = b.z, xv[t][7] = b.w;
        }
#pragma unroll
        for (int j = 0; j < 2; j++) {
            if (j == 1 && !two)
                break;
#pragma unroll
            for (int n = 0; n < NM; n++) {
                float w[8];
                pk_weights8(p, base, n, j ? s1 : s0, c, w);
#pragma unroll
                for (int t = 0; t < NT; t++)
                    acc[j][n][t] += w[0] * xv[t][0] + w[1] * xv[t][1] + w[2] * xv[t][2] + w[3] * xv[t][3] +
                                    w[4] * xv[t][4] + w[5] * xv[t][5] + w[6] * xv[t][6] + w[7] * xv[t][7];
            }
        }
    }
#pragma unroll
    for (int j = 0; j < 2; j++) {
        if (j == 1 && !two)
            break;
        size_t r = p.r + (j ? s1 : s0);
#pragma unroll
        for (int t = 0; t < NT; t++) {
            float d[NM];
#pragma unroll
            for (int n = 0; n < NM; n++)
                d[n] = warp_sum(acc[j][n][t]);
            if (lane != 0 || t >= (int)T)
                continue;
            float *o = out + (size_t)t * ld + r;
            if (MODE == PK_SILU)
                *o = gated<OUT_SILU_PAIR>(d[0], d[NM - 1]);
            else
                *o = MODE == PK_ADD ? __ldcg(o) + d[0] : d[0];
        }
    }
}

/* The GEMV phase of matrix mi: every piece of this block's rows, as it
 * arrives in the ring. */
template <int NT, int MODE>
__device__ void pk_gemv(const persist_args &a, uint32_t mi, const float *xs, float *out, uint32_t ld, pk_cursor &cons,
                        const unsigned char *ring, uint64_t *bars, volatile pk_progress *done) {
    while (cons.mi == mi) {
        pk_piece p;
        pk_layout(a, cons, p, NULL, NULL);
        uint64_t start = pk_alloc(cons.lin_end, p.bytes, a.ring_bytes);
        mbar_wait(&bars[cons.n % PK_BARS], (cons.n / PK_BARS) & 1);
        pk_piece_dots<NT, MODE>(p, ring + start % a.ring_bytes, xs, a.T, out, ld);
        block_sync<true>(); /* the piece's space is free */
        pk_advance(a, cons, p, start);
        if (threadIdx.x == 0) {
            done->lin_end = cons.lin_end;
            __threadfence_block();
            done->n = cons.n;
        }
    }
}

/* One warp finishes head `job` of token t for a unit of KV head kvh: jobs
 * below G are its query heads (bias, q norm, RoPE, pre-scaled into q_s in
 * powers of 2, as attention_lanes_kernel's), job G its key (k norm, RoPE,
 * into the cache) and G + 1 its value (into the cache). scratch: head_dim
 * floats of the warp's own. */
__device__ void pk_head(const persist_args &a, const persist_layer &L, uint32_t t, uint32_t kvh, uint32_t job,
                        uint32_t G, float *q_s, float *scratch) {
    uint32_t lane = threadIdx.x % WARP, hd = a.head_dim, half = hd / 2;
    uint32_t col = job < G ? (kvh * G + job) * hd : a.q_dim + (job - G) * a.kv_dim + kvh * hd;
    size_t at = (size_t)a.slot[t] * a.kv_dim + kvh * hd;
    const float *row = a.qkv + (size_t)t * (a.q_dim + 2 * a.kv_dim) + col;
    float x[8], ss = 0.0f; /* dims lane + 32 i */
#pragma unroll
    for (int i = 0; i < 8; i++) {
        uint32_t d = lane + 32 * i;
        x[i] = d < hd ? __ldcg(row + d) + (L.qkv_bias ? L.qkv_bias[col + d] : 0.0f) : 0.0f;
        ss += x[i] * x[i];
    }
    if (job == G + 1) {
#pragma unroll
        for (int i = 0; i < 8; i++)
            if (lane + 32 * i < hd)
                kv_store(L.v_cache, at + lane + 32 * i, x[i], a.kv_type);
        return;
    }
    const float *gain = job < G ? L.q_norm : L.k_norm;
    float scale = gain ? rsqrtf(warp_sum(ss) / (float)hd + a.eps) : 1.0f;
#pragma unroll
    for (int i = 0; i < 8; i++)
        if (lane + 32 * i < hd)
            scratch[lane + 32 * i] = gain ? x[i] * scale * gain[lane + 32 * i] : x[i];
    __syncwarp();
#pragma unroll
    for (int i = 0; i < 8; i++) {
        uint32_t d = lane + 32 * i;
        if (d >= hd)
            break;
        float angle = (float)a.pos[t] * L.inv_freq[d % half], c = cosf(angle), s = sinf(angle);
        float v = d < half ? scratch[d] * c - scratch[d + half] * s : scratch[d - half] * s + scratch[d] * c;
        if (job < G)
            q_s[job * hd + d] = v * a.attn_scale * LOG2E;
        else
            kv_store(L.k_cache, at + d, v, a.kv_type);
    }
    __syncwarp(); /* scratch is read before the warp's next head writes it */
}

/* The attention phase of layer L: units (token, KV head, slice) over the
 * blocks. Per unit, lanes as attention_lanes_kernel's: head_dim / 8 lanes
 * a position, 8 elements a lane. sm: the stage area (q_s [GMAX][hd], the
 * warps' scratch [PK_WARPS][hd], acc_w [PK_WARPS][G][hd]). */
template <int GMAX> __device__ void pk_attention(const persist_args &a, const persist_layer &L, float *sm) {
    __shared__ float m_w[PK_WARPS * GMAX], l_w[PK_WARPS * GMAX], weight[WARP];
    uint32_t hd = a.head_dim, G = a.n_heads / a.n_kv_heads, S = a.slices;
    uint32_t lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    uint32_t lanes = hd / 8, sub = lane % lanes, grp = lane / lanes, n_grp = WARP / lanes;
    float *q_s = sm, *scratch = sm + GMAX * hd, *acc_w = scratch + PK_WARPS * hd;
    attention_args aa = {NULL,    L.k_cache, L.v_cache,    a.pos,    a.table_off, a.tables, a.att,
                         NULL,    NULL,      a.part,       NULL,     a.n_heads,   G,        hd,
                         a.q_dim, a.kv_dim,  a.block_size, L.window, a.attn_scale};
    uint32_t units = a.T * a.n_kv_heads * S;
    for (uint32_t u = blockIdx.x; u < units; u += gridDim.x) {
        pk_unit un = pk_unit_at(a, L, u);
        uint32_t t = un.t, kvh = un.kvh, z = un.z;
        int begin = un.begin, end = min(begin + un.len, un.pos + 1);
        bool owner = un.pos < begin + un.len && un.pos >= begin; /* holds the new position */
        for (uint32_t job = warp; job < G + (owner ? 2 : 0); job += PK_WARPS)
            pk_head(a, L, t, kvh, job, G, q_s, scratch + warp * hd);
        block_sync<true>(); /* q_s, and the new position's k and v, for every warp */
        const int32_t *table = a.tables + a.table_off[t];
        uint32_t bs = a.block_size;
        float q[GMAX][8], acc[GMAX][8], m[GMAX], l[GMAX];
#pragma unroll
        for (int g = 0; g < GMAX; g++) {
            m[g] = -INFINITY, l[g] = 0.0f;
#pragma unroll
            for (int i = 0; i < 8; i++)
                q[g][i] = g < (int)G ? q_s[g * hd + sub * 8 + i] : 0.0f, acc[g][i] = 0.0f;
        }
        int per_warp = (int)n_grp * ATTL_BATCH, stride = PK_WARPS * per_warp;
        for (int w0 = begin + (int)warp * per_warp; w0 < end; w0 += stride) {
            int p0 = w0 + (int)grp * ATTL_BATCH;
            float kr[ATTL_BATCH][8], vr[ATTL_BATCH][8];
#pragma unroll
            for (int j = 0; j < ATTL_BATCH; j++) {
                int p = p0 + j;
                size_t at = (p < end ? (size_t)table[p / bs] * bs + p % bs : 0) * a.kv_dim + kvh * hd + sub * 8;
                if (a.kv_type == CUDA_KV_F16) {
                    kv_load8((const __half *)L.k_cache + at, p < end, kr[j]);
                    kv_load8((const __half *)L.v_cache + at, p < end, vr[j]);
                } else {
                    kv_load8((const float *)L.k_cache + at, p < end, kr[j]);
                    kv_load8((const float *)L.v_cache + at, p < end, vr[j]);
                }
            }
#pragma unroll
            for (int g = 0; g < GMAX; g++)
                if (g < (int)G)
                    lanes_softmax_step(q[g], kr, vr, lanes, end - p0, m[g], l[g], acc[g]);
        }
#pragma unroll
        for (int g = 0; g < GMAX; g++) {
            if (g >= (int)G)
                break;
            lanes_merge_groups(lanes, m[g], l[g], acc[g]);
            if (lane == 0) /* natural-log units, as attention_block_finish's */
                m_w[warp * G + g] = m[g] * LN2, l_w[warp * G + g] = l[g];
            if (grp == 0)
#pragma unroll
                for (int i = 0; i < 8; i++)
                    acc_w[(warp * G + g) * hd + sub * 8 + i] = acc[g][i];
        }
        attention_block_finish<PK_WARPS, true>(aa, t, kvh * G, G, m_w, l_w, acc_w, hd, weight, z, S,
                                               a.attn_done + (size_t)t * a.n_kv_heads + kvh);
        block_sync<true>(); /* the stage area is free for the next unit */
    }
}

/* The step. Grid: the SM count (all resident: a cooperative launch), block
 * PK_THREADS, dynamic shared memory: ring_bytes of ring, then the stage
 * area (persist_stage_floats floats). */
template <int NT, int GMAX>
__global__ void __launch_bounds__(PK_THREADS + WARP, 1)
    decode_persistent_kernel(const __grid_constant__ persist_args a) {
    __shared__ __align__(8) uint64_t bars[PK_BARS];
    __shared__ float red[NT * PK_WARPS];
    __shared__ pk_progress progress;
    unsigned char *ring = pk_smem;
    float *xs = (float *)(pk_smem + a.ring_bytes);
    volatile pk_progress *done = &progress;
    size_t trace_end = (size_t)(2 + 5 * a.n_layers) * (gridDim.x + 1); /* the row of the blocks' ends */
    if (a.trace && blockIdx.x == 0 && threadIdx.x == 0)
        a.trace[trace_end - gridDim.x - 1] = global_ns();
    if (threadIdx.x < PK_BARS)
        mbar_init(&bars[threadIdx.x], 1);
    if (threadIdx.x == 0)
        done->lin_end = 0, done->n = 0;
    for (uint32_t i = threadIdx.x; i < a.n_layers * sizeof(persist_layer) / 8; i += blockDim.x)
        ((uint64_t *)pk_layers(a))[i] = ((const uint64_t *)a.layers)[i];
    mbar_init_fence();
    __syncthreads(); /* the last barrier of all the block's threads: the copy warp leaves here */
    if (threadIdx.x >= PK_THREADS) {
        if (threadIdx.x == PK_THREADS)
            pk_produce(a, ring, bars, done);
        return;
    }
    pk_cursor cons = {0, 0, 0, 0, 0};
    pk_range(a, cons);
    unsigned target = 0;
    /* x = embedding rows * scale */
    for (uint32_t i = blockIdx.x * PK_THREADS + threadIdx.x; i < a.T * a.hidden; i += gridDim.x * PK_THREADS) {
        size_t e = (size_t)a.tokens[i / a.hidden] * a.embd.cols + i % a.hidden;
        a.x[i] = (a.embd.type == DMAT_BF16 ? __bfloat162float(a.embd.w[e]) : dmat_q8_at(a.embd, e)) * a.embed_scale;
    }
    grid_sync(a, target, &pk_layers(a)[0]);
    uint32_t qkv_dim = a.q_dim + 2 * a.kv_dim;
    for (uint32_t l = 0; l < a.n_layers; l++) {
        const persist_layer &L = pk_layers(a)[l];
        if (cons.mi == 4 * l)
            pk_stage<NT>(a.x, a.hidden, a.T, L.attn_norm, a.eps, xs, red);
        pk_gemv<NT, PK_STORE>(a, 4 * l, xs, a.qkv, qkv_dim, cons, ring, bars, done);
        grid_sync(a, target);
        pk_attention<GMAX>(a, L, xs);
        grid_sync(a, target);
        if (cons.mi == 4 * l + 1)
            pk_stage<NT>(a.att, a.q_dim, a.T, NULL, a.eps, xs, red);
        pk_gemv<NT, PK_ADD>(a, 4 * l + 1, xs, a.x, a.hidden, cons, ring, bars, done);
        grid_sync(a, target);
        if (cons.mi == 4 * l + 2)
            pk_stage<NT>(a.x, a.hidden, a.T, L.ffn_norm, a.eps, xs, red);
        pk_gemv<NT, PK_SILU>(a, 4 * l + 2, xs, a.act, a.ffn, cons, ring, bars, done);
        grid_sync(a, target);
        if (cons.mi == 4 * l + 3)
            pk_stage<NT>(a.act, a.ffn, a.T, NULL, a.eps, xs, red);
        pk_gemv<NT, PK_ADD>(a, 4 * l + 3, xs, a.x, a.hidden, cons, ring, bars, done);
        grid_sync(a, target, l + 1 < a.n_layers ? &pk_layers(a)[l + 1] : NULL);
    }
    if (cons.mi == 4 * a.n_layers)
        pk_stage<NT>(a.x, a.hidden, a.T, a.output_norm, a.eps, xs, red);
    pk_gemv<NT, PK_STORE>(a, 4 * a.n_layers, xs, a.logits, a.vocab, cons, ring, bars, done);
    if (a.trace && threadIdx.x == 0)
        a.trace[trace_end + blockIdx.x] = global_ns();
}

/* Floats of the stage area: the widest input rows for NT tokens, or the
 * attention phase's q, scratch and warp outputs. */
static inline size_t persist_stage_floats(int nt, int gmax, uint32_t widest, uint32_t head_dim) {
    size_t rows = (size_t)nt * widest, attn = ((size_t)gmax + PK_WARPS + (size_t)PK_WARPS * gmax) * head_dim;
    return rows > attn ? rows : attn;
}

#endif
