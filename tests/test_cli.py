"""The command line: `llmrt info`, and `llmrt run` answering from the default model."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _llmrt(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmrt", *args], capture_output=True, text=True, cwd="/",
                          env=env or dict(os.environ), timeout=600)


def test_info_reports_version_and_tiers():
    r = _llmrt("info")
    assert r.returncode == 0, r.stderr
    for key in ("version", "isa_compiled", "isa_selected", "threads"):
        assert key in r.stdout


def test_run_default_model_answers_paris():
    r = _llmrt("run", "-n", "16", "-t", "2")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


def test_run_forced_isa_and_hf_model(tiny_models):
    path, _ = tiny_models("llama-gqa-tied")
    r = _llmrt("run", str(path), "-n", "4", "--no_chat", "--tokenizer", str(path),
               env=dict(os.environ, LLMRT_ISA="avx2"))
    # a tiny random model has no tokenizer: the CLI must say so instead of crashing
    assert r.returncode != 0 and "tokenizer" in r.stderr.lower()


def test_run_missing_model_is_a_clear_error(tmp_path):
    r = _llmrt("run", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "no model at" in r.stderr
