/* The avx_vnni tier on CPUs with AVX512-VNNI + AVX512-VL but no AVX-VNNI (AMD Zen 4): the avx2 kernels
 * with the int8 dot products on EVEX-encoded vpdpbusd over ymm0-15 (avx2_impl.h, LR_VNNI_EVEX), so the
 * tier's code runs, and is tested, on such CPUs too.  dispatch.c uses it only where VEX AVX-VNNI is absent. */
#define LR_VNNI 1
#define LR_VNNI_EVEX 1
#include "avx2_impl.h"

LR_AVX2_IMPL_TABLE(lr_kernels_avx_vnni_evex, "avx_vnni")
