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

#endif
