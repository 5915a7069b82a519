"""Cheap content fingerprints of large weight files (cache keys, provenance)."""
from __future__ import annotations

import hashlib
import os

# Hashing multi-GB checkpoints in full would cost seconds to minutes on every load, so a file is
# fingerprinted by its size, mtime, a caller-chosen header range and many small windows spread
# evenly over the rest.  Any edit of a file changes its mtime; a different download of the same
# model does too (a cache miss, never a wrong hit).
_SAMPLES = 1024
_WINDOW = 64


def update_with_file(h: "hashlib._Hash", path: str | os.PathLike, header_end: int = 0) -> None:
    """Feed ``path``'s fingerprint into ``h``: stat, bytes [0, header_end) and sampled windows."""
    st = os.stat(path)
    size = st.st_size
    h.update(f"{os.path.basename(path)}\0{size}\0{st.st_mtime_ns}\0".encode())
    with open(path, "rb") as f:
        header_end = min(max(header_end, 0), size)
        if header_end:
            h.update(f.read(header_end))
        span = size - header_end
        if span <= _SAMPLES * _WINDOW:
            h.update(f.read())
            return
        step = span // _SAMPLES
        for i in range(_SAMPLES):
            f.seek(header_end + i * step)
            h.update(f.read(_WINDOW))
        f.seek(size - _WINDOW)
        h.update(f.read(_WINDOW))


def new_hash() -> "hashlib._Hash":
    return hashlib.sha256()
