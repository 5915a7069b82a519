"""Qwen1.5 / Qwen2 / Qwen2.5: the llama block with QKV biases, and a sliding window on the layers
from max_window_layers on (or as layer_types says) when use_sliding_window is set."""
from __future__ import annotations

import dataclasses

from llmrt.config import ModelConfig
from llmrt.models.base import register, rename_tensors
from llmrt.models.llama import GGUF_GLOBAL_NAMES, GGUF_LAYER_NAMES, Llama


def layer_windows(hf: dict) -> list[int] | None:
    """One window per layer from layer_types (transformers 5 writes it) or, in older configs, from
    use_sliding_window / sliding_window / max_window_layers."""
    n = hf["num_hidden_layers"]
    types = hf.get("layer_types")
    window = int(hf.get("sliding_window") or 0)
    if types is None:
        if not hf.get("use_sliding_window") or not window:
            return None
        first = int(hf.get("max_window_layers", n))
        types = ["sliding_attention" if i >= first else "full_attention" for i in range(n)]
    if len(types) != n:
        raise ValueError(f"layer_types has {len(types)} entries for {n} layers")
    unknown = set(types) - {"sliding_attention", "full_attention"}
    if unknown:
        raise ValueError(f"unsupported layer_types {sorted(unknown)} in a qwen2 config")
    if "sliding_attention" in types and not window:
        # transformers 5 stores sliding_window as null when use_sliding_window is off
        raise ValueError("layer_types names sliding_attention layers but sliding_window is not set")
    return [window if t == "sliding_attention" else 0 for t in types] if "sliding_attention" in types else None


@register
class Qwen2(Llama):
    name = "qwen2"
    hf_model_types = ("qwen2",)
    gguf_architectures = ("qwen2",)

    @classmethod
    def config_from_hf(cls, hf: dict) -> ModelConfig:
        cfg = super().config_from_hf({**hf, "model_type": "qwen2", "use_sliding_window": False})
        return dataclasses.replace(cfg, family=cls.name, layer_windows=layer_windows(hf),
                                   tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)))

    @classmethod
    def map_gguf_tensors(cls, cfg: ModelConfig, tensors):
        # llama.cpp runs qwen2 with NeoX rotary: its converter leaves Q and K rows as they are
        yield from rename_tensors("qwen2 GGUF", cfg, tensors, GGUF_LAYER_NAMES, GGUF_GLOBAL_NAMES)
