#!/usr/bin/env python3
"""One llmrt measurement, printed as one JSON line (the same protocol as the anchors' bench_llamacpp.py):
prefill BOS + pp-1 seeded random ids as one batch, then tg greedy single-token decodes continuing from that
prompt; one warm-up rep, then the median of --reps.

    python benchmarks/run_llmrt.py --model llama-1.1b --format int4_g32 --threads 2 --pp 512 --tg 128 --reps 3
    python benchmarks/run_llmrt.py --model smollm2
    mpiexec -n 2 python benchmarks/run_llmrt.py --model llama-1.1b --threads 1 --tensor_parallel

With --tensor_parallel every rank runs the same reps and rank 0 prints, adding each rank's peak RSS and
weight bytes and the seconds the ranks spent in their collectives (all-reduce, logits gather, token agreement).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from models import load  # noqa: E402


def cpu_snapshot():
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:9]]
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return sum(v) - v[3] - v[4], ru.ru_utime + ru.ru_stime, time.time()


def foreign_cpus(s0, s1) -> float:
    """CPUs' worth of other processes' work during the timed part (~0 on a quiet machine)."""
    hz = os.sysconf("SC_CLK_TCK")
    return round(((s1[0] - s0[0]) / hz - (s1[1] - s0[1])) / max(s1[2] - s0[2], 1e-9), 2)


def decode_weight_bytes(model) -> int:
    """Bytes of weights read per decoded token: every Linear (the embedding lookup reads one row)."""
    eng = model.engine
    total = 0
    for lay in eng.layers:
        for lin in (lay.qkv, lay.attn_out, lay.mlp_in, lay.mlp_out):
            total += lin.nbytes
    total += eng.lm_head.nbytes
    return total


class CollectiveClock:
    """Times this rank's collectives (wrapping its TensorParallel's methods)."""

    def __init__(self, tp):
        self.seconds = 0.0
        for name in ("allreduce_rows", "gather_columns", "agree"):
            setattr(tp, name, self._timed(getattr(tp, name)))

    def _timed(self, fn):
        def run(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t
        return run

    @staticmethod
    def calls_per_token(n_layers: int) -> int:
        """Two all-reduces per layer (one with a parallel residual), one gather, one token agreement."""
        return 2 * n_layers + 2


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="llama-110m | llama-1.1b | smollm2")
    ap.add_argument("--format", default="int4_g32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tensor_parallel", action="store_true", help="split over the ranks of mpiexec")
    ap.add_argument("--activation_precision", default=None, choices=("int8", "auto", "high"),
                    help="int8 compute's activation rounding (default: the library's, auto)")
    a = ap.parse_args()

    from llmrt._kernels import _ops
    from llmrt.runtime import compute_threads

    t0 = time.perf_counter()
    model = load(a.model, None if a.model == "smollm2" else a.format, a.activation_precision,
                 **({"tensor_parallel": True} if a.tensor_parallel else {}))
    load_s = time.perf_counter() - t0
    comm = CollectiveClock(model.tp) if model.tp is not None else None
    rng = np.random.default_rng(0)
    bos = model.config.bos_token_id if model.config.bos_token_id is not None else 1
    prompt = np.concatenate([[bos], rng.integers(3, model.vocab_size, size=a.pp - 1)]).astype(np.int64)
    cache = model.new_cache(a.pp + a.tg)
    eng = model.engine

    def one_rep(tg: int) -> dict:
        cache.reset()
        t0 = time.perf_counter()
        logits = eng.forward(cache, prompt)
        tok = int(np.argmax(logits[0]))
        t1 = time.perf_counter()
        c0 = eng.compute_seconds
        comm0 = comm.seconds if comm else 0.0
        for _ in range(tg):
            tok = int(np.argmax(eng.forward(cache, np.array([tok]))[0]))
        t2 = time.perf_counter()
        # what a decode step spends outside the engine's blocks and head: Python, argument checks,
        # the caller's argmax and token array
        py = 1.0 - (eng.compute_seconds - c0) / (t2 - t1) if tg else 0.0
        return {"pp": a.pp / (t1 - t0), "tg": tg / (t2 - t1) if tg else 0.0, "py": py,
                "comm": (comm.seconds - comm0) / (t2 - t1) if comm and tg else 0.0}

    with compute_threads(a.threads):
        one_rep(min(a.tg, 8))
        s0 = cpu_snapshot()
        runs = [one_rep(a.tg) for _ in range(a.reps)]
        s1 = cpu_snapshot()
    med = lambda k: round(statistics.median(r[k] for r in runs), 2)
    rec = {"engine": "llmrt", "model": a.model, "quant": "gguf" if a.model == "smollm2" else a.format,
           "threads": a.threads, "pp": a.pp, "pp_tok_s": med("pp"), "tg": a.tg, "tg_tok_s": med("tg"),
           "python_overhead_pct": round(100 * statistics.median(r["py"] for r in runs), 2),
           "pp_runs": [round(r["pp"], 2) for r in runs], "tg_runs": [round(r["tg"], 2) for r in runs],
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "decode_weight_bytes": decode_weight_bytes(model), "kv_cache_bytes": cache.nbytes,
           "isa": _ops.current_tier(), "load_s": round(load_s, 2), "foreign_cpus": foreign_cpus(s0, s1)}
    if model.tp is not None:
        tp = model.tp
        per_rank = np.zeros((tp.size, 3), np.float64)
        mine = np.array([[rec["peak_rss_mb"], decode_weight_bytes(model) / 2**20,
                          statistics.median(r["comm"] for r in runs)]], np.float64)
        tp.comm.Allgather(mine, per_rank)
        rec.update(ranks=tp.size, rank_peak_rss_mb=per_rank[:, 0].round(1).tolist(),
                   rank_weight_mib=per_rank[:, 1].round(1).tolist(),
                   decode_collective_share_pct=(100 * per_rank[:, 2]).round(2).tolist(),
                   collective_calls_per_token=comm.calls_per_token(model.config.num_layers))
        if not tp.is_root:
            return 0
    print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
