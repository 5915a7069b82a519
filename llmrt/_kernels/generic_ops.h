/* Portable C implementations of every kernel in the ABI.
 *
 * Included by each tier unit and compiled with that tier's -m flags, so the compiler
 * vectorizes the simple loops for the tier.  ref.c uses all of them as the scalar reference;
 * the SIMD tiers replace the hot ones (quantized GEMM) with intrinsics and keep the rest.
 * Everything here is `static`: each tier gets its own copy built for its ISA.
 */
#ifndef LLMRT_GENERIC_OPS_H
#define LLMRT_GENERIC_OPS_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "half.h"

#if defined(__F16C__)
#include <immintrin.h>
#endif

/* Tier units use only some of these. */
#if defined(__GNUC__) || defined(__clang__)
#define LR_GENERIC static __attribute__((unused))
#else
#define LR_GENERIC static
#endif

#if defined(_OPENMP)
#include <omp.h>
#define LR_PRAGMA(x) _Pragma(#x)
#define LR_OMP(x) LR_PRAGMA(omp x)
#else
#define LR_OMP(x)
#endif

static inline void generic_f16_row_to_f32(const uint16_t *src, float *dst, int64_t n) {
    int64_t i = 0;
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
#endif
    for (; i < n; i++) dst[i] = lr_f16_to_f32(src[i]);
}

static inline float generic_dot_f32(const float *a, const float *b, int64_t n) {
    float acc = 0.0f;
    LR_OMP(simd reduction(+:acc))
    for (int64_t i = 0; i < n; i++) acc += a[i] * b[i];
    return acc;
}

/* ---- activation quantization ---- */
LR_GENERIC void generic_quantize_act(const float *x, int64_t ldx, int64_t rows, int64_t k,
                                 int8_t *q, float *d, int32_t *sum) {
    const int64_t nb = k / LR_QK;
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * ldx;
        for (int64_t b = 0; b < nb; b++) {
            const float *xb = xr + b * LR_QK;
            float amax = 0.0f;
            for (int i = 0; i < LR_QK; i++) {
                float a = fabsf(xb[i]);
                amax = a > amax ? a : amax;
            }
            const float db = amax / 127.0f;
            const float id = db > 0.0f ? 1.0f / db : 0.0f;
            int8_t *qb = q + r * k + b * LR_QK;
            int32_t s = 0;
            for (int i = 0; i < LR_QK; i++) {
                float v = nearbyintf(xb[i] * id);
                v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
                qb[i] = (int8_t)v;
                s += qb[i];
            }
            d[r * nb + b] = db;
            sum[r * nb + b] = s;
        }
    }
}

/* ---- dequantize one row of a quantized matrix into k floats ---- */
static inline void generic_dequant_row(const lr_qmat *w, int64_t j, float *out) {
    const int64_t k = w->k;
    const int64_t ng = k / w->group;
    const float *dj = w->d + j * ng;
    const float *mj = w->m ? w->m + j * ng : NULL;
    if (w->bits == 4) {
        const uint8_t *row = w->qs + j * (k / 2);
        for (int64_t b = 0; b < k / LR_QK; b++) {
            const int64_t g = (b * LR_QK) / w->group;
            const float dd = dj[g];
            const float mm = mj ? mj[g] : -8.0f * dd;
            const uint8_t *qb = row + b * (LR_QK / 2);
            float *ob = out + b * LR_QK;
            for (int i = 0; i < LR_QK / 2; i++) {
                ob[i] = dd * (float)(qb[i] & 0x0f) + mm;
                ob[i + LR_QK / 2] = dd * (float)(qb[i] >> 4) + mm;
            }
        }
    } else {
        const int8_t *row = (const int8_t *)w->qs + j * k;
        for (int64_t g = 0; g < ng; g++) {
            const float dd = dj[g];
            const float mm = mj ? mj[g] : 0.0f;
            for (int64_t i = g * w->group; i < (g + 1) * w->group; i++) out[i] = dd * (float)row[i] + mm;
        }
    }
}

/* ---- int8 compute over quantized weights (scalar; SIMD tiers replace this) ---- */
LR_GENERIC void generic_qgemm_i8(const lr_qmat *w, const lr_qact *a, float *y, int64_t ldy) {
    const int64_t n = w->n, k = w->k, nb = k / LR_QK, ng = k / w->group;
    const int64_t bpg = w->group / LR_QK;
    LR_OMP(parallel for schedule(static))
    for (int64_t j = 0; j < n; j++) {
        const float *dj = w->d + j * ng;
        const float *mj = w->m ? w->m + j * ng : NULL;
        for (int64_t r = 0; r < a->rows; r++) {
            const int8_t *qa = a->q + r * k;
            const float *da = a->d + r * nb;
            const int32_t *sa = a->sum + r * nb;
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                const int64_t g = b / bpg;
                int32_t isum = 0;
                float off;
                if (w->bits == 4) {
                    const uint8_t *qb = w->qs + j * (k / 2) + b * (LR_QK / 2);
                    const int8_t *xb = qa + b * LR_QK;
                    for (int i = 0; i < LR_QK / 2; i++)
                        isum += (int32_t)(qb[i] & 0x0f) * xb[i] + (int32_t)(qb[i] >> 4) * xb[i + LR_QK / 2];
                    off = mj ? mj[g] : -8.0f * dj[g];
                } else {
                    const int8_t *qb = (const int8_t *)w->qs + j * k + b * LR_QK;
                    const int8_t *xb = qa + b * LR_QK;
                    for (int i = 0; i < LR_QK; i++) isum += (int32_t)qb[i] * xb[i];
                    off = mj ? mj[g] : 0.0f;
                }
                acc += da[b] * (dj[g] * (float)isum + off * (float)sa[b]);
            }
            y[r * ldy + j] = acc;
        }
    }
}

/* ---- fp32 / bf16 compute over quantized weights: dequantize a row, dot with every x row ---- */
LR_GENERIC void generic_qgemm_float(const lr_qmat *w, const float *x, int64_t ldx, int64_t rows,
                                float *y, int64_t ldy, int round_bf16) {
    const int64_t n = w->n, k = w->k;
    const float *xs = x;
    int64_t lds = ldx;
    float *xr = NULL;
    if (round_bf16) {   /* round activations once, not once per weight row */
        xr = (float *)malloc((size_t)(rows * k) * sizeof(float));
        if (!xr) return;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t i = 0; i < k; i++) xr[r * k + i] = lr_round_bf16(x[r * ldx + i]);
        xs = xr;
        lds = k;
    }
    LR_OMP(parallel)
    {
        float *wrow = (float *)malloc((size_t)k * sizeof(float));
        if (wrow) {
            LR_OMP(for schedule(static))
            for (int64_t j = 0; j < n; j++) {
                generic_dequant_row(w, j, wrow);
                if (round_bf16)
                    for (int64_t i = 0; i < k; i++) wrow[i] = lr_round_bf16(wrow[i]);
                for (int64_t r = 0; r < rows; r++) y[r * ldy + j] = generic_dot_f32(wrow, xs + r * lds, k);
            }
            free(wrow);
        }
    }
    free(xr);
}

LR_GENERIC void generic_qgemm_f32(const lr_qmat *w, const float *x, int64_t ldx, int64_t rows,
                              float *y, int64_t ldy) {
    generic_qgemm_float(w, x, ldx, rows, y, ldy, 0);
}

LR_GENERIC void generic_qgemm_bf16(const lr_qmat *w, const float *x, int64_t ldx, int64_t rows,
                               float *y, int64_t ldy) {
    generic_qgemm_float(w, x, ldx, rows, y, ldy, 1);
}

/* ---- dense weights ---- */
LR_GENERIC void generic_gemm_f32(const float *w, int64_t n, int64_t k, const float *x, int64_t ldx,
                             int64_t rows, float *y, int64_t ldy) {
    LR_OMP(parallel for schedule(static))
    for (int64_t j = 0; j < n; j++)
        for (int64_t r = 0; r < rows; r++) y[r * ldy + j] = generic_dot_f32(w + j * k, x + r * ldx, k);
}

LR_GENERIC void generic_gemm_f16(const uint16_t *w, int64_t n, int64_t k, const float *x, int64_t ldx,
                             int64_t rows, float *y, int64_t ldy) {
    LR_OMP(parallel)
    {
        float *wrow = (float *)malloc((size_t)k * sizeof(float));
        if (wrow) {
            LR_OMP(for schedule(static))
            for (int64_t j = 0; j < n; j++) {
                generic_f16_row_to_f32(w + j * k, wrow, k);
                for (int64_t r = 0; r < rows; r++) y[r * ldy + j] = generic_dot_f32(wrow, x + r * ldx, k);
            }
            free(wrow);
        }
    }
}

/* ---- attention over the KV cache ---- */
LR_GENERIC void generic_attention(const lr_attn_args *a) {
    const int64_t pairs = a->n_tok * a->n_head;
    const int32_t hd = a->head_dim;
    const int32_t group = a->n_head / a->n_kv_head;
    LR_OMP(parallel)
    {
        /* per thread: scores over the whole context, one converted K/V row, the output row */
        float *scores = (float *)malloc((size_t)(a->ctx + 2 * hd) * sizeof(float));
        if (scores) {
            float *row = scores + a->ctx;
            float *acc = row + hd;
            LR_OMP(for schedule(dynamic, 1))
            for (int64_t p = 0; p < pairs; p++) {
                const int64_t t = p / a->n_head;
                const int32_t h = (int32_t)(p % a->n_head);
                const int32_t kvh = h / group;
                const int64_t pos = a->pos0 + t;
                int64_t lo = a->kv_begin;
                if (a->window > 0 && pos - a->window + 1 > lo) lo = pos - a->window + 1;
                const float *qh = a->q + t * a->q_stride + (int64_t)h * hd;
                float *oh = a->out + t * a->out_stride + (int64_t)h * hd;
                const int64_t base = (int64_t)kvh * a->ctx * hd;
                float mx = -INFINITY;
                for (int64_t jpos = lo; jpos <= pos; jpos++) {
                    const float *kr;
                    if (a->kv_f16) {
                        generic_f16_row_to_f32((const uint16_t *)a->k_cache + base + jpos * hd, row, hd);
                        kr = row;
                    } else {
                        kr = (const float *)a->k_cache + base + jpos * hd;
                    }
                    float s = a->scale * generic_dot_f32(qh, kr, hd);
                    if (a->alibi_slopes) s += a->alibi_slopes[h] * (float)(jpos - pos);
                    scores[jpos] = s;
                    mx = s > mx ? s : mx;
                }
                float denom = 0.0f;
                for (int64_t jpos = lo; jpos <= pos; jpos++) {
                    scores[jpos] = expf(scores[jpos] - mx);
                    denom += scores[jpos];
                }
                const float inv = denom > 0.0f ? 1.0f / denom : 0.0f;
                for (int32_t i = 0; i < hd; i++) acc[i] = 0.0f;
                for (int64_t jpos = lo; jpos <= pos; jpos++) {
                    const float *vr;
                    if (a->kv_f16) {
                        generic_f16_row_to_f32((const uint16_t *)a->v_cache + base + jpos * hd, row, hd);
                        vr = row;
                    } else {
                        vr = (const float *)a->v_cache + base + jpos * hd;
                    }
                    const float pj = scores[jpos] * inv;
                    LR_OMP(simd)
                    for (int32_t i = 0; i < hd; i++) acc[i] += pj * vr[i];
                }
                for (int32_t i = 0; i < hd; i++) oh[i] = acc[i];
            }
            free(scores);
        }
    }
}

/* ---- gated SiLU ---- */
LR_GENERIC void generic_silu_mul(const float *gu, int64_t ld, int64_t rows, int64_t ff, float *out, int64_t ldo) {
    LR_OMP(parallel for schedule(static) if (rows * ff >= (1 << 16)))
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < ff; i++) {
            const float g = gu[r * ld + i];
            out[r * ldo + i] = g / (1.0f + expf(-g)) * gu[r * ld + ff + i];
        }
}

/* ---- plain MLP activations ---- */
LR_GENERIC void generic_activate(float *x, int64_t n, int kind) {
    LR_OMP(parallel for schedule(static) if (n >= (1 << 16)))
    for (int64_t i = 0; i < n; i++) {
        const float v = x[i];
        switch (kind) {
        case LR_ACT_SILU: x[i] = v / (1.0f + expf(-v)); break;
        /* 1 + erf(z) = erfc(-z) and 0.5 (1 + tanh u) = 1 / (1 + e^(-2u)): no cancellation below 0 */
        case LR_ACT_GELU: x[i] = 0.5f * v * erfcf(-v * 0.70710678118654752f); break;
        case LR_ACT_GELU_TANH:
            x[i] = v / (1.0f + expf(-2.0f * 0.79788456080286536f * (v + 0.044715f * v * v * v))); break;
        default: x[i] = v > 0.0f ? v : 0.0f; break;
        }
    }
}

#endif
