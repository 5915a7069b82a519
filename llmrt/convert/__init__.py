"""File-to-file tools: a Hugging Face directory to a GGUF file (`convert_to_gguf`), and any model to an
.llmrt file or a GGUF of llama.cpp's block types (`quantize_model`); both stream tensor by tensor."""
from __future__ import annotations

from llmrt.convert.gguf import convert_to_gguf
from llmrt.convert.quantize import quantize_model

__all__ = ["convert_to_gguf", "quantize_model"]
