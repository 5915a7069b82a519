"""BlockSpec: everything the engine needs to know about one decoder block, in one typed value.

A family fills a ModelConfig; ModelConfig.block_spec() turns it into a BlockSpec, validated here
once, and the engine takes it whole (it never reads a config, and a family never touches Cython).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from llmrt.errors import ConfigError, ModelFileError

NORMS = ("rms", "layer")
NORM_PLACEMENTS = ("pre", "post")
MLPS = ("gated_silu", "silu", "gelu", "gelu_tanh", "relu")
RESIDUALS = ("sequential", "parallel", "parallel_shared_norm", "deepnorm")
POSITIONS = ("rotary", "alibi", "learned", "none", "rotary_2d")


@dataclass(frozen=True, eq=False)
class BlockSpec:
    """One decoder block (and the few model-level switches around the stack).

    norm: "rms" | "layer" (LayerNorm; its bias is whatever the checkpoint holds), with norm_eps.
    norm_placement: "pre" (x += f(norm(x))) | "post" (x = norm(x + f(x)); sequential residual only).
    mlp: "gated_silu" (rows [gate; up]) | "silu" | "gelu" (exact) | "gelu_tanh" | "relu".
    residual: "sequential" (x += attn(norm1 x); x += mlp(norm2 x)) | "parallel" (x += attn(norm1 x) +
        mlp(norm2 x)) | "parallel_shared_norm" (one norm feeds both) | "deepnorm" (GLM's: x = a * norm1(x) +
        attn(norm1 x); x = a * norm2(x) + mlp(norm2 x), a = residual_alpha).
    positions: "rotary" (rotary_dim features per head, NeoX halves or GPT-J pairs if
        rotary_interleaved, at inv_freq with any scaling folded in) | "alibi" (score += slope[h] *
        (key slot - query slot), alibi_slopes per head) | "learned" (a position table added to the
        embedding, row position + position_offset) | "none" | "rotary_2d" (GLM: NeoX halves over the
        whole head; the first half of inv_freq turns at the token's position, the second at its block
        position, both read from the prefix: see prefix_tokens).
    prefix_tokens: (context end, mask, gmask) ids of a prefix-LM (ChatGLM-6B): a sequence's context runs
        up to its first context-end token, attended both ways; token t < C is at (t, 0), a later one at
        (the [gMASK] (else [MASK]) index, t - C + 1).  Empty: causal everywhere.
    sliding_window: keys visible to a query (0: all); layer_windows, if given, one per layer.
    attn_scale: None means head_dim ** -0.5.  qkv_clip: clamp QKV outputs to +-qkv_clip (0: off).
    final_norm: whether a norm follows the last block.
    logn_from: S > 0 scales queries at positions p >= S by ln(p + 1) / ln(S) (Qwen's logn attention).
    ntk_from: S > 0 rotates a sequence whose first forward is longer than S tokens (L) at the base
        raised by alpha ** (d / (d - 2)), alpha = max(2 ** ceil(log2(L / S) + 1) - 1, 1) (Qwen's dynamic
        NTK), for all of that sequence; d is rotary_dim.
    """

    n_heads: int
    n_kv_heads: int
    head_dim: int
    norm: str = "rms"
    norm_eps: float = 1e-5
    norm_placement: str = "pre"
    mlp: str = "gated_silu"
    residual: str = "sequential"
    positions: str = "rotary"
    rotary_dim: int = 0
    rotary_interleaved: bool = False
    inv_freq: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    alibi_slopes: np.ndarray | None = None
    position_offset: int = 0
    sliding_window: int = 0
    layer_windows: tuple[int, ...] = ()
    attn_scale: float | None = None
    qkv_clip: float = 0.0
    final_norm: bool = True
    logn_from: int = 0
    ntk_from: int = 0
    residual_alpha: float = 1.0
    prefix_tokens: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        def bad(what: str) -> None:
            raise ConfigError(f"block spec: {what}")
        for name, value, allowed in (("norm", self.norm, NORMS), ("norm_placement", self.norm_placement, NORM_PLACEMENTS),
                                     ("mlp", self.mlp, MLPS), ("residual", self.residual, RESIDUALS),
                                     ("positions", self.positions, POSITIONS)):
            if value not in allowed:
                bad(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        if self.norm_placement == "post" and self.residual != "sequential":
            bad("post-norm blocks need the sequential residual")
        if not (isinstance(self.norm_eps, (int, float)) and math.isfinite(self.norm_eps) and self.norm_eps > 0):
            bad(f"norm_eps must be a finite number > 0, got {self.norm_eps!r}")
        if self.n_heads <= 0 or self.head_dim <= 0:
            bad(f"n_heads ({self.n_heads}) and head_dim ({self.head_dim}) must be positive")
        if self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads:
            bad(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.rotary_dim < 0 or self.rotary_dim > self.head_dim or self.rotary_dim % 2:
            bad(f"rotary_dim {self.rotary_dim} must be even and at most head_dim {self.head_dim}")
        if (self.positions in ("rotary", "rotary_2d")) != (self.rotary_dim > 0):
            bad(f"rotary_dim is {self.rotary_dim} with positions {self.positions!r}: "
                "rotary positions need rotary_dim > 0, the others rotary_dim 0")
        inv = np.ascontiguousarray(self.inv_freq, dtype=np.float32).reshape(-1)
        if inv.shape[0] != self.rotary_dim // 2:
            bad(f"inv_freq must have rotary_dim / 2 = {self.rotary_dim // 2} values, got {inv.shape[0]}")
        object.__setattr__(self, "inv_freq", inv)
        if (self.positions == "alibi") != (self.alibi_slopes is not None):
            bad("alibi_slopes are given exactly when positions is 'alibi'")
        if self.alibi_slopes is not None:
            slopes = np.ascontiguousarray(self.alibi_slopes, dtype=np.float32).reshape(-1)
            if slopes.shape[0] != self.n_heads:
                bad(f"alibi_slopes must have one value per head ({self.n_heads}), got {slopes.shape[0]}")
            object.__setattr__(self, "alibi_slopes", slopes)
        if self.position_offset < 0 or (self.position_offset and self.positions != "learned"):
            bad(f"position_offset {self.position_offset} needs learned positions and must be >= 0")
        if self.sliding_window < 0 or any(w < 0 for w in self.layer_windows):
            bad(f"sliding windows must be >= 0, got {self.sliding_window} / {self.layer_windows}")
        object.__setattr__(self, "layer_windows", tuple(int(w) for w in self.layer_windows))
        if self.attn_scale is not None and not self.attn_scale > 0:
            bad(f"attn_scale must be positive, got {self.attn_scale}")
        for name in ("logn_from", "ntk_from"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                bad(f"{name} must be an int >= 0 (0: off), got {getattr(self, name)!r}")
        if self.ntk_from and self.rotary_dim <= 2:
            bad(f"dynamic NTK (ntk_from) needs rotary_dim > 2, got {self.rotary_dim}")
        if self.logn_from == 1:
            bad("logn_from must be 0 (off) or at least 2: the query scale divides by ln(logn_from)")
        if not self.qkv_clip >= 0:
            bad(f"qkv_clip must be >= 0 (0: off), got {self.qkv_clip}")
        if not (isinstance(self.residual_alpha, (int, float)) and math.isfinite(self.residual_alpha)
                and self.residual_alpha > 0):
            bad(f"residual_alpha must be a finite number > 0, got {self.residual_alpha!r}")
        if self.residual == "deepnorm" and self.norm_placement != "pre":
            bad("the deepnorm residual scales a pre-norm block's normalized input")
        object.__setattr__(self, "prefix_tokens", tuple(int(t) for t in self.prefix_tokens))
        if self.prefix_tokens and len(self.prefix_tokens) != 3:
            bad(f"prefix_tokens are (context end, mask, gmask) ids, got {self.prefix_tokens}")
        if (self.positions == "rotary_2d") != bool(self.prefix_tokens):
            bad("2D rotary positions come from a prefix-LM's context: positions 'rotary_2d' needs prefix_tokens "
                "and prefix_tokens need it")
        if self.positions == "rotary_2d" and (self.rotary_dim != self.head_dim or self.rotary_dim % 4):
            bad(f"2D rotary turns the whole head in two halves: rotary_dim ({self.rotary_dim}) must equal head_dim "
                f"({self.head_dim}) and be a multiple of 4")

    @property
    def scale(self) -> float:
        """The softmax scale applied to q.k."""
        return self.attn_scale if self.attn_scale is not None else self.head_dim ** -0.5

    @property
    def gated(self) -> bool:
        return self.mlp == "gated_silu"

    def window_of(self, layer: int) -> int:
        """The sliding window of one layer (0: none)."""
        return self.layer_windows[layer] if self.layer_windows else self.sliding_window

    def check_layers(self, hidden: int, layers: list) -> None:
        """Raise ConfigError naming the first layer whose weights do not fit this spec (the config
        and the checkpoint disagree)."""
        if self.layer_windows and len(self.layer_windows) != len(layers):
            raise ConfigError(f"layer_windows has {len(self.layer_windows)} values for {len(layers)} layers")
        qkv_n = (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
        for i, lay in enumerate(layers):
            ff = lay.mlp_out.k
            want_in = 2 * ff if self.gated else ff
            for lin, n, k, name in ((lay.qkv, qkv_n, hidden, "qkv"),
                                    (lay.attn_out, hidden, self.n_heads * self.head_dim, "attn_out"),
                                    (lay.mlp_in, want_in, hidden, "mlp_in"), (lay.mlp_out, hidden, ff, "mlp_out")):
                if lin.n != n or lin.k != k:
                    raise ConfigError(f"layer {i} {name} is {lin.n}x{lin.k}, expected {n}x{k} from the config")
            norms = [("attn_norm", lay.attn_norm_w)]
            if self.residual != "parallel_shared_norm":
                norms.append(("mlp_norm", lay.mlp_norm_w))
            for name, w in norms:
                if w is None:
                    raise ModelFileError(f"the checkpoint has no layers.{i}.{name}.weight; it may be truncated or "
                                         f"of another architecture")
            for name, v in (("attn_norm.weight", lay.attn_norm_w), ("attn_norm.bias", lay.attn_norm_b),
                            ("mlp_norm.weight", lay.mlp_norm_w), ("mlp_norm.bias", lay.mlp_norm_b)):
                if v is not None and v.shape[0] != hidden:
                    raise ConfigError(f"layers.{i}.{name} has {v.shape[0]} values, expected {hidden}")


def alibi_slopes(n_heads: int, bias_max: float = 8.0, *, interleave_extra: bool = False) -> np.ndarray:
    """ALiBi's per-head slopes: 2 ** (-bias_max * (i + 1) / n) over n = the power of two at or above
    n_heads when interleave_extra (MPT: the odd-indexed then even-indexed slopes of that larger set),
    else the power of two at or below it plus every other slope of the next one (BLOOM, Falcon-RW;
    the ALiBi paper's rule).  With bias_max 8 and a power-of-two n_heads both are 2 ** (-8 (i+1) / n)."""
    if n_heads <= 0:
        raise ValueError("n_heads must be positive")
    if interleave_extra:
        n = 1 << math.ceil(math.log2(n_heads))
        s = 2.0 ** (-(np.arange(1, n + 1, dtype=np.float64) * (bias_max / n)))
        if n != n_heads:
            s = np.concatenate([s[1::2], s[::2]])[:n_heads]
        return s.astype(np.float32)
    n = 1 << int(math.floor(math.log2(n_heads)))
    base = 2.0 ** (-bias_max / n)
    s = base ** np.arange(1, n + 1, dtype=np.float64)
    if n != n_heads:
        extra_base = 2.0 ** (-bias_max / (2 * n))
        s = np.concatenate([s, extra_base ** np.arange(1, 1 + 2 * (n_heads - n), 2, dtype=np.float64)])
    return s.astype(np.float32)
