"""Tokenizers for what llmrt loads: a GGUF file's own vocabulary (built by llmrt, no torch) or a
Hugging Face directory's tokenizer files (through transformers' AutoTokenizer)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast


def load_tokenizer(path: str | os.PathLike):
    """A transformers tokenizer for a model: an HF directory's tokenizer files, or a GGUF file's vocabulary."""
    path = Path(path)
    if path.is_file():
        from llmrt.formats import is_gguf_file

        if is_gguf_file(path):
            from llmrt.formats import GGUFFile
            from llmrt.tokenization.gguf_vocab import tokenizer_from_gguf_metadata

            return tokenizer_from_gguf_metadata(GGUFFile(path).metadata)
        raise ValueError(f"no tokenizer can be read from {path}; pass the original model directory with --tokenizer")
    if not path.is_dir():
        raise FileNotFoundError(f"no tokenizer at {path}")
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} has no usable tokenizer ({type(e).__name__}: {str(e).splitlines()[0]}); "
                         f"pass a directory with tokenizer files with --tokenizer") from None


def tokenizer_from_gguf_metadata(meta: dict) -> PreTrainedTokenizerFast:
    """llmrt's tokenizer for a GGUF metadata dict (see `llmrt.tokenization.gguf_vocab`)."""
    from llmrt.tokenization.gguf_vocab import tokenizer_from_gguf_metadata as build

    return build(meta)


__all__ = ["load_tokenizer", "tokenizer_from_gguf_metadata"]
