"""StarCoder2: GQA with biases, LayerNorm (with bias), NeoX rotary on the whole head, tanh GELU
MLP with biases, optional sliding window on every layer, head tied by default."""
from __future__ import annotations

from typing import Mapping

from llmrt.config import ModelConfig
from llmrt.models.base import (GGUF_MODEL_NAMES, Family, activation_of, field_bool, field_float, field_int,
                               field_size, gguf_arch, gguf_norm_eps, gguf_rope_scaling, gguf_shape_fields, head_dim_of,
                               hf_shared_fields, register, rename_tensors, require_full_rotary, rope_scaling_of,
                               rope_theta_of, weight_and_bias)

# the norms always have biases; the linear layers only with use_bias (transformers ignores bias
# tensors otherwise)
_NORM_NAMES = weight_and_bias([("input_layernorm", "attn_norm"), ("post_attention_layernorm", "mlp_norm")])
_LINEAR_NAMES = {f"{a}.weight": f"{b}.weight" for a, b in (
    ("self_attn.q_proj", "q"), ("self_attn.k_proj", "k"), ("self_attn.v_proj", "v"), ("self_attn.o_proj", "attn_out"),
    ("mlp.c_fc", "mlp_in"), ("mlp.c_proj", "mlp_out"))}
_LINEAR_BIASES = {a.replace(".weight", ".bias"): b.replace(".weight", ".bias") for a, b in _LINEAR_NAMES.items()}
_GLOBAL_NAMES = {"embed_tokens.weight": "embed", "norm.weight": "final_norm.weight", "norm.bias": "final_norm.bias",
                 "lm_head.weight": "lm_head.weight"}

_GGUF_LAYER_NAMES = weight_and_bias([("attn_norm", "attn_norm"), ("ffn_norm", "mlp_norm"), ("attn_q", "q"),
                                     ("attn_k", "k"), ("attn_v", "v"), ("attn_output", "attn_out"),
                                     ("ffn_up", "mlp_in"), ("ffn_down", "mlp_out")])


@register
class StarCoder2(Family):
    name = "starcoder2"
    hf_model_types = ("starcoder2",)
    gguf_architectures = ("starcoder2",)

    @classmethod
    def hf_to_config(cls, hf: Mapping) -> ModelConfig:
        require_full_rotary(hf, cls.name)
        n_head, hidden = field_size(hf, "num_attention_heads"), field_size(hf, "hidden_size")
        head_dim = field_size(hf, "head_dim", default=None) or head_dim_of(hidden, n_head, "hidden_size",
                                                                           "num_attention_heads")
        return ModelConfig(
            family=cls.name, vocab_size=field_size(hf, "vocab_size"), hidden_size=hidden,
            num_layers=field_size(hf, "num_hidden_layers"), num_heads=n_head,
            num_kv_heads=field_size(hf, "num_key_value_heads", default=n_head), head_dim=head_dim,
            intermediate_size=field_size(hf, "intermediate_size"), norm="layer",
            norm_eps=field_float(hf, "norm_epsilon", "layer_norm_eps", default=1e-5, positive=True),
            mlp=activation_of(cls.name, hf, "hidden_act", default="gelu_pytorch_tanh"),
            rotary_dim=head_dim, rope_theta=rope_theta_of(hf), rope_scaling=rope_scaling_of(hf),
            sliding_window=field_int(hf, "sliding_window", default=0, min_value=0),
            max_position_embeddings=field_size(hf, "max_position_embeddings", default=4096),
            extra={"use_bias": field_bool(hf, "use_bias", default=True)},
            **hf_shared_fields(hf, tie_default=True))

    @classmethod
    def map_hf_tensors(cls, cfg: ModelConfig, tensors):
        names = {**_NORM_NAMES, **_LINEAR_NAMES, **(_LINEAR_BIASES if cfg.extra.get("use_bias", True) else {})}
        yield from rename_tensors(cls.name, cfg, tensors, names, _GLOBAL_NAMES, prefix="model.")

    @classmethod
    def gguf_to_config(cls, meta: Mapping) -> ModelConfig:
        a = gguf_arch(meta)
        shape = gguf_shape_fields(meta, context_default=4096,
                                  head_dim=field_size(meta, f"{a}.rope.dimension_count", default=None))
        return ModelConfig(
            family=cls.name, norm="layer", norm_eps=gguf_norm_eps(meta, a), mlp="gelu_tanh",
            rotary_dim=shape["head_dim"], rope_theta=field_float(meta, f"{a}.rope.freq_base", default=10000.0,
                                                                 positive=True),
            rope_scaling=gguf_rope_scaling(meta, a),
            sliding_window=field_int(meta, f"{a}.attention.sliding_window", default=0, min_value=0), **shape)

    @classmethod
    def map_gguf_tensors(cls, cfg: ModelConfig, tensors):
        yield from rename_tensors("starcoder2 GGUF", cfg, tensors, _GGUF_LAYER_NAMES, GGUF_MODEL_NAMES,
                                  skip=("attn_rot_embd.weight",))
