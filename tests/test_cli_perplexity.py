"""`llmrt perplexity` on a tiny random model with a locally trained tokenizer: the CLI's number is
llmrt.evaluation's on the same ids and transformers' fp32 one; saved logits give KL 0 against themselves."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cli_run import TEXT, llmrt, word_tokenizer

MODEL = "llama-mha-untied"          # vocab 250
CTX, WINDOWS = 24, 3
FP32 = ("--weight_dtype", "fp32", "--compute_dtype", "fp32")


@pytest.fixture(scope="module")
def setup(tiny_models, tmp_path_factory):
    path, ref = tiny_models(MODEL)
    tok_dir = word_tokenizer(tmp_path_factory.mktemp("tok"), ref.config.vocab_size)
    text = tmp_path_factory.mktemp("text") / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    return path, ref, tok_dir, text


def _ids(tok_dir) -> np.ndarray:
    from transformers import AutoTokenizer
    return np.asarray(AutoTokenizer.from_pretrained(str(tok_dir))(TEXT, add_special_tokens=False).input_ids)


def _run(setup, *extra: str, torch: bool = True) -> dict:
    path, _, tok_dir, text = setup
    r = llmrt("perplexity", str(path), "--text", str(text), "--tokenizer", str(tok_dir), "--ctx", str(CTX),
              "--windows", str(WINDOWS), "-t", "1", "--json", *extra, torch=torch)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_perplexity_equals_evaluation_and_transformers(setup):
    import torch
    from llmrt import Model, WeightOnlyQuantConfig, evaluation

    path, ref, tok_dir, _ = setup
    # torch unimportable in the CLI process: nothing on the path needs it
    out = _run(setup, *FP32, torch=False)
    wins = list(evaluation.windows(_ids(tok_dir), CTX, WINDOWS))
    assert out["windows"] == WINDOWS and out["predicted_tokens"] == WINDOWS * (CTX - 1)

    model = Model.from_pretrained(path, WeightOnlyQuantConfig(weight_dtype="fp32", compute_dtype="fp32"))
    ours = evaluation.perplexity(lambda w: model(w[None], threads=1).logits[0], wins)
    assert out["perplexity"] == pytest.approx(ours, rel=1e-9)

    with torch.no_grad():
        theirs = evaluation.perplexity(lambda w: ref(torch.from_numpy(w[None])).logits[0].numpy(), wins)
    assert out["perplexity"] == pytest.approx(theirs, rel=1e-4)
    assert out["perplexity"] > 1.0


def test_int4_run_is_the_library_number(setup):
    from llmrt import Model, WeightOnlyQuantConfig, evaluation

    path, _, tok_dir, _ = setup
    out = _run(setup)           # the defaults: int4 sym g32, int8 compute, activation "auto"
    model = Model.from_pretrained(path, WeightOnlyQuantConfig(activation_precision="auto"))
    wins = list(evaluation.windows(_ids(tok_dir), CTX, WINDOWS))
    assert out["perplexity"] == pytest.approx(evaluation.perplexity(lambda w: model(w[None], threads=1).logits[0],
                                                                    wins), rel=1e-9)


def test_saved_logits_against_themselves(setup, tmp_path):
    ref_file = tmp_path / "ref.npz"
    saved = _run(setup, *FP32, "--save-logits", str(ref_file))
    saved_npz = np.load(ref_file)
    assert saved_npz["ids"].shape == (WINDOWS, CTX)
    assert saved_npz["logits_00000"].shape == (CTX, 250)

    same = _run(setup, *FP32, "--kl-reference", str(ref_file))
    assert same["reference"]["mean_kl"] == pytest.approx(0.0, abs=1e-9)
    assert same["reference"]["top1"] == 1.0
    assert same["reference"]["perplexity"] == pytest.approx(saved["perplexity"], rel=1e-9)

    # an int4 model against the fp32 reference: a real, positive divergence
    q = _run(setup, "--kl-reference", str(ref_file))
    assert q["reference"]["mean_kl"] > 1e-6
    assert q["reference"]["ppl_ratio"] == pytest.approx(q["perplexity"] / saved["perplexity"], rel=1e-6)


def test_reference_from_other_ids_is_refused(setup, tmp_path):
    path, _, tok_dir, text = setup
    ref_file = tmp_path / "ref.npz"
    _run(setup, *FP32, "--save-logits", str(ref_file))
    r = llmrt("perplexity", str(path), "--text", str(text), "--tokenizer", str(tok_dir), "--ctx", str(CTX + 1),
              "--windows", str(WINDOWS), "--kl-reference", str(ref_file))
    assert r.returncode == 2 and "other token ids" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("extra, message", [
    (("--text", "/nonexistent.txt"), "no such file"),
    (("--python-docs", "--ctx", "1"), "--ctx must be at least 2"),
    (("--python-docs", "--kl-reference", "/nonexistent.npz"), "--save-logits"),
])
def test_user_mistakes_are_one_line(setup, extra, message):
    path, _, tok_dir, _ = setup
    r = llmrt("perplexity", str(path), "--tokenizer", str(tok_dir), *extra)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_text_too_short_and_unknown_architecture(setup, tmp_path):
    path, _, tok_dir, text = setup
    r = llmrt("perplexity", str(path), "--text", str(text), "--tokenizer", str(tok_dir), "--ctx", "100000")
    assert r.returncode == 2 and "smaller --ctx" in r.stderr
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "no_such_family"}))
    r = llmrt("perplexity", str(odd), "--text", str(text), "--tokenizer", str(tok_dir), "--ctx", "8")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
