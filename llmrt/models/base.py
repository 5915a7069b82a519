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

import os
import re
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from llmrt.config import ModelConfig
from llmrt.errors import ConfigError, UnsupportedError
from llmrt.formats.resident import drop_resident_pages
# the typed field readers, imported by the families from here
from llmrt.validation import (describe, field_bool, field_count, field_dict, field_float, field_int,  # noqa: F401
                              field_list, field_size, field_str, field_token_ids, named_source, rope_scaling,
                              source_label)

Tensors = Iterator[tuple[str, np.ndarray]]


class Family:
    """Base class of a model family; subclasses override the hooks hf_to_config / gguf_to_config
    (read the fields with the typed readers below) and the tensor mappings.  Loaders call
    config_from_hf / config_from_gguf, which validate the result once (ModelConfig.validate) and
    name the file in any error."""

    name: str = ""
    hf_model_types: tuple[str, ...] = ()
    gguf_architectures: tuple[str, ...] = ()

    @classmethod
    def config_from_hf(cls, hf: dict, source: str | os.PathLike | None = None) -> ModelConfig:
        """The validated ModelConfig of a config.json dict; source (its path) is named in errors."""
        with named_source(source_label(source, "config.json")):
            _check_mapping(hf)
            return cls.hf_to_config(hf).validate()

    @classmethod
    def config_from_gguf(cls, meta: dict, source: str | os.PathLike | None = None) -> ModelConfig:
        """The validated ModelConfig of GGUF metadata; source (the file) is named in errors."""
        with named_source(source_label(source, "GGUF metadata")):
            _check_mapping(meta)
            return cls.gguf_to_config(meta).validate()

    @classmethod
    def hf_to_config(cls, hf: Mapping) -> ModelConfig:
        raise UnsupportedError(f"{cls.name} models cannot be loaded from a Hugging Face directory")

    @classmethod
    def gguf_to_config(cls, meta: Mapping) -> ModelConfig:
        raise UnsupportedError(f"{cls.name} models cannot be loaded from GGUF yet")

    @classmethod
    def map_hf_tensors(cls, cfg: ModelConfig, tensors: Tensors) -> Tensors:
        """Rename (and constant-transform) checkpoint tensors into internal names; stream them."""
        raise NotImplementedError

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
    if not isinstance(model_type, str):
        raise ConfigError(f"model_type must be a string, got {describe(model_type)}")
    try:
        return _BY_HF[model_type]
    except KeyError:
        raise UnsupportedError(f"unsupported model_type {model_type!r}; llmrt supports: "
                         f"{', '.join(sorted(_BY_HF))}") from None


def family_for_gguf(arch: str) -> type[Family]:
    if not isinstance(arch, str):
        raise ConfigError(f"general.architecture must be a string, got {describe(arch)}")
    try:
        return _BY_GGUF[arch]
    except KeyError:
        raise UnsupportedError(f"unsupported GGUF architecture {arch!r}; llmrt reads: "
                         f"{', '.join(sorted(_BY_GGUF))}") from None


def family_by_name(name: str) -> type[Family]:
    for fam in set(_BY_HF.values()):
        if isinstance(name, str) and fam.name == name:
            return fam
    raise UnsupportedError(f"unknown model family {name!r}")


def supported_model_types() -> list[str]:
    return sorted(_BY_HF)


def _check_mapping(d: Any) -> None:
    if not isinstance(d, Mapping):
        raise ConfigError(f"the configuration must be a JSON object, got {describe(d)}")


def rope_theta_of(hf: Mapping, default: float = 10000.0) -> float:
    """transformers 5 moved rope_theta into rope_parameters; read both."""
    params = field_dict(hf, "rope_parameters") or {}
    inner = field_float(params, "rope_theta", default=default, positive=True)
    return field_float(hf, "rope_theta", default=inner, positive=True)


def rope_scaling_of(hf: Mapping) -> dict | None:
    """rope_scaling (or transformers 5's rope_parameters), validated here at load: a type llmrt does
    not implement is an UnsupportedError, not a silently unscaled model."""
    if hf.get("rope_scaling") not in (None, {}):
        return rope_scaling(hf["rope_scaling"], "rope_scaling")
    return rope_scaling(hf.get("rope_parameters"), "rope_parameters")


def require_full_rotary(hf: Mapping, family: str) -> None:
    """These families rotate the whole head (transformers' too): a partial_rotary_factor other than 1
    is refused rather than ignored."""
    params = field_dict(hf, "rope_parameters") or {}
    for d in (hf, params):
        factor = field_float(d, "partial_rotary_factor", default=1.0)
        if factor != 1.0:
            raise UnsupportedError(f"partial_rotary_factor {factor} is not supported for {family}: "
                                   f"llmrt rotates the whole head in this family")


def refuse_flags(hf: Mapping, family: str, flags: Mapping[str, Any]) -> None:
    """Refuse config switches llmrt does not implement: flags maps a field to the one value (its
    default) llmrt runs; any other value is an UnsupportedError."""
    for name, supported in flags.items():
        value = field_bool(hf, name, default=supported) if isinstance(supported, bool) else hf.get(name, supported)
        if value != supported:
            raise UnsupportedError(f"{family} with {name}={value!r} is not supported (llmrt runs {name}="
                                   f"{supported!r}); the model would run with the wrong arithmetic")


def gguf_arch(meta: Mapping) -> str:
    return field_str(meta, "general.architecture")


def gguf_tensor_names(meta: Mapping) -> tuple[str, ...]:
    """The file's tensor names, which the loader adds to the metadata as __tensor_names__."""
    names = meta.get("__tensor_names__", ())
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"__tensor_names__ must be a list of tensor names, got {describe(names)}")
    return tuple(names)


def gguf_vocab_size(meta: Mapping, a: str) -> int:
    """<arch>.vocab_size, else the length of the tokenizer's token list."""
    n = field_int(meta, f"{a}.vocab_size", default=None, min_value=1)
    if n is None:
        tokens = meta.get("tokenizer.ggml.tokens", [])
        if not isinstance(tokens, list):
            raise ConfigError(f"'tokenizer.ggml.tokens' must be an array, got {describe(tokens)}")
        n = len(tokens)
    return n


def gguf_rope_scaling(meta: Mapping, a: str) -> dict | None:
    """llama.cpp's <arch>.rope.scaling.* keys: none or linear (a factor alone means linear, as in
    llama.cpp); yarn, longrope or a rope_freqs tensor (llama3) are refused here, at load."""
    if "rope_freqs.weight" in gguf_tensor_names(meta):
        raise UnsupportedError("GGUF files with a rope_freqs tensor (llama3 rope scaling) are not supported yet")
    kind = field_str(meta, f"{a}.rope.scaling.type", default=None)
    factor = field_float(meta, f"{a}.rope.scaling.factor", f"{a}.rope.scale_linear", default=None, positive=True)
    if kind in (None, "none") and factor in (None, 1.0):
        return None
    if kind not in (None, "linear"):
        raise UnsupportedError(f"{a}.rope.scaling.type {kind!r} is not supported; llmrt implements linear "
                               f"scaling (or none)")
    if factor is None:
        raise ConfigError(f"{a}.rope.scaling.type is linear but {a}.rope.scaling.factor is missing")
    return {"rope_type": "linear", "factor": factor}


def gguf_shared_fields(meta: Mapping) -> dict:
    """ModelConfig fields every family reads from GGUF metadata the same way: a head tied to the
    embedding when the file has no output tensor, and the special token ids."""
    return dict(tie_word_embeddings="output.weight" not in gguf_tensor_names(meta),
                bos_token_id=field_token_ids(meta, "tokenizer.ggml.bos_token_id"),
                eos_token_id=field_token_ids(meta, "tokenizer.ggml.eos_token_id"),
                pad_token_id=field_token_ids(meta, "tokenizer.ggml.padding_token_id"))


def gguf_shape_fields(meta: Mapping, *, kv_default: int | None = None, head_dim: int | None = None,
                      context_default: int = 2048) -> dict:
    """The ModelConfig fields every family reads from llama.cpp's <arch>.* keys the same way: sizes,
    heads (KV heads default to kv_default, else one per head), context, and gguf_shared_fields."""
    a = gguf_arch(meta)
    hidden, n_head = field_size(meta, f"{a}.embedding_length"), field_size(meta, f"{a}.attention.head_count")
    head_dim = head_dim or head_dim_of(hidden, n_head, f"{a}.embedding_length", f"{a}.attention.head_count")
    return dict(vocab_size=gguf_vocab_size(meta, a), hidden_size=hidden,
                num_layers=field_size(meta, f"{a}.block_count"), num_heads=n_head,
                num_kv_heads=field_size(meta, f"{a}.attention.head_count_kv",
                                        default=n_head if kv_default is None else kv_default),
                head_dim=head_dim, intermediate_size=field_size(meta, f"{a}.feed_forward_length"),
                max_position_embeddings=field_size(meta, f"{a}.context_length", default=context_default),
                **gguf_shared_fields(meta))


def gguf_norm_eps(meta: Mapping, a: str, key: str = "layer_norm_epsilon") -> float:
    return field_float(meta, f"{a}.attention.{key}", default=1e-5, positive=True)


def hf_shared_fields(hf: Mapping, tie_default: bool) -> dict:
    """ModelConfig fields every family reads from an HF config the same way."""
    return dict(tie_word_embeddings=field_bool(hf, "tie_word_embeddings", default=tie_default),
                bos_token_id=field_token_ids(hf, "bos_token_id"), eos_token_id=field_token_ids(hf, "eos_token_id"),
                pad_token_id=field_token_ids(hf, "pad_token_id"))


def head_dim_of(hidden: int, n_head: int, hidden_field: str, heads_field: str) -> int:
    """hidden / heads, for the families whose head width is not a field of its own."""
    if hidden % n_head:
        raise ConfigError(f"{hidden_field} ({hidden}) must be a multiple of {heads_field} ({n_head})")
    return hidden // n_head


HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                  "relu": "relu", "silu": "silu"}


def activation_of(family: str, d: Mapping, *names: str, default: str) -> str:
    """The block spec's MLP kind of the activation named by the first of names in d."""
    act = field_str(d, *names, default=default)
    if act not in HF_ACTIVATIONS:
        raise UnsupportedError(f"{names[0]} {act!r} is not supported for {family}; "
                               f"llmrt runs {', '.join(sorted(HF_ACTIVATIONS))}")
    return HF_ACTIVATIONS[act]


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

# buffers any family's checkpoint may carry that llmrt recomputes from the config
HARMLESS_BUFFERS = ("rotary_emb.inv_freq",)


def _skipped(name: str, skip: tuple[str, ...]) -> bool:
    """name is one of skip or ends with ".<one of skip>" (whole name parts only: "attn.bias" skips
    GPT-J's mask buffer h.0.attn.bias, never a c_attn.bias)."""
    return any(name == s or name.endswith("." + s) for s in skip)


def rename_tensors(family: str, cfg: ModelConfig, items: Iterable[tuple], layer_names: Mapping[str, str],
                   global_names: Mapping[str, str], *, prefix: str = "", skip: tuple[str, ...] = (),
                   convert: Callable[[str, np.ndarray], np.ndarray] | None = None) -> Iterator[tuple]:
    """(name, array, ...) items of a checkpoint -> (internal name, array, ...).

    prefix: stripped where present (checkpoints saved from the base model lack it); layer tensors
    are "<h|blocks|layers|blk>.<i>.<rest>" with rest looked up in layer_names; skip: name endings of
    buffers to drop (HARMLESS_BUFFERS always); convert(internal, array): a constant transform (QKV
    row order, say).  A head tied to the embedding is dropped; any other unknown tensor is an
    UnsupportedError: a tensor llmrt would ignore means a variant it does not implement."""
    skip = (*skip, *HARMLESS_BUFFERS)
    for item in items:
        name, arr, rest = item[0], item[1], item[2:]
        if _skipped(name, skip):
            continue
        short = name[len(prefix):] if prefix and name.startswith(prefix) else name
        m = LAYER_RE.fullmatch(short)
        if m and m.group(2) in layer_names:
            internal = f"layers.{int(m.group(1))}.{layer_names[m.group(2)]}"
        elif short in global_names or name in global_names:
            internal = global_names.get(short, global_names.get(name))
            if internal == "lm_head.weight" and cfg.tie_word_embeddings:
                continue
        else:
            raise UnsupportedError(f"unexpected tensor {name!r} in a {family} checkpoint: llmrt does not know "
                                   f"what it does, so it cannot run this model as intended (a variant or a "
                                   f"config switch llmrt does not implement, or another architecture)")
        if convert is not None:
            try:
                converted = convert(internal, arr)
            except ConfigError as exc:
                exc.args = (f"tensor {name!r}: {exc.args[0]}",)
                raise
            if converted is not arr:   # a copy: the mapped file's pages it was read from are not needed
                drop_resident_pages([arr])
            arr = converted
        yield (internal, arr, *rest)


def _check_rows(a: np.ndarray, want: int, layout: str) -> None:
    if a.ndim == 0 or a.shape[0] != want:
        raise ConfigError(f"the fused QKV tensor has {a.shape[0] if a.ndim else 0} rows, but the config's heads "
                          f"give {want} ({layout}); the config does not match the checkpoint")


def heads_to_blocks(a: np.ndarray, n_head: int, head_dim: int) -> np.ndarray:
    """QKV rows stored per head as [q_h, k_h, v_h] (NeoX, BLOOM, Falcon-RW, GPTBigCode MHA) -> the
    engine's [all Q; all K; all V]."""
    _check_rows(a, 3 * n_head * head_dim, f"3 x {n_head} heads x {head_dim}")
    rest = a.shape[1:]
    return np.ascontiguousarray(a.reshape(n_head, 3, head_dim, *rest).swapaxes(0, 1).reshape(a.shape))


def groups_to_blocks(a: np.ndarray, n_head: int, n_kv: int, head_dim: int) -> np.ndarray:
    """QKV rows stored per KV group as [q_g0 .. q_g(r-1), k_g, v_g] (Falcon's new decoder
    architecture) -> [all Q; all K; all V]."""
    _check_rows(a, (n_head + 2 * n_kv) * head_dim, f"({n_head} + 2 x {n_kv}) heads x {head_dim}")
    rest = a.shape[1:]
    g = a.reshape(n_kv, n_head // n_kv + 2, head_dim, *rest)
    q = g[:, :-2].reshape(n_head * head_dim, *rest)
    k = g[:, -2].reshape(n_kv * head_dim, *rest)
    v = g[:, -1].reshape(n_kv * head_dim, *rest)
    return np.ascontiguousarray(np.concatenate([q, k, v]))
