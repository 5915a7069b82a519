"""llmrt: INT4/INT8 weight-only quantized LLM inference on x86 CPUs."""
from __future__ import annotations

__version__ = "0.1.0"

from llmrt.api.transformers import AutoModelForCausalLM
from llmrt.config import ModelConfig, QuantConfig, WeightOnlyQuantConfig
from llmrt.errors import (ConfigError, HookError, InvalidArgumentError, LlmrtError, ModelFileError,
                          NonFiniteLogitsError, UnsupportedError)
from llmrt.model import CausalLMOutput, Model


def show_config(print_out: bool = True) -> dict:
    """Version, ISA tiers compiled in / runnable / selected, and the OpenMP thread count."""
    from llmrt._kernels import _ops
    from llmrt.runtime import isa_report

    info = {"version": __version__, **{f"isa_{k}": v for k, v in isa_report().items()},
            "openmp": _ops.openmp_enabled(), "threads": _ops.get_num_threads()}
    if print_out:
        for k, v in info.items():
            print(f"{k:>18}: {', '.join(v) if isinstance(v, list) else v}")
    return info


__all__ = ["AutoModelForCausalLM", "CausalLMOutput", "ConfigError", "HookError", "InvalidArgumentError", "LlmrtError", "Model",
           "ModelConfig", "ModelFileError", "NonFiniteLogitsError", "QuantConfig", "UnsupportedError",
           "WeightOnlyQuantConfig", "show_config", "__version__"]
