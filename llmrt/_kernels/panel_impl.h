/* int8-compute GEMM on the panel layout (kernels.h) with 512-bit VNNI; included by avx512_impl.h
 * when LR_VNNI.  One pass per panel of 16 weight rows: every weight byte is loaded once per group
 * of up to PN_R activation rows, each activation dword is a broadcast memory operand of dpbusd,
 * and the 16 int32 lanes of a dot are the 16 rows' block sums, so no horizontal sums are needed.
 *
 * Per block: int4 low nibbles (v & 0x0f) and high nibbles kept in place (v & 0xf0, i.e. 16 u) go
 * to two accumulators, the second shifted right by 4 at the end of the block (exact), which saves
 * the shift of every weight vector.  The low accumulator starts at -B * sum_a of the activation
 * block (B = 8 for symmetric int4, 0 with offsets, 128 for int8 stored as q + 128), so the
 * integer block sum is exactly sum((u - B) * x).  Per group: acc += d_w * sum_b d_a * isum_b,
 * and with offsets acc += m_w * S_g (S_g = sum over the group's blocks of d_a * sum_a).  Nothing is
 * allocated: a panel matrix has no other form to fall back on. */
#ifndef LLMRT_PANEL_IMPL_H
#define LLMRT_PANEL_IMPL_H

#define PN_R 4
/* Bytes ahead of the current block prefetched into L2: decode streams each panel once, and the
 * hardware prefetchers alone leave part of the memory bandwidth unused (measured on the 1.1B
 * model: +8% decode with 4 KiB into L2; into L1 less, non-temporal much worse). */
#ifndef PN_PREFETCH
#define PN_PREFETCH 4096
#endif

typedef struct {
    const lr_qmat *w;
    const lr_qact *a;
    float *y;
    int64_t ldy;
    int32_t B;             /* the offset of the stored unsigned levels */
    int64_t gb;            /* bytes per panel group */
} pn_ctx;

LR_INLINE __m512i pn_bcast(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

LR_INLINE __m512 pn_load_scales(const uint8_t *p, const int F16) {
    return F16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)) : _mm512_loadu_ps(p);
}

/* Activation rows r0 .. r0+R x panel p. */
LR_INLINE void pn_tile(const pn_ctx *c, int64_t r0, int64_t p, const int R, const int BITS, const int ASYM,
                       const int F16) {
    const lr_qmat *w = c->w;
    const lr_qact *a = c->a;
    const int64_t k = w->k, nb = k / LR_QK, ng = k / w->group, bpg = w->group / LR_QK;
    const int64_t bb = BITS == 4 ? 256 : 512, ss = F16 ? 2 : 4;
    const uint8_t *gp = w->panels + p * ng * c->gb;
    const __m512i lo4 = _mm512_set1_epi8(0x0f), hi4 = _mm512_set1_epi8((char)0xf0);
    __m512 acc[PN_R];
    const int8_t *xq[PN_R];
    const float *xd[PN_R];
    const int32_t *xs[PN_R];
    LR_UNROLL for (int r = 0; r < R; r++) {
        acc[r] = _mm512_setzero_ps();
        xq[r] = a->q + (r0 + r) * k;
        xd[r] = a->d + (r0 + r) * nb;
        xs[r] = a->sum + (r0 + r) * nb;
    }
    int64_t b = 0;
    for (int64_t g = 0; g < ng; g++, gp += c->gb) {
        __m512 accg[PN_R];
        float sg[PN_R];
        LR_UNROLL for (int r = 0; r < R; r++) {
            accg[r] = _mm512_setzero_ps();
            sg[r] = 0.0f;
        }
        for (int64_t bi = 0; bi < bpg; bi++, b++) {
            const uint8_t *blk = gp + bi * bb;
            for (int v = 0; v < (BITS == 4 ? 4 : 8); v++)
                _mm_prefetch((const char *)(blk + PN_PREFETCH + 64 * v), _MM_HINT_T1);
            const int8_t *xo[PN_R];
            __m512i is[PN_R];
            LR_UNROLL for (int r = 0; r < R; r++) xo[r] = xq[r] + b * LR_QK;
            if (BITS == 4) {
                __m512i lo[4], hi[4];
                LR_UNROLL for (int v = 0; v < 4; v++) {
                    const __m512i wv = _mm512_loadu_si512(blk + 64 * v);
                    lo[v] = _mm512_and_si512(wv, lo4);
                    hi[v] = _mm512_and_si512(wv, hi4);
                }
                LR_UNROLL for (int r = 0; r < R; r++) {
                    __m512i il = _mm512_set1_epi32(-c->B * xs[r][b]), ih = _mm512_setzero_si512();
                    LR_UNROLL for (int v = 0; v < 4; v++) {
                        il = _mm512_dpbusd_epi32(il, lo[v], pn_bcast(xo[r] + 4 * v));
                        ih = _mm512_dpbusd_epi32(ih, hi[v], pn_bcast(xo[r] + 16 + 4 * v));
                    }
                    is[r] = _mm512_add_epi32(il, _mm512_srai_epi32(ih, 4));
                }
            } else {
                __m512i wv[8];
                LR_UNROLL for (int v = 0; v < 8; v++) wv[v] = _mm512_loadu_si512(blk + 64 * v);
                LR_UNROLL for (int r = 0; r < R; r++) {
                    __m512i i0 = _mm512_set1_epi32(-c->B * xs[r][b]), i1 = _mm512_setzero_si512();
                    LR_UNROLL for (int v = 0; v < 8; v += 2) {
                        i0 = _mm512_dpbusd_epi32(i0, wv[v], pn_bcast(xo[r] + 4 * v));
                        i1 = _mm512_dpbusd_epi32(i1, wv[v + 1], pn_bcast(xo[r] + 4 * v + 4));
                    }
                    is[r] = _mm512_add_epi32(i0, i1);
                }
            }
            LR_UNROLL for (int r = 0; r < R; r++) {
                accg[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is[r]), _mm512_set1_ps(xd[r][b]), accg[r]);
                if (ASYM) sg[r] += xd[r][b] * (float)xs[r][b];
            }
        }
        const uint8_t *sp = gp + bpg * bb;
        const __m512 dw = pn_load_scales(sp, F16);
        LR_UNROLL for (int r = 0; r < R; r++) acc[r] = _mm512_fmadd_ps(accg[r], dw, acc[r]);
        if (ASYM) {
            const __m512 mw = pn_load_scales(sp + LR_PANEL * ss, F16);
            LR_UNROLL for (int r = 0; r < R; r++)
                acc[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(sg[r]), acc[r]);
        }
    }
    const int64_t j0 = p * LR_PANEL, nj = lr_min64(LR_PANEL, w->n - j0);
    const __mmask16 keep = (__mmask16)((1u << nj) - 1);
    LR_UNROLL for (int r = 0; r < R; r++) _mm512_mask_storeu_ps(c->y + (r0 + r) * c->ldy + j0, keep, acc[r]);
}

LR_INLINE void pn_span_t(const pn_ctx *c, int64_t r0, int64_t r1, int64_t p0, int64_t p1, const int BITS,
                         const int ASYM, const int F16) {
    for (int64_t p = p0; p < p1; p++)
        for (int64_t r = r0; r < r1; r += PN_R) {
            switch (lr_min64(PN_R, r1 - r)) {
            case 1: pn_tile(c, r, p, 1, BITS, ASYM, F16); break;
            case 2: pn_tile(c, r, p, 2, BITS, ASYM, F16); break;
            case 3: pn_tile(c, r, p, 3, BITS, ASYM, F16); break;
            default: pn_tile(c, r, p, 4, BITS, ASYM, F16); break;
            }
        }
}

typedef void (*pn_span_fn)(const pn_ctx *c, int64_t r0, int64_t r1, int64_t p0, int64_t p1);
#define PN_SPAN(BITS, ASYM, F16) \
    static void pn_span_##BITS##_##ASYM##_##F16(const pn_ctx *c, int64_t r0, int64_t r1, int64_t p0, int64_t p1) { \
        pn_span_t(c, r0, r1, p0, p1, BITS, ASYM, F16); \
    }
PN_SPAN(4, 0, 0) PN_SPAN(4, 0, 1) PN_SPAN(4, 1, 0) PN_SPAN(4, 1, 1)
PN_SPAN(8, 0, 0) PN_SPAN(8, 0, 1) PN_SPAN(8, 1, 0) PN_SPAN(8, 1, 1)

static pn_span_fn pn_pick(const lr_qmat *w) {
    static const pn_span_fn table[2][2][2] = {
        {{pn_span_4_0_0, pn_span_4_0_1}, {pn_span_4_1_0, pn_span_4_1_1}},
        {{pn_span_8_0_0, pn_span_8_0_1}, {pn_span_8_1_0, pn_span_8_1_1}},
    };
    return table[w->bits == 8][w->panel_m != 0][w->panel_f16 != 0];
}

static int64_t pn_group_bytes(const lr_qmat *w) {
    return lr_panel_group_bytes(w->bits, w->group, w->panel_m, w->panel_f16);
}

static void pn_init(pn_ctx *c, const lr_qmat *w, const lr_qact *a, float *y, int64_t ldy) {
    c->w = w;
    c->a = a;
    c->y = y;
    c->ldy = ldy;
    c->B = w->bits == 8 ? 128 : (w->panel_m ? 0 : 8);
    c->gb = pn_group_bytes(w);
}

/* Activation rows [r0, r1) x panels [p0, p1), panels split between the threads. */
static void pn_run(const pn_ctx *c, int64_t r0, int64_t r1, int64_t p0, int64_t p1) {
    const lr_qmat *w = c->w;
    const pn_span_fn span = pn_pick(w);
    const int par = (double)(p1 - p0) * LR_PANEL * (double)(r1 - r0) * (double)w->k >= (double)LR_PAR_MIN_WORK;
    (void)par;
    if (r1 <= r0 || p1 <= p0) return;
    LR_OMP(parallel if (par))
    {
        /* panels handed out in shrinking runs (guided): threads rarely get equal shares of the memory
         * bandwidth, so equal static shares would leave one waiting at the end of every layer, and
         * small last runs keep that wait short */
        LR_OMP(for schedule(guided, 2))
        for (int64_t p = p0; p < p1; p++) span(c, r0, r1, p, p + 1);   /* a panel stays in L1/L2 over the rows */
    }
}

LR_UNUSED static void x86_qgemm_i8_panels(const lr_qmat *w, const lr_qact *a, float *y, int64_t ldy) {
    pn_ctx c;
    pn_init(&c, w, a, y, ldy);
    pn_run(&c, 0, a->rows, 0, (w->n + LR_PANEL - 1) / LR_PANEL);
}

#endif
