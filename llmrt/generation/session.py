"""The conversation a model keeps between interactive generate() calls and chat() turns.

`history` is every token of the conversation; the session's sequence holds them in its KV cache
except `pending` (the last answer's final token: it was sampled, never run through the model).
A new input either repeats the whole conversation and extends it (chat templates, or a caller
that re-sends everything), or continues it (neural-speed's interactive loops send only the new
turn).  Either way only tokens the cache lacks are processed."""
from __future__ import annotations

from typing import Callable

import numpy as np

from llmrt.generation.kv_policy import ContextPolicy, Sequence


class Session:
    def __init__(self) -> None:
        self.seq: Sequence | None = None
        self.history: list[int] = []
        self.pending: list[int] = []

    def reset(self) -> None:
        self.seq, self.history, self.pending = None, [], []

    def begin(self, ids: list[int], policy: ContextPolicy, new_sequence: Callable[[ContextPolicy], Sequence],
              whole_conversation: bool, reusable: bool = True) -> tuple[Sequence, list[int]]:
        """The session's sequence for a turn whose input is `ids`, and the tokens to feed it.
        whole_conversation: the input is the full conversation (chat), so a divergence from the
        history rewinds the cache to the common prefix instead of appending.  reusable=False (a
        prefix-LM, whose context attends both ways: a new turn changes every cached token) runs the
        whole conversation again in a new cache each turn."""
        seq = self.seq
        if seq is not None and not reusable:
            repeats = whole_conversation or ids[:len(self.history)] == self.history
            ids, seq = (list(ids) if repeats else self.history + list(ids)), None
        if seq is None:
            self.seq, self.history, self.pending = new_sequence(policy), list(ids), []
            return self.seq, list(ids)
        if seq.policy.ctx_size != policy.ctx_size:
            # another context size: a new cache, to be given the whole conversation again
            self.seq = seq = new_sequence(policy)
            self.pending = list(self.history)
        seq.policy = policy                     # later calls' streaming options take effect
        if policy.streaming and policy.n_keep >= 0:
            seq.n_keep = policy.n_keep
        n_hist = len(self.history)
        if ids[:n_hist] == self.history:
            feed = self.pending + ids[n_hist:]
        elif whole_conversation:
            if seq.shifted:                     # the start is gone from the cache: rebuild it
                self.seq = seq = new_sequence(policy)
                feed = list(ids)
            else:
                common = _common_prefix(seq.tokens, ids)
                seq.truncate(common)
                feed = ids[common:]
        else:
            feed = self.pending + list(ids)
            ids = self.history + list(ids)
        self.history, self.pending = list(ids), []
        return seq, feed

    def end(self, new_tokens: list[int], fed: int) -> None:
        """The turn produced new_tokens, of which the first `fed` went through the model."""
        self.history += new_tokens
        self.pending = list(new_tokens[fed:])


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n
