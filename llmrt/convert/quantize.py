"""Quantize a model file to another file, streaming tensor by tensor (the engine is never built).

Inputs: a Hugging Face directory, an F32/F16 GGUF file or an ``.llmrt`` file.  Outputs:

* ``.llmrt``: llmrt's own group formats (``WeightOnlyQuantConfig``), bit-identical to what
  ``Model.from_pretrained(path, config).save(out)`` writes, without holding the model in memory.
* ``.gguf`` with a GGML block type (q4_0 | q4_1 | q8_0): llama.cpp's blocks byte for byte, with
  ggml's reference rounding.  Every matrix whose rows are a multiple of 32 gets that type, the
  token embedding and the output head included; 1-D tensors stay F32, as llama.cpp keeps them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, TypeVar

import numpy as np

from llmrt import formats
from llmrt.convert._parallel import ordered_map
from llmrt.config import WeightOnlyQuantConfig

__all__ = ["quantize_model", "gguf_outtype_for", "GGUF_OUTTYPES"]

GGUF_OUTTYPES = ("q4_0", "q4_1", "q8_0")
_T = TypeVar("_T")


# GGML block type -> the llmrt weight options it corresponds to (weight_dtype, alg, group_size, scale_dtype)
_GGUF_AS_OPTIONS = {"q4_0": ("int4", "sym", 32, "fp16"), "q4_1": ("int4", "asym", 32, "fp16"),
                    "q8_0": ("int8", "sym", 32, "fp16")}
_LLMRT_DEFAULTS = {"weight_dtype": "int4", "alg": "sym", "group_size": 32, "scale_dtype": "fp32",
                   "compute_dtype": "int8"}


def gguf_outtype_for(weight_dtype: str | None, alg: str | None, group_size: int | None,
                     scale_dtype: str | None = None, outtype: str | None = None) -> str:
    """The GGML block type of a GGUF output: ``outtype`` if given (the weight options given must
    agree with it), else the one the weight options name (int4 sym -> q4_0, int4 asym -> q4_1,
    int8 sym -> q8_0; group 32)."""
    given = {"weight_dtype": weight_dtype, "alg": alg, "group_size": group_size, "scale_dtype": scale_dtype}
    if outtype is None:
        want = (weight_dtype or "int4", alg or "sym", 32 if group_size is None else group_size)
        outtype = next((t for t, o in _GGUF_AS_OPTIONS.items() if o[:3] == want), None)
        if outtype is None:
            raise ValueError(f"GGUF output has no block type for weight_dtype={want[0]} alg={want[1]} "
                             f"group_size={want[2]}; use int4/sym/32 (q4_0), int4/asym/32 (q4_1) or int8/sym/32 "
                             f"(q8_0), or pass --outtype")
    outtype = outtype.lower()
    if outtype not in _GGUF_AS_OPTIONS:
        raise ValueError(f"unknown --outtype {outtype!r}; choose one of {', '.join(GGUF_OUTTYPES)}")
    for (key, value), implied in zip(given.items(), _GGUF_AS_OPTIONS[outtype]):
        if value is not None and value != implied:
            raise ValueError(f"--outtype {outtype} means --{key} {implied}, but --{key} {value} was given; "
                             f"drop --{key} or choose another --outtype")
    return outtype


def _source_kind(path: Path) -> str:
    if path.is_dir():
        return "hf"
    if not path.exists():
        raise FileNotFoundError(f"no model at {path}; pass a Hugging Face directory, a .gguf or an .llmrt file")
    if formats.is_gguf_file(path):
        return "gguf"
    if formats.is_llmrt_file(path):
        return "llmrt"
    raise ValueError(f"{path} is neither a GGUF file nor an llmrt model file; pass a Hugging Face directory, "
                     f"a .gguf or an .llmrt file")


def _progress(it: Iterable[_T], total: int, desc: str, on: bool) -> Iterable[_T]:
    if not on:
        return it
    from tqdm.auto import tqdm
    return tqdm(it, total=total, desc=desc, unit="tensor")


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"the directory of {out} does not exist; create it first")


def _dense(name: str, arr: np.ndarray, fmt, path: Path) -> np.ndarray:
    if fmt is not None:
        raise ValueError(f"{path}: tensor {name!r} is already quantized ({fmt.name}); quantize from the "
                         f"Hugging Face directory or an F32/F16 GGUF instead of re-quantizing quantized weights")
    if arr.dtype.kind != "f":
        raise ValueError(f"{path}: tensor {name!r} has dtype {arr.dtype}, not a float type")
    return arr


# ---------------------------------------------------------------- .llmrt output
def _to_llmrt(src: Path, kind: str, out: Path, q: WeightOnlyQuantConfig, nthread: int, progress: bool) -> Path:
    from llmrt.model import FILE_KIND, _Source, _write_model_file
    from llmrt.config import ModelConfig
    from llmrt.models import family_by_name, family_for_gguf, family_for_hf
    from llmrt.weights import quantize_stream

    if kind == "llmrt":
        meta, arrays, fmts = formats.load_model_file(src)
        if meta.get("kind") != FILE_KIND:
            raise ValueError(f"{src} is an llmrt file of kind {meta.get('kind')!r}, not a causal LM")
        stored = WeightOnlyQuantConfig.from_dict(meta["quant"])
        if stored.weights_key() != q.weights_key():
            raise ValueError(f"{src} is already quantized as {stored.weight_dtype}/{stored.alg}/g{stored.group_size}/"
                             f"{stored.scale_dtype}; only the compute dtype can change between .llmrt files. Pass the "
                             f"same weight options, or quantize from the Hugging Face directory or an F16 GGUF")
        config = ModelConfig.from_dict(meta["config"])
        family_by_name(config.family)
        s = meta["source"]
        source = _Source(s["kind"], s["path"], s["identity"], s.get("extra", {}))
        tensors: Iterable = ((n, arrays[n], fmts.get(n)) for n in arrays)
        total = len(arrays)
    else:
        if kind == "hf":
            from llmrt.convert.gguf import read_hf_config

            hf = read_hf_config(src)
            family = family_for_hf(hf["model_type"])
            config = family.config_from_hf(hf, Path(src) / "config.json")
            source = _Source("hf", str(src), formats.checkpoint_identity(src), {"model_type": hf["model_type"]})
            ckpt = formats.Checkpoint(src)
            total = len(ckpt)
            stream = family.map_hf_tensors(config, iter(ckpt))
        else:
            gg = formats.GGUFFile(src)
            arch = gg.metadata.get("general.architecture")
            family = family_for_gguf(arch)
            config = family.config_from_gguf(dict(gg.metadata, __tensor_names__=tuple(gg.tensor_names)), src)
            source = _Source("gguf", str(src), gg.identity(), {"architecture": arch})
            total = len(gg)
            stream = ((n, _dense(n, a, f, src)) for n, a, f in family.map_gguf_tensors(config, gg.iter_tensors()))
        # one tensor per task through the same quantize_stream Model.from_pretrained uses
        tensors = ordered_map(lambda t: next(quantize_stream([t], config, q)), stream, nthread)
    _write_model_file(out, config, q, source, _progress(tensors, total, f"writing {out.name}", progress))
    return out


# ---------------------------------------------------------------- .gguf output
def _copy_field(writer, key: str, field) -> None:
    from gguf import GGUFValueType

    vtype = field.types[0]
    try:
        value = field.contents()
    except UnicodeDecodeError:            # vocabularies with non-UTF-8 pieces: copy the bytes
        value = [bytes(field.parts[i]) for i in field.data] if vtype == GGUFValueType.ARRAY \
            else bytes(field.parts[-1])
    sub = field.types[-1] if vtype == GGUFValueType.ARRAY and len(field.types) > 1 else None
    if vtype == GGUFValueType.ARRAY and len(value) == 0:
        return
    writer.add_raw(key, value, vtype, sub)


def _gguf_to_gguf(src: Path, out: Path, outtype: str, nthread: int, force: bool, progress: bool) -> Path:
    """Re-type the dense tensors of an F32/F16 GGUF file; names, order and metadata are kept."""
    from gguf import GGUFReader

    from llmrt.convert.gguf import FILE_TYPES, gguf_tensor_type
    from llmrt.formats.gguf_writer import GGUFStreamWriter, encode_tensor

    gg = formats.GGUFFile(src)
    for info in gg.tensor_info.values():
        if info.ggml_type not in ("F32", "F16"):
            raise ValueError(f"{src}: tensor {info.name!r} is {info.ggml_type}; quantize from an F32/F16 GGUF or "
                             f"the Hugging Face directory instead of re-quantizing quantized weights")
    arch = gg.metadata.get("general.architecture")
    if not arch:
        raise ValueError(f"{src}: GGUF metadata has no general.architecture")
    writer = GGUFStreamWriter(out, arch, overwrite=force)
    reader = GGUFReader(src, "r")
    skip = ("general.architecture", "general.file_type", "general.quantization_version", "general.alignment")
    for key, field in reader.fields.items():
        if not key.startswith("GGUF.") and key not in skip:
            _copy_field(writer, key, field)
    del reader
    writer.add("general.file_type", FILE_TYPES[outtype], "uint32")
    writer.add("general.quantization_version", 2, "uint32")
    plan = []
    for info in gg.tensor_info.values():
        ttype = gguf_tensor_type(info.shape, outtype)
        writer.plan(info.name, info.shape, ttype)
        plan.append((info.name, ttype))
    writer.open()
    with writer:
        def encode(item: tuple[str, str]) -> tuple[str, np.ndarray]:
            name, ttype = item
            arr, _ = gg.tensor(name)
            return name, encode_tensor(np.asarray(arr, dtype=np.float32), ttype)

        for name, data in _progress(ordered_map(encode, plan, nthread), len(plan), f"writing {out.name}", progress):
            writer.write(name, data)
        return writer.finish()


def quantize_model(model_file: str | os.PathLike, out_file: str | os.PathLike, *, weight_dtype: str | None = None,
                   alg: str | None = None, group_size: int | None = None, scale_dtype: str | None = None,
                   compute_dtype: str | None = None, outtype: str | None = None, nthread: int = 1,
                   force: bool = False, progress: bool = True) -> Path:
    """Quantize ``model_file`` (HF directory, F32/F16 GGUF, .llmrt) into ``out_file``.

    ``.gguf`` output takes a GGML block type (``outtype`` q4_0 | q4_1 | q8_0, or the one the weight
    options name, see gguf_outtype_for; compute_dtype does not apply: GGUF files store none); any
    other suffix writes an llmrt model file.  Options left None take llmrt's defaults (int4, sym,
    group 32, fp32 scales, int8 compute)."""
    src, out = Path(model_file), Path(out_file)
    if nthread < 1:
        raise ValueError(f"--nthread must be at least 1, got {nthread}")
    kind = _source_kind(src)
    if out.resolve() == src.resolve():
        raise ValueError(f"the output {out} is the input file; write to another file")
    if out.suffix.lower() == ".gguf" or outtype is not None:
        if out.suffix.lower() != ".gguf":
            raise ValueError(f"--outtype {outtype} writes a GGUF file: give the output a .gguf suffix (got {out.name})")
        outtype = gguf_outtype_for(weight_dtype, alg, group_size, scale_dtype, outtype)
        _check_out(out, force)
        if kind == "llmrt":
            raise ValueError(f"{src} holds llmrt-quantized weights, which have no GGUF block type; quantize to GGUF "
                             f"from the Hugging Face directory or an F32/F16 GGUF")
        if kind == "gguf":
            return _gguf_to_gguf(src, out, outtype, nthread, force, progress)
        from llmrt.convert.gguf import convert_to_gguf
        return convert_to_gguf(src, out, outtype, force=force, progress=progress, nthread=nthread)
    given = {"weight_dtype": weight_dtype, "alg": alg, "group_size": group_size, "scale_dtype": scale_dtype,
             "compute_dtype": compute_dtype}
    # an .llmrt input keeps its own options unless told otherwise (typically only compute_dtype changes)
    defaults = _LLMRT_DEFAULTS if kind != "llmrt" else formats.read_model_file_metadata(src).get("quant", {})
    q = WeightOnlyQuantConfig.from_dict({**defaults, **{k: v for k, v in given.items() if v is not None}})
    if q.not_quant:
        raise ValueError("weight_dtype fp32 is not a quantization; choose int4 or int8")
    _check_out(out, force)
    return _to_llmrt(src, kind, out, q, nthread, progress)
