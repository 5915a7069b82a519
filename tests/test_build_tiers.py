"""Every ISA tier the C compiler can build is in this build: a tier silently left out (a meson flag
probe gone wrong, a typo in a define) would otherwise only show as a slower machine."""
import os
import shlex
import shutil
import subprocess
import sysconfig

import pytest

from llmrt._kernels import _ops

# tier -> (gcc/clang flags, a statement using an instruction only that tier has)
PROBES = {
    "avx2": (["-mavx2", "-mfma", "-mf16c"],
             "__m256i v = _mm256_maddubs_epi16(_mm256_set1_epi8(1), _mm256_set1_epi8(2)); (void)v;"),
    "avx512": (["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"],
               "__m512i v = _mm512_maddubs_epi16(_mm512_set1_epi8(1), _mm512_set1_epi8(2)); (void)v;"),
    "avx_vnni": (["-mavx2", "-mfma", "-mf16c", "-mavxvnni"],
                 "__m256i z = _mm256_setzero_si256(); z = _mm256_dpbusd_avx_epi32(z, z, z); (void)z;"),
    "avx512_vnni": (["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni"],
                    "__m512i z = _mm512_setzero_si512(); z = _mm512_dpbusd_epi32(z, z, z); (void)z;"),
    "amx": (["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni", "-mamx-tile", "-mamx-int8"],
            "_tile_zero(0); _tile_release();"),
}


def compiler() -> list[str]:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    argv = shlex.split(cc)
    if not shutil.which(argv[0]):
        pytest.skip(f"no C compiler {argv[0]!r} to probe the tiers with")
    return argv


def compiles(cc: list[str], flags: list[str], body: str, tmp_path) -> bool:
    src = tmp_path / "probe.c"
    src.write_text("#include <immintrin.h>\nint main(void) { " + body + " return 0; }\n")
    r = subprocess.run([*cc, *flags, "-c", str(src), "-o", str(tmp_path / "probe.o")], capture_output=True)
    return r.returncode == 0


def test_probes_cover_every_tier():
    assert set(PROBES) | {"ref"} == set(_ops.TIER_NAMES)


@pytest.mark.parametrize("isa", sorted(PROBES))   # not "tier": the tier report counts kernel runs
def test_tier_built_when_the_compiler_can(isa, tmp_path):
    flags, body = PROBES[isa]
    if compiles(compiler(), flags, body, tmp_path):
        assert isa in _ops.compiled_tiers(), f"the compiler builds {isa} code, but the {isa} tier is not in this build"
    else:
        assert isa not in _ops.compiled_tiers()


def test_probe_rejects_code_of_a_missing_tier(tmp_path):
    """The probe itself can fail: AVX-512 code without its flags does not compile."""
    assert not compiles(compiler(), ["-mavx2"], PROBES["avx512"][1], tmp_path)
