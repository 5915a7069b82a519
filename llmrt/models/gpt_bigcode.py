"""GPTBigCode (StarCoder, SantaCoder): learned positions, fused c_attn (MQA: [Q; K; V] with one KV
head; MHA: per head [q_h, k_h, v_h]), LayerNorm, tanh GELU MLP, biases everywhere, head tied."""
from __future__ import annotations

from typing import Mapping

from llmrt.config import ModelConfig
from llmrt.models.base import (GGUF_FUSED_BLOCK_NAMES, GGUF_MODEL_NAMES, Family, activation_of, field_bool, field_float,
                               field_size, gguf_arch, gguf_norm_eps, gguf_shape_fields, head_dim_of, heads_to_blocks,
                               hf_shared_fields, refuse_flags, register, rename_tensors)

_LAYER_NAMES = {
    "ln_1.weight": "attn_norm.weight", "ln_1.bias": "attn_norm.bias",
    "attn.c_attn.weight": "qkv.weight", "attn.c_attn.bias": "qkv.bias",
    "attn.c_proj.weight": "attn_out.weight", "attn.c_proj.bias": "attn_out.bias",
    "ln_2.weight": "mlp_norm.weight", "ln_2.bias": "mlp_norm.bias",
    "mlp.c_fc.weight": "mlp_in.weight", "mlp.c_fc.bias": "mlp_in.bias",
    "mlp.c_proj.weight": "mlp_out.weight", "mlp.c_proj.bias": "mlp_out.bias",
}
_GLOBAL_NAMES = {"wte.weight": "embed", "wpe.weight": "pos_embed", "ln_f.weight": "final_norm.weight",
                 "ln_f.bias": "final_norm.bias", "lm_head.weight": "lm_head.weight"}

_GGUF_MODEL_NAMES = {**GGUF_MODEL_NAMES, "position_embd.weight": "pos_embed"}


@register
class GPTBigCode(Family):
    name = "gpt_bigcode"
    hf_model_types = ("gpt_bigcode",)
    gguf_architectures = ("starcoder",)

    @classmethod
    def hf_to_config(cls, hf: Mapping) -> ModelConfig:
        refuse_flags(hf, cls.name, {"add_cross_attention": False})
        hidden, n_head = field_size(hf, "hidden_size", "n_embd"), field_size(hf, "num_attention_heads", "n_head")
        return ModelConfig(
            family=cls.name, vocab_size=field_size(hf, "vocab_size"), hidden_size=hidden,
            num_layers=field_size(hf, "num_hidden_layers", "n_layer"), num_heads=n_head,
            num_kv_heads=1 if field_bool(hf, "multi_query", default=True) else n_head,
            head_dim=head_dim_of(hidden, n_head, "n_embd", "n_head"),
            intermediate_size=field_size(hf, "n_inner", default=4 * hidden), norm="layer",
            norm_eps=field_float(hf, "layer_norm_epsilon", default=1e-5, positive=True),
            mlp=activation_of(cls.name, hf, "activation_function", default="gelu_pytorch_tanh"), positions="learned",
            attn_scale=None if field_bool(hf, "scale_attn_weights", default=True) else 1.0,
            max_position_embeddings=field_size(hf, "max_position_embeddings", "n_positions", default=2048),
            **hf_shared_fields(hf, tie_default=True))

    @classmethod
    def map_hf_tensors(cls, cfg: ModelConfig, tensors):
        def convert(internal: str, arr):
            mha = cfg.num_kv_heads == cfg.num_heads and ".qkv." in internal
            return heads_to_blocks(arr, cfg.num_heads, cfg.head_dim) if mha else arr
        yield from rename_tensors(cls.name, cfg, tensors, _LAYER_NAMES, _GLOBAL_NAMES, prefix="transformer.",
                                  skip=("attn.bias", "attn.masked_bias"), convert=convert)

    @classmethod
    def gguf_to_config(cls, meta: Mapping) -> ModelConfig:
        return ModelConfig(
            family=cls.name, norm="layer", norm_eps=gguf_norm_eps(meta, gguf_arch(meta)), mlp="gelu_tanh",
            positions="learned", **gguf_shape_fields(meta, kv_default=1))

    @classmethod
    def map_gguf_tensors(cls, cfg: ModelConfig, tensors):
        yield from rename_tensors("starcoder GGUF", cfg, tensors, GGUF_FUSED_BLOCK_NAMES, _GGUF_MODEL_NAMES)
