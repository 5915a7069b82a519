"""The transformers-shaped front door: AutoModelForCausalLM and WeightOnlyQuantConfig."""
from __future__ import annotations

import os
from typing import Any

from llmrt.config import WeightOnlyQuantConfig
from llmrt.model import Model


class AutoModelForCausalLM:
    """`AutoModelForCausalLM.from_pretrained(path, load_in_4bit=True)` returns an llmrt Model."""

    def __init__(self, *_: Any, **__: Any):
        raise TypeError("use AutoModelForCausalLM.from_pretrained(...)")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args: Any,
                        quantization_config: WeightOnlyQuantConfig | None = None, load_in_4bit: bool = False,
                        load_in_8bit: bool = False, gguf_file: str | None = None, trust_remote_code: bool = False,
                        use_cache: bool | None = None, memory_dtype: str | None = None, **kwargs: Any) -> Model:
        if model_args:
            raise TypeError("positional model arguments are not supported; pass keywords")
        # keywords transformers users pass that make no difference on this CPU runtime
        for ignored in ("torch_dtype", "dtype", "device_map", "low_cpu_mem_usage", "revision", "model_type"):
            kwargs.pop(ignored, None)
        compute_dtype = kwargs.pop("compute_dtype", None)
        cache_dir = kwargs.pop("cache_dir", None)
        engine = {k: kwargs.pop(k) for k in ("max_chunk", "progress", "verify", "tensor_parallel") if k in kwargs}
        if kwargs:
            raise TypeError(f"from_pretrained() got unsupported arguments: {', '.join(sorted(kwargs))}")
        return Model.from_pretrained(pretrained_model_name_or_path, quantization_config,
                                     load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit, gguf_file=gguf_file,
                                     compute_dtype=compute_dtype, use_cache=use_cache, cache_dir=cache_dir,
                                     memory_dtype=memory_dtype, trust_remote_code=trust_remote_code, **engine)


__all__ = ["AutoModelForCausalLM", "WeightOnlyQuantConfig"]
