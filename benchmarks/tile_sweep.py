"""Re-checks the register tile of a 256-bit tier's prefill GEMM on the CPU at hand.

The tile shapes in `llmrt/_kernels/panel256.h` (activation rows x weight slots per tile, for AVX-VNNI int4
whether the high nibbles are split out like AVX2's, for AVX2 int8 prefill whether weights are widened to int16)
were chosen by measurement on one CPU per tier. This builds
the tier's kernels once as shipped and once per candidate shape (the PN_* macros of panel256.h), runs each on
the 1.1B model's matrix shapes through `tile_sweep.c`, checks that every candidate computes bit for bit what the
shipped kernels do (the shipped ones are tested against NumPy by the test suite), and prints GMAC/s:

    python benchmarks/tile_sweep.py avx_vnni          # Intel Alder Lake and later, Sapphire Rapids
    python benchmarks/tile_sweep.py avx2 --bits 4     # e.g. on AMD Zen 3

On a CPU with AVX512-VNNI but no AVX-VNNI, `avx_vnni` runs its EVEX-encoded build, whose loads and ports differ
from a real AVX-VNNI core: read those figures as the stand-in's. Needs gcc (or cc) with OpenMP and llmrt
installed (for the CPU's features); builds in a temporary folder, 10-40 s of compiling per candidate on all
cores; times on one thread by default (GMAC/s of one core, comparable with `int8_ceiling256.c`). Exits 1 when a
candidate's output differs from the shipped kernels'.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

KERNELS = Path(__file__).resolve().parent.parent / "llmrt" / "_kernels"
HARNESS = Path(__file__).resolve().parent / "tile_sweep.c"
TIER_IDS = {"avx2": 1, "avx_vnni": 3}       # lr_tier order in kernels.h
AVX2_FLAGS = ["-mavx2", "-mfma", "-mf16c"]
COMMON = ["dispatch.c", "ref.c", "panels.c", "scratch.c"]
CFLAGS = ["-std=gnu11", "-fopenmp", "-fno-math-errno", "-ffp-contract=off", "-DNDEBUG"]
# (n, k) of the 1.1B model's prefill GEMMs: fused QKV, output projection, fused gate-up, down projection
SHAPES = [(2560, 2048), (2048, 2048), (11264, 2048), (2048, 5632)]

# Candidates per tier and weight bits besides the shipped shape: PN_RB<bits> activation rows and PN_NSB<bits>
# weight slots (of 8 rows) per tile; SPLIT 0 (PN_VNNI_INT4_SPLIT=0) keeps AVX-VNNI int4's high nibbles in place,
# in a second accumulator per row, instead of AVX2's nibble split (shipped); CH 2 (PN_VNNI_INT8_CHAINS=2) gives
# AVX-VNNI int8 two accumulators per row and slot instead of one (shipped). The packed activations come in bands
# of the tile's height.
# AVX2 int8 prefill runs on widened weights (PN_WIDE8): RBW rows x NSBW slots per tile (RBW divides the band of
# 8 rows); WIDE 0 is the int8 step (sign + maddubs + madd) in its tile of 8 rows x 1 slot.
CANDIDATES = {
    ("avx2", 4): [{"RB": 4, "NSB": 1}, {"RB": 6, "NSB": 1}, {"RB": 4, "NSB": 2}],
    ("avx2", 8): [{"WIDE": 0}, {"RBW": 8, "NSBW": 1}, {"RBW": 4, "NSBW": 1}, {"RBW": 2, "NSBW": 2}],
    ("avx_vnni", 4): [{"RB": 4, "NSB": 1, "SPLIT": 0}, {"RB": 2, "NSB": 2, "SPLIT": 0}, {"RB": 8, "NSB": 1},
                      {"RB": 6, "NSB": 1}, {"RB": 2, "NSB": 2}, {"RB": 4, "NSB": 2}],
    ("avx_vnni", 8): [{"RB": 2, "NSB": 2, "CH": 2}, {"RB": 4, "NSB": 1, "CH": 2}, {"RB": 4, "NSB": 1},
                      {"RB": 3, "NSB": 2}, {"RB": 5, "NSB": 2}, {"RB": 8, "NSB": 1}],
}


def candidate_name(c: dict[str, int] | None) -> str:
    if c is None:
        return "shipped"
    if c.get("WIDE") == 0:
        return "int8 step, 8 rows x 1 slot"
    rows, slots = (c["RBW"], c["NSBW"]) if "RBW" in c else (c["RB"], c["NSB"])
    return (("widened, " if "RBW" in c else "") + f"{rows} rows x {slots} slot{'s' if slots > 1 else ''}" +
            (", nibbles in place" if c.get("SPLIT") == 0 else "") + (", two chains" if c.get("CH") == 2 else ""))


def candidate_defines(c: dict[str, int] | None, bits: int) -> list[str]:
    if c is None:
        return []
    if "WIDE" in c:
        return [f"-DPN_WIDE8={c['WIDE']}"]
    if "RBW" in c:
        return [f"-DPN_RBW={c['RBW']}", f"-DPN_NSBW={c['NSBW']}"]
    return [f"-DPN_RB{bits}={c['RB']}", f"-DPN_NSB{bits}={c['NSB']}",
            f"-DPN_VNNI_INT4_SPLIT={c.get('SPLIT', 1)}", f"-DPN_VNNI_INT8_CHAINS={c.get('CH', 1)}"]


def compiler() -> str:
    for name in (os.environ.get("CC"), "gcc", "cc"):
        if name and shutil.which(name):
            return name
    sys.exit("no C compiler found (set CC, or apt install gcc)")


def tier_unit(tier: str) -> tuple[str, list[str]]:
    """The kernel source that runs `tier` on this CPU, and its flags (as meson.build compiles it)."""
    from llmrt._kernels import _ops   # the CPU's features, as the library's dispatch reads them

    if tier not in _ops.supported_tiers():
        sys.exit(f"this CPU cannot run the {tier} tier (it runs: {', '.join(_ops.supported_tiers())})")
    if tier == "avx2":
        return "avx2", AVX2_FLAGS
    return ("avx_vnni", AVX2_FLAGS + ["-mavxvnni"]) if _ops.avx_vnni_encoding() == "vex" else ("avx_vnni_evex", AVX2_FLAGS)


def common_sources(unit: str) -> list[tuple[Path, list[str]]]:
    """dispatch.c and the tier-independent sources, with only `unit` compiled in (besides ref; the EVEX build
    of avx_vnni is dispatched through the VEX one's tier, so that one is linked in as shipped)."""
    haves = [f"-DLR_HAVE_{unit.upper()}"] + (["-DLR_HAVE_AVX_VNNI"] if unit == "avx_vnni_evex" else [])
    sources = [(KERNELS / src, haves) for src in COMMON]
    if unit == "avx_vnni_evex":
        sources.append((KERNELS / "avx_vnni.c", AVX2_FLAGS + ["-mavxvnni"]))
    return sources


def compile_c(cc: str, src: Path, obj: Path, flags: list[str]) -> Path:
    obj.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([cc, *CFLAGS, *flags, f"-I{KERNELS}", "-c", str(src), "-o", str(obj)], check=True)
    return obj


def build_all(cc: str, work: Path, unit: str, flags: list[str], variants: dict, opt: str = "-O3") -> dict:
    """One harness per variant (key -> extra defines), linked against `unit` compiled with the variant's
    defines; every object compiled at once on all cores (compiling takes longer than timing)."""
    flags = [opt, *flags]
    common = [(src, work / f"{src.name}.o", [opt, *f]) for src, f in common_sources(unit)]
    objs = {key: work / f"v{n}" / f"{unit}.o" for n, key in enumerate(variants)}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        jobs = [pool.submit(compile_c, cc, src, obj, f) for src, obj, f in common]
        jobs += [pool.submit(compile_c, cc, KERNELS / f"{unit}.c", objs[key], flags + defines)
                 for key, defines in variants.items()]
        for job in jobs:
            job.result()

    def link(key):
        exe = objs[key].parent / "tile_sweep"
        subprocess.run([cc, *CFLAGS, opt, f"-I{KERNELS}", str(HARNESS), str(objs[key]), *(str(o) for _, o, _ in common),
                        "-lm", "-o", str(exe)], check=True)
        return exe

    return {key: link(key) for key in variants}


def run(exe: Path, tier: str, rows: int, n: int, k: int, bits: int, threads: int, seconds: float) -> tuple[float, str]:
    proc = subprocess.run([str(exe), str(TIER_IDS[tier]), str(rows), str(n), str(k), str(bits), str(threads),
                           str(seconds)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{exe}: {proc.stderr.strip() or f'exit status {proc.returncode}'}")
    m = re.fullmatch(r"gmacs=([0-9.]+) sum=([0-9a-f]{8})\s*", proc.stdout)
    if not m:
        sys.exit(f"{exe}: unexpected output {proc.stdout!r}")
    return float(m.group(1)), m.group(2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tier", choices=sorted(TIER_IDS))
    ap.add_argument("--bits", type=int, nargs="+", choices=(4, 8), default=[4, 8])
    ap.add_argument("--rows", type=int, default=128, help="activation rows per GEMM (prefill's chunk: 128)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=0.5, help="timing per candidate, shape and round (best call)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--opt", choices=("0", "1", "2", "3"), default="3",
                    help="-O level of every build (the library's is 3; 0 checks the candidates' results in a sixth "
                         "of the compiling time, its speeds mean nothing)")
    ap.add_argument("--shapes", nargs="+", metavar="NxK", help="matrix shapes (default: the 1.1B model's)")
    args = ap.parse_args(argv)
    shapes = SHAPES
    if args.shapes:
        parsed = [re.fullmatch(r"(\d+)x(\d+)", s.lower()) for s in args.shapes]
        shapes = [(int(m.group(1)), int(m.group(2))) for m in parsed if m]
        if len(shapes) < len(parsed) or any(n < 1 or k < 32 or k % 32 for n, k in shapes):
            ap.error(f"shapes are NxK with N >= 1 and K a positive multiple of 32, got: {' '.join(args.shapes)}")
    if args.rows < 1 or args.threads < 1 or args.rounds < 1 or args.seconds < 0:
        ap.error("--rows, --threads and --rounds must be at least 1, --seconds not negative")

    cc = compiler()
    unit, flags = tier_unit(args.tier)
    failed = False
    with tempfile.TemporaryDirectory(prefix="llmrt-tiles-") as tmp:
        work = Path(tmp)
        builds = {(bits, i): cand for bits in args.bits for i, cand in enumerate([None, *CANDIDATES[(args.tier, bits)]])}
        variants = {key: candidate_defines(cand, key[0]) for key, cand in builds.items()}
        variants = {key: d for key, d in variants.items() if d or key == (args.bits[0], 0)}   # one shipped build
        print(f"building {len(variants)} variants of {unit}.c ...", file=sys.stderr)
        exes = build_all(cc, work, unit, flags, variants, f"-O{args.opt}")
        shipped = exes[(args.bits[0], 0)]
        for bits in args.bits:
            print(f"\n{args.tier} ({unit}.c) int{bits}, {args.rows} rows, {args.threads} thread(s): best GMAC/s of "
                  f"{args.rounds} rounds per shape (N x K)")
            print(f"{'tile':<24}" + "".join(f"{f'{n}x{k}':>12}" for n, k in shapes) + f"{'median':>10}")
            count = len(CANDIDATES[(args.tier, bits)]) + 1
            best = [[0.0] * len(shapes) for _ in range(count)]
            digests: dict[tuple[int, int], set[str]] = {(i, j): set() for i in range(count) for j in range(len(shapes))}
            for _ in range(args.rounds):   # candidates alternate within each round: the machine's speed drifts
                for i in range(count):
                    for j, (n, k) in enumerate(shapes):
                        speed, digest = run(exes.get((bits, i), shipped), args.tier, args.rows, n, k, bits,
                                            args.threads, args.seconds)
                        best[i][j] = max(best[i][j], speed)
                        digests[(i, j)].add(digest)
            for i in range(count):
                # every round of every candidate the same output as the shipped build's
                wrong = [f"{n}x{k}" for j, (n, k) in enumerate(shapes)
                         if len(digests[(0, j)]) > 1 or digests[(i, j)] != digests[(0, j)]]
                failed |= bool(wrong)
                print(f"{candidate_name(builds[(bits, i)]):<24}" + "".join(f"{v:>12.1f}" for v in best[i]) +
                      f"{statistics.median(best[i]):>10.1f}" + (f"  DIFFERS from shipped on {', '.join(wrong)}" if wrong else ""))
    if failed:
        print("\nA candidate computed other results than the shipped kernels: that tile is wrong.", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
