/* amx tier: the avx512_vnni kernels, with the int8-compute GEMM of panel matrices (kernels.h) on AMX
 * tiles for 16 or more activation rows.
 *
 * Roles: A = 16 activation rows x one 32-element block (int8, element order); B = one block of a
 * panel as signed bytes.  The panel layout already is the B layout (vector v holds dword v of each
 * of the 16 weight rows in lane order), so a panel only needs its nibbles widened (int4: u - 8, or u
 * with offsets m) or its +128 removed (int8).  One TDPBSSD gives C[r][i], the block dot product of
 * activation row r and weight row i: lanes are weight rows, so a C row is scaled by a broadcast
 * activation scale and the panel's scale vector, and ends up contiguous in y (no transposition).
 *
 * The scales are per 32-block, so every product tile is stored and scaled in float registers.  Four
 * C tiles rotate: the tile product of block b + 2 is issued, then block b + 1's tile is stored, then
 * block b is scaled, so the vector units never wait on a tile instruction that was just issued.
 * Measured here (Sapphire Rapids class Xeon, one core): a TDPBSSD takes 5.2 ns whatever its K (32 or
 * 64), a 1 KiB TILESTORED 4.8 ns, and the two do not overlap; with the 16 x (convert, multiply, add)
 * of the scaling a 16 x 16 x 32 product costs about 22 ns from L2, so per-32 scales, not the tile
 * unit, bound this kernel (about 0.3 of the tile unit's int8 peak).
 * Offsets m go through the activation block sums: y += m_g * S_g, S_g = sum_b d_a * sum_a.
 * Matrices in the canonical layout (only the embedding and tests use it) run on the avx512_vnni
 * code.  dispatch.c selects this tier only when cpuid, XCR0 and the OS (arch_prctl on Linux) allow
 * AMX tile data. */
#define LR_VNNI 1
#include "avx512_impl.h"

#define AMX_T 16        /* rows of a tile: activation rows of A and C, weight rows of a panel */
#define AMX_TILE 512    /* bytes of an A or B tile: one 32-element block of 16 rows */

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
    const int8_t *xa;   /* activations as A tiles: [row tile][block] of AMX_TILE bytes */
    const float *sv;    /* with offsets: S per activation row and group, else NULL */
} amx_ctx;

/* Per-thread buffers: the B tiles of one panel, its scales (and offsets) per group, 4 C tiles and
 * the float sums of groups longer than one block. */
typedef struct {
    int8_t *bt;
    float *dw, *mw;
    int32_t *cbuf;
    float *gsum;
} amx_buf;

/* B tiles, scales and offsets of panel p. */
static void amx_unpack_panel(const lr_qmat *w, int64_t p, const amx_buf *o) {
    const int64_t ng = w->k / w->group, bpg = w->group / LR_QK, gb = pn_group_bytes(w);
    const int64_t bb = w->bits == 4 ? 256 : 512, ss = w->panel_f16 ? 2 : 4;
    const __m512i lo4 = _mm512_set1_epi8(0x0f), x80 = _mm512_set1_epi8((char)0x80);
    const __m512i sub = _mm512_set1_epi8(w->bits == 4 && !w->panel_m ? 8 : 0);
    for (int64_t g = 0; g < ng; g++) {
        const uint8_t *gp = w->panels + (p * ng + g) * gb;
        for (int64_t bi = 0; bi < bpg; bi++) {
            const uint8_t *blk = gp + bi * bb;
            int8_t *t = o->bt + (g * bpg + bi) * AMX_TILE;
            if (w->bits == 4) {
                for (int v = 0; v < 4; v++) {
                    const __m512i wv = _mm512_loadu_si512(blk + 64 * v);
                    _mm512_store_si512(t + 64 * v, _mm512_sub_epi8(_mm512_and_si512(wv, lo4), sub));
                    _mm512_store_si512(t + 64 * (4 + v),
                                       _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(wv, 4), lo4), sub));
                }
            } else {
                for (int v = 0; v < 8; v++)
                    _mm512_store_si512(t + 64 * v, _mm512_xor_si512(_mm512_loadu_si512(blk + 64 * v), x80));
            }
        }
        const uint8_t *sp = gp + bpg * bb;
        _mm512_store_ps(o->dw + g * AMX_T, pn_load_scales(sp, w->panel_f16));
        if (o->mw) _mm512_store_ps(o->mw + g * AMX_T, pn_load_scales(sp + LR_PANEL * ss, w->panel_f16));
    }
}

/* Block b's product tile (cb) into the accumulators.  One block per group: acc[r] += C[r] * d_a[r] *
 * d_w.  Longer groups: acc[r] += C[r] * d_a[r], and at the group's last block gsum[r] += acc[r] *
 * d_w, acc[r] = 0. */
LR_INLINE void amx_scale_block(__m512 acc[AMX_T], const int32_t *cb, const float *da, int64_t nb, int64_t b,
                               int64_t bpg, const float *dw, float *gsum, const int G1) {
    if (G1) {
        const __m512 dwv = _mm512_load_ps(dw + b * AMX_T);
        LR_UNROLL for (int r = 0; r < AMX_T; r++)
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(cb + r * 16)),
                                     _mm512_mul_ps(dwv, _mm512_set1_ps(da[r * nb + b])), acc[r]);
        return;
    }
    LR_UNROLL for (int r = 0; r < AMX_T; r++)
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(cb + r * 16)), _mm512_set1_ps(da[r * nb + b]),
                                 acc[r]);
    if ((b + 1) % bpg == 0) {
        const __m512 dwv = _mm512_load_ps(dw + (b / bpg) * AMX_T);
        LR_UNROLL for (int r = 0; r < AMX_T; r++) {
            _mm512_store_ps(gsum + r * 16, _mm512_fmadd_ps(acc[r], dwv, _mm512_load_ps(gsum + r * 16)));
            acc[r] = _mm512_setzero_ps();
        }
    }
}

/* Activation rows rt*16 .. +16 x panel p, whose tiles are in o (amx_unpack_panel); G1: one block
 * per group. */
LR_INLINE void amx_tile_t(const amx_ctx *c, int64_t rt, int64_t p, const amx_buf *o, const int G1) {
    const lr_qmat *w = c->w;
    const int64_t k = w->k, nb = k / LR_QK, ng = k / w->group, bpg = w->group / LR_QK;
    const int8_t *A = c->xa + rt * nb * AMX_TILE, *B = o->bt;
    const float *da = c->a->d + rt * AMX_T * nb;
    int32_t *cbuf = o->cbuf;
    __m512 acc[AMX_T];
    LR_UNROLL for (int r = 0; r < AMX_T; r++) acc[r] = _mm512_setzero_ps();
    if (!G1) memset(o->gsum, 0, AMX_T * 16 * sizeof(float));
#define AMX_ISSUE(CT, AT, BT, BB)                           \
    do {                                                    \
        _tile_zero(CT);                                     \
        _tile_loadd(AT, A + (BB) * AMX_TILE, LR_QK);        \
        _tile_loadd(BT, B + (BB) * AMX_TILE, 64);           \
        _tile_dpbssd(CT, AT, BT);                           \
    } while (0)
#define AMX_STORE(CT) _tile_stored(CT, cbuf + (CT) * AMX_T * 16, 64)
#define AMX_SCALE(CT, BB) amx_scale_block(acc, cbuf + (CT) * AMX_T * 16, da, nb, BB, bpg, o->dw, o->gsum, G1)
#define AMX_ISSUE_IF(CT, AT, BT, BB) do { if ((BB) < nb) AMX_ISSUE(CT, AT, BT, BB); } while (0)
#define AMX_STORE_IF(CT, BB) do { if ((BB) < nb) AMX_STORE(CT); } while (0)
#define AMX_SCALE_IF(CT, BB) do { if ((BB) < nb) AMX_SCALE(CT, BB); } while (0)
    /* block b uses C tile b % 4; A and B tiles alternate */
    AMX_ISSUE(0, 4, 6, 0);
    AMX_ISSUE_IF(1, 5, 7, 1);
    AMX_STORE(0);
    int64_t b = 0;
    for (; b + 6 <= nb; b += 4) {
        AMX_ISSUE(2, 4, 6, b + 2);
        AMX_STORE(1);
        AMX_SCALE(0, b);
        AMX_ISSUE(3, 5, 7, b + 3);
        AMX_STORE(2);
        AMX_SCALE(1, b + 1);
        AMX_ISSUE(0, 4, 6, b + 4);
        AMX_STORE(3);
        AMX_SCALE(2, b + 2);
        AMX_ISSUE(1, 5, 7, b + 5);
        AMX_STORE(0);
        AMX_SCALE(3, b + 3);
    }
    /* at most 5 blocks left, the first two issued and the first stored */
    AMX_ISSUE_IF(2, 4, 6, b + 2);
    AMX_STORE_IF(1, b + 1);
    AMX_SCALE_IF(0, b);
    AMX_ISSUE_IF(3, 5, 7, b + 3);
    AMX_STORE_IF(2, b + 2);
    AMX_SCALE_IF(1, b + 1);
    AMX_ISSUE_IF(0, 4, 6, b + 4);
    AMX_STORE_IF(3, b + 3);
    AMX_SCALE_IF(2, b + 2);
    AMX_STORE_IF(0, b + 4);
    AMX_SCALE_IF(3, b + 3);
    AMX_SCALE_IF(0, b + 4);
#undef AMX_ISSUE
#undef AMX_STORE
#undef AMX_SCALE
#undef AMX_ISSUE_IF
#undef AMX_STORE_IF
#undef AMX_SCALE_IF
    if (!G1)
        LR_UNROLL for (int r = 0; r < AMX_T; r++) acc[r] = _mm512_load_ps(o->gsum + r * 16);
    if (o->mw) {   /* m_g * S_g */
        const float *sv = c->sv + rt * AMX_T * ng;
        for (int64_t g = 0; g < ng; g++) {
            const __m512 mwv = _mm512_load_ps(o->mw + g * AMX_T);
            LR_UNROLL for (int r = 0; r < AMX_T; r++)
                acc[r] = _mm512_fmadd_ps(mwv, _mm512_set1_ps(sv[r * ng + g]), acc[r]);
        }
    }
    const int64_t j0 = p * LR_PANEL, nj = lr_min64(LR_PANEL, w->n - j0);
    const __mmask16 keep = (__mmask16)((1u << nj) - 1);
    LR_UNROLL for (int r = 0; r < AMX_T; r++)
        _mm512_mask_storeu_ps(c->y + (rt * AMX_T + r) * c->ldy + j0, keep, acc[r]);
}

static void amx_tile_g1(const amx_ctx *c, int64_t rt, int64_t p, const amx_buf *o) { amx_tile_t(c, rt, p, o, 1); }
static void amx_tile_gn(const amx_ctx *c, int64_t rt, int64_t p, const amx_buf *o) { amx_tile_t(c, rt, p, o, 0); }

/* Activation rows [0, mt) (a multiple of 16) x every weight row. */
static int amx_part(const lr_qmat *w, const lr_qact *a, float *y, int64_t ldy, int64_t mt) {
    const int has_m = w->panel_m != 0;
    const int64_t k = w->k, nb = k / LR_QK, ng = k / w->group, bpg = w->group / LR_QK, ntile = mt / AMX_T;
    const int64_t np = (w->n + LR_PANEL - 1) / LR_PANEL;
    /* the calling thread's scratch: activation tiles, then the offsets' S */
    int8_t *xa = (int8_t *)lr_thread_scratch(LR_SCRATCH_ACT, (size_t)(mt * k) + (size_t)(mt * ng) * sizeof(float));
    if (!xa) return 0;
    float *sv = has_m ? (float *)(xa + mt * k) : NULL;
    const amx_ctx c = {w, a, y, ldy, xa, sv};
    /* activation tiles per pass: they stay in L2 (1 MiB of it) while the thread's panels stream by;
     * each pass widens every panel once more */
    const int64_t tpc = lr_max64(1, (1 << 20) / (k * AMX_T));
    int ok = 1;
    LR_OMP(parallel reduction(&& : ok))
    {
        LR_OMP(for schedule(static))
        for (int64_t rt = 0; rt < ntile; rt++) {
            for (int r = 0; r < AMX_T; r++) {
                const int64_t row = rt * AMX_T + r;
                const int8_t *src = a->q + row * k;
                for (int64_t b = 0; b < nb; b++)
                    _mm256_store_si256((__m256i *)(xa + (rt * nb + b) * AMX_TILE + r * LR_QK),
                                       _mm256_loadu_si256((const __m256i *)(src + b * LR_QK)));
                if (sv)
                    for (int64_t g = 0; g < ng; g++) {
                        float s = 0.0f;
                        for (int64_t b = g * bpg; b < (g + 1) * bpg; b++)
                            s += a->d[row * nb + b] * (float)a->sum[row * nb + b];
                        sv[row * ng + g] = s;
                    }
            }
        }
        const size_t tiles = (size_t)(nb * AMX_TILE), scales = (size_t)(2 * ng * AMX_T) * sizeof(float);
        uint8_t *mem = (uint8_t *)lr_thread_scratch(LR_SCRATCH_TILES, tiles + scales + (4 + 1) * AMX_T * 16 * sizeof(float));
        if (!mem) {
            ok = 0;
        } else {
            amx_buf o;
            o.bt = (int8_t *)mem;
            o.dw = (float *)(mem + tiles);
            o.mw = has_m ? o.dw + ng * AMX_T : NULL;
            o.cbuf = (int32_t *)(mem + tiles + scales);
            o.gsum = (float *)(o.cbuf + 4 * AMX_T * 16);
            int64_t p0, p1;
            lr_thread_range(np, &p0, &p1);
            void (*tile)(const amx_ctx *, int64_t, int64_t, const amx_buf *) = bpg == 1 ? amx_tile_g1 : amx_tile_gn;
            amx_configure();
            /* the next panel is fetched into L2 while this one's tiles run: a share per row tile */
            const int64_t pbytes = ng * pn_group_bytes(w);
            for (int64_t rc = 0; rc < ntile; rc += tpc) {
                const int64_t rn = lr_min64(rc + tpc, ntile) - rc, share = (pbytes / rn + 63) & ~(int64_t)63;
                for (int64_t p = p0; p < p1; p++) {
                    amx_unpack_panel(w, p, &o);
                    const char *next = (const char *)w->panels + (p + 1) * pbytes;
                    for (int64_t i = 0; i < rn; i++) {
                        if (p + 1 < p1)
                            for (int64_t l = i * share; l < lr_min64((i + 1) * share, pbytes); l += 64)
                                _mm_prefetch(next + l, _MM_HINT_T1);
                        tile(&c, rc + i, p, &o);
                    }
                }
            }
            _tile_release();
        }
    }
    return ok;
}

/* Activation rows past the last multiple of 16 (and every row of a call with fewer than 16, e.g.
 * decode) on the avx512_vnni panel code; every weight row on tiles (the panels are padded). */
static void amx_qgemm_i8_panels(const lr_qmat *w, const lr_qact *a, float *y, int64_t ldy) {
    const int64_t rows = a->rows, mt = rows - rows % AMX_T, np = (w->n + LR_PANEL - 1) / LR_PANEL;
    pn_ctx c;
    pn_init(&c, w, a, y, ldy);
    if (mt < rows) pn_run(&c, mt, rows, 0, np);
    if (mt > 0 && !amx_part(w, a, y, ldy, mt)) pn_run(&c, 0, mt, 0, np);
}

const lr_kernels lr_kernels_amx = {
    "amx",
    x86_quantize_act,
    x86_qgemm_i8,
    amx_qgemm_i8_panels,
    ft_qgemm_f32,
    ft_qgemm_bf16,
    ft_gemm_f32,
    ft_gemm_f16,
    x86_attention,
    x86_silu_mul,
    x86_activate,
};
