"""ChatGLM2-6B / ChatGLM3-6B (THUDM's remote code, model_type "chatglm"; llama.cpp's "chatglm").

Read from the checkpoint's own config.json and tensor names (no remote code runs):
- RMSNorm (layernorm_epsilon) before attention and MLP, a final RMSNorm (post_layer_norm);
- fused query_key_value with a bias (add_qkv_bias): rows [Q | K groups | V groups] with
  multi_query_attention (multi_query_group_num KV heads), else per head [q_h, k_h, v_h];
- rotary on the first kv_channels / 2 features of each head in pairs (2i, 2i+1), base 10000 x rope_ratio;
- dense_h_to_4h = [gate; up] with SiLU, dense_4h_to_h, no biases (add_bias_linear); untied output_layer.
ChatGLM-6B (v1) shares the model_type but is another architecture: its config (position_encoding_2d,
inner_hidden_size) sends it to chatglm_v1.py."""
from __future__ import annotations

from typing import Iterable, Iterator, Mapping

import numpy as np

from llmrt.config import ModelConfig
from llmrt.errors import ConfigError, UnsupportedError
from llmrt.models import chatglm_v1
from llmrt.models.base import (GGUF_MODEL_NAMES, Family, Tensors, field_bool, field_float, field_int, field_size,
                               gguf_arch, gguf_norm_eps, gguf_rope_scaling, gguf_shape_fields, heads_to_blocks,
                               hf_shared_fields, refuse_flags, register, rename_tensors, weight_and_bias)

_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attention.query_key_value.weight": "qkv.weight",
    "self_attention.dense.weight": "attn_out.weight",
    "post_attention_layernorm.weight": "mlp_norm.weight",
    "mlp.dense_h_to_4h.weight": "mlp_in.weight",          # split into gate / up below
    "mlp.dense_4h_to_h.weight": "mlp_out.weight",
}
_QKV_BIAS = {"self_attention.query_key_value.bias": "qkv.bias"}
_GLOBAL_NAMES = {"embedding.word_embeddings.weight": "embed", "final_layernorm.weight": "final_norm.weight",
                 "output_layer.weight": "lm_head.weight"}
# the rotary table buffer THUDM's checkpoints carry (recomputed from the config)
_SKIP = ("rotary_pos_emb.inv_freq",)

# llama.cpp: fused attn_qkv as [Q; K; V] (its converter copies THUDM's rows), or attn_q / attn_k / attn_v
# (GlmForCausalLM conversions), ffn_up = [gate; up] as in the checkpoint, rotary rows not permuted
_GGUF_LAYER_NAMES = {
    **weight_and_bias([("attn_qkv", "qkv"), ("attn_q", "q"), ("attn_k", "k"), ("attn_v", "v")]),
    "attn_norm.weight": "attn_norm.weight", "attn_output.weight": "attn_out.weight",
    "ffn_norm.weight": "mlp_norm.weight", "ffn_up.weight": "mlp_in.weight", "ffn_down.weight": "mlp_out.weight",
}

def _refuse_thudm_variants(hf: Mapping) -> None:
    """THUDM's packed quantized weights and P-tuning prefixes, in either version."""
    if field_int(hf, "quantization_bit", default=0, min_value=0):
        raise UnsupportedError("chatglm checkpoints with quantization_bit set hold THUDM's own packed int4 / int8 "
                               "weights, which llmrt does not read; load the fp16 checkpoint (llmrt quantizes "
                               "it to int4 / int8 itself)")
    if hf.get("pre_seq_len") is not None:
        raise UnsupportedError("chatglm with pre_seq_len (a P-tuning v2 prefix encoder: learned keys and values "
                               "before every prompt) is not supported")


def _refuse_variants(hf: Mapping, family: str) -> None:
    # rmsnorm=False: LayerNorm; the others change the residual stream or add biases llmrt does not map.
    # Accepted as no-ops: apply_query_key_layer_scaling (divides then multiplies the scores by the layer
    # number), attention_softmax_in_fp32 / fp32_residual_connection (fp16 details), original_rope (unused)
    refuse_flags(hf, family, {"rmsnorm": True, "apply_residual_connection_post_layernorm": False,
                              "add_bias_linear": False})


@register
class ChatGLM(Family):
    name = "chatglm"
    hf_model_types = ("chatglm",)
    gguf_architectures = ("chatglm",)

    @classmethod
    def hf_to_config(cls, hf: Mapping) -> ModelConfig:
        _refuse_thudm_variants(hf)
        if chatglm_v1.is_v1(hf):
            return chatglm_v1.hf_to_config(hf, cls.name)
        _refuse_variants(hf, cls.name)
        n_head = field_size(hf, "num_attention_heads")
        # THUDM's ChatGLMConfig defaults where a field is absent
        head_dim = field_size(hf, "kv_channels", default=128)
        if head_dim % 4:
            raise ConfigError(f"kv_channels ({head_dim}) must be a multiple of 4: ChatGLM rotates half of each "
                              f"head in pairs")
        grouped = field_bool(hf, "multi_query_attention", default=False)
        n_kv = field_size(hf, "multi_query_group_num", default=1) if grouped else n_head
        if n_head % n_kv:
            raise ConfigError(f"num_attention_heads ({n_head}) must be a multiple of multi_query_group_num ({n_kv})")
        shared = hf_shared_fields(hf, tie_default=False)
        shared["tie_word_embeddings"] = False     # output_layer is its own matrix; the remote code never ties it
        return ModelConfig(
            family=cls.name,
            vocab_size=field_size(hf, "padded_vocab_size"),
            hidden_size=field_size(hf, "hidden_size"),
            num_layers=field_size(hf, "num_layers", "num_hidden_layers"),
            num_heads=n_head,
            num_kv_heads=n_kv,
            head_dim=head_dim,
            intermediate_size=field_size(hf, "ffn_hidden_size"),
            norm="rms",
            norm_eps=field_float(hf, "layernorm_epsilon", default=1e-5, positive=True),
            mlp="gated_silu",
            rotary_dim=head_dim // 2,
            rotary_interleaved=True,
            # ChatGLM3-6B-32k and later: the base is scaled, positions are not
            rope_theta=10000.0 * field_float(hf, "rope_ratio", default=1.0, positive=True),
            final_norm=field_bool(hf, "post_layer_norm", default=True),
            max_position_embeddings=field_size(hf, "seq_length", default=2048),
            extra={"qkv_layout": "groups" if grouped else "heads",
                   "qkv_bias": field_bool(hf, "add_qkv_bias", default=False)},
            **shared,
        )

    @classmethod
    def map_hf_tensors(cls, cfg: ModelConfig, tensors: Tensors) -> Tensors:
        if cfg.extra.get("variant") == "v1":
            yield from chatglm_v1.map_hf_tensors(cls.name, cfg, _strip_prefixes(tensors))
            return
        per_head = cfg.extra.get("qkv_layout") == "heads"

        def convert(internal: str, arr: np.ndarray) -> np.ndarray:
            # without multi_query_attention THUDM's rows are per head [q_h, k_h, v_h]
            if per_head and ".qkv." in internal:
                return heads_to_blocks(arr, cfg.num_heads, cfg.head_dim)
            return arr
        names = {**_LAYER_NAMES, **(_QKV_BIAS if cfg.extra.get("qkv_bias", True) else {})}
        renamed = rename_tensors(cls.name, cfg, _strip_prefixes(tensors), names, _GLOBAL_NAMES, skip=_SKIP,
                                 convert=convert)
        yield from _split_gate_up(cfg, renamed)

    @classmethod
    def gguf_to_config(cls, meta: Mapping) -> ModelConfig:
        a = gguf_arch(meta)
        shape = gguf_shape_fields(meta, head_dim=field_size(meta, f"{a}.attention.key_length", default=None))
        head_dim = shape["head_dim"]
        value_dim = field_int(meta, f"{a}.attention.value_length", default=head_dim, min_value=0)
        if value_dim != head_dim:
            raise UnsupportedError(f"{a}.attention.value_length is {value_dim}, not the key width {head_dim}: "
                                   f"llmrt runs values as wide as keys")
        return ModelConfig(
            family=cls.name,
            norm="rms",
            norm_eps=gguf_norm_eps(meta, a, "layer_norm_rms_epsilon"),
            mlp="gated_silu",
            # llama.cpp runs chatglm with its "normal" rope: consecutive pairs over rope.dimension_count
            rotary_dim=field_int(meta, f"{a}.rope.dimension_count", default=head_dim // 2, min_value=2),
            rotary_interleaved=True,
            rope_theta=field_float(meta, f"{a}.rope.freq_base", default=10000.0, positive=True),
            rope_scaling=gguf_rope_scaling(meta, a),
            **shape,
        )

    @classmethod
    def map_gguf_tensors(cls, cfg: ModelConfig, tensors: Iterable[tuple[str, np.ndarray, object]]
                         ) -> Iterator[tuple[str, np.ndarray, object]]:
        renamed = rename_tensors("chatglm GGUF", cfg, tensors, _GGUF_LAYER_NAMES, GGUF_MODEL_NAMES)
        yield from _split_gate_up(cfg, renamed)


def _strip_prefixes(tensors: Tensors) -> Tensors:
    """transformer.encoder.layers.{i}.* -> layers.{i}.*, transformer.* -> * (base-model checkpoints
    lack "transformer.")."""
    for name, arr in tensors:
        short = name.removeprefix("transformer.")
        yield short.removeprefix("encoder."), arr


def _split_gate_up(cfg: ModelConfig, items: Iterable[tuple]) -> Iterator[tuple]:
    """mlp_in rows [gate; up] (torch.chunk(2) then silu(first) * second, llama.cpp's SWIGLU) -> gate, up.
    Row slices keep GGUF's quantized blocks as they are (a block never spans two rows)."""
    for item in items:
        internal, arr, rest = item[0], item[1], item[2:]
        if not internal.endswith(".mlp_in.weight"):
            yield item
            continue
        ff = cfg.intermediate_size
        if arr.ndim != 2 or arr.shape[0] != 2 * ff:
            raise ConfigError(f"{internal} has {arr.shape[0] if arr.ndim else 0} rows, but ffn_hidden_size "
                              f"{ff} gives 2 x {ff} ([gate; up]); the config does not match the checkpoint")
        stem = internal[: -len("mlp_in.weight")]
        yield (stem + "gate.weight", arr[:ff], *rest)
        yield (stem + "up.weight", arr[ff:], *rest)
