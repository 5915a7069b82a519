"""Write GGUF files (v3, little-endian) one tensor at a time with the ``gguf`` package's GGUFWriter.

A GGUF header lists every tensor (name, shape, type, offset) before any data, so writing is two
steps: ``plan`` every tensor (no data), then ``write`` the arrays in the same order.  Only the
array being written is in memory.  The file is written under a temporary name and renamed into
place by ``finish``; an existing file is never replaced unless ``overwrite=True``.

Tensor types: "F32", "F16", "BF16" (dense, NumPy order shapes) and "Q4_0", "Q4_1", "Q8_0"
(structured block arrays of :mod:`llmrt.formats.blocks`, byte-identical to ggml's blocks).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from llmrt.formats.blocks import F16_DTYPE, F32_DTYPE, QuantFormat, fp32_to_bf16_bits

__all__ = ["GGUFStreamWriter", "GGUF_WRITE_TYPES", "encode_tensor", "tensor_nbytes"]

GGUF_WRITE_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0")
_BLOCK = {"Q4_0": "q4_0", "Q4_1": "q4_1", "Q8_0": "q8_0"}
_DENSE_BYTES = {"F32": 4, "F16": 2, "BF16": 2}


def tensor_nbytes(shape: Sequence[int], ggml_type: str) -> int:
    """Bytes of a tensor of NumPy shape ``shape`` stored as ``ggml_type``."""
    n = int(np.prod(shape, dtype=np.int64))
    if ggml_type in _DENSE_BYTES:
        return n * _DENSE_BYTES[ggml_type]
    fmt = QuantFormat.gguf(_BLOCK[ggml_type])
    return n // fmt.group_size * fmt.dtype_for(shape[-1]).itemsize


def encode_tensor(arr: np.ndarray, ggml_type: str) -> np.ndarray:
    """A float array in the on-disk form of ``ggml_type`` (blocks are quantized with the
    reference ggml rounding of :mod:`llmrt.formats.blocks`)."""
    if ggml_type == "F32":
        return np.ascontiguousarray(arr, dtype=F32_DTYPE)
    if ggml_type == "F16":
        a = np.asarray(arr)
        if a.dtype != F16_DTYPE:
            with np.errstate(over="ignore"):
                a = a.astype(F16_DTYPE)
            if not np.isfinite(a).all() and np.isfinite(arr).all():
                raise ValueError("a weight exceeds the fp16 range (65504); write this model as f32 or bf16")
        return np.ascontiguousarray(a)
    if ggml_type == "BF16":
        return fp32_to_bf16_bits(np.asarray(arr, dtype=np.float32))
    if ggml_type in _BLOCK:
        return QuantFormat.gguf(_BLOCK[ggml_type]).quantize(arr)
    raise ValueError(f"cannot write GGML type {ggml_type!r}; supported: {', '.join(GGUF_WRITE_TYPES)}")


class GGUFStreamWriter:
    """Plan tensors, then stream them into a GGUF file.

    >>> w = GGUFStreamWriter(path, "llama")
    >>> w.add("llama.block_count", 2, "uint32")
    >>> w.plan("token_embd.weight", (vocab, hidden), "F16")
    >>> w.open()
    >>> w.write("token_embd.weight", encoded)      # encode_tensor(arr, "F16")
    >>> w.finish()
    """

    def __init__(self, path: str | os.PathLike, arch: str, *, overwrite: bool = False) -> None:
        from gguf import GGUFWriter

        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists; pass --force (overwrite=True) to replace it")
        if self.path.is_dir():
            raise IsADirectoryError(f"{self.path} is a directory; give a file name for the GGUF output")
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"the directory of {self.path} does not exist; create it first")
        self.tmp_path = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        self._w = GGUFWriter(None, arch)
        self._planned: list[tuple[str, tuple[int, ...], str, int]] = []
        self._next = 0
        self._opened = False

    # ---- metadata
    def add(self, key: str, value: Any, vtype: str) -> None:
        """One metadata value; vtype: uint32 | int32 | float32 | bool | string | array."""
        w = self._w
        if vtype == "array" and len(value) == 0:
            return        # GGUF has no typed empty arrays; an absent key reads the same
        {"uint32": w.add_uint32, "int32": w.add_int32, "float32": w.add_float32, "bool": w.add_bool,
         "string": w.add_string, "array": w.add_array, "uint64": w.add_uint64}[vtype](key, value)

    def add_raw(self, key: str, value: Any, gguf_type: Any, sub_type: Any = None) -> None:
        """A metadata value with an explicit gguf.GGUFValueType (copying another file's field)."""
        self._w.add_key_value(key, value, gguf_type, sub_type=sub_type)

    # ---- tensors
    def plan(self, name: str, shape: Sequence[int], ggml_type: str) -> None:
        """Announce a tensor (NumPy-order shape) before any data is written."""
        from gguf import GGMLQuantizationType

        if self._opened:
            raise RuntimeError("all tensors must be planned before open()")
        if ggml_type not in GGUF_WRITE_TYPES:
            raise ValueError(f"cannot write GGML type {ggml_type!r}; supported: {', '.join(GGUF_WRITE_TYPES)}")
        shape = tuple(int(s) for s in shape)
        nbytes = tensor_nbytes(shape, ggml_type)
        self._w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes,
                                raw_dtype=GGMLQuantizationType[ggml_type])
        self._planned.append((name, shape, ggml_type, nbytes))

    def open(self) -> None:
        """Write header, metadata and tensor table to the temporary file."""
        self._w.write_header_to_file(self.tmp_path)
        self._opened = True
        try:
            self._w.write_kv_data_to_file()
            self._w.write_ti_data_to_file()
        except BaseException:
            self.abort()
            raise

    def write(self, name: str, data: np.ndarray) -> None:
        """The next planned tensor's data, already encoded (see encode_tensor)."""
        if not self._opened:
            raise RuntimeError("open() the writer before writing tensor data")
        if self._next >= len(self._planned):
            raise RuntimeError(f"tensor {name!r} was not planned")
        want, shape, ggml_type, nbytes = self._planned[self._next]
        if name != want:
            raise RuntimeError(f"tensors must be written in planned order: expected {want!r}, got {name!r}")
        data = np.ascontiguousarray(data)
        if data.nbytes != nbytes:
            raise ValueError(f"tensor {name!r}: {data.nbytes} bytes given, {nbytes} planned "
                             f"({ggml_type} {list(shape)})")
        self._w.write_tensor_data(data)
        self._next += 1

    def finish(self) -> Path:
        if self._next != len(self._planned):
            missing = self._planned[self._next][0]
            self.abort()
            raise RuntimeError(f"GGUF output incomplete: tensor {missing!r} was planned but not written")
        try:
            self._w.close()
            os.replace(self.tmp_path, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Close and delete the temporary file."""
        self._w.close()
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "GGUFStreamWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
