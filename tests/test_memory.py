"""Resident memory: the pages of a mapped model file that the kernels do not need stay given back."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import build_tiny_model
from llmrt import AutoModelForCausalLM, WeightOnlyQuantConfig


def _rss_of_mapping(path) -> int:
    """Resident bytes of every mapping of path in this process (/proc/self/smaps)."""
    total, current = 0, None
    with open("/proc/self/smaps") as fh:
        for line in fh:
            parts = line.split()
            if parts and "-" in parts[0] and ":" not in parts[0]:
                current = parts[5] if len(parts) > 5 else None
            elif parts and parts[0] == "Rss:" and current == str(path):
                total += int(parts[1]) * 1024
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_untied_embedding_rows_are_given_back_as_they_are_read(tmp_path):
    """Scattered lookups in a mapped embedding would make the whole matrix resident (a fault maps a
    whole page-cache folio); with its pages given back once rows of more than 4 windows of 2 MiB
    have been read, at most about 5 windows stay, and the logits are the same."""
    vocab, hidden = 32000, 512
    build_tiny_model(tmp_path / "hf", "llama", dict(hidden_size=hidden, intermediate_size=128, num_hidden_layers=1,
                                                    num_attention_heads=2, num_key_value_heads=2, vocab_size=vocab,
                                                    tie_word_embeddings=False))
    q = WeightOnlyQuantConfig(weight_dtype="int4", group_size=32, compute_dtype="int8", use_cache=True)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", quantization_config=q, cache_dir=tmp_path / "cache")
    (path,) = (tmp_path / "cache").glob("*.llmrt")                 # the model runs from its mapped file
    eng = model.engine
    tokens = np.random.default_rng(0).integers(0, vocab, 400)
    cache = model.new_cache(512)
    released = eng.forward(cache, tokens, all_logits=True)
    rss_released = _rss_of_mapping(path)

    eng.embedder.release_rows(None)                               # rows read in place, pages kept
    cache.reset()
    kept = eng.forward(cache, tokens, all_logits=True)
    rss_kept = _rss_of_mapping(path)

    np.testing.assert_array_equal(released, kept)
    embedding_bytes = vocab * hidden * 2                            # at least fp16: 32 MiB
    assert rss_kept >= 0.75 * embedding_bytes
    assert rss_released <= (12 << 20)


def test_row_release_validation(tmp_path):
    from llmrt import formats

    assert formats.row_release([np.zeros((4, 4))]) is None          # nothing file-backed
    path = tmp_path / "m.bin"
    np.arange(1 << 20, dtype=np.float32).tofile(path)
    mm = np.memmap(path, dtype=np.float32, mode="r").reshape(1024, 1024)
    release, window = formats.row_release([mm, None])
    assert window == (2 << 20) // (1024 * 4)
    release(0, 10)                                                  # pages come back from the file when read
    np.testing.assert_array_equal(mm[3, :4], np.arange(3 * 1024, 3 * 1024 + 4, dtype=np.float32))
