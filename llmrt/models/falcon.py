"""Falcon: parallel attention and MLP, LayerNorm, exact GELU, no biases (by default), head tied.

Layouts (transformers' FalconModel):
- Falcon-7B: multi_query, one shared input_layernorm, fused QKV [Q; K; V] with one KV head;
- Falcon-40B / 180B (new_decoder_architecture): grouped QKV, per KV group [q.., k, v], and two
  norms (ln_attn, ln_mlp), or one input_layernorm when num_ln_in_parallel_attn is 1 (Falcon2);
- Falcon-RW (alibi): sequential blocks, per-head QKV [q_h, k_h, v_h], ALiBi added to the scores
  before the softmax scale (so the slopes are scaled with them)."""
from __future__ import annotations

from typing import Mapping

from llmrt.config import ModelConfig
from llmrt.errors import UnsupportedError
from llmrt.models.base import (GGUF_MODEL_NAMES, Family, activation_of, field_bool, field_float, field_size, gguf_arch,
                               gguf_norm_eps, gguf_rope_scaling, gguf_shape_fields, gguf_tensor_names,
                               groups_to_blocks, head_dim_of, heads_to_blocks, hf_shared_fields, register, rename_tensors, require_full_rotary,
                               rope_scaling_of, rope_theta_of, weight_and_bias)

_LINEAR_NAMES = [("self_attention.query_key_value", "qkv"), ("self_attention.dense", "attn_out"),
                 ("mlp.dense_h_to_4h", "mlp_in"), ("mlp.dense_4h_to_h", "mlp_out")]
# LayerNorms always have biases; the linear layers only with the config's bias (transformers
# ignores bias tensors otherwise)
_NORM_NAMES = weight_and_bias([("input_layernorm", "attn_norm"), ("ln_attn", "attn_norm"), ("ln_mlp", "mlp_norm"),
                               ("post_attention_layernorm", "mlp_norm")])
_LAYER_NAMES = {**_NORM_NAMES, **{f"{a}.weight": f"{b}.weight" for a, b in _LINEAR_NAMES}}
_LAYER_NAMES_BIAS = {**_NORM_NAMES, **weight_and_bias(_LINEAR_NAMES)}
_GLOBAL_NAMES = {"word_embeddings.weight": "embed", "ln_f.weight": "final_norm.weight", "ln_f.bias": "final_norm.bias",
                 "lm_head.weight": "lm_head.weight"}

# llama.cpp: attn_norm feeds the MLP (and attention too unless attn_norm_2 exists); QKV is [Q; K; V]
_GGUF_LAYER_NAMES = weight_and_bias([("attn_qkv", "qkv"), ("attn_output", "attn_out"), ("ffn_up", "mlp_in"),
                                     ("ffn_down", "mlp_out")])
_GGUF_ONE_NORM = weight_and_bias([("attn_norm", "attn_norm")])
_GGUF_TWO_NORMS = weight_and_bias([("attn_norm_2", "attn_norm"), ("attn_norm", "mlp_norm")])


def _layout(hf: Mapping, n_head: int) -> tuple[int, str, str]:
    """(KV heads, QKV row layout, residual) of an HF Falcon config (RefinedWeb names included)."""
    parallel = field_bool(hf, "parallel_attn", default=True)
    if field_bool(hf, "new_decoder_architecture", default=False):
        if not parallel:
            raise UnsupportedError("Falcon's new decoder architecture with parallel_attn=False does not exist "
                                   "in transformers")
        # transformers: two norms when num_ln_in_parallel_attn is 2 (or unset), else one
        n_ln = field_size(hf, "num_ln_in_parallel_attn", default=2)
        return (field_size(hf, "num_kv_heads", "n_head_kv", default=n_head), "groups",
                "parallel" if n_ln == 2 else "parallel_shared_norm")
    if field_bool(hf, "multi_query", default=True):
        kv, qkv = 1, "blocks"
    else:
        kv, qkv = n_head, "heads"
    return kv, qkv, "parallel_shared_norm" if parallel else "sequential"


@register
class Falcon(Family):
    name = "falcon"
    hf_model_types = ("falcon", "RefinedWeb", "RefinedWebModel")
    gguf_architectures = ("falcon",)

    @classmethod
    def hf_to_config(cls, hf: Mapping) -> ModelConfig:
        require_full_rotary(hf, cls.name)
        hidden, n_head = field_size(hf, "hidden_size", "n_embd"), field_size(hf, "num_attention_heads", "n_head")
        head_dim = head_dim_of(hidden, n_head, "hidden_size", "num_attention_heads")
        n_kv, qkv, residual = _layout(hf, n_head)
        alibi = field_bool(hf, "alibi", default=False)
        return ModelConfig(
            family=cls.name, vocab_size=field_size(hf, "vocab_size"), hidden_size=hidden,
            num_layers=field_size(hf, "num_hidden_layers", "n_layer"), num_heads=n_head, num_kv_heads=n_kv,
            head_dim=head_dim, intermediate_size=field_size(hf, "ffn_hidden_size", default=4 * hidden), norm="layer",
            norm_eps=field_float(hf, "layer_norm_epsilon", default=1e-5, positive=True),
            mlp=activation_of(cls.name, hf, "activation", default="gelu"), residual=residual,
            positions="alibi" if alibi else "rotary", alibi="falcon", rotary_dim=0 if alibi else head_dim,
            rope_theta=rope_theta_of(hf), rope_scaling=None if alibi else rope_scaling_of(hf),
            max_position_embeddings=field_size(hf, "max_position_embeddings", default=2048),
            extra={"qkv_layout": qkv, "bias": field_bool(hf, "bias", default=False)},
            **hf_shared_fields(hf, tie_default=True))

    @classmethod
    def map_hf_tensors(cls, cfg: ModelConfig, tensors):
        layout = cfg.extra.get("qkv_layout", "blocks")

        def convert(internal: str, arr):
            if ".qkv." not in internal or layout == "blocks":
                return arr
            if layout == "heads":
                return heads_to_blocks(arr, cfg.num_heads, cfg.head_dim)
            return groups_to_blocks(arr, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
        names = _LAYER_NAMES_BIAS if cfg.extra.get("bias", True) else _LAYER_NAMES
        yield from rename_tensors(cls.name, cfg, tensors, names, _GLOBAL_NAMES, prefix="transformer.",
                                  convert=convert)

    @classmethod
    def gguf_to_config(cls, meta: Mapping) -> ModelConfig:
        a = gguf_arch(meta)
        two_norms = any(n.endswith(".attn_norm_2.weight") for n in gguf_tensor_names(meta))
        shape = gguf_shape_fields(meta, kv_default=1)
        return ModelConfig(
            family=cls.name, norm="layer", norm_eps=gguf_norm_eps(meta, a), mlp="gelu",
            residual="parallel" if two_norms else "parallel_shared_norm", rotary_dim=shape["head_dim"],
            rope_theta=field_float(meta, f"{a}.rope.freq_base", default=10000.0, positive=True),
            rope_scaling=gguf_rope_scaling(meta, a), **shape)

    @classmethod
    def map_gguf_tensors(cls, cfg: ModelConfig, tensors):
        norms = _GGUF_TWO_NORMS if cfg.residual == "parallel" else _GGUF_ONE_NORM
        yield from rename_tensors("falcon GGUF", cfg, tensors, {**_GGUF_LAYER_NAMES, **norms}, GGUF_MODEL_NAMES)
