/* Tile walk and threading of the x86 int8 GEMMs.  The includer provides i8_ctx, I8_R, I8_J,
 * i8_tile (int8 weights), q4_tile (int4 weights, UNI: one weight scale per step) and
 * q4_pack_act (activations in the int4 step layout, LR_Q4_STEP_BYTES per row and step). */
#ifndef LLMRT_I8_DRIVE_H
#define LLMRT_I8_DRIVE_H

enum { I8_KIND_Q8 = 0, I8_KIND_Q4 = 1, I8_KIND_Q4_UNI = 2 };

LR_INLINE void i8_tile_any(const i8_ctx *c, int64_t r, int64_t j, const int R, const int J, const int KIND) {
    if (KIND == I8_KIND_Q8) i8_tile(c, r, j, R, J);
    else q4_tile(c, r, j, R, J, KIND == I8_KIND_Q4_UNI);
}

LR_INLINE void i8_span(const i8_ctx *c, int64_t r0, int64_t r1, int64_t j0, int64_t j1, const int KIND) {
    int64_t j = j0;
    for (; j + I8_J <= j1; j += I8_J)
        for (int64_t r = r0; r < r1; r += I8_R) {
            switch (lr_min64(I8_R, r1 - r)) {
            case 1: i8_tile_any(c, r, j, 1, I8_J, KIND); break;
            case 2: i8_tile_any(c, r, j, 2, I8_J, KIND); break;
            case 3: i8_tile_any(c, r, j, 3, I8_J, KIND); break;
            default: i8_tile_any(c, r, j, 4, I8_J, KIND); break;
            }
        }
    for (; j < j1; j++)
        for (int64_t r = r0; r < r1; r += I8_R) {
            switch (lr_min64(I8_R, r1 - r)) {
            case 1: i8_tile_any(c, r, j, 1, 1, KIND); break;
            case 2: i8_tile_any(c, r, j, 2, 1, KIND); break;
            case 3: i8_tile_any(c, r, j, 3, 1, KIND); break;
            default: i8_tile_any(c, r, j, 4, 1, KIND); break;
            }
        }
}

typedef void (*i8_span_fn)(const i8_ctx *c, int64_t r0, int64_t r1, int64_t j0, int64_t j1);
#define I8_SPAN(NAME, KIND) \
    static void NAME(const i8_ctx *c, int64_t r0, int64_t r1, int64_t j0, int64_t j1) { \
        i8_span(c, r0, r1, j0, j1, KIND); \
    }
I8_SPAN(i8_span_q8, I8_KIND_Q8)
I8_SPAN(i8_span_q4, I8_KIND_Q4)
I8_SPAN(i8_span_q4u, I8_KIND_Q4_UNI)

/* Output block rows [r0, r1) x weight rows [j0, j1).  Threads split the weight rows; each thread
 * walks its rows once per chunk of activation rows (the chunk stays in L2 while weights stream). */
static void i8_run(const i8_ctx *c, i8_span_fn span, int64_t r0, int64_t r1, int64_t j0, int64_t j1) {
    const lr_qmat *w = c->w;
    const int64_t ntile = (j1 - j0 + I8_J - 1) / I8_J;
    const int64_t rc = lr_row_chunk(w->k + w->k / 2, I8_R);
    const int par = (double)(j1 - j0) * (double)(r1 - r0) * (double)w->k >= (double)LR_PAR_MIN_WORK;
    (void)par;
    if (r1 <= r0 || j1 <= j0) return;
    LR_OMP(parallel if (par))
    {
        int64_t t0, t1;
        lr_thread_range(ntile, &t0, &t1);
        const int64_t ja = j0 + t0 * I8_J, jb = lr_min64(j0 + t1 * I8_J, j1);
        for (int64_t r = r0; r < r1; r += rc) span(c, r, lr_min64(r + rc, r1), ja, jb);
    }
}

/* Sets up the context (offset sums, int4 step layout); 0 when out of memory. */
static int i8_setup(i8_ctx *c, const lr_qmat *w, const lr_qact *a, float *y, int64_t ldy, i8_span_fn *span) {
    int fail;
    memset(c, 0, sizeof(*c));
    c->w = w;
    c->a = a;
    c->y = y;
    c->ldy = ldy;
    c->S = i8_group_sums(w, a, &fail);
    if (fail) return 0;
    if (w->bits == 4) {
        c->ns = q4_nsteps(w);
        c->steps = q4_step_table(w);
        c->xbuf = (uint8_t *)malloc((size_t)(a->rows * c->ns + 1) * LR_Q4_STEP_BYTES);
        if (!c->steps || !c->xbuf) return 0;
        q4_pack_act(a, c->ns, c->xbuf);
        *span = q4_uniform(w) ? i8_span_q4u : i8_span_q4;
    } else {
        *span = i8_span_q8;
    }
    return 1;
}

static void i8_release(i8_ctx *c) {
    free((void *)c->S);
    free(c->steps);
    free(c->xbuf);
}

static void x86_qgemm_i8(const lr_qmat *w, const lr_qact *a, float *y, int64_t ldy) {
    i8_ctx c;
    i8_span_fn span;
    if (i8_setup(&c, w, a, y, ldy, &span)) i8_run(&c, span, 0, a->rows, 0, w->n);
    else generic_qgemm_i8(w, a, y, ldy);
    i8_release(&c);
}

#endif
