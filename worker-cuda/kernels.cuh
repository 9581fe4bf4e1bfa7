/* The CUDA engine's kernels. Each is short and does one stage of the step
 * (worker-cuda/engine.cu runs them in order); shapes are in the comments.
 * All arithmetic is float32; weights are read as BF16 or Q8_0. */
#ifndef INFERNO_CUDA_KERNELS_CUH
#define INFERNO_CUDA_KERNELS_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>

/* engine.cu includes engine_cuda.h (CUDA_KV_*) before this file */

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

/* ---- bulk copies into shared memory, completing on mbarriers ---- */

__device__ __forceinline__ uint32_t smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void mbar_init(uint64_t *bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}

/* Makes this thread's mbar_init visible to the copy engine (the async
 * proxy) and to the block's other threads after their next barrier. */
__device__ __forceinline__ void mbar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }

__device__ __forceinline__ void mbar_expect_tx(uint64_t *bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}

__device__ __forceinline__ void mbar_wait(uint64_t *bar, uint32_t parity) {
    asm volatile("{\n"
                 ".reg .pred done;\n"
                 "WAIT_%=:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
                 "@!done bra WAIT_%=;\n"
                 "}" ::"r"(smem_addr(bar)),
                 "r"(parity)
                 : "memory");
}

/* bytes (a multiple of 16, both addresses 16-byte aligned) from global
 * memory into this block's shared memory, counted on bar. */
__device__ __forceinline__ void bulk_copy(void *dst, const void *src, uint32_t bytes, uint64_t *bar) {
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(smem_addr(dst)),
        "l"(src), "r"(bytes), "r"(smem_addr(bar))
        : "memory");
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

/* The block's barrier: __syncthreads, or (NAMED) barrier 1 over the first
 * NAMED_SYNC_THREADS threads: the persistent decode kernel's compute
 * threads, whose copy warp never joins a barrier. */
#define NAMED_SYNC_THREADS 256
template <bool NAMED> __device__ __forceinline__ void block_sync() {
    if (NAMED)
        asm volatile("bar.sync 1, %0;" ::"n"(NAMED_SYNC_THREADS) : "memory");
    else
        __syncthreads();
}

/* Counts this block as done in *counter, out of n blocks that share it;
 * true, in every thread, for the last to arrive, which resets the counter
 * for the next kernel and may then read what the others wrote (with
 * __ldcg). Every thread must call it after its last store. */
template <bool NAMED = false> __device__ __forceinline__ bool block_is_last(unsigned *counter, unsigned n) {
    __shared__ bool last;
    __threadfence(); /* this block's stores are visible before it is counted */
    block_sync<NAMED>();
    if (threadIdx.x == 0) {
        last = atomicAdd(counter, 1u) == n - 1;
        if (last)
            *counter = 0;
    }
    block_sync<NAMED>();
    if (last)
        __threadfence();
    return last;
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

/* Float order as unsigned order. */
__device__ __forceinline__ uint32_t order_key(float v) {
    uint32_t u = __float_as_uint(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* Argmax over many blocks: each block folds its best (logit, id) of a row
 * into one of the row's ARGMAX_SLOTS keys with a 64-bit atomicMax (spread
 * over slots so that thousands of blocks do not queue on one address),
 * and the host takes the largest of them (argmax_ids in engine.cu). A key orders
 * by value, then by the lower id, as the host's sampler_argmax; NaN and
 * -inf give 0, which nothing else is, as they never win there either. */
#define ARGMAX_SLOTS 32
__device__ __forceinline__ unsigned long long argmax_key(float v, uint32_t id) {
    return v > -INFINITY ? (unsigned long long)order_key(v) << 32 | (uint32_t)~id : 0ull;
}

/* The largest of the warp's keys, in every lane. */
__device__ __forceinline__ unsigned long long warp_max_key(unsigned long long key) {
    for (int o = WARP / 2; o > 0; o /= 2) {
        unsigned long long other = __shfl_xor_sync(0xffffffffu, key, o);
        key = other > key ? other : key;
    }
    return key;
}

/* The largest of the block's keys (a thread's own: key) into
 * keys[blockIdx.x % ARGMAX_SLOTS]. Every thread of the block calls it. */
__device__ __forceinline__ void block_fold_key(unsigned long long key, unsigned long long *keys) {
    __shared__ unsigned long long best[32];
    key = warp_max_key(key);
    if (threadIdx.x % WARP == 0)
        best[threadIdx.x / WARP] = key;
    __syncthreads();
    if (threadIdx.x != 0)
        return;
    for (uint32_t w = 1; w < blockDim.x / WARP; w++)
        key = best[w] > key ? best[w] : key;
    if (key)
        atomicMax(keys + blockIdx.x % ARGMAX_SLOTS, key);
}

/* x[t] = embedding row tokens[t] * scale; block 0 also clears the step's
 * n_keys argmax keys (or none: keys NULL), which the output head's GEMV
 * fills. Grid T, block 256. */
__global__ void embed_kernel(dmat e, const int32_t *tokens, float scale, float *x, unsigned long long *keys,
                             uint32_t n_keys) {
    pdl_enter();
    int t = blockIdx.x;
    for (uint32_t i = threadIdx.x; keys && t == 0 && i < n_keys; i += blockDim.x)
        keys[i] = 0;
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

/* v as a bf16 high part and the bf16 rounding of the remainder: the two
 * halves carry ~16 mantissa bits into the tensor cores. */
__device__ __forceinline__ void bf16_split(float v, __nv_bfloat16 &hi, __nv_bfloat16 &lo) {
    hi = __float2bfloat16_rn(v);
    lo = __float2bfloat16_rn(v - __bfloat162float(hi));
}

/* bf16_split of (x, y) as packed pairs (x in the low half: memory order,
 * and as mma fragments want it). */
__device__ __forceinline__ void bf16_split2(float x, float y, uint32_t &hi, uint32_t &lo) {
    __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
    float2 hf = __bfloat1622float2(h);
    __nv_bfloat162 l = __floats2bfloat162_rn(x - hf.x, y - hf.y);
    hi = *(const uint32_t *)&h, lo = *(const uint32_t *)&l;
}

/* Four floats at out[at], or split into hi[at] and lo[at] (8 bytes each). */
__device__ __forceinline__ void store_row4(float4 v, size_t at, float *out, __nv_bfloat16 *hi, __nv_bfloat16 *lo) {
    if (out)
        *(float4 *)(out + at) = v;
    if (hi) {
        uint32_t h01, l01, h23, l23;
        bf16_split2(v.x, v.y, h01, l01), bf16_split2(v.z, v.w, h23, l23);
        *(uint2 *)(hi + at) = make_uint2(h01, h23), *(uint2 *)(lo + at) = make_uint2(l01, l23);
    }
}

/* out[r] = x[src ? src[r] : r] * rsqrt(mean(x^2) + eps) * gain, or an
 * unscaled copy when gain is NULL; written as float32 (out) and/or split
 * into hi and lo (bf16_split). add (or NULL): the hi and lo halves of a
 * stacked product owed to x's rows (add[row] + add[add_lo + row], rows of
 * n), added into x first. Rows of up to 16 floats a thread, 16-byte
 * aligned, are loaded once, as float4s, and kept in registers; others take
 * the scalar loop. Grid rows, block 256. */
__global__ void rmsnorm_kernel(float *x, const float *add, size_t add_lo, const int32_t *src, const float *gain,
                               float eps, uint32_t n, float *__restrict__ out, __nv_bfloat16 *__restrict__ hi,
                               __nv_bfloat16 *__restrict__ lo) {
    pdl_enter();
    size_t r = blockIdx.x, at = (size_t)(src ? src[r] : r) * n;
    float *row = x + at;
    const float *add_hi = add ? add + at : NULL, *add_lo_row = add ? add + add_lo + at : NULL;
    bool vec = n % 4 == 0 && n <= 16 * blockDim.x &&
               ((uintptr_t)row | (uintptr_t)gain | (uintptr_t)add_hi | (uintptr_t)add_lo_row) % 16 == 0;
    if (add && !vec) {
        for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
            row[i] += add_hi[i] + add_lo_row[i];
        __syncthreads();
    }
    if (vec) {
        uint32_t n4 = n / 4;
        float4 v[4];
        float ss = 0.0f;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            uint32_t i = threadIdx.x + k * blockDim.x;
            v[k] = i < n4 ? ((const float4 *)row)[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (add && i < n4) {
                float4 a = ((const float4 *)add_hi)[i], b = ((const float4 *)add_lo_row)[i];
                v[k] =
                    make_float4(v[k].x + (a.x + b.x), v[k].y + (a.y + b.y), v[k].z + (a.z + b.z), v[k].w + (a.w + b.w));
                ((float4 *)row)[i] = v[k];
            }
            ss += v[k].x * v[k].x + v[k].y * v[k].y + v[k].z * v[k].z + v[k].w * v[k].w;
        }
        float scale = gain ? rsqrtf(block_sum(ss) / (float)n + eps) : 1.0f;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            uint32_t i = threadIdx.x + k * blockDim.x;
            if (i >= n4)
                break;
            if (gain) {
                float4 g = ((const float4 *)gain)[i];
                v[k] =
                    make_float4(v[k].x * scale * g.x, v[k].y * scale * g.y, v[k].z * scale * g.z, v[k].w * scale * g.w);
            }
            store_row4(v[k], r * n + 4 * i, out, hi, lo);
        }
        return;
    }
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
            out[r * n + i] = v;
        if (hi)
            bf16_split(v, hi[r * n + i], lo[r * n + i]);
    }
}

/* act(gu[t][r]) * gu[t][ffn + r], MODE OUT_SILU_PAIR or OUT_GELU_PAIR, into
 * out[t][r], or (out NULL) split into hi and lo: the input of the next
 * tensor-core product. gu2 (or NULL): a second product's rows, added to
 * gu's first (the lo half of a stacked product). Four outputs a thread
 * (float4s when ffn % 4 == 0), so that every load of the grid is in flight
 * at once. Grid (ceil(ffn / 1024), T), block 256. */
template <int MODE>
__global__ void gated_mul_kernel(const float *__restrict__ gu, const float *__restrict__ gu2, uint32_t ffn,
                                 float *__restrict__ out, __nv_bfloat16 *__restrict__ hi,
                                 __nv_bfloat16 *__restrict__ lo) {
    pdl_enter();
    size_t t = blockIdx.y, i = 4 * ((size_t)blockIdx.x * blockDim.x + threadIdx.x);
    if (i >= ffn)
        return;
    const float *g = gu + t * 2 * ffn + i, *u = g + ffn;
    const float *g2 = gu2 ? gu2 + t * 2 * ffn + i : NULL, *u2 = g2 ? g2 + ffn : NULL;
    if (ffn % 4 == 0) {
        float4 g4 = *(const float4 *)g, u4 = *(const float4 *)u;
        if (g2) {
            float4 a = *(const float4 *)g2, b = *(const float4 *)u2;
            g4 = make_float4(g4.x + a.x, g4.y + a.y, g4.z + a.z, g4.w + a.w);
            u4 = make_float4(u4.x + b.x, u4.y + b.y, u4.z + b.z, u4.w + b.w);
        }
        float4 v = make_float4(gated<MODE>(g4.x, u4.x), gated<MODE>(g4.y, u4.y), gated<MODE>(g4.z, u4.z),
                               gated<MODE>(g4.w, u4.w));
        store_row4(v, t * ffn + i, out, hi, lo);
        return;
    }
    for (size_t k = 0; k < 4 && i + k < ffn; k++) {
        float v = g2 ? gated<MODE>(g[k] + g2[k], u[k] + u2[k]) : gated<MODE>(g[k], u[k]);
        if (out)
            out[t * ffn + i + k] = v;
        else
            bf16_split(v, hi[t * ffn + i + k], lo[t * ffn + i + k]);
    }
}

/* y[t] = (or +=, ADD) two[t] + two[T + t] for rows of n floats: the hi and
 * lo halves of a stacked product (two: [2T][n]) summed. Grid
 * (ceil(n / 1024), T), block 256. */
template <bool ADD>
__global__ void stacked_sum_kernel(const float *__restrict__ two, uint32_t n, float *__restrict__ y, uint32_t ldy) {
    pdl_enter();
    size_t t = blockIdx.y, i = 4 * ((size_t)blockIdx.x * blockDim.x + threadIdx.x);
    const float *a = two + t * n, *b = two + (gridDim.y + t) * n;
    float *out = y + t * ldy;
    if (n % 4 == 0 && ldy % 4 == 0) {
        if (i >= n)
            return;
        float4 x = *(const float4 *)(a + i), z = *(const float4 *)(b + i);
        float4 v = make_float4(x.x + z.x, x.y + z.y, x.z + z.z, x.w + z.w);
        if (ADD) {
            float4 o = *(const float4 *)(out + i);
            v = make_float4(o.x + v.x, o.y + v.y, o.z + v.z, o.w + v.w);
        }
        *(float4 *)(out + i) = v;
        return;
    }
    for (size_t k = i; k < i + 4 && k < n; k++)
        out[k] = (ADD ? out[k] : 0.0f) + (a[k] + b[k]);
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

/* Per token t and head j of the fused q|k|v rows: add the bias; q and k
 * heads are RMS-normalized (qk_norm) and rotated (NeoX RoPE at position
 * pos[t]); q heads go to q[t], k and v heads to the layer's KV cache at
 * slot[t]. */
struct rope_args {
    const float *qkv;             /* [T][q_dim + 2 kv_dim]: q heads, then k heads, then v heads */
    const float *bias;            /* [q_dim + 2 kv_dim] or NULL */
    const float *q_gain, *k_gain; /* [head_dim] or NULL */
    const float *inv_freq;        /* [head_dim / 2] */
    const int32_t *pos, *slot;    /* [T] */
    float *q;                     /* [T][q_dim] */
    void *k_cache, *v_cache;      /* [slots][kv_dim], float, half or fp8 by kv_type */
    uint32_t n_heads, head_dim, q_dim, kv_dim;
    float eps;
    int kv_type;       /* CUDA_KV_* */
    const float *qkv2; /* or NULL: rows added to qkv's (the lo half of a stacked product) */
};

/* The bytes of a KV cache element of kv_type (CUDA_KV_*). */
__host__ __device__ __forceinline__ uint32_t kv_elem_bytes(int kv_type) {
    return kv_type == CUDA_KV_FP8 ? 1 : kv_type == CUDA_KV_F16 ? 2 : 4;
}

/* A KV cache element as float, and back (fp8: round to nearest, beyond
 * +-448 saturated). */
__device__ __forceinline__ float kv_load(float v) { return v; }
__device__ __forceinline__ float kv_load(__half v) { return __half2float(v); }
__device__ __forceinline__ void kv_store(void *cache, size_t at, float v, int kv_type) {
    if (kv_type == CUDA_KV_F16)
        ((__half *)cache)[at] = __float2half_rn(v);
    else if (kv_type == CUDA_KV_FP8)
        ((__nv_fp8_e4m3 *)cache)[at] = __nv_fp8_e4m3(v);
    else
        ((float *)cache)[at] = v;
}

/* Head j of token t, by the whole block (head_dim <= blockDim.x <= 512);
 * v: 512 floats of shared memory. The q|k|v rows are read with __ldcg: in
 * gemv_qkv_kernel other blocks of the same grid wrote them. */
__device__ void qkv_head_finish(const rope_args &a, uint32_t j, uint32_t t, float *v) {
    uint32_t i = threadIdx.x, hd = a.head_dim, half = hd / 2, n_kv = a.kv_dim / hd;
    uint32_t width = a.q_dim + 2 * a.kv_dim, col = j * hd + i; /* q, k and v heads are hd rows each, in order */
    bool active = i < hd, is_q = j < a.n_heads, is_v = j >= a.n_heads + n_kv;
    float x = active ? __ldcg(a.qkv + (size_t)t * width + col) + (a.qkv2 ? a.qkv2[(size_t)t * width + col] : 0.0f) +
                           (a.bias ? a.bias[col] : 0.0f)
                     : 0.0f;
    size_t at = (size_t)a.slot[t] * a.kv_dim + (is_v ? j - a.n_heads - n_kv : j - a.n_heads) * hd + i;
    if (is_v) {
        if (active)
            kv_store(a.v_cache, at, x, a.kv_type);
        return;
    }
    const float *gain = is_q ? a.q_gain : a.k_gain;
    if (gain) /* every thread takes part in the sum */
        x = x * rsqrtf(block_sum(x * x) / (float)hd + a.eps) * (active ? gain[i] : 0.0f);
    __syncthreads(); /* v may still be read for the previous token */
    v[i] = x;
    __syncthreads();
    if (!active)
        return;
    float angle = (float)a.pos[t] * a.inv_freq[i % half], c = cosf(angle), s = sinf(angle);
    float rotated = i < half ? v[i] * c - v[i + half] * s : v[i - half] * s + v[i] * c;
    if (is_q)
        a.q[(size_t)t * a.q_dim + j * hd + i] = rotated;
    else
        kv_store(a.k_cache, at, rotated, a.kv_type);
}

/* Grid (n_heads + 2 n_kv_heads, T), block head_dim threads rounded up to a warp. */
__global__ void qk_rope_kernel(rope_args a) {
    __shared__ float v[512];
    pdl_enter();
    qkv_head_finish(a, blockIdx.x, blockIdx.y, v);
}

/* Head j of token t by one warp, as qkv_head_finish: lane l holds dims l
 * + 32 k (E = head_dim / 32, or 1 for head sizes 16 and 32, whose lanes
 * past head_dim idle), so the norm is a warp sum, with no barrier, and
 * RoPE's pairs (i, i + head_dim / 2) lie in one lane (E >= 2) or in lanes
 * head_dim / 2 apart (one shuffle). Same arithmetic as qkv_head_finish
 * (only the norm's summation order differs). k and v heads go to the KV
 * cache; a q head is left in out, for the caller to place. */
template <int E>
__device__ __forceinline__ void qkv_head_finish_warp(const rope_args &a, uint32_t j, uint32_t t, float (&out)[E]) {
    const uint32_t lane = threadIdx.x % WARP, hd = a.head_dim, half = hd / 2, n_kv = a.kv_dim / hd;
    const uint32_t width = a.q_dim + 2 * a.kv_dim;
    bool is_q = j < a.n_heads, is_v = j >= a.n_heads + n_kv;
    bool active = lane < hd || E > 1;
    float x[E];
#pragma unroll
    for (int k = 0; k < E; k++) {
        uint32_t col = j * hd + lane + 32 * k;
        x[k] = active ? a.qkv[(size_t)t * width + col] + (a.qkv2 ? a.qkv2[(size_t)t * width + col] : 0.0f) +
                            (a.bias ? a.bias[col] : 0.0f)
                      : 0.0f;
    }
    size_t at = (size_t)a.slot[t] * a.kv_dim + (is_v ? j - a.n_heads - n_kv : j - a.n_heads) * hd + lane;
    if (is_v) {
#pragma unroll
        for (int k = 0; k < E && active; k++)
            kv_store(a.v_cache, at + 32 * k, x[k], a.kv_type), out[k] = x[k];
        return;
    }
    const float *gain = is_q ? a.q_gain : a.k_gain;
    if (gain) {
        float ss = 0.0f;
#pragma unroll
        for (int k = 0; k < E; k++)
            ss += x[k] * x[k];
        float scale = rsqrtf(warp_sum(ss) / (float)hd + a.eps);
#pragma unroll
        for (int k = 0; k < E; k++)
            x[k] = x[k] * scale * (active ? gain[lane + 32 * k] : 0.0f);
    }
    if (E == 1) {
        float other = __shfl_xor_sync(0xffffffffu, x[0], half);
        float angle = (float)a.pos[t] * a.inv_freq[lane % half], c = cosf(angle), s = sinf(angle);
        out[0] = lane % hd < half ? x[0] * c - other * s : other * s + x[0] * c;
    } else
#pragma unroll
        for (int k = 0; k < E / 2; k++) {
            float angle = (float)a.pos[t] * a.inv_freq[lane + 32 * k], c = cosf(angle), s = sinf(angle);
            out[k] = x[k] * c - x[k + E / 2] * s;
            out[k + E / 2] = x[k] * s + x[k + E / 2] * c;
        }
#pragma unroll
    for (int k = 0; k < E && !is_q && active; k++)
        kv_store(a.k_cache, at + 32 * k, out[k], a.kv_type);
}

/* qk_rope_kernel's work with a warp per head (prompt steps; head sizes
 * 16, 32 (E 1) and 32 E): qkv_head_finish_warp. Grid (ceil(heads / 8), T),
 * block 256. */
template <int E> __global__ void qk_rope_warp_kernel(rope_args a, uint32_t heads) {
    pdl_enter();
    uint32_t lane = threadIdx.x % WARP, j = blockIdx.x * 8 + threadIdx.x / WARP, t = blockIdx.y, hd = a.head_dim;
    if (j >= heads)
        return;
    float out[E];
    qkv_head_finish_warp<E>(a, j, t, out);
#pragma unroll
    for (int k = 0; k < E; k++)
        if (j < a.n_heads && lane + 32 * k < hd)
            a.q[(size_t)t * a.q_dim + j * hd + lane + 32 * k] = out[k];
}

/* Loads a thread keeps in flight in argmax_kernel (one at a time, a
 * 151,936-logit row took 59 us: H200, one block of 1024). */
#define ARGMAX_UNROLL 8

/* Row blockIdx.y's argmax keys (keys: [rows][ARGMAX_SLOTS], cleared
 * before): ARGMAX_SPAN logits a block, ARGMAX_UNROLL loads a thread in
 * flight. Grid (ceil(vocab / ARGMAX_SPAN), rows), block 256. */
#define ARGMAX_SPAN (256 * ARGMAX_UNROLL)
__global__ void argmax_kernel(const float *logits, uint32_t vocab, unsigned long long *keys) {
    pdl_enter();
    const float *row = logits + (size_t)blockIdx.y * vocab;
    uint32_t i0 = blockIdx.x * ARGMAX_SPAN + threadIdx.x;
    float v[ARGMAX_UNROLL];
#pragma unroll
    for (int k = 0; k < ARGMAX_UNROLL; k++)
        v[k] = i0 + k * 256 < vocab ? row[i0 + k * 256] : -INFINITY;
    unsigned long long key = 0;
#pragma unroll
    for (int k = 0; k < ARGMAX_UNROLL; k++) {
        unsigned long long mine = argmax_key(v[k], i0 + k * 256);
        key = mine > key ? mine : key;
    }
    block_fold_key(key, keys + (size_t)blockIdx.y * ARGMAX_SLOTS);
}

#endif
