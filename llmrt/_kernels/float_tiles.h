/* Float-compute GEMMs (Y = X W^T) shared by the AVX2 and AVX512 tier units.
 *
 * The includer supplies the vector abstraction for its width:
 *   lr_vf, LR_VN (lanes), FT_J (weight rows per tile), lr_vzero, lr_vload, lr_vset1, lr_vfma(a,b,c)=a*b+c,
 *   lr_vmul, lr_vadd, lr_vhsum, lr_vload_f16, lr_vround_bf16, lr_vstore,
 *   lr_vq4(qb, ch) / lr_vq8(qb, ch): chunk ch (LR_VN elements) of a 32-element block as floats.
 * A tile holds FT_R x FT_J accumulators: FT_R activation rows against FT_J weight rows, so every
 * dequantized / converted weight vector is used FT_R times straight from a register and every
 * activation vector FT_J times.
 */
#ifndef LLMRT_FLOAT_TILES_H
#define LLMRT_FLOAT_TILES_H

#include "generic_ops.h"
#include "kernel_util.h"

#define FT_R 4

enum { FT_F32 = 0, FT_F16 = 1, FT_Q4 = 2, FT_Q8 = 3 };

typedef struct {
    const float *wf;      /* FT_F32 */
    const uint16_t *wh;   /* FT_F16 */
    const lr_qmat *q;     /* FT_Q4 / FT_Q8 */
    int64_t n, k;
    const float *x;
    int64_t ldx;
    float *y;
    int64_t ldy;
} ft_ctx;

/* One R x J tile over the whole k.  RND: round dequantized weights to bf16 (x is pre-rounded);
 * the dequantization is then d*u + m with two roundings, exactly like generic_dequant_row. */
LR_INLINE void ft_tile(const ft_ctx *c, int64_t r0, int64_t j0, const int R, const int J,
                       const int SRC, const int RND) {
    lr_vf acc[FT_R][FT_J];
    float tl[FT_R][FT_J];
    const float *xr[FT_R];
    const int64_t k = c->k;
    LR_UNROLL for (int r = 0; r < R; r++) {
        xr[r] = c->x + (r0 + r) * c->ldx;
        LR_UNROLL for (int j = 0; j < J; j++) { acc[r][j] = lr_vzero(); tl[r][j] = 0.0f; }
    }
    if (SRC == FT_F32 || SRC == FT_F16) {
        const float *wf[FT_J];
        const uint16_t *wh[FT_J];
        LR_UNROLL for (int j = 0; j < J; j++) {
            if (SRC == FT_F32) wf[j] = c->wf + (j0 + j) * k;
            else wh[j] = c->wh + (j0 + j) * k;
        }
        int64_t i = 0;
        for (; i + LR_VN <= k; i += LR_VN) {
            lr_vf wv[FT_J];
            LR_UNROLL for (int j = 0; j < J; j++) wv[j] = SRC == FT_F32 ? lr_vload(wf[j] + i) : lr_vload_f16(wh[j] + i);
            LR_UNROLL for (int r = 0; r < R; r++) {
                const lr_vf xv = lr_vload(xr[r] + i);
                LR_UNROLL for (int j = 0; j < J; j++) acc[r][j] = lr_vfma(wv[j], xv, acc[r][j]);
            }
        }
        for (; i < k; i++)   /* k of a dense matrix need not be a multiple of the width */
            LR_UNROLL for (int j = 0; j < J; j++) {
                const float wv = SRC == FT_F32 ? wf[j][i] : lr_f16_to_f32(wh[j][i]);
                LR_UNROLL for (int r = 0; r < R; r++) tl[r][j] += wv * xr[r][i];
            }
    } else {
        const lr_qmat *q = c->q;
        const int64_t ng = k / q->group, bpg = q->group / LR_QK;
        const int64_t ws = SRC == FT_Q4 ? k / 2 : k;
        const uint8_t *wq[FT_J];
        const float *wd[FT_J], *wm[FT_J];
        LR_UNROLL for (int j = 0; j < J; j++) {
            wq[j] = q->qs + (j0 + j) * ws;
            wd[j] = q->d + (j0 + j) * ng;
            wm[j] = q->m ? q->m + (j0 + j) * ng : NULL;
        }
        int64_t b = 0;
        for (int64_t g = 0; g < ng; g++) {
            lr_vf dv[FT_J], mv[FT_J];
            LR_UNROLL for (int j = 0; j < J; j++) {
                const float dd = wd[j][g];
                dv[j] = lr_vset1(dd);
                mv[j] = lr_vset1(wm[j] ? wm[j][g] : (SRC == FT_Q4 ? -8.0f * dd : 0.0f));
            }
            for (const int64_t e = b + bpg; b < e; b++) {
                LR_UNROLL for (int ch = 0; ch < LR_QK / LR_VN; ch++) {
                    lr_vf wv[FT_J];
                    LR_UNROLL for (int j = 0; j < J; j++) {
                        const lr_vf u = SRC == FT_Q4 ? lr_vq4(wq[j] + b * (LR_QK / 2), ch)
                                                     : lr_vq8((const int8_t *)wq[j] + b * LR_QK, ch);
                        wv[j] = RND ? lr_vround_bf16(lr_vadd(lr_vmul(u, dv[j]), mv[j]))
                                    : lr_vfma(u, dv[j], mv[j]);
                    }
                    LR_UNROLL for (int r = 0; r < R; r++) {
                        const lr_vf xv = lr_vload(xr[r] + b * LR_QK + ch * LR_VN);
                        LR_UNROLL for (int j = 0; j < J; j++) acc[r][j] = lr_vfma(wv[j], xv, acc[r][j]);
                    }
                }
            }
        }
    }
    LR_UNROLL for (int r = 0; r < R; r++)
        LR_UNROLL for (int j = 0; j < J; j++) c->y[(r0 + r) * c->ldy + j0 + j] = lr_vhsum(acc[r][j]) + tl[r][j];
}

/* Weight row j as fp32 (dequantized / converted; RND: rounded to bf16) into out[0..k). */
LR_INLINE void ft_expand_row(const ft_ctx *c, int64_t j, float *out, const int SRC, const int RND) {
    const int64_t k = c->k;
    if (SRC == FT_F16) {
        generic_f16_row_to_f32(c->wh + j * k, out, k);
        return;
    }
    const lr_qmat *q = c->q;
    const int64_t ng = k / q->group, bpg = q->group / LR_QK;
    const uint8_t *wq = q->qs + j * (SRC == FT_Q4 ? k / 2 : k);
    int64_t b = 0;
    for (int64_t g = 0; g < ng; g++) {
        const float dd = q->d[j * ng + g];
        const lr_vf dv = lr_vset1(dd);
        const lr_vf mv = lr_vset1(q->m ? q->m[j * ng + g] : (SRC == FT_Q4 ? -8.0f * dd : 0.0f));
        for (const int64_t e = b + bpg; b < e; b++)
            LR_UNROLL for (int ch = 0; ch < LR_QK / LR_VN; ch++) {
                const lr_vf u = SRC == FT_Q4 ? lr_vq4(wq + b * (LR_QK / 2), ch) : lr_vq8((const int8_t *)wq + b * LR_QK, ch);
                lr_vstore(out + b * LR_QK + ch * LR_VN,
                          RND ? lr_vround_bf16(lr_vadd(lr_vmul(u, dv), mv)) : lr_vfma(u, dv, mv));
            }
    }
}

/* Rows [r0, r1) x weight rows [j0, j1): full FT_J-wide tiles, then single leftover weight rows.
 * With more rows than one tile, each FT_J weight rows are expanded to fp32 once into wbuf (FT_J x k)
 * and the tiles read them from there instead of expanding them again per row tile. */
LR_INLINE void ft_span(const ft_ctx *c, int64_t r0, int64_t r1, int64_t j0, int64_t j1,
                       const int SRC, const int RND) {
    const int64_t k = c->k;
    float *wbuf = NULL;
    if (SRC != FT_F32 && r1 - r0 > FT_R) wbuf = (float *)malloc((size_t)(FT_J * k) * sizeof(float));
    int64_t j = j0;
    for (; j + FT_J <= j1; j += FT_J) {
        if (wbuf) {
            ft_ctx p = *c;
            p.wf = wbuf;
            p.y = c->y + j;
            for (int jj = 0; jj < FT_J; jj++) ft_expand_row(c, j + jj, wbuf + jj * k, SRC, RND);
            for (int64_t r = r0; r < r1; r += FT_R) {
                switch (lr_min64(FT_R, r1 - r)) {
                case 1: ft_tile(&p, r, 0, 1, FT_J, FT_F32, 0); break;
                case 2: ft_tile(&p, r, 0, 2, FT_J, FT_F32, 0); break;
                case 3: ft_tile(&p, r, 0, 3, FT_J, FT_F32, 0); break;
                default: ft_tile(&p, r, 0, 4, FT_J, FT_F32, 0); break;
                }
            }
            continue;
        }
        for (int64_t r = r0; r < r1; r += FT_R) {
            switch (lr_min64(FT_R, r1 - r)) {
            case 1: ft_tile(c, r, j, 1, FT_J, SRC, RND); break;
            case 2: ft_tile(c, r, j, 2, FT_J, SRC, RND); break;
            case 3: ft_tile(c, r, j, 3, FT_J, SRC, RND); break;
            default: ft_tile(c, r, j, 4, FT_J, SRC, RND); break;
            }
        }
    }
    for (; j < j1; j++)
        for (int64_t r = r0; r < r1; r++) ft_tile(c, r, j, 1, 1, SRC, RND);
    free(wbuf);
}

typedef void (*ft_span_fn)(const ft_ctx *c, int64_t r0, int64_t r1, int64_t j0, int64_t j1);

#define FT_SPAN(NAME, SRC, RND) \
    static void NAME(const ft_ctx *c, int64_t r0, int64_t r1, int64_t j0, int64_t j1) { \
        ft_span(c, r0, r1, j0, j1, SRC, RND); \
    }
FT_SPAN(ft_span_f32, FT_F32, 0)
FT_SPAN(ft_span_f16, FT_F16, 0)
FT_SPAN(ft_span_q4, FT_Q4, 0)
FT_SPAN(ft_span_q8, FT_Q8, 0)
FT_SPAN(ft_span_q4_bf16, FT_Q4, 1)
FT_SPAN(ft_span_q8_bf16, FT_Q8, 1)

/* Threads split the weight rows (each thread's weights are read once per row chunk). */
static void ft_drive(const ft_ctx *c, int64_t rows, ft_span_fn span) {
    const int64_t n = c->n, ntile = (n + FT_J - 1) / FT_J;
    const int64_t rc = lr_row_chunk(c->k * (int64_t)sizeof(float), FT_R);
    const int par = (double)n * (double)rows * (double)c->k >= (double)LR_PAR_MIN_WORK;
    (void)par;
    LR_OMP(parallel if (par))
    {
        int64_t t0, t1;
        lr_thread_range(ntile, &t0, &t1);
        const int64_t j0 = t0 * FT_J, j1 = lr_min64(t1 * FT_J, n);
        for (int64_t r = 0; r < rows; r += rc) span(c, r, lr_min64(r + rc, rows), j0, j1);
    }
}

static void ft_gemm_f32(const float *w, int64_t n, int64_t k, const float *x, int64_t ldx,
                        int64_t rows, float *y, int64_t ldy) {
    const ft_ctx c = {w, NULL, NULL, n, k, x, ldx, y, ldy};
    ft_drive(&c, rows, ft_span_f32);
}

static void ft_gemm_f16(const uint16_t *w, int64_t n, int64_t k, const float *x, int64_t ldx,
                        int64_t rows, float *y, int64_t ldy) {
    const ft_ctx c = {NULL, w, NULL, n, k, x, ldx, y, ldy};
    ft_drive(&c, rows, ft_span_f16);
}

static void ft_qgemm_f32(const lr_qmat *w, const float *x, int64_t ldx, int64_t rows,
                         float *y, int64_t ldy) {
    const ft_ctx c = {NULL, NULL, w, w->n, w->k, x, ldx, y, ldy};
    ft_drive(&c, rows, w->bits == 4 ? ft_span_q4 : ft_span_q8);
}

/* Activations rounded to bf16 once (k is a multiple of 32 for quantized matrices). */
static void ft_qgemm_bf16(const lr_qmat *w, const float *x, int64_t ldx, int64_t rows,
                          float *y, int64_t ldy) {
    const int64_t k = w->k;
    float *xr = (float *)malloc((size_t)(rows * k) * sizeof(float));
    if (!xr) {
        generic_qgemm_bf16(w, x, ldx, rows, y, ldy);
        return;
    }
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < k; i += LR_VN) lr_vstore(xr + r * k + i, lr_vround_bf16(lr_vload(x + r * ldx + i)));
    const ft_ctx c = {NULL, NULL, w, w->n, k, xr, k, y, ldy};
    ft_drive(&c, rows, w->bits == 4 ? ft_span_q4_bf16 : ft_span_q8_bf16);
    free(xr);
}

#endif
