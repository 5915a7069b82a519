"""Builds llama.cpp's shared libraries for exactly one 256-bit x86 tier, the peer of `LLMRT_ISA=<tier>` in
`compare.py --llamacpp-lib` (the performance issue compares each tier against llama.cpp built for that tier's
extensions alone, its own Q4_0 repacking on).

    python benchmarks/build_llamacpp_tier.py avx2            # AVX2 + FMA + F16C + BMI2
    python benchmarks/build_llamacpp_tier.py avx_vnni        # + VEX AVX-VNNI (Intel Alder Lake and later, Sapphire Rapids)
    python benchmarks/build_llamacpp_tier.py avx_vnni_evex   # stand-in where AVX512-VNNI has no VEX form (AMD Zen 4)
    LLMRT_ISA=avx2 python benchmarks/compare.py --llamacpp-lib ~/anchors/build/lcpp-avx2/bin

`avx_vnni_evex` compiles with AVX512-VNNI + VL and the AVX512F/BW/DQ/CD macros undefined, so ggml takes its
256-bit dot products with EVEX `vpdpbusd` (its AVX512-VNNI + VL branch of the same code as the AVX-VNNI one). The
target pragmas of the intrinsics headers bring `__AVX512F__` back in some units (llama.cpp then reports AVX512),
which is why the build is checked: no 512-bit arithmetic in the quantized dot-product kernels.

The source is the llama.cpp vendored in the anchors' llama-cpp-python tree (`../shared/anchors/setup.sh lcpp`);
needs cmake and ninja (`pip install cmake ninja`) and objdump (binutils). Takes 2-5 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

COMMON = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", "-DGGML_NATIVE=OFF", "-DGGML_AVX=ON",
          "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_BMI2=ON", "-DGGML_AVX512=OFF",
          "-DGGML_OPENMP=ON", "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
          "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_CURL=OFF"]
EVEX_FLAGS = ("-mavx512vnni -mavx512vl -mprefer-vector-width=256 "
              "-U__AVX512F__ -U__AVX512BW__ -U__AVX512DQ__ -U__AVX512CD__")
TIERS = {
    "avx2": ["-DGGML_AVX_VNNI=OFF"],
    "avx_vnni": ["-DGGML_AVX_VNNI=ON"],
    "avx_vnni_evex": ["-DGGML_AVX_VNNI=OFF", f"-DCMAKE_C_FLAGS={EVEX_FLAGS}", f"-DCMAKE_CXX_FLAGS={EVEX_FLAGS}"],
}
# the quantized matrix kernels prefill and decode run in (Q4_0, Q4_1, Q8_0 dot products, repacked GEMM/GEMV,
# llamafile's tinyBLAS)
HOT = re.compile(r"vec_dot_q|gemm_q|gemv_q|tinyBLAS")
# zmm names in data movement are register allocation (a 128-bit extract from a high register, stack zeroing),
# not 512-bit work
MOVES = re.compile(r"(vmov|vextract|vinsert)")


def llama_cpp_source(anchors: Path) -> Path:
    found = sorted(anchors.glob("src/llama_cpp_python-*/vendor/llama.cpp"))
    if not found:
        sys.exit(f"no llama.cpp source under {anchors}/src: run ANCHORS_DIR={anchors} bash "
                 "../shared/anchors/setup.sh lcpp first, or pass --anchors-dir")
    return found[-1]


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        sys.exit(f"{name} not found on PATH: pip install cmake ninja (objdump: apt install binutils)")
    return path


def check_build(lib: Path, tier: str) -> list[str]:
    """Problems with the built libggml-cpu's instructions for this tier (empty: as intended)."""
    dis = subprocess.run([tool("objdump"), "-d", str(lib)], capture_output=True, text=True, check=True).stdout
    func, zmm_in_hot, dots = "", set(), []
    for line in dis.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if m:
            func = m.group(1)
        elif "vpdpbusd" in line:
            dots.append(line)
        fields = line.split("\t")
        if "zmm" in line and HOT.search(func) and len(fields) > 2 and not MOVES.match(fields[2]):
            zmm_in_hot.add(func)
    problems = [f"512-bit arithmetic in {f}" for f in sorted(zmm_in_hot)]
    if tier == "avx2" and dots:
        problems.append(f"{len(dots)} vpdpbusd in an AVX2-only build")
    if tier != "avx2":
        if not dots:
            problems.append("no vpdpbusd: the VNNI dot products were not compiled in")
        evex = sum(1 for d in dots if re.search(r":\s+62 ", d))   # EVEX instructions start with byte 0x62
        if tier == "avx_vnni" and evex:
            problems.append(f"{evex} EVEX-encoded vpdpbusd in the VEX AVX-VNNI build")
        if tier == "avx_vnni_evex" and evex < len(dots):
            problems.append(f"{len(dots) - evex} VEX-encoded vpdpbusd: this CPU cannot run them")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tier", choices=sorted(TIERS))
    ap.add_argument("--anchors-dir", default=os.environ.get("ANCHORS_DIR", str(Path.home() / "anchors")))
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    a = ap.parse_args()
    anchors = Path(a.anchors_dir).expanduser()
    src, out = llama_cpp_source(anchors), anchors / "build" / f"lcpp-{a.tier}"
    cmake = tool("cmake")
    tool("ninja")
    out.mkdir(parents=True, exist_ok=True)
    log = out / "build.log"
    print(f"[build] llama.cpp {src} for {a.tier} -> {out} (log: {log})", flush=True)
    with open(log, "w") as f:
        for cmd in ([cmake, "-G", "Ninja", "-S", str(src), "-B", str(out), *COMMON, *TIERS[a.tier]],
                    [cmake, "--build", str(out), "-j", str(a.jobs), "--target", "llama", "ggml-cpu"]):
            if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode != 0:
                sys.exit(f"build failed: see {log}")
    problems = check_build(out / "bin" / "libggml-cpu.so", a.tier)
    if problems:
        print("[build] the library is not what the tier needs:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(f"[build] done; compare with: LLMRT_ISA={a.tier.replace('_evex', '')} python benchmarks/compare.py "
          f"--llamacpp-lib {out / 'bin'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
