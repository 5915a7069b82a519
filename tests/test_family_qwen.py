"""Qwen v1 (model_type "qwen", remote code QWenLMHeadModel), from tiny checkpoints written in Qwen's own
layout (its config.json field names, transformer.h.{i}.attn.c_attn / mlp.w1 / mlp.w2 ... tensors; no
remote code anywhere), against transformers models holding the same weights:

- Qwen2ForCausalLM (num_key_value_heads = heads, c_attn split into q/k/v with biases, w2 -> gate,
  w1 -> up: Qwen's c_proj(w1(x) * silu(w2(x)))) for the published layout (no_bias=true, rotary_pct 1);
- LlamaForCausalLM with attention_bias and mlp_bias for no_bias=false;
- Phi3ForCausalLM (partial rotary on NeoX halves, which Qwen2 lacks) with a biased qkv projection
  for rotary_pct < 1.

Beyond seq_length Qwen's use_dynamic_ntk / use_logn_attn change the arithmetic (within it they are
no-ops, so the references above are exact there); past it llmrt is checked against Qwen's forward
written out in NumPy (qwen_forward), prefill and cached decoding both (tested at the end)."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from conftest import max_rel_err
from test_chat import CountingEngine
from llmrt import AutoModelForCausalLM, WeightOnlyQuantConfig
from llmrt.errors import ConfigError, UnsupportedError
from llmrt.generation import chat_input_ids
from llmrt.model import Model
from llmrt.models.qwen import Qwen
from test_parity import FAMILY_QUANT_CASES, _check_quantized_twin

FP32 = WeightOnlyQuantConfig(weight_dtype="fp32", compute_dtype="fp32")
CONFIGS = {
    "qwen-4heads": dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=192,
                        vocab_size=251, seq_length=256),
    "qwen-2heads-base5e4": dict(hidden_size=64, num_attention_heads=2, num_hidden_layers=3, intermediate_size=256,
                                vocab_size=263, rotary_emb_base=50000, use_dynamic_ntk=False, use_logn_attn=False),
    "qwen-6heads-biases": dict(hidden_size=96, num_attention_heads=6, num_hidden_layers=2, intermediate_size=320,
                               vocab_size=239, no_bias=False, seq_length=256),
    "qwen-pct50": dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=128,
                       vocab_size=247, rotary_pct=0.5, seq_length=256),
    "qwen-3heads-pct25": dict(hidden_size=96, num_attention_heads=3, num_hidden_layers=2, intermediate_size=192,
                              vocab_size=229, rotary_pct=0.25, layer_norm_epsilon=1e-5, seq_length=256),
}
# importing this file writes the sentinel: the loader must never run a checkpoint's Python
REMOTE_CODE = "import pathlib\npathlib.Path(__file__).with_name('REMOTE_CODE_RAN').touch()\n"


def qwen_config(**over) -> dict:
    """config.json as Qwen publishes it (Qwen-7B's fields and defaults), with over applied."""
    cfg = {"architectures": ["QWenLMHeadModel"], "model_type": "qwen",
           "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig",
                        "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
           "attn_dropout_prob": 0.0, "emb_dropout_prob": 0.0, "bf16": False, "fp16": False, "fp32": False,
           "initializer_range": 0.02, "layer_norm_epsilon": 1e-6, "max_position_embeddings": 32768,
           "no_bias": True, "onnx_safe": None, "rotary_emb_base": 10000, "rotary_pct": 1.0,
           "scale_attn_weights": True, "seq_length": 8192, "softmax_in_fp32": False, "tie_word_embeddings": False,
           "tokenizer_class": "QWenTokenizer", "use_cache": True, "use_cache_kernel": False,
           "use_cache_quantization": False, "use_dynamic_ntk": True, "use_flash_attn": "auto", "use_logn_attn": True}
    cfg.update(over)
    cfg.setdefault("kv_channels", cfg["hidden_size"] // cfg["num_attention_heads"])
    return cfg


def qwen_tensors(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights under Qwen's tensor names; norms and biases away from their trivial init."""
    rng = np.random.default_rng(seed)
    h, ff, v = cfg["hidden_size"], cfg["intermediate_size"] // 2, cfg["vocab_size"]

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    def norm() -> np.ndarray:
        return (1 + rng.standard_normal(h) * 0.1).astype(np.float32)

    t = {"transformer.wte.weight": w(v, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"transformer.h.{i}."
        t.update({p + "ln_1.weight": norm(), p + "attn.c_attn.weight": w(3 * h, h), p + "attn.c_attn.bias": w(3 * h),
                  p + "attn.c_proj.weight": w(h, h), p + "ln_2.weight": norm(), p + "mlp.w1.weight": w(ff, h),
                  p + "mlp.w2.weight": w(ff, h), p + "mlp.c_proj.weight": w(h, ff)})
        if not cfg["no_bias"]:
            t.update({p + "attn.c_proj.bias": w(h), p + "mlp.w1.bias": w(ff), p + "mlp.w2.bias": w(ff),
                      p + "mlp.c_proj.bias": w(h)})
    t.update({"transformer.ln_f.weight": norm(), "lm_head.weight": w(v, h)})
    return t


def write_checkpoint(d: Path, cfg: dict, tensors: dict[str, np.ndarray]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    (d / "modeling_qwen.py").write_text(REMOTE_CODE)
    (d / "configuration_qwen.py").write_text(REMOTE_CODE)
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    return d


def reference(cfg: dict, t: dict[str, np.ndarray]) -> torch.nn.Module:
    """A transformers model computing what Qwen's code computes on these weights (see the module doc)."""
    h, heads, n_layer = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    common = dict(vocab_size=cfg["vocab_size"], hidden_size=h, intermediate_size=cfg["intermediate_size"] // 2,
                  num_hidden_layers=n_layer, num_attention_heads=heads, num_key_value_heads=heads,
                  rms_norm_eps=cfg["layer_norm_epsilon"], max_position_embeddings=4096, tie_word_embeddings=False,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    rope = {"rope_type": "default", "rope_theta": float(cfg["rotary_emb_base"])}
    phi3 = cfg["rotary_pct"] != 1.0
    if phi3:
        ref = transformers.Phi3ForCausalLM(transformers.Phi3Config(
            **common, rope_parameters={**rope, "partial_rotary_factor": cfg["rotary_pct"]}))
        for layer in ref.model.layers:          # Qwen's c_attn has biases, Phi3's qkv_proj not
            layer.self_attn.qkv_proj = torch.nn.Linear(h, 3 * h, bias=True)
    elif not cfg["no_bias"]:
        ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, rope_parameters=rope,
                                                                      attention_bias=True, mlp_bias=True))
    else:
        ref = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common, rope_parameters=rope))
    sd = {"model.embed_tokens.weight": t["transformer.wte.weight"], "model.norm.weight": t["transformer.ln_f.weight"],
          "lm_head.weight": t["lm_head.weight"]}
    for i in range(n_layer):
        src, dst = f"transformer.h.{i}.", f"model.layers.{i}."
        sd[dst + "input_layernorm.weight"] = t[src + "ln_1.weight"]
        sd[dst + "post_attention_layernorm.weight"] = t[src + "ln_2.weight"]
        sd[dst + "self_attn.o_proj.weight"] = t[src + "attn.c_proj.weight"]
        if phi3:
            sd[dst + "self_attn.qkv_proj.weight"] = t[src + "attn.c_attn.weight"]
            sd[dst + "self_attn.qkv_proj.bias"] = t[src + "attn.c_attn.bias"]
            sd[dst + "mlp.gate_up_proj.weight"] = np.concatenate([t[src + "mlp.w2.weight"], t[src + "mlp.w1.weight"]])
            sd[dst + "mlp.down_proj.weight"] = t[src + "mlp.c_proj.weight"]
            continue
        for kind in ("weight", "bias"):
            for part, arr in zip("qkv", np.split(t[src + f"attn.c_attn.{kind}"], 3)):
                sd[dst + f"self_attn.{part}_proj.{kind}"] = arr
        for mine, theirs in (("mlp.w2", "mlp.gate_proj"), ("mlp.w1", "mlp.up_proj"), ("mlp.c_proj", "mlp.down_proj"),
                             ("attn.c_proj", "self_attn.o_proj")):
            sd[dst + theirs + ".weight"] = t[src + mine + ".weight"]
            if not cfg["no_bias"]:
                sd[dst + theirs + ".bias"] = t[src + mine + ".bias"]
    ref.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in sd.items()}, strict=True)
    return ref.float().eval()


def qwen_forward(cfg: dict, t: dict[str, np.ndarray], ids: np.ndarray, prefill: int | None = None) -> np.ndarray:
    """QWenLMHeadModel's forward of one sequence, written out from Qwen's modeling code in float64,
    dynamic NTK and logn attention included: what the transformers stand-ins replace.  prefill: the
    length of the sequence's first (uncached) forward, whose NTK alpha Qwen keeps for every later
    cached step (default: all of ids in one forward)."""
    h, heads, n, seq = cfg["hidden_size"], cfg["num_attention_heads"], len(ids), cfg["seq_length"]
    d = h // heads
    rot = d if cfg["rotary_pct"] == 1.0 else int(d * cfg["rotary_pct"])
    first = n if prefill is None else prefill
    alpha = max(2 ** math.ceil(math.log(first / seq, 2) + 1) - 1, 1) if cfg["use_dynamic_ntk"] else 1
    base = cfg["rotary_emb_base"] * alpha ** (rot / (rot - 2))
    angles = np.outer(np.arange(n), 1.0 / base ** (np.arange(0, rot, 2) / rot))
    cos, sin = np.cos(np.concatenate([angles] * 2, -1))[:, None], np.sin(np.concatenate([angles] * 2, -1))[:, None]
    logn = np.array([math.log(i, seq) if i > seq else 1.0 for i in range(1, n + 1)])[:, None, None]

    def g(name: str) -> np.ndarray:
        return t[name].astype(np.float64)

    def lin(x: np.ndarray, name: str) -> np.ndarray:
        return x @ g(name + ".weight").T + (g(name + ".bias") if name + ".bias" in t else 0)

    def rms(x: np.ndarray, name: str) -> np.ndarray:
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg["layer_norm_epsilon"]) * g(name)

    def rope(x: np.ndarray) -> np.ndarray:         # NeoX halves of the first rot features
        r = x[..., :rot]
        half = np.concatenate([-r[..., rot // 2:], r[..., :rot // 2]], -1)
        return np.concatenate([r * cos + half * sin, x[..., rot:]], -1)

    x = g("transformer.wte.weight")[ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"transformer.h.{i}."
        q, k, v = (a.reshape(n, heads, d) for a in np.split(lin(rms(x, p + "ln_1.weight"), p + "attn.c_attn"), 3, -1))
        q, k = rope(q), rope(k)
        if cfg["use_logn_attn"] and n > seq:
            q = q * logn
        s = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(d)
        s = np.where(np.tril(np.ones((n, n), bool)), s, -np.inf)
        pr = np.exp(s - s.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        x = x + lin(np.einsum("hqk,khd->qhd", pr, v).reshape(n, h), p + "attn.c_proj")
        m = rms(x, p + "ln_2.weight")
        a1, a2 = lin(m, p + "mlp.w1"), lin(m, p + "mlp.w2")
        x = x + lin(a1 * a2 / (1 + np.exp(-a2)), p + "mlp.c_proj")
    return rms(x, "transformer.ln_f.weight") @ g("lm_head.weight").T


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """name -> (directory, reference, config.json dict, tensors), built once; names are CONFIGS keys,
    "<key>@<field>=<value>,..." for variants (JSON values) and "<key>/1layer" for one-layer models."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            base, _, variant = name.partition("@")
            key, _, layers = base.partition("/")
            over = dict(CONFIGS[key], **({"num_hidden_layers": 1} if layers else {}))
            for item in filter(None, variant.split(",")):
                field, value = item.split("=")
                over[field] = json.loads(value)
            cfg = qwen_config(**over)
            t = qwen_tensors(cfg)
            d = write_checkpoint(tmp_path_factory.mktemp(key), cfg, t)
            cache[name] = (d, reference(cfg, t), cfg, t)
        return cache[name]

    return get


def _load(path, **kw) -> Model:
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=FP32, memory_dtype="f32", **kw)


def _prompt(vocab: int, n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, vocab, size=(1, n))


def _hf(ref, ids: np.ndarray, **kw) -> np.ndarray:
    with torch.no_grad():
        return ref.generate(torch.from_numpy(ids), do_sample=False, pad_token_id=0, **kw).numpy()


def _hf_logits(ref, ids) -> np.ndarray:
    with torch.no_grad():
        return ref(torch.as_tensor(np.asarray(ids))).logits.numpy()


# ------------------------------------------------------------------------------------ config, refusals
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_reads_qwens_fields(qwen, name):
    path, _, cfg, _ = qwen(name)
    c = _load(path).config
    head = cfg["hidden_size"] // cfg["num_attention_heads"]
    assert (c.family, c.norm, c.mlp, c.num_kv_heads, c.head_dim) == ("qwen", "rms", "gated_silu", c.num_heads, head)
    assert c.intermediate_size == cfg["intermediate_size"] // 2 and c.norm_eps == cfg["layer_norm_epsilon"]
    assert c.rotary_dim == int(head * cfg["rotary_pct"]) and c.rope_theta == cfg["rotary_emb_base"]
    assert not c.tie_word_embeddings and not c.rotary_interleaved
    assert c.max_position_embeddings == cfg["max_position_embeddings"]
    assert c.logn_attn_from == (cfg["seq_length"] if cfg["use_logn_attn"] else 0)
    assert c.dynamic_ntk_from == (cfg["seq_length"] if cfg["use_dynamic_ntk"] else 0)


def _config(**over):
    return Qwen.config_from_hf(qwen_config(**dict(CONFIGS["qwen-4heads"], **over)))


@pytest.mark.parametrize("over,error,match", [
    (dict(kv_channels=32), ConfigError, "kv_channels"),                  # Qwen's code cannot run it
    (dict(rotary_pct=0.5625), ConfigError, "rotary_pct"),               # 9 of 16 features: odd
    (dict(rotary_pct=1.5), ConfigError, "rotary_pct"),
    (dict(intermediate_size=191), ConfigError, "intermediate_size"),
    (dict(use_cache_quantization=True), UnsupportedError, "use_cache_quantization"),
    (dict(seq_length=None), ConfigError, "seq_length"),                  # the flags need it (Qwen's code too)
])
def test_configs_qwen_cannot_run_are_refused(over, error, match):
    with pytest.raises(error, match=match):
        _config(**over)


def test_undeclared_bias_tensor_is_refused(qwen, tmp_path):
    _, _, cfg, t = qwen("qwen-4heads")
    extra = {"transformer.h.0.attn.c_proj.bias": t["transformer.ln_f.weight"]}     # no_bias=true declares none
    d = write_checkpoint(tmp_path / "m", cfg, dict(t, **extra))
    with pytest.raises(UnsupportedError, match="c_proj.bias"):
        _load(d)


def test_trust_remote_code_is_accepted_and_no_remote_code_runs(qwen):
    path, ref, cfg, _ = qwen("qwen-4heads")
    model = _load(path, trust_remote_code=True)
    ids = _prompt(cfg["vocab_size"], 12)
    assert max_rel_err(model(ids).logits, _hf_logits(ref, ids)) <= 1e-4
    assert not (path / "REMOTE_CODE_RAN").exists()


# ------------------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fp32_logits_and_hidden_states_match_the_reference(qwen, name):
    path, ref, cfg, _ = qwen(name)
    model = _load(path)
    ids = _prompt(cfg["vocab_size"], 24)
    with torch.no_grad():
        want = ref(torch.from_numpy(ids), output_hidden_states=True)
    got = model(ids, output_hidden_states=True)
    assert got.logits.shape == want.logits.shape and got.logits.dtype == np.float32
    err = max_rel_err(got.logits, want.logits.numpy())
    assert err <= 1e-4, f"{name}: {err:.2e}"
    assert len(got.hidden_states) == len(want.hidden_states) == cfg["num_hidden_layers"] + 1
    for g, w in zip(got.hidden_states, want.hidden_states):
        assert max_rel_err(g, w.numpy()) <= 1e-4


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_references_compute_qwens_own_forward(qwen, name):
    """The transformers stand-ins (Qwen2 / Llama / Phi3 with a biased qkv) against Qwen's forward
    written out: the mapping they share with llmrt is Qwen's, not an agreement of two mistakes."""
    _, ref, cfg, t = qwen(name)
    ids = _prompt(cfg["vocab_size"], 24)
    assert max_rel_err(_hf_logits(ref, ids)[0], qwen_forward(cfg, t, ids[0])) <= 1e-5


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fp32_greedy_32_tokens_match_the_reference(qwen, name):
    path, ref, cfg, _ = qwen(name)
    ids = _prompt(cfg["vocab_size"], 5, seed=2)
    want = _hf(ref, ids, max_new_tokens=32, min_new_tokens=32, eos_token_id=None)
    np.testing.assert_array_equal(_load(path).generate(ids, max_new_tokens=32, eos_token_id=None), want)
    assert len(set(want[0, 5:].tolist())) > 3           # not one repeated token


@pytest.mark.parametrize("weight_dtype,alg,group,scale,compute,tol", FAMILY_QUANT_CASES)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_quantized_equals_its_dequantized_twin(qwen, name, weight_dtype, alg, group, scale, compute, tol):
    _check_quantized_twin(lambda n: qwen(n)[:2], name, weight_dtype, alg, group, scale, compute, tol)


def _swap_w1_w2(t: dict, i: int) -> None:
    p = f"transformer.h.{i}.mlp."
    t[p + "w1.weight"], t[p + "w2.weight"] = t[p + "w2.weight"], t[p + "w1.weight"]


def _swap_q_k(t: dict, i: int) -> None:
    for kind in ("weight", "bias"):
        q, k, v = np.split(t[f"transformer.h.{i}.attn.c_attn.{kind}"], 3)
        t[f"transformer.h.{i}.attn.c_attn.{kind}"] = np.concatenate([k, q, v])


@pytest.mark.parametrize("name", ["qwen-4heads", "qwen-pct50"])
@pytest.mark.parametrize("wrong", [_swap_w1_w2, _swap_q_k])
def test_a_wrong_mapping_fails_the_comparison(qwen, tmp_path, name, wrong):
    """The comparison has power: the same checkpoint with w1 / w2 (or the Q / K rows) exchanged, read
    by the same loader, is far from the reference."""
    _, ref, cfg, t = qwen(name)
    bad = dict(t)
    for i in range(cfg["num_hidden_layers"]):
        wrong(bad, i)
    ids = _prompt(cfg["vocab_size"], 24)
    err = max_rel_err(_load(write_checkpoint(tmp_path / "bad", cfg, bad))(ids).logits, _hf_logits(ref, ids))
    assert err > 1e-2, f"{wrong.__name__}: {err:.2e}"


# ---------------------------------------------------------------------------------------- generation
GEN_CONFIGS = ["qwen-4heads", "qwen-6heads-biases", "qwen-pct50"]


@pytest.mark.parametrize("name", GEN_CONFIGS)
def test_beam_search_matches_the_reference(qwen, name):
    path, ref, cfg, _ = qwen(name)
    model = _load(path)
    ids = _prompt(cfg["vocab_size"], 6, seed=3)
    for kw in (dict(num_beams=3), dict(num_beams=4, num_return_sequences=2, repetition_penalty=1.3)):
        want = _hf(ref, ids, max_new_tokens=14, eos_token_id=None, **kw)
        np.testing.assert_array_equal(model.generate(ids, max_new_tokens=14, eos_token_id=None, **kw), want)
    assert not np.array_equal(model.generate(ids, max_new_tokens=14, eos_token_id=None, num_beams=3)[0],
                              model.generate(ids, max_new_tokens=14, eos_token_id=None)[0])


@pytest.mark.parametrize("name", GEN_CONFIGS)
def test_left_padded_batch_of_two_matches_the_reference(qwen, name):
    path, ref, cfg, _ = qwen(name)
    model = _load(path)
    rng = np.random.default_rng(7)
    a, b = rng.integers(3, cfg["vocab_size"], size=4), rng.integers(3, cfg["vocab_size"], size=9)
    ids = np.zeros((2, 9), dtype=np.int64)
    ids[0, 5:], ids[1] = a, b
    mask = (np.arange(9)[None] >= np.array([[5], [0]])).astype(np.int64)
    kw = dict(max_new_tokens=12, eos_token_id=None, pad_token_id=0)
    got = model.generate(ids, attention_mask=mask, **kw)
    with torch.no_grad():
        want = ref.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), do_sample=False, **kw)
    np.testing.assert_array_equal(got, want.numpy())
    np.testing.assert_array_equal(got[0, 5:], model.generate(a[None], **kw)[0])      # each row as if alone
    np.testing.assert_array_equal(got[1], model.generate(b[None], **kw)[0])


@pytest.mark.parametrize("name", ["qwen-4heads", "qwen-pct50"])
def test_sampling_is_deterministic_with_a_seed(qwen, name):
    path, ref, cfg, _ = qwen(name)
    model = _load(path)
    ids = _prompt(cfg["vocab_size"], 6, seed=5)
    kw = dict(max_new_tokens=12, eos_token_id=None, do_sample=True, temperature=1.5, top_k=0)
    draws = model.generate(ids, seed=3, num_return_sequences=3, **kw)
    np.testing.assert_array_equal(draws, model.generate(ids, seed=3, num_return_sequences=3, **kw))
    assert not np.array_equal(draws, model.generate(ids, seed=4, num_return_sequences=3, **kw))
    greedy = _hf(ref, ids, max_new_tokens=12, eos_token_id=None)
    np.testing.assert_array_equal(model.generate(ids, seed=3, **dict(kw, top_k=1)), greedy)
    assert any(not np.array_equal(row, greedy[0]) for row in draws)


def test_interactive_generation_reuses_the_cache(qwen):
    path, ref, cfg, _ = qwen("qwen-4heads")
    model = _load(path)
    model.engine = CountingEngine(model.engine)
    first, second = [5, 6, 7, 8, 9], [10, 11, 12]
    a = model.generate([first], interactive=True, ignore_prompt=True, max_new_tokens=8, eos_token_id=None)
    np.testing.assert_array_equal(a[0], _hf(ref, np.array([first]), max_new_tokens=8, eos_token_id=None)[0, 5:])
    before = model.engine.n
    b = model.generate([second], interactive=True, ignore_prompt=True, max_new_tokens=8, eos_token_id=None)
    # only the new turn ran, plus the last answer's final token (sampled, never run), then 7 steps
    assert model.engine.n - before == len(second) + 1 + 7
    whole = np.array([first + a[0].tolist() + second])
    np.testing.assert_array_equal(b[0], _hf(ref, whole, max_new_tokens=8, eos_token_id=None)[0, whole.shape[1]:])


def _char_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
    chars = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;?!\n"))
    tk = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials + chars)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def test_chat_reuses_the_cache_and_matches_the_reference(qwen):
    path, ref, _, _ = qwen("qwen-pct50")
    model = _load(path)
    model.engine = CountingEngine(model.engine)
    tok, gen = _char_tokenizer(), dict(max_new_tokens=10, eos_token_id=None)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    ids1 = chat_input_ids(messages, tok)
    g1 = _hf(ref, np.array([ids1]), **gen)[0, len(ids1):].tolist()
    assert model.chat(messages, tok, **gen) == tok.decode(g1, skip_special_tokens=True)
    messages += [{"role": "assistant", "content": tok.decode(g1, skip_special_tokens=True)},
                 {"role": "user", "content": "And then?"}]
    ids2 = chat_input_ids(messages, tok)
    cached = ids1 + g1[:-1]                              # the last new token never ran
    common = next((i for i, (x, y) in enumerate(zip(cached, ids2)) if x != y), min(len(cached), len(ids2)))
    before = model.engine.n
    reply = model.chat(messages, tok, **gen)
    # the first turn stays cached: only the rest of the conversation and 9 decode steps run
    assert common >= len(ids1) and model.engine.n - before == len(ids2) - common + 9
    g2 = _hf(ref, np.array([ids2]), **gen)[0, len(ids2):].tolist()
    assert reply == tok.decode(g2, skip_special_tokens=True)


# --------------------------------------------------------------------------------------- StreamingLLM
CTX, KEEP = 16, 4


def _check_steps(out, ref, window) -> None:
    """Each step's logits equal the reference's forward of the tokens the cache held."""
    seq = [int(t) for t in out.sequences[0]]
    n_prompt = len(seq) - len(out.logits)
    for i, got in enumerate(out.logits):
        want = _hf_logits(ref, [window(seq, n_prompt + i)])[0, -1]
        np.testing.assert_allclose(got[0], want, rtol=0, atol=1e-4 * np.abs(want).max(), err_msg=f"step {i}")


@pytest.mark.parametrize("name", ["qwen-4heads/1layer", "qwen-pct50/1layer"])
def test_shift_roped_k_ring_equals_the_reference_window(qwen, name):
    """One layer: cached K/V depend only on token and position, so after any ring shift the cache
    equals a from-scratch forward of the tokens it holds."""
    path, ref, cfg, _ = qwen(name)
    prompt = _prompt(cfg["vocab_size"], 5)
    out = _load(path).generate(prompt, max_new_tokens=5 * CTX, eos_token_id=None, ctx_size=CTX, n_keep=KEEP,
                               shift_roped_k=True, return_dict_in_generate=True, output_logits=True)
    assert out.sequences.shape[1] == 5 + 5 * CTX

    def ring(seq, n):
        return seq[:n] if n <= CTX else seq[:KEEP] + seq[n - (CTX - KEEP):n]
    _check_steps(out, ref, ring)


@pytest.mark.parametrize("discard", [-1, 3])
@pytest.mark.parametrize("name", ["qwen-4heads", "qwen-pct50"])
def test_reevaluation_equals_the_reference_window(qwen, name, discard):
    path, ref, cfg, _ = qwen(name)
    prompt = _prompt(cfg["vocab_size"], 7, seed=3)
    out = _load(path).generate(prompt, max_new_tokens=3 * CTX, eos_token_id=None, ctx_size=CTX, n_keep=KEEP,
                               n_discard=discard, return_dict_in_generate=True, output_logits=True)

    def window(seq, n):
        held: list[int] = []
        for t in seq[:n]:
            if len(held) == CTX:
                drop = discard if discard > 0 else (len(held) - KEEP) // 2
                held = held[:KEEP] + held[KEEP + max(drop, 1):]
            held.append(t)
        return held
    _check_steps(out, ref, window)


# ---------------------------------------------------------------------------------- past seq_length
FLAG_CASES = ["", ",use_dynamic_ntk=false", ",use_logn_attn=false", ",use_dynamic_ntk=false,use_logn_attn=false"]


@pytest.mark.parametrize("flags", FLAG_CASES)
@pytest.mark.parametrize("key", ["qwen-4heads", "qwen-pct50"])
def test_long_prompts_match_qwens_forward_past_seq_length(qwen, key, flags):
    """24- and 40-token prompts on a seq_length of 16: dynamic NTK raises the base (alpha 3 and 7) and
    logn attention scales the queries past position 16, each exactly as Qwen's forward does."""
    path, _, cfg, t = qwen(f"{key}@seq_length=16{flags}")
    model = _load(path)
    for n in (16, 24, 40):
        ids = _prompt(cfg["vocab_size"], n, seed=n)[0]
        assert max_rel_err(model(ids[None]).logits[0], qwen_forward(cfg, t, ids)) <= 1e-4, n


def test_the_switches_change_the_logits_past_seq_length_only(qwen):
    """Why they are implemented rather than ignored: each flag alone moves the logits past seq_length."""
    path, _, cfg, t = qwen("qwen-4heads@seq_length=16")
    ids = _prompt(cfg["vocab_size"], 24)[0]
    plain = qwen_forward(dict(cfg, use_dynamic_ntk=False, use_logn_attn=False), t, ids)
    for flag in ("use_dynamic_ntk", "use_logn_attn"):
        only = {**cfg, "use_dynamic_ntk": False, "use_logn_attn": False, flag: True}
        assert max_rel_err(qwen_forward(only, t, ids), plain) > 1e-3, flag
        assert max_rel_err(qwen_forward(only, t, ids[:16]), plain[:16]) <= 1e-12, flag


@pytest.mark.parametrize("prompt_len", [10, 20])
def test_cached_decoding_past_seq_length_keeps_the_prefills_alpha(qwen, prompt_len):
    """Greedy decoding from a prompt shorter (alpha 1, logn from position 16 on) or longer (alpha 3
    fixed at the prefill) than seq_length: every step's logits are Qwen's for that prefill."""
    path, _, cfg, t = qwen("qwen-4heads@seq_length=16")
    model = _load(path)
    prompt = _prompt(cfg["vocab_size"], prompt_len, seed=5)
    out = model.generate(prompt, max_new_tokens=12, eos_token_id=None, output_logits=True,
                         return_dict_in_generate=True)
    seq = [int(x) for x in out.sequences[0]]
    for i, got in enumerate(out.logits):
        want = qwen_forward(cfg, t, np.array(seq[:prompt_len + i]), prefill=prompt_len)[-1]
        assert max_rel_err(got[0], want) <= 1e-4, f"step {i}"
        assert int(np.argmax(got[0])) == seq[prompt_len + i]


def test_streaming_after_a_long_prefill(qwen):
    """A prefill past seq_length rotates its keys at a raised base that the StreamingLLM key shifts do
    not re-rotate: shift_roped_k is refused by name; re-evaluation runs; a short prefill shifts."""
    path, _, cfg, _ = qwen("qwen-4heads@seq_length=16")
    model = _load(path)
    long_prompt, short_prompt = _prompt(cfg["vocab_size"], 20), _prompt(cfg["vocab_size"], 10)
    with pytest.raises(ValueError, match="dynamic NTK"):
        model.generate(long_prompt, max_new_tokens=30, eos_token_id=None, ctx_size=24, n_keep=KEEP,
                       shift_roped_k=True)
    assert model.generate(long_prompt, max_new_tokens=30, eos_token_id=None, ctx_size=24, n_keep=KEEP,
                          n_discard=4).shape == (1, 50)
    assert model.generate(short_prompt, max_new_tokens=30, eos_token_id=None, ctx_size=14, n_keep=KEEP,
                          shift_roped_k=True).shape == (1, 40)


def test_the_switches_survive_save(qwen, tmp_path):
    path, _, cfg, t = qwen("qwen-4heads@seq_length=16,use_dynamic_ntk=false")
    model = _load(path)
    saved = Model.load(model.save(tmp_path / "m.llmrt"))
    assert (saved.config.logn_attn_from, saved.config.dynamic_ntk_from) == (16, 0)
    ids = _prompt(cfg["vocab_size"], 24)
    np.testing.assert_array_equal(saved(ids).logits, model(ids).logits)
    assert max_rel_err(saved(ids).logits[0], qwen_forward(cfg, t, ids[0])) <= 1e-4


# ---------------------------------------------------------------------------------------------- GGUF
def write_llamacpp_gguf(path: Path, cfg: dict, tensors: dict[str, np.ndarray]) -> None:
    """What llama.cpp's convert_hf_to_gguf.py QwenModel writes: the gguf package's qwen name map,
    tensors as they are, and set_gguf_parameters' keys (feed_forward_length is the HF
    intermediate_size, rope.dimension_count hidden / heads); vocab_size stands in for the tokenizer."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN, cfg["num_hidden_layers"])
    w = gguf.GGUFWriter(str(path), "qwen")
    w.add_uint32("qwen.vocab_size", cfg["vocab_size"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_rope_freq_base(float(cfg["rotary_emb_base"]))
    w.add_rope_dimension_count(cfg["hidden_size"] // cfg["num_attention_heads"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_layer_norm_rms_eps(cfg["layer_norm_epsilon"])
    for name, arr in tensors.items():
        out = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert out is not None, f"the gguf package has no qwen name for {name}"
        w.add_tensor(out, np.ascontiguousarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("name", ["qwen-4heads", "qwen-2heads-base5e4"])
def test_llamacpp_gguf_matches_the_hf_directory(qwen, tmp_path, name):
    path, ref, cfg, t = qwen(name)
    write_llamacpp_gguf(tmp_path / "m.gguf", cfg, t)
    from_gguf = AutoModelForCausalLM.from_pretrained(tmp_path / "m.gguf", memory_dtype="f32", compute_dtype="fp32")
    from_hf = _load(path)
    g, h = from_gguf.config, from_hf.config
    assert g.family == "qwen" and g.intermediate_size == h.intermediate_size and g.rotary_dim == h.rotary_dim
    assert g.norm_eps == pytest.approx(h.norm_eps, rel=1e-6)          # GGUF stores it as float32
    assert dataclasses.replace(g, max_position_embeddings=0, extra={}, norm_eps=0, bos_token_id=None,
                               eos_token_id=None, pad_token_id=None) == \
        dataclasses.replace(h, max_position_embeddings=0, extra={}, norm_eps=0, logn_attn_from=0,
                            dynamic_ntk_from=0)
    # llama.cpp runs neither dynamic NTK nor logn attention
    assert g.max_position_embeddings == cfg["max_position_embeddings"]
    assert (g.logn_attn_from, g.dynamic_ntk_from) == (0, 0)
    ids = _prompt(cfg["vocab_size"], 20, seed=3)
    got = from_gguf(ids).logits
    assert max_rel_err(got, from_hf(ids).logits) <= 1e-5
    assert max_rel_err(got, _hf_logits(ref, ids)) <= 1e-4


def test_llamacpp_gguf_with_biases_llama_cpp_lacks_is_refused(qwen, tmp_path):
    """no_bias=false gives attn_output / ffn biases, which llama.cpp's qwen graph has no place for."""
    _, _, cfg, t = qwen("qwen-6heads-biases")
    write_llamacpp_gguf(tmp_path / "m.gguf", cfg, t)
    with pytest.raises(UnsupportedError, match="attn_output.bias"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "m.gguf", memory_dtype="f32")
