"""Block formats: GGUF byte equality with the gguf package, llmrt group formats' error bounds,
the kernel layout (checked in NumPy and through the real kernel) and format validation."""
from __future__ import annotations

import time

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize as gg_dequantize
from gguf.quants import quantize as gg_quantize

from llmrt.formats import (
    KernelWeights, QuantFormat, bf16_bits_to_fp32, fp32_to_bf16_bits,
)

GGML = {"q4_0": gguf.GGMLQuantizationType.Q4_0, "q4_1": gguf.GGMLQuantizationType.Q4_1,
        "q8_0": gguf.GGMLQuantizationType.Q8_0}

LLMRT_FORMATS = [QuantFormat(wd, alg, g, sd)
                 for wd in ("int4", "int8") for alg in ("sym", "asym")
                 for g in (32, 64, 128, -1) for sd in ("fp32", "bf16", "fp16")]
ALL_FORMATS = [QuantFormat.gguf(n) for n in GGML] + LLMRT_FORMATS


def _weights(n: int, k: int, seed: int = 0) -> np.ndarray:
    """Gaussian rows with very different row scales, plus awkward groups (zeros, constants,
    one outlier, ties of opposite sign)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32) * rng.uniform(1e-3, 3, (n, 1)).astype(np.float32)
    w[0, :32] = 0
    w[1, :32] = 0.75
    w[2, 5] = 40.0
    w[3, :32] = np.tile([1.0, -1.0], 16)
    w[4, :32] = -2.5
    return w


# ---------------------------------------------------------------- GGUF types vs the gguf package
@pytest.mark.parametrize("name", list(GGML))
def test_gguf_quantize_and_dequantize_match_gguf_package_bytes(name):
    fmt = QuantFormat.gguf(name)
    w = _weights(64, 256, seed=1)
    blocks = fmt.quantize(w)
    ref = gg_quantize(w, GGML[name])
    assert blocks.shape == (64, 256 // 32)
    assert blocks.dtype.itemsize == gguf.GGML_QUANT_SIZES[GGML[name]][1]
    assert blocks.tobytes() == ref.tobytes()
    deq = fmt.dequantize(blocks)
    assert deq.dtype == np.float32 and deq.shape == w.shape
    assert np.array_equal(deq, gg_dequantize(ref, GGML[name]))


@pytest.mark.parametrize("name", list(GGML))
def test_gguf_dequantize_of_arbitrary_bytes_matches_gguf_package(name):
    # random payloads (every nibble / int8 value) with finite fp16 scales: checks the field
    # layout and nibble order independently of our quantizer
    fmt = QuantFormat.gguf(name)
    rng = np.random.default_rng(2)
    dt = fmt.dtype_for(128)
    raw = rng.integers(0, 256, size=(16, 4 * dt.itemsize), dtype=np.uint8)
    blocks = raw.view(dt)
    for f in ("d", "m"):
        if f in dt.names:
            blocks[f] = rng.uniform(-2, 2, blocks.shape).astype(np.float16)
    assert np.array_equal(fmt.dequantize(blocks), gg_dequantize(blocks.view(np.uint8), GGML[name]))


def test_gguf_quantize_edge_values_match():
    # ties in magnitude (first index wins), huge and tiny values, exact half steps
    w = np.zeros((4, 64), np.float32)
    w[0, 3], w[0, 7] = -2.0, 2.0
    w[1, :32] = np.linspace(-1, 1, 32)
    w[2, :] = 1e-30
    w[3, :32] = np.arange(32) * 0.5 - 8
    w[3, 32:] = 6e4
    for name, t in GGML.items():
        assert QuantFormat.gguf(name).quantize(w).tobytes() == gg_quantize(w, t).tobytes(), name


# ---------------------------------------------------------------- llmrt formats: error bounds
def _group_scales(fmt, blocks, k):
    s = blocks["scale"]
    s = bf16_bits_to_fp32(s) if fmt.scale_dtype == "bf16" else s.astype(np.float32)
    return np.repeat(s, fmt.block_len(k), axis=-1)


@pytest.mark.parametrize("fmt", [f for f in LLMRT_FORMATS if f.weight_dtype == "int8"], ids=str)
def test_int8_roundtrip_error_within_half_step(fmt):
    w = _weights(48, 256, seed=3)
    blocks = fmt.quantize(w)
    err = np.abs(fmt.dequantize(blocks) - w)
    half_step = _group_scales(fmt, blocks, 256) / 2
    slack = 1e-6 * np.abs(w).max(axis=1, keepdims=True)  # float32 rounding of the products
    if fmt.asym and fmt.scale_dtype != "fp32":
        # a bf16/fp16-rounded min can sit above the true min by up to 2^-9 |min|; that element clips
        slack = slack + 2.0 ** -8 * np.abs(w).max(axis=1, keepdims=True)
    assert np.all(err <= half_step + slack)


@pytest.mark.parametrize("fmt", [f for f in LLMRT_FORMATS if f.weight_dtype == "int4"], ids=str)
def test_int4_roundtrip_rounds_to_nearest_representable_level(fmt):
    w = _weights(48, 256, seed=4)
    blocks = fmt.quantize(w)
    deq = fmt.dequantize(blocks)
    sc = _group_scales(fmt, blocks, 256)
    if fmt.asym:
        mins = blocks["min"]
        mins = bf16_bits_to_fp32(mins) if fmt.scale_dtype == "bf16" else mins.astype(np.float32)
        mins = np.repeat(mins, fmt.block_len(256), axis=-1)
        lo, hi = mins, sc * np.float32(15) + mins
    else:  # levels sc*(u-8); the scale's sign decides which end gets the extra level
        lo, hi = np.minimum(sc * np.float32(-8), sc * np.float32(7)), np.maximum(sc * np.float32(-8), sc * np.float32(7))
    eps = 1e-6 * np.abs(w).max(axis=1, keepdims=True)
    err = np.abs(deq - w)
    near = err <= np.abs(sc) / 2 * 1.0001 + eps
    # an element may only be further than half a step when it lies beyond the extreme level
    # it was clipped to (the scale search deliberately clips outliers for a finer grid)
    clipped = ((w < lo) & (np.abs(deq - lo) <= eps)) | ((w > hi) & (np.abs(deq - hi) <= eps))
    assert np.all(near | clipped)
    rel = np.sqrt(np.mean((deq - w) ** 2, axis=1) / np.mean(w ** 2, axis=1))
    assert np.nanmax(rel[5:]) < {32: 0.13, 64: 0.15, 128: 0.17, -1: 0.2}[fmt.group_size]


@pytest.mark.parametrize("dist", ["normal", "laplace", "student_t"])
def test_int4_sym_is_more_accurate_than_q4_0_and_asym_than_q4_1(dist):
    rng = np.random.default_rng(5)
    w = {"normal": rng.standard_normal, "laplace": rng.laplace,
         "student_t": lambda size: rng.standard_t(4, size=size)}[dist](size=(512, 512)).astype(np.float32)

    def mse(fmt):
        return float(np.mean((fmt.dequantize(fmt.quantize(w)) - w) ** 2))

    assert mse(QuantFormat("int4", "sym", 32)) < 0.97 * mse(QuantFormat.gguf("q4_0"))
    assert mse(QuantFormat("int4", "asym", 32)) < mse(QuantFormat.gguf("q4_1"))
    # bf16 scales cost little
    assert mse(QuantFormat("int4", "sym", 32, "bf16")) < 1.01 * mse(QuantFormat("int4", "sym", 32))


def test_int4_asym_recovers_q4_1_dequantized_weights():
    w = _weights(64, 512, seed=6)
    q41 = QuantFormat.gguf("q4_1")
    w41 = q41.dequantize(q41.quantize(w))
    fmt = QuantFormat("int4", "asym", 32, "fp32")
    back = fmt.dequantize(fmt.quantize(w41))
    scale = np.abs(w41).max(axis=1, keepdims=True)
    assert np.all(np.abs(back - w41) <= 1e-6 * scale)
    # other formats really do lose information on the same weights
    other = QuantFormat("int4", "sym", 32)
    assert np.abs(other.dequantize(other.quantize(w41)) - w41).max() > 1e-3


def test_int4_nibble_order_is_q4_0_order():
    fmt = QuantFormat("int4", "asym", 64)
    u = np.arange(64) % 16
    w = (0.5 * u - 1.0).astype(np.float32)[None, :]          # exact grid: scale .5, min -1
    w[0, 0], w[0, 1] = -1.0, 6.5                              # make sure u spans 0..15
    blocks = fmt.quantize(w)
    assert blocks["scale"][0, 0] == np.float32(0.5) and blocks["min"][0, 0] == np.float32(-1.0)
    qs = blocks["qs"][0, 0]
    uu = np.rint((w[0] + 1.0) / 0.5).astype(np.uint8)
    for sub in range(2):
        for j in range(16):
            assert qs[16 * sub + j] == uu[32 * sub + j] | (uu[32 * sub + j + 16] << 4)


def test_int8_semantics():
    w = np.linspace(-1, 1, 64, dtype=np.float32)[None, :]
    sym = QuantFormat("int8", "sym", 32).quantize(w)
    assert sym["qs"].dtype == np.int8 and sym["qs"].min() == -127 and sym["qs"].max() == 127
    asym = QuantFormat("int8", "asym", 32).quantize(w)
    assert asym["qs"].dtype == np.uint8 and asym["qs"].min() == 0 and asym["qs"].max() == 255
    assert np.allclose(asym["min"][0], [-1.0, w[0, 32]])


def test_zero_and_constant_groups():
    w = np.zeros((2, 64), np.float32)
    w[1] = 3.0
    for fmt in ALL_FORMATS:
        if fmt.group_size == 128:
            continue
        back = fmt.dequantize(fmt.quantize(w))
        assert np.all(back[0] == 0), fmt
        assert np.allclose(back[1], 3.0, rtol=1e-2), fmt


def test_quantize_accepts_nd_and_other_float_dtypes():
    fmt = QuantFormat("int4")
    w = _weights(12, 64, seed=7)
    b2 = fmt.quantize(w)
    b3 = fmt.quantize(w.reshape(3, 4, 64))
    assert b3.shape == (3, 4, 2) and b3.tobytes() == b2.tobytes()
    assert fmt.dequantize(b3).shape == (3, 4, 64)
    assert fmt.quantize(w.astype(np.float64)).tobytes() == b2.tobytes()
    assert fmt.quantize(w[:, ::-1].copy()[:, ::-1]).tobytes() == b2.tobytes()  # non-contiguous input


def test_nan_and_inf_are_rejected():
    w = np.ones((2, 32), np.float32)
    w[1, 3] = np.nan
    for fmt in (QuantFormat("int4"), QuantFormat("int8", "asym"), QuantFormat.gguf("q4_0")):
        with pytest.raises(ValueError, match="NaN or Inf"):
            fmt.quantize(w)


def test_quantize_large_tensor_is_fast():
    # the SmolLM2 embedding shape must quantize "well under 2 s" (one shared core suffices)
    w = np.random.default_rng(8).standard_normal((49152, 576), dtype=np.float32) * 0.02
    t0 = time.perf_counter()
    QuantFormat("int4", "sym", 32).quantize(w)
    assert time.perf_counter() - t0 < 2.0


# ---------------------------------------------------------------- bf16 helpers
def test_bf16_round_to_nearest_even_matches_torch():
    import torch
    rng = np.random.default_rng(9)
    x = np.concatenate([rng.standard_normal(10000).astype(np.float32),
                        np.array([0.0, -0.0, 1.0, np.inf, -np.inf, 3.4e38, 1e-40], np.float32),
                        # exact ties: 1 + 2^-8 (tie, even -> down) and 1 + 3*2^-8 (tie, odd -> up)
                        np.array([1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8], np.float32)])
    ours = fp32_to_bf16_bits(x)
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(ours, ref)
    assert np.array_equal(bf16_bits_to_fp32(ours), torch.from_numpy(x).to(torch.bfloat16).float().numpy())
    nan = fp32_to_bf16_bits(np.array([np.nan, -np.nan], np.float32))
    assert np.all(np.isnan(bf16_bits_to_fp32(nan)))


# ---------------------------------------------------------------- kernel layout
def _kernel_dequant(kw: KernelWeights) -> np.ndarray:
    """kernels.h in NumPy: bits 4: w = d*u + m (m NULL: d*(u-8)); bits 8: w = d*q + m (or d*q)."""
    n = kw.qs.shape[0]
    if kw.bits == 4:
        b = kw.qs.reshape(n, -1, 16)
        vals = np.concatenate([b & 0x0F, b >> 4], axis=-1).reshape(n, -1).astype(np.float32)
        if kw.m is None:
            vals -= 8
    else:
        vals = kw.qs.view(np.int8).astype(np.float32)
    k = vals.shape[1]
    d = np.repeat(kw.d, kw.group, axis=1)
    out = d * vals
    if kw.m is not None:
        out += np.repeat(kw.m, kw.group, axis=1)
    assert out.shape == (n, k)
    return out


@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=str)
def test_kernel_layout_of_a_matrix_without_rows(fmt):
    """A shard may hold no rows of a matrix: its kernel layout and view are empty, not an error."""
    blocks = fmt.quantize(np.zeros((0, 256), np.float32))
    kw = fmt.to_kernel(blocks)
    assert kw.qs.shape == (0, 256 * fmt.bits // 8) and kw.d.shape[0] == 0
    qs, d, m, group = fmt.kernel_view(blocks)
    assert qs.shape == (0, 256 // group, group * fmt.bits // 8) and d.shape == (0, 256 // group)


@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=str)
def test_to_kernel_layout_dequantizes_like_the_blocks(fmt):
    k = 256
    w = _weights(40, k, seed=10)
    blocks = fmt.quantize(w)
    kw = fmt.to_kernel(blocks)
    group = fmt.block_len(k)
    assert kw.bits == fmt.bits and kw.group == group
    assert kw.qs.dtype == np.uint8 and kw.qs.shape == (40, k * fmt.bits // 8) and kw.qs.flags.c_contiguous
    assert kw.d.dtype == np.float32 and kw.d.shape == (40, k // group) and kw.d.flags.c_contiguous
    assert (kw.m is None) == (not fmt.asym)
    if kw.m is not None:
        assert kw.m.dtype == np.float32 and kw.m.shape == kw.d.shape
    ref = fmt.dequantize(blocks)
    got = _kernel_dequant(kw)
    if fmt.asym and fmt.bits == 8:   # m = min + 128*d is rounded once more
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6 * np.abs(ref).max())
    else:
        assert np.array_equal(got, ref)


@pytest.mark.parametrize("fmt", [QuantFormat.gguf("q4_0"), QuantFormat.gguf("q4_1"), QuantFormat.gguf("q8_0"),
                                 QuantFormat("int4", "sym", 32), QuantFormat("int4", "asym", 64, "bf16"),
                                 QuantFormat("int8", "sym", 128, "bf16"), QuantFormat("int8", "asym", -1),
                                 QuantFormat("int4", "sym", -1, "bf16")], ids=str)
def test_real_kernel_matches_numpy_on_dequantized_weights(fmt):
    from llmrt._kernels._ops import Linear

    w = _weights(48, 256, seed=11)
    blocks = fmt.quantize(w)
    x = np.random.default_rng(12).standard_normal((3, 256)).astype(np.float32)
    lin = Linear.quantized(**fmt.to_kernel(blocks)._asdict(), compute="fp32")
    ref = x.astype(np.float64) @ fmt.dequantize(blocks).T.astype(np.float64)
    np.testing.assert_allclose(lin(x), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


# ---------------------------------------------------------------- QuantFormat API and validation
def test_quantformat_naming_and_serialisation():
    f = QuantFormat("int4", "asym", 64, "bf16")
    assert f.name == "int4_asym_g64_bf16" and f.bits == 4 and f.asym and not f.is_gguf
    assert QuantFormat.from_dict(f.to_dict()) == f
    assert QuantFormat("int8") == QuantFormat("int8", "sym", 32, "fp32")
    g = QuantFormat.gguf("Q4_1")
    assert g == QuantFormat("q4_1") and g.is_gguf and g.name == "q4_1" and g.asym
    assert QuantFormat.from_dict(g.to_dict()) == g
    assert QuantFormat("int8", "sym", -1).name == "int8_sym_per_channel_fp32"
    assert hash(f) == hash(QuantFormat.from_dict(f.to_dict()))


def test_bits_per_weight():
    assert QuantFormat.gguf("q4_0").bits_per_weight == 4.5
    assert QuantFormat.gguf("q4_1").bits_per_weight == 5.0
    assert QuantFormat.gguf("q8_0").bits_per_weight == 8.5
    assert QuantFormat("int4", "sym", 32, "fp32").bits_per_weight == 5.0
    assert QuantFormat("int4", "asym", 128, "bf16").bits_per_weight == 4.25
    assert QuantFormat("int8", "sym", -1).bits_per_weight == 8.0


def test_dtypes_and_block_len():
    f = QuantFormat("int4", "asym", -1, "bf16")
    dt = f.dtype_for(576)
    assert dt.names == ("scale", "min", "qs") and dt["scale"] == np.dtype("<u2")
    assert dt["qs"].shape == (288,) and f.block_len(576) == 576
    assert QuantFormat("int8", "sym", 64).dtype_for(128)["qs"].base == np.dtype("i1")
    assert QuantFormat("int8", "asym", 64).dtype_for(128)["qs"].base == np.dtype("u1")
    assert QuantFormat("int4", "sym", 32).dtype_for(64).names == ("scale", "qs")


@pytest.mark.parametrize("kwargs, match", [
    (dict(weight_dtype="int3"), "weight_dtype"),
    (dict(weight_dtype="int4", alg="zp"), "alg"),
    (dict(weight_dtype="int4", scale_dtype="fp8"), "scale_dtype"),
    (dict(weight_dtype="int4", group_size=48), "multiple of 32"),
    (dict(weight_dtype="int4", group_size=0), "multiple of 32"),
    (dict(weight_dtype="int8", group_size=-2), "multiple of 32"),
    (dict(weight_dtype="q4_0", group_size=64), "GGUF"),
    (dict(weight_dtype="q4_1", alg="sym"), "GGUF"),
])
def test_invalid_formats_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantFormat(**kwargs)


def test_invalid_shapes_raise():
    with pytest.raises(ValueError, match="unsupported GGUF"):
        QuantFormat.gguf("q6_k")
    with pytest.raises(ValueError, match="does not divide"):
        QuantFormat("int4", "sym", 128).quantize(np.zeros((2, 576), np.float32))
    with pytest.raises(ValueError, match="multiple of 32"):
        QuantFormat("int8", "sym", -1).quantize(np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError, match="multiple of 32"):
        QuantFormat.gguf("q8_0").dtype_for(48)
    with pytest.raises(ValueError, match="does not match"):
        QuantFormat("int4", "asym").dequantize(QuantFormat("int4", "sym").quantize(np.zeros((1, 32), np.float32)))
    with pytest.raises(ValueError, match="2-D"):
        QuantFormat("int4").to_kernel(QuantFormat("int4").quantize(np.zeros((2, 2, 32), np.float32)))
    with pytest.raises(TypeError):
        QuantFormat("int4").quantize(np.zeros((2, 32), np.int32))
