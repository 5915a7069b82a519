"""Sampling: seeds reproduce, and many draws from one fixed logits row follow the softmax of the
row as transformers' own warpers process it (chi-square), for each warper."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import (LogitsProcessor, LogitsProcessorList, MinPLogitsWarper, TemperatureLogitsWarper,
                          TopKLogitsWarper, TopPLogitsWarper, TypicalLogitsWarper)

from conftest import FAMILY_REPRESENTATIVES
from llmrt import AutoModelForCausalLM, WeightOnlyQuantConfig

FP32 = WeightOnlyQuantConfig(weight_dtype="fp32", compute_dtype="fp32")


@pytest.fixture(scope="module")
def model_and_vocab(tiny_models):
    path, ref = tiny_models("llama-mha-untied")
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=FP32, memory_dtype="f32"), \
        ref.config.vocab_size


class FixedRow(LogitsProcessor):
    """Replaces the model's scores by one fixed row, so every step draws from the same distribution."""

    def __init__(self, row: np.ndarray):
        self.row = torch.from_numpy(row)

    def __call__(self, input_ids, scores):
        return self.row.expand_as(scores).clone()


def test_same_seed_same_tokens(model_and_vocab):
    model, _ = model_and_vocab
    kw = dict(max_new_tokens=16, do_sample=True, temperature=1.3, top_k=40, top_p=0.95, min_p=0.01,
              eos_token_id=None)
    a = model.generate([[3, 4, 5, 6]], seed=11, **kw)
    np.testing.assert_array_equal(a, model.generate([[3, 4, 5, 6]], seed=11, **kw))
    assert not np.array_equal(a, model.generate([[3, 4, 5, 6]], seed=12, **kw))
    many = model.generate([[3, 4, 5, 6]], seed=11, num_return_sequences=3, **kw)
    assert many.shape == (3, 20) and len({tuple(r) for r in many}) == 3
    np.testing.assert_array_equal(many, model.generate([[3, 4, 5, 6]], seed=11, num_return_sequences=3, **kw))
    beams = dict(kw, num_beams=3, num_return_sequences=2)
    b = model.generate([[3, 4, 5, 6]], seed=5, **beams)
    np.testing.assert_array_equal(b, model.generate([[3, 4, 5, 6]], seed=5, **beams))


CASES = {
    "temperature": (dict(temperature=0.6, top_k=0), [TemperatureLogitsWarper(0.6)]),
    "top_k": (dict(top_k=7), [TopKLogitsWarper(7)]),
    "top_p": (dict(top_p=0.7, top_k=0), [TopPLogitsWarper(0.7)]),
    "min_p": (dict(min_p=0.15, top_k=0), [MinPLogitsWarper(0.15)]),
    "typical_p": (dict(typical_p=0.8, top_k=0), [TypicalLogitsWarper(0.8)]),
    "all": (dict(temperature=1.4, top_k=25, top_p=0.9, min_p=0.02),
            [TemperatureLogitsWarper(1.4), TopKLogitsWarper(25), TopPLogitsWarper(0.9), MinPLogitsWarper(0.02)]),
}


def _chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    """Pearson chi-square; categories expected fewer than 5 times are pooled."""
    expected = probs * counts.sum()
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    exp = exp * obs.sum() / exp.sum()
    stat = float(((obs - exp) ** 2 / exp).sum())
    dof = len(obs) - 1
    # chi-square survival function = regularized upper incomplete gamma Q(dof/2, stat/2)
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_draws_follow_the_processed_softmax(model_and_vocab, case):
    model, vocab = model_and_vocab
    kw, warpers = CASES[case]
    row = np.random.default_rng(5).normal(0.0, 2.0, vocab).astype(np.float32)
    want = LogitsProcessorList(warpers)(torch.zeros((1, 1), dtype=torch.long), torch.from_numpy(row[None].copy()))
    probs = torch.softmax(want, dim=-1)[0].double().numpy()
    # 100 rows x 40 steps = 4000 draws through the real generate() path
    out = model.generate(np.full((100, 3), 7), max_new_tokens=40, do_sample=True, seed=2024, eos_token_id=None,
                         logits_processor=LogitsProcessorList([FixedRow(row)]), **kw)
    counts = np.bincount(out[:, 3:].reshape(-1), minlength=vocab)
    assert counts.sum() == 4000
    assert counts[probs == 0].sum() == 0, "a filtered-out token was drawn"
    assert _chi2_pvalue(counts, probs) > 1e-3
    # the test has power: the unprocessed softmax is rejected by the same draws
    raw = torch.softmax(torch.from_numpy(row.astype(np.float64)), dim=-1).numpy()
    assert counts[raw == 0].sum() > 0 or _chi2_pvalue(counts, raw) < 1e-6


@pytest.mark.parametrize("name", FAMILY_REPRESENTATIVES)
def test_sampling_runs_on_every_family(tiny_models, name):
    """Sampling on each family: a seed repeats its draw, top_k=1 is greedy, and at temperature 1.5 the
    draws leave the greedy path (so they really sample)."""
    path, ref = tiny_models(name)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=FP32)
    ids = np.random.default_rng(5).integers(3, ref.config.vocab_size, size=(1, 6))
    kw = dict(max_new_tokens=12, eos_token_id=None, do_sample=True)
    greedy = model.generate(ids, max_new_tokens=12, eos_token_id=None)
    np.testing.assert_array_equal(model.generate(ids, top_k=1, seed=3, **kw), greedy)
    hot = dict(kw, temperature=1.5, top_k=0)
    draws = model.generate(ids, seed=3, num_return_sequences=4, **hot)
    np.testing.assert_array_equal(draws, model.generate(ids, seed=3, num_return_sequences=4, **hot))
    assert any(not np.array_equal(row, greedy[0]) for row in draws)
