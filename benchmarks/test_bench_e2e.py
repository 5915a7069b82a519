"""End-to-end prefill (512 tokens) and decode (128 tokens after the prompt) at 2 threads.

    pytest benchmarks/test_bench_e2e.py --benchmark-autosave
Models: the 110m and 1.1B anchor shapes (random weights, cached outside git) and SmolLM2's GGUF.
The side-by-side comparison with llama.cpp is benchmarks/compare.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from models import load
from llmrt.runtime import compute_threads

CASES = [("smollm2", None), ("llama-110m", "int4_g32"), ("llama-1.1b", "int4_g32"), ("llama-1.1b", "int4_g128"),
         ("llama-1.1b", "int8_g32")]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1] or 'gguf'}")
def model(request):
    return load(*request.param)


def _prompt(model, n=512):
    return np.concatenate([[1], np.random.default_rng(0).integers(3, model.vocab_size, size=n - 1)])


def test_prefill_512(benchmark, model):
    cache = model.new_cache(640)
    ids = _prompt(model)

    def run():
        cache.reset()
        model.engine.forward(cache, ids)

    with compute_threads(2):
        benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    if benchmark.stats:   # None under --benchmark-disable
        benchmark.extra_info["tokens_per_s"] = 512 / benchmark.stats.stats.median


def test_decode_128_after_prompt(benchmark, model):
    cache = model.new_cache(640)
    ids = _prompt(model)
    first = {}

    def prefill():
        cache.reset()
        first["tok"] = int(np.argmax(model.engine.forward(cache, ids)[0]))

    def decode():
        tok = first["tok"]
        for _ in range(128):
            tok = int(np.argmax(model.engine.forward(cache, np.array([tok]))[0]))

    with compute_threads(2):
        benchmark.pedantic(decode, setup=prefill, rounds=3, warmup_rounds=1)
    if benchmark.stats:
        benchmark.extra_info["tokens_per_s"] = 128 / benchmark.stats.stats.median
