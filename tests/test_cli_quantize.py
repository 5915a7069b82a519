"""`llmrt quantize`: HF directory / F16 GGUF / .llmrt in; .llmrt (llmrt's formats) or GGUF q4_0 / q4_1 / q8_0
(llama.cpp's blocks, checked byte for byte against gguf-py's reference quantizers) out."""
from __future__ import annotations

import subprocess
import sys

import gguf
import numpy as np
import pytest
import torch

from cli_helpers import convert, fields, llmrt_cli, one_line_error, prompt, tensors, torch_logits
from conftest import max_rel_err
from llmrt import Model, WeightOnlyQuantConfig
from llmrt.formats import load_model_file

QTYPES = {"q4_0": gguf.GGMLQuantizationType.Q4_0, "q4_1": gguf.GGMLQuantizationType.Q4_1,
          "q8_0": gguf.GGMLQuantizationType.Q8_0}


def quantize(*args: str) -> None:
    r = llmrt_cli("quantize", "-q", *args)
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------- .llmrt output
@pytest.mark.parametrize("name,opts", [
    ("llama-gqa-tied", dict(weight_dtype="int4", alg="sym", group_size=32, scale_dtype="fp32", compute_dtype="int8")),
    ("neox-pct25-parallel", dict(weight_dtype="int8", alg="asym", group_size=-1, scale_dtype="bf16",
                                 compute_dtype="fp32")),
    ("mistral-window", dict(weight_dtype="int4", alg="asym", group_size=32, scale_dtype="fp16",
                            compute_dtype="bf16")),
])
def test_hf_to_llmrt_is_what_model_save_writes(tiny_models, tmp_path, name, opts):
    path, _ = tiny_models(name)
    out = tmp_path / "q.llmrt"
    flags = [a for k, v in opts.items() for a in (f"--{k}", str(v))]
    quantize("--model_file", str(path), "--out_file", str(out), *flags)
    # the same file, byte for byte, as loading through the engine and saving
    ref = tmp_path / "ref.llmrt"
    model = Model.from_pretrained(path, WeightOnlyQuantConfig(**opts), progress=False)
    model.save(ref)
    assert out.read_bytes() == ref.read_bytes()
    loaded = Model.load(out)
    assert loaded.quant_config.compute_dtype == opts["compute_dtype"]
    ids = prompt(model.vocab_size)
    np.testing.assert_array_equal(loaded(ids).logits, model(ids).logits)
    # several threads quantize the same bytes
    out2 = tmp_path / "q2.llmrt"
    quantize("--model_file", str(path), "--out_file", str(out2), "--nthread", "2", *flags)
    assert out2.read_bytes() == out.read_bytes()


def test_llmrt_to_llmrt_changes_the_compute_dtype(tiny_models, tmp_path):
    path, _ = tiny_models("llama-mha-untied")
    src, out = tmp_path / "int8c.llmrt", tmp_path / "fp32c.llmrt"
    quantize("--model_file", str(path), "--out_file", str(src), "--weight_dtype", "int8")
    quantize("--model_file", str(src), "--out_file", str(out), "--compute_dtype", "fp32")    # keeps int8 weights
    meta_a, arr_a, fmt_a = load_model_file(src)
    meta_b, arr_b, fmt_b = load_model_file(out)
    assert meta_a["quant"]["compute_dtype"] == "int8" and meta_b["quant"]["compute_dtype"] == "fp32"
    assert list(arr_a) == list(arr_b) and fmt_a == fmt_b
    for n in arr_a:
        assert arr_a[n].tobytes() == arr_b[n].tobytes(), n
    ids = prompt(250)
    np.testing.assert_array_equal(Model.load(out)(ids).logits, Model.load(src, compute_dtype="fp32")(ids).logits)
    r = llmrt_cli("quantize", "--model_file", str(src), "--out_file", str(tmp_path / "x.llmrt"), "--weight_dtype", "int4")
    assert r.returncode == 2 and "already quantized" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["llama-gqa-tied", "neox-pct100-sequential"])
def test_f32_gguf_to_llmrt_equals_hf_to_llmrt(tiny_models, tmp_path, name):
    """The GGUF reader undoes what the converter did: the same internal tensors, the same quantization."""
    path, _ = tiny_models(name)
    gg = tmp_path / "m.gguf"
    convert(path, gg, "f32")
    a, b = tmp_path / "from_hf.llmrt", tmp_path / "from_gguf.llmrt"
    quantize("--model_file", str(path), "--out_file", str(a), "--group_size", "-1")
    quantize("--model_file", str(gg), "--out_file", str(b), "--group_size", "-1")
    _, arr_a, fmt_a = load_model_file(a)
    meta_b, arr_b, fmt_b = load_model_file(b)
    assert meta_b["source"]["kind"] == "gguf"
    # a tied NeoX head is written to GGUF as output.weight, so that file has an untied head
    shared = set(arr_a) & set(arr_b)
    assert shared >= set(arr_a) - {"embed"}
    for n in shared - {"embed"}:
        assert fmt_a.get(n) == fmt_b.get(n) and arr_a[n].tobytes() == arr_b[n].tobytes(), n


# ---------------------------------------------------------------- GGUF block output
def _round_trip(w: np.ndarray, qtype) -> np.ndarray:
    return gguf.quants.dequantize(gguf.quants.quantize(w.astype(np.float32), qtype), qtype)


def _rounded(ref, fn):
    """A copy of a torch model whose quantizable matrices (rows a multiple of 32) went through fn."""
    model = ref.__class__(ref.config).eval()
    model.load_state_dict(ref.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2 and p.shape[1] % 32 == 0:
                p.copy_(torch.from_numpy(fn(p.numpy())))
    return model


@pytest.mark.parametrize("name,outtype", [("llama-mha-untied", "q4_0"), ("neox-pct25-parallel", "q4_0"),
                                          ("llama-gqa-tied", "q4_1"), ("neox-tied", "q8_0"),
                                          ("llama-mha-untied", "q8_0")])
def test_hf_to_gguf_blocks_are_llama_cpps(tiny_models, tmp_path, name, outtype):
    path, ref = tiny_models(name)
    f32, out = tmp_path / "f32.gguf", tmp_path / f"{outtype}.gguf"
    convert(path, f32, "f32")
    quantize("--model_file", str(path), "--out_file", str(out), "--outtype", outtype, "--nthread", "2")
    meta, ts, dense = fields(out), tensors(out), tensors(f32)
    assert meta["general.file_type"] == {"q4_0": 2, "q4_1": 3, "q8_0": 7}[outtype]
    assert meta["general.quantization_version"] == 2
    assert set(ts) == set(dense)
    qtype = QTYPES[outtype]
    for n, (ttype, shape, data) in ts.items():
        assert shape == dense[n][1], n
        if len(shape) == 1:
            assert ttype == "F32", n
            continue
        assert ttype == outtype.upper(), n        # matrices, token embedding and output alike
        # byte for byte what gguf-py's reference (llama.cpp's ggml-quants algorithm) writes
        want = gguf.quants.quantize(np.asarray(dense[n][2], np.float32), qtype)
        assert np.asarray(data).tobytes() == want.tobytes(), n
    # llmrt runs the blocks as stored: the logits of torch with the same rounding applied to its weights
    rounded = _rounded(ref, lambda w: _round_trip(w, qtype))
    ids = prompt(ref.config.vocab_size)
    got = Model.from_pretrained(out, compute_dtype="fp32", memory_dtype="f32")(ids).logits
    assert max_rel_err(got, torch_logits(rounded, ids)) <= 1e-4
    assert max_rel_err(got, torch_logits(ref, ids)) > 1e-4       # the rounding is really there


def test_convert_q8_0_is_quantize_q8_0(tiny_models, tmp_path):
    path, _ = tiny_models("neox-pct25-parallel")
    a, b = tmp_path / "convert.gguf", tmp_path / "quantize.gguf"
    convert(path, a, "q8_0")
    quantize("--model_file", str(path), "--out_file", str(b), "--outtype", "q8_0")
    assert a.read_bytes() == b.read_bytes()


def test_f16_gguf_to_q8_0_keeps_metadata(tiny_models, tmp_path):
    path, ref = tiny_models("llama-gqa-tied")
    f16, out = tmp_path / "f16.gguf", tmp_path / "q8.gguf"
    convert(path, f16, "f16")
    quantize("--model_file", str(f16), "--out_file", str(out), "--outtype", "q8_0")
    src_meta, meta = fields(f16), fields(out)
    assert meta.pop("general.file_type") == 7 and src_meta.pop("general.file_type") == 1
    assert meta.pop("general.quantization_version") == 2
    assert meta == src_meta
    src, ts = tensors(f16), tensors(out)
    assert list(src) == list(ts)
    for n, (ttype, shape, data) in ts.items():
        if len(shape) == 2:
            assert ttype == "Q8_0"
            want = gguf.quants.quantize(np.asarray(src[n][2], np.float32), QTYPES["q8_0"])
            assert np.asarray(data).tobytes() == want.tobytes(), n
        else:
            assert ttype == "F32" and np.array_equal(data, src[n][2]), n
    ids = prompt(ref.config.vocab_size)
    got = Model.from_pretrained(out, compute_dtype="fp32", memory_dtype="f32")(ids).logits
    rounded = _rounded(ref, lambda w: _round_trip(w.astype(np.float16), QTYPES["q8_0"]))
    assert max_rel_err(got, torch_logits(rounded, ids)) <= 1e-4


def test_weight_options_name_the_gguf_type(tiny_models, tmp_path):
    path, _ = tiny_models("llama-gqa-tied")
    out = tmp_path / "m.gguf"
    quantize("--model_file", str(path), "--out_file", str(out), "--weight_dtype", "int4", "--alg", "asym")
    assert tensors(out)["blk.0.attn_q.weight"][0] == "Q4_1"


# ---------------------------------------------------------------- without torch, and user mistakes
def test_quantize_runs_without_torch(tiny_models, tmp_path):
    path, _ = tiny_models("llama-mha-untied")
    out = tmp_path / "m.gguf"
    code = ("import sys; sys.modules['torch'] = None; from llmrt.cli import main; "
            f"rc = main(['quantize', '--model_file', {str(path)!r}, '--out_file', {str(out)!r}, '--outtype', "
            "'q4_0', '-q']); assert sys.modules['torch'] is None; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=600)
    assert r.returncode == 0, r.stderr
    assert tensors(out)["blk.0.ffn_up.weight"][0] == "Q4_0"


def test_quantize_user_errors(tiny_models, tmp_path):
    path, _ = tiny_models("llama-mha-untied")

    def q(*a: str) -> subprocess.CompletedProcess:
        return llmrt_cli("quantize", "-q", *a)

    one_line_error("quantize", q("--model_file", str(tmp_path / "nothing"), "--out_file", str(tmp_path / "o.llmrt")), "nothing")
    out = tmp_path / "exists.llmrt"
    out.write_bytes(b"keep me")
    one_line_error("quantize", q("--model_file", str(path), "--out_file", str(out)), "exists", "--force")
    assert out.read_bytes() == b"keep me"
    q4 = tmp_path / "q4.gguf"
    quantize("--model_file", str(path), "--out_file", str(q4), "--outtype", "q4_0")
    one_line_error("quantize", q("--model_file", str(q4), "--out_file", str(tmp_path / "q8.gguf"), "--outtype", "q8_0"),
                    "Q4_0", "re-quantizing")
    one_line_error("quantize", q("--model_file", str(q4), "--out_file", str(tmp_path / "x.llmrt")), "already quantized")
    mine = tmp_path / "m.llmrt"
    quantize("--model_file", str(path), "--out_file", str(mine))
    one_line_error("quantize", q("--model_file", str(mine), "--out_file", str(tmp_path / "y.gguf"), "--outtype", "q4_0"),
                    "llmrt-quantized")
    one_line_error("quantize", q("--model_file", str(path), "--out_file", str(tmp_path / "z.llmrt"), "--outtype", "q4_0"),
                    ".gguf")
    one_line_error("quantize", q("--model_file", str(path), "--out_file", str(tmp_path / "z.gguf"), "--weight_dtype", "int8",
                      "--alg", "asym"), "--outtype")
    one_line_error("quantize", q("--model_file", str(path), "--out_file", str(tmp_path / "z.gguf"), "--outtype", "q4_0",
                      "--group_size", "128"), "--group_size 32")
    one_line_error("quantize", q("--model_file", str(path), "--out_file", str(tmp_path / "z.gguf"), "--outtype", "q8_0",
                      "--scale_dtype", "fp32"), "--scale_dtype fp16")
    one_line_error("quantize", q("--model_file", str(path), "--out_file", str(tmp_path / "g.llmrt"), "--group_size", "128"),
                    "group_size 128")
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "g.llmrt").exists()
