/* Vector math on 512-bit registers shared by the avx512 tiers (included by attn512.h). */
#ifndef LLMRT_VMATH512_H
#define LLMRT_VMATH512_H

/* e^x, |relative error| < 2 ulp on [-87, 88]; below -87 it flushes to 0 (softmax weights). */
LR_INLINE __m512 vm_exp(__m512 x) {
    const __m512 lo = _mm512_set1_ps(-87.3f), hi = _mm512_set1_ps(88.7f);
    const __mmask16 live = _mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ);   /* -inf (masked keys) -> 0 */
    x = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_maskz_mov_ps(live, _mm512_scalef_ps(p, n));
}

static void x86_silu_mul(const float *gu, int64_t ld, int64_t rows, int64_t ff, float *out, int64_t ldo) {
    LR_OMP(parallel for schedule(static) if (rows * ff >= LR_PAR_MIN_WORK))
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < ff; i += 16) {
            const __mmask16 m = (__mmask16)(ff - i >= 16 ? 0xFFFF : (1u << (ff - i)) - 1);
            const __m512 g = _mm512_maskz_loadu_ps(m, gu + r * ld + i), u = _mm512_maskz_loadu_ps(m, gu + r * ld + ff + i);
            const __m512 e = vm_exp(_mm512_sub_ps(_mm512_setzero_ps(), g));
            const __m512 s = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
            _mm512_mask_storeu_ps(out + r * ldo + i, m, _mm512_mul_ps(s, u));
        }
}

/* 1 + erf(x / sqrt 2) as in vmath256.h (Abramowitz & Stegun 7.1.26). */
LR_INLINE __m512 vm_one_plus_erf(__m512 x) {
    const __m512 z = _mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752f));
    const __m512 az = _mm512_abs_ps(z);
    const __m512 t = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), az, _mm512_set1_ps(1.0f)));
    __m512 p = _mm512_set1_ps(1.061405429f);
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
    const __m512 q = _mm512_mul_ps(_mm512_mul_ps(p, t), vm_exp(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), az), az)));
    const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
    return _mm512_mask_mov_ps(_mm512_sub_ps(_mm512_set1_ps(2.0f), q), neg, q);
}

LR_INLINE __m512 vm_activate(__m512 v, int kind) {
    const __m512 one = _mm512_set1_ps(1.0f);
    switch (kind) {
    case LR_ACT_SILU:
        return _mm512_div_ps(v, _mm512_add_ps(one, vm_exp(_mm512_sub_ps(_mm512_setzero_ps(), v))));
    case LR_ACT_GELU:
        return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), v), vm_one_plus_erf(v));
    case LR_ACT_GELU_TANH: {
        /* 0.5 (1 + tanh u) = 1 / (1 + e^(-2u)); vm_exp saturates at 88.7, so huge -2u gives x / big = 0 */
        const __m512 v3 = _mm512_mul_ps(_mm512_mul_ps(v, v), v);
        const __m512 u2 = _mm512_mul_ps(_mm512_set1_ps(-2.0f * 0.79788456080286536f),
                                        _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), v3, v));
        return _mm512_div_ps(v, _mm512_add_ps(one, vm_exp(u2)));
    }
    default:
        return _mm512_max_ps(v, _mm512_setzero_ps());
    }
}

static void x86_activate(float *x, int64_t n, int kind) {
    LR_OMP(parallel for schedule(static) if (n >= LR_PAR_MIN_WORK))
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = (__mmask16)(n - i >= 16 ? 0xFFFF : (1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(x + i, m, vm_activate(_mm512_maskz_loadu_ps(m, x + i), kind));
    }
}

#endif
