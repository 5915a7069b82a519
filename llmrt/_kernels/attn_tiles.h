/* Width-generic attention over the KV cache; included by attn512.h (16 lanes) and attn256.h (8 lanes).
 *
 * Work items are (kv head, block of query tokens): the keys an item can see are converted once to
 * fp32 and transposed into tiles of AT_KT keys x head_dim, so one query row's scores for AT_KT keys
 * are head_dim FMAs of a broadcast query element; values are converted once into fp32 rows.  The
 * item's query rows, (token, head) pairs, run in sets of AT_GROUP that share every tile and value row
 * they load (at_rows): the heads of the kv head's group (GQA) and, for groups smaller than AT_GROUP,
 * consecutive tokens.  A single token (decode) reads the cache directly instead (at_kv).  Softmax and
 * the weighted sum of values run in fp32 on vectors.  Same semantics as generic_attention (kernels.h).
 *
 * The includer defines (static inline; n is a lane count in 1..AT_KT, lanes past it are zero):
 *   AT_KT             lanes of a float vector: keys per tile, dims per transposed block
 *   at_vf             the float vector
 *   at_load_n(base, f16, i, n)  n cache elements (fp16 or fp32) from element i, as floats
 *   at_loadu(p), at_load_fn(p, n), at_storeu(p, v), at_store_n(p, v, n)  fp32 memory
 *   at_zero, at_set1, at_fma(a, b, c) = a * b + c, at_add, at_sub, at_mul, at_max, at_hmax, at_hsum, at_exp
 *   at_transpose(r)   r[i] = column i of the AT_KT x AT_KT block of rows r[0..AT_KT-1], in place
 *   at_keep(v, first, last, fill)  lanes first..last of v (clamped to the vector), fill elsewhere
 *   at_lanes()        the lane indices 0, 1, ... as floats */
#ifndef LLMRT_ATTN_TILES_H
#define LLMRT_ATTN_TILES_H

#include <math.h>

#define AT_TOKENS 16      /* query tokens per work item with a group of AT_GROUP heads or more */

/* Keys [j0, j1) of one kv head into tiles kt[(j - j0) / AT_KT][d][AT_KT] (lanes past j1 zero):
 * AT_KT keys x AT_KT dims at a time, converted and transposed in registers. */
static void at_pack_keys(const lr_attn_args *a, const void *kbase, int64_t j0, int64_t j1, float *kt) {
    const int32_t hd = a->head_dim;
    const int64_t nt = (j1 - j0 + AT_KT - 1) / AT_KT;
    for (int64_t t = 0; t < nt; t++) {
        float *tile = kt + t * hd * AT_KT;
        for (int32_t d0 = 0; d0 < hd; d0 += AT_KT) {
            const int32_t nd = hd - d0 >= AT_KT ? AT_KT : hd - d0;
            at_vf r[AT_KT];
            for (int l = 0; l < AT_KT; l++) {
                const int64_t j = j0 + t * AT_KT + l;
                r[l] = j < j1 ? at_load_n(kbase, a->kv_f16, j * hd + d0, nd) : at_zero();
            }
            at_transpose(r);
            for (int32_t d = 0; d < nd; d++) at_storeu(tile + (d0 + d) * AT_KT, r[d]);
        }
    }
}

/* Values [j0, j1) of one kv head as fp32 rows vr[(j - j0) * hd]. */
static void at_pack_values(const lr_attn_args *a, const void *vbase, int64_t j0, int64_t j1, float *vr) {
    const int32_t hd = a->head_dim;
    for (int64_t j = j0; j < j1; j++)
        for (int32_t d0 = 0; d0 < hd; d0 += AT_KT) {
            const int32_t nd = hd - d0 >= AT_KT ? AT_KT : hd - d0;
            at_store_n(vr + (j - j0) * hd + d0, at_load_n(vbase, a->kv_f16, j * hd + d0, nd), nd);
        }
}

#define AT_GROUP 8   /* query rows processed together */

/* One query row: a (token, query head) pair with its own visible keys [lo, pos] (lo <= pos).  A set of
 * rows shares every key tile and value row it loads: the heads of a kv head's group and, in prefill,
 * consecutive tokens, so that a group smaller than AT_GROUP (MHA, SmolLM2's 3) still fills the set. */
typedef struct {
    const float *q;     /* head_dim query values */
    float *out;         /* head_dim outputs */
    int64_t pos, lo;
    int32_t head;       /* the query head (its ALiBi slope) */
} at_row;

/* One row's raw scores v of the AT_KT keys from jt: scaled, ALiBi-biased, lanes outside [first, last]
 * set to -inf (only at the ends of its range), stored at out and folded into the running maximum. */
LR_INLINE void at_score_row(const lr_attn_args *a, const at_row *row, at_vf v, int64_t jt, int64_t first,
                            int64_t last, float *out, at_vf *vmax) {
    v = at_mul(at_set1(a->scale), v);
    if (a->alibi_slopes)
        v = at_fma(at_set1(a->alibi_slopes[row->head]), at_add(at_lanes(), at_set1((float)(jt - row->pos))), v);
    if (first > 0 || last < AT_KT - 1) v = at_keep(v, first, last, -INFINITY);
    at_storeu(out, v);
    *vmax = at_max(*vmax, v);
}

/* The raw scores sc[r] of NR rows for the AT_KT keys from jt, at column col of the rows' score rows (ns
 * apart); SAME: every row has the same range (decode, a token's heads), whose lanes are found once. */
LR_INLINE void at_tile_scores(const lr_attn_args *a, const at_row *rw, const int NR, int same, const at_vf *sc,
                              int64_t jt, float *scores, int64_t ns, int64_t col, at_vf *vmax) {
#define AT_FIRST(R) ((R).lo > jt ? (R).lo - jt : 0)   /* inclusive lanes of row R */
#define AT_LAST(R) ((R).pos - jt)
    if (same) {
        const int64_t first = AT_FIRST(rw[0]), last = AT_LAST(rw[0]);
        LR_UNROLL for (int r = 0; r < NR; r++)
            at_score_row(a, rw + r, sc[r], jt, first, last, scores + r * ns + col, vmax + r);
    } else {
        LR_UNROLL for (int r = 0; r < NR; r++)
            at_score_row(a, rw + r, sc[r], jt, AT_FIRST(rw[r]), AT_LAST(rw[r]), scores + r * ns + col, vmax + r);
    }
#undef AT_FIRST
#undef AT_LAST
}

/* Score rows (NR of ns) -> exp(s - max) in place; inv[r] = 1 / their sum (0 when nothing is visible). */
LR_INLINE void at_softmax(const int NR, float *scores, int64_t ns, const at_vf *vmax, float *inv) {
    LR_UNROLL for (int r = 0; r < NR; r++) {
        const at_vf mx = at_set1(at_hmax(vmax[r]));
        at_vf vsum = at_zero();
        float *sr = scores + r * ns;
        for (int64_t i = 0; i < ns; i += AT_KT) {
            const at_vf e = at_exp(at_sub(at_loadu(sr + i), mx));
            at_storeu(sr + i, e);   /* masked lanes: e^-inf = 0 */
            vsum = at_add(vsum, e);
        }
        const float denom = at_hsum(vsum);
        inv[r] = denom > 0.0f ? 1.0f / denom : 0.0f;
    }
}

/* Where the keys and values of one kv head come from: packed (key tiles kt and value rows vr of the
 * range from key j0, see at_pack_keys / at_pack_values) or, for a single token, the cache rows kb
 * and vb read directly (j0 = 0): each tile is converted and transposed in registers and used at
 * once, values converted as they are read, since one token would not amortize the packing. */
typedef struct {
    const float *kt, *vr;
    const void *kb, *vb;
    int64_t j0;
} at_kv;

/* NR rows of one kv head over the union of their visible keys: every key tile row and value row is
 * loaded once for all NR rows, and CH accumulator chains per row (NR * CH independent chains) hide the
 * FMA latency of the scores.  A key outside a row's range gets probability 0 in that row, so its value
 * adds 0 * v (a non-finite value, which makes a row that sees it non-finite anyway, spreads to the set's
 * other rows).  scores: NR rows of the tile range. */
LR_INLINE void at_rows(const lr_attn_args *a, const at_row *rw, const int NR, const int CH, const int DIRECT,
                       const at_kv *kv, float *scores) {
    const int32_t hd = a->head_dim;
    int64_t lo = rw[0].lo, pos = rw[0].pos;
    int same = 1;
    LR_UNROLL for (int r = 1; r < NR; r++) {
        same &= rw[r].lo == rw[0].lo && rw[r].pos == rw[0].pos;
        lo = rw[r].lo < lo ? rw[r].lo : lo;
        pos = rw[r].pos > pos ? rw[r].pos : pos;
    }
    const int64_t j0 = kv->j0, t0 = (lo - j0) / AT_KT, t1 = (pos - j0) / AT_KT, ns = (t1 - t0 + 1) * AT_KT;
    const int64_t jbase = j0 + t0 * AT_KT;
    const float *qr[AT_GROUP];
    at_vf vmax[AT_GROUP];
    LR_UNROLL for (int r = 0; r < NR; r++) {
        qr[r] = rw[r].q;
        vmax[r] = at_set1(-INFINITY);
    }
    for (int64_t t = t0; t <= t1; t++) {
        const int64_t jt = j0 + t * AT_KT;
        at_vf sc[AT_GROUP][4];
        LR_UNROLL for (int r = 0; r < NR; r++) LR_UNROLL for (int c = 0; c < CH; c++) sc[r][c] = at_zero();
        if (DIRECT) {
            for (int32_t d0 = 0; d0 < hd; d0 += AT_KT) {
                const int32_t nd = hd - d0 >= AT_KT ? AT_KT : hd - d0;
                at_vf k[AT_KT];
                LR_UNROLL for (int l = 0; l < AT_KT; l++)
                    k[l] = jt + l <= pos ? at_load_n(kv->kb, a->kv_f16, (jt + l) * hd + d0, nd) : at_zero();
                at_transpose(k);
                /* dims d of chain d % CH, unrolled so the chains stay in registers */
                LR_UNROLL for (int32_t d = 0; d < AT_KT; d++)
                    if (d < nd)
                        LR_UNROLL for (int r = 0; r < NR; r++)
                            sc[r][d % CH] = at_fma(at_set1(qr[r][d0 + d]), k[d], sc[r][d % CH]);
            }
        } else {
            const float *tile = kv->kt + t * hd * AT_KT;
            int32_t d = 0;
            for (; d + CH <= hd; d += CH)
                LR_UNROLL for (int c = 0; c < CH; c++) {
                    const at_vf kr = at_loadu(tile + (d + c) * AT_KT);
                    LR_UNROLL for (int r = 0; r < NR; r++)
                        sc[r][c] = at_fma(at_set1(qr[r][d + c]), kr, sc[r][c]);
                }
            for (; d < hd; d++) {
                const at_vf kr = at_loadu(tile + d * AT_KT);
                LR_UNROLL for (int r = 0; r < NR; r++) sc[r][0] = at_fma(at_set1(qr[r][d]), kr, sc[r][0]);
            }
        }
        at_vf sum[AT_GROUP];
        LR_UNROLL for (int r = 0; r < NR; r++) {
            sum[r] = sc[r][0];
            LR_UNROLL for (int c = 1; c < CH; c++) sum[r] = at_add(sum[r], sc[r][c]);
        }
        at_tile_scores(a, rw, NR, same, sum, jt, scores, ns, (t - t0) * AT_KT, vmax);
    }
    float inv[AT_GROUP];
    at_softmax(NR, scores, ns, vmax, inv);
    /* out = sum_j p_j v_j: DV vectors of AT_KT dims per pass and PC keys per step, so that NR * DV *
     * PC independent accumulators hide the FMA latency (8 of them for any NR) */
    const int DV = NR >= 8 ? 1 : (NR >= 4 ? 2 : 4), PC = NR == 1 ? 2 : 1;
    for (int32_t d0 = 0; d0 < hd; d0 += AT_KT * DV) {
        int32_t nv[4];
        at_vf acc[AT_GROUP][2][4];
        LR_UNROLL for (int v = 0; v < DV; v++) {
            const int32_t left = hd - d0 - AT_KT * v;
            nv[v] = left >= AT_KT ? AT_KT : (left > 0 ? left : 0);
            LR_UNROLL for (int r = 0; r < NR; r++) LR_UNROLL for (int c = 0; c < PC; c++) acc[r][c][v] = at_zero();
        }
        int full = 1;   /* every vector of the pass whole: loads with no lane count to test per key */
        LR_UNROLL for (int v = 0; v < DV; v++) full &= nv[v] == AT_KT;
        /* keys J of chain C; N: the lane count, AT_KT or nv[v] (v being the macro's own loop variable) */
#define AT_PV(C, J, N)                                                                                     \
    LR_UNROLL for (int v = 0; v < DV; v++)                                                                 \
        if (N) {                                                                                           \
            const int32_t dd = d0 + AT_KT * v;                                                             \
            const at_vf val = DIRECT ? at_load_n(kv->vb, a->kv_f16, (J) * hd + dd, N)                      \
                                     : at_load_fn(kv->vr + ((J) - j0) * hd + dd, N);                       \
            LR_UNROLL for (int r = 0; r < NR; r++)                                                         \
                acc[r][C][v] = at_fma(at_set1(scores[r * ns + (J) - jbase]), val, acc[r][C][v]);           \
        }
        int64_t j = lo;
        if (full)
            for (; j + PC - 1 <= pos; j += PC)
                LR_UNROLL for (int c = 0; c < PC; c++) AT_PV(c, j + c, AT_KT)
        for (; j + PC - 1 <= pos; j += PC)
            LR_UNROLL for (int c = 0; c < PC; c++) AT_PV(c, j + c, nv[v])
        for (; j <= pos; j++) AT_PV(0, j, nv[v])
#undef AT_PV
        LR_UNROLL for (int v = 0; v < DV; v++)
            if (nv[v])
                LR_UNROLL for (int r = 0; r < NR; r++) {
                    at_vf o = acc[r][0][v];
                    LR_UNROLL for (int c = 1; c < PC; c++) o = at_add(o, acc[r][c][v]);
                    at_store_n(rw[r].out + d0 + AT_KT * v, at_mul(o, at_set1(inv[r])), nv[v]);
                }
    }
}

/* n <= AT_GROUP rows: as many as fit in sets of 8, 4, 2 and 1, with up to 8 chains of scores (4 when
 * reading the cache directly: its AT_KT transposed keys take registers too, and 8 chains were 14% slower
 * for 4 rows on Zen 3). */
LR_INLINE void at_row_sets(const lr_attn_args *a, const at_row *rw, int n, const int DIRECT, const at_kv *kv,
                           float *scores) {
    int i = 0;
    for (; i + 8 <= n; i += 8) at_rows(a, rw + i, 8, 1, DIRECT, kv, scores);
    for (; i + 4 <= n; i += 4) at_rows(a, rw + i, 4, DIRECT ? 1 : 2, DIRECT, kv, scores);
    for (; i + 2 <= n; i += 2) at_rows(a, rw + i, 2, DIRECT ? 2 : 4, DIRECT, kv, scores);
    for (; i < n; i++) at_rows(a, rw + i, 1, 4, DIRECT, kv, scores);
}

/* The rows of kv head kvh for tokens [tb0, tb1), token-major, in sets of AT_GROUP: a token with
 * nothing visible gets zeros, as the reference. */
LR_INLINE void at_item(const lr_attn_args *a, int32_t kvh, int64_t tb0, int64_t tb1, const int DIRECT,
                       const at_kv *kv, float *scores) {
    const int32_t hd = a->head_dim, group = a->n_head / a->n_kv_head;
    at_row set[AT_GROUP];
    int n = 0;
    for (int64_t t = tb0; t < tb1; t++) {
        const int64_t pos = a->pos0 + t;
        int64_t lo = a->kv_begin;
        if (a->window > 0 && pos - a->window + 1 > lo) lo = pos - a->window + 1;
        const float *qrow = a->q + t * a->q_stride;
        float *orow = a->out + t * a->out_stride;
        if (lo > pos) {
            memset(orow + (int64_t)kvh * group * hd, 0, (size_t)group * hd * sizeof(float));
            continue;
        }
        for (int32_t h = kvh * group; h < (kvh + 1) * group; h++) {
            const at_row row = {qrow + (int64_t)h * hd, orow + (int64_t)h * hd, pos, lo, h};
            set[n++] = row;
            if (n == AT_GROUP) {
                at_rows(a, set, AT_GROUP, 1, DIRECT, kv, scores);
                n = 0;
            }
        }
    }
    at_row_sets(a, set, n, DIRECT, kv, scores);
}

static void x86_attention(const lr_attn_args *a) {
    const int32_t hd = a->head_dim, group = a->n_head / a->n_kv_head;
    /* tokens per work item: the packed keys and values serve about AT_TOKENS * AT_GROUP rows (MHA with 16
     * tokens an item ran 16-19 GMAC/s on a Zen 3 core, with 128 tokens 28.6) */
    const int64_t block = AT_TOKENS * ((AT_GROUP + group - 1) / group);
    const int64_t tblocks = (a->n_tok + block - 1) / block, items = tblocks * a->n_kv_head;
    const int64_t kv_stride = a->ctx * hd;
    const size_t esize = a->kv_f16 ? 2 : 4;
    int ok = 1;
    LR_OMP(parallel if (items > 1 || a->n_tok * a->n_head > 1) reduction(&& : ok))
    {
        /* per thread: key tiles and value rows of the whole context (not for single tokens, which
         * read the cache directly), AT_GROUP rows of scores */
        const int64_t cap = (a->ctx + AT_KT - 1) / AT_KT * AT_KT;
        const int packed = a->n_tok > 1;
        const size_t nkv = packed ? (size_t)(cap * hd) : 0, nsc = (size_t)(AT_GROUP * (cap + AT_KT));
        float *kt = (float *)lr_thread_scratch(LR_SCRATCH_ATTN, (2 * nkv + nsc) * sizeof(float));
        float *vr = kt ? kt + nkv : NULL;
        float *scores = kt ? kt + 2 * nkv : NULL;
        /* every thread takes part in the loop (a worksharing loop must be met by all) */
        LR_OMP(for schedule(dynamic, 1))
        for (int64_t it = 0; it < items; it++) {
            const int32_t kvh = (int32_t)(it % a->n_kv_head);
            const char *kb = (const char *)a->k_cache + (size_t)(kvh * kv_stride) * esize;
            const char *vb = (const char *)a->v_cache + (size_t)(kvh * kv_stride) * esize;
            if (!kt) {
                ok = 0;
            } else if (!packed) {
                const at_kv kv = {NULL, NULL, kb, vb, 0};
                at_item(a, kvh, 0, 1, 1, &kv, scores);
            } else {
                /* the last token blocks, which see the most keys, first: shorter items end the loop */
                const int64_t tb0 = (tblocks - 1 - it / a->n_kv_head) * block;
                const int64_t tb1 = lr_min64(tb0 + block, a->n_tok);
                /* keys visible to any token of the block */
                int64_t j0 = a->kv_begin;
                if (a->window > 0 && a->pos0 + tb0 - a->window + 1 > j0) j0 = a->pos0 + tb0 - a->window + 1;
                const int64_t j1 = a->pos0 + tb1;   /* exclusive */
                at_pack_keys(a, kb, j0, j1, kt);
                at_pack_values(a, vb, j0, j1, vr);
                const at_kv kv = {kt, vr, NULL, NULL, j0};
                at_item(a, kvh, tb0, tb1, 0, &kv, scores);
            }
        }
    }
    if (!ok) generic_attention(a);
}

#endif
