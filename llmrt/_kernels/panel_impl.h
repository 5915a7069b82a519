/* int8-compute GEMM on the panel layout (kernels.h) with 512-bit vectors; included by avx512_impl.h.
 * The 512-bit vocabulary of panel_gemm.h: one vector is a whole panel vector (16 weight rows), tiles
 * of up to 4 activation rows, per-group float sums.
 *
 * VNNI (dpbusd): int4 low nibbles (v & 0x0f) and high nibbles kept in place (v & 0xf0, i.e. 16 u) go
 * to two accumulators, the second shifted right by 4 at the end of the block (exact), which saves
 * the shift of every weight vector.  int8 (stored q + 128): two accumulators for shorter chains.
 * Without VNNI (avx512 tier): maddubs as on AVX2 (panel256.h), int4 products summed in int16 per
 * block (at most 8 x 2 x 15 x 127 = 30480), int8 through the sign trick. */
#ifndef LLMRT_PANEL_IMPL_H
#define LLMRT_PANEL_IMPL_H

#define PN_LANES 16
#define PN_RD 0
#define PN_RB(BITS) 4
#define PN_NSB(BITS) 1
#define PN_ACCG 1

typedef __m512i pn_vi;
typedef __m512 pn_vf;
typedef struct { __m512i lo, hi; } pn_w4;
#if LR_VNNI
typedef struct { __m512i l, h; } pn_a4;
typedef __m512i pn_w8;
typedef struct { __m512i i0, i1; } pn_a8;
#else
typedef __m512i pn_a4;                    /* int16 sums of the block's maddubs products */
typedef struct { __m512i u, q; } pn_w8;   /* |q| and q */
typedef __m512i pn_a8;
#endif

LR_INLINE pn_vi pn_load(const uint8_t *p) { return _mm512_loadu_si512(p); }
LR_INLINE pn_vi pn_bcast(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}
LR_INLINE pn_vi pn_iset1(int32_t v) { return _mm512_set1_epi32(v); }
LR_INLINE pn_vf pn_cvt(pn_vi v) { return _mm512_cvtepi32_ps(v); }
LR_INLINE pn_vf pn_fzero(void) { return _mm512_setzero_ps(); }
LR_INLINE pn_vf pn_fset1(float v) { return _mm512_set1_ps(v); }
LR_INLINE pn_vf pn_fma(pn_vf a, pn_vf b, pn_vf c) { return _mm512_fmadd_ps(a, b, c); }
LR_INLINE pn_vf pn_fmul(pn_vf a, pn_vf b) { return _mm512_mul_ps(a, b); }
LR_INLINE pn_vf pn_load_scales(const uint8_t *p, const int F16) {
    return F16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)) : _mm512_loadu_ps(p);
}
#define pn_scales pn_load_scales
LR_INLINE pn_vf pn_fadd(pn_vf a, pn_vf b) { return _mm512_add_ps(a, b); }
LR_INLINE void pn_store(float *y, pn_vf v, int n) { _mm512_mask_storeu_ps(y, (__mmask16)((1u << n) - 1), v); }
LR_INLINE pn_vf pn_load_out(const float *y, int n) { return _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), y); }

#if LR_VNNI
LR_INLINE pn_w4 pn_prep4(pn_vi v) {
    pn_w4 w = {_mm512_and_si512(v, _mm512_set1_epi8(0x0f)), _mm512_and_si512(v, _mm512_set1_epi8((char)0xf0))};
    return w;
}
LR_INLINE pn_a4 pn_a4_init(pn_vi init) {
    pn_a4 a = {init, _mm512_setzero_si512()};
    return a;
}
LR_INLINE pn_a4 pn_a4_step(pn_a4 a, pn_w4 w, pn_vi xl, pn_vi xh) {
    a.l = _mm512_dpbusd_epi32(a.l, w.lo, xl);
    a.h = _mm512_dpbusd_epi32(a.h, w.hi, xh);
    return a;
}
LR_INLINE pn_vi pn_a4_end(pn_a4 a, pn_vi init) {
    (void)init;
    return _mm512_add_epi32(a.l, _mm512_srai_epi32(a.h, 4));
}
LR_INLINE pn_w8 pn_prep8(pn_vi v) { return v; }
LR_INLINE pn_a8 pn_a8_init(pn_vi init) {
    pn_a8 a = {init, _mm512_setzero_si512()};
    return a;
}
LR_INLINE pn_a8 pn_a8_step(pn_a8 a, pn_w8 w, pn_vi x, const int odd) {
    if (odd) a.i1 = _mm512_dpbusd_epi32(a.i1, w, x);
    else a.i0 = _mm512_dpbusd_epi32(a.i0, w, x);
    return a;
}
LR_INLINE pn_vi pn_a8_end(pn_a8 a, pn_vi init) {
    (void)init;
    return _mm512_add_epi32(a.i0, a.i1);
}
#else
LR_INLINE pn_w4 pn_prep4(pn_vi v) {
    const __m512i m = _mm512_set1_epi8(0x0f);
    pn_w4 w = {_mm512_and_si512(v, m), _mm512_and_si512(_mm512_srli_epi16(v, 4), m)};
    return w;
}
LR_INLINE pn_a4 pn_a4_init(pn_vi init) {
    (void)init;
    return _mm512_setzero_si512();
}
LR_INLINE pn_a4 pn_a4_step(pn_a4 a, pn_w4 w, pn_vi xl, pn_vi xh) {
    return _mm512_add_epi16(a, _mm512_add_epi16(_mm512_maddubs_epi16(w.lo, xl), _mm512_maddubs_epi16(w.hi, xh)));
}
LR_INLINE pn_vi pn_a4_end(pn_a4 a, pn_vi init) {
    return _mm512_add_epi32(_mm512_madd_epi16(a, _mm512_set1_epi16(1)), init);
}
LR_INLINE pn_w8 pn_prep8(pn_vi v) {
    const __m512i q = _mm512_xor_si512(v, _mm512_set1_epi8((char)0x80));
    pn_w8 w = {_mm512_abs_epi8(q), q};
    return w;
}
LR_INLINE pn_a8 pn_a8_init(pn_vi init) {
    (void)init;
    return _mm512_setzero_si512();
}
/* x negated where q < 0 (AVX512BW has no vpsignb; where q is 0, |q| = 0 makes the sign moot) */
LR_INLINE __m512i pn_sign8(__m512i x, __m512i q) {
    return _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(q), _mm512_setzero_si512(), x);
}
LR_INLINE pn_a8 pn_a8_step(pn_a8 a, pn_w8 w, pn_vi x, const int odd) {
    (void)odd;
    return _mm512_add_epi32(a, _mm512_madd_epi16(_mm512_maddubs_epi16(w.u, pn_sign8(x, w.q)), _mm512_set1_epi16(1)));
}
LR_INLINE pn_vi pn_a8_end(pn_a8 a, pn_vi init) {
    (void)init;
    return a;
}
#endif

#include "panel_gemm.h"

#endif
