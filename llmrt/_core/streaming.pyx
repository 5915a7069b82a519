# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""StreamingLLM position shifts of a KV cache: the attention-sink ring and window drops, by rotating
cached keys (rotary families) or moving them (ALiBi, whose bias comes from slot distance)."""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int64_t
from libc.math cimport cos, sin

from llmrt._core.kvcache cimport KVCache, load_row, store_row
from llmrt._core.ops cimport rotary

cnp.import_array()


cdef class KeyShifter:
    """Moves the tokens of a model's caches to other positions (one per engine: the position
    kind, rotary layout and sliding window are the model's)."""
    cdef readonly str positions
    cdef readonly int rot_dim
    cdef readonly int64_t window
    cdef int interleaved
    cdef object inv_freq

    def __init__(self, str positions, int rot_dim, bint interleaved, inv_freq, int64_t window):
        self.positions = positions
        self.rot_dim, self.interleaved, self.window = rot_dim, interleaved, window
        self.inv_freq = np.ascontiguousarray(inv_freq, dtype=np.float32).reshape(-1)
        if self.inv_freq.shape[0] != rot_dim // 2:
            raise ValueError(f"inv_freq must have rot_dim/2 = {rot_dim // 2} values")

    @property
    def can_shift_keys(self):
        """Whether cached keys can be moved to other positions: by rotation (rotary), or as they
        are (ALiBi takes its bias from slot distance, so moving a key is shifting it).  Learned
        positions are part of the cached keys themselves: re-evaluate instead.  GLM's 2D positions
        (counted from the prompt's context) cannot move at all."""
        return self.positions not in ("learned", "rotary_2d")

    def ring_fits(self, int64_t ctx):
        """A wrapped ring is attended as one unordered set, so a sliding window must cover it, and
        ALiBi, which reads distances from slot order, needs its slots in order (shift_window)."""
        return self.can_shift_keys and self.positions != "alibi" and (self.window <= 0 or self.window >= ctx)

    def ring_advance(self, KVCache cache, int64_t n_keep):
        """Make room for one token in a full cache by dropping the oldest token after the first
        n_keep; the freed slot is where the next token goes (a ring, nothing is moved)."""
        self._check_shift(cache, n_keep)
        if cache.n_past != cache.ctx:
            raise ValueError(f"ring_advance needs a full cache ({cache.n_past} of {cache.ctx} used)")
        if not self.ring_fits(cache.ctx):
            raise ValueError(f"a ring of {cache.ctx} does not fit the sliding window {self.window}; use shift_window")
        if cache.ring_keep != n_keep:
            cache.linearize()
            cache.ring_keep = n_keep
            cache.sinks = None
        self._capture_sinks(cache)
        cache.ring_head = (cache.ring_head + 1) % (cache.ctx - n_keep)
        cache.n_past -= 1
        self._advance_positions(cache, 1)

    def shift_window(self, KVCache cache, int64_t n_keep, int64_t n_drop):
        """Drop n_drop tokens after the first n_keep, moving the later ones down (slots stay in
        logical order, so several tokens can be fed next)."""
        self._check_shift(cache, n_keep)
        if n_drop <= 0 or n_keep + n_drop > cache.n_past:
            raise ValueError(f"cannot drop {n_drop} tokens after {n_keep} kept from {cache.n_past} cached")
        cache.linearize()
        if cache.ring_keep != n_keep:
            cache.ring_keep = n_keep
            cache.sinks = None
        self._capture_sinks(cache)
        end = cache.n_past
        for arr in (cache.k, cache.v):
            arr[:, :, n_keep:end - n_drop] = arr[:, :, n_keep + n_drop:end]
        cache.n_past -= n_drop
        self._advance_positions(cache, n_drop)

    cdef void _check_shift(self, KVCache cache, int64_t n_keep) except *:
        if not self.can_shift_keys:
            raise ValueError(f"this model's positions ({self.positions}) are part of its cached keys, which "
                             f"cannot be shifted (use re-evaluation, shift_roped_k=False, where the model allows it)")
        if cache.rope_inv_freq is not None:
            raise ValueError("this sequence's keys were rotated at the raised rotary base of a long prefill "
                             "(dynamic NTK), which the shifts do not re-rotate: use re-evaluation "
                             "(shift_roped_k=False with n_keep / n_discard)")
        if n_keep < 0 or n_keep >= cache.ctx - 1:
            raise ValueError(f"n_keep={n_keep} must leave room in a cache of {cache.ctx}")
        if cache.n_past < n_keep:
            raise ValueError(f"n_keep={n_keep} is more than the {cache.n_past} cached tokens")

    cdef void _capture_sinks(self, KVCache cache) except *:
        if cache.sinks is None:
            cache.sinks = np.array(cache.k[:, :, :cache.ring_keep], dtype=np.float32)
            cache.sinks_base = cache.pos_base

    cdef void _advance_positions(self, KVCache cache, int64_t delta) except *:
        """Every kept token moved delta places closer to the start.  Attention only sees position
        differences, so instead of rotating every window key back by delta (what neural-speed
        does) the base moves forward and only the n_keep sink keys rotate forward: O(n_keep)."""
        cdef int64_t keep = cache.ring_keep
        cache.pos_base += delta
        if cache.pos_base >= cache.ctx:
            # keep rotary angles as small as in an unshifted cache: rotate the window back once
            first, count = keep, (cache.ctx if cache.ring_head != 0 else cache.n_past) - keep
            self._rotate(cache.k, cache.k, first, first, count, -<double> cache.pos_base)
            cache.pos_base = 0
        if keep > 0:
            self._rotate(cache.sinks, cache.k, 0, 0, keep, <double> (cache.pos_base - cache.sinks_base))

    cdef void _rotate(self, cnp.ndarray src, cnp.ndarray dst, int64_t src_first, int64_t dst_first,
                      int64_t count, double delta) except *:
        """dst[:, :, dst_first:+count] = src[:, :, src_first:+count] rotated by delta positions."""
        cdef int64_t half = self.rot_dim // 2, L = dst.shape[0], nkv = dst.shape[1], hd = dst.shape[3]
        cdef int64_t sctx = src.shape[2], dctx = dst.shape[2], l, h, j, i
        if count <= 0 or half == 0:
            return
        cdef cnp.ndarray csn = np.empty(2 * half, np.float32)
        cdef float *cs = <float *> cnp.PyArray_DATA(csn)
        cdef const float *inv_freq = <const float *> cnp.PyArray_DATA(self.inv_freq)
        for i in range(half):
            cs[i] = <float> cos(delta * inv_freq[i])
            cs[half + i] = <float> sin(delta * inv_freq[i])
        cdef cnp.ndarray rown = np.empty(hd, np.float32)
        cdef float *row = <float *> cnp.PyArray_DATA(rown)
        cdef bint s16 = src.dtype == np.float16, d16 = dst.dtype == np.float16
        cdef char *sb = <char *> cnp.PyArray_DATA(src)
        cdef char *db = <char *> cnp.PyArray_DATA(dst)
        cdef int64_t se = 2 if s16 else 4, de = 2 if d16 else 4
        cdef int64_t soff, doff
        with nogil:
            for l in range(L):
                for h in range(nkv):
                    for j in range(count):
                        soff = ((l * nkv + h) * sctx + src_first + j) * hd
                        doff = ((l * nkv + h) * dctx + dst_first + j) * hd
                        load_row(sb + soff * se, row, hd, s16)
                        rotary(row, 1, hd, self.rot_dim, self.interleaved, cs, cs + half)
                        store_row(row, db + doff * de, hd, d16)

    def logical_kv(self, KVCache cache):
        """Keys and values (n_layer, n_kv_head, n_past, head_dim) float32 in logical order, keys
        rotated as if the sequence started at position 0 (for inspection and tests)."""
        order = np.array([cache._slot(i) for i in range(cache.n_past)], dtype=np.int64)
        k = np.ascontiguousarray(cache.k[:, :, order], dtype=np.float32)
        v = np.ascontiguousarray(cache.v[:, :, order], dtype=np.float32)
        if cache.pos_base and self.rot_dim:
            self._rotate(k, k, 0, 0, k.shape[2], -<double> cache.pos_base)
        return k, v
