/* avx2 tier.  Hand-written quantized GEMMs replace the generic ones as they land; the generic
 * code below is compiled with this tier's flags, so the compiler vectorizes it for avx2. */
#include "generic_ops.h"

const lr_kernels lr_kernels_avx2 = {
    "avx2",
    generic_quantize_act,
    generic_qgemm_i8,
    generic_qgemm_f32,
    generic_qgemm_bf16,
    generic_gemm_f32,
    generic_gemm_f16,
    generic_attention,
};
