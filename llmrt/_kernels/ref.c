/* Scalar reference tier: the semantics every other tier must reproduce. */
#include "generic_ops.h"

const lr_kernels lr_kernels_ref = {
    "ref",
    generic_quantize_act,
    generic_qgemm_i8,
    NULL,
    generic_qgemm_f32,
    generic_qgemm_bf16,
    generic_gemm_f32,
    generic_gemm_f16,
    generic_attention,
    generic_silu_mul,
    generic_activate,
};
