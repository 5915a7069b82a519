"""What a model family provides, and the registry that maps HF `model_type` / GGUF
`general.architecture` names to families.

Internal tensor names (what every family maps its checkpoint onto):
    embed                       (vocab, hidden)
    emb_norm.weight/.bias       optional LayerNorm right after the embedding
    layers.{i}.attn_norm.weight/.bias
    layers.{i}.q|k|v.weight/.bias   or   layers.{i}.qkv.weight/.bias  (rows [Q heads; K heads; V heads])
    layers.{i}.attn_out.weight/.bias
    layers.{i}.mlp_norm.weight/.bias
    layers.{i}.gate|up.weight   (gated MLP)  or  layers.{i}.mlp_in.weight/.bias
    layers.{i}.mlp_out.weight/.bias
    final_norm.weight/.bias
    lm_head.weight/.bias        absent when tied to the embedding
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from llmrt.config import ModelConfig

Tensors = Iterator[tuple[str, np.ndarray]]


class Family:
    """Base class of a model family; subclasses override the mapping hooks."""

    name: str = ""
    hf_model_types: tuple[str, ...] = ()
    gguf_architectures: tuple[str, ...] = ()

    @classmethod
    def config_from_hf(cls, hf: dict) -> ModelConfig:
        raise NotImplementedError

    @classmethod
    def map_hf_tensors(cls, cfg: ModelConfig, tensors: Tensors) -> Tensors:
        """Rename (and constant-transform) checkpoint tensors into internal names; stream them."""
        raise NotImplementedError

    @classmethod
    def config_from_gguf(cls, meta: dict) -> ModelConfig:
        raise NotImplementedError(f"{cls.name} models cannot be loaded from GGUF yet")

    @classmethod
    def map_gguf_tensors(cls, cfg: ModelConfig, tensors: Iterable[tuple[str, np.ndarray, object]]
                         ) -> Iterator[tuple[str, np.ndarray, object]]:
        """(gguf name, array, QuantFormat or None) -> (internal name, array, format)."""
        raise NotImplementedError(f"{cls.name} models cannot be loaded from GGUF yet")


_BY_HF: dict[str, type[Family]] = {}
_BY_GGUF: dict[str, type[Family]] = {}


def register(family: type[Family]) -> type[Family]:
    for t in family.hf_model_types:
        _BY_HF[t] = family
    for a in family.gguf_architectures:
        _BY_GGUF[a] = family
    return family


def family_for_hf(model_type: str) -> type[Family]:
    try:
        return _BY_HF[model_type]
    except KeyError:
        raise ValueError(f"unsupported model_type {model_type!r}; llmrt supports: "
                         f"{', '.join(sorted(_BY_HF))}") from None


def family_for_gguf(arch: str) -> type[Family]:
    try:
        return _BY_GGUF[arch]
    except KeyError:
        raise ValueError(f"unsupported GGUF architecture {arch!r}; llmrt reads: "
                         f"{', '.join(sorted(_BY_GGUF))}") from None


def family_by_name(name: str) -> type[Family]:
    for fam in set(_BY_HF.values()):
        if fam.name == name:
            return fam
    raise ValueError(f"unknown model family {name!r}")


def supported_model_types() -> list[str]:
    return sorted(_BY_HF)


def hf_get(hf: dict, *names, default=None):
    """First present key among names (configs rename keys across versions)."""
    for n in names:
        if n in hf and hf[n] is not None:
            return hf[n]
    return default


def rope_theta_of(hf: dict, default: float = 10000.0) -> float:
    """transformers 5 moved rope_theta into rope_parameters; read both."""
    params = hf.get("rope_parameters") or {}
    return float(hf_get(hf, "rope_theta", default=params.get("rope_theta", default)))


def rope_scaling_of(hf: dict) -> dict | None:
    s = hf.get("rope_scaling") or hf.get("rope_parameters")
    if not s:
        return None
    kind = s.get("rope_type", s.get("type", "default"))
    return None if kind in (None, "default") else dict(s)


def gguf_shared_fields(meta: dict) -> dict:
    """ModelConfig fields every family reads from GGUF metadata the same way: a head tied to the
    embedding when the file has no output tensor, and the special token ids."""
    return dict(tie_word_embeddings="output.weight" not in meta.get("__tensor_names__", ()),
                bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
                eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
                pad_token_id=meta.get("tokenizer.ggml.padding_token_id"))
