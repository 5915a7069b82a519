# Row-wise operations of a decoder block (norms, rotary, clamp), nogil over raw rows; the MLP
# activations are kernels (lr_kernels.activate), vectorized per tier.
from libc.stdint cimport int64_t

cdef void rms_norm(const float *x, float *out, const float *w, int64_t n, float eps) noexcept nogil
cdef void layer_norm(const float *x, float *out, const float *w, const float *b, int64_t n, float eps) noexcept nogil
cdef void rotary(float *x, int64_t n_heads, int64_t head_dim, int64_t rot_dim, int interleaved,
                 const float *cos_row, const float *sin_row) noexcept nogil
cdef void clamp(float *x, int64_t n, float c) noexcept nogil
