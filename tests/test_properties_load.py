"""Property tests of the load options: whatever the quantization options, the config.json fields or
the from_pretrained keywords, llmrt either loads a valid model or raises its own clear error (an
LlmrtError, or a TypeError for an unknown keyword) naming what is wrong, never another exception."""
from __future__ import annotations

import json
import math
import string

import numpy as np
import pytest
import transformers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FAMILY_CLASSES, TINY_CONFIGS
from llmrt import AutoModelForCausalLM, WeightOnlyQuantConfig
from llmrt.config import ModelConfig
from llmrt.errors import LlmrtError
from llmrt.models import family_for_hf

PROPERTY = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                             HealthCheck.too_slow])

# ------------------------------------------------------------------ values
_FLOATS = st.sampled_from([0.0, -0.0, -1.0, 1e-6, 0.5, 1.0, 2.0, 1e308, -1e308, math.nan, math.inf, -math.inf, 1e-300])
JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.sampled_from([0, -1, 1, 2, 3, 4, 7, 64, 2 ** 31]),
    _FLOATS, st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "false", "true", "12", "int4", "sym", "linear", "yarn", "gelu", "nan"]),
    st.text(max_size=8), st.lists(st.integers(-3, 300), max_size=3),
    st.dictionaries(st.sampled_from(["type", "rope_type", "factor", "alibi", "clip_qkv"]),
                    st.one_of(st.none(), st.integers(-2, 9), _FLOATS, st.sampled_from(["linear", "llama3", "yarn"])),
                    max_size=3),
)


# ------------------------------------------------------------------ (a) WeightOnlyQuantConfig
_QUANT_CHOICES = {
    "weight_dtype": ["int4", "int8", "fp32", "int4_clip", "INT8", "float32"], "alg": ["sym", "asym"],
    "group_size": [32, 64, 128, -1, 48, 0], "scale_dtype": ["fp32", "bf16", "fp16"],
    "compute_dtype": ["int8", "fp32", "bf16"], "not_quant": [True, False], "use_cache": [True, False],
    "head_weight_dtype": [None, "int4", "int8", "fp32"], "head_compute_dtype": [None, "int8", "fp32", "bf16"],
    "activation_precision": ["int8", "auto", "high"],
}
_QUANT_KEYS = st.sampled_from([*_QUANT_CHOICES, "group", "bits", "quant_method"])


@st.composite
def quant_options(draw) -> dict:
    keys = draw(st.lists(_QUANT_KEYS, max_size=6, unique=True))
    return {k: draw(st.sampled_from(_QUANT_CHOICES[k]) if k in _QUANT_CHOICES and draw(st.booleans()) else JUNK)
            for k in keys}


def names_an_option(exc: BaseException, options: dict) -> bool:
    return any(str(k) in str(exc) for k in options)


@PROPERTY
@given(quant_options())
def test_quant_config_is_valid_or_refused_naming_the_option(options):
    try:
        q = WeightOnlyQuantConfig(**options)
    except (LlmrtError, TypeError) as exc:
        assert names_an_option(exc, options), exc
        return
    assert q.weight_dtype in ("int4", "int8", "fp32") and q.alg in ("sym", "asym")
    assert type(q.group_size) is int and (q.group_size == -1 or (q.group_size > 0 and q.group_size % 32 == 0))
    assert isinstance(q.not_quant, bool) and isinstance(q.use_cache, bool)
    assert q.head_dtype in ("int4", "int8", "fp32") and q.head_compute in ("int8", "fp32", "bf16")
    assert WeightOnlyQuantConfig.from_dict(q.to_dict()) == q
    q.weights_key()


# ------------------------------------------------------------------ (b) config.json mutations
def _tiny_hf(name: str) -> dict:
    family, overrides = TINY_CONFIGS[name]
    overrides = dict(overrides)
    cls = getattr(transformers, FAMILY_CLASSES[family][0])
    cfg = cls(bos_token_id=1, eos_token_id=2, pad_token_id=0,
              max_position_embeddings=overrides.pop("max_position_embeddings", 512), **overrides)
    return json.loads(cfg.to_json_string())


HF_CONFIGS = {name: _tiny_hf(name) for name in TINY_CONFIGS}
# fields some family reads that the tiny configs may lack
_EXTRA_FIELDS = ["rope_scaling", "rope_parameters", "partial_rotary_factor", "head_dim", "sliding_window",
                 "use_sliding_window", "layer_types", "max_window_layers", "attention_bias", "mlp_bias", "rotary_pct",
                 "rotary_emb_base", "attn_config", "ffn_config", "norm_type", "logit_scale", "alibi", "multi_query",
                 "new_decoder_architecture", "num_ln_in_parallel_attn", "num_kv_heads", "parallel_attn", "bias",
                 "use_bias", "enable_bias", "add_cross_attention", "expansion_ratio", "word_embed_proj_dim",
                 "apply_residual_connection_post_layernorm", "layer_norm_elementwise_affine", "scale_attn_weights",
                 "n_inner", "ffn_hidden_size", "rotary_dim"]


@st.composite
def mutated_config(draw) -> dict:
    name = draw(st.sampled_from(sorted(HF_CONFIGS)))
    hf = json.loads(json.dumps(HF_CONFIGS[name]))
    fields = sorted(k for k in hf if k != "model_type") + _EXTRA_FIELDS
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from(fields))
        op = draw(st.sampled_from(["drop", "junk", "junk", "scale", "nested"]))
        if op == "drop":
            hf.pop(key, None)
        elif op == "scale" and isinstance(hf.get(key), (int, float)) and not isinstance(hf.get(key), bool):
            hf[key] = hf[key] * draw(st.sampled_from([0, -1, 0.5, 1.5, 2, 3, 1e9]))
        elif op == "nested" and isinstance(hf.get(key), dict):
            inner = dict(hf[key])
            inner[draw(st.sampled_from([*inner, "type", "factor", "alibi", "clip_qkv"] or ["type"]))] = draw(JUNK)
            hf[key] = inner
        else:
            hf[key] = draw(JUNK)
    return hf


def check_engine_ready(cfg: ModelConfig) -> None:
    """What a valid config must give: the block spec, and the same config after an .llmrt round trip."""
    spec = cfg.block_spec()
    assert np.isfinite(spec.inv_freq).all() and spec.norm_eps > 0
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))).validate() == cfg


@PROPERTY
@given(mutated_config())
def test_mutated_config_json_loads_or_raises_an_llmrt_error(hf):
    try:
        cfg = family_for_hf(hf["model_type"]).config_from_hf(hf, "config.json")
    except LlmrtError as exc:
        assert str(exc).startswith("config.json: ")
        return
    check_engine_ready(cfg)


# ------------------------------------------------------------------ (c) from_pretrained keywords
_OPTION_VALUES = {
    "load_in_4bit": st.booleans(), "load_in_8bit": st.booleans(), "use_cache": st.one_of(st.none(), st.booleans()),
    "trust_remote_code": st.booleans(), "progress": st.just(False),
    "compute_dtype": st.one_of(st.sampled_from([None, "int8", "fp32", "bf16"]), JUNK),
    "memory_dtype": st.one_of(st.sampled_from([None, "f16", "f32"]), JUNK),
    "max_chunk": st.one_of(st.sampled_from([1, 2, 7, 128, 4096]), st.integers(-3, 5000), JUNK),
    "quantization_config": st.one_of(st.none(), quant_options(),
                                     quant_options().map(lambda o: _maybe_config(o))),
}


def _maybe_config(options: dict):
    try:
        return WeightOnlyQuantConfig(**options)
    except (LlmrtError, TypeError):
        return None


_UNKNOWN = st.text(string.ascii_lowercase + "_", min_size=3, max_size=10).filter(
    lambda s: s not in _OPTION_VALUES and s not in ("torch_dtype", "dtype", "device_map", "low_cpu_mem_usage",
                                                    "revision", "model_type", "cache_dir", "gguf_file", "verify"))


@st.composite
def load_options(draw) -> dict:
    keys = draw(st.lists(st.sampled_from(sorted(_OPTION_VALUES)), max_size=5, unique=True))
    kwargs = {k: draw(_OPTION_VALUES[k]) for k in keys}
    if draw(st.integers(0, 9)) == 0:
        kwargs[draw(_UNKNOWN)] = draw(JUNK)
    return kwargs


@pytest.mark.parametrize("kwargs", [dict(load_in_8bit="false"), dict(quantization_config=5)])
def test_mistyped_load_options_are_refused(tiny_dir, kwargs):
    with pytest.raises(LlmrtError, match=next(iter(kwargs))):
        AutoModelForCausalLM.from_pretrained(tiny_dir, progress=False, **kwargs)


@pytest.fixture(scope="module")
def tiny_dir(tiny_models):
    return tiny_models("llama-gqa-tied")[0]


@PROPERTY
@given(load_options())
def test_from_pretrained_options_load_or_raise_a_clear_error(tiny_dir, tmp_path_factory, kwargs):
    if kwargs.get("use_cache") or getattr(kwargs.get("quantization_config"), "use_cache", False):
        kwargs = {**kwargs, "cache_dir": tmp_path_factory.getbasetemp() / "llmrt-cache"}
    try:
        model = AutoModelForCausalLM.from_pretrained(tiny_dir, progress=False, **kwargs)
    except (ValueError, TypeError) as exc:      # LlmrtError is a ValueError; model.py raises some plain ones
        qc = kwargs.get("quantization_config")
        nested = qc if isinstance(qc, dict) else qc.to_dict() if isinstance(qc, WeightOnlyQuantConfig) else {}
        assert names_an_option(exc, {**kwargs, **nested}), exc
        return
    q = model.quant_config
    qc = kwargs.get("quantization_config")
    if kwargs.get("load_in_8bit") and qc is None:
        assert q.weight_dtype == "int8"
    if kwargs.get("compute_dtype") is not None:
        assert q.compute_dtype == kwargs["compute_dtype"]
    if kwargs.get("memory_dtype") is not None:
        assert model.memory_dtype == kwargs["memory_dtype"]
    logits = model([[1, 5, 9]]).logits
    assert logits.shape == (1, 3, model.vocab_size) and np.isfinite(logits).all()
