/* llmrt kernel ABI.
 *
 * One table of function pointers (lr_kernels) per ISA tier.  Every tier computes the same
 * mathematical result as the scalar reference tier (ref.c); only the summation order and
 * rounding of ties may differ.  The Python/Cython side validates every shape and pointer
 * before calling in here: kernels trust their arguments.
 *
 * Quantized weight matrices (lr_qmat) are the load-time, kernel-facing form of every block
 * format (llmrt INT4/INT8 groups and GGUF Q4_0/Q4_1/Q8_0):
 *   - n output rows, k inputs; k % LR_QK == 0; group % LR_QK == 0; k % group == 0.
 *   - qs: row-major, row stride k*bits/8 bytes.
 *       bits == 4: per 32-element sub-block 16 bytes; byte j holds element j in its low
 *                  nibble and element j+16 in its high nibble (GGUF Q4_0 order).  Nibbles are
 *                  unsigned u in [0, 15].
 *       bits == 8: one signed int8 per element.
 *   - d: n * (k/group) fp32 scales; m: n * (k/group) fp32 offsets or NULL.
 *   - dequantized weight:  bits 4: w = d*u + m   (m == NULL: w = d*(u - 8))
 *                          bits 8: w = d*q + m   (m == NULL: w = d*q)
 *
 * Quantized activations (lr_qact): rows of k floats quantized per 32-element block to int8 with
 * d = max|x| / 127, q = round(x / d) in [-127, 127], plus the integer sum of q per block (used to
 * apply the weight offsets m without dequantizing).
 *
 * Output convention for every GEMM: y[r*ldy + j] = sum_k W[j, k] * X[r, k]   (Y = X W^T).
 *
 * Panels (the repacked, kernel-native layout of an lr_qmat; panels.c converts both ways):
 * rows in panels of LR_PANEL = 16 (the last one zero-padded), each panel one contiguous stream of
 * its groups in k order; one group is its k/32-blocks followed by the 16 rows' scales d and, when
 * m != NULL, offsets m (fp32, or fp16 when every value converts exactly: panel_f16).  One block:
 *   bits 4: 4 vectors of 64 bytes; vector v holds, per row i, the 4 bytes 4v..4v+3 of the row's
 *           block at bytes 4i..4i+3 (low nibbles: elements 4v..4v+3, high: 16+4v..16+4v+3).
 *   bits 8: 8 vectors of 64 bytes; vector v holds bytes 4v..4v+3 of row i at 4i, stored as
 *           q ^ 0x80 = q + 128 (unsigned operands for the u8 x s8 dot instructions).
 * A dot product of one panel with a broadcast activation dword then yields the 16 rows' partial
 * sums in the 16 int32 lanes of one 512-bit vector, with no horizontal reduction.
 */
#ifndef LLMRT_KERNELS_H
#define LLMRT_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LR_QK 32

typedef struct lr_qmat {
    int64_t n;          /* output rows */
    int64_t k;          /* inputs per row */
    int32_t bits;       /* 4 or 8 */
    int32_t group;      /* elements sharing one (d, m); multiple of LR_QK dividing k */
    const uint8_t *qs;  /* n * k * bits / 8 bytes */
    const float *d;     /* n * (k / group) */
    const float *m;     /* n * (k / group), or NULL */
    const uint8_t *panels;  /* the same matrix as panels, or NULL; qs/d/m may then be NULL */
    int32_t panel_f16;      /* panel scales (and offsets) are fp16 */
    int32_t panel_m;        /* the panels carry offsets m */
} lr_qmat;

#define LR_PANEL 16
/* Bytes of one group of one panel (its blocks, scales and offsets). */
int64_t lr_panel_group_bytes(int bits, int group, int asym, int f16);
/* Bytes of the panel form; its scales are fp16 when f16 != 0. */
size_t lr_panels_nbytes(int64_t n, int64_t k, int bits, int group, int asym, int f16);
/* Rows of a matrix in the canonical layout whose groups may sit at strides (a view into stored block
 * records): row r's group g is group*bits/8 bytes at qs + r*row_stride + g*group_stride; d and m
 * (rows, k/group) contiguous, m NULL for none. */
typedef struct {
    int64_t rows;
    const uint8_t *qs;
    int64_t row_stride, group_stride;
    const float *d, *m;
} lr_panel_src;
/* The row-concatenation of nsrc sources -> out as panels (lr_panels_nbytes of the total rows), in one
 * pass and on the OpenMP threads; with asym, a source without offsets gets its implicit ones. */
void lr_pack_panel_srcs(const lr_panel_src *src, int nsrc, int64_t k, int bits, int group, int asym, int f16,
                        uint8_t *out);
/* 1 when every d (and m, implicit ones included with asym) converts to fp16 and back unchanged. */
int lr_panel_srcs_f16_exact(const lr_panel_src *src, int nsrc, int64_t ng, int bits, int asym);
/* Row j of the panels dequantized (w = d*u + m as in the canonical form; j < n). */
void lr_panel_row(const lr_qmat *w, int64_t j, float *out);

/* A 64-byte aligned buffer of at least `bytes` owned by the calling thread and kept across calls
 * (scratch.c), one per slot; its contents are not kept when it grows.  NULL when out of memory. */
enum { LR_SCRATCH_ACT, LR_SCRATCH_TILES, LR_SCRATCH_ATTN, LR_SCRATCH_SLOTS };
void *lr_thread_scratch(int slot, size_t bytes);
/* w->panels -> canonical qs, d and m (m written only when w->panel_m). */
void lr_unpack_panels(const lr_qmat *w, uint8_t *qs, float *d, float *m);

typedef struct lr_qact {
    int64_t rows;
    int64_t k;          /* multiple of LR_QK */
    const int8_t *q;    /* rows * k */
    const float *d;     /* rows * (k / LR_QK) */
    const int32_t *sum; /* rows * (k / LR_QK) */
    /* rows from here on are mostly zero blocks (the sparse second pass of two-pass activations): panel
     * tiles lying wholly there skip a block whose scales are zero in all their rows, which changes no
     * result (a zero block adds exactly zero); rows when no row is worth the check */
    int64_t skip_from;
} lr_qact;

/* Attention over a KV cache (one sequence).
 * q: n_tok rows of n_head*head_dim floats (row stride q_stride floats); query token t sits at
 * absolute cache position pos0 + t and attends causally to cache positions
 * [max(kv_begin, pos0 + t - window + 1), pos0 + t]   (window <= 0: no sliding window).
 * Cache layout per layer: [n_kv_head][ctx][head_dim], element type fp16 (kv_f16 = 1) or fp32.
 * Query head h uses kv head h / (n_head / n_kv_head).
 * score = scale * q.k  (+ alibi_slopes[h] * (j - i) when alibi_slopes != NULL); softmax in fp32.
 * out: n_tok rows of n_head*head_dim floats (row stride out_stride floats). */
typedef struct lr_attn_args {
    const float *q;
    int64_t q_stride;
    float *out;
    int64_t out_stride;
    int64_t n_tok;
    int64_t pos0;
    int32_t n_head;
    int32_t n_kv_head;
    int32_t head_dim;
    int32_t kv_f16;
    const void *k_cache;
    const void *v_cache;
    int64_t ctx;          /* cache capacity (positions per kv head) */
    int64_t kv_begin;
    int64_t window;
    float scale;
    const float *alibi_slopes;
} lr_attn_args;

typedef struct lr_kernels {
    const char *name;

    /* x: rows x k floats (row stride ldx floats) -> int8 blocks. */
    void (*quantize_act)(const float *x, int64_t ldx, int64_t rows, int64_t k,
                         int8_t *q, float *d, int32_t *sum);

    /* int8 compute: Y = Xq W^T. */
    void (*qgemm_i8)(const lr_qmat *w, const lr_qact *a, float *y, int64_t ldy);
    /* int8 compute on w->panels; NULL when the tier has no panel kernel (then qs/d/m are used). */
    void (*qgemm_i8_panels)(const lr_qmat *w, const lr_qact *a, float *y, int64_t ldy);

    /* fp32 compute: weights dequantized in registers, X in fp32 (row stride ldx). */
    void (*qgemm_f32)(const lr_qmat *w, const float *x, int64_t ldx, int64_t rows,
                      float *y, int64_t ldy);

    /* bf16 compute: X and dequantized W rounded to bf16 (nearest-even), products summed in fp32. */
    void (*qgemm_bf16)(const lr_qmat *w, const float *x, int64_t ldx, int64_t rows,
                       float *y, int64_t ldy);

    /* Dense weights, w: n x k row-major (fp32 or IEEE fp16 bits). */
    void (*gemm_f32)(const float *w, int64_t n, int64_t k, const float *x, int64_t ldx,
                     int64_t rows, float *y, int64_t ldy);
    void (*gemm_f16)(const uint16_t *w, int64_t n, int64_t k, const float *x, int64_t ldx,
                     int64_t rows, float *y, int64_t ldy);

    void (*attention)(const lr_attn_args *args);

    /* Gated SiLU MLP activation: out[r*ldo + i] = silu(g) * u with g = gu[r*ld + i] and
     * u = gu[r*ld + ff + i] (rows of [gate; up]), silu(g) = g / (1 + e^-g). */
    void (*silu_mul)(const float *gu, int64_t ld, int64_t rows, int64_t ff, float *out, int64_t ldo);

    /* The plain MLP activation in place on n floats: LR_ACT_SILU x / (1 + e^-x), LR_ACT_GELU exact
     * 0.5 x (1 + erf(x / sqrt 2)), LR_ACT_GELU_TANH 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))),
     * LR_ACT_RELU max(x, 0). */
    void (*activate)(float *x, int64_t n, int kind);
} lr_kernels;

enum { LR_ACT_SILU = 0, LR_ACT_GELU = 1, LR_ACT_GELU_TANH = 2, LR_ACT_RELU = 3 };

/* ---- dispatch (dispatch.c) ---- */
enum {
    LR_TIER_REF = 0,
    LR_TIER_AVX2 = 1,
    LR_TIER_AVX512 = 2,
    LR_TIER_AVX_VNNI = 3,
    LR_TIER_AVX512_VNNI = 4,
    LR_TIER_AMX = 5,
    LR_N_TIERS = 6
};

/* Names in tier order: "ref", "avx2", "avx512", "avx_vnni", "avx512_vnni", "amx". */
const char *lr_tier_name(int tier);
/* 1 when the tier's code is compiled into this build. */
int lr_tier_compiled(int tier);
/* 1 when this CPU and OS can run the tier. */
int lr_tier_supported(int tier);
/* Best tier that is compiled and supported. */
int lr_best_tier(void);
/* The table of a tier, or NULL if not compiled. */
const lr_kernels *lr_tier_kernels(int tier);

/* qgemm_bf16 of the 512-bit tiers (avx512, avx512_vnni, amx) on AVX512-BF16 instructions.
 * Available when compiled in (avx512_bf16.c) and cpuid leaf 7.1 EAX bit 5 reports AVX512_BF16;
 * enabled by default.  Disabling it (for testing) gives those tiers their own bf16 code back. */
int lr_bf16_hw_available(void);
int lr_bf16_hw_enabled(void);
void lr_set_bf16_hw(int enable);
#ifdef LR_HAVE_AVX512_BF16
void lr_qgemm_bf16_avx512bf16(const lr_qmat *w, const float *x, int64_t ldx, int64_t rows,
                              float *y, int64_t ldy);
#endif

/* OpenMP thread count used by every kernel (no-ops in a build without OpenMP). */
void lr_set_threads(int n);
/* Bytes ahead of the current block that decode tiles prefetch into L2 (set from the CPU at detection,
 * LR_PANEL_PREFETCH_MAX at most; runtime.py applies LLMRT_PANEL_PREFETCH). */
extern int64_t lr_panel_prefetch;
#define LR_PANEL_PREFETCH_MAX (1 << 16)
int lr_get_threads(void);
int lr_openmp_enabled(void);

/* ---- per-tier tables (defined in the tier units) ---- */
extern const lr_kernels lr_kernels_ref;
#ifdef LR_HAVE_AVX2
extern const lr_kernels lr_kernels_avx2;
#endif
#ifdef LR_HAVE_AVX512
extern const lr_kernels lr_kernels_avx512;
#endif
#ifdef LR_HAVE_AVX_VNNI
extern const lr_kernels lr_kernels_avx_vnni;
#endif
#ifdef LR_HAVE_AVX_VNNI_EVEX
extern const lr_kernels lr_kernels_avx_vnni_evex;   /* the avx_vnni tier where only AVX512-VNNI exists */
#endif
/* How the avx_vnni tier's dot products are encoded on this CPU: "vex" (AVX-VNNI), "evex" (AVX512-VNNI
 * + VL, no AVX-VNNI: avx_vnni_evex.c), or "" where the tier cannot run. */
const char *lr_avx_vnni_encoding(void);
#ifdef LR_HAVE_AVX512_VNNI
extern const lr_kernels lr_kernels_avx512_vnni;
#endif
#ifdef LR_HAVE_AMX
extern const lr_kernels lr_kernels_amx;
#endif

#ifdef __cplusplus
}
#endif
#endif
