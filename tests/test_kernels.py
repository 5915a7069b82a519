"""Every compiled ISA tier of the C kernels against a NumPy model of the kernels.h semantics."""
import functools
import itertools

import numpy as np
import pytest

from llmrt._kernels import _ops

TIERS = _ops.supported_tiers()
WIDE_TIERS = {"avx512", "avx512_vnni", "amx"}   # tiers whose bf16 GEMM may use AVX512-BF16
PANEL_TIERS = {"avx2", "avx512", "avx_vnni", "avx512_vnni", "amx"}   # tiers with int8 kernels on the panel layout
HAVE_BF16_HW = _ops.bf16_instructions_available()
F32 = np.float32


@pytest.fixture
def use_tier(request):
    """Switch to a tier for one test and restore the previous selection afterwards."""
    prev = _ops.current_tier()
    prev_hw = _ops.bf16_instructions()

    def select(name, bf16_hw=True):
        _ops.bf16_instructions(bf16_hw)
        assert _ops.set_isa(name) == name
    yield select
    _ops.bf16_instructions(prev_hw)
    _ops.set_isa(prev)


# ------------------------------------------------------------------ NumPy model of kernels.h
def round_bf16(x):
    """fp32 -> bf16 nearest-even -> fp32 (as lr_round_bf16)."""
    b = np.ascontiguousarray(x, dtype=F32).view(np.uint32).astype(np.uint64)
    b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
    return b.astype(np.uint32).view(F32)


def pack_q4(u):
    """(n, k) nibbles -> (n, k/2) bytes: per 32-block, byte j = u[j] | u[j+16] << 4."""
    n, k = u.shape
    ub = u.reshape(n, k // 32, 2, 16).astype(np.uint8)
    return (ub[:, :, 0, :] | (ub[:, :, 1, :] << 4)).reshape(n, k // 2)


def unpack_q(qs, bits, k):
    """Integer weights (n, k): unsigned nibbles for bits 4, signed int8 for bits 8."""
    n = qs.shape[0]
    if bits == 8:
        return qs.view(np.int8).astype(np.int32)
    b = qs.reshape(n, k // 32, 16).astype(np.int32)
    return np.concatenate([b & 15, b >> 4], axis=2).reshape(n, k)


def offsets(d, m, bits):
    """Per-group additive term of the dequantized weight: m, -8 d (int4 without m) or 0."""
    if m is not None:
        return m
    return (F32(-8) * d).astype(F32) if bits == 4 else np.zeros_like(d)


def dequant(qs, d, m, bits, group):
    """Dequantized weights in fp32, with the two roundings of generic_dequant_row (d*u, then + m)."""
    k = qs.shape[1] * 8 // bits
    u = unpack_q(qs, bits, k).astype(F32)
    dd = np.repeat(d, group, axis=1)
    mm = np.repeat(offsets(d, m, bits), group, axis=1)
    return (dd * u).astype(F32) + mm


def quantize_ref(x):
    """Per-32 activation quantization: d = max|x|/127, q = rint(x * (1/d)) clipped to +-127."""
    rows, k = x.shape
    xb = x.astype(F32).reshape(rows, k // 32, 32)
    d = (np.abs(xb).max(axis=2) / F32(127)).astype(F32)
    inv = np.divide(F32(1), d, out=np.zeros_like(d), where=d > 0).astype(F32)
    q = np.clip(np.rint(xb * inv[:, :, None]), -127, 127).astype(np.int8)
    return q.reshape(rows, k), d, q.astype(np.int32).sum(axis=2).astype(np.int32)


def int8_ref(qs, d, m, bits, group, q, da, sa):
    """Exact (float64) result of the int8 path for given quantized activations, and the sum of the
    magnitudes of all its terms (the scale the fp32 summation error is measured against)."""
    k = q.shape[1]
    nb = k // 32
    u = unpack_q(qs, bits, k).astype(F32).reshape(-1, nb, 32).transpose(1, 2, 0)   # (nb, 32, n)
    qa = q.astype(F32).reshape(q.shape[0], nb, 32).transpose(1, 0, 2)              # (nb, rows, 32)
    # per-block integer dots, exact in fp32 (|sum| < 2^24)
    isum = np.matmul(qa, u).astype(np.float64)
    iabs = np.matmul(np.abs(qa), np.abs(u)).astype(np.float64)
    g = np.arange(nb) // (group // 32)
    dw = d.astype(np.float64)[:, g]                                  # (n, nb)
    off = offsets(d, m, bits).astype(np.float64)[:, g]
    dab, sab = da.astype(np.float64), sa.astype(np.float64)          # (rows, nb)
    sabs = np.abs(qa).sum(axis=2).T.astype(np.float64)
    y = (isum * dab.T[:, :, None] * dw.T[:, None, :]).sum(axis=0) + (dab * sab) @ off.T
    mag = (iabs * np.abs(dab.T)[:, :, None] * np.abs(dw.T)[:, None, :]).sum(axis=0) + (np.abs(dab) * sabs) @ np.abs(off).T
    return y, mag


def assert_close(y, ref, mag, rtol):
    err = np.abs(y.astype(np.float64) - ref)
    bad = err > rtol * mag + 1e-30
    assert not bad.any(), (f"{bad.sum()} of {bad.size} outputs off; worst rel err "
                           f"{(err / np.maximum(mag, 1e-30)).max():.3g}")


# ------------------------------------------------------------------ quantized GEMM cases
def _groups(k):
    return sorted({g for g in (32, 64, 128, k) if k % g == 0})   # k itself: one group per row


SHAPES = [(k, n) for k in (96, 160) for n in (33, 257)] + [(4096, 33)]   # small n for the long k
QCASES = [(k, n, g, rows, bits, has_m)
          for (k, n) in SHAPES for g in _groups(k) for rows in (1, 7, 64)
          for bits in (4, 8) for has_m in (False, True)]


@functools.lru_cache(maxsize=None)
def qcase(k, n, group, rows, bits, has_m):
    rng = np.random.default_rng(hash((k, n, group, rows, bits, has_m)) & 0xFFFFFFFF)
    if bits == 4:
        qs = pack_q4(rng.integers(0, 16, size=(n, k)))
    else:
        qs = rng.integers(-128, 128, size=(n, k)).astype(np.int8).view(np.uint8)
    d = (rng.standard_normal((n, k // group)) * 0.02).astype(F32)
    m = (rng.standard_normal((n, k // group)) * 0.05).astype(F32) if has_m else None
    x = rng.standard_normal((rows, k)).astype(F32)
    x[:, :32] += 0.5   # one block with a large common mode (large activation sums)
    if rows > 1:
        x[1, 32:64] = 0.0   # an all-zero block (d = 0)
    return qs, d, m, x


@functools.lru_cache(maxsize=None)
def qref_float(case, compute):
    qs, d, m, x = qcase(*case)
    bits, group = case[4], case[2]
    w = dequant(qs, d, m, bits, group)
    if compute == "bf16":
        w, x = round_bf16(w), round_bf16(x)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    return x64 @ w64.T, np.abs(x64) @ np.abs(w64).T


@functools.lru_cache(maxsize=None)
def qref_int8(case):
    qs, d, m, x = qcase(*case)
    q, da, sa = quantize_ref(x)
    y, mag = int8_ref(qs, d, m, case[4], case[2], q, da, sa)
    return (q, da, sa), y, mag


def check_int8(case, y):
    """y from the int8 path against the emulation fed with the kernel's own activation quantization
    (the NumPy one is reused when identical, which it is unless a rounding tie went the other way)."""
    qs, d, m, x = qcase(*case)
    (q, da, sa), ref, mag = qref_int8(case)
    kq, kd, ks = _ops.quantize_activations(x)
    if not (np.array_equal(kq, q) and np.array_equal(kd, da) and np.array_equal(ks, sa)):
        ref, mag = int8_ref(qs, d, m, case[4], case[2], kq, kd, ks)
    assert_close(y, ref, mag, 1e-5)


def _qparams():
    out = []
    for tier in TIERS:
        for case in QCASES:
            for compute in ("int8", "fp32", "bf16"):
                hws = (True, False) if (compute == "bf16" and tier in WIDE_TIERS and HAVE_BF16_HW) else (True,)
                for hw in hws:
                    out.append(pytest.param(tier, case, compute, hw,
                                            id=f"{tier}-k{case[0]}-n{case[1]}-g{case[2]}-m{case[3]}-q{case[4]}"
                                               f"{'-off' if case[5] else ''}-{compute}{'' if hw else '-nobf16hw'}"))
    return out


@pytest.mark.parametrize("tier,case,compute,hw", _qparams())
def test_quantized_gemm(use_tier, tier, case, compute, hw):
    use_tier(tier, hw)
    qs, d, m, x = qcase(*case)
    bits, group = case[4], case[2]
    lin = _ops.Linear.quantized(qs, d, m, bits, group, compute=compute)
    y = lin(x)
    assert y.shape == (x.shape[0], qs.shape[0]) and y.dtype == F32
    if compute == "int8":
        check_int8(case, y)
    else:
        ref, mag = qref_float(case, compute)
        assert_close(y, ref, mag, 1e-5)


# Tile edges: activation rows around multiples of 4 and 16 (AMX tiles take 16 rows, the rest goes to
# the vector code), weight rows around multiples of 2, 4 and 16, and 1 to 5 blocks per row.
EDGE_CASES = [(k, n, g, rows, bits, has_m)
              for (k, n, g, rows) in [(32, 16, 32, 16), (64, 31, 64, 17), (96, 48, 32, 35), (160, 18, 32, 48),
                                      (128, 47, 128, 33), (4096, 17, 128, 20), (4096, 16, 4096, 16),
                                      (4096, 257, 64, 64), (5632, 40, 32, 400)]   # last: several AMX row passes
              for bits in (4, 8) for has_m in (False, True)]


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("panels", [True, False], ids=["panels", "canonical"])
@pytest.mark.parametrize("case", EDGE_CASES, ids=lambda c: "k{}-n{}-g{}-m{}-q{}{}".format(*c[:5], "-off" if c[5] else ""))
def test_quantized_gemm_int8_edges(use_tier, tier, case, panels):
    use_tier(tier)
    qs, d, m, x = qcase(*case)
    lin = _ops.Linear.quantized(qs, d, m, case[4], case[2], compute="int8", panels=panels)
    check_int8(case, lin(x))
    # a tier without panel kernels rebuilds the canonical planes from the panels once
    expect = "canonical" if not panels else ("panels" if tier in PANEL_TIERS else "panels+canonical")
    assert lin.layout == expect and lin.panel_scales == ("fp32" if panels else None)


def _records(qs, d, bits, group):
    """qs as the strided view of block records (a scale beside each group's bytes), as a model file
    maps them."""
    n, gbytes = qs.shape[0], group * bits // 8
    rec = np.zeros(d.shape, dtype=[("scale", "<f4"), ("qs", "u1", (gbytes,))])
    rec["scale"] = d
    rec["qs"] = qs.reshape(n, d.shape[1], gbytes)
    return rec["qs"]


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [32, 128])
@pytest.mark.parametrize("f16", [False, True], ids=["fp32", "fp16"])
def test_panels_from_parts(use_tier, tier, bits, group, f16):
    """Panels packed straight from several parts (fused QKV / gate-up rows, strided record views,
    one part with offsets among parts without) equal the panels of the concatenated matrix."""
    use_tier(tier)
    k, sizes, with_m = 256, (5, 0, 16, 20), (False, False, True, False)
    parts, canon = [], []
    for i, (rows, has_m) in enumerate(zip(sizes, with_m)):
        qs, d, m, _ = qcase(k, rows, group, 1, bits, has_m)
        if f16:
            d = d.astype(np.float16).astype(F32)
            m = None if m is None else m.astype(np.float16).astype(F32)
        # the implicit offsets of a part without any, once another part has them
        canon.append((qs, d, m if m is not None else (-8.0 * d if bits == 4 else np.zeros_like(d))))
        parts.append((_records(qs, d, bits, group) if i % 2 == 0 else qs.reshape(rows, k // group, group * bits // 8), d, m))
    whole = _ops.Linear.quantized(*(np.concatenate(c) for c in zip(*canon)), bits, group, compute="int8")
    fused = _ops.Linear.from_parts(parts, bits, group)
    assert (fused.n, fused.k, fused.layout, fused.panel_scales) == (whole.n, k, "panels", whole.panel_scales)
    assert fused.panel_scales == ("fp16" if f16 else "fp32")
    x = np.random.default_rng(3).standard_normal((19, k)).astype(F32)
    np.testing.assert_array_equal(fused(x), whole(x))
    for j in range(fused.n):
        np.testing.assert_array_equal(fused.get_row(j), whole.get_row(j))


def test_panels_from_parts_rejects_bad_parts():
    qs, d, _, _ = qcase(64, 4, 32, 1, 4, False)
    q3 = qs.reshape(4, 2, 16)
    with pytest.raises(TypeError, match="3-D uint8"):
        _ops.Linear.from_parts([(qs, d, None)], 4, 32)
    with pytest.raises(ValueError, match="shape"):
        _ops.Linear.from_parts([(q3, d[:3], None)], 4, 32)
    with pytest.raises(ValueError, match=r"\(rows, 2, 16\)"):
        _ops.Linear.from_parts([(q3, d, None), (qs.reshape(4, 4, 8), d, None)], 4, 32)
    with pytest.raises(ValueError, match="at least one part"):
        _ops.Linear.from_parts([], 4, 32)
    with pytest.raises(ValueError, match="bits"):
        _ops.Linear.from_parts([(q3, d, None)], 5, 32)


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("case", EDGE_CASES[::3], ids=lambda c: "k{}-n{}-g{}-m{}-q{}{}".format(*c[:5], "-off" if c[5] else ""))
def test_panels_with_fp16_scales(use_tier, tier, case):
    """Scales that fp16 holds exactly are stored as fp16 inside the panels (half the scale bytes)."""
    use_tier(tier)
    qs, d, m, x = qcase(*case)
    d = d.astype(np.float16).astype(F32)
    m = None if m is None else m.astype(np.float16).astype(F32)
    lin = _ops.Linear.quantized(qs, d, m, case[4], case[2], compute="int8")
    assert lin.panel_scales == "fp16"
    y = lin(x)
    kq, kd, ks = _ops.quantize_activations(x)
    ref, mag = int8_ref(qs, d, m, case[4], case[2], kq, kd, ks)
    assert_close(y, ref, mag, 1e-5)
    # rows read from the panels (embedding lookups of a tied head) equal the dequantized weights
    fresh = _ops.Linear.quantized(qs, d, m, case[4], case[2], compute="int8")
    for j in (0, case[1] // 2, case[1] - 1):
        np.testing.assert_array_equal(fresh.get_row(j), dequant(qs[j:j + 1], d[j:j + 1], None if m is None else m[j:j + 1],
                                                                case[4], case[2])[0])
    assert fresh.layout == "panels"
    # the canonical planes come back exactly from the panels
    for j in (0, case[1] // 2, case[1] - 1):
        np.testing.assert_array_equal(lin.get_row(j), dequant(qs[j:j + 1], d[j:j + 1], None if m is None else m[j:j + 1],
                                                              case[4], case[2])[0])


# Panel kernels at every activation row count from 1 to 40 (the 256-bit tiers switch from whole-panel
# tiles to half-panel tiles of several rows, the 512-bit ones take 4 rows a tile, AMX 16): n = 47 ends
# in a partial half panel, n = 40 in exactly one half, n = 33 in a single row.
PANEL_ROW_CASES = [(n, g, bits, has_m, f16) for (n, g) in [(47, 32), (40, 128), (33, 256)]
                   for bits in (4, 8) for has_m in (False, True) for f16 in (False, True)]


@pytest.mark.parametrize("tier", sorted(PANEL_TIERS & set(TIERS)))
@pytest.mark.parametrize("case", PANEL_ROW_CASES, ids=lambda c: "n{}-g{}-q{}{}{}".format(
    c[0], c[1], c[2], "-off" if c[3] else "", "-f16" if c[4] else "-f32"))
def test_panel_kernels_rows_1_to_40(use_tier, tier, case):
    use_tier(tier)
    n, group, bits, has_m, f16 = case
    qs, d, m, x = qcase(256, n, group, 40, bits, has_m)
    if f16:
        d = d.astype(np.float16).astype(F32)
        m = None if m is None else m.astype(np.float16).astype(F32)
    else:   # a scale fp16 cannot hold keeps the panels in fp32
        d = d.copy()
        d[0, 0] = F32(1.0 + 2.0 ** -20)
    lin = _ops.Linear.quantized(qs, d, m, bits, group, compute="int8")
    assert lin.panel_scales == ("fp16" if f16 else "fp32")
    for rows in range(1, 41):
        xr = x[:rows]
        kq, kd, ks = _ops.quantize_activations(xr)
        ref, mag = int8_ref(qs, d, m, bits, group, kq, kd, ks)
        y = lin(xr)
        assert y.shape == (rows, n)
        assert_close(y, ref, mag, 1e-5)
    # the panel kernel ran: no canonical planes were rebuilt beside the panels
    assert lin.layout == "panels"


# Panels are handed to the threads in shrinking runs (a quarter of what is left per run with two threads,
# at least 2 panels in decode, at least 2 n / 1024 panels): every panel computed once, whatever the thread
# count, for a few panels up to a 32000-row output layer's 2000.
@pytest.mark.parametrize("tier", sorted(PANEL_TIERS & set(TIERS)))
@pytest.mark.parametrize("threads", [1, 2, 3, 7])
@pytest.mark.parametrize("n", [40, 2000 * 16 + 3])
def test_panel_runs_cover_every_panel(use_tier, tier, threads, n):
    use_tier(tier)
    qs, d, m, x = qcase(64, n, 32, 9, 4, False)
    lin = _ops.Linear.quantized(qs, d, m, 4, 32, compute="int8")
    before = _ops.get_num_threads()
    try:
        _ops.set_num_threads(threads)
        for rows in (1, 9):
            kq, kd, ks = _ops.quantize_activations(x[:rows])
            ref, mag = int8_ref(qs, d, m, 4, 32, kq, kd, ks)
            assert_close(lin(x[:rows]), ref, mag, 1e-5)
    finally:
        _ops.set_num_threads(before)


# Two-pass activations with a sparse residual: the value pass, then the rounding residual of only the
# blocks whose step is over `above` times the row's mean step (zero elsewhere); the panel kernels visit
# only the blocks some row of a tile keeps.  Rows 21 and 37 put a tile across the value/residual
# boundary, 1 row runs the decode tiles; groups of 64 to 256 put several blocks in a scale group.
SPARSE_CASES = [(47, 32, 21, 4, False, False), (47, 32, 40, 8, True, False), (40, 128, 21, 4, True, True),
                (33, 256, 37, 8, False, True), (47, 64, 9, 4, False, False), (47, 32, 1, 4, True, False)]


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("case", SPARSE_CASES, ids=lambda c: "n{}-g{}-r{}-q{}{}{}".format(
    *c[:4], "-off" if c[4] else "", "-f16" if c[5] else ""))
def test_two_pass_sparse_residual(use_tier, tier, case):
    use_tier(tier)
    n, group, rows, bits, has_m, f16 = case
    k, above = 256, 3.0
    nb = k // 32
    qs, d, m, x = qcase(k, n, group, rows, bits, has_m)
    if f16:
        d = d.astype(np.float16).astype(F32)
        m = None if m is None else m.astype(np.float16).astype(F32)
    x = x.copy()
    for r in range(rows):   # an outlier block in most rows, at a row-dependent place; rows 5-7 of 8 none
        if r % 8 < 5:
            b = (3 * r) % nb
            x[r, 32 * b:32 * b + 32] *= 20.0
    lin = _ops.Linear.quantized(qs, d, m, bits, group, compute="int8")
    one_pass = lin(x)
    lin.use_two_pass_activations(_ops.ActScratch(rows, k, n), above)
    assert lin.act_passes == 2 and lin.residual_above == above
    y = lin(x)

    q1, d1, s1 = _ops.quantize_activations(x)
    keep = d1 > above * d1.mean(axis=1, keepdims=True)
    assert keep.any() and not keep.all(axis=1).any()
    step = np.repeat(d1, 32, axis=1)
    residual = np.where(np.repeat(keep, 32, axis=1), x - step * q1.astype(F32), F32(0.0)).astype(F32)
    q2, d2, s2 = _ops.quantize_activations(residual)
    ref1, mag1 = int8_ref(qs, d, m, bits, group, q1, d1, s1)
    ref2, mag2 = int8_ref(qs, d, m, bits, group, q2, d2, s2)
    assert_close(y, ref1 + ref2, mag1 + mag2, 1e-5)
    # the residual is a real correction: closer to the unrounded activations' product than one pass
    exact = x.astype(np.float64) @ dequant(qs, d, m, bits, group).astype(np.float64).T
    assert np.abs(y - exact).mean() < 0.5 * np.abs(one_pass - exact).mean()


def test_two_pass_rejects_negative_threshold():
    qs, d, m, _ = qcase(64, 4, 32, 1, 4, False)
    lin = _ops.Linear.quantized(qs, d, m, 4, 32, compute="int8")
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="residual_above"):
            lin.use_two_pass_activations(_ops.ActScratch(4, 64, 4), bad)


@pytest.mark.parametrize("tier", TIERS)
def test_quantized_gemm_bias_and_1d(use_tier, tier):
    use_tier(tier)
    qs, d, m, x = qcase(160, 33, 32, 7, 4, True)
    bias = np.linspace(-1, 1, 33).astype(F32)
    for compute in ("int8", "fp32", "bf16"):
        plain = _ops.Linear.quantized(qs, d, m, 4, 32, compute=compute)
        biased = _ops.Linear.quantized(qs, d, m, 4, 32, bias=bias, compute=compute)
        np.testing.assert_allclose(biased(x), plain(x) + bias, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(plain(x[3]), plain(x[3:4]))
        assert plain(np.zeros((0, 160), F32)).shape == (0, 33)


# ------------------------------------------------------------------ activation quantization
@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("rows,k", [(1, 32), (3, 96), (64, 4096)])
def test_quantize_activations(use_tier, tier, rows, k):
    use_tier(tier)
    rng = np.random.default_rng(rows * 7919 + k)
    x = (rng.standard_normal((rows, k)) * rng.uniform(0.01, 10, size=(rows, 1))).astype(F32)
    x[0, :32] = 0.0                               # d = 0 block
    if k >= 64:
        x[0, 32:64] = np.arange(-16, 16) * 0.5    # exact .5 ties before scaling
    q, d, s = _ops.quantize_activations(x)
    rq, rd, rs = quantize_ref(x)
    np.testing.assert_array_equal(d, rd)
    # Only an exact rounding tie may go the other way.
    inv = np.divide(F32(1), rd, out=np.zeros_like(rd), where=rd > 0).astype(F32)
    t = x.reshape(rows, k // 32, 32) * inv[:, :, None]
    tie = np.abs(np.abs(t - np.floor(t)) - 0.5) < 1e-6
    diff = q.reshape(t.shape) != rq.reshape(t.shape)
    assert not (diff & ~tie).any()
    assert np.abs(q.astype(np.int32) - rq).max() <= 1
    np.testing.assert_array_equal(s, q.astype(np.int32).reshape(rows, k // 32, 32).sum(axis=2))
    assert np.abs(q.astype(np.int32)).max() <= 127


# ------------------------------------------------------------------ dense GEMM
@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("k,n,rows", [(96, 257, 64), (37, 33, 7), (100, 33, 1), (4096, 33, 7), (5, 3, 2)])
def test_dense_gemm(use_tier, tier, dtype, k, n, rows):
    use_tier(tier)
    rng = np.random.default_rng(k * 31 + n + rows)
    w = (rng.standard_normal((n, k)) * 0.1).astype(dtype)
    x = rng.standard_normal((rows, k)).astype(F32)
    y = _ops.Linear.dense(w)(x)
    w64, x64 = w.astype(np.float64), x.astype(np.float64)
    assert_close(y, x64 @ w64.T, np.abs(x64) @ np.abs(w64).T, 1e-5)


# ------------------------------------------------------------------ attention
def attention_ref(q, kc, vc, pos0, n_kv, scale, kv_begin=0, window=0, slopes=None):
    n_tok, n_head, hd = q.shape
    kc, vc = kc.astype(np.float64), vc.astype(np.float64)
    out = np.zeros(q.shape)
    grp = n_head // n_kv
    for t in range(n_tok):
        pos = pos0 + t
        lo = kv_begin if window <= 0 else max(kv_begin, pos - window + 1)
        for h in range(n_head):
            kv = h // grp
            s = scale * (kc[kv, lo:pos + 1] @ q[t, h].astype(np.float64))
            if slopes is not None:
                s += slopes[h] * (np.arange(lo, pos + 1) - pos)
            p = np.exp(s - s.max())
            out[t, h] = (p / p.sum()) @ vc[kv, lo:pos + 1]
    return out


ATTN_CASES = list(itertools.product(
    [np.float16, np.float32],                  # cache dtype
    [(4, 4), (8, 2), (4, 1), (16, 2), (6, 1), (9, 3)],  # (n_head, n_kv_head): MHA, GQA, MQA; groups of 8, 6, 4, 3
    [(0, 0), (3, 0), (2, 5)],                  # (kv_begin, window)
    [False, True],                             # alibi
))


# (head_dim, ctx, n_tok, pos0): head sizes that are not multiples of 16 (40) or of 8 (20, also decode);
# several query blocks, key tiles and head_dim > 64; one decode row at the end of the cache; several
# query blocks for every group size (an MHA block has 128 tokens)
ATTN_SHAPES = [(40, 24, 5, 9), (20, 30, 3, 20), (20, 30, 1, 29), (128, 100, 40, 50), (64, 70, 1, 69),
               (24, 200, 140, 40)]


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("shape", ATTN_SHAPES, ids=lambda s: "hd{}-ctx{}-tok{}-pos{}".format(*s))
@pytest.mark.parametrize("dtype,heads,span,alibi", ATTN_CASES)
def test_attention(use_tier, tier, dtype, heads, span, alibi, shape):
    use_tier(tier)
    n_head, n_kv = heads
    kv_begin, window = span
    hd, ctx, n_tok, pos0 = shape
    rng = np.random.default_rng(n_head * 100 + n_kv * 10 + window)
    q = rng.standard_normal((n_tok, n_head, hd)).astype(F32)
    kc = rng.standard_normal((n_kv, ctx, hd)).astype(dtype)
    vc = rng.standard_normal((n_kv, ctx, hd)).astype(dtype)
    slopes = (2.0 ** -np.arange(1, n_head + 1)).astype(F32) if alibi else None
    scale = 1 / np.sqrt(hd)
    out = _ops.attention(q, kc, vc, pos0, n_kv, scale, kv_begin=kv_begin, window=window, alibi_slopes=slopes)
    ref = attention_ref(q, kc, vc, pos0, n_kv, F32(scale), kv_begin, window, slopes)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("rows,ff", [(1, 37), (3, 64), (40, 5632), (20, 5635)])
def test_silu_mul(use_tier, tier, rows, ff):
    use_tier(tier)
    rng = np.random.default_rng(rows * ff)
    gu = (rng.standard_normal((rows, 2 * ff)) * 4).astype(F32)
    gu[0, :4] = [-100.0, 100.0, 0.0, -1e-3]   # tails and the origin
    g, u = gu[:, :ff].astype(np.float64), gu[:, ff:].astype(np.float64)
    ref = g / (1 + np.exp(-g)) * u
    np.testing.assert_allclose(_ops.silu_mul(gu), ref, rtol=2e-6, atol=1e-30)


def _activation_ref(x: np.ndarray, kind: str) -> np.ndarray:
    """float64, written without cancellation in the negative tail: 1 + erf(z) = erfc(-z) and
    0.5 (1 + tanh u) = 1 / (1 + e^(-2u))."""
    from math import erfc
    x = x.astype(np.float64)
    if kind == "silu":
        return x / (1 + np.exp(-x))
    if kind == "gelu":
        return 0.5 * x * np.vectorize(erfc)(-x / np.sqrt(2))
    if kind == "gelu_tanh":
        with np.errstate(over="ignore"):          # e^big = inf gives the right limit, 0
            return x / (1 + np.exp(-2 * np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    return np.maximum(x, 0)


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("kind", ["silu", "gelu", "gelu_tanh", "relu"])
@pytest.mark.parametrize("n", [1, 13, 70000, 70005])   # a tail shorter than a vector; threaded sizes
def test_activation(use_tier, tier, kind, n):
    use_tier(tier)
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 3).astype(F32)
    x[:min(n, 6)] = [-100.0, 100.0, 0.0, -1e-3, -6.0, 7.5][:min(n, 6)]   # tails and the origin
    got, want = _ops.activate(x, kind), _activation_ref(x, kind)
    assert got.dtype == F32 and got.shape == x.shape
    # relative to the value, with an absolute floor of 1e-12 (deep-tail values, ~1e-16, come out as
    # 0 or a few ulps off); exact GELU may add the erf approximation's 1.5e-7 (times |x| / 2)
    tol = 3e-6 * np.abs(want) + 1e-12 + (2e-7 * np.abs(x) if kind == "gelu" else 0)
    assert np.all(np.abs(got - want) <= tol), float(np.max(np.abs(got - want) - tol))
    with pytest.raises(ValueError, match="unknown activation"):
        _ops.activate(x, "swish")


# ------------------------------------------------------------------ argument checking
def _small_q4():
    return np.zeros((3, 48), np.uint8), np.ones((3, 3), F32)   # n = 3, k = 96, group 32


@pytest.mark.parametrize("group", [0, -32, 48, 64, 192])
def test_quantized_bad_group(group):
    qs, d = _small_q4()
    with pytest.raises(ValueError):
        _ops.Linear.quantized(qs, d, None, 4, group)


def test_quantized_bad_arguments():
    qs, d = _small_q4()
    with pytest.raises(ValueError):
        _ops.Linear.quantized(qs, d, None, 3, 32)                       # bits
    with pytest.raises(ValueError):
        _ops.Linear.quantized(qs, d[:, :2], None, 4, 32)                # scale shape
    with pytest.raises(ValueError):
        _ops.Linear.quantized(qs, d, np.ones((3, 2), F32), 4, 32)       # offset shape
    with pytest.raises(ValueError):
        _ops.Linear.quantized(qs.reshape(-1), d, None, 4, 32)           # 1-D qs
    with pytest.raises(TypeError):
        _ops.Linear.quantized(qs.view(np.int8), d, None, 4, 32)         # qs dtype
    with pytest.raises(TypeError):
        _ops.Linear.quantized(qs, d.astype(np.float64), None, 4, 32)    # scale dtype
    with pytest.raises(TypeError):
        _ops.Linear.quantized(qs.tolist(), d, None, 4, 32)              # not an array
    with pytest.raises(ValueError):
        _ops.Linear.quantized(qs, d, None, 4, 32, compute="fp16")
    lin = _ops.Linear.quantized(qs, d, None, 4, 32)
    with pytest.raises(ValueError):
        lin(np.zeros((2, 95), F32))                                     # wrong k


def test_set_isa_rejects_unknown_tier():
    prev = _ops.current_tier()
    with pytest.raises(ValueError):
        _ops.set_isa("nonsense")
    assert _ops.current_tier() == prev


def test_tier_listing():
    assert "ref" in TIERS and set(TIERS) <= set(_ops.compiled_tiers())
    assert _ops.best_tier() in TIERS


@pytest.mark.parametrize("tier", sorted(PANEL_TIERS & set(TIERS)))
def test_decode_prefetch_distance_changes_no_result(use_tier, tier):
    """The decode tiles' prefetch distance (chosen per CPU, LLMRT_PANEL_PREFETCH) is a hint only: any allowed
    distance gives bit-identical outputs; distances that are not whole cache lines in 0..65536 are refused."""
    use_tier(tier)
    before = _ops.panel_prefetch()
    qs, d, m, x = qcase(2048, 96, 32, 2, 4, False)
    lin = _ops.Linear.quantized(qs, d, m, 4, 32, compute="int8")
    try:
        outs = []
        for nbytes in (0, 64, 1024, 4096, 65536):
            _ops.set_panel_prefetch(nbytes)
            assert _ops.panel_prefetch() == nbytes
            outs.append(lin(x[:1]))
        for y in outs[1:]:
            np.testing.assert_array_equal(y, outs[0])
        for bad in (-64, 100, 65536 + 64):
            with pytest.raises(ValueError, match="multiple of 64"):
                _ops.set_panel_prefetch(bad)
    finally:
        _ops.set_panel_prefetch(before)
