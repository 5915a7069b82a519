# Shared Cython declarations: the active kernel table and the Linear layer used by _core.
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint16_t
from llmrt._kernels.kernels cimport lr_kernels, lr_qmat, lr_qact, lr_attn_args

cdef const lr_kernels *active_kernels() noexcept nogil

cdef enum:
    KIND_F32 = 0
    KIND_F16 = 1
    KIND_QUANT = 2

cdef enum:
    COMPUTE_INT8 = 0
    COMPUTE_FP32 = 1
    COMPUTE_BF16 = 2

cdef class ActScratch:
    """Scratch shared by the Linears of one engine for two-pass activation quantization."""
    cdef readonly int64_t rows, max_k, max_n
    cdef float *r
    cdef int8_t *q
    cdef float *d
    cdef int32_t *s
    cdef float *y
    cdef readonly list arrays


cdef class Linear:
    cdef readonly int64_t n
    cdef readonly int64_t k
    cdef int ikind
    cdef int icompute
    cdef lr_qmat q
    cdef const float *w32
    cdef const uint16_t *w16
    cdef const float *bias_ptr
    cdef readonly dict arrays
    cdef readonly int act_passes
    cdef readonly float residual_above
    cdef ActScratch scratch
    cdef void apply(self, const float *x, int64_t ldx, int64_t rows, float *y, int64_t ldy,
                    int8_t *aq, float *ad, int32_t *asum) noexcept nogil
    cdef int _ensure_canonical(self) except -1
    cdef void _qgemm_i8(self, const lr_qact *act, float *y, int64_t ldy) noexcept nogil
    cdef void _apply_two_pass(self, const float *x, int64_t ldx, int64_t rows, float *y, int64_t ldy) noexcept nogil
    cdef void _two_pass_residual(self, const float *xr, int64_t r) noexcept nogil
    cdef void _two_pass_sum(self, float *yr, int64_t r, int64_t m) noexcept nogil
    cdef void row(self, int64_t j, float *out) noexcept nogil
