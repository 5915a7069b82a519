"""generate() options: transformers' GenerationConfig fields plus neural-speed's context options.

Priority, lowest first: built-in defaults, the model's own (config token ids and an HF directory's
generation_config.json), a GenerationConfig passed to the call, then keyword arguments.  Options
are rebuilt on every call, so a later call's arguments always take effect."""
from __future__ import annotations

import dataclasses
import json
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MAX_NEW_TOKENS = 20     # transformers' default (max_length 20 counted as new tokens)


@dataclass
class GenerationOptions:
    """Everything one generate() call does; field names follow transformers and neural-speed."""

    # length
    max_new_tokens: int | None = None       # -1: until EOS or the end of the context
    max_length: int | None = None           # prompt + new (padded prompt), used when max_new_tokens is None
    min_new_tokens: int | None = None
    min_length: int | None = None
    # strategy
    do_sample: bool = False
    num_beams: int = 1
    num_return_sequences: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    # logits processing
    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float = 1.0
    min_p: float | None = None
    typical_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    # special tokens
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    # outputs
    output_scores: bool = False
    output_logits: bool = False
    return_dict_in_generate: bool = False
    use_cache: bool = True                  # accepted for compatibility; the KV cache is always used
    seed: int | None = None
    check_finite: bool = True               # NaN / inf logits raise NonFiniteLogitsError
    # context (neural-speed / StreamingLLM)
    ctx_size: int | None = None
    n_keep: int | None = None               # tokens kept from the start; -1 = the whole prompt
    n_discard: int | None = None            # tokens dropped when full (re-evaluation); -1 = half
    shift_roped_k: bool = False             # ring buffer with re-rotated keys instead of re-evaluation

    # ---------------------------------------------------------------- derived values
    @property
    def eos_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        if isinstance(self.eos_token_id, (list, tuple)):
            return [int(e) for e in self.eos_token_id]
        return [int(self.eos_token_id)]

    @property
    def pad_id(self) -> int:
        """transformers' rule: the pad token, else the first EOS token, else 0."""
        if self.pad_token_id is not None:
            return int(self.pad_token_id)
        return self.eos_ids[0] if self.eos_ids else 0

    @property
    def streaming(self) -> bool:
        """StreamingLLM is on when any of its options is given: the context then never overflows."""
        return self.n_keep is not None or self.n_discard is not None or self.shift_roped_k

    def new_tokens_bounds(self, prompt_width: int) -> tuple[int, int]:
        """(max new tokens, -1 for unbounded; min new tokens) for a (padded) prompt width."""
        if self.max_new_tokens is not None:
            max_new = self.max_new_tokens
        elif self.max_length is not None:
            max_new = self.max_length - prompt_width
            if max_new <= 0:
                raise ValueError(f"the prompt has {prompt_width} tokens but max_length is {self.max_length}; "
                                 f"use max_new_tokens to say how many tokens to add")
        else:
            max_new = DEFAULT_MAX_NEW_TOKENS
        min_new = max(self.min_new_tokens or 0, (self.min_length or 0) - prompt_width, 0)
        return max_new, min_new

    # ---------------------------------------------------------------- validation
    def validate(self) -> "GenerationOptions":
        def integer(name: str, lo: int, allow_none: bool = True) -> None:
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
                raise TypeError(f"{name} must be an integer, got {v!r}")
            if v < lo:
                raise ValueError(f"{name} must be >= {lo}, got {v}")
            setattr(self, name, int(v))

        def number(name: str) -> float:
            v = getattr(self, name)
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
                raise TypeError(f"{name} must be a number, got {v!r}")
            setattr(self, name, float(v))
            return float(v)

        integer("max_new_tokens", -1)
        integer("max_length", 1)
        integer("min_new_tokens", 0)
        integer("min_length", 0)
        integer("num_beams", 1, allow_none=False)
        integer("num_return_sequences", 1, allow_none=False)
        integer("no_repeat_ngram_size", 0, allow_none=False)
        integer("top_k", 0)
        integer("ctx_size", 1)
        integer("n_keep", -1)
        integer("seed", 0)
        if self.n_discard is not None:
            integer("n_discard", -1)
            if self.n_discard == 0:
                raise ValueError("n_discard must be -1 (half of the window) or >= 1, got 0")
        for name in ("do_sample", "output_scores", "output_logits", "return_dict_in_generate", "use_cache",
                     "shift_roped_k", "check_finite"):
            v = getattr(self, name)
            if not isinstance(v, (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {v!r}")
            setattr(self, name, bool(v))
        if number("repetition_penalty") <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        number("length_penalty")
        if not number("temperature") > 0 and self.do_sample:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature} "
                             f"(for greedy decoding pass do_sample=False)")
        if not 0.0 <= number("top_p") <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")
        if self.min_p is not None and not 0.0 <= number("min_p") <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if not 0.0 < number("typical_p") <= 1.0:
            raise ValueError(f"typical_p must be in (0, 1], got {self.typical_p}")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
            setattr(self, name, _token_ids(name, getattr(self, name), many=name == "eos_token_id"))
        if self.num_beams == 1 and self.num_return_sequences > 1 and not self.do_sample:
            raise ValueError("greedy decoding returns one sequence per prompt: num_return_sequences > 1 needs "
                             "do_sample=True or num_beams >= num_return_sequences")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ValueError(f"num_return_sequences ({self.num_return_sequences}) cannot exceed num_beams "
                             f"({self.num_beams})")
        if self.shift_roped_k and self.n_discard not in (None, -1, 1):
            raise ValueError("shift_roped_k drops one token per new token (a ring buffer); n_discard only applies "
                             "to re-evaluation (shift_roped_k=False)")
        return self


def _token_ids(name: str, v: Any, many: bool) -> Any:
    """A token id (or, for EOS, a list of them) as Python ints; NumPy and torch values accepted."""
    if v is None:
        return None
    if hasattr(v, "tolist"):
        v = v.tolist()
    vals = v if isinstance(v, (list, tuple)) and many else [v]
    for e in vals:
        if isinstance(e, bool) or not isinstance(e, numbers.Integral) or not 0 <= e < 2**63:
            raise ValueError(f"{name} must be a non-negative integer below 2**63 (an int64 token id)"
                             f"{' or a list of them' if many else ''}, got {v!r}")
    return [int(e) for e in vals] if isinstance(v, (list, tuple)) else int(v)


_FIELDS = {f.name for f in dataclasses.fields(GenerationOptions)}

# GenerationConfig entries that change nothing here (bookkeeping, or outputs we never produce when off)
_IGNORED = {"transformers_version", "_from_model_config", "use_cache", "cache_implementation", "cache_config",
            "decoder_start_token_id", "is_assistant", "num_assistant_tokens", "num_assistant_tokens_schedule",
            "assistant_confidence_threshold", "compile_config", "disable_compile", "_commit_hash"}
_OFF_VALUES = {"output_attentions": False, "output_hidden_states": False, "remove_invalid_values": False,
               "renormalize_logits": False, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "guidance_scale": 1.0,
               "encoder_repetition_penalty": 1.0, "encoder_no_repeat_ngram_size": 0, "num_beam_groups": 1,
               "diversity_penalty": 0.0, "low_memory": False, "token_healing": False}


def _config_entries(config: Any, strict: bool) -> dict:
    """The entries a GenerationConfig (or a dict of them) sets, checked against what llmrt supports."""
    if config is None:
        return {}
    if isinstance(config, dict):
        items = dict(config)
    elif hasattr(config, "to_diff_dict"):
        items = config.to_diff_dict()           # only what differs from transformers' defaults
    else:
        raise TypeError(f"generation_config must be a transformers.GenerationConfig or a dict, "
                        f"got {type(config).__name__}")
    out, unsupported = {}, []
    for k, v in items.items():
        if k in _IGNORED or v is None or (k in _OFF_VALUES and v == _OFF_VALUES[k]):
            continue
        if k in _FIELDS:
            out[k] = v
        else:
            unsupported.append(k)
    if unsupported and strict:
        raise ValueError(f"generation options not supported by llmrt: {', '.join(sorted(unsupported))}")
    return out


def model_defaults(config: Any, source_kind: str, source_path: str) -> dict:
    """The model's generation defaults: its special tokens, then generation_config.json from a
    Hugging Face directory (like transformers' model.generation_config)."""
    out = {k: getattr(config, k) for k in ("eos_token_id", "pad_token_id", "bos_token_id")
           if getattr(config, k, None) is not None}
    if source_kind == "hf":
        path = Path(source_path) / "generation_config.json"
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                data = {}
            out.update(_config_entries(data, strict=False))
    return out


def resolve_options(defaults: dict, generation_config: Any, kwargs: dict) -> GenerationOptions:
    """Merge defaults < generation_config < keyword arguments into validated options."""
    unknown = set(kwargs) - _FIELDS
    if unknown:
        raise TypeError(f"generate() got unsupported arguments: {', '.join(sorted(unknown))}")
    merged = dict(defaults)
    merged.update(_config_entries(generation_config, strict=True))
    for k, v in kwargs.items():
        # as in transformers, None switches an option off (back to its neutral default); for token
        # ids, seed and lengths None is itself the meaning ("no EOS", "unseeded", ...)
        merged[k] = (0 if k == "top_k" else _NEUTRAL.get(k, None)) if v is None else v
    return GenerationOptions(**merged).validate()


_NEUTRAL = {f.name: f.default for f in dataclasses.fields(GenerationOptions)}
