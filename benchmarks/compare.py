#!/usr/bin/env python3
"""llmrt against llama.cpp on the same models, alternating runs (A B A B ...) in one session, with the
memory bandwidth measured in the same run; prints tokens/s, the ratios and the decode roofline use.

Needs ../shared/anchors' setup (llama-cpp-python in $ANCHORS_DIR/venv-lcpp, the anchor models and their
GGUF conversions, the membw probe); the set-up script takes one step per call:
    for step in membw models lcpp; do ANCHORS_DIR=~/anchors bash ../shared/anchors/setup.sh $step; done

    python benchmarks/compare.py                                  # every goal of the performance issue
    python benchmarks/compare.py --cases llama-1.1b:int4_g32 --pairs 3
Never run it while anything else runs: it reports foreign_cpus for each measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from models import ANCHORS_DIR, LLAMA_CPP_PEER  # noqa: E402

SHARED = Path(os.environ.get("LLMRT_SHARED", HERE.parent.parent / "shared"))
DEFAULT_CASES = ["llama-1.1b:int4_g32", "llama-1.1b:int4_g128", "llama-1.1b:int8_g32", "smollm2:gguf",
                 "llama-110m:int4_g32"]


def run_json(cmd: list[str], env: dict | None = None) -> dict:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return json.loads(lines[-1])


def membw(threads: int) -> float:
    """Best 2-thread read bandwidth, GB/s."""
    exe = ANCHORS_DIR / "build" / "membw"
    r = subprocess.run([str(exe), "1", "3"], capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    recs = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    reads = [x["best_gb_s"] for x in recs if x["test"] == "read" and x["threads"] == threads]
    return reads[-1]


def default_llamacpp_python() -> Path:
    """The anchors' GGML_NATIVE build crashes in its AMX matmul on AMX CPUs (ggml_backend_amx_mul_mat,
    SIGSEGV on the first decode); there, build llama-cpp-python without AMX into venv-lcpp-noamx:
      CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_FMA=ON -DGGML_F16C=ON
        -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON"
        $ANCHORS_DIR/venv-lcpp-noamx/bin/pip install --no-build-isolation llama_cpp_python-0.3.36.tar.gz"""
    noamx = ANCHORS_DIR / "venv-lcpp-noamx" / "bin" / "python"
    return noamx if noamx.exists() else ANCHORS_DIR / "venv-lcpp" / "bin" / "python"


def cpu_features(system_info: str) -> str:
    """The ISA flags llama.cpp says it was built with and uses ("AVX2 = 1" entries of its system info)."""
    flags = [f.split("=")[0].strip() for f in system_info.split("|") if f.strip().endswith("= 1")]
    return " ".join(f for f in flags if f[:3] in ("AVX", "AMX", "F16", "FMA", "BMI")) or "unknown"


def llmrt_cmd(model: str, fmt: str, a, act: str | None = None) -> list[str]:
    return [sys.executable, str(HERE / "run_llmrt.py"), "--model", model, "--format", fmt, "--threads", str(a.threads),
            "--pp", str(a.pp), "--tg", str(a.tg), "--reps", str(a.reps)] + \
        (["--activation_precision", act] if act else [])


def llamacpp_cmd(model: str, fmt: str, a) -> list[str]:
    py = a.llamacpp_python
    if model == "smollm2":
        from models import smollm2_path
        target, quant = [str(smollm2_path())], ["Q4_1"]
    else:
        target, quant = [model], [LLAMA_CPP_PEER[fmt]]
    return [str(py), str(SHARED / "anchors" / "bench_llamacpp.py"), "--model", *target, "--quant", *quant,
            "--threads", str(a.threads), "--pp", str(a.pp), "--tg", str(a.tg), "--reps", str(a.reps)]


def torch_cmd(model: str, a) -> list[str]:
    """The anchors' PyTorch bf16 baseline (prefill is what is compared; a short decode keeps it quick)."""
    py = ANCHORS_DIR / "venv-torch" / "bin" / "python"
    return [str(py), str(SHARED / "anchors" / "bench_torch.py"), "--model", model, "--quant", "bf16",
            "--threads", str(a.threads), "--pp", str(a.pp), "--tg", "8", "--reps", str(a.reps)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=DEFAULT_CASES,
                    help="model:format pairs; model:format@int8 runs llmrt with activation_precision='int8' "
                         "(one int8 rounding per 32 activations, as llama.cpp's Q8 activations; the default "
                         "'auto' adds a second pass on the MLP down projection and the head)")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--jsonl", default=None, help="also append every raw record here")
    ap.add_argument("--torch-cases", nargs="*", default=["llama-1.1b:int4_g32"],
                    help="cases that also time PyTorch bf16 prefill in each pair")
    ap.add_argument("--scaling-cases", nargs="*", default=["llama-1.1b:int4_g32"],
                    help="cases whose llmrt prefill is also timed on 1 thread in each pair (1 -> N scaling)")
    ap.add_argument("--llamacpp-python", default=str(default_llamacpp_python()),
                    help="python of the venv holding llama-cpp-python (default: venv-lcpp-noamx if built, else venv-lcpp)")
    ap.add_argument("--llamacpp-lib", default=None,
                    help="directory of llama.cpp shared libraries built for one tier (build_llamacpp_tier.py; sets LLAMA_CPP_LIB_PATH for "
                         "llama-cpp-python); force llmrt's tier with LLMRT_ISA")
    a = ap.parse_args()
    if a.llamacpp_lib:
        os.environ["LLAMA_CPP_LIB_PATH"] = str(Path(a.llamacpp_lib).resolve())
    rows = []
    llmrt_tiers, llamacpp_features = set(), set()
    for case in a.cases:
        spec, _, act = case.partition("@")
        model, fmt = spec.split(":")
        act = act or None
        recs = {"llmrt": [], "llama.cpp": [], "torch": [], "llmrt-1t": []}
        bws = []
        # the first llmrt run of a format quantizes and caches the model (tens of seconds, the fp16 weights
        # resident): done once here, so the pairs time and measure the memory of loading the cached file
        warm = argparse.Namespace(**{**vars(a), "pp": 16, "tg": 1, "reps": 1})
        run_json(llmrt_cmd(model, fmt, warm, act))
        for i in range(a.pairs):
            bws.append(membw(a.threads))
            recs["llmrt"].append(run_json(llmrt_cmd(model, fmt, a, act)))
            recs["llama.cpp"].append(run_json(llamacpp_cmd(model, fmt, a)))
            if case in a.torch_cases:
                recs["torch"].append(run_json(torch_cmd(model, a)))
            if case in a.scaling_cases:
                one = argparse.Namespace(**{**vars(a), "threads": 1, "tg": 8})
                recs["llmrt-1t"].append(run_json(llmrt_cmd(model, fmt, one, act)))
            bws.append(membw(a.threads))
            print(f"[compare] {case} pair {i + 1}: llmrt pp {recs['llmrt'][-1]['pp_tok_s']} tg "
                  f"{recs['llmrt'][-1]['tg_tok_s']} | llama.cpp pp {recs['llama.cpp'][-1]['pp_tok_s']} tg "
                  f"{recs['llama.cpp'][-1]['tg_tok_s']}"
                  + (f" | torch bf16 pp {recs['torch'][-1]['pp_tok_s']}" if recs["torch"] else "")
                  + f" | bw {bws[-2]}/{bws[-1]} GB/s", file=sys.stderr, flush=True)
            if a.jsonl:
                with open(a.jsonl, "a") as f:
                    for eng in recs:
                        if recs[eng]:
                            f.write(json.dumps(recs[eng][-1]) + "\n")
        llmrt_tiers.update(r["isa"] for r in recs["llmrt"])
        llamacpp_features.update(cpu_features(r.get("system_info", "")) for r in recs["llama.cpp"])
        med = lambda eng, k: statistics.median(r[k] for r in recs[eng]) if recs[eng] else float("nan")
        bw = statistics.median(bws)
        wbytes = recs["llmrt"][0]["decode_weight_bytes"]
        roof = bw * 1e9 / wbytes
        rows.append(dict(case=case, peer=LLAMA_CPP_PEER.get(fmt, "Q4_1 (same file)"),
                         pp=med("llmrt", "pp_tok_s"), tg=med("llmrt", "tg_tok_s"),
                         lpp=med("llama.cpp", "pp_tok_s"), ltg=med("llama.cpp", "tg_tok_s"),
                         tpp=med("torch", "pp_tok_s"), pp1=med("llmrt-1t", "pp_tok_s"),
                         bw=bw, roof=roof, rss=max(r["peak_rss_mb"] for r in recs["llmrt"]),
                         lrss=max(r["peak_rss_mb"] for r in recs["llama.cpp"]),
                         py=statistics.median(r.get("python_overhead_pct", 0.0) for r in recs["llmrt"]),
                         kv=recs["llmrt"][0].get("kv_cache_bytes", 0) / 2**20,
                         foreign=max(r.get("foreign_cpus", 0) or 0 for eng in recs for r in recs[eng])))
    print(f"\nllmrt tier: {', '.join(sorted(llmrt_tiers))}; llama.cpp CPU features: {'; '.join(sorted(llamacpp_features))}")
    print(f"\n{a.threads} threads, pp{a.pp} / tg{a.tg} (tg continues after the prompt), median of {a.pairs} "
          f"alternating pairs, each the median of {a.reps} reps\n")
    print("| model:format | llama.cpp peer | llmrt pp | llama.cpp pp | pp ratio | llmrt tg | llama.cpp tg | tg ratio "
          "| read GB/s | tg roofline | tg % of roofline | llmrt RSS MiB | llama.cpp RSS MiB | llmrt KV MiB "
          "| llmrt Python % of decode | torch bf16 pp | pp / torch | llmrt pp 1 thread | pp scaling | max foreign cpus |")
    print("|" + "---|" * 20)
    for r in rows:
        print(f"| {r['case']} | {r['peer']} | {r['pp']:.1f} | {r['lpp']:.1f} | {r['pp'] / r['lpp']:.2f} | {r['tg']:.1f} "
              f"| {r['ltg']:.1f} | {r['tg'] / r['ltg']:.2f} | {r['bw']:.1f} | {r['roof']:.1f} | "
              f"{100 * r['tg'] / r['roof']:.0f}% | {r['rss']:.0f} | {r['lrss']:.0f} | {r['kv']:.0f} | {r['py']:.2f} "
              f"| {r['tpp']:.1f} | {r['pp'] / r['tpp']:.2f} | {r['pp1']:.1f} | {r['pp'] / r['pp1']:.2f} | {r['foreign']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
