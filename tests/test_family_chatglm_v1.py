"""ChatGLM-6B (v1) against a reference forward written here in torch (float64) from the published model:
THUDM's GLMBlock (LayerNorm, x = a * LN(x) + f(LN x) with a = sqrt(2 x layers), tanh GELU MLP with biases),
its SelfAttention (per-head fused QKV [q, k, v], 2D rotary: rotate_half on each half of a head, the first
at the token position, the second at the block position; scores q.k / sqrt(d), masked to -10000), and
ChatGLMModel's get_masks / get_position_ids (the prompt up to the first <sop> attends both ways; a later
token t sits at (index of [gMASK], else [MASK]; t - context + 1)).  The checkpoint is written in THUDM's
layout with its config.json; no remote code runs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from conftest import max_rel_err
from test_parity import _dequantized_twin

from llmrt import AutoModelForCausalLM, WeightOnlyQuantConfig
from llmrt.models import chatglm_v1

FP32 = WeightOnlyQuantConfig(not_quant=True, weight_dtype="fp32", compute_dtype="fp32")
MASK, GMASK, SOP, EOS = 250, 251, 252, 253
BASE = {"model_type": "chatglm", "architectures": ["ChatGLMModel"], "bos_token_id": SOP, "eos_token_id": EOS,
        "mask_token_id": MASK, "gmask_token_id": GMASK, "pad_token_id": 3, "layernorm_epsilon": 1e-5,
        "max_sequence_length": 256, "position_encoding_2d": True, "quantization_bit": 0, "pre_seq_len": None,
        "prefix_projection": False, "torch_dtype": "float32", "use_cache": True, "vocab_size": 300}
CONFIGS = {
    "glm6b-4heads-tied": dict(hidden_size=64, num_attention_heads=4, num_layers=2, inner_hidden_size=128),
    "glm6b-2heads-untied": dict(hidden_size=64, num_attention_heads=2, num_layers=3, inner_hidden_size=96,
                                tie_word_embeddings=False),
    "glm6b-6heads": dict(hidden_size=96, num_attention_heads=6, num_layers=2, inner_hidden_size=192,
                         layernorm_epsilon=1e-6),
}


def _weights(f: dict, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, inner, v = f["hidden_size"], f["inner_hidden_size"], f["vocab_size"]
    mat = lambda *shape: (rng.standard_normal(shape) * 0.1).astype(np.float32)
    norm = lambda: (1 + rng.standard_normal(h) * 0.1).astype(np.float32)
    t = {"transformer.word_embeddings.weight": mat(v, h)}
    for i in range(f["num_layers"]):
        p = f"transformer.layers.{i}."
        t.update({p + "input_layernorm.weight": norm(), p + "input_layernorm.bias": mat(h),
                  p + "attention.query_key_value.weight": mat(3 * h, h), p + "attention.query_key_value.bias": mat(3 * h),
                  p + "attention.dense.weight": mat(h, h), p + "attention.dense.bias": mat(h),
                  p + "post_attention_layernorm.weight": norm(), p + "post_attention_layernorm.bias": mat(h),
                  p + "mlp.dense_h_to_4h.weight": mat(inner, h), p + "mlp.dense_h_to_4h.bias": mat(inner),
                  p + "mlp.dense_4h_to_h.weight": mat(h, inner), p + "mlp.dense_4h_to_h.bias": mat(h),
                  # THUDM's checkpoints carry the rotary buffer: read, then dropped
                  p + "attention.rotary_emb.inv_freq": np.ones(h // f["num_attention_heads"] // 4, np.float32)})
    t["transformer.final_layernorm.weight"], t["transformer.final_layernorm.bias"] = norm(), mat(h)
    t["lm_head.weight"] = t["transformer.word_embeddings.weight"] if f.get("tie_word_embeddings", True) else mat(v, h)
    return t


@pytest.fixture(scope="module")
def glm1(tmp_path_factory):
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            f = {**BASE, **CONFIGS[name]}
            d = tmp_path_factory.mktemp(name)
            t = _weights(f, seed=len(cache) + 1)
            save_file({k: np.ascontiguousarray(v) for k, v in t.items()}, str(d / "model.safetensors"))
            (d / "config.json").write_text(json.dumps(f))
            (d / "modeling_chatglm.py").write_text('raise RuntimeError("remote code was executed")\n')
            cache[name] = (d, f, {k: torch.from_numpy(v).double() for k, v in t.items()})
        return cache[name]
    return get


# ------------------------------------------------------------------------------------- the reference
def _rotate(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """THUDM's apply_rotary_pos_emb_index on features (..., d): rotate_half at base 10000 over d."""
    d = x.shape[-1]
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = pos.double()[:, None] * inv[None]
    emb = torch.cat([ang, ang], dim=-1)[:, None, :]                     # (seq, 1, d)
    half = torch.cat([-x[..., d // 2:], x[..., :d // 2]], dim=-1)
    return x * emb.cos() + half * emb.sin()


def reference(f: dict, w: dict, ids: list[int], *, pairs_swapped=False, causal=False, alpha=None) -> np.ndarray:
    """Logits (seq, vocab) of ChatGLM-6B's forward; the keywords break one part on purpose."""
    n, nh, h = len(ids), f["num_attention_heads"], f["hidden_size"]
    hd, eps = h // nh, f["layernorm_epsilon"]
    ctx = ids.index(SOP)
    mark = ids.index(GMASK if GMASK in ids else MASK)
    pos = torch.tensor([t if t < ctx else mark for t in range(n)])
    block = torch.tensor([0 if t < ctx else t - ctx + 1 for t in range(n)])
    t_idx = torch.arange(n)
    allowed = (t_idx[None, :] <= t_idx[:, None]) | (False if causal else (t_idx[None, :] < ctx))
    a = math.sqrt(2 * f["num_layers"]) if alpha is None else alpha
    ln = lambda x, p: torch.nn.functional.layer_norm(x, (h,), w[p + ".weight"], w[p + ".bias"], eps)
    x = w["transformer.word_embeddings.weight"][torch.tensor(ids)]
    for i in range(f["num_layers"]):
        p = f"transformer.layers.{i}."
        hin = ln(x, p + "input_layernorm")
        qkv = (hin @ w[p + "attention.query_key_value.weight"].T + w[p + "attention.query_key_value.bias"])
        q, k, v = qkv.view(n, nh, 3 * hd).split(hd, dim=-1)
        if pairs_swapped:                    # one rotary over the head (a 1D GLM): not ChatGLM-6B
            q, k = _rotate(q, pos), _rotate(k, pos)
        else:
            q = torch.cat([_rotate(q[..., :hd // 2], pos), _rotate(q[..., hd // 2:], block)], dim=-1)
            k = torch.cat([_rotate(k[..., :hd // 2], pos), _rotate(k[..., hd // 2:], block)], dim=-1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)
        scores = scores.masked_fill(~allowed[None], -10000.0)
        z = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(n, h)
        x = hin * a + (z @ w[p + "attention.dense.weight"].T + w[p + "attention.dense.bias"])
        m_in = ln(x, p + "post_attention_layernorm")
        up = m_in @ w[p + "mlp.dense_h_to_4h.weight"].T + w[p + "mlp.dense_h_to_4h.bias"]
        gelu = 0.5 * up * (1.0 + torch.tanh(0.7978845608028654 * up * (1.0 + 0.044715 * up * up)))
        x = m_in * a + (gelu @ w[p + "mlp.dense_4h_to_h.weight"].T + w[p + "mlp.dense_4h_to_h.bias"])
    x = ln(x, "transformer.final_layernorm")
    return (x @ w["lm_head.weight"].T).numpy()


def reference_greedy(f: dict, w: dict, ids: list[int], n_new: int) -> list[int]:
    out = list(ids)
    for _ in range(n_new):
        out.append(int(np.argmax(reference(f, w, out)[-1])))
    return out


def _prompt(n: int, seed: int = 1, mark: int = GMASK) -> list[int]:
    body = np.random.default_rng(seed).integers(5, MASK, size=n).tolist()
    return body + [mark, SOP]


def _load(path, quant=FP32, **kw):
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, trust_remote_code=True,
                                                progress=False, **kw)


# ------------------------------------------------------------------------------------- forward and greedy
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fp32_logits_match_the_reference(glm1, name):
    path, f, w = glm1(name)
    model = _load(path)
    assert not (path / "REMOTE_CODE_RAN").exists()
    for ids in (_prompt(11), _prompt(11) + [17, 42, 99], _prompt(6, seed=3, mark=MASK) + [8]):
        got = model(np.array([ids])).logits[0]
        assert max_rel_err(got, reference(f, w, ids)) <= 1e-4


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fp32_greedy_32_tokens_match_the_reference(glm1, name):
    path, f, w = glm1(name)
    ids = _prompt(7, seed=2)
    got = _load(path).generate(np.array([ids]), max_new_tokens=32, eos_token_id=None)
    assert got[0].tolist() == reference_greedy(f, w, ids, 32)


def test_a_long_context_runs_as_one_chunk(glm1):
    """The context attends both ways, so it cannot be split into max_chunk pieces: it runs whole."""
    path, f, w = glm1("glm6b-4heads-tied")
    ids = _prompt(40, seed=5)
    got = _load(path, max_chunk=8)(np.array([ids])).logits[0]
    assert max_rel_err(got, reference(f, w, ids)) <= 1e-4


def test_each_part_of_the_mapping_matters(glm1, monkeypatch):
    """The comparison fails without the prefix mask, the deepnorm scale or the 2D halves."""
    path, f, w = glm1("glm6b-4heads-tied")
    ids = _prompt(9) + [30]
    got = _load(path)(np.array([ids])).logits[0]
    for wrong in (dict(causal=True), dict(alpha=1.0), dict(pairs_swapped=True)):
        assert max_rel_err(got, reference(f, w, ids, **wrong)) > 1e-2, wrong
    monkeypatch.setattr(chatglm_v1, "halves_order", lambda d: np.arange(d))
    assert max_rel_err(_load(path)(np.array([ids])).logits[0], reference(f, w, ids)) > 1e-2


# ------------------------------------------------------------------------------------- quantized
@pytest.mark.parametrize("weight_dtype,alg,group,scale,compute,tol", [
    ("int8", "sym", 32, "fp32", "fp32", 1e-4), ("int4", "sym", 32, "fp32", "fp32", 1e-4),
    ("int4", "asym", 32, "bf16", "int8", 3e-2)])
@pytest.mark.parametrize("name", ["glm6b-4heads-tied", "glm6b-2heads-untied"])
def test_quantized_equals_its_dequantized_twin(glm1, name, weight_dtype, alg, group, scale, compute, tol):
    path, f, w = glm1(name)
    q = WeightOnlyQuantConfig(weight_dtype=weight_dtype, alg=alg, group_size=group, scale_dtype=scale,
                              compute_dtype=compute)
    model = _load(path, q, memory_dtype="f32")
    ids = np.array([_prompt(12)])
    got = model(ids).logits
    assert max_rel_err(got, _dequantized_twin(model)(ids).logits) <= tol
    assert max_rel_err(got[0], reference(f, w, ids[0].tolist())) > 0


# ------------------------------------------------------------------------------------- generation
def test_beam_search_scores_are_the_reference_log_probabilities(glm1):
    path, f, w = glm1("glm6b-6heads")
    ids = _prompt(6, seed=4)
    out = _load(path).generate(np.array([ids]), max_new_tokens=6, num_beams=3, num_return_sequences=2,
                               eos_token_id=None, output_scores=True, return_dict_in_generate=True)
    for seq, score in zip(out.sequences, out.sequences_scores):
        logits = reference(f, w, seq.tolist())
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        total = sum(logp[len(ids) - 1 + i, seq[len(ids) + i]] for i in range(6))
        assert abs(total / 6 - score) <= 1e-4 * max(1.0, abs(total))


def test_batches_sampling_and_interactive_turns(glm1):
    path, f, w = glm1("glm6b-4heads-tied")
    model = _load(path)
    a, b = _prompt(9, seed=6), _prompt(5, seed=7)
    batch = np.array([a, [3] * 4 + b])
    mask = np.array([[1] * len(a), [0] * 4 + [1] * len(b)])
    got = model.generate(batch, attention_mask=mask, max_new_tokens=8, eos_token_id=None, pad_token_id=3)
    assert got[0, len(a):].tolist() == reference_greedy(f, w, a, 8)[len(a):]
    assert got[1, len(a):].tolist() == reference_greedy(f, w, b, 8)[len(b):]
    s1 = model.generate(np.array([a]), do_sample=True, top_k=20, seed=3, max_new_tokens=10, eos_token_id=None)
    s2 = model.generate(np.array([a]), do_sample=True, top_k=20, seed=3, max_new_tokens=10, eos_token_id=None)
    np.testing.assert_array_equal(s1, s2)
    # a second turn repeats the conversation with its own [gMASK] <sop>: every token attends anew
    first = model.generate(np.array([a]), max_new_tokens=4, eos_token_id=None, interactive=True)
    turn2 = first[0].tolist()[:-2] + [40, 41, GMASK, SOP]
    second = model.generate(np.array([turn2]), max_new_tokens=5, eos_token_id=None, interactive=True)
    assert second[0].tolist() == reference_greedy(f, w, turn2, 5)
    model.reset_conversation()


def test_streaming_and_inputs_without_a_context_are_refused(glm1):
    path, _, _ = glm1("glm6b-4heads-tied")
    model = _load(path)
    with pytest.raises(ValueError, match="StreamingLLM"):
        model.generate(np.array([_prompt(5)]), max_new_tokens=20, ctx_size=12, n_keep=4)
    with pytest.raises(ValueError, match="<sop>"):
        model(np.array([[5, 6, 7]]))
    with pytest.raises(ValueError, match=r"\[gMASK\]"):
        model(np.array([[5, 6, SOP, 7]]))


def test_save_and_load_keep_the_variant(glm1, tmp_path):
    path, f, w = glm1("glm6b-2heads-untied")
    model = _load(path, WeightOnlyQuantConfig(weight_dtype="int8", compute_dtype="fp32"))
    ids = np.array([_prompt(8)])
    again = AutoModelForCausalLM.from_pretrained(model.save(tmp_path / "m.llmrt"))
    np.testing.assert_array_equal(again(ids).logits, model(ids).logits)


def test_hooks_see_the_prefix_lm_pattern_and_change_nothing(glm1):
    """Attention patterns built for hooks follow the prefix-LM mask; hooking every point (no edits) leaves
    the logits bit-identical."""
    path, _, _ = glm1("glm6b-4heads-tied")
    model = _load(path)
    ids = np.array([_prompt(7) + [20, 21]])
    context = ids[0].tolist().index(SOP)
    logits, cache = model.run_with_cache(ids)
    np.testing.assert_array_equal(logits, model(ids).logits)
    pattern = cache["blocks.1.attn.hook_pattern"][0]                  # (head, query, key)
    assert (pattern[:, :context, :context] > 0).all()                  # the context attends both ways
    for q in range(context, ids.shape[1]):                             # later tokens causally
        assert (pattern[:, q, q + 1:] == 0).all() and (pattern[:, q, :q + 1] > 0).all()
    np.testing.assert_allclose(pattern.sum(-1), 1.0, rtol=1e-5)
    z = np.einsum("hqk,khd->qhd", pattern, cache["blocks.1.attn.hook_v"][0])
    np.testing.assert_allclose(z, cache["blocks.1.attn.hook_z"][0], rtol=1e-4, atol=1e-5)
