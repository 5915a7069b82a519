"""Errors raised by the file readers and writers of llmrt.formats."""
from __future__ import annotations

__all__ = ["ModelFileError"]


class ModelFileError(ValueError):
    """A model or checkpoint file is malformed: wrong magic, unsupported version, truncated,
    corrupt header or checksum mismatch.

    A ValueError subclass so callers that already catch ValueError for bad input keep working.
    Messages name the file, say what is wrong with it and what to do about it.
    """


def file_error(path: object, problem: str, hint: str) -> ModelFileError:
    """Build a ModelFileError with the house message shape: '<path>: <problem>; <hint>'."""
    return ModelFileError(f"{path}: {problem}; {hint}")
