"""Streaming Hugging Face checkpoints: single and sharded safetensors (fp32, bf16, fp16), single
and sharded PyTorch .bin, and damaged or missing files."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from llmrt.formats import (
    Checkpoint, ModelFileError, checkpoint_identity, iter_checkpoint, list_checkpoint_tensors, read_tensor,
)

import torch
import transformers


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Llama saved every way we read, plus its reference fp32 state dict."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                   max_position_embeddings=64, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg).eval()
    root = tmp_path_factory.mktemp("ckpt")
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.save_pretrained(root / "st")
    model.save_pretrained(root / "sharded", max_shard_size="40KB")
    model.to(torch.bfloat16).save_pretrained(root / "bf16")
    transformers.LlamaForCausalLM(cfg).to(torch.float16).save_pretrained(root / "f16")
    del model
    # transformers 5 only writes safetensors: build the .bin layouts the way older versions did
    (root / "bin").mkdir()
    (root / "bin" / "config.json").write_text((root / "st" / "config.json").read_text())
    torch.save(sd, root / "bin" / "pytorch_model.bin")
    (root / "bin_sharded").mkdir()
    names = list(sd)
    shards = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map = {}
    for i, part in enumerate(shards):
        fname = f"pytorch_model-{i + 1:05d}-of-00002.bin"
        torch.save({n: sd[n] for n in part}, root / "bin_sharded" / fname)
        weight_map.update({n: fname for n in part})
    (root / "bin_sharded" / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    ref = {k: v.numpy() for k, v in sd.items()}
    return root, ref


def test_layouts_are_what_we_think(tiny):
    root, _ = tiny
    assert (root / "st" / "model.safetensors").is_file()
    assert (root / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((root / "sharded").glob("model-*.safetensors"))) > 2


@pytest.mark.parametrize("layout", ["st", "sharded", "bin", "bin_sharded"])
def test_streams_every_tensor_exactly(tiny, layout):
    root, ref = tiny
    seen = {}
    for name, arr in iter_checkpoint(root / layout):
        assert name not in seen
        assert isinstance(arr, np.ndarray) and arr.dtype == np.float32
        seen[name] = arr
    assert set(seen) == set(ref)
    for name, arr in seen.items():
        assert np.array_equal(arr, ref[name]), name
    info = list_checkpoint_tensors(root / layout)
    assert {n: s for n, (s, _) in info.items()} == {n: a.shape for n, a in ref.items()}
    assert {d for _, d in info.values()} == {"float32"}
    name = "model.layers.1.mlp.down_proj.weight"
    assert np.array_equal(read_tensor(root / layout, name), ref[name])


def test_safetensors_arrays_are_read_only_views_of_a_memory_map(tiny):
    root, _ = tiny
    for _, arr in iter_checkpoint(root / "st"):
        assert not arr.flags.writeable
        base = arr
        while getattr(base, "base", None) is not None and not isinstance(base, np.memmap):
            base = base.base
        assert isinstance(base, np.memmap)


def test_bf16_is_widened_to_float32(tiny):
    root, ref = tiny
    info = list_checkpoint_tensors(root / "bf16")
    assert {d for _, d in info.values()} == {"bfloat16"}
    for name, arr in iter_checkpoint(root / "bf16"):
        assert arr.dtype == np.float32
        want = torch.from_numpy(ref[name]).to(torch.bfloat16).float().numpy()
        assert np.array_equal(arr, want), name


def test_f16_keeps_its_dtype(tiny):
    root, _ = tiny
    from safetensors.numpy import load_file

    want = load_file(str(root / "f16" / "model.safetensors"))
    for name, arr in iter_checkpoint(root / "f16"):
        assert arr.dtype == np.float16 and np.array_equal(arr, want[name]), name


def test_single_weight_file_path(tiny):
    root, ref = tiny
    got = dict(iter_checkpoint(root / "st" / "model.safetensors"))
    assert set(got) == set(ref)
    got = dict(iter_checkpoint(root / "bin" / "pytorch_model.bin"))
    assert set(got) == set(ref)


def test_progress_bar_does_not_change_the_stream(tiny):
    root, ref = tiny
    assert [n for n, _ in iter_checkpoint(root / "sharded", progress=True)] == \
           [n for n, _ in iter_checkpoint(root / "sharded")]


def test_bin_without_torch_asks_to_install_it(tiny, monkeypatch):
    root, _ = tiny
    monkeypatch.setitem(sys.modules, "torch", None)   # makes `import torch` raise ImportError
    with pytest.raises(ImportError, match="pip install torch"):
        list_checkpoint_tensors(root / "bin")
    # safetensors never needs torch
    assert len(list_checkpoint_tensors(root / "st")) > 0


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors.*pytorch_model\.bin"):
        list(iter_checkpoint(tmp_path))
    with pytest.raises(FileNotFoundError):
        list(iter_checkpoint(tmp_path / "nowhere"))


def test_missing_shard(tiny, tmp_path):
    root, _ = tiny
    d = _copy_dir(root / "sharded", tmp_path / "broken")
    victim = sorted(d.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=f"missing.*{victim.name}"):
        list(iter_checkpoint(d))


def _copy_dir(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_truncated_safetensors(tiny, tmp_path):
    root, _ = tiny
    d = _copy_dir(root / "st", tmp_path / "cut")
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:-100])
    with pytest.raises(ModelFileError, match=r"model\.safetensors.*truncated"):
        list(iter_checkpoint(d))
    f.write_bytes(data[:1000])          # cut inside the JSON header
    with pytest.raises(ModelFileError, match="truncated"):
        list_checkpoint_tensors(d)
    f.write_bytes(data[:4])
    with pytest.raises(ModelFileError):
        list_checkpoint_tensors(d)


def test_corrupt_safetensors_header(tiny, tmp_path):
    root, _ = tiny
    d = _copy_dir(root / "st", tmp_path / "bad")
    f = d / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8] = ord("#")                   # first byte of the JSON header
    f.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="corrupt"):
        list(iter_checkpoint(d))
    data = bytearray((root / "st" / "model.safetensors").read_bytes())
    data[0:8] = (1 << 40).to_bytes(8, "little")
    f.write_bytes(bytes(data))
    with pytest.raises(ModelFileError):
        list(iter_checkpoint(d))


def test_checkpoint_identity(tiny, tmp_path):
    root, _ = tiny
    a = checkpoint_identity(root / "st")
    assert a == checkpoint_identity(root / "st") and len(a) == 32
    assert a != checkpoint_identity(root / "bf16")
    d = _copy_dir(root / "st", tmp_path / "copy")
    f = d / "model.safetensors"
    data = bytearray(f.read_bytes())
    before = checkpoint_identity(d)
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    assert checkpoint_identity(d) != before


def test_checkpoint_object(tiny):
    root, ref = tiny
    ck = Checkpoint(root / "sharded")
    assert ck.kind == "safetensors" and len(ck) == len(ref) and len(ck.files) > 2
    assert sorted(ck.names()) == sorted(ref)
