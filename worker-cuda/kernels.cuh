/* The CUDA engine's layer kernels. Each is short and does one stage of
 * the step (worker-cuda/step.cu runs them in order); shapes are in the
 * comments. All arithmetic is float32; weights are read as BF16 or Q8_0.
 * Kernels (__global__) are defined in the one translation unit that
 * launches them: this file is step.cu's. */
#ifndef INFERNO_CUDA_KERNELS_CUH
#define INFERNO_CUDA_KERNELS_CUH

#include "device.cuh"

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

/* Grid (n_heads + 2 n_kv_heads, T), block head_dim threads rounded up to a warp. */
__global__ void qk_rope_kernel(rope_args a) {
    __shared__ float v[512];
    pdl_enter();
    qkv_head_finish(a, blockIdx.x, blockIdx.y, v);
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
