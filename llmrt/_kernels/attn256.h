/* Attention over the KV cache with 256-bit vectors (included by avx2_impl.h): the vocabulary of
 * attn_tiles.h on 8 lanes (AVX2 has no mask registers: lane counts become lane masks). */
#ifndef LLMRT_ATTN256_H
#define LLMRT_ATTN256_H

#include "vmath256.h"

#define AT_KT 8
typedef __m256 at_vf;

LR_INLINE at_vf at_load_n(const void *base, int f16, int64_t i, int n) {
    if (f16) {
        const uint16_t *p = (const uint16_t *)base + i;
        if (n == 8) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
        uint16_t part[8] = {0};
        memcpy(part, p, (size_t)n * sizeof(uint16_t));   /* never read past the cache row */
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)part));
    }
    const float *p = (const float *)base + i;
    return n == 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lr_lanes_below(n));
}
LR_INLINE at_vf at_loadu(const float *p) { return _mm256_loadu_ps(p); }
LR_INLINE at_vf at_load_fn(const float *p, int n) {
    return n == 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lr_lanes_below(n));
}
LR_INLINE void at_storeu(float *p, at_vf v) { _mm256_storeu_ps(p, v); }
LR_INLINE void at_store_n(float *p, at_vf v, int n) {
    if (n == 8) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, lr_lanes_below(n), v);
}
LR_INLINE at_vf at_zero(void) { return _mm256_setzero_ps(); }
LR_INLINE at_vf at_set1(float f) { return _mm256_set1_ps(f); }
LR_INLINE at_vf at_fma(at_vf a, at_vf b, at_vf c) { return _mm256_fmadd_ps(a, b, c); }
LR_INLINE at_vf at_add(at_vf a, at_vf b) { return _mm256_add_ps(a, b); }
LR_INLINE at_vf at_sub(at_vf a, at_vf b) { return _mm256_sub_ps(a, b); }
LR_INLINE at_vf at_mul(at_vf a, at_vf b) { return _mm256_mul_ps(a, b); }
LR_INLINE at_vf at_max(at_vf a, at_vf b) { return _mm256_max_ps(a, b); }
LR_INLINE float at_hmax(at_vf v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}
LR_INLINE float at_hsum(at_vf v) { return lr_vhsum(v); }
LR_INLINE at_vf at_exp(at_vf v) { return vm_exp256(v); }
LR_INLINE at_vf at_lanes(void) { return _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7); }
LR_INLINE at_vf at_keep(at_vf v, int64_t first, int64_t last, float fill) {
    const __m256 lane = at_lanes();
    const __m256 in = _mm256_and_ps(_mm256_cmp_ps(lane, _mm256_set1_ps((float)first), _CMP_GE_OQ),
                                    _mm256_cmp_ps(lane, _mm256_set1_ps((float)last), _CMP_LE_OQ));
    return _mm256_blendv_ps(_mm256_set1_ps(fill), v, in);
}

/* r[i] = column i of the 8 x 8 block whose rows are r[0..7] (in place). */
LR_INLINE void at_transpose(at_vf r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4)
        for (int h = 0; h < 2; h++) {
            u[i + 2 * h] = _mm256_shuffle_ps(t[i + h], t[i + 2 + h], _MM_SHUFFLE(1, 0, 1, 0));
            u[i + 2 * h + 1] = _mm256_shuffle_ps(t[i + h], t[i + 2 + h], _MM_SHUFFLE(3, 2, 3, 2));
        }
    /* u[4g + o], 128-bit half L: rows 4g..4g+3 of column 4L + o */
    for (int o = 0; o < 4; o++) {
        r[o] = _mm256_permute2f128_ps(u[o], u[4 + o], 0x20);
        r[4 + o] = _mm256_permute2f128_ps(u[o], u[4 + o], 0x31);
    }
}

#include "attn_tiles.h"

#endif
