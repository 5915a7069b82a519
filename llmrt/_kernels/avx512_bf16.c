/* qgemm_bf16 on AVX512-BF16 for the 512-bit tiers (dispatch.c installs it only when cpuid reports
 * AVX512_BF16).  Dequantized weights (d*u + m, two roundings as in the reference) and the
 * activations are converted with vcvtne2ps2bf16: nearest-even with quiet NaNs like lr_f32_to_bf16,
 * except that fp32 denormals become zero.  vdpbf16ps sums the exact bf16 products in fp32. */
#include "generic_ops.h"
#include "kernel_util.h"
#include "avx512_vec.h"

#define BF_R 4
#define BF_J 4

typedef struct {
    const lr_qmat *w;
    const uint16_t *x;   /* rows x k activations in bf16 */
    float *y;
    int64_t ldy;
} bf_ctx;

/* 32 floats (lo = elements 0-15, hi = 16-31) -> 32 bf16 in element order. */
LR_INLINE __m512bh bf_pack(__m512 lo, __m512 hi) { return _mm512_cvtne2ps_pbh(hi, lo); }

/* Weight row j dequantized (d*u + m, two roundings as in the reference) and converted to bf16. */
LR_INLINE void bf_expand_row(const lr_qmat *w, int64_t j, uint16_t *out, const int BITS) {
    const int64_t k = w->k, ng = k / w->group, bpg = w->group / LR_QK;
    const uint8_t *wq = w->qs + j * (k * BITS / 8);
    int64_t b = 0;
    for (int64_t g = 0; g < ng; g++) {
        const float dd = w->d[j * ng + g];
        const __m512 dv = _mm512_set1_ps(dd);
        const __m512 mv = _mm512_set1_ps(w->m ? w->m[j * ng + g] : (BITS == 4 ? -8.0f * dd : 0.0f));
        for (const int64_t e = b + bpg; b < e; b++) {
            __m512 u0, u1;
            if (BITS == 4) {
                u0 = lr_vq4(wq + b * (LR_QK / 2), 0);
                u1 = lr_vq4(wq + b * (LR_QK / 2), 1);
            } else {
                u0 = lr_vq8((const int8_t *)wq + b * LR_QK, 0);
                u1 = lr_vq8((const int8_t *)wq + b * LR_QK, 1);
            }
            _mm512_storeu_si512(out + b * LR_QK, (__m512i)bf_pack(_mm512_add_ps(_mm512_mul_ps(u0, dv), mv),
                                                                 _mm512_add_ps(_mm512_mul_ps(u1, dv), mv)));
        }
    }
}

/* One R x J tile over the whole k.  PACKED: the J weight rows are already in bf16 at wp (row
 * stride k); else they are dequantized and converted here. */
LR_INLINE void bf_tile(const bf_ctx *c, int64_t r0, int64_t j0, const int R, const int J, const int BITS,
                       const int PACKED, const uint16_t *wp) {
    const lr_qmat *w = c->w;
    const int64_t k = w->k, ng = k / w->group, bpg = w->group / LR_QK;
    const int64_t ws = k * BITS / 8;
    __m512 acc[BF_R][BF_J];
    const uint16_t *xr[BF_R];
    const uint8_t *wq[BF_J];
    const float *wd[BF_J], *wm[BF_J];
    LR_UNROLL for (int r = 0; r < R; r++) {
        xr[r] = c->x + (r0 + r) * k;
        LR_UNROLL for (int j = 0; j < J; j++) acc[r][j] = _mm512_setzero_ps();
    }
    LR_UNROLL for (int j = 0; j < J; j++) {
        wq[j] = w->qs + (j0 + j) * ws;
        wd[j] = w->d + (j0 + j) * ng;
        wm[j] = w->m ? w->m + (j0 + j) * ng : NULL;
    }
    int64_t b = 0;
    for (int64_t g = 0; g < ng; g++) {
        __m512 dv[BF_J], mv[BF_J];
        if (!PACKED)
            LR_UNROLL for (int j = 0; j < J; j++) {
                const float dd = wd[j][g];
                dv[j] = _mm512_set1_ps(dd);
                mv[j] = _mm512_set1_ps(wm[j] ? wm[j][g] : (BITS == 4 ? -8.0f * dd : 0.0f));
            }
        for (const int64_t e = b + bpg; b < e; b++) {
            __m512bh wb[BF_J];
            LR_UNROLL for (int j = 0; j < J; j++) {
                if (PACKED) {
                    wb[j] = (__m512bh)_mm512_loadu_si512(wp + j * k + b * LR_QK);
                    continue;
                }
                __m512 u0, u1;
                if (BITS == 4) {
                    u0 = lr_vq4(wq[j] + b * (LR_QK / 2), 0);
                    u1 = lr_vq4(wq[j] + b * (LR_QK / 2), 1);
                } else {
                    u0 = lr_vq8((const int8_t *)wq[j] + b * LR_QK, 0);
                    u1 = lr_vq8((const int8_t *)wq[j] + b * LR_QK, 1);
                }
                wb[j] = bf_pack(_mm512_add_ps(_mm512_mul_ps(u0, dv[j]), mv[j]),
                                _mm512_add_ps(_mm512_mul_ps(u1, dv[j]), mv[j]));
            }
            LR_UNROLL for (int r = 0; r < R; r++) {
                const __m512bh xb = (__m512bh)_mm512_loadu_si512(xr[r] + b * LR_QK);
                LR_UNROLL for (int j = 0; j < J; j++) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], wb[j], xb);
            }
        }
    }
    LR_UNROLL for (int r = 0; r < R; r++)
        LR_UNROLL for (int j = 0; j < J; j++) c->y[(r0 + r) * c->ldy + j0 + j] = _mm512_reduce_add_ps(acc[r][j]);
}

/* Rows [r0, r1) x weight rows [j0, j1).  With more rows than one tile, each BF_J weight rows are
 * converted to bf16 once (wbuf) instead of once per row tile. */
LR_INLINE void bf_span(const bf_ctx *c, int64_t r0, int64_t r1, int64_t j0, int64_t j1, const int BITS) {
    const int64_t k = c->w->k;
    uint16_t *wbuf = r1 - r0 > BF_R ? (uint16_t *)malloc((size_t)(BF_J * k) * sizeof(uint16_t)) : NULL;
    int64_t j = j0;
    for (; j + BF_J <= j1; j += BF_J) {
        if (wbuf)
            for (int jj = 0; jj < BF_J; jj++) bf_expand_row(c->w, j + jj, wbuf + jj * k, BITS);
        for (int64_t r = r0; r < r1; r += BF_R) {
            if (wbuf) {
                switch (lr_min64(BF_R, r1 - r)) {
                case 1: bf_tile(c, r, j, 1, BF_J, BITS, 1, wbuf); break;
                case 2: bf_tile(c, r, j, 2, BF_J, BITS, 1, wbuf); break;
                case 3: bf_tile(c, r, j, 3, BF_J, BITS, 1, wbuf); break;
                default: bf_tile(c, r, j, 4, BF_J, BITS, 1, wbuf); break;
                }
            } else {
                switch (lr_min64(BF_R, r1 - r)) {
                case 1: bf_tile(c, r, j, 1, BF_J, BITS, 0, NULL); break;
                case 2: bf_tile(c, r, j, 2, BF_J, BITS, 0, NULL); break;
                case 3: bf_tile(c, r, j, 3, BF_J, BITS, 0, NULL); break;
                default: bf_tile(c, r, j, 4, BF_J, BITS, 0, NULL); break;
                }
            }
        }
    }
    for (; j < j1; j++)
        for (int64_t r = r0; r < r1; r++) bf_tile(c, r, j, 1, 1, BITS, 0, NULL);
    free(wbuf);
}

static void bf_span4(const bf_ctx *c, int64_t r0, int64_t r1, int64_t j0, int64_t j1) { bf_span(c, r0, r1, j0, j1, 4); }
static void bf_span8(const bf_ctx *c, int64_t r0, int64_t r1, int64_t j0, int64_t j1) { bf_span(c, r0, r1, j0, j1, 8); }

void lr_qgemm_bf16_avx512bf16(const lr_qmat *w, const float *x, int64_t ldx, int64_t rows,
                              float *y, int64_t ldy) {
    const int64_t n = w->n, k = w->k;
    uint16_t *xb = (uint16_t *)malloc((size_t)(rows * k + 1) * sizeof(uint16_t));
    if (!xb) {
        generic_qgemm_bf16(w, x, ldx, rows, y, ldy);
        return;
    }
    for (int64_t r = 0; r < rows; r++)   /* k is a multiple of 32 */
        for (int64_t i = 0; i < k; i += 32) {
            const float *p = x + r * ldx + i;
            _mm512_storeu_si512(xb + r * k + i, (__m512i)bf_pack(_mm512_loadu_ps(p), _mm512_loadu_ps(p + 16)));
        }
    const bf_ctx c = {w, xb, y, ldy};
    void (*span)(const bf_ctx *, int64_t, int64_t, int64_t, int64_t) = w->bits == 4 ? bf_span4 : bf_span8;
    const int64_t ntile = (n + BF_J - 1) / BF_J;
    const int64_t rc = lr_row_chunk(k * 2, BF_R);
    const int par = (double)n * (double)rows * (double)k >= (double)LR_PAR_MIN_WORK;
    (void)par;
    LR_OMP(parallel if (par))
    {
        int64_t t0, t1;
        lr_thread_range(ntile, &t0, &t1);
        const int64_t j0 = t0 * BF_J, j1 = lr_min64(t1 * BF_J, n);
        for (int64_t r = 0; r < rows; r += rc) span(&c, r, lr_min64(r + rc, rows), j0, j1);
    }
    free(xb);
}
