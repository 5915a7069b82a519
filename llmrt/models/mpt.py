"""MPT: fused Wqkv rows [Q; K; V] without biases, LayerNorm without bias, ALiBi (MPT's slopes,
alibi_bias_max), optional clip_qkv and softmax_scale, exact GELU MLP, head tied to the embedding.

transformers' own MPT always uses alibi_bias_max 8; MosaicML's code and llama.cpp read the
config's value, and so does llmrt."""
from __future__ import annotations

from llmrt.config import ModelConfig
from llmrt.models.base import (GGUF_FUSED_BLOCK_NAMES, GGUF_MODEL_NAMES, Family, gguf_shape_fields, hf_get,
                               hf_shared_fields, register, rename_tensors)

_LAYER_NAMES = {
    "norm_1.weight": "attn_norm.weight", "norm_1.bias": "attn_norm.bias",
    "attn.Wqkv.weight": "qkv.weight", "attn.Wqkv.bias": "qkv.bias",
    "attn.out_proj.weight": "attn_out.weight", "attn.out_proj.bias": "attn_out.bias",
    "norm_2.weight": "mlp_norm.weight", "norm_2.bias": "mlp_norm.bias",
    "ffn.up_proj.weight": "mlp_in.weight", "ffn.up_proj.bias": "mlp_in.bias",
    "ffn.down_proj.weight": "mlp_out.weight", "ffn.down_proj.bias": "mlp_out.bias",
}
_GLOBAL_NAMES = {"wte.weight": "embed", "norm_f.weight": "final_norm.weight", "norm_f.bias": "final_norm.bias",
                 "lm_head.weight": "lm_head.weight"}

def _check_supported(attn: dict) -> None:
    if not attn.get("alibi", True):
        raise ValueError("MPT without ALiBi (learned positions) is not supported: "
                         "transformers has no such model either")
    for flag in ("qk_ln", "prefix_lm", "attn_uses_sequence_id"):
        if attn.get(flag):
            raise ValueError(f"MPT with attn_config.{flag} is not supported")
    if attn.get("attn_type", "multihead_attention") != "multihead_attention":
        raise ValueError(f"MPT attn_type {attn['attn_type']!r} is not supported (multihead_attention only)")


@register
class MPT(Family):
    name = "mpt"
    hf_model_types = ("mpt",)
    gguf_architectures = ("mpt",)

    @classmethod
    def config_from_hf(cls, hf: dict) -> ModelConfig:
        attn = hf.get("attn_config") or {}
        _check_supported(attn)
        hidden, n_head = hf_get(hf, "d_model", "hidden_size"), hf_get(hf, "n_heads", "num_attention_heads")
        return ModelConfig(
            family=cls.name, vocab_size=hf["vocab_size"], hidden_size=hidden,
            num_layers=hf_get(hf, "n_layers", "num_hidden_layers"),
            num_heads=n_head, num_kv_heads=n_head, head_dim=hidden // n_head,
            intermediate_size=int(hf.get("expansion_ratio", 4) * hidden), norm="layer",
            norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)), mlp="gelu", positions="alibi", alibi="mpt",
            alibi_bias_max=float(attn.get("alibi_bias_max", 8)), attn_scale=attn.get("softmax_scale"),
            qkv_clip=float(attn.get("clip_qkv") or 0.0), max_position_embeddings=int(hf.get("max_seq_len", 2048)),
            **hf_shared_fields(hf, tie_default=True))

    @classmethod
    def map_hf_tensors(cls, cfg: ModelConfig, tensors):
        yield from rename_tensors(cls.name, cfg, tensors, _LAYER_NAMES, _GLOBAL_NAMES, prefix="transformer.")

    @classmethod
    def config_from_gguf(cls, meta: dict) -> ModelConfig:
        a = meta["general.architecture"]
        bias_max = float(meta.get(f"{a}.attention.max_alibi_bias", 8.0))
        if bias_max <= 0:
            raise ValueError("MPT GGUF files without ALiBi (max_alibi_bias 0) are not supported")
        return ModelConfig(
            family=cls.name, norm="layer", norm_eps=float(meta.get(f"{a}.attention.layer_norm_epsilon", 1e-5)),
            mlp="gelu", positions="alibi", alibi="mpt", alibi_bias_max=bias_max,
            qkv_clip=float(meta.get(f"{a}.attention.clamp_kqv", 0.0)), **gguf_shape_fields(meta))

    @classmethod
    def map_gguf_tensors(cls, cfg: ModelConfig, tensors):
        yield from rename_tensors("mpt GGUF", cfg, tensors, GGUF_FUSED_BLOCK_NAMES, GGUF_MODEL_NAMES)
