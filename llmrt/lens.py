"""Reading the residual stream in vocabulary space: the logit lens and per-head direct logit attribution."""
from __future__ import annotations

from typing import Any

import numpy as np

from llmrt.errors import InvalidArgumentError


def final_norm(engine: Any, x: np.ndarray) -> np.ndarray:
    """The model's final norm of rows x (n, hidden) (identity without one)."""
    spec, w, b = engine.spec, engine.final_norm_w, engine.final_norm_b
    if w is None:
        return x
    x64 = x.astype(np.float64)
    if spec.norm == "rms":
        y = x64 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + spec.norm_eps) * w
    else:
        centred = x64 - x64.mean(axis=-1, keepdims=True)
        y = centred / np.sqrt(np.mean(centred * centred, axis=-1, keepdims=True) + spec.norm_eps) * w
        if b is not None:
            y = y + b
    return y.astype(np.float32)


def unembed(engine: Any, resid: Any) -> np.ndarray:
    """The final norm (and projection) and head of residual vectors (..., hidden): (..., vocab).
    It uses none of the engine's scratch, so a hook may call it in the middle of a forward pass."""
    x = np.asarray(resid, dtype=np.float32)
    if x.ndim == 0 or x.shape[-1] != engine.hidden:
        raise InvalidArgumentError(f"unembed takes residual vectors of {engine.hidden} values (..., {engine.hidden}), "
                                   f"got shape {x.shape}")
    rows = final_norm(engine, x.reshape(-1, engine.hidden))
    if engine.project_out is not None:
        rows = engine.project_out(rows)
    return engine.lm_head(rows).reshape(*x.shape[:-1], engine.vocab)


def _cached(cache: dict, name: str) -> np.ndarray:
    if name not in cache:
        raise InvalidArgumentError(f"the cache has no {name!r}: capture it, e.g. run_with_cache(ids, "
                                   f"names=['blocks.*.attn.hook_z', 'blocks.*.hook_resid_post'])")
    return np.asarray(cache[name], dtype=np.float32)


def _dense_rows(linear: Any) -> np.ndarray:
    """The (dequantized) weight of a Linear as a dense (n, k) array."""
    return np.stack([linear.get_row(j) for j in range(linear.n)])


def _frozen_final_norm(engine: Any, parts: np.ndarray, final_resid: np.ndarray) -> np.ndarray:
    """parts (..., hidden) through the final norm with its scale frozen at final_resid (batch, hidden):
    the norm is then linear, so the parts' images add up to the normalized residual (minus the bias)."""
    spec = engine.spec
    w = engine.final_norm_w if engine.final_norm_w is not None else np.ones(engine.hidden, np.float32)
    extra = (slice(None),) + (None,) * (parts.ndim - 2)
    if spec.norm == "rms":
        scale = 1.0 / np.sqrt(np.mean(final_resid.astype(np.float64) ** 2, axis=-1) + spec.norm_eps)
        return (parts * scale[extra][..., None] * w).astype(np.float32)
    centred = parts - parts.mean(axis=-1, keepdims=True)
    scale = 1.0 / np.sqrt(np.var(final_resid.astype(np.float64), axis=-1) + spec.norm_eps)
    return (centred * scale[extra][..., None] * w).astype(np.float32)


def head_attribution(engine: Any, cache: dict, tokens: Any, position: int = -1) -> np.ndarray:
    """(batch, layer, head): head h of block l's output z_h W_O,h through the frozen final norm, dotted
    with the head's row of each batch row's token."""
    n_layer, nh, hd = engine.n_layer, engine.n_head, engine.head_dim
    final = _cached(cache, f"blocks.{n_layer - 1}.hook_resid_post")
    batch, seq = final.shape[:2]
    if not -seq <= position < seq:
        raise InvalidArgumentError(f"position {position} is outside the cached {seq} positions")
    ids = np.broadcast_to(np.asarray(tokens, dtype=np.int64).reshape(-1), (batch,))
    if ids.min() < 0 or ids.max() >= engine.vocab:
        raise InvalidArgumentError(f"token ids must be in [0, {engine.vocab}), got {ids.tolist()}")
    parts = np.empty((batch, n_layer, nh, engine.hidden), np.float32)
    for l in range(n_layer):
        z = _cached(cache, f"blocks.{l}.attn.hook_z")[:, position]           # (batch, head, d_head)
        w_o = _dense_rows(engine.layers[l].attn_out).reshape(engine.hidden, nh, hd)
        parts[:, l] = np.einsum("bhd,ohd->bho", z, w_o)
    normed = _frozen_final_norm(engine, parts, final[:, position])
    if engine.project_out is not None:
        normed = engine.project_out(normed.reshape(-1, engine.hidden)).reshape(*normed.shape[:-1], -1)
    rows = np.stack([engine.lm_head.get_row(int(t)) for t in ids])               # (batch, head width)
    return np.einsum("blhk,bk->blh", normed, rows).astype(np.float32)
