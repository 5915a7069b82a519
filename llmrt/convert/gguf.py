"""Hugging Face directory -> GGUF file that llama.cpp (and llmrt) read, written tensor by tensor.

Names, layouts and metadata follow llama.cpp's converter: ``token_embd`` / ``blk.N.*`` /
``output_norm`` / ``output``, llama's Q/K rows permuted for its rotary pairing, NeoX QKV as
[Q; K; V] blocks, the architecture's hyper-parameter keys and the tokenizer.  Matrices get the
requested type; 1-D tensors (norms, biases) stay F32 as llama.cpp keeps them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from llmrt import formats
from llmrt.convert._parallel import ordered_map
from llmrt.config import ModelConfig
from llmrt.tokenization.gguf_metadata import tokenizer_metadata
from llmrt.formats.gguf_writer import GGUFStreamWriter, encode_tensor
from llmrt.formats.json_files import read_hf_config
from llmrt.models import family_for_hf
from llmrt.models.gguf_export import GGUFLayout, gguf_layout

__all__ = ["convert_to_gguf", "read_hf_config", "OUTTYPES", "FILE_TYPES", "gguf_tensor_type"]

# --outtype -> GGML type of the matrices
OUTTYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q4_0": "Q4_0", "q4_1": "Q4_1", "q8_0": "Q8_0"}
# general.file_type (llama.cpp's LlamaFileType)
FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "bf16": 32}
_QUANTIZED = ("q4_0", "q4_1", "q8_0")


def gguf_tensor_type(shape: tuple[int, ...], outtype: str) -> str:
    """The GGML type of one tensor: 1-D stays F32; a block type needs rows of a multiple of 32
    elements (others fall back to F16, as llama.cpp falls back to a type that fits)."""
    if outtype == "f32" or len(shape) < 2:
        return "F32"
    t = OUTTYPES[outtype]
    if outtype in _QUANTIZED and shape[-1] % 32:
        return "F16"
    return t


def _internal_stream(model_dir: Path, cfg: ModelConfig, family, lora, dry: bool) -> Iterator[tuple[str, np.ndarray]]:
    """Internal-name tensors of the checkpoint, LoRA merged on the HF names first.  dry=True streams
    zero-strided stand-ins of the right shapes (no data read) to plan the file."""
    if dry:
        info = formats.list_checkpoint_tensors(model_dir)
        raw = ((n, np.broadcast_to(np.float32(0), shape)) for n, (shape, _) in info.items())
    else:
        raw = formats.iter_checkpoint(model_dir)
        if lora is not None:
            raw = ((n, lora.merge(n, a)) for n, a in raw)
    return family.map_hf_tensors(cfg, raw)


def _gguf_tensors(model_dir: Path, cfg: ModelConfig, family, layout: GGUFLayout, lora,
                  dry: bool) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, float array in GGUF layout), one at a time."""
    tied_copy = cfg.tie_word_embeddings and layout.tied_head_needs_output
    for internal, arr in _internal_stream(model_dir, cfg, family, lora, dry):
        out = layout.transform(cfg, internal, arr) if not dry else arr
        yield layout.name(internal), out
        if internal == "embed" and tied_copy:
            yield layout.name("lm_head.weight"), out


def convert_to_gguf(model_dir: str | os.PathLike, outfile: str | os.PathLike, outtype: str = "f16", *,
                    peft: str | os.PathLike | None = None, force: bool = False, progress: bool = True,
                    nthread: int = 1) -> Path:
    """Write a Hugging Face checkpoint directory as a GGUF file.

    outtype: f32 | f16 | bf16 (llama.cpp's convert) or q4_0 | q4_1 | q8_0 (block types, quantized
    with ggml's reference rounding).  peft: a LoRA adapter directory merged into the weights first.
    Refuses to replace an existing file unless force; nthread tensors are encoded at once."""
    outtype = outtype.lower()
    if outtype not in OUTTYPES:
        raise ValueError(f"unknown output type {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    model_dir, outfile = Path(model_dir), Path(outfile)
    hf = read_hf_config(model_dir)
    family = family_for_hf(hf["model_type"])
    cfg = family.config_from_hf(hf, model_dir / "config.json")
    layout = gguf_layout(cfg)
    meta = layout.metadata(cfg)                      # raises for what GGUF cannot express
    lora = None
    if peft is not None:
        from llmrt.formats.lora import LoraAdapter
        lora = LoraAdapter(peft)
        lora.check_targets(formats.list_checkpoint_tensors(model_dir))
    writer = GGUFStreamWriter(outfile, layout.arch, overwrite=force)
    name = hf.get("_name_or_path") or model_dir.name
    writer.add("general.name", str(Path(name).name or model_dir.name), "string")
    writer.add("general.file_type", FILE_TYPES[outtype], "uint32")
    if outtype in _QUANTIZED:
        writer.add("general.quantization_version", 2, "uint32")
    for key, value, vtype in meta + tokenizer_metadata(model_dir, cfg.vocab_size, hf):
        writer.add(key, value, vtype)
    plan: list[tuple[str, str]] = []
    for gname, arr in _gguf_tensors(model_dir, cfg, family, layout, None, dry=True):
        ttype = gguf_tensor_type(arr.shape, outtype)
        writer.plan(gname, arr.shape, ttype)
        plan.append((gname, ttype))
    writer.open()
    with writer:
        types = dict(plan)
        stream = ordered_map(lambda t: (t[0], encode_tensor(t[1], types[t[0]])),
                             _gguf_tensors(model_dir, cfg, family, layout, lora, dry=False), nthread)
        if progress:
            from tqdm.auto import tqdm
            stream = tqdm(stream, total=len(plan), desc=f"writing {outfile.name}", unit="tensor")
        for gname, data in stream:
            writer.write(gname, data)
        return writer.finish()
