"""GPT-NeoX / Pythia / Dolly-v2: LayerNorm with biases, partial rotary (rotary_pct, NeoX halves),
parallel residual (on or off), GELU MLP, fused per-head QKV."""
from __future__ import annotations

from llmrt.config import ModelConfig
from llmrt.models.base import (GGUF_FUSED_BLOCK_NAMES, GGUF_MODEL_NAMES, HF_ACTIVATIONS, Family, Tensors,
                               gguf_shared_fields, heads_to_blocks, hf_activation, hf_get, register, rename_tensors,
                               rope_scaling_of, rope_theta_of)

_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "input_layernorm.bias": "attn_norm.bias",
    "attention.query_key_value.weight": "qkv.weight",
    "attention.query_key_value.bias": "qkv.bias",
    "attention.dense.weight": "attn_out.weight",
    "attention.dense.bias": "attn_out.bias",
    "post_attention_layernorm.weight": "mlp_norm.weight",
    "post_attention_layernorm.bias": "mlp_norm.bias",
    "mlp.dense_h_to_4h.weight": "mlp_in.weight",
    "mlp.dense_h_to_4h.bias": "mlp_in.bias",
    "mlp.dense_4h_to_h.weight": "mlp_out.weight",
    "mlp.dense_4h_to_h.bias": "mlp_out.bias",
}
_GLOBAL = {"embed_in.weight": "embed", "final_layer_norm.weight": "final_norm.weight",
           "final_layer_norm.bias": "final_norm.bias", "embed_out.weight": "lm_head.weight",
           "lm_head.weight": "lm_head.weight"}   # transformers 5 state_dict name
# buffers some checkpoints carry; recomputed here
_SKIP = ("attention.bias", "attention.masked_bias", "attention.rotary_emb.inv_freq")

# llama.cpp's GGUF names (its converter already writes QKV as [Q; K; V] blocks, the engine's order)
_GGUF_LAYER_NAMES, _GGUF_GLOBAL = GGUF_FUSED_BLOCK_NAMES, GGUF_MODEL_NAMES
# GGUF has no activation key; llmrt's converter records a non-default one here
GGUF_ACT_KEY = "llmrt.hidden_act"


@register
class GPTNeoX(Family):
    name = "gpt_neox"
    hf_model_types = ("gpt_neox",)
    gguf_architectures = ("gptneox",)

    @classmethod
    def config_from_hf(cls, hf: dict) -> ModelConfig:
        n_head = hf["num_attention_heads"]
        hidden = hf["hidden_size"]
        head_dim = hidden // n_head
        params = hf.get("rope_parameters") or {}
        pct = float(hf_get(hf, "rotary_pct", "partial_rotary_factor", default=params.get("partial_rotary_factor", 1.0)))
        return ModelConfig(
            family=cls.name,
            vocab_size=hf["vocab_size"],
            hidden_size=hidden,
            num_layers=hf["num_hidden_layers"],
            num_heads=n_head,
            num_kv_heads=n_head,
            head_dim=head_dim,
            intermediate_size=hf["intermediate_size"],
            norm="layer",
            norm_eps=float(hf_get(hf, "layer_norm_eps", default=1e-5)),
            mlp=hf_activation(cls.name, hf.get("hidden_act", "gelu")),
            residual="parallel" if hf.get("use_parallel_residual", True) else "sequential",
            rotary_dim=int(head_dim * pct),
            rope_theta=rope_theta_of(hf, default=float(hf.get("rotary_emb_base", 10000.0))),
            rope_scaling=rope_scaling_of(hf),
            max_position_embeddings=int(hf_get(hf, "max_position_embeddings", default=2048)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
            pad_token_id=hf.get("pad_token_id"),
        )

    @classmethod
    def map_hf_tensors(cls, cfg: ModelConfig, tensors: Tensors) -> Tensors:
        def convert(internal: str, arr):
            return heads_to_blocks(arr, cfg.num_heads, cfg.head_dim) if ".qkv." in internal else arr
        yield from rename_tensors(cls.name, cfg, tensors, _LAYER_NAMES, _GLOBAL, prefix="gpt_neox.", skip=_SKIP,
                                  convert=convert)

    @classmethod
    def config_from_gguf(cls, meta: dict) -> ModelConfig:
        a = meta["general.architecture"]
        n_head = int(meta[f"{a}.attention.head_count"])
        hidden = int(meta[f"{a}.embedding_length"])
        vocab = meta.get(f"{a}.vocab_size") or len(meta.get("tokenizer.ggml.tokens", []))
        act = meta.get(GGUF_ACT_KEY, "gelu")
        if act not in HF_ACTIVATIONS:
            raise ValueError(f"unsupported {GGUF_ACT_KEY} {act!r} in a gptneox GGUF file")
        return ModelConfig(
            family=cls.name,
            vocab_size=int(vocab),
            hidden_size=hidden,
            num_layers=int(meta[f"{a}.block_count"]),
            num_heads=n_head,
            num_kv_heads=n_head,
            head_dim=hidden // n_head,
            intermediate_size=int(meta[f"{a}.feed_forward_length"]),
            norm="layer",
            norm_eps=float(meta.get(f"{a}.attention.layer_norm_epsilon", 1e-5)),
            mlp=HF_ACTIVATIONS[act],
            residual="parallel" if meta.get(f"{a}.use_parallel_residual", True) else "sequential",
            rotary_dim=int(meta.get(f"{a}.rope.dimension_count", hidden // n_head)),
            rope_theta=float(meta.get(f"{a}.rope.freq_base", 10000.0)),
            max_position_embeddings=int(meta.get(f"{a}.context_length", 2048)),
            **gguf_shared_fields(meta),
        )

    @classmethod
    def map_gguf_tensors(cls, cfg: ModelConfig, tensors):
        yield from rename_tensors("gptneox GGUF", cfg, tensors, _GGUF_LAYER_NAMES, _GGUF_GLOBAL)
