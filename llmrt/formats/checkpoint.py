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
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from llmrt.errors import UnsupportedError
from llmrt.formats import _identity
from llmrt.formats.blocks import bf16_bits_to_fp32
from llmrt.formats.errors import file_error

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
class _SafetensorsFile:
    """Header of one .safetensors file plus lazy zero-copy views of its tensors."""

    def __init__(self, path: Path) -> None:
        self.path = path
        size = path.stat().st_size
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
            header = json.loads(hdr)
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise file_error(path, f"has a corrupt safetensors header ({exc})",
                             "the file is damaged; download it again") from None
        header.pop("__metadata__", None)
        self.data_start = 8 + n
        self.header_end = 8 + n
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, e in header.items():
            try:
                dtype, shape = e["dtype"], tuple(int(s) for s in e["shape"])
                begin, end = (int(v) for v in e["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise file_error(path, f"has a corrupt header entry for tensor {name!r}: {e!r}",
                                 "the file is damaged; download it again") from None
            if dtype in _ST_DTYPES:
                want = int(np.prod(shape, dtype=np.int64)) * np.dtype(_ST_DTYPES[dtype]).itemsize
                if end - begin != want or begin < 0:
                    raise file_error(path, f"has inconsistent offsets for tensor {name!r} ({dtype} {list(shape)} "
                                     f"needs {want} bytes, header says [{begin}, {end}))",
                                     "the file is damaged; download it again")
            if self.data_start + end > size:
                raise file_error(path, f"is truncated: tensor {name!r} ends at byte {self.data_start + end} "
                                 f"but the file has {size} bytes", "the download was cut short; download it again")
            self.entries[name] = (dtype, shape, begin, end)
        self._mm: np.memmap | None = None

    def names(self) -> list[str]:
        # data order, so streaming reads the file front to back
        return sorted(self.entries, key=lambda k: self.entries[k][2])

    def info(self, name: str) -> tuple[tuple[int, ...], str]:
        dtype, shape, _, _ = self.entries[name]
        return shape, _ST_NAMES.get(dtype, dtype)

    def read(self, name: str) -> np.ndarray:
        dtype, shape, begin, end = self.entries[name]
        if dtype not in _ST_DTYPES:
            raise UnsupportedError(f"{self.path}: tensor {name!r} has dtype {dtype}, which llmrt cannot read "
                                      f"(supported: {', '.join(_ST_DTYPES)})")
        if end == begin:
            arr = np.zeros(shape, dtype=_ST_DTYPES[dtype])
        else:
            if self._mm is None:
                self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
            arr = self._mm[self.data_start + begin:self.data_start + end].view(_ST_DTYPES[dtype]).reshape(shape)
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
    return sd


def _torch_to_numpy(t: Any) -> np.ndarray:
    import torch
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return bf16_bits_to_fp32(t.contiguous().view(torch.int16).numpy().view(np.uint16))
    return t.contiguous().numpy()  # shares the mmap'd storage when already contiguous


def _torch_dtype_name(t: Any) -> str:
    return str(t.dtype).replace("torch.", "")


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
            raise ValueError(f"{p}: not a checkpoint file (expected .safetensors or .bin)")
        for kind, single, index in (("safetensors", SAFE_SINGLE, SAFE_INDEX), ("torch", BIN_SINGLE, BIN_INDEX)):
            if (p / index).is_file():
                try:
                    wm = json.loads((p / index).read_text())["weight_map"]
                    if not isinstance(wm, dict):
                        raise TypeError("weight_map is not an object")
                except (ValueError, KeyError, TypeError) as exc:
                    raise file_error(p / index, f"is not a valid shard index ({exc})",
                                     "download the checkpoint again") from None
                weight_map = {name: p / fname for name, fname in wm.items()}
                files = sorted(set(weight_map.values()))
                missing = [f.name for f in files if not f.is_file()]
                if missing:
                    raise FileNotFoundError(f"{p / index} lists shard files that are missing: {', '.join(missing)}")
                return kind, files, weight_map
            if (p / single).is_file():
                return kind, [p / single], None
        raise FileNotFoundError(f"no weights in {p}: looked for {SAFE_SINGLE}, {SAFE_INDEX}, "
                                f"{BIN_SINGLE} and {BIN_INDEX}")

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
