# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The decoder-block loop shared by every family.

A family describes its blocks with one BlockSpec (llmrt/blockspec.py: norm, rotary, MLP kind,
residual style, window) and hands over Linear layers with fused QKV rows [Q heads; K heads; V heads]
and, for gated MLPs, fused rows [gate; up].  Everything per token runs here without the GIL.
"""
import time

import numpy as np
cimport numpy as cnp
from libc.stdint cimport int8_t, int32_t, int64_t
from libc.math cimport cos, sin

from llmrt._kernels._ops cimport ActScratch, Linear, active_kernels
from llmrt._kernels.kernels cimport lr_kernels, lr_attn_args, LR_QK
from llmrt._core.kvcache cimport KVCache
from llmrt._core.rows cimport RowSpec, NORM_RMS, NORM_LAYER, norm_row, norm_rows, add_norm_rows, rope_store_rows
from llmrt._core.streaming import KeyShifter
from llmrt.blockspec import BlockSpec
from llmrt._core.ops cimport layer_norm, activate, ACT_SILU, ACT_GELU, ACT_GELU_TANH, ACT_RELU

cnp.import_array()

# the block spec's strings as the enums the loop switches on
cdef enum ResidualKind:
    RES_SEQUENTIAL
    RES_PARALLEL
    RES_PARALLEL_SHARED_NORM
NORMS = {"rms": NORM_RMS, "layer": NORM_LAYER}
ACTIVATIONS = {"silu": ACT_SILU, "gelu": ACT_GELU, "gelu_tanh": ACT_GELU_TANH, "relu": ACT_RELU}
RESIDUALS = {"sequential": RES_SEQUENTIAL, "parallel": RES_PARALLEL, "parallel_shared_norm": RES_PARALLEL_SHARED_NORM}
# rows of the output head per two-pass weight pass (decode and beams need few; prefill asks for one)
HEAD_TWO_PASS_ROWS = 32
# windows of a mapped embedding's rows that may stay resident before its pages are given back
# (a page fault maps up to a 2 MiB folio: 4 windows bound it to about 8 MiB)
cdef enum:
    EMBED_WINDOWS = 4




cdef class Layer:
    """Weights of one decoder block."""
    cdef public Linear qkv, attn_out, mlp_in, mlp_out
    cdef public object attn_norm_w, attn_norm_b, mlp_norm_w, mlp_norm_b

    def __init__(self, Linear qkv, Linear attn_out, Linear mlp_in, Linear mlp_out,
                 attn_norm_w, attn_norm_b=None, mlp_norm_w=None, mlp_norm_b=None):
        self.qkv, self.attn_out, self.mlp_in, self.mlp_out = qkv, attn_out, mlp_in, mlp_out
        self.attn_norm_w = _vec(attn_norm_w)
        self.attn_norm_b = _vec(attn_norm_b)
        self.mlp_norm_w = _vec(mlp_norm_w)
        self.mlp_norm_b = _vec(mlp_norm_b)


def _vec(a):
    return None if a is None else np.ascontiguousarray(a, dtype=np.float32).reshape(-1)


cdef inline const float *_ptr(object a):
    if a is None:
        return NULL
    return <const float *> cnp.PyArray_DATA(<cnp.ndarray> a)


cdef class Engine:
    """Runs token chunks through embedding, blocks, final norm and head."""
    cdef readonly int n_layer, hidden, n_head, n_kv_head, head_dim, rot_dim, vocab
    cdef readonly int64_t window
    # the block spec (blockspec.BlockSpec) and its switches as enums
    cdef readonly object spec
    cdef RowSpec rs
    cdef ResidualKind residual
    cdef bint gated
    cdef int act_kind, interleaved
    cdef float eps, attn_scale
    cdef readonly list layers
    cdef readonly Linear embed, lm_head
    cdef object final_norm_w, final_norm_b, inv_freq, emb_norm_w, emb_norm_b
    cdef readonly int64_t max_chunk
    cdef readonly ActScratch act_scratch, head_scratch
    # StreamingLLM shifts of this model's caches (streaming.pyx)
    cdef readonly object shifts
    # a mapped embedding read row by row: release(first, end) gives back the pages of its rows
    cdef object embed_release, embed_windows
    cdef int64_t embed_window
    # seconds spent running blocks and head (the rest of a call is argument handling in Python)
    cdef public double compute_seconds
    # scratch, sized for max_chunk rows
    cdef cnp.ndarray x, h, h2, qkv, att, o, mi, act, m, aq, ad, asum, cs, sn, logits_row

    def __init__(self, *, int hidden, int vocab, spec, list layers, Linear embed, Linear lm_head, final_norm_w,
                 final_norm_b=None, emb_norm_w=None, emb_norm_b=None, int64_t max_chunk=128, str two_pass="none"):
        """spec: a blockspec.BlockSpec (validated when it was made)."""
        if not isinstance(spec, BlockSpec):
            raise TypeError(f"spec must be a llmrt.blockspec.BlockSpec, got {type(spec).__name__}")
        self.spec = spec
        self.hidden, self.vocab = hidden, vocab
        self.n_head, self.n_kv_head, self.head_dim = spec.n_heads, spec.n_kv_heads, spec.head_dim
        self.n_layer = len(layers)
        self.rs.hidden, self.rs.n_head, self.rs.n_kv_head, self.rs.head_dim = hidden, spec.n_heads, spec.n_kv_heads, spec.head_dim
        self.rs.rot_dim, self.rs.interleaved = spec.rotary_dim, spec.rotary_interleaved
        self.rs.norm, self.rs.eps = NORMS[spec.norm], spec.norm_eps
        self.gated = spec.gated
        self.act_kind = -1 if spec.gated else ACTIVATIONS[spec.mlp]
        self.residual = RESIDUALS[spec.residual]
        self.eps = spec.norm_eps
        self.rot_dim = spec.rotary_dim
        self.interleaved = spec.rotary_interleaved
        self.inv_freq = spec.inv_freq
        self.window = spec.sliding_window
        self.shifts = KeyShifter(self.rot_dim, self.interleaved, self.inv_freq, self.window)
        self.attn_scale = spec.scale
        self.layers = layers
        self.embed, self.lm_head = embed, lm_head
        self.final_norm_w, self.final_norm_b = _vec(final_norm_w), _vec(final_norm_b)
        self.emb_norm_w, self.emb_norm_b = _vec(emb_norm_w), _vec(emb_norm_b)
        self.max_chunk = max_chunk
        self._check_shapes()
        self._alloc(max_chunk)
        if two_pass not in ("none", "down", "all"):
            raise ValueError(f"two_pass must be none, down or all, got {two_pass!r}")
        if two_pass != "none":
            # "down": the MLP down projection's input carries the outliers int8 rounding hurts most
            lins = [(<Layer> L).mlp_out for L in layers]
            if two_pass == "all":
                lins += [l for L in layers for l in ((<Layer> L).qkv, (<Layer> L).attn_out, (<Layer> L).mlp_in)]
            self.act_scratch = ActScratch(max_chunk, max(l.k for l in lins), max(l.n for l in lins))
            for l in lins:
                (<Linear> l).use_two_pass_activations(self.act_scratch)
            if lm_head.compute == "int8":
                # the head's outputs are wide: its own scratch, a few rows per weight pass
                self.head_scratch = ActScratch(HEAD_TWO_PASS_ROWS, lm_head.k, lm_head.n)
                lm_head.use_two_pass_activations(self.head_scratch)

    def _check_shapes(self):
        qkv_n = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        if self.embed.k != self.hidden or self.embed.n != self.vocab:
            raise ValueError(f"embedding is {self.embed.n}x{self.embed.k}, expected {self.vocab}x{self.hidden}")
        if self.lm_head.k != self.hidden or self.lm_head.n != self.vocab:
            raise ValueError(f"lm_head is {self.lm_head.n}x{self.lm_head.k}, expected {self.vocab}x{self.hidden}")
        for i, L in enumerate(self.layers):
            lay = <Layer> L
            ff = lay.mlp_out.k
            want_in = 2 * ff if self.gated else ff
            checks = [(lay.qkv, qkv_n, self.hidden, "qkv"), (lay.attn_out, self.hidden, self.n_head * self.head_dim, "attn_out"),
                      (lay.mlp_in, want_in, self.hidden, "mlp_in"), (lay.mlp_out, self.hidden, ff, "mlp_out")]
            for lin, n, k, name in checks:
                if lin.n != n or lin.k != k:
                    raise ValueError(f"layer {i} {name} is {lin.n}x{lin.k}, expected {n}x{k}")
            for w in (lay.attn_norm_w, lay.mlp_norm_w if self.residual != RES_PARALLEL_SHARED_NORM else lay.attn_norm_w):
                if w is None or w.shape[0] != self.hidden:
                    raise ValueError(f"layer {i} norm weight must have {self.hidden} values")

    def _alloc(self, int64_t rows):
        cdef int64_t max_k = self.hidden, max_mi = 0, max_ff = 0
        for L in self.layers:
            lay = <Layer> L
            max_k = max(max_k, lay.mlp_out.k, lay.attn_out.k)
            max_mi = max(max_mi, lay.mlp_in.n)
            max_ff = max(max_ff, lay.mlp_out.k)
        qkv_n = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        f = np.float32
        self.x = np.zeros((rows, self.hidden), f)
        self.h = np.zeros((rows, self.hidden), f)
        self.h2 = np.zeros((rows, self.hidden), f)
        self.qkv = np.zeros((rows, qkv_n), f)
        self.att = np.zeros((rows, self.n_head * self.head_dim), f)
        self.o = np.zeros((rows, self.hidden), f)
        self.mi = np.zeros((rows, max(max_mi, 1)), f)
        self.act = np.zeros((rows, max(max_ff, 1)), f)
        self.m = np.zeros((rows, self.hidden), f)
        self.aq = np.zeros(rows * max_k + LR_QK, np.int8)
        self.ad = np.zeros(rows * (max_k // LR_QK + 1), f)
        self.asum = np.zeros(rows * (max_k // LR_QK + 1), np.int32)
        self.cs = np.zeros((rows, max(self.rot_dim // 2, 1)), f)
        self.sn = np.zeros((rows, max(self.rot_dim // 2, 1)), f)

    def release_embedding_rows(self, release, int64_t window_rows=1):
        """Give back the pages of a mapped embedding as rows are read: once rows of more than
        EMBED_WINDOWS windows (of window_rows rows) have been read, release(0, vocab) is called (one
        call, not one per row: each costs a TLB shootdown).  None reads rows in place and keeps them."""
        if release is not None and (not callable(release) or window_rows <= 0):
            raise ValueError("release must be callable and window_rows positive")
        self.embed_release = release
        self.embed_window = window_rows
        self.embed_windows = set()

    cdef void _embed_rows(self, cnp.ndarray toks, float *x) except *:
        cdef int64_t rows = toks.shape[0], H = self.hidden, i, t, w
        cdef const int64_t *tk = <const int64_t *> cnp.PyArray_DATA(toks)
        cdef cnp.ndarray order
        cdef const int64_t *od
        if self.embed_release is None:
            with nogil:
                for t in range(rows):
                    self.embed.row(tk[t], x + t * H)
            return
        # in row order, so each window's rows are read together
        order = np.argsort(toks, kind="stable").astype(np.int64)
        od = <const int64_t *> cnp.PyArray_DATA(order)
        for i in range(rows):
            t = od[i]
            w = tk[t] // self.embed_window
            if w not in self.embed_windows:
                if len(self.embed_windows) >= EMBED_WINDOWS:
                    self.embed_release(0, self.vocab)
                    self.embed_windows.clear()
                self.embed_windows.add(w)
            self.embed.row(tk[t], x + t * H)

    def new_cache(self, int64_t ctx, dtype="f16"):
        return KVCache(self.n_layer, self.n_kv_head, ctx, self.head_dim, dtype)

    @property
    def scratch_nbytes(self):
        return sum(a.nbytes for a in (self.x, self.h, self.h2, self.qkv, self.att, self.o, self.mi,
                                      self.act, self.m, self.aq, self.ad, self.asum, self.cs, self.sn))

    def forward(self, KVCache cache, tokens, bint all_logits=False, list hidden_states=None):
        """Append tokens to the sequence in cache and return logits: (n, vocab) float32 if
        all_logits else (1, vocab) for the last token.  hidden_states (a list) receives
        n_layer + 1 arrays (n, hidden) like transformers' output_hidden_states."""
        cdef cnp.ndarray toks = self._tokens(tokens)
        cdef int64_t n = toks.shape[0]
        self._check_cache(cache, n)
        if hidden_states is not None:
            del hidden_states[:]
            for _ in range(self.n_layer + 1):
                hidden_states.append(np.empty((n, self.hidden), np.float32))
        out = np.empty((n if all_logits else 1, self.vocab), np.float32)
        cdef int64_t start = 0, rows = 0
        t0 = time.perf_counter()
        while start < n:
            rows = min(self.max_chunk, n - start)
            self._chunk([cache], toks[start:start + rows], hidden_states, start)
            if all_logits:
                self._head(rows, out[start:start + rows])
            start += rows
        if not all_logits:
            self._head_last(rows, out)
        self.compute_seconds += time.perf_counter() - t0
        return out

    def forward_batch(self, list caches, tokens):
        """One new token for each of several sequences (batch rows, beams): the weights are read
        once for all of them.  Returns logits (len(caches), vocab) float32."""
        cdef cnp.ndarray toks = self._tokens(tokens)
        cdef int64_t n = toks.shape[0], start = 0, rows
        if n != len(caches):
            raise ValueError(f"forward_batch got {n} tokens for {len(caches)} caches")
        if len({id(c) for c in caches}) != n:
            raise ValueError("forward_batch needs one distinct cache per token")
        for c in caches:
            self._check_cache(c, 1)
        out = np.empty((n, self.vocab), np.float32)
        t0 = time.perf_counter()
        while start < n:
            rows = min(self.max_chunk, n - start)
            self._chunk(caches[start:start + rows], toks[start:start + rows], None, 0)
            self._head(rows, out[start:start + rows])
            start += rows
        self.compute_seconds += time.perf_counter() - t0
        return out

    cdef cnp.ndarray _tokens(self, tokens):
        cdef cnp.ndarray toks = np.ascontiguousarray(tokens, dtype=np.int64).reshape(-1)
        if toks.shape[0] == 0:
            raise ValueError("no tokens to process")
        lo, hi = int(toks.min()), int(toks.max())
        if lo < 0 or hi >= self.vocab:
            bad = hi if hi >= self.vocab else lo
            raise ValueError(f"token id {bad} is out of range for a vocabulary of {self.vocab}")
        return toks

    cdef void _check_cache(self, KVCache cache, int64_t n) except *:
        if cache.k.shape[0] != self.n_layer or cache.k.shape[1] != self.n_kv_head or cache.k.shape[3] != self.head_dim:
            raise ValueError("this KV cache belongs to a different model shape")
        if cache.n_past + n > cache.ctx:
            raise ValueError(f"context overflow: {cache.n_past} cached + {n} new tokens > ctx_size {cache.ctx}; "
                             f"raise ctx_size or shorten the prompt")
        if cache.ring_head != 0 and n > 1:
            raise ValueError("the KV ring buffer is wrapped: call cache.linearize() before feeding several tokens")

    cdef void _chunk(self, list caches, cnp.ndarray toks, list hidden_states, int64_t hs_off) except *:
        """Run rows through every block.  With one cache the rows are consecutive tokens of one
        sequence; with several, row i is the next token of caches[i]."""
        cdef int64_t rows = toks.shape[0]
        cdef int64_t nseg = len(caches)
        cdef int64_t seg_rows = rows if nseg == 1 else 1
        cdef float *x = <float *> cnp.PyArray_DATA(self.x)
        cdef float *h = <float *> cnp.PyArray_DATA(self.h)
        cdef float *h2 = <float *> cnp.PyArray_DATA(self.h2)
        cdef float *qkv = <float *> cnp.PyArray_DATA(self.qkv)
        cdef float *att = <float *> cnp.PyArray_DATA(self.att)
        cdef float *o = <float *> cnp.PyArray_DATA(self.o)
        cdef float *mi = <float *> cnp.PyArray_DATA(self.mi)
        cdef float *act = <float *> cnp.PyArray_DATA(self.act)
        cdef float *m = <float *> cnp.PyArray_DATA(self.m)
        cdef int8_t *aq = <int8_t *> cnp.PyArray_DATA(self.aq)
        cdef float *ad = <float *> cnp.PyArray_DATA(self.ad)
        cdef int32_t *asum = <int32_t *> cnp.PyArray_DATA(self.asum)
        cdef float *cs = <float *> cnp.PyArray_DATA(self.cs)
        cdef float *sn = <float *> cnp.PyArray_DATA(self.sn)
        cdef const float *inv_freq = <const float *> cnp.PyArray_DATA(self.inv_freq)
        cdef const float *enw = _ptr(self.emb_norm_w)
        cdef const float *enb = _ptr(self.emb_norm_b)
        cdef int64_t H = self.hidden, hd = self.head_dim, nh = self.n_head, nkv = self.n_kv_head
        cdef int64_t qkv_n = (nh + 2 * nkv) * hd, att_n = nh * hd, half = self.rot_dim // 2
        cdef int64_t t, i, l, s, ff, mi_n, pos
        cdef Layer lay
        cdef const float *anw
        cdef const float *anb
        cdef const float *mnw
        cdef const float *mnb
        cdef lr_attn_args a
        cdef const lr_kernels *K = active_kernels()
        cdef float theta
        cdef bint want_hidden = hidden_states is not None
        cdef KVCache c
        # per sequence: where its rows write K/V and which slots they attend to
        cdef cnp.ndarray segs = np.empty((nseg, 6), np.int64)
        cdef int64_t[:, ::1] sg = segs
        cdef cnp.ndarray bases = np.empty((nseg, 2), np.uintp)
        cdef size_t[:, ::1] bp = bases
        cdef bint kv16 = caches[0].k.dtype == np.float16
        cdef int64_t esize = 2 if kv16 else 4
        for s in range(nseg):
            c = <KVCache> caches[s]
            if (c.k.dtype == np.float16) != kv16:
                raise ValueError("caches of one batch must share their memory dtype")
            sg[s, 0] = c.pos_base + c.n_past                   # rotary position of the first row
            sg[s, 1] = c._slot(c.n_past)                       # slot of the first row
            # attention range: slots [.., att] hold this token and everything before it
            sg[s, 2] = c.n_past if c.ring_head == 0 else c.ctx - 1
            sg[s, 3] = self.window if c.ring_head == 0 else 0  # a ring only runs when window >= ctx
            sg[s, 4] = c.ctx
            sg[s, 5] = c.kv_begin
            bp[s, 0] = <size_t> cnp.PyArray_DATA(c.k)
            bp[s, 1] = <size_t> cnp.PyArray_DATA(c.v)

        self._embed_rows(toks, x)
        with nogil:
            for t in range(rows):
                if enw != NULL:
                    layer_norm(x + t * H, x + t * H, enw, enb, H, self.eps)
                pos = sg[t // seg_rows, 0] + t % seg_rows
                for i in range(half):
                    theta = <float> pos * inv_freq[i]
                    cs[t * half + i] = <float> cos(theta)
                    sn[t * half + i] = <float> sin(theta)
        if want_hidden:
            hidden_states[0][hs_off:hs_off + rows] = self.x[:rows]

        for l in range(self.n_layer):
            lay = <Layer> self.layers[l]
            anw, anb = _ptr(lay.attn_norm_w), _ptr(lay.attn_norm_b)
            mnw, mnb = _ptr(lay.mlp_norm_w), _ptr(lay.mlp_norm_b)
            ff = lay.mlp_out.k
            mi_n = lay.mlp_in.n
            with nogil:
                norm_rows(&self.rs, x, h, anw, anb, rows)
                lay.qkv.apply(h, H, rows, qkv, qkv_n, aq, ad, asum)
                rope_store_rows(&self.rs, qkv, rows, seg_rows, sg, bp, cs, sn, l, kv16)
                for s in range(nseg):
                    a.q = qkv + s * seg_rows * qkv_n
                    a.q_stride = qkv_n
                    a.out = att + s * seg_rows * att_n
                    a.out_stride = att_n
                    a.n_tok = seg_rows
                    a.pos0 = sg[s, 2]
                    a.n_head = <int> nh
                    a.n_kv_head = <int> nkv
                    a.head_dim = <int> hd
                    a.kv_f16 = kv16
                    a.k_cache = <char *> bp[s, 0] + l * nkv * sg[s, 4] * hd * esize
                    a.v_cache = <char *> bp[s, 1] + l * nkv * sg[s, 4] * hd * esize
                    a.ctx = sg[s, 4]
                    a.kv_begin = sg[s, 5]
                    a.window = sg[s, 3]
                    a.scale = self.attn_scale
                    a.alibi_slopes = NULL
                    K.attention(&a)
                lay.attn_out.apply(att, att_n, rows, o, H, aq, ad, asum)

                if self.residual == RES_SEQUENTIAL:
                    # x += o; h2 = norm(x)
                    add_norm_rows(&self.rs, x, o, NULL, h2, mnw, mnb, rows)
                    self._mlp(lay, h2, rows, mi, mi_n, act, ff, m, aq, ad, asum)
                    add_norm_rows(&self.rs, x, m, NULL, NULL, NULL, NULL, rows)
                else:
                    if self.residual == RES_PARALLEL:
                        norm_rows(&self.rs, x, h2, mnw, mnb, rows)
                        self._mlp(lay, h2, rows, mi, mi_n, act, ff, m, aq, ad, asum)
                    else:
                        self._mlp(lay, h, rows, mi, mi_n, act, ff, m, aq, ad, asum)
                    add_norm_rows(&self.rs, x, o, m, NULL, NULL, NULL, rows)
            if want_hidden and l < self.n_layer - 1:
                hidden_states[l + 1][hs_off:hs_off + rows] = self.x[:rows]
        for s in range(nseg):
            c = <KVCache> caches[s]
            c.n_past += seg_rows
        if want_hidden:
            # transformers reports the last hidden state after the final norm
            fin = hidden_states[self.n_layer]
            self._final_norm_rows(0, rows)
            fin[hs_off:hs_off + rows] = self.h[:rows]

    # ------------------------------------------------------------ StreamingLLM position shifts
    @property
    def can_shift_keys(self):
        """Whether cached keys can be moved to other positions by rotation alone (streaming.py)."""
        return self.shifts.can_shift_keys

    def ring_fits(self, int64_t ctx):
        return self.shifts.ring_fits(ctx)

    def ring_advance(self, KVCache cache, int64_t n_keep):
        self.shifts.ring_advance(cache, n_keep)

    def shift_window(self, KVCache cache, int64_t n_keep, int64_t n_drop):
        self.shifts.shift_window(cache, n_keep, n_drop)

    def logical_kv(self, KVCache cache):
        return self.shifts.logical_kv(cache)

    cdef void _mlp(self, Layer lay, float *inp, int64_t rows, float *mi, int64_t mi_n, float *act, int64_t ff,
                   float *out, int8_t *aq, float *ad, int32_t *asum) noexcept nogil:
        cdef int64_t t
        lay.mlp_in.apply(inp, self.hidden, rows, mi, mi_n, aq, ad, asum)
        if self.gated:
            active_kernels().silu_mul(mi, mi_n, rows, ff, act, ff)
            lay.mlp_out.apply(act, ff, rows, out, self.hidden, aq, ad, asum)
        else:
            activate(mi, rows * mi_n, self.act_kind)
            lay.mlp_out.apply(mi, mi_n, rows, out, self.hidden, aq, ad, asum)

    cdef void _final_norm_rows(self, int64_t first, int64_t count):
        cdef float *x = <float *> cnp.PyArray_DATA(self.x)
        cdef float *h = <float *> cnp.PyArray_DATA(self.h)
        cdef const float *w = _ptr(self.final_norm_w)
        cdef const float *b = _ptr(self.final_norm_b)
        cdef int64_t t, H = self.hidden
        with nogil:
            for t in range(first, first + count):
                norm_row(&self.rs, x + t * H, h + (t - first) * H, w, b)

    cdef void _head(self, int64_t rows, cnp.ndarray out):
        """Logits for the first `rows` rows of the current chunk into out (rows, vocab)."""
        cdef float *h = <float *> cnp.PyArray_DATA(self.h)
        cdef int8_t *aq = <int8_t *> cnp.PyArray_DATA(self.aq)
        cdef float *ad = <float *> cnp.PyArray_DATA(self.ad)
        cdef int32_t *asum = <int32_t *> cnp.PyArray_DATA(self.asum)
        cdef float *y = <float *> cnp.PyArray_DATA(out)
        self._final_norm_rows(0, rows)
        with nogil:
            self.lm_head.apply(h, self.hidden, rows, y, self.vocab, aq, ad, asum)

    cdef void _head_last(self, int64_t rows, cnp.ndarray out):
        cdef float *h = <float *> cnp.PyArray_DATA(self.h)
        cdef int8_t *aq = <int8_t *> cnp.PyArray_DATA(self.aq)
        cdef float *ad = <float *> cnp.PyArray_DATA(self.ad)
        cdef int32_t *asum = <int32_t *> cnp.PyArray_DATA(self.asum)
        cdef float *y = <float *> cnp.PyArray_DATA(out)
        self._final_norm_rows(rows - 1, 1)
        with nogil:
            self.lm_head.apply(h, self.hidden, 1, y, self.vocab, aq, ad, asum)
