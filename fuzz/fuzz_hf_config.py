"""Fuzz the model configuration readers: a config.json (or GGUF metadata) through the family's
config_from_hf / config_from_gguf, ModelConfig.validate, block_spec and the .llmrt round trip.

Input: one mode byte, then
  mode % 3 == 0: config.json bytes (JSON-parsed here; not JSON or no model_type: skipped, the
                 file readers' harnesses cover that);
  mode % 3 == 1: FuzzedDataProvider bytes that pick a known-good tiny config.json (one per test
                 config, every family) and mutate it: drop fields, set wrong types, extreme,
                 negative or NaN values, strings, nested junk (so the fuzzer reaches deep);
  mode % 3 == 2: the same mutations on GGUF metadata made from that config.

    python fuzz/fuzz_hf_config.py -atheris_runs=50000 [corpus_dir]
    python fuzz/fuzz_hf_config.py --write-seeds       # once: fuzz/seeds/hf_config/ (needs transformers)

An LlmrtError is the expected refusal of a bad config; any other exception is a finding."""
from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import atheris

import _harness

with atheris.instrument_imports(include=["llmrt"]):
    import numpy as np
    from llmrt.config import ModelConfig
    from llmrt.errors import LlmrtError
    from llmrt.models import family_for_gguf, family_for_hf

NAME = "hf_config"
SEED_DIR = _harness.SEEDS / NAME

# fields some family reads that a seed may lack, so mutations can set them
EXTRA_FIELDS = ["rope_scaling", "rope_parameters", "rope_theta", "partial_rotary_factor", "head_dim", "sliding_window",
                "use_sliding_window", "layer_types", "max_window_layers", "attention_bias", "mlp_bias", "hidden_act",
                "rotary_pct", "rotary_emb_base", "attn_config", "ffn_config", "norm_type", "logit_scale", "alibi",
                "multi_query", "new_decoder_architecture", "num_ln_in_parallel_attn", "num_kv_heads", "parallel_attn",
                "bias", "use_bias", "enable_bias", "add_cross_attention", "expansion_ratio", "word_embed_proj_dim",
                "apply_residual_connection_post_layernorm", "layer_norm_elementwise_affine", "scale_attn_weights",
                "n_inner", "ffn_hidden_size", "rotary_dim", "tie_word_embeddings", "bos_token_id", "eos_token_id",
                "pad_token_id", "do_layer_norm_before", "_remove_final_layer_norm", "model_type"]
NESTED_KEYS = ["type", "rope_type", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings",
               "rope_theta", "partial_rotary_factor", "alibi", "alibi_bias_max", "clip_qkv", "softmax_scale", "qk_ln",
               "attn_type", "rope", "ffn_type", "prefix_lm"]
WORDS = ["", "false", "true", "0", "12", "nan", "default", "linear", "llama3", "yarn", "dynamic", "longrope", "gelu",
         "gelu_new", "silu", "relu", "swiglu", "sliding_attention", "full_attention", "multihead_attention", "rmsnorm",
         "llama", "mistral", "qwen2", "falcon", "mpt", "bloom", "opt", "gptj", "gpt_neox", "gpt_bigcode", "starcoder2"]
FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 1e-6, 1e-300, 1e300, 1e308, math.nan, math.inf, -math.inf]
INTS = [0, 1, 2, 3, 4, 7, 8, 16, 64, -1, -2, 2 ** 31 - 1, 2 ** 31, 2 ** 63, -2 ** 63, 10 ** 30]


def load_seeds() -> list[dict]:
    seeds = []
    for p in sorted(SEED_DIR.glob("*")) if SEED_DIR.is_dir() else []:
        try:
            seeds.append(json.loads(p.read_bytes()[1:]))
        except ValueError:
            pass
    # without the seed files: minimal configs of two families (the readers' defaults fill the rest)
    return seeds or [{"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 250},
                     {"model_type": "gpt_neox", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "vocab_size": 211, "rotary_pct": 0.25}]


def gguf_meta(cfg: ModelConfig, arch: str) -> dict:
    """GGUF metadata of a config, with the keys llama.cpp writes for its architecture."""
    a = arch
    meta = {"general.architecture": a, f"{a}.vocab_size": cfg.vocab_size, f"{a}.embedding_length": cfg.hidden_size,
            f"{a}.block_count": cfg.num_layers, f"{a}.feed_forward_length": cfg.intermediate_size,
            f"{a}.attention.head_count": cfg.num_heads, f"{a}.attention.head_count_kv": cfg.num_kv_heads,
            f"{a}.context_length": cfg.max_position_embeddings, f"{a}.attention.layer_norm_epsilon": cfg.norm_eps,
            f"{a}.attention.layer_norm_rms_epsilon": cfg.norm_eps, f"{a}.rope.freq_base": cfg.rope_theta,
            f"{a}.rope.dimension_count": cfg.rotary_dim, f"{a}.attention.sliding_window": cfg.sliding_window,
            f"{a}.use_parallel_residual": cfg.residual == "parallel",
            f"{a}.attention.max_alibi_bias": cfg.alibi_bias_max,
            f"{a}.attention.clamp_kqv": cfg.qkv_clip, "tokenizer.ggml.bos_token_id": cfg.bos_token_id,
            "tokenizer.ggml.eos_token_id": cfg.eos_token_id, "tokenizer.ggml.padding_token_id": cfg.pad_token_id,
            "__tensor_names__": ("token_embd.weight", "output.weight", "blk.0.attn_norm_2.weight")}
    if cfg.rope_scaling:
        meta.update({f"{a}.rope.scaling.type": cfg.rope_scaling["rope_type"],
                     f"{a}.rope.scaling.factor": cfg.rope_scaling["factor"]})
    return {k: v for k, v in meta.items() if v is not None}


def _gguf_arch(family: str) -> str:
    return {"llama": "llama", "qwen2": "qwen2", "gpt_neox": "gptneox", "falcon": "falcon", "bloom": "bloom",
            "mpt": "mpt", "gpt_bigcode": "starcoder", "starcoder2": "starcoder2"}.get(family, "llama")


SEEDS = load_seeds()
GGUF_SEEDS = []
for _hf in SEEDS:
    try:
        _cfg = family_for_hf(_hf["model_type"]).config_from_hf(_hf)
    except LlmrtError:
        continue
    GGUF_SEEDS.append(gguf_meta(_cfg, _gguf_arch(_cfg.family)))


def junk(fdp: atheris.FuzzedDataProvider, depth: int = 0):
    kind = fdp.ConsumeIntInRange(0, 10 if depth < 2 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.PickValueInList(INTS)
    if kind == 3:
        return fdp.ConsumeIntInRange(-70000, 70000)
    if kind == 4:
        return fdp.PickValueInList(FLOATS)
    if kind == 5:
        return fdp.ConsumeRegularFloat() if fdp.ConsumeBool() else fdp.ConsumeFloat()
    if kind == 6:
        return fdp.PickValueInList(WORDS)
    if kind == 7:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 8))
    if kind == 8:
        return [junk(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    return {fdp.PickValueInList(NESTED_KEYS): junk(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))}


def mutate(fdp: atheris.FuzzedDataProvider, d: dict, extra: list[str]) -> dict:
    d = dict(d)
    keys = sorted(d) + extra
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        key = fdp.PickValueInList(keys)
        op = fdp.ConsumeIntInRange(0, 4)
        if op == 0:
            d.pop(key, None)
        elif op == 1 and isinstance(d.get(key), (int, float)) and not isinstance(d.get(key), bool):
            d[key] = d[key] * fdp.PickValueInList([0, -1, 0.5, 1.5, 2, 3, 10 ** 9])
        elif op == 2 and isinstance(d.get(key), dict):
            d[key] = {**d[key], fdp.PickValueInList(NESTED_KEYS): junk(fdp, 1)}
        else:
            d[key] = junk(fdp)
    return d


def check(cfg: ModelConfig) -> None:
    """A config that loads is one the engine can take, and survives the .llmrt round trip."""
    spec = cfg.block_spec()
    if not (np.isfinite(spec.inv_freq).all() and spec.norm_eps > 0 and cfg.num_heads % cfg.num_kv_heads == 0):
        raise AssertionError(f"a config that validated is not engine-ready: {cfg}")
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))).validate()
    if again != cfg:
        raise AssertionError(f"the .llmrt round trip changed the config: {cfg} -> {again}")


def from_hf(hf) -> None:
    if not isinstance(hf, dict) or "model_type" not in hf:
        return      # read_hf_config's job (the file readers' harness)
    check(family_for_hf(hf["model_type"]).config_from_hf(hf, "config.json"))


def from_gguf(meta: dict) -> None:
    if "general.architecture" not in meta:
        return      # the loader's job
    check(family_for_gguf(meta["general.architecture"]).config_from_gguf(meta, "fuzz.gguf"))


def test_one(data: bytes) -> None:
    # a special id past the vocabulary is dropped with a warning: expected; a fresh filter context per
    # input also keeps the warnings registry from growing with every distinct message (millions of runs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        check_one(data)


def check_one(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] % 3, data[1:]
    try:
        if mode == 0:
            try:
                hf = json.loads(rest)
            except (ValueError, RecursionError):
                return
            from_hf(hf)
            return
        fdp = atheris.FuzzedDataProvider(rest)
        if mode == 1:
            from_hf(mutate(fdp, fdp.PickValueInList(SEEDS), EXTRA_FIELDS))
        elif GGUF_SEEDS:
            seed = fdp.PickValueInList(GGUF_SEEDS)
            a = seed["general.architecture"]
            extra = [f"{a}.{k}" for k in ("rope.scaling.type", "rope.scaling.factor", "rope.scale_linear",
                                          "attention.key_length", "attention.value_length", "expert_count")]
            from_gguf(mutate(fdp, seed, extra + ["tokenizer.ggml.tokens", "general.architecture"]))
    except LlmrtError:
        pass


def write_seeds() -> None:
    """fuzz/seeds/hf_config/: the tiny test configs' config.json (mode 0), needs transformers."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import transformers
    from conftest import FAMILY_CLASSES, TINY_CONFIGS
    SEED_DIR.mkdir(parents=True, exist_ok=True)
    for name, (family, overrides) in TINY_CONFIGS.items():
        overrides = dict(overrides)
        cls = getattr(transformers, FAMILY_CLASSES[family][0])
        cfg = cls(bos_token_id=1, eos_token_id=2, pad_token_id=0,
                  max_position_embeddings=overrides.pop("max_position_embeddings", 512), **overrides)
        (SEED_DIR / f"{name}.json").write_bytes(b"\x00" + cfg.to_json_string().encode())


if __name__ == "__main__":
    if "--write-seeds" in sys.argv:
        write_seeds()
    else:
        _harness.run(NAME, test_one)
