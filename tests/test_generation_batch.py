"""Ragged batches: left padding + attention mask, each row identical to generating it alone."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import FAMILY_REPRESENTATIVES
from llmrt import AutoModelForCausalLM, WeightOnlyQuantConfig

FP32 = WeightOnlyQuantConfig(weight_dtype="fp32", compute_dtype="fp32")
PAD = 0


@pytest.fixture(scope="module", params=["neox-pct100-sequential"] + FAMILY_REPRESENTATIVES)
def setup(request, tiny_models):
    path, ref = tiny_models(request.param)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=FP32, memory_dtype="f32")
    rng = np.random.default_rng(7)
    prompts = [rng.integers(3, ref.config.vocab_size, size=n) for n in (4, 10, 7)]
    width = max(p.size for p in prompts)
    ids = np.full((3, width), PAD, dtype=np.int64)
    mask = np.zeros((3, width), dtype=np.int64)
    for r, p in enumerate(prompts):
        ids[r, width - p.size:] = p
        mask[r, width - p.size:] = 1
    return model, ref, prompts, ids, mask


def _eos_ending_rows_early(model, prompts, **kw) -> list[int]:
    """An EOS id that ends the first row's generation early but not the others'."""
    kw = dict(kw, max_new_tokens=16, eos_token_id=None)
    outs = [model.generate(p[None], **kw)[0, p.size:] for p in prompts]
    for t in outs[0][2:]:
        if all(int(t) not in o[:8] for o in outs[1:]):
            return [int(t)]
    pytest.fail("no EOS candidate separates the rows")


def test_greedy_batch_rows_equal_single_calls(setup):
    model, ref, prompts, ids, mask = setup
    kw = dict(max_new_tokens=16, repetition_penalty=1.3, no_repeat_ngram_size=3)
    eos = _eos_ending_rows_early(model, prompts, **kw)
    out = model.generate(ids, attention_mask=mask, eos_token_id=eos, pad_token_id=PAD, **kw)
    width = ids.shape[1]
    lengths = []
    for r, p in enumerate(prompts):
        single = model.generate(p[None], eos_token_id=eos, pad_token_id=PAD, **kw)[0]
        got = out[r, width - p.size:]
        np.testing.assert_array_equal(got[:single.size], single)
        assert (got[single.size:] == PAD).all()
        lengths.append(single.size - p.size)
    assert len(set(lengths)) > 1, "the rows should end at different steps"
    # transformers' batched generate agrees on the same padded batch
    with torch.no_grad():
        want = ref.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), do_sample=False,
                            eos_token_id=eos, pad_token_id=PAD, max_new_tokens=16, repetition_penalty=1.3)
    mine = model.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), eos_token_id=eos,
                          pad_token_id=PAD, max_new_tokens=16, repetition_penalty=1.3)
    np.testing.assert_array_equal(mine, want.numpy())


def test_padding_inferred_from_pad_token_without_mask(setup):
    model, _, _, ids, mask = setup
    kw = dict(max_new_tokens=8, eos_token_id=None, pad_token_id=PAD)
    np.testing.assert_array_equal(model.generate(ids, **kw), model.generate(ids, attention_mask=mask, **kw))


def test_beam_batch_rows_equal_single_calls(setup):
    model, _, prompts, ids, mask = setup
    kw = dict(max_new_tokens=10, num_beams=3, num_return_sequences=2, repetition_penalty=1.2, length_penalty=0.8)
    eos = _eos_ending_rows_early(model, prompts, num_beams=3)
    out = model.generate(ids, attention_mask=mask, eos_token_id=eos, pad_token_id=PAD, **kw)
    assert out.shape[0] == 6
    width = ids.shape[1]
    for r, p in enumerate(prompts):
        single = model.generate(p[None], eos_token_id=eos, pad_token_id=PAD, **kw)
        for k in range(2):
            got = out[2 * r + k, width - p.size:]
            np.testing.assert_array_equal(got[:single.shape[1]], single[k])
