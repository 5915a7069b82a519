# The KV cache of one sequence, and the fp16/fp32 row copies every user of it needs.
cimport numpy as cnp
from libc.stdint cimport int64_t, uint16_t
from libc.string cimport memcpy

from llmrt._kernels.kernels cimport lr_f32_to_f16, lr_f16_to_f32


cdef class KVCache:
    cdef readonly cnp.ndarray k
    cdef readonly cnp.ndarray v
    cdef readonly int64_t ctx
    # read-only from Python: only the engine, truncate() and the StreamingLLM shifts move them, so they
    # always stay inside the buffers (0 <= kv_begin <= n_past <= ctx)
    cdef readonly int64_t n_past
    cdef readonly int64_t kv_begin
    cdef readonly int64_t pos_base
    cdef readonly int64_t ring_keep
    cdef readonly int64_t ring_head
    # f32 copy of the sink keys as rotated at position base sinks_base: the sinks are re-rotated
    # from it on every shift, so f16 rounding does not pile up over thousands of shifts
    cdef object sinks
    cdef int64_t sinks_base
    # rotary inverse frequencies this sequence was rotated with, when they are its own (Qwen's dynamic
    # NTK fixes them at a long prefill); None: the model's
    cdef public object rope_inv_freq
    # a prefix-LM sequence's (context length, mask position), fixed by its first forward (ChatGLM-6B:
    # the index of its first <sop> and of its [gMASK] / [MASK]); None otherwise
    cdef public object prefix

    cdef int64_t _slot(self, int64_t i) noexcept


# Columns of a batch's segment table (one row per sequence, see segment_table)
cdef enum:
    SEG_POS          # position of the sequence's first new row
    SEG_SLOT         # cache slot it is written to
    SEG_LAST         # attention: slots [.., SEG_LAST] hold it and everything before it
    SEG_WINDOWED     # whether sliding windows apply (a wrapped ring only runs when windows >= ctx)
    SEG_CTX
    SEG_BEGIN        # first slot attended (left padding)
    SEG_COLUMNS

cdef bint segment_table(list caches, int64_t[:, ::1] sg, size_t[:, ::1] bp) except -1


cdef inline void load_row(const char *src, float *dst, int64_t n, bint f16) noexcept nogil:
    """n cache values (fp16 or fp32) at src as floats."""
    cdef int64_t i
    cdef const uint16_t *s16
    if f16:
        s16 = <const uint16_t *> src
        for i in range(n):
            dst[i] = lr_f16_to_f32(s16[i])
    else:
        memcpy(dst, src, n * sizeof(float))


cdef inline void store_row(const float *src, char *dst, int64_t n, bint f16) noexcept nogil:
    """n floats into the cache at dst (fp16 or fp32)."""
    cdef int64_t i
    cdef uint16_t *d16
    if f16:
        d16 = <uint16_t *> dst
        for i in range(n):
            d16[i] = lr_f32_to_f16(src[i])
    else:
        memcpy(dst, src, n * sizeof(float))
