"""Typed reads and range checks of configuration fields.

Every family reads its HF config.json or GGUF metadata through these helpers, so a field of the
wrong type or out of range is a ConfigError naming the field (the loader adds the file), never a
KeyError, a ZeroDivisionError, a NumPy reshape error or NaN logits later on.  ModelConfig.validate()
uses the same checks on the finished config, whatever it was loaded from.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from numbers import Integral, Real
from typing import Any, Callable, Iterator, Mapping, TypeVar

from llmrt.errors import ConfigError, LlmrtError, UnsupportedError

# sizes are C ints in the kernels and the engine
MAX_SIZE = 2 ** 31 - 1
# layers, heads and head width: per-layer and per-head tables (windows, rotary frequencies, ALiBi
# slopes) are built from the config before any weight is read, so absurd counts are refused, not
# allocated (real models: <= 128 layers or heads, heads <= 512 wide)
MAX_COUNT = 2 ** 16

REQUIRED: Any = object()       # default= of a field that must be present

T = TypeVar("T")


def describe(value: Any) -> str:
    """A value as an error message shows it: repr, shortened, and its JSON-ish type."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    kind = {bool: "a boolean", str: "a string", list: "a list", dict: "an object", float: "a float",
            int: "an integer", type(None): "null"}.get(type(value), type(value).__name__)
    return f"{text} ({kind})"


def as_int(value: Any, field: str, *, min_value: int | None = None, max_value: int = MAX_SIZE) -> int:
    """value as an int: an integer, or a float with no fractional part; never a bool or a string."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigError(f"{field} must be an integer, got {describe(value)}")
    if not isinstance(value, Integral):
        if not math.isfinite(value) or value != int(value):
            raise ConfigError(f"{field} must be an integer, got {describe(value)}")
    n = int(value)
    if min_value is not None and n < min_value:
        raise ConfigError(f"{field} must be at least {min_value}, got {n}")
    if n > max_value:
        raise ConfigError(f"{field} must be at most {max_value}, got {n}")
    return n


def as_float(value: Any, field: str, *, positive: bool = False, min_value: float | None = None) -> float:
    """value as a finite float (an int is fine; a bool or a string is not)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigError(f"{field} must be a number, got {describe(value)}")
    x = float(value)
    if not math.isfinite(x):
        raise ConfigError(f"{field} must be a finite number, got {value!r}")
    if positive and not x > 0:
        raise ConfigError(f"{field} must be greater than 0, got {value!r}")
    if min_value is not None and x < min_value:
        raise ConfigError(f"{field} must be at least {min_value}, got {value!r}")
    return x


def as_bool(value: Any, field: str) -> bool:
    """Only true / false: the string "false" (truthy in Python) or 0 / 1 are refused."""
    if not isinstance(value, bool):
        raise ConfigError(f"{field} must be true or false, got {describe(value)}")
    return value


def as_str(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{field} must be a string, got {describe(value)}")
    return value


def as_dict(value: Any, field: str) -> dict:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{field} must be an object, got {describe(value)}")
    return dict(value)


def as_token_id(value: Any, field: str, vocab_size: int) -> int:
    """A token id of the vocabulary."""
    return as_int(value, field, min_value=0, max_value=vocab_size - 1)


def _lookup(d: Mapping, names: tuple[str, ...]) -> tuple[str, Any]:
    """(name, value) of the first of names present and not null in d, else (names[0], None)."""
    for n in names:
        v = d.get(n)
        if v is not None:
            return n, v
    return names[0], None


def _field(d: Mapping, names: tuple[str, ...], default: Any, convert: Callable[[Any, str], T]) -> T:
    if not isinstance(d, Mapping):
        raise ConfigError(f"the configuration must be an object, got {describe(d)}")
    name, value = _lookup(d, names)
    if value is None:
        if default is REQUIRED:
            alias = f" (or {', '.join(repr(n) for n in names[1:])})" if len(names) > 1 else ""
            raise ConfigError(f"required field {name!r}{alias} is missing or null")
        return default
    return convert(value, repr(name))


def field_int(d: Mapping, *names: str, default: Any = REQUIRED, min_value: int | None = None,
              max_value: int = MAX_SIZE) -> int:
    """The first of names present in d (configs rename keys across versions), as an int."""
    return _field(d, names, default, lambda v, f: as_int(v, f, min_value=min_value, max_value=max_value))


def field_size(d: Mapping, *names: str, default: Any = REQUIRED) -> int:
    """A positive size: vocabulary, widths, layers, heads."""
    return field_int(d, *names, default=default, min_value=1)


def field_count(d: Mapping, *names: str, default: Any = REQUIRED) -> int:
    """A positive count of layers or heads, or a head width: at most MAX_COUNT."""
    return field_int(d, *names, default=default, min_value=1, max_value=MAX_COUNT)


def field_float(d: Mapping, *names: str, default: Any = REQUIRED, positive: bool = False,
                min_value: float | None = None) -> float:
    return _field(d, names, default, lambda v, f: as_float(v, f, positive=positive, min_value=min_value))


def field_bool(d: Mapping, *names: str, default: Any = REQUIRED) -> bool:
    return _field(d, names, default, as_bool)


def field_str(d: Mapping, *names: str, default: Any = REQUIRED) -> str:
    return _field(d, names, default, as_str)


def field_dict(d: Mapping, *names: str, default: Any = None) -> dict | None:
    return _field(d, names, default, as_dict)


def field_list(d: Mapping, *names: str, default: Any = None) -> list | None:
    def convert(v: Any, f: str) -> list:
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{f} must be a list, got {describe(v)}")
        return list(v)
    return _field(d, names, default, convert)


def field_token_ids(d: Mapping, name: str) -> int | list[int] | None:
    """A special token id (or, for EOS, a list of them) as the config gives it; negative ids mean
    "none" (old LLaMA conversions write pad_token_id -1).  The vocabulary range is checked by
    ModelConfig.validate once the vocabulary size is known."""
    def one(v: Any, f: str) -> int | None:
        i = as_int(v, f, min_value=-(2 ** 63))
        return i if i >= 0 else None
    value = d.get(name) if isinstance(d, Mapping) else None
    if isinstance(value, (list, tuple)):
        return [i for i in (one(v, f"{name!r} entry") for v in value) if i is not None]
    return None if value is None else one(value, repr(name))


# ------------------------------------------------------------------ rotary scaling
ROPE_SCALING_TYPES = ("linear", "llama3")


def rope_scaling(s: Any, field: str = "rope_scaling") -> dict | None:
    """The rope scaling llmrt implements, normalized ({"rope_type", "factor", ...}), or None for
    none / default.  Any other type (yarn, dynamic, longrope, ...) or a dict without a type is an
    UnsupportedError: running such a model without its scaling gives wrong answers past the
    original context."""
    if s is None:
        return None
    s = as_dict(s, field)
    kind = s.get("rope_type", s.get("type"))
    if kind is None:
        if set(s) - {"rope_theta", "partial_rotary_factor"}:
            raise UnsupportedError(f"{field} has no type (rope_type or type) but holds {sorted(s)}; "
                                   f"llmrt implements {', '.join(ROPE_SCALING_TYPES)} scaling")
        return None
    kind = as_str(kind, f"{field}.rope_type")
    if kind == "default":
        return None
    if kind not in ROPE_SCALING_TYPES:
        raise UnsupportedError(f"{field} type {kind!r} is not supported; llmrt implements "
                               f"{', '.join(ROPE_SCALING_TYPES)} scaling (or none)")
    out = {"rope_type": kind, "factor": field_float(s, "factor", positive=True)}
    if kind == "llama3":
        out["low_freq_factor"] = field_float(s, "low_freq_factor", default=1.0, positive=True)
        out["high_freq_factor"] = field_float(s, "high_freq_factor", default=4.0, positive=True)
        out["original_max_position_embeddings"] = field_size(s, "original_max_position_embeddings", default=8192)
        if out["high_freq_factor"] <= out["low_freq_factor"]:
            raise ConfigError(f"{field}: high_freq_factor ({out['high_freq_factor']}) must be greater than "
                              f"low_freq_factor ({out['low_freq_factor']})")
    return out


# ------------------------------------------------------------------ naming the source
def source_label(source: str | os.PathLike | None, default: str) -> str:
    return os.fspath(source) if source is not None else default


@contextmanager
def named_source(source: str) -> Iterator[None]:
    """Prefix the message of an llmrt error raised inside with the file it is about (the families
    read a dict and do not know where it came from); a bad field also gets what to do about it."""
    try:
        yield
    except LlmrtError as exc:
        if exc.args and isinstance(exc.args[0], str) and not exc.args[0].startswith(source):
            hint = f"; correct it in {source}" if type(exc) is ConfigError else ""
            exc.args = (f"{source}: {exc.args[0]}{hint}", *exc.args[1:])
        raise
