# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The decoder-block loop shared by every family.

A family describes its blocks with one BlockSpec (llmrt/blockspec.py: norm, rotary, MLP kind,
residual style, window) and hands over Linear layers with fused QKV rows [Q heads; K heads; V heads]
and, for gated MLPs, fused rows [gate; up].  Everything per token runs here without the GIL.
"""
import functools
import time

import numpy as np
cimport numpy as cnp
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t
from libc.math cimport cos, sin, log, ceil, log2, pow
from libc.string cimport memcpy

from llmrt._kernels._ops cimport ActScratch, Linear, active_kernels
from llmrt._kernels.kernels cimport lr_kernels, lr_attn_args, LR_QK
from llmrt._kernels._ops import ACTIVATION_KINDS
from llmrt._core.kvcache cimport (KVCache, segment_table, SEG_POS, SEG_LAST, SEG_WINDOWED, SEG_CTX, SEG_BEGIN,
                                   SEG_COLUMNS)
from llmrt._core.embedding cimport Embedder, EMBED_TOKENS
from llmrt._core.layer cimport Layer, float_ptr
from llmrt._core.layer import float_vector
from llmrt._core.rows cimport (RowSpec, NORM_RMS, NORM_LAYER, norm_row, norm_rows, add_norm_rows, rope_store_rows,
                               scaled_copy_rows, ROPE_ROTATE, ROPE_STORE, ROPE_BOTH)
from llmrt._core.streaming import KeyShifter
from llmrt.blockspec import BlockSpec
from llmrt.errors import UnsupportedError
from llmrt._core.ops cimport clamp

cnp.import_array()

# the block spec's strings as the enums the loop switches on
cdef enum ResidualKind:
    RES_SEQUENTIAL
    RES_PARALLEL
    RES_PARALLEL_SHARED_NORM
    RES_DEEPNORM
NORMS = {"rms": NORM_RMS, "layer": NORM_LAYER}
RESIDUALS = {"sequential": RES_SEQUENTIAL, "parallel": RES_PARALLEL, "parallel_shared_norm": RES_PARALLEL_SHARED_NORM,
             "deepnorm": RES_DEEPNORM}
# rows of the output head per two-pass weight pass (decode and beams need few; prefill asks for one)
HEAD_TWO_PASS_ROWS = 32
# two_pass "down": the residual pass covers the blocks whose int8 step is over this many times the
# row's mean step (the blocks an outlier made coarse). On SmolLM2 (6 windows of the Python tutorial)
# 3 keeps 79% of the full second pass's KL gain (0.00206 against 0.0017, one pass 0.0031) with 2% of
# the blocks, a ninth of the 8-row prefill tiles (2: 87% of the gain, 6% of the blocks, a third of the
# tiles); 1.1B int4 prefill on AVX2: 181 tok/s at 3, 167 at 2, 150 with every block, 189 one pass.
DOWN_RESIDUAL_ABOVE = 3.0

# Hook points (research hooks, llmrt/hooks.py): a block's, in forward order, and the model's own.
# The names are TransformerLens's; hooks.py decides which of them a model has.
cdef enum BlockPoint:
    P_RESID_PRE
    P_LN1
    P_Q
    P_K
    P_V
    P_ROT_Q
    P_ROT_K
    P_SCORES
    P_PATTERN
    P_Z
    P_ATTN_OUT
    P_RESID_MID
    P_LN2
    P_MLP_PRE
    P_MLP_PRE_LINEAR
    P_MLP_POST
    P_MLP_OUT
    P_RESID_POST
    N_POINTS
cdef enum ModelPoint:           # row n_layer of the hook table
    G_EMBED
    G_POS_EMBED
    G_LN_FINAL
    G_UNEMBED
BLOCK_POINTS = ("hook_resid_pre", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v",
                "attn.hook_rot_q", "attn.hook_rot_k", "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z",
                "hook_attn_out", "hook_resid_mid", "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_pre_linear",
                "mlp.hook_post", "hook_mlp_out", "hook_resid_post")
MODEL_POINTS = ("hook_embed", "hook_pos_embed", "ln_final.hook_normalized", "unembed.hook_out")
assert len(BLOCK_POINTS) == N_POINTS


cdef class Engine:
    """Runs token chunks through embedding, blocks, final norm and head."""
    cdef readonly int n_layer, hidden, n_head, n_kv_head, head_dim, rot_dim, vocab
    # the block spec (blockspec.BlockSpec) and its switches as enums
    cdef readonly object spec
    cdef RowSpec rs
    cdef ResidualKind residual
    cdef bint gated, post_norm
    cdef int act_kind
    cdef float attn_scale, qkv_clip, res_alpha
    # a prefix-LM's (context end, mask, gmask) ids (ChatGLM-6B), or ()
    cdef readonly tuple prefix_tokens
    # Qwen past its training length (BlockSpec.logn_from / ntk_from; 0: off)
    cdef int64_t logn_from, ntk_from
    cdef object inv_freq, alibi, windows
    cdef readonly list layers
    cdef readonly Embedder embedder
    cdef readonly Linear lm_head, project_out
    cdef readonly object final_norm_w, final_norm_b
    cdef readonly int64_t max_chunk
    cdef readonly ActScratch act_scratch, head_scratch
    # StreamingLLM shifts of this model's caches (streaming.pyx: can_shift_keys, ring_advance, ...)
    cdef readonly object shifts
    # seconds spent running blocks and head (the rest of a call is argument handling in Python)
    cdef public double compute_seconds
    # scratch, sized for max_chunk rows (for the whole input while hooks are set)
    cdef cnp.ndarray x, h, h2, qkv, att, o, mi, act, m, aq, ad, asum, cs, sn, hp
    # research hooks (set_hooks): the runner called at each wanted point, and its table of wanted
    # points, want[l * N_POINTS + point] (the model's own points in row n_layer); NULL: no hooks
    cdef object hooks
    cdef cnp.ndarray hook_table
    cdef const uint8_t *want
    # tensor parallelism (llmrt/parallel): this rank's group, or None; the head's vocabulary rows
    # per rank and this rank's logits before they are gathered
    cdef readonly object tp
    cdef readonly tuple vocab_splits
    cdef cnp.ndarray local_logits

    def __init__(self, *, int hidden, spec, list layers, Embedder embedder, Linear lm_head, final_norm_w=None,
                 final_norm_b=None, Linear project_out=None, int64_t max_chunk=128, str two_pass="none",
                 tp=None, tuple vocab_splits=None):
        """spec: a blockspec.BlockSpec (validated when it was made); embedder: the rows a chunk
        starts from; project_out: hidden -> the head's width, after the final norm (OPT-350m).
        tp: a parallel.TensorParallel when this engine is one rank's shard (spec, layers and head
        hold its slices; vocab_splits: every rank's rows of the head)."""
        if not isinstance(spec, BlockSpec):
            raise TypeError(f"spec must be a llmrt.blockspec.BlockSpec, got {type(spec).__name__}")
        self.spec = spec
        self.tp, self.vocab_splits = tp, vocab_splits
        self.hidden, self.vocab = hidden, lm_head.n if tp is None else embedder.vocab
        self.n_head, self.n_kv_head, self.head_dim = spec.n_heads, spec.n_kv_heads, spec.head_dim
        self.n_layer = len(layers)
        self.rs.hidden, self.rs.n_head, self.rs.n_kv_head, self.rs.head_dim = hidden, spec.n_heads, spec.n_kv_heads, spec.head_dim
        self.rs.rot_dim, self.rs.interleaved = spec.rotary_dim, spec.rotary_interleaved
        self.rs.norm, self.rs.eps = NORMS[spec.norm], spec.norm_eps
        self.gated, self.post_norm = spec.gated, spec.norm_placement == "post"
        self.act_kind = -1 if spec.gated else ACTIVATION_KINDS[spec.mlp]
        self.residual = RESIDUALS[spec.residual]
        self.rot_dim = spec.rotary_dim
        self.inv_freq = spec.inv_freq
        self.alibi = spec.alibi_slopes
        self.windows = np.array([spec.window_of(l) for l in range(self.n_layer)], np.int64)
        # a wrapped ring is attended as one set: only windows at least as large as the cache allow it
        self.shifts = KeyShifter(spec.positions, self.rot_dim, spec.rotary_interleaved, self.inv_freq,
                                 min([w for w in self.windows if w > 0], default=0))
        self.attn_scale, self.qkv_clip = spec.scale, spec.qkv_clip
        self.res_alpha, self.prefix_tokens = spec.residual_alpha, spec.prefix_tokens
        self.logn_from, self.ntk_from = spec.logn_from, spec.ntk_from
        self.layers = layers
        self.embedder, self.lm_head, self.project_out = embedder, lm_head, project_out
        self.final_norm_w, self.final_norm_b = float_vector(final_norm_w), float_vector(final_norm_b)
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
                (<Linear> l).use_two_pass_activations(self.act_scratch,
                                                      DOWN_RESIDUAL_ABOVE if two_pass == "down" else 0.0)
            if lm_head.compute == "int8":
                # the head's outputs are wide: its own scratch, a few rows per weight pass
                self.head_scratch = ActScratch(HEAD_TWO_PASS_ROWS, lm_head.k, lm_head.n)
                lm_head.use_two_pass_activations(self.head_scratch)

    def _check_shapes(self):
        self.spec.check_layers(self.hidden, self.layers)
        width = self.hidden if self.project_out is None else self.project_out.n
        if self.project_out is not None and self.project_out.k != self.hidden:
            raise ValueError(f"project_out is {self.project_out.n}x{self.project_out.k}, expected {width}x{self.hidden}")
        head_rows = self.vocab
        if self.tp is not None:
            # (this file indexes without bounds checks or negative indices: check the table first)
            if self.vocab_splits is None or len(self.vocab_splits) != self.tp.size:
                raise ValueError(f"vocab_splits must give the head rows of each of the {self.tp.size} ranks")
            lo, hi = self.vocab_splits[self.tp.rank]
            head_rows = hi - lo
            end = self.vocab_splits[self.tp.size - 1][1]
            if end != self.vocab:
                raise ValueError(f"the ranks' head rows end at {end}, not at the vocabulary's {self.vocab}")
        if self.lm_head.k != width or self.lm_head.n != head_rows:
            raise ValueError(f"lm_head is {self.lm_head.n}x{self.lm_head.k}, expected {head_rows}x{width}")
        if self.embedder.hidden != self.hidden or self.embedder.vocab != self.vocab:
            raise ValueError(f"the embedding is for {self.embedder.vocab} tokens of width {self.embedder.hidden}, "
                             f"expected {self.vocab} of {self.hidden}")
        if self.spec.final_norm and self.final_norm_w is None:
            raise ValueError("the checkpoint has no final norm weight (final_norm.weight); it may be truncated")
        if not self.spec.final_norm and self.final_norm_w is not None:
            raise ValueError("a final norm weight was given to a model without a final norm")
        for name, v in (("final_norm.weight", self.final_norm_w), ("final_norm.bias", self.final_norm_b)):
            if v is not None and v.shape[0] != self.hidden:
                raise ValueError(f"{name} has {v.shape[0]} values, expected {self.hidden}")
        if (self.spec.positions == "learned") != (self.embedder.positions is not None):
            raise ValueError("a position table must be given exactly when the spec has learned positions")

    def _alloc(self, int64_t rows):
        cdef int64_t max_k = self.hidden, max_mi = 0, max_ff = 0
        for L in self.layers:
            lay = <Layer> L
            max_k = max(max_k, lay.mlp_out.k, lay.attn_out.k)
            max_mi = max(max_mi, lay.mlp_in.n)
            max_ff = max(max_ff, lay.mlp_out.k)
        max_k = max(max_k, self.lm_head.k, self.embedder.e.shape[1])
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
        self.hp = np.zeros((rows if self.project_out is not None else 0, self.lm_head.k), f)
        self.aq = np.zeros(rows * max_k + LR_QK, np.int8)
        self.ad = np.zeros(rows * (max_k // LR_QK + 1), f)
        self.asum = np.zeros(rows * (max_k // LR_QK + 1), np.int32)
        self.cs = np.zeros((rows, max(self.rot_dim // 2, 1)), f)
        self.sn = np.zeros((rows, max(self.rot_dim // 2, 1)), f)

    def set_hooks(self, runner):
        """Call runner.fire(layer, point, activation) at the points runner.table (uint8, (n_layer + 1,
        N_POINTS)) marks, until set_hooks(None).  While hooks are set every forward runs its input as
        one chunk, so a hook sees the whole input at once; None shrinks the scratch back."""
        if runner is None:
            self.hooks, self.hook_table, self.want = None, None, NULL
            if self.x.shape[0] != self.max_chunk:
                self._alloc(self.max_chunk)
                self.embedder.resize_rows(self.max_chunk)
            return
        if self.tp is not None:
            raise UnsupportedError("research hooks see whole activations, which a tensor-parallel rank does not "
                                   "hold; load the model without tensor_parallel to use them")
        table = np.ascontiguousarray(runner.table, dtype=np.uint8)
        if table.shape[0] != self.n_layer + 1 or table.shape[1] != N_POINTS:
            raise ValueError(f"the hook table must be ({self.n_layer + 1}, {N_POINTS}), got {table.shape}")
        self.hooks, self.hook_table = runner, table
        self.want = <const uint8_t *> cnp.PyArray_DATA(table)

    cdef inline bint _wants(self, int64_t l, int p) noexcept nogil:
        return self.want != NULL and self.want[l * N_POINTS + p] != 0

    cdef int _reduce(self, cnp.ndarray buf, int64_t rows) except -1:
        """Tensor parallelism: buf's first rows, this rank's partial sums, become the whole sums."""
        self.tp.allreduce_rows(buf, rows)
        return 0

    cdef int _fire(self, int64_t l, int p, object view) except -1:
        self.hooks.fire(l, p, view)
        return 0

    def _fire_embedding(self, int64_t nseg, int64_t seg_rows, int which):
        """The embedding's hook (Embedder.rows): token rows are in x, position rows in h."""
        cdef int p = G_EMBED if which == EMBED_TOKENS else G_POS_EMBED
        if self._wants(self.n_layer, p):
            a = self.x if p == G_EMBED else self.h
            self._fire(self.n_layer, p, a[:nseg * seg_rows].reshape(nseg, seg_rows, self.hidden))

    cdef object _block_view(self, int p, int64_t nseg, int64_t seg_rows, int64_t mi_n, int64_t ff):
        """The scratch rows holding point p of the current block, as (batch, pos, ...) views."""
        cdef int64_t rows = nseg * seg_rows, nh = self.n_head, nkv = self.n_kv_head, hd = self.head_dim
        if p in (P_Q, P_K, P_V, P_ROT_Q, P_ROT_K):
            heads = self.qkv[:rows].reshape(nseg, seg_rows, nh + 2 * nkv, hd)
            if p == P_Q or p == P_ROT_Q:
                return heads[:, :, :nh]
            return heads[:, :, nh:nh + nkv] if p != P_V else heads[:, :, nh + nkv:]
        if p == P_Z:
            return self.att[:rows].reshape(nseg, seg_rows, nh, hd)
        if p in (P_MLP_PRE, P_MLP_PRE_LINEAR) or (p == P_MLP_POST and not self.gated):
            mi = self.mi.reshape(-1)[:rows * mi_n].reshape(nseg, seg_rows, mi_n)
            if not self.gated:
                return mi
            return mi[:, :, :ff] if p == P_MLP_PRE else mi[:, :, ff:]
        if p == P_MLP_POST:
            return self.act.reshape(-1)[:rows * ff].reshape(nseg, seg_rows, ff)
        a = {P_LN1: self.h, P_LN2: self.h2, P_ATTN_OUT: self.o, P_MLP_OUT: self.m}.get(p, self.x)
        return a[:rows].reshape(nseg, seg_rows, self.hidden)

    cdef int _fire_block(self, int64_t l, int p, int64_t nseg, int64_t seg_rows, int64_t mi_n, int64_t ff) except -1:
        return self._fire(l, p, self._block_view(p, nseg, seg_rows, mi_n, ff))

    cdef void _grow_scratch(self, int64_t rows) except *:
        if rows > self.x.shape[0]:
            self._alloc(rows)
            self.embedder.resize_rows(rows)

    def new_cache(self, int64_t ctx, dtype="f16"):
        return KVCache(self.n_layer, self.n_kv_head, ctx, self.head_dim, dtype)

    @property
    def scratch_nbytes(self):
        return sum(a.nbytes for a in (self.x, self.h, self.h2, self.qkv, self.att, self.o, self.mi, self.act,
                                      self.m, self.aq, self.ad, self.asum, self.cs, self.sn, self.hp, self.embedder.e))

    def forward(self, KVCache cache, tokens, bint all_logits=False, list hidden_states=None, out=None):
        """Append tokens to the sequence in cache and return logits: (n, vocab) float32 if
        all_logits else (1, vocab) for the last token (written into out when given: a C-contiguous
        float32 array of that shape).  hidden_states (a list) receives n_layer + 1 arrays (n, hidden)
        like transformers' output_hidden_states."""
        cdef cnp.ndarray toks = self._tokens(tokens)
        cdef int64_t n = toks.shape[0]
        self._check_cache(cache, n)
        if hidden_states is not None:
            del hidden_states[:]
            for _ in range(self.n_layer):
                hidden_states.append(np.empty((n, self.hidden), np.float32))
            hidden_states.append(np.empty((n, self.lm_head.k), np.float32))   # after the final norm
        shape = (n if all_logits else 1, self.vocab)
        if out is None:
            out = np.empty(shape, np.float32)
        elif not (isinstance(out, np.ndarray) and out.shape == shape and out.dtype == np.float32
                  and out.flags.c_contiguous and out.flags.writeable):
            raise ValueError(f"out must be a writeable C-contiguous float32 array of shape {shape}")
        cdef int64_t start = 0, rows = 0, chunk = self.max_chunk
        cdef bint whole = self.want != NULL
        if self.prefix_tokens and self._start_prefix(cache, toks):
            whole = True        # the context attends both ways: all of it goes through the blocks in one chunk
        if whole:
            chunk = n
            self._grow_scratch(n)
        if self.ntk_from > 0 and cache.n_past == 0:
            # the sequence's first forward fixes its rotary base for good (Qwen's dynamic NTK)
            cache.rope_inv_freq = self._ntk_inv_freq(n) if n > self.ntk_from else None
        t0 = time.perf_counter()
        while start < n:
            rows = min(chunk, n - start)
            self._chunk([cache], toks[start:start + rows], hidden_states, start)
            if all_logits:
                self._head(0, rows, out[start:start + rows], 1)
            start += rows
        if not all_logits:
            self._head(rows - 1, 1, out, 1)
        if whole and self.want == NULL and self.x.shape[0] != self.max_chunk:
            self._alloc(self.max_chunk)          # back to the usual scratch after a long context
            self.embedder.resize_rows(self.max_chunk)
        self.compute_seconds += time.perf_counter() - t0
        return out

    cdef bint _start_prefix(self, KVCache cache, cnp.ndarray toks) except -1:
        """A prefix-LM sequence's first forward fixes its context (up to its first context-end token)
        and mask position; returns whether this forward holds context rows (run as one chunk)."""
        cdef int64_t end_id = self.prefix_tokens[0], mask_id = self.prefix_tokens[1]
        cdef int64_t gmask_id = self.prefix_tokens[2]
        if cache.n_past == 0:
            ids = toks.tolist()
            if end_id not in ids:
                raise ValueError(f"this model (ChatGLM-6B) takes the prompt up to its <sop> token (id {end_id}) as "
                                 f"context, and a sequence's first input has none: end the prompt with [gMASK] "
                                 f"<sop> as its tokenizer does")
            context = ids.index(end_id)
            mark = gmask_id if gmask_id in ids[:context] else mask_id
            if mark not in ids[:context]:
                raise ValueError(f"this model (ChatGLM-6B) needs a [gMASK] (id {gmask_id}) or [MASK] (id {mask_id}) "
                                 f"token before the prompt's <sop>: its positions count from it")
            cache.prefix = (context, ids.index(mark))
            return True
        if cache.prefix is None or cache.n_past < cache.prefix[0]:
            raise ValueError("this sequence's context (before its <sop>) is cut short in the cache: run the "
                             "sequence again from its start")
        return False

    def forward_batch(self, list caches, tokens):
        """One new token for each of several sequences (batch rows, beams): the weights are read
        once for all of them.  Returns logits (len(caches), vocab) float32."""
        cdef cnp.ndarray toks = self._tokens(tokens)
        cdef int64_t n = toks.shape[0], start = 0, rows, chunk = self.max_chunk
        if n != len(caches):
            raise ValueError(f"forward_batch got {n} tokens for {len(caches)} caches")
        if len({id(c) for c in caches}) != n:
            raise ValueError("forward_batch needs one distinct cache per token")
        for c in caches:
            self._check_cache(c, 1)
            if self.prefix_tokens and (c.prefix is None or c.n_past < c.prefix[0]):
                raise ValueError("forward_batch continues sequences: run each prompt (up to its <sop>) with "
                                 "forward first")
        out = np.empty((n, self.vocab), np.float32)
        if self.want != NULL:
            chunk = n
            self._grow_scratch(n)
        t0 = time.perf_counter()
        while start < n:
            rows = min(chunk, n - start)
            self._chunk(caches[start:start + rows], toks[start:start + rows], None, 0)
            self._head(0, rows, out[start:start + rows], rows)
            start += rows
        self.compute_seconds += time.perf_counter() - t0
        return out

    cdef cnp.ndarray _rotary_freqs(self, list caches):
        """The model's inverse frequencies, or with dynamic NTK one row per sequence (a cache's own)."""
        if self.ntk_from == 0 or all(c.rope_inv_freq is None for c in caches):
            return self.inv_freq
        return np.ascontiguousarray(np.stack([self.inv_freq if c.rope_inv_freq is None else c.rope_inv_freq
                                              for c in caches]), dtype=np.float32)

    def _ntk_inv_freq(self, int64_t length):
        """Inverse frequencies at Qwen's raised base b * alpha ** (d / (d - 2)) for a first forward of
        length tokens: b ** (-2i / d) times alpha ** (-2i / (d - 2))."""
        cdef double alpha = max(pow(2.0, ceil(log2(<double> length / self.ntk_from) + 1.0)) - 1.0, 1.0)
        i = np.arange(self.rot_dim // 2, dtype=np.float64)
        return (self.inv_freq.astype(np.float64) * alpha ** (-2.0 * i / (self.rot_dim - 2))).astype(np.float32)

    cdef cnp.ndarray _tokens(self, tokens):
        cdef cnp.ndarray toks = np.ascontiguousarray(tokens, dtype=np.int64).reshape(-1)
        if toks.shape[0] == 0:
            raise ValueError("no tokens to process")
        if self.tp is not None:
            toks = self.tp.agree(toks, "tokens to run")     # every rank runs rank 0's tokens
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
        cdef cnp.ndarray freqs = self._rotary_freqs(caches)
        cdef int64_t fstride = freqs.shape[1] if freqs.ndim == 2 else 0
        cdef const float *inv_freq = <const float *> cnp.PyArray_DATA(freqs)
        cdef double logn_div = log(<double> self.logn_from) if self.logn_from > 1 else 1.0
        cdef float qscale
        cdef const float *slopes = NULL if self.alibi is None else <const float *> cnp.PyArray_DATA(self.alibi)
        cdef const int64_t *windows = <const int64_t *> cnp.PyArray_DATA(self.windows)
        cdef int64_t H = self.hidden, hd = self.head_dim, nh = self.n_head, nkv = self.n_kv_head
        cdef int64_t qkv_n = (nh + 2 * nkv) * hd, att_n = nh * hd, half = self.rot_dim // 2
        cdef int64_t t, i, l, s, ff, mi_n
        cdef int p
        cdef Layer lay
        cdef const float *anw
        cdef const float *anb
        cdef const float *mnw
        cdef const float *mnb
        cdef float *attn_in
        cdef lr_attn_args a
        cdef const lr_kernels *K = active_kernels()
        cdef float theta
        cdef bint want_hidden = hidden_states is not None
        cdef bint tp = self.tp is not None
        cdef KVCache c
        # per sequence: where its rows write K/V and which slots they attend to
        cdef cnp.ndarray segs = np.empty((nseg, SEG_COLUMNS), np.int64)
        cdef int64_t[:, ::1] sg = segs
        cdef cnp.ndarray bases = np.empty((nseg, 2), np.uintp)
        cdef size_t[:, ::1] bp = bases
        cdef cnp.ndarray positions = np.empty(rows, np.int64)
        cdef int64_t *pos = <int64_t *> cnp.PyArray_DATA(positions)
        cdef bint kv16 = segment_table(caches, sg, bp)
        cdef int64_t esize = 2 if kv16 else 4
        for s in range(nseg):
            self.embedder.check_positions(sg[s, SEG_POS] + seg_rows - 1)
        for t in range(rows):
            pos[t] = sg[t // seg_rows, SEG_POS] + t % seg_rows
        # 2D rotary (prefix-LM): token t of a sequence with context C and mask index M is at (t, 0)
        # within the context, (M, t - C + 1) after it; rotary features of the second half take the latter.
        # Other models turn every feature at pos (rp = bk = pos, quarter = half) and allocate nothing here.
        cdef int64_t *rp = pos
        cdef int64_t *bk = pos
        cdef int64_t quarter = half
        cdef int64_t *ctx_of = NULL
        cdef int64_t n_pre = 0
        cdef cnp.ndarray rpos, bpos, contexts
        if self.prefix_tokens:
            rpos, bpos, contexts = positions.copy(), np.zeros(rows, np.int64), np.zeros(nseg, np.int64)
            rp, bk = <int64_t *> cnp.PyArray_DATA(rpos), <int64_t *> cnp.PyArray_DATA(bpos)
            ctx_of, quarter = <int64_t *> cnp.PyArray_DATA(contexts), half // 2
            for s in range(nseg):
                ctx_of[s], mark = (<KVCache> caches[s]).prefix
                for t in range(s * seg_rows, (s + 1) * seg_rows):
                    if pos[t] >= ctx_of[s]:
                        rp[t], bk[t] = mark, pos[t] - ctx_of[s] + 1
        self.embedder.rows(toks, pos, x, h, aq, ad, asum,
                           None if self.want == NULL else functools.partial(self._fire_embedding, nseg, seg_rows))
        with nogil:
            for t in range(rows):
                for i in range(half):
                    theta = <float> (rp[t] if i < quarter else bk[t]) * inv_freq[(t // seg_rows) * fstride + i]
                    cs[t * half + i] = <float> cos(theta)
                    sn[t * half + i] = <float> sin(theta)
        if want_hidden:
            hidden_states[0][hs_off:hs_off + rows] = self.x[:rows]

        # Every hook point below is one test of self.want (NULL without hooks) between the steps;
        # fused steps (rotary + store, residual add + norm) are split only when a hook sits between.
        for l in range(self.n_layer):
            lay = <Layer> self.layers[l]
            anw, anb = float_ptr(lay.attn_norm_w), float_ptr(lay.attn_norm_b)
            mnw, mnb = float_ptr(lay.mlp_norm_w), float_ptr(lay.mlp_norm_b)
            ff = lay.mlp_out.k
            mi_n = lay.mlp_in.n
            with nogil:
                if self._wants(l, P_RESID_PRE):
                    with gil:
                        self._fire_block(l, P_RESID_PRE, nseg, seg_rows, mi_n, ff)
                attn_in = x
                if not self.post_norm:
                    norm_rows(&self.rs, x, h, anw, anb, rows)
                    attn_in = h
                    if self._wants(l, P_LN1):
                        with gil:
                            self._fire_block(l, P_LN1, nseg, seg_rows, mi_n, ff)
                lay.qkv.apply(attn_in, H, rows, qkv, qkv_n, aq, ad, asum)
                if self.qkv_clip > 0:
                    clamp(qkv, rows * qkv_n, self.qkv_clip)
                for p in range(P_Q, P_V + 1):
                    if self._wants(l, p):
                        with gil:
                            self._fire_block(l, p, nseg, seg_rows, mi_n, ff)
                if self._wants(l, P_ROT_Q) or self._wants(l, P_ROT_K):
                    rope_store_rows(&self.rs, qkv, rows, seg_rows, sg, bp, cs, sn, l, kv16, ROPE_ROTATE)
                    with gil:
                        for p in (P_ROT_Q, P_ROT_K):
                            if self._wants(l, p):
                                self._fire_block(l, p, nseg, seg_rows, mi_n, ff)
                    rope_store_rows(&self.rs, qkv, rows, seg_rows, sg, bp, cs, sn, l, kv16, ROPE_STORE)
                else:
                    rope_store_rows(&self.rs, qkv, rows, seg_rows, sg, bp, cs, sn, l, kv16, ROPE_BOTH)
                if self.logn_from > 0:
                    # Qwen's logn attention: queries past its training length scaled by ln(p + 1) / ln(S)
                    for t in range(rows):
                        if pos[t] >= self.logn_from:
                            qscale = <float> (log(pos[t] + 1.0) / logn_div)
                            for i in range(att_n):
                                qkv[t * qkv_n + i] *= qscale
                for s in range(nseg):
                    a.q = qkv + s * seg_rows * qkv_n
                    a.q_stride = qkv_n
                    a.out = att + s * seg_rows * att_n
                    a.out_stride = att_n
                    a.n_tok = seg_rows
                    a.pos0 = sg[s, SEG_LAST]
                    if ctx_of != NULL:
                        n_pre = min(max(ctx_of[s] - sg[s, SEG_POS], 0), seg_rows)
                    a.n_head = <int> nh
                    a.n_kv_head = <int> nkv
                    a.head_dim = <int> hd
                    a.kv_f16 = kv16
                    a.k_cache = <char *> bp[s, 0] + l * nkv * sg[s, SEG_CTX] * hd * esize
                    a.v_cache = <char *> bp[s, 1] + l * nkv * sg[s, SEG_CTX] * hd * esize
                    a.ctx = sg[s, SEG_CTX]
                    a.kv_begin = sg[s, SEG_BEGIN]
                    a.window = windows[l] if sg[s, SEG_WINDOWED] else 0
                    a.scale = self.attn_scale
                    a.alibi_slopes = slopes
                    if n_pre > 0:
                        # context rows see the whole context: one query at a time, each as if it were
                        # the context's last (only the key range depends on it)
                        a.n_tok = 1
                        for t in range(n_pre):
                            a.pos0 = sg[s, SEG_LAST] + ctx_of[s] - 1 - sg[s, SEG_POS]
                            K.attention(&a)
                            a.q = a.q + qkv_n
                            a.out = a.out + att_n
                        a.n_tok = seg_rows - n_pre
                        a.pos0 = sg[s, SEG_LAST] + n_pre
                    if a.n_tok > 0:
                        K.attention(&a)
                if self._wants(l, P_SCORES) or self._wants(l, P_PATTERN):
                    with gil:
                        self._attention_pattern(caches, l, sg, nseg, seg_rows)
                if self._wants(l, P_Z):
                    with gil:
                        self._fire_block(l, P_Z, nseg, seg_rows, mi_n, ff)
                lay.attn_out.apply(att, att_n, rows, o, H, aq, ad, asum)
                if tp and (self.residual == RES_SEQUENTIAL or self.residual == RES_DEEPNORM):
                    with gil:
                        self._reduce(self.o, rows)
                if self._wants(l, P_ATTN_OUT):
                    with gil:
                        self._fire_block(l, P_ATTN_OUT, nseg, seg_rows, mi_n, ff)

                if self.post_norm:
                    # x = norm1(x + o); x = norm2(x + mlp(x))
                    add_norm_rows(&self.rs, x, o, NULL, x, anw, anb, rows)
                    if self._wants(l, P_RESID_MID):
                        with gil:
                            self._fire_block(l, P_RESID_MID, nseg, seg_rows, mi_n, ff)
                    self._mlp(lay, l, x, nseg, seg_rows, mi, mi_n, act, ff, m, aq, ad, asum)
                    if tp:
                        with gil:
                            self._reduce(self.m, rows)
                    add_norm_rows(&self.rs, x, m, NULL, x, mnw, mnb, rows)
                elif self.residual == RES_DEEPNORM:
                    # x = alpha * norm1(x) + o; h2 = norm2(x); x = alpha * h2 + mlp(h2)
                    scaled_copy_rows(&self.rs, x, h, self.res_alpha, rows)
                    add_norm_rows(&self.rs, x, o, NULL, h2, mnw, mnb, rows)
                    if self._wants(l, P_RESID_MID) or self._wants(l, P_LN2):
                        with gil:
                            for p in (P_RESID_MID, P_LN2):
                                if self._wants(l, p):
                                    self._fire_block(l, p, nseg, seg_rows, mi_n, ff)
                    self._mlp(lay, l, h2, nseg, seg_rows, mi, mi_n, act, ff, m, aq, ad, asum)
                    if tp:
                        with gil:
                            self._reduce(self.m, rows)
                    scaled_copy_rows(&self.rs, x, h2, self.res_alpha, rows)
                    add_norm_rows(&self.rs, x, m, NULL, NULL, NULL, NULL, rows)
                elif self.residual == RES_SEQUENTIAL:
                    # x += o; h2 = norm(x)
                    if self._wants(l, P_RESID_MID) or self._wants(l, P_LN2):
                        add_norm_rows(&self.rs, x, o, NULL, NULL, NULL, NULL, rows)
                        if self._wants(l, P_RESID_MID):
                            with gil:
                                self._fire_block(l, P_RESID_MID, nseg, seg_rows, mi_n, ff)
                        norm_rows(&self.rs, x, h2, mnw, mnb, rows)
                        if self._wants(l, P_LN2):
                            with gil:
                                self._fire_block(l, P_LN2, nseg, seg_rows, mi_n, ff)
                    else:
                        add_norm_rows(&self.rs, x, o, NULL, h2, mnw, mnb, rows)
                    self._mlp(lay, l, h2, nseg, seg_rows, mi, mi_n, act, ff, m, aq, ad, asum)
                    if tp:
                        with gil:
                            self._reduce(self.m, rows)
                    add_norm_rows(&self.rs, x, m, NULL, NULL, NULL, NULL, rows)
                else:
                    if self.residual == RES_PARALLEL:
                        norm_rows(&self.rs, x, h2, mnw, mnb, rows)
                        if self._wants(l, P_LN2):
                            with gil:
                                self._fire_block(l, P_LN2, nseg, seg_rows, mi_n, ff)
                        self._mlp(lay, l, h2, nseg, seg_rows, mi, mi_n, act, ff, m, aq, ad, asum)
                    else:
                        self._mlp(lay, l, h, nseg, seg_rows, mi, mi_n, act, ff, m, aq, ad, asum)
                    if tp:
                        # one all-reduce for both branches: m = o + m summed over the ranks
                        add_norm_rows(&self.rs, m, o, NULL, NULL, NULL, NULL, rows)
                        with gil:
                            self._reduce(self.m, rows)
                        add_norm_rows(&self.rs, x, m, NULL, NULL, NULL, NULL, rows)
                    else:
                        add_norm_rows(&self.rs, x, o, m, NULL, NULL, NULL, rows)
                if self._wants(l, P_RESID_POST):
                    with gil:
                        self._fire_block(l, P_RESID_POST, nseg, seg_rows, mi_n, ff)
            if want_hidden and l < self.n_layer - 1:
                hidden_states[l + 1][hs_off:hs_off + rows] = self.x[:rows]
        for s in range(nseg):
            c = <KVCache> caches[s]
            c.n_past += seg_rows
        if want_hidden:
            # transformers reports the last hidden state after the final norm (and projection)
            self._head_input(0, rows, 0)
            hidden_states[self.n_layer][hs_off:hs_off + rows] = (self.h if self.project_out is None else self.hp)[:rows]

    cdef int _mlp(self, Layer lay, int64_t l, float *inp, int64_t nseg, int64_t seg_rows, float *mi, int64_t mi_n,
                  float *act, int64_t ff, float *out, int8_t *aq, float *ad, int32_t *asum) except -1 nogil:
        cdef int64_t rows = nseg * seg_rows
        cdef int p
        lay.mlp_in.apply(inp, self.hidden, rows, mi, mi_n, aq, ad, asum)
        if self._wants(l, P_MLP_PRE) or self._wants(l, P_MLP_PRE_LINEAR):
            with gil:
                for p in (P_MLP_PRE, P_MLP_PRE_LINEAR):
                    if self._wants(l, p):
                        self._fire_block(l, p, nseg, seg_rows, mi_n, ff)
        if self.gated:
            active_kernels().silu_mul(mi, mi_n, rows, ff, act, ff)
        else:
            active_kernels().activate(mi, rows * mi_n, self.act_kind)
        if self._wants(l, P_MLP_POST):
            with gil:
                self._fire_block(l, P_MLP_POST, nseg, seg_rows, mi_n, ff)
        if self.gated:
            lay.mlp_out.apply(act, ff, rows, out, self.hidden, aq, ad, asum)
        else:
            lay.mlp_out.apply(mi, mi_n, rows, out, self.hidden, aq, ad, asum)
        if self._wants(l, P_MLP_OUT):
            with gil:
                self._fire_block(l, P_MLP_OUT, nseg, seg_rows, mi_n, ff)
        return 0

    cdef int _attention_pattern(self, list caches, int64_t l, int64_t[:, ::1] sg, int64_t nseg,
                                int64_t seg_rows) except -1:
        """Block l's attention scores (scale q.k + ALiBi, masked slots -inf) and pattern (their
        softmax), both (batch, head, query, key slot) with the cache's slots from 0 up to the last new
        token's, built in NumPy for their hooks (the kernel never forms them).  Only if a hook edits
        them is z recomputed from them here; otherwise the kernel's z stands."""
        cdef int64_t nh = self.n_head, nkv = self.n_kv_head, hd = self.head_dim, s
        cdef KVCache c
        q = self.qkv[:nseg * seg_rows].reshape(nseg, seg_rows, nh + 2 * nkv, hd)[:, :, :nh]
        for s in range(nseg):
            if (<KVCache> caches[s]).ring_head != 0:
                raise UnsupportedError("attention patterns cannot be taken over a wrapped ring cache (StreamingLLM "
                                       "with shift_roped_k): hook the pattern on a run within the context")
        firsts = [sg[s, SEG_LAST] for s in range(nseg)]
        width = max(firsts) + seg_rows
        scores = np.full((nseg, nh, seg_rows, width), -np.inf, np.float32)
        values = []
        for s in range(nseg):
            c = <KVCache> caches[s]
            end = firsts[s] + seg_rows
            keys = np.repeat(np.asarray(c.k[l, :, :end], np.float32), nh // nkv, axis=0)
            values.append(np.repeat(np.asarray(c.v[l, :, :end], np.float32), nh // nkv, axis=0))
            sc = scores[s, :, :, :end]            # built in place: a pattern can be tens of MiB
            if end == width:
                np.matmul(q[s].transpose(1, 0, 2), keys.transpose(0, 2, 1), out=sc)
            else:
                sc[...] = np.matmul(q[s].transpose(1, 0, 2), keys.transpose(0, 2, 1))
            sc *= np.float32(self.attn_scale)
            slot = np.arange(end)[None, :]
            query = (firsts[s] + np.arange(seg_rows))[:, None]
            if self.alibi is not None:
                sc += self.alibi[:, None, None] * (slot - query).astype(np.float32)[None]
            masked = (slot > query) | (slot < sg[s, SEG_BEGIN])
            if self.prefix_tokens:
                context = c.prefix[0]               # the context attends both ways
                masked &= ~((slot < context) & (query < context))
            if self.windows[l] > 0 and sg[s, SEG_WINDOWED]:
                masked |= slot < query - self.windows[l] + 1
            sc[:, masked] = -np.inf
        edited = False
        if self._wants(l, P_SCORES):
            before = scores.copy() if self.hooks.edits(l, P_SCORES) else None
            self._fire(l, P_SCORES, scores)
            edited = before is not None and not np.array_equal(before, scores)
        # the softmax in the scores' own buffer (their hooks are done; a 512-token pattern of a
        # 32-head block is 32 MiB)
        top = scores.max(axis=-1, keepdims=True)
        pattern = scores
        pattern -= np.where(np.isfinite(top), top, 0)
        np.exp(pattern, out=pattern)
        total = pattern.sum(axis=-1, keepdims=True)
        np.divide(pattern, total, out=pattern, where=total > 0)
        if self._wants(l, P_PATTERN):
            before = pattern.copy() if self.hooks.edits(l, P_PATTERN) else None
            self._fire(l, P_PATTERN, pattern)
            edited = edited or (before is not None and not np.array_equal(before, pattern))
        if not edited:
            return 0
        z = self.att[:nseg * seg_rows].reshape(nseg, seg_rows, nh, hd)
        for s in range(nseg):
            end = firsts[s] + seg_rows
            z[s] = np.matmul(pattern[s, :, :, :end], values[s]).transpose(1, 0, 2)
        return 0

    cdef float *_head_input(self, int64_t first, int64_t count, int64_t hook_batch) except NULL:
        """The head's input rows for chunk rows [first, first + count): the final norm (if any) of x
        into h, then the projection out (if any) into hp.  hook_batch > 0: fire the final norm's
        hook with the rows as (hook_batch, count / hook_batch, hidden)."""
        cdef float *x = <float *> cnp.PyArray_DATA(self.x)
        cdef float *h = <float *> cnp.PyArray_DATA(self.h)
        cdef float *hp = <float *> cnp.PyArray_DATA(self.hp)
        cdef const float *w = float_ptr(self.final_norm_w)
        cdef const float *b = float_ptr(self.final_norm_b)
        cdef int8_t *aq = <int8_t *> cnp.PyArray_DATA(self.aq)
        cdef float *ad = <float *> cnp.PyArray_DATA(self.ad)
        cdef int32_t *asum = <int32_t *> cnp.PyArray_DATA(self.asum)
        cdef int64_t t, H = self.hidden
        with nogil:
            for t in range(first, first + count):
                if w != NULL:
                    norm_row(&self.rs, x + t * H, h + (t - first) * H, w, b)
                else:
                    memcpy(h + (t - first) * H, x + t * H, H * sizeof(float))
        if hook_batch > 0 and self._wants(self.n_layer, G_LN_FINAL):
            self._fire(self.n_layer, G_LN_FINAL, self.h[:count].reshape(hook_batch, count // hook_batch, H))
        if self.project_out is None:
            return h
        with nogil:
            self.project_out.apply(h, H, count, hp, self.project_out.n, aq, ad, asum)
        return hp

    cdef void _head(self, int64_t first, int64_t count, cnp.ndarray out, int64_t hook_batch) except *:
        """Logits of chunk rows [first, first + count) into out (count, vocab); hook_batch as for
        _head_input (0: no hooks)."""
        cdef float *inp = self._head_input(first, count, hook_batch)
        cdef int8_t *aq = <int8_t *> cnp.PyArray_DATA(self.aq)
        cdef float *ad = <float *> cnp.PyArray_DATA(self.ad)
        cdef int32_t *asum = <int32_t *> cnp.PyArray_DATA(self.asum)
        cdef float *y = <float *> cnp.PyArray_DATA(out)
        cdef int64_t n = self.lm_head.n
        if self.tp is not None:
            # this rank's rows of the vocabulary, then every rank's gathered into out
            if self.local_logits is None or self.local_logits.shape[0] < count:
                self.local_logits = np.empty((count, n), np.float32)
            y = <float *> cnp.PyArray_DATA(self.local_logits)
        with nogil:
            self.lm_head.apply(inp, self.lm_head.k, count, y, n, aq, ad, asum)
        if self.tp is not None:
            self.tp.gather_columns(self.local_logits[:count], out, self.vocab_splits)
        if hook_batch > 0 and self._wants(self.n_layer, G_UNEMBED):
            self._fire(self.n_layer, G_UNEMBED, out.reshape(hook_batch, count // hook_batch, self.vocab))
