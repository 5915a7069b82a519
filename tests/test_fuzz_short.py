"""The short fuzzing runs of CI: every harness in fuzz/ for 50,000 executions, coverage-guided by
atheris, must end without a finding (a crash, a hang, or an exception other than LlmrtError)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ_DIR = Path(__file__).resolve().parent.parent / "fuzz"
HARNESSES = sorted(FUZZ_DIR.glob("fuzz_*.py"))
RUNS = int(os.environ.get("LLMRT_FUZZ_RUNS", "50000"))

atheris = pytest.importorskip("atheris", reason="atheris runs on Linux x86-64 (pip install atheris)")


def test_every_reader_has_a_harness():
    names = {h.stem for h in HARNESSES}
    assert {"fuzz_gguf", "fuzz_llmrt_file", "fuzz_safetensors", "fuzz_hf_config"} <= names, names


@pytest.mark.parametrize("harness", HARNESSES, ids=lambda p: p.stem)
def test_short_fuzz_run(harness, tmp_path):
    corpus = tmp_path / "corpus"            # new inputs go here; the committed seeds are only read
    corpus.mkdir()
    seeds = FUZZ_DIR / "seeds" / harness.stem.removeprefix("fuzz_")
    r = subprocess.run([sys.executable, str(harness), f"-atheris_runs={RUNS}", "-timeout=30", "-rss_limit_mb=4096",
                        str(corpus), *([str(seeds)] if seeds.is_dir() else [])], capture_output=True, text=True,
                       timeout=1800, cwd=tmp_path)
    log = r.stdout[-3000:] + r.stderr[-5000:]
    assert r.returncode == 0, f"{harness.name} found a problem:\n{log}"
    done = re.findall(r"Done (\d+) (?:runs )?in", r.stderr)
    assert done and int(done[-1]) >= RUNS, log
