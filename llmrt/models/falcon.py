"""Falcon: parallel attention and MLP, LayerNorm, exact GELU, no biases (by default), head tied.

Layouts (transformers' FalconModel):
- Falcon-7B: multi_query, one shared input_layernorm, fused QKV [Q; K; V] with one KV head;
- Falcon-40B / 180B (new_decoder_architecture): grouped QKV, per KV group [q.., k, v], and two
  norms (ln_attn, ln_mlp), or one input_layernorm when num_ln_in_parallel_attn is 1 (Falcon2);
- Falcon-RW (alibi): sequential blocks, per-head QKV [q_h, k_h, v_h], ALiBi added to the scores
  before the softmax scale (so the slopes are scaled with them)."""
from __future__ import annotations

from llmrt.config import ModelConfig
from llmrt.models.base import (GGUF_MODEL_NAMES, Family, gguf_shape_fields, groups_to_blocks, heads_to_blocks,
                               hf_activation, hf_get, hf_shared_fields, register, rename_tensors, rope_scaling_of,
                               rope_theta_of, weight_and_bias)

_LAYER_NAMES = {
    "self_attention.query_key_value.weight": "qkv.weight", "self_attention.query_key_value.bias": "qkv.bias",
    "self_attention.dense.weight": "attn_out.weight", "self_attention.dense.bias": "attn_out.bias",
    "mlp.dense_h_to_4h.weight": "mlp_in.weight", "mlp.dense_h_to_4h.bias": "mlp_in.bias",
    "mlp.dense_4h_to_h.weight": "mlp_out.weight", "mlp.dense_4h_to_h.bias": "mlp_out.bias",
    **weight_and_bias([("input_layernorm", "attn_norm"), ("ln_attn", "attn_norm"), ("ln_mlp", "mlp_norm"),
                       ("post_attention_layernorm", "mlp_norm")]),
}
_GLOBAL_NAMES = {"word_embeddings.weight": "embed", "ln_f.weight": "final_norm.weight", "ln_f.bias": "final_norm.bias",
                 "lm_head.weight": "lm_head.weight"}

# llama.cpp: attn_norm feeds the MLP (and attention too unless attn_norm_2 exists); QKV is [Q; K; V]
_GGUF_LAYER_NAMES = weight_and_bias([("attn_qkv", "qkv"), ("attn_output", "attn_out"), ("ffn_up", "mlp_in"),
                                     ("ffn_down", "mlp_out")])
_GGUF_ONE_NORM = weight_and_bias([("attn_norm", "attn_norm")])
_GGUF_TWO_NORMS = weight_and_bias([("attn_norm_2", "attn_norm"), ("attn_norm", "mlp_norm")])


def _layout(hf: dict) -> tuple[int, str, str]:
    """(KV heads, QKV row layout, residual) of an HF Falcon config (RefinedWeb names included)."""
    n_head = hf_get(hf, "num_attention_heads", "n_head")
    if hf.get("new_decoder_architecture"):
        if not hf.get("parallel_attn", True):
            raise ValueError("Falcon's new decoder architecture with parallel_attn=False does not exist "
                             "in transformers")
        n_ln = hf.get("num_ln_in_parallel_attn") or 2
        return (hf_get(hf, "num_kv_heads", "n_head_kv", default=n_head), "groups",
                "parallel" if n_ln == 2 else "parallel_shared_norm")
    if hf.get("multi_query", True):
        kv, qkv = 1, "blocks"
    else:
        kv, qkv = n_head, "heads"
    return kv, qkv, "parallel_shared_norm" if hf.get("parallel_attn", True) else "sequential"


@register
class Falcon(Family):
    name = "falcon"
    hf_model_types = ("falcon", "RefinedWeb", "RefinedWebModel")
    gguf_architectures = ("falcon",)

    @classmethod
    def config_from_hf(cls, hf: dict) -> ModelConfig:
        hidden = hf_get(hf, "hidden_size", "n_embd")
        n_head = hf_get(hf, "num_attention_heads", "n_head")
        head_dim = hidden // n_head
        n_kv, qkv, residual = _layout(hf)
        alibi = bool(hf.get("alibi", False))
        return ModelConfig(
            family=cls.name, vocab_size=hf["vocab_size"], hidden_size=hidden,
            num_layers=hf_get(hf, "num_hidden_layers", "n_layer"), num_heads=n_head, num_kv_heads=n_kv,
            head_dim=head_dim, intermediate_size=hf_get(hf, "ffn_hidden_size", default=4 * hidden), norm="layer",
            norm_eps=float(hf_get(hf, "layer_norm_epsilon", default=1e-5)),
            mlp=hf_activation(cls.name, hf.get("activation", "gelu")), residual=residual,
            positions="alibi" if alibi else "rotary", alibi="falcon", rotary_dim=0 if alibi else head_dim,
            rope_theta=rope_theta_of(hf), rope_scaling=rope_scaling_of(hf),
            max_position_embeddings=int(hf_get(hf, "max_position_embeddings", default=2048)),
            extra={"qkv_layout": qkv}, **hf_shared_fields(hf, tie_default=True))

    @classmethod
    def map_hf_tensors(cls, cfg: ModelConfig, tensors):
        layout = cfg.extra.get("qkv_layout", "blocks")

        def convert(internal: str, arr):
            if ".qkv." not in internal or layout == "blocks":
                return arr
            if layout == "heads":
                return heads_to_blocks(arr, cfg.num_heads, cfg.head_dim)
            return groups_to_blocks(arr, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
        yield from rename_tensors(cls.name, cfg, tensors, _LAYER_NAMES, _GLOBAL_NAMES, prefix="transformer.",
                                  convert=convert)

    @classmethod
    def config_from_gguf(cls, meta: dict) -> ModelConfig:
        a = meta["general.architecture"]
        two_norms = any(n.endswith(".attn_norm_2.weight") for n in meta.get("__tensor_names__", ()))
        shape = gguf_shape_fields(meta, kv_default=1)
        return ModelConfig(
            family=cls.name, norm="layer", norm_eps=float(meta.get(f"{a}.attention.layer_norm_epsilon", 1e-5)),
            mlp="gelu", residual="parallel" if two_norms else "parallel_shared_norm", rotary_dim=shape["head_dim"],
            rope_theta=float(meta.get(f"{a}.rope.freq_base", 10000.0)), **shape)

    @classmethod
    def map_gguf_tensors(cls, cfg: ModelConfig, tensors):
        norms = _GGUF_TWO_NORMS if cfg.residual == "parallel" else _GGUF_ONE_NORM
        yield from rename_tensors("falcon GGUF", cfg, tensors, {**_GGUF_LAYER_NAMES, **norms}, GGUF_MODEL_NAMES)
