/* Portable parts of the x86 int8 GEMMs (uses the includer's lr_vf helpers and LR_Q4_SB).
 *
 * Offset term: sum_b d_a[b] * d_w[g] * dot(u_b, x_b) leaves out the per-group offset c_g (m, or
 * -8 d_w for int4 without m); its contribution sum_b d_a[b] * sum_a[b] * c_g(b) = sum_g c_g * S[g]
 * with S[g] = sum over g's blocks of d_a * sum_a, computed once per activation row.
 *
 * int4 steps: the int4 kernels take LR_Q4_SB blocks per step, one 16-byte slice of every block
 * per vector, so int32 lane l of a dot product belongs to block l / 4 of the step. */
#ifndef LLMRT_I8_COMMON_H
#define LLMRT_I8_COMMON_H

static inline float i8_offset(const lr_qmat *w, int64_t j, const float *S) {
    const int64_t ng = w->k / w->group;
    const float *cg = (w->m ? w->m : w->d) + j * ng;
    lr_vf acc = lr_vzero();
    int64_t g = 0;
    for (; g + LR_VN <= ng; g += LR_VN) acc = lr_vfma(lr_vload(cg + g), lr_vload(S + g), acc);
    float s = lr_vhsum(acc);
    for (; g < ng; g++) s += cg[g] * S[g];
    return w->m ? s : -8.0f * s;
}

/* S (rows x ng) when the weights need an offset term, else NULL; *fail set when out of memory. */
static float *i8_group_sums(const lr_qmat *w, const lr_qact *a, int *fail) {
    *fail = 0;
    if (!w->m && w->bits != 4) return NULL;
    const int64_t nb = w->k / LR_QK, ng = w->k / w->group, bpg = w->group / LR_QK;
    float *S = (float *)malloc((size_t)(a->rows * ng + 1) * sizeof(float));
    if (!S) {
        *fail = 1;
        return NULL;
    }
    for (int64_t r = 0; r < a->rows; r++)
        for (int64_t g = 0; g < ng; g++) {
            float s = 0.0f;
            for (int64_t b = g * bpg; b < (g + 1) * bpg; b++) s += a->d[r * nb + b] * (float)a->sum[r * nb + b];
            S[r * ng + g] = s;
        }
    return S;
}

/* Weight-scale layout of one int4 step: d_w[g0 + idx[l]] scales int32 lane l; nd of the values
 * from g0 on exist (the rest must not be read). */
typedef struct {
    int64_t g0;
    int32_t nd;
    int32_t idx[LR_Q4_SB * 4];
} q4_step;

static inline int64_t q4_nsteps(const lr_qmat *w) { return (w->k / LR_QK + LR_Q4_SB - 1) / LR_Q4_SB; }

/* Every step within one group (scale = one broadcast) when the group is a multiple of a step. */
static inline int q4_uniform(const lr_qmat *w) { return (w->group / LR_QK) % LR_Q4_SB == 0; }

static q4_step *q4_step_table(const lr_qmat *w) {
    const int64_t nb = w->k / LR_QK, ng = w->k / w->group, bpg = w->group / LR_QK, ns = q4_nsteps(w);
    q4_step *t = (q4_step *)malloc((size_t)ns * sizeof(q4_step));
    if (!t) return NULL;
    for (int64_t s = 0; s < ns; s++) {
        const int64_t b0 = s * LR_Q4_SB, g0 = b0 / bpg;
        t[s].g0 = g0;
        t[s].nd = (int32_t)lr_min64(LR_Q4_SB, ng - g0);
        for (int i = 0; i < LR_Q4_SB; i++) {
            const int64_t b = lr_min64(b0 + i, nb - 1);   /* blocks past the end reuse a valid scale */
            for (int l = 0; l < 4; l++) t[s].idx[i * 4 + l] = (int32_t)(b / bpg - g0);
        }
    }
    return t;
}

#endif
