"""Shared fixtures: tiny random Hugging Face models built locally (no hub access)."""
from __future__ import annotations

import os

import numpy as np
import pytest

import torch  # the reference implementation (pip install torch==2.13.0)
import transformers  # noqa: E402

FAMILY_CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM"),
}

# Small but not trivial: vocab sizes that are not multiples of 64, several layers, GQA/MQA/MHA.
TINY_CONFIGS = {
    "llama-mha-untied": ("llama", dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=4, vocab_size=250, tie_word_embeddings=False)),
    "llama-gqa-tied": ("llama", dict(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
                                     num_key_value_heads=2, vocab_size=301, tie_word_embeddings=True, rope_theta=100000.0)),
    "llama-mqa-linear-rope": ("llama", dict(hidden_size=96, intermediate_size=128, num_hidden_layers=2,
                                            num_attention_heads=3, num_key_value_heads=1, vocab_size=199,
                                            rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "llama3-rope": ("llama", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                  num_key_value_heads=1, vocab_size=256, max_position_embeddings=256,
                                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "mistral-window": ("mistral", dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, vocab_size=233, sliding_window=6)),
    "neox-pct25-parallel": ("gpt_neox", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=4, vocab_size=211, rotary_pct=0.25,
                                             use_parallel_residual=True)),
    "neox-pct100-sequential": ("gpt_neox", dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                                                num_attention_heads=2, vocab_size=260, rotary_pct=1.0,
                                                use_parallel_residual=False, hidden_act="gelu_new")),
    "neox-tied": ("gpt_neox", dict(hidden_size=96, intermediate_size=128, num_hidden_layers=2, num_attention_heads=3,
                                   vocab_size=190, rotary_pct=0.5, tie_word_embeddings=True)),
}


def build_tiny_model(path, family: str, overrides: dict, seed: int = 0, init_range: float = 0.1):
    """Create, randomize and save a tiny HF model; returns the torch model (fp32, eval)."""
    cfg_cls, model_cls = (getattr(transformers, n) for n in FAMILY_CLASSES[family])
    cfg = cfg_cls(initializer_range=init_range, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                  max_position_embeddings=overrides.pop("max_position_embeddings", 512), **overrides)
    torch.manual_seed(seed)
    model = model_cls(cfg).float().eval()
    with torch.no_grad():     # norms and biases away from their trivial init, so they are tested too
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """name -> (directory, torch model), built lazily once per session."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            family, overrides = TINY_CONFIGS[name]
            d = tmp_path_factory.mktemp(name)
            cache[name] = (d, build_tiny_model(d, family, dict(overrides)))
        return cache[name]

    return get


@pytest.fixture(autouse=True)
def _restore_isa():
    """Tests may switch the kernel tier; put back the one chosen at import."""
    from llmrt._kernels import _ops
    before = _ops.current_tier()
    yield
    _ops.set_isa(before)


def max_rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


# ------------------------------------------------------------------ which ISA tiers the run exercised
_NODE_TIER: dict[str, str] = {}
_TIER_OUTCOMES: dict[str, dict[str, int]] = {}


def pytest_collection_modifyitems(config, items):
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and isinstance(callspec.params.get("tier"), str):
            _NODE_TIER[item.nodeid] = callspec.params["tier"]


def pytest_runtest_logreport(report):
    tier = _NODE_TIER.get(report.nodeid)
    if tier and (report.when == "call" or (report.when == "setup" and not report.passed)):
        counts = _TIER_OUTCOMES.setdefault(tier, {})
        counts[report.outcome] = counts.get(report.outcome, 0) + 1


def pytest_terminal_summary(terminalreporter):
    """One line per kernel tier: tested (with the outcomes of its tier-parametrized tests), or why not."""
    from llmrt._kernels import _ops
    compiled, supported = set(_ops.compiled_tiers()), set(_ops.supported_tiers())
    terminalreporter.section("ISA tiers")
    for tier in _ops.TIER_NAMES:
        counts = _TIER_OUTCOMES.get(tier)
        if counts:
            detail = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
            terminalreporter.write_line(f"tier {tier}: tested ({detail})")
        elif tier in supported:
            terminalreporter.write_line(f"tier {tier}: runnable here, but no test of this run selected it")
        elif tier in compiled:
            terminalreporter.write_line(f"tier {tier}: built, not runnable on this CPU")
        else:
            terminalreporter.write_line(f"tier {tier}: not built (the compiler lacks its flags)")
