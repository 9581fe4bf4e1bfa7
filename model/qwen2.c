/* Qwen2 and Qwen2.5: biases on the q, k and v projections, no q/k norm. */
#include "model.h"

int qwen2_load(const gguf_file *f, model_desc *m, char *err, size_t errlen) {
    static const decoder_spec spec = {.arch = "qwen2", .qkv_bias = true};
    return model_load_decoder(f, m, &spec, err, errlen);
}
