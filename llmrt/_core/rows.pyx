# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Per-row operations of a decoder block between its GEMMs (see rows.pxd)."""
from libc.stdint cimport int64_t
from cython.parallel cimport prange

from llmrt._core.kvcache cimport store_row, SEG_CTX, SEG_SLOT
from llmrt._core.ops cimport rms_norm, layer_norm, rotary


cdef void norm_row(const RowSpec *s, const float *x, float *out, const float *w, const float *b) noexcept nogil:
    if s.norm == NORM_RMS:
        rms_norm(x, out, w, s.hidden, s.eps)
    else:
        layer_norm(x, out, w, b, s.hidden, s.eps)


cdef void norm_rows(const RowSpec *s, const float *x, float *out, const float *w, const float *b,
                    int64_t rows) noexcept nogil:
    cdef int64_t t, H = s.hidden
    if rows < PAR_ROWS:
        for t in range(rows):
            norm_row(s, x + t * H, out + t * H, w, b)
    else:
        for t in prange(rows, schedule="static"):
            norm_row(s, x + t * H, out + t * H, w, b)


cdef inline void _add_norm_row(const RowSpec *s, float *x, const float *a, const float *b2, float *out,
                               const float *w, const float *b, int64_t t) noexcept nogil:
    """x[t] += a[t] (+ b2[t]); then out[t] = norm(x[t]) when out is given."""
    cdef int64_t i, H = s.hidden
    cdef float *xr = x + t * H
    cdef const float *ar = a + t * H
    cdef const float *br
    if b2 == NULL:
        for i in range(H):
            xr[i] = xr[i] + ar[i]
    else:
        br = b2 + t * H
        for i in range(H):
            xr[i] = xr[i] + ar[i] + br[i]
    if out != NULL:
        norm_row(s, xr, out + t * H, w, b)


cdef void scaled_copy_rows(const RowSpec *s, float *dst, const float *src, float alpha,
                           int64_t rows) noexcept nogil:
    """dst = alpha * src over rows of the hidden width (the deepnorm residual's scaled input)."""
    cdef int64_t i, n = rows * s.hidden
    for i in range(n):
        dst[i] = alpha * src[i]


cdef void add_norm_rows(const RowSpec *s, float *x, const float *a, const float *b2, float *out, const float *w,
                        const float *b, int64_t rows) noexcept nogil:
    cdef int64_t t
    if rows < PAR_ROWS:
        for t in range(rows):
            _add_norm_row(s, x, a, b2, out, w, b, t)
    else:
        for t in prange(rows, schedule="static"):
            _add_norm_row(s, x, a, b2, out, w, b, t)


cdef inline void _rope_store_row(const RowSpec *s, float *qkv, int64_t row, int64_t seg_rows, int64_t[:, ::1] sg,
                                 size_t[:, ::1] bp, const float *cs, const float *sn, int64_t l,
                                 bint kv16, int what) noexcept nogil:
    """Rotary on row's Q and K heads (what & ROPE_ROTATE), then its K and V into its sequence's cache
    slot (what & ROPE_STORE; sg, bp: per sequence, see Engine._chunk)."""
    cdef int64_t hd = s.head_dim, nh = s.n_head, nkv = s.n_kv_head, half = s.rot_dim // 2
    cdef int64_t qkv_n = (nh + 2 * nkv) * hd, esize = 2 if kv16 else 4
    cdef int64_t q = row // seg_rows, t = row % seg_rows, kvh, off
    cdef float *src = qkv + row * qkv_n
    if half > 0 and what & ROPE_ROTATE:
        rotary(src, nh + nkv, hd, s.rot_dim, s.interleaved, cs + row * half, sn + row * half)
    if not what & ROPE_STORE:
        return
    for kvh in range(nkv):
        off = ((l * nkv + kvh) * sg[q, SEG_CTX] + sg[q, SEG_SLOT] + t) * hd * esize
        store_row(src + (nh + kvh) * hd, <char *> bp[q, 0] + off, hd, kv16)
        store_row(src + (nh + nkv + kvh) * hd, <char *> bp[q, 1] + off, hd, kv16)


cdef void rope_store_rows(const RowSpec *s, float *qkv, int64_t rows, int64_t seg_rows, int64_t[:, ::1] sg,
                          size_t[:, ::1] bp, const float *cs, const float *sn, int64_t l, bint kv16,
                          int what) noexcept nogil:
    cdef int64_t row
    if rows < PAR_ROWS:
        for row in range(rows):
            _rope_store_row(s, qkv, row, seg_rows, sg, bp, cs, sn, l, kv16, what)
    else:
        for row in prange(rows, schedule="static"):
            _rope_store_row(s, qkv, row, seg_rows, sg, bp, cs, sn, l, kv16, what)
