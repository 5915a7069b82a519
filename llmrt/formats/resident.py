"""Giving back the resident pages of memory-mapped weights.

The kernels run on their own copy of every matrix (panels), so the pages of the mapped file that
the repacking read would otherwise stay resident beside that copy and double the process's memory.
A matrix read a row at a time (an untied embedding) stays mapped; a page fault maps a whole
page-cache folio (up to 2 MiB on recent kernels, whatever the access advice), so scattered lookups
would make all of it resident: the engine gives its pages back once rows of a few windows have been
read (``row_release``).
This is the one OS-specific spot: where ``madvise(MADV_DONTNEED)`` is missing, it does nothing."""
from __future__ import annotations

import mmap
from typing import Callable, Iterable, Sequence

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


def _byte_bounds(arr: np.ndarray) -> tuple[int, int]:
    try:
        from numpy.lib.array_utils import byte_bounds      # NumPy 2
    except ImportError:                                    # NumPy 1.26
        from numpy import byte_bounds
    return byte_bounds(arr)


def is_mapped(arr: np.ndarray) -> bool:
    """Whether arr is a view of a memory-mapped file (its pages can be given back)."""
    return _mapping_of(arr) is not None


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
        first, end = _byte_bounds(arr)       # a strided view (a column slice) spans more than nbytes
        lo, hi = first - start, end - start
        lo -= lo % _PAGE                              # whole pages inside the mapping
        hi = min(hi + (-hi) % _PAGE, len(mm))
        if lo < hi:
            try:
                mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            except (OSError, ValueError):
                pass                                   # advice only: nothing to undo


def row_release(arrays: Sequence[np.ndarray | None], window_bytes: int = 2 << 20
                ) -> tuple[Callable[[int, int], None], int] | None:
    """For a matrix whose planes (arrays with one row per matrix row) are read a row at a time:
    release(first, end), which gives back the resident pages of rows [first, end) of every
    file-backed plane, and the rows per window (about window_bytes of the widest plane).  None when
    no plane is file-backed or the OS has no such advice."""
    mapped = [a for a in arrays if isinstance(a, np.ndarray) and a.ndim >= 1 and a.shape[0] > 0
              and a.nbytes > 0 and _mapping_of(a) is not None]
    if not mapped or not hasattr(mmap, "MADV_DONTNEED"):
        return None
    row_bytes = max(a.nbytes // a.shape[0] for a in mapped)

    def release(first: int, end: int) -> None:
        drop_resident_pages([a[first:end] for a in mapped])

    return release, max(1, window_bytes // row_bytes)
