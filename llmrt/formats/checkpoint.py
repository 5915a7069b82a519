"""Stream the tensors of a local Hugging Face checkpoint one at a time.

Supported layouts: ``model.safetensors``, sharded safetensors (``model.safetensors.index.json``),
``pytorch_model.bin`` and sharded ``.bin`` (``pytorch_model.bin.index.json``); a path to a single
``.safetensors`` / ``.bin`` file works too.

safetensors files are parsed here (8-byte little-endian header length, JSON header, raw bytes)
and memory-mapped, so float32/float16 tensors come back as zero-copy read-only views and only one
tensor at a time is ever converted (bf16 -> float32).  ``.bin`` files go through
``torch.load(weights_only=True, mmap=True)``, one shard at a time.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from llmrt.errors import UnsupportedError
from llmrt.formats import _identity
from llmrt.formats.blocks import bf16_bits_to_fp32
from llmrt.formats.errors import file_error, missing_file_error

__all__ = ["Checkpoint", "iter_checkpoint", "list_checkpoint_tensors", "read_tensor", "checkpoint_identity"]

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"

# safetensors dtype -> NumPy dtype; BF16 is read as uint16 bits and widened to float32
_ST_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}
_ST_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
             "I32": "int32", "I16": "int16", "I8": "int8", "U64": "uint64", "U32": "uint32", "U16": "uint16",
             "U8": "uint8", "BOOL": "bool"}
_MAX_HEADER = 100 << 20  # the safetensors spec caps headers at 100 MB


def _import_torch(path: Path):
    try:
        import torch
    except ImportError:
        raise ImportError(f"reading the PyTorch checkpoint {path} needs PyTorch: pip install torch "
                          f"(or convert the checkpoint to safetensors)") from None
    return torch


# ---------------------------------------------------------------- safetensors
def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice")
        out[k] = v
    return out


def _is_index(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


# far above any real tensor, and inside what NumPy can shape (a zero-size array of dims 2**63 cannot be made)
_MAX_DIMS, _MAX_DIM = 8, 1 << 48


def _is_shape(shape: Any) -> bool:
    return isinstance(shape, list) and len(shape) <= _MAX_DIMS and all(_is_index(d) and d < _MAX_DIM for d in shape)


_DAMAGED = "the file is damaged; download it again"


class _SafetensorsFile:
    """Header of one .safetensors file plus lazy zero-copy views of its tensors."""

    def __init__(self, path: Path) -> None:
        self.path = path
        size = path.stat().st_size
        header, n = self._read_header(path, size)
        self.data_start = 8 + n
        self.header_end = 8 + n
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, e in header.items():
            if name != "__metadata__":
                self.entries[name] = self._entry(name, e, size - self.data_start)
        self._check_overlaps()
        self._mm: np.memmap | None = None

    @staticmethod
    def _read_header(path: Path, size: int) -> tuple[dict, int]:
        """The JSON header (an object, no duplicate keys) and its length."""
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise file_error(path, f"is not a safetensors file (only {size} bytes long)",
                                 "the file is empty or was cut short; download it again")
            n = int.from_bytes(raw, "little")
            if n > _MAX_HEADER or n < 2:
                raise file_error(path, f"is not a valid safetensors file (header length {n})",
                                 "the file is damaged or in another format; download it again")
            if 8 + n > size:
                raise file_error(path, f"is truncated: its header needs {8 + n} bytes but the file has {size}",
                                 "the download was cut short; download it again")
            hdr = f.read(n)
        try:
            header = json.loads(hdr, object_pairs_hook=_no_duplicate_keys)
            if not isinstance(header, dict):
                raise ValueError(f"the header is a JSON {type(header).__name__}, not an object")
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise file_error(path, f"has a corrupt safetensors header ({exc})", _DAMAGED) from None
        return header, n

    def _entry(self, name: str, e: Any, data_size: int) -> tuple[str, tuple[int, ...], int, int]:
        """(dtype, shape, begin, end) of one header entry, checked against the data size."""
        path = self.path
        dtype = e.get("dtype") if isinstance(e, dict) else None
        shape = e.get("shape") if isinstance(e, dict) else None
        offsets = e.get("data_offsets") if isinstance(e, dict) else None
        if not isinstance(dtype, str) or not _is_shape(shape) \
                or not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_index, offsets)):
            raise file_error(path, f"has a corrupt header entry for tensor {name!r}: {str(e)[:200]} (needs a dtype "
                             f"string, a shape of at most {_MAX_DIMS} non-negative integers below 2**48 and two data_offsets)", _DAMAGED)
        begin, end = offsets
        if begin > end:
            raise file_error(path, f"has inverted data_offsets [{begin}, {end}) for tensor {name!r}", _DAMAGED)
        if dtype in _ST_DTYPES:
            want = math.prod(shape) * np.dtype(_ST_DTYPES[dtype]).itemsize
            if end - begin != want:
                raise file_error(path, f"has inconsistent offsets for tensor {name!r} ({dtype} {shape} "
                                 f"needs {want} bytes, header says [{begin}, {end}))", _DAMAGED)
        if end > data_size:
            raise file_error(path, f"is truncated: tensor {name!r} ends at byte {self.data_start + end} "
                             f"but the file has {self.data_start + data_size} bytes",
                             "the download was cut short; download it again")
        return dtype, tuple(shape), begin, end

    def _check_overlaps(self) -> None:
        prev_end, prev = 0, None
        for begin, end, name in sorted((b, e, n) for n, (_, _, b, e) in self.entries.items() if e > b):
            if begin < prev_end:
                raise file_error(self.path, f"has overlapping data for tensors {prev!r} and {name!r}", _DAMAGED)
            prev_end, prev = end, name

    def names(self) -> list[str]:
        # data order, so streaming reads the file front to back
        return sorted(self.entries, key=lambda k: self.entries[k][2])

    def info(self, name: str) -> tuple[tuple[int, ...], str]:
        dtype, shape, _, _ = self.entries[name]
        return shape, _ST_NAMES.get(dtype, dtype)

    def read(self, name: str) -> np.ndarray:
        dtype, shape, begin, end = self.entries[name]
        if dtype not in _ST_DTYPES:
            raise UnsupportedError(f"{self.path}: tensor {name!r} has dtype {dtype[:40]!r}, which llmrt cannot "
                                   f"read (supported: {', '.join(_ST_DTYPES)}); convert the checkpoint to "
                                   f"float32, float16 or bfloat16")
        if end == begin:
            arr = np.zeros(shape, dtype=_ST_DTYPES[dtype])
        else:
            if self._mm is None:
                self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
            arr = self._mm[self.data_start + begin:self.data_start + end].view(_ST_DTYPES[dtype]).reshape(shape)
            if not arr.flags.aligned:           # an offset that is no multiple of the element size
                arr = arr.copy()
        if dtype == "BF16":
            return bf16_bits_to_fp32(arr)
        return arr


# ---------------------------------------------------------------- torch .bin
def _torch_load(path: Path) -> dict[str, Any]:
    torch = _import_torch(path)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        # legacy (pre-zip) pickles cannot be memory-mapped; load them the slow way
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise file_error(path, f"cannot be read by torch.load ({exc})",
                             "the file is damaged or not a PyTorch checkpoint; download it again") from None
    except Exception as exc:
        raise file_error(path, f"cannot be read by torch.load ({type(exc).__name__}: {exc})",
                         "the file is damaged or not a PyTorch checkpoint; download it again") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise file_error(path, f"holds a {type(sd).__name__}, not a state dict", "pass a Hugging Face checkpoint")
    for name, t in sd.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise file_error(path, f"holds the entry {str(name)[:80]!r} of type {type(t).__name__}, not a tensor",
                             "pass a Hugging Face checkpoint (a state dict of tensors)")
    return sd


def _torch_to_numpy(t: Any) -> np.ndarray:
    import torch
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return bf16_bits_to_fp32(t.contiguous().view(torch.int16).numpy().view(np.uint16))
    return t.contiguous().numpy()  # shares the mmap'd storage when already contiguous


def _torch_dtype_name(t: Any) -> str:
    return str(t.dtype).replace("torch.", "")


# ---------------------------------------------------------------- shard index
def _read_shard_index(model_dir: Path, index: Path) -> dict[str, Path]:
    """tensor name -> shard path of a sharded checkpoint's index; every shard is a file inside model_dir."""
    hint = "the index is damaged or was edited; download the checkpoint again"
    try:
        data = json.loads(index.read_bytes(), object_pairs_hook=_no_duplicate_keys)
    except (ValueError, RecursionError) as exc:
        raise file_error(index, f"is not a valid shard index ({exc})", hint) from None
    wm = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wm, dict):
        raise file_error(index, f"has no weight_map object (found {type(wm).__name__})", hint)
    if not wm:
        raise file_error(index, "has an empty weight_map", hint)
    root = model_dir.resolve()
    shards: dict[str, Path] = {}
    out: dict[str, Path] = {}
    for name, fname in wm.items():
        if not isinstance(fname, str) or not fname:
            raise file_error(index, f"maps tensor {name!r} to {fname!r}, not a shard file name", hint)
        if fname not in shards:
            shards[fname] = _shard_path(index, root, model_dir, fname)
        out[name] = shards[fname]
    missing = sorted(f for f, path in shards.items() if not path.is_file())
    if missing:
        raise missing_file_error(index, f"lists shard files that are missing: {', '.join(missing)}",
                                 "download the missing shards (or the whole checkpoint) again")
    return out


def _shard_path(index: Path, root: Path, model_dir: Path, fname: str) -> Path:
    """model_dir / fname, refused unless it stays inside the model directory (after symlinks)."""
    rel = Path(fname)
    if rel.is_absolute() or ".." in rel.parts or "\0" in fname:
        raise file_error(index, f"lists the shard path {fname!r}, which leaves the model directory",
                         "shard paths must be file names inside the directory; fix or re-download the index")
    path = model_dir / rel
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as exc:   # a symlink loop
        raise file_error(index, f"lists the shard path {fname!r}, which cannot be resolved ({exc})",
                         "fix or re-download the checkpoint") from None
    if not resolved.is_relative_to(root):
        raise file_error(index, f"lists the shard path {fname!r}, which resolves to {resolved}, outside the model "
                         f"directory {root}", "shard files must live inside the model directory")
    return path


# ---------------------------------------------------------------- checkpoint
class Checkpoint:
    """The weight files of a checkpoint directory (or a single weight file), read lazily."""

    def __init__(self, path: str | os.PathLike) -> None:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"no checkpoint at {p}")
        self.path = p
        self.kind, self.files, self._weight_map = self._discover(p)
        self._st: dict[Path, _SafetensorsFile] = {}

    @staticmethod
    def _discover(p: Path) -> tuple[str, list[Path], dict[str, Path] | None]:
        if p.is_file():
            if p.suffix == ".safetensors":
                return "safetensors", [p], None
            if p.suffix in (".bin", ".pt", ".pth"):
                return "torch", [p], None
            raise file_error(p, "is not a checkpoint file (expected .safetensors or .bin)",
                             "pass a Hugging Face model directory or one weight file")
        for kind, single, index in (("safetensors", SAFE_SINGLE, SAFE_INDEX), ("torch", BIN_SINGLE, BIN_INDEX)):
            if (p / index).is_file():
                weight_map = _read_shard_index(p, p / index)
                return kind, sorted(set(weight_map.values())), weight_map
            if (p / single).is_file():
                return kind, [p / single], None
        raise missing_file_error(p, f"holds no weights: looked for {SAFE_SINGLE}, {SAFE_INDEX}, {BIN_SINGLE} and "
                                 f"{BIN_INDEX}", "pass a complete Hugging Face model directory")

    def _safetensors(self, f: Path) -> _SafetensorsFile:
        st = self._st.get(f)
        if st is None:
            st = self._st[f] = _SafetensorsFile(f)
        return st

    def _file_names(self, f: Path, present: list[str]) -> list[str]:
        """Tensor names to take from shard f: all of it, or the index's share of it."""
        if self._weight_map is None:
            return present
        wanted = [n for n in present if self._weight_map.get(n) == f]
        expected = {n for n, g in self._weight_map.items() if g == f}
        lost = expected - set(present)
        if lost:
            raise file_error(f, f"lacks {len(lost)} tensors its index assigns to it (e.g. {sorted(lost)[0]!r})",
                             "the shard is damaged or from another revision; download the checkpoint again")
        return wanted

    def info(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """name -> (shape, dtype name as stored: "float32", "bfloat16", ...)."""
        out: dict[str, tuple[tuple[int, ...], str]] = {}
        for f in self.files:
            if self.kind == "safetensors":
                st = self._safetensors(f)
                for n in self._file_names(f, st.names()):
                    out[n] = st.info(n)
            else:
                sd = _torch_load(f)
                for n in self._file_names(f, list(sd)):
                    out[n] = (tuple(sd[n].shape), _torch_dtype_name(sd[n]))
                del sd
        return out

    def names(self) -> list[str]:
        return list(self.info())

    def read(self, name: str) -> np.ndarray:
        """One tensor: float32 for bf16, otherwise its stored dtype (zero-copy for safetensors)."""
        if self._weight_map is not None:
            if name not in self._weight_map:
                raise KeyError(f"{self.path} has no tensor {name!r}")
            files = [self._weight_map[name]]
        else:
            files = self.files
        for f in files:
            if self.kind == "safetensors":
                st = self._safetensors(f)
                if name in st.entries:
                    return st.read(name)
            else:
                sd = _torch_load(f)
                if name in sd:
                    return _torch_to_numpy(sd[name])
        raise KeyError(f"{self.path} has no tensor {name!r}")

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for f in self.files:
            if self.kind == "safetensors":
                st = self._safetensors(f)
                for n in self._file_names(f, st.names()):
                    yield n, st.read(n)
                self._st.pop(f, None)  # drop the shard's mapping once streamed
            else:
                sd = _torch_load(f)
                for n in self._file_names(f, list(sd)):
                    yield n, _torch_to_numpy(sd.pop(n))
                del sd

    def __len__(self) -> int:
        if self._weight_map is not None:
            return len(self._weight_map)
        return len(self.info())

    def identity(self) -> str:
        """Fingerprint of config.json and every weight file (see _identity): a cache key."""
        h = _identity.new_hash()
        base = self.path if self.path.is_dir() else self.path.parent
        for extra in ("config.json", SAFE_INDEX, BIN_INDEX):
            if self.path.is_dir() and (base / extra).is_file():
                h.update(extra.encode() + b"\0" + (base / extra).read_bytes())
        for f in self.files:
            header_end = self._safetensors(f).header_end if self.kind == "safetensors" else 0
            _identity.update_with_file(h, f, header_end=header_end)
        return h.hexdigest()[:32]


def iter_checkpoint(path: str | os.PathLike, progress: bool = False) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, array) for every tensor, one at a time (bf16 widened to float32, other dtypes
    as stored; safetensors arrays are read-only views of a memory map)."""
    ckpt = Checkpoint(path)
    it: Iterator[tuple[str, np.ndarray]] = iter(ckpt)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, total=len(ckpt), desc=f"reading {ckpt.path.name}", unit="tensor", leave=False)
    yield from it


def list_checkpoint_tensors(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, stored dtype name) without reading tensor data."""
    return Checkpoint(path).info()


def read_tensor(path: str | os.PathLike, name: str) -> np.ndarray:
    """One tensor of a checkpoint (same conversions as iter_checkpoint)."""
    return Checkpoint(path).read(name)


def checkpoint_identity(path: str | os.PathLike) -> str:
    """Cheap fingerprint of a checkpoint (config + sizes, mtimes, headers, sampled data)."""
    return Checkpoint(path).identity()
