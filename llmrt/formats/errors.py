"""Errors raised by the file readers and writers of llmrt.formats (the classes live in llmrt.errors)."""
from __future__ import annotations

from llmrt.errors import ModelFileError

__all__ = ["ModelFileError", "file_error"]


def file_error(path: object, problem: str, hint: str) -> ModelFileError:
    """Build a ModelFileError with the house message shape: '<path>: <problem>; <hint>'."""
    return ModelFileError(f"{path}: {problem}; {hint}")
