"""The exceptions llmrt raises for bad input: one family, so callers can catch LlmrtError (or the
ValueError it derives from) and know the message names the file, field or argument at fault and
what to do about it."""
from __future__ import annotations

__all__ = ["LlmrtError", "ModelFileError", "MissingFileError", "ConfigError", "UnsupportedError", "InvalidArgumentError",
           "NonFiniteLogitsError", "HookError"]


class LlmrtError(ValueError):
    """Base of every error llmrt raises for input it refuses (files, configs, arguments, numbers)."""


class ModelFileError(LlmrtError):
    """A model or checkpoint file is malformed: wrong magic, unsupported version, truncated,
    corrupt header, checksum mismatch, overlapping or misaligned tensor data, a missing tensor."""


class MissingFileError(ModelFileError, FileNotFoundError):
    """A file a model needs is missing (config.json, a weight file, a shard its index lists).  Also a
    FileNotFoundError, for callers that already catch that."""


class ConfigError(LlmrtError):
    """A model configuration field has the wrong type, is out of range or contradicts the weights."""


class UnsupportedError(LlmrtError, NotImplementedError):
    """Well-formed input that llmrt cannot run (yet): an unknown architecture, a rope scaling
    type, a GGML tensor type.  Also a NotImplementedError, for callers that already catch that."""


class InvalidArgumentError(LlmrtError):
    """An argument of a public call is out of range or inconsistent with the model."""


class NonFiniteLogitsError(LlmrtError, ArithmeticError):
    """The logits hold NaN or infinity: the weights, the config (a norm epsilon, a rotary base) or an
    edited activation produced them.  Pass check_finite=False to run on regardless."""


class HookError(LlmrtError):
    """A research hook (run_with_hooks, run_with_cache, generate(hooks=...)) names no hook point of the
    model, returned an activation of the wrong shape or dtype, or raised; the message names the hook
    and the point.  The model is unchanged and keeps working."""
