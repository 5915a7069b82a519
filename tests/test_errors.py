"""Bad input gets a clear Python exception naming the problem, never a crash or garbage."""
from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from llmrt import AutoModelForCausalLM, Model, WeightOnlyQuantConfig
from llmrt.formats import ModelFileError
from smollm2_fixtures import smollm2_gguf_path


def test_missing_path():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        AutoModelForCausalLM.from_pretrained("/no/such/model/dir")


def test_hub_id_offline_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="Hugging Face"):
        AutoModelForCausalLM.from_pretrained("some-org/some-model-that-is-not-cached")
    assert time.perf_counter() - t0 < 10


def test_directory_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_unsupported_model_type(tiny_models, tmp_path):
    path, _ = tiny_models("llama-mha-untied")
    shutil.copytree(path, tmp_path / "m")
    cfg = json.loads((tmp_path / "m/config.json").read_text())
    cfg["model_type"] = "no_such_arch"
    (tmp_path / "m/config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported model_type 'no_such_arch'"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "m")


def test_truncated_safetensors(tiny_models, tmp_path):
    path, _ = tiny_models("llama-mha-untied")
    shutil.copytree(path, tmp_path / "m")
    f = tmp_path / "m/model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError):
        AutoModelForCausalLM.from_pretrained(tmp_path / "m")


@pytest.fixture(scope="module")
def smollm2_bytes():
    return smollm2_gguf_path().read_bytes()


def test_truncated_gguf(smollm2_bytes, tmp_path):
    f = tmp_path / "cut.gguf"
    f.write_bytes(smollm2_bytes[: len(smollm2_bytes) - 1_000_000])
    with pytest.raises(ModelFileError, match="cut.gguf"):
        AutoModelForCausalLM.from_pretrained(f)


def test_corrupted_gguf_header(smollm2_bytes, tmp_path):
    f = tmp_path / "bad.gguf"
    data = bytearray(smollm2_bytes[:4_000_000])
    data[8:24] = b"\xff" * 16            # tensor and metadata counts
    f.write_bytes(bytes(data))
    with pytest.raises(ModelFileError):
        AutoModelForCausalLM.from_pretrained(f)


def test_not_a_model_file(tmp_path):
    f = tmp_path / "notes.gguf"
    f.write_text("hello")
    with pytest.raises(ModelFileError):
        AutoModelForCausalLM.from_pretrained(f)


def test_truncated_and_corrupted_llmrt_file(tiny_models, tmp_path):
    path, _ = tiny_models("llama-gqa-tied")
    good = AutoModelForCausalLM.from_pretrained(path).save(tmp_path / "m.llmrt")
    data = good.read_bytes()
    cut = tmp_path / "cut.llmrt"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(ModelFileError):
        Model.load(cut)
    bad = tmp_path / "bad.llmrt"
    raw = bytearray(data)
    raw[-200] ^= 0xFF                     # inside the header, which is checksummed
    bad.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError):
        Model.load(bad)


def test_token_id_out_of_range(tiny_models):
    path, ref = tiny_models("llama-mha-untied")
    m = AutoModelForCausalLM.from_pretrained(path)
    v = ref.config.vocab_size
    with pytest.raises(ValueError, match=f"token id {v} is out of range"):
        m([[1, 2, v]])
    with pytest.raises(ValueError, match="out of range"):
        m.generate([[-1, 2]], max_new_tokens=2)


def test_prompt_longer_than_ctx_size(tiny_models):
    path, _ = tiny_models("llama-mha-untied")
    m = AutoModelForCausalLM.from_pretrained(path)
    with pytest.raises(ValueError, match="ctx_size"):
        m.generate([list(range(3, 40))], max_new_tokens=1, ctx_size=16)


@pytest.mark.parametrize("kwargs,match", [
    (dict(weight_dtype="int3"), "weight_dtype"),
    (dict(alg="zero"), "alg"),
    (dict(group_size=48), "group_size"),
    (dict(compute_dtype="fp8"), "compute_dtype"),
    (dict(scale_dtype="fp16x"), "scale_dtype"),
])
def test_invalid_quant_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WeightOnlyQuantConfig(**kwargs)


def test_group_size_that_does_not_divide_k(tiny_models):
    path, _ = tiny_models("llama-mqa-linear-rope")          # hidden 96
    with pytest.raises(ValueError, match="group_size 64 does not divide"):
        AutoModelForCausalLM.from_pretrained(path, quantization_config=WeightOnlyQuantConfig(group_size=64))


def test_conflicting_load_options(tiny_models):
    path, _ = tiny_models("llama-mha-untied")
    with pytest.raises(ValueError, match="only one of"):
        AutoModelForCausalLM.from_pretrained(path, load_in_4bit=True, load_in_8bit=True)


def test_unknown_isa_tier_is_a_clear_error():
    env = dict(os.environ, LLMRT_ISA="avx9000")
    r = subprocess.run([sys.executable, "-c", "import llmrt"], env=env, capture_output=True, text=True, cwd="/")
    assert r.returncode != 0 and "unknown ISA tier 'avx9000'" in r.stderr


@pytest.mark.parametrize("edit,match", [
    (lambda t: t.pop("model.norm.weight"), "no final norm weight"),
    (lambda t: t.pop("model.layers.1.post_attention_layernorm.weight"), "no layers.1.mlp_norm.weight"),
    (lambda t: t.update({"model.layers.0.input_layernorm.weight": t["model.layers.0.input_layernorm.weight"][:-3]}),
     "layers.0.attn_norm.weight has 61 values, expected 64"),
    (lambda t: t.update({"model.norm.weight": np.ones(70, np.float32)}), "final_norm.weight has 70 values"),
])
def test_missing_or_misshapen_norms_are_clear_errors(tiny_models, tmp_path, edit, match):
    """A norm vector the engine reads, absent or of the wrong length, is refused at load (it used to be
    dereferenced or read out of bounds)."""
    from safetensors.numpy import load_file, save_file
    path, _ = tiny_models("llama-mha-untied")
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    tensors = load_file(str(bad / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=re.escape(match)):
        AutoModelForCausalLM.from_pretrained(bad, quantization_config=WeightOnlyQuantConfig(weight_dtype="fp32"))
