"""Qwen v1 (Qwen-1.8B / 7B / 14B / 72B, remote code QWenLMHeadModel): RMSNorm, one fused c_attn
[Q; K; V] with biases, NeoX rotary on the first int(kv_channels * rotary_pct) features of each head,
a SwiGLU MLP c_proj(w1(x) * silu(w2(x))) as wide as half of intermediate_size, an untied head.

llmrt reads the checkpoint's own config.json and tensor names; no remote code is run.

use_dynamic_ntk and use_logn_attn (on in every published Qwen v1, and Qwen's defaults) change the
arithmetic only past seq_length tokens: a first forward longer than seq_length rotates its sequence at
a raised base (ModelConfig.dynamic_ntk_from), and queries at positions >= seq_length are scaled by
log_seq_length(position + 1) (ModelConfig.logn_attn_from); the engine does both.

GGUF (llama.cpp's `qwen`): llama.cpp runs neither of them, so llmrt runs the file as llama.cpp does."""
from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np

from llmrt.config import ModelConfig
from llmrt.errors import ConfigError
from llmrt.models.base import (Family, Tensors, field_bool, field_float, field_int, field_size, gguf_arch,
                               gguf_norm_eps, gguf_rope_scaling, gguf_shape_fields, head_dim_of, hf_shared_fields,
                               refuse_flags, register, rename_tensors, weight_and_bias)

# Qwen's MLP is c_proj(w1(x) * silu(w2(x))): w2 is the gated (SiLU) branch, w1 the linear one
_HF_LAYER_NAMES = {
    "ln_1.weight": "attn_norm.weight",
    "attn.c_attn.weight": "qkv.weight",      # rows already [Q; K; V]: split at hidden_size, heads in order
    "attn.c_attn.bias": "qkv.bias",           # nn.Linear's default bias: always there
    "attn.c_proj.weight": "attn_out.weight",
    "ln_2.weight": "mlp_norm.weight",
    "mlp.w1.weight": "up.weight",
    "mlp.w2.weight": "gate.weight",
    "mlp.c_proj.weight": "mlp_out.weight",
}
# only with no_bias=false (no published checkpoint): the other linear layers' biases
_HF_BIASES = {"attn.c_proj.bias": "attn_out.bias", "mlp.w1.bias": "up.bias", "mlp.w2.bias": "gate.bias",
              "mlp.c_proj.bias": "mlp_out.bias"}
_HF_GLOBAL = {"wte.weight": "embed", "ln_f.weight": "final_norm.weight", "lm_head.weight": "lm_head.weight"}
# mask buffers of early revisions of the remote code (rotary inv_freq is skipped for every family)
_SKIP = ("attn.masked_bias", "attn.bias")

# llama.cpp's LLM_ARCH_QWEN tensors: exactly these (its loader refuses others)
_GGUF_LAYER_NAMES = {"attn_norm.weight": "attn_norm.weight", **weight_and_bias([("attn_qkv", "qkv")]),
                     "attn_output.weight": "attn_out.weight", "ffn_norm.weight": "mlp_norm.weight",
                     "ffn_up.weight": "up.weight", "ffn_gate.weight": "gate.weight",
                     "ffn_down.weight": "mlp_out.weight"}
_GGUF_GLOBAL = {"token_embd.weight": "embed", "output_norm.weight": "final_norm.weight",
                "output.weight": "lm_head.weight"}

# the switches that act past seq_length; Qwen's config defaults both to true
LONG_CONTEXT_FLAGS = ("use_dynamic_ntk", "use_logn_attn")


def _rotary_dim(head_dim: int, pct: float) -> int:
    """Qwen's int(kv_channels * rotary_pct) (the whole head at 1.0), which must be even: the
    features rotate in pairs (Qwen asserts rotary_pct < 1 otherwise)."""
    rot = int(head_dim * pct) if 0 <= pct <= 1 else -1
    if rot < 0 or rot % 2:
        raise ConfigError(f"rotary_pct {pct} gives {rot} rotary features of the {head_dim} per head; it must be "
                          f"from 0 to 1 and give an even number")
    return rot


@register
class Qwen(Family):
    name = "qwen"
    hf_model_types = ("qwen",)
    gguf_architectures = ("qwen",)

    @classmethod
    def hf_to_config(cls, hf: Mapping) -> ModelConfig:
        # int8 KV caches change the attention's arithmetic; the other switches (use_flash_attn,
        # bf16 / fp16 / fp32, softmax_in_fp32) only pick kernels and precision
        refuse_flags(hf, cls.name, {"use_cache_quantization": False})
        hidden, n_head = field_size(hf, "hidden_size"), field_size(hf, "num_attention_heads")
        head_dim = head_dim_of(hidden, n_head, "hidden_size", "num_attention_heads")
        # Qwen splits c_attn at hidden_size and sizes c_attn / c_proj by kv_channels * heads, so its
        # code runs only when the two agree
        kv_channels = field_size(hf, "kv_channels", default=head_dim)
        if kv_channels != head_dim:
            raise ConfigError(f"kv_channels ({kv_channels}) must equal hidden_size / num_attention_heads "
                              f"({head_dim}): Qwen's attention splits its QKV at hidden_size")
        width = field_size(hf, "intermediate_size")
        if width % 2:
            raise ConfigError(f"intermediate_size ({width}) must be even: Qwen's w1 and w2 are each half of it")
        flags = {f: field_bool(hf, f, default=True) for f in LONG_CONTEXT_FLAGS}
        seq_length = field_size(hf, "seq_length") if any(flags.values()) else 0
        extra: dict = {"biases": not field_bool(hf, "no_bias", default=True)}
        return ModelConfig(
            family=cls.name,
            vocab_size=field_size(hf, "vocab_size"),
            hidden_size=hidden,
            num_layers=field_size(hf, "num_hidden_layers"),
            num_heads=n_head,
            num_kv_heads=n_head,
            head_dim=head_dim,
            intermediate_size=width // 2,
            norm="rms",
            norm_eps=field_float(hf, "layer_norm_epsilon", default=1e-6, positive=True),
            mlp="gated_silu",
            rotary_dim=_rotary_dim(head_dim, field_float(hf, "rotary_pct", default=1.0)),
            rope_theta=field_float(hf, "rotary_emb_base", default=10000.0, positive=True),
            max_position_embeddings=field_size(hf, "max_position_embeddings", default=8192),
            logn_attn_from=seq_length if flags["use_logn_attn"] else 0,
            dynamic_ntk_from=seq_length if flags["use_dynamic_ntk"] else 0,
            extra=extra,
            **hf_shared_fields(hf, tie_default=False),
        )

    @classmethod
    def map_hf_tensors(cls, cfg: ModelConfig, tensors: Tensors) -> Tensors:
        names = {**_HF_LAYER_NAMES, **(_HF_BIASES if cfg.extra.get("biases") else {})}
        yield from rename_tensors(cls.name, cfg, tensors, names, _HF_GLOBAL, prefix="transformer.", skip=_SKIP)

    @classmethod
    def gguf_to_config(cls, meta: Mapping) -> ModelConfig:
        a = gguf_arch(meta)
        shape = gguf_shape_fields(meta)
        # llama.cpp's converter writes the HF intermediate_size; its qwen graph runs half of it
        width = shape["intermediate_size"]
        if width % 2:
            raise ConfigError(f"{a}.feed_forward_length ({width}) must be even: llama.cpp's qwen MLP is half of it")
        shape["intermediate_size"] = width // 2
        return ModelConfig(
            family=cls.name,
            norm="rms",
            norm_eps=gguf_norm_eps(meta, a, "layer_norm_rms_epsilon"),
            mlp="gated_silu",
            rotary_dim=field_int(meta, f"{a}.rope.dimension_count", default=shape["head_dim"], min_value=0),
            rope_theta=field_float(meta, f"{a}.rope.freq_base", default=10000.0, positive=True),
            rope_scaling=gguf_rope_scaling(meta, a),
            **shape,
        )

    @classmethod
    def map_gguf_tensors(cls, cfg: ModelConfig, tensors: Iterable[tuple[str, np.ndarray, object]]
                         ) -> Iterator[tuple[str, np.ndarray, object]]:
        # llama.cpp runs qwen with NeoX rotary and [Q; K; V] rows: nothing to reorder
        yield from rename_tensors("qwen GGUF", cfg, tensors, _GGUF_LAYER_NAMES, _GGUF_GLOBAL)
