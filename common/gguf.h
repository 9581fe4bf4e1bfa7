/* GGUF reader and writer.
 *
 * Reader: gguf_open maps a file read-only and validates all of it up front:
 * every count, length, offset, shape and type is checked against the file's
 * size, so after a successful open every accessor is a plain lookup and no
 * pointer it returns can reach past the mapping. A malformed file yields one
 * error message naming the key or tensor at fault. GGUF v2 and v3
 * (little-endian) are read; v1 is refused.
 *
 * Strings in GGUF are length-prefixed, not NUL-terminated: values come back
 * as gguf_str (pointer + length into the mapping). Keys and tensor names are
 * copied and NUL-terminated for convenience.
 *
 * Writer: collect metadata and tensors, then gguf_writer_write lays them out
 * with general.alignment (default 32) exactly as llama.cpp's writer does. */
#ifndef INFERNO_GGUF_H
#define INFERNO_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tensor_types.h"

#define GGUF_MAX_DIMS          4
#define GGUF_DEFAULT_ALIGNMENT 32

enum gguf_value_type {
    GGUF_TYPE_UINT8 = 0,
    GGUF_TYPE_INT8 = 1,
    GGUF_TYPE_UINT16 = 2,
    GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4,
    GGUF_TYPE_INT32 = 5,
    GGUF_TYPE_FLOAT32 = 6,
    GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8,
    GGUF_TYPE_ARRAY = 9,
    GGUF_TYPE_UINT64 = 10,
    GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12,
};

typedef struct gguf_file gguf_file;

typedef struct {
    const char *ptr; /* not NUL-terminated */
    uint64_t len;
} gguf_str;

/* An array value: count elements of elem_type. Numeric elements lie packed
 * little-endian at data (read them with gguf_array_get_*); strings are
 * indexed in strs. */
typedef struct {
    enum gguf_value_type elem_type;
    uint64_t count;
    const uint8_t *data;
    const gguf_str *strs; /* elem_type == GGUF_TYPE_STRING only */
} gguf_array;

typedef struct {
    const char *name;
    uint32_t type;              /* enum tensor_type */
    uint32_t n_dims;            /* 1..GGUF_MAX_DIMS */
    uint64_t ne[GGUF_MAX_DIMS]; /* ne[0] is the row length; unused dims are 1 */
    uint64_t n_elements;
    uint64_t offset; /* relative to the start of the data section */
    uint64_t n_bytes;
    const void *data; /* inside the mapping */
} gguf_tensor;

/* Opens and validates. On failure returns -1, *out = NULL, and err holds
 * "gguf: PATH: reason". */
int gguf_open(const char *path, gguf_file **out, char *err, size_t errlen);
/* The same over a caller-owned buffer (tests, fuzzing); the buffer must
 * outlive the handle. */
int gguf_open_memory(const void *data, size_t size, gguf_file **out, char *err, size_t errlen);
void gguf_close(gguf_file *f);

uint32_t gguf_version(const gguf_file *f);
uint32_t gguf_alignment(const gguf_file *f);
uint64_t gguf_file_size(const gguf_file *f);
uint64_t gguf_data_offset(const gguf_file *f); /* absolute file offset of the data section */

/* Metadata. Keys are indexed 0..gguf_kv_count-1 in file order. */
uint64_t gguf_kv_count(const gguf_file *f);
int64_t gguf_find_key(const gguf_file *f, const char *key); /* -1 if absent */
const char *gguf_kv_key(const gguf_file *f, uint64_t i);
enum gguf_value_type gguf_kv_type(const gguf_file *f, uint64_t i);

/* Typed getters by key. Each returns 0, or -1 (with a message in err when
 * err is not NULL) if the key is absent or its type does not fit: integer
 * getters accept any integer type whose value fits, gguf_get_f32/f64 accept
 * FLOAT32 and FLOAT64. */
int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out, char *err, size_t errlen);
int gguf_get_u64(const gguf_file *f, const char *key, uint64_t *out, char *err, size_t errlen);
int gguf_get_i64(const gguf_file *f, const char *key, int64_t *out, char *err, size_t errlen);
int gguf_get_f32(const gguf_file *f, const char *key, float *out, char *err, size_t errlen);
int gguf_get_f64(const gguf_file *f, const char *key, double *out, char *err, size_t errlen);
int gguf_get_bool(const gguf_file *f, const char *key, bool *out, char *err, size_t errlen);
int gguf_get_str(const gguf_file *f, const char *key, gguf_str *out, char *err, size_t errlen);
int gguf_get_array(const gguf_file *f, const char *key, gguf_array *out, char *err, size_t errlen);

/* Value of key i, by index (for tools that walk everything). Scalars of any
 * integer type widen to int64/uint64 as signed-ness says. */
int gguf_kv_scalar_u64(const gguf_file *f, uint64_t i, uint64_t *out);
int gguf_kv_scalar_i64(const gguf_file *f, uint64_t i, int64_t *out);
int gguf_kv_scalar_f64(const gguf_file *f, uint64_t i, double *out);
int gguf_kv_str(const gguf_file *f, uint64_t i, gguf_str *out);
int gguf_kv_array(const gguf_file *f, uint64_t i, gguf_array *out);

/* Array element access; index must be < count, types must be numeric. */
int64_t gguf_array_get_i64(const gguf_array *a, uint64_t i);
uint64_t gguf_array_get_u64(const gguf_array *a, uint64_t i);
double gguf_array_get_f64(const gguf_array *a, uint64_t i);

/* Tensors, indexed in file order. */
uint64_t gguf_tensor_count(const gguf_file *f);
const gguf_tensor *gguf_tensor_at(const gguf_file *f, uint64_t i);
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name); /* NULL if absent */

/* Size in bytes of one element of a scalar metadata type, 0 for STRING/ARRAY. */
size_t gguf_value_type_size(enum gguf_value_type t);
const char *gguf_value_type_name(enum gguf_value_type t);

/* ---- writer ---- */

typedef struct gguf_writer gguf_writer;

gguf_writer *gguf_writer_new(void);
void gguf_writer_free(gguf_writer *w);

/* Each add returns 0, or -1 on a duplicate key/name or a bad argument (the
 * reason in gguf_writer_error). Setting "general.alignment" (u32, a power of
 * two) changes the layout. */
int gguf_writer_add_u32(gguf_writer *w, const char *key, uint32_t v);
int gguf_writer_add_i32(gguf_writer *w, const char *key, int32_t v);
int gguf_writer_add_u64(gguf_writer *w, const char *key, uint64_t v);
int gguf_writer_add_f32(gguf_writer *w, const char *key, float v);
int gguf_writer_add_bool(gguf_writer *w, const char *key, bool v);
int gguf_writer_add_str(gguf_writer *w, const char *key, const char *v);
/* Any scalar type, value given as its little-endian bytes. */
int gguf_writer_add_scalar(gguf_writer *w, const char *key, enum gguf_value_type t, const void *v);
/* Numeric array: count elements of elem_type packed at data. */
int gguf_writer_add_array(gguf_writer *w, const char *key, enum gguf_value_type elem_type, const void *data,
                          uint64_t count);
/* String array: strs[i] of lens[i] bytes (lens NULL: NUL-terminated). */
int gguf_writer_add_str_array(gguf_writer *w, const char *key, const char *const *strs, const uint64_t *lens,
                              uint64_t count);
/* Tensor: data (n_bytes, must equal the size implied by type and shape) is
 * referenced, not copied: keep it alive until gguf_writer_write returns. */
int gguf_writer_add_tensor(gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims, const uint64_t *ne,
                           const void *data, uint64_t n_bytes);
/* version: 2 or 3 (llama.cpp writes 3). */
int gguf_writer_set_version(gguf_writer *w, uint32_t version);
int gguf_writer_write(gguf_writer *w, const char *path);
const char *gguf_writer_error(const gguf_writer *w);

#endif
