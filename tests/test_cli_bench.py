"""`llmrt bench` on a tiny random model: the JSON has the llama-bench fields and positive rates
(speed itself is never asserted)."""
from __future__ import annotations

import json

from cli_run import llmrt


def test_bench_json_fields(tiny_models):
    from llmrt._kernels import _ops

    path, _ = tiny_models("llama-gqa-tied")
    r = llmrt("bench", str(path), "-p", "16", "-n", "4", "-t", "1", "-r", "2", "--json", torch=False)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["model"] == path.name and out["threads"] == 1 and out["reps"] == 2
    assert out["tier"] == _ops.current_tier()
    assert out["format"].startswith("int4_sym_g32") and "int8 compute" in out["format"]
    assert [t["test"] for t in out["tests"]] == ["pp16", "tg4"]
    for t, n in zip(out["tests"], (16, 4)):
        assert t["n_tokens"] == n and len(t["seconds"]) == 2
        assert all(s > 0 for s in t["seconds"])
        assert t["tokens_per_s"] > 0 and t["tokens_per_s_sd"] >= 0
        rates = [n / s for s in t["seconds"]]
        assert abs(t["tokens_per_s"] - sum(rates) / 2) <= 1e-6 * t["tokens_per_s"]


def test_bench_table_and_skipped_test(tiny_models):
    path, _ = tiny_models("llama-gqa-tied")
    r = llmrt("bench", str(path), "-p", "0", "-n", "3", "-r", "1", "--weight_dtype", "int8")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["model", "format", "tier", "threads", "test", "t/s"]
    assert len(lines) == 3 and "tg3" in lines[2] and "pp" not in lines[2] and "int8_sym_g32" in lines[2]


def test_bench_user_mistakes(tiny_models, tmp_path):
    path, _ = tiny_models("llama-gqa-tied")
    for args, message in ((("-p", "0", "-n", "0"), "not both 0"), (("-r", "0"), "must be at least 1"),
                          (("-p", "100000"), "lower -p")):
        r = llmrt("bench", str(path), *args)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
    r = llmrt("bench", str(tmp_path / "missing"))
    assert r.returncode == 2 and "no model at" in r.stderr
