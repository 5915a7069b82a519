"""The token loop of generate(): greedy and sampling over one KV cache per sequence."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from llmrt.generation.processors import MinP, RepetitionPenalty, Temperature, TopK, TopP, softmax


def as_id_batch(input_ids: Any) -> np.ndarray:
    """Lists, NumPy arrays and torch tensors -> (batch, seq) int64."""
    if hasattr(input_ids, "detach"):            # torch tensor, without importing torch
        input_ids = input_ids.detach().cpu().numpy()
    arr = np.asarray(input_ids)
    if arr.dtype == object:
        raise ValueError("input_ids rows must all have the same length (pad them and pass attention_mask)")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"input_ids must be 1-D or 2-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"input_ids must be integers, got {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def build_processors(do_sample: bool, temperature: float | None, top_k: int | None, top_p: float | None,
                     min_p: float | None, repetition_penalty: float | None) -> list[Callable]:
    procs: list[Callable] = []
    if repetition_penalty is not None and repetition_penalty != 1.0:
        procs.append(RepetitionPenalty(repetition_penalty))
    if do_sample:
        if temperature is not None and temperature != 1.0:
            procs.append(Temperature(temperature))
        if top_k is not None and top_k != 0:
            procs.append(TopK(top_k))
        if top_p is not None and top_p < 1.0:
            procs.append(TopP(top_p))
        if min_p is not None and min_p > 0:
            procs.append(MinP(min_p))
    return procs


def sample_token(scores: np.ndarray, rng: np.random.Generator) -> int:
    p = softmax(scores[None, :])[0]
    return int(rng.choice(p.shape[0], p=p))


def _eos_set(eos_token_id) -> set[int]:
    if eos_token_id is None:
        return set()
    if isinstance(eos_token_id, (list, tuple, set, np.ndarray)):
        return {int(e) for e in eos_token_id}
    return {int(eos_token_id)}


def generate_one(step: Callable[[np.ndarray], np.ndarray], prompt: np.ndarray, *, max_new_tokens: int,
                 do_sample: bool, processors: Sequence[Callable], rng: np.random.Generator,
                 eos_token_id=None, streamer=None, stopping_criteria=None) -> np.ndarray:
    """Generate for one sequence.  `step(tokens)` appends tokens to the sequence's cache and
    returns the logits of the last one (vocab,)."""
    eos = _eos_set(eos_token_id)
    seq = list(int(t) for t in prompt)
    if streamer is not None:
        streamer.put(np.asarray(seq, dtype=np.int64)[None, :])
    logits = step(np.asarray(seq, dtype=np.int64))
    for _ in range(max_new_tokens):
        ids = np.asarray(seq, dtype=np.int64)[None, :]
        scores = logits.astype(np.float32, copy=True)[None, :]
        for proc in processors:
            scores = proc(ids, scores)
        tok = sample_token(scores[0], rng) if do_sample else int(np.argmax(scores[0]))
        seq.append(tok)
        if streamer is not None:
            streamer.put(np.asarray([tok], dtype=np.int64))
        if tok in eos:
            break
        if stopping_criteria is not None and _should_stop(stopping_criteria, seq, scores):
            break
        if len(seq) - len(prompt) >= max_new_tokens:
            break
        logits = step(np.asarray([tok], dtype=np.int64))
    if streamer is not None:
        streamer.end()
    return np.asarray(seq, dtype=np.int64)


def _should_stop(criteria, seq: list[int], scores: np.ndarray) -> bool:
    ids = np.asarray(seq, dtype=np.int64)[None, :]
    try:
        import torch
        res = criteria(torch.from_numpy(ids), torch.from_numpy(scores))
        if hasattr(res, "numpy"):
            res = res.numpy()
    except ImportError:
        res = criteria(ids, scores)
    return bool(np.any(np.asarray(res)))
