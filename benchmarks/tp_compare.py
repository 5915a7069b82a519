#!/usr/bin/env python3
"""Tensor parallelism on one machine: `mpiexec -n R` ranks x T/R threads against one process x T threads,
alternating the two (this VM's speed drifts minute to minute), median of --pairs pairs.

    python benchmarks/tp_compare.py --model llama-1.1b --format int4_g32 --pairs 3

Prints one Markdown table: prefill / decode tokens/s of each side and their ratio, each rank's peak RSS
and weight MiB against the single process's, and the share of a decode step the ranks spent in their
collectives (all-reduce after attention and after the MLP, the logits gather, rank 0's token)."""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def mpiexec() -> str:
    here = Path(sys.executable).with_name("mpiexec")
    return str(here) if here.exists() else "mpiexec"


def one(args: argparse.Namespace, ranks: int) -> dict:
    cmd = [sys.executable, str(HERE / "run_llmrt.py"), "--model", args.model, "--format", args.format,
           "--pp", str(args.pp), "--tg", str(args.tg), "--reps", str(args.reps)]
    if ranks > 1:
        cmd = [mpiexec(), "-n", str(ranks), *cmd, "--threads", str(args.threads // ranks), "--tensor_parallel"]
    else:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd="/").stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-1.1b")
    ap.add_argument("--format", default="int4_g32")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="threads of the single process (split among ranks)")
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=3)
    a = ap.parse_args()
    one(a, 1)                          # quantizes and caches the model once, outside the pairs
    singles, splits = [], []
    for i in range(a.pairs):
        singles.append(one(a, 1))
        splits.append(one(a, a.ranks))
        print(f"pair {i + 1}: single pp {singles[-1]['pp_tok_s']} tg {singles[-1]['tg_tok_s']} | "
              f"{a.ranks} ranks pp {splits[-1]['pp_tok_s']} tg {splits[-1]['tg_tok_s']}", file=sys.stderr)
    med = lambda recs, key: statistics.median(r[key] for r in recs)
    pp1, tg1, ppn, tgn = med(singles, "pp_tok_s"), med(singles, "tg_tok_s"), med(splits, "pp_tok_s"), med(splits, "tg_tok_s")
    rss1 = med(singles, "peak_rss_mb")
    w1 = singles[0]["decode_weight_bytes"] / 2**20
    last = splits[-1]
    print(f"| case | single pp | {a.ranks} ranks pp | pp ratio | single tg | {a.ranks} ranks tg | tg ratio | "
          f"single peak RSS MB | rank peak RSS MB | single weights MiB | rank weights MiB | collectives % of decode |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {a.model} {a.format}, 1 x {a.threads} threads vs {a.ranks} x {a.threads // a.ranks} | {pp1:.1f} | "
          f"{ppn:.1f} | {ppn / pp1:.2f} | {tg1:.2f} | {tgn:.2f} | {tgn / tg1:.2f} | {rss1:.0f} | "
          f"{'/'.join(f'{x:.0f}' for x in last['rank_peak_rss_mb'])} | {w1:.0f} | "
          f"{'/'.join(f'{x:.0f}' for x in last['rank_weight_mib'])} | "
          f"{'/'.join(f'{x:.1f}' for x in last['decode_collective_share_pct'])} |")
    print(f"isa {last['isa']}; collective calls per decoded token {last['collective_calls_per_token']}; "
          f"pairs: pp {[r['pp_tok_s'] for r in singles]} vs {[r['pp_tok_s'] for r in splits]}, "
          f"tg {[r['tg_tok_s'] for r in singles]} vs {[r['tg_tok_s'] for r in splits]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
