/* libFuzzer target for the GGUF reader: open the input as a file image and,
 * when it is accepted, touch everything a caller could: every key and value,
 * every array element, and the first rows of every tensor. Any crash, leak
 * or sanitizer report is a bug. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    gguf_file *f;
    char err[512];
    if (gguf_open_memory(data, size, &f, err, sizeof err))
        return 0;
    volatile double sink = 0;
    for (uint64_t i = 0; i < gguf_kv_count(f); i++) {
        uint64_t u;
        int64_t s;
        double d;
        gguf_str str;
        gguf_array a;
        if (!gguf_kv_scalar_u64(f, i, &u))
            sink += (double)u;
        if (!gguf_kv_scalar_i64(f, i, &s))
            sink += (double)s;
        if (!gguf_kv_scalar_f64(f, i, &d))
            sink += d;
        if (!gguf_kv_str(f, i, &str) && str.len)
            sink += str.ptr[str.len - 1];
        if (!gguf_kv_array(f, i, &a)) {
            for (uint64_t k = 0; k < a.count; k++) {
                if (a.elem_type == GGUF_TYPE_STRING)
                    sink += a.strs[k].len ? a.strs[k].ptr[a.strs[k].len - 1] : 0;
                else
                    sink += gguf_array_get_f64(&a, k) + (double)gguf_array_get_i64(&a, k);
            }
        }
        sink += gguf_find_key(f, gguf_kv_key(f, i));
    }
    for (uint64_t i = 0; i < gguf_tensor_count(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        if (gguf_find_tensor(f, t->name) != t)
            abort();
        if (!tensor_type_can_dequantize(t->type))
            continue;
        uint64_t n = t->ne[0] <= 4096 ? t->ne[0] : 0; /* one row, bounded */
        if (!n)
            continue;
        float *row = malloc(n * sizeof *row);
        tensor_dequantize_row(t->type, t->data, row, n);
        sink += row[n - 1];
        free(row);
    }
    (void)sink;
    gguf_close(f);
    return 0;
}
