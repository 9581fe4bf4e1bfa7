/* Qwen3: pre-norm decoder, GQA attention with per-head RMSNorm on q and k,
 * NeoX RoPE, SwiGLU FFN, optionally tied output head. Hyperparameters come
 * from the qwen3.* keys llama.cpp's converter writes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

static int get_u32(const gguf_file *f, const char *key, uint32_t *v, char *err, size_t errlen) {
    if (gguf_get_u32(f, key, v, err, errlen))
        return -1;
    if (*v == 0 || *v > (1u << 24)) {
        snprintf(err, errlen, "key %s: implausible value %u", key, *v);
        return -1;
    }
    return 0;
}

int qwen3_load(const gguf_file *f, model_desc *m, char *err, size_t errlen) {
    if (get_u32(f, "qwen3.block_count", &m->n_layers, err, errlen) ||
        get_u32(f, "qwen3.embedding_length", &m->hidden, err, errlen) ||
        get_u32(f, "qwen3.attention.head_count", &m->n_heads, err, errlen) ||
        get_u32(f, "qwen3.attention.head_count_kv", &m->n_kv_heads, err, errlen) ||
        get_u32(f, "qwen3.feed_forward_length", &m->ffn, err, errlen) ||
        get_u32(f, "qwen3.context_length", &m->context, err, errlen) ||
        gguf_get_f32(f, "qwen3.attention.layer_norm_rms_epsilon", &m->rms_eps, err, errlen))
        return -1;
    if (gguf_get_u32(f, "qwen3.attention.key_length", &m->head_dim, NULL, 0))
        m->head_dim = m->hidden / m->n_heads;
    if (gguf_get_f32(f, "qwen3.rope.freq_base", &m->rope_base, NULL, 0))
        m->rope_base = 1000000.0f;
    if (m->n_heads % m->n_kv_heads || m->head_dim % 2 || m->n_layers > 1024) {
        snprintf(err, errlen, "inconsistent attention shape: %u heads, %u kv heads, head_dim %u", m->n_heads,
                 m->n_kv_heads, m->head_dim);
        return -1;
    }
    const gguf_tensor *emb = gguf_find_tensor(f, "token_embd.weight");
    if (!emb) {
        snprintf(err, errlen, "tensor token_embd.weight: missing");
        return -1;
    }
    m->vocab = (uint32_t)(emb->n_elements / emb->ne[0]);
    uint64_t H = m->hidden, Q = (uint64_t)m->n_heads * m->head_dim, KV = (uint64_t)m->n_kv_heads * m->head_dim;
    if (model_bind(f, "token_embd.weight", m->vocab, H, true, &m->token_embd, err, errlen) ||
        model_bind(f, "output_norm.weight", 1, H, true, &m->output_norm, err, errlen) ||
        model_bind(f, "output.weight", m->vocab, H, false, &m->output, err, errlen))
        return -1;
    m->tied_output = m->output.data == NULL;
    if (m->tied_output)
        m->output = m->token_embd;
    m->layers = calloc(m->n_layers, sizeof *m->layers);
    if (!m->layers) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    m->weight_bytes = m->output.row_bytes * m->vocab;
    for (uint32_t l = 0; l < m->n_layers; l++) {
        layer_weights *L = &m->layers[l];
        struct {
            const char *name;
            uint64_t rows, cols;
            weight *w;
        } binds[] = {
            {"attn_norm", 1, H, &L->attn_norm},
            {"attn_q", Q, H, &L->wq},
            {"attn_k", KV, H, &L->wk},
            {"attn_v", KV, H, &L->wv},
            {"attn_q_norm", 1, m->head_dim, &L->q_norm},
            {"attn_k_norm", 1, m->head_dim, &L->k_norm},
            {"attn_output", H, Q, &L->wo},
            {"ffn_norm", 1, H, &L->ffn_norm},
            {"ffn_gate", m->ffn, H, &L->w_gate},
            {"ffn_up", m->ffn, H, &L->w_up},
            {"ffn_down", H, m->ffn, &L->w_down},
        };
        for (size_t i = 0; i < sizeof binds / sizeof binds[0]; i++) {
            char name[96];
            snprintf(name, sizeof name, "blk.%u.%s.weight", l, binds[i].name);
            if (model_bind(f, name, binds[i].rows, binds[i].cols, true, binds[i].w, err, errlen))
                return -1;
            m->weight_bytes += binds[i].w->row_bytes * binds[i].w->rows;
        }
    }
    return 0;
}
