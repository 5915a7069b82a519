/* Times one tier's prefill panel GEMM (qgemm_i8_panels) on random int4/int8 weights; driven by
 * tile_sweep.py, which links it against the kernel sources built with other tile shapes.
 *
 *   tile_sweep TIER ROWS N K BITS THREADS SECONDS
 *
 * Prints one line: "gmacs=<best GMAC/s> sum=<FNV-1a of the output bytes>".  The inputs are the same
 * for every build (a fixed generator), so builds whose kernels are exact print the same sum. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static uint32_t next_random(uint64_t *state) {   /* xorshift64*: the same stream everywhere */
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (uint32_t)((*state * 2685821657736338717ULL) >> 32);
}

static void *alloc_or_die(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "tile_sweep: out of memory (%zu bytes)\n", bytes);
        exit(2);
    }
    return p;
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: %s TIER ROWS N K BITS THREADS SECONDS\n", argv[0]);
        return 2;
    }
    const int tier = atoi(argv[1]), bits = atoi(argv[5]);
    const int64_t rows = atoll(argv[2]), n = atoll(argv[3]), k = atoll(argv[4]);
    const double seconds = atof(argv[7]);
    const int group = 32;
    if (rows < 1 || n < 1 || k < LR_QK || k % LR_QK || (bits != 4 && bits != 8)) {
        fprintf(stderr, "tile_sweep: ROWS, N >= 1, K a multiple of %d, BITS 4 or 8\n", LR_QK);
        return 2;
    }
    const lr_kernels *kern = lr_tier_supported(tier) ? lr_tier_kernels(tier) : NULL;
    if (!kern) {
        fprintf(stderr, "tile_sweep: tier %d is not compiled in or not runnable on this CPU\n", tier);
        return 3;
    }
    lr_set_threads(atoi(argv[6]));

    uint64_t state = 0x9E3779B97F4A7C15ULL;
    const int64_t ng = k / group, nb = k / LR_QK, row_bytes = k * bits / 8;
    uint8_t *qs = alloc_or_die((size_t)(n * row_bytes));
    float *d = alloc_or_die((size_t)(n * ng) * sizeof(float));
    for (int64_t i = 0; i < n * row_bytes; i++) qs[i] = (uint8_t)next_random(&state);
    for (int64_t i = 0; i < n * ng; i++) d[i] = 0.001f * (float)(1 + next_random(&state) % 64);   /* fp16-exact */
    const lr_panel_src src = {n, qs, row_bytes, group * bits / 8, d, NULL};
    uint8_t *panels = alloc_or_die(lr_panels_nbytes(n, k, bits, group, 0, 1));
    lr_pack_panel_srcs(&src, 1, k, bits, group, 0, 1, panels);
    const lr_qmat w = {.n = n, .k = k, .bits = bits, .group = group, .panels = panels, .panel_f16 = 1};

    int8_t *aq = alloc_or_die((size_t)(rows * k));
    float *ad = alloc_or_die((size_t)(rows * nb) * sizeof(float));
    int32_t *asum = alloc_or_die((size_t)(rows * nb) * sizeof(int32_t));
    for (int64_t i = 0; i < rows * k; i++) aq[i] = (int8_t)((int)(next_random(&state) % 255) - 127);
    for (int64_t b = 0; b < rows * nb; b++) {
        int32_t s = 0;
        for (int j = 0; j < LR_QK; j++) s += aq[b * LR_QK + j];
        asum[b] = s;
        ad[b] = 0.01f * (float)(1 + next_random(&state) % 16);
    }
    const lr_qact a = {rows, k, aq, ad, asum, rows};
    float *y = alloc_or_die((size_t)(rows * n) * sizeof(float));

    kern->qgemm_i8_panels(&w, &a, y, n);   /* warm-up, and the output that is summed */
    uint32_t h = 2166136261u;
    const unsigned char *yb = (const unsigned char *)y;
    for (size_t i = 0; i < (size_t)(rows * n) * sizeof(float); i++) h = (h ^ yb[i]) * 16777619u;

    double best = 1e30;
    const double t0 = now();
    do {
        const double t = now();
        kern->qgemm_i8_panels(&w, &a, y, n);
        const double dt = now() - t;
        if (dt < best) best = dt;
    } while (now() - t0 < seconds);
    printf("gmacs=%.2f sum=%08x\n", (double)rows * (double)n * (double)k / best / 1e9, h);
    return 0;
}
