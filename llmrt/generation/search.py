"""Greedy decoding and multinomial sampling over a batch of rows (transformers' `_sample`).

Every row has its own KV sequence; the rows still running decode together through one batched
forward pass per step.  A row that finishes gets pad tokens from then on (when an EOS token is
watched, as in transformers) and is no longer run through the model."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from llmrt.generation.callbacks import StoppingCheck, StreamerHook
from llmrt.generation.finite import check_logits, check_scores
from llmrt.generation.kv_policy import Sequence, feed_step
from llmrt.generation.options import GenerationOptions
from llmrt.generation.pipeline import LogitsPipeline
from llmrt.generation.processors import softmax
from llmrt.generation.tokens import TokenTable


@dataclass
class SearchResult:
    scores: list = field(default_factory=list)        # processed scores per step (batch, vocab)
    logits: list = field(default_factory=list)        # raw logits per step (batch, vocab)
    n_new: int = 0


def sample_row(scores: np.ndarray, rng: np.random.Generator) -> int:
    """One draw from softmax(scores) (-inf scores are never drawn)."""
    cdf = np.cumsum(softmax(scores[None, :])[0])
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), scores.shape[0] - 1))


def sample_search(seqs: list[Sequence], first_logits: np.ndarray, table: TokenTable, *, opts: GenerationOptions,
                  pipeline: LogitsPipeline, max_new: int, stop: StoppingCheck, streamer: StreamerHook | None,
                  rng: np.random.Generator) -> SearchResult:
    """Generate into `table` until every row is done; max_new = -1: until EOS / context end."""
    n_rows = len(seqs)
    res = SearchResult()
    eos = np.asarray(opts.eos_ids, dtype=np.int64)
    pad = opts.pad_id
    watch_eos = eos.size > 0 or stop.watches_eos
    keep_scores = opts.return_dict_in_generate and opts.output_scores
    keep_logits = opts.return_dict_in_generate and opts.output_logits
    unfinished = np.ones(n_rows, dtype=bool)
    ctx_ended = np.zeros(n_rows, dtype=bool)      # rows whose context is full: they cannot go on
    logits = first_logits
    if opts.check_finite:
        check_logits(logits)
    tp = getattr(seqs[0].engine, "tp", None) if seqs else None      # tensor parallelism: rank 0 decides for every rank
    while True:
        # rows that only get pad tokens: finished ones (transformers pads them when it watches an
        # EOS token; otherwise they keep generating) and those at the end of their context
        idle = ~unfinished if watch_eos else ctx_ended
        raw = np.array(logits, dtype=np.float32)
        scores = raw.copy()
        if pipeline:
            scores = pipeline([table.row(r) for r in range(n_rows)], table.padded, scores, res.n_new)
            if opts.check_finite:
                check_scores(scores[~idle])
        if keep_scores:
            res.scores.append(scores.copy())
            stop.record(scores)
        if keep_logits:
            res.logits.append(raw)
        if opts.do_sample:
            nxt = np.array([pad if idle[r] else sample_row(scores[r], rng) for r in range(n_rows)], dtype=np.int64)
        else:
            nxt = np.where(idle, pad, np.argmax(scores, axis=-1)).astype(np.int64)
        if tp is not None:
            nxt = tp.agree(nxt, "next tokens")
        table.append(nxt)
        res.n_new += 1

        done = np.isin(nxt, eos) if eos.size else np.zeros(n_rows, dtype=bool)
        if max_new >= 0 and res.n_new >= max_new:
            done[:] = True
        if stop:
            done |= stop(table.padded(), keep_scores)
        if tp is not None:
            done = tp.agree(done, "stop flags")
        for r in range(n_rows):
            # this token is the ctx_size-th and nothing may be dropped: the context has ended
            pol = seqs[r].policy
            if not pol.streaming and len(seqs[r].tokens) + 1 >= pol.ctx_size:
                ctx_ended[r] = True
        unfinished &= ~(done | ctx_ended)
        if streamer is not None:
            streamer.put(nxt)
        if not unfinished.any():
            break
        active = np.flatnonzero(unfinished if watch_eos else ~ctx_ended)
        logits = _frozen_rows(n_rows, raw.shape[1], pad)
        logits[active] = fresh = feed_step([seqs[r] for r in active], nxt[active])
        if opts.check_finite:
            check_logits(fresh)
    return res


def _frozen_rows(n: int, vocab: int, pad: int) -> np.ndarray:
    """Stand-in logits for finished rows: certain of the pad token (they are not run any more)."""
    out = np.full((n, vocab), -np.inf, dtype=np.float32)
    out[:, min(pad, vocab - 1)] = 0.0
    return out
