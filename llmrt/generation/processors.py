"""Logits processors and warpers on NumPy rows, with transformers' semantics and order.

A processor takes (ids (n, seq) int64, scores (n, vocab) float32) and returns new scores; ids are
the rows' own tokens (prompt without padding, then what was generated), so a row of a padded batch
is processed exactly as if it were generated alone.  `hf_name` is the transformers class a
processor stands for: a user processor of that class replaces it, as in transformers."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


class RepetitionPenalty:
    """Divide positive / multiply negative scores of tokens already present (CTRL paper)."""

    hf_name = "RepetitionPenaltyLogitsProcessor"

    def __init__(self, penalty: float):
        if not penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {penalty}")
        self.penalty = float(penalty)

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        for b in range(scores.shape[0]):
            seen = np.unique(ids[b][ids[b] < scores.shape[1]])
            s = scores[b, seen]
            with np.errstate(over="ignore"):   # a huge penalty sends scores to -inf, as in torch's float32
                scores[b, seen] = np.where(s < 0, s * np.float32(self.penalty), s / np.float32(self.penalty))
        return scores


class NoRepeatNGram:
    """Ban every token that would complete an n-gram already present in the row."""

    hf_name = "NoRepeatNGramLogitsProcessor"

    def __init__(self, n: int):
        if n <= 0:
            raise ValueError(f"no_repeat_ngram_size must be > 0, got {n}")
        self.n = int(n)

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        n, length = self.n, ids.shape[1]
        if length < n:
            return scores
        for b in range(scores.shape[0]):
            windows = sliding_window_view(ids[b], n)                # (length - n + 1, n)
            prefix = ids[b, length - n + 1:]
            banned = windows[np.all(windows[:, :-1] == prefix, axis=1), -1]
            scores[b, banned[banned < scores.shape[1]]] = -np.inf
        return scores


class MinNewTokens:
    """EOS is impossible until min_new tokens have been generated (min_length folded in)."""

    hf_name = "MinNewTokensLengthLogitsProcessor"

    def __init__(self, min_new: int, eos_ids: list[int]):
        self.min_new = int(min_new)
        self.eos = np.asarray(eos_ids, dtype=np.int64)

    def apply(self, scores: np.ndarray, n_new: int) -> np.ndarray:
        if n_new < self.min_new:
            scores[:, self.eos[self.eos < scores.shape[1]]] = -np.inf
        return scores


class Temperature:
    hf_name = "TemperatureLogitsWarper"

    def __init__(self, temperature: float):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.t = float(temperature)

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        return scores / np.float32(self.t)


class TopK:
    hf_name = "TopKLogitsWarper"

    def __init__(self, top_k: int, min_tokens_to_keep: int = 1):
        if top_k <= 0:
            raise ValueError(f"top_k must be a positive integer, got {top_k}")
        self.k = max(int(top_k), min_tokens_to_keep)

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        k = min(self.k, scores.shape[-1])
        kth = np.partition(scores, -k, axis=-1)[:, -k][:, None]
        return np.where(scores < kth, -np.inf, scores).astype(np.float32)


class TopP:
    """Keep the smallest set of most likely tokens whose probability reaches top_p."""

    hf_name = "TopPLogitsWarper"

    def __init__(self, top_p: float, min_tokens_to_keep: int = 1):
        if not 0.0 <= top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {top_p}")
        self.p = float(top_p)
        self.min_keep = min_tokens_to_keep

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        order = np.argsort(scores, axis=-1, kind="stable")          # ascending, like transformers
        sorted_scores = np.take_along_axis(scores, order, axis=-1)
        cum = np.cumsum(softmax(sorted_scores), axis=-1)
        remove = cum <= (1 - self.p)
        remove[:, -self.min_keep:] = False
        out = scores.copy()
        np.put_along_axis(out, order, np.where(remove, -np.inf, sorted_scores).astype(np.float32), axis=-1)
        return out


class MinP:
    """Drop tokens less likely than min_p times the most likely one."""

    hf_name = "MinPLogitsWarper"

    def __init__(self, min_p: float, min_tokens_to_keep: int = 1):
        if not 0.0 <= min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {min_p}")
        self.p = float(min_p)
        self.min_keep = min_tokens_to_keep

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        probs = softmax(scores)
        remove = probs < self.p * probs.max(axis=-1, keepdims=True)
        keep_top = np.argsort(-probs, axis=-1, kind="stable")[:, :self.min_keep]
        np.put_along_axis(remove, keep_top, False, axis=-1)
        return np.where(remove, -np.inf, scores).astype(np.float32)


class TypicalP:
    """Locally typical sampling: keep the tokens whose surprise is closest to the entropy."""

    hf_name = "TypicalLogitsWarper"

    def __init__(self, mass: float, min_tokens_to_keep: int = 1):
        if not 0.0 < mass < 1.0:
            raise ValueError(f"typical_p must be in (0, 1), got {mass}")
        self.mass = float(mass)
        self.min_keep = min_tokens_to_keep

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        logp = log_softmax(scores).astype(np.float64)
        p = np.exp(logp)
        # masked tokens (-inf, p = 0) add nothing to the entropy: no 0 * -inf products
        ent = -np.sum(np.where(p > 0, np.where(p > 0, logp, 0.0) * p, 0.0), axis=-1, keepdims=True)
        shifted = np.abs(-logp - ent)
        order = np.argsort(shifted, axis=-1, kind="stable")
        sorted_shift = np.take_along_axis(shifted, order, axis=-1)
        cum = np.cumsum(softmax(np.take_along_axis(scores, order, axis=-1)), axis=-1)
        last = np.minimum((cum < self.mass).sum(axis=-1), scores.shape[-1] - 1)
        remove = sorted_shift > np.take_along_axis(sorted_shift, last[:, None], axis=-1)
        remove[:, :self.min_keep] = False
        mask = np.zeros_like(remove)
        np.put_along_axis(mask, order, remove, axis=-1)
        return np.where(mask, -np.inf, scores).astype(np.float32)


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64; rows of -inf only stay zero."""
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    e = np.exp(x - np.where(np.isfinite(m), m, 0))
    s = e.sum(axis=-1, keepdims=True)
    return e / np.where(s > 0, s, 1)


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax, computed in float64 and returned as float32 (what beam search adds up)."""
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    z = x - m
    return (z - np.log(np.exp(z).sum(axis=-1, keepdims=True))).astype(np.float32)
