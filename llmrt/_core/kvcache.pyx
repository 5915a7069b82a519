# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The KV cache of one sequence (layout, StreamingLLM ring slots, copies and resizes)."""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int64_t

cnp.import_array()


cdef class KVCache:
    """Keys and values of one sequence for every layer: (n_layer, n_kv_head, ctx, head_dim).

    Logical token i (0 <= i < n_past) has the rotary position pos_base + i.  Slots hold logical
    tokens in order until a StreamingLLM ring wraps (streaming.KeyShifter.ring_advance): then slots
    [0, ring_keep) keep the first tokens (the attention sinks) and logical token ring_keep + j sits in slot
    ring_keep + (ring_head + j) % (ctx - ring_keep).  Attention does not care about slot order,
    only about the rotation each key carries, so a wrapped ring still decodes one token at a time."""

    def __init__(self, int n_layer, int n_kv_head, int64_t ctx, int head_dim, dtype="f16"):
        if dtype not in ("f16", "f32"):
            raise ValueError(f"memory_dtype must be 'f16' or 'f32', got {dtype!r}")
        if ctx <= 0:
            raise ValueError(f"ctx_size must be positive, got {ctx}")
        npdt = np.float16 if dtype == "f16" else np.float32
        self.k = np.zeros((n_layer, n_kv_head, ctx, head_dim), dtype=npdt)
        self.v = np.zeros((n_layer, n_kv_head, ctx, head_dim), dtype=npdt)
        self.ctx = ctx
        self.reset()

    @property
    def dtype(self):
        return "f16" if self.k.dtype == np.float16 else "f32"

    @property
    def nbytes(self):
        return self.k.nbytes + self.v.nbytes

    @property
    def wrapped(self):
        """True while the ring's slot order differs from the logical order."""
        return self.ring_head != 0

    def reset(self):
        self.n_past = 0
        self.kv_begin = 0
        self.pos_base = 0
        self.ring_keep = 0
        self.ring_head = 0
        self.sinks = None
        self.sinks_base = 0
        self.rope_inv_freq = None
        self.prefix = None

    cdef int64_t _slot(self, int64_t i) noexcept:
        if self.ring_head == 0 or i < self.ring_keep:
            return i
        return self.ring_keep + (self.ring_head + i - self.ring_keep) % (self.ctx - self.ring_keep)

    def slot(self, int64_t i):
        """Cache slot of logical token i."""
        if i < 0 or i >= self.ctx:
            raise IndexError(f"logical index {i} outside a cache of {self.ctx}")
        return self._slot(i)

    def linearize(self):
        """Put the ring back in logical order (needed before several tokens are fed at once)."""
        if self.ring_head == 0:
            return
        keep, head = self.ring_keep, self.ring_head
        for arr in (self.k, self.v):
            arr[:, :, keep:] = np.roll(arr[:, :, keep:], -head, axis=2)
        self.ring_head = 0

    def truncate(self, int64_t n):
        """Forget every token from logical index n on (they are recomputed or replaced next)."""
        if n < 0 or n > self.n_past:
            raise ValueError(f"cannot truncate a cache of {self.n_past} tokens to {n}")
        self.linearize()
        self.n_past = n
        if n == 0:
            self.rope_inv_freq = None
            self.prefix = None
        if n < self.ring_keep:
            self.ring_keep = 0
            self.sinks = None

    def copy_from(self, KVCache other):
        """Become a copy of other (same model and capacity), e.g. when a beam is forked."""
        if other is self:
            return
        if other.k.shape[0] != self.k.shape[0] or other.k.shape[1] != self.k.shape[1] or \
                other.k.shape[3] != self.k.shape[3] or other.ctx != self.ctx or other.k.dtype != self.k.dtype:
            raise ValueError("copy_from needs a cache of the same model, capacity and dtype")
        used = other.ctx if other.ring_head != 0 else other.n_past
        self.k[:, :, :used] = other.k[:, :, :used]
        self.v[:, :, :used] = other.v[:, :, :used]
        self.n_past, self.kv_begin, self.pos_base = other.n_past, other.kv_begin, other.pos_base
        self.ring_keep, self.ring_head = other.ring_keep, other.ring_head
        self.sinks = None if other.sinks is None else other.sinks.copy()
        self.sinks_base = other.sinks_base
        self.rope_inv_freq = other.rope_inv_freq
        self.prefix = other.prefix

    def resized(self, int64_t ctx):
        """A new cache of capacity ctx holding the same tokens (a cache grows as a sequence does)."""
        if ctx < self.n_past:
            raise ValueError(f"a cache of {ctx} cannot hold the {self.n_past} cached tokens")
        self.linearize()
        out = KVCache(self.k.shape[0], self.k.shape[1], ctx, self.k.shape[3], self.dtype)
        n = self.n_past
        out.k[:, :, :n] = self.k[:, :, :n]
        out.v[:, :, :n] = self.v[:, :, :n]
        out.n_past, out.kv_begin, out.pos_base = n, self.kv_begin, self.pos_base
        out.ring_keep = self.ring_keep
        out.sinks = None if self.sinks is None else self.sinks.copy()
        out.sinks_base = self.sinks_base
        out.rope_inv_freq = self.rope_inv_freq
        out.prefix = self.prefix
        return out


cdef bint segment_table(list caches, int64_t[:, ::1] sg, size_t[:, ::1] bp) except -1:
    """Fill one row of sg (the SEG_ columns) and bp (K and V base pointers) per cache of a batch; returns
    whether the caches are fp16 (they must share their memory dtype)."""
    cdef KVCache c
    cdef int64_t s
    cdef bint kv16 = caches[0].k.dtype == np.float16
    for s in range(len(caches)):
        c = <KVCache> caches[s]
        if (c.k.dtype == np.float16) != kv16:
            raise ValueError("caches of one batch must share their memory dtype")
        sg[s, SEG_POS] = c.pos_base + c.n_past
        sg[s, SEG_SLOT] = c._slot(c.n_past)
        sg[s, SEG_LAST] = c.n_past if c.ring_head == 0 else c.ctx - 1
        sg[s, SEG_WINDOWED] = c.ring_head == 0
        sg[s, SEG_CTX] = c.ctx
        sg[s, SEG_BEGIN] = c.kv_begin
        bp[s, 0] = <size_t> cnp.PyArray_DATA(c.k)
        bp[s, 1] = <size_t> cnp.PyArray_DATA(c.v)
    return kv16
