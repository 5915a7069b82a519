"""The llmrt model file: bit-identical round trips, zero-copy loading, atomic writes, and every
kind of damage being reported as ModelFileError."""
from __future__ import annotations

import json
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from llmrt import formats
from llmrt.formats import (
    MODEL_FILE_VERSION, ModelFileError, ModelFileWriter, QuantFormat, is_llmrt_file, load_model_file,
    read_model_file_metadata,
)

FORMATS = [QuantFormat.gguf(n) for n in ("q4_0", "q4_1", "q8_0")] + [
    QuantFormat(wd, alg, g, sd) for wd in ("int4", "int8") for alg in ("sym", "asym")
    for g in (32, 64, -1) for sd in ("fp32", "bf16")]
META = {"config": {"hidden": 64, "eps": 1e-5, "names": ["a", "b"]}, "quant": {"weight_dtype": "int4"},
        "source": {"kind": "hf", "identity": "abc"}, "np_scalar": np.float32(0.5), "np_int": np.int64(3)}


def _tensors() -> dict[str, tuple[np.ndarray, QuantFormat | None]]:
    rng = np.random.default_rng(0)
    t: dict[str, tuple[np.ndarray, QuantFormat | None]] = {
        "dense.f32": (rng.standard_normal((7, 33)).astype(np.float32), None),
        "dense.f16": (rng.standard_normal((5, 64)).astype(np.float16), None),
        "dense.vec": (rng.standard_normal(13).astype(np.float32), None),
        "dense.i64": (np.arange(6, dtype=np.int64).reshape(2, 3), None),
        "dense.empty": (np.zeros((0, 4), np.float32), None),
        "dense.scalar": (np.array(2.5, np.float32), None),
    }
    w = rng.standard_normal((9, 128)).astype(np.float32)
    for fmt in FORMATS:
        t[f"blocks.{fmt.name}"] = (fmt.quantize(w), fmt)
    return t


@pytest.fixture
def written(tmp_path) -> tuple[Path, dict]:
    p = tmp_path / "m.llmrt"
    tensors = _tensors()
    with ModelFileWriter(p) as w:
        for name, (arr, fmt) in tensors.items():
            w.add(name, arr, fmt)
        assert w.finish(META) == p
    return p, tensors


def test_round_trip_is_bit_identical_and_zero_copy(written):
    p, tensors = written
    meta, arrays, fmts = load_model_file(p)
    assert meta["config"] == META["config"] and meta["np_scalar"] == 0.5 and meta["np_int"] == 3
    assert list(arrays) == list(tensors)
    for name, (arr, fmt) in tensors.items():
        got = arrays[name]
        assert got.dtype == arr.dtype and got.shape == arr.shape, name
        assert got.tobytes() == arr.tobytes(), name
        assert fmts.get(name) == fmt, name
        assert not got.flags.writeable
        if got.size:
            base = got
            while not isinstance(base, np.memmap) and base.base is not None:
                base = base.base
            assert isinstance(base, np.memmap), name
        if fmt is not None:
            assert np.array_equal(fmt.dequantize(got), fmt.dequantize(arr))
    # every tensor starts 64-byte aligned in the file
    header = _header(p)
    assert all(e["offset"] % 64 == 0 for e in header["tensors"].values())
    assert is_llmrt_file(p) and not is_llmrt_file(p.with_name("absent"))
    assert read_model_file_metadata(p)["source"] == META["source"]
    load_model_file(p, verify=True)
    assert not list(p.parent.glob("*.tmp"))


def test_per_channel_blocks_keep_their_format(tmp_path):
    # group 128 on K=128 and per-channel have the same dtype: the file must keep them apart
    w = np.random.default_rng(1).standard_normal((4, 128)).astype(np.float32)
    a, b = QuantFormat("int4", "sym", 128), QuantFormat("int4", "sym", -1)
    p = tmp_path / "pc.llmrt"
    with ModelFileWriter(p) as wr:
        wr.add("a", a.quantize(w), a)
        wr.add("b", b.quantize(w), b)
        wr.finish({})
    _, arrays, fmts = load_model_file(p)
    assert fmts == {"a": a, "b": b}


# ---------------------------------------------------------------- atomic writes
def test_interrupted_write_leaves_nothing_behind(tmp_path):
    p = tmp_path / "m.llmrt"
    with pytest.raises(RuntimeError, match="boom"):
        with ModelFileWriter(p) as w:
            w.add("x", np.ones(4, np.float32))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_the_old_file(written):
    p, _ = written
    before = p.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with ModelFileWriter(p) as w:
            w.add("x", np.ones(4, np.float32))
            raise KeyboardInterrupt
    assert p.read_bytes() == before
    assert [f.name for f in p.parent.iterdir()] == [p.name]


def test_forgetting_finish_is_an_error(tmp_path):
    p = tmp_path / "m.llmrt"
    with pytest.raises(RuntimeError, match="finish"):
        with ModelFileWriter(p) as w:
            w.add("x", np.ones(4, np.float32))
    assert list(tmp_path.iterdir()) == []


def test_writer_validation(tmp_path):
    fmt = QuantFormat("int4")
    blocks = fmt.quantize(np.ones((2, 64), np.float32))
    with ModelFileWriter(tmp_path / "m.llmrt") as w:
        w.add("a", np.ones(3, np.float32))
        with pytest.raises(ValueError, match="already"):
            w.add("a", np.ones(3, np.float32))
        with pytest.raises(ValueError, match="QuantFormat"):
            w.add("b", blocks)
        with pytest.raises(ValueError, match="does not match"):
            w.add("c", blocks, QuantFormat("int4", "asym"))
        with pytest.raises(TypeError):
            w.add("d", np.array(["x"]))
        with pytest.raises(TypeError, match="JSON"):
            w.finish({"bad": object()})
        w.finish({"good": 1})              # a metadata mistake does not lose the streamed tensors
    meta, arrays, _ = load_model_file(tmp_path / "m.llmrt")
    assert meta == {"good": 1} and list(arrays) == ["a"]
    assert [f.name for f in tmp_path.iterdir()] == ["m.llmrt"]


# ---------------------------------------------------------------- damage
def _header(p: Path) -> dict:
    data = p.read_bytes()
    off, n = struct.unpack_from("<QQ", data, 16)
    return json.loads(data[off:off + n])


def _rewrite(p: Path, header: dict | None = None, version: int | None = None) -> None:
    """Rewrite the header and/or version with valid checksums (a well-formed but wrong file)."""
    data = bytearray(p.read_bytes())
    off, n = struct.unpack_from("<QQ", data, 16)
    if header is not None:
        raw = json.dumps(header).encode()
        data = data[:off] + raw
        struct.pack_into("<QQQI", data, 16, off, len(raw), len(data), zlib.crc32(raw))
    if version is not None:
        struct.pack_into("<I", data, 8, version)
    struct.pack_into("<I", data, 56, zlib.crc32(bytes(data[:56])))
    p.write_bytes(bytes(data))


def test_truncated_file(written):
    p, _ = written
    data = p.read_bytes()
    for cut in (len(data) - 1, len(data) // 2, 70, 40, 3):
        p.write_bytes(data[:cut])
        with pytest.raises(ModelFileError, match=r"m\.llmrt.*truncated"):
            load_model_file(p)


def test_bad_magic(written):
    p, _ = written
    data = bytearray(p.read_bytes())
    data[:4] = b"GGUF"
    p.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="not an llmrt model file"):
        load_model_file(p)
    with pytest.raises(FileNotFoundError):
        load_model_file(p.with_name("absent.llmrt"))


def test_newer_version(written):
    p, _ = written
    _rewrite(p, version=MODEL_FILE_VERSION + 1)
    with pytest.raises(ModelFileError, match="newer llmrt.*upgrade"):
        load_model_file(p)


def test_corrupt_header_and_preamble(written):
    p, _ = written
    good = p.read_bytes()
    off = struct.unpack_from("<Q", good, 16)[0]
    data = bytearray(good)
    data[off + 20] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="header.*checksum"):
        load_model_file(p)
    data = bytearray(good)
    data[30] ^= 0x40                      # inside the header-length field
    p.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="preamble"):
        load_model_file(p)
    p.write_bytes(good + b"\0" * 10)
    with pytest.raises(ModelFileError, match="unexpected bytes"):
        load_model_file(p)


def test_tensor_extent_beyond_data(written):
    p, _ = written
    h = _header(p)
    h["tensors"]["dense.f32"]["offset"] = 1 << 30
    _rewrite(p, header=h)
    with pytest.raises(ModelFileError, match="dense.f32.*outside"):
        load_model_file(p)


def test_inconsistent_tensor_entry(written):
    p, _ = written
    h = _header(p)
    h["tensors"]["dense.f32"]["shape"] = [7, 34]
    _rewrite(p, header=h)
    with pytest.raises(ModelFileError, match="dense.f32"):
        load_model_file(p)
    h["tensors"]["dense.f32"]["shape"] = [7, 33]
    h["tensors"]["blocks.q4_0"]["format"] = {"weight_dtype": "int5"}
    _rewrite(p, header=h)
    with pytest.raises(ModelFileError, match="blocks.q4_0"):
        load_model_file(p)


def test_data_corruption_found_by_verify(written):
    p, tensors = written
    off = _header(p)["tensors"]["blocks.q4_1"]["offset"]
    data = bytearray(p.read_bytes())
    data[off + 5] ^= 0xFF
    p.write_bytes(bytes(data))
    load_model_file(p)                   # cheap open does not read tensor data
    with pytest.raises(ModelFileError, match="blocks.q4_1.*checksum"):
        load_model_file(p, verify=True)


def test_big_endian_input_is_stored_little_endian(tmp_path):
    p = tmp_path / "be.llmrt"
    a = np.arange(5, dtype=">f4")
    with ModelFileWriter(p) as w:
        w.add("a", a)
        w.finish({})
    _, arrays, _ = load_model_file(p)
    assert arrays["a"].dtype == np.dtype("<f4") and np.array_equal(arrays["a"], a)
    assert os.path.getsize(p) > 64


def _rss_file_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssFile in /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_drop_resident_pages_gives_back_mapped_weights(tmp_path):
    """Repacked weights no longer need their file pages: dropping them lowers the resident set and
    leaves the data readable (read back from the file)."""
    path = tmp_path / "w.bin"
    data = np.arange(64 << 20, dtype=np.uint8)
    data.tofile(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    views = [mm[1000:(32 << 20)].view(np.uint8), mm[(32 << 20):].reshape(1024, -1)]
    assert int(mm.sum(dtype=np.uint64)) == int(data.sum(dtype=np.uint64))   # every page resident
    before = _rss_file_mb()
    formats.drop_resident_pages(views + [np.zeros(10)])                   # plain arrays are ignored
    assert before - _rss_file_mb() > 48
    np.testing.assert_array_equal(views[1][3], data[(32 << 20) + 3 * 32768:(32 << 20) + 4 * 32768])
