/* amx tier: the avx512_vnni kernels, with qgemm_i8 on AMX tiles for 16 or more activation rows.
 *
 * Per 32-block b, one TDPBSSD multiplies a 16 x 32 tile of weight bytes (A: 16 weight rows) by the
 * activation bytes of 16 rows (B, pre-arranged once per call into the 4-byte-interleaved layout
 * the instruction reads), giving C[j][r] in int32.  The scales are per block, so every product
 * tile is stored and scaled by d_w[j] * d_a[r] in float registers (one accumulator per weight row,
 * lanes = activation rows) while the next blocks' tile products run.
 * The weights of 16 rows are packed per pass into contiguous 512-byte A tiles per block:
 *   int8: copied.  int4: unpacked to bytes u - 8 (no m; then w = d * A exactly) or u (with m;
 *   m * sum_a then goes through the activation block sums as in i8_common.h).
 * Weight rows past the last multiple of 16, activation rows past the last multiple of 16 and calls
 * with fewer than 16 activation rows go to the avx512_vnni code.  dispatch.c selects this tier
 * only when cpuid, XCR0 and the OS (arch_prctl on Linux) allow AMX tile data. */
#define LR_VNNI 1
#include "avx512_impl.h"

#define AMX_T 16   /* rows of a tile: weight rows of A, activation rows of B's columns */

typedef struct {
    uint8_t palette;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_tilecfg;

/* Tiles 0-3: C (16 x 16 int32); 4, 5: A (16 x 32 bytes); 6, 7: B (8 x 64 bytes). */
static void amx_configure(void) {
    amx_tilecfg cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.palette = 1;
    for (int t = 0; t < 4; t++) {
        cfg.rows[t] = AMX_T;
        cfg.colsb[t] = 64;
    }
    for (int t = 0; t < 2; t++) {
        cfg.rows[4 + t] = AMX_T;
        cfg.colsb[4 + t] = LR_QK;
        cfg.rows[6 + t] = LR_QK / 4;
        cfg.colsb[6 + t] = 64;
    }
    _tile_loadconfig(&cfg);
}

typedef struct {
    const lr_qmat *w;
    const lr_qact *a;
    float *y;
    int64_t ldy;
    const int32_t *xt;   /* per 16-row activation tile: k/4 rows of 16 dwords (B tiles, 512 B per block) */
    const float *dv;     /* per activation tile and block: 16 activation scales */
    const float *sv;     /* with m: per activation tile and group: 16 values of S, else NULL */
} amx_ctx;

/* A tiles of 16 weight rows from j0, contiguous per block (16 rows x 32 bytes, element order; a
 * strided tile load of the matrix rows would thrash L1 sets).  int4: bytes u - 8 (bias) or u. */
static void amx_pack_a(const lr_qmat *w, int64_t j0, int bias, uint8_t *out) {
    const int64_t k = w->k, nb = k / LR_QK;
    if (w->bits == 8) {
        for (int j = 0; j < AMX_T; j++) {
            const uint8_t *src = w->qs + (j0 + j) * k;
            for (int64_t b = 0; b < nb; b++)
                _mm256_storeu_si256((__m256i *)(out + (b * AMX_T + j) * LR_QK),
                                    _mm256_loadu_si256((const __m256i *)(src + b * LR_QK)));
        }
        return;
    }
    const __m512i lo4 = _mm512_set1_epi8(0x0f), sub = _mm512_set1_epi8(bias ? 8 : 0);
    const __m512i i0 = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11), i1 = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
    for (int j = 0; j < AMX_T; j++) {
        const uint8_t *src = w->qs + (j0 + j) * (k / 2);
        for (int64_t b = 0; b < nb; b += 4) {   /* 4 blocks: 64 packed bytes -> 4 x 32 bytes */
            const int64_t nbs = lr_min64(4, nb - b);
            const __m512i v = nbs == 4 ? _mm512_loadu_si512(src + b * 16)
                                       : _mm512_maskz_loadu_epi8((1ull << (16 * nbs)) - 1, src + b * 16);
            const __m512i lo = _mm512_sub_epi8(_mm512_and_si512(v, lo4), sub);
            const __m512i hi = _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(v, 4), lo4), sub);
            /* per block: low nibbles (elements 0-15) then high nibbles (16-31) */
            const __m512i o0 = _mm512_permutex2var_epi64(lo, i0, hi), o1 = _mm512_permutex2var_epi64(lo, i1, hi);
            const __m256i blk[4] = {_mm512_castsi512_si256(o0), _mm512_extracti64x4_epi64(o0, 1),
                                    _mm512_castsi512_si256(o1), _mm512_extracti64x4_epi64(o1, 1)};
            for (int i = 0; i < nbs; i++)
                _mm256_storeu_si256((__m256i *)(out + ((b + i) * AMX_T + j) * LR_QK), blk[i]);
        }
    }
}

/* The same A tiles from panel p (kernels.h): per block, the 8 vectors of 16 row dwords (int4: low
 * then high nibbles of the 4 byte vectors; int8: the 8 byte vectors) are transposed to 16 rows of
 * 8 dwords, i.e. each row's 32 elements in order. */
static void amx_pack_a_panel(const lr_qmat *w, int64_t p, uint8_t *out) {
    const int64_t nb = w->k / LR_QK, ng = w->k / w->group, bpg = w->group / LR_QK, gb = pn_group_bytes(w);
    const int64_t bb = w->bits == 4 ? 256 : 512;
    const __m512i lo4 = _mm512_set1_epi8(0x0f), x80 = _mm512_set1_epi8((char)0x80);
    const __m512i sub = _mm512_set1_epi8(w->bits == 4 && !w->panel_m ? 8 : 0);
    const __m512i i01 = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const __m512i i23 = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w->panels + (p * ng + b / bpg) * gb + (b % bpg) * bb;
        __m512i V[8];
        if (w->bits == 4) {
            for (int v = 0; v < 4; v++) {
                const __m512i wv = _mm512_loadu_si512(blk + 64 * v);
                V[v] = _mm512_sub_epi8(_mm512_and_si512(wv, lo4), sub);
                V[4 + v] = _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(wv, 4), lo4), sub);
            }
        } else {
            for (int v = 0; v < 8; v++) V[v] = _mm512_xor_si512(_mm512_loadu_si512(blk + 64 * v), x80);
        }
        /* X[x] / Y[x]: 128-bit lane L holds row 4L + x, dwords of columns 0-3 / 4-7 */
        __m512i X[4], Y[4];
        for (int h = 0; h < 2; h++) {
            const __m512i *U = V + 4 * h;
            const __m512i t0 = _mm512_unpacklo_epi32(U[0], U[1]), t1 = _mm512_unpackhi_epi32(U[0], U[1]);
            const __m512i t2 = _mm512_unpacklo_epi32(U[2], U[3]), t3 = _mm512_unpackhi_epi32(U[2], U[3]);
            __m512i *Z = h ? Y : X;
            Z[0] = _mm512_unpacklo_epi64(t0, t2);
            Z[1] = _mm512_unpackhi_epi64(t0, t2);
            Z[2] = _mm512_unpacklo_epi64(t1, t3);
            Z[3] = _mm512_unpackhi_epi64(t1, t3);
        }
        uint8_t *o = out + b * AMX_T * LR_QK;
        for (int x = 0; x < 4; x++) {
            const __m512i r01 = _mm512_permutex2var_epi32(X[x], i01, Y[x]);   /* rows x, 4 + x */
            const __m512i r23 = _mm512_permutex2var_epi32(X[x], i23, Y[x]);   /* rows 8 + x, 12 + x */
            _mm256_storeu_si256((__m256i *)(o + x * LR_QK), _mm512_castsi512_si256(r01));
            _mm256_storeu_si256((__m256i *)(o + (4 + x) * LR_QK), _mm512_extracti64x4_epi64(r01, 1));
            _mm256_storeu_si256((__m256i *)(o + (8 + x) * LR_QK), _mm512_castsi512_si256(r23));
            _mm256_storeu_si256((__m256i *)(o + (12 + x) * LR_QK), _mm512_extracti64x4_epi64(r23, 1));
        }
    }
}

/* Scales (and offsets) of panel p as [group][16] floats. */
static void amx_pack_scales_panel(const lr_qmat *w, int64_t p, float *dwt, float *mwt) {
    const int64_t ng = w->k / w->group, bpg = w->group / LR_QK, gb = pn_group_bytes(w);
    const int64_t sb = bpg * (w->bits == 4 ? 256 : 512), ss = w->panel_f16 ? 2 : 4;
    for (int64_t g = 0; g < ng; g++) {
        const uint8_t *sp = w->panels + (p * ng + g) * gb + sb;
        _mm512_storeu_ps(dwt + g * AMX_T, pn_load_scales(sp, w->panel_f16));
        if (mwt) _mm512_storeu_ps(mwt + g * AMX_T, pn_load_scales(sp + LR_PANEL * ss, w->panel_f16));
    }
}

/* Weight scales (and offsets m) of 16 rows from j0, transposed to [group][16]. */
static void amx_pack_scales(const lr_qmat *w, int64_t j0, float *dwt, float *mwt) {
    const int64_t ng = w->k / w->group;
    for (int j = 0; j < AMX_T; j++)
        for (int64_t g = 0; g < ng; g++) {
            dwt[g * AMX_T + j] = w->d[(j0 + j) * ng + g];
            if (mwt) mwt[g * AMX_T + j] = w->m[(j0 + j) * ng + g];
        }
}

/* acc[j] += C[j] * d_w[j] * d_a (lanes: activation rows). */
LR_INLINE void amx_scale_block(__m512 acc[AMX_T], const int32_t *cb, const float *dw, __m512 dav) {
    LR_UNROLL for (int j = 0; j < AMX_T; j++)
        acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(cb + j * 16)),
                                 _mm512_mul_ps(dav, _mm512_set1_ps(dw[j])), acc[j]);
}

/* Output rows rt*16 .. +16 x weight rows j0 .. +16.  A: packed weight tiles (amx_pack_a); dwt, mwt:
 * their scales and offsets (amx_pack_scales); cbuf: 4 C tiles of scratch. */
static void amx_tile(const amx_ctx *c, int64_t rt, int64_t j0, int64_t jn, const uint8_t *A, const float *dwt,
                     const float *mwt, int32_t *cbuf) {
    const lr_qmat *w = c->w;
    const int64_t k = w->k, nb = k / LR_QK, ng = k / w->group, bpg = w->group / LR_QK;
    const int32_t *xt = c->xt + rt * (k / 4) * AMX_T;
    const float *dv = c->dv + rt * nb * AMX_T;
    __m512 acc[AMX_T];
    LR_UNROLL for (int j = 0; j < AMX_T; j++) acc[j] = _mm512_setzero_ps();
    /* Four C tiles in rotation (A and B tiles alternate); block b's tile product is issued two
     * blocks ahead of its float work, so tile latency and tile stores overlap vector work. */
    int64_t g = 0, gi = 0;   /* group of the next block to scale */
#define AMX_ISSUE(CT, AT, BT, BB)                                    \
    do {                                                             \
        _tile_zero(CT);                                              \
        _tile_loadd(AT, A + (BB) * AMX_T * LR_QK, LR_QK);            \
        _tile_loadd(BT, xt + (BB) * (LR_QK / 4) * AMX_T, 64);        \
        _tile_dpbssd(CT, AT, BT);                                    \
        _tile_stored(CT, cbuf + (CT) * AMX_T * 16, 64);              \
    } while (0)
#define AMX_SCALE(CT, BB)                                                                          \
    do {                                                                                           \
        amx_scale_block(acc, cbuf + (CT) * AMX_T * 16, dwt + g * AMX_T, _mm512_loadu_ps(dv + (BB) * AMX_T)); \
        if (++gi == bpg) { g++; gi = 0; }                                                          \
    } while (0)
#define AMX_ISSUE_IF(CT, AT, BT, BB) do { if ((BB) < nb) AMX_ISSUE(CT, AT, BT, BB); } while (0)
#define AMX_SCALE_IF(CT, BB) do { if ((BB) < nb) AMX_SCALE(CT, BB); } while (0)
    AMX_ISSUE(0, 4, 6, 0);
    AMX_ISSUE_IF(1, 5, 7, 1);
    int64_t b = 0;
    for (; b + 6 <= nb; b += 4) {
        AMX_ISSUE(2, 4, 6, b + 2);
        AMX_SCALE(0, b);
        AMX_ISSUE(3, 5, 7, b + 3);
        AMX_SCALE(1, b + 1);
        AMX_ISSUE(0, 4, 6, b + 4);
        AMX_SCALE(2, b + 2);
        AMX_ISSUE(1, 5, 7, b + 5);
        AMX_SCALE(3, b + 3);
    }
    /* at most 5 blocks left to scale, the first two already issued */
    AMX_ISSUE_IF(2, 4, 6, b + 2);
    AMX_SCALE_IF(0, b);
    AMX_ISSUE_IF(3, 5, 7, b + 3);
    AMX_SCALE_IF(1, b + 1);
    AMX_ISSUE_IF(0, 4, 6, b + 4);
    AMX_SCALE_IF(2, b + 2);
    AMX_SCALE_IF(3, b + 3);
    AMX_SCALE_IF(0, b + 4);
#undef AMX_ISSUE
#undef AMX_SCALE
#undef AMX_ISSUE_IF
#undef AMX_SCALE_IF
    if (mwt) {   /* m * (d_a * sum_a), per group */
        const float *sv = c->sv + rt * ng * AMX_T;
        for (int64_t gg = 0; gg < ng; gg++) {
            const __m512 sg = _mm512_loadu_ps(sv + gg * AMX_T);
            LR_UNROLL for (int j = 0; j < AMX_T; j++)
                acc[j] = _mm512_fmadd_ps(_mm512_set1_ps(mwt[gg * AMX_T + j]), sg, acc[j]);
        }
    }
    /* acc[j] holds 16 activation rows: transpose through the (now free) C buffer */
    float *t = (float *)cbuf;
    LR_UNROLL for (int j = 0; j < AMX_T; j++) _mm512_store_ps(t + j * 16, acc[j]);
    for (int r = 0; r < AMX_T; r++) {
        float *yr = c->y + (rt * AMX_T + r) * c->ldy + j0;
        for (int j = 0; j < jn; j++) yr[j] = t[j * 16 + r];
    }
}

/* Activation rows [0, mt) (mt a multiple of 16) x weight rows [0, nt) (nt a multiple of 16, or with
 * panels every row). */
static int amx_part(const lr_qmat *w, const lr_qact *a, float *y, int64_t ldy, int64_t mt, int64_t nt, int panels) {
    const int has_m = panels ? w->panel_m != 0 : w->m != NULL;
    const int64_t k = w->k, nb = k / LR_QK, ng = k / w->group, bpg = w->group / LR_QK, ntile = mt / AMX_T;
    int32_t *xt = (int32_t *)malloc((size_t)(mt * k) + 64);
    float *dv = (float *)malloc((size_t)(mt * nb) * sizeof(float) + 64);
    float *sv = has_m ? (float *)malloc((size_t)(mt * ng) * sizeof(float) + 64) : NULL;
    if (!xt || !dv || (has_m && !sv)) {
        free(xt); free(dv); free(sv);
        return 0;
    }
    const amx_ctx c = {w, a, y, ldy, xt, dv, sv};
    const int64_t jtiles = (nt + AMX_T - 1) / AMX_T;
    /* activation tiles per pass: their bytes stay in L2 (2 MiB of it) while the thread's weight
     * tiles stream; fewer passes mean fewer repackings of every weight panel into A tiles */
    const int64_t tpc = lr_max64(1, (1 << 21) / (k + 4 * nb) / AMX_T);
    int ok = 1;
    LR_OMP(parallel reduction(&& : ok))
    {
        /* activations into B tile layout (dword-transposed per 16 rows), scales per tile */
        LR_OMP(for schedule(static))
        for (int64_t rt = 0; rt < ntile; rt++) {
            int32_t *o = xt + rt * (k / 4) * AMX_T;
            for (int r = 0; r < AMX_T; r++) {
                const int8_t *src = a->q + (rt * AMX_T + r) * k;
                for (int64_t kd = 0; kd < k / 4; kd++) memcpy(o + kd * AMX_T + r, src + 4 * kd, 4);
                const float *da = a->d + (rt * AMX_T + r) * nb;
                for (int64_t b = 0; b < nb; b++) dv[(rt * nb + b) * AMX_T + r] = da[b];
                if (sv)
                    for (int64_t g = 0; g < ng; g++) {
                        float s = 0.0f;
                        for (int64_t b = g * bpg; b < (g + 1) * bpg; b++)
                            s += da[b] * (float)a->sum[(rt * AMX_T + r) * nb + b];
                        sv[(rt * ng + g) * AMX_T + r] = s;
                    }
            }
        }
        int32_t *cbuf = (int32_t *)_mm_malloc(4 * AMX_T * 16 * sizeof(int32_t), 64);
        /* per thread: packed weight tiles of one 16-row tile, their scales and offsets */
        uint8_t *abuf = (uint8_t *)malloc((size_t)(AMX_T * k) + (size_t)(2 * ng * AMX_T) * sizeof(float));
        if (!cbuf || !abuf) {
            ok = 0;
        } else {
            float *dwt = (float *)(abuf + AMX_T * k);
            float *mwt = has_m ? dwt + ng * AMX_T : NULL;
            int64_t t0, t1;
            lr_thread_range(jtiles, &t0, &t1);
            amx_configure();
            for (int64_t rc = 0; rc < ntile; rc += tpc)
                for (int64_t jt = t0; jt < t1; jt++) {
                    if (panels) {
                        amx_pack_a_panel(w, jt, abuf);
                        amx_pack_scales_panel(w, jt, dwt, mwt);
                    } else {
                        amx_pack_a(w, jt * AMX_T, w->m == NULL, abuf);
                        amx_pack_scales(w, jt * AMX_T, dwt, mwt);
                    }
                    const int64_t jn = lr_min64(AMX_T, nt - jt * AMX_T);
                    for (int64_t rt = rc; rt < lr_min64(rc + tpc, ntile); rt++)
                        amx_tile(&c, rt, jt * AMX_T, jn, abuf, dwt, mwt, cbuf);
                }
            _tile_release();
        }
        if (cbuf) _mm_free(cbuf);
        free(abuf);
    }
    free(xt); free(dv); free(sv);
    return ok;
}

static void amx_qgemm_i8(const lr_qmat *w, const lr_qact *a, float *y, int64_t ldy) {
    const int64_t rows = a->rows, n = w->n;
    const int64_t mt = rows - rows % AMX_T, nt = n - n % AMX_T;
    if (mt == 0 || nt == 0) {
        x86_qgemm_i8(w, a, y, ldy);
        return;
    }
    if (mt < rows || nt < n) {   /* the edges on the avx512_vnni code */
        i8_ctx c;
        i8_span_fn span;
        if (!i8_setup(&c, w, a, y, ldy, &span)) {
            i8_release(&c);
            generic_qgemm_i8(w, a, y, ldy);
            return;
        }
        i8_run(&c, span, 0, rows, nt, n);
        i8_run(&c, span, mt, rows, 0, nt);
        i8_release(&c);
    }
    if (!amx_part(w, a, y, ldy, mt, nt, 0)) x86_qgemm_i8(w, a, y, ldy);
}

/* Panels: activation rows past the last multiple of 16 (and every row of a call with fewer than 16,
 * e.g. decode) on the avx512_vnni panel code; every weight row on tiles (the panels are padded). */
static void amx_qgemm_i8_panels(const lr_qmat *w, const lr_qact *a, float *y, int64_t ldy) {
    const int64_t rows = a->rows, mt = rows - rows % AMX_T, np = (w->n + LR_PANEL - 1) / LR_PANEL;
    pn_ctx c;
    pn_init(&c, w, a, y, ldy);
    if (mt < rows) pn_run(&c, mt, rows, 0, np);
    if (mt > 0 && !amx_part(w, a, y, ldy, mt, w->n, 1)) pn_run(&c, 0, mt, 0, np);
}

const lr_kernels lr_kernels_amx = {
    "amx",
    x86_quantize_act,
    amx_qgemm_i8,
    amx_qgemm_i8_panels,
    ft_qgemm_f32,
    ft_qgemm_bf16,
    ft_gemm_f32,
    ft_gemm_f16,
    x86_attention,
    x86_silu_mul,
};
