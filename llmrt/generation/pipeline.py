"""The per-step scores pipeline, in transformers' order: repetition penalty, no-repeat n-gram,
minimum length; then the user's logits processors (one of the same transformers class replaces
the built-in one in place, as `_merge_criteria_processor_list` does); then, when sampling, the
warpers temperature, top-k, top-p, min-p, typical-p."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from llmrt.generation.callbacks import as_callables, call_processor
from llmrt.generation.options import GenerationOptions
from llmrt.generation.processors import (MinNewTokens, MinP, NoRepeatNGram, RepetitionPenalty, Temperature, TopK,
                                         TopP, TypicalP)


class LogitsPipeline:
    def __init__(self, opts: GenerationOptions, min_new: int, user_processors: Any = None):
        builtin: list = []
        if opts.repetition_penalty != 1.0:
            builtin.append(RepetitionPenalty(opts.repetition_penalty))
        if opts.no_repeat_ngram_size > 0:
            builtin.append(NoRepeatNGram(opts.no_repeat_ngram_size))
        if min_new > 0 and opts.eos_ids:
            builtin.append(MinNewTokens(min_new, opts.eos_ids))
        users = as_callables(user_processors, "logits_processor")
        self.stages: list = []
        for p in builtin:
            same = [u for u in users if type(u).__name__ == p.hf_name]
            self.stages.append(("user", same[0]) if same else ("row", p))
        self.stages += [("user", u) for u in users if not any(s[1] is u for s in self.stages)]
        if opts.do_sample:
            # beam sampling keeps one token beyond the EOS tokens so a beam can always continue
            keep = len(opts.eos_ids) + 1 if opts.num_beams > 1 else 1
            warpers: list = []
            if opts.temperature != 1.0:
                warpers.append(Temperature(opts.temperature))
            if opts.top_k:
                warpers.append(TopK(opts.top_k, keep))
            if opts.top_p < 1.0:
                warpers.append(TopP(opts.top_p, keep))
            if opts.min_p is not None:
                warpers.append(MinP(opts.min_p, keep))
            if opts.typical_p < 1.0:
                warpers.append(TypicalP(opts.typical_p, keep))
            self.stages += [("batch", w) for w in warpers]

    def __bool__(self) -> bool:
        return bool(self.stages)

    def __call__(self, rows: Sequence[np.ndarray], padded: Callable[[], np.ndarray], scores: np.ndarray,
                 n_new: int) -> np.ndarray:
        """rows: each row's own tokens (no padding); padded: the (batch, seq) ids transformers would
        pass, built only for user processors; scores (batch, vocab) float32, modified in place or
        replaced; n_new: tokens generated so far (all rows move in lockstep)."""
        for kind, p in self.stages:
            if kind == "user":
                scores = call_processor(p, padded(), scores)
            elif isinstance(p, MinNewTokens):
                scores = p.apply(scores, n_new)
            elif kind == "row":
                for r, ids in enumerate(rows):
                    scores[r:r + 1] = p(ids[None, :], scores[r:r + 1])
            else:
                scores = p(None, scores)
        return scores
