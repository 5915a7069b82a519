/* Canonical lr_qmat <-> panel form (layout in kernels.h).  Portable C, run once per matrix at load
 * (and back only when a tier without panel kernels needs the canonical planes). */
#include <string.h>

#include "half.h"
#include "kernels.h"

static int64_t block_bytes(int bits) { return bits == 4 ? 256 : 512; }

int64_t lr_panel_group_bytes(int bits, int group, int asym, int f16) {
    return group / LR_QK * block_bytes(bits) + (int64_t)LR_PANEL * (f16 ? 2 : 4) * (asym ? 2 : 1);
}

size_t lr_panels_nbytes(int64_t n, int64_t k, int bits, int group, int asym, int f16) {
    const int64_t np = (n + LR_PANEL - 1) / LR_PANEL, ng = k / group;
    return (size_t)(np * ng * lr_panel_group_bytes(bits, group, asym, f16));
}

static int f16_exact(float v) { return lr_f16_to_f32(lr_f32_to_f16(v)) == v; }

/* The offset of a row whose source has none, in panels that carry offsets (the symmetric levels'
 * implicit zero point: int4 u - 8, int8 signed as stored). */
static float implicit_m(int bits, float d) { return bits == 4 ? -8.0f * d : 0.0f; }

static int64_t total_rows(const lr_panel_src *src, int nsrc) {
    int64_t n = 0;
    for (int s = 0; s < nsrc; s++) n += src[s].rows;
    return n;
}

int lr_panel_srcs_f16_exact(const lr_panel_src *src, int nsrc, int64_t ng, int bits, int asym) {
    int exact = 1;
    for (int s = 0; s < nsrc && exact; s++) {
        const int64_t cnt = src[s].rows * ng;
        const float *d = src[s].d, *m = src[s].m;
        int ok = 1;
#if defined(_OPENMP)
#pragma omp parallel for reduction(&& : ok) schedule(static)
#endif
        for (int64_t i = 0; i < cnt; i++)
            ok = ok && f16_exact(d[i]) && (!asym || f16_exact(m ? m[i] : implicit_m(bits, d[i])));
        exact = ok;
    }
    return exact;
}

static void put_scale(uint8_t *p, int i, float v, int f16) {
    if (f16) {
        const uint16_t h = lr_f32_to_f16(v);
        memcpy(p + 2 * i, &h, 2);
    } else {
        memcpy(p + 4 * i, &v, 4);
    }
}

static float get_scale(const uint8_t *p, int i, int f16) {
    if (f16) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        return lr_f16_to_f32(h);
    }
    float v;
    memcpy(&v, p + 4 * i, 4);
    return v;
}

/* Row i of panel p from source row r of src (every group of it). */
static void pack_row(const lr_panel_src *src, int64_t r, uint8_t *panel, int i, int64_t ng, int bits, int group,
                     int asym, int f16) {
    const int64_t bpg = group / LR_QK, bb = block_bytes(bits), words = LR_QK * bits / 32;
    const int64_t gb = lr_panel_group_bytes(bits, group, asym, f16);
    const int ss = f16 ? 2 : 4;
    /* int8 panels hold q + 128: flip the sign bit of each byte of a word */
    const uint32_t flip = bits == 8 ? 0x80808080u : 0u;
    for (int64_t g = 0; g < ng; g++) {
        const uint8_t *from = src->qs + r * src->row_stride + g * src->group_stride;
        uint8_t *gp = panel + g * gb;
        for (int64_t bi = 0; bi < bpg; bi++)
            for (int64_t v = 0; v < words; v++) {
                uint32_t word;
                memcpy(&word, from + (bi * words + v) * 4, 4);
                word ^= flip;
                memcpy(gp + bi * bb + v * 64 + 4 * i, &word, 4);
            }
        const float d = src->d[r * ng + g];
        put_scale(gp + bpg * bb, i, d, f16);
        if (asym) put_scale(gp + bpg * bb + LR_PANEL * ss, i, src->m ? src->m[r * ng + g] : implicit_m(bits, d), f16);
    }
}

void lr_pack_panel_srcs(const lr_panel_src *src, int nsrc, int64_t k, int bits, int group, int asym, int f16,
                        uint8_t *out) {
    const int64_t n = total_rows(src, nsrc), ng = k / group, np = (n + LR_PANEL - 1) / LR_PANEL;
    const int64_t panel_bytes = ng * lr_panel_group_bytes(bits, group, asym, f16);
    /* a panel per iteration: threads never share a cache line of the output */
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 4)
#endif
    for (int64_t p = 0; p < np; p++) {
        uint8_t *panel = out + p * panel_bytes;
        if ((p + 1) * LR_PANEL > n) memset(panel, 0, (size_t)panel_bytes);   /* rows past n stay zero */
        int s = 0;
        int64_t r = p * LR_PANEL;   /* a row of the concatenation, then of source s */
        for (int i = 0; i < LR_PANEL && p * LR_PANEL + i < n; i++, r++) {
            while (r >= src[s].rows) r -= src[s++].rows;   /* the next source (rows may be 0) */
            pack_row(&src[s], r, panel, i, ng, bits, group, asym, f16);
        }
    }
}

void lr_unpack_panels(const lr_qmat *w, uint8_t *qs, float *d, float *m) {
    const int asym = w->panel_m;
    const int64_t n = w->n, k = w->k, ng = k / w->group, bpg = w->group / LR_QK;
    const int64_t row_bytes = k * w->bits / 8, bb = block_bytes(w->bits), qb = LR_QK * w->bits / 8;
    const int f16 = w->panel_f16, ss = f16 ? 2 : 4;
    const int64_t gb = lr_panel_group_bytes(w->bits, w->group, asym, f16);
    for (int64_t j = 0; j < n; j++) {
        const int64_t p = j / LR_PANEL;
        const int i = (int)(j % LR_PANEL);
        for (int64_t g = 0; g < ng; g++) {
            const uint8_t *gp = w->panels + (p * ng + g) * gb;
            for (int64_t bi = 0; bi < bpg; bi++) {
                uint8_t *dst = qs + j * row_bytes + (g * bpg + bi) * qb;
                const uint8_t *blk = gp + bi * bb;
                for (int64_t v = 0; v < qb / 4; v++)
                    for (int t = 0; t < 4; t++) {
                        const uint8_t byte = blk[v * 64 + 4 * i + t];
                        dst[4 * v + t] = w->bits == 8 ? (uint8_t)(byte ^ 0x80u) : byte;
                    }
            }
            d[j * ng + g] = get_scale(gp + bpg * bb, i, f16);
            if (asym) m[j * ng + g] = get_scale(gp + bpg * bb + LR_PANEL * ss, i, f16);
        }
    }
}

void lr_panel_row(const lr_qmat *w, int64_t j, float *out) {
    const int64_t k = w->k, ng = k / w->group, bpg = w->group / LR_QK, bb = block_bytes(w->bits);
    const int f16 = w->panel_f16, ss = f16 ? 2 : 4, i = (int)(j % LR_PANEL);
    const int64_t gb = lr_panel_group_bytes(w->bits, w->group, w->panel_m, f16);
    const uint8_t *pp = w->panels + (j / LR_PANEL) * ng * gb;
    for (int64_t g = 0; g < ng; g++) {
        const uint8_t *gp = pp + g * gb;
        const float d = get_scale(gp + bpg * bb, i, f16);
        const float m = w->panel_m ? get_scale(gp + bpg * bb + LR_PANEL * ss, i, f16) : implicit_m(w->bits, d);
        for (int64_t bi = 0; bi < bpg; bi++) {
            const uint8_t *blk = gp + bi * bb;
            float *o = out + (g * bpg + bi) * LR_QK;
            for (int v = 0; v < (w->bits == 4 ? 4 : 8); v++)
                for (int t = 0; t < 4; t++) {
                    const uint8_t byte = blk[v * 64 + 4 * i + t];
                    if (w->bits == 4) {
                        o[4 * v + t] = d * (float)(byte & 0x0f) + m;
                        o[16 + 4 * v + t] = d * (float)(byte >> 4) + m;
                    } else {
                        o[4 * v + t] = d * (float)(int8_t)(byte ^ 0x80u) + m;
                    }
                }
        }
    }
}
