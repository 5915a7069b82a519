"""What the fuzz harnesses share: command line and corpus set-up, and scratch files.

A harness calls run(name, test_one).  `python fuzz/fuzz_<name>.py [libFuzzer flags] [corpus_dir ...]`:
without a corpus directory, a working corpus /tmp/llmrt-fuzz/<name>/ is used (new inputs are
written there) and fuzz/seeds/<name>/ is read as seeds.  Every input starts with a mode byte that
the harness reads (see its docstring)."""
from __future__ import annotations

import atexit
import itertools
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

import atheris

HERE = Path(__file__).resolve().parent
SEEDS = HERE / "seeds"
FIXTURES = SEEDS / "fixtures"


def scratch_dir() -> Path:
    """A private directory in memory when there is one (inputs are written on every execution)."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="llmrt-fuzz-", dir=base))


class Scratch:
    """A fresh file name per input: an input still mapped by the previous execution is unlinked,
    never truncated under its mapping (that would be a SIGBUS, not a finding)."""

    def __init__(self, suffix: str = "") -> None:
        self.dir = scratch_dir()
        atexit.register(shutil.rmtree, self.dir, True)
        self._n = itertools.count()
        self._last: Path | None = None
        self.suffix = suffix

    def write(self, data: bytes, name: str | None = None) -> Path:
        if self._last is not None and name is None:
            self._last.unlink(missing_ok=True)
        p = self.dir / (name or f"in{next(self._n)}{self.suffix}")
        p.write_bytes(data)
        if name is None:
            self._last = p
        return p


def model_mode() -> bool:
    """LLMRT_FUZZ_MODEL=1: also build the model and run one forward on 2 tokens when a file loads."""
    return os.environ.get("LLMRT_FUZZ_MODEL", "0") not in ("0", "")


def run(name: str, test_one: Callable[[bytes], None]) -> None:
    args = list(sys.argv)
    if not any(not a.startswith("-") for a in args[1:]):
        work = Path(tempfile.gettempdir()) / "llmrt-fuzz" / name
        work.mkdir(parents=True, exist_ok=True)
        args.append(str(work))
        if (SEEDS / name).is_dir():
            args.append(str(SEEDS / name))
        else:
            print(f"no seeds in {SEEDS / name}: run python fuzz/make_seeds.py first", file=sys.stderr)
    # whole files from the start (the tables point into the data); a new input is at most 64 KB
    for flag in ("-max_len=65536", "-len_control=0"):
        if not any(a.startswith(flag.split("=")[0] + "=") for a in args):
            args.insert(1, flag)
    atheris.Setup(args, test_one)
    atheris.Fuzz()
