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
    "gptj": ("GPTJConfig", "GPTJForCausalLM"),
    "mpt": ("MptConfig", "MptForCausalLM"),
    "falcon": ("FalconConfig", "FalconForCausalLM"),
    "bloom": ("BloomConfig", "BloomForCausalLM"),
    "opt": ("OPTConfig", "OPTForCausalLM"),
    "gpt_bigcode": ("GPTBigCodeConfig", "GPTBigCodeForCausalLM"),
    "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
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
    "codellama-theta1e6": ("llama", dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=4, vocab_size=241, rope_theta=1e6)),
    # every switch of the families below is covered by one config or more
    "gptj-rot8": ("gptj", dict(n_embd=64, n_inner=128, n_layer=2, n_head=4, rotary_dim=8, vocab_size=211)),
    "gptj-rot16-relu": ("gptj", dict(n_embd=64, n_layer=3, n_head=4, rotary_dim=16, vocab_size=203,
                                     activation_function="relu")),
    "mpt-4heads": ("mpt", dict(d_model=64, n_heads=4, n_layers=2, vocab_size=199, max_seq_len=256)),
    "mpt-6heads-clip-scale": ("mpt", dict(d_model=96, n_heads=6, n_layers=2, vocab_size=207, max_seq_len=256,
                                          attn_config=dict(clip_qkv=0.25, softmax_scale=0.2))),
    "falcon-7b": ("falcon", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=223)),
    "falcon-40b": ("falcon", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_kv_heads=2,
                                  new_decoder_architecture=True, vocab_size=229)),
    "falcon2-one-norm-bias": ("falcon", dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=6, num_kv_heads=3,
                                             new_decoder_architecture=True, num_ln_in_parallel_attn=1, bias=True,
                                             vocab_size=233, ffn_hidden_size=128)),
    "falcon-rw-alibi": ("falcon", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, alibi=True,
                                       multi_query=False, parallel_attn=False, bias=True, vocab_size=227)),
    "bloom-4heads": ("bloom", dict(hidden_size=64, n_layer=2, n_head=4, vocab_size=250)),
    "bloom-6heads": ("bloom", dict(hidden_size=96, n_layer=3, n_head=6, vocab_size=245)),
    "opt-pre-ln": ("opt", dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=230)),
    "opt-post-ln-projected": ("opt", dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                                          vocab_size=235, do_layer_norm_before=False, word_embed_proj_dim=32)),
    "opt-pre-ln-untied-gelu": ("opt", dict(hidden_size=96, ffn_dim=128, num_hidden_layers=2, num_attention_heads=6,
                                           vocab_size=239, tie_word_embeddings=False, activation_function="gelu")),
    "bigcode-mqa": ("gpt_bigcode", dict(n_embd=64, n_inner=128, n_layer=2, n_head=4, vocab_size=240)),
    "bigcode-mha": ("gpt_bigcode", dict(n_embd=64, n_layer=2, n_head=4, vocab_size=243, multi_query=False)),
    "starcoder2-gqa-window": ("starcoder2", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                 num_attention_heads=4, num_key_value_heads=2, vocab_size=270,
                                                 sliding_window=6)),
    "starcoder2-nobias-untied": ("starcoder2", dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                                    num_attention_heads=4, num_key_value_heads=1, vocab_size=261,
                                                    use_bias=False, tie_word_embeddings=False)),
    "qwen2-window-layers": ("qwen2", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                          num_attention_heads=4, num_key_value_heads=2, vocab_size=257,
                                          use_sliding_window=True, sliding_window=5, max_window_layers=1)),
    "qwen2-tied": ("qwen2", dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=4, vocab_size=253, tie_word_embeddings=True)),
}

# one config per family (the one with the most switches on): generation, batching, chat and
# streaming run on each
FAMILY_REPRESENTATIVES = ["llama-gqa-tied", "neox-pct25-parallel", "gptj-rot8", "mpt-6heads-clip-scale", "falcon-40b",
                          "falcon-rw-alibi", "bloom-6heads", "opt-post-ln-projected", "bigcode-mqa",
                          "starcoder2-gqa-window", "qwen2-window-layers"]


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
            if tier == "avx_vnni" and _ops.avx_vnni_encoding() == "evex":
                detail += "; its code with EVEX-encoded vpdpbusd: this CPU has AVX512-VNNI, not AVX-VNNI"
            terminalreporter.write_line(f"tier {tier}: tested ({detail})")
        elif tier in supported:
            terminalreporter.write_line(f"tier {tier}: runnable here, but no test of this run selected it")
        elif tier in compiled:
            terminalreporter.write_line(f"tier {tier}: built, not runnable on this CPU")
        else:
            terminalreporter.write_line(f"tier {tier}: not built (the compiler lacks its flags)")
