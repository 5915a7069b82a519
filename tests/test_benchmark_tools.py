"""The benchmark tools that decide what is measured: build_llamacpp_tier.py's check of a llama.cpp build (the tier
comparison is only fair when the peer library has exactly the tier's instructions, so the check must catch each
way a build can be wrong) and tile_sweep.py (its candidate tiles must compute what the shipped ones do)."""
import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

from llmrt._kernels import _ops

from test_build_tiers import compiler

ROOT = Path(__file__).resolve().parents[1]

# a function named like ggml's Q4_0 dot product, its body one instruction family
KERNELS = {
    "maddubs": (["-mavx2"], "__m256i r = _mm256_maddubs_epi16(a, b);"),
    "vex_dpbusd": (["-mavx2", "-mavxvnni"], "__m256i r = _mm256_dpbusd_avx_epi32(a, a, b);"),
    "evex_dpbusd": (["-mavx2", "-mavx512vnni", "-mavx512vl"], "__m256i r = _mm256_dpbusd_epi32(a, a, b);"),
    "zmm_math": (["-mavx2", "-mavx512f", "-mavx512bw"],
                 "__m256i r = _mm512_castsi512_si256(_mm512_maddubs_epi16(_mm512_castsi256_si512(a), "
                 "_mm512_castsi256_si512(b)));"),
}


def benchmark_module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tool():
    return benchmark_module("build_llamacpp_tier")


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    assert shutil.which("objdump"), "objdump (binutils) is needed: apt install binutils"
    cc, out = compiler(), tmp_path_factory.mktemp("kernels")
    built = {}
    for name, (flags, body) in KERNELS.items():
        src = out / f"{name}.c"
        src.write_text("#include <immintrin.h>\n__m256i ggml_vec_dot_q4_0_q8_0(__m256i a, __m256i b) { "
                       + body + " return r; }\n")
        subprocess.run([*cc, "-O2", *flags, "-c", str(src), "-o", str(out / f"{name}.o")], check=True)
        built[name] = out / f"{name}.o"
    return built


@pytest.mark.parametrize("target,fits", [("avx2", "maddubs"), ("avx_vnni", "vex_dpbusd"),
                                       ("avx_vnni_evex", "evex_dpbusd")])
def test_a_build_with_the_tiers_instructions_passes(tool, objects, target, fits):
    assert tool.check_build(objects[fits], target) == []


@pytest.mark.parametrize("target,wrong,problem", [
    ("avx2", "vex_dpbusd", "vpdpbusd in an AVX2-only build"),
    ("avx_vnni", "maddubs", "no vpdpbusd"),
    ("avx_vnni", "evex_dpbusd", "EVEX-encoded vpdpbusd in the VEX"),
    ("avx_vnni_evex", "vex_dpbusd", "VEX-encoded vpdpbusd"),
    ("avx2", "zmm_math", "512-bit arithmetic in ggml_vec_dot_q4_0_q8_0"),
])
def test_a_build_with_other_instructions_is_named(tool, objects, target, wrong, problem):
    problems = tool.check_build(objects[wrong], target)
    assert any(problem in p for p in problems), problems


# ---- tile_sweep.py

def test_tile_sweep_candidates_compute_what_the_shipped_kernels_do(monkeypatch):
    """A candidate tile (on AVX-VNNI int4 with the high nibbles kept in place and int8 in two chains) is built
    and run for real on the best 256-bit tier this CPU has, on shapes with partial panels and partial row tiles."""
    sweep = benchmark_module("tile_sweep")
    monkeypatch.setenv("CC", compiler()[0])
    tiers = _ops.supported_tiers()
    if "avx_vnni" in tiers:   # steps of their own, not only shapes: int4 nibbles in place, int8 two chains
        tier, candidates = "avx_vnni", {4: {"RB": 4, "NSB": 1, "SPLIT": 0}, 8: {"RB": 2, "NSB": 2, "CH": 2}}
    elif "avx2" in tiers:
        tier, candidates = "avx2", {4: {"RB": 6, "NSB": 1}}
    else:
        pytest.skip("this CPU runs no 256-bit tier")
    # compiling is the time: one candidate per width
    monkeypatch.setattr(sweep, "CANDIDATES", {(tier, bits): [c] for bits, c in candidates.items()})
    assert sweep.main([tier, "--bits", *map(str, candidates), "--rows", "21", "--shapes", "40x256", "72x512",
                       "--seconds", "0", "--rounds", "1", "--opt", "0"]) == 0


def test_avx2_int8_widened_tiles_compute_what_the_int8_step_does(monkeypatch):
    """AVX2 int8 prefill on widened int16 weights (panel_wide8.h) gives bit for bit the int8 step's output
    (sign + maddubs + madd, the kernel it replaced): 21 rows (5 tiles of 4, the last partial), partial panels."""
    sweep = benchmark_module("tile_sweep")
    monkeypatch.setenv("CC", compiler()[0])
    if "avx2" not in _ops.supported_tiers():
        pytest.skip("this CPU has no AVX2")
    monkeypatch.setattr(sweep, "CANDIDATES", {("avx2", 8): [{"WIDE": 0}]})
    assert sweep.main(["avx2", "--bits", "8", "--rows", "21", "--shapes", "40x256", "72x1024", "--seconds", "0",
                       "--rounds", "1", "--opt", "0"]) == 0


def test_tile_sweep_names_a_candidate_that_computes_otherwise(monkeypatch, capsys):
    sweep = benchmark_module("tile_sweep")
    monkeypatch.setattr(sweep, "tier_unit", lambda tier: ("avx2", []))
    monkeypatch.setattr(sweep, "build_all", lambda cc, work, unit, flags, variants, opt:
                        {key: work / f"b{key[0]}_{key[1]}" for key in variants})
    # the second candidate (b4_2) computes something else on one shape
    monkeypatch.setattr(sweep, "run", lambda exe, tier, rows, n, k, *rest:
                        (10.0, "0badc0de" if exe.name == "b4_2" and n == 72 else "12345678"))
    assert sweep.main(["avx2", "--bits", "4", "--shapes", "40x256", "72x512", "--rounds", "2"]) == 1
    out = capsys.readouterr().out.splitlines()
    differing = [line for line in out if "DIFFERS" in line]
    assert len(differing) == 1 and differing[0].startswith(sweep.candidate_name(sweep.CANDIDATES[("avx2", 4)][1]))
    assert differing[0].endswith("DIFFERS from shipped on 72x512")
