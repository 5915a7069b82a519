"""Model configurations are validated once, at load: a field of the wrong type or out of range, a
switch llmrt does not implement, or weights that contradict the config are an llmrt error naming
the file and the field, never a KeyError, a NumPy error, a silently ignored option or NaN logits."""
from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest
import transformers
from safetensors.numpy import load_file, save_file

from conftest import FAMILY_CLASSES, TINY_CONFIGS, build_tiny_model
from llmrt import AutoModelForCausalLM, WeightOnlyQuantConfig
from llmrt.config import ModelConfig
from llmrt.errors import ConfigError, InvalidArgumentError, LlmrtError, ModelFileError, UnsupportedError
from llmrt.models import family_for_gguf, family_for_hf

FP32 = WeightOnlyQuantConfig(weight_dtype="fp32", compute_dtype="fp32")


def hf_config(name: str, **changes) -> dict:
    """config.json of a tiny test config (no weights), with changes (None deletes a field)."""
    family, overrides = TINY_CONFIGS[name]
    overrides = dict(overrides)
    cls = getattr(transformers, FAMILY_CLASSES[family][0])
    cfg = cls(bos_token_id=1, eos_token_id=2, pad_token_id=0,
              max_position_embeddings=overrides.pop("max_position_embeddings", 512), **overrides)
    hf = json.loads(cfg.to_json_string())
    for k, v in changes.items():
        if v is None:
            hf.pop(k, None)
        else:
            hf[k] = v
    return hf


def load_config(hf: dict, source=None) -> ModelConfig:
    return family_for_hf(hf["model_type"]).config_from_hf(hf, source)


def edited_copy(tiny_models, tmp_path, name: str, config=None, tensors=None):
    """A copy of a tiny model directory with its config.json and / or tensors edited in place."""
    path, _ = tiny_models(name)
    out = tmp_path / "m"
    shutil.copytree(path, out)
    if config is not None:
        hf = json.loads((out / "config.json").read_text())
        config(hf)
        (out / "config.json").write_text(json.dumps(hf))
    if tensors is not None:
        t = load_file(str(out / "model.safetensors"))
        tensors(t)
        save_file(t, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


# ------------------------------------------------------------------ fields: type and range
@pytest.mark.parametrize("name,field,value,match", [
    ("llama-mha-untied", "rms_norm_eps", -1e-5, "'rms_norm_eps' must be greater than 0"),
    ("llama-mha-untied", "rms_norm_eps", 0.0, "'rms_norm_eps' must be greater than 0"),
    ("llama-mha-untied", "rms_norm_eps", math.nan, "'rms_norm_eps' must be a finite number"),
    ("falcon-7b", "layer_norm_epsilon", math.inf, "'layer_norm_epsilon' must be a finite number"),
    ("llama-gqa-tied", "rope_theta", 0.0, "'rope_theta' must be greater than 0"),
    ("llama-gqa-tied", "rope_theta", -10000.0, "'rope_theta' must be greater than 0"),
    ("llama-mha-untied", "num_attention_heads", 0, "'num_attention_heads' must be at least 1"),
    ("llama-mha-untied", "num_key_value_heads", 3, "num_heads (4) must be a multiple of num_kv_heads (3)"),
    ("neox-tied", "hidden_size", 97, "hidden_size (97) must be a multiple of num_attention_heads (3)"),
    ("llama-mha-untied", "vocab_size", "250", "'vocab_size' must be an integer, got '250' (a string)"),
    ("llama-mha-untied", "num_hidden_layers", 2.5, "'num_hidden_layers' must be an integer, got 2.5"),
    ("llama-mha-untied", "num_hidden_layers", True, "'num_hidden_layers' must be an integer, got True"),
    ("llama-mha-untied", "hidden_size", [64], "'hidden_size' must be an integer, got [64] (a list)"),
    ("llama-mha-untied", "intermediate_size", -96, "'intermediate_size' must be at least 1"),
    ("llama-mha-untied", "intermediate_size", 2 ** 40, "'intermediate_size' must be at most"),
    ("llama-mha-untied", "max_position_embeddings", 0, "'max_position_embeddings' must be at least 1"),
    ("mistral-window", "sliding_window", -1, "'sliding_window' must be at least 0"),
    ("qwen2-window-layers", "num_hidden_layers", 2 ** 30, "'num_hidden_layers' must be at most 65536"),
    ("llama-mha-untied", "head_dim", 1e9, "head_dim must be at most 65536, got 1000000000"),
    ("llama-mha-untied", "tie_word_embeddings", "false", "'tie_word_embeddings' must be true or false"),
    ("llama-mha-untied", "tie_word_embeddings", 0, "'tie_word_embeddings' must be true or false"),
    ("neox-pct25-parallel", "use_parallel_residual", "false", "'use_parallel_residual' must be true or false"),
    ("bigcode-mha", "multi_query", "false", "'multi_query' must be true or false"),
    ("falcon-rw-alibi", "alibi", "true", "'alibi' must be true or false"),
    ("opt-post-ln-projected", "do_layer_norm_before", "False", "'do_layer_norm_before' must be true or false"),
    ("qwen2-window-layers", "use_sliding_window", 1, "'use_sliding_window' must be true or false"),
    ("neox-pct25-parallel", "rotary_pct", 0.1875, "rotary_pct 0.1875 gives 3 rotary features"),
    ("neox-pct25-parallel", "rotary_pct", 2.0, "it must be from 0 to 1"),
    ("neox-pct25-parallel", "rotary_pct", -1e308, "rotary_pct' must be at least 0"),
    ("gptj-rot8", "rotary_dim", 7, "rotary_dim (7) must be even"),
    ("gptj-rot8", "rotary_dim", 32, "at most head_dim (16)"),
    ("llama-mha-untied", "bos_token_id", -2.5, "'bos_token_id' must be an integer"),
    ("llama-mha-untied", "eos_token_id", "2", "'eos_token_id' must be an integer"),
    ("llama-mha-untied", "hidden_act", 7, "'hidden_act' must be a string"),
    ("mpt-4heads", "attn_config", "none", "'attn_config' must be an object"),
    ("mpt-4heads", "expansion_ratio", -1, "'expansion_ratio' must be greater than 0"),
    ("qwen2-window-layers", "layer_types", "full_attention", "'layer_types' must be a list"),
    ("qwen2-window-layers", "max_window_layers", -2, "'max_window_layers' must be at least 0"),
])
def test_bad_field_is_a_config_error_naming_it(name, field, value, match):
    with pytest.raises(ConfigError, match=re.escape(match)):
        load_config(hf_config(name, **{field: value}))


@pytest.mark.parametrize("name,field", [("llama-mha-untied", "hidden_size"), ("llama-mha-untied", "vocab_size"),
                                        ("gptj-rot8", "n_layer"), ("mpt-4heads", "d_model"),
                                        ("bloom-4heads", "n_head"), ("opt-pre-ln", "num_attention_heads"),
                                        ("starcoder2-gqa-window", "intermediate_size")])
def test_missing_required_field_is_a_config_error(name, field):
    hf = hf_config(name)
    hf.pop(field)
    with pytest.raises(ConfigError, match=f"required field .*'{field}'"):
        load_config(hf)
    hf[field] = None
    with pytest.raises(ConfigError, match="missing or null"):
        load_config(hf)


@pytest.mark.parametrize("name,field,value", [
    ("mpt-6heads-clip-scale", "attn_config", {"clip_qkv": -0.5}),
    ("mpt-6heads-clip-scale", "attn_config", {"softmax_scale": 0}),
    ("mpt-6heads-clip-scale", "attn_config", {"alibi_bias_max": "8"}),
])
def test_bad_nested_field_is_a_config_error(name, field, value):
    with pytest.raises(ConfigError):
        load_config(hf_config(name, **{field: value}))


def test_integral_floats_and_negative_pad_ids_are_accepted():
    cfg = load_config(hf_config("llama-mha-untied", num_hidden_layers=2.0, pad_token_id=-1))
    assert cfg.num_layers == 2 and isinstance(cfg.num_layers, int) and cfg.pad_token_id is None


def test_llama_ignores_sliding_window_like_transformers():
    """transformers' LlamaAttention has no window (Mistral's has): a window there used to be applied."""
    assert load_config(hf_config("llama-mha-untied", use_sliding_window=True, sliding_window=4)).sliding_window == 0
    assert load_config(hf_config("mistral-window")).sliding_window == 6


def test_the_error_names_the_file_and_what_to_do():
    with pytest.raises(ConfigError) as err:
        load_config(hf_config("llama-mha-untied", rms_norm_eps=-1.0), source="/models/x/config.json")
    msg = str(err.value)
    assert msg.startswith("/models/x/config.json: 'rms_norm_eps'") and "correct it in /models/x/config.json" in msg


def test_bad_epsilon_is_refused_at_load_not_as_nan_logits(tiny_models, tmp_path):
    """A negative norm epsilon used to load and give NaN logits."""
    bad = edited_copy(tiny_models, tmp_path, "llama-mha-untied", config=lambda hf: hf.update(rms_norm_eps=-1.0))
    with pytest.raises(ConfigError, match="rms_norm_eps"):
        AutoModelForCausalLM.from_pretrained(bad, quantization_config=FP32)


def test_special_ids_outside_the_vocabulary_are_dropped_with_a_warning():
    """Published configs sometimes name a special id past the vocabulary (transformers warns): it can
    never be generated or fed, so it is ignored, loudly, instead of refusing the model."""
    cfg = ModelConfig(family="llama", vocab_size=10, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=16, intermediate_size=32, rotary_dim=16, bos_token_id=12, eos_token_id=[2, 99],
                      pad_token_id=3)
    with pytest.warns(UserWarning, match="bos_token_id 12 is outside the vocabulary of 10 tokens"):
        cfg.validate()
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (None, [2], 3)


@pytest.mark.parametrize("field,value", [("norm_eps", -1.0), ("norm_eps", math.nan), ("rope_theta", 0.0),
                                         ("num_heads", 0), ("rotary_dim", 3), ("sliding_window", -2),
                                         ("tie_word_embeddings", "false"), ("vocab_size", 10.5),
                                         ("layer_windows", [0]), ("pad_token_id", 2.5), ("positions", "sinusoid"),
                                         ("rope_scaling", {"rope_type": "yarn", "factor": 2.0}),
                                         ("rope_theta", 1e-300), ("head_dim", 10 ** 9), ("num_heads", 2 ** 31),
                                         ("num_kv_heads", 2 ** 17), ("num_layers", 2 ** 20)])
def test_model_config_validate(field, value):
    """The check every load path (HF, GGUF, .llmrt) goes through before the engine is built."""
    base = dict(family="llama", vocab_size=10, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                head_dim=16, intermediate_size=32, rotary_dim=16)
    ModelConfig(**base).validate()
    with pytest.raises(LlmrtError, match=field):
        ModelConfig(**{**base, field: value}).validate()


# ------------------------------------------------------------------ rope scaling and other switches
ROPE_FAMILIES = ["llama-mha-untied", "mistral-window", "qwen2-tied", "starcoder2-gqa-window", "neox-tied", "falcon-7b"]


@pytest.mark.parametrize("name", ROPE_FAMILIES)
@pytest.mark.parametrize("scaling,match", [
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}, "'yarn' is not supported"),
    ({"type": "dynamic", "factor": 2.0}, "'dynamic' is not supported"),
    ({"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}, "'longrope' is not supported"),
    ({"factor": 2.0}, "has no type"),
])
def test_unsupported_rope_scaling_is_refused_at_load(name, scaling, match):
    with pytest.raises(UnsupportedError, match=match):
        load_config(hf_config(name, rope_scaling=scaling))


def test_unsupported_rope_parameters_of_transformers_5_are_refused():
    params = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
    with pytest.raises(UnsupportedError, match="rope_parameters type 'yarn'"):
        load_config(hf_config("llama-mha-untied", rope_parameters=params, rope_scaling=None))


@pytest.mark.parametrize("scaling,match", [
    ({"rope_type": "linear", "factor": 0.0}, "'factor' must be greater than 0"),
    ({"rope_type": "linear"}, "required field 'factor'"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0},
     "high_freq_factor (4.0) must be greater than low_freq_factor (4.0)"),
    ({"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": "16"},
     "'original_max_position_embeddings' must be an integer"),
    ({"rope_type": 3, "factor": 2.0}, "rope_scaling.rope_type must be a string"),
])
def test_bad_rope_scaling_parameters(scaling, match):
    with pytest.raises(ConfigError, match=re.escape(match)):
        load_config(hf_config("llama-mha-untied", rope_scaling=scaling))


@pytest.mark.parametrize("name,changes,match", [
    ("llama-mha-untied", dict(hidden_act="gelu"), "hidden_act 'gelu' is not supported"),
    ("qwen2-tied", dict(hidden_act="relu"), "hidden_act 'relu' is not supported"),
    ("llama-mha-untied", dict(partial_rotary_factor=0.5), "partial_rotary_factor 0.5"),
    ("starcoder2-gqa-window", dict(partial_rotary_factor=0.5), "partial_rotary_factor 0.5"),
    ("falcon-40b", dict(partial_rotary_factor=0.25), "partial_rotary_factor 0.25"),
    ("bloom-4heads", dict(apply_residual_connection_post_layernorm=True),
     "apply_residual_connection_post_layernorm=True"),
    ("opt-pre-ln", dict(layer_norm_elementwise_affine=False), "layer_norm_elementwise_affine=False"),
    ("bigcode-mqa", dict(add_cross_attention=True), "add_cross_attention=True"),
    ("mpt-4heads", dict(norm_type="rmsnorm"), "norm_type 'rmsnorm'"),
    ("mpt-4heads", dict(attn_config={"rope": True}), "rope=True"),
    ("mpt-4heads", dict(attn_config={"qk_ln": True}), "qk_ln=True"),
    ("mpt-4heads", dict(logit_scale=0.5), "logit_scale"),
    ("mpt-4heads", dict(ffn_config={"ffn_type": "mptglu"}), "ffn_type 'mptglu'"),
    ("gptj-rot8", dict(activation_function="swiglu"), "activation_function 'swiglu' is not supported"),
    ("qwen2-window-layers", dict(layer_types=["chunked_attention"] * 3), "layer_types ['chunked_attention'"),
])
def test_unimplemented_switches_are_refused(name, changes, match):
    with pytest.raises(UnsupportedError, match=re.escape(match)):
        load_config(hf_config(name, **changes))


def test_llama_attention_and_mlp_biases_run_like_transformers(tmp_path):
    """attention_bias / mlp_bias (o_proj and gate/up/down biases) used to be refused as unexpected tensors."""
    import torch
    ref = build_tiny_model(tmp_path, "llama", dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=211,
                                                   attention_bias=True, mlp_bias=True))
    ids = [[1, 5, 9, 33, 70, 2]]
    got = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=FP32)(ids).logits
    with torch.no_grad():
        want = ref(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-3)


# ------------------------------------------------------------------ GGUF metadata
def llama_meta(**changes) -> dict:
    meta = {"general.architecture": "llama", "llama.vocab_size": 32, "llama.embedding_length": 64,
            "llama.block_count": 2, "llama.feed_forward_length": 96, "llama.attention.head_count": 4,
            "llama.attention.head_count_kv": 2, "llama.context_length": 128,
            "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.rope.freq_base": 10000.0,
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            "__tensor_names__": ("token_embd.weight", "output.weight")}
    for k, v in changes.items():
        if v is None:
            meta.pop(k)
        else:
            meta[k] = v
    return meta


@pytest.mark.parametrize("changes,match", [
    ({"llama.block_count": "2"}, "'llama.block_count' must be an integer, got '2' (a string)"),
    ({"llama.block_count": [2, 2]}, "'llama.block_count' must be an integer, got [2, 2] (a list)"),
    ({"llama.embedding_length": None}, "required field 'llama.embedding_length'"),
    ({"llama.attention.head_count": 0}, "'llama.attention.head_count' must be at least 1"),
    ({"llama.attention.head_count": [4, 4]}, "'llama.attention.head_count' must be an integer"),
    ({"llama.attention.layer_norm_rms_epsilon": math.nan}, "must be a finite number"),
    ({"llama.rope.freq_base": -1.0}, "'llama.rope.freq_base' must be greater than 0"),
    ({"llama.attention.sliding_window": "4"}, "'llama.attention.sliding_window' must be an integer"),
    ({"llama.vocab_size": None, "tokenizer.ggml.tokens": "abc"}, "'tokenizer.ggml.tokens' must be an array"),
    ({"tokenizer.ggml.eos_token_id": "40"}, "eos_token_id' must be an integer"),
    ({"llama.embedding_length": 66}, "llama.embedding_length (66) must be a multiple of"),
])
def test_malformed_gguf_metadata_is_a_config_error(changes, match):
    with pytest.raises(ConfigError, match=re.escape(match)):
        family_for_gguf("llama").config_from_gguf(llama_meta(**changes), source="m.gguf")


@pytest.mark.parametrize("changes,match", [
    ({"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0}, "'yarn' is not supported"),
    ({"__tensor_names__": ("token_embd.weight", "rope_freqs.weight")}, "rope_freqs"),
    ({"llama.expert_count": 8}, "mixture-of-experts"),
    ({"llama.rope.dimension_count": 8}, "llama.rope.dimension_count is 8"),
])
def test_unsupported_gguf_switches_are_refused_at_load(changes, match):
    with pytest.raises(UnsupportedError, match=match):
        family_for_gguf("llama").config_from_gguf(llama_meta(**changes))


def test_gguf_linear_rope_scaling_is_read():
    cfg = family_for_gguf("llama").config_from_gguf(llama_meta(**{"llama.rope.scaling.type": "linear",
                                                                  "llama.rope.scaling.factor": 4.0}))
    assert cfg.rope_scaling == {"rope_type": "linear", "factor": 4.0}


@pytest.mark.parametrize("arch", ["gptneox", "falcon", "starcoder2"])
def test_other_rotary_gguf_families_refuse_yarn(arch):
    meta = {k.replace("llama.", f"{arch}."): v for k, v in llama_meta().items()}
    meta.update({"general.architecture": arch, f"{arch}.rope.scaling.type": "yarn"})
    with pytest.raises(UnsupportedError, match="'yarn' is not supported"):
        family_for_gguf(arch).config_from_gguf(meta)


# ------------------------------------------------------------------ weights against the config
@pytest.mark.parametrize("edit,match", [
    (dict(num_hidden_layers=1), "declares 1 layers .* has tensors for 2"),
    (dict(num_hidden_layers=3), "declares 3 layers .* has tensors for 2"),
    (dict(vocab_size=300), "250 rows but the config's vocab_size is 300"),
    (dict(hidden_size=128), "does not fit its config: embedding rows have 64 values, expected 128"),
])
def test_config_contradicting_the_weights(tiny_models, tmp_path, edit, match):
    bad = edited_copy(tiny_models, tmp_path, "llama-mha-untied", config=lambda hf: hf.update(edit))
    with pytest.raises(ConfigError, match=match):
        AutoModelForCausalLM.from_pretrained(bad, quantization_config=FP32)


def test_untied_model_without_its_head_is_refused(tiny_models, tmp_path):
    """It used to be tied to the embedding silently."""
    bad = edited_copy(tiny_models, tmp_path, "llama-mha-untied", tensors=lambda t: t.pop("lm_head.weight"))
    with pytest.raises(ModelFileError, match="no output head"):
        AutoModelForCausalLM.from_pretrained(bad, quantization_config=FP32)


def test_kv_heads_contradicting_the_fused_qkv(tiny_models, tmp_path):
    """Falcon's grouped QKV with the wrong KV head count was a NumPy reshape error."""
    bad = edited_copy(tiny_models, tmp_path, "falcon-40b", config=lambda hf: hf.update(num_kv_heads=1))
    with pytest.raises(ConfigError, match="fused QKV tensor has 128 rows"):
        AutoModelForCausalLM.from_pretrained(bad, quantization_config=FP32)


@pytest.mark.parametrize("name,extra,match", [
    ("llama-mha-untied", "model.layers.0.self_attn.q_norm.weight", "q_norm"),
    # a bias the config does not declare (attention_bias false): transformers would drop it
    ("llama-mha-untied", "model.layers.0.self_attn.q_proj.bias", "q_proj.bias"),
    ("starcoder2-nobias-untied", "model.layers.0.mlp.c_fc.bias", "c_fc.bias"),
])
def test_unexpected_tensors_are_refused(tiny_models, tmp_path, name, extra, match):
    bad = edited_copy(tiny_models, tmp_path, name, tensors=lambda t: t.update({extra: np.zeros(64, np.float32)}))
    with pytest.raises(UnsupportedError, match=f"unexpected tensor .*{match}"):
        AutoModelForCausalLM.from_pretrained(bad, quantization_config=FP32)


@pytest.mark.parametrize("name,extra", [
    ("falcon-7b", "transformer.h.0.self_attention.rotary_emb.inv_freq"),
    ("bigcode-mqa", "transformer.h.0.attn.bias"),
    ("gptj-rot8", "transformer.h.0.attn.masked_bias"),
    ("neox-tied", "gpt_neox.layers.0.attention.bias"),
    ("qwen2-tied", "model.rotary_emb.inv_freq"),
])
def test_known_harmless_buffers_are_skipped(tiny_models, tmp_path, name, extra):
    bad = edited_copy(tiny_models, tmp_path, name, tensors=lambda t: t.update({extra: np.zeros(8, np.float32)}))
    AutoModelForCausalLM.from_pretrained(bad, quantization_config=FP32)


# ------------------------------------------------------------------ quantization options
@pytest.mark.parametrize("kwargs,match", [
    (dict(not_quant="false"), "not_quant 'false' (a string) is not valid"),
    (dict(use_cache=1), "use_cache 1"),
    (dict(group_size=32.5), "group_size 32.5"),
    (dict(group_size="32"), "group_size '32'"),
    (dict(alg=["sym"]), "alg ['sym']"),
    (dict(head_weight_dtype={}), "head_weight_dtype {}"),
    (dict(weight_dtype=None), "weight_dtype None"),
])
def test_quant_options_of_the_wrong_type(kwargs, match):
    with pytest.raises(InvalidArgumentError, match=re.escape(match)):
        WeightOnlyQuantConfig(**kwargs)


def test_quant_config_dict_with_an_unknown_key_is_refused(tiny_models):
    path, _ = tiny_models("llama-mha-untied")
    with pytest.raises(InvalidArgumentError, match="no option weight_dtyp"):
        AutoModelForCausalLM.from_pretrained(path, quantization_config={"weight_dtyp": "int8"})
