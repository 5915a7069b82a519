/* What the AMX tier's int8 GEMM can reach on this CPU with per-32-block scales (the llmrt int4/int8
 * formats under int8 compute): times one 16 x 16 x 32 block product in each arrangement, one core.
 *
 *   gcc -O3 -mamx-tile -mamx-int8 -mavx512f benchmarks/amx_ceiling.c -o /tmp/amx_ceiling && /tmp/amx_ceiling
 *
 * Linux only (asks the kernel for AMX tile state).  Every block product of the GEMM needs its own
 * int32 tile stored and scaled (per-block activation and weight scales), so the lines to read are
 * "tile pipeline" (zero, A and B loads, product, store), "scaling" (16 rows of convert, multiply,
 * add) and "both", the structure amx.c runs; GMAC/s = 8192 multiply-adds per block. */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tilecfg;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

enum { NB = 64, NTILE = 32, NPANEL = 64, REPS = 4 };   /* k = 2048; 512 activation rows */

#define ISSUE(CT, AT, BT, b)                          \
    do {                                              \
        _tile_zero(CT);                               \
        _tile_loadd(AT, A + (b) * 512, 32);           \
        _tile_loadd(BT, B + (b) * 512, 64);           \
        _tile_dpbssd(CT, AT, BT);                     \
    } while (0)
#define STORE(CT) _tile_stored(CT, C + (CT) * 256, 64)
#define SCALE(CT, b)                                                                                   \
    do {                                                                                               \
        const __m512 dwv = _mm512_load_ps(dw + (b) * 16);                                              \
        for (int r = 0; r < 16; r++)                                                                   \
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(C + (CT) * 256 + r * 16)),   \
                                     _mm512_mul_ps(dwv, _mm512_set1_ps(da[r * NB + (b)])), acc[r]);    \
    } while (0)

/* mode 0: tiles and scaling; 1: tiles only; 2: scaling only */
__attribute__((noinline)) static void run(const int8_t *A, const int8_t *B, int32_t *C, const float *da,
                                          const float *dw, float *y, int mode) {
    __m512 acc[16];
    for (int r = 0; r < 16; r++) acc[r] = _mm512_setzero_ps();
    if (mode != 2) { ISSUE(0, 4, 6, 0); ISSUE(1, 5, 7, 1); STORE(0); }
    for (int b = 0; b + 6 <= NB; b += 4) {
        if (mode != 2) { ISSUE(2, 4, 6, b + 2); STORE(1); }
        if (mode != 1) SCALE(0, b);
        if (mode != 2) { ISSUE(3, 5, 7, b + 3); STORE(2); }
        if (mode != 1) SCALE(1, b + 1);
        if (mode != 2) { ISSUE(0, 4, 6, b + 4); STORE(3); }
        if (mode != 1) SCALE(2, b + 2);
        if (mode != 2) { ISSUE(1, 5, 7, b + 5); STORE(0); }
        if (mode != 1) SCALE(3, b + 3);
    }
    for (int r = 0; r < 16; r++) _mm512_storeu_ps(y + r * 16, acc[r]);
}

int main(void) {
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */)) {
        fprintf(stderr, "no AMX tile state from the kernel\n");
        return 1;
    }
    tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 4; t++) { cfg.rows[t] = 16; cfg.colsb[t] = 64; }
    for (int t = 4; t < 6; t++) { cfg.rows[t] = 16; cfg.colsb[t] = 32; }
    for (int t = 6; t < 8; t++) { cfg.rows[t] = 8; cfg.colsb[t] = 64; }
    _tile_loadconfig(&cfg);
    int8_t *xa = _mm_malloc((size_t)NTILE * NB * 512, 64), *B = _mm_malloc(NB * 512, 64);
    int32_t *C = _mm_malloc(4 * 1024, 64);
    float *dw = _mm_malloc(NB * 16 * sizeof(float), 64), *da = malloc(NTILE * 16 * NB * sizeof(float)), y[256];
    memset(xa, 1, (size_t)NTILE * NB * 512);
    memset(B, 1, NB * 512);
    memset(C, 0, 4 * 1024);
    for (int i = 0; i < NB * 16; i++) dw[i] = 0.01f;
    for (int i = 0; i < NTILE * 16 * NB; i++) da[i] = 0.02f;
    static const char *names[3] = {"both (the amx.c structure)", "tile pipeline only", "scaling only"};
    for (int mode = 0; mode < 3; mode++) {
        const double t0 = now();
        for (int rep = 0; rep < REPS; rep++)
            for (int p = 0; p < NPANEL; p++)
                for (int rt = 0; rt < NTILE; rt++) run(xa + (size_t)rt * NB * 512, B, C, da + rt * 16 * NB, dw, y, mode);
        const double ns = (now() - t0) / ((double)REPS * NPANEL * NTILE * NB) * 1e9;
        printf("%-28s %6.2f ns per 16x16x32 block  %6.0f GMAC/s per core\n", names[mode], ns, 8192 / ns);
    }
    double t0 = now();
    const long n = 4000000;
    for (long i = 0; i < n; i++) { _tile_dpbssd(0, 4, 6); _tile_dpbssd(1, 5, 7); _tile_dpbssd(2, 4, 7); _tile_dpbssd(3, 5, 6); }
    printf("%-28s %6.2f ns\n", "tile product alone", (now() - t0) / n / 4 * 1e9);
    t0 = now();
    for (long i = 0; i < n; i++) { STORE(0); STORE(1); STORE(2); STORE(3); }
    printf("%-28s %6.2f ns\n", "1 KiB tile store alone", (now() - t0) / n / 4 * 1e9);
    t0 = now();
    for (long i = 0; i < n; i++) {
        _tile_dpbssd(0, 4, 6); STORE(0); _tile_dpbssd(1, 5, 7); STORE(1);
        _tile_dpbssd(2, 4, 7); STORE(2); _tile_dpbssd(3, 5, 6); STORE(3);
    }
    printf("%-28s %6.2f ns\n", "product + store", (now() - t0) / n / 4 * 1e9);
    _tile_release();
    return y[0] == 12345.0f;
}
