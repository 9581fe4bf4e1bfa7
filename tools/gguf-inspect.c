/* gguf-inspect: print a GGUF file's metadata and tensor table.
 *
 *   gguf-inspect FILE [--json] [--full]
 *   gguf-inspect FILE --dequant TENSOR --out F32FILE
 *
 * Long arrays are summarised (type and length) unless --full. --dequant
 * writes the tensor's values as little-endian float32, via the reference
 * dequantizer (tests compare it with the gguf Python package). */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "utf8.h"

#define PROG          "gguf-inspect"
#define ARRAY_PREVIEW 8

static void usage(FILE *out) {
    fprintf(out,
            "usage: " PROG " FILE [--json] [--full]\n"
            "       " PROG " FILE --dequant TENSOR --out F32FILE\n"
            "  --json     machine-readable output\n"
            "  --full     print arrays in full (default: first %d elements, with type and length)\n"
            "  --dequant  write TENSOR dequantized to float32 (little-endian) into --out\n"
            "  --version  print the version\n",
            ARRAY_PREVIEW);
}

static json_t *json_str(gguf_str s) {
    char *clean = utf8_sanitize(s.ptr, s.len);
    json_t *j = clean ? json_string(clean) : json_null();
    free(clean);
    return j;
}

static json_t *json_num(double v) { return isfinite(v) ? json_real(v) : json_null(); }

static json_t *array_element_json(const gguf_array *a, uint64_t i) {
    switch (a->elem_type) {
    case GGUF_TYPE_STRING: return json_str(a->strs[i]);
    case GGUF_TYPE_FLOAT32:
    case GGUF_TYPE_FLOAT64: return json_num(gguf_array_get_f64(a, i));
    case GGUF_TYPE_BOOL: return json_boolean(gguf_array_get_u64(a, i));
    case GGUF_TYPE_UINT64: return json_integer((json_int_t)gguf_array_get_u64(a, i));
    default: return json_integer(gguf_array_get_i64(a, i));
    }
}

/* The value of key i: scalars as themselves, arrays as a list, or (long,
 * not --full) as {"type": "arr", "elem_type", "count", "head": [...]}. */
static json_t *value_json(const gguf_file *f, uint64_t i, int full) {
    enum gguf_value_type t = gguf_kv_type(f, i);
    uint64_t u;
    int64_t s;
    double d;
    gguf_str str;
    gguf_array a;
    switch (t) {
    case GGUF_TYPE_BOOL: gguf_kv_scalar_u64(f, i, &u); return json_boolean(u);
    case GGUF_TYPE_FLOAT32:
    case GGUF_TYPE_FLOAT64: gguf_kv_scalar_f64(f, i, &d); return json_num(d);
    case GGUF_TYPE_STRING: gguf_kv_str(f, i, &str); return json_str(str);
    case GGUF_TYPE_UINT64: gguf_kv_scalar_u64(f, i, &u); return json_integer((json_int_t)u);
    case GGUF_TYPE_ARRAY: {
        gguf_kv_array(f, i, &a);
        uint64_t n = full || a.count <= ARRAY_PREVIEW ? a.count : ARRAY_PREVIEW;
        json_t *list = json_array();
        for (uint64_t k = 0; k < n; k++)
            json_array_append_new(list, array_element_json(&a, k));
        if (n == a.count)
            return list;
        return json_pack("{s:s, s:s, s:I, s:o}", "type", "arr", "elem_type", gguf_value_type_name(a.elem_type), "count",
                         (json_int_t)a.count, "head", list);
    }
    default: gguf_kv_scalar_i64(f, i, &s); return json_integer(s);
    }
}

static json_t *shape_json(const gguf_tensor *t) {
    json_t *shape = json_array();
    for (uint32_t d = 0; d < t->n_dims; d++)
        json_array_append_new(shape, json_integer((json_int_t)t->ne[d]));
    return shape;
}

static int print_json(const gguf_file *f, const char *path, int full) {
    json_t *meta = json_object(), *types = json_object(), *tensors = json_array();
    for (uint64_t i = 0; i < gguf_kv_count(f); i++) {
        json_object_set_new(meta, gguf_kv_key(f, i), value_json(f, i, full));
        const char *tn = gguf_value_type_name(gguf_kv_type(f, i));
        if (gguf_kv_type(f, i) == GGUF_TYPE_ARRAY) {
            gguf_array a;
            gguf_kv_array(f, i, &a);
            char buf[32];
            snprintf(buf, sizeof buf, "arr[%s]", gguf_value_type_name(a.elem_type));
            json_object_set_new(types, gguf_kv_key(f, i), json_string(buf));
        } else {
            json_object_set_new(types, gguf_kv_key(f, i), json_string(tn));
        }
    }
    for (uint64_t i = 0; i < gguf_tensor_count(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        json_array_append_new(
            tensors, json_pack("{s:s, s:s, s:o, s:I, s:I, s:I}", "name", t->name, "type", tensor_type_name(t->type),
                               "shape", shape_json(t), "offset", (json_int_t)t->offset, "data_offset",
                               (json_int_t)(gguf_data_offset(f) + t->offset), "bytes", (json_int_t)t->n_bytes));
    }
    json_t *root =
        json_pack("{s:s, s:i, s:i, s:I, s:I, s:I, s:o, s:o, s:o}", "file", path, "version", (int)gguf_version(f),
                  "alignment", (int)gguf_alignment(f), "data_offset", (json_int_t)gguf_data_offset(f), "kv_count",
                  (json_int_t)gguf_kv_count(f), "tensor_count", (json_int_t)gguf_tensor_count(f), "metadata", meta,
                  "metadata_types", types, "tensors", tensors);
    int rc = json_dumpf(root, stdout, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    fputc('\n', stdout);
    json_decref(root);
    return rc;
}

static void print_text(const gguf_file *f, const char *path, int full) {
    printf("%s: GGUF v%u, %llu metadata keys, %llu tensors, alignment %u, data at offset %llu\n\nmetadata:\n", path,
           gguf_version(f), (unsigned long long)gguf_kv_count(f), (unsigned long long)gguf_tensor_count(f),
           gguf_alignment(f), (unsigned long long)gguf_data_offset(f));
    for (uint64_t i = 0; i < gguf_kv_count(f); i++) {
        json_t *v = value_json(f, i, full);
        char *text = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
        if (text && strlen(text) > 200 && !full)
            strcpy(text + 197, "...");
        printf("  %-44s %-4s %s\n", gguf_kv_key(f, i), gguf_value_type_name(gguf_kv_type(f, i)), text ? text : "?");
        free(text);
        json_decref(v);
    }
    printf("\ntensors:\n  %-36s %-5s %-24s %12s %12s\n", "name", "type", "shape", "offset", "bytes");
    for (uint64_t i = 0; i < gguf_tensor_count(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        char shape[96] = "";
        size_t n = 0;
        for (uint32_t d = 0; d < t->n_dims; d++)
            n += (size_t)snprintf(shape + n, sizeof shape - n, "%s%llu", d ? " x " : "", (unsigned long long)t->ne[d]);
        printf("  %-36s %-5s %-24s %12llu %12llu\n", t->name, tensor_type_name(t->type), shape,
               (unsigned long long)t->offset, (unsigned long long)t->n_bytes);
    }
}

static int dequant_to_file(const gguf_file *f, const char *name, const char *out_path) {
    const gguf_tensor *t = gguf_find_tensor(f, name);
    if (!t) {
        fprintf(stderr, PROG ": no tensor named %s\n", name);
        return 1;
    }
    if (!tensor_type_can_dequantize(t->type)) {
        fprintf(stderr, PROG ": tensor %s: cannot dequantize type %s\n", name, tensor_type_name(t->type));
        return 1;
    }
    float *buf = malloc(t->n_elements * sizeof(float));
    FILE *out = fopen(out_path, "wb");
    if (!buf || !out) {
        fprintf(stderr, PROG ": %s: cannot open for writing or out of memory\n", out_path);
        free(buf);
        if (out)
            fclose(out);
        return 1;
    }
    tensor_dequantize_row(t->type, t->data, buf, t->n_elements);
    size_t ok = fwrite(buf, sizeof(float), t->n_elements, out);
    free(buf);
    if (fclose(out) || ok != t->n_elements) {
        fprintf(stderr, PROG ": %s: write failed\n", out_path);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *path = NULL, *dequant = NULL, *out = NULL;
    int as_json = 0, full = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) {
            as_json = 1;
        } else if (!strcmp(argv[i], "--full")) {
            full = 1;
        } else if (!strcmp(argv[i], "--dequant") && i + 1 < argc) {
            dequant = argv[++i];
        } else if (!strcmp(argv[i], "--out") && i + 1 < argc) {
            out = argv[++i];
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--version")) {
            printf(PROG " " INFERNO_VERSION "\n");
            return 0;
        } else if (argv[i][0] == '-' || path) {
            fprintf(stderr, PROG ": unexpected argument %s (see --help)\n", argv[i]);
            return 2;
        } else {
            path = argv[i];
        }
    }
    if (!path || (dequant && !out)) {
        usage(stderr);
        return 2;
    }
    char err[512];
    gguf_file *f;
    if (gguf_open(path, &f, err, sizeof err)) {
        fprintf(stderr, PROG ": %s\n", err);
        return 1;
    }
    int rc = 0;
    if (dequant)
        rc = dequant_to_file(f, dequant, out);
    else if (as_json)
        rc = print_json(f, path, full) ? 1 : 0;
    else
        print_text(f, path, full);
    gguf_close(f);
    return rc;
}
