"""Baichuan-7B / -13B and Baichuan2-7B / -13B: remote-code checkpoints (model_type "baichuan") read
from their own config.json fields and tensor names; llmrt never runs the repositories' Python.

The block is llama's (RMSNorm, SwiGLU, no biases, MHA) with Q, K and V fused in one
`self_attn.W_pack.weight` of contiguous [Q | K | V] rows (the engine's own QKV order) and an untied head.

Rules, from the published configs (whatever the layer count):
- positions: Baichuan-7B (architectures ["BaiChuanForCausalLM"], max_position_embeddings) and
  Baichuan2-7B (["BaichuanForCausalLM"], max_position_embeddings and model_max_length) rotate Q/K
  (NeoX halves, base 10000 unless rope_theta says otherwise); Baichuan-13B and Baichuan2-13B
  (["BaichuanForCausalLM"], model_max_length only) use ALiBi with BLOOM's slopes (the ALiBi paper's rule
  for any head count), added after the 1/sqrt(head_dim) scale.  So: BaiChuanForCausalLM or a
  max_position_embeddings field means rotary, model_max_length alone means ALiBi, neither is an error.
- NormHead (Baichuan2): lm_head rows are L2-normalised once at load (what the remote NormHead does on
  its first eval forward).  A config is Baichuan2 when its vocab_size is Baichuan2's 125696 (vLLM's
  rule) or it has the z_loss_weight field only Baichuan2's configuration_baichuan.py writes.
  Normalising is idempotent, so a checkpoint saved after that first forward loads the same.
- GGUF (llama.cpp's "baichuan"): W_pack is split into attn_q / attn_k / attn_v with Q and K rows
  permuted like llama's (undone here; for ALiBi the shared permutation would not change q.k anyway).
  The file carries no position switch: like llama.cpp (LLM_TYPE_13B), 40 blocks mean ALiBi, any other
  count rotary.  The head is used as stored, as llama.cpp does (Baichuan2's README normalises
  lm_head before conversion).
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, Mapping

import numpy as np

from llmrt.config import ModelConfig
from llmrt.errors import ConfigError, UnsupportedError
from llmrt.models.base import (Family, Tensors, field_bool, field_list, field_size, gguf_arch, register,
                               rename_tensors)
from llmrt.models.llama import GGUF_GLOBAL_NAMES, GGUF_LAYER_NAMES, Llama

_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.W_pack.weight": "qkv.weight",
    "self_attn.o_proj.weight": "attn_out.weight",
    "post_attention_layernorm.weight": "mlp_norm.weight",
    "mlp.gate_proj.weight": "gate.weight",
    "mlp.up_proj.weight": "up.weight",
    "mlp.down_proj.weight": "mlp_out.weight",
}
_GLOBAL_NAMES = {"embed_tokens.weight": "embed", "norm.weight": "final_norm.weight", "lm_head.weight": "lm_head.weight"}

BAICHUAN2_VOCAB = 125696
GGUF_ALIBI_BLOCKS = 40          # llama.cpp: 40 layers is LLM_TYPE_13B, which runs ALiBi (max bias 8)
# config fields that only matter to the rotary variant (the ALiBi one ignores them, as its code does)
_ROTARY_FIELDS = ("rope_theta", "rope_scaling", "rope_parameters", "partial_rotary_factor")


def uses_alibi(hf: Mapping) -> bool:
    """Whether a Baichuan config is a 13B one (ALiBi) rather than a 7B one (rotary); see the module doc."""
    if "BaiChuanForCausalLM" in (field_list(hf, "architectures") or []):
        return False
    if hf.get("max_position_embeddings") is not None:
        return False
    if hf.get("model_max_length") is not None:
        return True
    raise ConfigError("a baichuan config needs max_position_embeddings (7B models, rotary) or model_max_length "
                      "(13B models, ALiBi); it has neither, so the position scheme is unknown")


def uses_norm_head(hf: Mapping) -> bool:
    """Whether the head is Baichuan2's NormHead (rows L2-normalised before use)."""
    return field_size(hf, "vocab_size") == BAICHUAN2_VOCAB or "z_loss_weight" in hf


def normalize_rows(arr: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Each row divided by its L2 norm (at least 1e-12, as torch's F.normalize), in float32, a block of
    rows at a time so the only full-size array is the result."""
    out = np.array(arr, dtype=np.float32, copy=True)
    for i in range(0, out.shape[0], chunk):
        block = out[i:i + chunk]
        norms = np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float64))
        block /= np.maximum(norms, 1e-12).astype(np.float32)[:, None]
    return out


@register
class Baichuan(Family):
    name = "baichuan"
    hf_model_types = ("baichuan",)
    gguf_architectures = ("baichuan",)

    @classmethod
    def hf_to_config(cls, hf: Mapping) -> ModelConfig:
        n_head = field_size(hf, "num_attention_heads")
        kv = field_size(hf, "num_key_value_heads", default=n_head)
        if kv != n_head:
            raise UnsupportedError(f"baichuan with num_key_value_heads {kv} != num_attention_heads {n_head} is not "
                                   f"supported: W_pack holds full Q, K and V (multi-head attention)")
        alibi, norm_head = uses_alibi(hf), uses_norm_head(hf)
        if norm_head and field_bool(hf, "tie_word_embeddings", default=False):
            raise UnsupportedError("Baichuan2's NormHead tied to the embedding is not supported (normalising the "
                                   "head would change the embedding too)")
        # the llama block as the remote code builds it: head width hidden / heads, no biases, no window
        dropped = ("head_dim", "attention_bias", "mlp_bias", "sliding_window") + (_ROTARY_FIELDS if alibi else ())
        llama_hf = {k: v for k, v in hf.items() if k not in dropped}
        llama_hf.update(model_type="llama", num_key_value_heads=n_head,
                        max_position_embeddings=field_size(hf, "max_position_embeddings", "model_max_length",
                                                           default=4096))
        cfg = Llama.hf_to_config(llama_hf)
        cfg = dataclasses.replace(cfg, family=cls.name, extra={"biases": [], "norm_head": norm_head})
        return _as_alibi(cfg) if alibi else cfg

    @classmethod
    def map_hf_tensors(cls, cfg: ModelConfig, tensors: Tensors) -> Tensors:
        rows = 3 * cfg.num_heads * cfg.head_dim

        def convert(internal: str, arr: np.ndarray) -> np.ndarray:
            if internal.endswith(".qkv.weight") and (arr.ndim != 2 or arr.shape[0] != rows):
                raise ConfigError(f"W_pack has {arr.shape[0] if arr.ndim else 0} rows, but the config gives "
                                  f"3 x {cfg.num_heads} heads x {cfg.head_dim} = {rows}")
            if internal == "lm_head.weight" and cfg.extra.get("norm_head"):
                return normalize_rows(arr)
            return arr
        yield from rename_tensors(cls.name, cfg, tensors, _LAYER_NAMES, _GLOBAL_NAMES, prefix="model.",
                                  convert=convert)

    @classmethod
    def gguf_to_config(cls, meta: Mapping) -> ModelConfig:
        cfg = dataclasses.replace(Llama.gguf_to_config(meta), family=cls.name,
                                  extra={"biases": [], "norm_head": False})
        a = gguf_arch(meta)
        if cfg.num_kv_heads != cfg.num_heads:
            raise UnsupportedError(f"{a}.attention.head_count_kv {cfg.num_kv_heads} != head_count {cfg.num_heads}: "
                                   f"baichuan is multi-head attention")
        return _as_alibi(cfg) if cfg.num_layers == GGUF_ALIBI_BLOCKS else cfg

    @classmethod
    def map_gguf_tensors(cls, cfg: ModelConfig, tensors: Iterable[tuple[str, np.ndarray, object]]
                         ) -> Iterator[tuple[str, np.ndarray, object]]:
        from llmrt.formats import unpermute_rotary_rows

        def convert(internal: str, arr: np.ndarray) -> np.ndarray:
            # convert_hf_to_gguf.py permutes both variants' Q and K rows for llama.cpp's rotary pairs
            if internal.endswith((".q.weight", ".k.weight")):
                if arr.shape[0] != cfg.num_heads * cfg.head_dim:
                    raise ConfigError(f"{arr.shape[0]} rows, but the metadata gives {cfg.num_heads} heads x "
                                      f"{cfg.head_dim}")
                return unpermute_rotary_rows(arr, cfg.num_heads)
            return arr
        yield from rename_tensors("baichuan GGUF", cfg, tensors, GGUF_LAYER_NAMES, GGUF_GLOBAL_NAMES, convert=convert)


def _as_alibi(cfg: ModelConfig) -> ModelConfig:
    """The 13B variant: ALiBi (BLOOM's slopes, bias max 8) instead of rotary."""
    return dataclasses.replace(cfg, positions="alibi", alibi="bloom", alibi_bias_max=8.0, rotary_dim=0,
                               rope_scaling=None)
