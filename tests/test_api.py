"""The transformers-shaped API: options, inputs, save/load, cache files, streamers, show_config."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import llmrt
from llmrt import AutoModelForCausalLM, Model, WeightOnlyQuantConfig
from llmrt.formats import is_llmrt_file


def test_load_in_4bit_is_int4_sym_g32_int8_compute(tiny_models):
    path, _ = tiny_models("llama-gqa-tied")
    m = AutoModelForCausalLM.from_pretrained(path, load_in_4bit=True)
    q = m.quant_config
    assert (q.weight_dtype, q.alg, q.group_size, q.compute_dtype) == ("int4", "sym", 32, "int8")
    lin = m.engine.layers[0].qkv
    assert lin.kind == "q4" and lin.compute == "int8" and lin.group == 32


def test_load_in_8bit(tiny_models):
    path, _ = tiny_models("neox-pct25-parallel")
    m = AutoModelForCausalLM.from_pretrained(path, load_in_8bit=True)
    assert m.engine.layers[0].mlp_in.kind == "q8"


@pytest.mark.parametrize("name,group,want", [("llama-gqa-tied", 32, 32), ("llama-gqa-tied", -1, 64),
                                             ("neox-pct100-sequential", 64, 64)])
def test_group_sizes_reach_the_kernels(tiny_models, name, group, want):
    path, _ = tiny_models(name)
    m = AutoModelForCausalLM.from_pretrained(path, quantization_config=WeightOnlyQuantConfig(group_size=group))
    assert m.engine.layers[0].qkv.group == want          # per channel: group = K = hidden


def test_inputs_as_list_numpy_and_torch_agree(tiny_models):
    path, ref = tiny_models("llama-mha-untied")
    m = AutoModelForCausalLM.from_pretrained(path, load_in_8bit=True)
    ids = [[5, 9, 17, 3, 44]]
    a = m.generate(ids, max_new_tokens=6)
    b = m.generate(np.array(ids), max_new_tokens=6)
    c = m.generate(torch.tensor(ids), max_new_tokens=6)
    assert a.dtype == np.int64 and a.shape == (1, 11)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(m(ids).logits, m(torch.tensor(ids)).logits)


def test_save_and_load_bit_identical(tiny_models, tmp_path):
    path, _ = tiny_models("neox-tied")
    m = AutoModelForCausalLM.from_pretrained(path, quantization_config=WeightOnlyQuantConfig(alg="asym", scale_dtype="bf16"))
    out = m.save(tmp_path / "m.llmrt")
    assert is_llmrt_file(out)
    m2 = Model.load(out)
    assert m2.quant_config == m.quant_config
    for name, (arr, fmt) in m._tensors.items():
        arr2, fmt2 = m2._tensors[name]
        assert fmt2 == fmt
        assert arr2.dtype == arr.dtype and arr2.tobytes() == arr.tobytes()
    ids = np.array([[3, 4, 5, 6, 7, 8]])
    np.testing.assert_array_equal(m(ids).logits, m2(ids).logits)
    with pytest.raises(FileExistsError):
        m.save(out)                      # never overwritten without asking
    m.save(out, overwrite=True)


def test_from_pretrained_opens_llmrt_files(tiny_models, tmp_path):
    path, _ = tiny_models("llama-gqa-tied")
    m = AutoModelForCausalLM.from_pretrained(path, load_in_4bit=True)
    f = m.save(tmp_path / "x.llmrt")
    m2 = AutoModelForCausalLM.from_pretrained(f)
    ids = np.array([[1, 2, 3]])
    np.testing.assert_array_equal(m(ids).logits, m2(ids).logits)


def test_use_cache_reuses_and_keys_by_model_and_config(tiny_models, tmp_path):
    a, _ = tiny_models("llama-gqa-tied")
    b, _ = tiny_models("llama-mha-untied")
    q = WeightOnlyQuantConfig(use_cache=True)
    ma = AutoModelForCausalLM.from_pretrained(a, quantization_config=q, cache_dir=tmp_path)
    files = sorted(tmp_path.glob("*.llmrt"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    ma2 = AutoModelForCausalLM.from_pretrained(a, quantization_config=q, cache_dir=tmp_path)
    assert files[0].stat().st_mtime_ns == mtime             # reused, not rewritten
    assert ma2.source.kind == "hf"
    AutoModelForCausalLM.from_pretrained(b, quantization_config=q, cache_dir=tmp_path)
    AutoModelForCausalLM.from_pretrained(a, quantization_config=WeightOnlyQuantConfig(use_cache=True, group_size=-1),
                                         cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.llmrt"))) == 3         # other model / other config: other file
    ids = np.array([[7, 8, 9]])
    np.testing.assert_array_equal(ma(ids).logits, ma2(ids).logits)


def test_pytorch_bin_checkpoint(tiny_models, tmp_path):
    _, ref = tiny_models("llama-mha-untied")
    ref.config.save_pretrained(tmp_path)       # transformers 5 only writes safetensors: write the .bin by hand
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    m = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=WeightOnlyQuantConfig(weight_dtype="fp32",
                                                                                                compute_dtype="fp32"),
                                             memory_dtype="f32")
    ids = np.array([[5, 6, 7, 8]])
    with torch.no_grad():
        want = ref(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(m(ids).logits, want, atol=1e-4 * np.abs(want).max())


def test_text_streamer_prints_what_generate_returns(tiny_models, capsys):
    from transformers import PreTrainedTokenizerFast, TextStreamer
    from tokenizers import Tokenizer, models

    path, ref = tiny_models("llama-mha-untied")
    vocab = {f"t{i} ": i for i in range(ref.config.vocab_size)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0 ")))
    m = AutoModelForCausalLM.from_pretrained(path, load_in_4bit=True)
    ids = np.array([[11, 12, 13]])
    out = m.generate(ids, max_new_tokens=8, streamer=TextStreamer(tok, skip_prompt=True))
    printed = capsys.readouterr().out
    assert printed.strip() == tok.decode(out[0, 3:]).strip()


def test_threads_argument_and_show_config(tiny_models):
    info = llmrt.show_config(print_out=False)
    assert info["version"] == llmrt.__version__
    assert info["isa_selected"] in info["isa_supported"]
    assert "ref" in info["isa_compiled"] and info["threads"] >= 1
    path, _ = tiny_models("llama-gqa-tied")
    m = AutoModelForCausalLM.from_pretrained(path)
    ids = np.array([[4, 5, 6, 7]])
    np.testing.assert_allclose(m(ids, threads=1).logits, m(ids, threads=2).logits, rtol=1e-5, atol=1e-6)


def test_sampling_is_reproducible_with_seed(tiny_models):
    path, _ = tiny_models("llama-gqa-tied")
    m = AutoModelForCausalLM.from_pretrained(path)
    kw = dict(max_new_tokens=10, do_sample=True, temperature=1.5, top_k=20, top_p=0.9)
    a = m.generate([[3, 4, 5]], seed=7, **kw)
    b = m.generate([[3, 4, 5]], seed=7, **kw)
    np.testing.assert_array_equal(a, b)
