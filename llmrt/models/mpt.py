"""MPT: fused Wqkv rows [Q; K; V] without biases, LayerNorm without bias, ALiBi (MPT's slopes,
alibi_bias_max), optional clip_qkv and softmax_scale, exact GELU MLP, head tied to the embedding.

transformers' own MPT always uses alibi_bias_max 8; MosaicML's code and llama.cpp read the
config's value, and so does llmrt."""
from __future__ import annotations

from typing import Mapping

from llmrt.config import ModelConfig
from llmrt.errors import ConfigError, UnsupportedError
from llmrt.models.base import (GGUF_FUSED_BLOCK_NAMES, GGUF_MODEL_NAMES, Family, field_bool, field_dict, field_float,
                               field_size, field_str, gguf_arch, gguf_norm_eps, gguf_shape_fields, head_dim_of,
                               hf_shared_fields, refuse_flags, register, rename_tensors)

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

def _check_supported(hf: Mapping, attn: Mapping) -> None:
    """Refuse the MPT switches llmrt does not run (MosaicML's code honours them; transformers'
    MPT refuses or lacks most)."""
    if not field_bool(attn, "alibi", default=True):
        raise UnsupportedError("MPT without ALiBi (learned positions) is not supported: "
                               "transformers has no such model either")
    refuse_flags(attn, "MPT attn_config", {"qk_ln": False, "prefix_lm": False, "attn_uses_sequence_id": False,
                                           "rope": False})
    attn_type = field_str(attn, "attn_type", default="multihead_attention")
    if attn_type != "multihead_attention":
        raise UnsupportedError(f"MPT attn_type {attn_type!r} is not supported (multihead_attention only)")
    norm = field_str(hf, "norm_type", default="low_precision_layernorm")
    if norm not in ("layernorm", "low_precision_layernorm"):
        raise UnsupportedError(f"MPT norm_type {norm!r} is not supported (layernorm only)")
    ffn = field_str(field_dict(hf, "ffn_config") or {}, "ffn_type", default="mptmlp")
    if ffn != "mptmlp":
        raise UnsupportedError(f"MPT ffn_config.ffn_type {ffn!r} is not supported (mptmlp only)")
    if hf.get("logit_scale") is not None:
        raise UnsupportedError(f"MPT logit_scale {hf['logit_scale']!r} is not supported (llmrt does not scale logits)")


@register
class MPT(Family):
    name = "mpt"
    hf_model_types = ("mpt",)
    gguf_architectures = ("mpt",)

    @classmethod
    def hf_to_config(cls, hf: Mapping) -> ModelConfig:
        attn = field_dict(hf, "attn_config") or {}
        _check_supported(hf, attn)
        hidden, n_head = field_size(hf, "d_model", "hidden_size"), field_size(hf, "n_heads", "num_attention_heads")
        ratio = field_float(hf, "expansion_ratio", default=4.0, positive=True)
        return ModelConfig(
            family=cls.name, vocab_size=field_size(hf, "vocab_size"), hidden_size=hidden,
            num_layers=field_size(hf, "n_layers", "num_hidden_layers"),
            num_heads=n_head, num_kv_heads=n_head, head_dim=head_dim_of(hidden, n_head, "d_model", "n_heads"),
            intermediate_size=_intermediate(ratio, hidden), norm="layer",
            norm_eps=field_float(hf, "layer_norm_epsilon", default=1e-5, positive=True), mlp="gelu",
            positions="alibi", alibi="mpt",
            alibi_bias_max=field_float(attn, "alibi_bias_max", default=8.0, positive=True),
            attn_scale=field_float(attn, "softmax_scale", default=None, positive=True),
            qkv_clip=field_float(attn, "clip_qkv", default=0.0, min_value=0.0),
            max_position_embeddings=field_size(hf, "max_seq_len", default=2048),
            **hf_shared_fields(hf, tie_default=True))

    @classmethod
    def map_hf_tensors(cls, cfg: ModelConfig, tensors):
        yield from rename_tensors(cls.name, cfg, tensors, _LAYER_NAMES, _GLOBAL_NAMES, prefix="transformer.")

    @classmethod
    def gguf_to_config(cls, meta: Mapping) -> ModelConfig:
        a = gguf_arch(meta)
        bias_max = field_float(meta, f"{a}.attention.max_alibi_bias", default=8.0, min_value=0.0)
        if bias_max == 0:
            raise UnsupportedError("MPT GGUF files without ALiBi (max_alibi_bias 0) are not supported")
        return ModelConfig(
            family=cls.name, norm="layer", norm_eps=gguf_norm_eps(meta, a), mlp="gelu", positions="alibi",
            alibi="mpt", alibi_bias_max=bias_max,
            qkv_clip=field_float(meta, f"{a}.attention.clamp_kqv", default=0.0, min_value=0.0),
            **gguf_shape_fields(meta))

    @classmethod
    def map_gguf_tensors(cls, cfg: ModelConfig, tensors):
        yield from rename_tensors("mpt GGUF", cfg, tensors, GGUF_FUSED_BLOCK_NAMES, GGUF_MODEL_NAMES)


def _intermediate(ratio: float, hidden: int) -> int:
    """MosaicML's int(expansion_ratio * d_model), kept to a size the engine can hold."""
    width = ratio * hidden
    n = int(width) if width < 2 ** 31 else 2 ** 31
    if not 1 <= n <= 2 ** 31 - 1:
        raise ConfigError(f"expansion_ratio {ratio} x d_model {hidden} gives an MLP width of {n}")
    return n
