/* 512-bit float vector helpers (the lr_vf abstraction of float_tiles.h), shared by the AVX512
 * units (avx512_impl.h, avx512_bf16.c).  Everything is static inline. */
#ifndef LLMRT_AVX512_VEC_H
#define LLMRT_AVX512_VEC_H

#include <immintrin.h>
#include <stdint.h>

typedef __m512 lr_vf;
#define LR_VN 16

static inline lr_vf lr_vzero(void) { return _mm512_setzero_ps(); }
static inline lr_vf lr_vload(const float *p) { return _mm512_loadu_ps(p); }
static inline void lr_vstore(float *p, lr_vf v) { _mm512_storeu_ps(p, v); }
static inline lr_vf lr_vset1(float f) { return _mm512_set1_ps(f); }
static inline lr_vf lr_vfma(lr_vf a, lr_vf b, lr_vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline lr_vf lr_vmul(lr_vf a, lr_vf b) { return _mm512_mul_ps(a, b); }
static inline lr_vf lr_vadd(lr_vf a, lr_vf b) { return _mm512_add_ps(a, b); }
static inline lr_vf lr_vload_f16(const uint16_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
static inline float lr_vhsum(lr_vf v) { return _mm512_reduce_add_ps(v); }

/* Same rounding as lr_f32_to_bf16 (nearest-even, NaN kept quiet), result widened back to fp32. */
static inline lr_vf lr_vround_bf16(lr_vf v) {
    const __m512i x = _mm512_castps_si512(v);
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_and_si512(_mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7fff)), lsb), hi);
    r = _mm512_mask_or_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_and_si512(x, hi),
                             _mm512_set1_epi32(0x00400000));
    return _mm512_castsi512_ps(r);
}

/* Chunk ch (16 elements) of a 32-element block as floats: int4 bytes 0-15 hold elements 0-15 in
 * the low nibbles and 16-31 in the high nibbles. */
static inline lr_vf lr_vq4(const uint8_t *qb, int ch) {
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)qb));
    return _mm512_cvtepi32_ps(ch == 0 ? _mm512_and_si512(v, _mm512_set1_epi32(15)) : _mm512_srli_epi32(v, 4));
}
static inline lr_vf lr_vq8(const int8_t *qb, int ch) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(qb + 16 * ch))));
}

#endif
