"""`llmrt info [MODEL]`: version, ISA tiers and threads, and what a model file is, read from its
headers only (no weights loaded, nothing quantized)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from llmrt.cli.common import UserError, current_tier, weights_label


def cmd_info(args: argparse.Namespace) -> int:
    import llmrt

    config = llmrt.show_config(print_out=not args.json)
    if not args.model:
        if args.json:
            print(json.dumps(config, indent=1))
        return 0
    desc = describe_model(Path(args.model))
    if args.json:
        print(json.dumps({**config, "model": desc}, indent=1))
    else:
        _print(desc)
    return 0


def describe_model(path: Path) -> dict:
    """Architecture, parameters, stored tensor formats, context, chat template and kernels of a model."""
    from llmrt import formats

    if not path.exists():
        raise UserError(f"no model at {path}; pass a Hugging Face model directory, a .gguf or an .llmrt file")
    if path.is_dir():
        d = _hf(path)
    elif formats.is_gguf_file(path):
        d = _gguf(path)
    elif formats.is_llmrt_file(path):
        d = _llmrt(path)
    else:
        raise UserError(f"{path} is neither a GGUF file nor an llmrt model file; pass a Hugging Face model "
                        f"directory, a .gguf or an .llmrt file")
    d["tier"] = current_tier()
    return {"path": str(path), **d}


def _tally(entries) -> tuple[int, dict]:
    """(parameters, {format: {"tensors", "bytes"}}) from (format, elements, bytes) triples."""
    params, by_format = 0, {}
    for fmt, n, nbytes in entries:
        params += n
        t = by_format.setdefault(fmt, {"tensors": 0, "bytes": 0})
        t["tensors"] += 1
        t["bytes"] += nbytes
    return params, dict(sorted(by_format.items(), key=lambda kv: -kv[1]["bytes"]))


def _hf(path: Path) -> dict:
    import numpy as np

    from llmrt import formats
    from llmrt.config import WeightOnlyQuantConfig
    from llmrt.formats.json_files import read_hf_config
    from llmrt.models import family_for_hf

    hf = read_hf_config(path)
    cfg = family_for_hf(hf["model_type"]).config_from_hf(hf, path / "config.json")
    q = WeightOnlyQuantConfig()          # what Model.from_pretrained quantizes to unless told otherwise
    itemsize = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2,
                "int8": 1, "uint8": 1, "bool": 1}
    entries = []
    for shape, dtype in formats.list_checkpoint_tensors(path).values():
        n = int(np.prod(shape, dtype=np.int64))
        entries.append((dtype, n, n * itemsize.get(dtype, 4)))
    params, by_format = _tally(entries)
    return {"kind": "hf", "architecture": hf["model_type"], "family": cfg.family, "parameters": params,
            "formats": by_format, "context_length": cfg.max_position_embeddings,
            "chat_template": _hf_chat_template(path), "compute": q.compute_dtype,
            "runs_as": f"quantized at load to {weights_label(q)} (the default; see `llmrt run --help`)"}


def _hf_chat_template(path: Path) -> bool:
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    tc = path / "tokenizer_config.json"
    if not tc.is_file():
        return False
    try:
        return bool(json.loads(tc.read_text()).get("chat_template"))
    except ValueError:
        return False


def _gguf(path: Path) -> dict:
    from llmrt import formats
    from llmrt.models import family_for_gguf

    gg = formats.GGUFFile(path)
    meta = gg.metadata
    arch = meta.get("general.architecture")
    if arch is None:
        raise UserError(f"{path}: GGUF metadata has no general.architecture; the file is damaged or not a model")
    cfg = family_for_gguf(arch).config_from_gguf(dict(meta, __tensor_names__=tuple(gg.tensor_names)), path)
    entries, unsupported = [], []
    for name in gg.tensor_names:
        info = gg.tensor_info[name]
        n = 1
        for s in info.shape:
            n *= int(s)
        entries.append((info.ggml_type.lower(), n, info.nbytes))
        if not info.supported:
            unsupported.append(info.ggml_type)
    params, by_format = _tally(entries)
    d = {"kind": "gguf", "architecture": arch, "family": cfg.family, "parameters": params, "formats": by_format,
         "context_length": cfg.max_position_embeddings, "chat_template": bool(meta.get("tokenizer.chat_template")),
         "compute": "int8", "runs_as": "blocks as stored"}
    if unsupported:
        d["unsupported_formats"] = sorted(set(unsupported))
    return d


def _llmrt(path: Path) -> dict:
    import numpy as np

    from llmrt import formats
    from llmrt.config import ModelConfig, WeightOnlyQuantConfig

    meta, arrays, fmts = formats.load_model_file(path)       # memory-mapped: only the header is read
    if "config" not in meta or "quant" not in meta:
        raise UserError(f"{path} is an llmrt file without a model config (kind {meta.get('kind')!r})")
    cfg = ModelConfig.from_dict(meta["config"])
    q = WeightOnlyQuantConfig.from_dict(meta["quant"])
    entries = []
    for name, arr in arrays.items():
        fmt = fmts.get(name)
        if fmt is None:
            entries.append((str(arr.dtype), int(arr.size), int(arr.nbytes)))
        else:       # block arrays: rows x blocks, each block a group of K / blocks weights
            rows = int(np.prod(arr.shape[:-1], dtype=np.int64))
            entries.append((fmt.name, rows * fmt.row_len(arr), int(arr.nbytes)))
    params, by_format = _tally(entries)
    src = meta.get("source", {})
    return {"kind": "llmrt", "architecture": src.get("extra", {}).get("model_type")
            or src.get("extra", {}).get("architecture") or cfg.family, "family": cfg.family,
            "parameters": params, "formats": by_format, "context_length": cfg.max_position_embeddings,
            "chat_template": _source_chat_template(src), "compute": q.compute_dtype,
            "runs_as": f"{weights_label(q)} as stored",
            "source": src.get("path")}


def _source_chat_template(src: dict) -> bool | None:
    """.llmrt files hold no tokenizer: look at the model they were made from, if it is still there."""
    p = Path(src.get("path") or "/nonexistent")
    if src.get("kind") == "hf" and p.is_dir():
        return _hf_chat_template(p)
    if src.get("kind") == "gguf" and p.is_file():
        from llmrt import formats
        return bool(formats.GGUFFile(p).metadata.get("tokenizer.chat_template"))
    return None


def _print(d: dict) -> None:
    ct = {True: "yes", False: "no", None: "unknown (not stored in .llmrt files; the source model is gone)"}
    rows = [("model", d["path"]), ("kind", d["kind"]), ("architecture", f"{d['architecture']} (family {d['family']})"),
            ("parameters", f"{d['parameters']:,} ({d['parameters'] / 1e6:.1f} M)"),
            ("context length", f"{d['context_length']:,} tokens"), ("chat template", ct[d["chat_template"]]),
            ("runs as", f"{d['runs_as']}, {d['compute']} compute on the {d['tier']} kernels")]
    if d.get("unsupported_formats"):
        rows.append(("unsupported", ", ".join(d["unsupported_formats"]) + " (llmrt cannot run this file)"))
    for k, v in rows:
        print(f"{k:>18}: {v}")
    print(f"{'tensors':>18}:")
    for fmt, t in d["formats"].items():
        print(f"{'':>20}{fmt:<22} {t['tensors']:>5} tensors {t['bytes'] / 2**20:>10.2f} MiB")


def register(sub: argparse._SubParsersAction) -> None:
    i = sub.add_parser("info", help="version, ISA tiers, threads (and what a model file is)",
                       description="Without MODEL: version, ISA tiers compiled / runnable / selected, threads. "
                                   "With MODEL: also its architecture, parameter count, stored tensor formats "
                                   "(count and bytes), context length, whether it has a chat template and the "
                                   "kernel tier that runs it — read from headers only, no weights loaded.")
    i.add_argument("model", nargs="?", help="HF model dir, .gguf or .llmrt file")
    i.add_argument("--json", action="store_true", help="print everything as JSON")
    i.set_defaults(func=cmd_info)
