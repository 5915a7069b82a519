# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Decoder-block element-wise operations.  Callers validate sizes; these only loop."""
from libc.math cimport sqrtf
from libc.stdint cimport int64_t


cdef void rms_norm(const float *x, float *out, const float *w, int64_t n, float eps) noexcept nogil:
    cdef double ss = 0.0
    cdef int64_t i
    for i in range(n):
        ss += <double> x[i] * x[i]
    cdef float inv = 1.0 / sqrtf(<float> (ss / n) + eps)
    for i in range(n):
        out[i] = x[i] * inv * w[i]


cdef void layer_norm(const float *x, float *out, const float *w, const float *b, int64_t n, float eps) noexcept nogil:
    cdef double mean = 0.0, var = 0.0, dx
    cdef int64_t i
    for i in range(n):
        mean += x[i]
    mean /= n
    for i in range(n):
        dx = x[i] - mean
        var += dx * dx
    cdef float inv = 1.0 / sqrtf(<float> (var / n) + eps)
    cdef float fmean = <float> mean
    for i in range(n):
        out[i] = (x[i] - fmean) * inv * w[i] + (b[i] if b != NULL else 0.0)


cdef void rotary(float *x, int64_t n_heads, int64_t head_dim, int64_t rot_dim, int interleaved,
                 const float *cos_row, const float *sin_row) noexcept nogil:
    """Rotate the first rot_dim features of each head.  NeoX style pairs (i, i + rot_dim/2);
    GPT-J style pairs (2i, 2i+1)."""
    cdef int64_t h, i, half = rot_dim // 2
    cdef float a, b, c, s
    cdef float *xh
    for h in range(n_heads):
        xh = x + h * head_dim
        for i in range(half):
            c = cos_row[i]
            s = sin_row[i]
            if interleaved:
                a = xh[2 * i]
                b = xh[2 * i + 1]
                xh[2 * i] = a * c - b * s
                xh[2 * i + 1] = b * c + a * s
            else:
                a = xh[i]
                b = xh[i + half]
                xh[i] = a * c - b * s
                xh[i + half] = b * c + a * s


cdef void clamp(float *x, int64_t n, float c) noexcept nogil:
    cdef int64_t i
    for i in range(n):
        x[i] = c if x[i] > c else (-c if x[i] < -c else x[i])
