"""The file readers' checks, one at a time: GGUF tensor tables and metadata types, safetensors headers
and shard indexes, config.json, and the .llmrt data checksums (Model.load(verify=True) and the
from_pretrained cache)."""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

import malformed_files as mf
from llmrt import AutoModelForCausalLM, ConfigError, Model, ModelFileError, UnsupportedError
from llmrt.formats import Checkpoint, GGUFFile, load_model_file
from llmrt.formats.json_files import read_hf_config


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> mf.Sources:
    return mf.build_sources(tmp_path_factory.mktemp("sources"))


def _gguf(tmp_path: Path, src: mf.Sources, *edits) -> Path:
    spec = src.spec
    for e in edits:
        e(spec)
    return mf.write_gguf(tmp_path / "m.gguf", spec)


# ---------------------------------------------------------------- GGUF tensor table
def test_healthy_gguf_opens(src):
    g = GGUFFile(src.gguf)
    assert len(g) == 29 and g.alignment == 32


@pytest.mark.parametrize("value", [1 << 30, True, 2**64 - 1])
def test_gguf_alignment_must_be_a_sane_power_of_two(tmp_path, src, value):
    vtype = mf.BOOL if value is True else mf.U64
    with pytest.raises(ModelFileError, match=r"m\.gguf.*general\.alignment is"):
        GGUFFile(_gguf(tmp_path, src, mf._set("general.alignment", vtype, value)))


def test_gguf_offset_near_2_64_is_a_corrupt_table_not_a_read(tmp_path, src):
    p = _gguf(tmp_path, src, mf._offset_of(2, lambda s, o: (1 << 64) - 32))
    with pytest.raises(ModelFileError, match=r"corrupt tensor table: tensor 'blk.0.ffn_down.weight' lies at data "
                                             r"offset 18446744073709551584.*past the end"):
        GGUFFile(p)


def test_gguf_cut_short_is_still_reported_as_truncated(tmp_path, src):
    p = tmp_path / "cut.gguf"
    p.write_bytes(src.gguf.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match=r"cut\.gguf: is truncated: tensor 'output_norm.weight' ends at"):
        GGUFFile(p)


@pytest.mark.parametrize("ne, match", [([64, 0], "each must be from 1 to 2"), ([64, 2**64 - 1], "each must be"),
                                       ([64, 2**40, 2**40], "more than 2\\*\\*63 - 1 elements")])
def test_gguf_dims_zero_negative_or_overflowing(tmp_path, src, ne, match):
    p = _gguf(tmp_path, src, mf._tensor("blk.0.attn_q.weight", ne=ne))
    with pytest.raises(ModelFileError, match=f"'blk.0.attn_q.weight' has dimensions .*{match}"):
        GGUFFile(p)


def test_gguf_duplicate_metadata_key(tmp_path, src):
    p = _gguf(tmp_path, src, lambda s: s.kvs.append(mf.KV("llama.block_count", mf.U32, 99)))
    with pytest.raises(ModelFileError, match="metadata key 'llama.block_count' appears twice"):
        GGUFFile(p)


def test_gguf_duplicate_tensor_and_overlap(tmp_path, src):
    with pytest.raises(ModelFileError, match="'blk.0.attn_q.weight' appears twice"):
        GGUFFile(_gguf(tmp_path, src, mf._tensor("blk.0.attn_k.weight", name="blk.0.attn_q.weight")))
    with pytest.raises(ModelFileError, match="overlap"):
        GGUFFile(_gguf(tmp_path, src, mf._offset_of(3, lambda s, o: o[2])))


@pytest.mark.parametrize("key, vtype, value, itype", [
    ("llama.block_count", mf.STR, "3", None), ("llama.embedding_length", mf.F32, 64.0, None),
    ("llama.attention.head_count", mf.ARR, [4, 4], mf.U32), ("llama.rope.freq_base", mf.STR, "1e4", None),
    ("llama.attention.layer_norm_rms_epsilon", mf.BOOL, True, None), ("general.architecture", mf.U32, 1, None),
    ("tokenizer.ggml.tokens", mf.ARR, [1, 2], mf.I32), ("tokenizer.ggml.eos_token_id", mf.F64, 2.0, None),
])
def test_gguf_metadata_of_the_wrong_type_names_the_key(tmp_path, src, key, vtype, value, itype):
    p = _gguf(tmp_path, src, mf._set(key, vtype, value, itype))
    with pytest.raises(ModelFileError, match=rf"m\.gguf: has GGUF metadata {key} = .*which should be"):
        AutoModelForCausalLM.from_pretrained(p)


def test_gguf_with_alignment_1_gives_aligned_arrays(tmp_path, src):
    spec = src.spec
    spec.kvs += [mf.KV("general.alignment", mf.U32, 1), mf.KV("x.pad", mf.STR, "abc")]   # odd data offsets
    spec.layout_alignment = 1
    p = mf.write_gguf(tmp_path / "a1.gguf", spec)
    g = GGUFFile(p)
    assert any(info.offset % 4 for info in g.tensor_info.values())
    for name in g:
        arr, fmt = g.tensor(name)
        assert arr.flags.aligned
    want = AutoModelForCausalLM.from_pretrained(src.gguf)([[1, 2, 3]]).logits
    np.testing.assert_array_equal(AutoModelForCausalLM.from_pretrained(p)([[1, 2, 3]]).logits, want)


# ---------------------------------------------------------------- safetensors
def test_safetensors_at_unaligned_offsets_gives_aligned_arrays(tmp_path, src):
    def shift(h: dict, data: bytes) -> tuple[dict, bytes]:
        for k, e in h.items():
            if k != "__metadata__":
                e["data_offsets"] = [x + 2 for x in e["data_offsets"]]
        return h, b"\0\0" + data
    d = _st_dir(tmp_path, src, shift)
    assert all(arr.flags.aligned for _, arr in Checkpoint(d))
    want = AutoModelForCausalLM.from_pretrained(src.hf_dir, progress=False)([[1, 2, 3]]).logits
    np.testing.assert_array_equal(AutoModelForCausalLM.from_pretrained(d, progress=False)([[1, 2, 3]]).logits, want)


def _st_dir(tmp_path: Path, src: mf.Sources, edit) -> Path:
    d = mf.copy_dir(src.hf_dir, tmp_path / "hf")
    header, data = mf.read_safetensors(d / "model.safetensors")
    mf.write_safetensors(d / "model.safetensors", *edit(header, data))
    return d


def test_safetensors_overlap_is_refused(tmp_path, src):
    with pytest.raises(ModelFileError, match="model.safetensors: has overlapping data for tensors"):
        Checkpoint(_st_dir(tmp_path, src, mf._overlap)).names()


@pytest.mark.parametrize("change, match", [
    (dict(dtype=["F32"]), "corrupt header entry"), (dict(shape="64"), "corrupt header entry"),
    (dict(shape=[-64, -64]), "corrupt header entry"), (dict(shape=[64.0, 64]), "corrupt header entry"),
    (dict(data_offsets=[10, 0]), "inverted data_offsets"), (dict(dtype="F8_X", data_offsets=[10, 0]), "inverted"),
    (dict(data_offsets=[0, 1 << 40]), "inconsistent offsets"),
    (dict(shape=[0, 2**63], data_offsets=[0, 0]), "corrupt header entry"),     # NumPy cannot shape it
    (dict(shape=[0] * 70, data_offsets=[0, 0]), "corrupt header entry"),      # nor give it 70 dims
])
def test_safetensors_entry_checks(tmp_path, src, change, match):
    d = _st_dir(tmp_path, src, mf._entry(mf._Q, **change))
    with pytest.raises(ModelFileError, match=f"'{mf._Q}'.*|{match}") as ei:
        Checkpoint(d).names()
    assert match in str(ei.value) and "model.safetensors" in str(ei.value)


def test_safetensors_duplicate_keys(tmp_path, src):
    with pytest.raises(ModelFileError, match="appears twice"):
        Checkpoint(_st_dir(tmp_path, src, mf._dup_key)).names()


def test_safetensors_unknown_dtype_names_dtype_and_tensor(tmp_path, src):
    d = _st_dir(tmp_path, src, mf._entry(mf._Q, dtype="F8_E9M9"))
    with pytest.raises(UnsupportedError, match=rf"tensor '{mf._Q}' has dtype 'F8_E9M9'"):
        list(Checkpoint(d))


def _sharded(tmp_path: Path, src: mf.Sources, edit) -> Path:
    d = mf.shard_dir(src.hf_dir, tmp_path / "hf")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    edit(d, index)
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    return d


def test_sharded_checkpoint_streams_every_tensor(tmp_path, src):
    d = _sharded(tmp_path, src, lambda d, i: None)
    assert sorted(dict(Checkpoint(d))) == sorted(dict(Checkpoint(src.hf_dir)))


@pytest.mark.parametrize("shard, match", [
    (5, "not a shard file name"), ("/etc/passwd", "leaves the model directory"),
    ("../hf/model-00001-of-00002.safetensors", "leaves the model directory"), ("", "not a shard file name"),
])
def test_shard_index_paths_stay_inside(tmp_path, src, shard, match):
    d = _sharded(tmp_path, src, lambda d, i: i["weight_map"].update({mf._Q: shard}))
    with pytest.raises(ModelFileError, match=f"model.safetensors.index.json: .*{match}"):
        Checkpoint(d)


def test_shard_index_symlink_outside_is_refused(tmp_path, src):
    d = _sharded(tmp_path, src, mf._symlink_outside)
    with pytest.raises(ModelFileError, match="resolves to .*elsewhere.safetensors, outside the model directory"):
        Checkpoint(d)


def test_shard_index_symlink_inside_is_fine(tmp_path, src):
    def link_inside(d: Path, index: dict) -> None:
        (d / "sub").mkdir()
        first = sorted(set(index["weight_map"].values()))[0]
        (d / first).rename(d / "sub" / first)
        (d / first).symlink_to(d / "sub" / first)
    assert len(Checkpoint(_sharded(tmp_path, src, link_inside)).names()) == 29


def test_missing_shard_is_a_model_file_error(tmp_path, src):
    d = _sharded(tmp_path, src, lambda d, i: (d / i["weight_map"][mf._Q]).unlink())
    with pytest.raises(ModelFileError, match="lists shard files that are missing") as ei:
        Checkpoint(d)
    assert isinstance(ei.value, FileNotFoundError)      # what callers caught before


@pytest.mark.parametrize("text, error, match", [
    ("{nope", ModelFileError, "is not valid JSON"), ("[1]", ModelFileError, "holds a JSON list"),
    ('{"model_type": 3}', ConfigError, "model_type is 3, not a string"), ("{}", ConfigError, "has no model_type"),
])
def test_config_json_errors_are_typed(tmp_path, text, error, match):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(error, match=match):
        read_hf_config(tmp_path)


def test_missing_config_json_is_a_model_file_error(tmp_path):
    with pytest.raises(ModelFileError, match="has no config.json") as ei:
        AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(ei.value, FileNotFoundError)


# ---------------------------------------------------------------- .llmrt checks and checksums
def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def _flip(path: Path, tensor: str, at: int = 7) -> None:
    off = mf.llmrt_header(path)["tensors"][tensor]["offset"]
    data = bytearray(path.read_bytes())
    data[off + at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("change, match", [
    (dict(shape="12"), "not a list of at most 8"), (dict(shape=[True, 3]), "not a list"),
    (dict(offset=64.0), "offset is 64.0"), (dict(crc32="abc"), "crc32 'abc'"),
    (dict(shape=[0, 2**63], nbytes=0), "not a list"), (dict(shape=[0] * 70, nbytes=0), "not a list"),
])
def test_llmrt_table_entries_are_typed(tmp_path, src, change, match):
    p = _copy(src.llmrt, tmp_path / "m.llmrt")
    h = mf.llmrt_header(p)
    h["tensors"]["final_norm.weight"].update(change)
    mf.rewrite_llmrt(p, header=h)
    with pytest.raises(ModelFileError, match=f"tensor 'final_norm.weight' .*{match}"):
        load_model_file(p)


@pytest.mark.parametrize("dtype", ["|O", "(2,)<f4", "<f4,<f4", "<f4,(2", ">f4", "V8", 4])
def test_llmrt_dense_dtype_is_a_table_lookup(tmp_path, src, dtype):
    """np.dtype() parses any string (found by fuzz_llmrt_file: "<f4,(2" raised SyntaxError)."""
    p = _copy(src.llmrt, tmp_path / "m.llmrt")
    h = mf.llmrt_header(p)
    h["tensors"]["final_norm.weight"]["dtype"] = dtype
    mf.rewrite_llmrt(p, header=h)
    with pytest.raises(ModelFileError, match="invalid table entry for tensor 'final_norm.weight'"):
        load_model_file(p)


def test_llmrt_overlapping_tensors(tmp_path, src):
    p = _copy(src.llmrt, tmp_path / "m.llmrt")
    h = mf.llmrt_header(p)
    mf._lm_overlap(h)
    mf.rewrite_llmrt(p, header=h)
    with pytest.raises(ModelFileError, match="overlap in the file"):
        load_model_file(p)


def test_corrupt_data_byte_is_found_by_verify(tmp_path, src):
    p = _copy(src.llmrt, tmp_path / "m.llmrt")
    _flip(p, "layers.1.mlp_out.weight")
    Model.load(p)                                   # the default open does not read the data
    with pytest.raises(ModelFileError, match=r"m\.llmrt: tensor 'layers.1.mlp_out.weight' is corrupt \(data "
                                             r"checksum mismatch\)"):
        Model.load(p, verify=True)
    with pytest.raises(ModelFileError, match="'layers.1.mlp_out.weight' is corrupt"):
        Model.from_pretrained(p, verify=True)


def test_verify_passes_on_a_healthy_file_and_skips_entries_without_checksum(tmp_path, src):
    p = _copy(src.llmrt, tmp_path / "m.llmrt")
    ref = Model.load(p, verify=True)([[1, 2, 3]]).logits
    h = mf.llmrt_header(p)
    for e in h["tensors"].values():
        e.pop("crc32")                              # a file from a writer that recorded no checksums
    mf.rewrite_llmrt(p, header=h)
    np.testing.assert_array_equal(Model.load(p, verify=True)([[1, 2, 3]]).logits, ref)


def test_corrupt_cache_file_is_rebuilt_when_verified(tmp_path, src):
    cache = tmp_path / "cache"
    ref = Model.from_pretrained(src.hf_dir, use_cache=True, cache_dir=cache, progress=False)([[1, 2, 3]]).logits
    (path,) = cache.glob("*.llmrt")
    _flip(path, "layers.0.mlp_out.weight", at=3)
    before = os.stat(path).st_mtime_ns
    model = Model.from_pretrained(src.hf_dir, use_cache=True, cache_dir=cache, progress=False, verify=True)
    np.testing.assert_array_equal(model([[1, 2, 3]]).logits, ref)
    assert os.stat(path).st_mtime_ns != before      # the damaged cache was replaced
    load_model_file(path, verify=True)


def test_damaged_cache_table_is_rebuilt_without_verify(tmp_path, src):
    """Header, preamble and table damage is found on every open, so the cache never needs verify for it."""
    cache = tmp_path / "cache"
    Model.from_pretrained(src.hf_dir, use_cache=True, cache_dir=cache, progress=False)
    (path,) = cache.glob("*.llmrt")
    data = bytearray(path.read_bytes())
    off = struct.unpack_from("<Q", data, 16)[0]
    data[off + 10] ^= 1
    path.write_bytes(bytes(data))
    Model.from_pretrained(src.hf_dir, use_cache=True, cache_dir=cache, progress=False)
    load_model_file(path)
