# Token ids -> the first hidden rows of a chunk: embedding rows, optional projection in, learned
# positions, embedding LayerNorm.
cimport numpy as cnp
from libc.stdint cimport int8_t, int32_t, int64_t

from llmrt._kernels._ops cimport Linear


# what a hooked forward's embedding hook is called with
cdef enum:
    EMBED_TOKENS = 0
    EMBED_POSITIONS = 1


cdef class Embedder:
    cdef readonly Linear embed, project_in, positions
    cdef readonly int64_t hidden, vocab, position_offset
    cdef object norm_w, norm_b
    cdef float norm_eps
    cdef cnp.ndarray e
    # a mapped embedding read row by row: release(first, end) gives back the pages of its rows
    cdef object release, windows
    cdef int64_t window_rows
    cdef void check_positions(self, int64_t last_pos) except *
    cdef void _read(self, cnp.ndarray toks, float *x, int64_t width) except *
    cdef void rows(self, cnp.ndarray toks, const int64_t *pos, float *x, float *tmp,
                   int8_t *aq, float *ad, int32_t *asum, object hook=*) except *
