"""BLOOM: LayerNorm after the embedding, per-head fused QKV [q_h, k_h, v_h] with biases, ALiBi
(the ALiBi paper's slopes, added after the softmax scale), tanh GELU MLP, head tied."""
from __future__ import annotations

from typing import Mapping

from llmrt.config import ModelConfig
from llmrt.models.base import (GGUF_FUSED_BLOCK_NAMES, GGUF_MODEL_NAMES, Family, field_float, field_size, gguf_arch,
                               gguf_norm_eps, gguf_shape_fields, head_dim_of, heads_to_blocks, hf_shared_fields,
                               refuse_flags, register, rename_tensors, weight_and_bias)

_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight", "input_layernorm.bias": "attn_norm.bias",
    "self_attention.query_key_value.weight": "qkv.weight", "self_attention.query_key_value.bias": "qkv.bias",
    "self_attention.dense.weight": "attn_out.weight", "self_attention.dense.bias": "attn_out.bias",
    "post_attention_layernorm.weight": "mlp_norm.weight", "post_attention_layernorm.bias": "mlp_norm.bias",
    "mlp.dense_h_to_4h.weight": "mlp_in.weight", "mlp.dense_h_to_4h.bias": "mlp_in.bias",
    "mlp.dense_4h_to_h.weight": "mlp_out.weight", "mlp.dense_4h_to_h.bias": "mlp_out.bias",
}
_GLOBAL_NAMES = {"word_embeddings.weight": "embed", "word_embeddings_layernorm.weight": "emb_norm.weight",
                 "word_embeddings_layernorm.bias": "emb_norm.bias", "ln_f.weight": "final_norm.weight",
                 "ln_f.bias": "final_norm.bias", "lm_head.weight": "lm_head.weight"}

# llama.cpp's converter already reorders QKV to [Q; K; V]
_GGUF_MODEL_NAMES = {**GGUF_MODEL_NAMES, **weight_and_bias([("token_embd_norm", "emb_norm")])}


@register
class Bloom(Family):
    name = "bloom"
    hf_model_types = ("bloom",)
    gguf_architectures = ("bloom",)

    @classmethod
    def hf_to_config(cls, hf: Mapping) -> ModelConfig:
        refuse_flags(hf, cls.name, {"apply_residual_connection_post_layernorm": False})
        hidden, n_head = field_size(hf, "hidden_size", "n_embed"), field_size(hf, "num_attention_heads", "n_head")
        return ModelConfig(
            family=cls.name, vocab_size=field_size(hf, "vocab_size"), hidden_size=hidden,
            num_layers=field_size(hf, "num_hidden_layers", "n_layer"), num_heads=n_head, num_kv_heads=n_head,
            head_dim=head_dim_of(hidden, n_head, "hidden_size", "n_head"), intermediate_size=4 * hidden, norm="layer",
            norm_eps=field_float(hf, "layer_norm_epsilon", default=1e-5, positive=True), mlp="gelu_tanh",
            positions="alibi", alibi="bloom",
            max_position_embeddings=field_size(hf, "seq_length", "max_position_embeddings", default=2048),
            **hf_shared_fields(hf, tie_default=True))

    @classmethod
    def map_hf_tensors(cls, cfg: ModelConfig, tensors):
        def convert(internal: str, arr):
            return heads_to_blocks(arr, cfg.num_heads, cfg.head_dim) if ".qkv." in internal else arr
        yield from rename_tensors(cls.name, cfg, tensors, _LAYER_NAMES, _GLOBAL_NAMES, prefix="transformer.",
                                  convert=convert)

    @classmethod
    def gguf_to_config(cls, meta: Mapping) -> ModelConfig:
        return ModelConfig(
            family=cls.name, norm="layer", norm_eps=gguf_norm_eps(meta, gguf_arch(meta)), mlp="gelu_tanh",
            positions="alibi", alibi="bloom", **gguf_shape_fields(meta))

    @classmethod
    def map_gguf_tensors(cls, cfg: ModelConfig, tensors):
        yield from rename_tensors("bloom GGUF", cfg, tensors, GGUF_FUSED_BLOCK_NAMES, _GGUF_MODEL_NAMES)
