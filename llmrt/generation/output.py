"""What generate(return_dict_in_generate=True) returns: transformers' output fields, as NumPy."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np


@dataclass
class GenerateOutput:
    """Like transformers' GenerateDecoderOnlyOutput / GenerateBeamDecoderOnlyOutput.

    sequences: (batch * num_return_sequences, len) int64
    scores: per step, the processed scores (batch [* num_beams], vocab) float32 (output_scores)
    logits: per step, the raw logits (batch [* num_beams], vocab) float32 (output_logits)
    sequences_scores: beam search, final score of each returned sequence (output_scores)
    beam_indices: beam search, the beam each step's token came from (batch * beams numbering)
    """

    sequences: np.ndarray
    scores: tuple[np.ndarray, ...] | None = None
    logits: tuple[np.ndarray, ...] | None = None
    sequences_scores: np.ndarray | None = None
    beam_indices: np.ndarray | None = None

    def __getitem__(self, key: str | int) -> Any:
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, k) for k in self.keys())
