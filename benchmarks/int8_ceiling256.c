/* The int8 multiply-add ceiling of the 256-bit tiers on this CPU, one thread: each line times a
 * loop of independent chains (no memory traffic) and prints GMAC/s, counting 32 u8 x s8 products
 * per maddubs or dpbusd on a ymm register.
 *
 *   gcc -O2 -mavx2 -mfma benchmarks/int8_ceiling256.c -o /tmp/ceil256 && /tmp/ceil256
 *   gcc -O2 -mavx2 -mfma -mavxvnni -DWITH_VNNI benchmarks/int8_ceiling256.c -o /tmp/ceil256 && /tmp/ceil256
 *   gcc -O2 -mavx2 -mfma -mavx512vnni -mavx512vl -DWITH_VNNI_EVEX benchmarks/int8_ceiling256.c -o /tmp/ceil256
 *     (AVX512-VNNI CPUs without AVX-VNNI, e.g. AMD Zen 4: the same ymm dpbusd, EVEX-encoded, as llmrt's
 *     avx_vnni tier runs there; with AVX512-VL the compiler may keep chains in ymm16-31, so read the other
 *     lines from the plain AVX2 build)
 *
 * Lines:
 *   maddubs           the instruction alone (its pipes' peak)
 *   maddubs+add16     what the AVX2 int4 panel kernel issues per weight vector and row: a product and an
 *                     int16 accumulation (products summed in int16, widened once per block)
 *   maddubs+madd+add32  the AVX2 int8 step's arithmetic (int16 sums would overflow: widened at once)
 *   sign+maddubs+madd+add32  the AVX2 int8 step on bytes: the activation takes the weight's sign (maddubs
 *                     multiplies unsigned by signed bytes; int8 weights are signed)
 *   madd16+add32      the AVX2 int8 prefill step on weights and activations widened to int16 (panel_wide8.h):
 *                     16 products per madd, six chains of independent products (as a tile's rows are)
 *   dpbusd            AVX-VNNI's fused u8 x s8 -> int32 (with -DWITH_VNNI or -DWITH_VNNI_EVEX) */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#define ITERS 100000000L
#define CHAINS 12

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* twelve independent chains in named variables (an array would live in memory), each step reading its
 * own chain (so no two steps are the same expression), enough in flight for the longest latency
 * (maddubs + madd + add, 7 cycles, at two per cycle); the empty asm keeps every chain live */
#define DECL(init) __m256i c0 = init, c1 = init, c2 = init, c3 = init, c4 = init, c5 = init, c6 = init, c7 = init, \
    c8 = init, c9 = init, c10 = init, c11 = init
#define EACH(OP) OP(c0); OP(c1); OP(c2); OP(c3); OP(c4); OP(c5); OP(c6); OP(c7); OP(c8); OP(c9); OP(c10); OP(c11)
#define KEEP() __asm__ volatile("" : "+x"(c0), "+x"(c1), "+x"(c2), "+x"(c3), "+x"(c4), "+x"(c5), "+x"(c6), "+x"(c7), \
    "+x"(c8), "+x"(c9), "+x"(c10), "+x"(c11))
#define SINK() (_mm256_extract_epi32(_mm256_add_epi32(_mm256_add_epi32(_mm256_add_epi32(c0, c1), \
        _mm256_add_epi32(c2, c3)), _mm256_add_epi32(_mm256_add_epi32(c4, c5), _mm256_add_epi32(c6, c7))), 0) + \
        _mm256_extract_epi32(_mm256_add_epi32(_mm256_add_epi32(c8, c9), _mm256_add_epi32(c10, c11)), 0))
#define TIMED(STEP)                                                             \
    const double t0 = now();                                                    \
    for (long it = 0; it < ITERS; it++) {                                       \
        EACH(STEP);                                                             \
        KEEP();                                                                 \
        __asm__ volatile("" : "+x"(a), "+x"(b));                                \
    }                                                                           \
    const double dt = now() - t0;                                               \
    sink += SINK();                                                             \
    return (double)ITERS * CHAINS * 32 / dt / 1e9

static volatile int sink;

static double best_of(double (*f)(void)) {
    double best = 0;
    for (int rep = 0; rep < 3; rep++) {
        const double g = f();
        if (g > best) best = g;
    }
    return best;
}

static double run_maddubs(void) {
    __m256i a = _mm256_set1_epi8(3), b = _mm256_set1_epi8(2);   /* b: a live operand the loop keeps */
    DECL(_mm256_setzero_si256());
#define MADDUBS(c) c = _mm256_maddubs_epi16(a, c)
    TIMED(MADDUBS);
}

static double run_maddubs_add16(void) {
    __m256i a = _mm256_set1_epi8(3), b = _mm256_set1_epi8(2);
    DECL(_mm256_setzero_si256());
#define MADDUBS_ADD16(c) c = _mm256_add_epi16(c, _mm256_maddubs_epi16(a, c))
    TIMED(MADDUBS_ADD16);
}

static double run_maddubs_madd(void) {
    __m256i a = _mm256_set1_epi8(3), b = _mm256_set1_epi8(2);
    const __m256i ones = _mm256_set1_epi16(1);
    DECL(_mm256_setzero_si256());
#define MADDUBS_MADD(c) c = _mm256_add_epi32(c, _mm256_madd_epi16(_mm256_maddubs_epi16(a, c), ones))
    TIMED(MADDUBS_MADD);
}

static double run_sign_maddubs_madd(void) {
    __m256i a = _mm256_set1_epi8(3), b = _mm256_set1_epi8(2);
    const __m256i ones = _mm256_set1_epi16(1);
    DECL(_mm256_setzero_si256());
#define SIGN_MADDUBS_MADD(c) c = _mm256_add_epi32(c, _mm256_madd_epi16(_mm256_maddubs_epi16(a, _mm256_sign_epi8(c, b)), ones))
    TIMED(SIGN_MADDUBS_MADD);
}

/* six chains each adding the madd of its own operand (kept live, so none is hoisted or shared) */
static double run_madd16_add32(void) {
    __m256i a0 = _mm256_set1_epi16(3), a1 = _mm256_set1_epi16(4), a2 = _mm256_set1_epi16(5), a3 = _mm256_set1_epi16(6),
            a4 = _mm256_set1_epi16(7), a5 = _mm256_set1_epi16(8), b = _mm256_set1_epi16(2);
    __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0;
    const double t0 = now();
    for (long it = 0; it < ITERS; it++) {
        c0 = _mm256_add_epi32(c0, _mm256_madd_epi16(a0, b));
        c1 = _mm256_add_epi32(c1, _mm256_madd_epi16(a1, b));
        c2 = _mm256_add_epi32(c2, _mm256_madd_epi16(a2, b));
        c3 = _mm256_add_epi32(c3, _mm256_madd_epi16(a3, b));
        c4 = _mm256_add_epi32(c4, _mm256_madd_epi16(a4, b));
        c5 = _mm256_add_epi32(c5, _mm256_madd_epi16(a5, b));
        __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5), "+x"(b));
        __asm__ volatile("" : "+x"(c0), "+x"(c1), "+x"(c2), "+x"(c3), "+x"(c4), "+x"(c5));
    }
    const double dt = now() - t0;
    sink += _mm256_extract_epi32(_mm256_add_epi32(_mm256_add_epi32(c0, c1), _mm256_add_epi32(_mm256_add_epi32(c2, c3),
                                                                                            _mm256_add_epi32(c4, c5))), 0);
    return (double)ITERS * 6 * 16 / dt / 1e9;
}

#if defined(WITH_VNNI) || defined(WITH_VNNI_EVEX)
static double run_dpbusd(void) {
    __m256i a = _mm256_set1_epi8(3), b = _mm256_set1_epi8(2);
    DECL(_mm256_setzero_si256());
#ifdef WITH_VNNI_EVEX
#define DPBUSD(c) c = _mm256_dpbusd_epi32(c, a, c)
#else
#define DPBUSD(c) c = _mm256_dpbusd_avx_epi32(c, a, c)
#endif
    TIMED(DPBUSD);
}
#endif

int main(void) {
    printf("maddubs            %6.1f GMAC/s\n", best_of(run_maddubs));
    printf("maddubs+add16      %6.1f GMAC/s\n", best_of(run_maddubs_add16));
    printf("maddubs+madd+add32 %6.1f GMAC/s\n", best_of(run_maddubs_madd));
    printf("sign+maddubs+madd+add32 %6.1f GMAC/s\n", best_of(run_sign_maddubs_madd));
    printf("madd16+add32       %6.1f GMAC/s\n", best_of(run_madd16_add32));
#if defined(WITH_VNNI) || defined(WITH_VNNI_EVEX)
    printf("dpbusd             %6.1f GMAC/s\n", best_of(run_dpbusd));
#endif
    return 0;
}
