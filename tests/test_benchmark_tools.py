"""benchmarks/build_llamacpp_tier.py's check of a llama.cpp build: the tier comparison is only fair when the
peer library has exactly the tier's instructions, so the check must catch each way a build can be wrong."""
import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

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


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("build_llamacpp_tier", ROOT / "benchmarks" / "build_llamacpp_tier.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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
