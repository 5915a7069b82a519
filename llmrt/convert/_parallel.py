"""An ordered, bounded parallel map for streaming tensor work."""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

_T = TypeVar("_T")
_R = TypeVar("_R")


def ordered_map(fn: Callable[[_T], _R], items: Iterable[_T], nthread: int) -> Iterator[_R]:
    """map() over a stream on nthread threads, in order, with at most nthread items in flight
    (NumPy releases the GIL in the quantizers' array operations)."""
    if nthread <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(nthread) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= nthread:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
