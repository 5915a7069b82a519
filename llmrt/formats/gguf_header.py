"""Parse a GGUF header (metadata and tensor table) straight from the mapped bytes.

The `gguf` package's reader builds a NumPy view per field part (about 200k of them for a
49k-token vocabulary): over 4 s and 100 MB for SmolLM2. Reading the same bytes with `struct`
into plain Python values takes a few tens of milliseconds. Every read is bounds-checked, so a
truncated or corrupt header is an error, never a short read or a spin on huge counts.
"""
from __future__ import annotations

import dataclasses
import struct
from typing import Any

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_ALIGNMENT = 1 << 20        # llama.cpp writes 32; anything near a page size or beyond is damage
MAX_DIMS = 4
MAX_ELEMENTS = (1 << 63) - 1   # ggml counts elements in int64

# GGUF metadata value types -> struct format of a scalar (8 = string, 9 = array)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9

# GGML tensor types: id -> (name, elements per block, bytes per block)
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36), 10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8),
    28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
}


class HeaderError(Exception):
    """The header is malformed; `short` tells a read past the end of the file from other damage."""

    def __init__(self, message: str, short: bool = False) -> None:
        super().__init__(message)
        self.short = short


@dataclasses.dataclass(frozen=True)
class RawTensor:
    name: str
    ggml_type: str
    ne: tuple[int, ...]            # GGML order: ne[0] is the contiguous (row) length
    offset: int                    # relative to the start of the data section
    nbytes: int


@dataclasses.dataclass
class Header:
    version: int
    metadata: dict[str, Any]
    tensors: list[RawTensor]
    alignment: int
    data_offset: int               # absolute byte offset of the data section


class _Cursor:
    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: memoryview) -> None:
        self.buf, self.pos, self.end = buf, 0, len(buf)

    def take(self, n: int) -> int:
        """Reserve n bytes; returns their start."""
        at = self.pos
        if n < 0 or at + n > self.end:
            raise HeaderError(f"a field at byte {at} needs {n} bytes but only {self.end - at} remain", short=True)
        self.pos = at + n
        return at

    def scalar(self, fmt: str) -> Any:
        s = struct.calcsize("<" + fmt)
        return struct.unpack_from("<" + fmt, self.buf, self.take(s))[0]

    def string(self) -> str:
        n = self.scalar("Q")
        at = self.take(n)
        # some vocabularies hold byte strings that are not UTF-8: keep their bytes recoverable
        return str(self.buf[at:at + n], "utf-8", "surrogateescape")

    def value(self, vtype: int, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY and depth < 4:
            return self.array(depth)
        raise HeaderError(f"unknown metadata value type {vtype} at byte {self.pos - 4}")

    def array(self, depth: int) -> list:
        itype = self.scalar("I")
        count = self.scalar("Q")
        if itype in _SCALARS:
            fmt = _SCALARS[itype]
            size = struct.calcsize(fmt)
            at = self.take(count * size)        # checked before anything is allocated
            return list(struct.unpack_from(f"<{count}{fmt}", self.buf, at))
        if itype == _STRING:
            # each string has at least its 8-byte length: a huge count fails here, not after a long loop
            if count * 8 > self.end - self.pos:
                raise HeaderError(f"a string array at byte {self.pos} claims {count} items, more than the "
                                  f"file can hold", short=True)
            out = []
            buf, unpack = self.buf, struct.Struct("<Q").unpack_from
            pos, end = self.pos, self.end
            for _ in range(count):
                if pos + 8 > end:
                    self.pos = pos
                    self.take(8)
                n = unpack(buf, pos)[0]
                pos += 8
                if pos + n > end:
                    self.pos = pos
                    self.take(n)
                out.append(str(buf[pos:pos + n], "utf-8", "surrogateescape"))
                pos += n
            self.pos = pos
            return out
        if count > self.end - self.pos:
            raise HeaderError(f"an array at byte {self.pos} claims {count} items, more than the file can hold",
                              short=True)
        return [self.value(itype, depth + 1) for _ in range(count)]


def parse_header(buf: memoryview, supported_versions: tuple[int, ...]) -> Header:
    """Metadata and tensor table of the GGUF file whose bytes are `buf` (checked against its size)."""
    c = _Cursor(buf)
    if bytes(buf[c.take(4):4]) != GGUF_MAGIC:
        raise HeaderError("does not start with the GGUF magic")
    version = c.scalar("I")
    if version not in supported_versions:
        raise HeaderError(f"version {version}")
    n_tensors, n_kv = c.scalar("Q"), c.scalar("Q")
    # every key-value pair and tensor entry takes well over 8 bytes
    if (n_tensors + n_kv) * 8 > c.end:
        raise HeaderError(f"claims {n_tensors} tensors and {n_kv} metadata fields, more than the file can hold",
                          short=True)
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = c.string()
        if key in metadata:
            raise HeaderError(f"metadata key {key!r} appears twice")
        metadata[key] = c.value(c.scalar("I"))
    tensors = [_tensor_entry(c) for _ in range(n_tensors)]
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if isinstance(alignment, bool) or not isinstance(alignment, int) or not 0 < alignment <= MAX_ALIGNMENT \
            or alignment & (alignment - 1):
        raise HeaderError(f"general.alignment is {alignment!r}, not a power of two from 1 to {MAX_ALIGNMENT}")
    data_offset = -(-c.pos // alignment) * alignment
    return Header(version, metadata, tensors, alignment, data_offset)


def _tensor_entry(c: _Cursor) -> RawTensor:
    """One entry of the tensor table: name, dims, type, offset; its size computed and bounded."""
    name = c.string()
    n_dims = c.scalar("I")
    if not 1 <= n_dims <= MAX_DIMS:
        raise HeaderError(f"tensor {name!r} has {n_dims} dimensions (GGUF allows 1 to {MAX_DIMS})")
    ne = tuple(c.scalar("Q") for _ in range(n_dims))
    type_id = c.scalar("I")
    offset = c.scalar("Q")
    if type_id not in GGML_TYPES:
        raise HeaderError(f"tensor {name!r} has unknown GGML type {type_id}")
    # ne are int64 in ggml: a value of 2**63 or more is negative there
    if any(d == 0 or d > MAX_ELEMENTS for d in ne):
        raise HeaderError(f"tensor {name!r} has dimensions {list(ne)}: each must be from 1 to 2**63 - 1")
    n = 1
    for d in ne:
        n *= d
    if n > MAX_ELEMENTS:
        raise HeaderError(f"tensor {name!r} has dimensions {list(ne)}, more than 2**63 - 1 elements")
    tname, block, block_bytes = GGML_TYPES[type_id]
    if ne[0] % block:
        raise HeaderError(f"tensor {name!r} ({tname}) has rows of {ne[0]} elements, not a multiple of "
                          f"its block size {block}")
    return RawTensor(name, tname, ne, offset, n // block * block_bytes)


def check_tensor_layout(header: Header, file_size: int) -> tuple[str, bool] | None:
    """The first problem with where the tensors' data lies, or None: (message, truncated), where
    truncated tells a file cut short from a corrupt table (duplicate names, misaligned, overlapping
    or wild offsets).  Offsets are unsigned and relative to the data section, so no tensor can start
    inside the header; one near 2**64 is simply past the end."""
    seen: set[str] = set()
    for t in header.tensors:
        if t.name in seen:
            return f"tensor {t.name!r} appears twice", False
        seen.add(t.name)
        if t.offset % header.alignment:
            return f"tensor {t.name!r} starts at data offset {t.offset}, not a multiple of the alignment " \
                   f"{header.alignment}", False
    spans = sorted((t.offset, t.nbytes, t.name) for t in header.tensors)
    prev_end, prev_name, packed = 0, None, True
    for offset, nbytes, name in spans:
        if offset < prev_end:
            return f"tensors {prev_name!r} and {name!r} overlap in the file", False
        # writers pack tensors back to back (padded to the alignment)
        packed = packed and offset - prev_end < header.alignment
        prev_end, prev_name = offset + nbytes, name
    past = [(o, n, name) for o, n, name in spans if header.data_offset + o + n > file_size]
    if not past:
        return None
    offset, nbytes, name = past[0]
    end = header.data_offset + offset + nbytes
    if packed:
        return f"tensor {name!r} ends at byte {end} but the file has {file_size} bytes", True
    offset, nbytes, name = past[-1]
    return f"tensor {name!r} lies at data offset {offset} (to byte {header.data_offset + offset + nbytes}), " \
           f"past the end of the file's {file_size} bytes", False
