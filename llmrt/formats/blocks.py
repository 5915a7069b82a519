"""Block-quantized weight formats as NumPy structured dtypes, with reference (NumPy) quantizers.

Two families live here:

* GGUF Q4_0 / Q4_1 / Q8_0: dtypes byte-identical to llama.cpp's ``block_q4_0`` etc., so a GGUF
  file's tensor data can be viewed zero-copy, and quantizers that reproduce llama.cpp's reference
  algorithms (``quantize_row_q4_0_ref`` ...) bit for bit.
* llmrt group-wise INT4/INT8 (sym/asym, any group size that is a multiple of 32 dividing K, or
  per output channel, fp32 or bf16 scales): one structured record per group.

Every format is named by a :class:`QuantFormat`; a quantized tensor is a structured array of shape
``(n, k // group)``.  :meth:`QuantFormat.to_kernel` converts it to the kernel-facing ``lr_qmat``
layout of ``_kernels/kernels.h`` (split qs / d / m arrays, fp32 scales).

Everything is little-endian on disk, whatever the host, so files are machine independent.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import numpy as np

__all__ = [
    "QK", "Q4_0_DTYPE", "Q4_1_DTYPE", "Q8_0_DTYPE", "F32_DTYPE", "F16_DTYPE",
    "GGUF_FORMAT_NAMES", "WEIGHT_DTYPES", "ALGS", "SCALE_DTYPES",
    "QuantFormat", "KernelWeights", "group_dtype",
    "fp32_to_bf16_bits", "bf16_bits_to_fp32",
]

QK = 32  # elements per nibble sub-block; every quantized K must be a multiple of it (LR_QK)

# ---------------------------------------------------------------- dtypes
# GGUF blocks (ggml-common.h): no padding, ggml_half = IEEE fp16.
Q4_0_DTYPE = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])                 # 18 bytes
Q4_1_DTYPE = np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", (QK // 2,))])   # 20 bytes
Q8_0_DTYPE = np.dtype([("d", "<f2"), ("qs", "i1", (QK,))])                      # 34 bytes
F32_DTYPE = np.dtype("<f4")
F16_DTYPE = np.dtype("<f2")

GGUF_FORMAT_NAMES = ("q4_0", "q4_1", "q8_0")
WEIGHT_DTYPES = ("int4", "int8")
ALGS = ("sym", "asym")
SCALE_DTYPES = ("fp32", "bf16", "fp16")

_GGUF_SPEC = {  # name -> (bits, alg, dtype)
    "q4_0": (4, "sym", Q4_0_DTYPE),
    "q4_1": (4, "asym", Q4_1_DTYPE),
    "q8_0": (8, "sym", Q8_0_DTYPE),
}
_SCALE_NP = {"fp32": np.dtype("<f4"), "bf16": np.dtype("<u2"), "fp16": np.dtype("<f2")}

# Elements processed per chunk: keeps temporaries cache-sized and memory bounded (one chunk of
# scratch per call, never a full-tensor float copy).
_CHUNK_ELEMS = 1 << 17


def group_dtype(bits: int, group: int, asym: bool, scale_dtype: str) -> np.dtype:
    """Structured dtype of one llmrt group: ``scale`` (+ ``min`` when asym) and ``qs``.

    int4 ``qs`` holds group/2 bytes in the GGUF Q4_0 nibble order (per 32-element sub-block,
    byte j = element j low nibble, element j+16 high nibble); int8 ``qs`` holds one byte per
    element (signed for sym, unsigned for asym).
    """
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    if group <= 0 or group % QK:
        raise ValueError(f"group length must be a positive multiple of {QK}, got {group}")
    if scale_dtype not in SCALE_DTYPES:
        raise ValueError(f"unknown scale_dtype {scale_dtype!r}; expected one of {SCALE_DTYPES}")
    sdt = _SCALE_NP[scale_dtype]
    fields: list[tuple[Any, ...]] = [("scale", sdt)]
    if asym:
        fields.append(("min", sdt))
    if bits == 4:
        fields.append(("qs", "u1", (group // 2,)))
    else:
        fields.append(("qs", "u1" if asym else "i1", (group,)))
    return np.dtype(fields)


# ---------------------------------------------------------------- bf16 helpers
def fp32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), round to nearest even; NaN stays a quiet NaN."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    r = ((b + (np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)).astype(np.uint16)
    nan = (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    if nan.any():  # the add above can carry a NaN payload into inf or wrap around
        r[nan] = ((b[nan] >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)
    return r


def bf16_bits_to_fp32(u: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) -> float32 (exact)."""
    return (np.asarray(u).astype(np.uint32) << np.uint32(16)).view(np.float32)


def _encode_scale(s: np.ndarray, scale_dtype: str) -> np.ndarray:
    if scale_dtype == "bf16":
        return fp32_to_bf16_bits(s)
    if scale_dtype == "fp16":
        with np.errstate(over="ignore"):
            out = s.astype(np.float16)
        if not np.isfinite(out[np.isfinite(s)]).all():
            raise ValueError("a scale exceeds the fp16 range (65504): use scale_dtype='fp32' or 'bf16'")
        return out
    return s.astype(_SCALE_NP[scale_dtype])


def _decode_scale(stored: np.ndarray, scale_dtype: str) -> np.ndarray:
    if scale_dtype == "bf16":
        return bf16_bits_to_fp32(stored)
    return np.asarray(stored, dtype=np.float32)


# ---------------------------------------------------------------- nibble packing
def _pack_nibbles(u: np.ndarray) -> np.ndarray:
    """(G, g) values 0..15 -> (G, g/2) bytes in Q4_0 order."""
    G, g = u.shape
    v = u.astype(np.uint8, copy=False).reshape(G, g // QK, 2, QK // 2)
    return (v[:, :, 0, :] | (v[:, :, 1, :] << np.uint8(4))).reshape(G, g // 2)


def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    """(G, g/2) bytes in Q4_0 order -> (G, g) uint8 values 0..15."""
    G, h = qs.shape
    v = qs.reshape(G, h // (QK // 2), 1, QK // 2)
    out = np.empty((G, h // (QK // 2), 2, QK // 2), dtype=np.uint8)
    np.bitwise_and(v[:, :, 0, :], np.uint8(0x0F), out=out[:, :, 0, :])
    np.right_shift(v[:, :, 0, :], np.uint8(4), out=out[:, :, 1, :])
    return out.reshape(G, h * 2)


# ---------------------------------------------------------------- small vector helpers
def _rowsum(a: np.ndarray) -> np.ndarray:
    # einsum is several times faster than .sum(axis=1) over short rows
    return np.einsum("ij->i", a)


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b)


def _rowmax(a: np.ndarray) -> np.ndarray:
    # halving tree of elementwise maxima: faster than a.max(axis=1) for short rows
    m = a
    while m.shape[1] > 1 and m.shape[1] % 2 == 0:
        h = m.shape[1] // 2
        m = np.maximum(m[:, :h], m[:, h:])
    return m.max(axis=1) if m.shape[1] > 1 else m[:, 0].copy()


def _rowmin(a: np.ndarray) -> np.ndarray:
    m = a
    while m.shape[1] > 1 and m.shape[1] % 2 == 0:
        h = m.shape[1] // 2
        m = np.minimum(m[:, :h], m[:, h:])
    return m.min(axis=1) if m.shape[1] > 1 else m[:, 0].copy()


def _safe_inv(d: np.ndarray) -> np.ndarray:
    """1/d with 0 where d == 0 (llama.cpp's ``id = d ? 1.0f/d : 0.0f``), float32."""
    inv = np.zeros_like(d, dtype=np.float32)
    np.divide(np.float32(1), d, out=inv, where=d != 0)
    return inv


def _roundf(v: np.ndarray) -> np.ndarray:
    """C roundf (half away from zero), exact in float32 (floor(|v| + 0.5) is not)."""
    a = np.abs(v)
    f = np.floor(a)
    f += (a - f) >= np.float32(0.5)
    return np.copysign(f, v)


def _check_finite(amax: np.ndarray) -> None:
    # amax (or max/min) is NaN/inf exactly when its group holds a NaN/inf: a free check
    if not np.all(np.isfinite(amax)):
        raise ValueError("cannot quantize weights that contain NaN or Inf")


# ---------------------------------------------------------------- GGUF reference quantizers
# Each takes x (G, 32) float32 and returns the block fields; arithmetic follows ggml-quants.c's
# *_ref functions in float32, fp16 conversion is round-to-nearest-even like GGML_FP32_TO_FP16.
def _q_q4_0(x: np.ndarray, fmt: "QuantFormat") -> dict[str, np.ndarray]:
    imax = np.abs(x).argmax(axis=1)  # first index of the largest magnitude, like the C loop
    vmax = x[np.arange(x.shape[0]), imax]
    _check_finite(vmax)
    d = vmax / np.float32(-8)
    inv = _safe_inv(d)
    q = np.trunc(x * inv[:, None] + np.float32(8.5))
    np.clip(q, 0, 15, out=q)
    return {"d": d.astype(np.float16), "qs": _pack_nibbles(q.astype(np.uint8))}


def _q_q4_1(x: np.ndarray, fmt: "QuantFormat") -> dict[str, np.ndarray]:
    mn, mx = _rowmin(x), _rowmax(x)
    _check_finite(mx - mn)
    d = (mx - mn) / np.float32(15)
    inv = _safe_inv(d)
    q = np.trunc((x - mn[:, None]) * inv[:, None] + np.float32(0.5))
    np.clip(q, 0, 15, out=q)
    return {"d": d.astype(np.float16), "m": mn.astype(np.float16), "qs": _pack_nibbles(q.astype(np.uint8))}


def _q_q8_0(x: np.ndarray, fmt: "QuantFormat") -> dict[str, np.ndarray]:
    amax = _rowmax(np.abs(x))
    _check_finite(amax)
    d = amax / np.float32(127)
    inv = _safe_inv(d)
    q = _roundf(x * inv[:, None])
    return {"d": d.astype(np.float16), "qs": q.astype(np.int8)}


def _dq_q4_0(b: np.ndarray, out: np.ndarray) -> None:
    u = _unpack_nibbles(b["qs"].reshape(len(b), -1)).astype(np.float32)
    u -= np.float32(8)
    np.multiply(b["d"].astype(np.float32)[:, None], u, out=out)


def _dq_q4_1(b: np.ndarray, out: np.ndarray) -> None:
    u = _unpack_nibbles(b["qs"].reshape(len(b), -1)).astype(np.float32)
    np.multiply(b["d"].astype(np.float32)[:, None], u, out=out)
    out += b["m"].astype(np.float32)[:, None]


def _dq_q8_0(b: np.ndarray, out: np.ndarray) -> None:
    np.multiply(b["qs"].astype(np.float32), b["d"].astype(np.float32)[:, None], out=out)


# ---------------------------------------------------------------- llmrt quantizers
# Candidate divisors for int4 sym (our own take on llama.cpp's make_qx_quants idea): the scale
# is vmax/c with vmax the signed value of largest magnitude, so vmax lands on level c of the
# [-8, 7] range.  c = -8 is Q4_0's choice; |c| < 8 wastes a level but rounds the rest on a
# coarser grid, |c| > 8 clips the extreme element for a finer grid everywhere else.  Each
# candidate's rounding is scored by its least-squares error (tried on all groups at once), and
# the winner's scale is refit by least squares.  (Positive c, i.e. vmax on the +7 side, never
# won on Gaussian, Laplace or Student-t test data, so it is not tried.)
_INT4_SYM_CANDIDATES = tuple(-9.0 + i / 3 for i in range(10))  # -9.0 .. -6.0
# Groups longer than 32 have heavier relative tails: also try clipping their extremes harder.
_INT4_SYM_CANDIDATES_LONG = _INT4_SYM_CANDIDATES + (-9.5, -10.0, -11.0, -12.0)
_INT4_SYM_REFITS = 1


def _q_int4_sym(x: np.ndarray, fmt: "QuantFormat") -> dict[str, np.ndarray]:
    G = x.shape[0]
    mx, mn = _rowmax(x), _rowmin(x)
    _check_finite(mx - mn)
    vmax = np.where(mx >= -mn, mx, mn)
    safe_vmax = np.where(vmax == 0, np.float32(1), vmax)
    best_score = np.full(G, -1.0, dtype=np.float32)
    best_scale = np.zeros(G, dtype=np.float32)
    t = np.empty_like(x)
    for c in (_INT4_SYM_CANDIDATES if x.shape[1] <= QK else _INT4_SYM_CANDIDATES_LONG):
        inv = np.float32(c) / safe_vmax
        np.multiply(x, inv[:, None], out=t)
        np.rint(t, out=t)
        # x*inv lies in [-|c|, |c|]: clip only the sides that can overflow (saves passes)
        if c < -8:
            np.maximum(t, np.float32(-8), out=t)
        if abs(c) >= 7.5:
            np.minimum(t, np.float32(7), out=t)
        sxq = _rowdot(x, t)
        sqq = _rowdot(t, t)
        ok = sqq > 0
        # sum (x - s q)^2 is minimised by s = sxq/sqq, leaving sum x^2 - sxq^2/sqq: maximise sxq^2/sqq
        score = np.where(ok, sxq * sxq / np.where(ok, sqq, 1), np.float32(0))
        better = score > best_score
        best_score = np.where(better, score, best_score)
        best_scale = np.where(better, np.where(ok, sxq / np.where(ok, sqq, 1), 0), best_scale).astype(np.float32)
    # Re-round with the refit scale, then refit once more (a Lloyd step): nearest rounding is
    # optimal for a fixed scale and the least-squares scale is optimal for fixed levels, so each
    # step can only lower the error.  The last rounding uses the stored (e.g. bf16) scale.
    scale = best_scale
    for it in range(_INT4_SYM_REFITS + 1):
        stored = _encode_scale(scale, fmt.scale_dtype)
        s = _decode_scale(stored, fmt.scale_dtype)
        np.multiply(x, _safe_inv(s)[:, None], out=t)
        np.rint(t, out=t)
        np.clip(t, -8, 7, out=t)
        if it == _INT4_SYM_REFITS:
            break
        sxq, sqq = _rowdot(x, t), _rowdot(t, t)
        ok = sqq > 0
        scale = np.where(ok, sxq / np.where(ok, sqq, 1), 0).astype(np.float32)
    t += np.float32(8)
    return {"scale": stored, "qs": _pack_nibbles(t.astype(np.uint8))}


def _q_int4_asym(x: np.ndarray, fmt: "QuantFormat") -> dict[str, np.ndarray]:
    L = x.shape[1]
    mn, mx = _rowmin(x), _rowmax(x)
    _check_finite(mx - mn)
    # Pass 1: Q4_1-style min/max grid with a float min.  On data that already is a Q4_1 grid
    # (d*u + m with u spanning 0..15) this recovers d and m, hence the near-lossless requant.
    m0 = _decode_scale(_encode_scale(mn, fmt.scale_dtype), fmt.scale_dtype)
    xc = x - m0[:, None]
    s0 = (mx - m0) / np.float32(15)
    u = xc * _safe_inv(s0)[:, None]
    np.rint(u, out=u)
    np.clip(u, 0, 15, out=u)
    # Pass 2: least-squares refit of (scale, offset) for these levels, on data centred at m0 to
    # avoid float32 cancellation when |min| >> range; then re-round (never increases the error).
    su, suu = _rowsum(u), _rowdot(u, u)
    sx, sxu = _rowsum(xc), _rowdot(xc, u)
    den = L * suu.astype(np.float64) - su.astype(np.float64) ** 2
    ok = den > 0
    den = np.where(ok, den, 1.0)
    s1 = (L * sxu.astype(np.float64) - su * sx.astype(np.float64)) / den
    c1 = (sx - s1 * su) / L
    ok &= s1 > 0
    scale = np.where(ok, s1, s0).astype(np.float32)
    mins = np.where(ok, m0 + c1, m0).astype(np.float32)
    st_scale = _encode_scale(scale, fmt.scale_dtype)
    st_min = _encode_scale(mins, fmt.scale_dtype)
    s, m = _decode_scale(st_scale, fmt.scale_dtype), _decode_scale(st_min, fmt.scale_dtype)
    np.subtract(x, m[:, None], out=u)
    u *= _safe_inv(s)[:, None]
    np.rint(u, out=u)
    np.clip(u, 0, 15, out=u)
    return {"scale": st_scale, "min": st_min, "qs": _pack_nibbles(u.astype(np.uint8))}


def _q_int8_sym(x: np.ndarray, fmt: "QuantFormat") -> dict[str, np.ndarray]:
    amax = _rowmax(np.abs(x))
    _check_finite(amax)
    stored = _encode_scale(amax / np.float32(127), fmt.scale_dtype)
    if fmt.scale_dtype != "fp32":
        # a 16-bit scale may round down so that 127*s < amax and the extreme element clips; take
        # the next value up instead to keep the error within s/2 everywhere.
        short = _decode_scale(stored, fmt.scale_dtype) * np.float32(127) < amax
        if fmt.scale_dtype == "bf16":
            stored = stored + short.astype(np.uint16)
        else:
            stored = np.where(short, np.nextafter(stored, np.float16(np.inf)), stored)
    s = _decode_scale(stored, fmt.scale_dtype)
    q = x * _safe_inv(s)[:, None]
    np.rint(q, out=q)
    np.clip(q, -127, 127, out=q)
    return {"scale": stored, "qs": q.astype(np.int8)}


def _q_int8_asym(x: np.ndarray, fmt: "QuantFormat") -> dict[str, np.ndarray]:
    mn, mx = _rowmin(x), _rowmax(x)
    _check_finite(mx - mn)
    st_min = _encode_scale(mn, fmt.scale_dtype)
    m = _decode_scale(st_min, fmt.scale_dtype)
    st_scale = _encode_scale((mx - m) / np.float32(255), fmt.scale_dtype)
    s = _decode_scale(st_scale, fmt.scale_dtype)
    u = (x - m[:, None]) * _safe_inv(s)[:, None]
    np.rint(u, out=u)
    np.clip(u, 0, 255, out=u)
    return {"scale": st_scale, "min": st_min, "qs": u.astype(np.uint8)}


def _dq_int4(b: np.ndarray, out: np.ndarray, fmt: "QuantFormat") -> None:
    u = _unpack_nibbles(b["qs"]).astype(np.float32)
    s = _decode_scale(b["scale"], fmt.scale_dtype)[:, None]
    if fmt.alg == "sym":
        u -= np.float32(8)
        np.multiply(s, u, out=out)
    else:
        np.multiply(s, u, out=out)
        out += _decode_scale(b["min"], fmt.scale_dtype)[:, None]


def _dq_int8(b: np.ndarray, out: np.ndarray, fmt: "QuantFormat") -> None:
    s = _decode_scale(b["scale"], fmt.scale_dtype)[:, None]
    np.multiply(s, b["qs"].astype(np.float32), out=out)
    if fmt.alg == "asym":
        out += _decode_scale(b["min"], fmt.scale_dtype)[:, None]


_QUANTIZERS: dict[tuple[str, str], Callable[[np.ndarray, "QuantFormat"], dict[str, np.ndarray]]] = {
    ("q4_0", "sym"): _q_q4_0, ("q4_1", "asym"): _q_q4_1, ("q8_0", "sym"): _q_q8_0,
    ("int4", "sym"): _q_int4_sym, ("int4", "asym"): _q_int4_asym,
    ("int8", "sym"): _q_int8_sym, ("int8", "asym"): _q_int8_asym,
}


# ---------------------------------------------------------------- kernel layout
class KernelWeights(NamedTuple):
    """A quantized matrix in the ``lr_qmat`` layout of kernels.h (what ``Linear.quantized`` takes):
    ``Linear.quantized(**kw._asdict())``."""
    qs: np.ndarray          # uint8 (n, k*bits//8), C-contiguous
    d: np.ndarray           # float32 (n, k//group)
    m: np.ndarray | None    # float32 (n, k//group), or None (sym)
    bits: int
    group: int


# ---------------------------------------------------------------- QuantFormat
@dataclasses.dataclass(frozen=True)
class QuantFormat:
    """Names one block format.

    llmrt formats: ``QuantFormat("int4"|"int8", "sym"|"asym", group_size, "fp32"|"bf16")`` with
    group_size a positive multiple of 32 dividing K, or -1 for one group per output row.
    GGUF formats: ``QuantFormat.gguf("q4_0"|"q4_1"|"q8_0")`` (group 32, fp16 scales); the
    unspecified fields of ``QuantFormat("q4_0")`` are filled in the same way.

    Semantics (u unsigned levels, q signed): int4 sym w = scale*(u-8); int4 asym w = scale*u + min;
    int8 sym w = scale*q, q in [-127, 127]; int8 asym w = scale*u + min, u in [0, 255].
    """

    weight_dtype: str
    alg: str | None = None          # default "sym" (GGUF: implied by the type)
    group_size: int | None = None   # default 32
    scale_dtype: str | None = None  # default "fp32" (GGUF: "fp16")

    def __post_init__(self) -> None:
        wd = self.weight_dtype.lower() if isinstance(self.weight_dtype, str) else self.weight_dtype
        if wd in _GGUF_SPEC:
            _, alg, _ = _GGUF_SPEC[wd]
            want = {"alg": alg, "group_size": QK, "scale_dtype": "fp16"}
            for field, value in want.items():
                given = getattr(self, field)
                if given is not None and given != value:
                    raise ValueError(f"GGUF format {wd!r} has {field}={value!r}, got {given!r}; "
                                     f"use QuantFormat.gguf({wd!r})")
            object.__setattr__(self, "weight_dtype", wd)
            for field, value in want.items():
                object.__setattr__(self, field, value)
            return
        if wd not in WEIGHT_DTYPES:
            raise ValueError(f"unknown weight_dtype {self.weight_dtype!r}; expected one of "
                             f"{WEIGHT_DTYPES} (or a GGUF type {GGUF_FORMAT_NAMES} via QuantFormat.gguf)")
        alg = "sym" if self.alg is None else (self.alg.lower() if isinstance(self.alg, str) else self.alg)
        if alg not in ALGS:
            raise ValueError(f"unknown alg {self.alg!r}; expected one of {ALGS}")
        group = 32 if self.group_size is None else self.group_size
        if isinstance(group, bool) or not isinstance(group, (int, np.integer)):
            raise ValueError(f"group_size must be an int, got {group!r}")
        group = int(group)
        if group != -1 and (group <= 0 or group % QK):
            raise ValueError(f"group_size must be a positive multiple of {QK} or -1 (per output "
                             f"channel), got {group}")
        sd = "fp32" if self.scale_dtype is None else (
            self.scale_dtype.lower() if isinstance(self.scale_dtype, str) else self.scale_dtype)
        if sd not in SCALE_DTYPES:
            raise ValueError(f"unknown scale_dtype {self.scale_dtype!r}; expected one of {SCALE_DTYPES}")
        object.__setattr__(self, "weight_dtype", wd)
        object.__setattr__(self, "alg", alg)
        object.__setattr__(self, "group_size", group)
        object.__setattr__(self, "scale_dtype", sd)

    # ---- construction / serialisation
    @classmethod
    def gguf(cls, name: str) -> "QuantFormat":
        """The GGUF block format ``name`` ("q4_0", "q4_1" or "q8_0", any case)."""
        key = name.lower() if isinstance(name, str) else name
        if key not in _GGUF_SPEC:
            raise ValueError(f"unsupported GGUF block type {name!r}; expected one of {GGUF_FORMAT_NAMES}")
        return cls(key)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict; ``QuantFormat.from_dict(f.to_dict()) == f``."""
        return {"weight_dtype": self.weight_dtype, "alg": self.alg,
                "group_size": self.group_size, "scale_dtype": self.scale_dtype}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuantFormat":
        if not isinstance(d, dict) or "weight_dtype" not in d:
            raise ValueError(f"a QuantFormat dict needs at least 'weight_dtype', got {d!r}")
        unknown = set(d) - {"weight_dtype", "alg", "group_size", "scale_dtype"}
        if unknown:
            raise ValueError(f"unknown QuantFormat keys {sorted(unknown)}")
        return cls(**d)

    # ---- properties
    @property
    def is_gguf(self) -> bool:
        return self.weight_dtype in _GGUF_SPEC

    @property
    def bits(self) -> int:
        if self.is_gguf:
            return _GGUF_SPEC[self.weight_dtype][0]
        return 4 if self.weight_dtype == "int4" else 8

    @property
    def asym(self) -> bool:
        return self.alg == "asym"

    @property
    def name(self) -> str:
        """Short name: "q4_0", "int4_sym_g32_fp32", "int8_asym_per_channel_bf16"."""
        if self.is_gguf:
            return self.weight_dtype
        g = "per_channel" if self.group_size == -1 else f"g{self.group_size}"
        return f"{self.weight_dtype}_{self.alg}_{g}_{self.scale_dtype}"

    def __str__(self) -> str:
        return self.name

    @property
    def bits_per_weight(self) -> float:
        """Storage bits per weight including scales/mins.  Per-channel formats depend on K; this
        returns their K -> infinity limit (the weight bits); use ``dtype_for(k).itemsize * 8 / k``
        for the exact value."""
        if self.group_size == -1:
            return float(self.bits)
        return self.dtype_for(self.group_size).itemsize * 8 / self.group_size

    # ---- shapes
    def block_len(self, k: int) -> int:
        """Elements per block (group) for rows of length k; validates k."""
        k = int(k)
        if k <= 0 or k % QK:
            raise ValueError(f"row length K={k} must be a positive multiple of {QK} for quantized "
                             f"format {self.name}")
        g = k if self.group_size == -1 else self.group_size
        if k % g:
            raise ValueError(f"group_size {g} does not divide row length K={k} (format {self.name})")
        return g

    def dtype_for(self, k: int) -> np.dtype:
        """Structured dtype of one block for rows of length k."""
        g = self.block_len(k)
        if self.is_gguf:
            return _GGUF_SPEC[self.weight_dtype][2]
        return group_dtype(self.bits, g, self.asym, self.scale_dtype)

    def row_len(self, blocks: np.ndarray) -> int:
        """K of a block array of this format (checks that its dtype matches)."""
        if not isinstance(blocks, np.ndarray) or blocks.dtype.names is None or blocks.ndim < 1:
            raise TypeError(f"expected a structured block array of format {self.name}, "
                            f"got {type(blocks).__name__} {getattr(blocks, 'dtype', '')}")
        if self.group_size == -1:
            qs = blocks.dtype.fields.get("qs") if blocks.dtype.fields else None
            if qs is None or blocks.shape[-1] != 1:
                raise ValueError(f"{self.name} blocks must have one block per row with a 'qs' field")
            k = int(qs[0].shape[0]) * (2 if self.bits == 4 else 1)
        else:
            k = blocks.shape[-1] * self.group_size
        if blocks.dtype != self.dtype_for(k):
            raise ValueError(f"block dtype {blocks.dtype} does not match format {self.name} "
                             f"for K={k} (expected {self.dtype_for(k)})")
        return k

    # ---- quantize / dequantize
    def quantize(self, w: np.ndarray) -> np.ndarray:
        """Quantize float weights (..., k) -> structured blocks (..., k // group).

        Rows are processed in cache-sized chunks, so extra memory stays around one chunk whatever
        the input's dtype (float16/bfloat16-as-float32/float64 inputs are converted per chunk)."""
        w = np.asarray(w)
        if w.ndim < 1:
            raise ValueError("cannot quantize a scalar")
        if w.dtype.kind != "f":
            raise TypeError(f"weights must be floating point, got {w.dtype}")
        k = w.shape[-1]
        g = self.block_len(k)
        dt = self.dtype_for(k)
        lead = w.shape[:-1]
        n = int(np.prod(lead, dtype=np.int64))
        x2 = w.reshape(n, k)
        out = np.empty((n, k // g), dtype=dt)
        fn = _QUANTIZERS[(self.weight_dtype, self.alg)]
        step = max(1, _CHUNK_ELEMS // k)
        for r0 in range(0, n, step):
            r1 = min(n, r0 + step)
            xc = np.ascontiguousarray(x2[r0:r1], dtype=np.float32).reshape(-1, g)
            fields = fn(xc, self)
            oc = out[r0:r1].reshape(-1)
            for name, val in fields.items():
                oc[name] = val.reshape(oc[name].shape)
        return out.reshape(*lead, k // g)

    def dequantize(self, blocks: np.ndarray) -> np.ndarray:
        """Structured blocks (..., nb) -> float32 weights (..., k)."""
        k = self.row_len(blocks)
        g = self.block_len(k)
        lead = blocks.shape[:-1]
        n = int(np.prod(lead, dtype=np.int64))
        b2 = blocks.reshape(n, k // g)
        out = np.empty((n, k), dtype=np.float32)
        step = max(1, _CHUNK_ELEMS // k)
        for r0 in range(0, n, step):
            r1 = min(n, r0 + step)
            bc = np.ascontiguousarray(b2[r0:r1]).reshape(-1)
            oc = out[r0:r1].reshape(-1, g)
            if self.weight_dtype == "q4_0":
                _dq_q4_0(bc, oc)
            elif self.weight_dtype == "q4_1":
                _dq_q4_1(bc, oc)
            elif self.weight_dtype == "q8_0":
                _dq_q8_0(bc, oc)
            elif self.bits == 4:
                _dq_int4(bc, oc, self)
            else:
                _dq_int8(bc, oc, self)
        return out.reshape(*lead, k)

    def to_kernel(self, blocks: np.ndarray) -> KernelWeights:
        """Blocks (n, nb) -> the kernels.h ``lr_qmat`` layout (copies; done once at load)."""
        qs, d, m, g = self.kernel_view(blocks)
        n, ng, gbytes = qs.shape
        return KernelWeights(np.ascontiguousarray(qs).reshape(n, ng * gbytes), d, m, self.bits, g)

    def kernel_view(self, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
        """Blocks (n, nb) -> (qs, d, m, group) of the ``lr_qmat`` layout with qs a uint8 view
        (n, nb, group bytes) into the records where the bytes need no change (what
        ``Linear.from_parts`` packs from); d and m are float32 copies."""
        if not isinstance(blocks, np.ndarray) or blocks.ndim != 2:
            raise ValueError(f"to_kernel needs a 2-D block array (n, k//group), got "
                             f"{getattr(blocks, 'shape', type(blocks).__name__)}")
        k = self.row_len(blocks)
        g = self.block_len(k)
        n = blocks.shape[0]
        qs = blocks["qs"].reshape(n, k // g, g * self.bits // 8).view(np.uint8)
        if self.is_gguf:
            d = np.ascontiguousarray(blocks["d"], dtype=np.float32)
            m = np.ascontiguousarray(blocks["m"], dtype=np.float32) if self.weight_dtype == "q4_1" else None
            return qs, d, m, g
        d = np.ascontiguousarray(_decode_scale(blocks["scale"], self.scale_dtype), dtype=np.float32)
        m = None
        if self.asym:
            m = np.ascontiguousarray(_decode_scale(blocks["min"], self.scale_dtype), dtype=np.float32)
            if self.bits == 8:
                # kernel int8 levels are signed: q = u - 128 (bit pattern u ^ 0x80), so
                # w = d*u + min = d*q + (min + 128*d)
                qs = qs ^ np.uint8(0x80)
                m = m + np.float32(128) * d
        return qs, d, m, g
