"""The real model: SmolLM2-135M-Instruct from its shipped GGUF and re-quantized from an HF
reference, against transformers' fp32 forward (perplexity, KL, top-1) and a real chat answer.

The llama.cpp figures are DATA.md's, measured on this machine on the same file and text."""
from __future__ import annotations

import numpy as np
import pytest

from llmrt import AutoModelForCausalLM, WeightOnlyQuantConfig
from llmrt._kernels import _ops
from llmrt.evaluation import Comparison
from smollm2_fixtures import CACHE, build_hf_reference, reference_logits, smollm2_gguf_path, tutorial_windows

# llama.cpp on the same text (perplexity ratio to fp32, mean KL, top-1 agreement)
LLAMA_CPP = {"q4_1": (1.0052, 0.0034, 0.967), "q8_0": (1.0088, 0.0045, 0.967), "q4_0": (1.233, 0.265, 0.737)}


@pytest.fixture(scope="module")
def gguf():
    return smollm2_gguf_path()


@pytest.fixture(scope="module")
def hf_dir(gguf):
    CACHE.mkdir(parents=True, exist_ok=True)
    return build_hf_reference(gguf, CACHE / "smollm2-135m-hf")


@pytest.fixture(scope="module")
def tokenizer(hf_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(hf_dir))


@pytest.fixture(scope="module")
def windows_and_reference(hf_dir, tokenizer):
    wins = tutorial_windows(tokenizer)
    return wins, reference_logits(hf_dir, wins)


def _compare(model, wins, refs) -> Comparison:
    c = Comparison()
    for w, ref in zip(wins, refs):
        logits = model(w[None]).logits[0]
        c.add(logits[:-1], np.asarray(ref[:-1]), w[1:])
    print(f"\n{c.summary()}")
    return c


def _as_close_as(c: Comparison, ratio: float, kl: float, top1: float) -> None:
    s = c.summary()
    assert abs(c.ppl_ratio - 1) <= ratio - 1, s
    assert c.mean_kl <= kl, s
    assert c.top1 >= top1, s


def test_gguf_fp32_compute_matches_reference(gguf, windows_and_reference):
    wins, refs = windows_and_reference
    model = AutoModelForCausalLM.from_pretrained(gguf, compute_dtype="fp32")
    c = _compare(model, wins, refs)
    assert c.top1 >= 0.995, c.summary()
    assert abs(c.ppl_ratio - 1) <= 0.001, c.summary()


def test_gguf_int8_compute_at_least_as_close_as_llama_cpp(gguf, windows_and_reference):
    wins, refs = windows_and_reference
    model = AutoModelForCausalLM.from_pretrained(gguf)          # int8 compute is the default
    _as_close_as(_compare(model, wins, refs), *LLAMA_CPP["q4_1"])


@pytest.mark.parametrize("weight_dtype,alg,like", [("int8", "sym", "q8_0"), ("int4", "asym", "q4_1"),
                                                   ("int4", "sym", "q4_0")])
def test_requantized_at_least_as_close_as_llama_cpp(hf_dir, windows_and_reference, weight_dtype, alg, like):
    wins, refs = windows_and_reference
    q = WeightOnlyQuantConfig(weight_dtype=weight_dtype, alg=alg, group_size=32, compute_dtype="int8")
    model = AutoModelForCausalLM.from_pretrained(hf_dir, quantization_config=q)
    _as_close_as(_compare(model, wins, refs), *LLAMA_CPP[like])


CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.mark.parametrize("tier", _ops.supported_tiers())
def test_chat_answer_and_logits_on_every_tier(gguf, hf_dir, tokenizer, tier):
    """The greedy chat answer is right, and the first window's logits track the reference, on each tier."""
    _ops.set_isa(tier)
    model = AutoModelForCausalLM.from_pretrained(gguf, compute_dtype="fp32")
    text = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="np").input_ids
    out = model.generate(ids, max_new_tokens=12)
    answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer

    import torch
    from transformers import AutoModelForCausalLM as HFModel
    ref = HFModel.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref(torch.from_numpy(ids)).logits[0].numpy()
    got = model(ids).logits[0]
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
    assert np.max(np.abs(got - want)) <= 2e-3 * np.max(np.abs(want))
