/* avx512 tier: 512-bit maddubs/madd int8 GEMMs (canonical and panels), FMA float GEMMs, attn512
 * (avx512_impl.h).  dispatch.c swaps in avx512_bf16.c's qgemm_bf16 when the CPU has AVX512-BF16. */
#define LR_VNNI 0
#include "avx512_impl.h"

const lr_kernels lr_kernels_avx512 = {
    "avx512",
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
