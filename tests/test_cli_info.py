"""`llmrt info MODEL` on a tiny HF model, its .llmrt file and SmolLM2's GGUF: architecture,
parameters, tensor formats, context, chat template and kernel tier, from headers only."""
from __future__ import annotations

import json
import shutil

from cli_run import llmrt


def _info(path, torch: bool = True) -> dict:
    r = llmrt("info", str(path), "--json", torch=torch)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_info_tiny_hf_model(tiny_models, tmp_path):
    path, ref = tiny_models("llama-gqa-tied")
    out = _info(path, torch=False)
    m = out["model"]
    n_params = sum(p.numel() for p in ref.parameters())          # tied head counted once, as stored
    assert (m["kind"], m["architecture"], m["family"]) == ("hf", "llama", "llama")
    assert m["parameters"] == n_params
    assert m["formats"] == {"float32": {"tensors": len(ref.state_dict()) - 1, "bytes": 4 * n_params}}
    assert m["context_length"] == 512 and m["chat_template"] is False
    assert m["tier"] == out["isa_selected"] and m["compute"] == "int8"
    assert "int4_sym_g32_fp32 (int8 head)" in m["runs_as"]           # Model.from_pretrained's default

    with_template = tmp_path / "chat"
    shutil.copytree(path, with_template)
    (with_template / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    assert _info(with_template)["model"]["chat_template"] is True

    r = llmrt("info", str(path))                 # the human form keeps the version / ISA lines
    assert r.returncode == 0 and "isa_selected" in r.stdout and f"{n_params:,}" in r.stdout


def test_info_llmrt_file_counts_the_same_parameters(tiny_models, tmp_path):
    from llmrt import Model

    path, ref = tiny_models("llama-mha-untied")
    f = Model.from_pretrained(path).save(tmp_path / "tiny.llmrt")
    m = _info(f)["model"]
    assert m["kind"] == "llmrt" and m["family"] == "llama" and m["architecture"] == "llama"
    assert m["parameters"] == sum(p.numel() for p in ref.parameters())
    assert "int4_sym_g32_fp32" in m["formats"] and "int8_sym_g32_fp32" in m["formats"]    # int8 head
    assert sum(t["bytes"] for t in m["formats"].values()) < f.stat().st_size
    assert m["runs_as"] == "int4_sym_g32_fp32 (int8 head) as stored" and m["compute"] == "int8"
    assert m["chat_template"] is False          # its source directory has no tokenizer_config.json


def test_info_smollm2_gguf():
    from llmrt.hub import default_model_path

    gguf = default_model_path()
    m = _info(gguf, torch=False)["model"]
    assert (m["kind"], m["architecture"], m["family"]) == ("gguf", "llama", "llama")
    assert m["parameters"] == 134_515_008                      # SmolLM2-135M, tied embeddings
    assert m["formats"]["q4_1"]["tensors"] == 30 * 7 and m["formats"]["q8_0"]["tensors"] == 1
    total = sum(t["bytes"] for t in m["formats"].values())
    assert 0.9 * gguf.stat().st_size < total < gguf.stat().st_size
    assert m["context_length"] == 8192 and m["chat_template"] is True
    assert "unsupported_formats" not in m


def test_info_user_mistakes(tmp_path):
    r = llmrt("info", str(tmp_path / "missing"))
    assert r.returncode == 2 and "no model at" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no_such_family"}))
    r = llmrt("info", str(tmp_path))
    assert r.returncode == 2 and "unsupported model_type" in r.stderr and "Traceback" not in r.stderr
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a model")
    r = llmrt("info", str(junk))
    assert r.returncode == 2 and "neither a GGUF" in r.stderr
