/* Vector math on 256-bit registers for the AVX2 tiers (included by avx2_impl.h). */
#ifndef LLMRT_VMATH256_H
#define LLMRT_VMATH256_H

/* e^x with the polynomial of vmath512.h (|relative error| < 2 ulp); below -87.3 it flushes to 0,
 * above 88.3 it is +inf (2^n is built from the exponent bits, so n stays within [-126, 127]). */
LR_INLINE __m256 vm_exp256(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.3f), hi = _mm256_set1_ps(88.3f);
    const __m256 live = _mm256_cmp_ps(x, lo, _CMP_GE_OQ);   /* -inf and NaN -> 0 */
    const __m256 big = _mm256_cmp_ps(x, hi, _CMP_GT_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    const __m256 v = _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), live);
    return _mm256_blendv_ps(v, _mm256_set1_ps(INFINITY), big);
}

LR_INLINE __m256 vm_silu_mul256(__m256 g, __m256 u) {
    const __m256 ex = vm_exp256(_mm256_sub_ps(_mm256_setzero_ps(), g));
    return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), ex)), u);
}

static void x86_silu_mul(const float *gu, int64_t ld, int64_t rows, int64_t ff, float *out, int64_t ldo) {
    LR_OMP(parallel for schedule(static) if (rows * ff >= LR_PAR_MIN_WORK))
    for (int64_t r = 0; r < rows; r++) {
        const float *g = gu + r * ld, *u = g + ff;
        float *o = out + r * ldo;
        int64_t i = 0;
        for (; i + 8 <= ff; i += 8)
            _mm256_storeu_ps(o + i, vm_silu_mul256(_mm256_loadu_ps(g + i), _mm256_loadu_ps(u + i)));
        if (i < ff) {
            const __m256i m = lr_lanes_below(ff - i);
            _mm256_maskstore_ps(o + i, m, vm_silu_mul256(_mm256_maskload_ps(g + i, m), _mm256_maskload_ps(u + i, m)));
        }
    }
}

/* 1 + erf(z) for z = x / sqrt 2, from Abramowitz & Stegun 7.1.26 (|error of erf| < 1.5e-7): with
 * q = erfc(|z|) = poly(t) e^(-z^2), it is 2 - q for x >= 0 and q below (accurate in the tail). */
LR_INLINE __m256 vm_one_plus_erf256(__m256 x) {
    const __m256 z = _mm256_mul_ps(x, _mm256_set1_ps(0.70710678118654752f));
    const __m256 az = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), z);
    const __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), az, _mm256_set1_ps(1.0f)));
    __m256 p = _mm256_set1_ps(1.061405429f);
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
    const __m256 q = _mm256_mul_ps(_mm256_mul_ps(p, t), vm_exp256(_mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), az), az)));
    return _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(2.0f), q), q, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ));
}

LR_INLINE __m256 vm_activate256(__m256 v, int kind) {
    const __m256 one = _mm256_set1_ps(1.0f);
    switch (kind) {
    case LR_ACT_SILU:
        return _mm256_div_ps(v, _mm256_add_ps(one, vm_exp256(_mm256_sub_ps(_mm256_setzero_ps(), v))));
    case LR_ACT_GELU:
        return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), v), vm_one_plus_erf256(v));
    case LR_ACT_GELU_TANH: {
        /* 0.5 (1 + tanh u) = 1 / (1 + e^(-2u)) */
        const __m256 v3 = _mm256_mul_ps(_mm256_mul_ps(v, v), v);
        const __m256 u2 = _mm256_mul_ps(_mm256_set1_ps(-2.0f * 0.79788456080286536f),
                                        _mm256_fmadd_ps(_mm256_set1_ps(0.044715f), v3, v));
        return _mm256_div_ps(v, _mm256_add_ps(one, vm_exp256(u2)));
    }
    default:
        return _mm256_max_ps(v, _mm256_setzero_ps());
    }
}

static void x86_activate(float *x, int64_t n, int kind) {
    const int64_t whole = n / 8 * 8;
    LR_OMP(parallel for schedule(static) if (n >= LR_PAR_MIN_WORK))
    for (int64_t i = 0; i < whole; i += 8) _mm256_storeu_ps(x + i, vm_activate256(_mm256_loadu_ps(x + i), kind));
    if (whole < n) {
        const __m256i m = lr_lanes_below(n - whole);
        _mm256_maskstore_ps(x + whole, m, vm_activate256(_mm256_maskload_ps(x + whole, m), kind));
    }
}

#endif
