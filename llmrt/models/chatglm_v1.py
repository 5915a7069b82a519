"""ChatGLM-6B (v1): THUDM's first GLM chat model, under the same model_type "chatglm" as ChatGLM2/3 but
another architecture (the chatglm family hands its configs and tensors here).

Read from the checkpoint's own config.json and tensor names (no remote code runs):
- LayerNorm (layernorm_epsilon) before attention and MLP, a final LayerNorm;
- the DeepNorm-style residual of GLM: x = a * LN1(x) + attn(LN1 x); x = a * LN2(x) + mlp(LN2 x),
  a = sqrt(2 x num_layers);
- fused query_key_value with a bias, rows per head [q_h, k_h, v_h]; dense with a bias;
- 2D rotary positions: each head's first half turns at the token's position, its second half at its
  block position, each half in NeoX halves (rotate_half) at base 10000 over head_dim / 2 features;
- the prefix-LM mask: the prompt up to its <sop> (bos_token_id) attends both ways, later tokens
  causally; a token t < C is at (t, 0), a later one at (the [gMASK] (else [MASK]) index, t - C + 1);
- dense_h_to_4h / dense_4h_to_h with biases and tanh GELU; word_embeddings, tied to the head as in
  transformers (tie_word_embeddings defaults to true in ChatGLM-6B's config).
THUDM's code builds the rotary table in fp16; llmrt computes it in fp32 (like the other families).
llama.cpp has no ChatGLM-6B architecture (its "chatglm" is ChatGLM2/3), so v1 has no GGUF path."""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from llmrt.config import ModelConfig
from llmrt.errors import ConfigError, UnsupportedError
from llmrt.models.base import (Tensors, field_bool, field_float, field_int, field_size, head_dim_of, heads_to_blocks,
                               hf_shared_fields, rename_tensors, weight_and_bias)

# what only ChatGLM-6B (v1)'s config has; ChatGLM2/3 have these instead
V1_FIELDS = ("position_encoding_2d", "inner_hidden_size")
V2_FIELDS = ("multi_query_group_num", "padded_vocab_size", "kv_channels")

_LAYER_NAMES = weight_and_bias([
    ("input_layernorm", "attn_norm"), ("attention.query_key_value", "qkv"), ("attention.dense", "attn_out"),
    ("post_attention_layernorm", "mlp_norm"), ("mlp.dense_h_to_4h", "mlp_in"), ("mlp.dense_4h_to_h", "mlp_out")])
_GLOBAL_NAMES = {"word_embeddings.weight": "embed", "final_layernorm.weight": "final_norm.weight",
                 "final_layernorm.bias": "final_norm.bias", "lm_head.weight": "lm_head.weight"}
_SKIP = ("rotary_emb.inv_freq",)


def is_v1(hf: Mapping) -> bool:
    return any(f in hf for f in V1_FIELDS) or not any(f in hf for f in V2_FIELDS)


def hf_to_config(hf: Mapping, family: str) -> ModelConfig:
    if not field_bool(hf, "position_encoding_2d", default=True):
        raise UnsupportedError("a chatglm v1 config with position_encoding_2d false (one position stream) is not "
                               "a published ChatGLM-6B; llmrt runs the 2D positions")
    hidden = field_size(hf, "hidden_size")
    n_head = field_size(hf, "num_attention_heads")
    head_dim = head_dim_of(hidden, n_head, "hidden_size", "num_attention_heads")
    if head_dim % 4:
        raise ConfigError(f"hidden_size / num_attention_heads ({head_dim}) must be a multiple of 4: ChatGLM-6B "
                          f"turns each half of a head in halves")
    n_layers = field_size(hf, "num_layers", "num_hidden_layers")
    vocab = field_size(hf, "vocab_size")
    # ChatGLM-6B's own defaults (its configuration_chatglm.py) where a field is absent
    ids = {name: field_int(hf, name, default=default, min_value=0, max_value=vocab - 1)
           for name, default in (("bos_token_id", 130004), ("mask_token_id", 130000), ("gmask_token_id", 130001))}
    shared = hf_shared_fields(hf, tie_default=True)
    shared["bos_token_id"] = ids["bos_token_id"]
    if shared["eos_token_id"] is None:
        shared["eos_token_id"] = 130005 if 130005 < vocab else None
    return ModelConfig(
        family=family,
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=n_layers,
        num_heads=n_head,
        num_kv_heads=n_head,
        head_dim=head_dim,
        intermediate_size=field_size(hf, "inner_hidden_size", default=4 * hidden),
        norm="layer",
        norm_eps=field_float(hf, "layernorm_epsilon", default=1e-5, positive=True),
        mlp="gelu_tanh",
        residual="deepnorm",
        residual_alpha=math.sqrt(2.0 * n_layers),
        positions="rotary_2d",
        rotary_dim=head_dim,
        rope_theta=10000.0,
        prefix_lm_tokens=[ids["bos_token_id"], ids["mask_token_id"], ids["gmask_token_id"]],
        max_position_embeddings=field_size(hf, "max_sequence_length", "seq_length", default=2048),
        extra={"variant": "v1"},
        **shared,
    )


def halves_order(head_dim: int) -> np.ndarray:
    """The order of a head's features that puts ChatGLM-6B's two rotary halves into the engine's one:
    THUDM pairs feature i with i + d/4 inside each half; the engine pairs j with j + d/2, so the
    middle quarters swap (the first half of the engine's frequencies turns at the token position,
    the second at the block position)."""
    q = head_dim // 4
    return np.concatenate([np.arange(0, q), np.arange(2 * q, 3 * q), np.arange(q, 2 * q), np.arange(3 * q, 4 * q)])


def _qkv(arr: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """Rows per head [q_h, k_h, v_h] -> [Q; K; V], the Q and K features of each head reordered for the
    engine's rotary (q.k is unchanged: both sides move alike)."""
    blocks = heads_to_blocks(arr, cfg.num_heads, cfg.head_dim)
    nh, hd = cfg.num_heads, cfg.head_dim
    rows = np.arange(3 * nh * hd).reshape(3, nh, hd)
    rows[:2] = rows[:2][:, :, halves_order(hd)]
    return np.ascontiguousarray(blocks[rows.reshape(-1)])


def map_hf_tensors(family: str, cfg: ModelConfig, tensors: Tensors) -> Tensors:
    def convert(internal: str, arr: np.ndarray) -> np.ndarray:
        return _qkv(arr, cfg) if ".qkv." in internal else arr
    yield from rename_tensors(family, cfg, tensors, _LAYER_NAMES, _GLOBAL_NAMES, skip=_SKIP, convert=convert)
