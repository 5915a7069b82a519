/* Runtime ISA detection and the tier table.  The only OS/compiler-specific code of the
 * kernels lives here (cpuid, xgetbv, the Linux AMX permission request). */
#include "kernels.h"

#include <string.h>

#if defined(_OPENMP)
#include <omp.h>
void lr_set_threads(int n) { if (n > 0) omp_set_num_threads(n); }
int lr_get_threads(void) { return omp_get_max_threads(); }
int lr_openmp_enabled(void) { return 1; }
#else
void lr_set_threads(int n) { (void)n; }
int lr_get_threads(void) { return 1; }
int lr_openmp_enabled(void) { return 0; }
#endif

#if defined(_MSC_VER)
#include <intrin.h>
static void lr_cpuid(int leaf, int sub, unsigned r[4]) {
    int regs[4];
    __cpuidex(regs, leaf, sub);
    for (int i = 0; i < 4; i++) r[i] = (unsigned)regs[i];
}
static unsigned long long lr_xgetbv0(void) { return _xgetbv(0); }
#elif defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
static void lr_cpuid(int leaf, int sub, unsigned r[4]) {
    __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
}
static unsigned long long lr_xgetbv0(void) {
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}
#else
static void lr_cpuid(int leaf, int sub, unsigned r[4]) { (void)leaf; (void)sub; r[0] = r[1] = r[2] = r[3] = 0; }
static unsigned long long lr_xgetbv0(void) { return 0; }
#endif

#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
/* Linux only lets a process use AMX tile data after asking for it. */
static int lr_request_amx(void) {
    const long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}
#else
static int lr_request_amx(void) { return 0; }
#endif

static const char *const tier_names[LR_N_TIERS] = {"ref", "avx2", "avx512", "avx_vnni", "avx512_vnni", "amx"};

const char *lr_tier_name(int tier) {
    return (tier >= 0 && tier < LR_N_TIERS) ? tier_names[tier] : "unknown";
}

/* Set by detect(): the CPU has AVX512-VNNI + VL but no AVX-VNNI, so the avx_vnni tier runs its
 * EVEX-encoded build (avx_vnni_evex.c). */
static int avx_vnni_evex_only = 0;

/* Decode's software prefetch distance (panel_gemm.h).  Measured on the 1.1B model, 2 threads, decode
 * tok/s alternating in one process: Intel (Sapphire Rapids, 512-bit VNNI) +8% with 4 KiB ahead against
 * none; AMD Zen 4, 4 KiB against 1 KiB: avx2 int4 28.5 against 38.0, avx512_vnni 35.5 against 46.0
 * (its own prefetchers run ahead, and 4 KiB more evicts what they fetched). */
int64_t lr_panel_prefetch = 4096;

/* The table a tier unit defines, before any per-CPU substitution. */
static const lr_kernels *unit_kernels(int tier) {
    switch (tier) {
    case LR_TIER_REF: return &lr_kernels_ref;
#ifdef LR_HAVE_AVX2
    case LR_TIER_AVX2: return &lr_kernels_avx2;
#endif
#ifdef LR_HAVE_AVX512
    case LR_TIER_AVX512: return &lr_kernels_avx512;
#endif
#ifdef LR_HAVE_AVX_VNNI
    case LR_TIER_AVX_VNNI:
#ifdef LR_HAVE_AVX_VNNI_EVEX
        if (avx_vnni_evex_only) return &lr_kernels_avx_vnni_evex;
#endif
        return &lr_kernels_avx_vnni;
#endif
#ifdef LR_HAVE_AVX512_VNNI
    case LR_TIER_AVX512_VNNI: return &lr_kernels_avx512_vnni;
#endif
#ifdef LR_HAVE_AMX
    case LR_TIER_AMX: return &lr_kernels_amx;
#endif
    default: return NULL;
    }
}

static int cached_support[LR_N_TIERS];
static int support_known = 0;
static int cpu_bf16 = 0;       /* AVX512_BF16 usable (cpuid + AVX512 OS state) */
static int bf16_enabled = 1;
#ifdef LR_HAVE_AVX512_BF16
/* The 512-bit tiers' tables with qgemm_bf16 on AVX512-BF16 (filled by detect()). */
static lr_kernels bf16_tables[LR_N_TIERS];
#endif
static void detect(void);

static int uses_512bit(int tier) {
    return tier == LR_TIER_AVX512 || tier == LR_TIER_AVX512_VNNI || tier == LR_TIER_AMX;
}

int lr_bf16_hw_available(void) {
    if (!support_known) detect();
#ifdef LR_HAVE_AVX512_BF16
    return cpu_bf16;
#else
    return 0;
#endif
}

int lr_bf16_hw_enabled(void) { return bf16_enabled; }
void lr_set_bf16_hw(int enable) { bf16_enabled = enable != 0; }

const lr_kernels *lr_tier_kernels(int tier) {
    const lr_kernels *t = unit_kernels(tier);
#ifdef LR_HAVE_AVX512_BF16
    if (t && uses_512bit(tier) && bf16_enabled && lr_bf16_hw_available()) return &bf16_tables[tier];
#endif
    return t;
}

int lr_tier_compiled(int tier) { return unit_kernels(tier) != NULL; }

static void detect(void) {
    unsigned r1[4] = {0}, r7[4] = {0}, r71[4] = {0}, r0[4] = {0};
    lr_cpuid(0, 0, r0);
    const unsigned max_leaf = r0[0];
    if (max_leaf >= 1) lr_cpuid(1, 0, r1);
    if (max_leaf >= 7) {
        lr_cpuid(7, 0, r7);
        if (r7[0] >= 1) lr_cpuid(7, 1, r71);   /* subleaf 1: AVX-VNNI, AVX512_BF16 */
    }
    const int osxsave = (r1[2] >> 27) & 1;
    const unsigned long long xcr0 = osxsave ? lr_xgetbv0() : 0;
    const int os_avx = (xcr0 & 0x6) == 0x6;                /* XMM + YMM state */
    const int os_avx512 = os_avx && (xcr0 & 0xe0) == 0xe0; /* opmask + ZMM state */
    const int os_amx = (xcr0 & 0x60000ull) == 0x60000ull;  /* XTILECFG + XTILEDATA */

    const int fma = (r1[2] >> 12) & 1, f16c = (r1[2] >> 29) & 1, avx = (r1[2] >> 28) & 1;
    const int avx2 = (r7[1] >> 5) & 1;
    const int avx512f = (r7[1] >> 16) & 1, avx512dq = (r7[1] >> 17) & 1;
    const int avx512bw = (r7[1] >> 30) & 1, avx512vl = (r7[1] >> 31) & 1;
    const int avx512vnni = (r7[2] >> 11) & 1;
    const int avxvnni = (r71[0] >> 4) & 1;
    const int amx_tile = (r7[3] >> 24) & 1, amx_int8 = (r7[3] >> 25) & 1;
    const int avx512bf16 = (r71[0] >> 5) & 1;
    const int amd = r0[1] == 0x68747541u && r0[3] == 0x69746e65u && r0[2] == 0x444d4163u;  /* AuthenticAMD */

    const int has_avx2 = os_avx && avx && avx2 && fma && f16c;
    const int has_avx512 = has_avx2 && os_avx512 && avx512f && avx512bw && avx512vl && avx512dq;
    cached_support[LR_TIER_REF] = 1;
    cached_support[LR_TIER_AVX2] = has_avx2;
    cached_support[LR_TIER_AVX512] = has_avx512;
#ifdef LR_HAVE_AVX_VNNI_EVEX
    avx_vnni_evex_only = !avxvnni && has_avx512 && avx512vnni;
#endif
    cached_support[LR_TIER_AVX_VNNI] = has_avx2 && (avxvnni || avx_vnni_evex_only);
    cached_support[LR_TIER_AVX512_VNNI] = has_avx512 && avx512vnni;
    cached_support[LR_TIER_AMX] = has_avx512 && avx512vnni && amx_tile && amx_int8 && os_amx && lr_request_amx();
    cpu_bf16 = has_avx512 && avx512bf16;
    if (amd && has_avx512) lr_panel_prefetch = 1024;   /* Zen 4 and later */
#ifdef LR_HAVE_AVX512_BF16
    for (int t = 0; t < LR_N_TIERS; t++) {
        const lr_kernels *k = unit_kernels(t);
        if (k && uses_512bit(t)) {
            bf16_tables[t] = *k;
            bf16_tables[t].qgemm_bf16 = lr_qgemm_bf16_avx512bf16;
        }
    }
#endif
    support_known = 1;
}

const char *lr_avx_vnni_encoding(void) {
    if (!lr_tier_supported(LR_TIER_AVX_VNNI)) return "";
    return avx_vnni_evex_only ? "evex" : "vex";
}

int lr_tier_supported(int tier) {
    if (tier < 0 || tier >= LR_N_TIERS) return 0;
    if (!support_known) detect();
    return cached_support[tier];
}

int lr_best_tier(void) {
    for (int t = LR_N_TIERS - 1; t > 0; t--)
        if (lr_tier_compiled(t) && lr_tier_supported(t)) return t;
    return LR_TIER_REF;
}
