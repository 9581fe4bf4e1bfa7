/* The CUDA engine's weight-streaming GEMVs for decode steps (up to
 * GEMV_MAX_T tokens): gemv_kernel (weights prefetched into registers),
 * gemv_staged_kernel (into shared memory, 2 to 8 tokens),
 * gemv_wide_kernel (one token, bf16: a block an SM, its rows whole in
 * shared memory), the q|k|v GEMV with the heads' finish
 * (gemv_qkv_kernel, gemv_qkv_wide_kernel) and the output head
 * with the argmax keys (gemv_head_kernel). step.cu includes it; it uses
 * device.cuh's helpers (pdl_*, bulk copies, unpack8, argmax keys,
 * qkv_head_finish). */
#ifndef INFERNO_CUDA_GEMV_CUH
#define INFERNO_CUDA_GEMV_CUH

#include "device.cuh"

/* Weight-streaming matrix-vector product for a few tokens (decode):
 * y[t][r] (=, +=) dot(W[r], x[t]) for t < NT, where with a gain x[t] is
 * first RMS-normalized and scaled by it, or with OUT_SILU_PAIR
 * (OUT_GELU_PAIR) y[t][r] = silu(dot(W[r], x[t])) * dot(W[rows + r], x[t])
 * (gate and up stacked in one matrix; tanh GELU for the latter).
 *
 * wpr warps share a row (1, 2, 4 or 8; a block of 8 warps holds 8 / wpr
 * rows): a matrix of few rows still gives every SM several blocks, and
 * each warp a short chain of loads. A warp's lanes take 8 columns at a
 * time with 16-byte loads, GEMV_UNROLL such loads in flight before the
 * arithmetic; the warps of a row add up (their dots, and the norm's sum
 * of squares) through shared memory. Registers are capped so that 3 blocks
 * (4 without a gate|up pair) fit an SM: the 0.6b's gate|up, 384 blocks, runs
 * in one wave, not two at 98 registers (H200, batch 1, with the norm folded
 * into the dots: 9.4 -> 6.4 us a layer).
 * cols must be a multiple of 8 (of the group for DMAT_Q8). Grid
 * ceil(rows * wpr / 8), block 256. */
#define GEMV_UNROLL 4
#define GEMV_WARPS  8

/* A lane's GEMV_UNROLL chunks of 8 columns (k0 + u * step) of rows r + j
 * * stride, j < N_ROWS; rows past m.rows, and columns past m.cols, read
 * as zeros. */
template <int N_ROWS>
__device__ __forceinline__ void gemv_load(const dmat &m, uint32_t r, uint32_t stride, uint32_t k0, uint32_t step,
                                          uint4 raw[N_ROWS][GEMV_UNROLL], float scale[N_ROWS][GEMV_UNROLL],
                                          float offset[N_ROWS][GEMV_UNROLL]) {
#pragma unroll
    for (int j = 0; j < N_ROWS; j++)
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            uint32_t k = k0 + u * step;
            size_t row = r + (size_t)j * stride, g = row * (m.cols / m.group) + k / m.group;
            bool in = k < m.cols && row < m.rows, q8 = m.type == DMAT_Q8 && in;
            raw[j][u] = in ? load8_raw(m, row, k) : make_uint4(0, 0, 0, 0);
            scale[j][u] = q8 ? __ldg(m.scale + g) : 1.0f;
            offset[j][u] = q8 && m.offset ? __ldg(m.offset + g) : 0.0f;
        }
}

/* The loaded chunks' products (U a lane) with x[t] (t < NT, rows of m.cols floats),
 * into acc[j][t]; with a gain, x is scaled by it first and acc[N_ROWS][t]
 * gathers x[t]'s sum of squares (for the RMS norm). */
template <int N_ROWS, int NT, int U = GEMV_UNROLL>
__device__ __forceinline__ void gemv_dots(const dmat &m, const uint4 raw[N_ROWS][U], const float scale[N_ROWS][U],
                                          const float offset[N_ROWS][U], const float *x, const float *gain, uint32_t k0,
                                          uint32_t step, float acc[N_ROWS + 1][NT]) {
    /* up to 2 tokens, unrolled so that raw, scale and offset stay in
     * registers (H200, 0.6b, batch 2: 1,412 -> 1,616 tok/s); with more
     * tokens that spills more than a loop's indexing of them in local
     * memory costs (batch 8: 2,851 -> 2,236) */
    constexpr int unroll = NT <= 2 ? U : 1;
#pragma unroll(unroll)
    for (int u = 0; u < U; u++) {
        uint32_t k = k0 + u * step;
        if (k >= m.cols)
            break;
        float4 g0 = make_float4(1, 1, 1, 1), g1 = g0;
        if (gain)
            g0 = __ldg((const float4 *)(gain + k)), g1 = __ldg((const float4 *)(gain + k + 4));
#pragma unroll
        for (int t = 0; t < NT; t++) {
            float4 a = __ldg((const float4 *)(x + (size_t)t * m.cols + k)),
                   b = __ldg((const float4 *)(x + (size_t)t * m.cols + k + 4));
            if (gain)
                acc[N_ROWS][t] +=
                    a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w + b.x * b.x + b.y * b.y + b.z * b.z + b.w * b.w;
            a.x *= g0.x, a.y *= g0.y, a.z *= g0.z, a.w *= g0.w, b.x *= g1.x, b.y *= g1.y, b.z *= g1.z, b.w *= g1.w;
#pragma unroll
            for (int j = 0; j < N_ROWS; j++) {
                float w[8];
                unpack8(m.type, raw[j][u], w);
                if (m.offset) /* the whole weight first, as the host's dequantizer: q * scale - offset */
                    for (int i = 0; i < 8; i++)
                        w[i] = fmaf(w[i], scale[j][u], -offset[j][u]);
                float d = w[0] * a.x + w[1] * a.y + w[2] * a.z + w[3] * a.w + w[4] * b.x + w[5] * b.y + w[6] * b.z +
                          w[7] * b.w;
                acc[j][t] += (m.offset ? 1.0f : scale[j][u]) * d;
            }
        }
    }
}

/* The end of a GEMV row: the warps of row r (wpr of them) add up their
 * dots and sums of squares, and the row's first warp writes y[t][r]. */
template <int NT, int MODE>
__device__ __forceinline__ void gemv_finish(const dmat &m, float acc[][NT], bool active, uint32_t r, uint32_t wpr,
                                            float eps, const float *gain, float *y, uint32_t ldy) {
    const int N_ROWS = MODE == OUT_SILU_PAIR || MODE == OUT_GELU_PAIR ? 2 : 1;
    __shared__ float sums[GEMV_WARPS][N_ROWS + 1][NT]; /* a warp's dots, then its sums of x^2 */
    uint32_t lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, part = warp % wpr;
    for (int j = 0; j <= N_ROWS; j++)
        for (int t = 0; t < NT; t++) {
            float v = warp_sum(acc[j][t]);
            if (lane == 0)
                sums[warp][j][t] = v;
        }
    if (wpr > 1)
        __syncthreads();
    else
        __syncwarp();
    if (!active || part != 0 || lane >= NT)
        return;
    int t = lane; /* lane t writes token t */
    float dot[N_ROWS + 1];
    for (int j = 0; j <= N_ROWS; j++) {
        dot[j] = 0.0f;
        for (uint32_t p = 0; p < wpr; p++)
            dot[j] += sums[warp + p][j][t];
    }
    float norm = gain ? rsqrtf(dot[N_ROWS] / (float)m.cols + eps) : 1.0f;
    float a = dot[0] * norm;
    if (N_ROWS == 2)
        a = gated<MODE>(a, dot[1] * norm);
    float *out = y + (size_t)t * ldy + r;
    *out = MODE == OUT_ADD ? *out + a : a;
}

template <int NT, int MODE>
__device__ __forceinline__ void gemv_rows(const dmat &m, uint32_t rows, uint32_t wpr, const float *x, const float *gain,
                                          float eps, float *y, uint32_t ldy) {
    const int N_ROWS = MODE == OUT_SILU_PAIR || MODE == OUT_GELU_PAIR ? 2 : 1;
    uint32_t lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    uint32_t r = blockIdx.x * (GEMV_WARPS / wpr) + warp / wpr, part = warp % wpr;
    uint32_t first = (part * WARP + lane) * 8, step = wpr * WARP * 8; /* this lane's columns: first + i * step */
    bool active = r < rows;
    uint4 raw[N_ROWS][GEMV_UNROLL];
    float scale[N_ROWS][GEMV_UNROLL], offset[N_ROWS][GEMV_UNROLL];
    /* the first weights are loaded while the previous kernel finishes */
    if (active)
        gemv_load<N_ROWS>(m, r, rows, first, step, raw, scale, offset);
    pdl_enter();
    /* the norm's sum of squares comes with the dot products: the warps of
     * a row see every column of x once between them, so it costs no pass
     * and no barrier of its own */
    float acc[N_ROWS + 1][NT];
    for (int j = 0; j <= N_ROWS; j++)
        for (int t = 0; t < NT; t++)
            acc[j][t] = 0.0f;
    for (uint32_t k0 = first; active && k0 < m.cols; k0 += step * GEMV_UNROLL) {
        if (k0 != first)
            gemv_load<N_ROWS>(m, r, rows, k0, step, raw, scale, offset);
        gemv_dots<N_ROWS, NT>(m, raw, scale, offset, x, gain, k0, step, acc);
    }
    gemv_finish<NT, MODE>(m, acc, active, r, wpr, eps, gain, y, ldy);
}

template <int NT, int MODE>
__global__ void __launch_bounds__(GEMV_WARPS *WARP, MODE >= OUT_SILU_PAIR ? 3 : 4)
    gemv_kernel(dmat m, uint32_t rows, uint32_t wpr, const float *x, const float *gain, float eps, float *y,
                uint32_t ldy) {
    gemv_rows<NT, MODE>(m, rows, wpr, x, gain, eps, y, ldy);
}

/* By one thread: bulk-copies rows [r0, r0 + n) of each of m's N_ROWS
 * halves (rows apart; a gate|up pair has two) into staged, half j at row
 * j * per_block, and (Q8) their scales then offsets after all the
 * quants (scale_s, offset_s), completing on bar, which it initializes.
 * The block's other threads wait on it after a barrier. */
template <int N_ROWS, bool Q8>
__device__ __forceinline__ void stage_rows(const dmat &m, uint32_t rows, uint32_t r0, uint32_t n, uint32_t per_block,
                                           unsigned char *staged, float *scale_s, float *offset_s, uint64_t *bar) {
    uint32_t groups = Q8 ? m.cols / m.group : 0, row_bytes = Q8 ? m.cols : m.cols * 2,
             group_bytes = groups * sizeof(float);
    const unsigned char *quants = Q8 ? (const unsigned char *)m.qs : (const unsigned char *)m.w;
    mbar_init(bar, 1);
    mbar_init_fence();
    mbar_expect_tx(bar, N_ROWS * n * (row_bytes + (Q8 && m.offset ? 2 : 1) * group_bytes));
    for (int j = 0; j < N_ROWS; j++) {
        size_t src = (size_t)j * rows + r0; /* the range's first row */
        bulk_copy(staged + (size_t)j * per_block * row_bytes, quants + src * row_bytes, n * row_bytes, bar);
        if (Q8)
            bulk_copy(scale_s + j * per_block * groups, m.scale + src * groups, n * group_bytes, bar);
        if (Q8 && m.offset)
            bulk_copy(offset_s + j * per_block * groups, m.offset + src * groups, n * group_bytes, bar);
    }
}

/* gemv_rows with the block's rows (their quants, scales and offsets)
 * copied into shared memory by bulk copies before the wait on the
 * previous kernel; the threads then read them a chunk at a time. For 2
 * to 8 tokens, where gemv_rows holds its weights across the wait in
 * registers, or from 3 tokens in local memory (its chunk loop is not
 * unrolled there): H200, 0.6b bf16, f16 KV, with the q|k|v GEMV staged
 * too, batch 2 1,640 -> 1,793 tok/s, batch 4 2,135 -> 2,421, batch 8
 * 2,864 -> 3,170; 8-bit (q8_0) 1,659 -> 1,760, 2,093 -> 2,348 and 2,703
 * -> 2,828; Gemma-3-270M-shaped (q4_k_m as 8-bit) 2,300 -> 2,539, 3,233 ->
 * 3,785, 4,569 -> 5,330. For one token it lost to the registers (1,047
 * against 1,137 tok/s capped at 32 registers, so that two kernels' blocks
 * would share an SM; 1,089 with gemv_rows' unrolled chunks); bf16 takes
 * gemv_wide_rows there. Dynamic
 * shared memory: gemv_staged_bytes, the block's N_ROWS ranges of
 * GEMV_WARPS / wpr rows, then (DMAT_Q8) their scales and offsets. */
template <int NT, int MODE, bool Q8>
__device__ __forceinline__ void gemv_rows_staged(const dmat &m, uint32_t rows, uint32_t wpr, const float *x,
                                                 const float *gain, float eps, float *y, uint32_t ldy) {
    const int N_ROWS = MODE == OUT_SILU_PAIR || MODE == OUT_GELU_PAIR ? 2 : 1;
    extern __shared__ __align__(128) unsigned char staged[];
    __shared__ __align__(8) uint64_t bar;
    uint32_t lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, per_block = GEMV_WARPS / wpr;
    uint32_t r0 = blockIdx.x * per_block, r = r0 + warp / wpr, part = warp % wpr;
    uint32_t first = (part * WARP + lane) * 8, step = wpr * WARP * 8; /* this lane's columns: first + i * step */
    const bool q8 = Q8; /* m.type == DMAT_Q8, known at compile time: bf16 keeps its registers */
    uint32_t groups = q8 ? m.cols / m.group : 0, row_bytes = q8 ? m.cols : m.cols * 2, n_staged = N_ROWS * per_block;
    float *scale_s = (float *)(staged + n_staged * row_bytes), *offset_s = scale_s + n_staged * groups;
    if (threadIdx.x == 0)
        stage_rows<N_ROWS, Q8>(m, rows, r0, min(per_block, rows - r0), per_block, staged, scale_s, offset_s, &bar);
    __syncthreads(); /* the barrier's init, before anyone waits on it */
    pdl_enter();
    float acc[N_ROWS + 1][NT];
    for (int j = 0; j <= N_ROWS; j++)
        for (int t = 0; t < NT; t++)
            acc[j][t] = 0.0f;
    bool active = r < rows;
    mbar_wait(&bar, 0);
    for (uint32_t k = first; active && k < m.cols; k += step) {
        uint4 raw[N_ROWS][1];
        float scale[N_ROWS][1], offset[N_ROWS][1];
        for (int j = 0; j < N_ROWS; j++) {
            uint32_t row = j * per_block + warp / wpr, g = row * groups + (q8 ? k / m.group : 0);
            const unsigned char *at = staged + row * row_bytes + (q8 ? k : k * 2);
            if (q8) {
                int2 q = *(const int2 *)at;
                raw[j][0] = make_uint4((uint32_t)q.x, (uint32_t)q.y, 0, 0);
            } else
                raw[j][0] = *(const uint4 *)at;
            scale[j][0] = q8 ? scale_s[g] : 1.0f;
            offset[j][0] = q8 && m.offset ? offset_s[g] : 0.0f;
        }
        gemv_dots<N_ROWS, NT, 1>(m, raw, scale, offset, x, gain, k, step, acc);
    }
    gemv_finish<NT, MODE>(m, acc, active, r, wpr, eps, gain, y, ldy);
}

/* Dynamic shared memory of gemv_rows_staged over m (pair: a gate|up
 * pair), or 0 where a bulk copy cannot take its rows (a DMAT_Q8 row's
 * scales not a multiple of 16 bytes). */
static inline size_t gemv_staged_bytes(const dmat &m, uint32_t wpr, bool pair) {
    size_t rows = (size_t)(pair ? 2 : 1) * (GEMV_WARPS / wpr), group_bytes = 0;
    if (m.type == DMAT_Q8) {
        group_bytes = m.cols / m.group * sizeof(float);
        if (group_bytes % 16)
            return 0;
        return rows * (m.cols + (m.offset ? 2 : 1) * group_bytes);
    }
    return rows * m.cols * sizeof(__nv_bfloat16);
}

template <int NT, int MODE, bool Q8>
__global__ void __launch_bounds__(GEMV_WARPS *WARP, 4)
    gemv_staged_kernel(dmat m, uint32_t rows, uint32_t wpr, const float *x, const float *gain, float eps, float *y,
                       uint32_t ldy) {
    gemv_rows_staged<NT, MODE, Q8>(m, rows, wpr, x, gain, eps, y, ldy);
}

/* The GEMV of a one-token step (bf16 weights) as one wave of a block an
 * SM, each block's rows (per_block of them, both halves of a gate|up pair)
 * bulk-copied whole into shared memory before the wait on the previous
 * kernel. A block takes at most 112 KiB and 256 threads of at most 128
 * registers, so the next kernel's block fits beside it on the SM: its
 * weights stream in while this one computes. gemv_rows keeps its weights
 * in registers, 3 or 4 blocks an SM, so the next kernel's blocks landed
 * only as this one's left and loaded their weights then (a globaltimer
 * trace of a batch-1 step: gate|up's blocks landed at Wo's completion).
 * After the wait the block reads x (and the rows it adds to) in one
 * round of loads; H200, 0.6b bf16, f16 KV, batch 1: 1,112-1,114 ->
 * 1,214-1,216 tok/s; with only one of the four products wide, each was
 * slower than none.
 *
 * The products run on the tensor cores: x, scaled by the gain, is split
 * into bf16 hi and lo halves (bf16_split2, ~16 mantissa bits, as prefill
 * does), the two columns of an m16n8k16 B fragment, and the staged rows
 * are its A fragments, 16 rows a tile; each warp takes every 8th chunk of
 * 32 columns for all the block's rows, and the warps' sums meet in shared
 * memory. A dot product may take its columns in any order, so a lane
 * loads 8 adjacent columns of its row (one 16-byte load) and hands them
 * to the mma as the k slots its fragment holds, B's the same ones; rows
 * lie WIDE_ROW_PAD bytes past a multiple of 128 apart, so that the two
 * rows each quarter-warp's 16-byte loads read fall in opposite halves of
 * the banks. TILES: the staged rows' 16-row tiles, a
 * template parameter so that the loop has no branch. The kernel trace's
 * products (warp 0, mark 1 to 2), cycles a block: on the CUDA cores
 * (unpack, then a multiply-add an element) 2,100-4,200; on the tensor
 * cores in a loop with branches 2,460-3,290 by kernel (medians; 1,228 ->
 * 1,256 tok/s), without them 1,770-2,820. H200, 0.6b bf16, f16 KV, batch
 * 1: 1,236 -> 1,327 tok/s in all (alternating runs). cols a multiple
 * of 32, at most WIDE_MAX_ROWS staged rows. Grid ceil(rows / per_block),
 * block 256; dynamic shared memory gemv_wide_bytes. */
#define WIDE_MAX_ROWS 64
#define WIDE_ROW_PAD  64

/* Bytes from one staged row to the next: the row, padded to 64 past a multiple of 128. */
__host__ __device__ __forceinline__ uint32_t wide_row_stride(uint32_t cols) {
    uint32_t row_bytes = cols * 2;
    return row_bytes % 128 ? row_bytes : row_bytes + WIDE_ROW_PAD;
}

template <int MODE, int TILES>
__device__ __forceinline__ void gemv_wide_rows(const dmat &m, uint32_t rows, uint32_t per_block, const float *x,
                                               const float *gain, float eps, float *y) {
    const int N_ROWS = MODE == OUT_SILU_PAIR || MODE == OUT_GELU_PAIR ? 2 : 1;
    extern __shared__ __align__(128) unsigned char staged[];
    __shared__ __align__(8) uint64_t bar;
    __shared__ float partial[GEMV_WARPS][WIDE_MAX_ROWS]; /* each warp's dots over its columns */
    uint32_t lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, row_bytes = m.cols * 2;
    uint32_t stride = wide_row_stride(m.cols), total = N_ROWS * per_block;
    uint32_t r0 = blockIdx.x * per_block, n = min(per_block, rows - r0);
    /* x times the gain as bf16 hi, then lo halves */
    __nv_bfloat16 *x_hi = (__nv_bfloat16 *)(staged + (size_t)total * stride), *x_lo = x_hi + m.cols;
    if (warp == 0) { /* row s = j * per_block + unit of half j, each at its padded place */
        if (lane == 0) {
            mbar_init(&bar, 1);
            mbar_init_fence();
            mbar_expect_tx(&bar, N_ROWS * n * row_bytes);
        }
        __syncwarp();
        for (uint32_t s = lane; s < N_ROWS * n; s += WARP) {
            uint32_t j = s / n, unit = s % n;
            bulk_copy(staged + (size_t)(j * per_block + unit) * stride,
                      (const unsigned char *)m.w + ((size_t)j * rows + r0 + unit) * row_bytes, row_bytes, &bar);
        }
    }
    __syncthreads(); /* the barrier's init, before anyone waits on it */
    pdl_enter();
    /* x (and the rows added to) in one round of loads from the whole block */
    float before = MODE == OUT_ADD && threadIdx.x < n ? y[r0 + threadIdx.x] : 0.0f, ss = 0.0f;
#pragma unroll 4
    for (uint32_t i = threadIdx.x * 4; i < m.cols; i += GEMV_WARPS * WARP * 4) {
        float4 a = __ldg((const float4 *)(x + i));
        ss += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
        if (gain) {
            float4 g = __ldg((const float4 *)(gain + i));
            a.x *= g.x, a.y *= g.y, a.z *= g.z, a.w *= g.w;
        }
        uint2 hi, lo;
        bf16_split2(a.x, a.y, hi.x, lo.x);
        bf16_split2(a.z, a.w, hi.y, lo.y);
        *(uint2 *)(x_hi + i) = hi, *(uint2 *)(x_lo + i) = lo;
    }
    /* one barrier, not block_sum's two: the second sat on this chain (H200, batch 1:
     * 1,189-1,201 against 1,228-1,244 tok/s) */
    __shared__ float ss_part[GEMV_WARPS];
    ss = warp_sum(ss);
    if (lane == 0)
        ss_part[warp] = ss;
    __syncthreads();
    float norm = 1.0f;
    if (gain) {
        ss = 0.0f;
        for (int w = 0; w < GEMV_WARPS; w++)
            ss += ss_part[w];
        norm = rsqrtf(ss / (float)m.cols + eps);
    }
    trace_mark(0);
    mbar_wait(&bar, 0);
    trace_mark(1);
    /* lane (g, c): rows g and g + 8 of each tile (clamped into the staged
     * rows: a row past them only makes an output nobody reads), columns
     * 8c .. 8c + 7 of each chunk; B's column 0 is x's hi half (lanes g =
     * 0), 1 its lo, the others zero. No branch in the loop, so that the
     * loads of U chunks go out together; U chunks a round and ACC
     * accumulators a tile keep the chains of dependent mmas short. */
    const int U = TILES == 1 ? 4 : 2, ACC = TILES == 1 ? 4 : 2;
    uint32_t g = lane / 4, c = lane % 4, chunks = m.cols / 32;
    const unsigned char *row_g[TILES], *row_g8[TILES];
#pragma unroll
    for (int t = 0; t < TILES; t++) {
        row_g[t] = staged + (size_t)min(16 * t + g, total - 1) * stride + c * 16;
        row_g8[t] = staged + (size_t)min(16 * t + g + 8, total - 1) * stride + c * 16;
    }
    const unsigned char *x_half = (const unsigned char *)(g == 0 ? x_hi : x_lo) + c * 16;
    uint32_t x_lane = g < 2 ? ~0u : 0u;
    float acc[TILES][ACC][4];
#pragma unroll
    for (int t = 0; t < TILES; t++)
#pragma unroll
        for (int i = 0; i < ACC; i++)
            acc[t][i][0] = acc[t][i][1] = acc[t][i][2] = acc[t][i][3] = 0.0f;
    for (uint32_t chunk0 = warp; chunk0 < chunks; chunk0 += U * GEMV_WARPS) {
        uint4 xb[U], a[U][TILES], b[U][TILES];
#pragma unroll
        for (int u = 0; u < U; u++) {
            /* past the last chunk: the last chunk's rows (finite) times a zero x */
            uint32_t chunk = chunk0 + u * GEMV_WARPS, off = min(chunk, chunks - 1) * 64;
            uint32_t in = chunk < chunks ? x_lane : 0u;
            xb[u] = *(const uint4 *)(x_half + off);
            xb[u].x &= in, xb[u].y &= in, xb[u].z &= in, xb[u].w &= in;
#pragma unroll
            for (int t = 0; t < TILES; t++)
                a[u][t] = *(const uint4 *)(row_g[t] + off), b[u][t] = *(const uint4 *)(row_g8[t] + off);
        }
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int t = 0; t < TILES; t++) {
                const uint32_t first[4] = {a[u][t].x, b[u][t].x, a[u][t].y, b[u][t].y};
                const uint32_t second[4] = {a[u][t].z, b[u][t].z, a[u][t].w, b[u][t].w};
                mma_bf16(acc[t][(2 * u) % ACC], first, xb[u].x, xb[u].y);
                mma_bf16(acc[t][(2 * u + 1) % ACC], second, xb[u].z, xb[u].w);
            }
    }
    if (c == 0) /* columns 0 and 1 of rows g and g + 8: the hi and lo halves' dots */
#pragma unroll
        for (int t = 0; t < TILES; t++) {
            float dot_g = 0.0f, dot_g8 = 0.0f;
#pragma unroll
            for (int i = 0; i < ACC; i++)
                dot_g += acc[t][i][0] + acc[t][i][1], dot_g8 += acc[t][i][2] + acc[t][i][3];
            uint32_t r = 16 * t + g;
            if (r < total)
                partial[warp][r] = dot_g;
            if (r + 8 < total)
                partial[warp][r + 8] = dot_g8;
        }
    trace_mark(2);
    __syncthreads();
    if (threadIdx.x < n) {
        float dot[N_ROWS];
        for (int j = 0; j < N_ROWS; j++) {
            dot[j] = 0.0f;
            for (int w = 0; w < GEMV_WARPS; w++)
                dot[j] += partial[w][j * per_block + threadIdx.x];
            dot[j] *= norm;
        }
        y[r0 + threadIdx.x] = before + (N_ROWS == 2 ? gated<MODE>(dot[0], dot[N_ROWS - 1]) : dot[0]);
    }
}

template <int MODE, int TILES>
__global__ void __launch_bounds__(GEMV_WARPS *WARP, 2)
    gemv_wide_kernel(dmat m, uint32_t rows, uint32_t per_block, const float *x, const float *gain, float eps,
                     float *y) {
    gemv_wide_rows<MODE, TILES>(m, rows, per_block, x, gain, eps, y);
}

/* gemv_wide_rows' 16-row tiles (its TILES) for per_block rows (pairs). */
static inline uint32_t gemv_wide_tiles(uint32_t per_block, bool pair) { return ((pair ? 2 : 1) * per_block + 15) / 16; }

/* Shared memory of gemv_wide_rows: per_block rows (pairs) of m at their padded
 * stride, then x's hi and lo halves. */
static inline size_t gemv_wide_bytes(const dmat &m, uint32_t per_block, bool pair) {
    return (size_t)(pair ? 2 : 1) * per_block * wide_row_stride(m.cols) + 2 * m.cols * sizeof(__nv_bfloat16);
}

/* The output head of a decode step, y[t][r] = dot(W[r], x[t]), with each
 * token's argmax folded into keys ([NT][ARGMAX_SLOTS]) on the way, saving
 * a pass over the logits. Its rows are many (151,936 of 1,024 columns),
 * so a grid of a few blocks an SM loops over them, a warp HEAD_ROWS rows
 * at a time, the next rows' loads issued before this one's sums: a block
 * per 8 rows (gemv_kernel) kept too few loads in flight. Grid
 * HEAD_BLOCKS_PER_SM blocks an SM, block 256. */
#define HEAD_ROWS          2
#define HEAD_BLOCKS_PER_SM 3
template <int NT>
__global__ void __launch_bounds__(GEMV_WARPS *WARP, HEAD_BLOCKS_PER_SM)
    gemv_head_kernel(dmat m, const float *x, float *y, uint32_t ldy, unsigned long long *keys) {
    __shared__ unsigned long long best_of[GEMV_WARPS][NT];
    uint32_t lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, first = lane * 8, step = WARP * 8;
    uint32_t n_warps = gridDim.x * GEMV_WARPS, r = blockIdx.x * GEMV_WARPS + warp;
    uint4 raw[HEAD_ROWS][GEMV_UNROLL];
    float scale[HEAD_ROWS][GEMV_UNROLL], offset[HEAD_ROWS][GEMV_UNROLL];
    gemv_load<HEAD_ROWS>(m, r, n_warps, first, step, raw, scale, offset);
    pdl_enter();
    unsigned long long best[NT];
    for (int t = 0; t < NT; t++)
        best[t] = 0;
    for (; r < m.rows; r += HEAD_ROWS * n_warps) {
        float acc[HEAD_ROWS + 1][NT];
        for (int j = 0; j <= HEAD_ROWS; j++)
            for (int t = 0; t < NT; t++)
                acc[j][t] = 0.0f;
        for (uint32_t k0 = first; k0 < m.cols; k0 += step * GEMV_UNROLL) {
            if (k0 != first)
                gemv_load<HEAD_ROWS>(m, r, n_warps, k0, step, raw, scale, offset);
            gemv_dots<HEAD_ROWS, NT>(m, raw, scale, offset, x, NULL, k0, step, acc);
        }
        gemv_load<HEAD_ROWS>(m, r + HEAD_ROWS * n_warps, n_warps, first, step, raw, scale, offset);
        for (int j = 0; j < HEAD_ROWS; j++)
            for (int t = 0; t < NT; t++) {
                float v = warp_sum(acc[j][t]);
                uint32_t row = r + j * n_warps;
                if (row >= m.rows)
                    continue;
                if (lane == t)
                    y[(size_t)t * ldy + row] = v;
                unsigned long long key = argmax_key(v, row);
                best[t] = key > best[t] ? key : best[t];
            }
    }
    if (lane == 0)
        for (int t = 0; t < NT; t++)
            best_of[warp][t] = best[t];
    __syncthreads();
    if (threadIdx.x >= NT)
        return;
    unsigned long long key = 0;
    for (int w = 0; w < GEMV_WARPS; w++)
        key = best_of[w][threadIdx.x] > key ? best_of[w][threadIdx.x] : key;
    if (key)
        atomicMax(keys + (size_t)threadIdx.x * ARGMAX_SLOTS + blockIdx.x % ARGMAX_SLOTS, key);
}

enum { QKV_REGISTERS, QKV_STAGED_BF16, QKV_STAGED_Q8 };

/* gemv_qkv_kernel's one-token form over gemv_wide_rows: per_block divides
 * head_dim. Grid q_dim + 2 kv_dim over per_block, block 256. */
template <int TILES>
__global__ void __launch_bounds__(GEMV_WARPS *WARP, 2)
    gemv_qkv_wide_kernel(dmat m, uint32_t per_block, const float *x, const float *gain, float eps, float *qkv,
                         rope_args ra, unsigned *head_done) {
    __shared__ float v[512];
    gemv_wide_rows<OUT_STORE, TILES>(m, m.rows, per_block, x, gain, eps, qkv);
    uint32_t j = blockIdx.x * per_block / ra.head_dim;
    if (!block_is_last(&head_done[j], ra.head_dim / per_block))
        return;
    trace_mark(3);
    qkv_head_finish(ra, j, 0, v);
}

/* The q|k|v GEMV of a decode step with qk_rope_kernel's work as its tail:
 * a block's 8 / wpr rows lie in one head (head_dim a multiple of 8), and
 * the last of a head's blocks to finish (head_done[j] counts them, and is
 * reset by that block for the next layer) finishes the head for every
 * token. Saves a launch and a kernel boundary a layer. STAGED (a
 * QKV_* value): the GEMV is gemv_rows_staged (2 to 8 tokens). Grid
 * (q_dim + 2 kv_dim) * wpr / 8, block 256; head_dim <= 256. */
template <int NT, int STAGED>
__global__ void __launch_bounds__(GEMV_WARPS *WARP)
    gemv_qkv_kernel(dmat m, uint32_t wpr, const float *x, const float *gain, float eps, float *qkv, rope_args ra,
                    unsigned *head_done) {
    __shared__ float v[512];
    if (STAGED) /* gemv_rows_staged's shared memory */
        gemv_rows_staged<NT, OUT_STORE, STAGED == QKV_STAGED_Q8>(m, m.rows, wpr, x, gain, eps, qkv, m.rows);
    else
        gemv_rows<NT, OUT_STORE>(m, m.rows, wpr, x, gain, eps, qkv, m.rows);
    uint32_t rows_per_block = GEMV_WARPS / wpr, j = blockIdx.x * rows_per_block / ra.head_dim;
    if (!block_is_last(&head_done[j], ra.head_dim / rows_per_block))
        return;
    for (uint32_t t = 0; t < NT; t++)
        qkv_head_finish(ra, j, t, v);
}

#endif
