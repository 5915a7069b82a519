/* int8-compute GEMM on the panel layout (kernels.h) with 256-bit vectors; included by avx2_impl.h.
 * The 256-bit vocabulary of panel_gemm.h: a 64-byte panel vector is two 32-byte slots of 8 weight
 * rows, so a dot against a broadcast activation dword gives 8 rows' block sums in the 8 lanes.
 * Up to PN_RD activation rows (decode) a tile covers both slots of a panel, sharing each broadcast;
 * with more rows a tile covers PN_NSB slots and PN_RB rows (see PN_RB).
 *
 * AVX-VNNI (dpbusd): int4 both nibbles as 0..15 into one accumulator (PN_VNNI_INT4_SPLIT; 0: as the
 * 512-bit kernel, low nibbles and in-place high nibbles (16 u) in two), int8 as stored (q + 128) against
 * the -128 * sum_a start.
 * AVX2 (maddubs, u8 x s8 -> int16 pair sums, saturating):
 *   int4: nibbles 0..15 (the high ones shifted down) x |x| <= 127: a pair sum is at most
 *         2 * 15 * 127 = 3810, and the 8 products of a block (4 dwords x 2 nibbles) at most 30480,
 *         so they are summed in int16 and widened once per block by madd (exact).
 *   int8: q = stored ^ 0x80, |q| x (x with the sign of q): |q| <= 128, |x| <= 127, a pair sum at most
 *         32512 (exact); widened by madd at once, as two would overflow int16.  The block sum is
 *         sum(q * x), so the -B * sum_a start is not used. */
#ifndef LLMRT_PANEL256_H
#define LLMRT_PANEL256_H

#define PN_LANES 8
#ifndef PN_RD
#define PN_RD 2
#endif
/* Tile shapes, measured on the 1.1B MLP shapes (128 rows, one core; benchmarks/tile_sweep.py):
 * AVX2 one slot x 8 rows (Zen 4: int4 112 GMAC/s against 100 for 4 rows; a weight vector's nibble split
 * serves more rows, and the float sums the compiler keeps in memory cost loads and stores, not vector ALU
 * slots; int8 prefill runs widened, PN_RBW below).  AVX-VNNI both slots, sharing each activation broadcast,
 * with one accumulator per row and slot: int4 x 3 rows with the high nibbles shifted down as on AVX2
 * (PN_VNNI_INT4_SPLIT), int8 x 4 rows (PN_VNNI_INT8_CHAINS).  On Zen 4's EVEX stand-in int4 128 GMAC/s
 * against 119 for one slot x 8 rows and 108 for one slot x 4 rows with the nibbles in place, int8 131
 * against 88 for both slots x 2 rows with two accumulators each.  Those two had been chosen on Sapphire
 * Rapids' VEX encoding from candidates without these steps, and for int8 before prefill read panels in
 * 16 KiB chunks (then a pass per slot over an int8 panel missed L1); re-check with tile_sweep.py on an
 * AVX-VNNI core. */
#ifndef PN_RB4
#define PN_RB4 (LR_VNNI ? 3 : 8)
#endif
#ifndef PN_NSB4
#define PN_NSB4 (LR_VNNI ? 2 : 1)
#endif
#ifndef PN_RB8
#define PN_RB8 (LR_VNNI ? 4 : 8)
#endif
#ifndef PN_NSB8
#define PN_NSB8 (LR_VNNI ? 2 : 1)
#endif
/* AVX-VNNI int4, 1: the high nibbles shifted down as on AVX2, both dot products into one accumulator;
 * 0: kept in place (16 u) in a second accumulator, one shift per block instead of one per weight vector. */
#ifndef PN_VNNI_INT4_SPLIT
#define PN_VNNI_INT4_SPLIT 1
#endif
/* AVX-VNNI int8: accumulators per row and slot, 1, or 2 taking alternate weight vectors (shorter chains of
 * dependent dpbusd, for tiles with fewer of them in flight). */
#ifndef PN_VNNI_INT8_CHAINS
#define PN_VNNI_INT8_CHAINS 1
#endif
#define PN_RB(BITS) ((BITS) == 8 ? PN_RB8 : PN_RB4)
#define PN_NSB(BITS) ((BITS) == 8 ? PN_NSB8 : PN_NSB4)
#ifndef PN_ACCG
#define PN_ACCG 0
#endif
/* prefill tiles read activations packed in row bands (one pointer for all rows of a tile: the scalar
 * registers and loads of a pointer per row were a large part of the 4-row int4 loop) */
#define PN_PACK_ACT 1

typedef __m256i pn_vi;
typedef __m256 pn_vf;
typedef struct { __m256i lo, hi; } pn_w4;
#define PN_INT4_IN_PLACE (LR_VNNI && !PN_VNNI_INT4_SPLIT)   /* high nibbles kept in place (16 u) */
#if PN_INT4_IN_PLACE
typedef struct { __m256i l, h; } pn_a4;
#else
typedef __m256i pn_a4;               /* int32 block sums (VNNI), or int16 sums of maddubs products */
#endif
#if LR_VNNI
typedef __m256i pn_w8;
typedef struct { __m256i i0, i1; } pn_a8;
#else
typedef struct { __m256i u, q; } pn_w8;   /* |q| and q */
typedef __m256i pn_a8;
#endif

LR_INLINE pn_vi pn_load(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)p); }
LR_INLINE pn_vi pn_bcast(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}
LR_INLINE pn_vi pn_iset1(int32_t v) { return _mm256_set1_epi32(v); }
LR_INLINE pn_vf pn_cvt(pn_vi v) { return _mm256_cvtepi32_ps(v); }
LR_INLINE pn_vf pn_fzero(void) { return _mm256_setzero_ps(); }
LR_INLINE pn_vf pn_fset1(float v) { return _mm256_set1_ps(v); }
LR_INLINE pn_vf pn_fma(pn_vf a, pn_vf b, pn_vf c) { return _mm256_fmadd_ps(a, b, c); }
LR_INLINE pn_vf pn_fmul(pn_vf a, pn_vf b) { return _mm256_mul_ps(a, b); }
LR_INLINE pn_vf pn_scales(const uint8_t *p, const int F16) {
    return F16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)) : _mm256_loadu_ps((const float *)p);
}
LR_INLINE pn_vf pn_fadd(pn_vf a, pn_vf b) { return _mm256_add_ps(a, b); }
LR_INLINE void pn_store(float *y, pn_vf v, int n) {
    if (n == PN_LANES) _mm256_storeu_ps(y, v);
    else _mm256_maskstore_ps(y, lr_lanes_below(n), v);
}
LR_INLINE pn_vf pn_load_out(const float *y, int n) {
    return n == PN_LANES ? _mm256_loadu_ps(y) : _mm256_maskload_ps(y, lr_lanes_below(n));
}

#if PN_INT4_IN_PLACE
LR_INLINE pn_w4 pn_prep4(pn_vi v) {
    pn_w4 w = {_mm256_and_si256(v, _mm256_set1_epi8(0x0f)), _mm256_and_si256(v, _mm256_set1_epi8((char)0xf0))};
    return w;
}
LR_INLINE pn_a4 pn_a4_init(pn_vi init) {
    pn_a4 a = {init, _mm256_setzero_si256()};
    return a;
}
LR_INLINE pn_a4 pn_a4_step(pn_a4 a, pn_w4 w, pn_vi xl, pn_vi xh) {
    a.l = lr_dpbusd256(a.l, w.lo, xl);
    a.h = lr_dpbusd256(a.h, w.hi, xh);
    return a;
}
LR_INLINE pn_vi pn_a4_end(pn_a4 a, pn_vi init) {
    (void)init;
    return _mm256_add_epi32(a.l, _mm256_srai_epi32(a.h, 4));
}
#else
LR_INLINE pn_w4 pn_prep4(pn_vi v) {   /* both nibbles as 0..15 */
    const __m256i m = _mm256_set1_epi8(0x0f);
    pn_w4 w = {_mm256_and_si256(v, m), _mm256_and_si256(_mm256_srli_epi16(v, 4), m)};
    return w;
}
#if LR_VNNI
LR_INLINE pn_a4 pn_a4_init(pn_vi init) { return init; }
LR_INLINE pn_a4 pn_a4_step(pn_a4 a, pn_w4 w, pn_vi xl, pn_vi xh) {
    return lr_dpbusd256(lr_dpbusd256(a, w.lo, xl), w.hi, xh);
}
LR_INLINE pn_vi pn_a4_end(pn_a4 a, pn_vi init) {
    (void)init;
    return a;
}
#else
LR_INLINE pn_a4 pn_a4_init(pn_vi init) {
    (void)init;
    return _mm256_setzero_si256();
}
LR_INLINE pn_a4 pn_a4_step(pn_a4 a, pn_w4 w, pn_vi xl, pn_vi xh) {
    a = _mm256_add_epi16(a, _mm256_maddubs_epi16(w.lo, xl));
    LR_PIN(a);
    a = _mm256_add_epi16(a, _mm256_maddubs_epi16(w.hi, xh));
    LR_PIN(a);
    return a;
}
LR_INLINE pn_vi pn_a4_end(pn_a4 a, pn_vi init) {
    return _mm256_add_epi32(_mm256_madd_epi16(a, _mm256_set1_epi16(1)), init);
}
#endif
#endif

#if LR_VNNI
LR_INLINE pn_w8 pn_prep8(pn_vi v) { return v; }
LR_INLINE pn_a8 pn_a8_init(pn_vi init) {
    pn_a8 a = {init, _mm256_setzero_si256()};
    return a;
}
LR_INLINE pn_a8 pn_a8_step(pn_a8 a, pn_w8 w, pn_vi x, const int odd) {
    if (odd && PN_VNNI_INT8_CHAINS == 2) a.i1 = lr_dpbusd256(a.i1, w, x);
    else a.i0 = lr_dpbusd256(a.i0, w, x);
    return a;
}
LR_INLINE pn_vi pn_a8_end(pn_a8 a, pn_vi init) {
    (void)init;
    return PN_VNNI_INT8_CHAINS == 2 ? _mm256_add_epi32(a.i0, a.i1) : a.i0;
}
#else
LR_INLINE pn_w8 pn_prep8(pn_vi v) {
    const __m256i q = _mm256_xor_si256(v, _mm256_set1_epi8((char)0x80));
    pn_w8 w = {_mm256_abs_epi8(q), q};
    return w;
}
LR_INLINE pn_a8 pn_a8_init(pn_vi init) {
    (void)init;
    return _mm256_setzero_si256();
}
LR_INLINE pn_a8 pn_a8_step(pn_a8 a, pn_w8 w, pn_vi x, const int odd) {
    (void)odd;
    a = _mm256_add_epi32(a, _mm256_madd_epi16(_mm256_maddubs_epi16(w.u, _mm256_sign_epi8(x, w.q)),
                                              _mm256_set1_epi16(1)));
    LR_PIN(a);
    return a;
}
LR_INLINE pn_vi pn_a8_end(pn_a8 a, pn_vi init) {
    (void)init;
    return a;
}
#endif

/* AVX2 int8 prefill on widened weights (panel_wide8.h) */
#ifndef PN_WIDE8
#define PN_WIDE8 (!LR_VNNI)
#endif
#ifndef PN_RBW
#define PN_RBW 4
#endif
#ifndef PN_NSBW
#define PN_NSBW 2
#endif

#include "panel_gemm.h"

#endif
