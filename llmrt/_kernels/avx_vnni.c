/* avx_vnni tier: the avx2 kernels with the int8 dot products on VEX-encoded dpbusd. */
#define LR_VNNI 1
#include "avx2_impl.h"

LR_AVX2_IMPL_TABLE(lr_kernels_avx_vnni, "avx_vnni")
