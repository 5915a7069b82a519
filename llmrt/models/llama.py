"""LLaMA / LLaMA-2 / CodeLlama / TinyLlama / Mistral / SmolLM2: RMSNorm, rotary (NeoX halves),
GQA, SwiGLU MLP, optional sliding window, tied or untied embeddings."""
from __future__ import annotations

from typing import Mapping

from llmrt.config import ModelConfig
from llmrt.errors import ConfigError, UnsupportedError
from llmrt.models.base import (Family, Tensors, field_bool, field_float, field_int, field_size, field_str, gguf_arch,
                               gguf_norm_eps, gguf_rope_scaling, gguf_shape_fields, head_dim_of, hf_shared_fields,
                               register, rename_tensors, require_full_rotary, rope_scaling_of, rope_theta_of)

_HF_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "q.weight",
    "self_attn.k_proj.weight": "k.weight",
    "self_attn.v_proj.weight": "v.weight",
    "self_attn.o_proj.weight": "attn_out.weight",
    "post_attention_layernorm.weight": "mlp_norm.weight",
    "mlp.gate_proj.weight": "gate.weight",
    "mlp.up_proj.weight": "up.weight",
    "mlp.down_proj.weight": "mlp_out.weight",
}
# biases by group, mapped only when the config says the model has them (attention_bias / mlp_bias;
# Qwen2: QKV always): transformers ignores bias tensors its config does not declare
_HF_BIASES = {
    "qkv": {"self_attn.q_proj.bias": "q.bias", "self_attn.k_proj.bias": "k.bias", "self_attn.v_proj.bias": "v.bias"},
    "attn_out": {"self_attn.o_proj.bias": "attn_out.bias"},
    "mlp": {"mlp.gate_proj.bias": "gate.bias", "mlp.up_proj.bias": "up.bias", "mlp.down_proj.bias": "mlp_out.bias"},
}
_HF_GLOBAL = {"embed_tokens.weight": "embed", "norm.weight": "final_norm.weight", "lm_head.weight": "lm_head.weight"}

GGUF_LAYER_NAMES = {
    "attn_norm.weight": "attn_norm.weight",
    "attn_q.weight": "q.weight",
    "attn_k.weight": "k.weight",
    "attn_v.weight": "v.weight",
    "attn_q.bias": "q.bias",
    "attn_k.bias": "k.bias",
    "attn_v.bias": "v.bias",
    "attn_output.weight": "attn_out.weight",
    "attn_output.bias": "attn_out.bias",
    "ffn_norm.weight": "mlp_norm.weight",
    "ffn_gate.weight": "gate.weight",
    "ffn_up.weight": "up.weight",
    "ffn_down.weight": "mlp_out.weight",
    "ffn_gate.bias": "gate.bias",
    "ffn_up.bias": "up.bias",
    "ffn_down.bias": "mlp_out.bias",
}
GGUF_GLOBAL_NAMES = {"token_embd.weight": "embed", "output_norm.weight": "final_norm.weight",
                "output.weight": "lm_head.weight"}


@register
class Llama(Family):
    name = "llama"
    hf_model_types = ("llama", "mistral")
    gguf_architectures = ("llama",)

    @classmethod
    def hf_to_config(cls, hf: Mapping) -> ModelConfig:
        require_full_rotary(hf, cls.name)
        act = field_str(hf, "hidden_act", default="silu")
        if act not in ("silu", "swish"):
            raise UnsupportedError(f"{cls.name} with hidden_act {act!r} is not supported: llmrt runs this "
                                   f"family's gated MLP with SiLU only")
        n_head, hidden = field_size(hf, "num_attention_heads"), field_size(hf, "hidden_size")
        head_dim = field_size(hf, "head_dim", default=None) or head_dim_of(hidden, n_head, "hidden_size",
                                                                           "num_attention_heads")
        # transformers' Mistral honours sliding_window; its Llama ignores it (and use_sliding_window)
        windowed = field_str(hf, "model_type", default="") == "mistral"
        biases = ["qkv", "attn_out"] if field_bool(hf, "attention_bias", default=False) else []
        biases += ["mlp"] if field_bool(hf, "mlp_bias", default=False) else []
        return ModelConfig(
            family=cls.name,
            vocab_size=field_size(hf, "vocab_size"),
            hidden_size=hidden,
            num_layers=field_size(hf, "num_hidden_layers"),
            num_heads=n_head,
            num_kv_heads=field_size(hf, "num_key_value_heads", default=n_head),
            head_dim=head_dim,
            intermediate_size=field_size(hf, "intermediate_size"),
            norm="rms",
            norm_eps=field_float(hf, "rms_norm_eps", default=1e-6, positive=True),
            mlp="gated_silu",
            rotary_dim=head_dim,
            rope_theta=rope_theta_of(hf),
            rope_scaling=rope_scaling_of(hf),
            sliding_window=field_int(hf, "sliding_window", default=0, min_value=0) if windowed else 0,
            max_position_embeddings=field_size(hf, "max_position_embeddings", default=2048),
            extra={"biases": biases},
            **hf_shared_fields(hf, tie_default=False),
        )

    @classmethod
    def map_hf_tensors(cls, cfg: ModelConfig, tensors: Tensors) -> Tensors:
        names = dict(_HF_LAYER_NAMES)
        for group in cfg.extra.get("biases", ("qkv",)):
            names.update(_HF_BIASES[group])
        yield from rename_tensors(cls.name, cfg, tensors, names, _HF_GLOBAL, prefix="model.")

    @classmethod
    def gguf_to_config(cls, meta: Mapping) -> ModelConfig:
        a = gguf_arch(meta)
        if field_int(meta, f"{a}.expert_count", default=0, min_value=0):
            raise UnsupportedError(f"{a}.expert_count is set: mixture-of-experts models are not supported")
        # llama.cpp: the head width is key_length, else embedding / heads, and the rotary width must equal it
        shape = gguf_shape_fields(meta, head_dim=field_size(meta, f"{a}.attention.key_length", default=None))
        head_dim = shape["head_dim"]
        for key in ("rope.dimension_count", "attention.value_length"):
            n = field_int(meta, f"{a}.{key}", default=head_dim, min_value=0)
            if n != head_dim:
                raise UnsupportedError(f"{a}.{key} is {n}, not the head width {head_dim}: llmrt runs {cls.name} "
                                       f"with the whole head rotated and values as wide as keys")
        return ModelConfig(
            family=cls.name,
            norm="rms",
            norm_eps=gguf_norm_eps(meta, a, "layer_norm_rms_epsilon"),
            mlp="gated_silu",
            rotary_dim=head_dim,
            rope_theta=field_float(meta, f"{a}.rope.freq_base", default=10000.0, positive=True),
            rope_scaling=gguf_rope_scaling(meta, a),
            sliding_window=field_int(meta, f"{a}.attention.sliding_window", default=0, min_value=0),
            **shape,
        )

    @classmethod
    def map_gguf_tensors(cls, cfg: ModelConfig, tensors):
        from llmrt.formats import unpermute_rotary_rows

        def convert(internal: str, arr):
            # llama.cpp's converter interleaves Q/K rows for its rotary layout; undo it
            for part, heads in ((".q.", cfg.num_heads), (".k.", cfg.num_kv_heads)):
                if part in internal:
                    if arr.shape[0] != heads * cfg.head_dim:
                        raise ConfigError(f"{arr.shape[0]} rows, but the config gives {heads} heads x "
                                          f"{cfg.head_dim}; the metadata does not match the tensors")
                    return unpermute_rotary_rows(arr, heads)
            return arr
        yield from rename_tensors("llama GGUF", cfg, tensors, GGUF_LAYER_NAMES, GGUF_GLOBAL_NAMES, convert=convert)
