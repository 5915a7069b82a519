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


# The child loads a model from its cached .llmrt file and reports its resident set before, at the peak of
# (VmHWM after clear_refs reset it) and after the load, with the head's bytes.
LOAD_CHILD = """
import json, sys
from llmrt import AutoModelForCausalLM, WeightOnlyQuantConfig

def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))

q = WeightOnlyQuantConfig(weight_dtype="int4", group_size=32, compute_dtype="int8", use_cache=True)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], quantization_config=q, cache_dir=sys.argv[2], progress=False)
print(json.dumps({"before": before, "peak": status("VmHWM"), "after": status("VmRSS"),
                  "head": model.engine.lm_head.nbytes, "tied": model.engine.embedder.embed is model.engine.lm_head}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_tied_embedding_loads_without_a_second_copy(tmp_path):
    """A tied embedding is the head's panels, packed straight from the file's blocks: no converted copy of
    the matrix beside them during the load.  The peak stays under what the model keeps plus the head's
    file pages being read (measured 0.55 of the head's bytes; with the copy, which stayed resident through
    every layer's repack, 1.5)."""
    import json
    import subprocess
    build_tiny_model(tmp_path / "hf", "llama", dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                                                    num_attention_heads=4, num_key_value_heads=4, vocab_size=32000,
                                                    tie_word_embeddings=True))
    q = WeightOnlyQuantConfig(weight_dtype="int4", group_size=32, compute_dtype="int8", use_cache=True)
    AutoModelForCausalLM.from_pretrained(tmp_path / "hf", quantization_config=q, cache_dir=tmp_path / "cache")
    r = subprocess.run([sys.executable, "-c", LOAD_CHILD, str(tmp_path / "hf"), str(tmp_path / "cache")],
                       capture_output=True, text=True, cwd="/", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["tied"]
    kept, peak = res["after"] - res["before"], res["peak"] - res["before"]
    assert peak <= kept + 0.8 * res["head"], \
        f"load peak {peak / 2**20:.1f} MiB against {kept / 2**20:.1f} MiB kept (head {res['head'] / 2**20:.1f} MiB)"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_gguf_pages_given_back_after_load_and_a_forward():
    """SmolLM2's GGUF (Q4_1, 94 MiB): the header (its tokenizer), the Q/K blocks copied to undo llama.cpp's
    rotary row order and the norms (copied) give their pages back; resident were 11 MiB after the load and
    14 after a forward (the norms read in place), now about 5."""
    from smollm2_fixtures import smollm2_gguf_path

    path = smollm2_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(path, progress=False)
    model.engine.forward(model.new_cache(64), np.arange(1, 33, dtype=np.int64))
    resident, size = _rss_of_mapping(path), path.stat().st_size
    assert resident <= 0.1 * size, f"{resident / 2**20:.1f} MiB of the {size / 2**20:.0f} MiB file resident"


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


# The child generates 10 windows' worth of tokens past its context and records its resident set at
# every token (a streamer's put()), from the end of the first window on.
STREAMING_CHILD = """
import json, sys
from llmrt import AutoModelForCausalLM

path, mode = sys.argv[1:3]
ctx = 256
model = AutoModelForCausalLM.from_pretrained(path, use_cache=False, progress=False)
page = __import__("os").sysconf("SC_PAGE_SIZE")
rss = []

class Recorder:
    def put(self, ids):
        with open("/proc/self/statm") as f:
            rss.append(int(f.read().split()[1]) * page)
    def end(self):
        pass

opts = dict(shift_roped_k=True, n_keep=4) if mode == "ring" else dict(n_keep=4, n_discard=32)
out = model.generate([[3, 4, 5, 6, 7, 8]], max_new_tokens=10 * ctx, ctx_size=ctx, do_sample=True, seed=0, eos_token_id=None,
                     streamer=Recorder(), **opts)
print(json.dumps({"n": int(out.shape[1]), "rss": rss[ctx:]}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
@pytest.mark.parametrize("mode", ["ring", "reevaluate"])
def test_streaming_generation_keeps_resident_memory_flat(tiny_models, mode):
    """10 x ctx_size tokens of StreamingLLM generation: RSS after the first window stays within 1%."""
    import json
    import subprocess
    path, _ = tiny_models("llama-gqa-tied")
    r = subprocess.run([sys.executable, "-c", STREAMING_CHILD, str(path), mode], capture_output=True, text=True,
                       cwd="/", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["n"] == 6 + 10 * 256
    rss = np.array(res["rss"], dtype=np.float64)
    assert rss.max() <= rss[0] * 1.01, f"RSS grew from {rss[0] / 2**20:.1f} MiB to {rss.max() / 2**20:.1f} MiB"


# The child captures every hook point of a 512-token prompt and reports its peak resident set over
# that call (VmHWM after clear_refs reset it) against the arrays it returns.
CAPTURE_CHILD = """
import json, sys
import numpy as np
from llmrt import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained(sys.argv[1], use_cache=False, progress=False)
ids = np.random.default_rng(0).integers(3, model.vocab_size, size=(1, 512))
model(ids[:, :8])                       # first-call allocations out of the measurement

def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")                        # resets the peak (VmHWM) to the current resident set
before = status("VmRSS")
logits, cache = model.run_with_cache(ids)
peak = status("VmHWM")
print(json.dumps({"growth": peak - before, "arrays": logits.nbytes + sum(a.nbytes for a in cache.values()),
                  "names": len(cache)}))
"""

SHAPE_110M = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                  num_key_value_heads=12, vocab_size=32000, tie_word_embeddings=False)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_capturing_everything_costs_the_arrays_plus_ten_percent(tmp_path):
    """run_with_cache(names=None) of 512 tokens on the 110M shape: the peak resident growth is the
    captured arrays (and the logits) plus at most 10% (the whole-input scratch, one pattern's softmax)."""
    import json
    import subprocess
    build_tiny_model(tmp_path / "m", "llama", dict(SHAPE_110M), init_range=0.02)
    r = subprocess.run([sys.executable, "-c", CAPTURE_CHILD, str(tmp_path / "m")], capture_output=True, text=True,
                       cwd="/", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["names"] == 2 + 12 * 18 + 1
    print(f"capture everything: {res['arrays'] / 2**20:.0f} MiB of arrays, peak growth {res['growth'] / 2**20:.0f} MiB")
    assert res["arrays"] <= res["growth"] <= 1.10 * res["arrays"]
