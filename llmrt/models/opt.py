"""OPT: learned positions (table row p + 2), ReLU MLP, biases everywhere; pre-LN (125m, 1.3b, 13b
...) or post-LN without a final norm (350m); an embedding narrower than the blocks
(word_embed_proj_dim) goes through project_in / project_out."""
from __future__ import annotations

from typing import Mapping

from llmrt.config import ModelConfig
from llmrt.models.base import (Family, activation_of, field_bool, field_size, head_dim_of, hf_shared_fields,
                               refuse_flags, register, rename_tensors)

# OPT's position table starts two rows in (rows 0 and 1 were padding slots in fairseq)
POSITION_OFFSET = 2

_LAYER_NAMES = {
    "self_attn_layer_norm.weight": "attn_norm.weight", "self_attn_layer_norm.bias": "attn_norm.bias",
    **{f"self_attn.{p}_proj.weight": f"{p}.weight" for p in "qkv"},
    "self_attn.out_proj.weight": "attn_out.weight",
    "final_layer_norm.weight": "mlp_norm.weight", "final_layer_norm.bias": "mlp_norm.bias",
    "fc1.weight": "mlp_in.weight", "fc2.weight": "mlp_out.weight",
}
# the linear layers' biases, mapped only with enable_bias (transformers ignores them otherwise)
_LINEAR_BIASES = {**{f"self_attn.{p}_proj.bias": f"{p}.bias" for p in "qkv"},
                  "self_attn.out_proj.bias": "attn_out.bias", "fc1.bias": "mlp_in.bias", "fc2.bias": "mlp_out.bias"}
_GLOBAL_NAMES = {"embed_tokens.weight": "embed", "embed_positions.weight": "pos_embed",
                 "project_in.weight": "project_in.weight", "project_out.weight": "project_out.weight",
                 "final_layer_norm.weight": "final_norm.weight", "final_layer_norm.bias": "final_norm.bias",
                 "lm_head.weight": "lm_head.weight"}


@register
class OPT(Family):
    name = "opt"
    hf_model_types = ("opt",)

    @classmethod
    def hf_to_config(cls, hf: Mapping) -> ModelConfig:
        refuse_flags(hf, cls.name, {"layer_norm_elementwise_affine": True})
        hidden, n_head = field_size(hf, "hidden_size"), field_size(hf, "num_attention_heads")
        pre = field_bool(hf, "do_layer_norm_before", default=True)
        return ModelConfig(
            family=cls.name, vocab_size=field_size(hf, "vocab_size"), hidden_size=hidden,
            num_layers=field_size(hf, "num_hidden_layers"), num_heads=n_head, num_kv_heads=n_head,
            head_dim=head_dim_of(hidden, n_head, "hidden_size", "num_attention_heads"),
            intermediate_size=field_size(hf, "ffn_dim", default=4 * hidden), norm="layer", norm_eps=1e-5,
            norm_placement="pre" if pre else "post",
            mlp=activation_of(cls.name, hf, "activation_function", default="relu"),
            positions="learned", position_offset=POSITION_OFFSET,
            final_norm=pre and not field_bool(hf, "_remove_final_layer_norm", default=False),
            max_position_embeddings=field_size(hf, "max_position_embeddings", default=2048),
            extra={"enable_bias": field_bool(hf, "enable_bias", default=True)},
            **hf_shared_fields(hf, tie_default=True))

    @classmethod
    def map_hf_tensors(cls, cfg: ModelConfig, tensors):
        names = {**_LAYER_NAMES, **(_LINEAR_BIASES if cfg.extra.get("enable_bias", True) else {})}
        for name, arr in tensors:
            # model.decoder.* (OPTForCausalLM) or decoder.* (checkpoints saved from OPTModel)
            short = name.removeprefix("model.").removeprefix("decoder.")
            yield from rename_tensors(cls.name, cfg, [(short, arr)], names, _GLOBAL_NAMES)
