"""Quality measures: perplexity over fixed windows, and agreement with reference logits
(KL divergence, top-1), the way llama.cpp's perplexity tool reports them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np


def windows(ids: np.ndarray, size: int, count: int | None = None) -> Iterator[np.ndarray]:
    """Consecutive non-overlapping windows of `size` tokens."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    n = len(ids) // size if count is None else min(count, len(ids) // size)
    if n == 0:
        raise ValueError(f"{len(ids)} tokens do not fill one window of {size}")
    for i in range(n):
        yield ids[i * size:(i + 1) * size]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


@dataclass
class Comparison:
    """Accumulates, token by token, how a model's predictions compare with a reference's."""

    nll: float = 0.0
    ref_nll: float = 0.0
    kl: float = 0.0
    top1_same: int = 0
    count: int = 0

    def add(self, logits: np.ndarray, ref_logits: np.ndarray, targets: np.ndarray) -> None:
        """logits, ref_logits: (n, vocab) predicting targets (n,)."""
        lp, rp = log_softmax(logits), log_softmax(ref_logits)
        rows = np.arange(len(targets))
        self.nll -= float(lp[rows, targets].sum())
        self.ref_nll -= float(rp[rows, targets].sum())
        self.kl += float((np.exp(rp) * (rp - lp)).sum())
        self.top1_same += int((lp.argmax(-1) == rp.argmax(-1)).sum())
        self.count += len(targets)

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.nll / self.count))

    @property
    def ref_perplexity(self) -> float:
        return float(np.exp(self.ref_nll / self.count))

    @property
    def ppl_ratio(self) -> float:
        return self.perplexity / self.ref_perplexity

    @property
    def mean_kl(self) -> float:
        return self.kl / self.count

    @property
    def top1(self) -> float:
        return self.top1_same / self.count

    def summary(self) -> dict:
        return {"ppl": round(self.perplexity, 4), "ref_ppl": round(self.ref_perplexity, 4),
                "ppl_ratio": round(self.ppl_ratio, 5), "mean_kl": round(self.mean_kl, 5),
                "top1": round(self.top1, 4), "tokens": self.count}


def perplexity(logits_fn: Callable[[np.ndarray], np.ndarray], chunks: Iterable[np.ndarray],
               progress: bool = False) -> float:
    """exp(mean NLL) of each window's tokens 1..n-1 given the ones before (no BOS added)."""
    nll, count = 0.0, 0
    chunks = list(chunks)
    it = chunks
    if progress:
        from tqdm import tqdm
        it = tqdm(chunks, desc="perplexity", unit="window")
    for w in it:
        lp = log_softmax(logits_fn(w)[:-1])
        nll -= float(lp[np.arange(len(w) - 1), w[1:]].sum())
        count += len(w) - 1
    return float(np.exp(nll / count))
