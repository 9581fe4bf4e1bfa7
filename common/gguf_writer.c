/* GGUF writer: metadata is serialized into a byte buffer as it is added;
 * tensors are referenced and laid out at write time, each at an offset that
 * is a multiple of general.alignment, as llama.cpp's writer lays them out. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"

struct writer_tensor {
    char *name;
    uint32_t type, n_dims;
    uint64_t ne[GGUF_MAX_DIMS];
    const void *data;
    uint64_t n_bytes;
};

struct gguf_writer {
    uint32_t version;
    uint32_t alignment;
    uint8_t *kv_bytes; /* serialized metadata entries */
    size_t kv_len, kv_cap;
    uint64_t n_kv;
    char **keys;
    struct writer_tensor *tensors;
    uint64_t n_tensors, tensors_cap;
    char error[256];
};

static int fail(gguf_writer *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(gguf_writer *w, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->error, sizeof w->error, fmt, ap);
    va_end(ap);
    return -1;
}

gguf_writer *gguf_writer_new(void) {
    gguf_writer *w = calloc(1, sizeof *w);
    if (w) {
        w->version = 3;
        w->alignment = GGUF_DEFAULT_ALIGNMENT;
    }
    return w;
}

void gguf_writer_free(gguf_writer *w) {
    if (!w)
        return;
    for (uint64_t i = 0; i < w->n_kv; i++)
        free(w->keys[i]);
    for (uint64_t i = 0; i < w->n_tensors; i++)
        free(w->tensors[i].name);
    free(w->keys);
    free(w->tensors);
    free(w->kv_bytes);
    free(w);
}

const char *gguf_writer_error(const gguf_writer *w) { return w->error; }

int gguf_writer_set_version(gguf_writer *w, uint32_t version) {
    if (version != 2 && version != 3)
        return fail(w, "gguf writer: version %u (2 or 3 supported)", version);
    w->version = version;
    return 0;
}

static int put(gguf_writer *w, const void *p, size_t n) {
    if (w->kv_len + n > w->kv_cap) {
        size_t cap = w->kv_cap ? w->kv_cap : 4096;
        while (cap < w->kv_len + n)
            cap *= 2;
        uint8_t *b = realloc(w->kv_bytes, cap);
        if (!b)
            return fail(w, "gguf writer: out of memory");
        w->kv_bytes = b;
        w->kv_cap = cap;
    }
    memcpy(w->kv_bytes + w->kv_len, p, n);
    w->kv_len += n;
    return 0;
}

static int put_u32(gguf_writer *w, uint32_t v) { return put(w, &v, 4); }
static int put_u64(gguf_writer *w, uint64_t v) { return put(w, &v, 8); }
static int put_str(gguf_writer *w, const char *s, uint64_t len) { return put_u64(w, len) || put(w, s, len) ? -1 : 0; }

/* Records a new key (refusing duplicates) and writes its name and type. */
static int begin_kv(gguf_writer *w, const char *key, enum gguf_value_type type) {
    if (!key || !*key)
        return fail(w, "gguf writer: empty key");
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (!strcmp(w->keys[i], key))
            return fail(w, "gguf writer: key %s: duplicate key", key);
    char **keys = realloc(w->keys, (w->n_kv + 1) * sizeof *keys);
    if (!keys)
        return fail(w, "gguf writer: out of memory");
    w->keys = keys;
    if (!(w->keys[w->n_kv] = strdup(key)))
        return fail(w, "gguf writer: out of memory");
    w->n_kv++;
    return put_str(w, key, strlen(key)) || put_u32(w, type) ? -1 : 0;
}

int gguf_writer_add_scalar(gguf_writer *w, const char *key, enum gguf_value_type t, const void *v) {
    size_t sz = gguf_value_type_size(t);
    if (!sz)
        return fail(w, "gguf writer: key %s: type %d is not a scalar", key, t);
    if (!strcmp(key, "general.alignment")) {
        uint32_t a;
        if (t != GGUF_TYPE_UINT32 || (memcpy(&a, v, 4), a < 8 || (a & (a - 1))))
            return fail(w, "gguf writer: general.alignment must be a u32 power of two >= 8");
        w->alignment = a;
    }
    return (begin_kv(w, key, t) || put(w, v, sz)) ? -1 : 0;
}

int gguf_writer_add_u32(gguf_writer *w, const char *key, uint32_t v) {
    return gguf_writer_add_scalar(w, key, GGUF_TYPE_UINT32, &v);
}
int gguf_writer_add_i32(gguf_writer *w, const char *key, int32_t v) {
    return gguf_writer_add_scalar(w, key, GGUF_TYPE_INT32, &v);
}
int gguf_writer_add_u64(gguf_writer *w, const char *key, uint64_t v) {
    return gguf_writer_add_scalar(w, key, GGUF_TYPE_UINT64, &v);
}
int gguf_writer_add_f32(gguf_writer *w, const char *key, float v) {
    return gguf_writer_add_scalar(w, key, GGUF_TYPE_FLOAT32, &v);
}
int gguf_writer_add_bool(gguf_writer *w, const char *key, bool v) {
    uint8_t b = v;
    return gguf_writer_add_scalar(w, key, GGUF_TYPE_BOOL, &b);
}

int gguf_writer_add_str(gguf_writer *w, const char *key, const char *v) {
    return (begin_kv(w, key, GGUF_TYPE_STRING) || put_str(w, v, strlen(v))) ? -1 : 0;
}

int gguf_writer_add_array(gguf_writer *w, const char *key, enum gguf_value_type elem_type, const void *data,
                          uint64_t count) {
    size_t sz = gguf_value_type_size(elem_type);
    if (!sz)
        return fail(w, "gguf writer: key %s: array element type %d is not numeric", key, elem_type);
    return (begin_kv(w, key, GGUF_TYPE_ARRAY) || put_u32(w, elem_type) || put_u64(w, count) || put(w, data, count * sz))
               ? -1
               : 0;
}

int gguf_writer_add_str_array(gguf_writer *w, const char *key, const char *const *strs, const uint64_t *lens,
                              uint64_t count) {
    if (begin_kv(w, key, GGUF_TYPE_ARRAY) || put_u32(w, GGUF_TYPE_STRING) || put_u64(w, count))
        return -1;
    for (uint64_t i = 0; i < count; i++)
        if (put_str(w, strs[i], lens ? lens[i] : strlen(strs[i])))
            return -1;
    return 0;
}

int gguf_writer_add_tensor(gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims, const uint64_t *ne,
                           const void *data, uint64_t n_bytes) {
    if (!name || !*name)
        return fail(w, "gguf writer: empty tensor name");
    for (uint64_t i = 0; i < w->n_tensors; i++)
        if (!strcmp(w->tensors[i].name, name))
            return fail(w, "gguf writer: tensor %s: duplicate name", name);
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return fail(w, "gguf writer: tensor %s: %u dimensions", name, n_dims);
    uint64_t rows = 1, row_bytes;
    for (uint32_t d = 1; d < n_dims; d++)
        rows *= ne[d];
    if (!tensor_row_bytes(type, ne[0], &row_bytes) || row_bytes * rows != n_bytes)
        return fail(w, "gguf writer: tensor %s: %llu bytes do not match type %s and shape", name,
                    (unsigned long long)n_bytes, tensor_type_name(type) ? tensor_type_name(type) : "?");
    if (w->n_tensors == w->tensors_cap) {
        uint64_t cap = w->tensors_cap ? 2 * w->tensors_cap : 64;
        struct writer_tensor *t = realloc(w->tensors, cap * sizeof *t);
        if (!t)
            return fail(w, "gguf writer: out of memory");
        w->tensors = t;
        w->tensors_cap = cap;
    }
    struct writer_tensor *t = &w->tensors[w->n_tensors];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name)))
        return fail(w, "gguf writer: out of memory");
    t->type = type;
    t->n_dims = n_dims;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++)
        t->ne[d] = d < n_dims ? ne[d] : 1;
    t->data = data;
    t->n_bytes = n_bytes;
    w->n_tensors++;
    return 0;
}

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

static int write_padding(FILE *fp, uint64_t n) {
    static const uint8_t zeros[64];
    while (n) {
        uint64_t k = n < sizeof zeros ? n : sizeof zeros;
        if (fwrite(zeros, 1, k, fp) != k)
            return -1;
        n -= k;
    }
    return 0;
}

int gguf_writer_write(gguf_writer *w, const char *path) {
    FILE *fp = fopen(path, "wb");
    if (!fp)
        return fail(w, "gguf writer: %s: %s", path, strerror(errno));
    uint64_t pos = 0;
    int ok = 1;
#define EMIT(ptr, n) (ok = ok && fwrite((ptr), 1, (n), fp) == (size_t)(n), pos += (n))
    EMIT("GGUF", 4);
    EMIT(&w->version, 4);
    EMIT(&w->n_tensors, 8);
    EMIT(&w->n_kv, 8);
    EMIT(w->kv_bytes, w->kv_len);
    uint64_t offset = 0;
    for (uint64_t i = 0; i < w->n_tensors; i++) {
        const struct writer_tensor *t = &w->tensors[i];
        uint64_t len = strlen(t->name);
        EMIT(&len, 8);
        EMIT(t->name, len);
        EMIT(&t->n_dims, 4);
        EMIT(t->ne, 8 * (uint64_t)t->n_dims);
        EMIT(&t->type, 4);
        EMIT(&offset, 8);
        offset = align_up(offset + t->n_bytes, w->alignment);
    }
    uint64_t data_start = align_up(pos, w->alignment);
    ok = ok && !write_padding(fp, data_start - pos);
    for (uint64_t i = 0; i < w->n_tensors && ok; i++) {
        const struct writer_tensor *t = &w->tensors[i];
        ok = fwrite(t->data, 1, t->n_bytes, fp) == t->n_bytes &&
             !write_padding(fp, align_up(t->n_bytes, w->alignment) - t->n_bytes);
    }
#undef EMIT
    if (fclose(fp) || !ok) {
        remove(path);
        return fail(w, "gguf writer: %s: write failed: %s", path, strerror(errno));
    }
    return 0;
}
