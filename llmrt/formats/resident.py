"""Giving back the resident pages of memory-mapped weights once they have been repacked.

The kernels run on their own copy of every matrix (panels), so the pages of the mapped file that
the repacking read would otherwise stay resident beside that copy and double the process's memory.
This is the one OS-specific spot: where ``madvise(MADV_DONTNEED)`` is missing, it does nothing."""
from __future__ import annotations

import mmap
from typing import Iterable

import numpy as np

_PAGE = mmap.PAGESIZE


def _mapping_of(arr: np.ndarray) -> tuple[mmap.mmap, int] | None:
    """The mmap under a view of an np.memmap and that mmap's address, or None."""
    base = arr
    while base is not None and not isinstance(base, np.memmap):
        base = getattr(base, "base", None)
    mm = getattr(base, "_mmap", None) if base is not None else None
    if not isinstance(mm, mmap.mmap):
        return None
    return mm, np.frombuffer(mm, dtype=np.uint8, count=0).ctypes.data


def drop_resident_pages(arrays: Iterable[np.ndarray]) -> None:
    """Let the OS drop the resident pages of these memory-mapped arrays (they are read back from
    the file if touched again).  Arrays not backed by a read-only file mapping are left alone."""
    if not hasattr(mmap, "MADV_DONTNEED"):
        return
    for arr in arrays:
        if not isinstance(arr, np.ndarray) or arr.nbytes == 0:
            continue
        found = _mapping_of(arr)
        if found is None:
            continue
        mm, start = found
        lo = arr.ctypes.data - start
        hi = lo + arr.nbytes
        lo -= lo % _PAGE                              # whole pages inside the mapping
        hi = min(hi + (-hi) % _PAGE, len(mm))
        if lo < hi:
            try:
                mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            except (OSError, ValueError):
                pass                                   # advice only: nothing to undo
