"""GPT-NeoX / Pythia / Dolly-v2: LayerNorm with biases, partial rotary (rotary_pct, NeoX halves),
parallel residual (on or off), GELU MLP, fused per-head QKV."""
from __future__ import annotations

from typing import Mapping

from llmrt.config import ModelConfig
from llmrt.errors import ConfigError
from llmrt.models.base import (GGUF_FUSED_BLOCK_NAMES, GGUF_MODEL_NAMES, Family, Tensors, activation_of, field_bool,
                               field_dict, field_float, field_int, field_size, gguf_arch, gguf_norm_eps,
                               gguf_rope_scaling, gguf_shape_fields, head_dim_of, heads_to_blocks, hf_shared_fields,
                               register, rename_tensors, rope_scaling_of, rope_theta_of)

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
_GLOBAL = {"embed_in.weight": "embed", "final_layer_norm.weight": "final_norm.weight",
           "final_layer_norm.bias": "final_norm.bias", "embed_out.weight": "lm_head.weight",
           "lm_head.weight": "lm_head.weight"}   # transformers 5 state_dict name
# the causal-mask buffers old checkpoints carry (transformers ignores them too)
_SKIP = ("attention.bias", "attention.masked_bias")
# the attention's biases, mapped only with attention_bias (transformers' default: on)
_ATTN_BIASES = ("attention.query_key_value.bias", "attention.dense.bias")

# llama.cpp's GGUF names (its converter already writes QKV as [Q; K; V] blocks, the engine's order)
_GGUF_LAYER_NAMES, _GGUF_GLOBAL = GGUF_FUSED_BLOCK_NAMES, GGUF_MODEL_NAMES
# GGUF has no activation key; llmrt's converter records a non-default one here
GGUF_ACT_KEY = "llmrt.hidden_act"


@register
class GPTNeoX(Family):
    name = "gpt_neox"
    hf_model_types = ("gpt_neox",)
    gguf_architectures = ("gptneox",)

    @classmethod
    def hf_to_config(cls, hf: Mapping) -> ModelConfig:
        n_head, hidden = field_size(hf, "num_attention_heads"), field_size(hf, "hidden_size")
        head_dim = head_dim_of(hidden, n_head, "hidden_size", "num_attention_heads")
        params = field_dict(hf, "rope_parameters") or {}
        pct = field_float(hf, "rotary_pct", "partial_rotary_factor",
                          default=field_float(params, "partial_rotary_factor", default=1.0), min_value=0.0)
        return ModelConfig(
            family=cls.name,
            vocab_size=field_size(hf, "vocab_size"),
            hidden_size=hidden,
            num_layers=field_size(hf, "num_hidden_layers"),
            num_heads=n_head,
            num_kv_heads=n_head,
            head_dim=head_dim,
            intermediate_size=field_size(hf, "intermediate_size"),
            norm="layer",
            norm_eps=field_float(hf, "layer_norm_eps", default=1e-5, positive=True),
            mlp=activation_of(cls.name, hf, "hidden_act", default="gelu"),
            residual="parallel" if field_bool(hf, "use_parallel_residual", default=True) else "sequential",
            rotary_dim=_rotary_dim(head_dim, pct),
            rope_theta=rope_theta_of(hf, default=field_float(hf, "rotary_emb_base", default=10000.0, positive=True)),
            rope_scaling=rope_scaling_of(hf),
            max_position_embeddings=field_size(hf, "max_position_embeddings", default=2048),
            extra={"attention_bias": field_bool(hf, "attention_bias", default=True)},
            **hf_shared_fields(hf, tie_default=False),
        )

    @classmethod
    def map_hf_tensors(cls, cfg: ModelConfig, tensors: Tensors) -> Tensors:
        def convert(internal: str, arr):
            return heads_to_blocks(arr, cfg.num_heads, cfg.head_dim) if ".qkv." in internal else arr
        names = _LAYER_NAMES if cfg.extra.get("attention_bias", True) else \
            {k: v for k, v in _LAYER_NAMES.items() if k not in _ATTN_BIASES}
        yield from rename_tensors(cls.name, cfg, tensors, names, _GLOBAL, prefix="gpt_neox.", skip=_SKIP,
                                  convert=convert)

    @classmethod
    def gguf_to_config(cls, meta: Mapping) -> ModelConfig:
        a = gguf_arch(meta)
        shape = gguf_shape_fields(meta)
        return ModelConfig(
            family=cls.name,
            norm="layer",
            norm_eps=gguf_norm_eps(meta, a),
            mlp=activation_of(f"a {a} GGUF file", meta, GGUF_ACT_KEY, default="gelu"),
            residual="parallel" if field_bool(meta, f"{a}.use_parallel_residual", default=True) else "sequential",
            rotary_dim=field_int(meta, f"{a}.rope.dimension_count", default=shape["head_dim"], min_value=0),
            rope_theta=field_float(meta, f"{a}.rope.freq_base", default=10000.0, positive=True),
            rope_scaling=gguf_rope_scaling(meta, a),
            **shape,
        )

    @classmethod
    def map_gguf_tensors(cls, cfg: ModelConfig, tensors):
        yield from rename_tensors("gptneox GGUF", cfg, tensors, _GGUF_LAYER_NAMES, _GGUF_GLOBAL)


def _rotary_dim(head_dim: int, pct: float) -> int:
    """transformers' int(head_dim * rotary_pct), which must be even (pairs of features rotate)."""
    rot = int(head_dim * pct) if 0 <= pct <= 1 else -1
    if rot < 0 or rot % 2:
        raise ConfigError(f"rotary_pct {pct} gives {rot} rotary features of the {head_dim} per head; it must "
                          f"be from 0 to 1 and give an even number")
    return rot
