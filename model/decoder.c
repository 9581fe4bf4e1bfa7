/* The pre-norm decoder the Qwen and Gemma families share: GQA attention
 * (optionally with q/k/v biases or per-head q/k RMSNorm), NeoX RoPE, a gated
 * FFN, an output head that may be tied to the embedding; loaded here with
 * Qwen's settings (SwiGLU, full attention everywhere), which gemma3.c then
 * adjusts. Hyperparameters come from the "<arch>.*" keys llama.cpp's
 * converter writes; each architecture file (qwen3.c, qwen2.c, gemma3.c) says
 * which variant it is. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

static int get_u32(const gguf_file *f, const char *prefix, const char *suffix, uint32_t *v, char *err, size_t errlen) {
    char key[96];
    snprintf(key, sizeof key, "%s.%s", prefix, suffix);
    if (gguf_get_u32(f, key, v, err, errlen))
        return -1;
    if (*v == 0 || *v > (1u << 24)) {
        snprintf(err, errlen, "key %s: implausible value %u", key, *v);
        return -1;
    }
    return 0;
}

int model_load_decoder(const gguf_file *f, model_desc *m, const decoder_spec *spec, char *err, size_t errlen) {
    const char *a = spec->arch;
    char key[96];
    if (get_u32(f, a, "block_count", &m->n_layers, err, errlen) ||
        get_u32(f, a, "embedding_length", &m->hidden, err, errlen) ||
        get_u32(f, a, "attention.head_count", &m->n_heads, err, errlen) ||
        get_u32(f, a, "attention.head_count_kv", &m->n_kv_heads, err, errlen) ||
        get_u32(f, a, "feed_forward_length", &m->ffn, err, errlen) ||
        get_u32(f, a, "context_length", &m->context, err, errlen))
        return -1;
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", a);
    if (gguf_get_f32(f, key, &m->rms_eps, err, errlen))
        return -1;
    snprintf(key, sizeof key, "%s.attention.key_length", a);
    if (gguf_get_u32(f, key, &m->head_dim, NULL, 0))
        m->head_dim = m->hidden / m->n_heads;
    snprintf(key, sizeof key, "%s.rope.freq_base", a);
    if (gguf_get_f32(f, key, &m->rope_base, NULL, 0))
        m->rope_base = 1000000.0f;
    m->attn_scale = 1.0f / sqrtf((float)m->head_dim);
    m->embed_scale = 1.0f;
    m->ffn_act = FFN_SILU;
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
            const char *name; /* blk.L.<name> */
            uint64_t rows, cols;
            bool wanted;
            weight *w;
        } binds[] = {
            {"attn_norm.weight", 1, H, true, &L->attn_norm},
            {"attn_q.weight", Q, H, true, &L->wq},
            {"attn_k.weight", KV, H, true, &L->wk},
            {"attn_v.weight", KV, H, true, &L->wv},
            {"attn_q.bias", 1, Q, spec->qkv_bias, &L->bq},
            {"attn_k.bias", 1, KV, spec->qkv_bias, &L->bk},
            {"attn_v.bias", 1, KV, spec->qkv_bias, &L->bv},
            {"attn_q_norm.weight", 1, m->head_dim, spec->qk_norm, &L->q_norm},
            {"attn_k_norm.weight", 1, m->head_dim, spec->qk_norm, &L->k_norm},
            {"attn_output.weight", H, Q, true, &L->wo},
            {"ffn_norm.weight", 1, H, true, &L->ffn_norm},
            {"ffn_gate.weight", m->ffn, H, true, &L->w_gate},
            {"ffn_up.weight", m->ffn, H, true, &L->w_up},
            {"ffn_down.weight", H, m->ffn, true, &L->w_down},
            {"post_attention_norm.weight", 1, H, spec->post_norms, &L->post_attn_norm},
            {"post_ffw_norm.weight", 1, H, spec->post_norms, &L->post_ffn_norm},
        };
        L->window = 0, L->rope_base = m->rope_base, L->rope_freq_scale = 1.0f;
        for (size_t i = 0; i < sizeof binds / sizeof binds[0]; i++) {
            if (!binds[i].wanted)
                continue;
            char name[96];
            snprintf(name, sizeof name, "blk.%u.%s", l, binds[i].name);
            if (model_bind(f, name, binds[i].rows, binds[i].cols, true, binds[i].w, err, errlen))
                return -1;
            m->weight_bytes += binds[i].w->row_bytes * binds[i].w->rows;
        }
    }
    return 0;
}
