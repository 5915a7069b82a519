"""Baichuan / Baichuan2 (llmrt/models/baichuan.py) from tiny checkpoints in the remote-code layout the
hub repositories publish (config.json field names, W_pack, NormHead's raw lm_head), against
- transformers' LlamaForCausalLM with W_pack split into q/k/v (the 7B variants, rotary), and
- a small torch forward of the 13B variants' published math (ALiBi), written here from
  Baichuan-13B's modeling_baichuan.py, not from llmrt.
Also: the variant rules, quantized twins, a deliberately wrong mapping, generation, chat,
StreamingLLM and llama.cpp GGUF files."""
from __future__ import annotations

import json
import math
import shutil
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
from llmrt.models import family_for_gguf, family_for_hf

FP32 = WeightOnlyQuantConfig(weight_dtype="fp32", compute_dtype="fp32")
COMMON = dict(model_type="baichuan", hidden_act="silu", rms_norm_eps=1e-6, initializer_range=0.02, bos_token_id=1,
              eos_token_id=2, pad_token_id=0, tie_word_embeddings=False, use_cache=True, torch_dtype="float32",
              auto_map={"AutoConfig": "configuration_baichuan.BaichuanConfig",
                        "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM"})
B7, B13 = ["BaiChuanForCausalLM"], ["BaichuanForCausalLM"]
# name -> config.json of a tiny checkpoint, with the fields its published model has
CONFIGS = {
    # Baichuan-7B: BaiChuanForCausalLM, max_position_embeddings, 64000-token head used as is
    "baichuan-7b": dict(architectures=B7, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, vocab_size=250, max_position_embeddings=512),
    # Baichuan2-7B: both context fields and z_loss_weight (NormHead); 3 layers, 2 heads of 32
    "baichuan2-7b-normhead": dict(architectures=B13, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                                  num_attention_heads=2, vocab_size=301, max_position_embeddings=512,
                                  model_max_length=512, z_loss_weight=0),
    "baichuan-7b-theta": dict(architectures=B7, hidden_size=96, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=3, vocab_size=199, max_position_embeddings=512, rope_theta=50000.0),
    # Baichuan-13B: model_max_length only (ALiBi); 6 and 12 heads are not powers of two
    "baichuan-13b-6heads": dict(architectures=B13, hidden_size=96, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=6, vocab_size=245, model_max_length=512),
    "baichuan2-13b-12heads-normhead": dict(architectures=B13, hidden_size=96, intermediate_size=96,
                                           num_hidden_layers=2, num_attention_heads=12, vocab_size=233,
                                           model_max_length=512, z_loss_weight=0, gradient_checkpointing=False),
    "baichuan-13b-4heads": dict(architectures=B13, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                num_attention_heads=4, vocab_size=211, model_max_length=512),
}
ROTARY = ["baichuan-7b", "baichuan2-7b-normhead", "baichuan-7b-theta"]
ALIBI = ["baichuan-13b-6heads", "baichuan2-13b-12heads-normhead", "baichuan-13b-4heads"]


def _norm_head(cfg: dict) -> bool:
    return "z_loss_weight" in cfg or cfg["vocab_size"] == 125696


def _random_weights(cfg: dict, seed: int) -> dict[str, np.ndarray]:
    """Remote-layout tensors: matrices N(0, 0.1), norms 1 + N(0, 0.1) (so they are tested too), and a
    head whose rows have unequal norms (so NormHead's normalisation changes the logits)."""
    rng = np.random.default_rng(seed)
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    mat = lambda *s: rng.normal(0, 0.1, s).astype(np.float32)           # noqa: E731
    norm = lambda: (1 + rng.normal(0, 0.1, h)).astype(np.float32)       # noqa: E731
    sd = {"model.embed_tokens.weight": mat(v, h), "model.norm.weight": norm(),
          "lm_head.weight": mat(v, h) * rng.uniform(0.3, 3.0, (v, 1)).astype(np.float32)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sd.update({p + "input_layernorm.weight": norm(), p + "post_attention_layernorm.weight": norm(),
                   p + "self_attn.W_pack.weight": mat(3 * h, h), p + "self_attn.o_proj.weight": mat(h, h),
                   p + "mlp.gate_proj.weight": mat(f, h), p + "mlp.up_proj.weight": mat(f, h),
                   p + "mlp.down_proj.weight": mat(h, f)})
    return sd


def write_checkpoint(d: Path, cfg: dict, sd: dict[str, np.ndarray]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({**COMMON, **cfg}, indent=2))
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    return d


def normalized(w: np.ndarray) -> np.ndarray:
    return torch.nn.functional.normalize(torch.from_numpy(w)).numpy()     # NormHead's eval-time weight


def llama_reference(cfg: dict, sd: dict[str, np.ndarray]) -> transformers.LlamaForCausalLM:
    """transformers' Llama on the same weights: W_pack rows [Q | K | V] split, NormHead's rows normalised."""
    lc = transformers.LlamaConfig(hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
                                  num_hidden_layers=cfg["num_hidden_layers"],
                                  num_attention_heads=cfg["num_attention_heads"],
                                  num_key_value_heads=cfg["num_attention_heads"], vocab_size=cfg["vocab_size"],
                                  rms_norm_eps=1e-6, max_position_embeddings=cfg["max_position_embeddings"],
                                  rope_theta=cfg.get("rope_theta", 10000.0), tie_word_embeddings=False,
                                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    ref = transformers.LlamaForCausalLM(lc).float().eval()
    state = {}
    for name, w in sd.items():
        if name.endswith("W_pack.weight"):
            for part, rows in zip(("q_proj", "k_proj", "v_proj"), np.split(w, 3)):
                state[name.replace("W_pack", part)] = torch.from_numpy(rows.copy())
        else:
            state[name] = torch.from_numpy(normalized(w) if name == "lm_head.weight" and _norm_head(cfg) else w)
    ref.load_state_dict(state, strict=True)
    return ref


def baichuan13b_slopes(n: int) -> list[float]:
    """Baichuan-13B's _get_interleave: a geometric series from 2^(-8/n) for a power of two n, else that
    of the power of two below plus every other slope of the next one (the ALiBi paper's rule)."""
    def power_of_2(m: int) -> list[float]:
        start = 2 ** (-2 ** -(math.log2(m) - 3))
        return [start * start ** i for i in range(m)]
    if math.log2(n).is_integer():
        return power_of_2(n)
    c = 2 ** math.floor(math.log2(n))
    return power_of_2(c) + baichuan13b_slopes(2 * c)[0::2][:n - c]


class AlibiReference:
    """Baichuan-13B / Baichuan2-13B in float64 from modeling_baichuan.py's math: RMSNorm (x * rsqrt(mean
    x^2 + eps) * w); W_pack -> q, k, v (thirds of its rows); scores q.k / sqrt(head_dim) plus the ALiBi
    mask (slope_h * key index, with -inf above the diagonal: _gen_alibi_mask); softmax; o_proj;
    residual; RMSNorm; SwiGLU down(silu(gate x) * up x); final RMSNorm; lm_head (normalised: NormHead)."""

    def __init__(self, cfg: dict, sd: dict[str, np.ndarray]):
        self.cfg, self.n_head = cfg, cfg["num_attention_heads"]
        self.w = {k: torch.from_numpy(v).double() for k, v in sd.items()}
        if _norm_head(cfg):
            self.w["lm_head.weight"] = torch.nn.functional.normalize(self.w["lm_head.weight"])
        self.slopes = torch.tensor(baichuan13b_slopes(self.n_head), dtype=torch.float64)

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.cfg.get("rms_norm_eps", 1e-6)))

    def logits(self, ids) -> np.ndarray:
        """(len(ids), vocab) logits of one sequence, every position."""
        w, H = self.w, self.n_head
        x = w["model.embed_tokens.weight"][torch.as_tensor(np.asarray(ids), dtype=torch.long)]
        T, D = x.shape[0], x.shape[1] // H
        mask = torch.triu(torch.full((T, T), float("-inf"), dtype=torch.float64), 1)
        bias = self.slopes[:, None, None] * torch.arange(T, dtype=torch.float64)[None, None, :] + mask
        for i in range(self.cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            h = self._rms(x, w[p + "input_layernorm.weight"])
            q, k, v = (h @ w[p + "self_attn.W_pack.weight"].T).chunk(3, dim=-1)
            q, k, v = (t.reshape(T, H, D).transpose(0, 1) for t in (q, k, v))
            att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(D) + bias, dim=-1) @ v
            x = x + att.transpose(0, 1).reshape(T, H * D) @ w[p + "self_attn.o_proj.weight"].T
            h = self._rms(x, w[p + "post_attention_layernorm.weight"])
            act = torch.nn.functional.silu(h @ w[p + "mlp.gate_proj.weight"].T) * (h @ w[p + "mlp.up_proj.weight"].T)
            x = x + act @ w[p + "mlp.down_proj.weight"].T
        return (self._rms(x, w["model.norm.weight"]) @ w["lm_head.weight"].T).numpy()

    def greedy(self, ids, n: int) -> list[int]:
        seq = [int(t) for t in ids]
        for _ in range(n):
            seq.append(int(np.argmax(self.logits(seq)[-1])))
        return seq


class Tiny:
    """One tiny checkpoint: its directory, config, weights and reference (logits of a sequence)."""

    def __init__(self, path: Path, cfg: dict, sd: dict):
        self.path, self.cfg, self.sd = path, cfg, sd
        self.alibi = "max_position_embeddings" not in cfg
        self.ref = AlibiReference(cfg, sd) if self.alibi else llama_reference(cfg, sd)
        self.model = AutoModelForCausalLM.from_pretrained(path, quantization_config=FP32, memory_dtype="f32")

    def ref_logits(self, ids) -> np.ndarray:
        if self.alibi:
            return self.ref.logits(ids).astype(np.float32)
        with torch.no_grad():
            return self.ref(torch.tensor([list(ids)])).logits[0].numpy()

    def ref_greedy(self, ids, n: int) -> list[int]:
        if self.alibi:
            return self.ref.greedy(ids, n)
        with torch.no_grad():
            return self.ref.generate(torch.tensor([list(ids)]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                     eos_token_id=None, pad_token_id=0)[0].tolist()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cache: dict[str, Tiny] = {}

    def get(name: str) -> Tiny:
        if name not in cache:
            cfg, sd = CONFIGS[name], _random_weights(CONFIGS[name], seed=len(cache) + 1)
            cache[name] = Tiny(write_checkpoint(tmp_path_factory.mktemp(name), cfg, sd), cfg, sd)
        return cache[name]
    return get


def _prompt(vocab: int, n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, vocab, size=n)


# ------------------------------------------------------------------------------------- variant rules
PUBLISHED = {   # the fields that decide, as the hub configs have them (sizes as published)
    "Baichuan-7B": (dict(architectures=B7, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                         vocab_size=64000, max_position_embeddings=4096), "rotary", False),
    "Baichuan2-7B": (dict(architectures=B13, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                          vocab_size=125696, max_position_embeddings=4096, model_max_length=4096, z_loss_weight=0),
                     "rotary", True),
    "Baichuan-13B": (dict(architectures=B13, hidden_size=5120, num_hidden_layers=40, num_attention_heads=40,
                          vocab_size=64000, model_max_length=4096), "alibi", False),
    "Baichuan2-13B": (dict(architectures=B13, hidden_size=5120, num_hidden_layers=40, num_attention_heads=40,
                           vocab_size=125696, model_max_length=4096, z_loss_weight=0), "alibi", True),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_variant_rules_on_the_published_configs(name):
    fields, positions, norm_head = PUBLISHED[name]
    cfg = family_for_hf("baichuan").config_from_hf({**COMMON, "intermediate_size": 11008, **fields})
    spec = cfg.block_spec()
    assert (cfg.family, spec.positions, cfg.extra["norm_head"]) == ("baichuan", positions, norm_head)
    assert cfg.max_position_embeddings == 4096 and spec.n_kv_heads == spec.n_heads == fields["num_attention_heads"]
    if positions == "alibi":
        assert spec.rotary_dim == 0 and np.allclose(spec.alibi_slopes, baichuan13b_slopes(40), rtol=1e-6)
    else:
        assert spec.rotary_dim == 128 and not spec.rotary_interleaved


def test_variant_rules_ignore_the_layer_count_and_refuse_the_unknown():
    base = {**COMMON, **CONFIGS["baichuan-7b"]}
    fam = family_for_hf("baichuan")
    assert fam.config_from_hf({**base, "num_hidden_layers": 40}).block_spec().positions == "rotary"
    alibi = {k: v for k, v in base.items() if k != "max_position_embeddings"}
    alibi.update(architectures=B13, model_max_length=512, num_hidden_layers=32)
    assert fam.config_from_hf(alibi).block_spec().positions == "alibi"
    with pytest.raises(ConfigError, match="max_position_embeddings .* model_max_length"):
        fam.config_from_hf({k: v for k, v in alibi.items() if k != "model_max_length"})
    with pytest.raises(UnsupportedError, match="num_key_value_heads"):
        fam.config_from_hf({**base, "num_key_value_heads": 2})
    with pytest.raises(UnsupportedError, match="NormHead"):
        fam.config_from_hf({**base, "z_loss_weight": 0, "tie_word_embeddings": True})
    assert fam.config_from_hf({**base, "vocab_size": 125696}).extra["norm_head"]


# ------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fp32_logits_match_the_reference(tiny, name):
    t = tiny(name)
    assert t.model.memory_dtype == "f32" and t.model.config.block_spec().positions == ("alibi" if t.alibi
                                                                                      else "rotary")
    ids = _prompt(t.cfg["vocab_size"], 24)
    got, want = t.model(ids[None]).logits[0], t.ref_logits(ids)
    err = max_rel_err(got, want)
    print(f"\n{name}: fp32 max |diff| / max |logit| = {err:.2e}")
    assert err <= 1e-4
    if _norm_head(t.cfg):         # the head really was normalised: the raw rows give other logits
        final = t.model(ids[None], output_hidden_states=True).hidden_states[-1][0]
        assert max_rel_err(got, final @ t.sd["lm_head.weight"].T) > 1e-2
        assert max_rel_err(got, final @ normalized(t.sd["lm_head.weight"]).T) <= 1e-5


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fp32_greedy_32_tokens_match_the_reference(tiny, name):
    t = tiny(name)
    ids = _prompt(t.cfg["vocab_size"], 5, seed=2)
    got = t.model.generate(ids[None], max_new_tokens=32, eos_token_id=None)[0].tolist()
    assert got == t.ref_greedy(ids, 32)


def _dequantized_twin(model: Model) -> Model:
    tensors = {n: ((f.dequantize(a), None) if f is not None else (np.asarray(a, np.float32), None))
               for n, (a, f) in model._tensors.items()}
    return Model(model.config, FP32, tensors, model.source, memory_dtype="f32")


@pytest.mark.parametrize("wd,alg,scale,compute,tol", [("int8", "sym", "fp32", "fp32", 1e-4),
                                                      ("int4", "asym", "bf16", "int8", 3e-2),
                                                      ("int4", "sym", "fp32", "fp32", 1e-4)])
@pytest.mark.parametrize("name", ["baichuan2-7b-normhead", "baichuan-13b-6heads", "baichuan2-13b-12heads-normhead"])
def test_quantized_equals_its_dequantized_twin(tiny, name, wd, alg, scale, compute, tol):
    t = tiny(name)
    q = WeightOnlyQuantConfig(weight_dtype=wd, alg=alg, group_size=32, scale_dtype=scale, compute_dtype=compute)
    model = AutoModelForCausalLM.from_pretrained(t.path, quantization_config=q, memory_dtype="f32")
    assert model._tensors["layers.0.qkv.weight"][1] is not None      # W_pack really was quantized
    ids = _prompt(t.cfg["vocab_size"], 16)[None]
    got = model(ids).logits
    err = max_rel_err(got, _dequantized_twin(model)(ids).logits)
    print(f"\n{name} {wd}/{alg}/{compute}: vs dequantized twin {err:.2e}")
    assert err <= tol, f"relative error {err:.2e}"
    assert max_rel_err(got, t.model(ids).logits) > 0                # quantization happened


@pytest.mark.parametrize("name", ["baichuan-7b", "baichuan-13b-6heads"])
def test_swapped_q_and_k_rows_fail_the_comparison(tiny, tmp_path, name):
    """A wrong W_pack mapping (Q and K thirds exchanged) must not pass: the comparison is sensitive."""
    t = tiny(name)
    bad = dict(t.sd)
    for k, w in t.sd.items():
        if k.endswith("W_pack.weight"):
            q, kk, v = np.split(w, 3)
            bad[k] = np.concatenate([kk, q, v])
    model = AutoModelForCausalLM.from_pretrained(write_checkpoint(tmp_path / "swapped", t.cfg, bad),
                                                 quantization_config=FP32)
    ids = _prompt(t.cfg["vocab_size"], 24)
    assert max_rel_err(model(ids[None]).logits[0], t.ref_logits(ids)) > 1e-2


def test_trust_remote_code_is_accepted_and_runs_nothing(tiny, tmp_path):
    t = tiny("baichuan-13b-6heads")
    d = Path(shutil.copytree(t.path, tmp_path / "remote"))
    marker = tmp_path / "remote-code-ran"
    for f in ("modeling_baichuan.py", "configuration_baichuan.py"):
        (d / f).write_text(f"open({str(marker)!r}, 'w').write('ran')\nraise SystemExit('remote code ran')\n")
    model = AutoModelForCausalLM.from_pretrained(d, trust_remote_code=True, quantization_config=FP32)
    ids = _prompt(t.cfg["vocab_size"], 8)[None]
    np.testing.assert_allclose(model(ids).logits, t.model(ids).logits, rtol=0, atol=1e-6)
    assert not marker.exists()


def test_llmrt_file_round_trip_keeps_the_normalised_head(tiny, tmp_path):
    t = tiny("baichuan2-13b-12heads-normhead")
    model = AutoModelForCausalLM.from_pretrained(t.path, quantization_config=WeightOnlyQuantConfig(weight_dtype="int8"))
    again = Model.load(model.save(tmp_path / "m.llmrt"))
    assert again.config.extra["norm_head"] and again.config.block_spec().positions == "alibi"
    ids = _prompt(t.cfg["vocab_size"], 10)[None]
    np.testing.assert_array_equal(again(ids).logits, model(ids).logits)


# --------------------------------------------------------------------------------------- generation
def _hf_generate(ref, ids: np.ndarray, **kw) -> np.ndarray:
    with torch.no_grad():
        return ref.generate(torch.from_numpy(ids), do_sample=False, pad_token_id=0, **kw).numpy()


@pytest.mark.parametrize("kw", [dict(num_beams=3), dict(num_beams=4, num_return_sequences=2, length_penalty=0.5),
                                dict(num_beams=3, repetition_penalty=1.5, no_repeat_ngram_size=2)])
def test_beam_search_matches_transformers(tiny, kw):
    t = tiny("baichuan2-7b-normhead")
    ids = _prompt(t.cfg["vocab_size"], 6, seed=3)[None]
    want = _hf_generate(t.ref, ids, max_new_tokens=14, eos_token_id=None, **kw)
    np.testing.assert_array_equal(t.model.generate(ids, max_new_tokens=14, eos_token_id=None, pad_token_id=0, **kw),
                                  want)


def _left_padded(vocab: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(7)
    prompts = [rng.integers(3, vocab, size=n) for n in (4, 9)]
    ids, mask = np.zeros((2, 9), np.int64), np.zeros((2, 9), np.int64)
    for r, p in enumerate(prompts):
        ids[r, 9 - p.size:], mask[r, 9 - p.size:] = p, 1
    return ids, mask, prompts


def test_left_padded_batch_matches_transformers(tiny):
    t = tiny("baichuan-7b")
    ids, mask, prompts = _left_padded(t.cfg["vocab_size"])
    kw = dict(max_new_tokens=16, eos_token_id=None, pad_token_id=0, repetition_penalty=1.3)
    with torch.no_grad():
        want = t.ref.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), do_sample=False, **kw)
    got = t.model.generate(ids, attention_mask=mask, **kw)
    np.testing.assert_array_equal(got, want.numpy())
    for r, p in enumerate(prompts):
        np.testing.assert_array_equal(got[r, 9 - p.size:], t.model.generate(p[None], **kw)[0])


@pytest.mark.parametrize("name", ["baichuan-13b-6heads", "baichuan2-13b-12heads-normhead"])
def test_alibi_batch_and_beam_rows_equal_single_calls(tiny, name):
    """No transformers class for ALiBi Baichuan: each row of a left-padded batch equals its own call,
    and the greedy rows are the reference's continuations."""
    t = tiny(name)
    ids, mask, prompts = _left_padded(t.cfg["vocab_size"])
    for kw in (dict(max_new_tokens=12), dict(max_new_tokens=8, num_beams=3)):
        kw.update(eos_token_id=None, pad_token_id=0)
        got = t.model.generate(ids, attention_mask=mask, **kw)
        for r, p in enumerate(prompts):
            np.testing.assert_array_equal(got[r, 9 - p.size:], t.model.generate(p[None], **kw)[0])
            if "num_beams" not in kw:
                assert got[r, 9 - p.size:].tolist() == t.ref_greedy(p, 12)


@pytest.mark.parametrize("name", ["baichuan-7b", "baichuan2-13b-12heads-normhead"])
def test_sampling_with_a_seed_is_deterministic(tiny, name):
    t = tiny(name)
    ids = _prompt(t.cfg["vocab_size"], 6, seed=4)[None]
    kw = dict(do_sample=True, temperature=1.3, top_k=40, top_p=0.95, max_new_tokens=20, eos_token_id=None)
    a, b = t.model.generate(ids, seed=11, **kw), t.model.generate(ids, seed=11, **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, t.model.generate(ids, seed=12, **kw))


@pytest.mark.parametrize("name", ["baichuan2-7b-normhead", "baichuan-13b-6heads"])
def test_interactive_turns_reuse_the_kv_cache(tiny, name):
    t = tiny(name)
    chat = AutoModelForCausalLM.from_pretrained(t.path, quantization_config=FP32, memory_dtype="f32")
    chat.engine = CountingEngine(chat.engine)
    history: list[int] = []
    for turn, n in enumerate((7, 4, 5)):
        prompt = _prompt(t.cfg["vocab_size"], n, seed=20 + turn).tolist()
        before = chat.engine.n
        out = chat.generate([prompt], interactive=True, ignore_prompt=True, do_sample=True, seed=turn,
                            max_new_tokens=8, eos_token_id=None)
        # only the new turn ran (plus the previous answer's last token, sampled but never run)
        assert chat.engine.n - before == n + (turn > 0) + 7
        whole = history + prompt
        np.testing.assert_array_equal(out, t.model.generate([whole], ignore_prompt=True, do_sample=True, seed=turn,
                                                            max_new_tokens=8, eos_token_id=None))
        history = whole + out[0].tolist()


def test_chat_second_turn_runs_only_what_the_cache_lacks(tiny):
    t = tiny("baichuan-7b")
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
    chars = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,?!\n"))
    tk = Tokenizer(models.WordLevel({c: i for i, c in enumerate(specials + chars)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>")
    chat = AutoModelForCausalLM.from_pretrained(t.path, quantization_config=FP32, memory_dtype="f32")
    chat.engine = CountingEngine(chat.engine)
    gen = dict(max_new_tokens=10, eos_token_id=None)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there!"}]
    ids1 = chat_input_ids(messages, tok)
    g1 = t.model.generate([ids1], ignore_prompt=True, **gen)[0].tolist()
    assert chat.chat(messages, tok, **gen) == tok.decode(g1, skip_special_tokens=True)
    messages += [{"role": "assistant", "content": tok.decode(g1, skip_special_tokens=True)},
                 {"role": "user", "content": "And then?"}]
    whole, cached = chat_input_ids(messages, tok), ids1 + g1[:-1]        # the last new token never ran
    common = next((i for i, (a, b) in enumerate(zip(whole, cached)) if a != b), min(len(whole), len(cached)))
    before = chat.engine.n
    second = chat.chat(messages, tok, **gen)
    assert chat.engine.n - before == len(whole) - common + 9 and common > 15
    g2 = t.model.generate([whole], ignore_prompt=True, **gen)[0].tolist()
    assert second == tok.decode(g2, skip_special_tokens=True)


# ------------------------------------------------------------------------------------- StreamingLLM
CTX, KEEP = 16, 4


def _reeval_window(seq: list[int], n_fed: int) -> list[int]:
    """What a re-evaluating cache (n_keep KEEP, n_discard -1: half the rest) holds after n_fed tokens."""
    held: list[int] = []
    for tok in seq[:n_fed]:
        if len(held) == CTX:
            held = held[:KEEP] + held[KEEP + max((len(held) - KEEP) // 2, 1):]
        held.append(tok)
    return held


def _ring_window(seq: list[int], n_fed: int) -> list[int]:
    return seq[:n_fed] if n_fed <= CTX else seq[:KEEP] + seq[n_fed - (CTX - KEEP):n_fed]


def _check_stream(t: Tiny, model, window, **kw) -> None:
    prompt = _prompt(t.cfg["vocab_size"], 7, seed=5)[None]
    out = model.generate(prompt, max_new_tokens=3 * CTX, eos_token_id=None, ctx_size=CTX, n_keep=KEEP,
                         return_dict_in_generate=True, output_logits=True, **kw)
    seq = out.sequences[0].tolist()
    assert len(seq) == 7 + 3 * CTX
    for i, got in enumerate(out.logits):
        want = t.ref_logits(window(seq, 7 + i))[-1]
        np.testing.assert_allclose(got[0], want, rtol=0, atol=1e-4 * np.abs(want).max(), err_msg=f"step {i}")


@pytest.mark.parametrize("name", ["baichuan2-7b-normhead", "baichuan-13b-6heads"])
def test_streaming_reevaluation_equals_from_scratch(tiny, name):
    t = tiny(name)
    _check_stream(t, t.model, _reeval_window, n_discard=-1)


@pytest.mark.parametrize("name", ["baichuan-7b", "baichuan-13b-6heads"])
def test_shift_roped_k_equals_from_scratch_on_one_layer(tiny, tmp_path, name):
    """One layer: its cached K/V depend only on token and position, so the ring equals a fresh forward
    of the tokens it holds.  ALiBi keys carry no rotation; the engine moves them in slot order instead."""
    cfg = {**CONFIGS[name], "num_hidden_layers": 1}
    sd = _random_weights(cfg, seed=9)
    one = Tiny(write_checkpoint(tmp_path / name, cfg, sd), cfg, sd)
    assert one.model.engine.shifts.can_shift_keys
    _check_stream(one, one.model, _ring_window, shift_roped_k=True)


# --------------------------------------------------------------------------------------------- GGUF
def _llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's _reverse_hf_permute: each head's two row halves interleaved."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llamacpp_gguf(path: Path, cfg: dict, sd: dict[str, np.ndarray]) -> None:
    """What llama.cpp's BaichuanModel converter writes: its metadata keys, W_pack split into attn_q /
    attn_k (permuted) / attn_v, the other tensors by the gguf package's name map."""
    n_layer, n_head, h = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["hidden_size"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BAICHUAN, n_layer)
    w = gguf.GGUFWriter(str(path), "baichuan")
    w.add_uint32("baichuan.vocab_size", cfg["vocab_size"])
    w.add_tensor_data_layout("Meta AI original pth")
    w.add_context_length(cfg.get("max_position_embeddings") or cfg["model_max_length"])
    w.add_embedding_length(h)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_rope_dimension_count(h // n_head)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_layer_norm_rms_eps(1e-6)
    for name, arr in sd.items():
        if name.endswith("W_pack.weight"):
            q, k, v = np.split(arr, 3)
            i = name.split(".")[2]
            for part, rows in (("attn_q", _llamacpp_permute(q, n_head)), ("attn_k", _llamacpp_permute(k, n_head)),
                               ("attn_v", v)):
                w.add_tensor(f"blk.{i}.{part}.weight", np.ascontiguousarray(rows))
            continue
        out = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert out is not None, name
        w.add_tensor(out, np.ascontiguousarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


GGUF_CASES = {"baichuan-7b": CONFIGS["baichuan-7b"], "baichuan2-7b-normhead": CONFIGS["baichuan2-7b-normhead"],
              # llama.cpp runs ALiBi for 40 blocks (its LLM_TYPE_13B), so the ALiBi file has 40 layers
              "baichuan-13b-40layers": dict(architectures=B13, hidden_size=48, intermediate_size=64,
                                            num_hidden_layers=40, num_attention_heads=6, vocab_size=199,
                                            model_max_length=512)}


@pytest.mark.parametrize("name", sorted(GGUF_CASES))
def test_llamacpp_gguf_matches_the_hf_directory(tmp_path, name):
    cfg = GGUF_CASES[name]
    sd = _random_weights(cfg, seed=13)
    t = Tiny(write_checkpoint(tmp_path / "hf", cfg, sd), cfg, sd)
    gguf_sd = dict(sd)
    if _norm_head(cfg):         # Baichuan2's README: normalise lm_head before llama.cpp's conversion
        gguf_sd["lm_head.weight"] = normalized(sd["lm_head.weight"])
    write_llamacpp_gguf(tmp_path / "m.gguf", cfg, gguf_sd)
    from_gguf = AutoModelForCausalLM.from_pretrained(tmp_path / "m.gguf", memory_dtype="f32")
    assert from_gguf.config.family == "baichuan" == family_for_gguf("baichuan").name
    assert from_gguf.config.block_spec().positions == t.model.config.block_spec().positions
    ids = _prompt(cfg["vocab_size"], 20, seed=3)
    got = from_gguf(ids[None]).logits[0]
    assert max_rel_err(got, t.model(ids[None]).logits[0]) <= 1e-5
    err = max_rel_err(got, t.ref_logits(ids))
    print(f"\ngguf {name}: vs reference {err:.2e}")
    assert err <= 1e-4
