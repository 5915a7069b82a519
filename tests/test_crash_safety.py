"""A process killed (SIGKILL) in the middle of model.save() or of a use_cache write leaves the target
either as it was (the old file, or absent) or complete: never a torn file that loads."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from llmrt import AutoModelForCausalLM, Model

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

# The child pauses at a named point (after the k-th tensor, before the fsync, before the rename) and
# says so on stdout; the parent then kills it there, so every stage of a write is hit on purpose.
CHILD = textwrap.dedent("""
    import os, sys, time
    import llmrt.formats.model_file as mf
    from llmrt import AutoModelForCausalLM

    src, target, stage, mode, cache_dir = sys.argv[1:6]
    added = [0]
    add, fsync, replace = mf.ModelFileWriter.add, os.fsync, os.replace

    def pause(name):
        if name == stage:
            print("at", name, flush=True)
            time.sleep(60)

    def slow_add(self, *a, **k):
        add(self, *a, **k)
        added[0] += 1
        pause(f"tensor{added[0]}")
    mf.ModelFileWriter.add = slow_add
    mf.os.fsync = lambda fd: (pause("fsync"), fsync(fd))[1]
    mf.os.replace = lambda a, b: (pause("replace"), replace(a, b))[1]
    if mode == "save":
        m = AutoModelForCausalLM.from_pretrained(src, use_cache=False, progress=False)
        m.save(target, overwrite=True)
    else:
        AutoModelForCausalLM.from_pretrained(src, use_cache=True, cache_dir=cache_dir, progress=False)
    print("done", flush=True)
""")

STAGES = ["tensor1", "tensor7", "tensor15", "fsync", "replace"]


def _run_and_kill(args: list[str], stage: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, *args[:2], stage, *args[2:]], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd="/")
    try:
        line = proc.stdout.readline()
        assert line.startswith("at " + stage), (line, proc.stderr.read()[-2000:])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def source(tiny_models):
    path, _ = tiny_models("llama-gqa-tied")            # 3 layers: 21 tensors, so tensor15 is mid-file
    return path


@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_during_save_over_an_existing_file(source, tmp_path, stage):
    old_model = AutoModelForCausalLM.from_pretrained(source, load_in_8bit=True, use_cache=False)
    target = old_model.save(tmp_path / "m.llmrt")
    old_bytes = target.read_bytes()
    _run_and_kill([str(source), str(target), "save", "-"], stage)
    assert target.read_bytes() == old_bytes           # untouched: the new file never replaced it
    reloaded = Model.load(target)
    np.testing.assert_array_equal(reloaded([[3, 4, 5]]).logits, old_model([[3, 4, 5]]).logits)


@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_during_save_to_a_new_path(source, tmp_path, stage):
    target = tmp_path / "new.llmrt"
    _run_and_kill([str(source), str(target), "save", "-"], stage)
    assert not target.exists()
    (orphan,) = tmp_path.glob("new.llmrt.*.tmp")        # the killed writer's temporary file
    AutoModelForCausalLM.from_pretrained(source, use_cache=False).save(target)
    assert Model.load(target) and not orphan.exists()   # the next writer removed it


@pytest.mark.parametrize("stage", ["tensor7", "replace"])
def test_sigkill_during_a_cache_write(source, tmp_path, stage):
    cache_dir = tmp_path / "cache"
    _run_and_kill([str(source), "-", "cache", str(cache_dir)], stage)
    assert not list(cache_dir.glob("*.llmrt"))         # only the writer's temporary file may remain
    m = AutoModelForCausalLM.from_pretrained(source, use_cache=True, cache_dir=cache_dir)
    assert len(list(cache_dir.glob("*.llmrt"))) == 1
    fresh = AutoModelForCausalLM.from_pretrained(source, use_cache=False)
    np.testing.assert_array_equal(m([[3, 4, 5]]).logits, fresh([[3, 4, 5]]).logits)
