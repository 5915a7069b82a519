"""Each family against transformers' own PyTorch forward and generate on the same weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from llmrt import AutoModelForCausalLM, WeightOnlyQuantConfig
from conftest import TINY_CONFIGS, max_rel_err

FP32 = WeightOnlyQuantConfig(not_quant=True, weight_dtype="fp32", compute_dtype="fp32")


def _prompt(vocab: int, n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, vocab, size=(1, n))


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_fp32_logits_match_transformers(tiny_models, name):
    path, ref = tiny_models(name)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=FP32, memory_dtype="f32")
    ids = _prompt(ref.config.vocab_size, 24)
    with torch.no_grad():
        want = ref(torch.from_numpy(ids)).logits.numpy()
    got = model(ids).logits
    assert got.shape == want.shape and got.dtype == np.float32
    assert max_rel_err(got, want) <= 1e-4


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_fp32_greedy_tokens_match_transformers(tiny_models, name):
    path, ref = tiny_models(name)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=FP32, memory_dtype="f32")
    ids = _prompt(ref.config.vocab_size, 5, seed=2)
    with torch.no_grad():
        want = ref.generate(torch.from_numpy(ids), max_new_tokens=32, min_new_tokens=32, do_sample=False,
                            eos_token_id=None, pad_token_id=0).numpy()
    got = model.generate(ids, max_new_tokens=32, eos_token_id=None)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["llama-gqa-tied", "neox-pct25-parallel"])
def test_hidden_states_match_transformers(tiny_models, name):
    path, ref = tiny_models(name)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=FP32, memory_dtype="f32")
    ids = _prompt(ref.config.vocab_size, 9)
    with torch.no_grad():
        want = ref(torch.from_numpy(ids), output_hidden_states=True).hidden_states
    got = model(ids, output_hidden_states=True).hidden_states
    assert len(got) == len(want) == ref.config.num_hidden_layers + 1
    for g, w in zip(got, want):
        assert max_rel_err(g, w.numpy()) <= 1e-4


@pytest.mark.parametrize("name", ["llama-gqa-tied", "neox-pct100-sequential"])
def test_f16_kv_cache_stays_close(tiny_models, name):
    path, ref = tiny_models(name)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=FP32)   # f16 cache by default
    ids = _prompt(ref.config.vocab_size, 24)
    with torch.no_grad():
        want = ref(torch.from_numpy(ids)).logits.numpy()
    assert max_rel_err(model(ids).logits, want) <= 5e-3


@pytest.mark.parametrize("weight_dtype,alg,group,compute,tol", [
    ("int8", "sym", 32, "int8", 0.03),
    ("int8", "asym", 32, "fp32", 0.03),
    ("int4", "sym", 32, "int8", 0.25),
    ("int4", "asym", -1, "fp32", 0.3),
    ("int4", "sym", 32, "bf16", 0.25),
])
@pytest.mark.parametrize("name", ["llama-gqa-tied", "neox-pct25-parallel"])
def test_quantized_logits_close_to_fp32(tiny_models, name, weight_dtype, alg, group, compute, tol):
    path, ref = tiny_models(name)
    q = WeightOnlyQuantConfig(weight_dtype=weight_dtype, alg=alg, group_size=group, compute_dtype=compute)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=q)
    ids = _prompt(ref.config.vocab_size, 16)
    with torch.no_grad():
        want = ref(torch.from_numpy(ids)).logits.numpy()
    got = model(ids).logits
    err = max_rel_err(got, want)
    assert err <= tol, f"relative error {err:.4f}"
    # and quantization is real: the int8/int4 logits are not bit-identical to fp32
    assert err > 0
