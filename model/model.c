/* Model description: architecture dispatch and tensor binding. */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    const char *arch;
    int (*load)(const gguf_file *f, model_desc *m, char *err, size_t errlen);
} loaders[] = {
    {"qwen3", qwen3_load},
    {"qwen2", qwen2_load},
    {"gemma3", gemma3_load},
};

int model_bind(const gguf_file *f, const char *name, uint64_t rows, uint64_t cols, bool required, weight *w, char *err,
               size_t errlen) {
    memset(w, 0, sizeof *w);
    const gguf_tensor *t = gguf_find_tensor(f, name);
    if (!t) {
        if (required)
            snprintf(err, errlen, "tensor %s: missing", name);
        return required ? -1 : 0;
    }
    uint64_t t_rows = t->n_elements / t->ne[0];
    if (t->ne[0] != cols || t_rows != rows || t->ne[2] != 1 || t->ne[3] != 1) {
        snprintf(err, errlen, "tensor %s: shape [%llu, %llu], expected [%llu, %llu]", name,
                 (unsigned long long)t->ne[0], (unsigned long long)t_rows, (unsigned long long)cols,
                 (unsigned long long)rows);
        return -1;
    }
    if (!tensor_type_can_dequantize(t->type)) {
        snprintf(err, errlen, "tensor %s: type %s is not supported", name, tensor_type_name(t->type));
        return -1;
    }
    if (rows == 1 && t->type != TENSOR_F32 && t->type != TENSOR_F16 && t->type != TENSOR_BF16) {
        snprintf(err, errlen, "tensor %s: vector of type %s (expected F32, F16 or BF16)", name,
                 tensor_type_name(t->type));
        return -1;
    }
    *w = (weight){t->data, t->type, rows, cols, t->n_bytes / rows};
    return 0;
}

int model_open(const char *path, model_desc **out, char *err, size_t errlen) {
    *out = NULL;
    model_desc *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (gguf_open(path, &m->file, err, errlen)) {
        free(m);
        return -1;
    }
    gguf_str arch, name;
    char why[512] = "";
    if (gguf_get_str(m->file, "general.architecture", &arch, why, sizeof why)) {
        snprintf(err, errlen, "model: %s: %s", path, why);
        model_close(m);
        return -1;
    }
    snprintf(m->arch, sizeof m->arch, "%.*s", (int)(arch.len < 31 ? arch.len : 31), arch.ptr);
    if (!gguf_get_str(m->file, "general.name", &name, NULL, 0))
        snprintf(m->name, sizeof m->name, "%.*s", (int)(name.len < 127 ? name.len : 127), name.ptr);
    for (size_t i = 0; i < sizeof loaders / sizeof loaders[0]; i++) {
        if (strcmp(loaders[i].arch, m->arch))
            continue;
        if (loaders[i].load(m->file, m, why, sizeof why)) {
            snprintf(err, errlen, "model: %s: %s", path, why);
            model_close(m);
            return -1;
        }
        *out = m;
        return 0;
    }
    snprintf(err, errlen, "model: %s: architecture '%s' is not supported (supported: qwen3, qwen2, gemma3)", path,
             m->arch);
    model_close(m);
    return -1;
}

void model_close(model_desc *m) {
    if (!m)
        return;
    free(m->layers);
    gguf_close(m->file);
    free(m);
}
