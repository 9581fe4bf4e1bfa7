/* The CUDA engine's kernels. Each is short and does one stage of the step
 * (worker-cuda/engine.cu runs them in order); shapes are in the comments.
 * All arithmetic is float32; weights are read as BF16 or Q8_0. */
#ifndef INFERNO_CUDA_KERNELS_CUH
#define INFERNO_CUDA_KERNELS_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

/* A weight matrix on the GPU: [rows][cols], BF16, or 8-bit quants with a
 * float scale (and, for types with minimums, an offset) per group of 32 or
 * 16 values: w = q * scale - offset. Q8_0 is its quants and scales; the
 * other quantized types (Q5_0, Q4_K, Q6_K, ...) are widened to this form at
 * load, exactly (tensor_split_row), so one kernel reads them all and loads
 * stay 8-byte aligned. */
enum { DMAT_BF16, DMAT_Q8 };
typedef struct {
    int type;
    uint32_t rows, cols;
    __nv_bfloat16 *w; /* DMAT_BF16: [rows][cols] */
    int8_t *qs;       /* DMAT_Q8: [rows][cols] */
    float *scale;     /* DMAT_Q8: [rows][cols / group] */
    float *offset;    /* DMAT_Q8: [rows][cols / group], or NULL for none */
    uint32_t group;   /* DMAT_Q8: values per scale, 32 or 16 */
} dmat;

/* Element i of a DMAT_Q8 matrix (i counted over the whole matrix). */
__device__ __forceinline__ float dmat_q8_at(const dmat &m, size_t i) {
    size_t g = i / m.group;
    return m.offset ? fmaf((float)m.qs[i], m.scale[g], -m.offset[g]) : (float)m.qs[i] * m.scale[g];
}

/* What a matrix-vector kernel does with its result y = x W^T. */
enum { OUT_STORE, OUT_ADD, OUT_SILU_PAIR, OUT_GELU_PAIR };

/* The gated FFN activation of a gate|up pair: silu(g) * u, or tanh-GELU(g) * u (gemma3). */
template <int MODE> __device__ __forceinline__ float gated(float g, float u) {
    if (MODE == OUT_GELU_PAIR)
        return 0.5f * g * (1.0f + tanhf(0.7978845608f * (g + 0.044715f * g * g * g))) * u;
    return g / (1.0f + expf(-g)) * u;
}

#define WARP 32

/* Programmatic dependent launch (sm_90): a kernel launched with the PDL
 * attribute may start while the one before it finishes. pdl_wait() blocks
 * until the previous kernel has completed and its writes are visible, so
 * nothing a kernel reads from earlier kernels may be read before it; only
 * weights (never written) are. pdl_allow_next() lets the next kernel's
 * blocks be scheduled; it is called right after the wait, as each kernel's
 * writes are only read after the next kernel's own wait. Without the
 * attribute both are no-ops. */
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_allow_next() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* Both, at the top of a kernel that prefetches nothing. */
__device__ __forceinline__ void pdl_enter() {
    pdl_wait();
    pdl_allow_next();
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = WARP / 2; o > 0; o /= 2)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = WARP / 2; o > 0; o /= 2)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32, at most 1024); every
 * thread gets the total. */
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[32];
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, n_warps = blockDim.x / WARP;
    v = warp_sum(v);
    __syncthreads(); /* partial may still be read by a previous call */
    if (lane == 0)
        partial[warp] = v;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < n_warps; w++)
        total += partial[w];
    return total;
}

/* Maximum over the block, as block_sum. */
__device__ __forceinline__ float block_max(float v) {
    __shared__ float partial[32];
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, n_warps = blockDim.x / WARP;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0)
        partial[warp] = v;
    __syncthreads();
    float m = partial[0];
    for (int w = 1; w < n_warps; w++)
        m = fmaxf(m, partial[w]);
    return m;
}

/* x[t] = embedding row tokens[t] * scale. Grid T, block 256. */
__global__ void embed_kernel(dmat e, const int32_t *tokens, float scale, float *x) {
    pdl_enter();
    int t = blockIdx.x;
    size_t row = (size_t)tokens[t] * e.cols;
    for (uint32_t i = threadIdx.x; i < e.cols; i += blockDim.x)
        x[(size_t)t * e.cols + i] =
            (e.type == DMAT_BF16 ? __bfloat162float(e.w[row + i]) : dmat_q8_at(e, row + i)) * scale;
}

/* x[t] += y[t] * rsqrt(mean(y[t]^2) + eps) * gain: a block's output,
 * normalized before the residual add (gemma3). Grid T, block 256. */
__global__ void add_rmsnorm_kernel(float *x, const float *y, const float *gain, float eps, uint32_t n) {
    pdl_enter();
    size_t t = blockIdx.x;
    float ss = 0.0f;
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
        ss += y[t * n + i] * y[t * n + i];
    float scale = rsqrtf(block_sum(ss) / (float)n + eps);
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
        x[t * n + i] += y[t * n + i] * scale * gain[i];
}

/* out[r] = x[src ? src[r] : r] * rsqrt(mean(x^2) + eps) * gain, or an
 * unscaled copy when gain is NULL; written as float32 (out) and/or as a
 * bf16 high part plus the bf16 rounding of the remainder (hi, lo): the two
 * halves carry ~16 mantissa bits into the tensor cores. Grid rows, block 256. */
__global__ void rmsnorm_kernel(const float *x, const int32_t *src, const float *gain, float eps, uint32_t n, float *out,
                               __nv_bfloat16 *hi, __nv_bfloat16 *lo) {
    pdl_enter();
    int r = blockIdx.x;
    const float *row = x + (size_t)(src ? src[r] : r) * n;
    float scale = 1.0f;
    if (gain) {
        float ss = 0.0f;
        for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
            ss += row[i] * row[i];
        scale = rsqrtf(block_sum(ss) / (float)n + eps);
    }
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
        float v = gain ? row[i] * scale * gain[i] : row[i];
        if (out)
            out[(size_t)r * n + i] = v;
        if (hi) {
            __nv_bfloat16 h = __float2bfloat16_rn(v);
            hi[(size_t)r * n + i] = h;
            lo[(size_t)r * n + i] = __float2bfloat16_rn(v - __bfloat162float(h));
        }
    }
}

/* out[t][r] = act(gu[t][r]) * gu[t][ffn + r], MODE OUT_SILU_PAIR or OUT_GELU_PAIR. Grid T, block 256. */
template <int MODE> __global__ void gated_mul_kernel(const float *gu, uint32_t ffn, float *out) {
    pdl_enter();
    int t = blockIdx.x;
    for (uint32_t i = threadIdx.x; i < ffn; i += blockDim.x)
        out[(size_t)t * ffn + i] = gated<MODE>(gu[(size_t)t * 2 * ffn + i], gu[(size_t)t * 2 * ffn + ffn + i]);
}

/* A DMAT_Q8 matrix as bf16 (for the tensor-core path). Grid-stride. */
__global__ void dequant_q8_kernel(dmat m, __nv_bfloat16 *out) {
    pdl_enter();
    size_t n = (size_t)m.rows * m.cols;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = __float2bfloat16_rn(dmat_q8_at(m, i));
}

/* Eight consecutive weights of a row as raw bits (BF16: 16 bytes; Q8_0:
 * the 8 quants in .x and .y), then as floats (Q8_0: the quants; the
 * caller applies the block's scale). */
__device__ __forceinline__ uint4 load8_raw(const dmat &m, size_t row, uint32_t k) {
    if (m.type == DMAT_BF16)
        return __ldg((const uint4 *)(m.w + row * m.cols + k));
    int2 q = __ldg((const int2 *)(m.qs + row * m.cols + k));
    return make_uint4((uint32_t)q.x, (uint32_t)q.y, 0, 0);
}

__device__ __forceinline__ void unpack8(int type, uint4 raw, float w[8]) {
    if (type == DMAT_BF16) {
        const __nv_bfloat162 *p = (const __nv_bfloat162 *)&raw;
        for (int i = 0; i < 4; i++) {
            float2 f = __bfloat1622float2(p[i]);
            w[2 * i] = f.x, w[2 * i + 1] = f.y;
        }
    } else {
        const int8_t *q = (const int8_t *)&raw;
        for (int i = 0; i < 8; i++)
            w[i] = (float)q[i];
    }
}

__device__ __forceinline__ float dot8(const float w[8], const float *x) {
    float4 a = __ldg((const float4 *)x), b = __ldg((const float4 *)(x + 4));
    return w[0] * a.x + w[1] * a.y + w[2] * a.z + w[3] * a.w + w[4] * b.x + w[5] * b.y + w[6] * b.z + w[7] * b.w;
}

/* Weight-streaming matrix-vector product for a few tokens (decode):
 * y[t][r] (=, +=) dot(W[r], x[t]) for t < NT, where with a gain x[t] is
 * first RMS-normalized and scaled by it (each warp finds the norm itself,
 * which saves a kernel and a pass), or with OUT_SILU_PAIR (OUT_GELU_PAIR)
 * y[t][r] = silu(dot(W[r], x[t])) * dot(W[rows + r], x[t]) (gate and up
 * stacked in one matrix; tanh GELU for the latter). One warp per output row; each lane takes 8
 * columns at a time with 16-byte loads, GEMV_UNROLL such loads in flight
 * before the arithmetic. cols must be a multiple of 8 (of the group for DMAT_Q8).
 * Grid ceil(rows / 8), block 256. */
#define GEMV_UNROLL 4

template <int N_ROWS>
__device__ __forceinline__ void gemv_load(const dmat &m, uint32_t r, uint32_t rows, uint32_t k0,
                                          uint4 raw[N_ROWS][GEMV_UNROLL], float scale[N_ROWS][GEMV_UNROLL],
                                          float offset[N_ROWS][GEMV_UNROLL]) {
    for (int j = 0; j < N_ROWS; j++)
        for (int u = 0; u < GEMV_UNROLL; u++) {
            uint32_t k = k0 + u * WARP * 8;
            size_t row = r + (size_t)j * rows, g = row * (m.cols / m.group) + k / m.group;
            bool q8 = m.type == DMAT_Q8 && k < m.cols;
            raw[j][u] = k < m.cols ? load8_raw(m, row, k) : make_uint4(0, 0, 0, 0);
            scale[j][u] = q8 ? __ldg(m.scale + g) : 1.0f;
            offset[j][u] = q8 && m.offset ? __ldg(m.offset + g) : 0.0f;
        }
}

template <int NT, int MODE>
__global__ void __launch_bounds__(256)
    gemv_kernel(dmat m, uint32_t rows, const float *x, const float *gain, float eps, float *y, uint32_t ldy) {
    uint32_t r = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const int N_ROWS = MODE == OUT_SILU_PAIR || MODE == OUT_GELU_PAIR ? 2 : 1;
    uint4 raw[N_ROWS][GEMV_UNROLL];
    float scale[N_ROWS][GEMV_UNROLL], offset[N_ROWS][GEMV_UNROLL];
    /* the first weights are loaded while the previous kernel finishes (a
     * whole row, for rows of up to 1024 BF16 columns) */
    if (r < rows)
        gemv_load<N_ROWS>(m, r, rows, lane * 8, raw, scale, offset);
    pdl_enter();
    if (r >= rows)
        return;
    float norm[NT];
    for (int t = 0; t < NT; t++) {
        float ss = 0.0f;
        for (uint32_t k = lane * 4; gain && k < m.cols; k += WARP * 4) {
            float4 v = __ldg((const float4 *)(x + (size_t)t * m.cols + k));
            ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
        norm[t] = gain ? rsqrtf(warp_sum(ss) / (float)m.cols + eps) : 1.0f;
    }
    float acc[N_ROWS][NT];
    for (int j = 0; j < N_ROWS; j++)
        for (int t = 0; t < NT; t++)
            acc[j][t] = 0.0f;
    for (uint32_t k0 = lane * 8; k0 < m.cols; k0 += WARP * 8 * GEMV_UNROLL) {
        if (k0 != lane * 8)
            gemv_load<N_ROWS>(m, r, rows, k0, raw, scale, offset);
        for (int u = 0; u < GEMV_UNROLL; u++) {
            uint32_t k = k0 + u * WARP * 8;
            if (k >= m.cols)
                break;
            for (int j = 0; j < N_ROWS; j++) {
                float w[8];
                unpack8(m.type, raw[j][u], w);
                if (m.offset) { /* the whole weight first, as the host's dequantizer: q * scale - offset */
                    for (int i = 0; i < 8; i++)
                        w[i] = fmaf(w[i], scale[j][u], -offset[j][u]);
                    scale[j][u] = 1.0f;
                }
                if (gain) {
                    float4 g0 = __ldg((const float4 *)(gain + k)), g1 = __ldg((const float4 *)(gain + k + 4));
                    w[0] *= g0.x, w[1] *= g0.y, w[2] *= g0.z, w[3] *= g0.w;
                    w[4] *= g1.x, w[5] *= g1.y, w[6] *= g1.z, w[7] *= g1.w;
                }
                for (int t = 0; t < NT; t++)
                    acc[j][t] += scale[j][u] * dot8(w, x + (size_t)t * m.cols + k);
            }
        }
    }
    for (int t = 0; t < NT; t++) {
        float a = warp_sum(acc[0][t]) * norm[t];
        if (N_ROWS == 2)
            a = gated<MODE>(a, warp_sum(acc[N_ROWS - 1][t]) * norm[t]);
        if (lane == 0) {
            float *out = y + (size_t)t * ldy + r;
            *out = MODE == OUT_ADD ? *out + a : a;
        }
    }
}

/* Per token t and head j of the fused q|k|v rows: add the bias, RMSNorm
 * the head (qk_norm), rotate it (NeoX RoPE at position pos[t]); q heads go
 * to q[t], k and v heads to the layer's KV cache at slot[t]. Grid
 * (n_heads + n_kv_heads, T), block head_dim threads rounded up to a warp. */
struct rope_args {
    const float *qkv;             /* [T][q_dim + 2 kv_dim] */
    const float *bias;            /* [q_dim + 2 kv_dim] or NULL */
    const float *q_gain, *k_gain; /* [head_dim] or NULL */
    const float *inv_freq;        /* [head_dim / 2] */
    const int32_t *pos, *slot;    /* [T] */
    float *q;                     /* [T][q_dim] */
    void *k_cache, *v_cache;      /* [slots][kv_dim], float or (kv_f16) half */
    uint32_t n_heads, head_dim, q_dim, kv_dim;
    float eps;
    int kv_f16;
};

/* A KV cache element as float, and back. */
__device__ __forceinline__ float kv_load(float v) { return v; }
__device__ __forceinline__ float kv_load(__half v) { return __half2float(v); }
__device__ __forceinline__ void kv_store(void *cache, size_t at, float v, int f16) {
    if (f16)
        ((__half *)cache)[at] = __float2half_rn(v);
    else
        ((float *)cache)[at] = v;
}

__global__ void qk_rope_kernel(rope_args a) {
    __shared__ float v[512];
    pdl_enter();
    uint32_t j = blockIdx.x, t = blockIdx.y, i = threadIdx.x, hd = a.head_dim, half = hd / 2;
    uint32_t width = a.q_dim + 2 * a.kv_dim;
    bool is_q = j < a.n_heads, active = i < hd;
    uint32_t col = is_q ? j * hd + i : a.q_dim + (j - a.n_heads) * hd + i;
    float x = active ? a.qkv[(size_t)t * width + col] + (a.bias ? a.bias[col] : 0.0f) : 0.0f;
    const float *gain = is_q ? a.q_gain : a.k_gain;
    if (gain) /* every thread takes part in the sum */
        x = x * rsqrtf(block_sum(x * x) / (float)hd + a.eps) * (active ? gain[i] : 0.0f);
    v[i] = x;
    __syncthreads();
    if (!active)
        return;
    float angle = (float)a.pos[t] * a.inv_freq[i % half], c = cosf(angle), s = sinf(angle);
    float rotated = i < half ? v[i] * c - v[i + half] * s : v[i - half] * s + v[i] * c;
    if (is_q) {
        a.q[(size_t)t * a.q_dim + j * hd + i] = rotated;
    } else {
        size_t at = (size_t)a.slot[t] * a.kv_dim + (j - a.n_heads) * hd + i;
        kv_store(a.k_cache, at, rotated, a.kv_f16);
        uint32_t vcol = col + a.kv_dim;
        kv_store(a.v_cache, at, a.qkv[(size_t)t * width + vcol] + (a.bias ? a.bias[vcol] : 0.0f), a.kv_f16);
    }
}

/* Causal attention over each token's cached positions 0..pos[t]
 * (flash-decoding): block (g, t, z) takes the GSUB query heads of head
 * group g (GSUB divides the GQA group), which share one KV head, so each key and value row is read once
 * for all of them, and the z-th of gridDim.z equal slices of the
 * positions. Its 4 warps split the slice, ATTN_BATCH positions at a time,
 * each keeping an online softmax per head; the block merges them. With one slice the result is final;
 * otherwise each slice leaves (max, sum, unnormalized output) in part and
 * attention_merge_kernel combines the slices. Lane l holds elements
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
    uint32_t n_heads, group, head_dim, q_dim, kv_dim, block_size;
    uint32_t window; /* a token sees its `window` latest positions; 0 = all (sliding-window layers) */
    float scale;
};

template <int EPL, int GSUB, typename KV>
__global__ void __launch_bounds__(ATTN_WARPS *WARP) attention_kernel(attention_args a) {
    __shared__ float m_w[ATTN_WARPS][GSUB], l_w[ATTN_WARPS][GSUB], acc_w[ATTN_WARPS][GSUB][EPL * WARP];
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
            float s[ATTN_BATCH], m_new = m[g];
#pragma unroll
            for (int j = 0; j < ATTN_BATCH; j++) {
                s[j] = 0.0f;
#pragma unroll
                for (int i = 0; i < EPL; i++)
                    s[j] += q[g][i] * kr[j][i];
            }
#pragma unroll
            for (int j = 0; j < ATTN_BATCH; j++) {
                s[j] = warp_sum(s[j]);
                if (p0 + j < end)
                    m_new = fmaxf(m_new, s[j]);
            }
            float corr = expf(m[g] - m_new);
            l[g] *= corr;
#pragma unroll
            for (int i = 0; i < EPL; i++)
                acc[g][i] *= corr;
#pragma unroll
            for (int j = 0; j < ATTN_BATCH; j++) {
                float w = p0 + j < end ? expf(s[j] - m_new) : 0.0f;
                l[g] += w;
#pragma unroll
                for (int i = 0; i < EPL; i++)
                    acc[g][i] += w * vr[j][i];
            }
            m[g] = m_new;
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
    __syncthreads();
#pragma unroll
    for (int g = 0; g < GSUB; g++) {
        float m_all = -INFINITY, l_all = 0.0f;
#pragma unroll
        for (int w = 0; w < ATTN_WARPS; w++)
            m_all = fmaxf(m_all, m_w[w][g]);
#pragma unroll
        for (int w = 0; w < ATTN_WARPS; w++)
            l_all += m_w[w][g] == -INFINITY ? 0.0f : l_w[w][g] * expf(m_w[w][g] - m_all);
        uint32_t h = h0 + g;
        float *part = a.part + (((size_t)t * a.n_heads + h) * slices + blockIdx.z) * (hd + 2);
        for (uint32_t i = threadIdx.x; i < hd; i += blockDim.x) {
            float o = 0.0f;
#pragma unroll
            for (int w = 0; w < ATTN_WARPS; w++)
                o += m_w[w][g] == -INFINITY ? 0.0f : acc_w[w][g][i] * expf(m_w[w][g] - m_all);
            if (slices == 1)
                a.out[(size_t)t * a.q_dim + h * hd + i] = o / l_all;
            else
                part[2 + i] = o;
        }
        if (slices > 1 && threadIdx.x == 0)
            part[0] = m_all, part[1] = l_all;
    }
}

/* Combines the slices of attention_kernel: out = sum_z e^(m_z - M) o_z /
 * sum_z e^(m_z - M) l_z. The first warp weighs the slices (one a lane, so
 * at most 32), then every thread sums its elements over them. Grid
 * (n_heads, T), block 128. */
__global__ void attention_merge_kernel(attention_args a, uint32_t slices) {
    __shared__ float weight[WARP];
    pdl_enter();
    uint32_t h = blockIdx.x, t = blockIdx.y, hd = a.head_dim, lane = threadIdx.x % WARP;
    const float *part = a.part + ((size_t)t * a.n_heads + h) * slices * (hd + 2);
    if (threadIdx.x < WARP) {
        float mz = lane < slices ? part[lane * (hd + 2)] : -INFINITY;
        float m_all = warp_max(mz), w = mz == -INFINITY ? 0.0f : expf(mz - m_all);
        float l_all = warp_sum(lane < slices ? w * part[lane * (hd + 2) + 1] : 0.0f);
        weight[lane] = w / l_all;
    }
    __syncthreads();
    for (uint32_t i = threadIdx.x; i < hd; i += blockDim.x) {
        float o = 0.0f;
        for (uint32_t z = 0; z < slices; z++)
            o += weight[z] * part[z * (hd + 2) + 2 + i];
        a.out[(size_t)t * a.q_dim + h * hd + i] = o;
    }
}

/* The first index of the largest of row[0..n), in every thread of the
 * block (blockDim.x a multiple of 32); sv and si: 32 each in shared memory. */
__device__ int32_t block_argmax(const float *row, uint32_t n, float *sv, int32_t *si) {
    float bv = -INFINITY;
    int32_t bi = 0x7fffffff;
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
        if (row[i] > bv)
            bv = row[i], bi = (int32_t)i;
    for (int o = WARP / 2; o > 0; o /= 2) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int32_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi))
            bv = ov, bi = oi;
    }
    __syncthreads();
    if (threadIdx.x % WARP == 0)
        sv[threadIdx.x / WARP] = bv, si[threadIdx.x / WARP] = bi;
    __syncthreads();
    for (uint32_t w = 0; w < blockDim.x / WARP; w++)
        if (sv[w] > bv || (sv[w] == bv && si[w] < bi))
            bv = sv[w], bi = si[w];
    return bi == 0x7fffffff ? 0 : bi;
}

/* ids[r] = the first index of the largest logit of row r. Grid rows, block 1024. */
__global__ void argmax_kernel(const float *logits, uint32_t vocab, int32_t *ids) {
    __shared__ float best_v[WARP];
    __shared__ int32_t best_i[WARP];
    pdl_enter();
    int32_t id = block_argmax(logits + (size_t)blockIdx.x * vocab, vocab, best_v, best_i);
    if (threadIdx.x == 0)
        ids[blockIdx.x] = id;
}

#endif
