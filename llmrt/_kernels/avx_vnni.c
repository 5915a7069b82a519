/* avx_vnni tier: the avx2 kernels with the int8 dot products on VEX-encoded dpbusd. */
#define LR_VNNI 1
#include "avx2_impl.h"

const lr_kernels lr_kernels_avx_vnni = {
    "avx_vnni",
    x86_quantize_act,
    x86_qgemm_i8,
    x86_qgemm_i8_panels,
    ft_qgemm_f32,
    ft_qgemm_bf16,
    ft_gemm_f32,
    ft_gemm_f16,
    x86_attention,
    x86_silu_mul,
    x86_activate,
};
