"""BlockSpec: everything the engine needs to know about one decoder block, in one typed value.

A family fills a ModelConfig; ModelConfig.block_spec() turns it into a BlockSpec, validated here
once, and the engine takes it whole (it never reads a config, and a family never touches Cython).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NORMS = ("rms", "layer")
MLPS = ("gated_silu", "silu", "gelu", "gelu_tanh", "relu")
RESIDUALS = ("sequential", "parallel", "parallel_shared_norm")


@dataclass(frozen=True, eq=False)
class BlockSpec:
    """One decoder block.

    norm: "rms" | "layer" (LayerNorm; its bias is whatever the checkpoint holds), with norm_eps.
    mlp: "gated_silu" (rows [gate; up]) | "silu" | "gelu" (exact) | "gelu_tanh" | "relu".
    residual: "sequential" (x += attn(norm1 x); x += mlp(norm2 x)) | "parallel" (x += attn(norm1 x) +
        mlp(norm2 x)) | "parallel_shared_norm" (one norm feeds both).
    rotary_dim: features rotated per head (0: none), in NeoX halves or GPT-J pairs
        (rotary_interleaved), at the inverse frequencies inv_freq (scaling already folded in).
    sliding_window: keys visible to a query (0: all).  attn_scale: None means head_dim ** -0.5.
    """

    n_heads: int
    n_kv_heads: int
    head_dim: int
    norm: str = "rms"
    norm_eps: float = 1e-5
    mlp: str = "gated_silu"
    residual: str = "sequential"
    rotary_dim: int = 0
    rotary_interleaved: bool = False
    inv_freq: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    sliding_window: int = 0
    attn_scale: float | None = None

    def __post_init__(self) -> None:
        def bad(what: str) -> None:
            raise ValueError(f"block spec: {what}")
        if self.norm not in NORMS:
            bad(f"unknown norm {self.norm!r}; choose one of {', '.join(NORMS)}")
        if self.mlp not in MLPS:
            bad(f"unknown mlp {self.mlp!r}; choose one of {', '.join(MLPS)}")
        if self.residual not in RESIDUALS:
            bad(f"unknown residual {self.residual!r}; choose one of {', '.join(RESIDUALS)}")
        if self.n_heads <= 0 or self.head_dim <= 0:
            bad(f"n_heads ({self.n_heads}) and head_dim ({self.head_dim}) must be positive")
        if self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads:
            bad(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.rotary_dim < 0 or self.rotary_dim > self.head_dim or self.rotary_dim % 2:
            bad(f"rotary_dim {self.rotary_dim} must be even and at most head_dim {self.head_dim}")
        inv = np.ascontiguousarray(self.inv_freq, dtype=np.float32).reshape(-1)
        if inv.shape[0] != self.rotary_dim // 2:
            bad(f"inv_freq must have rotary_dim / 2 = {self.rotary_dim // 2} values, got {inv.shape[0]}")
        object.__setattr__(self, "inv_freq", inv)
        if self.sliding_window < 0:
            bad(f"sliding_window must be >= 0, got {self.sliding_window}")
        if self.attn_scale is not None and not self.attn_scale > 0:
            bad(f"attn_scale must be positive, got {self.attn_scale}")

    @property
    def scale(self) -> float:
        """The softmax scale applied to q.k."""
        return self.attn_scale if self.attn_scale is not None else self.head_dim ** -0.5

    @property
    def gated(self) -> bool:
        return self.mlp == "gated_silu"
