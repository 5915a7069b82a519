"""The collectives a tensor-parallel model needs, over an MPI communicator (mpi4py).

Only mpi4py's buffer methods are used (Allreduce, Allgatherv, Bcast on NumPy arrays): nothing is
pickled, so nothing but float32 / int64 / uint64 arrays ever crosses the wire."""
from __future__ import annotations

import os
import sys
import threading
import traceback
from typing import Any

import numpy as np

from llmrt.errors import InvalidArgumentError, LlmrtError

ROOT = 0


class TensorParallelError(LlmrtError, RuntimeError):
    """The ranks of a tensor-parallel group disagree (they must run the same calls in the same order)."""


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise InvalidArgumentError("tensor_parallel needs mpi4py and an MPI library: pip install 'llmrt[mpi]' "
                                   "(mpi4py with MPICH's wheel), then start the script with "
                                   "'mpiexec -n 2 python script.py'") from exc
    return MPI


def connect(tensor_parallel: Any) -> "TensorParallel | None":
    """The group a model is split over: None for False / None or for a process started alone (a
    world of one runs unsharded); True or "mpi" for MPI's world; or a communicator given as is
    (anything with mpi4py's Get_rank, Get_size, Allreduce, Allgather, Allgatherv, Bcast)."""
    if tensor_parallel is None or tensor_parallel is False:
        return None
    if tensor_parallel is True or tensor_parallel == "mpi":
        comm = _mpi().COMM_WORLD
    elif all(hasattr(tensor_parallel, m) for m in ("Get_rank", "Get_size", "Allreduce", "Allgather", "Allgatherv", "Bcast")):
        comm = tensor_parallel
    else:
        raise InvalidArgumentError(f"tensor_parallel must be True, 'mpi' or an mpi4py communicator, "
                                   f"got {tensor_parallel!r}")
    if comm.Get_size() == 1:
        return None
    return TensorParallel(comm)


class TensorParallel:
    """One rank's view of its group: the in-place sum of partial outputs, the gathered logits, and
    the decisions (tokens, seeds, stops) rank 0 makes for everyone."""

    def __init__(self, comm: Any):
        self.MPI = _mpi()
        self.comm = comm
        self.rank = int(comm.Get_rank())
        self.size = int(comm.Get_size())
        self._gathered = np.empty(0, np.float32)
        _abort_on_uncaught_errors(self)
        self.pids = self._all_pids()
        if self.is_root:
            ranks = ", ".join(f"rank {r} pid {p}" for r, p in enumerate(self.pids))
            sys.stderr.write(f"llmrt: tensor parallelism over {self.size} ranks ({ranks})\n")

    def _all_pids(self) -> list[int]:
        """Every rank's process id (MPI's launcher names a rank that dies by its pid)."""
        pids = np.zeros(self.size, np.int64)
        self.comm.Allgather(np.array([os.getpid()], np.int64), pids)
        return [int(p) for p in pids]

    @property
    def is_root(self) -> bool:
        return self.rank == ROOT

    def local_ranks(self) -> int:
        """Ranks of this group on this machine (they share its cores)."""
        split = getattr(self.comm, "Split_type", None)
        if split is None:
            return self.size
        node = split(self.MPI.COMM_TYPE_SHARED)
        try:
            return int(node.Get_size())
        finally:
            node.Free()

    # ------------------------------------------------------------------ the engine's collectives
    def allreduce_rows(self, buf: np.ndarray, rows: int) -> None:
        """buf[:rows] (C-contiguous float32) becomes the sum of every rank's buf[:rows]."""
        self.comm.Allreduce(self.MPI.IN_PLACE, buf[:rows], op=self.MPI.SUM)

    def gather_columns(self, local: np.ndarray, out: np.ndarray, splits: tuple[tuple[int, int], ...]) -> None:
        """out (rows, sum of widths) from every rank's local (rows, its width) block of columns."""
        rows = local.shape[0]
        counts = np.array([rows * (b - a) for a, b in splits], np.int64)
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        total = int(counts.sum())
        if self._gathered.shape[0] < total:
            self._gathered = np.empty(total, np.float32)
        recv = self._gathered[:total]
        self.comm.Allgatherv(np.ascontiguousarray(local, np.float32),
                             [recv, counts.tolist(), displs.tolist(), self.MPI.FLOAT])
        for (a, b), off, n in zip(splits, displs, counts):
            out[:, a:b] = recv[off:off + n].reshape(rows, b - a)

    # ------------------------------------------------------------------ rank 0 decides
    def agree(self, values: np.ndarray, what: str) -> np.ndarray:
        """Rank 0's values of a 1-D int64 / uint64 / bool array, on every rank.  A rank holding a
        different count raises TensorParallelError (the ranks took different paths)."""
        arr = np.ascontiguousarray(values)
        kind = arr.dtype
        wire = arr.astype(np.uint8 if kind == np.bool_ else kind).reshape(-1)
        n = np.array([wire.shape[0]], np.int64)
        self.comm.Bcast(n, root=ROOT)
        if int(n[0]) != wire.shape[0]:
            raise TensorParallelError(f"tensor-parallel rank {self.rank} has {wire.shape[0]} {what} where rank "
                                      f"{ROOT} has {int(n[0])}: every rank must make the same calls with the "
                                      f"same inputs")
        wire = wire.copy()
        self.comm.Bcast(wire, root=ROOT)
        return wire.astype(kind).reshape(arr.shape)

    def seed(self) -> np.ndarray:
        """Fresh entropy drawn on rank 0, the same on every rank (an unseeded sampler's seed)."""
        state = np.random.SeedSequence().generate_state(4, np.uint64)
        return self.agree(state, "seed words")

    def share_text(self, text: str | None) -> str | None:
        """Rank 0's text (None: the end of its input) on every rank, as UTF-8 bytes on the wire."""
        data = b"" if text is None else text.encode("utf-8")
        n = np.array([-1 if text is None else len(data)], np.int64)
        self.comm.Bcast(n, root=ROOT)
        if int(n[0]) < 0:
            return None
        buf = np.frombuffer(data, np.uint8).copy() if self.is_root else np.empty(int(n[0]), np.uint8)
        self.comm.Bcast(buf, root=ROOT)
        return buf.tobytes().decode("utf-8")

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        self.comm.Abort(code)


_installed = threading.Lock()
_hooked: list[TensorParallel] = []


def _abort_on_uncaught_errors(tp: TensorParallel) -> None:
    """An uncaught exception on one rank ends the whole job (naming the rank) instead of leaving
    the others waiting in a collective forever."""
    with _installed:
        if _hooked:
            return
        _hooked.append(tp)
        previous = sys.excepthook

        def hook(kind, value, tb):
            sys.stderr.write(f"llmrt: tensor-parallel rank {tp.rank} of {tp.size} (pid {os.getpid()}) failed; "
                             f"ending every rank of the job\n")
            sys.stderr.write("".join(traceback.format_exception(kind, value, tb)))
            sys.stderr.flush()
            try:
                tp.abort(1)
            finally:
                previous(kind, value, tb)

        sys.excepthook = hook
