"""Model hyper-parameters (ModelConfig) and weight-only quantization options (WeightOnlyQuantConfig)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmrt.blockspec import BlockSpec, alibi_slopes
from llmrt.errors import UnsupportedError


@dataclass
class ModelConfig:
    """What the decoder loop needs to know about an architecture, filled by a family module."""

    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    norm: str = "rms"                    # rms | layer
    norm_eps: float = 1e-5
    norm_placement: str = "pre"          # pre | post (OPT-350m)
    mlp: str = "gated_silu"              # gated_silu | gelu | gelu_tanh | relu | silu
    residual: str = "sequential"         # sequential | parallel | parallel_shared_norm
    positions: str | None = None         # rotary | alibi | learned | none (None: rotary iff rotary_dim)
    rotary_dim: int = 0                  # features rotated per head (0: no rotary)
    rotary_interleaved: bool = False     # GPT-J pairs (2i, 2i+1) instead of NeoX halves
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    alibi: str = "bloom"                 # ALiBi slopes: bloom | mpt (MPT's interleave) | falcon (bloom's, scaled)
    alibi_bias_max: float = 8.0
    position_offset: int = 0             # learned positions: table row of position p is p + offset
    sliding_window: int = 0
    layer_windows: list[int] | None = None   # one sliding window per layer (Qwen2's max_window_layers)
    attn_scale: float | None = None      # None: head_dim ** -0.5
    qkv_clip: float = 0.0                # clamp QKV outputs (MPT clip_qkv); 0: off
    final_norm: bool = True
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    extra: dict = field(default_factory=dict)

    def inv_freq(self) -> np.ndarray:
        """Rotary inverse frequencies, with linear or llama3 scaling folded in."""
        if self.rotary_dim == 0:
            return np.zeros(0, np.float32)
        idx = np.arange(0, self.rotary_dim, 2, dtype=np.int64).astype(np.float32)
        inv = (1.0 / (self.rope_theta ** (idx / self.rotary_dim))).astype(np.float32)
        scaling = self.rope_scaling or {}
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind in (None, "default"):
            return inv
        if kind == "linear":
            return (inv / float(scaling["factor"])).astype(np.float32)
        if kind == "llama3":
            return _llama3_inv_freq(inv, scaling)
        raise UnsupportedError(f"rope_scaling type {kind!r} is not supported yet (supported: linear, llama3)")

    def block_spec(self) -> BlockSpec:
        """The decoder block these hyper-parameters describe, as the engine takes it."""
        positions = self.positions or ("rotary" if self.rotary_dim else "none")
        slopes = None
        if positions == "alibi":
            if self.alibi not in ("bloom", "mpt", "falcon"):
                raise ValueError(f"unknown alibi slopes {self.alibi!r}; choose bloom, mpt or falcon")
            slopes = alibi_slopes(self.num_heads, self.alibi_bias_max, interleave_extra=self.alibi == "mpt")
            if self.alibi == "falcon":
                slopes = slopes * self.head_dim ** -0.5     # Falcon-RW scales q.k + bias together
        return BlockSpec(n_heads=self.num_heads, n_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
                         norm=self.norm, norm_eps=self.norm_eps, norm_placement=self.norm_placement, mlp=self.mlp,
                         residual=self.residual, positions=positions, rotary_dim=self.rotary_dim,
                         rotary_interleaved=self.rotary_interleaved, inv_freq=self.inv_freq(), alibi_slopes=slopes,
                         position_offset=self.position_offset, sliding_window=self.sliding_window,
                         layer_windows=tuple(self.layer_windows or ()), attn_scale=self.attn_scale,
                         qkv_clip=self.qkv_clip, final_norm=self.final_norm)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _llama3_inv_freq(inv: np.ndarray, s: dict) -> np.ndarray:
    factor = float(s["factor"])
    low = float(s.get("low_freq_factor", 1.0))
    high = float(s.get("high_freq_factor", 4.0))
    old_ctx = float(s.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    wavelen = 2 * np.pi / inv
    out = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, out).astype(np.float32)


_WEIGHT_DTYPES = {"int4": "int4", "int4_clip": "int4", "int4_fullrange": "int4", "int8": "int8",
                  "fp32": "fp32", "float32": "fp32"}
_COMPUTE_DTYPES = {"int8", "fp32", "bf16"}
_SCALE_DTYPES = {"fp32", "bf16", "fp16"}
_ALGS = {"sym", "asym"}


@dataclass
class WeightOnlyQuantConfig:
    """Weight-only quantization, shaped like Intel's LLM Runtime option of the same name.

    weight_dtype: int4 | int8 (int4_clip / int4_fullrange accepted as int4) | fp32 (no quantization)
    alg: sym | asym;  group_size: 32 | 64 | 128 | -1 (per output channel)
    scale_dtype: fp32 | bf16 | fp16;  compute_dtype: int8 | fp32 | bf16
    not_quant: keep every weight in fp32 (exact reference arithmetic)
    use_cache: save the quantized model next to the HF cache and reuse it on the next load
    head_weight_dtype: format of the output head; by default int8 for int4 models (like llama.cpp's
        higher-precision output tensor), the weight format otherwise
    head_compute_dtype: compute dtype of the output head; by default the compute dtype (under int8
        compute the head gets two-pass activations unless activation_precision is "int8")
    activation_precision: under int8 compute, how activations are rounded to int8 per 32 values:
        "int8"  one pass everywhere (fastest prefill);
        "auto"  one pass, but the MLP down projection (whose input carries the outliers) gets two
                passes, value + rounding residual (~15-bit), in one weight pass: halves the KL
                divergence to fp32 on SmolLM2 for ~20% more integer work in prefill;
        "high"  two passes on every layer: matches fp32 answers on small models; 2x the integer
                work in prefill, the same weight traffic in decode
    """

    weight_dtype: str = "int4"
    alg: str = "sym"
    group_size: int = 32
    scale_dtype: str = "fp32"
    compute_dtype: str = "int8"
    not_quant: bool = False
    use_cache: bool = False
    head_weight_dtype: str | None = None
    head_compute_dtype: str | None = None
    activation_precision: str = "auto"

    def __post_init__(self) -> None:
        wd = _WEIGHT_DTYPES.get(str(self.weight_dtype).lower())
        if wd is None:
            raise ValueError(f"unknown weight_dtype {self.weight_dtype!r}; choose int4, int8 or fp32")
        self.weight_dtype = wd
        if wd == "fp32":
            self.not_quant = True
        if self.alg not in _ALGS:
            raise ValueError(f"unknown alg {self.alg!r}; choose 'sym' or 'asym'")
        if self.compute_dtype not in _COMPUTE_DTYPES:
            raise ValueError(f"unknown compute_dtype {self.compute_dtype!r}; choose int8, fp32 or bf16")
        if self.scale_dtype not in _SCALE_DTYPES:
            raise ValueError(f"unknown scale_dtype {self.scale_dtype!r}; choose fp32, bf16 or fp16")
        g = int(self.group_size)
        if g != -1 and (g <= 0 or g % 32):
            raise ValueError(f"group_size must be -1 (per channel) or a positive multiple of 32, got {self.group_size}")
        self.group_size = g
        if self.activation_precision not in ("int8", "auto", "high"):
            raise ValueError(f"unknown activation_precision {self.activation_precision!r}; choose int8, auto or high")
        if self.head_compute_dtype is not None and self.head_compute_dtype not in _COMPUTE_DTYPES:
            raise ValueError(f"unknown head_compute_dtype {self.head_compute_dtype!r}; choose int8, fp32 or bf16")
        if self.head_weight_dtype is not None and _WEIGHT_DTYPES.get(self.head_weight_dtype) not in ("int4", "int8", "fp32"):
            raise ValueError(f"unknown head_weight_dtype {self.head_weight_dtype!r}")

    @property
    def head_dtype(self) -> str:
        if self.head_weight_dtype:
            return _WEIGHT_DTYPES[self.head_weight_dtype]
        return "int8" if self.weight_dtype == "int4" else self.weight_dtype

    @property
    def head_compute(self) -> str:
        """8-bit activations at the output head cost measurable accuracy, so under int8 compute the
        head runs two passes (value + residual, ~15-bit) in one weight pass: as accurate as fp32
        activations there at the speed of the int8 kernels (the engine arranges the two passes)."""
        return self.head_compute_dtype or self.compute_dtype

    def runtime_options(self) -> dict[str, Any]:
        """The options that change how stored weights run, not what is stored."""
        return {"compute_dtype": self.compute_dtype, "activation_precision": self.activation_precision,
                "head_compute_dtype": self.head_compute_dtype}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "WeightOnlyQuantConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def weights_key(self) -> str:
        """Identity of the stored weights (compute dtype and caching do not change the file)."""
        d = self.to_dict()
        d.pop("use_cache")
        d.pop("compute_dtype")
        d.pop("head_compute_dtype")
        d.pop("activation_precision")
        d["head"] = self.head_dtype
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


QuantConfig = WeightOnlyQuantConfig
