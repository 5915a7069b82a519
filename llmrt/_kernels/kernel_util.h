/* Portable helpers shared by the SIMD tier units (no intrinsics here). */
#ifndef LLMRT_KERNEL_UTIL_H
#define LLMRT_KERNEL_UTIL_H

#include <stdint.h>

#if defined(_OPENMP)
#include <omp.h>
#endif

#if defined(__GNUC__) || defined(__clang__)
#define LR_INLINE static inline __attribute__((always_inline))
#define LR_NOINLINE static __attribute__((noinline))
#define LR_UNUSED __attribute__((unused))
#else
#define LR_INLINE static __forceinline
#define LR_NOINLINE static __declspec(noinline)
#define LR_UNUSED
#endif

/* Pins a vector to a register at this point of the computation: GCC reassociates chains of integer
 * adds into trees, which keeps every product of a block live at once and spills them (measured: the
 * AVX2 int4 panel kernel ran at a quarter of its ceiling).  Nothing is emitted. */
#if defined(__GNUC__) || defined(__clang__)
#define LR_PIN(v) __asm__("" : "+x"(v))
#else
#define LR_PIN(v) ((void)0)
#endif

/* Full unrolling of the small loops over a tile's rows and columns, early enough for the
 * compiler to keep the accumulator arrays in registers. */
#if defined(__clang__)
#define LR_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define LR_UNROLL _Pragma("GCC unroll 16")
#else
#define LR_UNROLL
#endif

/* Contiguous share [lo, hi) of n items for the calling thread of a parallel region. */
static inline void lr_thread_range(int64_t n, int64_t *lo, int64_t *hi) {
#if defined(_OPENMP)
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
#else
    const int64_t nt = 1, t = 0;
#endif
    const int64_t q = n / nt, rem = n % nt;
    *lo = t * q + (t < rem ? t : rem);
    *hi = *lo + q + (t < rem ? 1 : 0);
}

/* Rows processed together per pass over a thread's weights: the activation rows of one pass
 * (row_bytes each) should stay in L2 while every weight tile of the thread streams past them. */
static inline int64_t lr_row_chunk(int64_t row_bytes, int64_t tile_rows) {
    int64_t rc = (512 * 1024) / (row_bytes > 0 ? row_bytes : 1);
    rc -= rc % tile_rows;
    return rc < tile_rows ? tile_rows : rc;
}

/* Below this many multiply-adds a parallel region costs more than it saves. */
#define LR_PAR_MIN_WORK (1 << 16)

static inline int64_t lr_min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t lr_max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* Splits n items into runs for the threads of a region to take in turn (schedule(dynamic, 1) over the runs):
 * each run 1/(2 nt) of what is left, at least min_run items and 2 n / max_runs (so at most max_runs / 2 runs
 * with any number of threads).
 * Guided scheduling hands the first thread half the items at once, and when that thread streams its share
 * slower (threads rarely get equal shares of the memory bandwidth) the other one waits out the difference at
 * the end; quarter-sized first runs (two threads) leave only the small last runs to even out.  starts gets
 * runs + 1 entries; returns the number of runs. */
static inline int lr_runs(int64_t n, int64_t nt, int64_t min_run, int64_t *starts, int max_runs) {
    const int64_t floor_len = lr_max64(min_run, (2 * n + max_runs - 1) / max_runs);
    int r = 0;
    for (int64_t at = 0; at < n;) {
        const int64_t left = n - at;
        starts[r++] = at;
        at += lr_min64(left, lr_max64(floor_len, (left + 2 * nt - 1) / (2 * nt)));
    }
    starts[r] = n;
    return r;
}

#endif
