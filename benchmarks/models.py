"""Benchmark models: the anchors' shapes with random weights, created locally and cached outside git.

    110m : hidden 768, intermediate 2048, 12 layers, 12 heads, 12 KV heads, vocab 32000 (untied)
    1.1b : TinyLlama shapes (hidden 2048, intermediate 5632, 22 layers, 32 heads, 4 KV heads, vocab 32000)
    smollm2 : SmolLM2-135M-Instruct's shipped GGUF (Q4_1)

If ../shared/anchors' setup has built its models ($ANCHORS_DIR/models/<name>/fp16), those are used, so llmrt
and llama.cpp run the very same weights."""
from __future__ import annotations

import os
from pathlib import Path

ANCHORS_DIR = Path(os.environ.get("ANCHORS_DIR", Path.home() / "anchors"))
CACHE = Path(os.environ.get("LLMRT_BENCH_CACHE", Path.home() / ".cache" / "llmrt-bench"))

SHAPES = {
    "llama-110m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                       num_key_value_heads=12, vocab_size=32000, tie_word_embeddings=False),
    "llama-1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                       num_key_value_heads=4, vocab_size=32000, rms_norm_eps=1e-5, rope_theta=10000.0,
                       max_position_embeddings=2048, tie_word_embeddings=False),
}

# benchmark format name -> WeightOnlyQuantConfig keywords
# (fp16 scales, like the GGUF formats they are compared with: 4.5 and 8.5 bits per weight at g32)
FORMATS = {
    "int4_g32": dict(weight_dtype="int4", alg="sym", group_size=32, scale_dtype="fp16", compute_dtype="int8"),
    "int4_g128": dict(weight_dtype="int4", alg="sym", group_size=128, scale_dtype="fp16", compute_dtype="int8"),
    "int8_g32": dict(weight_dtype="int8", alg="sym", group_size=32, scale_dtype="fp16", compute_dtype="int8"),
}
# the llama.cpp format each llmrt format is compared with
LLAMA_CPP_PEER = {"int4_g32": "Q4_0", "int4_g128": "Q4_0", "int8_g32": "Q8_0"}


def model_dir(name: str) -> Path:
    """An HF directory with the named shapes (the anchors' own if present)."""
    anchor = ANCHORS_DIR / "models" / name / "fp16"
    if (anchor / "config.json").is_file():
        return anchor
    out = CACHE / name
    if (out / "config.json").is_file():
        return out
    import torch
    import transformers

    cfg = transformers.LlamaConfig(**SHAPES[name])
    torch.manual_seed(1234)
    model = transformers.LlamaForCausalLM(cfg).to(torch.float16)
    tmp = CACHE / (name + ".tmp")
    model.save_pretrained(tmp)
    tmp.rename(out)
    return out


def smollm2_path() -> Path:
    from llmrt.hub import default_model_path
    return default_model_path()


def load(name: str, fmt: str | None, activation_precision: str | None = None, **kwargs):
    """An llmrt Model for a benchmark name ('smollm2' runs its GGUF as shipped); activation_precision
    overrides the library's default; kwargs go to from_pretrained."""
    from llmrt import AutoModelForCausalLM, WeightOnlyQuantConfig

    act = {} if activation_precision is None else {"activation_precision": activation_precision}
    if name == "smollm2":
        if act:
            kwargs["quantization_config"] = WeightOnlyQuantConfig(compute_dtype="int8", **act)
        return AutoModelForCausalLM.from_pretrained(smollm2_path(), **kwargs)
    q = WeightOnlyQuantConfig(use_cache=True, **FORMATS[fmt], **act)
    return AutoModelForCausalLM.from_pretrained(model_dir(name), quantization_config=q, cache_dir=CACHE / "quantized",
                                                **kwargs)
