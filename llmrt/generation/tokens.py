"""The growing (batch, seq) token table of one generate() call, left-padded like transformers."""
from __future__ import annotations

from typing import Any

import numpy as np


def as_id_batch(input_ids: Any) -> np.ndarray:
    """Lists, NumPy arrays and torch tensors -> (batch, seq) int64."""
    if hasattr(input_ids, "detach"):            # torch tensor, without importing torch
        input_ids = input_ids.detach().cpu().numpy()
    try:
        arr = np.asarray(input_ids)
    except ValueError:
        arr = np.empty(0, dtype=object)
    if arr.dtype == object:
        raise ValueError("input_ids rows must all have the same length (pad them and pass attention_mask)")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"input_ids must be 1-D or 2-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"input_ids must be integers, got {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def split_rows(ids: np.ndarray, attention_mask: Any, pad_token_id: int | None,
               eos_ids: list[int]) -> tuple[list[np.ndarray], np.ndarray]:
    """Each row's real tokens and its left-padding width.  Without a mask, padding is inferred as
    transformers does: tokens equal to pad_token_id, when the pad token is not an EOS token."""
    if attention_mask is None:
        if pad_token_id is not None and pad_token_id not in eos_ids and (ids == pad_token_id).any():
            mask = (ids != pad_token_id).astype(np.int64)
        else:
            mask = np.ones_like(ids)
    else:
        mask = as_id_batch(attention_mask)
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask has shape {mask.shape}, input_ids {ids.shape}")
    real = mask != 0
    widths = ids.shape[1] - real.sum(axis=1)
    for b in range(ids.shape[0]):
        if not real[b, widths[b]:].all():
            raise ValueError("attention_mask must describe left padding (zeros first, then ones); "
                             "tokenize with padding_side='left'")
        if widths[b] == ids.shape[1]:
            raise ValueError("an empty prompt cannot be continued; every row needs at least one token")
    return [ids[b, widths[b]:].copy() for b in range(ids.shape[0])], widths.astype(np.int64)


class TokenTable:
    """Rows = left padding + prompt + generated tokens; all rows have the same length."""

    def __init__(self, padded_prompts: np.ndarray, pad_widths: np.ndarray):
        b, w = padded_prompts.shape
        self.buf = np.zeros((b, max(2 * w, w + 16)), dtype=np.int64)
        self.buf[:, :w] = padded_prompts
        self.width = w
        self.pad = np.asarray(pad_widths, dtype=np.int64)
        self.prompt_width = w

    @property
    def shape(self) -> tuple[int, int]:
        return self.buf.shape[0], self.width

    def append(self, tokens: np.ndarray) -> None:
        if self.width == self.buf.shape[1]:
            grown = np.zeros((self.buf.shape[0], 2 * self.buf.shape[1]), dtype=np.int64)
            grown[:, :self.width] = self.buf[:, :self.width]
            self.buf = grown
        self.buf[:, self.width] = tokens
        self.width += 1

    def padded(self) -> np.ndarray:
        return self.buf[:, :self.width].copy()

    def row(self, r: int) -> np.ndarray:
        """Row r without its padding (a view)."""
        return self.buf[r, self.pad[r]:self.width]
