"""Fuzz the GGUF reader: header parser, GGUFFile open, every tensor viewed and (small ones)
dequantized.  Input: one mode byte (ignored), then the file's bytes.  LLMRT_FUZZ_MODEL=1 also loads
the model from the file (family config + engine) and runs one forward on 2 tokens.

    python fuzz/fuzz_gguf.py -atheris_runs=50000 [corpus_dir]

An LlmrtError is the expected refusal of a bad file; any other exception, a crash or a hang is a finding."""
from __future__ import annotations


import atheris

import _harness

with atheris.instrument_imports(include=["llmrt"]):
    import numpy as np
    from llmrt.errors import LlmrtError
    from llmrt.formats.gguf_file import GGUFFile

SCRATCH = _harness.Scratch(".gguf")
MODEL = _harness.model_mode()


def _read_all(path) -> None:
    gg = GGUFFile(path)
    for name in gg:
        arr, fmt = gg.tensor(name)
        if arr.size <= 4096:
            gg.dequantize(name)
    gg.identity()
    if MODEL:
        from llmrt import Model
        Model.from_gguf(path)(np.array([[1, 2]], np.int64))


def test_one(data: bytes) -> None:
    path = SCRATCH.write(data[1:])
    try:
        _read_all(path)
    except LlmrtError:
        pass


if __name__ == "__main__":
    _harness.run("gguf", test_one)
