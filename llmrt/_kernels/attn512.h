/* Attention over the KV cache with 512-bit vectors (included by avx512_impl.h): the vocabulary of
 * attn_tiles.h on 16 lanes, lane counts as masks. */
#ifndef LLMRT_ATTN512_H
#define LLMRT_ATTN512_H

#include "vmath512.h"

#define AT_KT 16
typedef __m512 at_vf;

LR_INLINE __mmask16 at_mask(int n) { return (__mmask16)(n >= 16 ? 0xFFFFu : (1u << n) - 1u); }
LR_INLINE at_vf at_load_n(const void *base, int f16, int64_t i, int n) {
    if (f16) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(at_mask(n), (const uint16_t *)base + i));
    return _mm512_maskz_loadu_ps(at_mask(n), (const float *)base + i);
}
LR_INLINE at_vf at_loadu(const float *p) { return _mm512_loadu_ps(p); }
LR_INLINE at_vf at_load_fn(const float *p, int n) { return _mm512_maskz_loadu_ps(at_mask(n), p); }
LR_INLINE void at_storeu(float *p, at_vf v) { _mm512_storeu_ps(p, v); }
LR_INLINE void at_store_n(float *p, at_vf v, int n) { _mm512_mask_storeu_ps(p, at_mask(n), v); }
LR_INLINE at_vf at_zero(void) { return _mm512_setzero_ps(); }
LR_INLINE at_vf at_set1(float f) { return _mm512_set1_ps(f); }
LR_INLINE at_vf at_fma(at_vf a, at_vf b, at_vf c) { return _mm512_fmadd_ps(a, b, c); }
LR_INLINE at_vf at_add(at_vf a, at_vf b) { return _mm512_add_ps(a, b); }
LR_INLINE at_vf at_sub(at_vf a, at_vf b) { return _mm512_sub_ps(a, b); }
LR_INLINE at_vf at_mul(at_vf a, at_vf b) { return _mm512_mul_ps(a, b); }
LR_INLINE at_vf at_max(at_vf a, at_vf b) { return _mm512_max_ps(a, b); }
LR_INLINE float at_hmax(at_vf v) { return _mm512_reduce_max_ps(v); }
LR_INLINE float at_hsum(at_vf v) { return _mm512_reduce_add_ps(v); }
LR_INLINE at_vf at_exp(at_vf v) { return vm_exp(v); }
LR_INLINE at_vf at_lanes(void) { return _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }
LR_INLINE at_vf at_keep(at_vf v, int64_t first, int64_t last, float fill) {
    const unsigned upto = last >= 15 ? 0xFFFFu : (last < 0 ? 0u : (2u << last) - 1u);
    const unsigned from = first <= 0 ? 0u : (first >= 16 ? 0xFFFFu : (1u << first) - 1u);
    return _mm512_mask_blend_ps((__mmask16)(upto & ~from), _mm512_set1_ps(fill), v);
}

/* r[i] = column i of the 16 x 16 block whose rows are r[0..15] (in place). */
LR_INLINE void at_transpose(at_vf r[16]) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4)
        for (int h = 0; h < 2; h++) {
            const __m512d a = _mm512_castps_pd(t[i + h]), b = _mm512_castps_pd(t[i + 2 + h]);
            r[i + 2 * h] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
            r[i + 2 * h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        }
    /* r[4g + o], 128-bit lane L: rows 4g..4g+3 of column 4L + o; a 4 x 4 transpose of lanes is left */
    for (int i = 0; i < 8; i++) {
        const int a = (i / 4) * 8 + (i % 4), b = a + 4;
        t[a] = _mm512_shuffle_f32x4(r[a], r[b], _MM_SHUFFLE(2, 0, 2, 0));
        t[b] = _mm512_shuffle_f32x4(r[a], r[b], _MM_SHUFFLE(3, 1, 3, 1));
    }
    for (int i = 0; i < 8; i++) {
        const int a = i, b = i + 8;
        r[a] = _mm512_shuffle_f32x4(t[a], t[b], _MM_SHUFFLE(2, 0, 2, 0));
        r[b] = _mm512_shuffle_f32x4(t[a], t[b], _MM_SHUFFLE(3, 1, 3, 1));
    }
}

#include "attn_tiles.h"

#endif
