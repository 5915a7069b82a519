"""Logits processors and warpers on NumPy rows, with transformers' semantics.

Each processor takes (input_ids (batch, seq) int64, scores (batch, vocab) float32) and returns
the new scores; they are applied in the order transformers applies them."""
from __future__ import annotations

import numpy as np


class RepetitionPenalty:
    """Divide positive / multiply negative logits of tokens already present (CTRL paper)."""

    def __init__(self, penalty: float):
        if penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {penalty}")
        self.penalty = float(penalty)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        for b in range(scores.shape[0]):
            ids = np.unique(input_ids[b])
            s = scores[b, ids]
            scores[b, ids] = np.where(s < 0, s * self.penalty, s / self.penalty)
        return scores


class Temperature:
    def __init__(self, temperature: float):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.t = float(temperature)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        return scores / np.float32(self.t)


class TopK:
    def __init__(self, top_k: int, min_tokens_to_keep: int = 1):
        if top_k <= 0:
            raise ValueError(f"top_k must be a positive integer, got {top_k}")
        self.k = max(int(top_k), min_tokens_to_keep)

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        k = min(self.k, scores.shape[-1])
        kth = np.partition(scores, -k, axis=-1)[:, -k][:, None]
        return np.where(scores < kth, -np.inf, scores).astype(np.float32)


class TopP:
    """Keep the smallest set of most likely tokens whose probability reaches top_p."""

    def __init__(self, top_p: float, min_tokens_to_keep: int = 1):
        if not 0.0 <= top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {top_p}")
        self.p = float(top_p)
        self.min_keep = min_tokens_to_keep

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        order = np.argsort(scores, axis=-1, kind="stable")          # ascending, like transformers
        sorted_scores = np.take_along_axis(scores, order, axis=-1)
        probs = _softmax(sorted_scores)
        cum = np.cumsum(probs, axis=-1)
        remove = cum <= (1 - self.p)
        remove[:, -self.min_keep:] = False
        out = scores.copy()
        np.put_along_axis(out, order, np.where(remove, -np.inf, sorted_scores), axis=-1)
        return out


class MinP:
    def __init__(self, min_p: float, min_tokens_to_keep: int = 1):
        if not 0.0 <= min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {min_p}")
        self.p = float(min_p)
        self.min_keep = min_tokens_to_keep

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        probs = _softmax(scores)
        thresh = self.p * probs.max(axis=-1, keepdims=True)
        remove = probs < thresh
        keep_top = np.argsort(-scores, axis=-1, kind="stable")[:, :self.min_keep]
        np.put_along_axis(remove, keep_top, False, axis=-1)
        return np.where(remove, -np.inf, scores).astype(np.float32)


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    e = np.exp(x - np.where(np.isfinite(m), m, 0))
    return e / e.sum(axis=-1, keepdims=True)


softmax = _softmax
