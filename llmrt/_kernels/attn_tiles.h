/* Width-generic attention over the KV cache; included by attn512.h (16 lanes) and attn256.h (8 lanes).
 *
 * Work items are (kv head, block of query tokens): the keys an item can see are converted once to
 * fp32 and transposed into tiles of AT_KT keys x head_dim, so one query row's scores for AT_KT keys
 * are head_dim FMAs of a broadcast query element, and every query head of the kv head's group (GQA)
 * reuses the converted tiles; values are converted once into fp32 rows.  A single token (decode)
 * reads the cache directly instead (at_kv).  Softmax and the weighted sum of values run in fp32 on
 * vectors.  Same semantics as generic_attention (kernels.h).
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

#define AT_TOKENS 16      /* query tokens per work item */

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

#define AT_GROUP 8   /* query heads of one kv head processed together */

/* Raw scores sc[h] of NH heads h0.. for the AT_KT keys from position jt: scaled, ALiBi-biased, keys
 * outside [lo, pos] set to -inf, stored at column col of the heads' score rows (ns apart), and
 * folded into the running maxima. */
LR_INLINE void at_tile_scores(const lr_attn_args *a, int32_t h0, const int NH, const at_vf *sc, int64_t jt,
                              int64_t pos, int64_t lo, float *scores, int64_t ns, int64_t col, at_vf *vmax) {
    const at_vf scale = at_set1(a->scale);
    const int64_t first = lo > jt ? lo - jt : 0, last = pos - jt;   /* inclusive lane range */
    const at_vf rel = at_add(at_lanes(), at_set1((float)(jt - pos)));
    LR_UNROLL for (int h = 0; h < NH; h++) {
        at_vf v = at_mul(scale, sc[h]);
        if (a->alibi_slopes) v = at_fma(at_set1(a->alibi_slopes[h0 + h]), rel, v);
        v = at_keep(v, first, last, -INFINITY);
        at_storeu(scores + h * ns + col, v);
        vmax[h] = at_max(vmax[h], v);
    }
}

/* Score rows (NH of ns) -> exp(s - max) in place; inv[h] = 1 / their sum (0 when nothing is visible). */
LR_INLINE void at_softmax(const int NH, float *scores, int64_t ns, const at_vf *vmax, float *inv) {
    LR_UNROLL for (int h = 0; h < NH; h++) {
        const at_vf mx = at_set1(at_hmax(vmax[h]));
        at_vf vsum = at_zero();
        float *sh = scores + h * ns;
        for (int64_t i = 0; i < ns; i += AT_KT) {
            const at_vf e = at_exp(at_sub(at_loadu(sh + i), mx));
            at_storeu(sh + i, e);   /* masked lanes: e^-inf = 0 */
            vsum = at_add(vsum, e);
        }
        const float denom = at_hsum(vsum);
        inv[h] = denom > 0.0f ? 1.0f / denom : 0.0f;
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

/* NH query heads h0.. of one kv head, one token at position pos, over keys [lo, pos]: every key
 * tile row and value row is loaded once for all NH heads, and CH accumulator chains per head (NH *
 * CH independent chains) hide the FMA latency of the scores.  scores: NH rows of the tile range. */
LR_INLINE void at_heads(const lr_attn_args *a, int32_t h0, const int NH, const int CH, const int DIRECT,
                        const at_kv *kv, int64_t pos, int64_t lo, const float *qrow, float *scores, float *orow) {
    const int32_t hd = a->head_dim;
    const int64_t j0 = kv->j0, t0 = (lo - j0) / AT_KT, t1 = (pos - j0) / AT_KT, ns = (t1 - t0 + 1) * AT_KT;
    const int64_t jbase = j0 + t0 * AT_KT;
    const float *qh[AT_GROUP];
    at_vf vmax[AT_GROUP];
    LR_UNROLL for (int h = 0; h < NH; h++) {
        qh[h] = qrow + (int64_t)(h0 + h) * hd;
        vmax[h] = at_set1(-INFINITY);
    }
    for (int64_t t = t0; t <= t1; t++) {
        const int64_t jt = j0 + t * AT_KT;
        at_vf sc[AT_GROUP][4];
        LR_UNROLL for (int h = 0; h < NH; h++) LR_UNROLL for (int c = 0; c < CH; c++) sc[h][c] = at_zero();
        if (DIRECT) {
            for (int32_t d0 = 0; d0 < hd; d0 += AT_KT) {
                const int32_t nd = hd - d0 >= AT_KT ? AT_KT : hd - d0;
                at_vf r[AT_KT];
                LR_UNROLL for (int l = 0; l < AT_KT; l++)
                    r[l] = jt + l <= pos ? at_load_n(kv->kb, a->kv_f16, (jt + l) * hd + d0, nd) : at_zero();
                at_transpose(r);
                /* dims d of chain d % CH, unrolled so the chains stay in registers */
                LR_UNROLL for (int32_t d = 0; d < AT_KT; d++)
                    if (d < nd)
                        LR_UNROLL for (int h = 0; h < NH; h++)
                            sc[h][d % CH] = at_fma(at_set1(qh[h][d0 + d]), r[d], sc[h][d % CH]);
            }
        } else {
            const float *tile = kv->kt + t * hd * AT_KT;
            int32_t d = 0;
            for (; d + CH <= hd; d += CH)
                LR_UNROLL for (int c = 0; c < CH; c++) {
                    const at_vf kr = at_loadu(tile + (d + c) * AT_KT);
                    LR_UNROLL for (int h = 0; h < NH; h++)
                        sc[h][c] = at_fma(at_set1(qh[h][d + c]), kr, sc[h][c]);
                }
            for (; d < hd; d++) {
                const at_vf kr = at_loadu(tile + d * AT_KT);
                LR_UNROLL for (int h = 0; h < NH; h++) sc[h][0] = at_fma(at_set1(qh[h][d]), kr, sc[h][0]);
            }
        }
        at_vf sum[AT_GROUP];
        LR_UNROLL for (int h = 0; h < NH; h++) {
            sum[h] = sc[h][0];
            LR_UNROLL for (int c = 1; c < CH; c++) sum[h] = at_add(sum[h], sc[h][c]);
        }
        at_tile_scores(a, h0, NH, sum, jt, pos, lo, scores, ns, (t - t0) * AT_KT, vmax);
    }
    float inv[AT_GROUP];
    at_softmax(NH, scores, ns, vmax, inv);
    /* out = sum_j p_j v_j: DV vectors of AT_KT dims per pass and PC keys per step, so that NH * DV *
     * PC independent accumulators hide the FMA latency (8 heads: 1 x 1; one head: 4 x 2) */
    const int DV = NH >= 4 ? 1 : 4, PC = NH >= 4 ? 1 : 2;
    for (int32_t d0 = 0; d0 < hd; d0 += AT_KT * DV) {
        int32_t nv[4];
        at_vf acc[AT_GROUP][2][4];
        LR_UNROLL for (int v = 0; v < DV; v++) {
            const int32_t left = hd - d0 - AT_KT * v;
            nv[v] = left >= AT_KT ? AT_KT : (left > 0 ? left : 0);
            LR_UNROLL for (int h = 0; h < NH; h++) LR_UNROLL for (int c = 0; c < PC; c++) acc[h][c][v] = at_zero();
        }
#define AT_PV(C, J)                                                                                        \
    LR_UNROLL for (int v = 0; v < DV; v++)                                                                 \
        if (nv[v]) {                                                                                       \
            const int32_t dd = d0 + AT_KT * v;                                                             \
            const at_vf val = DIRECT ? at_load_n(kv->vb, a->kv_f16, (J) * hd + dd, nv[v])                 \
                                     : at_load_fn(kv->vr + ((J) - j0) * hd + dd, nv[v]);                  \
            LR_UNROLL for (int h = 0; h < NH; h++)                                                         \
                acc[h][C][v] = at_fma(at_set1(scores[h * ns + (J) - jbase]), val, acc[h][C][v]);           \
        }
        int64_t j = lo;
        for (; j + PC - 1 <= pos; j += PC)
            LR_UNROLL for (int c = 0; c < PC; c++) AT_PV(c, j + c)
        for (; j <= pos; j++) AT_PV(0, j)
#undef AT_PV
        LR_UNROLL for (int v = 0; v < DV; v++)
            if (nv[v])
                LR_UNROLL for (int h = 0; h < NH; h++) {
                    at_vf o = acc[h][0][v];
                    LR_UNROLL for (int c = 1; c < PC; c++) o = at_add(o, acc[h][c][v]);
                    at_store_n(orow + (int64_t)(h0 + h) * hd + d0 + AT_KT * v, at_mul(o, at_set1(inv[h])), nv[v]);
                }
    }
}
/* Every query head of kv head kvh for the token at position pos (lo: first visible key): groups of
 * 8 or 4 heads together, single heads (MHA) with 4 chains each. */
LR_INLINE void at_group(const lr_attn_args *a, int32_t kvh, const int DIRECT, const at_kv *kv, int64_t pos,
                        int64_t lo, const float *qrow, float *scores, float *orow) {
    const int32_t group = a->n_head / a->n_kv_head, h1 = (kvh + 1) * group;
    int32_t h = kvh * group;
    for (; h + 8 <= h1; h += 8) at_heads(a, h, 8, 1, DIRECT, kv, pos, lo, qrow, scores, orow);
    for (; h + 4 <= h1; h += 4) at_heads(a, h, 4, 1, DIRECT, kv, pos, lo, qrow, scores, orow);
    for (; h < h1; h++) at_heads(a, h, 1, 4, DIRECT, kv, pos, lo, qrow, scores, orow);
}

static void x86_attention(const lr_attn_args *a) {
    const int32_t hd = a->head_dim, group = a->n_head / a->n_kv_head;
    const int64_t tblocks = (a->n_tok + AT_TOKENS - 1) / AT_TOKENS, items = tblocks * a->n_kv_head;
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
            if (!kt) {
                ok = 0;
            } else if (!packed) {
                const int32_t kvh = (int32_t)it;
                int64_t lo = a->kv_begin;
                if (a->window > 0 && a->pos0 - a->window + 1 > lo) lo = a->pos0 - a->window + 1;
                float *orow = a->out;
                if (lo > a->pos0) {
                    memset(orow + (int64_t)kvh * group * hd, 0, (size_t)group * hd * sizeof(float));
                } else {
                    const at_kv kv = {NULL, NULL, (const char *)a->k_cache + (size_t)(kvh * kv_stride) * esize,
                                      (const char *)a->v_cache + (size_t)(kvh * kv_stride) * esize, 0};
                    at_group(a, kvh, 1, &kv, a->pos0, lo, a->q, scores, orow);
                }
            } else {
                const int32_t kvh = (int32_t)(it % a->n_kv_head);
                const int64_t tb0 = (it / a->n_kv_head) * AT_TOKENS;
                const int64_t tb1 = lr_min64(tb0 + AT_TOKENS, a->n_tok);
                /* keys visible to any token of the block */
                int64_t j0 = a->kv_begin;
                if (a->window > 0 && a->pos0 + tb0 - a->window + 1 > j0) j0 = a->pos0 + tb0 - a->window + 1;
                const int64_t j1 = a->pos0 + tb1;   /* exclusive */
                const char *kb = (const char *)a->k_cache + (size_t)(kvh * kv_stride) * esize;
                const char *vb = (const char *)a->v_cache + (size_t)(kvh * kv_stride) * esize;
                at_pack_keys(a, kb, j0, j1, kt);
                at_pack_values(a, vb, j0, j1, vr);
                const at_kv kv = {kt, vr, NULL, NULL, j0};
                for (int64_t t = tb0; t < tb1; t++) {
                    const int64_t pos = a->pos0 + t;
                    int64_t lo = a->kv_begin;
                    if (a->window > 0 && pos - a->window + 1 > lo) lo = pos - a->window + 1;
                    const float *qrow = a->q + t * a->q_stride;
                    float *orow = a->out + t * a->out_stride;
                    if (lo > pos) {   /* nothing visible: zeros, as the reference */
                        memset(orow + (int64_t)kvh * group * hd, 0, (size_t)group * hd * sizeof(float));
                        continue;
                    }
                    at_group(a, kvh, 0, &kv, pos, lo, qrow, scores, orow);
                }
            }
        }
    }
    if (!ok) generic_attention(a);
}

#endif
