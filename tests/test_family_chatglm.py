"""ChatGLM2 / ChatGLM3 (model_type "chatglm", THUDM's remote-code checkpoints) against transformers'
GlmForCausalLM on the same weights.

Tiny checkpoints are written the way THUDM publishes them: config.json with ChatGLMConfig's field
names, safetensors with ChatGLMForConditionalGeneration's tensor names (fused [Q | K | V] rows with
their bias, [gate; up] rows, the rotary buffer), plus remote-code files that raise if executed.  The
reference is GlmForCausalLM (model_type "glm") with the weights split back: its rotary runs on the
first half of each head in pairs (partial_rotary_factor 0.5), like ChatGLM's.  GGUF files are written
as llama.cpp's convert_hf_to_gguf.py ChatGLMModel writes them (the gguf package's name map)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers
from gguf.quants import dequantize as gg_dequantize
from gguf.quants import quantize as gg_quantize
from safetensors.numpy import load_file, save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LogitsProcessor, PreTrainedTokenizerFast

from conftest import max_rel_err
from test_chat import CountingEngine
from llmrt import AutoModelForCausalLM, WeightOnlyQuantConfig
from llmrt.errors import UnsupportedError
from llmrt.model import Model
from llmrt.models.chatglm import ChatGLM
from test_parity import _check_quantized_twin

FP32 = WeightOnlyQuantConfig(weight_dtype="fp32", compute_dtype="fp32")

# THUDM's config.json as published for chatglm2-6b / chatglm3-6b (sizes overridden per config below)
THUDM_BASE = {
    "model_type": "chatglm", "architectures": ["ChatGLMModel"],
    "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                 "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
                 "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"},
    "add_bias_linear": False, "add_qkv_bias": True, "apply_query_key_layer_scaling": True,
    "apply_residual_connection_post_layernorm": False, "attention_dropout": 0.0, "attention_softmax_in_fp32": True,
    "bias_dropout_fusion": True, "fp32_residual_connection": False, "hidden_dropout": 0.0, "layernorm_epsilon": 1e-5,
    "multi_query_attention": True, "original_rope": True, "post_layer_norm": True, "rmsnorm": True,
    "seq_length": 512, "use_cache": True, "torch_dtype": "float32", "tie_word_embeddings": False,
    "eos_token_id": 2, "pad_token_id": 0, "quantization_bit": 0, "pre_seq_len": None, "prefix_projection": False,
}
CONFIGS = {
    # ChatGLM2-6B's shape: 2 KV groups, QKV bias
    "glm2-groups2": dict(hidden_size=64, num_attention_heads=4, kv_channels=16, multi_query_group_num=2,
                         ffn_hidden_size=96, num_layers=2, padded_vocab_size=251),
    # ChatGLM3-6B-32k's rope_ratio, one KV group
    "glm3-32k-groups1": dict(hidden_size=96, num_attention_heads=6, kv_channels=16, multi_query_group_num=1,
                             ffn_hidden_size=128, num_layers=3, padded_vocab_size=263, rope_ratio=50),
    # no multi_query_attention (per-head QKV rows), no bias, heads wider than hidden / heads
    "glm-mha-nobias": dict(hidden_size=64, num_attention_heads=4, kv_channels=32, multi_query_attention=False,
                           ffn_hidden_size=64, num_layers=2, padded_vocab_size=241, add_qkv_bias=False,
                           rope_ratio=2.5, layernorm_epsilon=1e-6),
    # no final norm (post_layer_norm=False), 2 groups without bias
    "glm-no-final-norm": dict(hidden_size=64, num_attention_heads=4, kv_channels=16, multi_query_group_num=2,
                              ffn_hidden_size=96, num_layers=2, padded_vocab_size=229, add_qkv_bias=False,
                              post_layer_norm=False),
    # one layer: its cached K / V depend only on token and position (the StreamingLLM ring's reference)
    "glm-1layer": dict(hidden_size=64, num_attention_heads=4, kv_channels=16, multi_query_group_num=2,
                       ffn_hidden_size=96, num_layers=1, padded_vocab_size=150, rope_ratio=3),
}
MAIN = ["glm2-groups2", "glm3-32k-groups1", "glm-mha-nobias"]
REMOTE_CODE = 'raise RuntimeError("remote code was executed")\n'
ERRORS: dict[str, float] = {}       # measured max errors, printed at the end of the module


def _reference(f: dict) -> transformers.GlmForCausalLM:
    n_head = f["num_attention_heads"]
    n_kv = f["multi_query_group_num"] if f["multi_query_attention"] else n_head
    cfg = transformers.GlmConfig(
        vocab_size=f["padded_vocab_size"], hidden_size=f["hidden_size"], intermediate_size=f["ffn_hidden_size"],
        num_hidden_layers=f["num_layers"], num_attention_heads=n_head, num_key_value_heads=n_kv,
        head_dim=f["kv_channels"], rms_norm_eps=f["layernorm_epsilon"], attention_bias=f["add_qkv_bias"],
        max_position_embeddings=f["seq_length"], tie_word_embeddings=False, initializer_range=0.1,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0 * f.get("rope_ratio", 1),
                         "partial_rotary_factor": 0.5},
        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return transformers.GlmForCausalLM(cfg).float().eval()


def _fused_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, f: dict) -> np.ndarray:
    """THUDM's rows: [Q | K groups | V groups] with multi_query_attention, else [q_h, k_h, v_h] per head."""
    if f["multi_query_attention"]:
        return torch.cat([q, k, v]).numpy()
    hd = f["kv_channels"]
    per = [t.reshape(f["num_attention_heads"], hd, *t.shape[1:]) for t in (q, k, v)]
    return torch.stack(per, 1).reshape(-1, *q.shape[1:]).numpy()


def _thudm_tensors(ref, f: dict) -> dict[str, np.ndarray]:
    sd = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    out = {"transformer.embedding.word_embeddings.weight": sd["model.embed_tokens.weight"].numpy(),
           "transformer.output_layer.weight": sd["lm_head.weight"].numpy(),
           # the remote code's rotary buffer (dim = kv_channels / 2)
           "transformer.rotary_pos_emb.inv_freq": 1.0 / (10000 ** (np.arange(0, f["kv_channels"] // 2, 2,
                                                                              dtype=np.float32)
                                                                    / (f["kv_channels"] // 2)))}
    if f["post_layer_norm"]:
        out["transformer.encoder.final_layernorm.weight"] = sd["model.norm.weight"].numpy()
    for i in range(f["num_layers"]):
        p, t = f"model.layers.{i}.", f"transformer.encoder.layers.{i}."
        a = p + "self_attn."
        out[t + "input_layernorm.weight"] = sd[p + "input_layernorm.weight"].numpy()
        out[t + "self_attention.query_key_value.weight"] = _fused_qkv(
            sd[a + "q_proj.weight"], sd[a + "k_proj.weight"], sd[a + "v_proj.weight"], f)
        if f["add_qkv_bias"]:
            out[t + "self_attention.query_key_value.bias"] = _fused_qkv(
                sd[a + "q_proj.bias"], sd[a + "k_proj.bias"], sd[a + "v_proj.bias"], f)
        out[t + "self_attention.dense.weight"] = sd[a + "o_proj.weight"].numpy()
        out[t + "post_attention_layernorm.weight"] = sd[p + "post_attention_layernorm.weight"].numpy()
        out[t + "mlp.dense_h_to_4h.weight"] = sd[p + "mlp.gate_up_proj.weight"].numpy()     # [gate; up] both
        out[t + "mlp.dense_4h_to_h.weight"] = sd[p + "mlp.down_proj.weight"].numpy()
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def build_chatglm(path: Path, name: str, seed: int = 0):
    """Write a THUDM-layout checkpoint of CONFIGS[name]; returns (its config fields, the reference)."""
    f = {**THUDM_BASE, **CONFIGS[name]}
    torch.manual_seed(seed)
    ref = _reference(f)
    with torch.no_grad():          # norms and biases away from their trivial init, so they are tested too
        for _, p in ref.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    if not f["post_layer_norm"]:
        ref.model.norm = torch.nn.Identity()
    save_file(_thudm_tensors(ref, f), str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(f, indent=2))
    for remote in ("configuration_chatglm.py", "modeling_chatglm.py"):
        (path / remote).write_text(REMOTE_CODE)
    return f, ref


@pytest.fixture(scope="module")
def glm(tmp_path_factory):
    """name -> (directory, torch reference); also usable as conftest's tiny_models getter."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            d = tmp_path_factory.mktemp(name)
            cache[name] = (d, build_chatglm(d, name)[1])
        return cache[name]
    return get


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print("\nchatglm measured errors: " + ", ".join(f"{k} {v:.2e}" for k, v in sorted(ERRORS.items())))


def _load(path, **kw) -> Model:
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=FP32, memory_dtype="f32",
                                                trust_remote_code=True, progress=False, **kw)


def _prompt(vocab: int, n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, vocab, size=(1, n))


def _hf_logits(ref, ids) -> np.ndarray:
    with torch.no_grad():
        return ref(torch.as_tensor(np.asarray(ids)).reshape(1, -1)).logits[0].numpy()


def _hf(ref, ids: np.ndarray, **kw) -> np.ndarray:
    with torch.no_grad():
        return ref.generate(torch.from_numpy(np.asarray(ids)), do_sample=False, pad_token_id=0, **kw).numpy()


# ---------------------------------------------------------------------------------- parity, fp32
@pytest.mark.parametrize("name", MAIN + ["glm-no-final-norm"])
def test_fp32_logits_match_the_glm_reference(glm, name):
    path, ref = glm(name)
    model = _load(path)
    assert model.config.family == "chatglm" and model.memory_dtype == "f32"
    ids = _prompt(ref.config.vocab_size, 24)
    got, want = model(ids).logits[0], _hf_logits(ref, ids)
    err = max_rel_err(got, want)
    ERRORS[f"logits {name}"] = err
    assert err <= 1e-4, err


@pytest.mark.parametrize("name", MAIN)
def test_fp32_greedy_32_tokens_match_the_glm_reference(glm, name):
    path, ref = glm(name)
    ids = _prompt(ref.config.vocab_size, 5, seed=2)
    want = _hf(ref, ids, max_new_tokens=32, min_new_tokens=32, eos_token_id=None)
    np.testing.assert_array_equal(_load(path).generate(ids, max_new_tokens=32, eos_token_id=None), want)


def test_config_fields_are_read_as_thudm_names_them(glm):
    path, _ = glm("glm3-32k-groups1")
    cfg = _load(path).config
    assert (cfg.vocab_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size,
            cfg.max_position_embeddings) == (263, 3, 6, 1, 16, 128, 512)
    assert (cfg.rotary_dim, cfg.rotary_interleaved, cfg.rope_theta, cfg.tie_word_embeddings) == (8, True, 5e5, False)


def test_wrong_mappings_fail_the_comparison(glm):
    """The comparison above would catch a wrong layout: rotary in NeoX halves instead of pairs, over
    the whole head instead of half of it, Q and K rows swapped, gate and up swapped."""
    path, ref = glm("glm-mha-nobias")
    good = _load(path)
    ids = _prompt(ref.config.vocab_size, 24)
    want = _hf_logits(ref, ids)
    t, cfg, hd = good._tensors, good.config, good.config.head_dim

    def qk_swapped(arr):
        n = cfg.num_heads * hd
        return np.concatenate([arr[n:2 * n], arr[:n], arr[2 * n:]])
    variants = {
        "rotary halves": (dataclasses.replace(cfg, rotary_interleaved=False), t),
        "rotary whole head": (dataclasses.replace(cfg, rotary_dim=hd), t),
        "q/k swapped": (cfg, {n: ((qk_swapped(a), f) if n.endswith(".qkv.weight") else (a, f))
                              for n, (a, f) in t.items()}),
        "gate/up swapped": (cfg, {n.replace(".gate.", ".tmp.").replace(".up.", ".gate.").replace(".tmp.", ".up."): v
                                  for n, v in t.items()}),
    }
    for what, (c, tensors) in variants.items():
        err = max_rel_err(Model(c, FP32, tensors, good.source, "f32")(ids).logits[0], want)
        ERRORS[f"wrong mapping: {what}"] = err
        assert err > 1e-2, (what, err)


# ------------------------------------------------------------------------------------- quantized
@pytest.mark.parametrize("weight_dtype,alg,group,scale,compute,tol", [
    ("int8", "sym", 32, "fp32", "fp32", 1e-4), ("int4", "sym", 32, "fp32", "fp32", 1e-4),
    ("int4", "asym", 32, "bf16", "int8", 3e-2), ("int8", "sym", -1, "fp32", "int8", 3e-2)])
@pytest.mark.parametrize("name", ["glm2-groups2", "glm-mha-nobias"])
def test_quantized_equals_its_dequantized_twin(glm, name, weight_dtype, alg, group, scale, compute, tol):
    _check_quantized_twin(glm, name, weight_dtype, alg, group, scale, compute, tol)


# ------------------------------------------------------------------------------------- refusals
V1_CONFIG = {"architectures": ["ChatGLMModel"], "bos_token_id": 130004, "eos_token_id": 130005,
             "mask_token_id": 130000, "gmask_token_id": 130001, "pad_token_id": 3, "hidden_size": 4096,
             "inner_hidden_size": 16384, "layernorm_epsilon": 1e-05, "max_sequence_length": 2048,
             "model_type": "chatglm", "num_attention_heads": 32, "num_layers": 28, "position_encoding_2d": True,
             "quantization_bit": 0, "pre_seq_len": None, "prefix_projection": False, "torch_dtype": "float16",
             "use_cache": True, "vocab_size": 130528}


def test_chatglm_v1_config_is_told_apart_from_v2():
    """ChatGLM-6B's published config runs as v1 (tests/test_family_chatglm_v1.py); a config with neither
    version's own fields is v1 too (v2 always has multi_query_group_num / padded_vocab_size / kv_channels)."""
    cfg = ChatGLM.config_from_hf(V1_CONFIG)
    assert (cfg.extra["variant"], cfg.residual, cfg.positions, cfg.norm, cfg.mlp) == (
        "v1", "deepnorm", "rotary_2d", "layer", "gelu_tanh")
    assert (cfg.num_layers, cfg.head_dim, cfg.intermediate_size, cfg.vocab_size) == (28, 128, 16384, 130528)
    assert cfg.prefix_lm_tokens == [130004, 130000, 130001] and cfg.residual_alpha == pytest.approx(56 ** 0.5)
    bare = {k: v for k, v in V1_CONFIG.items() if k not in ("position_encoding_2d", "inner_hidden_size")}
    assert ChatGLM.config_from_hf(bare).extra["variant"] == "v1"
    with pytest.raises(UnsupportedError, match="position_encoding_2d"):
        ChatGLM.config_from_hf(dict(V1_CONFIG, position_encoding_2d=False))


@pytest.mark.parametrize("change,match", [
    (dict(rmsnorm=False), "rmsnorm"),
    (dict(apply_residual_connection_post_layernorm=True), "apply_residual_connection_post_layernorm"),
    (dict(add_bias_linear=True), "add_bias_linear"),
    (dict(quantization_bit=4), "quantization_bit"),
    (dict(pre_seq_len=16, prefix_projection=False), "pre_seq_len"),
])
def test_variants_that_change_the_math_are_refused(change, match):
    f = {**THUDM_BASE, **CONFIGS["glm2-groups2"], **change}
    with pytest.raises(UnsupportedError, match=match):
        ChatGLM.config_from_hf(f)


JUNK = [None, "x", -1, 0, 3, 2.5, 1e12, True, [4], {"a": 1}]


def test_junk_in_any_field_loads_or_raises_an_llmrt_error():
    """Every THUDM field set to junk values: a valid config or an LlmrtError naming config.json."""
    from llmrt.errors import LlmrtError
    base = {**THUDM_BASE, **CONFIGS["glm2-groups2"], "rope_ratio": 1}
    for key in sorted(base):
        for value in JUNK:
            hf = {k: v for k, v in base.items() if k != key or value is not None}
            if value is not None:
                hf[key] = value
            try:
                cfg = ChatGLM.config_from_hf(hf, "config.json")
            except LlmrtError as exc:
                assert str(exc).startswith("config.json: "), (key, value, exc)
                continue
            assert np.isfinite(cfg.block_spec().inv_freq).all(), (key, value)


def test_trust_remote_code_is_accepted_and_no_remote_code_runs(glm, tmp_path):
    path, ref = glm("glm2-groups2")
    assert "raise RuntimeError" in (path / "modeling_chatglm.py").read_text()
    model = _load(path)                       # would raise if modeling_chatglm.py were imported
    ids = _prompt(ref.config.vocab_size, 4)
    assert model(ids).logits.shape == (1, 4, 251)
    # and the .llmrt file of a chatglm model loads back as the same model
    again = Model.load(model.save(tmp_path / "glm.llmrt"))
    assert again.config.family == "chatglm"
    np.testing.assert_array_equal(again(ids).logits, model(ids).logits)


# ------------------------------------------------------------------------------------------- GGUF
def write_llamacpp_gguf(path: Path, hf_dir: Path, qtype=None) -> None:
    """As convert_hf_to_gguf.py's ChatGLMModel: "transformer." stripped, the rotary buffer dropped,
    tensors as they are (no QKV or gate/up reorder), its metadata keys."""
    f = json.loads((hf_dir / "config.json").read_text())
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.CHATGLM, f["num_layers"])
    w = gguf.GGUFWriter(str(path), "chatglm")
    w.add_uint32("chatglm.vocab_size", f["padded_vocab_size"])
    w.add_context_length(f["seq_length"])
    w.add_embedding_length(f["hidden_size"])
    w.add_feed_forward_length(f["ffn_hidden_size"])
    w.add_block_count(f["num_layers"])
    w.add_head_count(f["num_attention_heads"])
    w.add_head_count_kv(f["multi_query_group_num"])
    w.add_layer_norm_rms_eps(f["layernorm_epsilon"])
    w.add_rope_dimension_count(int(f["hidden_size"] // f["num_attention_heads"] * 0.5))
    w.add_rope_freq_base(10000.0 * f.get("rope_ratio", 1))
    for name, arr in load_file(str(hf_dir / "model.safetensors")).items():
        if name.endswith(".rotary_pos_emb.inv_freq"):
            continue
        out = names.get_name(name.removeprefix("transformer."), try_suffixes=(".weight", ".bias"))
        assert out is not None, name
        if qtype is not None and arr.ndim == 2:
            w.add_tensor(out, gg_quantize(arr, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(out, np.ascontiguousarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("name", ["glm2-groups2", "glm3-32k-groups1"])
def test_llamacpp_gguf_matches_the_hf_directory(glm, tmp_path, name):
    path, ref = glm(name)
    file = tmp_path / f"{name}.gguf"
    write_llamacpp_gguf(file, Path(path))
    from_gguf = AutoModelForCausalLM.from_pretrained(file, memory_dtype="f32", compute_dtype="fp32")
    assert from_gguf.config.family == "chatglm" and from_gguf.config.rotary_interleaved
    ids = _prompt(ref.config.vocab_size, 20, seed=3)
    got = from_gguf(ids).logits
    err_hf = max_rel_err(got, _load(path)(ids).logits)
    err_ref = max_rel_err(got[0], _hf_logits(ref, ids))
    ERRORS[f"gguf f32 vs hf dir {name}"], ERRORS[f"gguf f32 vs reference {name}"] = err_hf, err_ref
    assert err_hf <= 1e-5 and err_ref <= 1e-4


def test_q8_0_gguf_equals_its_dequantized_weights(glm, tmp_path):
    """Quantized ffn_up blocks are split into gate / up rows as stored: a Q8_0 file runs like an F32
    file of its dequantized tensors."""
    path, ref = glm("glm2-groups2")
    q8, deq_dir = tmp_path / "q8.gguf", tmp_path / "deq"
    write_llamacpp_gguf(q8, Path(path), gguf.GGMLQuantizationType.Q8_0)
    deq_dir.mkdir()
    (deq_dir / "config.json").write_text((Path(path) / "config.json").read_text())
    t = gguf.GGMLQuantizationType.Q8_0
    src = load_file(str(Path(path) / "model.safetensors"))
    save_file({n: (gg_dequantize(gg_quantize(a, t), t).astype(np.float32) if a.ndim == 2 else a)
               for n, a in src.items()}, str(deq_dir / "model.safetensors"))
    write_llamacpp_gguf(tmp_path / "deq.gguf", deq_dir)
    ids = _prompt(ref.config.vocab_size, 16)
    got = AutoModelForCausalLM.from_pretrained(q8, memory_dtype="f32", compute_dtype="fp32")
    assert {f.name for _, f in got._tensors.values() if f is not None} == {"q8_0"}
    want = AutoModelForCausalLM.from_pretrained(tmp_path / "deq.gguf", memory_dtype="f32", compute_dtype="fp32")
    err = max_rel_err(got(ids).logits, want(ids).logits)
    ERRORS["gguf q8_0 vs its dequantized f32"] = err
    assert err <= 1e-4
    assert max_rel_err(got(ids).logits[0], _hf_logits(ref, ids)) > 0        # quantization really happened


# ------------------------------------------------------------------------------------- generation
def _lively_prompt(ref, seed: int = 0) -> np.ndarray:
    """A prompt (1, 6) whose greedy continuation keeps bringing new tokens and differs from a 3-beam search."""
    for s in range(seed, seed + 50):
        p = np.random.default_rng(s).integers(3, ref.config.vocab_size, size=(1, 6))
        plain = _hf(ref, p, max_new_tokens=24, eos_token_id=None)[0, 6:].tolist()
        beams = _hf(ref, p, max_new_tokens=14, num_beams=3, eos_token_id=None)[0, 6:].tolist()
        if any(plain[i] not in plain[:i] for i in range(3, 24)) and beams != plain[:14]:
            return p
    pytest.fail("no lively prompt")


def test_greedy_and_beam_options_match_the_reference(glm):
    path, ref = glm("glm2-groups2")
    model, ids = _load(path), _lively_prompt(ref)
    plain = _hf(ref, ids, max_new_tokens=24, eos_token_id=None)[0, 6:].tolist()
    eos = [plain[next(s for s in range(3, 24) if plain[s] not in plain[:s])]]
    cases = [dict(max_new_tokens=24, eos_token_id=None),
             dict(max_new_tokens=24, eos_token_id=None, repetition_penalty=1.5),
             dict(max_new_tokens=24, eos_token_id=None, no_repeat_ngram_size=2),
             dict(max_new_tokens=24, eos_token_id=eos),
             dict(max_new_tokens=14, num_beams=3, eos_token_id=None),
             dict(max_new_tokens=14, num_beams=4, num_return_sequences=3, eos_token_id=None, repetition_penalty=1.3),
             dict(max_new_tokens=14, num_beams=3, eos_token_id=eos, length_penalty=-1.0)]
    for kw in cases:
        np.testing.assert_array_equal(model.generate(ids, pad_token_id=0, **kw), _hf(ref, ids, **kw), err_msg=str(kw))


def test_left_padded_batch_of_two_matches_the_reference(glm):
    path, ref = glm("glm3-32k-groups1")
    model = _load(path)
    rng = np.random.default_rng(7)
    a, b = rng.integers(3, ref.config.vocab_size, 4), rng.integers(3, ref.config.vocab_size, 9)
    ids = np.zeros((2, 9), dtype=np.int64)
    ids[0, 5:], ids[1] = a, b
    mask = (ids != 0).astype(np.int64)
    mask[1] = 1
    kw = dict(max_new_tokens=12, eos_token_id=None, pad_token_id=0, repetition_penalty=1.2)
    out = model.generate(ids, attention_mask=mask, **kw)
    with torch.no_grad():
        want = ref.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), do_sample=False, **kw)
    np.testing.assert_array_equal(out, want.numpy())
    np.testing.assert_array_equal(out[0, 5:], model.generate(a[None], **kw)[0])
    np.testing.assert_array_equal(out[1], model.generate(b[None], **kw)[0])


def test_sampling_is_deterministic_with_a_seed(glm):
    path, ref = glm("glm-mha-nobias")
    model = _load(path)
    ids = _prompt(ref.config.vocab_size, 6, seed=5)
    kw = dict(max_new_tokens=16, eos_token_id=None, do_sample=True, temperature=1.5, top_k=0, top_p=0.95)
    a = model.generate(ids, seed=11, num_return_sequences=3, **kw)
    np.testing.assert_array_equal(a, model.generate(ids, seed=11, num_return_sequences=3, **kw))
    assert not np.array_equal(a, model.generate(ids, seed=12, num_return_sequences=3, **kw))
    assert len({tuple(r) for r in a}) == 3
    greedy = model.generate(ids, max_new_tokens=16, eos_token_id=None)
    np.testing.assert_array_equal(model.generate(ids, seed=3, **dict(kw, top_k=1)), greedy)


# ------------------------------------------------------------------------------------------- chat


def _glm2_tokenizer():
    """A character tokenizer shaped like ChatGLM2's: [gMASK] sop before the text, build_prompt."""
    specials = ["<unk>", "<s>", "</s>", "[gMASK]", "sop"]
    chars = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,?![]\n问答："))
    tk = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials + chars)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tk.post_processor = processors.TemplateProcessing(single="[gMASK] sop $A", special_tokens=[("[gMASK]", 3),
                                                                                                ("sop", 4)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>", unk_token="<unk>")

    def build_prompt(query: str, history: list | None = None) -> str:      # ChatGLM2's template
        prompt = ""
        for i, (old_query, response) in enumerate(history or []):
            prompt += "[Round {}]\n\n问：{}\n\n答：{}\n\n".format(i + 1, old_query, response)
        return prompt + "[Round {}]\n\n问：{}\n\n答：".format(len(history or []) + 1, query)
    tok.build_prompt = build_prompt
    return tok


def test_chatglm2_build_prompt_loop_reuses_the_kv_cache(glm):
    """The README loop: build_prompt makes the text, each turn sends only what is new since the last
    answer (interactive=True), and each answer is the reference's greedy answer to the whole conversation."""
    path, ref = glm("glm2-groups2")
    tok, model = _glm2_tokenizer(), _load(path)
    model.engine = CountingEngine(model.engine)
    history, said, conversation = [], "", []
    for turn, query in enumerate(["Hello", "Who are you?", "Bye now"]):
        text = tok.build_prompt(query, history)
        new_text = text[len(said):]
        ids = tok(new_text, add_special_tokens=turn == 0).input_ids
        before = model.engine.n
        answer = model.generate([ids], interactive=True, ignore_prompt=True, max_new_tokens=8, eos_token_id=None)
        # only the new text ran (plus the last answer's final token, sampled but never run)
        assert model.engine.n - before == len(ids) + (turn > 0) + 7
        conversation += ids
        want = _hf(ref, np.array([conversation]), max_new_tokens=8, eos_token_id=None)[0, len(conversation):]
        np.testing.assert_array_equal(answer[0], want)
        conversation += answer[0].tolist()
        reply = tok.decode(answer[0])
        history.append((query, reply))
        said = text + reply
    assert tok.decode(conversation).startswith("[gMASK]sop[Round 1]")


class CacheWatch(LogitsProcessor):
    """Records the tokens the conversation's KV cache holds at each step."""

    def __init__(self, model):
        self.model, self.held = model, []

    def __call__(self, input_ids, scores):
        self.held.append(list(self.model._session.seq.tokens))
        return scores


def test_interactive_chat_with_n_keep_re_evaluates_exactly(glm):
    """Turns overflow ctx_size=20; n_keep=4 keeps the sinks and re-evaluates the rest, so every step's
    logits are the reference's forward over the tokens the cache holds."""
    path, ref = glm("glm3-32k-groups1")
    model = _load(path)
    watch = CacheWatch(model)
    rng = np.random.default_rng(9)
    turns = [rng.integers(3, ref.config.vocab_size, 7).tolist() for _ in range(3)]
    worst = 0.0
    for turn, t in enumerate(turns):
        watch.held = []
        out = model.generate([t], interactive=True, ignore_prompt=True, max_new_tokens=10, eos_token_id=None,
                             ctx_size=20, n_keep=4, return_dict_in_generate=True, output_logits=True,
                             logits_processor=[watch])
        assert len(watch.held) == len(out.logits) == 10
        for got, held in zip(out.logits, watch.held):
            assert len(held) <= 20
            assert turn == 0 or held[:4] == turns[0][:4]      # the same conversation's cache, sinks kept
            worst = max(worst, max_rel_err(got[0], _hf_logits(ref, held)[-1]))
    seq = model._session.seq
    assert seq.shifted and seq.tokens[:4] == turns[0][:4]
    ERRORS["interactive n_keep re-evaluation"] = worst
    assert worst <= 1e-4


# -------------------------------------------------------------------------------------- StreamingLLM
CTX, KEEP = 16, 4


def test_shift_roped_k_ring_equals_from_scratch(glm):
    """One layer: after every ring step the cache equals a fresh forward of the kept start + the most
    recent tokens (partial interleaved rotary keys re-rotated correctly)."""
    path, ref = glm("glm-1layer")
    model = _load(path)
    prompt = _prompt(ref.config.vocab_size, 5, seed=4)
    out = model.generate(prompt, max_new_tokens=5 * CTX, eos_token_id=None, ctx_size=CTX, n_keep=KEEP,
                         shift_roped_k=True, return_dict_in_generate=True, output_logits=True)
    seq = out.sequences[0].tolist()
    worst = 0.0
    for i, got in enumerate(out.logits):
        n = 5 + i
        held = seq[:n] if n <= CTX else seq[:KEEP] + seq[n - (CTX - KEEP):n]
        worst = max(worst, max_rel_err(got[0], _hf_logits(ref, held)[-1]))
    ERRORS["shift_roped_k ring (1 layer)"] = worst
    assert worst <= 1e-4


def test_streaming_runs_on_a_multi_layer_model(glm):
    """Ring (also with beams) and re-evaluation past the context on the 3-layer model run and repeat
    (a multi-layer ring is not a from-scratch forward, so only the one-layer ring is compared)."""
    path, ref = glm("glm3-32k-groups1")
    model = _load(path)
    prompt = _prompt(ref.config.vocab_size, 7, seed=6)
    ring = dict(max_new_tokens=4 * CTX, eos_token_id=None, ctx_size=CTX, n_keep=KEEP, shift_roped_k=True)
    a = model.generate(prompt, **ring)
    assert a.shape == (1, 7 + 4 * CTX)
    np.testing.assert_array_equal(a, model.generate(prompt, **ring))
    beams = model.generate(prompt, num_beams=2, num_return_sequences=2, **ring)
    assert beams.shape == (2, 7 + 4 * CTX)
    reeval = dict(max_new_tokens=3 * CTX, eos_token_id=None, ctx_size=CTX, n_keep=KEEP, n_discard=3)
    assert model.generate(prompt, **reeval).shape == (1, 7 + 3 * CTX)
