"""Read GGUF files (v2/v3, little-endian) zero-copy (header parsed by :mod:`gguf_header`).

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

from llmrt.errors import UnsupportedError
from llmrt.formats import _identity
from llmrt.formats.blocks import QuantFormat
from llmrt.formats.errors import ModelFileError, file_error
from llmrt.formats.gguf_header import HeaderError, check_tensor_layout, parse_header
from llmrt.formats.resident import drop_resident_pages

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


# The metadata keys llmrt reads, with the kind of value each must hold: a wrong type is refused here,
# naming the key, instead of surfacing as a TypeError or ValueError in a family's config reader.
# "{a}" is the file's general.architecture.
_INT, _NUM, _STR, _BOOL = "an integer", "a number", "a string", "a boolean"
_KEY_KINDS: dict[str, str] = {
    "general.architecture": _STR, "general.name": _STR,
    "{a}.block_count": _INT, "{a}.embedding_length": _INT, "{a}.feed_forward_length": _INT,
    "{a}.context_length": _INT, "{a}.vocab_size": _INT, "{a}.attention.head_count": _INT,
    "{a}.attention.head_count_kv": _INT, "{a}.rope.dimension_count": _INT, "{a}.attention.sliding_window": _INT,
    "{a}.rope.freq_base": _NUM, "{a}.rope.scaling.factor": _NUM, "{a}.attention.layer_norm_epsilon": _NUM,
    "{a}.attention.layer_norm_rms_epsilon": _NUM, "{a}.attention.max_alibi_bias": _NUM,
    "{a}.attention.clamp_kqv": _NUM, "{a}.rope.scaling.type": _STR, "{a}.use_parallel_residual": _BOOL,
    "tokenizer.ggml.model": _STR, "tokenizer.ggml.pre": _STR, "tokenizer.chat_template": _STR,
    "tokenizer.ggml.bos_token_id": _INT, "tokenizer.ggml.eos_token_id": _INT,
    "tokenizer.ggml.padding_token_id": _INT, "tokenizer.ggml.unknown_token_id": _INT,
    "tokenizer.ggml.add_bos_token": _BOOL, "tokenizer.ggml.add_eos_token": _BOOL,
    "tokenizer.ggml.add_space_prefix": _BOOL,
}
_LIST_KINDS: dict[str, str] = {"tokenizer.ggml.tokens": _STR, "tokenizer.ggml.merges": _STR,
                               "tokenizer.ggml.scores": _NUM, "tokenizer.ggml.token_type": _INT}


def _is_kind(v: Any, kind: str) -> bool:
    if kind == _STR:
        return isinstance(v, str)
    if kind == _BOOL:
        return isinstance(v, (bool, int))       # some writers store flags as integers
    if isinstance(v, bool):
        return False
    return isinstance(v, int) if kind == _INT else isinstance(v, (int, float))


def _kind_of(v: Any) -> str:
    return f"an array of {len(v)} items" if isinstance(v, list) else f"{type(v).__name__} {v!r}"[:80]


def check_metadata_types(path: Path, metadata: dict[str, Any]) -> None:
    """ModelFileError naming the first key llmrt reads whose value has the wrong type."""
    arch = metadata.get("general.architecture")
    for pattern, kind in _KEY_KINDS.items():
        key = pattern.format(a=arch)
        if key in metadata and not _is_kind(metadata[key], kind):
            raise file_error(path, f"has GGUF metadata {key} = {_kind_of(metadata[key])}, which should be {kind}",
                             "the file was written by a faulty tool; re-convert it")
    for key, kind in _LIST_KINDS.items():
        v = metadata.get(key)
        if v is not None and not (isinstance(v, list) and all(_is_kind(x, kind) for x in v)):
            raise file_error(path, f"has GGUF metadata {key} = {_kind_of(v)}, which should be an array of "
                             f"{kind.split(' ', 1)[1]}s", "the file was written by a faulty tool; re-convert it")


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
        self._data: np.memmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        size = len(self._data)
        try:
            header = parse_header(memoryview(self._data), SUPPORTED_VERSIONS)
        except HeaderError as e:
            if e.short:
                raise file_error(self.path, f"has a corrupt or truncated header: {e}",
                                 "the file is damaged or was cut short; fetch it again or re-convert it") from None
            raise file_error(self.path, f"has a corrupt GGUF header ({e})",
                             "the file is damaged or was written by an incompatible tool; fetch it again "
                             "or re-convert it") from None
        self.data_offset = header.data_offset
        self.alignment = header.alignment
        self.metadata: dict[str, Any] = header.metadata
        problem = check_tensor_layout(header, size)
        if problem and problem[1]:
            raise file_error(self.path, f"is truncated: {problem[0]}",
                             "the download or copy was cut short; fetch the file again")
        if problem:
            raise file_error(self.path, f"has a corrupt tensor table: {problem[0]}",
                             "the file is damaged or was written by a faulty tool; fetch it again or re-convert it")
        check_metadata_types(self.path, self.metadata)
        infos: dict[str, GGUFTensorInfo] = {}
        for t in header.tensors:
            start = self.data_offset + t.offset
            shape = tuple(reversed(t.ne))
            fmt = QuantFormat.gguf(_BLOCK_TYPES[t.ggml_type]) if t.ggml_type in _BLOCK_TYPES else None
            infos[t.name] = GGUFTensorInfo(t.name, t.ggml_type, shape, start, t.nbytes, fmt)
        self.tensor_info: dict[str, GGUFTensorInfo] = infos
        # the header now lives in Python objects: its pages (a tokenizer's vocabulary: MiBs) can go
        drop_resident_pages([self._data[:self.data_offset]])

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
        view = self._view(info)
        if info.fmt is not None:
            return view.view(info.fmt.dtype_for(info.shape[-1])), info.fmt
        if info.ggml_type in _DENSE_TYPES:
            return view, None
        raise UnsupportedError(
            f"{self.path}: tensor {name!r} has GGML type {info.ggml_type}, which llmrt cannot read yet "
            f"(supported: {', '.join([*_DENSE_TYPES, *_BLOCK_TYPES])}); use a GGUF quantized to Q4_0, Q4_1, "
            f"Q8_0 or F16, or load the Hugging Face checkpoint instead")

    def _view(self, info: GGUFTensorInfo) -> np.ndarray:
        raw = self._data[info.offset:info.offset + info.nbytes]
        if info.ggml_type in _DENSE_TYPES:
            arr = raw.view(_DENSE_TYPES[info.ggml_type]).reshape(info.shape)
            # a file with general.alignment below the element size: C reads of it would be misaligned
            return arr if arr.flags.aligned else arr.copy()
        # block types: one row of bytes per row of elements
        return raw.reshape(*info.shape[:-1], -1)

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
