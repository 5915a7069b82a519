"""Fuzz the safetensors reader and the shard-index reader (Checkpoint: open, list, stream every
tensor).  Input: a mode byte, then
    mode % 3 == 0: a model.safetensors file's bytes;
    mode % 3 == 1: its JSON header only, packed with the right length in front of the tiny model's data;
    mode % 3 == 2: a model.safetensors.index.json, in a directory that holds the tiny model's 2 shards.

    python fuzz/fuzz_safetensors.py -atheris_runs=50000 [corpus_dir]"""
from __future__ import annotations

import shutil

import atheris

import _harness

with atheris.instrument_imports(include=["llmrt"]):
    from llmrt.errors import LlmrtError
    from llmrt.formats.checkpoint import Checkpoint

SINGLE = _harness.Scratch()            # a directory with model.safetensors
SHARDED = _harness.Scratch()           # a directory with the shards and model.safetensors.index.json
for shard in _harness.FIXTURES.glob("model-*.safetensors"):
    shutil.copy(shard, SHARDED.dir / shard.name)


def _data_region() -> bytes:
    raw = (_harness.FIXTURES / "model.safetensors").read_bytes()
    return raw[8 + int.from_bytes(raw[:8], "little"):]


DATA = _data_region()


def _read_all(d) -> None:
    ckpt = Checkpoint(d)
    ckpt.info()
    for _name, arr in ckpt:
        arr.reshape(-1)[:1].tobytes()


def test_one(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 3, data[1:]
    if mode == 2:
        SHARDED.write(body, "model.safetensors.index.json")
        d = SHARDED.dir
    else:
        if mode == 1:
            body = len(body).to_bytes(8, "little") + body + DATA
        SINGLE.write(body, "model.safetensors")
        d = SINGLE.dir
    try:
        _read_all(d)
    except LlmrtError:
        pass


if __name__ == "__main__":
    _harness.run("safetensors", test_one)
