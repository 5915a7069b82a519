/* Width-generic int8-compute GEMM on the panel layout (kernels.h).  Included by panel_impl.h
 * (512 bits: one vector is a whole 64-byte panel vector, 16 weight rows) and avx2_impl.h (256 bits:
 * one vector is one 32-byte half, a "slot" of 8 weight rows).  Every weight byte is loaded once per
 * tile of activation rows, each activation dword is broadcast against it, and the int32 lanes of a
 * dot are the rows' block sums, so no horizontal sums are needed.
 *
 * The integer block sum is exact: the block accumulator starts at -B * sum_a of the activation block
 * (B = 8 for symmetric int4, 0 with offsets, 128 for int8 stored as q + 128), so it ends at
 * sum((u - B) * x).  Per group: acc += d_w * sum_b d_a * isum_b (PN_ACCG: a float sum per group, then
 * one multiply by the weight scales; otherwise d_a * d_w per block, one register fewer per row), and
 * with offsets acc += m_w * S_g (S_g = sum over the group's blocks of d_a * sum_a).  Nothing is
 * allocated but the calling thread's kept scratch for packed activations (PN_PACK_ACT), and when that
 * cannot grow the tiles read the activations unpacked: a panel matrix has no other form to fall back on.
 *
 * The includer defines (all static inline, compile-time constants where named in capitals):
 *   PN_LANES        int32 lanes of a vector: weight rows of one slot (16 or 8)
 *   PN_RD           rows per tile covering all slots of a panel (decode, small batches); 0: none
 *   PN_RB(BITS), PN_NSB(BITS)  rows and slots per tile above PN_RD rows
 *   PN_ACCG         1: per-group float sums (see above)
 *   PN_PACK_ACT     1: tiles above PN_RD rows read packed activations in bands (pn_pack_alloc); the
 *                   sparse rows of a->skip_from are packed on every tier (pn_tile_sparse)
 *   PN_WIDE8        1: int8 prefill GEMMs (pn_use_wide) read each panel chunk widened to int16 against
 *                   activations packed as int16, PN_RBW rows x PN_NSBW slots a tile (panel_wide8.h, AVX2)
 *   pn_vi, pn_vf    integer and float vectors
 *   pn_load(p), pn_bcast(p) (an activation dword in every lane), pn_iset1, pn_cvt, pn_fzero, pn_fset1,
 *   pn_fma(a, b, c) = a * b + c, pn_fmul, pn_fadd, pn_scales(p, F16) (PN_LANES scales), pn_store(y, v, n)
 *   and pn_load_out(y, n) (the first n lanes)
 *   int4: pn_w4 pn_prep4(raw), pn_a4 pn_a4_init(init), pn_a4_step(acc, w, x_lo, x_hi), pn_a4_end(acc, init)
 *         (x_lo: the dword of elements 4v..4v+3 for the low nibbles, x_hi: 16+4v.. for the high ones)
 *   int8: pn_w8 pn_prep8(raw), pn_a8 pn_a8_init(init), pn_a8_step(acc, w, x, odd), pn_a8_end(acc, init)
 *   init is the vector -B * sum_a; pn_a*_end returns the exact int32 block sums. */
#ifndef LLMRT_PANEL_GEMM_H
#define LLMRT_PANEL_GEMM_H

#ifndef PN_WIDE8
#define PN_WIDE8 0
#endif
#if !PN_WIDE8
#undef PN_RBW
#define PN_RBW 1
#endif
#define PN_SLOTS (LR_PANEL / PN_LANES)
#define PN_MAX2(a, b) ((a) > (b) ? (a) : (b))
#define PN_RMAX PN_MAX2(PN_MAX2(PN_RD, PN_RBW), PN_MAX2(PN_RB(4), PN_RB(8)))
#define PN_SMAX PN_SLOTS
#define PN_SLOT_BYTES (PN_LANES * 4)
/* Decode tiles prefetch lr_panel_prefetch bytes ahead of the current block into L2 (dispatch.c picks
 * it per CPU): decode streams each panel once. */
/* Bytes of a panel read by all row tiles before the next chunk (prefill): within L1 beside the tiles'
 * activation rows. */
#ifndef PN_KCHUNK
#define PN_KCHUNK 16384
#endif

#ifndef PN_PACK_ACT
#define PN_PACK_ACT 0
#endif

typedef struct {
    const lr_qmat *w;
    const lr_qact *a;
    float *y;
    int64_t ldy;
    int32_t B;             /* the offset of the stored unsigned levels */
    int wide;              /* PN_WIDE8 tiles: the packed activations are int16 (pn_use_wide) */
    int64_t gb;            /* bytes per panel group */
    int band;              /* rows per band of the packed activations: PN_BAND_OF(w->bits, wide) */
    /* PN_PACK_ACT (prefill): the activations in bands of `band` rows, each band block-major, so the
     * rows of a tile sit at constant offsets from one pointer and a tile's pass over k reads one
     * contiguous stream (a block-major layout over all rows put its blocks a page or more apart, where
     * the hardware prefetchers stop); NULL when not packed */
    const int8_t *pq;      /* [band][block][band rows][32], int16 elements when wide */
    const float *pd;       /* [band][block][band rows] d_a */
    const int32_t *ps;     /* [band][block][band rows] -B * sum_a: the integer start, one broadcast load */
    const float *pS;       /* [band][group][band rows] sum over the group's blocks of d_a * sum_a */
    /* [band][nb] the band's live blocks in k order, (block << 8) | bit i set when row i of the band has a
     * nonzero scale there, pnlive[band] of them (read by pn_tile_sparse) */
    const uint32_t *plive;
    const int32_t *pnlive;
} pn_ctx;

/* Rows per band of the packed activations: the height of the tiles that read them, so a tile is one
 * band and reads one contiguous stream (tiles start at multiples of their row count; AVX-VNNI int8's
 * tiles of 4 rows in bands of 8 ran 8% slower on Zen 4's EVEX stand-in).  At most 8: a live list entry
 * keeps a bit per row of its band. */
#define PN_BAND_OF(BITS, WIDE) ((WIDE) ? PN_RBW : PN_RB(BITS))
typedef char pn_bands_fit_live_lists[(PN_RB(4) <= 8 && PN_RB(8) <= 8 && PN_RBW <= 8) ? 1 : -1];
/* Index of (row, block) in a packed [band][block][band rows] array of nb blocks per row. */
LR_INLINE int64_t pn_band_at(int64_t row, int64_t block, int64_t nb, const int64_t band) {
    return ((row / band) * nb + block) * band + row % band;
}

#if PN_WIDE8
#include "panel_wide8.h"
#else
#define PN_WIDE_VECS 0
#endif

/* The exact int32 sums of one block for rows xo[0..R) x slots s0 .. s0+NS (init: -B * sum_a per row). */
LR_INLINE void pn_block_sums(pn_vi is[PN_RMAX][PN_SMAX], const uint8_t *blk, const int8_t *const xo[PN_RMAX],
                             const pn_vi init[PN_RMAX], const int s0, const int R, const int NS, const int BITS) {
    if (BITS == 4) {
        pn_a4 ac[PN_RMAX][PN_SMAX];
        LR_UNROLL for (int r = 0; r < R; r++)
            LR_UNROLL for (int s = 0; s < NS; s++) ac[r][s] = pn_a4_init(init[r]);
        LR_UNROLL for (int v = 0; v < 4; v++)
            LR_UNROLL for (int s = 0; s < NS; s++) {
                const pn_w4 wv = pn_prep4(pn_load(blk + 64 * v + (s0 + s) * PN_SLOT_BYTES));
                LR_UNROLL for (int r = 0; r < R; r++)
                    ac[r][s] = pn_a4_step(ac[r][s], wv, pn_bcast(xo[r] + 4 * v), pn_bcast(xo[r] + 16 + 4 * v));
            }
        LR_UNROLL for (int r = 0; r < R; r++)
            LR_UNROLL for (int s = 0; s < NS; s++) is[r][s] = pn_a4_end(ac[r][s], init[r]);
    } else {
        pn_a8 ac[PN_RMAX][PN_SMAX];
        LR_UNROLL for (int r = 0; r < R; r++)
            LR_UNROLL for (int s = 0; s < NS; s++) ac[r][s] = pn_a8_init(init[r]);
        LR_UNROLL for (int v = 0; v < 8; v++)
            LR_UNROLL for (int s = 0; s < NS; s++) {
                const pn_w8 wv = pn_prep8(pn_load(blk + 64 * v + (s0 + s) * PN_SLOT_BYTES));
                LR_UNROLL for (int r = 0; r < R; r++)
                    ac[r][s] = pn_a8_step(ac[r][s], wv, pn_bcast(xo[r] + 4 * v), v & 1);
            }
        LR_UNROLL for (int r = 0; r < R; r++)
            LR_UNROLL for (int s = 0; s < NS; s++) is[r][s] = pn_a8_end(ac[r][s], init[r]);
    }
}

/* The block sums of a PN_WIDE8 tile: widened block wb against packed int16 rows pb .. pb+R. */
LR_INLINE void pn_wide_sums(pn_vi is[PN_RMAX][PN_SMAX], const pn_ctx *c, const pn_vi *wb, int64_t pb, const int s0,
                            const int R, const int NS) {
#if PN_WIDE8
    const int16_t *xw[PN_RMAX];
    LR_UNROLL for (int r = 0; r < R; r++) xw[r] = (const int16_t *)c->pq + (pb + r) * LR_QK;
    pn_block_sums_wide(is, wb, xw, s0, R, NS);
#else
    (void)is, (void)c, (void)wb, (void)pb, (void)s0, (void)R, (void)NS;
#endif
}

/* Stores (g0 == 0) or adds a tile's sums to y. */
LR_INLINE void pn_tile_store(const pn_ctx *c, pn_vf acc[PN_RMAX][PN_SMAX], int64_t r0, int64_t p, int64_t g0,
                             const int s0, const int R, const int NS) {
    LR_UNROLL for (int s = 0; s < NS; s++) {
        const int64_t j0 = p * LR_PANEL + (s0 + s) * PN_LANES, nj = lr_min64(PN_LANES, c->w->n - j0);
        if (nj <= 0) break;
        LR_UNROLL for (int r = 0; r < R; r++) {
            float *yr = c->y + (r0 + r) * c->ldy + j0;
            pn_store(yr, g0 ? pn_fadd(acc[r][s], pn_load_out(yr, (int)nj)) : acc[r][s], (int)nj);
        }
    }
}

/* Activation rows r0 .. r0+R x slots s0 .. s0+NS of panel p over groups [g0, g1); the sums are added
 * to y unless g0 == 0.  WIDE (packed int8): the blocks from wb, the chunk [g0, g1) widened. */
LR_INLINE void pn_tile(const pn_ctx *c, int64_t r0, int64_t p, int64_t g0, int64_t g1, const int s0, const int R,
                       const int NS, const int BITS, const int ASYM, const int F16, const int PACKED,
                       const pn_vi *wb, const int WIDE) {
    const lr_qmat *w = c->w;
    const lr_qact *a = c->a;
    const int64_t k = w->k, nb = k / LR_QK, ng = k / w->group, bpg = w->group / LR_QK;
    const int64_t bb = BITS == 4 ? 256 : 512, ss = F16 ? 2 : 4, band = PN_BAND_OF(BITS, WIDE);
    const uint8_t *gp = w->panels + (p * ng + g0) * c->gb;
    const int32_t Bi = c->B;
    pn_vf acc[PN_RMAX][PN_SMAX];
    const int8_t *xq[PN_RMAX];
    const float *xd[PN_RMAX];
    const int32_t *xs[PN_RMAX];
    LR_UNROLL for (int r = 0; r < R; r++) {
        LR_UNROLL for (int s = 0; s < NS; s++) acc[r][s] = pn_fzero();
        xq[r] = a->q + (r0 + r) * k;
        xd[r] = a->d + (r0 + r) * nb;
        xs[r] = a->sum + (r0 + r) * nb;
    }
    int64_t b = g0 * bpg;
    for (int64_t g = g0; g < g1; g++, gp += c->gb) {
        const uint8_t *sp = gp + bpg * bb;
#if PN_ACCG
        pn_vf accg[PN_RMAX][PN_SMAX];
        LR_UNROLL for (int r = 0; r < R; r++)
            LR_UNROLL for (int s = 0; s < NS; s++) accg[r][s] = pn_fzero();
#else
        pn_vf dw[PN_SMAX];
        LR_UNROLL for (int s = 0; s < NS; s++) dw[s] = pn_scales(sp + (s0 + s) * PN_LANES * ss, F16);
#endif
        float sg[PN_RMAX];
        LR_UNROLL for (int r = 0; r < R; r++) sg[r] = 0.0f;
        for (int64_t bi = 0; bi < bpg; bi++, b++) {
            const uint8_t *blk = gp + bi * bb;
            if (!PACKED)   /* packed tiles (prefill) read each panel chunk from L1 many times */
                for (int v = 0; v < (BITS == 4 ? 4 : 8); v++)
                    _mm_prefetch((const char *)(blk + lr_panel_prefetch + 64 * v), _MM_HINT_T1);
            const int8_t *xo[PN_RMAX];
            const int64_t pb = PACKED ? pn_band_at(r0, b, nb, band) : 0;   /* a tile lies within one band */
            const int8_t *pqb = PACKED ? c->pq + pb * LR_QK : NULL;
            const float *pdb = PACKED ? c->pd + pb : NULL;
            const int32_t *psb = PACKED ? c->ps + pb : NULL;
            pn_vi init[PN_RMAX], is[PN_RMAX][PN_SMAX];
            LR_UNROLL for (int r = 0; r < R; r++) {
                xo[r] = PACKED ? pqb + r * LR_QK : xq[r] + b * LR_QK;
                init[r] = pn_iset1(PACKED ? psb[r] : -Bi * xs[r][b]);
            }
            if (WIDE) pn_wide_sums(is, c, wb + (b - g0 * bpg) * PN_WIDE_VECS, pb, s0, R, NS);
            else pn_block_sums(is, blk, xo, init, s0, R, NS, BITS);
            LR_UNROLL for (int r = 0; r < R; r++) {
                const pn_vf da = pn_fset1(PACKED ? pdb[r] : xd[r][b]);
                LR_UNROLL for (int s = 0; s < NS; s++) {
#if PN_ACCG
                    accg[r][s] = pn_fma(pn_cvt(is[r][s]), da, accg[r][s]);
#else
                    acc[r][s] = pn_fma(pn_cvt(is[r][s]), pn_fmul(da, dw[s]), acc[r][s]);
#endif
                }
                if (ASYM && !PACKED) sg[r] += xd[r][b] * (float)xs[r][b];
            }
        }
        if (PACKED && ASYM)
            LR_UNROLL for (int r = 0; r < R; r++) sg[r] = c->pS[pn_band_at(r0, g, ng, band) + r];
#if PN_ACCG
        LR_UNROLL for (int s = 0; s < NS; s++) {
            const pn_vf dws = pn_scales(sp + (s0 + s) * PN_LANES * ss, F16);
            LR_UNROLL for (int r = 0; r < R; r++) acc[r][s] = pn_fma(accg[r][s], dws, acc[r][s]);
        }
#endif
        if (ASYM) {   /* offsets m * S_g */
            LR_UNROLL for (int s = 0; s < NS; s++) {
                const pn_vf mw = pn_scales(sp + LR_PANEL * ss + (s0 + s) * PN_LANES * ss, F16);
                LR_UNROLL for (int r = 0; r < R; r++) acc[r][s] = pn_fma(mw, pn_fset1(sg[r]), acc[r][s]);
            }
        }
    }
    pn_tile_store(c, acc, r0, p, g0, s0, R, NS);
}

/* pn_tile for packed rows from a->skip_from on (the sparse residual of two-pass activations): it visits
 * only the blocks of the band's live list that are nonzero in one of its rows, and scales each block's
 * sums on its own (a dead block cost a tenth of a live one when the dense walk skipped it). */
LR_INLINE void pn_tile_sparse(const pn_ctx *c, int64_t r0, int64_t p, int64_t g0, int64_t g1, const int s0,
                              const int R, const int NS, const int BITS, const int ASYM, const int F16,
                              const pn_vi *wb, const int WIDE) {
    const lr_qmat *w = c->w;
    const lr_qact *a = c->a;
    const int64_t nb = w->k / LR_QK, ng = w->k / w->group, bpg = w->group / LR_QK;
    const int64_t bb = BITS == 4 ? 256 : 512, ss = F16 ? 2 : 4, band = PN_BAND_OF(BITS, WIDE);
    const uint32_t *live = c->plive + r0 / band * nb, mine = ((1u << R) - 1) << (r0 % band);
    const int64_t nlive = c->pnlive[r0 / band], b0 = g0 * bpg, b1 = g1 * bpg;
    pn_vf acc[PN_RMAX][PN_SMAX];
    LR_UNROLL for (int r = 0; r < R; r++)
        LR_UNROLL for (int s = 0; s < NS; s++) acc[r][s] = pn_fzero();
    int64_t i = 0, g = g0, gend = b0 + bpg;   /* the group of block b: gend = its last block + 1 */
    while (i < nlive && (int64_t)(live[i] >> 8) < b0) i++;
    for (; i < nlive && (int64_t)(live[i] >> 8) < b1; i++) {
        if (!(live[i] & mine)) continue;
        const int64_t b = live[i] >> 8, pb = pn_band_at(r0, b, nb, band);
        while (b >= gend) {   /* no division in the loop */
            g++;
            gend += bpg;
        }
        const uint8_t *gp = w->panels + (p * ng + g) * c->gb, *sp = gp + bpg * bb;
        const int8_t *xo[PN_RMAX];
        pn_vi init[PN_RMAX], is[PN_RMAX][PN_SMAX];
        LR_UNROLL for (int r = 0; r < R; r++) {
            xo[r] = c->pq + (pb + r) * LR_QK;
            init[r] = pn_iset1(c->ps[pb + r]);
        }
        if (WIDE) pn_wide_sums(is, c, wb + (b - b0) * PN_WIDE_VECS, pb, s0, R, NS);
        else pn_block_sums(is, gp + (b - g * bpg) * bb, xo, init, s0, R, NS, BITS);
        LR_UNROLL for (int s = 0; s < NS; s++) {
            const pn_vf dw = pn_scales(sp + (s0 + s) * PN_LANES * ss, F16);
            const pn_vf mw = ASYM ? pn_scales(sp + LR_PANEL * ss + (s0 + s) * PN_LANES * ss, F16) : pn_fzero();
            LR_UNROLL for (int r = 0; r < R; r++) {
                const float da = c->pd[pb + r];
                acc[r][s] = pn_fma(pn_cvt(is[r][s]), pn_fmul(pn_fset1(da), dw), acc[r][s]);
                if (ASYM)   /* the offsets' share of this block: m * d_a * sum_a */
                    acc[r][s] = pn_fma(mw, pn_fset1(da * (float)a->sum[(r0 + r) * nb + b]), acc[r][s]);
            }
        }
    }
    pn_tile_store(c, acc, r0, p, g0, s0, R, NS);
}

/* Tiles of up to RMAX <= 8 rows (R a compile-time constant in each case); W: the widened chunk (WIDE). */
#define PN_ROWS_CASE(n, RMAX, S0, NS, PK, W, WIDE)                                         \
    case n:                                                                                \
        if (n <= RMAX) {                                                                   \
            if (c->plive && r >= c->a->skip_from)                                          \
                pn_tile_sparse(c, r, p, g0, g1, S0, (n <= RMAX ? n : 1), NS, BITS, ASYM, F16, W, WIDE); \
            else pn_tile(c, r, p, g0, g1, S0, (n <= RMAX ? n : 1), NS, BITS, ASYM, F16, PK, W, WIDE); \
        }                                                                                  \
        break;
#define PN_ROWS_W(RMAX, S0, NS, PK, W, WIDE)                                               \
    for (int64_t r = r0; r < r1; r += RMAX) {                                              \
        switch (lr_min64(RMAX, r1 - r)) {                                                  \
            PN_ROWS_CASE(1, RMAX, S0, NS, PK, W, WIDE) PN_ROWS_CASE(2, RMAX, S0, NS, PK, W, WIDE) \
            PN_ROWS_CASE(3, RMAX, S0, NS, PK, W, WIDE) PN_ROWS_CASE(4, RMAX, S0, NS, PK, W, WIDE) \
            PN_ROWS_CASE(5, RMAX, S0, NS, PK, W, WIDE) PN_ROWS_CASE(6, RMAX, S0, NS, PK, W, WIDE) \
            PN_ROWS_CASE(7, RMAX, S0, NS, PK, W, WIDE)                                     \
            default: PN_ROWS_CASE(8, RMAX, S0, NS, PK, W, WIDE)                            \
        }                                                                                  \
    }
#define PN_ROWS(RMAX, S0, NS, PK) PN_ROWS_W(RMAX, S0, NS, PK, (const pn_vi *)NULL, 0)

/* Groups per pass of the row tiles over a panel (prefill): a chunk of the panel stays in L1 while they
 * all read it; with one row tile, all groups at once. */
LR_INLINE int64_t pn_chunk_groups(const pn_ctx *c, int64_t rows, const int RB) {
    return rows <= RB ? c->w->k / c->w->group : lr_max64(1, PN_KCHUNK / c->gb);
}

#if PN_WIDE8
/* Whether an int8 GEMM of these rows runs on widened chunks: enough rows to repay the widening (on a
 * Zen 4 core, 16 rows as fast as the int8 step, 10 rows 7% slower, 128 rows 16% faster), groups
 * a chunk can hold (a chunk of PN_KCHUNK bytes, or one group, is at most PN_WIDE_MAXB blocks then). */
LR_INLINE int pn_use_wide(const lr_qmat *w, const lr_qact *a) {
    return w->bits == 8 && a->rows >= 2 * PN_RB(8) && w->group / LR_QK <= PN_WIDE_MAXB;
}

/* Widens groups [g0, g1) of panel p into wb, once for all the row tiles of that chunk. */
LR_INLINE void pn_widen_chunk(const pn_ctx *c, pn_vi *wb, int64_t p, int64_t g0, int64_t g1) {
    const int64_t ng = c->w->k / c->w->group, bpg = c->w->group / LR_QK;
    const uint8_t *gp = c->w->panels + (p * ng + g0) * c->gb;
    for (int64_t g = 0; g < g1 - g0; g++, gp += c->gb)
        for (int64_t bi = 0; bi < bpg; bi++) pn_widen8(wb + (g * bpg + bi) * PN_WIDE_VECS, gp + bi * 512);
}
#endif

LR_INLINE void pn_span_t(const pn_ctx *c, int64_t r0, int64_t r1, int64_t p0, int64_t p1, const int BITS,
                         const int ASYM, const int F16) {
    const int64_t ng = c->w->k / c->w->group, gc = pn_chunk_groups(c, r1 - r0, PN_RB(BITS));
#if PN_WIDE8
    pn_vi wb[PN_WIDE_MAXB * PN_WIDE_VECS];   /* a widened chunk (int8 with c->wide) */
#endif
    for (int64_t p = p0; p < p1; p++) {
        if (PN_RD > 0 && r1 - r0 <= PN_RD) {
            const int64_t g0 = 0, g1 = ng;
            PN_ROWS(PN_RD, 0, PN_SLOTS, 0)
        } else {
            for (int64_t g0 = 0; g0 < ng; g0 += gc) {
                const int64_t g1 = lr_min64(g0 + gc, ng);
#if PN_WIDE8
                if (BITS == 8 && c->wide) {   /* the int8 step's chunks: the same sums in the same order */
                    pn_widen_chunk(c, wb, p, g0, g1);
                    for (int s0 = 0; s0 < PN_SLOTS; s0 += PN_NSBW) PN_ROWS_W(PN_RBW, s0, PN_NSBW, 1, wb, 1)
                    continue;
                }
#endif
                /* PN_NSB slots at a time: fewer slots, more activation rows per weight vector */
                for (int s0 = 0; s0 < PN_SLOTS; s0 += PN_NSB(BITS)) {
                    if (PN_PACK_ACT && c->pq) PN_ROWS(PN_RB(BITS), s0, PN_NSB(BITS), 1)
                    else PN_ROWS(PN_RB(BITS), s0, PN_NSB(BITS), 0)
                }
            }
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
    memset(c, 0, sizeof(*c));
    c->w = w;
    c->a = a;
    c->y = y;
    c->ldy = ldy;
    c->B = w->bits == 8 ? 128 : (w->panel_m ? 0 : 8);
    c->gb = pn_group_bytes(w);
    c->band = PN_BAND_OF(w->bits, 0);
}

/* Whether the rows from a->skip_from on fill a band (so some tile lies wholly among them): only then are
 * they packed with live lists for pn_tile_sparse (a decode step's one residual row is not). */
LR_INLINE int pn_sparse_rows(const lr_qact *a, int band) { return a->rows - a->skip_from >= band; }

/* Room for the activations of a prefill call in bands (pn_ctx) in the calling thread's scratch (a copy of
 * rows * k bytes, small beside the GEMM), with PN_PACK_ACT or for the sparse rows from a->skip_from on
 * (and their bands' live lists); left unpacked (and dense) when the scratch cannot grow.  pn_run fills it. */
static void pn_pack_alloc(pn_ctx *c) {
    const lr_qact *a = c->a;
    const int64_t k = a->k, nb = k / LR_QK, ng = k / c->w->group;
    const int64_t band = c->band, prows = (a->rows + band - 1) / band * band;   /* the last band's unused rows unread */
    const int64_t qbytes = prows * k * (c->wide ? 2 : 1);
    const size_t bytes = (size_t)qbytes + (size_t)(prows * nb) * (sizeof(float) + sizeof(int32_t)) +
                         (size_t)(prows * ng) * sizeof(float) + (size_t)(prows / band) * (size_t)(nb + 1) * sizeof(uint32_t);
    int8_t *q = (int8_t *)lr_thread_scratch(LR_SCRATCH_ACT, bytes);
    if (!q) return;
    c->pq = q;
    c->pd = (float *)(q + qbytes);
    c->ps = (int32_t *)(c->pd + prows * nb);
    c->pS = (float *)(c->ps + prows * nb);
    if (pn_sparse_rows(a, band)) {
        c->plive = (const uint32_t *)(c->pS + prows * ng);
        c->pnlive = (const int32_t *)(c->plive + prows / band * nb);
    }
}

/* Packs activation rows [r0, r1) of one band. */
static void pn_pack_rows(const pn_ctx *c, int64_t r0, int64_t r1) {
    const lr_qact *a = c->a;
    const int64_t k = a->k, nb = k / LR_QK, bpg = c->w->group / LR_QK, ng = k / c->w->group, band = c->band;
    int8_t *q = (int8_t *)c->pq;
    float *d = (float *)c->pd, *S = (float *)c->pS;
    int32_t *sum = (int32_t *)c->ps;
    if (!PN_PACK_ACT && r1 <= a->skip_from) return;   /* dense tiles read these rows unpacked */
    for (int64_t r = r0; r < r1; r++) {
        for (int64_t b = 0; b < nb; b++) {
            const int64_t at = pn_band_at(r, b, nb, band);
            if (c->wide)
                for (int i = 0; i < LR_QK; i++) ((int16_t *)q)[at * LR_QK + i] = a->q[r * k + b * LR_QK + i];
            else memcpy(q + at * LR_QK, a->q + r * k + b * LR_QK, LR_QK);
            d[at] = a->d[r * nb + b];
            sum[at] = -c->B * a->sum[r * nb + b];
        }
        for (int64_t g = 0; g < (c->w->panel_m ? ng : 0); g++) {   /* for the offsets m */
            float sg = 0.0f;   /* the order of the unpacked tiles' running sum */
            for (int64_t b = g * bpg; b < (g + 1) * bpg; b++) sg += a->d[r * nb + b] * (float)a->sum[r * nb + b];
            S[pn_band_at(r, g, ng, band)] = sg;
        }
    }
    if (!c->plive || r1 <= a->skip_from) return;   /* the live lists serve only pn_tile_sparse */
    uint32_t *live = (uint32_t *)c->plive + (r0 / band) * nb;
    int32_t n = 0;
    for (int64_t b = 0; b < nb; b++) {
        uint32_t bits = 0;
        for (int64_t r = r0; r < r1; r++) bits |= (uint32_t)(a->d[r * nb + b] != 0.0f) << (r % band);
        if (bits) live[n++] = (uint32_t)b << 8 | bits;
    }
    ((int32_t *)c->pnlive)[r0 / band] = n;
}

/* Activation rows [r0, r1) x panels [p0, p1), panels split between the threads. */
#define PN_MAX_RUNS 1024   /* 8 KiB of stack; the last runs at least 2 n / 1024 panels (4 of 2000) */
static void pn_run(const pn_ctx *c, int64_t r0, int64_t r1, int64_t p0, int64_t p1) {
    const lr_qmat *w = c->w;
    const pn_span_fn span = pn_pick(w);
    const int par = (double)(p1 - p0) * LR_PANEL * (double)(r1 - r0) * (double)w->k >= (double)LR_PAR_MIN_WORK;
    if (r1 <= r0 || p1 <= p0) return;
    /* decode's panels take ~1 us each: runs of 2 at least keep the hand-outs a small part */
    int64_t runs[PN_MAX_RUNS + 1];
    const int nruns = lr_runs(p1 - p0, par ? lr_get_threads() : 1, r1 - r0 <= PN_RD ? 2 : 1, runs, PN_MAX_RUNS);
    LR_OMP(parallel if (par))
    {
        if (c->pq) {   /* the packed activations, bands shared out (the loop ends in a barrier) */
            const int64_t band = c->band;
            LR_OMP(for schedule(static))
            for (int64_t i = r0 / band; i < (r1 + band - 1) / band; i++)
                pn_pack_rows(c, lr_max64(i * band, r0), lr_min64((i + 1) * band, r1));
        }
        /* panels handed out in shrinking runs (lr_runs): threads rarely get equal shares of the memory
         * bandwidth, so equal static shares would leave one waiting at the end of every layer */
        LR_OMP(for schedule(dynamic, 1))
        for (int i = 0; i < nruns; i++)
            for (int64_t p = p0 + runs[i]; p < p0 + runs[i + 1]; p++)
                span(c, r0, r1, p, p + 1);   /* a panel stays in L1/L2 over the rows */
    }
}

LR_UNUSED static void x86_qgemm_i8_panels(const lr_qmat *w, const lr_qact *a, float *y, int64_t ldy) {
    pn_ctx c;
    pn_init(&c, w, a, y, ldy);
#if PN_WIDE8
    c.wide = a->rows > PN_RD && pn_use_wide(w, a);
    c.band = PN_BAND_OF(w->bits, c.wide);
#endif
    if ((PN_PACK_ACT || pn_sparse_rows(a, c.band)) && a->rows > PN_RD) pn_pack_alloc(&c);
    if (!c.pq) {   /* unpacked rows: the int8 step */
        c.wide = 0;
        c.band = PN_BAND_OF(w->bits, 0);
    }
    pn_run(&c, 0, a->rows, 0, (w->n + LR_PANEL - 1) / LR_PANEL);
}

#endif
