"""Threads and ISA selection shared by the whole library."""
from __future__ import annotations

import contextlib
import glob
import os
from typing import Iterator

from threadpoolctl import threadpool_limits

from llmrt._kernels import _ops
from llmrt._kernels._ops import MAX_THREADS
from llmrt.errors import InvalidArgumentError


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-thread siblings counted once)."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:          # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    seen = set()
    for cpu in allowed:
        path = f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"
        try:
            with open(path) as f:
                seen.add(f.read().strip())
        except OSError:
            seen.add(str(cpu))
    return max(1, len(seen))


def physical_memory() -> int | None:
    """Bytes of RAM on this machine (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):      # not POSIX
        return None


# What a generated sequence holds besides its KV cache: its Python objects, token lists and the sampler's
# per-row arrays (measured 9.5-12 KiB a row on a 211-token vocabulary), and working copies of a logits row.
SEQUENCE_BYTES = 16 * 1024
SEQUENCE_LOGIT_ROWS = 8


def check_kv_memory(config, n_caches: int, capacity: int, memory_dtype: str, kept_logit_rows: int = 0) -> None:
    """Refuse KV caches that cannot fit in this machine's memory, naming what to lower, instead of
    failing inside NumPy (or swapping the machine to a halt).  With n_caches > 1 (a batch, beams or
    samples) each also counts a sequence's working state and kept_logit_rows rows of vocabulary-wide
    scores (output_scores / output_logits)."""
    per_token = 2 * config.num_layers * config.num_kv_heads * config.head_dim * (2 if memory_dtype == "f16" else 4)
    per_cache = capacity * per_token
    if n_caches > 1:
        per_cache += SEQUENCE_BYTES + (SEQUENCE_LOGIT_ROWS + kept_logit_rows) * 4 * config.vocab_size
    need = n_caches * per_cache
    have = physical_memory()
    if have is not None and need > have:
        raise InvalidArgumentError(
            f"{n_caches} sequence(s) with KV caches of {capacity} tokens need {need / 2**30:.1f} GiB, more than "
            f"this machine's {have / 2**30:.1f} GiB; lower ctx_size / max_new_tokens, the batch, num_beams or "
            f"num_return_sequences")


# processes of one tensor-parallel group on this machine (share_cores): they split its cores
_ranks_sharing_cores = 1


def share_cores(ranks: int) -> None:
    """This process is one of `ranks` that run on this machine's cores at once (tensor parallelism):
    by default each runs physical_cores / ranks kernel threads."""
    global _ranks_sharing_cores
    _ranks_sharing_cores = max(1, int(ranks))
    _ops.set_num_threads(default_threads())


def default_threads() -> int:
    """LLMRT_NUM_THREADS if set, else the physical cores (divided among the tensor-parallel ranks
    sharing them; at most MAX_THREADS)."""
    env = os.environ.get("LLMRT_NUM_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if not 1 <= n <= MAX_THREADS:
            raise InvalidArgumentError(f"LLMRT_NUM_THREADS={env!r}: give an integer from 1 to {MAX_THREADS} "
                                       f"(or unset it to use the {physical_cores()} physical cores)")
        return n
    return min(max(1, physical_cores() // _ranks_sharing_cores), MAX_THREADS)


@contextlib.contextmanager
def compute_threads(threads: int | None) -> Iterator[int]:
    """Run kernels with `threads` OpenMP threads while NumPy's BLAS stays single-threaded
    (two thread pools on the same cores slow each other down)."""
    n = default_threads() if threads is None else threads
    before = _ops.get_num_threads()
    _ops.set_num_threads(n)         # checks the range
    n = _ops.get_num_threads()
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield n
    finally:
        _ops.set_num_threads(before)


def isa_report() -> dict:
    return {
        "compiled": _ops.compiled_tiers(),
        "supported": _ops.supported_tiers(),
        "selected": _ops.current_tier(),
        "forced_by_env": os.environ.get("LLMRT_ISA") or None,
    }


def apply_panel_prefetch_env() -> None:
    """LLMRT_PANEL_PREFETCH (bytes, a multiple of 64 up to 65536): decode's prefetch distance instead of the
    one chosen for this CPU (for tuning on a CPU llmrt has not been measured on)."""
    env = os.environ.get("LLMRT_PANEL_PREFETCH", "").strip()
    if not env:
        return
    try:
        _ops.set_panel_prefetch(int(env))
    except ValueError:
        raise InvalidArgumentError(f"LLMRT_PANEL_PREFETCH={env!r}: give a multiple of 64 from 0 to 65536 (bytes), "
                                   f"or unset it for this CPU's default ({_ops.panel_prefetch()})") from None


# kernels start with the default thread count rather than OpenMP's "all logical CPUs"
_ops.set_num_threads(default_threads())
apply_panel_prefetch_env()
