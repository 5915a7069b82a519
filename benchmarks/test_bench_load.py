"""Start-up costs of the front door, SmolLM2's GGUF (the default model of `llmrt run`):

    pytest benchmarks/test_bench_load.py --benchmark-autosave

- `import llmrt` in a fresh interpreter;
- `Model.from_pretrained` of the GGUF (header, mapping, repacking into the kernel layout);
- the GGUF's tokenizer (llmrt's own, from the file's metadata);
- `llmrt run -n 1`: a whole process, from its start to the first generated token (and exit).
Targets (issue 9): import < 0.3 s, from_pretrained <= 1.0 s, first token <= 2.0 s on 2 cores.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from models import smollm2_path


def _subprocess(args: list[str]) -> None:
    r = subprocess.run(args, capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stderr


def test_import_llmrt(benchmark):
    benchmark.pedantic(_subprocess, args=([sys.executable, "-c", "import llmrt"],), rounds=5, warmup_rounds=1)


def test_from_pretrained_gguf(benchmark):
    from llmrt import Model, WeightOnlyQuantConfig

    q = WeightOnlyQuantConfig(activation_precision="high")     # what `llmrt run` uses
    path = smollm2_path()
    benchmark.pedantic(lambda: Model.from_pretrained(path, q, compute_dtype="int8"), rounds=5, warmup_rounds=1)


def test_gguf_tokenizer(benchmark):
    from llmrt.tokenization import load_tokenizer

    path = smollm2_path()
    benchmark.pedantic(lambda: load_tokenizer(path), rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("threads", [2])
def test_llmrt_run_first_token(benchmark, threads):
    args = [sys.executable, "-m", "llmrt", "run", "-n", "1", "-t", str(threads)]
    benchmark.pedantic(_subprocess, args=(args,), rounds=3, warmup_rounds=1)
