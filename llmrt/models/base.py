"""What a model family provides, and the registry that maps HF `model_type` / GGUF
`general.architecture` names to families.

Internal tensor names (what every family maps its checkpoint onto):
    embed                       (vocab, E): E is hidden, or the width of project_in
    pos_embed                   (positions, hidden) learned positions (row p + position_offset)
    project_in.weight           (hidden, E) / project_out.weight (E, hidden): OPT-350m
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

import re
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np

from llmrt.config import ModelConfig
from llmrt.errors import UnsupportedError

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
        raise UnsupportedError(f"{cls.name} models cannot be loaded from GGUF yet")

    @classmethod
    def map_gguf_tensors(cls, cfg: ModelConfig, tensors: Iterable[tuple[str, np.ndarray, object]]
                         ) -> Iterator[tuple[str, np.ndarray, object]]:
        """(gguf name, array, QuantFormat or None) -> (internal name, array, format)."""
        raise UnsupportedError(f"{cls.name} models cannot be loaded from GGUF yet")


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
        raise UnsupportedError(f"unsupported model_type {model_type!r}; llmrt supports: "
                         f"{', '.join(sorted(_BY_HF))}") from None


def family_for_gguf(arch: str) -> type[Family]:
    try:
        return _BY_GGUF[arch]
    except KeyError:
        raise UnsupportedError(f"unsupported GGUF architecture {arch!r}; llmrt reads: "
                         f"{', '.join(sorted(_BY_GGUF))}") from None


def family_by_name(name: str) -> type[Family]:
    for fam in set(_BY_HF.values()):
        if fam.name == name:
            return fam
    raise UnsupportedError(f"unknown model family {name!r}")


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


def gguf_shape_fields(meta: dict, *, kv_default: int | None = None, head_dim: int | None = None,
                      context_default: int = 2048) -> dict:
    """The ModelConfig fields every family reads from llama.cpp's <arch>.* keys the same way: sizes,
    heads (KV heads default to kv_default, else one per head), context, and gguf_shared_fields."""
    a = meta["general.architecture"]
    hidden, n_head = int(meta[f"{a}.embedding_length"]), int(meta[f"{a}.attention.head_count"])
    return dict(vocab_size=int(meta.get(f"{a}.vocab_size") or len(meta.get("tokenizer.ggml.tokens", []))),
                hidden_size=hidden, num_layers=int(meta[f"{a}.block_count"]), num_heads=n_head,
                num_kv_heads=int(meta.get(f"{a}.attention.head_count_kv", n_head if kv_default is None else kv_default)),
                head_dim=head_dim or hidden // n_head, intermediate_size=int(meta[f"{a}.feed_forward_length"]),
                max_position_embeddings=int(meta.get(f"{a}.context_length", context_default)),
                **gguf_shared_fields(meta))


def hf_shared_fields(hf: dict, tie_default: bool) -> dict:
    """ModelConfig fields every family reads from an HF config the same way."""
    return dict(tie_word_embeddings=bool(hf.get("tie_word_embeddings", tie_default)),
                bos_token_id=hf.get("bos_token_id"), eos_token_id=hf.get("eos_token_id"),
                pad_token_id=hf.get("pad_token_id"))


HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                  "relu": "relu", "silu": "silu"}


def hf_activation(family: str, name: str) -> str:
    """The block spec's MLP kind of an HF activation name."""
    if name not in HF_ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r} for {family}; "
                         f"llmrt runs {', '.join(sorted(HF_ACTIVATIONS))}")
    return HF_ACTIVATIONS[name]


def weight_and_bias(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """{checkpoint.weight: internal.weight, checkpoint.bias: internal.bias} for (checkpoint, internal) pairs."""
    return {f"{a}.{kind}": f"{b}.{kind}" for a, b in pairs for kind in ("weight", "bias")}


# llama.cpp's block tensors of the families with a fused QKV and a plain MLP (gptneox, mpt, bloom,
# starcoder), and its model-level ones
GGUF_FUSED_BLOCK_NAMES = weight_and_bias([("attn_norm", "attn_norm"), ("attn_qkv", "qkv"), ("attn_output", "attn_out"),
                                          ("ffn_norm", "mlp_norm"), ("ffn_up", "mlp_in"), ("ffn_down", "mlp_out")])
GGUF_MODEL_NAMES = {"token_embd.weight": "embed",
                    **weight_and_bias([("output_norm", "final_norm"), ("output", "lm_head")])}


LAYER_RE = re.compile(r"(?:h|blocks|layers|blk)\.(\d+)\.(.+)")


def rename_tensors(family: str, cfg: ModelConfig, items: Iterable[tuple], layer_names: Mapping[str, str],
                   global_names: Mapping[str, str], *, prefix: str = "", skip: tuple[str, ...] = (),
                   convert: Callable[[str, np.ndarray], np.ndarray] | None = None) -> Iterator[tuple]:
    """(name, array, ...) items of a checkpoint -> (internal name, array, ...).

    prefix: stripped where present (checkpoints saved from the base model lack it); layer tensors
    are "<h|blocks|layers|blk>.<i>.<rest>" with rest looked up in layer_names; skip: name endings of
    buffers to drop; convert(internal, array): a constant transform (QKV row order, say).  A head
    tied to the embedding is dropped; any other unknown tensor is an error."""
    for item in items:
        name, arr, rest = item[0], item[1], item[2:]
        if name.endswith(skip):
            continue
        short = name[len(prefix):] if prefix and name.startswith(prefix) else name
        m = LAYER_RE.fullmatch(short)
        if m and m.group(2) in layer_names:
            internal = f"layers.{m.group(1)}.{layer_names[m.group(2)]}"
        elif short in global_names or name in global_names:
            internal = global_names.get(short, global_names.get(name))
            if internal == "lm_head.weight" and cfg.tie_word_embeddings:
                continue
        else:
            raise ValueError(f"unexpected tensor {name!r} in a {family} checkpoint")
        yield (internal, convert(internal, arr) if convert else arr, *rest)


def heads_to_blocks(a: np.ndarray, n_head: int, head_dim: int) -> np.ndarray:
    """QKV rows stored per head as [q_h, k_h, v_h] (NeoX, BLOOM, Falcon-RW, GPTBigCode MHA) -> the
    engine's [all Q; all K; all V]."""
    rest = a.shape[1:]
    return np.ascontiguousarray(a.reshape(n_head, 3, head_dim, *rest).swapaxes(0, 1).reshape(a.shape))


def groups_to_blocks(a: np.ndarray, n_head: int, n_kv: int, head_dim: int) -> np.ndarray:
    """QKV rows stored per KV group as [q_g0 .. q_g(r-1), k_g, v_g] (Falcon's new decoder
    architecture) -> [all Q; all K; all V]."""
    rest = a.shape[1:]
    g = a.reshape(n_kv, n_head // n_kv + 2, head_dim, *rest)
    q = g[:, :-2].reshape(n_head * head_dim, *rest)
    k = g[:, -2].reshape(n_kv * head_dim, *rest)
    v = g[:, -1].reshape(n_kv * head_dim, *rest)
    return np.ascontiguousarray(np.concatenate([q, k, v]))
