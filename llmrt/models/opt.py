"""OPT: learned positions (table row p + 2), ReLU MLP, biases everywhere; pre-LN (125m, 1.3b, 13b
...) or post-LN without a final norm (350m); an embedding narrower than the blocks
(word_embed_proj_dim) goes through project_in / project_out."""
from __future__ import annotations

from llmrt.config import ModelConfig
from llmrt.models.base import Family, hf_activation, hf_get, hf_shared_fields, register, rename_tensors

# OPT's position table starts two rows in (rows 0 and 1 were padding slots in fairseq)
POSITION_OFFSET = 2

_LAYER_NAMES = {
    "self_attn_layer_norm.weight": "attn_norm.weight", "self_attn_layer_norm.bias": "attn_norm.bias",
    **{f"self_attn.{p}_proj.{kind}": f"{p}.{kind}" for p in "qkv" for kind in ("weight", "bias")},
    "self_attn.out_proj.weight": "attn_out.weight", "self_attn.out_proj.bias": "attn_out.bias",
    "final_layer_norm.weight": "mlp_norm.weight", "final_layer_norm.bias": "mlp_norm.bias",
    "fc1.weight": "mlp_in.weight", "fc1.bias": "mlp_in.bias",
    "fc2.weight": "mlp_out.weight", "fc2.bias": "mlp_out.bias",
}
_GLOBAL_NAMES = {"embed_tokens.weight": "embed", "embed_positions.weight": "pos_embed",
                 "project_in.weight": "project_in.weight", "project_out.weight": "project_out.weight",
                 "final_layer_norm.weight": "final_norm.weight", "final_layer_norm.bias": "final_norm.bias",
                 "lm_head.weight": "lm_head.weight"}


@register
class OPT(Family):
    name = "opt"
    hf_model_types = ("opt",)

    @classmethod
    def config_from_hf(cls, hf: dict) -> ModelConfig:
        if hf.get("layer_norm_elementwise_affine") is False:
            raise ValueError("OPT without LayerNorm weights (layer_norm_elementwise_affine=False) is not supported")
        hidden, n_head = hf["hidden_size"], hf["num_attention_heads"]
        pre = bool(hf.get("do_layer_norm_before", True))
        return ModelConfig(
            family=cls.name, vocab_size=hf["vocab_size"], hidden_size=hidden, num_layers=hf["num_hidden_layers"],
            num_heads=n_head, num_kv_heads=n_head, head_dim=hidden // n_head,
            intermediate_size=hf_get(hf, "ffn_dim", default=4 * hidden), norm="layer", norm_eps=1e-5,
            norm_placement="pre" if pre else "post", mlp=hf_activation(cls.name, hf.get("activation_function", "relu")),
            positions="learned", position_offset=POSITION_OFFSET,
            final_norm=pre and not hf.get("_remove_final_layer_norm", False),
            max_position_embeddings=int(hf_get(hf, "max_position_embeddings", default=2048)),
            **hf_shared_fields(hf, tie_default=True))

    @classmethod
    def map_hf_tensors(cls, cfg: ModelConfig, tensors):
        for name, arr in tensors:
            # model.decoder.* (OPTForCausalLM) or decoder.* (checkpoints saved from OPTModel)
            short = name.removeprefix("model.").removeprefix("decoder.")
            yield from rename_tensors(cls.name, cfg, [(short, arr)], _LAYER_NAMES, _GLOBAL_NAMES)
