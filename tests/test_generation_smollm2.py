"""A real model: SmolLM2's fp32 HF reference in llmrt (fp32 weights and compute) against transformers'
generate on the same weights, greedy and beam search with penalties."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from llmrt import AutoModelForCausalLM, WeightOnlyQuantConfig
from smollm2_fixtures import CACHE, build_hf_reference, smollm2_gguf_path

FP32 = WeightOnlyQuantConfig(weight_dtype="fp32", compute_dtype="fp32")


@pytest.fixture(scope="module")
def models():
    from transformers import AutoModelForCausalLM as HFModel, AutoTokenizer
    CACHE.mkdir(parents=True, exist_ok=True)
    hf_dir = build_hf_reference(smollm2_gguf_path(), CACHE / "smollm2-135m-hf")
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    ref = HFModel.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(hf_dir, quantization_config=FP32, memory_dtype="f32")
    text = tok.apply_chat_template([{"role": "user", "content": "Name three uses of Python."}], tokenize=False,
                                   add_generation_prompt=True)
    return model, ref, tok(text, return_tensors="np").input_ids


@pytest.mark.parametrize("kw", [
    dict(max_new_tokens=24, repetition_penalty=1.3),
    dict(max_new_tokens=24, no_repeat_ngram_size=3, min_new_tokens=20),
    dict(max_new_tokens=12, num_beams=3, num_return_sequences=2, repetition_penalty=1.2, length_penalty=0.6),
], ids=["greedy-repetition", "greedy-ngram-min", "beam"])
def test_smollm2_reference_matches_transformers_generate(models, kw):
    model, ref, ids = models
    with torch.no_grad():
        want = ref.generate(torch.from_numpy(ids), do_sample=False, **kw).numpy()
    np.testing.assert_array_equal(model.generate(ids, **kw), want)
