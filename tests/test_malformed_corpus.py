"""Every case of the malformed-file corpus (tests/malformed_files.py) is refused with a typed llmrt error
whose message carries the expected fragment: never a signal, a hang or a bare Python exception.

The cases run in a child process (AutoModelForCausalLM.from_pretrained, then one forward on 2 tokens
when it loads).  One child runs the cases in order and reports each start and outcome as a JSON line;
if it dies or a case overruns its timeout, the case it was on is recorded as a crash or a hang and a
fresh child resumes with the next case, so every outcome stays attributable to its case."""
from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path

import pytest

import malformed_files as mf

CASE_TIMEOUT = 60.0          # seconds for one case (import included for the first one of a child)
RUNNER = Path(mf.__file__)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, dict]:
    """name -> outcome of every case."""
    root = tmp_path_factory.mktemp("malformed")
    sources = mf.build_sources(root / "sources")
    todo = [(c.name, str(mf.build_case(c, root / "cases", sources)), c.kwargs) for c in mf.CASES]
    return run_cases(todo)


def run_cases(todo: list[tuple[str, str, dict]]) -> dict[str, dict]:
    results: dict[str, dict] = {}
    while todo:
        done = _run_child(todo, results)
        todo = todo[done:]
    return results


def _run_child(todo: list[tuple[str, str, dict]], results: dict[str, dict]) -> int:
    """Run cases in one child until it finishes or fails; returns how many cases it got through."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", LLMRT_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(RUNNER), "run"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True, cwd=RUNNER.parent)
    proc.stdin.write(json.dumps(todo))
    proc.stdin.close()
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    done, current, deadline = 0, None, time.monotonic() + CASE_TIMEOUT
    while True:
        if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
            proc.kill()
            proc.wait()
            results[current or todo[done][0]] = {"outcome": "hang"}
            return done + 1
        line = proc.stdout.readline()
        if not line:                                   # the child ended
            rc = proc.wait()
            if done < len(todo):
                stderr = proc.stderr.read()[-3000:]
                results[todo[done][0]] = {"outcome": "crash", "returncode": rc, "stderr": stderr}
                return done + 1
            return done
        msg = json.loads(line)
        if "start" in msg:
            current, deadline = msg["start"], time.monotonic() + CASE_TIMEOUT
        else:
            results[msg.pop("case")] = msg
            done += 1


CASES = {c.name: c for c in mf.CASES}


def test_corpus_is_big_enough():
    kinds = [c.kind for c in mf.CASES]
    assert kinds.count("gguf") >= 40 and kinds.count("hf") >= 20 and kinds.count("llmrt") >= 15


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(reason=c.xfail, strict=True)) if c.xfail
                                  else n for n, c in CASES.items()])
def test_malformed_file_is_a_typed_error(corpus, name):
    case, got = CASES[name], corpus[name]
    assert got["outcome"] == "error", f"{name}: {got}"
    assert got["llmrt"], f"{name}: a bare {got['type']}: {got['message']}\n{got['traceback']}"
    assert case.error in got["classes"], f"{name}: {got['type']} is not a {case.error}: {got['message']}"
    assert case.expect in got["message"], f"{name}: {case.expect!r} not in {got['message']!r}"
    if case.owner is None:          # the readers' messages name the file (or the directory) at fault
        assert mf.case_dir_name(case) in got["message"], f"{name}: the file is not named: {got['message']!r}"
