"""Merge a PEFT LoRA adapter into checkpoint weights with NumPy (no peft, no torch).

An adapter directory holds ``adapter_config.json`` (r, lora_alpha, target_modules, fan_in_fan_out,
use_rslora, ...) and ``adapter_model.safetensors`` with, per adapted module M,
``base_model.model.<M>.lora_A.weight`` (r, in) and ``...lora_B.weight`` (out, r).  The merged weight
is ``W + scale * (B @ A)`` (transposed when fan_in_fan_out), with ``scale = alpha / r``, or
``alpha / sqrt(r)`` under rsLoRA — what peft's ``merge_and_unload()`` computes.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Iterable

import numpy as np

from llmrt.errors import ConfigError, InvalidArgumentError, UnsupportedError
from llmrt.formats.checkpoint import Checkpoint
from llmrt.formats.errors import file_error, missing_file_error
from llmrt.formats.json_files import read_json_object

__all__ = ["LoraAdapter"]

_PREFIX = "base_model.model."
_KEY = re.compile(r"(.+)\.lora_([AB])(?:\.[^.]+)?\.weight")


class LoraAdapter:
    """A LoRA adapter read from a PEFT directory; ``merge(name, w)`` per checkpoint tensor."""

    def __init__(self, path: str | os.PathLike) -> None:
        d = Path(path)
        if not d.is_dir():
            raise FileNotFoundError(f"no LoRA adapter directory at {d}")
        cfg_file = d / "adapter_config.json"
        if not cfg_file.is_file():
            raise missing_file_error(d, "has no adapter_config.json", "pass a directory saved by peft's save_pretrained")
        cfg = read_json_object(cfg_file)
        self.path = d
        self.config = cfg
        kind = cfg.get("peft_type", "LORA")
        if kind != "LORA":
            raise UnsupportedError(f"{cfg_file}: peft_type {kind!r} cannot be merged; only LORA adapters")
        for flag, what in (("use_dora", "DoRA"),):
            if cfg.get(flag):
                raise UnsupportedError(f"{cfg_file}: {what} adapters cannot be merged yet (set {flag}=false)")
        if cfg.get("bias", "none") != "none":
            raise UnsupportedError(f"{cfg_file}: bias={cfg['bias']!r} adapters cannot be merged yet (only 'none')")
        if cfg.get("alpha_pattern") or cfg.get("rank_pattern"):
            raise UnsupportedError(f"{cfg_file}: per-module rank_pattern / alpha_pattern are not supported yet")
        try:
            self.r = int(cfg["r"])
            self.alpha = float(cfg.get("lora_alpha", self.r))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{cfg_file}: needs an integer 'r' (and a numeric 'lora_alpha'); fix the adapter "
                              f"config") from None
        if self.r <= 0 or not math.isfinite(self.alpha):
            raise ConfigError(f"{cfg_file}: r must be positive and lora_alpha finite, got r={self.r}, "
                              f"lora_alpha={self.alpha}; fix the adapter config")
        self.scale = self.alpha / (math.sqrt(self.r) if cfg.get("use_rslora") else self.r)
        self.fan_in_fan_out = bool(cfg.get("fan_in_fan_out", False))
        weights = d / "adapter_model.safetensors"
        if not weights.is_file():
            hint = " (adapter_model.bin needs torch: re-save the adapter with safe_serialization=True)" \
                if (d / "adapter_model.bin").is_file() else ""
            raise missing_file_error(d, f"has no adapter_model.safetensors{hint}", "save the adapter again")
        self._ckpt = Checkpoint(weights)
        self._pairs: dict[str, dict[str, str]] = {}
        for key in self._ckpt.names():
            m = _KEY.fullmatch(key)
            if not m:
                if "lora_embedding" in key or "modules_to_save" in key or key.startswith(_PREFIX):
                    raise UnsupportedError(f"{weights}: tensor {key!r} (embedding LoRA or modules_to_save) "
                                           f"cannot be merged yet")
                raise file_error(weights, f"holds the unexpected tensor {key!r}, not a LoRA weight",
                                 "pass the adapter_model.safetensors saved by peft")
            module = m.group(1)[len(_PREFIX):] if m.group(1).startswith(_PREFIX) else m.group(1)
            self._pairs.setdefault(f"{module}.weight", {})[m.group(2)] = key
        for target, ab in self._pairs.items():
            if set(ab) != {"A", "B"}:
                raise file_error(weights, f"has no lora_{'A' if 'A' not in ab else 'B'} for {target}",
                                 "the adapter is incomplete; save it again")
        if not self._pairs:
            raise file_error(weights, "holds no LoRA weights", "pass the adapter_model.safetensors saved by peft")

    @property
    def targets(self) -> list[str]:
        """Checkpoint tensor names the adapter changes."""
        return sorted(self._pairs)

    def merge(self, name: str, w: np.ndarray) -> np.ndarray:
        """The checkpoint tensor ``name`` with the adapter merged in (float32), or ``w`` unchanged."""
        ab = self._pairs.get(name)
        if ab is None:
            return w
        a = np.asarray(self._ckpt.read(ab["A"]), dtype=np.float32)
        b = np.asarray(self._ckpt.read(ab["B"]), dtype=np.float32)
        delta = b @ a
        if self.fan_in_fan_out:
            delta = delta.T
        if delta.shape != w.shape:
            raise InvalidArgumentError(f"LoRA adapter {self.path}: {name} is {list(w.shape)} in the model but the "
                                       f"adapter's update is {list(delta.shape)}; the adapter was trained for "
                                       f"another model")
        return np.asarray(w, dtype=np.float32) + np.float32(self.scale) * delta

    def check_targets(self, names: Iterable[str]) -> None:
        """Raise when the adapter changes a tensor the checkpoint (its tensor names) does not have."""
        left = sorted(set(self._pairs) - set(names))
        if left:
            raise InvalidArgumentError(f"LoRA adapter {self.path} adapts {left[0]!r} (and {len(left) - 1} more), "
                                       f"which the model does not have; the adapter was trained for another model")
