"""GPT-J: one LayerNorm feeding attention and MLP in parallel, rotary on the first rotary_dim
features of each head in GPT-J pairs (2i, 2i+1), tanh GELU MLP with biases, head with a bias."""
from __future__ import annotations

from typing import Mapping

from llmrt.config import ModelConfig
from llmrt.models.base import (Family, activation_of, field_float, field_int, field_size, head_dim_of, hf_shared_fields,
                               register, rename_tensors)

_LAYER_NAMES = {
    "ln_1.weight": "attn_norm.weight", "ln_1.bias": "attn_norm.bias",
    "attn.q_proj.weight": "q.weight", "attn.k_proj.weight": "k.weight", "attn.v_proj.weight": "v.weight",
    "attn.out_proj.weight": "attn_out.weight",
    "mlp.fc_in.weight": "mlp_in.weight", "mlp.fc_in.bias": "mlp_in.bias",
    "mlp.fc_out.weight": "mlp_out.weight", "mlp.fc_out.bias": "mlp_out.bias",
}
_GLOBAL_NAMES = {"wte.weight": "embed", "ln_f.weight": "final_norm.weight", "ln_f.bias": "final_norm.bias",
                 "lm_head.weight": "lm_head.weight", "lm_head.bias": "lm_head.bias"}
# causal-mask buffers of old EleutherAI checkpoints
_SKIP = ("attn.bias", "attn.masked_bias")


@register
class GPTJ(Family):
    name = "gptj"
    hf_model_types = ("gptj",)

    @classmethod
    def hf_to_config(cls, hf: Mapping) -> ModelConfig:
        n_head, hidden = field_size(hf, "num_attention_heads", "n_head"), field_size(hf, "hidden_size", "n_embd")
        head_dim = head_dim_of(hidden, n_head, "n_embd", "n_head")
        return ModelConfig(
            family=cls.name, vocab_size=field_size(hf, "vocab_size"), hidden_size=hidden,
            num_layers=field_size(hf, "num_hidden_layers", "n_layer"), num_heads=n_head, num_kv_heads=n_head,
            head_dim=head_dim, intermediate_size=field_size(hf, "n_inner", default=4 * hidden), norm="layer",
            norm_eps=field_float(hf, "layer_norm_epsilon", default=1e-5, positive=True),
            mlp=activation_of(cls.name, hf, "activation_function", default="gelu_new"),
            residual="parallel_shared_norm",
            rotary_dim=field_int(hf, "rotary_dim", default=head_dim, min_value=0), rotary_interleaved=True,
            rope_theta=10000.0,     # fixed in GPT-J (transformers reads no rope_theta or rope_scaling)
            max_position_embeddings=field_size(hf, "max_position_embeddings", "n_positions", default=2048),
            **hf_shared_fields(hf, tie_default=False))

    @classmethod
    def map_hf_tensors(cls, cfg: ModelConfig, tensors):
        yield from rename_tensors(cls.name, cfg, tensors, _LAYER_NAMES, _GLOBAL_NAMES, prefix="transformer.",
                                  skip=_SKIP)
