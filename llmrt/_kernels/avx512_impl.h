/* 512-bit kernels, included by avx512.c (LR_VNNI 0: maddubs + madd), avx512_vnni.c and amx.c
 * (LR_VNNI 1: dpbusd).  Compiled with the including tier's flags; everything is static. */
#ifndef LLMRT_AVX512_IMPL_H
#define LLMRT_AVX512_IMPL_H

#include <immintrin.h>

#include "generic_ops.h"
#include "kernel_util.h"
#include "avx512_vec.h"

#ifndef LR_VNNI
#define LR_VNNI 0
#endif

#define FT_J 4
#include "float_tiles.h"

/* ---------------------------------------------------------------- activation quantization */
static void x86_quantize_act(const float *x, int64_t ldx, int64_t rows, int64_t k,
                             int8_t *q, float *d, int32_t *sum) {
    const int64_t nb = k / LR_QK;
    LR_OMP(parallel for schedule(static) if (rows * k >= LR_PAR_MIN_WORK))
    for (int64_t r = 0; r < rows; r++) {
        const __m512i lim = _mm512_set1_epi32(127), nlim = _mm512_set1_epi32(-127);
        for (int64_t b = 0; b < nb; b++) {
            const float *xb = x + r * ldx + b * LR_QK;
            const __m512 v0 = _mm512_loadu_ps(xb), v1 = _mm512_loadu_ps(xb + 16);
            /* same scalar ops as the reference, so d and q are bit-identical to it */
            const float db = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1))) / 127.0f;
            const __m512 id = _mm512_set1_ps(db > 0.0f ? 1.0f / db : 0.0f);
            const int rn = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
            __m512i i0 = _mm512_cvttps_epi32(_mm512_roundscale_ps(_mm512_mul_ps(v0, id), rn));
            __m512i i1 = _mm512_cvttps_epi32(_mm512_roundscale_ps(_mm512_mul_ps(v1, id), rn));
            i0 = _mm512_max_epi32(_mm512_min_epi32(i0, lim), nlim);
            i1 = _mm512_max_epi32(_mm512_min_epi32(i1, lim), nlim);
            int8_t *qb = q + r * k + b * LR_QK;
            _mm_storeu_si128((__m128i *)qb, _mm512_cvtepi32_epi8(i0));
            _mm_storeu_si128((__m128i *)(qb + 16), _mm512_cvtepi32_epi8(i1));
            d[r * nb + b] = db;
            sum[r * nb + b] = _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
        }
    }
}

/* ---------------------------------------------------------------- int8 compute
 * Integer dots of u8 x s8 in int32 lanes, converted and scaled by d_a * d_w (a vector holding each
 * lane's block scale) into float accumulators; one horizontal sum per output at the end.
 *   int4 weights: 4 blocks (64 bytes) per step.  The low nibbles of the 4 blocks (elements 0-15 of
 *         each) and the high nibbles (16-31) are the u8 operands of two dots against activations
 *         re-laid out once per call to match (q4_pack_act); both land in the same lanes, 4 lanes
 *         per block.  The -8 / m offset goes through the activation block sums (i8_common.h).
 *   int8 weights: 2 blocks per step, lanes 0-7 block b, 8-15 block b+1; an odd last block is
 *         loaded with a zeroing mask.  maddubs: |w| x (x negated where w < 0).  dpbusd:
 *         (w + 128) x x with the accumulator started at -128 * (lane sums of x), exact in int32. */
#define I8_R 4
#define I8_J 4
#define LR_Q4_SB 4
#define LR_Q4_STEP_BYTES 192   /* per activation row and step: 64 B low halves, 64 B high halves, 16 scales */

#include "i8_common.h"

typedef struct {
    const lr_qmat *w;
    const lr_qact *a;
    float *y;
    int64_t ldy;
    const float *S;         /* rows x ng: sum over a group's blocks of d_a * sum_a, or NULL */
    int64_t ns;             /* int4: steps per row */
    q4_step *steps;         /* int4: weight-scale layout per step */
    uint8_t *xbuf;          /* int4: activations in step layout */
} i8_ctx;

/* The int8 dot of two u8 x s8 operand pairs, summed per int32 lane (int4 values: no int16 overflow). */
LR_INLINE __m512i q4_dot2(__m512i u0, __m512i s0, __m512i u1, __m512i s1) {
#if LR_VNNI
    return _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), u0, s0), u1, s1);
#else
    return _mm512_madd_epi16(_mm512_add_epi16(_mm512_maddubs_epi16(u0, s0), _mm512_maddubs_epi16(u1, s1)),
                             _mm512_set1_epi16(1));
#endif
}

static void q4_pack_act(const lr_qact *a, int64_t ns, uint8_t *buf) {
    const int64_t k = a->k, nb = k / LR_QK;
    const __m512i sidx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    for (int64_t r = 0; r < a->rows; r++)
        for (int64_t s = 0; s < ns; s++) {
            const int64_t nbs = lr_min64(LR_Q4_SB, nb - s * LR_Q4_SB);   /* blocks present in this step */
            const int8_t *x = a->q + r * k + s * LR_Q4_SB * LR_QK;
            uint8_t *o = buf + (r * ns + s) * LR_Q4_STEP_BYTES;
            const __mmask64 m0 = nbs >= 2 ? ~0ull : 0xFFFFFFFFull;
            const __mmask64 m1 = nbs >= 4 ? ~0ull : (nbs == 3 ? 0xFFFFFFFFull : 0);
            const __m512i u0 = _mm512_maskz_loadu_epi8(m0, x), u1 = _mm512_maskz_loadu_epi8(m1, x + 64);
            _mm512_storeu_si512(o, _mm512_shuffle_i64x2(u0, u1, _MM_SHUFFLE(2, 0, 2, 0)));
            _mm512_storeu_si512(o + 64, _mm512_shuffle_i64x2(u0, u1, _MM_SHUFFLE(3, 1, 3, 1)));
            const __m512 dv = _mm512_maskz_loadu_ps((__mmask16)((1u << nbs) - 1), a->d + r * nb + s * LR_Q4_SB);
            _mm512_storeu_ps((float *)(o + 128), _mm512_permutexvar_ps(sidx, dv));
        }
}

/* One int4 step (4 blocks) of an R x J tile; TAIL: the last, partial step (masked weight loads). */
LR_INLINE void q4_step512(__m512 acc[I8_R][I8_J], const i8_ctx *c, const uint8_t *const *xp,
                          const uint8_t *const *wq, const float *const *wd, int64_t s,
                          const int R, const int J, const int UNI, const int TAIL) {
    const int64_t nb = c->w->k / LR_QK;
    const q4_step *st = c->steps + s;
    const __m512i lo4 = _mm512_set1_epi8(0x0f);
    const __mmask64 tmask = (1ull << (16 * (nb % LR_Q4_SB))) - 1;
    const __mmask16 dmask = (__mmask16)((1u << st->nd) - 1);
    __m512i lo[I8_J], hi[I8_J], idx = _mm512_setzero_si512();
    __m512 dw[I8_J];
    if (!UNI) idx = _mm512_loadu_si512(st->idx);
    LR_UNROLL for (int j = 0; j < J; j++) {
        const uint8_t *p = wq[j] + s * (LR_Q4_SB * LR_QK / 2);
        const __m512i v = TAIL ? _mm512_maskz_loadu_epi8(tmask, p) : _mm512_loadu_si512(p);
        lo[j] = _mm512_and_si512(v, lo4);
        hi[j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);
        dw[j] = UNI ? _mm512_set1_ps(wd[j][st->g0])
                    : _mm512_permutexvar_ps(idx, _mm512_maskz_loadu_ps(dmask, wd[j] + st->g0));
    }
    LR_UNROLL for (int r = 0; r < R; r++) {
        const uint8_t *xs = xp[r] + s * LR_Q4_STEP_BYTES;
        const __m512i xl = _mm512_loadu_si512(xs), xh = _mm512_loadu_si512(xs + 64);
        const __m512 da = _mm512_loadu_ps((const float *)(xs + 128));
        LR_UNROLL for (int j = 0; j < J; j++) {
            const __m512i p = q4_dot2(lo[j], xl, hi[j], xh);
            acc[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(da, dw[j]), acc[r][j]);
        }
    }
}

LR_INLINE void q4_tile(const i8_ctx *c, int64_t r0, int64_t j0, const int R, const int J, const int UNI) {
    const lr_qmat *w = c->w;
    const int64_t k = w->k, nb = k / LR_QK, ng = k / w->group, ns = c->ns;
    const int64_t nfull = nb / LR_Q4_SB;
    __m512 acc[I8_R][I8_J];
    const uint8_t *xp[I8_R];
    const uint8_t *wq[I8_J];
    const float *wd[I8_J];
    LR_UNROLL for (int r = 0; r < R; r++) {
        xp[r] = c->xbuf + (r0 + r) * ns * LR_Q4_STEP_BYTES;
        LR_UNROLL for (int j = 0; j < J; j++) acc[r][j] = _mm512_setzero_ps();
    }
    LR_UNROLL for (int j = 0; j < J; j++) {
        wq[j] = w->qs + (j0 + j) * (k / 2);
        wd[j] = w->d + (j0 + j) * ng;
    }
    for (int64_t s = 0; s < nfull; s++) q4_step512(acc, c, xp, wq, wd, s, R, J, UNI, 0);
    if (nfull < ns) q4_step512(acc, c, xp, wq, wd, nfull, R, J, UNI, 1);
    LR_UNROLL for (int r = 0; r < R; r++)
        LR_UNROLL for (int j = 0; j < J; j++)
            c->y[(r0 + r) * c->ldy + j0 + j] =
                _mm512_reduce_add_ps(acc[r][j]) + i8_offset(w, j0 + j, c->S + (r0 + r) * ng);
}

LR_INLINE __m512 i8_pair_scale(float lo, float hi) {
    return _mm512_insertf32x8(_mm512_set1_ps(lo), _mm256_set1_ps(hi), 1);
}

LR_INLINE void i8_tile(const i8_ctx *c, int64_t r0, int64_t j0, const int R, const int J) {
    const lr_qmat *w = c->w;
    const lr_qact *a = c->a;
    const int64_t k = w->k, nb = k / LR_QK, ng = k / w->group, bpg = w->group / LR_QK;
    __m512 acc[I8_R][I8_J];
    const int8_t *xq[I8_R];
    const float *xd[I8_R];
    const int8_t *wq[I8_J];
    const float *wd[I8_J];
    LR_UNROLL for (int r = 0; r < R; r++) {
        xq[r] = a->q + (r0 + r) * k;
        xd[r] = a->d + (r0 + r) * nb;
        LR_UNROLL for (int j = 0; j < J; j++) acc[r][j] = _mm512_setzero_ps();
    }
    LR_UNROLL for (int j = 0; j < J; j++) {
        wq[j] = (const int8_t *)w->qs + (j0 + j) * k;
        wd[j] = w->d + (j0 + j) * ng;
    }
    const __m512i zero = _mm512_setzero_si512();
#if LR_VNNI
    const __m512i x80 = _mm512_set1_epi8((char)0x80);
#endif
    int64_t g = 0, gi = 0;   /* group of the next block and its position inside the group */
    for (int64_t b = 0; b < nb; b += 2) {
        const int tail = b + 1 == nb;
        const int64_t g0 = g;
        if (++gi == bpg) { g++; gi = 0; }
        const int64_t g1 = tail ? g0 : g;
        if (!tail && ++gi == bpg) { g++; gi = 0; }
        const int64_t b1 = tail ? b : b + 1;
        __m512i xv[I8_R];
        __m512 da[I8_R];
#if LR_VNNI
        __m512i a0[I8_R];
#endif
        LR_UNROLL for (int r = 0; r < R; r++) {
            const int8_t *p = xq[r] + b * LR_QK;
            xv[r] = tail ? _mm512_maskz_loadu_epi8(0xFFFFFFFFull, p) : _mm512_loadu_si512(p);
            da[r] = i8_pair_scale(xd[r][b], xd[r][b1]);
#if LR_VNNI
            a0[r] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, x80, xv[r]));
#endif
        }
        LR_UNROLL for (int j = 0; j < J; j++) {
            const int8_t *p = wq[j] + b * LR_QK;
            const __m512i wv = tail ? _mm512_maskz_loadu_epi8(0xFFFFFFFFull, p) : _mm512_loadu_si512(p);
            const __m512 dw = i8_pair_scale(wd[j][g0], wd[j][g1]);
#if LR_VNNI
            const __m512i wu = _mm512_xor_si512(wv, x80);
#else
            const __m512i wu = _mm512_abs_epi8(wv);
            const __mmask64 neg = _mm512_movepi8_mask(wv);
#endif
            LR_UNROLL for (int r = 0; r < R; r++) {
#if LR_VNNI
                const __m512i p = _mm512_dpbusd_epi32(a0[r], wu, xv[r]);
#else
                const __m512i xs = _mm512_mask_sub_epi8(xv[r], neg, zero, xv[r]);
                const __m512i p = _mm512_madd_epi16(_mm512_maddubs_epi16(wu, xs), _mm512_set1_epi16(1));
#endif
                acc[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(da[r], dw), acc[r][j]);
            }
        }
    }
    LR_UNROLL for (int r = 0; r < R; r++)
        LR_UNROLL for (int j = 0; j < J; j++) {
            float v = _mm512_reduce_add_ps(acc[r][j]);
            if (c->S) v += i8_offset(w, j0 + j, c->S + (r0 + r) * ng);
            c->y[(r0 + r) * c->ldy + j0 + j] = v;
        }
}

#include "i8_drive.h"
#include "attn512.h"
#include "panel_impl.h"

#endif
