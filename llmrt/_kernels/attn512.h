/* Attention over the KV cache with 512-bit vectors (included by avx512_impl.h).
 *
 * Work items are (kv head, block of query tokens): the keys an item can see are converted once to
 * fp32 and transposed into tiles of 16 keys x head_dim, so one query row's scores for 16 keys are
 * head_dim FMAs of a broadcast query element, and every query head of the kv head's group (GQA)
 * reuses the converted tiles; values are converted once into fp32 rows.  A single token (decode)
 * reads the cache directly instead (at_kv).  Softmax and the weighted sum of values run in fp32 on
 * vectors.  Same semantics as generic_attention (kernels.h). */
#ifndef LLMRT_ATTN512_H
#define LLMRT_ATTN512_H

#include <math.h>

#include "vmath512.h"

#define AT_KT 16          /* keys per tile */
#define AT_TOKENS 16      /* query tokens per work item */

/* 16 values of a cache row (fp16 or fp32) from element i as floats; fewer when masked. */
LR_INLINE __m512 at_load(const void *base, int f16, int64_t i, __mmask16 m) {
    if (f16) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)base + i));
    return _mm512_maskz_loadu_ps(m, (const float *)base + i);
}

/* r[i] = column i of the 16 x 16 block whose rows are r[0..15] (in place). */
LR_INLINE void at_transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4)
        for (int h = 0; h < 2; h++) {
            const __m512d a = _mm512_castps_pd(t[i + h]), b = _mm512_castps_pd(t[i + 2 + h]);
            r[i + 2 * h] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
            r[i + 2 * h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        }
    /* r[4g + o], 128-bit lane L: rows 4g..4g+3 of column 4L + o; a 4 x 4 transpose of lanes is left */
    for (int i = 0; i < 8; i++) {
        const int a = (i / 4) * 8 + (i % 4), b = a + 4;
        t[a] = _mm512_shuffle_f32x4(r[a], r[b], _MM_SHUFFLE(2, 0, 2, 0));
        t[b] = _mm512_shuffle_f32x4(r[a], r[b], _MM_SHUFFLE(3, 1, 3, 1));
    }
    for (int i = 0; i < 8; i++) {
        const int a = i, b = i + 8;
        r[a] = _mm512_shuffle_f32x4(t[a], t[b], _MM_SHUFFLE(2, 0, 2, 0));
        r[b] = _mm512_shuffle_f32x4(t[a], t[b], _MM_SHUFFLE(3, 1, 3, 1));
    }
}

/* Keys [j0, j1) of one kv head into tiles kt[(j - j0) / 16][d][16] (lanes past j1 zero): 16 keys x
 * 16 dims at a time, converted and transposed in registers. */
static void at_pack_keys(const lr_attn_args *a, const void *kbase, int64_t j0, int64_t j1, float *kt) {
    const int32_t hd = a->head_dim;
    const int64_t nt = (j1 - j0 + AT_KT - 1) / AT_KT;
    for (int64_t t = 0; t < nt; t++) {
        float *tile = kt + t * hd * AT_KT;
        for (int32_t d0 = 0; d0 < hd; d0 += 16) {
            const int32_t nd = hd - d0 >= 16 ? 16 : hd - d0;
            const __mmask16 m = (__mmask16)(nd == 16 ? 0xFFFF : (1u << nd) - 1);
            __m512 r[16];
            for (int l = 0; l < AT_KT; l++) {
                const int64_t j = j0 + t * AT_KT + l;
                r[l] = j < j1 ? at_load(kbase, a->kv_f16, j * hd + d0, m) : _mm512_setzero_ps();
            }
            at_transpose16(r);
            for (int32_t d = 0; d < nd; d++) _mm512_storeu_ps(tile + (d0 + d) * AT_KT, r[d]);
        }
    }
}

/* Values [j0, j1) of one kv head as fp32 rows vr[(j - j0) * hd]. */
static void at_pack_values(const lr_attn_args *a, const void *vbase, int64_t j0, int64_t j1, float *vr) {
    const int32_t hd = a->head_dim;
    for (int64_t j = j0; j < j1; j++)
        for (int32_t d0 = 0; d0 < hd; d0 += 16) {
            const __mmask16 m = (__mmask16)(hd - d0 >= 16 ? 0xFFFF : (1u << (hd - d0)) - 1);
            _mm512_mask_storeu_ps(vr + (j - j0) * hd + d0, m, at_load(vbase, a->kv_f16, j * hd + d0, m));
        }
}

#define AT_GROUP 8   /* query heads of one kv head processed together */

/* Raw scores sc[h] of NH heads h0.. for the 16 keys from position jt: scaled, ALiBi-biased, keys
 * outside [lo, pos] set to -inf, stored at column col of the heads' score rows (ns apart), and
 * folded into the running maxima. */
LR_INLINE void at_tile_scores(const lr_attn_args *a, int32_t h0, const int NH, const __m512 *sc, int64_t jt,
                              int64_t pos, int64_t lo, float *scores, int64_t ns, int64_t col, __m512 *vmax) {
    const __m512 scale = _mm512_set1_ps(a->scale);
    const __m512 lane = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const int64_t first = lo > jt ? lo - jt : 0, last = pos - jt;   /* inclusive lane range */
    const __mmask16 in = (__mmask16)(((last >= 15 ? 0xFFFFu : (2u << last) - 1u)) & ~((1u << first) - 1u));
    const __m512 rel = _mm512_add_ps(lane, _mm512_set1_ps((float)(jt - pos)));
    LR_UNROLL for (int h = 0; h < NH; h++) {
        __m512 v = _mm512_mul_ps(scale, sc[h]);
        if (a->alibi_slopes) v = _mm512_fmadd_ps(_mm512_set1_ps(a->alibi_slopes[h0 + h]), rel, v);
        v = _mm512_mask_blend_ps(in, _mm512_set1_ps(-INFINITY), v);
        _mm512_storeu_ps(scores + h * ns + col, v);
        vmax[h] = _mm512_max_ps(vmax[h], v);
    }
}

/* Score rows (NH of ns) -> exp(s - max) in place; inv[h] = 1 / their sum (0 when nothing is visible). */
LR_INLINE void at_softmax(const int NH, float *scores, int64_t ns, const __m512 *vmax, float *inv) {
    LR_UNROLL for (int h = 0; h < NH; h++) {
        const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(vmax[h]));
        __m512 vsum = _mm512_setzero_ps();
        float *sh = scores + h * ns;
        for (int64_t i = 0; i < ns; i += 16) {
            const __m512 e = vm_exp(_mm512_sub_ps(_mm512_loadu_ps(sh + i), mx));
            _mm512_storeu_ps(sh + i, e);   /* masked lanes: e^-inf = 0 */
            vsum = _mm512_add_ps(vsum, e);
        }
        const float denom = _mm512_reduce_add_ps(vsum);
        inv[h] = denom > 0.0f ? 1.0f / denom : 0.0f;
    }
}

/* Where the keys and values of one kv head come from: packed (key tiles kt and value rows vr of the
 * range from key j0, see at_pack_keys / at_pack_values) or, for a single token, the cache rows kb
 * and vb read directly (j0 = 0): each 16-key tile is converted and transposed in registers and used
 * at once, values converted as they are read, since one token would not amortize the packing. */
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
    __m512 vmax[AT_GROUP];
    LR_UNROLL for (int h = 0; h < NH; h++) {
        qh[h] = qrow + (int64_t)(h0 + h) * hd;
        vmax[h] = _mm512_set1_ps(-INFINITY);
    }
    for (int64_t t = t0; t <= t1; t++) {
        const int64_t jt = j0 + t * AT_KT;
        __m512 sc[AT_GROUP][4];
        LR_UNROLL for (int h = 0; h < NH; h++) LR_UNROLL for (int c = 0; c < CH; c++) sc[h][c] = _mm512_setzero_ps();
        if (DIRECT) {
            for (int32_t d0 = 0; d0 < hd; d0 += 16) {
                const int32_t nd = hd - d0 >= 16 ? 16 : hd - d0;
                const __mmask16 m = (__mmask16)(nd == 16 ? 0xFFFF : (1u << nd) - 1);
                __m512 r[16];
                LR_UNROLL for (int l = 0; l < AT_KT; l++)
                    r[l] = jt + l <= pos ? at_load(kv->kb, a->kv_f16, (jt + l) * hd + d0, m) : _mm512_setzero_ps();
                at_transpose16(r);
                /* dims d of chain d % CH, unrolled so the chains stay in registers */
                LR_UNROLL for (int32_t d = 0; d < 16; d++)
                    if (d < nd)
                        LR_UNROLL for (int h = 0; h < NH; h++)
                            sc[h][d % CH] = _mm512_fmadd_ps(_mm512_set1_ps(qh[h][d0 + d]), r[d], sc[h][d % CH]);
            }
        } else {
            const float *tile = kv->kt + t * hd * AT_KT;
            int32_t d = 0;
            for (; d + CH <= hd; d += CH)
                LR_UNROLL for (int c = 0; c < CH; c++) {
                    const __m512 kr = _mm512_loadu_ps(tile + (d + c) * AT_KT);
                    LR_UNROLL for (int h = 0; h < NH; h++)
                        sc[h][c] = _mm512_fmadd_ps(_mm512_set1_ps(qh[h][d + c]), kr, sc[h][c]);
                }
            for (; d < hd; d++) {
                const __m512 kr = _mm512_loadu_ps(tile + d * AT_KT);
                LR_UNROLL for (int h = 0; h < NH; h++) sc[h][0] = _mm512_fmadd_ps(_mm512_set1_ps(qh[h][d]), kr, sc[h][0]);
            }
        }
        __m512 sum[AT_GROUP];
        LR_UNROLL for (int h = 0; h < NH; h++) {
            sum[h] = sc[h][0];
            LR_UNROLL for (int c = 1; c < CH; c++) sum[h] = _mm512_add_ps(sum[h], sc[h][c]);
        }
        at_tile_scores(a, h0, NH, sum, jt, pos, lo, scores, ns, (t - t0) * AT_KT, vmax);
    }
    float inv[AT_GROUP];
    at_softmax(NH, scores, ns, vmax, inv);
    /* out = sum_j p_j v_j: DV vectors of 16 dims per pass and PC keys per step, so that NH * DV * PC
     * independent accumulators hide the FMA latency (8 heads: 1 x 1; one head: 4 x 2) */
    const int DV = NH >= 4 ? 1 : 4, PC = NH >= 4 ? 1 : 2;
    for (int32_t d0 = 0; d0 < hd; d0 += 16 * DV) {
        __mmask16 md[4];
        __m512 acc[AT_GROUP][2][4];
        LR_UNROLL for (int v = 0; v < DV; v++) {
            const int32_t left = hd - d0 - 16 * v;
            md[v] = (__mmask16)(left >= 16 ? 0xFFFF : (left > 0 ? (1u << left) - 1 : 0));
            LR_UNROLL for (int h = 0; h < NH; h++) LR_UNROLL for (int c = 0; c < PC; c++) acc[h][c][v] = _mm512_setzero_ps();
        }
#define AT_PV(C, J)                                                                                        \
    LR_UNROLL for (int v = 0; v < DV; v++)                                                                 \
        if (md[v]) {                                                                                       \
            const int32_t dd = d0 + 16 * v;                                                                \
            const __m512 val = DIRECT ? at_load(kv->vb, a->kv_f16, (J) * hd + dd, md[v])                  \
                                      : _mm512_maskz_loadu_ps(md[v], kv->vr + ((J) - j0) * hd + dd);       \
            LR_UNROLL for (int h = 0; h < NH; h++)                                                         \
                acc[h][C][v] = _mm512_fmadd_ps(_mm512_set1_ps(scores[h * ns + (J) - jbase]), val, acc[h][C][v]); \
        }
        int64_t j = lo;
        for (; j + PC - 1 <= pos; j += PC)
            LR_UNROLL for (int c = 0; c < PC; c++) AT_PV(c, j + c)
        for (; j <= pos; j++) AT_PV(0, j)
#undef AT_PV
        LR_UNROLL for (int v = 0; v < DV; v++)
            if (md[v])
                LR_UNROLL for (int h = 0; h < NH; h++) {
                    __m512 o = acc[h][0][v];
                    LR_UNROLL for (int c = 1; c < PC; c++) o = _mm512_add_ps(o, acc[h][c][v]);
                    _mm512_mask_storeu_ps(orow + (int64_t)(h0 + h) * hd + d0 + 16 * v, md[v],
                                          _mm512_mul_ps(o, _mm512_set1_ps(inv[h])));
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
