# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The rows a chunk starts from (see embedding.pxd)."""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int8_t, int32_t, int64_t

from llmrt._kernels._ops cimport Linear
from llmrt._core.ops cimport layer_norm
from llmrt._core.layer cimport float_ptr
from llmrt._core.layer import float_vector

cnp.import_array()

# windows of a mapped embedding's rows that may stay resident before its pages are given back
# (a page fault maps up to a 2 MiB folio: 4 windows bound it to about 8 MiB)
cdef enum:
    EMBED_WINDOWS = 4


cdef class Embedder:
    """embed: (vocab, E) rows; project_in: E -> hidden when E != hidden (OPT-350m); positions:
    a learned table (rows, hidden) whose row p + position_offset is added for position p; norm_w /
    norm_b: a LayerNorm after all that (BLOOM)."""

    def __init__(self, Linear embed, int64_t hidden, int64_t max_rows, *, Linear project_in=None,
                 Linear positions=None, int64_t position_offset=0, norm_w=None, norm_b=None, float norm_eps=1e-5):
        self.embed, self.project_in, self.positions = embed, project_in, positions
        self.hidden, self.vocab, self.position_offset = hidden, embed.n, position_offset
        width = hidden if project_in is None else project_in.k
        if embed.k != width:
            raise ValueError(f"embedding rows have {embed.k} values, expected {width}")
        if project_in is not None and project_in.n != hidden:
            raise ValueError(f"project_in is {project_in.n}x{project_in.k}, expected {hidden}x{width}")
        if positions is not None and positions.k != hidden:
            raise ValueError(f"the position table has rows of {positions.k}, expected {hidden}")
        self.norm_w, self.norm_b = float_vector(norm_w), float_vector(norm_b)
        if self.norm_w is not None and self.norm_w.shape[0] != hidden:
            raise ValueError(f"the embedding norm must have {hidden} values")
        self.norm_eps = norm_eps
        self.e = np.zeros((max_rows if project_in is not None else 0, width), np.float32)

    @property
    def max_positions(self):
        """Positions a learned table covers (None: any)."""
        return None if self.positions is None else self.positions.n - self.position_offset

    def release_rows(self, release, int64_t window_rows=1):
        """Give back the pages of a mapped embedding as rows are read: once rows of more than
        EMBED_WINDOWS windows (of window_rows rows) have been read, release(0, vocab) is called (one
        call, not one per row: each costs a TLB shootdown).  None reads rows in place and keeps them."""
        if release is not None and (not callable(release) or window_rows <= 0):
            raise ValueError("release must be callable and window_rows positive")
        self.release = release
        self.window_rows = window_rows
        self.windows = set()

    cdef void check_positions(self, int64_t last_pos) except *:
        if self.positions is not None and last_pos + self.position_offset >= self.positions.n:
            raise ValueError(f"position {last_pos} is past the {self.max_positions} positions this model "
                             f"learned (max_position_embeddings): shorten the input, or stream the context "
                             f"with n_keep / n_discard (re-evaluation)")

    def resize_rows(self, int64_t max_rows):
        """Scratch for chunks of up to max_rows rows (a hooked forward runs its input as one chunk)."""
        if self.project_in is not None and self.e.shape[0] != max_rows:
            self.e = np.zeros((max_rows, self.project_in.k), np.float32)

    cdef void rows(self, cnp.ndarray toks, const int64_t *pos, float *x, float *tmp,
                   int8_t *aq, float *ad, int32_t *asum, object hook=None) except *:
        """x[t] = the starting row of token toks[t] at position pos[t] (pos checked by
        check_positions); tmp: rows x hidden scratch.  hook (hooked forwards): hook(EMBED_TOKENS)
        once x holds the token rows, hook(EMBED_POSITIONS) once tmp holds the position rows."""
        cdef int64_t n = toks.shape[0], H = self.hidden, t
        cdef float *dst = x if self.project_in is None else <float *> cnp.PyArray_DATA(self.e)
        cdef const float *nw = float_ptr(self.norm_w)
        cdef const float *nb = float_ptr(self.norm_b)
        if self.project_in is not None and self.e.shape[0] < n:
            raise ValueError(f"{n} rows do not fit the embedding scratch of {self.e.shape[0]}")
        self._read(toks, dst, self.embed.k)
        if self.project_in is not None:
            with nogil:
                self.project_in.apply(dst, self.project_in.k, n, x, H, aq, ad, asum)
        if hook is not None:
            hook(EMBED_TOKENS)
        if self.positions is not None:
            with nogil:
                for t in range(n):
                    self.positions.row(pos[t] + self.position_offset, tmp + t * H)
            if hook is not None:
                hook(EMBED_POSITIONS)
            with nogil:
                for t in range(n * H):
                    x[t] += tmp[t]
        if nw != NULL:
            with nogil:
                for t in range(n):
                    layer_norm(x + t * H, x + t * H, nw, nb, H, self.norm_eps)

    cdef void _read(self, cnp.ndarray toks, float *x, int64_t width) except *:
        cdef int64_t rows = toks.shape[0], i, t, w
        cdef const int64_t *tk = <const int64_t *> cnp.PyArray_DATA(toks)
        cdef cnp.ndarray order
        cdef const int64_t *od
        if self.release is None:
            with nogil:
                for t in range(rows):
                    self.embed.row(tk[t], x + t * width)
            return
        # in row order, so each window's rows are read together
        order = np.argsort(toks, kind="stable").astype(np.int64)
        od = <const int64_t *> cnp.PyArray_DATA(order)
        for i in range(rows):
            t = od[i]
            w = tk[t] // self.window_rows
            if w not in self.windows:
                if len(self.windows) >= EMBED_WINDOWS:
                    self.release(0, self.vocab)
                    self.windows.clear()
                self.windows.add(w)
            self.embed.row(tk[t], x + t * width)
