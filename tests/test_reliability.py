"""Reliability at run time: the KV cache cannot be pointed outside its buffers, thread counts are
bounded, one model is safe to share between Python threads, and NaN / inf logits are an error."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from llmrt import AutoModelForCausalLM, InvalidArgumentError, LlmrtError, NonFiniteLogitsError, WeightOnlyQuantConfig
from llmrt._kernels._ops import MAX_THREADS

FP32 = WeightOnlyQuantConfig(weight_dtype="fp32")


@pytest.fixture(scope="module")
def model(tiny_models):
    path, _ = tiny_models("llama-gqa-tied")
    return AutoModelForCausalLM.from_pretrained(path)


# ------------------------------------------------------------------ class 2: the KV cache fields
@pytest.mark.parametrize("field", ["n_past", "kv_begin", "ctx", "pos_base"])
def test_kv_cache_positions_cannot_be_set_from_python(model, field):
    cache = model.new_cache(8)
    with pytest.raises(AttributeError):
        setattr(cache, field, -5)
    assert getattr(cache, field) == (8 if field == "ctx" else 0)


def test_kv_cache_truncate_is_range_checked(model):
    cache = model.new_cache(8)
    model.engine.forward(cache, np.array([3, 4, 5], np.int64))
    for bad in (-1, 4, 2**62):
        with pytest.raises(ValueError, match="cannot truncate"):
            cache.truncate(bad)
    cache.truncate(1)
    assert cache.n_past == 1


def test_kv_cache_overflow_is_refused(model):
    cache = model.new_cache(4)
    model.engine.forward(cache, np.array([3, 4, 5], np.int64))
    with pytest.raises(ValueError, match="context overflow"):
        model.engine.forward(cache, np.array([6, 7], np.int64))
    assert cache.n_past == 3


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the resident size from /proc")
@pytest.mark.parametrize("options", [dict(do_sample=True, num_return_sequences=4_000_000),
                                     dict(num_beams=4_000_000, num_return_sequences=1),
                                     dict(do_sample=True, num_return_sequences=200_000, output_scores=True,
                                          return_dict_in_generate=True, max_new_tokens=10**6, ctx_size=10**6)])
def test_more_sequences_than_memory_are_refused_up_front(model, options):
    """A few million samples or beams of a tiny model have small KV caches but ~10 KiB of state each
    (a property test's example once grew the process to 24 GiB): refused before anything is built."""
    before = _rss_bytes()
    with pytest.raises(InvalidArgumentError, match="num_return_sequences"):
        model.generate([[3, 4, 5]], **{"max_new_tokens": 3, **options})
    assert _rss_bytes() - before < 256 * 2**20


# ------------------------------------------------------------------ class 3: thread counts
@pytest.mark.parametrize("threads", [0, -1, MAX_THREADS + 1, 10**9, 2**63, 2.5, "2", True])
def test_thread_count_out_of_range(model, threads):
    with pytest.raises(InvalidArgumentError, match="threads must be an integer from 1 to"):
        model([[3, 4]], threads=threads)
    with pytest.raises(InvalidArgumentError, match="threads must be an integer"):
        model.generate([[3, 4]], max_new_tokens=1, threads=threads)


def test_thread_count_at_the_cap_runs(model):
    ref = model([[3, 4, 5]], threads=1).logits
    np.testing.assert_allclose(model([[3, 4, 5]], threads=np.int64(MAX_THREADS)).logits, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("value", ["1000000", "-3", "0", "two", "1e3"])
def test_thread_count_from_the_environment(value):
    env = dict(os.environ, LLMRT_NUM_THREADS=value)
    r = subprocess.run([sys.executable, "-c", "import llmrt"], env=env, capture_output=True, text=True,
                       cwd="/", timeout=120)
    assert r.returncode == 1, r.stderr[-2000:]          # an exception, not a signal
    assert "InvalidArgumentError" in r.stderr and f"LLMRT_NUM_THREADS={value!r}" in r.stderr


@pytest.mark.parametrize("value,ok", [("512", True), ("0", True), ("100", False), ("-64", False), ("lots", False)])
def test_panel_prefetch_from_the_environment(value, ok):
    env = dict(os.environ, LLMRT_PANEL_PREFETCH=value)
    r = subprocess.run([sys.executable, "-c", "import llmrt; from llmrt._kernels import _ops; print(_ops.panel_prefetch())"],
                       env=env, capture_output=True, text=True, cwd="/", timeout=120)
    if ok:
        assert r.returncode == 0 and r.stdout.strip() == value, r.stderr[-2000:]
    else:
        assert r.returncode == 1 and "InvalidArgumentError" in r.stderr and "LLMRT_PANEL_PREFETCH" in r.stderr


# ------------------------------------------------------------------ class 4: threads sharing a model
def test_concurrent_calls_on_one_model_give_the_sequential_results(model):
    prompts = [[[3 + i, 7, 11 + 2 * i, 5]] for i in range(4)]
    want_gen = [model.generate(p, max_new_tokens=12) for p in prompts]
    want_fwd = [model(p).logits for p in prompts]
    got: dict = {}
    errors: list = []

    def worker(i: int) -> None:
        try:
            for rep in range(3):
                got[("gen", i, rep)] = model.generate(prompts[i], max_new_tokens=12)
                got[("fwd", i, rep)] = model(prompts[i]).logits
        except Exception as e:          # surfaced below: a failing thread must fail the test
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and not any(t.is_alive() for t in threads)
    for i in range(4):
        for rep in range(3):
            np.testing.assert_array_equal(got[("gen", i, rep)], want_gen[i])
            np.testing.assert_array_equal(got[("fwd", i, rep)], want_fwd[i])


def test_concurrent_interactive_conversations_do_not_mix(model):
    """Interactive turns from two threads are serialized: each whole call sees a consistent session."""
    model.reset_conversation()
    first = model.generate([[3, 4, 5]], max_new_tokens=4, interactive=True)
    results: list = []

    def turn() -> None:
        results.append(model.generate([[6]], max_new_tokens=3, interactive=True))

    ts = [threading.Thread(target=turn) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
    model.reset_conversation()
    # sequential replay: the same two turns one after the other
    assert model.generate([[3, 4, 5]], max_new_tokens=4, interactive=True).tolist() == first.tolist()
    replay = [model.generate([[6]], max_new_tokens=3, interactive=True) for _ in range(2)]
    model.reset_conversation()
    assert sorted(r.tolist() for r in results) == sorted(r.tolist() for r in replay)


# ------------------------------------------------------------------ class 6: NaN / inf logits
@pytest.fixture(scope="module")
def overflowing_model(tiny_models, tmp_path_factory):
    """Finite weights whose activations overflow for token 9: OPT adds a position row to the token's
    row; both near float32's max, their sum is inf, and the LayerNorm turns it into NaN."""
    from safetensors.numpy import load_file, save_file
    path, _ = tiny_models("opt-pre-ln")
    bad = tmp_path_factory.mktemp("overflow")
    shutil.copytree(path, bad, dirs_exist_ok=True)
    tensors = load_file(str(bad / "model.safetensors"))
    tensors["model.decoder.embed_positions.weight"][:] = 2e38
    tensors["model.decoder.embed_tokens.weight"][9] = 2e38
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    return AutoModelForCausalLM.from_pretrained(bad, quantization_config=FP32)


def test_non_finite_logits_raise(overflowing_model):
    assert np.isfinite(overflowing_model([[3, 4, 5]]).logits).all()
    with pytest.raises(NonFiniteLogitsError, match="NaN/inf values.*check_finite=False"):
        overflowing_model([[3, 9, 5]])
    with pytest.raises(NonFiniteLogitsError):
        overflowing_model.generate([[3, 4, 9]], max_new_tokens=3)
    with pytest.raises(NonFiniteLogitsError):
        overflowing_model.generate([[3, 4, 9]], max_new_tokens=3, num_beams=2)
    assert issubclass(NonFiniteLogitsError, LlmrtError) and issubclass(NonFiniteLogitsError, ArithmeticError)


def test_non_finite_logits_opt_out(overflowing_model):
    out = overflowing_model([[3, 9, 5]], check_finite=False).logits
    assert not np.isfinite(out).all()
    ids = overflowing_model.generate([[3, 4, 9]], max_new_tokens=3, check_finite=False)
    assert ids.shape == (1, 6)


def test_non_finite_logits_during_decoding(overflowing_model):
    """The bad token is generated, not given: the step that feeds it is caught."""
    def force_nine(input_ids, scores):
        scores[:] = -1e9
        scores[:, 9] = 0.0
        return scores

    with pytest.raises(NonFiniteLogitsError, match="model's logits"):
        overflowing_model.generate([[3, 4]], max_new_tokens=4, logits_processor=[force_nine])


@pytest.mark.parametrize("fill", [np.nan, np.inf, -np.inf])
def test_logits_processor_returning_garbage(model, fill):
    def broken(input_ids, scores):
        scores[:] = fill
        return scores

    with pytest.raises(NonFiniteLogitsError, match="logits processor"):
        model.generate([[3, 4]], max_new_tokens=2, logits_processor=[broken])
    with pytest.raises(NonFiniteLogitsError, match="logits processor"):
        model.generate([[3, 4]], max_new_tokens=2, do_sample=True, seed=1, logits_processor=[broken])


def test_masking_processors_are_not_mistaken_for_errors(model):
    """-inf masks (top_k, min length on EOS, finished rows padded) are normal scores."""
    out = model.generate([[3, 4], [5, 6]], max_new_tokens=6, do_sample=True, seed=3, top_k=2, min_new_tokens=3,
                         eos_token_id=[2, 7])
    assert out.shape[0] == 2


def test_zero_new_tokens_returns_the_prompt(model):
    """Found by the property tests: max_new_tokens=0 used to size the context at the prompt alone."""
    assert model.generate([[3, 4, 5]], max_new_tokens=0).tolist() == [[3, 4, 5]]
