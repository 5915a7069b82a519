#!/usr/bin/env python3
"""The cost of tensor parallelism's collective on this machine: `mpiexec -n 2 python benchmarks/allreduce_latency.py`.

Times TensorParallel.allreduce_rows (mpi4py Allreduce in place) on the buffers a decode step (1 row) and a
prefill chunk (128 rows) sum, for the 1.1B (2048) and 7B (4096) hidden sizes: the median over many calls,
barrier-separated so one rank's lateness is not counted.  Rank 0 prints one JSON line; the README's
estimate for larger models on several sockets / nodes starts from these figures."""
from __future__ import annotations

import json
import statistics
import time

import numpy as np


def main() -> int:
    from llmrt.parallel import connect

    tp = connect(True)
    if tp is None:
        raise SystemExit("run under mpiexec -n 2 (or more)")
    out = {"ranks": tp.size}
    for hidden in (2048, 4096):
        for rows, calls in ((1, 3000), (128, 200)):
            buf = np.ones((rows, hidden), np.float32)
            times = []
            for _ in range(calls):
                tp.barrier()
                t = time.perf_counter()
                tp.allreduce_rows(buf, rows)
                times.append(time.perf_counter() - t)
            out[f"hidden{hidden}_rows{rows}_us"] = round(statistics.median(times) * 1e6, 1)
    if tp.is_root:
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
