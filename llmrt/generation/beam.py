"""Beam search (and beam sampling), step for step what transformers' `_beam_search` does.

Scores are log-softmax of the logits, then the processors (so the repetition penalty applies in
beam mode too), plus each beam's running score.  Each step keeps the top (1 + #EOS, at least 2)
* num_beams continuations per prompt; those hitting a stopping criterion (EOS, maximum length,
user criteria) join the finished hypotheses with score sum_logprobs / generated_len **
length_penalty, the best num_beams others run on.  Every beam has its own KV sequence; beams are
forked by copying a cache only when two continuations share a parent."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from llmrt.generation.callbacks import StoppingCheck
from llmrt.generation.finite import check_logits, check_scores
from llmrt.generation.kv_policy import Sequence, feed_step
from llmrt.generation.options import GenerationOptions
from llmrt.generation.pipeline import LogitsPipeline
from llmrt.generation.processors import log_softmax, softmax
from llmrt.generation.tokens import TokenTable

_NEG = np.float32(-1.0e9)


@dataclass
class BeamResult:
    sequences: np.ndarray                               # (batch * num_return_sequences, len)
    sequences_scores: np.ndarray                        # (batch * num_return_sequences,)
    beam_indices: np.ndarray                            # (batch * num_return_sequences, new)
    scores: list = field(default_factory=list)          # processed log-probs per step (batch*beams, vocab)
    logits: list = field(default_factory=list)          # raw logits per step (batch*beams, vocab)


def _top(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values per row, best first, ties to the lower index (torch.topk).
    A partition finds the k-th value, so only k candidates are sorted (rows are num_beams * vocab)."""
    n = x.shape[1]
    if k >= n or n <= 4 * k:
        return np.argsort(-x, axis=1, kind="stable")[:, :k]
    kth = np.partition(x, n - k, axis=1)[:, n - k]
    out = np.empty((x.shape[0], k), dtype=np.int64)
    for r in range(x.shape[0]):
        above = np.flatnonzero(x[r] > kth[r])
        sel = np.concatenate([above, np.flatnonzero(x[r] == kth[r])[:k - above.size]])
        out[r] = sel[np.lexsort((sel, -x[r, sel]))]
    return out


def _gather(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """x[b, idx[b, j], ...] for every b, j."""
    return x[np.arange(x.shape[0])[:, None], idx]


def beam_search(starts: list[Sequence], first_logits: np.ndarray, table: TokenTable, *, opts: GenerationOptions,
                pipeline: LogitsPipeline, max_new: int, stop: StoppingCheck,
                rng: np.random.Generator) -> BeamResult:
    """starts: one sequence per prompt, already fed with it (first_logits are its last logits)."""
    nb, n_items, vocab = opts.num_beams, len(starts), first_logits.shape[1]
    width = table.prompt_width
    max_length = width + max_new
    eos = np.asarray(opts.eos_ids, dtype=np.int64)
    # transformers fills past a hypothesis' end with `pad_token_id or eos_token_id[0]` (-1 without EOS)
    fill = (opts.pad_id if opts.pad_id != 0 else int(eos[0])) if eos.size else -1
    lp, early = opts.length_penalty, opts.early_stopping
    keep_k = max(2, 1 + eos.size) * nb
    top_mask = np.arange(keep_k) < nb
    keep_scores = opts.return_dict_in_generate and opts.output_scores
    keep_logits = opts.return_dict_in_generate and opts.output_logits

    running = np.full((n_items, nb, max_length), fill, dtype=np.int64)
    running[:, :, :width] = table.padded()[:, None, :]
    finished = running.copy()
    running_scores = np.zeros((n_items, nb), dtype=np.float32)
    running_scores[:, 1:] = _NEG            # only the first beam may start: no duplicate beams
    finished_scores = np.full((n_items, nb), _NEG, dtype=np.float32)
    is_finished = np.zeros((n_items, nb), dtype=bool)
    improvable = np.ones((n_items, 1), dtype=bool)
    running_idx = np.full((n_items, nb, max(max_new, 1)), -1, dtype=np.int64)
    finished_idx = running_idx.copy()
    pad_w = table.pad
    seqs = [[s] * nb for s in starts]       # beams of a prompt share its sequence until they fork
    res = BeamResult(np.empty(0), np.empty(0), np.empty(0))

    cur = width
    logits = np.repeat(first_logits[:, None, :], nb, axis=1)
    tp = getattr(starts[0].engine, "tp", None) if starts else None
    while True:
        flat_logits = logits.reshape(n_items * nb, vocab).astype(np.float32)
        if opts.check_finite:
            check_logits(flat_logits)
        lprobs = log_softmax(flat_logits)
        if pipeline:
            rows = [running[b, j, pad_w[b]:cur] for b in range(n_items) for j in range(nb)]
            lprobs = pipeline(rows, lambda: running[:, :, :cur].reshape(n_items * nb, cur).copy(), lprobs,
                              cur - width)
            if opts.check_finite:
                check_scores(lprobs, every_row_live=False)    # a beam may have nowhere to go
        if keep_logits:
            res.logits.append(flat_logits.copy())
        if keep_scores:
            res.scores.append(lprobs.copy())
            stop.record(lprobs)
        acc = (lprobs.reshape(n_items, nb, vocab) + running_scores[:, :, None]).reshape(n_items, nb * vocab)

        # a. the best keep_k continuations over all beams of each prompt
        if opts.do_sample:
            picks = np.stack([rng.choice(nb * vocab, size=keep_k, replace=False, p=softmax(acc[b:b + 1])[0])
                              for b in range(n_items)])
            picked = np.take_along_axis(acc, picks, axis=1)
            order = np.argsort(-picked, axis=1, kind="stable")
            picks, top_lp = np.take_along_axis(picks, order, axis=1), np.take_along_axis(picked, order, axis=1)
        else:
            picks = _top(acc, keep_k)
            top_lp = np.take_along_axis(acc, picks, axis=1)
        parent, token = picks // vocab, picks % vocab
        top_seq = _gather(running, parent)
        top_seq[:, :, cur] = token
        top_idx = _gather(running_idx, parent)
        top_idx[:, :, cur - width] = parent + (np.arange(n_items) * nb)[:, None]

        # b. which continuations stop here
        hits = np.isin(token, eos) if eos.size else np.zeros_like(token, dtype=bool)
        if cur + 1 >= max_length:
            hits[:] = True
        if stop:
            hits |= stop(top_seq[:, :, :cur + 1].reshape(n_items * keep_k, cur + 1), keep_scores).reshape(
                n_items, keep_k)
        if tp is not None:
            hits = tp.agree(hits, "stop flags")       # tensor parallelism: rank 0's criteria decide

        # c. the best num_beams that did not stop run on
        run_lp = top_lp + hits.astype(np.float32) * _NEG
        nxt = _top(run_lp, nb)
        new_parents = _gather(parent, nxt)
        running = _gather(top_seq, nxt)
        running_scores = _gather(run_lp, nxt)
        running_idx = _gather(top_idx, nxt)

        # d. stopped continuations among the top num_beams join the finished hypotheses
        just = hits & top_mask[None, :]
        fin_lp = top_lp / np.float32((cur + 1 - width) ** lp)
        fin_lp += (is_finished.all(axis=-1, keepdims=True) & (early is True)).astype(np.float32) * _NEG
        fin_lp += (~improvable).astype(np.float32) * _NEG
        fin_lp += (~just).astype(np.float32) * _NEG
        m_scores = np.concatenate([finished_scores, fin_lp], axis=1)
        best = _top(m_scores, nb)
        finished = _gather(np.concatenate([finished, top_seq], axis=1), best)
        finished_scores = _gather(m_scores, best)
        finished_idx = _gather(np.concatenate([finished_idx, top_idx], axis=1), best)
        is_finished = _gather(np.concatenate([is_finished, just], axis=1), best)

        # e. can anything still change?
        cur += 1
        best_len = (max_length - width) if (early == "never" and lp > 0) else (cur - width)
        best_possible = running_scores[:, :1] / np.float32(best_len ** lp)
        worst = np.where(is_finished, finished_scores.min(axis=1, keepdims=True), _NEG)
        improvable = improvable & np.any(best_possible > worst, axis=-1, keepdims=True)
        open_beams = not (is_finished.all() and early is True)
        if not (improvable.any() and open_beams and not hits.all()):
            break
        seqs = [_reorder(seqs[b], new_parents[b]) for b in range(n_items)]
        flat = [s for group in seqs for s in group]
        logits = feed_step(flat, running[:, :, cur - 1].reshape(-1)).reshape(n_items, nb, vocab)

    nrs = opts.num_return_sequences
    seq_out = finished[:, :nrs].reshape(n_items * nrs, max_length)
    idx_out = finished_idx[:, :nrs].reshape(n_items * nrs, -1)
    gen = int((idx_out != -1).sum(axis=1).max())
    res.sequences = seq_out[:, :width + gen]
    res.sequences_scores = finished_scores[:, :nrs].reshape(-1)
    res.beam_indices = idx_out[:, :gen]
    return res


def _reorder(old: list[Sequence], parents: np.ndarray) -> list[Sequence]:
    """New beam j continues old beam parents[j]: the first child takes the parent's sequence,
    further children get copies (into sequences nobody continues, when there are any)."""
    taken: set[int] = set()
    continued = {id(old[int(p)]) for p in parents}      # a set: linear in the beams, not quadratic
    spare = [s for s in {id(s): s for s in old}.values() if id(s) not in continued]
    new: list[Sequence] = []
    for p in parents:
        src = old[int(p)]
        if id(src) not in taken:
            taken.add(id(src))
            new.append(src)
        else:
            dst = spare.pop() if spare else None
            if dst is None:
                dst = src.fork()
            else:
                dst.copy_from(src)
            new.append(dst)
    return new
