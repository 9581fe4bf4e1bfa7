/* Gemma 3 (text): the decoder with per-head q/k RMSNorm, a second RMSNorm on
 * the output of each attention and feed-forward block (post_attention_norm,
 * post_ffw_norm), GeGLU (tanh GELU) instead of SwiGLU, embeddings scaled by
 * sqrt(hidden), and five sliding-window layers (RoPE base 10000) to every
 * global one (the file's RoPE base, optionally linearly scaled). Norm gains
 * are stored with Gemma's "1 +" already added by llama.cpp's converter, so
 * they are used as they are. Hyperparameters that llama.cpp hard-codes for
 * gemma3 are hard-coded here the same way. */
#include <math.h>
#include <stdio.h>

#include "model.h"

enum {
    GEMMA3_SWA_PATTERN = 6, /* layers 0-4 slide, 5 is global, and so on */
};
static const float GEMMA3_ROPE_BASE_SWA = 10000.0f;

int gemma3_load(const gguf_file *f, model_desc *m, char *err, size_t errlen) {
    static const decoder_spec spec = {.arch = "gemma3", .qk_norm = true, .post_norms = true};
    if (model_load_decoder(f, m, &spec, err, errlen))
        return -1;
    uint32_t window;
    if (gguf_get_u32(f, "gemma3.attention.sliding_window", &window, err, errlen))
        return -1;
    if (window == 0) {
        snprintf(err, errlen, "key gemma3.attention.sliding_window: 0");
        return -1;
    }
    float factor = 1.0f;
    if (!gguf_get_f32(f, "gemma3.rope.scaling.factor", &factor, NULL, 0) && !(factor > 0.0f && factor < 1e6f)) {
        snprintf(err, errlen, "key gemma3.rope.scaling.factor: implausible value %g", (double)factor);
        return -1;
    }
    m->embed_scale = sqrtf((float)m->hidden);
    m->ffn_act = FFN_GELU_TANH;
    if (m->n_layers == 62) /* the 27B model scales queries by hidden/heads, not head_dim (as llama.cpp) */
        m->attn_scale = 1.0f / sqrtf((float)(m->hidden / m->n_heads));
    for (uint32_t l = 0; l < m->n_layers; l++) {
        layer_weights *L = &m->layers[l];
        bool sliding = l % GEMMA3_SWA_PATTERN < GEMMA3_SWA_PATTERN - 1;
        L->window = sliding ? window : 0;
        L->rope_base = sliding ? GEMMA3_ROPE_BASE_SWA : m->rope_base;
        L->rope_freq_scale = sliding ? 1.0f : 1.0f / factor;
    }
    return 0;
}
