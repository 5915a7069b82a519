"""KV policies: one sequence's cache and what happens when its context is full (StreamingLLM).

- No streaming: a full context is an error (ask for a bigger ctx_size or for streaming).
- Re-evaluation (n_keep, n_discard): keep the first n_keep tokens (attention sinks), drop n_discard
  (-1: half) of the others, recompute the kept rest from scratch in one batched pass.
- shift_roped_k: a ring buffer.  Each new token takes the slot of the oldest non-kept token; the
  kept tokens' keys are re-rotated by the shift (see KeyShifter.ring_advance), nothing is recomputed.

A cache grows (doubling) up to ctx_size as its sequence does, so a large ctx_size costs nothing
until it is used and memory stays flat once it is."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence as Seq

import numpy as np

_FIRST_CAPACITY = 256


@dataclass(frozen=True)
class ContextPolicy:
    ctx_size: int                 # most tokens the cache holds
    streaming: bool = False       # drop old tokens instead of failing when full
    n_keep: int = 0               # tokens kept from the start; -1: the whole first input (prompt)
    n_discard: int = -1           # re-evaluation: tokens dropped per shift; -1: half of the droppable
    shift_roped_k: bool = False   # ring buffer with re-rotated keys instead of re-evaluation

    def __post_init__(self) -> None:
        if self.ctx_size < 2:
            raise ValueError(f"ctx_size must be at least 2, got {self.ctx_size}")
        if self.n_keep < -1 or (self.streaming and self.n_keep >= self.ctx_size - 1):
            raise ValueError(f"n_keep={self.n_keep} must be -1 or leave room in ctx_size={self.ctx_size}")
        if self.n_discard == 0 or self.n_discard < -1:
            raise ValueError(f"n_discard must be -1 or >= 1, got {self.n_discard}")


class Sequence:
    """One token sequence in one KV cache.  `tokens` are the tokens the cache holds, in order
    (after a StreamingLLM shift: the kept start, then the most recent ones)."""

    def __init__(self, engine: Any, memory_dtype: str, policy: ContextPolicy, capacity: int | None = None):
        self.engine = engine
        self.memory_dtype = memory_dtype
        self.policy = policy
        cap = min(policy.ctx_size, max(int(capacity or _FIRST_CAPACITY), 1))
        self.cache = engine.new_cache(cap, memory_dtype)
        self.tokens: list[int] = []
        self.n_keep: int | None = None    # resolved on the first feed (-1 means the first input)
        self.shifted = False              # tokens were dropped: `tokens` is no longer a prefix of the history
        self.n_processed = 0              # tokens run through the model, re-evaluation included
        self.last_logits: np.ndarray | None = None

    # ------------------------------------------------------------------ feeding
    def feed(self, tokens: Seq[int] | np.ndarray, all_logits: bool = False) -> np.ndarray:
        """Append tokens; returns the logits of the last one (vocab,) or of all (n, vocab)."""
        toks = [int(t) for t in np.asarray(tokens, dtype=np.int64).reshape(-1)]
        if not toks:
            raise ValueError("no tokens to feed")
        self._resolve_keep(len(toks))
        outs, i = [], 0
        while i < len(toks):
            room = self.policy.ctx_size - len(self.tokens)
            if room == 0:
                self._make_room(len(toks) - i)
                room = self.policy.ctx_size - len(self.tokens)
            take = 1 if self.cache.wrapped else min(room, len(toks) - i)
            piece = toks[i:i + take]
            self.reserve(len(self.tokens) + take)
            logits = self.engine.forward(self.cache, piece, all_logits=all_logits)
            self.n_processed += take
            self.tokens.extend(piece)
            outs.append(logits)
            i += take
        self.last_logits = outs[-1][-1].copy()
        return np.concatenate(outs) if all_logits else self.last_logits

    def prepare_one(self) -> None:
        """Make room for one more token (shifting if needed), before a batched decode step."""
        self._resolve_keep(1)
        if len(self.tokens) == self.policy.ctx_size:
            self._make_room(1)
        self.reserve(len(self.tokens) + 1)

    def _resolve_keep(self, n_first: int) -> None:
        if self.n_keep is None:
            keep = self.policy.n_keep if self.policy.n_keep >= 0 else len(self.tokens) + n_first
            if self.policy.streaming and keep >= self.policy.ctx_size - 1:
                raise ValueError(f"n_keep={keep} (n_keep=-1 keeps the whole prompt) leaves no room in "
                                 f"ctx_size={self.policy.ctx_size}")
            self.n_keep = keep

    def _make_room(self, incoming: int) -> None:
        p, n, keep = self.policy, len(self.tokens), self.n_keep
        if not p.streaming:
            raise ValueError(f"context overflow: {n} tokens fill ctx_size={p.ctx_size}; raise ctx_size, or pass "
                             f"n_keep / n_discard / shift_roped_k=True to keep generating (StreamingLLM)")
        self.shifted = True
        if p.shift_roped_k:
            if incoming == 1 and self.engine.shifts.ring_fits(self.cache.ctx):
                self.engine.shifts.ring_advance(self.cache, keep)
                del self.tokens[keep]
            else:
                drop = min(n - keep, incoming)
                self.engine.shifts.shift_window(self.cache, keep, drop)
                del self.tokens[keep:keep + drop]
            return
        drop = p.n_discard if p.n_discard > 0 else (n - keep) // 2
        drop = min(max(drop, 1), n - keep)
        tail = self.tokens[keep + drop:]
        self.cache.truncate(keep)
        del self.tokens[keep:]
        if tail:            # re-evaluate what is kept after the sinks, in one batched pass
            self.engine.forward(self.cache, tail)
            self.n_processed += len(tail)
            self.tokens.extend(tail)

    # ------------------------------------------------------------------ cache management
    def reserve(self, n: int) -> None:
        """Grow the cache (doubling, at most ctx_size) so it holds n tokens."""
        if n > self.cache.ctx:
            cap = min(self.policy.ctx_size, max(n, 2 * self.cache.ctx))
            self.cache = self.cache.resized(cap)

    def truncate(self, n: int) -> None:
        """Keep the first n cached tokens (a later input shares only that much)."""
        if self.shifted:
            raise ValueError("a shifted context cannot be rewound")
        self.cache.truncate(n)
        del self.tokens[n:]
        if self.n_keep is not None and self.policy.n_keep < 0 and n < self.n_keep:
            self.n_keep = None          # "the whole prompt" is decided again by the next input
        self.last_logits = None

    def copy_from(self, other: "Sequence") -> None:
        """Become a copy of other (a forked beam)."""
        if self.cache.ctx != other.cache.ctx:
            self.cache = self.engine.new_cache(other.cache.ctx, self.memory_dtype)
        self.cache.copy_from(other.cache)
        self.policy = other.policy
        self.tokens = list(other.tokens)
        self.n_keep, self.shifted = other.n_keep, other.shifted
        self.last_logits = None if other.last_logits is None else other.last_logits.copy()

    def fork(self) -> "Sequence":
        seq = Sequence(self.engine, self.memory_dtype, self.policy, self.cache.ctx)
        seq.copy_from(self)
        return seq


def feed_step(seqs: list[Sequence], tokens: Seq[int]) -> np.ndarray:
    """One new token for each sequence, through one batched forward pass: (len(seqs), vocab)."""
    if len(seqs) == 1:
        return seqs[0].feed(tokens)[None, :]
    for s in seqs:
        s.prepare_one()
    logits = seqs[0].engine.forward_batch([s.cache for s in seqs], np.asarray(tokens, dtype=np.int64))
    for s, t, row in zip(seqs, tokens, logits):
        s.tokens.append(int(t))
        s.n_processed += 1
        s.last_logits = row
    return logits
