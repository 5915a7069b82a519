"""GGUF files of the families llama.cpp also runs, written from the tiny HF models the way llama.cpp's
converter writes them (the gguf package's own HF -> GGUF tensor-name map, its QKV reorders and
metadata keys, not llmrt's tables), load in llmrt with the logits of the HF directory."""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from conftest import max_rel_err
from llmrt import AutoModelForCausalLM, WeightOnlyQuantConfig

FP32 = WeightOnlyQuantConfig(not_quant=True, weight_dtype="fp32", compute_dtype="fp32")

# tiny config -> llama.cpp architecture (configs whose switches GGUF can carry)
CASES = {
    "mpt-4heads": "mpt",
    "falcon-7b": "falcon",
    "falcon-40b": "falcon",
    "bloom-6heads": "bloom",
    "bigcode-mqa": "starcoder",
    "starcoder2-nobias-untied": "starcoder2",
    "qwen2-tied": "qwen2",
}


def _llamacpp_qkv(arch: str, cfg, arr: np.ndarray) -> np.ndarray:
    """What convert_hf_to_gguf.py does to fused QKV rows: BLOOM's per-head [q_h, k_h, v_h] and
    Falcon's per-group [q.., k, v] become [all Q; all K; all V]."""
    n_head = cfg.num_attention_heads
    hd = cfg.hidden_size // n_head
    rest = arr.shape[1:]
    if arch == "bloom":
        per_head = arr.reshape(n_head, 3, hd, *rest)
        return np.concatenate([per_head[:, i].reshape(n_head * hd, *rest) for i in range(3)])
    if arch == "falcon":
        n_kv = cfg.num_kv_heads if cfg.new_decoder_architecture else 1
        g = arr.reshape(n_kv, n_head // n_kv + 2, hd, *rest)
        return np.concatenate([g[:, :-2].reshape(-1, *rest), g[:, -2].reshape(-1, *rest), g[:, -1].reshape(-1, *rest)])
    return arr


def _metadata(w: gguf.GGUFWriter, arch: str, cfg) -> None:
    hidden = cfg.hidden_size
    n_head = cfg.num_attention_heads
    w.add_uint32(f"{arch}.vocab_size", cfg.vocab_size)
    w.add_context_length(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "max_seq_len", 2048))
    w.add_embedding_length(hidden)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(getattr(cfg, "intermediate_size", None) or getattr(cfg, "ffn_hidden_size", None)
                              or getattr(cfg, "n_inner", None) or 4 * hidden)
    w.add_head_count(n_head)
    kv = {"falcon": cfg.num_kv_heads if getattr(cfg, "new_decoder_architecture", False) else 1,
          "starcoder": 1}.get(arch, getattr(cfg, "num_key_value_heads", n_head))
    w.add_head_count_kv(kv)
    if arch == "qwen2":
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    else:
        w.add_layer_norm_eps(getattr(cfg, "layer_norm_epsilon", None) or getattr(cfg, "norm_epsilon", 1e-5))
    if arch in ("falcon", "starcoder2", "qwen2"):
        w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
        w.add_rope_dimension_count(hidden // n_head)
    if arch == "mpt":
        w.add_max_alibi_bias(8.0)


def write_llamacpp_gguf(path: Path, hf_dir: Path, arch: str, cfg) -> None:
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), cfg.num_hidden_layers)
    w = gguf.GGUFWriter(str(path), arch)
    _metadata(w, arch, cfg)
    for name, arr in load_file(str(hf_dir / "model.safetensors")).items():
        if arch == "bloom":
            name = name.removeprefix("transformer.")      # the converter's BLOOM table has no prefix
        if name.endswith("query_key_value.weight") or name.endswith("query_key_value.bias"):
            arr = _llamacpp_qkv(arch, cfg, arr)
        out = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert out is not None, f"the gguf package has no {arch} name for {name}"
        w.add_tensor(out, np.ascontiguousarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("name", sorted(CASES))
def test_llamacpp_gguf_of_each_family_matches_the_hf_directory(tiny_models, tmp_path, name):
    path, ref = tiny_models(name)
    gguf_path = tmp_path / f"{name}.gguf"
    write_llamacpp_gguf(gguf_path, Path(path), CASES[name], ref.config)
    from_gguf = AutoModelForCausalLM.from_pretrained(gguf_path, memory_dtype="f32")
    from_hf = AutoModelForCausalLM.from_pretrained(path, quantization_config=FP32)
    assert from_gguf.config.family == from_hf.config.family
    ids = np.random.default_rng(3).integers(3, ref.config.vocab_size, size=(1, 20))
    got = from_gguf(ids).logits
    assert max_rel_err(got, from_hf(ids).logits) <= 1e-5
    with torch.no_grad():
        assert max_rel_err(got, ref(torch.from_numpy(ids)).logits.numpy()) <= 1e-4
