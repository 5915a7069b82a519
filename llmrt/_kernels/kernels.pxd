# Cython view of the C kernel ABI (kernels.h).
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint16_t

cdef extern from "kernels.h" nogil:
    enum: LR_QK
    enum:
        LR_TIER_REF
        LR_TIER_AVX2
        LR_TIER_AVX512
        LR_TIER_AVX_VNNI
        LR_TIER_AVX512_VNNI
        LR_TIER_AMX
        LR_N_TIERS

    ctypedef struct lr_qmat:
        int64_t n
        int64_t k
        int32_t bits
        int32_t group
        const uint8_t *qs
        const float *d
        const float *m
        const uint8_t *panels
        int32_t panel_f16
        int32_t panel_m

    ctypedef struct lr_qact:
        int64_t rows
        int64_t k
        const int8_t *q
        const float *d
        const int32_t *sum
        int64_t skip_from

    ctypedef struct lr_attn_args:
        const float *q
        int64_t q_stride
        float *out
        int64_t out_stride
        int64_t n_tok
        int64_t pos0
        int32_t n_head
        int32_t n_kv_head
        int32_t head_dim
        int32_t kv_f16
        const void *k_cache
        const void *v_cache
        int64_t ctx
        int64_t kv_begin
        int64_t window
        float scale
        const float *alibi_slopes

    ctypedef struct lr_kernels:
        const char *name
        void (*quantize_act)(const float *x, int64_t ldx, int64_t rows, int64_t k, int8_t *q, float *d, int32_t *sum) noexcept nogil
        void (*qgemm_i8)(const lr_qmat *w, const lr_qact *a, float *y, int64_t ldy) noexcept nogil
        void (*qgemm_i8_panels)(const lr_qmat *w, const lr_qact *a, float *y, int64_t ldy) noexcept nogil
        void (*qgemm_f32)(const lr_qmat *w, const float *x, int64_t ldx, int64_t rows, float *y, int64_t ldy) noexcept nogil
        void (*qgemm_bf16)(const lr_qmat *w, const float *x, int64_t ldx, int64_t rows, float *y, int64_t ldy) noexcept nogil
        void (*gemm_f32)(const float *w, int64_t n, int64_t k, const float *x, int64_t ldx, int64_t rows, float *y, int64_t ldy) noexcept nogil
        void (*gemm_f16)(const uint16_t *w, int64_t n, int64_t k, const float *x, int64_t ldx, int64_t rows, float *y, int64_t ldy) noexcept nogil
        void (*attention)(const lr_attn_args *args) noexcept nogil
        void (*silu_mul)(const float *gu, int64_t ld, int64_t rows, int64_t ff, float *out, int64_t ldo) noexcept nogil
        void (*activate)(float *x, int64_t n, int kind) noexcept nogil

    enum: LR_ACT_SILU, LR_ACT_GELU, LR_ACT_GELU_TANH, LR_ACT_RELU

    const char *lr_tier_name(int tier)
    int lr_tier_compiled(int tier)
    int lr_tier_supported(int tier)
    int lr_best_tier()
    const char *lr_avx_vnni_encoding()
    const lr_kernels *lr_tier_kernels(int tier)
    enum: LR_PANEL
    size_t lr_panels_nbytes(int64_t n, int64_t k, int bits, int group, int asym, int f16)
    ctypedef struct lr_panel_src:
        int64_t rows
        const uint8_t *qs
        int64_t row_stride
        int64_t group_stride
        const float *d
        const float *m
    void lr_pack_panel_srcs(const lr_panel_src *src, int nsrc, int64_t k, int bits, int group, int asym, int f16,
                            uint8_t *out) noexcept nogil
    int lr_panel_srcs_f16_exact(const lr_panel_src *src, int nsrc, int64_t ng, int bits, int asym) noexcept nogil
    void lr_unpack_panels(const lr_qmat *w, uint8_t *qs, float *d, float *m)
    void lr_panel_row(const lr_qmat *w, int64_t j, float *out)
    int lr_bf16_hw_available()
    int lr_bf16_hw_enabled()
    void lr_set_bf16_hw(int enable)
    void lr_set_threads(int n)
    int64_t lr_panel_prefetch
    enum: LR_PANEL_PREFETCH_MAX
    int lr_get_threads()
    int lr_openmp_enabled()

cdef extern from "half.h" nogil:
    float lr_f16_to_f32(uint16_t h)
    uint16_t lr_f32_to_f16(float f)
    uint16_t lr_f32_to_bf16(float f)
    float lr_bf16_to_f32(uint16_t b)
