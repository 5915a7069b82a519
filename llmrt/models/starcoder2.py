"""StarCoder2: GQA with biases, LayerNorm (with bias), NeoX rotary on the whole head, tanh GELU
MLP with biases, optional sliding window on every layer, head tied by default."""
from __future__ import annotations

from llmrt.config import ModelConfig
from llmrt.models.base import (GGUF_MODEL_NAMES, Family, gguf_shape_fields, hf_activation, hf_get, hf_shared_fields,
                               register, rename_tensors, rope_scaling_of, rope_theta_of, weight_and_bias)

_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight", "input_layernorm.bias": "attn_norm.bias",
    "post_attention_layernorm.weight": "mlp_norm.weight", "post_attention_layernorm.bias": "mlp_norm.bias",
    **{f"self_attn.{p}_proj.{kind}": f"{p}.{kind}" for p in "qkv" for kind in ("weight", "bias")},
    "self_attn.o_proj.weight": "attn_out.weight", "self_attn.o_proj.bias": "attn_out.bias",
    "mlp.c_fc.weight": "mlp_in.weight", "mlp.c_fc.bias": "mlp_in.bias",
    "mlp.c_proj.weight": "mlp_out.weight", "mlp.c_proj.bias": "mlp_out.bias",
}
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
    def config_from_hf(cls, hf: dict) -> ModelConfig:
        n_head, hidden = hf["num_attention_heads"], hf["hidden_size"]
        head_dim = hf_get(hf, "head_dim", default=hidden // n_head)
        return ModelConfig(
            family=cls.name, vocab_size=hf["vocab_size"], hidden_size=hidden, num_layers=hf["num_hidden_layers"],
            num_heads=n_head, num_kv_heads=hf_get(hf, "num_key_value_heads", default=n_head), head_dim=head_dim,
            intermediate_size=hf["intermediate_size"], norm="layer",
            norm_eps=float(hf_get(hf, "norm_epsilon", "layer_norm_eps", default=1e-5)),
            mlp=hf_activation(cls.name, hf.get("hidden_act", "gelu_pytorch_tanh")),
            rotary_dim=head_dim, rope_theta=rope_theta_of(hf), rope_scaling=rope_scaling_of(hf),
            sliding_window=int(hf.get("sliding_window") or 0),
            max_position_embeddings=int(hf_get(hf, "max_position_embeddings", default=4096)),
            **hf_shared_fields(hf, tie_default=True))

    @classmethod
    def map_hf_tensors(cls, cfg: ModelConfig, tensors):
        yield from rename_tensors(cls.name, cfg, tensors, _LAYER_NAMES, _GLOBAL_NAMES, prefix="model.",
                                  skip=("rotary_emb.inv_freq",))

    @classmethod
    def config_from_gguf(cls, meta: dict) -> ModelConfig:
        a = meta["general.architecture"]
        shape = gguf_shape_fields(meta, context_default=4096)
        head_dim = int(meta.get(f"{a}.rope.dimension_count", shape["head_dim"]))
        shape["head_dim"] = head_dim
        return ModelConfig(
            family=cls.name, norm="layer", norm_eps=float(meta.get(f"{a}.attention.layer_norm_epsilon", 1e-5)),
            mlp="gelu_tanh", rotary_dim=head_dim, rope_theta=float(meta.get(f"{a}.rope.freq_base", 10000.0)),
            sliding_window=int(meta.get(f"{a}.attention.sliding_window", 0)), **shape)

    @classmethod
    def map_gguf_tensors(cls, cfg: ModelConfig, tensors):
        yield from rename_tensors("starcoder2 GGUF", cfg, tensors, _GGUF_LAYER_NAMES, GGUF_MODEL_NAMES,
                                  skip=("attn_rot_embd.weight",))
