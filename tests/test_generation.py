"""generate() against transformers' own generate on the same fp32 weights: greedy and beam search
with their options, GenerationConfig handling, scores, EOS / padding, argument checking."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import transformers
from transformers import GenerationConfig

from conftest import FAMILY_REPRESENTATIVES as FAMILIES
from llmrt import AutoModelForCausalLM, WeightOnlyQuantConfig

FP32 = WeightOnlyQuantConfig(weight_dtype="fp32", compute_dtype="fp32")


@pytest.fixture(scope="module")
def pair(tiny_models):
    """name -> (llmrt fp32 model, transformers model, a prompt (1, 6))."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            path, ref = tiny_models(name)
            model = AutoModelForCausalLM.from_pretrained(path, quantization_config=FP32, memory_dtype="f32")
            cache[name] = (model, ref, _lively_prompt(ref, len(name)))
        return cache[name]

    return get


def _lively_prompt(ref, seed: int) -> np.ndarray:
    """A prompt (1, 6) whose greedy continuation brings a new token after its third step and
    differs from a 3-beam search (random tiny models can fall into repeating one token, where no
    option would show an effect)."""
    for s in range(seed, seed + 50):
        prompt = np.random.default_rng(s).integers(3, ref.config.vocab_size, size=(1, 6))
        plain = _hf(ref, prompt, max_new_tokens=24, eos_token_id=None)[0, 6:].tolist()
        beams = _hf(ref, prompt, max_new_tokens=14, num_beams=3, eos_token_id=None)[0, 6:].tolist()
        if any(plain[i] not in plain[:i] for i in range(3, 24)) and beams != plain[:14]:
            return prompt
    pytest.fail("no prompt of 50 gives a non-degenerate greedy continuation")


def _hf(ref, ids: np.ndarray, **kw) -> np.ndarray:
    with torch.no_grad():
        return ref.generate(torch.from_numpy(ids), do_sample=False, pad_token_id=0, **kw).numpy()


def _eos_from(tokens: np.ndarray, steps: list[int]) -> list[int]:
    """EOS ids that greedy / beam output really produces (so EOS handling is exercised)."""
    return sorted({int(tokens[s]) for s in steps})


# ------------------------------------------------------------------------------------------- greedy
@pytest.mark.parametrize("name", FAMILIES)
def test_greedy_options_match_transformers(pair, name):
    model, ref, ids = pair(name)
    plain = [int(t) for t in _hf(ref, ids, max_new_tokens=24, eos_token_id=None)[0, 6:]]
    step = next(s for s in range(3, 24) if plain[s] not in plain[:s])
    eos = [plain[step]]
    cases = {
        "plain": dict(max_new_tokens=24, eos_token_id=None),
        "repetition_penalty": dict(max_new_tokens=24, eos_token_id=None, repetition_penalty=1.5),
        "no_repeat_ngram_size": dict(max_new_tokens=24, eos_token_id=None, no_repeat_ngram_size=2),
        "eos": dict(max_new_tokens=24, eos_token_id=eos),
        "min_new_tokens": dict(max_new_tokens=24, eos_token_id=eos, min_new_tokens=step + 4),
        "rp_below_1": dict(max_new_tokens=24, eos_token_id=None, repetition_penalty=0.7),
    }
    outs = {}
    for case, kw in cases.items():
        want = _hf(ref, ids, **kw)
        got = model.generate(ids, pad_token_id=0, **kw)
        np.testing.assert_array_equal(got, want, err_msg=case)
        outs[case] = got
    # every option changed the output, so a generate() ignoring it would have failed above
    for case in ("repetition_penalty", "no_repeat_ngram_size", "eos", "min_new_tokens", "rp_below_1"):
        assert not np.array_equal(outs[case], outs["plain"]), case
    assert outs["eos"].shape[1] == 6 + step + 1 and outs["eos"][0, -1] in eos
    assert outs["min_new_tokens"].shape[1] >= 6 + step + 4


# --------------------------------------------------------------------------------------------- beam
BEAM_CASES = {
    "beams": dict(num_beams=3),
    "return_sequences": dict(num_beams=4, num_return_sequences=3),
    "repetition_penalty": dict(num_beams=3, repetition_penalty=1.6),
    "no_repeat_ngram": dict(num_beams=3, no_repeat_ngram_size=2),
    "eos_lp_neg": dict(num_beams=3, length_penalty=-1.0, eos="yes"),
    "eos_lp_pos_early": dict(num_beams=3, length_penalty=2.0, early_stopping=True, eos="yes"),
    "eos_never": dict(num_beams=3, length_penalty=0.5, early_stopping="never", eos="yes"),
    "eos_min_new": dict(num_beams=3, min_new_tokens=9, eos="yes", num_return_sequences=2),
}


@pytest.mark.parametrize("case", sorted(BEAM_CASES))
@pytest.mark.parametrize("name", FAMILIES)
def test_beam_search_matches_transformers(pair, name, case):
    model, ref, ids = pair(name)
    kw = dict(BEAM_CASES[case], max_new_tokens=14)
    if kw.pop("eos", None):
        plain = _hf(ref, ids, max_new_tokens=14, num_beams=3, eos_token_id=None, num_return_sequences=3)
        kw["eos_token_id"] = _eos_from(plain[:, 6:].reshape(-1), [2, 5, 19, 22, 33])
    else:
        kw["eos_token_id"] = None
    want = _hf(ref, ids, **kw)
    got = model.generate(ids, pad_token_id=0, **kw)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", FAMILIES)
def test_beam_options_have_effects(pair, name):
    """The beam cases above are not all the same search in disguise."""
    model, ref, ids = pair(name)
    base = model.generate(ids, max_new_tokens=14, num_beams=3, eos_token_id=None)
    assert not np.array_equal(base, model.generate(ids, max_new_tokens=14, eos_token_id=None))
    for kw in (dict(repetition_penalty=1.6), dict(no_repeat_ngram_size=2)):
        assert not np.array_equal(base, model.generate(ids, max_new_tokens=14, num_beams=3, eos_token_id=None, **kw))
    plain = model.generate(ids, max_new_tokens=14, num_beams=3, eos_token_id=None, num_return_sequences=3)
    eos = _eos_from(plain[:, 6:].reshape(-1), [2, 5, 19, 22, 33])
    lens = {lp: model.generate(ids, max_new_tokens=14, num_beams=3, eos_token_id=eos, length_penalty=lp).shape[1]
            for lp in (-1.0, 3.0)}
    assert lens[-1.0] < lens[3.0], lens           # short hypotheses win with a negative penalty


@pytest.mark.parametrize("name", FAMILIES)
def test_beam_scores_match_transformers(pair, name):
    model, ref, ids = pair(name)
    kw = dict(max_new_tokens=8, num_beams=3, num_return_sequences=2, eos_token_id=None, repetition_penalty=1.3,
              return_dict_in_generate=True, output_scores=True)
    with torch.no_grad():
        want = ref.generate(torch.from_numpy(ids), do_sample=False, pad_token_id=0, **kw)
    got = model.generate(ids, pad_token_id=0, **kw)
    np.testing.assert_array_equal(got.sequences, want.sequences.numpy())
    assert len(got.scores) == len(want.scores) == 8
    for g, w in zip(got.scores, want.scores):
        assert isinstance(g, np.ndarray) and g.shape == tuple(w.shape)
        finite = np.isfinite(w.numpy())
        np.testing.assert_array_equal(np.isfinite(g), finite)
        np.testing.assert_allclose(g[finite], w.numpy()[finite], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got.sequences_scores, want.sequences_scores.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got.beam_indices, want.beam_indices.numpy())


@pytest.mark.parametrize("name", FAMILIES)
def test_greedy_scores_and_logits_as_numpy(pair, name):
    model, ref, ids = pair(name)
    kw = dict(max_new_tokens=6, eos_token_id=None, repetition_penalty=1.2, return_dict_in_generate=True,
              output_scores=True, output_logits=True)
    with torch.no_grad():
        want = ref.generate(torch.from_numpy(ids), do_sample=False, pad_token_id=0, **kw)
    got = model.generate(ids, pad_token_id=0, **kw)
    np.testing.assert_array_equal(got["sequences"], want.sequences.numpy())
    for g, w in zip(got.scores + got.logits, want.scores + want.logits):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-4 * np.abs(w.numpy()).max())
    # the penalty shows in scores but not in the raw logits
    assert not np.allclose(got.scores[1], got.logits[1])


# ------------------------------------------------------------------------ GenerationConfig, later calls
def test_generation_config_is_used_and_later_arguments_win(pair):
    model, ref, ids = pair("llama-gqa-tied")
    gc = GenerationConfig(max_new_tokens=9, num_beams=3, repetition_penalty=1.4)     # EOS: the model's
    np.testing.assert_array_equal(model.generate(ids, generation_config=gc), _hf(ref, ids, generation_config=gc))
    np.testing.assert_array_equal(model.generate(ids, generation_config=gc),
                                  model.generate(ids, max_new_tokens=9, num_beams=3, repetition_penalty=1.4))
    # a keyword argument overrides the config, and nothing sticks to the next call (neural-speed kept
    # the first call's options)
    assert model.generate(ids, generation_config=gc, max_new_tokens=4, eos_token_id=None).shape == (1, 10)
    assert model.generate(ids, max_new_tokens=5, eos_token_id=None).shape == (1, 11)
    assert model.generate(ids, max_new_tokens=7, eos_token_id=None).shape == (1, 13)
    a = model.generate(ids, max_new_tokens=12, eos_token_id=None)
    b = model.generate(ids, max_new_tokens=12, eos_token_id=None, repetition_penalty=2.0)
    c = model.generate(ids, max_new_tokens=12, eos_token_id=None)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    # max_length counts the prompt, as in transformers
    assert model.generate(ids, max_length=10, eos_token_id=None).shape == (1, 10)
    assert model.generate(ids, generation_config=GenerationConfig(max_length=8), eos_token_id=None).shape == (1, 8)


def test_unsupported_generation_config_entries_are_refused(pair):
    model, _, ids = pair("llama-gqa-tied")
    with pytest.raises(ValueError, match="bad_words_ids"):
        model.generate(ids, generation_config=GenerationConfig(bad_words_ids=[[5]]))
    with pytest.raises(TypeError, match="generation_config"):
        model.generate(ids, generation_config="greedy")


def test_model_generation_config_json_gives_defaults(tiny_models, tmp_path):
    """Like transformers, an HF directory's generation_config.json sets the defaults."""
    import shutil
    path, ref = tiny_models("neox-tied")
    d = tmp_path / "m"
    shutil.copytree(path, d)
    GenerationConfig(max_new_tokens=12, repetition_penalty=1.5, eos_token_id=[ref.config.vocab_size + 7],
                     pad_token_id=0).save_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, quantization_config=FP32, memory_dtype="f32")
    ids = np.array([[5, 6, 7, 8]])
    out = model.generate(ids)
    assert out.shape == (1, 16)                     # max_new_tokens and the (never produced) EOS from the file
    np.testing.assert_array_equal(out, model.generate(ids, max_new_tokens=12, repetition_penalty=1.5,
                                                      eos_token_id=None))
    assert not np.array_equal(out, model.generate(ids, repetition_penalty=1.0))
    assert model.generate(ids, max_new_tokens=3).shape == (1, 7)


# ----------------------------------------------------------------------------------- EOS, pad, length
def test_eos_list_pad_and_max_new_tokens_minus_one(pair):
    model, ref, ids = pair("neox-pct25-parallel")
    plain = [int(t) for t in model.generate(ids, max_new_tokens=20, eos_token_id=None)[0, 6:]]
    step = next(s for s in range(3, 20) if plain[s] not in plain[:s])
    never = next(t for t in range(3, ref.config.vocab_size) if t not in plain)
    eos = [never, plain[step]]
    out = model.generate(ids, max_new_tokens=-1, eos_token_id=eos)
    np.testing.assert_array_equal(out[0], np.concatenate([ids[0], plain[:step + 1]]))
    # -1 without EOS: the context's end (ctx_size tokens in all)
    assert model.generate(ids, max_new_tokens=-1, eos_token_id=None, ctx_size=17).shape == (1, 17)
    # a single int works as well as a list
    np.testing.assert_array_equal(model.generate(ids, max_new_tokens=20, eos_token_id=plain[step]), out)


def test_inputs_without_ids_start_from_bos(pair):
    model, ref, _ = pair("llama-gqa-tied")
    out = model.generate(max_new_tokens=5, eos_token_id=None)
    np.testing.assert_array_equal(out, _hf(ref, np.array([[ref.config.bos_token_id]]), max_new_tokens=5,
                                           eos_token_id=None))
    np.testing.assert_array_equal(model.generate(inputs=out[:, :3], max_new_tokens=2, eos_token_id=None), out[:, :5])


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(max_new_tokens=3, foo=1), TypeError, "foo"),
    (dict(max_new_tokens=-2), ValueError, "max_new_tokens"),
    (dict(max_new_tokens=2.5), TypeError, "max_new_tokens"),
    (dict(do_sample=True, temperature=0.0), ValueError, "temperature"),
    (dict(do_sample=True, top_p=1.5), ValueError, "top_p"),
    (dict(do_sample=True, min_p=-0.1), ValueError, "min_p"),
    (dict(do_sample=True, typical_p=0.0), ValueError, "typical_p"),
    (dict(top_k=-1), ValueError, "top_k"),
    (dict(repetition_penalty=0.0), ValueError, "repetition_penalty"),
    (dict(num_beams=0), ValueError, "num_beams"),
    (dict(num_beams=2, num_return_sequences=3), ValueError, "num_return_sequences"),
    (dict(num_return_sequences=2), ValueError, "num_return_sequences"),
    (dict(num_beams=2, early_stopping="sometimes"), ValueError, "early_stopping"),
    (dict(eos_token_id="</s>"), ValueError, "eos_token_id"),
    (dict(eos_token_id=[2, -1]), ValueError, "eos_token_id"),
    (dict(eos_token_id=2**63), ValueError, "eos_token_id"),     # past int64: was an OverflowError from NumPy
    (dict(pad_token_id=2**64), ValueError, "pad_token_id"),
    (dict(pad_token_id=-3), ValueError, "pad_token_id"),
    (dict(n_discard=0), ValueError, "n_discard"),
    (dict(shift_roped_k=True, n_discard=4), ValueError, "n_discard"),
    (dict(ctx_size=0), ValueError, "ctx_size"),
    (dict(n_keep=-2), ValueError, "n_keep"),
    (dict(do_sample="yes"), TypeError, "do_sample"),
    (dict(max_new_tokens=30, ctx_size=20), ValueError, "ctx_size"),
    (dict(n_keep=19, ctx_size=20), ValueError, "n_keep"),
])
def test_bad_arguments_are_clear_errors(pair, kwargs, error, match):
    model, _, ids = pair("llama-gqa-tied")
    with pytest.raises(error, match=match):
        model.generate(ids, **kwargs)


def test_bad_masks_and_streamer_combinations(pair):
    model, _, ids = pair("llama-gqa-tied")
    batch = np.concatenate([ids, ids])
    with pytest.raises(ValueError, match="left padding"):
        model.generate(batch, attention_mask=[[1, 1, 1, 1, 1, 0], [1] * 6], max_new_tokens=2)
    with pytest.raises(ValueError, match="shape"):
        model.generate(batch, attention_mask=[[1] * 5, [1] * 5], max_new_tokens=2)
    with pytest.raises(ValueError, match="empty prompt"):
        model.generate(batch, attention_mask=[[0] * 6, [1] * 6], max_new_tokens=2)
    with pytest.raises(ValueError, match="beam search"):
        model.generate(ids, num_beams=2, streamer=transformers.TextStreamer(None))
    with pytest.raises(TypeError, match="put"):
        model.generate(ids, streamer=object())
    with pytest.raises(ValueError, match="single prompt"):
        model.generate(batch, interactive=True)


def test_numpy_torch_and_none_arguments(pair):
    """Token ids and counts may come as NumPy / torch values; None switches an option off (transformers)."""
    model, _, ids = pair("llama-gqa-tied")
    a = model.generate(ids, max_new_tokens=np.int64(8), eos_token_id=None)
    assert a.shape == (1, 14)
    stop = int(a[0, 6 + next(s for s in range(2, 8) if a[0, 6 + s] not in a[0, 6:6 + s])])
    short = model.generate(ids, max_new_tokens=8, eos_token_id=[stop])
    for eos in (np.int64(stop), torch.tensor([stop]), np.array([stop])):
        np.testing.assert_array_equal(model.generate(ids, max_new_tokens=8, eos_token_id=eos), short)
    assert short.shape[1] < 14
    np.testing.assert_array_equal(model.generate(ids, max_new_tokens=8, eos_token_id=None, repetition_penalty=None), a)
    kw = dict(max_new_tokens=8, eos_token_id=None, do_sample=True, seed=3)
    np.testing.assert_array_equal(model.generate(ids, top_k=None, temperature=None, **kw),
                                  model.generate(ids, top_k=0, temperature=1.0, **kw))


def test_huge_repetition_penalty_matches_transformers_without_warnings():
    """A penalty that overflows float32 sends a negative score to -inf, as transformers' processor does,
    and says nothing (numpy used to warn of an overflow in every step)."""
    from transformers import RepetitionPenaltyLogitsProcessor

    from llmrt.generation.processors import RepetitionPenalty

    scores = np.array([[-3e38, 1.0, 2.0, -0.5], [5.0, -1e30, 0.0, 3.0]], dtype=np.float32)
    ids = np.array([[0, 1, 3], [1, 1, 2]])
    expect = RepetitionPenaltyLogitsProcessor(1e10)(torch.from_numpy(ids), torch.from_numpy(scores.copy())).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = RepetitionPenalty(1e10)(ids, scores.copy())
    np.testing.assert_array_equal(got, expect)
    assert np.isneginf(got[0, 0]) and np.isneginf(got[1, 1])
