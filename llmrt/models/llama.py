"""LLaMA / LLaMA-2 / CodeLlama / TinyLlama / Mistral / SmolLM2: RMSNorm, rotary (NeoX halves),
GQA, SwiGLU MLP, optional sliding window, tied or untied embeddings."""
from __future__ import annotations

from llmrt.config import ModelConfig
from llmrt.errors import UnsupportedError
from llmrt.models.base import (Family, Tensors, gguf_shared_fields, hf_get, register, rename_tensors,
                               rope_scaling_of, rope_theta_of)

_HF_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "q.weight",
    "self_attn.k_proj.weight": "k.weight",
    "self_attn.v_proj.weight": "v.weight",
    "self_attn.q_proj.bias": "q.bias",
    "self_attn.k_proj.bias": "k.bias",
    "self_attn.v_proj.bias": "v.bias",
    "self_attn.o_proj.weight": "attn_out.weight",
    "post_attention_layernorm.weight": "mlp_norm.weight",
    "mlp.gate_proj.weight": "gate.weight",
    "mlp.up_proj.weight": "up.weight",
    "mlp.down_proj.weight": "mlp_out.weight",
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
    "ffn_norm.weight": "mlp_norm.weight",
    "ffn_gate.weight": "gate.weight",
    "ffn_up.weight": "up.weight",
    "ffn_down.weight": "mlp_out.weight",
}
GGUF_GLOBAL_NAMES = {"token_embd.weight": "embed", "output_norm.weight": "final_norm.weight",
                "output.weight": "lm_head.weight"}


@register
class Llama(Family):
    name = "llama"
    hf_model_types = ("llama", "mistral")
    gguf_architectures = ("llama",)

    @classmethod
    def config_from_hf(cls, hf: dict) -> ModelConfig:
        n_head = hf["num_attention_heads"]
        hidden = hf["hidden_size"]
        head_dim = hf_get(hf, "head_dim", default=hidden // n_head)
        window = hf.get("sliding_window") if hf.get("model_type") == "mistral" or hf.get("use_sliding_window") else None
        return ModelConfig(
            family=cls.name,
            vocab_size=hf["vocab_size"],
            hidden_size=hidden,
            num_layers=hf["num_hidden_layers"],
            num_heads=n_head,
            num_kv_heads=hf_get(hf, "num_key_value_heads", default=n_head),
            head_dim=head_dim,
            intermediate_size=hf["intermediate_size"],
            norm="rms",
            norm_eps=float(hf_get(hf, "rms_norm_eps", default=1e-6)),
            mlp="gated_silu",
            rotary_dim=head_dim,
            rope_theta=rope_theta_of(hf),
            rope_scaling=rope_scaling_of(hf),
            sliding_window=int(window or 0),
            max_position_embeddings=int(hf_get(hf, "max_position_embeddings", default=2048)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
            pad_token_id=hf.get("pad_token_id"),
        )

    @classmethod
    def map_hf_tensors(cls, cfg: ModelConfig, tensors: Tensors) -> Tensors:
        # rotary_emb.inv_freq: recomputed from the config
        yield from rename_tensors(cls.name, cfg, tensors, _HF_LAYER_NAMES, _HF_GLOBAL, prefix="model.",
                                  skip=("rotary_emb.inv_freq",))

    @classmethod
    def config_from_gguf(cls, meta: dict) -> ModelConfig:
        a = meta["general.architecture"]
        n_head = int(meta[f"{a}.attention.head_count"])
        hidden = int(meta[f"{a}.embedding_length"])
        head_dim = int(meta.get(f"{a}.rope.dimension_count", hidden // n_head))
        vocab = meta.get(f"{a}.vocab_size") or len(meta.get("tokenizer.ggml.tokens", []))
        scaling = None
        if meta.get(f"{a}.rope.scaling.type") == "linear":
            scaling = {"rope_type": "linear", "factor": float(meta[f"{a}.rope.scaling.factor"])}
        return ModelConfig(
            family=cls.name,
            vocab_size=int(vocab),
            hidden_size=hidden,
            num_layers=int(meta[f"{a}.block_count"]),
            num_heads=n_head,
            num_kv_heads=int(meta.get(f"{a}.attention.head_count_kv", n_head)),
            head_dim=head_dim,
            intermediate_size=int(meta[f"{a}.feed_forward_length"]),
            norm="rms",
            norm_eps=float(meta.get(f"{a}.attention.layer_norm_rms_epsilon", 1e-5)),
            mlp="gated_silu",
            rotary_dim=head_dim,
            rope_theta=float(meta.get(f"{a}.rope.freq_base", 10000.0)),
            rope_scaling=scaling,
            sliding_window=int(meta.get(f"{a}.attention.sliding_window", 0)),
            max_position_embeddings=int(meta.get(f"{a}.context_length", 2048)),
            **gguf_shared_fields(meta),
        )

    @classmethod
    def map_gguf_tensors(cls, cfg: ModelConfig, tensors):
        from llmrt.formats import unpermute_rotary_rows

        def convert(internal: str, arr):
            # llama.cpp's converter interleaves Q/K rows for its rotary layout; undo it
            if internal.endswith((".q.weight", ".q.bias")):
                return unpermute_rotary_rows(arr, cfg.num_heads)
            if internal.endswith((".k.weight", ".k.bias")):
                return unpermute_rotary_rows(arr, cfg.num_kv_heads)
            return arr

        def no_rope_freqs(items):
            for item in items:
                if item[0] == "rope_freqs.weight":
                    raise UnsupportedError("GGUF files with rope_freqs (llama3 scaling) are not supported yet")
                yield item
        yield from rename_tensors("llama GGUF", cfg, no_rope_freqs(tensors), GGUF_LAYER_NAMES, GGUF_GLOBAL_NAMES,
                                  convert=convert)
