"""NaN / infinity in the logits is an error, not a token: a NaN row's argmax is token 0, so a broken
model (a negative norm epsilon, a non-positive rotary base, a NaN weight) or an edited activation
would otherwise "generate" token 0 forever without a word."""
from __future__ import annotations

import numpy as np

from llmrt.errors import NonFiniteLogitsError

OPT_OUT = "pass check_finite=False to get them anyway (e.g. while editing activations)"


def check_logits(logits: np.ndarray, what: str = "the model's logits") -> None:
    """Refuse logits holding NaN or +-inf; the message says where and what usually causes it."""
    if logits.size == 0 or np.isfinite(logits.min() + logits.max()):   # no temporaries: NaN and inf propagate
        return
    bad = np.argwhere(~np.isfinite(logits))
    where = ", ".join(str(tuple(int(i) for i in b)) for b in bad[:3])
    raise NonFiniteLogitsError(
        f"{what} hold {len(bad)} NaN/inf values (first at index {where} of shape {logits.shape}); "
        f"the weights or the config produced them (a NaN weight, a zero or negative norm epsilon, a "
        f"non-positive rotary base); {OPT_OUT}")


def check_scores(scores: np.ndarray, every_row_live: bool = True) -> None:
    """Scores after the logits processors: -inf masks a token, but NaN, +inf or (every_row_live) a
    row with every token masked leaves nothing to choose."""
    nan_or_pos_inf = np.isnan(scores) | (scores == np.inf)
    dead = ~np.isfinite(scores).any(axis=-1) if every_row_live else np.zeros(scores.shape[:-1], bool)
    if not nan_or_pos_inf.any() and not dead.any():
        return
    row = int(np.flatnonzero(nan_or_pos_inf.any(axis=-1) | dead)[0])
    raise NonFiniteLogitsError(
        f"the scores after the logits processors are NaN, +inf or all -inf in row {row}: a logits "
        f"processor (yours or a built-in one such as a too-strict no_repeat_ngram_size) left no token to "
        f"choose; {OPT_OUT}")
