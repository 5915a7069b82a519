"""Property tests (hypothesis) of generate()'s options and inputs and of the KV cache API: every input
either works or raises a clear error (ValueError / TypeError, llmrt's errors included); the process
survives; and the cache's positions always stay inside its buffers."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from conftest import build_tiny_model
from llmrt import AutoModelForCausalLM, WeightOnlyQuantConfig
from llmrt.generation import GenerateOutput
from llmrt.generation.options import GenerationOptions

VOCAB, MAX_POS = 61, 40
CLEAR_ERRORS = (ValueError, TypeError)          # LlmrtError derives from ValueError
SETTINGS = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A model small enough that a thousand generate() calls take seconds, with a short context so
    'until the end of the context' stays short too."""
    path = tmp_path_factory.mktemp("prop-model")
    build_tiny_model(path, "llama", dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, vocab_size=VOCAB,
                                         max_position_embeddings=MAX_POS))
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=WeightOnlyQuantConfig(weight_dtype="fp32"))


ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 12), st.integers(-2**70, 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.5, 1.0, 0.0, 2.0]),
    st.text(max_size=3), st.lists(st.integers(-2, VOCAB + 2), max_size=3), st.sampled_from(["never", "2"]))
_TOKEN = st.integers(0, VOCAB - 1)
_FLAG = st.booleans()
# mostly-valid values per option, so most calls get past validation and exercise generation itself
VALID = {
    "max_new_tokens": st.integers(-1, 6), "max_length": st.integers(1, 12), "min_new_tokens": st.integers(0, 4),
    "min_length": st.integers(0, 8), "do_sample": _FLAG, "num_beams": st.integers(1, 4),
    "num_return_sequences": st.integers(1, 3), "length_penalty": st.floats(-2, 2),
    "early_stopping": st.sampled_from([True, False, "never"]), "temperature": st.floats(0.05, 3),
    "top_k": st.integers(0, VOCAB + 5), "top_p": st.floats(0, 1), "min_p": st.floats(0, 1),
    "typical_p": st.floats(0.01, 1), "repetition_penalty": st.floats(0.1, 3), "no_repeat_ngram_size": st.integers(0, 3),
    "eos_token_id": st.one_of(st.none(), _TOKEN, st.lists(_TOKEN, max_size=3)), "pad_token_id": _TOKEN,
    "bos_token_id": _TOKEN, "output_scores": _FLAG, "output_logits": _FLAG, "return_dict_in_generate": _FLAG,
    "use_cache": _FLAG, "seed": st.integers(0, 2**64), "check_finite": _FLAG, "ctx_size": st.integers(1, 60),
    "n_keep": st.integers(-1, 8), "n_discard": st.integers(-1, 8), "shift_roped_k": _FLAG,
}
assert set(VALID) == set(GenerationOptions.__dataclass_fields__), "a new option needs a strategy here"
OPTIONS = st.one_of(*(st.tuples(st.just(name), st.one_of(*[valid] * 6, ANY_VALUE))
                      for name, valid in VALID.items()), st.tuples(st.just("no_such_option"), ANY_VALUE))


def _check_output(out, n_rows: int) -> None:
    seqs = out.sequences if isinstance(out, GenerateOutput) else out
    assert isinstance(seqs, np.ndarray) and seqs.dtype == np.int64 and seqs.ndim == 2
    assert seqs.shape[0] % n_rows == 0


@SETTINGS
@given(pairs=st.lists(OPTIONS, max_size=5), sample=st.booleans())
def test_generate_options(model, pairs, sample):
    options = dict(pairs)
    options.setdefault("max_new_tokens", 3)
    if options["max_new_tokens"] == -1 and any(k in options for k in ("n_keep", "n_discard", "shift_roped_k")):
        options["max_new_tokens"] = 6       # streaming "until EOS" may never end
    if sample:
        options.setdefault("do_sample", True)
    try:
        out = model.generate([[3, 4, 5]], **options)
    except CLEAR_ERRORS as e:
        assert str(e), "an error must say what is wrong"
        event(f"refused: {type(e).__name__}")
        return
    event("generated")
    _check_output(out, 1)


ID = st.one_of(_TOKEN, _TOKEN, _TOKEN, st.integers(-3, VOCAB + 3))
ID_ROWS = st.lists(st.lists(ID, min_size=0, max_size=6), min_size=0, max_size=3)
RECTANGLES = st.integers(1, 3).flatmap(lambda n: st.integers(0, 6).flatmap(
    lambda w: st.lists(st.lists(ID, min_size=w, max_size=w), min_size=n, max_size=n)))
ARRAYS = st.one_of(
    st.builds(np.array, RECTANGLES),
    st.builds(lambda v, shape, dt: np.full(shape, v).astype(dt), st.integers(-2, VOCAB + 2),
              st.sampled_from([(), (0,), (3,), (0, 3), (2, 0), (1, 4), (2, 2, 2)]),
              st.sampled_from([np.int64, np.int32, np.uint8, np.float32, np.bool_, np.int8])))
INPUTS = st.one_of(RECTANGLES, RECTANGLES, ID_ROWS, ARRAYS, st.integers(-2, VOCAB + 2), st.text(max_size=4), st.none(),
                   st.lists(st.floats(allow_nan=True), max_size=3))


@SETTINGS
@given(input_ids=INPUTS, mask=st.one_of(st.none(), st.none(), RECTANGLES, ARRAYS))
def test_generate_inputs(model, input_ids, mask):
    try:
        out = model.generate(input_ids, attention_mask=mask, max_new_tokens=2)
    except CLEAR_ERRORS as e:
        assert str(e)
        event(f"refused: {type(e).__name__}")
        return
    event("generated")
    _check_output(out, 1)
    try:
        logits = model(input_ids).logits
    except CLEAR_ERRORS:
        return
    assert logits.ndim == 3 and logits.shape[-1] == VOCAB and np.isfinite(logits).all()


# The KV cache API: random sequences of operations; whatever succeeds keeps 0 <= kv_begin <= n_past <= ctx,
# and the logits of a token fed after them equal those of a fresh run over the tokens the cache holds.
OPS = st.lists(st.one_of(
    st.tuples(st.just("feed"), st.lists(st.integers(-1, VOCAB), min_size=0, max_size=7)),
    st.tuples(st.just("truncate"), st.integers(-3, 12)),
    st.tuples(st.just("resized"), st.integers(-3, 24)),
    st.tuples(st.just("copy"), st.integers(1, 24)),
    st.tuples(st.just("reset"), st.just(0)),
    st.tuples(st.just("slot"), st.integers(-3, 24)),
    st.tuples(st.just("shift"), st.tuples(st.integers(-2, 6), st.integers(-2, 8))),
    st.tuples(st.just("ring"), st.integers(-2, 6)),
), max_size=8)


def _apply(model, cache, held: list[int], op: str, arg) -> tuple:
    """One operation; returns the (possibly new) cache and the tokens it holds, or raises."""
    eng = model.engine
    if op == "feed":
        eng.forward(cache, np.array(arg, dtype=np.int64))
        return cache, held + list(arg)
    if op == "truncate":
        cache.truncate(arg)
        return cache, held[:arg]
    if op == "resized":
        return cache.resized(arg), held
    if op == "copy":
        other = model.new_cache(arg)
        other.copy_from(cache)
        return other, held
    if op == "reset":
        cache.reset()
        return cache, []
    if op == "slot":
        cache.slot(arg)
        return cache, held
    if op == "shift":
        keep, drop = arg
        eng.shifts.shift_window(cache, keep, drop)
        return cache, None            # positions moved: no fresh-run reference any more
    eng.shifts.ring_advance(cache, arg)
    return cache, None


@SETTINGS
@given(ctx=st.integers(1, 16), ops=OPS)
def test_kv_cache_api(model, ctx, ops):
    cache, held = model.new_cache(ctx), []
    for op, arg in ops:
        try:
            cache, new_held = _apply(model, cache, held, op, arg)
        except (*CLEAR_ERRORS, IndexError) as e:
            assert str(e)
            event(f"{op} refused")
            continue
        finally:
            assert 0 <= cache.kv_begin <= cache.n_past <= cache.ctx
        if new_held is None:
            return
        held = new_held
        assert cache.n_past == len(held)
    if held and cache.n_past < cache.ctx:
        event("compared with a fresh run")
        got = model.engine.forward(cache, np.array([7], np.int64))
        want = model.engine.forward(model.new_cache(len(held) + 1), np.array(held + [7], np.int64))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
