"""What research hooks cost: a 512-token forward (all logits) plain, capturing every block's
hook_resid_post, and capturing everything, at 2 threads.

    pytest benchmarks/test_bench_hooks.py --benchmark-autosave
The plain forward is the path every other caller takes (no hooks: one NULL test per hook point).
"""
from __future__ import annotations

import numpy as np
import pytest

from models import load
from llmrt.runtime import compute_threads

# (model, format, what is captured); capturing everything of the 1.1B shape at 512 tokens is ~5 GB
CASES = [("llama-110m", "int4_g32", c) for c in ("plain", "resid_post", "everything")] + \
        [("llama-1.1b", "int4_g32", c) for c in ("plain", "resid_post")]
CAPTURES = {"plain": None, "resid_post": ["blocks.*.hook_resid_post"], "everything": "all"}
_models: dict = {}


@pytest.mark.parametrize("name,fmt,capture", CASES, ids=lambda c: str(c))
def test_forward_512(benchmark, name, fmt, capture):
    if (name, fmt) not in _models:
        _models.clear()                      # one model resident at a time
        _models[name, fmt] = load(name, fmt)
    model = _models[name, fmt]
    ids = np.concatenate([[1], np.random.default_rng(0).integers(3, model.vocab_size, size=511)])[None]
    names = CAPTURES[capture]

    def run():
        if names is None:
            return model(ids)
        return model.run_with_cache(ids, names=None if names == "all" else names)

    with compute_threads(2):
        benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    if benchmark.stats:
        benchmark.extra_info["tokens_per_s"] = 512 / benchmark.stats.stats.median
