/* Tensor element types as GGUF files number them (the ggml type ids), their
 * block geometry and a reference dequantizer for each type we read.
 *
 * Quantized types store a row as a sequence of fixed-size blocks; a row's
 * length must be a multiple of the block's element count. The dequantizers
 * here are the plain-C ground truth; engines carry their own fast kernels and
 * test against these. */
#ifndef INFERNO_TENSOR_TYPES_H
#define INFERNO_TENSOR_TYPES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum tensor_type {
    TENSOR_F32 = 0,
    TENSOR_F16 = 1,
    TENSOR_Q4_0 = 2,
    TENSOR_Q4_1 = 3,
    TENSOR_Q5_0 = 6,
    TENSOR_Q5_1 = 7,
    TENSOR_Q8_0 = 8,
    TENSOR_Q8_1 = 9,
    TENSOR_Q2_K = 10,
    TENSOR_Q3_K = 11,
    TENSOR_Q4_K = 12,
    TENSOR_Q5_K = 13,
    TENSOR_Q6_K = 14,
    TENSOR_Q8_K = 15,
    TENSOR_I8 = 24,
    TENSOR_I16 = 25,
    TENSOR_I32 = 26,
    TENSOR_I64 = 27,
    TENSOR_F64 = 28,
    TENSOR_BF16 = 30,
};

/* Elements per super-block of the k-quants. */
#define QK_K 256

/* Block layouts, byte for byte as stored in GGUF (little-endian). */
typedef struct {
    uint16_t d;
    uint8_t qs[16];
} block_q4_0; /* x = (q-8)*d */
typedef struct {
    uint16_t d, m;
    uint8_t qs[16];
} block_q4_1; /* x = q*d + m */
typedef struct {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[16];
} block_q5_0; /* x = (q-16)*d */
typedef struct {
    uint16_t d, m;
    uint8_t qh[4];
    uint8_t qs[16];
} block_q5_1;
typedef struct {
    uint16_t d;
    int8_t qs[32];
} block_q8_0; /* x = q*d */
typedef struct {
    uint16_t d, dmin;   /* super-block scales for the 6-bit scales and mins */
    uint8_t scales[12]; /* 8 (scale, min) pairs, 6 bits each */
    uint8_t qs[QK_K / 2];
} block_q4_K;
typedef struct {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[QK_K / 8]; /* fifth bit of each quant */
    uint8_t qs[QK_K / 2];
} block_q5_K;
typedef struct {
    uint8_t ql[QK_K / 2];     /* low 4 bits */
    uint8_t qh[QK_K / 4];     /* high 2 bits */
    int8_t scales[QK_K / 16]; /* 8-bit scale per 16 values */
    uint16_t d;
} block_q6_K;

/* Q4_K and Q5_K: the j-th (scale, min) pair of the 12-byte scale field:
 * pairs 0-3 sit in the low 6 bits of bytes 0-7; pairs 4-7 take their low
 * nibbles from bytes 8-11 and their top two bits from bytes 0-7. */
static inline void tensor_kquant_scale_min(int j, const uint8_t *s, uint8_t *scale, uint8_t *min) {
    if (j < 4) {
        *scale = s[j] & 63;
        *min = s[j + 4] & 63;
    } else {
        *scale = (uint8_t)((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4));
        *min = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

/* Name as llama.cpp prints it ("Q8_0"), or NULL for an id we do not know. */
const char *tensor_type_name(uint32_t type);

/* Geometry of a known type: elements per block and bytes per block.
 * Returns false for unknown ids. */
bool tensor_type_geometry(uint32_t type, uint32_t *block_elems, uint32_t *block_bytes);

/* Bytes of a row of n elements; false if the type is unknown, n is not a
 * multiple of the block size, or the size overflows. */
bool tensor_row_bytes(uint32_t type, uint64_t n, uint64_t *bytes);

/* True when tensor_dequantize_row handles the type. */
bool tensor_type_can_dequantize(uint32_t type);

/* Reference dequantization of n elements (n a multiple of the block size).
 * Returns 0, or -1 for a type we cannot dequantize. */
int tensor_dequantize_row(uint32_t type, const void *src, float *dst, uint64_t n);

/* A row of Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K or Q6_K as 8-bit
 * integers with a float scale and offset per group of `group` (16 or 32)
 * values: value i is q[i] * scale[i / group] - offset[i / group], exactly
 * (bit for bit) the float tensor_dequantize_row gives. q holds n values,
 * scale and offset n / group. Returns 0, or -1 for another type, a group
 * finer than the type's scales (Q6_K needs 16) or a length not a multiple
 * of its block. For engines that read every type through one 8-bit kernel. */
int tensor_split_row(uint32_t type, const void *src, uint64_t n, uint32_t group, int8_t *q, float *scale,
                     float *offset);
/* The largest group tensor_split_row takes for a type: 32, 16 for Q6_K, 0
 * for a type it does not take. */
uint32_t tensor_split_group(uint32_t type);

/* Reference quantization (round to nearest) for the types make-test-model
 * writes: F32, F16, BF16, Q8_0 and Q5_0 as llama.cpp's reference quantizer
 * does; Q4_K and Q6_K plainly (min/max scales, no search). Returns 0, or -1
 * for other types or a length that is not a multiple of the block. */
int tensor_quantize_row(uint32_t type, const float *src, void *dst, uint64_t n);

#endif
