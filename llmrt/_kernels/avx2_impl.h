/* 256-bit kernels, included by avx2.c (LR_VNNI 0: maddubs + madd) and avx_vnni.c (LR_VNNI 1: dpbusd).
 * Compiled with the including tier's flags; everything is static to that unit. */
#ifndef LLMRT_AVX2_IMPL_H
#define LLMRT_AVX2_IMPL_H

#include <immintrin.h>

#include "generic_ops.h"
#include "kernel_util.h"

#ifndef LR_VNNI
#define LR_VNNI 0
#endif

#if LR_VNNI
#if LR_VNNI_EVEX
/* avx_vnni_evex.c: the avx_vnni tier's code for a CPU with AVX512-VNNI and AVX512-VL but no AVX-VNNI
 * (AMD Zen 4): the same instruction, EVEX-encoded, limited to the 16 ymm registers the VEX code has,
 * so everything else (register use, spills, scheduling) is the avx_vnni tier's own. */
static inline __m256i lr_dpbusd256(__m256i acc, __m256i u, __m256i s) {
    __asm__("%{evex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(u), "x"(s));
    return acc;
}
#else
static inline __m256i lr_dpbusd256(__m256i acc, __m256i u, __m256i s) { return _mm256_dpbusd_avx_epi32(acc, u, s); }
#endif
#endif

/* ---------------------------------------------------------------- vector helpers */
typedef __m256 lr_vf;
#define LR_VN 8
#define FT_J 2

/* The first n (< 8) lanes, for masked loads and stores of a partial vector: only there (a masked 256-bit
 * store costs about ten cycles on AMD Zen 2 and 3). */
static inline __m256i lr_lanes_below(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline lr_vf lr_vzero(void) { return _mm256_setzero_ps(); }
static inline lr_vf lr_vload(const float *p) { return _mm256_loadu_ps(p); }
static inline void lr_vstore(float *p, lr_vf v) { _mm256_storeu_ps(p, v); }
static inline lr_vf lr_vset1(float f) { return _mm256_set1_ps(f); }
static inline lr_vf lr_vfma(lr_vf a, lr_vf b, lr_vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline lr_vf lr_vmul(lr_vf a, lr_vf b) { return _mm256_mul_ps(a, b); }
static inline lr_vf lr_vadd(lr_vf a, lr_vf b) { return _mm256_add_ps(a, b); }
static inline lr_vf lr_vload_f16(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

static inline float lr_vhsum(lr_vf v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Same rounding as lr_f32_to_bf16 (nearest-even, NaN kept quiet), result widened back to fp32. */
static inline lr_vf lr_vround_bf16(lr_vf v) {
    const __m256i x = _mm256_castps_si256(v);
    const __m256i hi = _mm256_set1_epi32((int)0xffff0000u);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_and_si256(_mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7fff)), lsb), hi);
    const __m256i qnan = _mm256_or_si256(_mm256_and_si256(x, hi), _mm256_set1_epi32(0x00400000));
    return _mm256_blendv_ps(_mm256_castsi256_ps(r), _mm256_castsi256_ps(qnan), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
}

/* Chunk ch (8 elements) of a 32-element int4 block: bytes 0-15 hold elements 0-15 (low nibbles)
 * and 16-31 (high nibbles). */
static inline lr_vf lr_vq4(const uint8_t *qb, int ch) {
    const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qb + 8 * (ch & 1))));
    return _mm256_cvtepi32_ps(ch < 2 ? _mm256_and_si256(v, _mm256_set1_epi32(15)) : _mm256_srli_epi32(v, 4));
}
static inline lr_vf lr_vq8(const int8_t *qb, int ch) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(qb + 8 * ch))));
}

#include "float_tiles.h"

/* ---------------------------------------------------------------- activation quantization */
static void x86_quantize_act(const float *x, int64_t ldx, int64_t rows, int64_t k,
                             int8_t *q, float *d, int32_t *sum) {
    const int64_t nb = k / LR_QK;
    LR_OMP(parallel for schedule(static) if (rows * k >= LR_PAR_MIN_WORK))
    for (int64_t r = 0; r < rows; r++) {
        const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
        const __m256i lim = _mm256_set1_epi32(127), nlim = _mm256_set1_epi32(-127);
        const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (int64_t b = 0; b < nb; b++) {
            const float *xb = x + r * ldx + b * LR_QK;
            __m256 v[4];
            for (int i = 0; i < 4; i++) v[i] = _mm256_loadu_ps(xb + 8 * i);
            __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], absm), _mm256_and_ps(v[1], absm)),
                                     _mm256_max_ps(_mm256_and_ps(v[2], absm), _mm256_and_ps(v[3], absm)));
            __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            /* same scalar ops as the reference, so d and q are bit-identical to it */
            const float db = _mm_cvtss_f32(m4) / 127.0f;
            const __m256 id = _mm256_set1_ps(db > 0.0f ? 1.0f / db : 0.0f);
            __m256i iv[4];
            __m256i s = _mm256_setzero_si256();
            for (int i = 0; i < 4; i++) {
                const __m256 t = _mm256_round_ps(_mm256_mul_ps(v[i], id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                iv[i] = _mm256_max_epi32(_mm256_min_epi32(_mm256_cvttps_epi32(t), lim), nlim);
                s = _mm256_add_epi32(s, iv[i]);
            }
            /* packs interleave 128-bit lanes; the permute restores element order */
            const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(iv[0], iv[1]), _mm256_packs_epi32(iv[2], iv[3]));
            _mm256_storeu_si256((__m256i *)(q + r * k + b * LR_QK), _mm256_permutevar8x32_epi32(p, perm));
            __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
            d[r * nb + b] = db;
            sum[r * nb + b] = _mm_cvtsi128_si32(s4);
        }
    }
}

/* ---------------------------------------------------------------- int8 compute
 * Integer dots of u8 x s8 in int32 lanes, converted and scaled by d_a * d_w (a vector holding each
 * lane's block scale) into float accumulators; one horizontal sum per output at the end.
 *   int4 weights: 2 blocks (32 bytes) per step.  The low nibbles of both blocks (elements 0-15 of
 *         each) and the high nibbles (16-31) are the u8 operands of two dots against activations
 *         re-laid out once per call to match (q4_pack_act); lanes 0-3 block b, 4-7 block b+1.
 *         The -8 / m offset goes through the activation block sums (i8_common.h).
 *   int8 weights: one block per step.  maddubs: |w| x sign(x, w).  dpbusd: (w + 128) x x with the
 *         accumulator started at -128 * (lane sums of x), exact in int32. */
#define I8_R 4
#define I8_J 2
#define LR_Q4_SB 2
#define LR_Q4_STEP_BYTES 96   /* per activation row and step: 32 B low halves, 32 B high halves, 8 scales */

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

/* Two u8 x s8 operand pairs (int4 values: the int16 sums of maddubs cannot overflow). */
static inline __m256i q4_dot2(__m256i u0, __m256i s0, __m256i u1, __m256i s1) {
#if LR_VNNI
    return lr_dpbusd256(lr_dpbusd256(_mm256_setzero_si256(), u0, s0), u1, s1);
#else
    return _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(u0, s0), _mm256_maddubs_epi16(u1, s1)),
                             _mm256_set1_epi16(1));
#endif
}

static void q4_pack_act(const lr_qact *a, int64_t ns, uint8_t *buf) {
    const int64_t k = a->k, nb = k / LR_QK;
    for (int64_t r = 0; r < a->rows; r++)
        for (int64_t s = 0; s < ns; s++) {
            const int64_t b = s * LR_Q4_SB;
            const int two = b + 1 < nb;
            const int8_t *x = a->q + r * k + b * LR_QK;
            uint8_t *o = buf + (r * ns + s) * LR_Q4_STEP_BYTES;
            const __m256i u0 = _mm256_loadu_si256((const __m256i *)x);
            const __m256i u1 = two ? _mm256_loadu_si256((const __m256i *)(x + LR_QK)) : _mm256_setzero_si256();
            _mm256_storeu_si256((__m256i *)o, _mm256_permute2x128_si256(u0, u1, 0x20));
            _mm256_storeu_si256((__m256i *)(o + 32), _mm256_permute2x128_si256(u0, u1, 0x31));
            const float *d = a->d + r * nb + b;
            _mm256_storeu_ps((float *)(o + 64), _mm256_set_m128(_mm_set1_ps(two ? d[1] : 0.0f), _mm_set1_ps(d[0])));
        }
}

LR_INLINE void q4_tile(const i8_ctx *c, int64_t r0, int64_t j0, const int R, const int J, const int UNI) {
    const lr_qmat *w = c->w;
    const int64_t k = w->k, nb = k / LR_QK, ng = k / w->group, ns = c->ns;
    __m256 acc[I8_R][I8_J];
    const uint8_t *xp[I8_R];
    const uint8_t *wq[I8_J];
    const float *wd[I8_J];
    LR_UNROLL for (int r = 0; r < R; r++) {
        xp[r] = c->xbuf + (r0 + r) * ns * LR_Q4_STEP_BYTES;
        LR_UNROLL for (int j = 0; j < J; j++) acc[r][j] = _mm256_setzero_ps();
    }
    LR_UNROLL for (int j = 0; j < J; j++) {
        wq[j] = w->qs + (j0 + j) * (k / 2);
        wd[j] = w->d + (j0 + j) * ng;
    }
    const __m256i lo4 = _mm256_set1_epi8(0x0f);
    for (int64_t s = 0; s < ns; s++) {
        const q4_step *st = c->steps + s;
        const int tail = s == ns - 1 && (nb % LR_Q4_SB);
        __m256i lo[I8_J], hi[I8_J];
        __m256 dw[I8_J];
        LR_UNROLL for (int j = 0; j < J; j++) {
            const uint8_t *p = wq[j] + s * (LR_Q4_SB * LR_QK / 2);
            const __m256i v = tail ? _mm256_inserti128_si256(_mm256_setzero_si256(),
                                                             _mm_loadu_si128((const __m128i *)p), 0)
                                   : _mm256_loadu_si256((const __m256i *)p);
            lo[j] = _mm256_and_si256(v, lo4);
            hi[j] = _mm256_and_si256(_mm256_srli_epi16(v, 4), lo4);
            const float *dg = wd[j] + st->g0;
            dw[j] = UNI ? _mm256_set1_ps(dg[0])
                        : _mm256_set_m128(_mm_set1_ps(dg[st->idx[4]]), _mm_set1_ps(dg[0]));
        }
        LR_UNROLL for (int r = 0; r < R; r++) {
            const uint8_t *xs = xp[r] + s * LR_Q4_STEP_BYTES;
            const __m256i xl = _mm256_loadu_si256((const __m256i *)xs);
            const __m256i xh = _mm256_loadu_si256((const __m256i *)(xs + 32));
            const __m256 da = _mm256_loadu_ps((const float *)(xs + 64));
            LR_UNROLL for (int j = 0; j < J; j++) {
                const __m256i p = q4_dot2(lo[j], xl, hi[j], xh);
                acc[r][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(da, dw[j]), acc[r][j]);
            }
        }
    }
    LR_UNROLL for (int r = 0; r < R; r++)
        LR_UNROLL for (int j = 0; j < J; j++)
            c->y[(r0 + r) * c->ldy + j0 + j] = lr_vhsum(acc[r][j]) + i8_offset(w, j0 + j, c->S + (r0 + r) * ng);
}

LR_INLINE void i8_tile(const i8_ctx *c, int64_t r0, int64_t j0, const int R, const int J) {
    const lr_qmat *w = c->w;
    const lr_qact *a = c->a;
    const int64_t k = w->k, nb = k / LR_QK, ng = k / w->group, bpg = w->group / LR_QK;
    __m256 acc[I8_R][I8_J];
    const int8_t *xq[I8_R];
    const float *xd[I8_R];
    const int8_t *wq[I8_J];
    const float *wd[I8_J];
    LR_UNROLL for (int r = 0; r < R; r++) {
        xq[r] = a->q + (r0 + r) * k;
        xd[r] = a->d + (r0 + r) * nb;
        LR_UNROLL for (int j = 0; j < J; j++) acc[r][j] = _mm256_setzero_ps();
    }
    LR_UNROLL for (int j = 0; j < J; j++) {
        wq[j] = (const int8_t *)w->qs + (j0 + j) * k;
        wd[j] = w->d + (j0 + j) * ng;
    }
#if LR_VNNI
    const __m256i zero = _mm256_setzero_si256();
    const __m256i x80 = _mm256_set1_epi8((char)0x80);
#else
    const __m256i ones = _mm256_set1_epi16(1);
#endif
    int64_t b = 0;
    for (int64_t g = 0; g < ng; g++) {
        __m256 dw[I8_J];
        LR_UNROLL for (int j = 0; j < J; j++) dw[j] = _mm256_set1_ps(wd[j][g]);
        for (const int64_t e = b + bpg; b < e; b++) {
            __m256i xv[I8_R];
            __m256 da[I8_R];
#if LR_VNNI
            __m256i a0[I8_R];
#endif
            LR_UNROLL for (int r = 0; r < R; r++) {
                xv[r] = _mm256_loadu_si256((const __m256i *)(xq[r] + b * LR_QK));
                da[r] = _mm256_broadcast_ss(xd[r] + b);
#if LR_VNNI
                a0[r] = _mm256_sub_epi32(zero, lr_dpbusd256(zero, x80, xv[r]));
#endif
            }
            LR_UNROLL for (int j = 0; j < J; j++) {
                const __m256i wv = _mm256_loadu_si256((const __m256i *)(wq[j] + b * LR_QK));
#if LR_VNNI
                const __m256i wu = _mm256_xor_si256(wv, x80);
#else
                const __m256i wu = _mm256_abs_epi8(wv);
#endif
                LR_UNROLL for (int r = 0; r < R; r++) {
#if LR_VNNI
                    const __m256i p = lr_dpbusd256(a0[r], wu, xv[r]);
#else
                    const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(wu, _mm256_sign_epi8(xv[r], wv)), ones);
#endif
                    acc[r][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(da[r], dw[j]), acc[r][j]);
                }
            }
        }
    }
    LR_UNROLL for (int r = 0; r < R; r++)
        LR_UNROLL for (int j = 0; j < J; j++) {
            float v = lr_vhsum(acc[r][j]);
            if (c->S) v += i8_offset(w, j0 + j, c->S + (r0 + r) * ng);
            c->y[(r0 + r) * c->ldy + j0 + j] = v;
        }
}

#include "i8_drive.h"
#include "panel256.h"
#include "attn256.h"

/* The kernel table of a unit built from this header (avx2.c, avx_vnni.c, avx_vnni_evex.c). */
#define LR_AVX2_IMPL_TABLE(symbol, tier)                                                                  \
    const lr_kernels symbol = {tier,          x86_quantize_act, x86_qgemm_i8,  x86_qgemm_i8_panels,      \
                               ft_qgemm_f32,  ft_qgemm_bf16,    ft_gemm_f32,   ft_gemm_f16,              \
                               x86_attention, x86_silu_mul,     x86_activate};

#endif
