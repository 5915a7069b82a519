# The per-row work of a block between its GEMMs (norms, residual adds, rotary + KV stores), nogil,
# split between the threads from PAR_ROWS rows on.
from libc.stdint cimport int64_t

cdef enum NormKind:
    NORM_RMS
    NORM_LAYER

cdef enum:
    PAR_ROWS = 16

# what rope_store_rows does: both in one pass, or (with hooks between) one then the other
cdef enum:
    ROPE_ROTATE = 1
    ROPE_STORE = 2
    ROPE_BOTH = 3

# The block's shape as the row functions need it (the C side of blockspec.BlockSpec).
cdef struct RowSpec:
    int64_t hidden, n_head, n_kv_head, head_dim
    int rot_dim, interleaved
    NormKind norm
    float eps

cdef void norm_row(const RowSpec *s, const float *x, float *out, const float *w, const float *b) noexcept nogil
cdef void norm_rows(const RowSpec *s, const float *x, float *out, const float *w, const float *b,
                    int64_t rows) noexcept nogil
cdef void add_norm_rows(const RowSpec *s, float *x, const float *a, const float *b2, float *out, const float *w,
                        const float *b, int64_t rows) noexcept nogil
cdef void scaled_copy_rows(const RowSpec *s, float *dst, const float *src, float alpha,
                           int64_t rows) noexcept nogil
cdef void rope_store_rows(const RowSpec *s, float *qkv, int64_t rows, int64_t seg_rows, int64_t[:, ::1] sg,
                          size_t[:, ::1] bp, const float *cs, const float *sn, int64_t l, bint kv16,
                          int what) noexcept nogil
