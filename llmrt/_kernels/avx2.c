/* avx2 tier: maddubs/madd int8 GEMMs (canonical and panels), F16C/FMA float GEMMs, attention and the gated SiLU on
 * 256-bit vectors (avx2_impl.h). */
#define LR_VNNI 0
#include "avx2_impl.h"

const lr_kernels lr_kernels_avx2 = {
    "avx2",
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
