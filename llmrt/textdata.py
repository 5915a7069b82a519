"""Evaluation text: the Python 3.11 tutorial's reST sources, from Debian's python3.11-doc package.

The package is fetched with `apt-get download` (no root needed) and unpacked with `dpkg -x` into a
cache directory; `LLMRT_PYDOC_DIR` points at an already unpacked `_sources` directory instead."""
from __future__ import annotations

import glob
import os
import subprocess
import tempfile
from pathlib import Path

PACKAGE = "python3.11-doc"
SOURCES = Path("usr/share/doc/python3.11/html/_sources")
HOWTO = (f"run `apt-get download {PACKAGE} && dpkg -x {PACKAGE}_*.deb DIR` and set "
         f"LLMRT_PYDOC_DIR=DIR/{SOURCES}")


class TextDataError(RuntimeError):
    """The evaluation text could not be found or fetched; the message says what to do."""


def default_cache_dir() -> Path:
    """Where fetched text is kept: $LLMRT_CACHE/data (default ~/.cache/llmrt/data)."""
    return Path(os.environ.get("LLMRT_CACHE", Path.home() / ".cache" / "llmrt")) / "data"


def python_docs_sources(cache_dir: str | os.PathLike | None = None) -> Path:
    """The `_sources` directory of the Python 3.11 docs (reST as .txt), fetched once into cache_dir."""
    env = os.environ.get("LLMRT_PYDOC_DIR")
    if env:
        if Path(env, "tutorial").is_dir():
            return Path(env)
        raise TextDataError(f"LLMRT_PYDOC_DIR={env} has no tutorial/ directory; {HOWTO}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = cache / PACKAGE
    src = root / SOURCES
    if (src / "tutorial").is_dir():
        return src
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        if not _download(tmp):
            # a fresh container may have no package lists yet; updating needs root, so it may fail too
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
            if not _download(tmp):
                raise TextDataError(f"could not fetch Debian's {PACKAGE} package; {HOWTO}")
        debs = glob.glob(os.path.join(tmp, f"{PACKAGE}_*.deb"))
        if not debs:
            raise TextDataError(f"apt-get download left no {PACKAGE} .deb; {HOWTO}")
        unpacked = Path(tmp) / "root"
        r = subprocess.run(["dpkg", "-x", debs[0], str(unpacked)], capture_output=True, text=True)
        if r.returncode != 0:
            raise TextDataError(f"dpkg -x failed on {debs[0]} ({r.stderr.strip()[:200]}); {HOWTO}")
        if root.exists():       # a half-unpacked earlier attempt
            import shutil
            shutil.rmtree(root)
        unpacked.rename(root)   # whole or nothing: a later call never sees a partial tree
    if not (src / "tutorial").is_dir():
        raise TextDataError(f"{PACKAGE} unpacked into {root} has no {SOURCES}/tutorial; {HOWTO}")
    return src


def _download(cwd: str) -> bool:
    try:
        return subprocess.run(["apt-get", "download", PACKAGE], cwd=cwd, capture_output=True).returncode == 0
    except FileNotFoundError:       # not a Debian-like system
        return False


def python_tutorial_text(cache_dir: str | os.PathLike | None = None) -> str:
    """The tutorial chapters (tutorial/*.txt, sorted by name) joined by blank lines."""
    files = sorted(glob.glob(str(python_docs_sources(cache_dir) / "tutorial" / "*.txt")))
    if not files:
        raise TextDataError(f"no tutorial sources (tutorial/*.txt) in the {PACKAGE} package; {HOWTO}")
    return "\n\n".join(Path(f).read_text(encoding="utf-8") for f in files)


__all__ = ["TextDataError", "python_docs_sources", "python_tutorial_text", "default_cache_dir"]
