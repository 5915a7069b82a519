"""Errors raised by the file readers and writers of llmrt.formats (the classes live in llmrt.errors)."""
from __future__ import annotations

from llmrt.errors import MissingFileError, ModelFileError

__all__ = ["ModelFileError", "MissingFileError", "file_error", "missing_file_error"]


def file_error(path: object, problem: str, hint: str) -> ModelFileError:
    """Build a ModelFileError with the house message shape: '<path>: <problem>; <hint>'."""
    return ModelFileError(f"{path}: {problem}; {hint}")


def missing_file_error(path: object, problem: str, hint: str) -> MissingFileError:
    """Like file_error, for a file that is not there."""
    return MissingFileError(f"{path}: {problem}; {hint}")
