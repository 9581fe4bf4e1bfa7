/* An architecture-neutral description of a decoder-only transformer, built
 * from a GGUF file: hyperparameters plus a view of every weight inside the
 * file's mapping. Each architecture is one loader file (model/qwen3.c,
 * model/qwen2.c, model/gemma3.c); engines read only this description.
 *
 * Matrices follow GGUF: a weight of ne = [cols, rows] stores `rows` rows of
 * `cols` values each, and y = W x means y[r] = dot(W[r], x). */
#ifndef INFERNO_MODEL_H
#define INFERNO_MODEL_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>

#include "gguf.h"

typedef struct {
    const void *data; /* NULL when absent */
    uint32_t type;    /* enum tensor_type */
    uint64_t rows, cols;
    uint64_t row_bytes;
} weight;

/* The feed-forward activation: act(x Wgate^T) * (x Wup^T). */
enum ffn_activation { FFN_SILU, FFN_GELU_TANH };

typedef struct {
    weight attn_norm;                     /* [hidden] */
    weight wq, wk, wv;                    /* [heads*head_dim][hidden], [kv_heads*head_dim][hidden] x2 */
    weight bq, bk, bv;                    /* biases (qwen2), absent in qwen3 */
    weight q_norm, k_norm;                /* [head_dim], per-head RMSNorm (qwen3, gemma3) */
    weight wo;                            /* [hidden][heads*head_dim] */
    weight ffn_norm;                      /* [hidden] */
    weight w_gate, w_up;                  /* [ffn][hidden] */
    weight w_down;                        /* [hidden][ffn] */
    weight post_attn_norm, post_ffn_norm; /* [hidden], on each block's output before the residual add (gemma3) */
    /* the layer's attention variant */
    uint32_t window;       /* sliding window: a token sees the `window` latest positions; 0 = all */
    float rope_base;       /* RoPE frequency base */
    float rope_freq_scale; /* positions are multiplied by this (linear RoPE scaling); 1 without */
} layer_weights;

typedef struct model_desc {
    char arch[32];
    char name[128];
    uint32_t n_layers, hidden, n_heads, n_kv_heads, head_dim, ffn, vocab, context;
    float rms_eps, rope_base;
    float attn_scale;  /* softmax(q k^T * attn_scale): 1/sqrt(head_dim) */
    float embed_scale; /* the embedding rows are multiplied by this: 1, or sqrt(hidden) (gemma3) */
    enum ffn_activation ffn_act;
    weight token_embd;  /* [vocab][hidden] */
    weight output_norm; /* [hidden] */
    weight output;      /* [vocab][hidden]; the embedding itself when tied */
    bool tied_output;
    layer_weights *layers;
    uint64_t weight_bytes; /* bytes read per token: every matrix once (the embedding only when tied) */
    gguf_file *file;
} model_desc;

/* Opens path, identifies the architecture and checks every tensor's shape.
 * Errors name the file and the tensor or key at fault. */
int model_open(const char *path, model_desc **out, char *err, size_t errlen);
void model_close(model_desc *m);

/* ---- for loaders (model/<arch>.c) ---- */

/* The tensor name, its expected [rows][cols] (rows 1 for vectors), and
 * whether it must exist. Fills w or fails with "tensor NAME: ...". */
int model_bind(const gguf_file *f, const char *name, uint64_t rows, uint64_t cols, bool required, weight *w, char *err,
               size_t errlen);

/* The Qwen-family decoder (model/decoder.c), in the variant spec names. */
typedef struct {
    const char *arch; /* the metadata key prefix: "qwen3" */
    bool qkv_bias;    /* blk.N.attn_{q,k,v}.bias */
    bool qk_norm;     /* blk.N.attn_{q,k}_norm.weight */
    bool post_norms;  /* blk.N.post_attention_norm.weight, blk.N.post_ffw_norm.weight */
} decoder_spec;
int model_load_decoder(const gguf_file *f, model_desc *m, const decoder_spec *spec, char *err, size_t errlen);

/* Layer l's RoPE frequencies, out[head_dim / 2], as transformers computes
 * them: 1 / base^(2i / head_dim) in float32, times the layer's linear
 * scaling. Both engines take their tables from here. */
static inline void model_rope_inv_freq(const model_desc *m, uint32_t l, float *out) {
    for (uint32_t i = 0; i < m->head_dim / 2; i++)
        out[i] = m->layers[l].rope_freq_scale / powf(m->layers[l].rope_base, (float)(2 * i) / (float)m->head_dim);
}

int qwen3_load(const gguf_file *f, model_desc *m, char *err, size_t errlen);
int qwen2_load(const gguf_file *f, model_desc *m, char *err, size_t errlen);
int gemma3_load(const gguf_file *f, model_desc *m, char *err, size_t errlen);

#endif
