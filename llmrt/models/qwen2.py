"""Qwen1.5 / Qwen2 / Qwen2.5: the llama block with QKV biases, and a sliding window on the layers
from max_window_layers on (or as layer_types says) when use_sliding_window is set."""
from __future__ import annotations

import dataclasses
from typing import Mapping

from llmrt.config import ModelConfig
from llmrt.errors import ConfigError, UnsupportedError
from llmrt.models.base import field_bool, field_count, field_int, field_list, register, rename_tensors
from llmrt.models.llama import GGUF_GLOBAL_NAMES, GGUF_LAYER_NAMES, Llama

_LAYER_TYPES = ("sliding_attention", "full_attention")


def layer_windows(hf: Mapping) -> list[int] | None:
    """One window per layer from layer_types (transformers 5 writes it) or, in older configs, from
    use_sliding_window / sliding_window / max_window_layers."""
    n = field_count(hf, "num_hidden_layers")
    types = field_list(hf, "layer_types")
    window = field_int(hf, "sliding_window", default=0, min_value=0)
    use_window = field_bool(hf, "use_sliding_window", default=False)
    first = field_int(hf, "max_window_layers", default=n, min_value=0)
    if types is None:
        if not use_window or not window:
            return None
        types = ["sliding_attention" if i >= first else "full_attention" for i in range(n)]
    if len(types) != n:
        raise ConfigError(f"layer_types has {len(types)} entries for num_hidden_layers {n}")
    unknown = [t for t in types if t not in _LAYER_TYPES]
    if unknown:
        raise UnsupportedError(f"layer_types {unknown[:3]!r} are not supported in a qwen2 config "
                               f"(llmrt runs {', '.join(_LAYER_TYPES)})")
    if "sliding_attention" in types and not window:
        # transformers 5 stores sliding_window as null when use_sliding_window is off
        raise ConfigError("layer_types names sliding_attention layers but sliding_window is not set")
    return [window if t == "sliding_attention" else 0 for t in types] if "sliding_attention" in types else None


@register
class Qwen2(Llama):
    name = "qwen2"
    hf_model_types = ("qwen2",)
    gguf_architectures = ("qwen2",)

    @classmethod
    def hf_to_config(cls, hf: Mapping) -> ModelConfig:
        # the llama block; Qwen2's QKV always has biases (its attention output and MLP never)
        cfg = super().hf_to_config({**hf, "model_type": "qwen2", "attention_bias": False, "mlp_bias": False})
        return dataclasses.replace(cfg, layer_windows=layer_windows(hf), extra={**cfg.extra, "biases": ["qkv"]})

    @classmethod
    def map_gguf_tensors(cls, cfg: ModelConfig, tensors):
        # llama.cpp runs qwen2 with NeoX rotary: its converter leaves Q and K rows as they are
        yield from rename_tensors("qwen2 GGUF", cfg, tensors, GGUF_LAYER_NAMES, GGUF_GLOBAL_NAMES)
