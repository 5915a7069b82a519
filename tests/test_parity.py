"""Each family against transformers' own PyTorch forward and generate on the same weights: one
runner, every config of conftest.TINY_CONFIGS (adding a family adds configs, not tests)."""
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
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=FP32)
    assert model.memory_dtype == "f32"           # fp32 end to end, KV cache included
    ids = _prompt(ref.config.vocab_size, 24)
    with torch.no_grad():
        want = ref(torch.from_numpy(ids)).logits.numpy()
    got = model(ids).logits
    assert got.shape == want.shape and got.dtype == np.float32
    assert max_rel_err(got, want) <= 1e-4


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_fp32_greedy_tokens_match_transformers(tiny_models, name):
    path, ref = tiny_models(name)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=FP32)
    ids = _prompt(ref.config.vocab_size, 5, seed=2)
    with torch.no_grad():
        want = ref.generate(torch.from_numpy(ids), max_new_tokens=32, min_new_tokens=32, do_sample=False,
                            eos_token_id=None, pad_token_id=0).numpy()
    got = model.generate(ids, max_new_tokens=32, eos_token_id=None)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_hidden_states_match_transformers(tiny_models, name):
    path, ref = tiny_models(name)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=FP32)
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
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=FP32, memory_dtype="f16")
    ids = _prompt(ref.config.vocab_size, 24)
    with torch.no_grad():
        want = ref(torch.from_numpy(ids)).logits.numpy()
    assert max_rel_err(model(ids).logits, want) <= 5e-3


def _dequantized_twin(model):
    """The same model with every quantized tensor replaced by its dequantized fp32 values, run on
    the fp32 path (itself checked against transformers above)."""
    from llmrt.model import Model
    tensors = {n: ((f.dequantize(a), None) if f is not None else (np.asarray(a, np.float32), None))
               for n, (a, f) in model._tensors.items()}
    return Model(model.config, FP32, tensors, model.source, memory_dtype="f32")


# every family: an int8 and an int4 format; llama and gpt_neox: the whole grid below
FAMILY_QUANT_CASES = [("int8", "sym", 32, "fp32", "fp32", 1e-4), ("int4", "asym", 32, "bf16", "int8", 3e-2)]


@pytest.mark.parametrize("weight_dtype,alg,group,scale,compute,tol", FAMILY_QUANT_CASES)
@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_every_family_quantized_matches_its_dequantized_weights(tiny_models, name, weight_dtype, alg, group, scale,
                                                                compute, tol):
    _check_quantized_twin(tiny_models, name, weight_dtype, alg, group, scale, compute, tol)


@pytest.mark.parametrize("weight_dtype,alg,group,scale,compute,tol", [
    ("int8", "sym", 32, "fp32", "fp32", 1e-4),
    ("int8", "asym", 32, "bf16", "fp32", 1e-4),
    ("int4", "sym", 32, "fp32", "fp32", 1e-4),
    ("int4", "asym", -1, "fp32", "fp32", 1e-4),
    ("int4", "sym", 32, "fp32", "bf16", 3e-2),
    ("int8", "sym", 32, "fp32", "int8", 3e-2),
    ("int4", "asym", 32, "bf16", "int8", 3e-2),
])
@pytest.mark.parametrize("name", ["llama-gqa-tied", "neox-pct25-parallel"])
def test_quantized_model_matches_its_dequantized_weights(tiny_models, name, weight_dtype, alg, group, scale,
                                                         compute, tol):
    _check_quantized_twin(tiny_models, name, weight_dtype, alg, group, scale, compute, tol)


def _check_quantized_twin(tiny_models, name, weight_dtype, alg, group, scale, compute, tol):
    """Quantized inference equals fp32 inference on the dequantized weights: exactly up to float
    rounding with fp32 compute, within activation-rounding error with int8 / bf16 compute."""
    path, ref = tiny_models(name)
    q = WeightOnlyQuantConfig(weight_dtype=weight_dtype, alg=alg, group_size=group, scale_dtype=scale,
                              compute_dtype=compute)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=q, memory_dtype="f32")
    assert any(f is not None for _, f in model._tensors.values())
    ids = _prompt(ref.config.vocab_size, 16)
    got = model(ids).logits
    want = _dequantized_twin(model)(ids).logits
    err = max_rel_err(got, want)
    assert err <= tol, f"relative error {err:.2e}"
    with torch.no_grad():
        fp32 = ref(torch.from_numpy(ids)).logits.numpy()
    assert max_rel_err(got, fp32) > 0          # quantization really happened


@pytest.mark.parametrize("name", ["llama-gqa-tied", "neox-tied"])
def test_int8_closer_to_fp32_than_int4(tiny_models, name):
    path, ref = tiny_models(name)
    ids = _prompt(ref.config.vocab_size, 16)
    with torch.no_grad():
        fp32 = ref(torch.from_numpy(ids)).logits.numpy()
    errs = {}
    for wd in ("int8", "int4"):
        m = AutoModelForCausalLM.from_pretrained(path, quantization_config=WeightOnlyQuantConfig(weight_dtype=wd))
        errs[wd] = max_rel_err(m(ids).logits, fp32)
    assert 0 < errs["int8"] < errs["int4"], errs
