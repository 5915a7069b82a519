"""Kernel speed per tier x format x shape (pytest-benchmark; never part of the test suite).

    pytest benchmarks/test_bench_kernels.py --benchmark-autosave
    pytest benchmarks/test_bench_kernels.py --benchmark-compare
"""
from __future__ import annotations

import numpy as np
import pytest

from llmrt._kernels import _ops
from llmrt.formats import QuantFormat

SHAPES = [(2048, 2048), (5632, 2048), (2048, 5632)]          # (n, k) of the 1.1B model's matrices
FORMATS = {"int4_g32": QuantFormat("int4", "sym", 32, "fp32"), "int4_g128": QuantFormat("int4", "sym", 128, "fp32"),
           "q4_1": QuantFormat.gguf("q4_1"), "int8_g32": QuantFormat("int8", "sym", 32, "fp32")}


def _linear(fmt: QuantFormat, n: int, k: int, compute: str):
    w = np.random.default_rng(0).standard_normal((n, k), dtype=np.float32) * 0.02
    kw = fmt.to_kernel(fmt.quantize(w))
    return _ops.Linear.quantized(kw.qs, kw.d, kw.m, kw.bits, kw.group, compute=compute)


# the scalar reference tier is only timed for decode (one row)
CASES = [(t, r) for t in _ops.supported_tiers() for r in (1, 64, 512) if t != "ref" or r == 1]


@pytest.mark.parametrize("tier,rows", CASES, ids=lambda c: str(c))
@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_qgemm_int8_compute(benchmark, tier, rows, fmt, shape):
    _ops.set_isa(tier)
    n, k = shape
    lin = _linear(FORMATS[fmt], n, k, "int8")
    x = np.random.default_rng(1).standard_normal((rows, k), dtype=np.float32)
    benchmark.extra_info.update(gmacs=n * k * rows / 1e9, weight_bytes=lin.nbytes)
    benchmark(lin, x)
    _ops.set_isa(None)


# fp32 / bf16 compute (dequantized weights, float activations): decode's dot-product tiles (1 row) and
# prefill's row-vector tiles (64 rows), SmolLM2's and the 1.1B model's shapes
FLOAT_SHAPES = [(1536, 576), (576, 1536), (5632, 2048)]


@pytest.mark.parametrize("tier", [t for t in _ops.supported_tiers() if t != "ref"])
@pytest.mark.parametrize("rows", [1, 64])
@pytest.mark.parametrize("compute", ["fp32", "bf16"])
@pytest.mark.parametrize("shape", FLOAT_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_qgemm_float_compute(benchmark, tier, rows, compute, shape):
    _ops.set_isa(tier)
    n, k = shape
    lin = _linear(FORMATS["int4_g32"], n, k, compute)
    x = np.random.default_rng(1).standard_normal((rows, k), dtype=np.float32)
    benchmark.extra_info.update(gmacs=n * k * rows / 1e9, weight_bytes=lin.nbytes)
    benchmark(lin, x)
    _ops.set_isa(None)
