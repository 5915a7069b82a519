"""A corpus of malformed model files: GGUF, safetensors / Hugging Face directories and .llmrt files.

Each case is a name, a function that writes the damaged file (or directory) from healthy sources,
and the fragment the error message must contain.  The sources are built once from a tiny random
llama (a GGUF written by llmrt's converter, the HF safetensors directory, a saved .llmrt) plus
SmolLM2's real GGUF for a few truncations.  GGUF cases re-serialize the parsed file with a small
raw writer below, so any field (counts, types, dims, offsets) can be set to any value.

Also a runner: ``python tests/malformed_files.py run`` reads [[name, path, kwargs], ...] as JSON on
stdin, loads each one with AutoModelForCausalLM.from_pretrained (one forward on 2 tokens when it
loads) and prints one JSON line when a case starts and one with its outcome, so a crash or a hang
is attributable to its case.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
import sys
import zlib
from pathlib import Path
from typing import Any, Callable

# ---------------------------------------------------------------- GGUF: a raw, editable form
GGUF_MAGIC = b"GGUF"
# GGUF value type ids
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12
_FMT = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?", U64: "Q", I64: "q", F64: "d"}
Q8_0, Q6_K = 8, 14


@dataclasses.dataclass
class KV:
    key: str
    vtype: int
    value: Any
    itype: int | None = None        # item type of an array
    raw: bytes | None = None        # the encoded value as is (nested arrays)


@dataclasses.dataclass
class GTensor:
    name: str
    ne: list[int]                   # GGML order
    type_id: int
    data: bytes
    offset: int | None = None       # relative to the data section; None: packed after the previous one


@dataclasses.dataclass
class GGUFSpec:
    kvs: list[KV]
    tensors: list[GTensor]
    version: int = 3
    n_kv: int | None = None         # None: the real counts
    n_tensors: int | None = None
    layout_alignment: int = 32      # how the data is actually laid out

    def copy(self) -> "GGUFSpec":
        return dataclasses.replace(self, kvs=[dataclasses.replace(k) for k in self.kvs],
                                   tensors=[dataclasses.replace(t, ne=list(t.ne)) for t in self.tensors])

    def kv(self, key: str) -> KV:
        return next(k for k in self.kvs if k.key == key)

    def tensor(self, name: str) -> GTensor:
        return next(t for t in self.tensors if t.name == name)

    @property
    def arch(self) -> str:
        return self.kv("general.architecture").value


def _gguf_str(s: str | bytes) -> bytes:
    b = s.encode("utf-8", "surrogateescape") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def _gguf_value(vtype: int, value: Any, itype: int | None) -> bytes:
    if vtype == STR:
        return _gguf_str(value)
    if vtype == ARR:
        out = struct.pack("<IQ", itype, len(value))
        return out + b"".join(_gguf_value(itype, v, None) for v in value)
    return struct.pack("<" + _FMT[vtype], value)


def write_gguf(path: Path, spec: GGUFSpec) -> Path:
    head = GGUF_MAGIC + struct.pack("<I", spec.version)
    head += struct.pack("<QQ", len(spec.tensors) if spec.n_tensors is None else spec.n_tensors,
                        len(spec.kvs) if spec.n_kv is None else spec.n_kv)
    for kv in spec.kvs:
        value = kv.raw if kv.raw is not None else _gguf_value(kv.vtype, kv.value, kv.itype)
        head += _gguf_str(kv.key) + struct.pack("<I", kv.vtype) + value
    a = spec.layout_alignment
    offsets, pos = [], 0
    for t in spec.tensors:
        pos = -(-pos // a) * a
        offsets.append(pos if t.offset is None else t.offset)
        pos += len(t.data)
    for t, off in zip(spec.tensors, offsets):
        head += _gguf_str(t.name) + struct.pack("<I", len(t.ne)) + b"".join(struct.pack("<Q", d) for d in t.ne)
        head += struct.pack("<IQ", t.type_id, off)
    data = bytearray()
    for t in spec.tensors:
        data += b"\0" * (-len(data) % a) + t.data
    path.write_bytes(head + b"\0" * (-len(head) % a) + bytes(data))
    return path


def read_gguf_spec(path: Path) -> GGUFSpec:
    """A healthy GGUF as an editable spec (through gguf-py's reader)."""
    from gguf import GGUFReader
    r = GGUFReader(str(path))
    kvs = []
    for f in r.fields.values():
        if f.name.startswith("GGUF."):
            continue
        vtype = int(f.types[0])
        kvs.append(KV(f.name, vtype, f.contents(), int(f.types[1]) if vtype == ARR else None))
    tensors = [GTensor(t.name, [int(d) for d in t.shape], int(t.tensor_type), bytes(t.data.tobytes()))
               for t in r.tensors]
    return GGUFSpec(kvs, tensors)


# ---------------------------------------------------------------- safetensors: raw form
def read_safetensors(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_safetensors(path: Path, header: dict | bytes, data: bytes, length: int | None = None) -> Path:
    hdr = header if isinstance(header, bytes) else json.dumps(header).encode()
    hdr += b" " * (-len(hdr) % 8)
    path.write_bytes(struct.pack("<Q", len(hdr) if length is None else length) + hdr + data)
    return path


def copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def shard_dir(src: Path, dst: Path, n: int = 2, index_name: str = "model.safetensors.index.json") -> Path:
    """src's single model.safetensors split into n shards plus an index."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, dst / f.name)
    header, data = read_safetensors(src / "model.safetensors")
    header.pop("__metadata__", None)
    names = sorted(header, key=lambda k: header[k]["data_offsets"][0])
    weight_map = {}
    for i in range(n):
        part = names[i::n]
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        h, blob = {}, bytearray()
        for k in part:
            b, e = header[k]["data_offsets"]
            h[k] = dict(header[k], data_offsets=[len(blob), len(blob) + e - b])
            blob += data[b:e]
            weight_map[k] = fname
        write_safetensors(dst / fname, h, bytes(blob))
    (dst / index_name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dst


# ---------------------------------------------------------------- .llmrt: raw form
def llmrt_header(path: Path) -> dict:
    data = path.read_bytes()
    off, n = struct.unpack_from("<QQ", data, 16)
    return json.loads(data[off:off + n])


def rewrite_llmrt(path: Path, header: dict | bytes | None = None, version: int | None = None) -> Path:
    """Replace the JSON header (checksums and sizes kept consistent) and/or the version."""
    data = bytearray(path.read_bytes())
    off, n = struct.unpack_from("<QQ", data, 16)
    if header is not None:
        raw = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
        data = data[:off] + raw
        struct.pack_into("<QQQI", data, 16, off, len(raw), len(data), zlib.crc32(raw))
    if version is not None:
        struct.pack_into("<I", data, 8, version)
    struct.pack_into("<I", data, 56, zlib.crc32(bytes(data[:56])))
    path.write_bytes(bytes(data))
    return path


# ---------------------------------------------------------------- sources
@dataclasses.dataclass
class Sources:
    hf_dir: Path          # tiny llama, model.safetensors
    gguf: Path            # the same model as a Q8_0 GGUF written by llmrt's converter
    llmrt: Path           # the same model saved as a .llmrt
    smollm2: Path         # SmolLM2's real GGUF (100 MB)

    @property
    def spec(self) -> GGUFSpec:
        if not hasattr(self, "_spec"):
            self._spec = read_gguf_spec(self.gguf)
        return self._spec.copy()


def build_sources(root: Path) -> Sources:
    """The healthy files every case starts from (built once under root)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import TINY_CONFIGS, build_tiny_model
    from llmrt import AutoModelForCausalLM
    from llmrt.convert.gguf import convert_to_gguf
    from llmrt.hub import default_model_path

    root.mkdir(parents=True, exist_ok=True)
    hf = root / "hf"
    if not (hf / "model.safetensors").is_file():
        family, overrides = TINY_CONFIGS["llama-gqa-tied"]
        build_tiny_model(hf, family, dict(overrides))
    gguf = root / "tiny.q8_0.gguf"
    if not gguf.is_file():
        convert_to_gguf(hf, gguf, "q8_0", progress=False)
    llmrt = root / "tiny.llmrt"
    if not llmrt.is_file():
        AutoModelForCausalLM.from_pretrained(hf, progress=False).save(llmrt)
    return Sources(hf, gguf, llmrt, default_model_path())


# ---------------------------------------------------------------- cases
@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path, Sources], Path]      # (a fresh empty directory, sources) -> the path to load
    expect: str                                 # a fragment of the error message
    error: str = "ModelFileError"               # the llmrt.errors class the error must be an instance of
    kwargs: dict = dataclasses.field(default_factory=dict)   # extra from_pretrained arguments
    owner: str | None = None                    # the error comes from outside the file readers (their
                                                # messages need not name the file)
    xfail: str | None = None                    # a known failure outside the file readers: where and why

    @property
    def kind(self) -> str:
        return self.name.split("/", 1)[0]


def _gguf(edit: Callable[[GGUFSpec], Any]) -> Callable[[Path, Sources], Path]:
    """A case written from the tiny GGUF's spec after edit(spec)."""
    def build(d: Path, src: Sources) -> Path:
        spec = src.spec
        edit(spec)
        return write_gguf(d / "model.gguf", spec)
    return build


def _gguf_bytes(edit: Callable[[bytearray], bytes | bytearray], source: str = "gguf") -> Callable[[Path, Sources], Path]:
    def build(d: Path, src: Sources) -> Path:
        out = d / "model.gguf"
        out.write_bytes(bytes(edit(bytearray(getattr(src, source).read_bytes()))))
        return out
    return build


def _smollm2_cut(keep: Callable[[int], int]) -> Callable[[Path, Sources], Path]:
    def build(d: Path, src: Sources) -> Path:
        out = d / "smollm2.gguf"
        size = src.smollm2.stat().st_size
        with open(src.smollm2, "rb") as fin, open(out, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.truncate(keep(size))
        return out
    return build


def _set(key: str, vtype: int, value: Any, itype: int | None = None) -> Callable[[GGUFSpec], None]:
    def edit(s: GGUFSpec) -> None:
        k = key.format(a=s.arch)
        for kv in s.kvs:
            if kv.key == k:
                kv.vtype, kv.value, kv.itype = vtype, value, itype
                return
        s.kvs.append(KV(k, vtype, value, itype))
    return edit


def _drop_kv(key: str) -> Callable[[GGUFSpec], None]:
    def edit(s: GGUFSpec) -> None:
        k = key.format(a=s.arch)
        s.kvs = [kv for kv in s.kvs if kv.key != k]
    return edit


def _tensor(which: str, **changes: Any) -> Callable[[GGUFSpec], None]:
    def edit(s: GGUFSpec) -> None:
        t = s.tensor(which)
        for k, v in changes.items():
            setattr(t, k, v(t) if callable(v) else v)
    return edit


def _packed_offsets(s: GGUFSpec) -> list[int]:
    out, pos = [], 0
    for t in s.tensors:
        pos = -(-pos // s.layout_alignment) * s.layout_alignment
        out.append(pos)
        pos += len(t.data)
    return out


def _offset_of(index: int, f: Callable[[GGUFSpec, list[int]], int]) -> Callable[[GGUFSpec], None]:
    def edit(s: GGUFSpec) -> None:
        s.tensors[index].offset = f(s, _packed_offsets(s))
    return edit


def _first_kv_at(data: bytearray) -> int:
    return 24                                           # magic, version, tensor count, kv count


def _patch(at: Callable[[bytearray], int], value: bytes) -> Callable[[bytearray], bytearray]:
    def edit(b: bytearray) -> bytearray:
        i = at(b)
        b[i:i + len(value)] = value
        return b
    return edit


def _after(needle: bytes, skip: int = 0) -> Callable[[bytearray], int]:
    return lambda b: b.index(needle) + len(needle) + skip


def _nested_array(depth: int) -> KV:
    """An array of one array of ... of one u32, depth arrays deep."""
    raw = struct.pack("<IQI", U32, 1, 7)
    for _ in range(depth - 1):
        raw = struct.pack("<IQ", ARR, 1) + raw
    return KV("x.nested", ARR, None, raw=raw)


def _append_kv(kv: KV) -> Callable[[GGUFSpec], None]:
    return lambda s: s.kvs.append(kv)


def _patch_array_count(b: bytearray, key: bytes, count: int) -> bytearray:
    at = b.index(key) + len(key) + 8            # value type ARRAY, item type
    b[at:at + 8] = struct.pack("<Q", count)
    return b


def _string_array_case(d: Path, s: Sources) -> Path:
    spec = s.spec
    spec.kvs.append(KV("tokenizer.ggml.tokens", ARR, [f"t{i}" for i in range(301)], STR))
    p = write_gguf(d / "model.gguf", spec)
    p.write_bytes(bytes(_patch_array_count(bytearray(p.read_bytes()), b"tokenizer.ggml.tokens", 1 << 59)))
    return p


def _numeric_array_case(d: Path, s: Sources) -> Path:
    spec = s.spec
    spec.kvs.append(KV("x.scores", ARR, [1.0, 2.0], F32))
    p = write_gguf(d / "model.gguf", spec)
    p.write_bytes(bytes(_patch_array_count(bytearray(p.read_bytes()), b"x.scores", 1 << 50)))
    return p



GGUF_CASES = [
    Case("gguf/empty-file", lambda d, s: _write(d / "model.gguf", b""), "neither a GGUF file nor an llmrt"),
    Case("gguf/magic-only", lambda d, s: _write(d / "model.gguf", b"GGUF"), "only 4 bytes long"),
    Case("gguf/bad-magic-after-rename", _gguf_bytes(_patch(lambda b: 0, b"GGUG")), "neither a GGUF file"),
    Case("gguf/version-1", _gguf(lambda s: setattr(s, "version", 1)), "too old"),
    Case("gguf/version-99", _gguf(lambda s: setattr(s, "version", 99)), "newer than this reader"),
    Case("gguf/big-endian", _gguf_bytes(_patch(lambda b: 4, struct.pack(">I", 3))), "big-endian"),
    Case("gguf/header-cut-in-metadata", _gguf_bytes(lambda b: b[:200]), "truncated"),
    Case("gguf/header-cut-in-tensor-table", _gguf_bytes(lambda b: b[:b.index(b"blk.1.attn_q") + 4]), "truncated"),
    Case("gguf/data-cut-short", _gguf_bytes(lambda b: b[:-100]), "is truncated"),
    Case("gguf/data-cut-to-header", _gguf_bytes(lambda b: b[:b.index(b"output_norm") + 64]), "truncated"),
    Case("gguf/smollm2-cut-in-half", _smollm2_cut(lambda n: n // 2), "is truncated"),
    Case("gguf/smollm2-cut-in-vocab", _smollm2_cut(lambda n: 600_000), "truncated"),
    Case("gguf/tensor-count-huge", _gguf(lambda s: setattr(s, "n_tensors", 1 << 40)), "more than the file can hold"),
    Case("gguf/kv-count-huge", _gguf(lambda s: setattr(s, "n_kv", 1 << 40)), "more than the file can hold"),
    Case("gguf/kv-count-one-too-many", _gguf(lambda s: setattr(s, "n_kv", len(s.kvs) + 1)), "corrupt"),
    Case("gguf/kv-count-one-too-few", _gguf(lambda s: setattr(s, "n_kv", len(s.kvs) - 1)), "corrupt"),
    Case("gguf/key-length-huge", _gguf_bytes(_patch(_first_kv_at, struct.pack("<Q", 1 << 40))), "truncated"),
    Case("gguf/unknown-value-type", _gguf_bytes(_patch(_after(b"general.architecture"), struct.pack("<I", 99))),
         "unknown metadata value type 99"),
    Case("gguf/string-length-huge", _gguf_bytes(_patch(_after(b"general.architecture", 4),
                                                       struct.pack("<Q", 1 << 62))), "truncated"),
    Case("gguf/numeric-array-count-huge", lambda d, s: _numeric_array_case(d, s), "truncated"),
    Case("gguf/string-array-count-huge", lambda d, s: _string_array_case(d, s), "more than the file can hold"),
    Case("gguf/array-nesting-too-deep", _gguf(_append_kv(_nested_array(6))), "unknown metadata value type 9"),
    Case("gguf/duplicate-key", _gguf(lambda s: s.kvs.append(dataclasses.replace(s.kv("general.architecture")))),
         "'general.architecture' appears twice"),
    Case("gguf/alignment-zero", _gguf(_set("general.alignment", U32, 0)), "general.alignment is 0"),
    Case("gguf/alignment-not-power-of-two", _gguf(_set("general.alignment", U32, 48)), "general.alignment is 48"),
    Case("gguf/alignment-huge", _gguf(_set("general.alignment", U32, 1 << 30)), "not a power of two from 1"),
    Case("gguf/alignment-string", _gguf(_set("general.alignment", STR, "32")), "general.alignment is '32'"),
    Case("gguf/tensor-misaligned", _gguf(_offset_of(3, lambda s, o: o[3] + 8)), "not a multiple of the alignment"),
    Case("gguf/tensors-overlap", _gguf(_offset_of(3, lambda s, o: o[2])), "overlap"),
    Case("gguf/tensor-offset-near-2**64", _gguf(_offset_of(2, lambda s, o: (1 << 64) - 32)), "past the end"),
    Case("gguf/tensor-offset-past-end", _gguf(_offset_of(1, lambda s, o: o[-1] + (1 << 20))), "past the end"),
    Case("gguf/tensor-5-dims", _gguf(_tensor("output_norm.weight", ne=lambda t: [*t.ne, 1, 1, 1, 1])),
         "5 dimensions"),
    Case("gguf/tensor-0-dims", _gguf(_tensor("output_norm.weight", ne=[])), "0 dimensions"),
    Case("gguf/tensor-zero-dim", _gguf(_tensor("blk.0.attn_q.weight", ne=lambda t: [t.ne[0], 0])),
         "each must be from 1 to 2**63 - 1"),
    Case("gguf/tensor-negative-dim", _gguf(_tensor("blk.0.attn_q.weight", ne=lambda t: [t.ne[0], (1 << 64) - 1])),
         "each must be from 1 to 2**63 - 1"),
    Case("gguf/tensor-element-count-overflow",
         _gguf(_tensor("blk.0.attn_q.weight", ne=lambda t: [t.ne[0], 1 << 40, 1 << 40])), "more than 2**63 - 1"),
    Case("gguf/tensor-unknown-ggml-type", _gguf(_tensor("blk.0.attn_q.weight", type_id=99)), "unknown GGML type 99"),
    Case("gguf/tensor-row-not-block-multiple", _gguf(_tensor("blk.0.attn_q.weight", ne=lambda t: [48, t.ne[1]])),
         "not a multiple of its block size 32"),
    Case("gguf/duplicate-tensor-name", _gguf(_tensor("blk.0.attn_k.weight", name="blk.0.attn_q.weight")),
         "'blk.0.attn_q.weight' appears twice"),
    Case("gguf/unsupported-ggml-type", _gguf(_tensor("blk.0.attn_q.weight", type_id=Q6_K,
                                                     ne=lambda t: [256, len(t.data) // 210 and 1],
                                                     data=lambda t: bytes(210))),
         "GGML type Q6_K", error="UnsupportedError"),
    Case("gguf/tensor-missing", _gguf(lambda s: s.tensors.remove(s.tensor("blk.1.attn_v.weight"))),
         "no weight for 'layers.1.v.weight'", owner="weights"),
    Case("gguf/tensor-wrong-shape", _gguf(_tensor("blk.0.attn_q.weight", ne=lambda t: [t.ne[0], t.ne[1] // 2],
                                                  data=lambda t: t.data[:len(t.data) // 2])),
         "'blk.0.attn_q.weight': 32 rows", error="ConfigError", owner="models"),
    Case("gguf/architecture-missing", _gguf(_drop_kv("general.architecture")), "general.architecture"),
    Case("gguf/architecture-unknown", _gguf(_set("general.architecture", STR, "gpt-5")),
         "unsupported GGUF architecture 'gpt-5'", error="UnsupportedError", owner="models"),
    Case("gguf/architecture-integer", _gguf(_set("general.architecture", U32, 7)), "general.architecture = int 7"),
    Case("gguf/block-count-string", _gguf(_set("{a}.block_count", STR, "three")), "llama.block_count = str"),
    Case("gguf/block-count-float", _gguf(_set("{a}.block_count", F32, 3.0)), "llama.block_count = float"),
    Case("gguf/embedding-length-array", _gguf(_set("{a}.embedding_length", ARR, [64, 64], U32)),
         "llama.embedding_length = an array"),
    Case("gguf/head-count-bool", _gguf(_set("{a}.attention.head_count", BOOL, True)), "llama.attention.head_count"),
    Case("gguf/rope-freq-base-string", _gguf(_set("{a}.rope.freq_base", STR, "1e4")), "llama.rope.freq_base"),
    Case("gguf/norm-epsilon-string", _gguf(_set("{a}.attention.layer_norm_rms_epsilon", STR, "1e-5")),
         "layer_norm_rms_epsilon"),
    Case("gguf/tokens-not-strings", _gguf(_set("tokenizer.ggml.tokens", ARR, [1, 2, 3], U32)),
         "tokenizer.ggml.tokens"),
    Case("gguf/bos-token-id-string", _gguf(_set("tokenizer.ggml.bos_token_id", STR, "1")),
         "tokenizer.ggml.bos_token_id"),
    Case("gguf/block-count-missing", _gguf(_drop_kv("{a}.block_count")), "'llama.block_count' is missing",
         error="ConfigError", owner="models"),
    Case("gguf/head-count-zero", _gguf(_set("{a}.attention.head_count", U32, 0)),
         "'llama.attention.head_count' must be at least 1", error="ConfigError", owner="models"),
    Case("gguf/block-count-huge", _gguf(_set("{a}.block_count", U32, 1 << 30)),
         "num_layers must be at most 65536, got 1073741824", error="ConfigError", owner="models"),
    Case("gguf/smollm2-tensor-table-byte-flipped",
         _gguf_bytes(_patch(_after(b"blk.0.attn_q.weight", 4), struct.pack("<Q", 3)), "smollm2"), "corrupt"),
]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- safetensors / HF directory cases
def _hf(edit: Callable[[Path], Any]) -> Callable[[Path, Sources], Path]:
    """A copy of the tiny HF directory after edit(dir)."""
    def build(d: Path, src: Sources) -> Path:
        out = copy_dir(src.hf_dir, d / "hf")
        edit(out)
        return out
    return build


def _st(edit: Callable[[dict, bytes], tuple[Any, bytes] | tuple[Any, bytes, int]]) -> Callable[[Path, Sources], Path]:
    """The HF directory with model.safetensors rewritten from edit(header, data)."""
    def change(d: Path) -> None:
        header, data = read_safetensors(d / "model.safetensors")
        write_safetensors(d / "model.safetensors", *edit(header, data))
    return _hf(change)


def _st_bytes(edit: Callable[[bytes], bytes]) -> Callable[[Path, Sources], Path]:
    def change(d: Path) -> None:
        f = d / "model.safetensors"
        f.write_bytes(edit(f.read_bytes()))
    return _hf(change)


def _entry(name: str, **changes: Any) -> Callable[[dict, bytes], tuple[dict, bytes]]:
    def edit(h: dict, data: bytes) -> tuple[dict, bytes]:
        e = h[name]
        for k, v in changes.items():
            e[k] = v(e) if callable(v) else v
        return h, data
    return edit


def _sharded(edit: Callable[[Path, dict], Any], index_name: str = "model.safetensors.index.json"
             ) -> Callable[[Path, Sources], Path]:
    """The HF directory in 2 shards after edit(dir, index dict) (the index is written back)."""
    def build(d: Path, src: Sources) -> Path:
        out = shard_dir(src.hf_dir, d / "hf")
        index = json.loads((out / "model.safetensors.index.json").read_text())
        if index_name != "model.safetensors.index.json":
            _to_bin_layout(out, index)
        edit(out, index)
        (out / index_name).write_text(json.dumps(index) if isinstance(index, dict) else index)
        return out
    return build


def _to_bin_layout(out: Path, index: dict) -> None:
    (out / "model.safetensors.index.json").unlink()
    for f in out.glob("model-*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    index["weight_map"] = {k: v.replace(".safetensors", ".bin") for k, v in index["weight_map"].items()}


_Q = "model.layers.0.self_attn.q_proj.weight"
_K = "model.layers.0.self_attn.k_proj.weight"


def _dup_key(h: dict, data: bytes) -> tuple[bytes, bytes]:
    raw = json.dumps(h)
    e = json.dumps({_K: h[_K]})[1:-1]
    return ("{" + e + ", " + raw[1:]).encode(), data


def _overlap(h: dict, data: bytes) -> tuple[dict, bytes]:
    h[_K]["data_offsets"] = list(h[_Q]["data_offsets"][:1]) + [h[_Q]["data_offsets"][0] + h[_K]["data_offsets"][1]
                                                              - h[_K]["data_offsets"][0]]
    return h, data


def _symlink_outside(d: Path, index: dict) -> None:
    target = d.parent / "elsewhere.safetensors"
    first = sorted(set(index["weight_map"].values()))[0]
    (d / first).rename(target)
    (d / first).symlink_to(target)


HF_CASES = [
    Case("hf/safetensors-empty", _st_bytes(lambda b: b""), "only 0 bytes long"),
    Case("hf/safetensors-4-bytes", _st_bytes(lambda b: b[:4]), "only 4 bytes long"),
    Case("hf/header-length-huge", _st_bytes(lambda b: struct.pack("<Q", 1 << 40) + b[8:]), "header length"),
    Case("hf/header-length-past-file", _st_bytes(lambda b: struct.pack("<Q", len(b)) + b[8:]), "is truncated"),
    Case("hf/header-cut", _st_bytes(lambda b: b[:200]), "is truncated"),
    Case("hf/header-not-json", _st_bytes(lambda b: b[:8] + b"#" + b[9:]), "corrupt safetensors header"),
    Case("hf/header-not-utf8", _st_bytes(lambda b: b[:9] + b"\xff\xfe" + b[11:]), "corrupt safetensors header"),
    Case("hf/header-is-array", _st(lambda h, d: ([h], d)), "not an object"),
    Case("hf/header-duplicate-key", _st(_dup_key), "appears twice"),
    Case("hf/entry-not-object", _st(lambda h, d: ({**h, _Q: [1, 2]}, d)),
         "corrupt header entry for tensor"),
    Case("hf/shape-is-string", _st(_entry(_Q, shape="64")), "corrupt header entry"),
    Case("hf/shape-negative", _st(_entry(_Q, shape=lambda e: [-e["shape"][0], -e["shape"][1]])),
         "corrupt header entry"),
    Case("hf/dtype-not-string", _st(_entry(_Q, dtype=["F32"])), "corrupt header entry"),
    Case("hf/offsets-three", _st(_entry(_Q, data_offsets=lambda e: e["data_offsets"] + [0])), "corrupt header entry"),
    Case("hf/offsets-inverted", _st(_entry(_Q, data_offsets=lambda e: e["data_offsets"][::-1])), "inverted"),
    Case("hf/offsets-past-end", _st(_entry(_Q, data_offsets=lambda e: [x + (1 << 30) for x in e["data_offsets"]])),
         "ends at byte"),
    Case("hf/size-not-shape-times-dtype", _st(_entry(_Q, shape=lambda e: [e["shape"][0], e["shape"][1] + 1])),
         "inconsistent offsets"),
    Case("hf/tensors-overlap", _st(_overlap), "overlapping data"),
    Case("hf/unknown-dtype", _st(_entry(_Q, dtype="F8_E9M9")), "'F8_E9M9'", error="UnsupportedError"),
    Case("hf/data-cut-short", _st_bytes(lambda b: b[:-64]), "is truncated"),
    Case("hf/tensor-missing", _st(lambda h, d: ({k: v for k, v in h.items() if k != _K}, d)),
         "no weight for 'layers.0.k.weight'", owner="weights"),
    Case("hf/index-not-json", _hf(lambda d: (d / "model.safetensors.index.json").write_text("{nope")),
         "not a valid shard index"),
    Case("hf/index-no-weight-map", _sharded(lambda d, i: i.pop("weight_map")), "has no weight_map object"),
    Case("hf/index-weight-map-list", _sharded(lambda d, i: i.update(weight_map=list(i["weight_map"]))),
         "has no weight_map object"),
    Case("hf/index-weight-map-empty", _sharded(lambda d, i: i.update(weight_map={})), "empty weight_map"),
    Case("hf/index-shard-not-string", _sharded(lambda d, i: i["weight_map"].update({_Q: 5})),
         "not a shard file name"),
    Case("hf/index-absolute-path", _sharded(lambda d, i: i["weight_map"].update({_Q: "/etc/passwd"})),
         "leaves the model directory"),
    Case("hf/index-dotdot-path", _sharded(lambda d, i: i["weight_map"].update({_Q: "../hf/x.safetensors"})),
         "leaves the model directory"),
    Case("hf/index-symlink-outside", _sharded(_symlink_outside), "outside the model directory"),
    Case("hf/index-missing-shard", _sharded(lambda d, i: (d / i["weight_map"][_Q]).unlink()), "missing"),
    Case("hf/index-shard-lacks-tensor", _sharded(lambda d, i: i["weight_map"].update({"model.extra.weight":
                                                                                      i["weight_map"][_Q]})),
         "lacks 1 tensors"),
    Case("hf/bin-index-missing-shard", _sharded(lambda d, i: (d / i["weight_map"][_Q]).unlink(),
                                                "pytorch_model.bin.index.json"), "missing"),
    Case("hf/no-weights", _hf(lambda d: (d / "model.safetensors").unlink()), "holds no weights"),
    Case("hf/bin-not-a-pickle", _hf(lambda d: _to_bin(d, lambda path: path.write_bytes(b"PK\3\4" + bytes(60)))),
         "cannot be read by torch.load"),
    Case("hf/bin-non-tensor-entry", _hf(lambda d: _to_bin(d, lambda path: _torch_save(path, {"x": 5}))),
         "holds the entry 'x' of type int, not a tensor"),
    Case("hf/config-missing", _hf(lambda d: (d / "config.json").unlink()), "has no config.json"),
    Case("hf/config-not-json", _hf(lambda d: (d / "config.json").write_text("{'a': 1}")), "is not valid JSON"),
    Case("hf/config-not-utf8", _hf(lambda d: (d / "config.json").write_bytes(b'{"a": "\xff"}')),
         "is not valid JSON"),
    Case("hf/config-is-array", _hf(lambda d: (d / "config.json").write_text("[1, 2]")), "not an object"),
    Case("hf/config-no-model-type", _hf(lambda d: _edit_json(d / "config.json", lambda c: c.pop("model_type"))),
         "has no model_type", error="ConfigError"),
    Case("hf/config-model-type-list", _hf(lambda d: _edit_json(d / "config.json",
                                                                   lambda c: c.update(model_type=["llama"]))),
         "not a string", error="ConfigError"),
    Case("hf/config-model-type-unknown", _hf(lambda d: _edit_json(d / "config.json",
                                                                      lambda c: c.update(model_type="gpt5"))),
         "unsupported model_type 'gpt5'", error="UnsupportedError", owner="models"),
    Case("hf/config-layers-string", _hf(lambda d: _edit_json(d / "config.json",
                                                                 lambda c: c.update(num_hidden_layers="3"))),
         "'num_hidden_layers' must be an integer", error="ConfigError", owner="config"),
]


def _to_bin(d: Path, write: Callable[[Path], Any]) -> None:
    """Replace model.safetensors by a pytorch_model.bin written by write(path)."""
    (d / "model.safetensors").unlink()
    write(d / "pytorch_model.bin")


def _torch_save(path: Path, obj: Any) -> None:
    import torch
    torch.save(obj, path)


def _edit_json(path: Path, edit: Callable[[dict], Any]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# ---------------------------------------------------------------- .llmrt cases
def _lm(edit: Callable[[Path], Any]) -> Callable[[Path, Sources], Path]:
    def build(d: Path, src: Sources) -> Path:
        out = d / "model.llmrt"
        shutil.copy(src.llmrt, out)
        edit(out)
        return out
    return build


def _lm_bytes(edit: Callable[[bytearray], bytes | bytearray]) -> Callable[[Path, Sources], Path]:
    return _lm(lambda p: p.write_bytes(bytes(edit(bytearray(p.read_bytes())))))


def _lm_header(edit: Callable[[dict], Any]) -> Callable[[Path, Sources], Path]:
    def change(p: Path) -> None:
        h = llmrt_header(p)
        out = edit(h)
        rewrite_llmrt(p, header=h if out is None else out)
    return _lm(change)


def _lm_tensor(name: str | None, **changes: Any) -> Callable[[Path, Sources], Path]:
    def edit(h: dict) -> None:
        key = name or _first_block_tensor(h)
        e = h["tensors"][key]
        for k, v in changes.items():
            e[k] = v(e) if callable(v) else v
    return _lm_header(edit)


def _first_block_tensor(h: dict) -> str:
    return next(k for k, e in h["tensors"].items() if e["kind"] == "blocks")


def _lm_flip_data(p: Path) -> None:
    h = llmrt_header(p)
    off = h["tensors"]["layers.0.qkv.weight"]["offset"] if "layers.0.qkv.weight" in h["tensors"] else \
        h["tensors"][_first_block_tensor(h)]["offset"]
    data = bytearray(p.read_bytes())
    data[off + 7] ^= 0xFF
    p.write_bytes(bytes(data))


def _lm_overlap(h: dict) -> None:
    names = sorted(h["tensors"], key=lambda k: h["tensors"][k]["offset"])
    h["tensors"][names[1]]["offset"] = h["tensors"][names[0]]["offset"]


LLMRT_CASES = [
    Case("llmrt/magic-prefix-only", _lm_bytes(lambda b: b[:5]), "neither a GGUF file nor an llmrt"),
    Case("llmrt/preamble-cut", _lm_bytes(lambda b: b[:40]), "shorter than the 64-byte preamble"),
    Case("llmrt/preamble-checksum", _lm_bytes(_patch(lambda b: 30, b"\x40")), "corrupt preamble"),
    Case("llmrt/version-newer", _lm(lambda p: rewrite_llmrt(p, version=99)), "newer llmrt"),
    Case("llmrt/version-zero", _lm(lambda p: rewrite_llmrt(p, version=0)), "invalid format version 0"),
    Case("llmrt/file-cut-short", _lm_bytes(lambda b: b[:-10]), "is truncated"),
    Case("llmrt/trailing-bytes", _lm_bytes(lambda b: b + b"\0" * 16), "unexpected bytes"),
    Case("llmrt/header-checksum", _lm_bytes(lambda b: b[:-3] + bytes([b[-3] ^ 1]) + b[-2:]), "corrupt header"),
    Case("llmrt/header-not-json", _lm(lambda p: rewrite_llmrt(p, header=b"{not json")), "unreadable header"),
    Case("llmrt/header-no-tensor-table", _lm_header(lambda h: {"metadata": h["metadata"]}), "without a tensor table"),
    Case("llmrt/metadata-not-object", _lm_header(lambda h: h.update(metadata=[1, 2])), "metadata is a list"),
    Case("llmrt/kind-wrong", _lm_header(lambda h: h["metadata"].update(kind="tokenizer")), "not a causal LM"),
    Case("llmrt/tensor-entry-not-object", _lm_header(lambda h: h["tensors"].update({"x": 5})), "not an object"),
    Case("llmrt/tensor-offset-outside", _lm_tensor(None, offset=1 << 40), "outside the data region"),
    Case("llmrt/tensor-offset-misaligned", _lm_tensor(None, offset=lambda e: e["offset"] + 8),
         "outside the data region"),
    Case("llmrt/tensor-offset-negative", _lm_tensor(None, offset=-64), "offset is -64"),
    Case("llmrt/tensors-overlap", _lm_header(_lm_overlap), "overlap"),
    Case("llmrt/tensor-nbytes-wrong", _lm_tensor(None, nbytes=lambda e: e["nbytes"] - 1), "do not hold shape"),
    Case("llmrt/tensor-shape-string", _lm_tensor(None, shape="12"), "shape '12' is not a list of at most 8"),
    Case("llmrt/tensor-shape-huge", _lm_tensor(None, shape=[1 << 40, 1 << 40, 1 << 40]), "do not hold shape"),
    Case("llmrt/tensor-dense-dtype-object", _lm_tensor("final_norm.weight", dtype="|O"), "invalid table entry"),
    Case("llmrt/tensor-format-garbage", _lm_tensor(None, format={"weight_dtype": "int5"}), "invalid table entry"),
    Case("llmrt/tensor-kind-unknown", _lm_tensor(None, kind="sparse"), "invalid table entry"),
    Case("llmrt/tensor-crc-not-int", _lm_tensor(None, crc32="abc"), "crc32"),
    Case("llmrt/tensor-missing", _lm_header(lambda h: h["tensors"].pop("final_norm.weight") and None), "final_norm",
         error="LlmrtError", owner="weights"),
    Case("llmrt/data-byte-flipped-verify", _lm(_lm_flip_data), "is corrupt (data checksum mismatch)",
         kwargs={"verify": True}),
    Case("llmrt/config-missing", _lm_header(lambda h: h["metadata"].pop("config") and None), "config",
         error="LlmrtError", owner="model.load"),
    Case("llmrt/quant-missing", _lm_header(lambda h: h["metadata"].pop("quant") and None), "quant",
         error="LlmrtError", owner="model.load"),
    Case("llmrt/source-not-object", _lm_header(lambda h: h["metadata"].update(source=[1])), "source",
         error="LlmrtError", owner="model.load"),
]

CASES: list[Case] = GGUF_CASES + HF_CASES + LLMRT_CASES
assert len({c.name for c in CASES}) == len(CASES)


def case_dir_name(case: Case) -> str:
    return case.name.replace("/", "__")


def build_case(case: Case, root: Path, src: Sources) -> Path:
    """Write one case into its own fresh directory under root."""
    d = root / case_dir_name(case)
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return case.build(d, src)


# ---------------------------------------------------------------- the runner (one process, many cases)
def _load_one(path: str, kwargs: dict) -> dict:
    import numpy as np
    import llmrt
    from llmrt import AutoModelForCausalLM, Model
    try:
        if kwargs:
            model = Model.from_pretrained(path, progress=False, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, progress=False)
        model(np.array([[1, 2]], np.int64))
    except Exception as e:  # noqa: BLE001 - the outcome is what is reported
        import traceback
        return {"outcome": "error", "type": type(e).__name__,
                "classes": [c.__name__ for c in type(e).__mro__],
                "llmrt": isinstance(e, llmrt.LlmrtError), "message": str(e)[:2000],
                "traceback": "" if isinstance(e, llmrt.LlmrtError) else traceback.format_exc()[-3000:]}
    return {"outcome": "loaded"}


def run(stream_in=sys.stdin, stream_out=sys.stdout) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for name, path, kwargs in json.load(stream_in):
        print(json.dumps({"start": name}), file=stream_out, flush=True)
        result = _load_one(path, kwargs)
        print(json.dumps({"case": name, **result}), file=stream_out, flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"]:
        run()
    elif sys.argv[1:2] == ["build"]:       # python tests/malformed_files.py build DIR: write the corpus
        root = Path(sys.argv[2])
        sources = build_sources(root / "sources")
        for c in CASES:
            print(c.name, build_case(c, root / "cases", sources))
    else:
        sys.exit("usage: malformed_files.py run < cases.json | build DIR")
