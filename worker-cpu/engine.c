/* The CPU forward pass. Activations are float32 throughout; weights stay in
 * the GGUF mapping in their own type and the kernels convert on the fly.
 *
 * For a batch of T new tokens (many sequences flattened together):
 *   x = embed(tokens) * embed_scale                    [T][hidden]  (gemma3: sqrt(hidden))
 *   per layer:
 *     xn = rmsnorm(x) * attn_norm
 *     q, k, v = xn Wq^T, xn Wk^T, xn Wv^T              [T][heads*hd], [T][kv_heads*hd] x2
 *               (+ bq, bk, bv: qwen2)
 *     q, k = rmsnorm per head (q_norm, k_norm: qwen3, gemma3), then RoPE (NeoX) at each
 *            token's position, with the layer's base
 *     k, v -> the KV blocks of each token's sequence
 *     att = softmax(q K^T / sqrt(hd)) V, causal, over the sequence's blocks (GQA), or only the
 *           layer's window of latest positions (gemma3's sliding layers)
 *     x += att Wo^T                          (gemma3: rmsnorm(att Wo^T) * post_attn_norm)
 *     xn = rmsnorm(x) * ffn_norm
 *     x += (act(xn Wgate^T) * (xn Wup^T)) Wdown^T   act: silu, or tanh GELU (gemma3);
 *                                             gemma3: rmsnorm(...) * post_ffn_norm
 *   logits = (rmsnorm(x) * output_norm) Wout^T, for the rows asked for */
#include "engine.h"

#include <math.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "fp16.h"
#include "kernels.h"
#include "threadpool.h"

struct cpu_engine {
    const model_desc *m;
    const kernel_set *k, *ref;
    /* the matrices as the kernels read them: the model's, or repacked copies */
    layer_weights *layers;
    weight output;
    weight embd; /* token embeddings as looked up: the model's, or the tied head's copy where its layout is the same */
    void **repacked;
    int n_repacked;
    threadpool *tp;
    int block_size, n_blocks;
    uint32_t q_dim, kv_dim;
    void **k_cache, **v_cache; /* per layer: [n_blocks][kv_heads][block_size][head_dim] (kv_offset) */
    enum kv_type kv_type;      /* their elements */
    size_t kv_elem;            /* bytes an element: 4 or 2 */
    float *inv_freq;           /* RoPE: per layer [head_dim / 2] */
    /* norm gains as float, once: per layer attn[H], q[hd], k[hd], ffn[H], post_attn[H], post_ffn[H];
     * then output[H] */
    float *norms;
    size_t norms_stride;
    bool post_norms; /* gemma3 */
    bool qk_norm;    /* per-head q/k RMSNorm (qwen3, gemma3) */
    float *biases;   /* per layer: bq [q_dim], bk, bv [kv_dim] (qwen2); NULL without */
    /* scratch, grown on demand */
    int cap_tokens;
    float *x, *xn, *q, *kk, *vv, *att, *gate, *up;
    block_q8_0 *xq;
    uint8_t *xu; /* for repacked Q8_0: activation quants + 128 */
    float *xd;   /* and their scales, [T][blocks rounded up to 16], zero-padded */
    float *xs;   /* for the low-bit types: sums of 16 activation quants times their scale, [T][cols / 16] */
    int32_t *tok_seq, *tok_pos;
    int cap_scores;
    float *scores;  /* [n_threads][cap_scores] */
    float *rope_cs; /* [n_threads][head_dim]: one position's cos then sin */
};

int cpu_engine_block_size(const cpu_engine *e) { return e->block_size; }
int cpu_engine_n_blocks(const cpu_engine *e) { return e->n_blocks; }
const char *cpu_engine_kernels(const cpu_engine *e) { return e->k->name; }

static void add_to(float *y, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        y[i] += x[i];
}

static void *xalloc(size_t n) { return aligned_alloc(64, (n + 63) / 64 * 64); }

/* A model vector as floats; an absent one (no bias, say) reads as zeros. */
static void load_vector(const weight *w, float *out, uint64_t n) {
    if (w->data)
        tensor_dequantize_row(w->type, w->data, out, w->cols);
    else
        memset(out, 0, n * sizeof *out);
}

/* The mmapped original of a repacked matrix is no longer read: let the
 * kernel drop its pages (they are file-backed and read-only, so a later
 * read would simply fault them back in). Halves resident memory for Q8_0. */
static void release_original(const weight *w) {
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t start = ((uintptr_t)w->data + (uintptr_t)page - 1) & ~(uintptr_t)(page - 1);
    uintptr_t end = ((uintptr_t)w->data + w->rows * w->row_bytes) & ~(uintptr_t)(page - 1);
    if (end > start)
        madvise((void *)start, end - start, MADV_DONTNEED);
}

int cpu_engine_create(const model_desc *m, const cpu_engine_config *cfg, cpu_engine **out, char *err, size_t errlen) {
    *out = NULL;
    cpu_engine *e = calloc(1, sizeof *e);
    if (!e) {
        snprintf(err, errlen, "engine: out of memory");
        return -1;
    }
    e->m = m;
    e->ref = kernels_reference();
    e->k = kernels_select();
    if (cfg && cfg->kernels) {
        const kernel_set *want = !strcmp(cfg->kernels, "reference") ? kernels_reference()
                                 : !strcmp(cfg->kernels, "avx2")    ? kernels_avx2()
                                 : !strcmp(cfg->kernels, "avx512")  ? kernels_avx512()
                                                                    : NULL;
        if (!want) {
            snprintf(err, errlen, "engine: kernels '%s' unknown or not supported by this CPU", cfg->kernels);
            free(e);
            return -1;
        }
        e->k = want;
    }
    e->block_size = cfg && cfg->block_size > 0 ? cfg->block_size : 16;
    int kv_tokens = cfg && cfg->kv_tokens > 0 ? cfg->kv_tokens : 4096;
    e->n_blocks = cfg && cfg->n_blocks > 0 ? cfg->n_blocks : (kv_tokens + e->block_size - 1) / e->block_size;
    e->q_dim = m->n_heads * m->head_dim;
    e->kv_dim = m->n_kv_heads * m->head_dim;
    e->tp = threadpool_create(cfg && cfg->n_threads > 0 ? cfg->n_threads : 1);
    e->k_cache = calloc(m->n_layers, sizeof *e->k_cache);
    e->v_cache = calloc(m->n_layers, sizeof *e->v_cache);
    e->inv_freq = malloc((size_t)m->n_layers * m->head_dim / 2 * sizeof *e->inv_freq);
    e->kv_type = cfg && cfg->kv_f16 ? KV_F16 : KV_F32;
    e->kv_elem = e->kv_type == KV_F16 ? 2 : 4;
    size_t per_layer = (size_t)e->n_blocks * e->block_size * e->kv_dim;
    bool ok = e->tp && e->k_cache && e->v_cache && e->inv_freq;
    if (ok)
        ok = (e->rope_cs = malloc((size_t)threadpool_size(e->tp) * m->head_dim * sizeof *e->rope_cs)) != NULL;
    for (uint32_t l = 0; ok && l < m->n_layers; l++) {
        e->k_cache[l] = calloc(per_layer, e->kv_elem);
        e->v_cache[l] = calloc(per_layer, e->kv_elem);
        ok = e->k_cache[l] && e->v_cache[l];
    }
    if (!ok) {
        snprintf(err, errlen, "engine: out of memory for a KV cache of %d blocks x %d positions", e->n_blocks,
                 e->block_size);
        cpu_engine_free(e);
        return -1;
    }
    /* matrices the kernel set prefers in another layout are repacked once */
    e->layers = malloc(m->n_layers * sizeof *e->layers);
    e->repacked = calloc((size_t)m->n_layers * 7 + 1, sizeof *e->repacked);
    if (!e->layers || !e->repacked) {
        snprintf(err, errlen, "engine: out of memory");
        cpu_engine_free(e);
        return -1;
    }
    memcpy(e->layers, m->layers, m->n_layers * sizeof *e->layers);
    e->output = m->output;
    e->embd = m->token_embd;
    for (uint32_t l = 0; l <= m->n_layers && e->k->repack; l++) {
        layer_weights *L = &e->layers[l < m->n_layers ? l : 0];
        weight *mats[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        int n = l < m->n_layers ? 7 : 1;
        if (l == m->n_layers)
            mats[0] = &e->output;
        for (int i = 0; i < n; i++) {
            weight packed;
            if (e->k->repack(mats[i], &packed) == 0) {
                e->repacked[e->n_repacked++] = (void *)packed.data;
                /* a tied head's table is also the embeddings': lookups move to
                 * the copy when its rows read the same, else keep the original */
                bool tied = mats[i]->data == m->token_embd.data;
                if (tied && packed.type == m->token_embd.type && packed.row_bytes == m->token_embd.row_bytes)
                    e->embd = packed, tied = false;
                if (!tied)
                    release_original(mats[i]);
                *mats[i] = packed;
            }
        }
    }
    for (uint32_t l = 0; l < m->n_layers; l++)
        model_rope_inv_freq(m, l, e->inv_freq + l * (m->head_dim / 2));
    e->norms_stride = 4 * (size_t)m->hidden + 2 * (size_t)m->head_dim;
    e->norms = malloc((e->norms_stride * m->n_layers + m->hidden) * sizeof *e->norms);
    if (!e->norms) {
        snprintf(err, errlen, "engine: out of memory");
        cpu_engine_free(e);
        return -1;
    }
    e->qk_norm = m->layers[0].q_norm.data != NULL;
    e->post_norms = m->layers[0].post_attn_norm.data != NULL;
    bool has_bias = m->layers[0].bq.data || m->layers[0].bk.data || m->layers[0].bv.data;
    size_t bias_stride = e->q_dim + 2 * (size_t)e->kv_dim;
    if (has_bias && !(e->biases = malloc(bias_stride * m->n_layers * sizeof *e->biases))) {
        snprintf(err, errlen, "engine: out of memory");
        cpu_engine_free(e);
        return -1;
    }
    for (uint32_t l = 0; l < m->n_layers; l++) {
        const layer_weights *L = &m->layers[l];
        float *g = e->norms + l * e->norms_stride;
        load_vector(&L->attn_norm, g, m->hidden);
        load_vector(&L->q_norm, g + m->hidden, m->head_dim);
        load_vector(&L->k_norm, g + m->hidden + m->head_dim, m->head_dim);
        load_vector(&L->ffn_norm, g + m->hidden + 2 * m->head_dim, m->hidden);
        load_vector(&L->post_attn_norm, g + 2 * m->hidden + 2 * m->head_dim, m->hidden);
        load_vector(&L->post_ffn_norm, g + 3 * m->hidden + 2 * m->head_dim, m->hidden);
        if (has_bias) {
            float *bias = e->biases + l * bias_stride;
            load_vector(&L->bq, bias, e->q_dim);
            load_vector(&L->bk, bias + e->q_dim, e->kv_dim);
            load_vector(&L->bv, bias + e->q_dim + e->kv_dim, e->kv_dim);
        }
    }
    load_vector(&m->output_norm, e->norms + e->norms_stride * m->n_layers, m->hidden);
    *out = e;
    return 0;
}

static void free_scratch(cpu_engine *e) {
    free(e->x), free(e->xn), free(e->q), free(e->kk), free(e->vv), free(e->att), free(e->gate), free(e->up);
    free(e->xq), free(e->xu), free(e->xd), free(e->xs), free(e->tok_seq), free(e->tok_pos);
}

void cpu_engine_free(cpu_engine *e) {
    if (!e)
        return;
    for (uint32_t l = 0; l < e->m->n_layers; l++) {
        if (e->k_cache)
            free(e->k_cache[l]);
        if (e->v_cache)
            free(e->v_cache[l]);
    }
    free(e->k_cache), free(e->v_cache), free(e->inv_freq), free(e->scores), free(e->norms), free(e->biases);
    free(e->rope_cs);
    for (int i = 0; i < e->n_repacked; i++)
        free(e->repacked[i]);
    free(e->repacked), free(e->layers);
    free_scratch(e);
    threadpool_free(e->tp);
    free(e);
}

static int reserve(cpu_engine *e, int T, int max_pos) {
    const model_desc *m = e->m;
    if (T > e->cap_tokens) {
        free_scratch(e);
        int cap = T < 16 ? 16 : T;
        size_t widest = m->ffn > m->hidden ? m->ffn : m->hidden;
        if (e->q_dim > widest)
            widest = e->q_dim;
        e->x = xalloc((size_t)cap * m->hidden * 4), e->xn = xalloc((size_t)cap * widest * 4);
        e->q = xalloc((size_t)cap * e->q_dim * 4), e->att = xalloc((size_t)cap * e->q_dim * 4);
        e->kk = xalloc((size_t)cap * e->kv_dim * 4), e->vv = xalloc((size_t)cap * e->kv_dim * 4);
        e->gate = xalloc((size_t)cap * m->ffn * 4), e->up = xalloc((size_t)cap * m->ffn * 4);
        e->xq = xalloc((size_t)cap * (widest / 32 + 1) * sizeof(block_q8_0));
        e->xu = xalloc((size_t)cap * widest);
        e->xd = xalloc((size_t)cap * ((widest / 32 + 15) / 16 * 16) * sizeof(float));
        e->xs = xalloc((size_t)cap * (widest / 16 + 1) * sizeof(float));
        e->tok_seq = malloc((size_t)cap * 4), e->tok_pos = malloc((size_t)cap * 4);
        e->cap_tokens = cap;
        if (!e->x || !e->xn || !e->q || !e->att || !e->kk || !e->vv || !e->gate || !e->up || !e->xq || !e->xu ||
            !e->xd || !e->xs || !e->tok_seq || !e->tok_pos) {
            e->cap_tokens = 0;
            return -1;
        }
    }
    if (max_pos > e->cap_scores) {
        free(e->scores);
        e->cap_scores = max_pos + 256;
        e->scores = xalloc((size_t)threadpool_size(e->tp) * e->cap_scores * 4);
        if (!e->scores) {
            e->cap_scores = 0;
            return -1;
        }
    }
    return 0;
}

/* ---- row operations (per token; for_tokens below spreads a prompt's rows over the threads) ---- */

static void rmsnorm(float *out, const float *x, const float *gain, uint32_t n, float eps) {
    float ss = 0.0f;
    for (uint32_t i = 0; i < n; i++)
        ss += x[i] * x[i];
    float scale = 1.0f / sqrtf(ss / (float)n + eps);
    for (uint32_t i = 0; i < n; i++)
        out[i] = x[i] * scale * gain[i];
}

/* GELU with the tanh approximation (gelu_pytorch_tanh). */
static float gelu_tanh(float x) { return 0.5f * x * (1.0f + tanhf(0.7978845608f * (x + 0.044715f * x * x * x))); }

/* RoPE's cos and sin for one position, once for all of its heads: cs[i]
 * and cs[hd/2 + i] for the pair i. */
static void rope_table(float *cs, int pos, const float *inv_freq, uint32_t hd) {
    for (uint32_t i = 0; i < hd / 2; i++) {
        float angle = (float)pos * inv_freq[i];
        cs[i] = cosf(angle), cs[hd / 2 + i] = sinf(angle);
    }
}

/* NeoX RoPE: element i pairs with i + hd/2. */
static void rope(float *v, const float *cs, uint32_t hd) {
    uint32_t half = hd / 2;
    for (uint32_t i = 0; i < half; i++) {
        float c = cs[i], s = cs[half + i], a = v[i], b = v[i + half];
        v[i] = a * c - b * s;
        v[i + half] = a * s + b * c;
    }
}

/* ---- work over the batch's tokens, split across the pool ---- */

typedef void (*token_fn)(cpu_engine *e, const void *ctx, int t0, int t1, int ith);

struct token_job {
    cpu_engine *e;
    token_fn fn;
    const void *ctx;
    int T;
};

static void token_worker(void *p, int ith, int nth) {
    const struct token_job *j = p;
    int per = (j->T + nth - 1) / nth, t0 = ith * per, t1 = t0 + per < j->T ? t0 + per : j->T;
    if (t0 < t1)
        j->fn(j->e, j->ctx, t0, t1, ith);
}

/* fn over tokens [0, T): a prompt's rows split across the threads; a few
 * rows (decode) cost less on this thread than a fork and join. */
static void for_tokens(cpu_engine *e, int T, token_fn fn, const void *ctx) {
    if (T < 4 || threadpool_size(e->tp) == 1) {
        fn(e, ctx, 0, T, 0);
        return;
    }
    struct token_job j = {e, fn, ctx, T};
    threadpool_run(e->tp, token_worker, &j);
}

/* x += xn (gemma3: rmsnorm(xn) * post_gain first) when add, then
 * xn = rmsnorm(x) * next_gain when next_gain: a residual add fused with
 * the norm that reads its result. */
struct residual_args {
    bool add;
    const float *post_gain, *next_gain;
};

static void residual_norm(cpu_engine *e, const void *p, int t0, int t1, int ith) {
    (void)ith;
    const struct residual_args *r = p;
    uint32_t H = e->m->hidden;
    for (int t = t0; t < t1; t++) {
        float *x = e->x + (size_t)t * H, *xn = e->xn + (size_t)t * H;
        if (r->add) {
            if (r->post_gain)
                rmsnorm(xn, xn, r->post_gain, H, e->m->rms_eps);
            add_to(x, xn, H);
        }
        if (r->next_gain)
            rmsnorm(xn, x, r->next_gain, H, e->m->rms_eps);
    }
}

/* Where a KV head's row for a position starts in a layer's cache. A head's
 * rows in a block are consecutive, so attention streams them: with one
 * [kv_dim] row a position, each head's 512-byte piece sat on a 4 KiB page
 * of its own, and decode attention waited on a cache miss a position. */
static size_t kv_offset(const cpu_engine *e, int32_t block, int in_block, uint32_t kv_head) {
    return (((size_t)block * e->m->n_kv_heads + kv_head) * e->block_size + in_block) * e->m->head_dim;
}

/* One head's row of keys or values into a cache at element `at`. */
static void kv_store(const cpu_engine *e, void *cache, size_t at, const float *row) {
    uint32_t hd = e->m->head_dim;
    if (e->kv_type == KV_F32) {
        memcpy((float *)cache + at, row, hd * sizeof *row);
        return;
    }
    uint16_t *half = (uint16_t *)cache + at;
    for (uint32_t d = 0; d < hd; d++)
        half[d] = fp16_from_f32(row[d]);
}

/* q, k, v of each token: biases (qwen2), per-head RMSNorm (qwen3, gemma3)
 * and RoPE on q and k, then k and v into the token's KV slot. */
struct qkv_args {
    const engine_batch *b;
    uint32_t layer;
};

static void qkv_finish(cpu_engine *e, const void *p, int t0, int t1, int ith) {
    const struct qkv_args *a = p;
    const model_desc *m = e->m;
    uint32_t hd = m->head_dim, l = a->layer;
    const float *q_gain = e->norms + l * e->norms_stride + m->hidden, *k_gain = q_gain + hd;
    const float *inv_freq = e->inv_freq + l * (hd / 2);
    float *cs = e->rope_cs + (size_t)ith * hd;
    for (int t = t0; t < t1; t++) {
        float *q = e->q + (size_t)t * e->q_dim, *k = e->kk + (size_t)t * e->kv_dim, *v = e->vv + (size_t)t * e->kv_dim;
        if (e->biases) {
            const float *bias = e->biases + l * (e->q_dim + 2 * (size_t)e->kv_dim);
            add_to(q, bias, e->q_dim);
            add_to(k, bias + e->q_dim, e->kv_dim);
            add_to(v, bias + e->q_dim + e->kv_dim, e->kv_dim);
        }
        rope_table(cs, e->tok_pos[t], inv_freq, hd);
        for (uint32_t h = 0; h < m->n_heads + m->n_kv_heads; h++) {
            float *head = h < m->n_heads ? q + h * hd : k + (h - m->n_heads) * hd;
            if (e->qk_norm)
                rmsnorm(head, head, h < m->n_heads ? q_gain : k_gain, hd, m->rms_eps);
            rope(head, cs, hd);
        }
        const engine_seq *s = &a->b->seqs[e->tok_seq[t]];
        int pos = e->tok_pos[t];
        for (uint32_t h = 0; h < m->n_kv_heads; h++) {
            size_t at = kv_offset(e, s->block_table[pos / e->block_size], pos % e->block_size, h);
            kv_store(e, e->k_cache[l], at, k + h * hd);
            kv_store(e, e->v_cache[l], at, v + h * hd);
        }
    }
}

/* ---- parallel matmuls ---- */

struct matmul_job {
    cpu_engine *e;
    int n; /* matmuls sharing one input */
    const weight *w[3];
    float *y[3];
    size_t y_stride[3];
    const float *x;
    int T;
    bool gated; /* y[0] = act(y[0]) * y[1] (SwiGLU), each thread over the rows it computed */
};

static const kernel_set *kernels_for(const cpu_engine *e, uint32_t type) { return e->k->matmul[type] ? e->k : e->ref; }

static void matmul_worker(void *p, int ith, int nth) {
    struct matmul_job *j = p;
    for (int i = 0; i < j->n; i++) {
        const weight *w = j->w[i];
        const kernel_set *k = kernels_for(j->e, w->type);
        uint64_t chunk = (w->rows + (uint64_t)nth - 1) / (uint64_t)nth;
        chunk = (chunk + 15) / 16 * 16;
        uint64_t r0 = (uint64_t)ith * chunk, r1 = r0 + chunk < w->rows ? r0 + chunk : w->rows;
        if (r0 >= r1)
            continue;
        matmul_args a = {j->x, j->e->xq, j->e->xu, j->e->xd, j->e->xs, j->T, j->y[i], j->y_stride[i]};
        k->matmul[w->type](w, &a, r0, r1);
        if (j->gated && i == 1) {
            bool gelu = j->e->m->ffn_act == FFN_GELU_TANH;
            for (int t = 0; t < j->T; t++) {
                float *g = j->y[0] + (size_t)t * j->y_stride[0], *u = j->y[1] + (size_t)t * j->y_stride[1];
                for (uint64_t r = r0; r < r1; r++)
                    g[r] = (gelu ? gelu_tanh(g[r]) : g[r] / (1.0f + expf(-g[r]))) * u[r];
            }
        }
    }
}

/* The activations as the integer kernels read them: Q8_0 blocks, with
 * sums per 16 for the low-bit types, and offset quants plus float scales
 * for repacked Q8_0. */
struct quantize_args {
    const float *x;
    uint64_t cols;
    bool sums, packed;
};

static void quantize_activations(cpu_engine *e, const void *p, int t0, int t1, int ith) {
    (void)ith;
    const struct quantize_args *a = p;
    uint64_t cols = a->cols, nb = cols / 32, xd_stride = (nb + 15) / 16 * 16;
    for (int t = t0; t < t1; t++) {
        block_q8_0 *q = e->xq + (size_t)t * nb;
        e->k->quantize_q8_0(a->x + (size_t)t * cols, q, cols);
        for (uint64_t b = 0; a->sums && b < nb; b++) {
            float d = fp16_to_f32(q[b].d);
            for (int h = 0; h < 2; h++) {
                int sum = 0;
                for (int k = 0; k < 16; k++)
                    sum += q[b].qs[16 * h + k];
                e->xs[(size_t)t * (cols / 16) + 2 * b + h] = d * (float)sum;
            }
        }
        if (!a->packed)
            continue;
        uint8_t *u = e->xu + (size_t)t * cols;
        float *d = e->xd + (size_t)t * xd_stride;
        for (uint64_t b = 0; b < nb; b++) {
            d[b] = fp16_to_f32(q[b].d);
            for (int k = 0; k < 32; k++)
                u[32 * b + k] = (uint8_t)(q[b].qs[k] ^ 0x80);
        }
        for (uint64_t b = nb; b < xd_stride; b++)
            d[b] = 0.0f;
    }
}

/* y_i = x W_i^T for up to three weights with the same input (q/k/v, gate/up);
 * gated: then y_0 = act(y_0) * y_1. */
static void matmul_many(cpu_engine *e, const float *x, int T, int n, const weight *const *w, float *const *y,
                        bool gated) {
    struct matmul_job j = {.e = e, .n = n, .x = x, .T = T, .gated = gated};
    bool need_q8 = false, need_sums = false, need_packed = false;
    for (int i = 0; i < n; i++) {
        uint32_t type = w[i]->type;
        bool low_bit = kernels_low_bit(type);
        bool q8 = (type == TENSOR_Q8_0 || low_bit) && kernels_for(e, type)->q8_activations;
        j.w[i] = w[i], j.y[i] = y[i], j.y_stride[i] = w[i]->rows;
        need_q8 = need_q8 || q8;
        need_sums = need_sums || (q8 && low_bit);
        need_packed = need_packed || type == TENSOR_Q8_0_PACKED;
    }
    if (need_q8 || need_packed) {
        struct quantize_args qa = {x, w[0]->cols, need_sums, need_packed};
        for_tokens(e, T, quantize_activations, &qa);
    }
    threadpool_run(e->tp, matmul_worker, &j);
}

static void matmul1(cpu_engine *e, const float *x, int T, const weight *w, float *y) {
    matmul_many(e, x, T, 1, &w, &y, false);
}

/* ---- attention ---- */

struct attention_job {
    cpu_engine *e;
    const engine_batch *b;
    uint32_t layer;
    int T;
};

/* The positions p..last that lie in p's KV block, as a run of consecutive
 * rows of one KV head: returns the run's length, where it starts in *at. */
static int kv_run(const cpu_engine *e, const engine_seq *s, int p, int last, uint32_t kv_head, size_t *at) {
    int in_block = p % e->block_size, n = e->block_size - in_block;
    *at = kv_offset(e, s->block_table[p / e->block_size], in_block, kv_head);
    return n < last - p + 1 ? n : last - p + 1;
}

/* A work unit is one token's KV head: its `group` query heads read the same
 * K and V rows, which stay in cache from one head to the next. Units are
 * dealt out in turn, so causal prompts (later tokens see more keys) split
 * evenly. */
static void attention_worker(void *p, int ith, int nth) {
    struct attention_job *j = p;
    cpu_engine *e = j->e;
    const model_desc *m = e->m;
    uint32_t hd = m->head_dim, group = m->n_heads / m->n_kv_heads, window = m->layers[j->layer].window;
    float *scores = e->scores + (size_t)ith * e->cap_scores;
    const uint8_t *kc = e->k_cache[j->layer], *vc = e->v_cache[j->layer];
    for (int u = ith; u < j->T * (int)m->n_kv_heads; u += nth) {
        int t = u / (int)m->n_kv_heads;
        uint32_t kvh = (uint32_t)u % m->n_kv_heads;
        const engine_seq *s = &j->b->seqs[e->tok_seq[t]];
        int pos = e->tok_pos[t], n;
        /* causal: every position up to this token's, or the window's latest ones */
        int first = window && pos >= (int)window ? pos - (int)window + 1 : 0;
        for (uint32_t h = kvh * group; h < (kvh + 1) * group; h++) {
            const float *q = e->q + (size_t)t * e->q_dim + h * hd;
            size_t at;
            for (int p2 = first; p2 <= pos; p2 += n) {
                n = kv_run(e, s, p2, pos, kvh, &at);
                e->k->attn_scores[e->kv_type](q, kc + at * e->kv_elem, n, (int)hd, m->attn_scale, scores + p2);
            }
            float max = -INFINITY, sum = 0.0f;
            for (int p2 = first; p2 <= pos; p2++)
                max = scores[p2] > max ? scores[p2] : max;
            for (int p2 = first; p2 <= pos; p2++)
                sum += scores[p2] = expf(scores[p2] - max);
            for (int p2 = first; p2 <= pos; p2++)
                scores[p2] /= sum;
            float *out = e->att + (size_t)t * e->q_dim + h * hd;
            memset(out, 0, hd * sizeof *out);
            for (int p2 = first; p2 <= pos; p2 += n) {
                n = kv_run(e, s, p2, pos, kvh, &at);
                e->k->attn_values[e->kv_type](scores + p2, vc + at * e->kv_elem, n, (int)hd, out);
            }
        }
    }
}

/* ---- the step ---- */

int cpu_engine_forward(cpu_engine *e, const engine_batch *b, float *logits, char *err, size_t errlen) {
    const model_desc *m = e->m;
    int max_pos, T = b->n_tokens;
    if (engine_batch_check(b, m->vocab, e->block_size, e->n_blocks, &max_pos, err, errlen))
        return -1;
    if (reserve(e, T, max_pos)) {
        snprintf(err, errlen, "engine: out of memory for a batch of %d tokens", T);
        return -1;
    }
    uint32_t H = m->hidden, hd = m->head_dim;
    for (int32_t s = 0; s < b->n_seqs; s++)
        for (int32_t i = 0; i < b->seqs[s].n_tokens; i++) {
            e->tok_seq[b->seqs[s].start + i] = s;
            e->tok_pos[b->seqs[s].start + i] = b->seqs[s].pos0 + i;
        }
    for (int t = 0; t < T; t++) /* embeddings */
        tensor_dequantize_row(e->embd.type, (const uint8_t *)e->embd.data + (size_t)b->tokens[t] * e->embd.row_bytes,
                              e->x + (size_t)t * H, H);
    if (m->embed_scale != 1.0f)
        for (size_t i = 0; i < (size_t)T * H; i++)
            e->x[i] *= m->embed_scale;

    struct residual_args first_norm = {false, NULL, e->norms};
    for_tokens(e, T, residual_norm, &first_norm);
    for (uint32_t l = 0; l < m->n_layers; l++) {
        const layer_weights *L = &e->layers[l];
        const float *attn_gain = e->norms + l * e->norms_stride, *ffn_gain = attn_gain + H + 2 * hd,
                    *post_attn_gain = ffn_gain + H, *post_ffn_gain = post_attn_gain + H;
        /* attention (xn: the normed input) */
        const weight *qkv[3] = {&L->wq, &L->wk, &L->wv};
        float *qkv_out[3] = {e->q, e->kk, e->vv};
        matmul_many(e, e->xn, T, 3, qkv, qkv_out, false);
        struct qkv_args qa = {b, l};
        for_tokens(e, T, qkv_finish, &qa);
        struct attention_job aj = {e, b, l, T};
        threadpool_run(e->tp, attention_worker, &aj);
        matmul1(e, e->att, T, &L->wo, e->xn);
        struct residual_args attn_out = {true, e->post_norms ? post_attn_gain : NULL, ffn_gain};
        for_tokens(e, T, residual_norm, &attn_out);

        /* feed-forward */
        const weight *gu[2] = {&L->w_gate, &L->w_up};
        float *gu_out[2] = {e->gate, e->up};
        matmul_many(e, e->xn, T, 2, gu, gu_out, true);
        matmul1(e, e->gate, T, &L->w_down, e->xn);
        /* and the next layer's attention norm */
        struct residual_args ffn_out = {true, e->post_norms ? post_ffn_gain : NULL,
                                        l + 1 < m->n_layers ? attn_gain + e->norms_stride : NULL};
        for_tokens(e, T, residual_norm, &ffn_out);
    }

    /* output: final norm and head, only for the rows asked for */
    const float *out_gain = e->norms + e->norms_stride * m->n_layers;
    int rows = 0;
    for (int32_t s = 0; s < b->n_seqs; s++) {
        const engine_seq *q = &b->seqs[s];
        for (int32_t i = q->all_logits ? 0 : q->n_tokens - 1; i < q->n_tokens; i++, rows++)
            rmsnorm(e->xn + (size_t)rows * H, e->x + (size_t)(q->start + i) * H, out_gain, H, m->rms_eps);
    }
    matmul1(e, e->xn, rows, &e->output, logits);
    return 0;
}
