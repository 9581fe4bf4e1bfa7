/* Qwen3: per-head RMSNorm on q and k, no attention biases. */
#include "model.h"

int qwen3_load(const gguf_file *f, model_desc *m, char *err, size_t errlen) {
    static const decoder_spec spec = {.arch = "qwen3", .qk_norm = true};
    return model_load_decoder(f, m, &spec, err, errlen);
}
