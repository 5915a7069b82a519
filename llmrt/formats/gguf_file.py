"""Read GGUF files (v2/v3, little-endian) zero-copy with the ``gguf`` package.

Tensors come back as views of one read-only ``np.memmap``: F32/F16 (and the integer/F64 types)
as plain arrays in NumPy order (reversed ``ne``: a matrix is ``(ne[1], ne[0])``), Q4_0/Q4_1/Q8_0 as
structured block arrays of :mod:`llmrt.formats.blocks` (``(ne[1], ne[0] // 32)``) with their
:class:`QuantFormat`.  Other GGML types (K-quants, IQ*, ...) raise NotImplementedError when read,
so the metadata and tokenizer of any GGUF stay readable.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from llmrt.formats import _identity
from llmrt.formats.blocks import QuantFormat
from llmrt.formats.errors import ModelFileError, file_error

__all__ = ["GGUFFile", "GGUFTensorInfo", "is_gguf_file", "unpermute_rotary_rows", "permute_rotary_rows"]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
_BLOCK_TYPES = {"Q4_0": "q4_0", "Q4_1": "q4_1", "Q8_0": "q8_0"}
_DENSE_TYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I8": "i1", "I16": "<i2", "I32": "<i4", "I64": "<i8"}


def is_gguf_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a file starting with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


@dataclasses.dataclass(frozen=True)
class GGUFTensorInfo:
    """One entry of a GGUF tensor table."""
    name: str
    ggml_type: str                 # GGML type name, e.g. "Q4_1", "F32", "Q6_K"
    shape: tuple[int, ...]         # NumPy order (reversed ne); blocks: logical element shape
    offset: int                    # absolute byte offset of the data in the file
    nbytes: int
    fmt: QuantFormat | None        # block format (None for dense and unsupported types)

    @property
    def supported(self) -> bool:
        return self.ggml_type in _BLOCK_TYPES or self.ggml_type in _DENSE_TYPES


class _ShortRead(Exception):
    def __init__(self, offset: int, want: int, have: int, in_data: bool) -> None:
        super().__init__(offset, want, have)
        self.offset, self.want, self.have, self.in_data = offset, want, have, in_data


_CHECKED_READER = None


def _checked_reader_class():
    """A GGUFReader that raises on reads past the end of the file.

    The stock reader silently returns short arrays there: a truncated file then fails with an
    unrelated reshape error, and a corrupt array length can make it loop for a very long time on
    empty reads.  Every read goes through ``_get`` (private API: should it disappear, this check
    just stops applying).  Costs ~10% of the parse time."""
    global _CHECKED_READER
    if _CHECKED_READER is not None:
        return _CHECKED_READER
    from gguf import GGUFReader

    class _CheckedReader(GGUFReader):
        def _get(self, offset, dtype, count=1, *args, **kwargs):  # type: ignore[override]
            want = int(count) * np.dtype(dtype).itemsize
            if int(offset) + want > len(self.data):
                in_data = offset >= getattr(self, "data_offset", 1 << 62)
                raise _ShortRead(int(offset), want, max(0, len(self.data) - int(offset)), in_data)
            return super()._get(offset, dtype, count, *args, **kwargs)

    _CHECKED_READER = _CheckedReader
    return _CheckedReader


def _field_value(field: Any) -> Any:
    """A GGUF metadata value as plain Python (str, int, float, bool, list)."""
    try:
        return field.contents()
    except UnicodeDecodeError:
        # Some vocabularies hold byte strings that are not UTF-8: keep their bytes recoverable
        # (s.encode("utf-8", "surrogateescape")) rather than failing or replacing them.
        def dec(part: np.ndarray) -> str:
            return bytes(part).decode("utf-8", "surrogateescape")
        from gguf import GGUFValueType
        if field.types[0] == GGUFValueType.ARRAY:
            return [dec(field.parts[i]) for i in field.data]
        return dec(field.parts[-1])


class GGUFFile:
    """A memory-mapped GGUF file: ``metadata`` (plain dict) and zero-copy tensors.

    >>> gg = GGUFFile(path)
    >>> arr, fmt = gg.tensor("blk.0.attn_q.weight")    # structured blocks + QuantFormat.gguf("q4_1")
    >>> for name, arr, fmt in gg.iter_tensors(): ...
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"GGUF file not found: {self.path}")
        if self.path.is_dir():
            raise IsADirectoryError(f"{self.path} is a directory, not a GGUF file")
        self.version = self._check_preamble()
        try:
            reader = _checked_reader_class()(self.path, "r")
        except _ShortRead as sr:
            raise self._short_read_error(sr) from None
        except Exception as exc:  # the gguf package raises assorted errors on damaged files
            raise file_error(self.path, f"has a corrupt GGUF header ({type(exc).__name__}: {exc})",
                             "the file is damaged or was written by an incompatible tool; fetch it again "
                             "or re-convert it") from exc
        if reader.byte_order != "I":
            raise file_error(self.path, "is a big-endian GGUF file", "llmrt reads little-endian GGUF files only; "
                             "convert it with gguf-py's scripts/gguf_convert_endian.py")
        # the reader itself is not kept: its field objects (one NumPy view per vocabulary string,
        # ~200k of them for a 49k-token vocabulary) would hold over 100 MB
        self._data: np.memmap = reader.data
        self.data_offset = int(reader.data_offset)
        self.alignment = int(reader.alignment)
        self.metadata: dict[str, Any] = {
            name: _field_value(f) for name, f in reader.fields.items() if not name.startswith("GGUF.")
        }
        size = len(self._data)
        infos: dict[str, GGUFTensorInfo] = {}
        for t in reader.tensors:
            tname = t.tensor_type.name
            shape = tuple(int(s) for s in reversed(t.shape.tolist()))
            fmt = QuantFormat.gguf(_BLOCK_TYPES[tname]) if tname in _BLOCK_TYPES else None
            end = int(t.data_offset) + int(t.n_bytes)
            if end > size:  # normally caught while parsing; kept as a guard for other readers
                raise file_error(self.path, f"is truncated: tensor {t.name!r} ends at byte {end} but the file "
                                 f"has {size} bytes", "the download or copy was cut short; fetch the file again")
            infos[t.name] = GGUFTensorInfo(t.name, tname, shape, int(t.data_offset), int(t.n_bytes), fmt)
        self.tensor_info: dict[str, GGUFTensorInfo] = infos
        self._views = {t.name: t.data for t in reader.tensors}
        del reader

    # ---- validation helpers
    def _check_preamble(self) -> int:
        with open(self.path, "rb") as f:
            head = f.read(8)
        if len(head) < 8:
            raise file_error(self.path, f"is not a GGUF file (only {len(head)} bytes long)",
                             "the file is empty or was cut short; fetch it again")
        if head[:4] != GGUF_MAGIC:
            raise file_error(self.path, f"is not a GGUF file (starts with {head[:4]!r}, expected {GGUF_MAGIC!r})",
                             "pass a .gguf file, a Hugging Face model directory or an llmrt model file")
        version = int.from_bytes(head[4:8], "little")
        if version & 0xFFFF == 0 and version:
            raise file_error(self.path, "is a big-endian GGUF file", "llmrt reads little-endian GGUF files "
                             "only; convert it with gguf-py's scripts/gguf_convert_endian.py")
        if version not in SUPPORTED_VERSIONS:
            what = "too old" if version < min(SUPPORTED_VERSIONS) else "newer than this reader understands"
            raise file_error(self.path, f"has GGUF version {version}, {what} (supported: "
                             f"{', '.join(map(str, SUPPORTED_VERSIONS))})",
                             "re-convert it with a current llama.cpp, or upgrade the gguf package and llmrt")
        return version

    def _short_read_error(self, sr: _ShortRead) -> ModelFileError:
        size = self.path.stat().st_size
        if sr.in_data:
            return file_error(self.path, f"is truncated: the tensor table places data up to byte "
                              f"{sr.offset + sr.want} but the file has {size} bytes",
                              "the download or copy was cut short; fetch the file again")
        return file_error(self.path, f"has a corrupt or truncated header: a field at byte {sr.offset} "
                          f"needs {sr.want} bytes but only {sr.have} remain",
                          "the file is damaged or was cut short; fetch it again or re-convert it")

    # ---- mapping-like access
    @property
    def tensor_names(self) -> list[str]:
        return list(self.tensor_info)

    def __len__(self) -> int:
        return len(self.tensor_info)

    def __contains__(self, name: object) -> bool:
        return name in self.tensor_info

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensor_info)

    def tensor(self, name: str) -> tuple[np.ndarray, QuantFormat | None]:
        """Zero-copy view of one tensor and its block format (None for dense arrays)."""
        info = self.tensor_info.get(name)
        if info is None:
            raise KeyError(f"{self.path} has no tensor {name!r}")
        view = self._views[name]
        if info.fmt is not None:
            return view.view(info.fmt.dtype_for(info.shape[-1])), info.fmt
        if info.ggml_type in _DENSE_TYPES:
            return view, None
        raise NotImplementedError(
            f"{self.path}: tensor {name!r} has GGML type {info.ggml_type}, which llmrt cannot read yet "
            f"(supported: {', '.join([*_DENSE_TYPES, *_BLOCK_TYPES])}); use a GGUF quantized to Q4_0, Q4_1, "
            f"Q8_0 or F16, or load the Hugging Face checkpoint instead")

    def iter_tensors(self) -> Iterator[tuple[str, np.ndarray, QuantFormat | None]]:
        """(name, array, format) for every tensor in file order."""
        for name in self.tensor_info:
            arr, fmt = self.tensor(name)
            yield name, arr, fmt

    def dequantize(self, name: str) -> np.ndarray:
        """A tensor as float32 (a copy), whatever its storage type."""
        arr, fmt = self.tensor(name)
        return fmt.dequantize(arr) if fmt is not None else np.asarray(arr, dtype=np.float32)

    def identity(self) -> str:
        """Fingerprint of the file (header in full, data sampled; see _identity)."""
        h = _identity.new_hash()
        _identity.update_with_file(h, self.path, header_end=self.data_offset)
        return h.hexdigest()[:32]

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, version={self.version}, tensors={len(self)})"


# ---------------------------------------------------------------- rotary row order
def _rotary_rows(x: np.ndarray, n_head: int, inverse: bool) -> np.ndarray:
    x = np.asarray(x)
    if n_head <= 0:
        raise ValueError(f"n_head must be positive, got {n_head}")
    rows = x.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"{rows} rows cannot be split into {n_head} heads of an even number of rows")
    half = rows // n_head // 2
    rest = x.shape[1:]
    # forward (HF -> GGUF): rows (head, pair, half) -> (head, half, pair); inverse swaps back
    src = (n_head, half, 2) if inverse else (n_head, 2, half)
    return np.ascontiguousarray(x.reshape(*src, *rest).swapaxes(1, 2)).reshape(x.shape)


def unpermute_rotary_rows(x: np.ndarray, n_head: int) -> np.ndarray:
    """Undo convert_hf_to_gguf.py's ``LlamaModel.permute`` of attn_q / attn_k rows (a copy).

    Works on whole rows of any array: dense ``(rows, k)``, structured blocks ``(rows, k // 32)``
    (blocks inside a row are untouched) or 1-D biases.  For attn_k pass the number of KV heads."""
    return _rotary_rows(x, n_head, inverse=True)


def permute_rotary_rows(x: np.ndarray, n_head: int) -> np.ndarray:
    """The forward permutation (HF row order -> llama.cpp's), for writing GGUF-ordered weights."""
    return _rotary_rows(x, n_head, inverse=False)
