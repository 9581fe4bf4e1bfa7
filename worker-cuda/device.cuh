/* What the CUDA engine's kernels share: the weight matrix as the GPU holds
 * it, the q|k|v heads' finish (bias, q/k norm, RoPE, the KV cache's
 * writes), programmatic dependent launch, bulk copies on mbarriers, warp
 * and block reductions, argmax keys and the bf16 hi/lo split. Device
 * functions only: every translation unit of the engine may include it. */
#ifndef INFERNO_CUDA_DEVICE_CUH
#define INFERNO_CUDA_DEVICE_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>

/* the includer includes engine_cuda.h (CUDA_KV_*) before this file */

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

/* The GPU's global timer in nanoseconds (the traces' clock). */
__device__ __forceinline__ unsigned long long global_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

#ifdef INFERNO_KERNEL_TRACE
/* make CUDA_TRACE=1 (INFERNO_KERNEL_TRACE): in the step that
 * INFERNO_CUDA_TRACE_STEP names, each block's thread 0 records the global
 * timer before and after its wait on the previous kernel (pdl_wait), its
 * SM and dynamic shared memory, and the timer and clock at trace_mark(k)
 * points (k < 4); trace_dump (step.cu) prints them a kernel a line. Costs
 * ~3% of a batch-1 step. */
struct trace_rec {
    unsigned long long grid, t0, t1, mark[4], clk[4];
    unsigned blocks, sm, dyn_smem;
};
#define TRACE_CAP 200000
static __device__ trace_rec trace_buf[TRACE_CAP];
static __device__ unsigned trace_n;
static __device__ int trace_on;
__device__ __forceinline__ unsigned &trace_slot() {
    __shared__ unsigned slot;
    return slot;
}
/* no loads here: one under the next kernel's weight copies takes microseconds */
__device__ __forceinline__ void trace_mark(int k) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 /* where pdl_wait sets the slot */
    if (threadIdx.x == 0 && trace_slot() < TRACE_CAP)
        trace_buf[trace_slot()].mark[k] = global_ns(), trace_buf[trace_slot()].clk[k] = clock64();
#else
    (void)k;
#endif
}
#else
__device__ __forceinline__ void trace_mark(int) {}
#endif

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
#ifdef INFERNO_KERNEL_TRACE
    int on = threadIdx.x == 0 && *(volatile int *)&trace_on; /* set before the step, read before the wait */
    unsigned long long t0 = global_ns();
#endif
    asm volatile("griddepcontrol.wait;" ::: "memory");
#ifdef INFERNO_KERNEL_TRACE
    unsigned long long t1 = global_ns();
    if (threadIdx.x == 0) {
        unsigned i = on ? atomicAdd(&trace_n, 1) : TRACE_CAP;
        unsigned long long g;
        asm volatile("mov.u64 %0, %%gridid;" : "=l"(g));
        trace_slot() = i;
        unsigned sm, dyn;
        asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
        asm volatile("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dyn));
        if (i < TRACE_CAP)
            trace_buf[i] = {g, t0, t1, {0, 0, 0, 0}, {0, 0, 0, 0}, gridDim.x * gridDim.y * gridDim.z, sm, dyn};
    }
#endif
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

/* attention_prefill_kernel's slices of a tile's positions: one per this
 * many, up to this many (stage_inputs picks the grid, reserve sizes part) */
#define ATTP_SLICE_KEYS 128
#define ATTP_MAX_SLICES 4

/* Argmax over many blocks: each block folds its best (logit, id) of a row
 * into one of the row's ARGMAX_SLOTS keys with a 64-bit atomicMax (spread
 * over slots so that thousands of blocks do not queue on one address),
 * and the host takes the largest of them (argmax_ids in step.cu). A key orders
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

/* c += a b for a 16x16 (row) and b 16x8 (column) fragment, bf16 in, float32 accumulate. */
__device__ __forceinline__ void mma_bf16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
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
static __device__ void qkv_head_finish(const rope_args &a, uint32_t j, uint32_t t, float *v) {
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

#endif
