"""Helpers of the convert / quantize CLI tests: run the CLI, read GGUF files back with the gguf package."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import torch


def llmrt_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmrt", *args], capture_output=True, text=True, cwd="/",
                          env=env or dict(os.environ), timeout=600)


def one_line_error(command: str, r: subprocess.CompletedProcess, *needles: str) -> None:
    """The CLI failed as for a user's mistake: exit 2, one line "llmrt COMMAND: error: ..." naming needles."""
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"llmrt {command}: error:"), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def convert(src: Path, out: Path, outtype: str = "f32", *extra: str) -> None:
    r = llmrt_cli("convert", str(src), "--outfile", str(out), "--outtype", outtype, "-q", *extra)
    assert r.returncode == 0, r.stderr
    assert out.is_file()


def prompt(vocab: int, n: int = 20, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, vocab, size=(1, n))


def torch_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids)).logits.numpy()


def fields(path: Path) -> dict:
    r = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}


def tensors(path: Path) -> dict:
    """name -> (GGML type name, NumPy-order shape, raw data)"""
    r = gguf.GGUFReader(path)
    return {t.name: (t.tensor_type.name, tuple(int(s) for s in reversed(t.shape.tolist())), t.data) for t in r.tensors}
