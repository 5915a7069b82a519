# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Decoder-block element-wise operations.  Callers validate sizes; these only loop."""
from libc.math cimport sqrtf
from libc.stdint cimport int64_t


cdef inline double sum_squares(const float *x, int64_t n, double center) noexcept nogil:
    """sum((x - center)^2) in double, in four interleaved partial sums: a single running sum waits on
    the latency of every add."""
    cdef double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0, d0, d1, d2, d3
    cdef int64_t i = 0
    while i + 4 <= n:
        d0 = x[i] - center
        d1 = x[i + 1] - center
        d2 = x[i + 2] - center
        d3 = x[i + 3] - center
        s0 += d0 * d0
        s1 += d1 * d1
        s2 += d2 * d2
        s3 += d3 * d3
        i += 4
    while i < n:
        d0 = x[i] - center
        s0 += d0 * d0
        i += 1
    return (s0 + s1) + (s2 + s3)


cdef void rms_norm(const float *x, float *out, const float *w, int64_t n, float eps) noexcept nogil:
    cdef double ss = sum_squares(x, n, 0.0)
    cdef float inv = 1.0 / sqrtf(<float> (ss / n) + eps)
    cdef int64_t i
    for i in range(n):
        out[i] = x[i] * inv * w[i]


cdef void layer_norm(const float *x, float *out, const float *w, const float *b, int64_t n, float eps) noexcept nogil:
    cdef double m0 = 0.0, m1 = 0.0, mean
    cdef int64_t i = 0
    while i + 2 <= n:
        m0 += x[i]
        m1 += x[i + 1]
        i += 2
    if i < n:
        m0 += x[i]
    mean = (m0 + m1) / n
    cdef float fmean = <float> mean
    cdef float inv = 1.0 / sqrtf(<float> (sum_squares(x, n, mean) / n) + eps)
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
