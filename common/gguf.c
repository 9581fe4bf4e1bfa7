/* GGUF reader: parse and validate everything at open time, then serve
 * lookups. Parsing goes through a bounds-checked cursor; nothing is read
 * from the mapping except through it or after validation. */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct gguf_kv {
    char *key;
    enum gguf_value_type type;
    const uint8_t *scalar; /* the value's bytes, for scalar types */
    gguf_str str;          /* GGUF_TYPE_STRING */
    gguf_array arr;        /* GGUF_TYPE_ARRAY */
    gguf_str *arr_strs;    /* owned index of a string array */
};

/* Open-addressing name -> index map; slots hold index + 1, 0 is empty. */
struct name_index {
    uint64_t *slots;
    uint64_t mask;
};

struct gguf_file {
    const uint8_t *base;
    uint64_t size;
    bool mapped;
    uint32_t version;
    uint32_t alignment;
    uint64_t data_offset;
    uint64_t n_kv;
    struct gguf_kv *kv;
    uint64_t n_tensors;
    gguf_tensor *tensors;
    struct name_index kv_index, tensor_index;
};

typedef struct {
    const uint8_t *base;
    uint64_t size;
    uint64_t pos;
    char *err;
    size_t errlen;
} cursor;

static void set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

size_t gguf_value_type_size(enum gguf_value_type t) {
    switch (t) {
    case GGUF_TYPE_UINT8:
    case GGUF_TYPE_INT8:
    case GGUF_TYPE_BOOL: return 1;
    case GGUF_TYPE_UINT16:
    case GGUF_TYPE_INT16: return 2;
    case GGUF_TYPE_UINT32:
    case GGUF_TYPE_INT32:
    case GGUF_TYPE_FLOAT32: return 4;
    case GGUF_TYPE_UINT64:
    case GGUF_TYPE_INT64:
    case GGUF_TYPE_FLOAT64: return 8;
    default: return 0;
    }
}

const char *gguf_value_type_name(enum gguf_value_type t) {
    static const char *names[] = {"u8",   "i8",  "u16", "i16", "u32", "i32", "f32",
                                  "bool", "str", "arr", "u64", "i64", "f64"};
    return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "?";
}

/* ---- name index ---- */

static uint64_t name_hash(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static int name_index_init(struct name_index *ix, uint64_t n) {
    uint64_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    ix->slots = calloc(cap, sizeof *ix->slots);
    ix->mask = cap - 1;
    return ix->slots ? 0 : -1;
}

/* Inserts name -> i unless present; returns the existing index or -1. */
static int64_t name_index_insert(struct name_index *ix, const char *name, uint64_t i,
                                 const char *(*name_of)(const void *, uint64_t), const void *ctx) {
    for (uint64_t s = name_hash(name) & ix->mask;; s = (s + 1) & ix->mask) {
        if (!ix->slots[s]) {
            ix->slots[s] = i + 1;
            return -1;
        }
        if (!strcmp(name_of(ctx, ix->slots[s] - 1), name))
            return (int64_t)(ix->slots[s] - 1);
    }
}

static int64_t name_index_find(const struct name_index *ix, const char *name,
                               const char *(*name_of)(const void *, uint64_t), const void *ctx) {
    if (!ix->slots)
        return -1;
    for (uint64_t s = name_hash(name) & ix->mask; ix->slots[s]; s = (s + 1) & ix->mask)
        if (!strcmp(name_of(ctx, ix->slots[s] - 1), name))
            return (int64_t)(ix->slots[s] - 1);
    return -1;
}

static const char *kv_name_of(const void *ctx, uint64_t i) { return ((const gguf_file *)ctx)->kv[i].key; }
static const char *tensor_name_of(const void *ctx, uint64_t i) { return ((const gguf_file *)ctx)->tensors[i].name; }

/* ---- cursor ---- */

static uint64_t cur_left(const cursor *c) { return c->size - c->pos; }

static int cur_read(cursor *c, void *dst, uint64_t n, const char *what) {
    if (n > cur_left(c)) {
        set_err(c->err, c->errlen, "%s: past end of file (offset %llu)", what, (unsigned long long)c->pos);
        return -1;
    }
    memcpy(dst, c->base + c->pos, n);
    c->pos += n;
    return 0;
}

static int cur_u32(cursor *c, uint32_t *v, const char *what) { return cur_read(c, v, 4, what); }
static int cur_u64(cursor *c, uint64_t *v, const char *what) { return cur_read(c, v, 8, what); }

static int cur_str(cursor *c, gguf_str *s, const char *what) {
    uint64_t len;
    if (cur_u64(c, &len, what))
        return -1;
    if (len > cur_left(c)) {
        set_err(c->err, c->errlen, "%s: string length %llu past end of file", what, (unsigned long long)len);
        return -1;
    }
    s->ptr = (const char *)c->base + c->pos;
    s->len = len;
    c->pos += len;
    return 0;
}

/* A key or tensor name as an owned C string; NUL bytes inside are refused
 * because lookups go by C string. */
static char *dup_name(cursor *c, const gguf_str *s, const char *what) {
    if (s->len == 0 || memchr(s->ptr, 0, s->len)) {
        set_err(c->err, c->errlen, "%s: name is empty or contains a NUL byte", what);
        return NULL;
    }
    char *out = malloc(s->len + 1);
    if (!out) {
        set_err(c->err, c->errlen, "%s: out of memory", what);
        return NULL;
    }
    memcpy(out, s->ptr, s->len);
    out[s->len] = 0;
    return out;
}

/* ---- metadata ---- */

static int parse_value(cursor *c, struct gguf_kv *kv) {
    char what[320];
    snprintf(what, sizeof what, "key %s", kv->key);
    uint32_t type;
    if (cur_u32(c, &type, what))
        return -1;
    kv->type = type;
    if (type == GGUF_TYPE_STRING)
        return cur_str(c, &kv->str, what);
    if (type != GGUF_TYPE_ARRAY) {
        size_t sz = gguf_value_type_size(type);
        if (!sz) {
            set_err(c->err, c->errlen, "%s: unknown value type %u", what, type);
            return -1;
        }
        if (sz > cur_left(c)) {
            set_err(c->err, c->errlen, "%s: value past end of file", what);
            return -1;
        }
        kv->scalar = c->base + c->pos;
        c->pos += sz;
        if (type == GGUF_TYPE_BOOL && *kv->scalar > 1) {
            set_err(c->err, c->errlen, "%s: bool value %u is not 0 or 1", what, *kv->scalar);
            return -1;
        }
        return 0;
    }
    uint32_t elem;
    uint64_t count;
    if (cur_u32(c, &elem, what) || cur_u64(c, &count, what))
        return -1;
    kv->arr.elem_type = elem;
    kv->arr.count = count;
    if (elem == GGUF_TYPE_ARRAY) {
        set_err(c->err, c->errlen, "%s: nested arrays are not supported", what);
        return -1;
    }
    if (elem == GGUF_TYPE_STRING) {
        /* every string costs at least its 8-byte length: bound count before allocating */
        if (count > cur_left(c) / 8) {
            set_err(c->err, c->errlen, "%s: array of %llu strings past end of file", what, (unsigned long long)count);
            return -1;
        }
        kv->arr_strs = malloc((count ? count : 1) * sizeof *kv->arr_strs);
        if (!kv->arr_strs) {
            set_err(c->err, c->errlen, "%s: out of memory", what);
            return -1;
        }
        kv->arr.data = c->base + c->pos;
        for (uint64_t i = 0; i < count; i++) {
            if (cur_str(c, &kv->arr_strs[i], what))
                return -1;
        }
        kv->arr.strs = kv->arr_strs;
        return 0;
    }
    size_t sz = gguf_value_type_size(elem);
    if (!sz) {
        set_err(c->err, c->errlen, "%s: unknown array element type %u", what, elem);
        return -1;
    }
    if (count > cur_left(c) / sz) {
        set_err(c->err, c->errlen, "%s: array of %llu elements past end of file", what, (unsigned long long)count);
        return -1;
    }
    kv->arr.data = c->base + c->pos;
    c->pos += count * sz;
    if (elem == GGUF_TYPE_BOOL) {
        for (uint64_t i = 0; i < count; i++)
            if (kv->arr.data[i] > 1) {
                set_err(c->err, c->errlen, "%s: bool element %llu is not 0 or 1", what, (unsigned long long)i);
                return -1;
            }
    }
    return 0;
}

static int parse_metadata(gguf_file *f, cursor *c) {
    /* smallest possible entry: 8-byte key length, 1-byte key, 4-byte type, 1-byte value */
    if (f->n_kv > cur_left(c) / 14) {
        set_err(c->err, c->errlen, "metadata count %llu cannot fit in the file", (unsigned long long)f->n_kv);
        return -1;
    }
    f->kv = calloc(f->n_kv ? f->n_kv : 1, sizeof *f->kv);
    if (!f->kv || name_index_init(&f->kv_index, f->n_kv)) {
        set_err(c->err, c->errlen, "out of memory for %llu metadata entries", (unsigned long long)f->n_kv);
        return -1;
    }
    for (uint64_t i = 0; i < f->n_kv; i++) {
        char what[64];
        snprintf(what, sizeof what, "metadata entry %llu", (unsigned long long)i);
        gguf_str key;
        if (cur_str(c, &key, what) || !(f->kv[i].key = dup_name(c, &key, what)))
            return -1;
        if (name_index_insert(&f->kv_index, f->kv[i].key, i, kv_name_of, f) >= 0) {
            set_err(c->err, c->errlen, "key %s: duplicate key", f->kv[i].key);
            return -1;
        }
        if (parse_value(c, &f->kv[i]))
            return -1;
    }
    return 0;
}

/* general.alignment, when present, must be a u32 power of two. We also want
 * at least 8 so that every block's scale fields are naturally aligned. */
static int read_alignment(gguf_file *f, char *err, size_t errlen) {
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    int64_t i = gguf_find_key(f, "general.alignment");
    if (i < 0)
        return 0;
    if (f->kv[i].type != GGUF_TYPE_UINT32) {
        set_err(err, errlen, "key general.alignment: type %s, expected u32", gguf_value_type_name(f->kv[i].type));
        return -1;
    }
    uint32_t a;
    memcpy(&a, f->kv[i].scalar, 4);
    if (a < 8 || (a & (a - 1))) {
        set_err(err, errlen, "key general.alignment: %u is not a power of two >= 8", a);
        return -1;
    }
    f->alignment = a;
    return 0;
}

/* ---- tensors ---- */

static int parse_tensor_info(gguf_file *f, cursor *c, uint64_t i) {
    gguf_tensor *t = &f->tensors[i];
    char what[64];
    snprintf(what, sizeof what, "tensor %llu", (unsigned long long)i);
    gguf_str name;
    if (cur_str(c, &name, what) || !(t->name = dup_name(c, &name, what)))
        return -1;
    if (name_index_insert(&f->tensor_index, t->name, i, tensor_name_of, f) >= 0) {
        set_err(c->err, c->errlen, "tensor %s: duplicate tensor name", t->name);
        return -1;
    }
    char tw[320];
    snprintf(tw, sizeof tw, "tensor %s", t->name);
    if (cur_u32(c, &t->n_dims, tw))
        return -1;
    if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS) {
        set_err(c->err, c->errlen, "%s: %u dimensions (1 to %d allowed)", tw, t->n_dims, GGUF_MAX_DIMS);
        return -1;
    }
    t->n_elements = 1;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
        t->ne[d] = 1;
        if (d < t->n_dims && cur_u64(c, &t->ne[d], tw))
            return -1;
        if (t->ne[d] == 0 || t->ne[d] > (uint64_t)INT64_MAX / t->n_elements) {
            set_err(c->err, c->errlen, "%s: dimension %u is %llu (zero or overflowing)", tw, d,
                    (unsigned long long)t->ne[d]);
            return -1;
        }
        t->n_elements *= t->ne[d];
    }
    if (cur_u32(c, &t->type, tw) || cur_u64(c, &t->offset, tw))
        return -1;
    uint32_t block_elems, block_bytes;
    if (!tensor_type_geometry(t->type, &block_elems, &block_bytes)) {
        set_err(c->err, c->errlen, "%s: unknown tensor type %u", tw, t->type);
        return -1;
    }
    uint64_t row_bytes;
    if (!tensor_row_bytes(t->type, t->ne[0], &row_bytes)) {
        set_err(c->err, c->errlen, "%s: row length %llu is not a multiple of the %s block size %u", tw,
                (unsigned long long)t->ne[0], tensor_type_name(t->type), block_elems);
        return -1;
    }
    uint64_t rows = t->n_elements / t->ne[0];
    if (row_bytes && rows > UINT64_MAX / row_bytes) {
        set_err(c->err, c->errlen, "%s: byte size overflows", tw);
        return -1;
    }
    t->n_bytes = row_bytes * rows;
    return 0;
}

static int cmp_offset(const void *a, const void *b) {
    const gguf_tensor *x = *(const gguf_tensor *const *)a, *y = *(const gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Offsets are aligned, inside the data section, and no two tensors overlap. */
static int place_tensors(gguf_file *f, char *err, size_t errlen) {
    uint64_t data_size = f->data_offset <= f->size ? f->size - f->data_offset : 0;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        if (t->offset % f->alignment) {
            set_err(err, errlen, "tensor %s: offset %llu is not a multiple of the alignment %u", t->name,
                    (unsigned long long)t->offset, f->alignment);
            return -1;
        }
        if (t->offset > data_size || t->n_bytes > data_size - t->offset) {
            set_err(err, errlen, "tensor %s: offset %llu + %llu bytes past end of file", t->name,
                    (unsigned long long)t->offset, (unsigned long long)t->n_bytes);
            return -1;
        }
        t->data = f->base + f->data_offset + t->offset;
    }
    if (f->n_tensors < 2)
        return 0;
    gguf_tensor **order = malloc(f->n_tensors * sizeof *order);
    if (!order) {
        set_err(err, errlen, "out of memory");
        return -1;
    }
    for (uint64_t i = 0; i < f->n_tensors; i++)
        order[i] = &f->tensors[i];
    qsort(order, f->n_tensors, sizeof *order, cmp_offset);
    int rc = 0;
    for (uint64_t i = 1; i < f->n_tensors && !rc; i++) {
        if (order[i - 1]->offset + order[i - 1]->n_bytes > order[i]->offset) {
            set_err(err, errlen, "tensor %s: overlaps tensor %s", order[i]->name, order[i - 1]->name);
            rc = -1;
        }
    }
    free(order);
    return rc;
}

static int parse(gguf_file *f, char *err, size_t errlen) {
    cursor c = {f->base, f->size, 0, err, errlen};
    char magic[4];
    if (cur_read(&c, magic, 4, "header"))
        return -1;
    if (memcmp(magic, "GGUF", 4)) {
        set_err(err, errlen, "not a GGUF file (bad magic)");
        return -1;
    }
    if (cur_u32(&c, &f->version, "header"))
        return -1;
    if (f->version == 1) {
        set_err(err, errlen, "GGUF version 1 is not supported (2 and 3 are)");
        return -1;
    }
    if (f->version != 2 && f->version != 3) {
        set_err(err, errlen, "unsupported GGUF version %u%s", f->version,
                (f->version & 0xffff) == 0 ? " (a big-endian file?)" : "");
        return -1;
    }
    if (cur_u64(&c, &f->n_tensors, "header") || cur_u64(&c, &f->n_kv, "header"))
        return -1;
    if (parse_metadata(f, &c) || read_alignment(f, err, errlen))
        return -1;
    /* smallest tensor info: name length + 1-byte name + n_dims + one dim + type + offset */
    if (f->n_tensors > cur_left(&c) / 33) {
        set_err(err, errlen, "tensor count %llu cannot fit in the file", (unsigned long long)f->n_tensors);
        return -1;
    }
    f->tensors = calloc(f->n_tensors ? f->n_tensors : 1, sizeof *f->tensors);
    if (!f->tensors || name_index_init(&f->tensor_index, f->n_tensors)) {
        set_err(err, errlen, "out of memory for %llu tensors", (unsigned long long)f->n_tensors);
        return -1;
    }
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (parse_tensor_info(f, &c, i))
            return -1;
    f->data_offset = (c.pos + f->alignment - 1) / f->alignment * f->alignment;
    return place_tensors(f, err, errlen);
}

/* ---- open / close ---- */

static int open_common(gguf_file *f, gguf_file **out, const char *label, char *err, size_t errlen) {
    char why[512] = "";
    if (parse(f, why, sizeof why)) {
        set_err(err, errlen, "gguf: %s: %s", label, why);
        gguf_close(f);
        return -1;
    }
    *out = f;
    return 0;
}

int gguf_open_memory(const void *data, size_t size, gguf_file **out, char *err, size_t errlen) {
    *out = NULL;
    gguf_file *f = calloc(1, sizeof *f);
    if (!f) {
        set_err(err, errlen, "gguf: out of memory");
        return -1;
    }
    f->base = data;
    f->size = size;
    return open_common(f, out, "<memory>", err, errlen);
}

int gguf_open(const char *path, gguf_file **out, char *err, size_t errlen) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        set_err(err, errlen, "gguf: %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode) || st.st_size == 0) {
        set_err(err, errlen, "gguf: %s: %s", path, st.st_size == 0 ? "empty file" : "not a regular file");
        close(fd);
        return -1;
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        set_err(err, errlen, "gguf: %s: mmap: %s", path, strerror(errno));
        return -1;
    }
    gguf_file *f = calloc(1, sizeof *f);
    if (!f) {
        munmap(map, (size_t)st.st_size);
        set_err(err, errlen, "gguf: %s: out of memory", path);
        return -1;
    }
    f->base = map;
    f->size = (uint64_t)st.st_size;
    f->mapped = true;
    return open_common(f, out, path, err, errlen);
}

void gguf_close(gguf_file *f) {
    if (!f)
        return;
    if (f->kv)
        for (uint64_t i = 0; i < f->n_kv; i++) {
            free(f->kv[i].key);
            free(f->kv[i].arr_strs);
        }
    if (f->tensors)
        for (uint64_t i = 0; i < f->n_tensors; i++)
            free((char *)f->tensors[i].name);
    free(f->kv);
    free(f->tensors);
    free(f->kv_index.slots);
    free(f->tensor_index.slots);
    if (f->mapped)
        munmap((void *)f->base, f->size);
    free(f);
}

/* ---- accessors ---- */

uint32_t gguf_version(const gguf_file *f) { return f->version; }
uint32_t gguf_alignment(const gguf_file *f) { return f->alignment; }
uint64_t gguf_file_size(const gguf_file *f) { return f->size; }
uint64_t gguf_data_offset(const gguf_file *f) { return f->data_offset; }
uint64_t gguf_kv_count(const gguf_file *f) { return f->n_kv; }
const char *gguf_kv_key(const gguf_file *f, uint64_t i) { return i < f->n_kv ? f->kv[i].key : NULL; }
enum gguf_value_type gguf_kv_type(const gguf_file *f, uint64_t i) { return f->kv[i].type; }
uint64_t gguf_tensor_count(const gguf_file *f) { return f->n_tensors; }

int64_t gguf_find_key(const gguf_file *f, const char *key) { return name_index_find(&f->kv_index, key, kv_name_of, f); }

const gguf_tensor *gguf_tensor_at(const gguf_file *f, uint64_t i) { return i < f->n_tensors ? &f->tensors[i] : NULL; }

const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name) {
    int64_t i = name_index_find(&f->tensor_index, name, tensor_name_of, f);
    return i < 0 ? NULL : &f->tensors[i];
}

static bool is_signed_int(enum gguf_value_type t) {
    return t == GGUF_TYPE_INT8 || t == GGUF_TYPE_INT16 || t == GGUF_TYPE_INT32 || t == GGUF_TYPE_INT64;
}

static bool is_unsigned_int(enum gguf_value_type t) {
    return t == GGUF_TYPE_UINT8 || t == GGUF_TYPE_UINT16 || t == GGUF_TYPE_UINT32 || t == GGUF_TYPE_UINT64 ||
           t == GGUF_TYPE_BOOL;
}

/* Reads one packed little-endian scalar of type t at p, widened. */
static int64_t load_signed(enum gguf_value_type t, const uint8_t *p) {
    switch (t) {
    case GGUF_TYPE_INT8: {
        int8_t v;
        memcpy(&v, p, 1);
        return v;
    }
    case GGUF_TYPE_INT16: {
        int16_t v;
        memcpy(&v, p, 2);
        return v;
    }
    case GGUF_TYPE_INT32: {
        int32_t v;
        memcpy(&v, p, 4);
        return v;
    }
    default: {
        int64_t v;
        memcpy(&v, p, 8);
        return v;
    }
    }
}

static uint64_t load_unsigned(enum gguf_value_type t, const uint8_t *p) {
    switch (t) {
    case GGUF_TYPE_UINT8:
    case GGUF_TYPE_BOOL: return p[0];
    case GGUF_TYPE_UINT16: {
        uint16_t v;
        memcpy(&v, p, 2);
        return v;
    }
    case GGUF_TYPE_UINT32: {
        uint32_t v;
        memcpy(&v, p, 4);
        return v;
    }
    default: {
        uint64_t v;
        memcpy(&v, p, 8);
        return v;
    }
    }
}

static double load_float(enum gguf_value_type t, const uint8_t *p) {
    if (t == GGUF_TYPE_FLOAT32) {
        float v;
        memcpy(&v, p, 4);
        return v;
    }
    if (t == GGUF_TYPE_FLOAT64) {
        double v;
        memcpy(&v, p, 8);
        return v;
    }
    if (is_signed_int(t))
        return (double)load_signed(t, p);
    return (double)load_unsigned(t, p);
}

int gguf_kv_scalar_u64(const gguf_file *f, uint64_t i, uint64_t *out) {
    const struct gguf_kv *kv = &f->kv[i];
    if (is_unsigned_int(kv->type)) {
        *out = load_unsigned(kv->type, kv->scalar);
        return 0;
    }
    if (is_signed_int(kv->type)) {
        int64_t v = load_signed(kv->type, kv->scalar);
        if (v < 0)
            return -1;
        *out = (uint64_t)v;
        return 0;
    }
    return -1;
}

int gguf_kv_scalar_i64(const gguf_file *f, uint64_t i, int64_t *out) {
    const struct gguf_kv *kv = &f->kv[i];
    if (is_signed_int(kv->type)) {
        *out = load_signed(kv->type, kv->scalar);
        return 0;
    }
    if (is_unsigned_int(kv->type)) {
        uint64_t v = load_unsigned(kv->type, kv->scalar);
        if (v > INT64_MAX)
            return -1;
        *out = (int64_t)v;
        return 0;
    }
    return -1;
}

int gguf_kv_scalar_f64(const gguf_file *f, uint64_t i, double *out) {
    const struct gguf_kv *kv = &f->kv[i];
    if (kv->type != GGUF_TYPE_FLOAT32 && kv->type != GGUF_TYPE_FLOAT64)
        return -1;
    *out = load_float(kv->type, kv->scalar);
    return 0;
}

int gguf_kv_str(const gguf_file *f, uint64_t i, gguf_str *out) {
    if (f->kv[i].type != GGUF_TYPE_STRING)
        return -1;
    *out = f->kv[i].str;
    return 0;
}

int gguf_kv_array(const gguf_file *f, uint64_t i, gguf_array *out) {
    if (f->kv[i].type != GGUF_TYPE_ARRAY)
        return -1;
    *out = f->kv[i].arr;
    return 0;
}

/* Looks a key up for a typed getter; reports absence in err. */
static int64_t getter_key(const gguf_file *f, const char *key, char *err, size_t errlen) {
    int64_t i = gguf_find_key(f, key);
    if (i < 0)
        set_err(err, errlen, "key %s: missing", key);
    return i;
}

static int type_mismatch(const gguf_file *f, int64_t i, const char *want, char *err, size_t errlen) {
    set_err(err, errlen, "key %s: type %s (value out of range or wrong type), expected %s", f->kv[i].key,
            gguf_value_type_name(f->kv[i].type), want);
    return -1;
}

int gguf_get_u64(const gguf_file *f, const char *key, uint64_t *out, char *err, size_t errlen) {
    int64_t i = getter_key(f, key, err, errlen);
    if (i < 0)
        return -1;
    if (f->kv[i].type == GGUF_TYPE_BOOL || gguf_kv_scalar_u64(f, (uint64_t)i, out))
        return type_mismatch(f, i, "an unsigned integer", err, errlen);
    return 0;
}

int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out, char *err, size_t errlen) {
    uint64_t v;
    if (gguf_get_u64(f, key, &v, err, errlen))
        return -1;
    if (v > UINT32_MAX)
        return type_mismatch(f, gguf_find_key(f, key), "a 32-bit unsigned integer", err, errlen);
    *out = (uint32_t)v;
    return 0;
}

int gguf_get_i64(const gguf_file *f, const char *key, int64_t *out, char *err, size_t errlen) {
    int64_t i = getter_key(f, key, err, errlen);
    if (i < 0)
        return -1;
    if (f->kv[i].type == GGUF_TYPE_BOOL || gguf_kv_scalar_i64(f, (uint64_t)i, out))
        return type_mismatch(f, i, "an integer", err, errlen);
    return 0;
}

int gguf_get_f64(const gguf_file *f, const char *key, double *out, char *err, size_t errlen) {
    int64_t i = getter_key(f, key, err, errlen);
    if (i < 0)
        return -1;
    if (gguf_kv_scalar_f64(f, (uint64_t)i, out))
        return type_mismatch(f, i, "a float", err, errlen);
    return 0;
}

int gguf_get_f32(const gguf_file *f, const char *key, float *out, char *err, size_t errlen) {
    double v;
    if (gguf_get_f64(f, key, &v, err, errlen))
        return -1;
    *out = (float)v;
    return 0;
}

int gguf_get_bool(const gguf_file *f, const char *key, bool *out, char *err, size_t errlen) {
    int64_t i = getter_key(f, key, err, errlen);
    if (i < 0)
        return -1;
    if (f->kv[i].type != GGUF_TYPE_BOOL)
        return type_mismatch(f, i, "bool", err, errlen);
    *out = f->kv[i].scalar[0] != 0;
    return 0;
}

int gguf_get_str(const gguf_file *f, const char *key, gguf_str *out, char *err, size_t errlen) {
    int64_t i = getter_key(f, key, err, errlen);
    if (i < 0)
        return -1;
    if (gguf_kv_str(f, (uint64_t)i, out))
        return type_mismatch(f, i, "str", err, errlen);
    return 0;
}

int gguf_get_array(const gguf_file *f, const char *key, gguf_array *out, char *err, size_t errlen) {
    int64_t i = getter_key(f, key, err, errlen);
    if (i < 0)
        return -1;
    if (gguf_kv_array(f, (uint64_t)i, out))
        return type_mismatch(f, i, "arr", err, errlen);
    return 0;
}

/* Integer views of an element; float elements read as 0 (no caller needs
 * a float-to-integer conversion, and an out-of-range one is undefined). */
int64_t gguf_array_get_i64(const gguf_array *a, uint64_t i) {
    const uint8_t *p = a->data + i * gguf_value_type_size(a->elem_type);
    if (is_signed_int(a->elem_type))
        return load_signed(a->elem_type, p);
    if (is_unsigned_int(a->elem_type))
        return (int64_t)load_unsigned(a->elem_type, p);
    return 0;
}

uint64_t gguf_array_get_u64(const gguf_array *a, uint64_t i) {
    const uint8_t *p = a->data + i * gguf_value_type_size(a->elem_type);
    if (is_signed_int(a->elem_type))
        return (uint64_t)load_signed(a->elem_type, p);
    if (is_unsigned_int(a->elem_type))
        return load_unsigned(a->elem_type, p);
    return 0;
}

double gguf_array_get_f64(const gguf_array *a, uint64_t i) {
    return load_float(a->elem_type, a->data + i * gguf_value_type_size(a->elem_type));
}
