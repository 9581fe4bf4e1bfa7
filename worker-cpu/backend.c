/* The engine interface over the CPU engine and the dynamically loaded
 * CUDA engine (see backend.h). */
#include "backend.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"
#include "engine_cuda.h"
#include "sampler.h"

struct engine {
    const model_desc *m;
    cpu_engine *cpu;
    cuda_engine *cuda;
    const cuda_engine_api *api;
    void *lib;
    char describe[256];
    float *scratch; /* CPU: logits when the caller wants only argmax */
    int32_t cap_rows;
};

/* libinferno-cuda.so: INFERNO_CUDA_LIB, else ../lib/ beside the running program. */
static void *open_cuda_library(char *err, size_t errlen) {
    char path[PATH_MAX];
    const char *env = getenv("INFERNO_CUDA_LIB");
    if (env && *env) {
        snprintf(path, sizeof path, "%s", env);
    } else {
        ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
        if (n <= 0) {
            snprintf(err, errlen, "engine: cannot locate the running program to find libinferno-cuda.so");
            return NULL;
        }
        path[n] = 0;
        char *slash = strrchr(path, '/');
        *(slash ? slash : path) = 0;
        size_t len = strlen(path);
        snprintf(path + len, sizeof path - len, "/../lib/libinferno-cuda.so");
    }
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib)
        snprintf(err, errlen, "engine: the cuda backend needs %s (built by make when nvcc is installed): %s", path,
                 dlerror());
    return lib;
}

int engine_open(const model_desc *m, const engine_config *cfg, engine **out, char *err, size_t errlen) {
    *out = NULL;
    engine_config c = cfg ? *cfg : (engine_config){0};
    const char *backend = c.backend ? c.backend : "cpu";
    engine *e = calloc(1, sizeof *e);
    if (!e) {
        snprintf(err, errlen, "engine: out of memory");
        return -1;
    }
    e->m = m;
    const char *kv_type = c.kv_type ? c.kv_type : "f32";
    bool cuda = !strcmp(backend, "cuda");
    if (strcmp(kv_type, "f32") && strcmp(kv_type, "f16") && (strcmp(kv_type, "fp8") || !cuda)) {
        snprintf(err, errlen, "engine: KV type '%s' (f32 or f16%s)", kv_type, cuda ? ", or fp8" : "; fp8 on cuda");
        free(e);
        return -1;
    }
    if (!strcmp(backend, "cpu")) {
        cpu_engine_config cc = {c.n_threads, c.block_size, c.n_blocks, c.kv_tokens, c.kernels, !strcmp(kv_type, "f16")};
        if (cpu_engine_create(m, &cc, &e->cpu, err, errlen)) {
            free(e);
            return -1;
        }
        snprintf(e->describe, sizeof e->describe, "%s kernels, %d threads", cpu_engine_kernels(e->cpu),
                 c.n_threads > 0 ? c.n_threads : 1);
    } else if (!strcmp(backend, "cuda")) {
        if (!(e->lib = open_cuda_library(err, errlen))) {
            free(e);
            return -1;
        }
        const cuda_engine_api *(*get_api)(void) = (const cuda_engine_api *(*)(void))dlsym(e->lib, "inferno_cuda_api");
        e->api = get_api ? get_api() : NULL;
        if (!e->api || e->api->abi != INFERNO_CUDA_ABI) {
            snprintf(err, errlen, "engine: libinferno-cuda.so is from another build (rebuild with make)");
            engine_close(e);
            return -1;
        }
        int kv = !strcmp(kv_type, "f16") ? CUDA_KV_F16 : !strcmp(kv_type, "fp8") ? CUDA_KV_FP8 : CUDA_KV_F32;
        cuda_engine_config cc = {c.device, c.block_size, c.n_blocks, c.kv_tokens, c.graphs, kv};
        if (e->api->create(m, &cc, &e->cuda, err, errlen)) {
            engine_close(e);
            return -1;
        }
        snprintf(e->describe, sizeof e->describe, "%s", e->api->describe(e->cuda));
    } else {
        snprintf(err, errlen, "engine: unknown backend '%s' (cpu or cuda)", backend);
        free(e);
        return -1;
    }
    *out = e;
    return 0;
}

void engine_close(engine *e) {
    if (!e)
        return;
    if (e->cpu)
        cpu_engine_free(e->cpu);
    if (e->cuda)
        e->api->destroy(e->cuda);
    /* the CUDA runtime keeps threads and handlers of its own: the library stays mapped */
    free(e->scratch);
    free(e);
}

/* The CPU engine's logits for a caller that wants only ids. */
static float *scratch_logits(engine *e, int32_t rows, char *err, size_t errlen) {
    if (rows > e->cap_rows) {
        free(e->scratch);
        e->cap_rows = 0;
        if (!(e->scratch = malloc((size_t)rows * e->m->vocab * sizeof *e->scratch))) {
            snprintf(err, errlen, "engine: out of memory for %d rows of logits", rows);
            return NULL;
        }
        e->cap_rows = rows;
    }
    return e->scratch;
}

int engine_step(engine *e, const engine_batch *b, float *logits, int32_t *argmax, char *err, size_t errlen) {
    if (e->cuda)
        return e->api->forward(e->cuda, b, logits, argmax, err, errlen);
    int32_t rows = engine_batch_rows(b);
    if (!logits && !(logits = scratch_logits(e, rows, err, errlen)))
        return -1;
    if (cpu_engine_forward(e->cpu, b, logits, err, errlen))
        return -1;
    for (int32_t r = 0; argmax && r < rows; r++)
        argmax[r] = sampler_argmax(logits + (size_t)r * e->m->vocab, (int32_t)e->m->vocab);
    return 0;
}

/* Each row's plan on the host: its edits (in place), then its draw. */
static void sample_here(const engine *e, float *logits, int32_t rows, const sample_plan *plans, int32_t *ids) {
    for (int32_t r = 0; r < rows; r++) {
        float *row = logits + (size_t)r * e->m->vocab;
        sampler_apply_edits(&plans[r], row, (int32_t)e->m->vocab);
        ids[r] = sampler_draw(&plans[r], row, (int32_t)e->m->vocab);
    }
}

int engine_step_sample(engine *e, const engine_batch *b, const sample_plan *plans, int32_t *ids, char *err,
                       size_t errlen) {
    if (e->cuda)
        return e->api->forward_sample(e->cuda, b, plans, ids, err, errlen);
    int32_t rows = engine_batch_rows(b);
    float *logits = scratch_logits(e, rows, err, errlen);
    if (!logits || cpu_engine_forward(e->cpu, b, logits, err, errlen))
        return -1;
    sample_here(e, logits, rows, plans, ids);
    return 0;
}

int engine_sample_logits(engine *e, const float *logits, int rows, const sample_plan *plans, int32_t *ids, char *err,
                         size_t errlen) {
    if (e->cuda)
        return e->api->sample_logits(e->cuda, logits, rows, plans, ids, err, errlen);
    float *copy = scratch_logits(e, rows, err, errlen);
    if (!copy)
        return -1;
    memcpy(copy, logits, (size_t)rows * e->m->vocab * sizeof *copy);
    sample_here(e, copy, rows, plans, ids);
    return 0;
}

int engine_block_size(const engine *e) { return e->cpu ? cpu_engine_block_size(e->cpu) : e->api->block_size(e->cuda); }
int engine_n_blocks(const engine *e) { return e->cpu ? cpu_engine_n_blocks(e->cpu) : e->api->n_blocks(e->cuda); }
const char *engine_backend(const engine *e) { return e->cpu ? "cpu" : "cuda"; }
const char *engine_describe(const engine *e) { return e->describe; }
