/* avx2 tier: maddubs/madd int8 GEMMs (canonical and panels), F16C/FMA float GEMMs, attention and the gated SiLU on
 * 256-bit vectors (avx2_impl.h). */
#define LR_VNNI 0
#include "avx2_impl.h"

LR_AVX2_IMPL_TABLE(lr_kernels_avx2, "avx2")
