"""The llmrt model file: one memory-mappable file of dense and block-quantized tensors.

Layout (all integers little-endian)::

    [0, 64)        preamble: magic "LLMRT\\0MF", format version u32, flags u32,
                   header offset u64, header length u64, total file size u64,
                   header crc32 u32, reserved u32, reserved u64, preamble crc32 u32, pad u32
    [64, ...)      tensor data, each tensor starting on a 64-byte boundary
    [hdr, end)     JSON header: {"metadata": caller's dict, "tensors": {name: entry}}

The header sits after the data so tensors can be streamed to disk as they are produced (peak
memory: one tensor); the preamble is patched last.  Files are written to a temporary name and
renamed into place, so an interrupted write never leaves a half file under the final name.
Everything is validated on open (magic, version, size, checksums, tensor extents) and errors
are ModelFileError.  Tensor data checksums (crc32 per tensor) are checked on request only, since
that reads the whole file.
"""
from __future__ import annotations

import json
import math
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

import numpy as np

from llmrt.formats.blocks import QuantFormat
from llmrt.formats.errors import ModelFileError, file_error

__all__ = ["ModelFileWriter", "load_model_file", "read_model_file_metadata", "is_llmrt_file",
           "MODEL_FILE_MAGIC", "MODEL_FILE_VERSION"]

MODEL_FILE_MAGIC = b"LLMRT\x00MF"
MODEL_FILE_VERSION = 1
ALIGN = 64
_PREAMBLE = struct.Struct("<8sIIQQQIIQII")  # 64 bytes
assert _PREAMBLE.size == 64
_DAMAGED = "the file is damaged; delete it and convert/save the model again"
_MAX_ROW = 1 << 24          # elements in a block tensor's row: far above any model's, far below a bad size
# far above any real tensor, and inside what NumPy can shape (a zero-size array of dims 2**63 cannot be made)
_MAX_DIMS, _MAX_DIM = 8, 1 << 48
# the dense dtypes the writer records (little-endian; dtype.str of float, int, uint and bool arrays)
_DENSE_DTYPES = {np.dtype(t).newbyteorder("<").str: np.dtype(t).newbyteorder("<")
                 for t in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "?")}


def is_llmrt_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a file starting with the llmrt model-file magic."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MODEL_FILE_MAGIC)) == MODEL_FILE_MAGIC
    except OSError:
        return False


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, QuantFormat):
        return o.to_dict()
    if isinstance(o, (Path, os.PathLike)):
        return os.fspath(o)
    raise TypeError(f"metadata value of type {type(o).__name__} is not JSON-serialisable")


def _tensor_bytes(arr: np.ndarray) -> memoryview:
    """The array's bytes in C order, little-endian, without copying when already so."""
    a = np.ascontiguousarray(arr)
    return memoryview(a.reshape(-1).view(np.uint8)) if a.size else memoryview(b"")


def _remove_orphaned_temporaries(path: Path) -> None:
    """Delete `<name>.<pid>.tmp` files beside path left by writers that were killed (their process is
    gone), so a crash mid-save does not leave hundreds of MB behind for good.  POSIX only: elsewhere
    there is no harmless way to ask whether a pid is alive, and the files stay."""
    if os.name != "posix":
        return
    for tmp in path.parent.glob(f"{glob_escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 1:-len(".tmp")]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)            # signal 0: only asks whether the process exists
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (PermissionError, OverflowError):
            pass                            # alive under another user, or not a pid: leave it


class ModelFileWriter:
    """Stream tensors into an llmrt model file.

    >>> with ModelFileWriter(path) as w:
    ...     w.add("embed", emb)                      # dense float32/float16/int arrays
    ...     w.add("layers.0.q.weight", blocks, fmt)  # structured blocks of QuantFormat fmt
    ...     w.finish({"config": {...}})

    Leaving the ``with`` block by an exception (or without finish()) deletes the temporary file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        # unique per process so two processes building the same cache file cannot interleave
        self.tmp_path = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        _remove_orphaned_temporaries(self.path)
        self._f = open(self.tmp_path, "wb")
        self._f.write(b"\0" * _PREAMBLE.size)
        self._pos = _PREAMBLE.size
        self._tensors: dict[str, dict[str, Any]] = {}
        self._done = False
        self._aborted = False

    def __enter__(self) -> "ModelFileWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._done or self._aborted:
            return
        self.abort()
        if exc_type is None:
            raise RuntimeError(f"ModelFileWriter for {self.path} was closed without finish(); nothing was written")

    def add(self, name: str, array: np.ndarray, fmt: QuantFormat | None = None) -> None:
        """Append one tensor: dense (fmt None) or structured blocks of format ``fmt``."""
        if self._done or self._f.closed:
            raise RuntimeError("this ModelFileWriter is already finished or aborted")
        if not isinstance(name, str) or not name:
            raise ValueError(f"tensor names must be non-empty strings, got {name!r}")
        if name in self._tensors:
            raise ValueError(f"tensor {name!r} was already added")
        if not isinstance(array, np.ndarray):
            array = np.asarray(array)
        entry: dict[str, Any] = {"shape": list(array.shape)}
        if fmt is None:
            if array.dtype.names is not None:
                raise ValueError(f"tensor {name!r} is a structured block array: pass its QuantFormat")
            if array.dtype.kind not in "fiub":
                raise TypeError(f"tensor {name!r} has unsupported dtype {array.dtype}")
            if array.dtype.byteorder == ">":
                array = array.astype(array.dtype.newbyteorder("<"))
            entry.update(kind="dense", dtype=array.dtype.str)
        else:
            if not isinstance(fmt, QuantFormat):
                raise TypeError(f"fmt must be a QuantFormat or None, got {type(fmt).__name__}")
            k = fmt.row_len(array)  # validates the dtype against the format
            entry.update(kind="blocks", format=fmt.to_dict(), k=k)
        pad = -self._pos % ALIGN
        if pad:
            self._f.write(b"\0" * pad)
            self._pos += pad
        data = _tensor_bytes(array)
        self._f.write(data)
        entry.update(offset=self._pos, nbytes=data.nbytes, crc32=zlib.crc32(data))
        self._pos += data.nbytes
        self._tensors[name] = entry

    def finish(self, metadata: dict[str, Any] | None = None) -> Path:
        """Write the header, patch the preamble and move the file into place."""
        if self._done or self._f.closed:
            raise RuntimeError("this ModelFileWriter is already finished or aborted")
        # serialise first: a metadata mistake leaves the writer open so finish() can be retried
        header = json.dumps({"metadata": metadata or {}, "tensors": self._tensors},
                            default=_json_default, separators=(",", ":")).encode()
        try:
            pad = -self._pos % ALIGN
            self._f.write(b"\0" * pad)
            hdr_off = self._pos + pad
            self._f.write(header)
            size = hdr_off + len(header)
            pre = _PREAMBLE.pack(MODEL_FILE_MAGIC, MODEL_FILE_VERSION, 0, hdr_off, len(header), size,
                                 zlib.crc32(header), 0, 0, 0, 0)
            pre = pre[:56] + struct.pack("<II", zlib.crc32(pre[:56]), 0)
            self._f.seek(0)
            self._f.write(pre)
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            os.replace(self.tmp_path, self.path)
        except BaseException:
            self.abort()
            raise
        self._done = True
        return self.path

    def abort(self) -> None:
        """Discard everything written so far."""
        self._aborted = True
        if not self._f.closed:
            self._f.close()
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass


# ---------------------------------------------------------------- reading
def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    """Validated (header dict, header offset) of an llmrt model file."""
    if not path.exists():
        raise FileNotFoundError(f"llmrt model file not found: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        pre = f.read(_PREAMBLE.size)
        if pre[:len(MODEL_FILE_MAGIC)] != MODEL_FILE_MAGIC:
            if pre and len(pre) < len(MODEL_FILE_MAGIC) and MODEL_FILE_MAGIC.startswith(pre):
                raise file_error(path, f"is truncated ({size} bytes)", _DAMAGED)
            raise file_error(path, f"is not an llmrt model file (starts with {pre[:8]!r}, expected "
                             f"{MODEL_FILE_MAGIC!r})", "pass a file written by llmrt (Model.save / `llmrt convert`)")
        if len(pre) < _PREAMBLE.size:
            raise file_error(path, f"is truncated ({size} bytes, shorter than the {_PREAMBLE.size}-byte preamble)",
                             _DAMAGED)
        magic, version, _flags, hdr_off, hdr_len, want_size, hdr_crc, _r0, _r1, pre_crc, _pad = _PREAMBLE.unpack(pre)
        if zlib.crc32(pre[:56]) != pre_crc:
            raise file_error(path, "has a corrupt preamble (checksum mismatch)", _DAMAGED)
        if version > MODEL_FILE_VERSION:
            raise file_error(path, f"was written by a newer llmrt (model file format version {version}; "
                             f"this llmrt reads up to version {MODEL_FILE_VERSION})",
                             "upgrade llmrt, or convert the model again with this version")
        if version < 1:
            raise file_error(path, f"has an invalid format version {version}", _DAMAGED)
        if size < want_size:
            raise file_error(path, f"is truncated: {size} bytes, but it was written with {want_size}", _DAMAGED)
        if size > want_size:
            raise file_error(path, f"has {size - want_size} unexpected bytes after its end ({want_size} bytes)",
                             _DAMAGED)
        if hdr_off < _PREAMBLE.size or hdr_off + hdr_len != want_size:
            raise file_error(path, f"has an inconsistent preamble (header at {hdr_off}+{hdr_len}, size {want_size})",
                             _DAMAGED)
        f.seek(hdr_off)
        raw = f.read(hdr_len)
    if zlib.crc32(raw) != hdr_crc:
        raise file_error(path, "has a corrupt header (checksum mismatch)", _DAMAGED)
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise file_error(path, f"has an unreadable header ({exc})", _DAMAGED) from None
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), dict):
        raise file_error(path, "has a header without a tensor table", _DAMAGED)
    return header, hdr_off


def _entry_dtype(path: Path, name: str, e: dict[str, Any]) -> tuple[np.dtype, QuantFormat | None]:
    try:
        if e["kind"] == "dense":
            # a table lookup: np.dtype() parses arbitrary strings (subarrays, commas, even Python literals)
            dt = _DENSE_DTYPES.get(e["dtype"]) if isinstance(e["dtype"], str) else None
            if dt is None:
                raise ValueError(f"dtype {str(e['dtype'])[:40]!r}")
            return dt, None
        if e["kind"] == "blocks":
            fmt = QuantFormat.from_dict(e["format"])
            k = e["k"]
            if isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= _MAX_ROW:
                raise ValueError(f"row length k {str(k)[:40]}")
            return fmt.dtype_for(k), fmt
        raise ValueError(f"kind {e['kind']!r}")
    except (KeyError, TypeError, ValueError) as exc:
        raise file_error(path, f"has an invalid table entry for tensor {name!r} ({exc})", _DAMAGED) from None


def read_model_file_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The caller metadata of a model file (validated, without mapping tensor data)."""
    header, _ = _read_header(Path(path))
    return header.get("metadata", {})


def _int_field(path: Path, name: str, e: dict[str, Any], key: str) -> int:
    v = e.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise file_error(path, f"has an invalid table entry for tensor {name!r} ({key} is {v!r}, not a "
                         f"non-negative integer)", _DAMAGED)
    return v


def _entry_shape(path: Path, name: str, e: dict[str, Any]) -> tuple[int, ...]:
    shape = e.get("shape")
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS or \
            any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < _MAX_DIM for s in shape):
        raise file_error(path, f"has an invalid table entry for tensor {name!r} (shape {repr(shape)[:80]} is not a "
                         f"list of at most {_MAX_DIMS} non-negative integers below 2**48)", _DAMAGED)
    return tuple(shape)


def _entry_crc(path: Path, name: str, e: dict[str, Any]) -> int | None:
    """The tensor's recorded crc32; None when the entry has none (nothing to verify against)."""
    crc = e.get("crc32")
    if crc is None:
        return None
    if isinstance(crc, bool) or not isinstance(crc, int) or not 0 <= crc < 1 << 32:
        raise file_error(path, f"has an invalid table entry for tensor {name!r} (crc32 {crc!r})", _DAMAGED)
    return crc


def _check_no_overlap(path: Path, spans: list[tuple[int, int, str]]) -> None:
    prev_end, prev = 0, None
    for off, nbytes, name in sorted(spans):
        if nbytes and off < prev_end:
            raise file_error(path, f"tensors {prev!r} and {name!r} overlap in the file", _DAMAGED)
        if nbytes:
            prev_end, prev = off + nbytes, name


_VERIFY_CHUNK = 8 << 20
_VERIFY_THREADS = 4     # zlib.crc32 drops the GIL: two threads check a 700 MB file in 0.3 s instead of 0.5 s


def _verify_spans(path: Path, spans: list[tuple[int, int, str, int | None]]) -> str | None:
    """The first tensor of spans whose data does not match its crc32, or None.  Reads through a small
    buffer: the pages go to the page cache (the mapping that follows is warm) but not into this
    process's resident set."""
    chunk = min(_VERIFY_CHUNK, max((s[1] for s in spans), default=0))
    buf = memoryview(bytearray(chunk))
    with open(path, "rb", buffering=0) as f:
        for off, nbytes, name, want in spans:
            f.seek(off)
            crc, left = 0, nbytes
            while left:
                n = f.readinto(buf[:min(left, chunk)])
                if not n:
                    return name
                crc = zlib.crc32(buf[:n], crc)
                left -= n
            if crc != want:
                return name
    return None


def _verify_data(path: Path, spans: list[tuple[int, int, str, int | None]]) -> None:
    """Check each tensor's recorded crc32 (entries without one are skipped)."""
    todo = sorted(s for s in spans if s[3] is not None)
    small = sum(s[1] for s in todo) < _VERIFY_CHUNK * 8          # not worth a thread pool
    n = 1 if small else max(1, min(_VERIFY_THREADS, os.cpu_count() or 1, len(todo)))
    if n == 1:
        bad = [name] if (name := _verify_spans(path, todo)) else []
    else:
        with ThreadPoolExecutor(n) as pool:
            bad = [name for name in pool.map(lambda part: _verify_spans(path, part), [todo[i::n] for i in range(n)])
                   if name]
    if bad:
        raise file_error(path, f"tensor {min(bad)!r} is corrupt (data checksum mismatch)", _DAMAGED)


def load_model_file(path: str | os.PathLike, verify: bool = False
                    ) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, QuantFormat]]:
    """Open a model file: (metadata, {name: read-only array view of one np.memmap},
    {name: QuantFormat for the block tensors}).  ``verify=True`` also checks every tensor's crc32
    (reads the whole file once, about 2 GB/s; tensors of files without a recorded crc32 are not
    checked).  The table is always checked: types, shapes against byte sizes, extents, overlaps."""
    path = Path(path)
    header, hdr_off = _read_header(path)
    metadata = header.get("metadata", {})
    if not isinstance(metadata, dict):
        raise file_error(path, f"has a header whose metadata is a {type(metadata).__name__}, not an object",
                         _DAMAGED)
    spans: list[tuple[int, int, str, int | None]] = []
    entries: dict[str, tuple[np.dtype, QuantFormat | None, tuple[int, ...], int, int]] = {}
    for name, e in header["tensors"].items():
        if not isinstance(e, dict):
            raise file_error(path, f"has an invalid table entry for tensor {name!r} (not an object)", _DAMAGED)
        dt, fmt = _entry_dtype(path, name, e)
        shape = _entry_shape(path, name, e)
        off, nbytes = _int_field(path, name, e, "offset"), _int_field(path, name, e, "nbytes")
        if nbytes != math.prod(shape) * dt.itemsize:     # Python ints: no overflow on huge shapes
            raise file_error(path, f"tensor {name!r}: {nbytes} bytes do not hold shape {list(shape)} of {dt}",
                             _DAMAGED)
        if off < _PREAMBLE.size or off % ALIGN or off + nbytes > hdr_off:
            raise file_error(path, f"tensor {name!r} lies outside the data region ([{off}, {off + nbytes}) "
                             f"vs [{_PREAMBLE.size}, {hdr_off}))", _DAMAGED)
        spans.append((off, nbytes, name, _entry_crc(path, name, e)))
        entries[name] = (dt, fmt, shape, off, nbytes)
    _check_no_overlap(path, [(off, n, name) for off, n, name, _ in spans])
    if verify:
        _verify_data(path, spans)
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    arrays: dict[str, np.ndarray] = {}
    formats: dict[str, QuantFormat] = {}
    for name, (dt, fmt, shape, off, nbytes) in entries.items():
        arrays[name] = mm[off:off + nbytes].view(dt).reshape(shape)
        if fmt is not None:
            formats[name] = fmt
    return metadata, arrays, formats
