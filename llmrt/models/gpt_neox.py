"""GPT-NeoX / Pythia / Dolly-v2: LayerNorm with biases, partial rotary (rotary_pct, NeoX halves),
parallel residual (on or off), GELU MLP, fused per-head QKV."""
from __future__ import annotations

import re

import numpy as np

from llmrt.config import ModelConfig
from llmrt.models.base import (Family, Tensors, gguf_shared_fields, hf_get, register, rope_scaling_of,
                               rope_theta_of)

_LAYER = re.compile(r"gpt_neox\.layers\.(\d+)\.(.+)")
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "input_layernorm.bias": "attn_norm.bias",
    "attention.query_key_value.weight": "qkv.weight",
    "attention.query_key_value.bias": "qkv.bias",
    "attention.dense.weight": "attn_out.weight",
    "attention.dense.bias": "attn_out.bias",
    "post_attention_layernorm.weight": "mlp_norm.weight",
    "post_attention_layernorm.bias": "mlp_norm.bias",
    "mlp.dense_h_to_4h.weight": "mlp_in.weight",
    "mlp.dense_h_to_4h.bias": "mlp_in.bias",
    "mlp.dense_4h_to_h.weight": "mlp_out.weight",
    "mlp.dense_4h_to_h.bias": "mlp_out.bias",
}
_GLOBAL = {"gpt_neox.embed_in.weight": "embed", "gpt_neox.final_layer_norm.weight": "final_norm.weight",
           "gpt_neox.final_layer_norm.bias": "final_norm.bias", "embed_out.weight": "lm_head.weight",
           "lm_head.weight": "lm_head.weight"}   # transformers 5 state_dict name
# buffers some checkpoints carry; recomputed here
_SKIP = ("attention.bias", "attention.masked_bias", "attention.rotary_emb.inv_freq")

# llama.cpp's GGUF names (its converter already writes QKV as [Q; K; V] blocks, the engine's order)
_GGUF_LAYER = re.compile(r"blk\.(\d+)\.(.+)")
_GGUF_LAYER_NAMES = {
    "attn_norm.weight": "attn_norm.weight", "attn_norm.bias": "attn_norm.bias",
    "attn_qkv.weight": "qkv.weight", "attn_qkv.bias": "qkv.bias",
    "attn_output.weight": "attn_out.weight", "attn_output.bias": "attn_out.bias",
    "ffn_norm.weight": "mlp_norm.weight", "ffn_norm.bias": "mlp_norm.bias",
    "ffn_up.weight": "mlp_in.weight", "ffn_up.bias": "mlp_in.bias",
    "ffn_down.weight": "mlp_out.weight", "ffn_down.bias": "mlp_out.bias",
}
_GGUF_GLOBAL = {"token_embd.weight": "embed", "output_norm.weight": "final_norm.weight",
                "output_norm.bias": "final_norm.bias", "output.weight": "lm_head.weight",
                "output.bias": "lm_head.bias"}
# GGUF has no activation key; llmrt's converter records a non-default one here
GGUF_ACT_KEY = "llmrt.hidden_act"

_ACTS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
         "relu": "relu", "silu": "silu"}


@register
class GPTNeoX(Family):
    name = "gpt_neox"
    hf_model_types = ("gpt_neox",)
    gguf_architectures = ("gptneox",)

    @classmethod
    def config_from_hf(cls, hf: dict) -> ModelConfig:
        n_head = hf["num_attention_heads"]
        hidden = hf["hidden_size"]
        head_dim = hidden // n_head
        params = hf.get("rope_parameters") or {}
        pct = float(hf_get(hf, "rotary_pct", "partial_rotary_factor", default=params.get("partial_rotary_factor", 1.0)))
        act = hf.get("hidden_act", "gelu")
        if act not in _ACTS:
            raise ValueError(f"unsupported hidden_act {act!r} for gpt_neox")
        return ModelConfig(
            family=cls.name,
            vocab_size=hf["vocab_size"],
            hidden_size=hidden,
            num_layers=hf["num_hidden_layers"],
            num_heads=n_head,
            num_kv_heads=n_head,
            head_dim=head_dim,
            intermediate_size=hf["intermediate_size"],
            norm="layer",
            norm_eps=float(hf_get(hf, "layer_norm_eps", default=1e-5)),
            mlp=_ACTS[act],
            residual="parallel" if hf.get("use_parallel_residual", True) else "sequential",
            rotary_dim=int(head_dim * pct),
            rope_theta=rope_theta_of(hf, default=float(hf.get("rotary_emb_base", 10000.0))),
            rope_scaling=rope_scaling_of(hf),
            max_position_embeddings=int(hf_get(hf, "max_position_embeddings", default=2048)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
            pad_token_id=hf.get("pad_token_id"),
        )

    @classmethod
    def map_hf_tensors(cls, cfg: ModelConfig, tensors: Tensors) -> Tensors:
        for name, arr in tensors:
            if name.endswith(_SKIP):
                continue
            m = _LAYER.fullmatch(name)
            if m and m.group(2) in _LAYER_NAMES:
                internal = _LAYER_NAMES[m.group(2)]
                if internal.startswith("qkv."):
                    arr = _heads_to_blocks(arr, cfg.num_heads, cfg.head_dim)
                yield f"layers.{m.group(1)}.{internal}", arr
            elif name in _GLOBAL:
                if _GLOBAL[name] == "lm_head.weight" and cfg.tie_word_embeddings:
                    continue
                yield _GLOBAL[name], arr
            else:
                raise ValueError(f"unexpected tensor {name!r} in a gpt_neox checkpoint")

    @classmethod
    def config_from_gguf(cls, meta: dict) -> ModelConfig:
        a = meta["general.architecture"]
        n_head = int(meta[f"{a}.attention.head_count"])
        hidden = int(meta[f"{a}.embedding_length"])
        vocab = meta.get(f"{a}.vocab_size") or len(meta.get("tokenizer.ggml.tokens", []))
        act = meta.get(GGUF_ACT_KEY, "gelu")
        if act not in _ACTS:
            raise ValueError(f"unsupported {GGUF_ACT_KEY} {act!r} in a gptneox GGUF file")
        return ModelConfig(
            family=cls.name,
            vocab_size=int(vocab),
            hidden_size=hidden,
            num_layers=int(meta[f"{a}.block_count"]),
            num_heads=n_head,
            num_kv_heads=n_head,
            head_dim=hidden // n_head,
            intermediate_size=int(meta[f"{a}.feed_forward_length"]),
            norm="layer",
            norm_eps=float(meta.get(f"{a}.attention.layer_norm_epsilon", 1e-5)),
            mlp=_ACTS[act],
            residual="parallel" if meta.get(f"{a}.use_parallel_residual", True) else "sequential",
            rotary_dim=int(meta.get(f"{a}.rope.dimension_count", hidden // n_head)),
            rope_theta=float(meta.get(f"{a}.rope.freq_base", 10000.0)),
            max_position_embeddings=int(meta.get(f"{a}.context_length", 2048)),
            **gguf_shared_fields(meta),
        )

    @classmethod
    def map_gguf_tensors(cls, cfg: ModelConfig, tensors):
        for name, arr, fmt in tensors:
            m = _GGUF_LAYER.fullmatch(name)
            if m and m.group(2) in _GGUF_LAYER_NAMES:
                yield f"layers.{m.group(1)}.{_GGUF_LAYER_NAMES[m.group(2)]}", arr, fmt
            elif name in _GGUF_GLOBAL:
                yield _GGUF_GLOBAL[name], arr, fmt
            else:
                raise ValueError(f"unexpected tensor {name!r} in a gptneox GGUF file")


def _heads_to_blocks(a: np.ndarray, n_head: int, head_dim: int) -> np.ndarray:
    """NeoX stores QKV rows per head as [q_h, k_h, v_h]; the engine wants [all Q; all K; all V]."""
    rest = a.shape[1:]
    return np.ascontiguousarray(a.reshape(n_head, 3, head_dim, *rest).swapaxes(0, 1).reshape(a.shape))
