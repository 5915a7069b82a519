"""Model hyper-parameters (ModelConfig) and weight-only quantization options (WeightOnlyQuantConfig)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any

import numpy as np

import llmrt.validation as v
from llmrt.blockspec import MLPS, NORM_PLACEMENTS, NORMS, POSITIONS, RESIDUALS, BlockSpec, alibi_slopes
from llmrt.errors import ConfigError, InvalidArgumentError

ALIBI_KINDS = ("bloom", "mpt", "falcon")


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
    # Qwen (v1) past its training length S: queries at positions >= S scaled by ln(p + 1) / ln(S)
    # (logn_attn_from = S), and a prefill longer than S raising the rotary base (dynamic_ntk_from = S)
    logn_attn_from: int = 0
    dynamic_ntk_from: int = 0
    final_norm: bool = True
    # GLM (ChatGLM-6B): residual "deepnorm" scales the normalized input by residual_alpha; positions
    # "rotary_2d" with a prefix-LM given by prefix_lm_tokens [context end, mask, gmask]
    residual_alpha: float = 1.0
    prefix_lm_tokens: list[int] | None = None
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
        if self.positions == "rotary_2d":
            # two rotaries of half a head each (token and block positions), the same frequencies
            quarter = np.arange(0, self.rotary_dim // 2, 2, dtype=np.float64) / (self.rotary_dim // 2)
            inv = 1.0 / (self.rope_theta ** quarter)
            return np.concatenate([inv, inv]).astype(np.float32)
        scaling = v.rope_scaling(self.rope_scaling)
        # extreme bases or factors overflow to inf / 0 here: validate() refuses non-finite results
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            idx = np.arange(0, self.rotary_dim, 2, dtype=np.int64).astype(np.float32)
            inv = (1.0 / (self.rope_theta ** (idx / self.rotary_dim))).astype(np.float32)
            if scaling is None:
                return inv
            if scaling["rope_type"] == "linear":
                return (inv / scaling["factor"]).astype(np.float32)
            return _llama3_inv_freq(inv, scaling)

    def validate(self) -> "ModelConfig":
        """Check every field the engine uses, type and range, once before the engine is built (a bad
        epsilon or rotary base would otherwise give NaN logits, a bad size a crash deep in the
        load).  ConfigError / UnsupportedError name the field.  Returns self."""
        if not isinstance(self.family, str) or not self.family:
            raise ConfigError(f"family must be a model family name, got {v.describe(self.family)}")
        self._check_shape()
        self._check_block()
        self._check_tokens()
        v.as_dict(self.extra, "extra")
        spec = self.block_spec()
        if not np.isfinite(spec.inv_freq).all():
            raise ConfigError(f"rope_theta {self.rope_theta} with rope_scaling {self.rope_scaling} gives "
                              "non-finite rotary frequencies")
        return self

    def _check_shape(self) -> None:
        for name in ("num_layers", "num_heads", "num_kv_heads", "head_dim"):
            v.as_int(getattr(self, name), name, min_value=1, max_value=v.MAX_COUNT)
        for name in ("vocab_size", "hidden_size", "intermediate_size", "max_position_embeddings"):
            v.as_int(getattr(self, name), name, min_value=1)
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        rot = v.as_int(self.rotary_dim, "rotary_dim", min_value=0)
        if rot % 2 or rot > self.head_dim:
            raise ConfigError(f"rotary_dim ({rot}) must be even and at most head_dim ({self.head_dim})")
        v.as_int(self.sliding_window, "sliding_window", min_value=0)
        if self.layer_windows is not None:
            if not isinstance(self.layer_windows, (list, tuple)) or len(self.layer_windows) != self.num_layers:
                raise ConfigError(f"layer_windows must hold one window per layer ({self.num_layers}), "
                                  f"got {v.describe(self.layer_windows)}")
            for w in self.layer_windows:
                v.as_int(w, "layer_windows entry", min_value=0)

    def _check_block(self) -> None:
        for name, allowed in (("norm", NORMS), ("norm_placement", NORM_PLACEMENTS), ("mlp", MLPS),
                              ("residual", RESIDUALS), ("alibi", ALIBI_KINDS)):
            _check_choice(getattr(self, name), name, allowed)
        if self.positions is not None:
            _check_choice(self.positions, "positions", POSITIONS)
        for name in ("rotary_interleaved", "final_norm", "tie_word_embeddings"):
            v.as_bool(getattr(self, name), name)
        v.as_float(self.norm_eps, "norm_eps", positive=True)
        v.as_float(self.rope_theta, "rope_theta", positive=True)
        v.rope_scaling(self.rope_scaling)
        v.as_float(self.alibi_bias_max, "alibi_bias_max", positive=True)
        v.as_int(self.position_offset, "position_offset", min_value=0)
        if self.attn_scale is not None:
            v.as_float(self.attn_scale, "attn_scale", positive=True)
        v.as_float(self.qkv_clip, "qkv_clip", min_value=0.0)
        v.as_int(self.logn_attn_from, "logn_attn_from", min_value=0)
        v.as_int(self.dynamic_ntk_from, "dynamic_ntk_from", min_value=0)
        v.as_float(self.residual_alpha, "residual_alpha", positive=True)
        if self.prefix_lm_tokens is not None:
            if not isinstance(self.prefix_lm_tokens, (list, tuple)) or len(self.prefix_lm_tokens) != 3:
                raise ConfigError(f"prefix_lm_tokens must be [context end, mask, gmask] ids, got "
                                  f"{v.describe(self.prefix_lm_tokens)}")
            for t in self.prefix_lm_tokens:
                v.as_int(t, "prefix_lm_tokens entry", min_value=0, max_value=self.vocab_size - 1)

    def _check_tokens(self) -> None:
        self._drop_special_ids_outside_the_vocabulary()

    def _drop_special_ids_outside_the_vocabulary(self) -> None:
        """Special token ids must be integers; one past the vocabulary (some published configs have
        them, transformers only warns) can never be generated or fed, so it is dropped with a warning
        rather than refusing the model."""
        def keep(i: Any, name: str) -> bool:
            v.as_int(i, name, min_value=0)
            if i < self.vocab_size:
                return True
            warnings.warn(f"{name} {i} is outside the vocabulary of {self.vocab_size} tokens; ignored", stacklevel=3)
            return False

        for name in ("bos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and not keep(value, name):
                setattr(self, name, None)
        eos = self.eos_token_id
        if isinstance(eos, (list, tuple)):
            self.eos_token_id = [i for i in eos if keep(i, "eos_token_id")] or None
        elif eos is not None and not keep(eos, "eos_token_id"):
            self.eos_token_id = None

    def block_spec(self) -> BlockSpec:
        """The decoder block these hyper-parameters describe, as the engine takes it."""
        positions = self.positions or ("rotary" if self.rotary_dim else "none")
        slopes = None
        if positions == "alibi":
            _check_choice(self.alibi, "alibi", ALIBI_KINDS)
            slopes = alibi_slopes(self.num_heads, self.alibi_bias_max, interleave_extra=self.alibi == "mpt")
            if self.alibi == "falcon":
                slopes = slopes * self.head_dim ** -0.5     # Falcon-RW scales q.k + bias together
        return BlockSpec(n_heads=self.num_heads, n_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
                         norm=self.norm, norm_eps=self.norm_eps, norm_placement=self.norm_placement, mlp=self.mlp,
                         residual=self.residual, positions=positions, rotary_dim=self.rotary_dim,
                         rotary_interleaved=self.rotary_interleaved, inv_freq=self.inv_freq(), alibi_slopes=slopes,
                         position_offset=self.position_offset, sliding_window=self.sliding_window,
                         layer_windows=tuple(self.layer_windows or ()), attn_scale=self.attn_scale,
                         qkv_clip=self.qkv_clip, final_norm=self.final_norm, logn_from=self.logn_attn_from,
                         ntk_from=self.dynamic_ntk_from, residual_alpha=self.residual_alpha,
                         prefix_tokens=tuple(self.prefix_lm_tokens or ()))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """The config of a to_dict() (an .llmrt file's); unknown keys are dropped, missing required
        ones are a ConfigError.  Call validate() before use."""
        if not isinstance(d, dict):
            raise ConfigError(f"a model config must be an object, got {v.describe(d)}")
        fields = dataclasses.fields(cls)
        missing = [f.name for f in fields if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING and f.name not in d]
        if missing:
            raise ConfigError(f"the model config lacks {', '.join(missing)}")
        names = {f.name for f in fields}
        return cls(**{k: val for k, val in d.items() if k in names})


def _check_choice(value: Any, name: str, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(f"unknown {name} {v.describe(value)}; choose one of {', '.join(allowed)}")


def _llama3_inv_freq(inv: np.ndarray, s: dict) -> np.ndarray:
    """s: a normalized llama3 scaling (validation.rope_scaling)."""
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_ctx = float(s["original_max_position_embeddings"])
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
_ACTIVATION_PRECISIONS = {"int8", "auto", "high"}


def _bad_option(name: str, value: Any, allowed: str) -> None:
    raise InvalidArgumentError(f"WeightOnlyQuantConfig: {name} {v.describe(value)} is not valid; choose {allowed}")


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
        "auto"  one pass, but the MLP down projection (whose input carries the outliers) gets a
                second pass, the rounding residual, in its blocks whose step is over 3x the row's
                mean step (the blocks an outlier made coarse), in one weight pass: a third less
                KL divergence to fp32 on SmolLM2 for ~4% more integer work in prefill;
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
        wd = _WEIGHT_DTYPES.get(self.weight_dtype.lower()) if isinstance(self.weight_dtype, str) else None
        if wd is None:
            _bad_option("weight_dtype", self.weight_dtype, "int4, int8 or fp32")
        self.weight_dtype = wd
        for name in ("not_quant", "use_cache"):
            if not isinstance(getattr(self, name), bool):
                _bad_option(name, getattr(self, name), "True or False")
        if wd == "fp32":
            self.not_quant = True
        for name, allowed, optional in (("alg", _ALGS, False), ("compute_dtype", _COMPUTE_DTYPES, False),
                                        ("scale_dtype", _SCALE_DTYPES, False),
                                        ("activation_precision", _ACTIVATION_PRECISIONS, False),
                                        ("head_compute_dtype", _COMPUTE_DTYPES, True),
                                        ("head_weight_dtype", _WEIGHT_DTYPES, True)):
            value = getattr(self, name)
            if not (optional and value is None) and not (isinstance(value, str) and value in allowed):
                _bad_option(name, value, ", ".join(sorted(allowed)) + (" or None" if optional else ""))
        g = self.group_size
        if isinstance(g, bool) or not isinstance(g, Integral) or (g != -1 and (g <= 0 or g % 32)):
            _bad_option("group_size", g, "-1 (per channel) or a positive multiple of 32")
        self.group_size = int(g)

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
        """The config of a to_dict() (or a user's dict); an unknown key is refused, not dropped."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in d if k not in names)
        if unknown:
            raise InvalidArgumentError(f"WeightOnlyQuantConfig has no option {', '.join(unknown)}; "
                                       f"its options are {', '.join(sorted(names))}")
        return cls(**d)

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
