"""Calling transformers-style user objects: logits processors, stopping criteria and streamers.

They were written against transformers, which hands them torch tensors: when torch is importable
they get torch tensors (so `input_ids[0][-1] == stop_id`, `.shape`, `.tolist()` and torch ops all
work), otherwise NumPy arrays.  Whatever they return comes back as NumPy."""
from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

_TORCH: Any = None


def _torch() -> Any:
    """torch if it can be imported, else None (imported on first use only: it is slow to load)."""
    global _TORCH
    if _TORCH is None:
        if importlib.util.find_spec("torch") is None:
            _TORCH = False
        else:
            import torch
            _TORCH = torch
    return _TORCH or None


def to_user(arr: np.ndarray) -> Any:
    """A NumPy array as user code expects it: a torch tensor when torch is installed."""
    torch = _torch()
    arr = np.ascontiguousarray(arr)
    return torch.from_numpy(arr) if torch is not None else arr


def to_numpy(x: Any, dtype: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def as_callables(objs: Any, what: str) -> list:
    """A LogitsProcessorList / StoppingCriteriaList, a plain list of callables, or one callable."""
    if objs is None:
        return []
    if callable(objs) and not isinstance(objs, (list, tuple)):
        return [objs]
    if isinstance(objs, (list, tuple)):
        for o in objs:
            if not callable(o):
                raise TypeError(f"{what} entries must be callable, got {type(o).__name__}")
        return list(objs)
    raise TypeError(f"{what} must be a list of callables (e.g. transformers' {what.title().replace('_', '')}List), "
                    f"got {type(objs).__name__}")


def call_processor(proc: Any, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    out = proc(to_user(ids), to_user(scores))
    res = to_numpy(out, np.float32)
    if res.shape != scores.shape:
        raise ValueError(f"logits processor {type(proc).__name__} returned shape {res.shape}, expected {scores.shape}")
    return np.array(res, dtype=np.float32)


class StoppingCheck:
    """User stopping criteria, called like transformers does: (input_ids, scores) where scores is
    the tuple of processed scores so far when output_scores is on, else None."""

    def __init__(self, criteria: Any):
        self.criteria = as_callables(criteria, "stopping_criteria")
        # transformers pads finished rows only when some criterion stops on an EOS token
        self.watches_eos = any(hasattr(c, "eos_token_id") for c in self.criteria)
        self._scores: list = []

    def __bool__(self) -> bool:
        return bool(self.criteria)

    def record(self, scores: np.ndarray) -> None:
        self._scores.append(to_user(scores))

    def __call__(self, ids: np.ndarray, keep_scores: bool) -> np.ndarray:
        n = ids.shape[0]
        done = np.zeros(n, dtype=bool)
        if not self.criteria:
            return done
        user_ids = to_user(ids)
        scores = tuple(self._scores) if keep_scores else None
        for c in self.criteria:
            res = to_numpy(c(user_ids, scores), bool)
            done |= np.broadcast_to(res.reshape(-1) if res.ndim else res, (n,))
        return done


class StreamerHook:
    """transformers' streamer protocol: put(prompt ids (batch, seq)), put(new tokens (batch,)) per
    step, end().  A streamer with `accepts_numpy = True` gets NumPy arrays even when torch is
    installed (llmrt's own streamers: importing torch would cost a second at start-up)."""

    def __init__(self, streamer: Any):
        for name in ("put", "end"):
            if not callable(getattr(streamer, name, None)):
                raise TypeError(f"streamer must have put() and end() methods (transformers' BaseStreamer), "
                                f"got {type(streamer).__name__}")
        self.streamer = streamer
        self.numpy = bool(getattr(streamer, "accepts_numpy", False))

    def put(self, tokens: np.ndarray) -> None:
        tokens = np.asarray(tokens, dtype=np.int64)
        self.streamer.put(tokens if self.numpy else to_user(tokens))

    def end(self) -> None:
        self.streamer.end()
