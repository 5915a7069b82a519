"""The other direction of the families' GGUF maps: internal tensor names -> llama.cpp's GGUF names,
constant transforms (llama's rotary row permutation of Q/K) and the architecture's metadata keys.

The name tables are the inverse of the ones the families read GGUF files with, so what is written
here is what llmrt (and llama.cpp) reads back."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from llmrt.config import ModelConfig
from llmrt.errors import UnsupportedError
from llmrt.models import gpt_neox, llama

__all__ = ["GGUFLayout", "gguf_layout", "EXPORTABLE_FAMILIES"]

_INTERNAL_LAYER = re.compile(r"layers\.(\d+)\.(.+)")


def _invert(table: dict[str, str]) -> dict[str, str]:
    return {internal: gguf for gguf, internal in table.items()}


@dataclass(frozen=True)
class GGUFLayout:
    """How one family is written to GGUF."""

    arch: str                                   # general.architecture
    layer_names: dict[str, str]                 # internal per-layer suffix -> GGUF suffix
    global_names: dict[str, str]                # internal global name -> GGUF name
    metadata: Callable[[ModelConfig], list[tuple[str, Any, str]]]
    transform: Callable[[ModelConfig, str, np.ndarray], np.ndarray]
    tied_head_needs_output: bool                # llama.cpp's loader wants output.weight even when tied

    def name(self, internal: str) -> str:
        m = _INTERNAL_LAYER.fullmatch(internal)
        if m and m.group(2) in self.layer_names:
            return f"blk.{m.group(1)}.{self.layer_names[m.group(2)]}"
        if internal in self.global_names:
            return self.global_names[internal]
        raise ValueError(f"tensor {internal!r} has no GGUF name for architecture {self.arch!r}")


def _common(a: str, cfg: ModelConfig) -> list[tuple[str, Any, str]]:
    return [
        (f"{a}.vocab_size", cfg.vocab_size, "uint32"),
        (f"{a}.context_length", cfg.max_position_embeddings, "uint32"),
        (f"{a}.embedding_length", cfg.hidden_size, "uint32"),
        (f"{a}.block_count", cfg.num_layers, "uint32"),
        (f"{a}.feed_forward_length", cfg.intermediate_size, "uint32"),
        (f"{a}.rope.dimension_count", cfg.rotary_dim, "uint32"),
        (f"{a}.attention.head_count", cfg.num_heads, "uint32"),
        (f"{a}.rope.freq_base", float(cfg.rope_theta), "float32"),
    ]


def _rope_scaling(a: str, cfg: ModelConfig) -> list[tuple[str, Any, str]]:
    s = cfg.rope_scaling
    if not s:
        return []
    kind = s.get("rope_type", s.get("type"))
    if kind == "linear":
        return [(f"{a}.rope.scaling.type", "linear", "string"),
                (f"{a}.rope.scaling.factor", float(s["factor"]), "float32")]
    # llama.cpp stores llama3 scaling as a rope_freqs tensor, which llmrt cannot read back yet
    raise UnsupportedError(f"rope_scaling type {kind!r} cannot be written to GGUF yet (supported: linear)")


def _llama_metadata(cfg: ModelConfig) -> list[tuple[str, Any, str]]:
    a = "llama"
    out = _common(a, cfg) + [
        (f"{a}.attention.head_count_kv", cfg.num_kv_heads, "uint32"),
        (f"{a}.attention.layer_norm_rms_epsilon", float(cfg.norm_eps), "float32"),
    ]
    if cfg.head_dim != cfg.hidden_size // cfg.num_heads:
        out += [(f"{a}.attention.key_length", cfg.head_dim, "uint32"),
                (f"{a}.attention.value_length", cfg.head_dim, "uint32")]
    if cfg.sliding_window:
        out.append((f"{a}.attention.sliding_window", cfg.sliding_window, "uint32"))
    return out + _rope_scaling(a, cfg)


def _llama_transform(cfg: ModelConfig, internal: str, arr: np.ndarray) -> np.ndarray:
    from llmrt.formats import permute_rotary_rows

    # llama.cpp's rotary kernels pair rows (2i, 2i+1) of each head; HF pairs the two halves
    if internal.endswith((".q.weight", ".q.bias")):
        return permute_rotary_rows(arr, cfg.num_heads)
    if internal.endswith((".k.weight", ".k.bias")):
        return permute_rotary_rows(arr, cfg.num_kv_heads)
    return arr


_ACT_NAMES = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}


def _neox_metadata(cfg: ModelConfig) -> list[tuple[str, Any, str]]:
    a = "gptneox"
    out = _common(a, cfg) + [
        (f"{a}.use_parallel_residual", cfg.residual == "parallel", "bool"),
        (f"{a}.attention.layer_norm_epsilon", float(cfg.norm_eps), "float32"),
    ]
    if cfg.mlp != "gelu":
        out.append((gpt_neox.GGUF_ACT_KEY, _ACT_NAMES[cfg.mlp], "string"))
    return out + _rope_scaling(a, cfg)


def _identity(cfg: ModelConfig, internal: str, arr: np.ndarray) -> np.ndarray:
    return arr            # internal QKV rows are already [Q; K; V], llama.cpp's order


_LAYOUTS = {
    "llama": GGUFLayout("llama", _invert(llama.GGUF_LAYER_NAMES), _invert(llama.GGUF_GLOBAL_NAMES),
                        _llama_metadata, _llama_transform, tied_head_needs_output=False),
    "gpt_neox": GGUFLayout("gptneox", _invert(gpt_neox._GGUF_LAYER_NAMES), _invert(gpt_neox._GGUF_GLOBAL),
                           _neox_metadata, _identity, tied_head_needs_output=True),
}
EXPORTABLE_FAMILIES = tuple(_LAYOUTS)


def gguf_layout(cfg: ModelConfig) -> GGUFLayout:
    """The GGUF layout of a model's family (ValueError for a family without one)."""
    try:
        return _LAYOUTS[cfg.family]
    except KeyError:
        raise ValueError(f"model family {cfg.family!r} cannot be written to GGUF; supported: "
                         f"{', '.join(EXPORTABLE_FAMILIES)}") from None
