"""`llmrt inference` (neural-speed's inference.py flags) on SmolLM2's GGUF: streamed greedy output
is Model.generate's on the same ids; context overflow is an error unless --keep lets it go on."""
from __future__ import annotations

import re

import pytest

from cli_run import llmrt, word_tokenizer

PROMPT = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"


@pytest.fixture(scope="module")
def smollm2():
    from llmrt.hub import default_model_path
    from llmrt.tokenization import load_tokenizer

    path = default_model_path()
    return path, load_tokenizer(path)


def _expected(path, tok, n: int, memory_dtype: str = "f16", penalty: float = 1.1) -> str:
    from llmrt import Model

    model = Model.from_pretrained(path, memory_dtype=memory_dtype)
    ids = tok(PROMPT, add_special_tokens=True).input_ids
    out = model.generate([ids], max_new_tokens=n, ctx_size=512, repetition_penalty=penalty, threads=2)
    return PROMPT + tok.decode([int(t) for t in out[0, len(ids):]], skip_special_tokens=True)


def _counts(stderr: str) -> tuple[int, int]:
    m = re.search(r"(\d+) prompt \+ (\d+) new tokens", stderr)
    assert m, stderr
    return int(m.group(1)), int(m.group(2))


def test_greedy_output_is_generate(smollm2):
    path, tok = smollm2
    r = llmrt("inference", "-m", str(path), "-p", PROMPT, "-n", "8", "-t", "2", "-c", "512", "-b", "64", "--seed", "1",
              torch=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip("\n") == _expected(path, tok, 8)
    assert _counts(r.stderr)[1] == 8


def test_memory_f32_is_generate_with_an_f32_cache(smollm2):
    path, tok = smollm2
    r = llmrt("inference", "-m", str(path), "-p", PROMPT, "-n", "8", "--memory-f32", "--repeat_penalty", "1.0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip("\n") == _expected(path, tok, 8, memory_dtype="f32", penalty=1.0)


def test_context_overflow_without_keep_is_a_clear_error(smollm2):
    path, _ = smollm2
    r = llmrt("inference", "-m", str(path), "-p", PROMPT, "-n", "64", "-c", "32")
    assert r.returncode == 2, r.stderr
    assert "exceeds -c 32" in r.stderr and "--keep" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("extra", [("--keep", "4"), ("--keep", "4", "--shift-roped-k")])
def test_keep_goes_past_a_tiny_context(smollm2, extra):
    path, _ = smollm2
    r = llmrt("inference", "-m", str(path), "-p", PROMPT, "-n", "48", "-c", "32", "--color", *extra)
    assert r.returncode == 0, r.stderr
    n_prompt, n_new = _counts(r.stderr)
    assert n_prompt + n_new > 32            # generation went on after the context was full
    assert r.stdout.startswith("\033[33m" + PROMPT + "\033[0m")


def test_runs_without_torch_and_rejects_bad_flags(tiny_models, tmp_path):
    path, ref = tiny_models("llama-mha-untied")
    tok_dir = word_tokenizer(tmp_path / "tok", ref.config.vocab_size)
    r = llmrt("inference", "-m", str(path), "--tokenizer", str(tok_dir), "-p", "The interpreter", "-n", "5",
              "--repeat_penalty", "1.0", torch=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("The interpreter") and _counts(r.stderr)[1] == 5
    for args, message in ((("-b", "0"), "must be at least 1"), (("-c", "100000"), "context window"),
                          (("--memory-f32", "--memory-f16"), "not allowed with"),
                          (("--keep", "40", "-c", "32"), "--keep 40")):
        r = llmrt("inference", "-m", str(path), "--tokenizer", str(tok_dir), "-p", "The", "-n", "2", *args)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
    r = llmrt("inference", "-m", str(tmp_path / "missing.gguf"), "-p", "x")
    assert r.returncode == 2 and "no such file" in r.stderr
