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

/* Elements [i0, i0 + len) of weight row j as fp32 (dequantized / converted; RND: rounded to bf16) into out;
 * for quantized sources i0 and len are multiples of LR_QK. */
LR_INLINE void ft_expand(const ft_ctx *c, int64_t j, int64_t i0, int64_t len, float *out, const int SRC,
                         const int RND) {
    const int64_t k = c->k;
    if (SRC == FT_F16) {
        generic_f16_row_to_f32(c->wh + j * k + i0, out, len);
        return;
    }
    const lr_qmat *q = c->q;
    const int64_t ng = k / q->group, bpg = q->group / LR_QK;
    const uint8_t *wq = q->qs + j * (SRC == FT_Q4 ? k / 2 : k);
    for (int64_t b = i0 / LR_QK; b < (i0 + len) / LR_QK; b++) {
        const int64_t g = b / bpg;
        const float dd = q->d[j * ng + g];
        const lr_vf dv = lr_vset1(dd);
        const lr_vf mv = lr_vset1(q->m ? q->m[j * ng + g] : (SRC == FT_Q4 ? -8.0f * dd : 0.0f));
        float *o = out + b * LR_QK - i0;
        LR_UNROLL for (int ch = 0; ch < LR_QK / LR_VN; ch++) {
            const lr_vf u = SRC == FT_Q4 ? lr_vq4(wq + b * (LR_QK / 2), ch) : lr_vq8((const int8_t *)wq + b * LR_QK, ch);
            lr_vstore(o + ch * LR_VN, RND ? lr_vround_bf16(lr_vadd(lr_vmul(u, dv), mv)) : lr_vfma(u, dv, mv));
        }
    }
}

/* Single rows or few (decode): FT_J-wide dot-product tiles, then single leftover weight rows. */
LR_INLINE void ft_span(const ft_ctx *c, int64_t r0, int64_t r1, int64_t j0, int64_t j1,
                       const int SRC, const int RND) {
    int64_t j = j0;
    for (; j + FT_J <= j1; j += FT_J)
        for (int64_t r = r0; r < r1; r += FT_R) {
            switch (lr_min64(FT_R, r1 - r)) {
            case 1: ft_tile(c, r, j, 1, FT_J, SRC, RND); break;
            case 2: ft_tile(c, r, j, 2, FT_J, SRC, RND); break;
            case 3: ft_tile(c, r, j, 3, FT_J, SRC, RND); break;
            default: ft_tile(c, r, j, 4, FT_J, SRC, RND); break;
            }
        }
    for (; j < j1; j++)
        for (int64_t r = r0; r < r1; r++) ft_tile(c, r, j, 1, 1, SRC, RND);
}

/* Prefill (more rows than a dot-product tile): activation rows along the vector lanes.  The rows are
 * transposed once into xt (groups of FT_RV rows, k-major: xt[(v * k + i) * FT_RV + lane]), each weight row is
 * expanded to fp32 once per chunk of FT_RC rows and FT_KC k-steps, and a tile of FT_RV rows x J weight rows
 * runs per k-step two activation loads and J weight broadcasts into 2J FMAs: no horizontal sums, and each
 * expanded weight is read once per FT_RV rows (the dot-product tiles convert it once per FT_R = 4 rows).
 * Each output is the k-steps' products summed in order within a chunk of FT_KC, the chunks summed in order:
 * the same whatever the rows and threads. */
#define FT_RV (2 * LR_VN)
#define FT_JB 6
#define FT_KC 256
#define FT_RC (8 * FT_RV)

/* out[j][l] = sum over i < len of w[j * ldw + i] * xt[i * FT_RV + l]. */
LR_INLINE void ft_rv_tile(const float *xt, const float *w, int64_t ldw, int64_t len, const int J,
                          float out[FT_JB][FT_RV]) {
    lr_vf acc[FT_JB][2];
    LR_UNROLL for (int j = 0; j < J; j++) acc[j][0] = acc[j][1] = lr_vzero();
    for (int64_t i = 0; i < len; i++) {
        const lr_vf x0 = lr_vload(xt + i * FT_RV), x1 = lr_vload(xt + i * FT_RV + LR_VN);
        LR_UNROLL for (int j = 0; j < J; j++) {
            const lr_vf wv = lr_vset1(w[j * ldw + i]);
            acc[j][0] = lr_vfma(wv, x0, acc[j][0]);
            acc[j][1] = lr_vfma(wv, x1, acc[j][1]);
        }
    }
    LR_UNROLL for (int j = 0; j < J; j++) {
        lr_vstore(out[j], acc[j][0]);
        lr_vstore(out[j] + LR_VN, acc[j][1]);
    }
}

/* Prefetches elements [i0, i0 + len) of quantized weight rows [j, j1) and their scales: a span walks its
 * weight rows one k-chunk at a time, 128-256 bytes of each row 1-2 KiB apart, a stride the hardware
 * prefetchers miss (the expansion waited on memory for a quarter of a 64-row GEMM's time without this). */
LR_INLINE void ft_prefetch_rows(const ft_ctx *c, int64_t j, int64_t j1, int64_t i0, int64_t len, const int SRC) {
    if (SRC != FT_Q4 && SRC != FT_Q8) return;
    const lr_qmat *q = c->q;
    const int64_t ws = SRC == FT_Q4 ? c->k / 2 : c->k, ng = c->k / q->group;
    const int64_t b0 = SRC == FT_Q4 ? i0 / 2 : i0, nbytes = SRC == FT_Q4 ? len / 2 : len;
    for (; j < j1; j++) {
        const char *row = (const char *)(q->qs + j * ws + b0);
        for (int64_t o = 0; o < nbytes; o += 64) _mm_prefetch(row + o, _MM_HINT_T0);
        _mm_prefetch((const char *)(q->d + j * ng + i0 / q->group), _MM_HINT_T0);
        if (q->m) _mm_prefetch((const char *)(q->m + j * ng + i0 / q->group), _MM_HINT_T0);
    }
}

/* One function per tile width, shared by every weight source: inlined into a span, its loop lost registers
 * to the constants the span's weight expansion keeps (a spilled accumulator made bf16 compute 2x slower). */
#define FT_RV_TILE(J) \
    LR_NOINLINE void ft_rv_tile_##J(const float *xt, const float *w, int64_t ldw, int64_t len, float out[FT_JB][FT_RV]) { \
        ft_rv_tile(xt, w, ldw, len, J, out); \
    }
FT_RV_TILE(1) FT_RV_TILE(2) FT_RV_TILE(3) FT_RV_TILE(4) FT_RV_TILE(5) FT_RV_TILE(6)

/* Row group v of xt (FT_RV rows from v * FT_RV; rows past `rows` are zeros). */
static void ft_transpose_group(const ft_ctx *c, float *xt, int64_t v, int64_t rows) {
    const int64_t k = c->k;
    float *dst = xt + v * k * FT_RV;
    for (int64_t l = 0; l < FT_RV; l++) {
        const int64_t r = v * FT_RV + l;
        if (r < rows) {
            const float *src = c->x + r * c->ldx;
            for (int64_t i = 0; i < k; i++) dst[i * FT_RV + l] = src[i];
        } else
            for (int64_t i = 0; i < k; i++) dst[i * FT_RV + l] = 0.0f;
    }
}

/* All rows x weight rows [j0, j1) from xt; wx: FT_JB x FT_KC floats for expanded weights (unused for FT_F32). */
LR_INLINE void ft_span_rv(const ft_ctx *c, const float *xt, float *wx, int64_t rows, int64_t j0, int64_t j1,
                          const int SRC, const int RND) {
    const int64_t k = c->k;
    float out[FT_JB][FT_RV];
    for (int64_t r0 = 0; r0 < rows; r0 += FT_RC) {
        const int64_t v0 = r0 / FT_RV, v1 = (lr_min64(r0 + FT_RC, rows) + FT_RV - 1) / FT_RV;
        for (int64_t i0 = 0; i0 < k; i0 += FT_KC) {
            const int64_t len = lr_min64(FT_KC, k - i0);
            for (int64_t j = j0; j < j1; j += FT_JB) {
                const int J = (int)lr_min64(FT_JB, j1 - j);
                const float *w = wx;   /* dense fp32 weights are read where they are */
                int64_t ldw = FT_KC;
                if (SRC == FT_F32) {
                    w = c->wf + j * k + i0;
                    ldw = k;
                } else {
                    ft_prefetch_rows(c, j + FT_JB, lr_min64(j + 2 * FT_JB, j1), i0, len, SRC);
                    for (int jj = 0; jj < J; jj++) ft_expand(c, j + jj, i0, len, wx + jj * FT_KC, SRC, RND);
                }
                for (int64_t v = v0; v < v1; v++) {
                    const float *xv = xt + (v * k + i0) * FT_RV;
                    switch (J) {
                    case 1: ft_rv_tile_1(xv, w, ldw, len, out); break;
                    case 2: ft_rv_tile_2(xv, w, ldw, len, out); break;
                    case 3: ft_rv_tile_3(xv, w, ldw, len, out); break;
                    case 4: ft_rv_tile_4(xv, w, ldw, len, out); break;
                    case 5: ft_rv_tile_5(xv, w, ldw, len, out); break;
                    default: ft_rv_tile_6(xv, w, ldw, len, out); break;
                    }
                    const int64_t nl = lr_min64(FT_RV, rows - v * FT_RV);
                    for (int64_t l = 0; l < nl; l++) {
                        float *yr = c->y + (v * FT_RV + l) * c->ldy + j;
                        for (int jj = 0; jj < J; jj++) yr[jj] = i0 ? yr[jj] + out[jj][l] : out[jj][l];
                    }
                }
            }
        }
    }
}

typedef void (*ft_span_fn)(const ft_ctx *c, int64_t r0, int64_t r1, int64_t j0, int64_t j1);
typedef void (*ft_span_rv_fn)(const ft_ctx *c, const float *xt, float *wx, int64_t rows, int64_t j0, int64_t j1);

#define FT_SPANS(NAME, SRC, RND) \
    static void NAME(const ft_ctx *c, int64_t r0, int64_t r1, int64_t j0, int64_t j1) { \
        ft_span(c, r0, r1, j0, j1, SRC, RND); \
    } \
    static void NAME##_rv(const ft_ctx *c, const float *xt, float *wx, int64_t rows, int64_t j0, int64_t j1) { \
        ft_span_rv(c, xt, wx, rows, j0, j1, SRC, RND); \
    }
FT_SPANS(ft_span_f32, FT_F32, 0)
FT_SPANS(ft_span_f16, FT_F16, 0)
FT_SPANS(ft_span_q4, FT_Q4, 0)
FT_SPANS(ft_span_q8, FT_Q8, 0)
FT_SPANS(ft_span_q4_bf16, FT_Q4, 1)
FT_SPANS(ft_span_q8_bf16, FT_Q8, 1)

/* Threads split the weight rows (each thread's weights are read once per row chunk).  More rows than a
 * dot-product tile take the row-vector tiles when their buffers can be had (the threads transpose the
 * rows together first). */
static void ft_drive(const ft_ctx *c, int64_t rows, ft_span_fn span, ft_span_rv_fn span_rv) {
    const int64_t n = c->n, k = c->k;
    const int par = (double)n * (double)rows * (double)k >= (double)LR_PAR_MIN_WORK;
    (void)par;
    const int64_t groups = (rows + FT_RV - 1) / FT_RV;
    float *xt = rows > FT_R ? (float *)malloc((size_t)(groups * FT_RV * k) * sizeof(float)) : NULL;
    if (xt) {
        int failed = 0;
        LR_OMP(parallel if (par) reduction(| : failed))
        {
            int64_t g0, g1, t0, t1;
            lr_thread_range(groups, &g0, &g1);
            for (int64_t v = g0; v < g1; v++) ft_transpose_group(c, xt, v, rows);
            LR_OMP(barrier)
            lr_thread_range((n + FT_JB - 1) / FT_JB, &t0, &t1);
            float *wx = (float *)malloc((size_t)(FT_JB * FT_KC) * sizeof(float));
            if (wx) span_rv(c, xt, wx, rows, t0 * FT_JB, lr_min64(t1 * FT_JB, n));
            else failed = 1;
            free(wx);
        }
        free(xt);
        if (!failed) return;
    }
    const int64_t ntile = (n + FT_J - 1) / FT_J, rc = lr_row_chunk(k * (int64_t)sizeof(float), FT_R);
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
    ft_drive(&c, rows, ft_span_f32, ft_span_f32_rv);
}

static void ft_gemm_f16(const uint16_t *w, int64_t n, int64_t k, const float *x, int64_t ldx,
                        int64_t rows, float *y, int64_t ldy) {
    const ft_ctx c = {NULL, w, NULL, n, k, x, ldx, y, ldy};
    ft_drive(&c, rows, ft_span_f16, ft_span_f16_rv);
}

static void ft_qgemm_f32(const lr_qmat *w, const float *x, int64_t ldx, int64_t rows,
                         float *y, int64_t ldy) {
    const ft_ctx c = {NULL, NULL, w, w->n, w->k, x, ldx, y, ldy};
    ft_drive(&c, rows, w->bits == 4 ? ft_span_q4 : ft_span_q8, w->bits == 4 ? ft_span_q4_rv : ft_span_q8_rv);
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
    ft_drive(&c, rows, w->bits == 4 ? ft_span_q4_bf16 : ft_span_q8_bf16,
             w->bits == 4 ? ft_span_q4_bf16_rv : ft_span_q8_bf16_rv);
    free(xr);
}

#endif
