"""`llmrt convert`: Hugging Face directory -> GGUF, read back by the gguf package, by transformers' own
GGUF loader (an independent reader of llama.cpp's conventions), and by llmrt."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers

from cli_helpers import convert, fields, llmrt_cli, one_line_error, prompt, tensors, torch_logits
from conftest import TINY_CONFIGS, build_tiny_model, max_rel_err
from llmrt import Model, WeightOnlyQuantConfig
from llmrt.formats import bf16_bits_to_fp32, fp32_to_bf16_bits

FP32 = WeightOnlyQuantConfig(not_quant=True, weight_dtype="fp32", compute_dtype="fp32")
_TEXT = ["The quick brown fox jumps over the lazy dog.", "Hello world, hello llmrt!",
         "Once upon a time there was a tiny model that converted itself."] * 30


def expected_names(name: str, hf: dict) -> set[str]:
    """The llama.cpp tensor names of a tiny model, written out independently of llmrt's tables."""
    family = TINY_CONFIGS[name][0]
    n = hf["num_hidden_layers"]
    if family == "gpt_neox":
        per = ["attn_norm.weight", "attn_norm.bias", "attn_qkv.weight", "attn_qkv.bias", "attn_output.weight",
               "attn_output.bias", "ffn_norm.weight", "ffn_norm.bias", "ffn_up.weight", "ffn_up.bias",
               "ffn_down.weight", "ffn_down.bias"]
        top = {"token_embd.weight", "output_norm.weight", "output_norm.bias", "output.weight"}
    else:
        per = ["attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
               "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"]
        top = {"token_embd.weight", "output_norm.weight"} | (set() if hf.get("tie_word_embeddings") else {"output.weight"})
    return top | {f"blk.{i}.{p}" for i in range(n) for p in per}


CONVERTIBLE = ["llama-mha-untied", "llama-gqa-tied", "llama-mqa-linear-rope", "mistral-window",
               "neox-pct25-parallel", "neox-pct100-sequential", "neox-tied"]


@pytest.mark.parametrize("name", CONVERTIBLE)
def test_convert_f32_layout_metadata_and_logits(tiny_models, tmp_path, name):
    path, ref = tiny_models(name)
    out = tmp_path / "m.gguf"
    convert(path, out, "f32")
    hf = json.loads((path / "config.json").read_text())
    meta, ts = fields(out), tensors(out)
    family = TINY_CONFIGS[name][0]
    arch = "gptneox" if family == "gpt_neox" else "llama"
    assert meta["general.architecture"] == arch and meta["general.file_type"] == 0
    assert set(ts) == expected_names(name, hf)
    assert {t for t, _, _ in ts.values()} == {"F32"}
    hidden, n_head = hf["hidden_size"], hf["num_attention_heads"]
    assert ts["token_embd.weight"][1] == (hf["vocab_size"], hidden)
    assert meta[f"{arch}.embedding_length"] == hidden
    assert meta[f"{arch}.block_count"] == hf["num_hidden_layers"]
    assert meta[f"{arch}.feed_forward_length"] == hf["intermediate_size"]
    assert meta[f"{arch}.attention.head_count"] == n_head
    assert meta[f"{arch}.context_length"] == hf["max_position_embeddings"]
    assert meta[f"{arch}.vocab_size"] == hf["vocab_size"]
    if arch == "llama":
        n_kv = hf["num_key_value_heads"]
        assert meta["llama.attention.head_count_kv"] == n_kv
        assert meta["llama.rope.dimension_count"] == hidden // n_head
        assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(hf["rms_norm_eps"])
        assert meta["llama.rope.freq_base"] == pytest.approx(ref.config.rope_parameters["rope_theta"]
                                                             if hasattr(ref.config, "rope_parameters")
                                                             else ref.config.rope_theta)
        assert ts["blk.0.attn_k.weight"][1] == (n_kv * hidden // n_head, hidden)
        # llama.cpp's row order: within a head, rows (i, i + d/2) of HF become neighbours (2i, 2i + 1)
        d = hidden // n_head
        q_hf = ref.model.layers[0].self_attn.q_proj.weight.detach().numpy()
        q_gg = ts["blk.0.attn_q.weight"][2]
        np.testing.assert_array_equal(q_gg[0], q_hf[0])
        np.testing.assert_array_equal(q_gg[1], q_hf[d // 2])
        np.testing.assert_array_equal(q_gg[d + 3], q_hf[d + d // 2 + 1])
    else:
        given = TINY_CONFIGS[name][1]
        assert meta["gptneox.rope.dimension_count"] == int(hidden // n_head * given["rotary_pct"])
        assert meta["gptneox.use_parallel_residual"] == given.get("use_parallel_residual", True)
        assert meta["gptneox.attention.layer_norm_epsilon"] == pytest.approx(hf["layer_norm_eps"])
        assert ts["blk.0.attn_qkv.weight"][1] == (3 * hidden, hidden)
    if name == "llama-mqa-linear-rope":
        assert meta["llama.rope.scaling.type"] == "linear" and meta["llama.rope.scaling.factor"] == 2.0
    if name == "mistral-window":
        assert meta["llama.attention.sliding_window"] == 6

    ids = prompt(hf["vocab_size"])
    want = torch_logits(ref, ids)
    got = Model.from_pretrained(out, compute_dtype="fp32", memory_dtype="f32")(ids).logits
    assert max_rel_err(got, want) <= 1e-4
    # the f32 GGUF holds the checkpoint's exact values: llmrt's own unquantized model gives the same logits
    own = Model.from_pretrained(path, FP32, memory_dtype="f32", progress=False)(ids).logits
    np.testing.assert_array_equal(got, own)


@pytest.mark.parametrize("name", ["llama-mha-untied", "llama-gqa-tied"])
def test_transformers_gguf_loader_reads_the_conversion(tiny_models, tmp_path, name):
    """transformers de-permutes and renames GGUF tensors by llama.cpp's conventions, in its own code.
    (Its loader ignores llama.rope.scaling.*, so the linear-rope model is checked through llmrt only.)"""
    path, ref = tiny_models(name)
    d = tmp_path / "m"
    d.mkdir()
    convert(path, d / "m.gguf", "f32")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file="m.gguf", dtype=torch.float32).eval()
    ids = prompt(ref.config.vocab_size)
    assert max_rel_err(torch_logits(loaded, ids), torch_logits(ref, ids)) <= 1e-5


@pytest.mark.parametrize("name", ["llama-gqa-tied", "neox-pct25-parallel"])
def test_convert_f16(tiny_models, tmp_path, name):
    path, ref = tiny_models(name)
    out = tmp_path / "m.gguf"
    convert(path, out, "f16")
    meta, ts = fields(out), tensors(out)
    assert meta["general.file_type"] == 1
    for tname, (ttype, shape, _) in ts.items():
        assert ttype == ("F16" if len(shape) == 2 else "F32"), tname
    emb = ref.get_input_embeddings().weight.detach().numpy()
    np.testing.assert_array_equal(ts["token_embd.weight"][2], emb.astype(np.float16))
    ids = prompt(ref.config.vocab_size)
    got = Model.from_pretrained(out, compute_dtype="fp32", memory_dtype="f32")(ids).logits
    assert max_rel_err(got, torch_logits(ref, ids)) <= 5e-3


def test_convert_bf16(tiny_models, tmp_path):
    path, ref = tiny_models("llama-mha-untied")
    out = tmp_path / "m.gguf"
    convert(path, out, "bf16")
    meta, ts = fields(out), tensors(out)
    assert meta["general.file_type"] == 32
    ttype, shape, data = ts["output.weight"]
    assert ttype == "BF16" and shape == tuple(ref.lm_head.weight.shape)
    head = ref.lm_head.weight.detach().numpy()
    got = bf16_bits_to_fp32(np.asarray(data).view(np.uint16).reshape(shape))
    np.testing.assert_array_equal(got, bf16_bits_to_fp32(fp32_to_bf16_bits(head)))
    assert ts["blk.0.attn_norm.weight"][0] == "F32"


# ---------------------------------------------------------------- tokenizers
def _model_copy(tiny_models, name: str, dest: Path) -> Path:
    path, _ = tiny_models(name)
    shutil.copytree(path, dest)
    return dest


def test_convert_bpe_tokenizer(tiny_models, tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    d = _model_copy(tiny_models, "llama-gqa-tied", tmp_path / "bpe")          # vocab 301
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_TEXT, trainers.BpeTrainer(vocab_size=290, special_tokens=["<unk>", "<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>")
    fast.add_tokens(["<|user|>"])
    fast.chat_template = "{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}"
    fast.save_pretrained(d)
    out = d / "m.gguf"
    convert(d, out, "f16")
    meta = fields(out)
    assert meta["tokenizer.ggml.model"] == "gpt2"
    n = len(fast)
    toks = meta["tokenizer.ggml.tokens"]
    assert len(toks) == 301 and toks[:n] == fast.convert_ids_to_tokens(list(range(n)))
    assert toks[n:] == [f"[PAD{i}]" for i in range(n, 301)]
    types = meta["tokenizer.ggml.token_type"]
    user = fast.convert_tokens_to_ids("<|user|>")
    assert types[1] == types[2] == 3 and types[user] == 4 and types[10] == 1 and types[-1] == 5
    merges = json.loads((d / "tokenizer.json").read_text())["model"]["merges"]
    assert meta["tokenizer.ggml.merges"] == [m if isinstance(m, str) else " ".join(m) for m in merges]
    assert meta["tokenizer.ggml.bos_token_id"] == 1 and meta["tokenizer.ggml.eos_token_id"] == 2
    assert meta["tokenizer.chat_template"] == fast.chat_template
    # transformers rebuilds a tokenizer from the GGUF vocabulary alone: it must encode alike
    from_gguf = transformers.AutoTokenizer.from_pretrained(d, gguf_file="m.gguf")
    text = "Hello world, the lazy fox!<|user|>hi there"
    assert from_gguf(text).input_ids == fast(text).input_ids


def test_convert_byte_fallback_bpe_tokenizer(tiny_models, tmp_path):
    """A SentencePiece-style BPE saved only as tokenizer.json (TinyLlama's kind) is written as "llama"."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers

    d = _model_copy(tiny_models, "llama-gqa-tied", tmp_path / "bf")
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(_TEXT, trainers.BpeTrainer(vocab_size=300,
                                                       special_tokens=["<unk>", "<s>", "</s>", *byte_tokens]))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>")
    fast.save_pretrained(d)
    convert(d, d / "m.gguf", "f16")
    meta = fields(d / "m.gguf")
    assert meta["tokenizer.ggml.model"] == "llama" and len(meta["tokenizer.ggml.scores"]) == 301
    types = meta["tokenizer.ggml.token_type"]
    assert types[1] == 3 and types[fast.convert_tokens_to_ids("<0x41>")] == 6
    from_gguf = transformers.AutoTokenizer.from_pretrained(d, gguf_file="m.gguf")
    text = "Hello world, the lazy fox! é"
    assert from_gguf(text, add_special_tokens=False).input_ids == fast(text, add_special_tokens=False).input_ids


def test_convert_sentencepiece_tokenizer(tiny_models, tmp_path):
    import sentencepiece as spm

    d = _model_copy(tiny_models, "llama-gqa-tied", tmp_path / "spm")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_TEXT), model_writer=buf, vocab_size=300, model_type="bpe",
                                   byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                   hard_vocab_limit=False, minloglevel=2)
    (d / "tokenizer.model").write_bytes(buf.getvalue())
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                                                         "add_bos_token": True, "add_eos_token": False,
                                                         "chat_template": "{{ messages[0]['content'] }}"}))
    out = d / "m.gguf"
    convert(d, out, "f32")
    meta = fields(out)
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    n = sp.GetPieceSize()
    assert meta["tokenizer.ggml.model"] == "llama"
    assert meta["tokenizer.ggml.tokens"][:n] == [sp.IdToPiece(i) for i in range(n)]
    np.testing.assert_allclose(meta["tokenizer.ggml.scores"][:n], [sp.GetScore(i) for i in range(n)])
    types = meta["tokenizer.ggml.token_type"]
    assert types[0] == 2 and types[1] == types[2] == 3
    assert types[sp.PieceToId("<0x41>")] == 6 and types[n - 1] == 1 and not sp.IsByte(n - 1)
    assert len(types) == 301 and types[-1] == 5
    assert meta["tokenizer.ggml.add_bos_token"] is True and meta["tokenizer.ggml.add_eos_token"] is False
    assert meta["tokenizer.ggml.unknown_token_id"] == 0
    assert meta["tokenizer.chat_template"] == "{{ messages[0]['content'] }}"
    from_gguf = transformers.AutoTokenizer.from_pretrained(d, gguf_file="m.gguf")
    text = "Hello world, the lazy fox! é"
    assert from_gguf(text, add_special_tokens=False).input_ids == sp.encode(text)


# ---------------------------------------------------------------- LoRA
@pytest.mark.parametrize("rslora", [False, True])
def test_convert_merges_peft_lora_like_merge_and_unload(tmp_path, rslora):
    import peft
    family, overrides = TINY_CONFIGS["llama-gqa-tied"]
    base_dir = tmp_path / "base"
    base = build_tiny_model(base_dir, family, dict(overrides), seed=5)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "down_proj"],
                          lora_dropout=0.0, use_rslora=rslora)
    lora_model = peft.get_peft_model(base, cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in lora_model.named_parameters():
            if "lora_B" in n:                 # peft starts B at zero: a no-op adapter would test nothing
                p.copy_(torch.randn_like(p) * 0.05)
    adapter = tmp_path / "adapter"
    lora_model.save_pretrained(adapter)
    merged = lora_model.merge_and_unload().eval()
    out = tmp_path / "merged.gguf"
    convert(base_dir, out, "f32", "--peft", str(adapter))
    ids = prompt(merged.config.vocab_size)
    want = torch_logits(merged, ids)
    got = Model.from_pretrained(out, compute_dtype="fp32", memory_dtype="f32")(ids).logits
    assert max_rel_err(got, want) <= 1e-4
    base_only = tmp_path / "base.gguf"
    convert(base_dir, base_only, "f32")
    unmerged = Model.from_pretrained(base_only, compute_dtype="fp32", memory_dtype="f32")(ids).logits
    assert max_rel_err(unmerged, want) > 1e-2          # the adapter really changed the model


def test_peft_adapter_for_another_model_is_refused(tiny_models, tmp_path):
    path, _ = tiny_models("llama-mha-untied")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4}))
    from safetensors.numpy import save_file
    save_file({"base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight": np.ones((2, 64), np.float32),
               "base_model.model.model.layers.7.self_attn.q_proj.lora_B.weight": np.ones((64, 2), np.float32)},
              str(adapter / "adapter_model.safetensors"))
    out = tmp_path / "m.gguf"
    r = llmrt_cli("convert", str(path), "--outfile", str(out), "--peft", str(adapter), "-q")
    assert r.returncode == 2 and "layers.7" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


# ---------------------------------------------------------------- without torch, and user mistakes
def test_convert_runs_without_torch(tiny_models, tmp_path):
    path, ref = tiny_models("neox-pct25-parallel")
    out = tmp_path / "m.gguf"
    code = ("import sys; sys.modules['torch'] = None; from llmrt.cli import main; "
            f"rc = main(['convert', {str(path)!r}, '--outfile', {str(out)!r}, '--outtype', 'f16', '-q']); "
            "assert sys.modules['torch'] is None; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=600)
    assert r.returncode == 0, r.stderr
    assert fields(out)["general.architecture"] == "gptneox"


def test_convert_user_errors(tiny_models, tmp_path):
    path, _ = tiny_models("llama-mha-untied")
    out = tmp_path / "m.gguf"
    one_line_error("convert", llmrt_cli("convert", str(tmp_path / "nothing"), "--outfile", str(out)), "nothing")
    out.write_bytes(b"keep me")
    one_line_error("convert", llmrt_cli("convert", str(path), "--outfile", str(out), "-q"), "exists", "--force")
    assert out.read_bytes() == b"keep me"
    r = llmrt_cli("convert", str(path), "--outfile", str(out), "--force", "-q")
    assert r.returncode == 0 and fields(out)["general.architecture"] == "llama"
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 64}))
    one_line_error("convert", llmrt_cli("convert", str(gpt2), "--outfile", str(tmp_path / "g.gguf")), "gpt2")
    l3, _ = tiny_models("llama3-rope")
    one_line_error("convert", llmrt_cli("convert", str(l3), "--outfile", str(tmp_path / "l3.gguf")), "llama3")
    one_line_error("convert", llmrt_cli("convert", str(path), "--outfile", str(tmp_path / "no" / "x.gguf")), "does not exist")
    assert not (tmp_path / "g.gguf").exists() and not (tmp_path / "l3.gguf").exists()


# ---------------------------------------------------------------- memory
_SAMPLE_PEAK = """
import sys, threading, time
from llmrt.convert.gguf import convert_to_gguf

def anon() -> int:
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("RssAnon:")) * 1024

base, peak, done = anon(), [0], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], anon())
        time.sleep(0.002)
t = threading.Thread(target=sample, daemon=True)
t.start()
try:
    if sys.argv[3] == "llmrt":
        from llmrt.convert.quantize import quantize_model
        quantize_model(sys.argv[1], sys.argv[2], progress=False)
    else:
        convert_to_gguf(sys.argv[1], sys.argv[2], sys.argv[3], progress=False)
finally:
    done.set()
    t.join()
print(peak[0] - base)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_convert_streams_tensor_by_tensor(tmp_path):
    """Anonymous memory grows by a few tensors, not by the model: 6 layers of 1024 x 1024 fp32 (about
    200 MB in all, 16 MB the largest tensor) convert / quantize with well under a third of that."""
    from safetensors.numpy import save_file

    hidden, vocab, layers = 1024, 4096, 6
    rng = np.random.default_rng(0)
    w = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden), np.float32),
         "lm_head.weight": rng.standard_normal((vocab, hidden), np.float32),
         "model.norm.weight": np.ones(hidden, np.float32)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            w[p + n + ".weight"] = rng.standard_normal((hidden, hidden), np.float32) * 0.02
        w[p + "input_layernorm.weight"] = np.ones(hidden, np.float32)
        w[p + "post_attention_layernorm.weight"] = np.ones(hidden, np.float32)
    d = tmp_path / "big"
    d.mkdir()
    save_file(w, str(d / "model.safetensors"))
    total = sum(a.nbytes for a in w.values())
    del w
    (d / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": hidden, "intermediate_size": hidden, "num_hidden_layers": layers,
        "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": vocab, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 512, "tie_word_embeddings": False}))
    for outtype in ("f16", "q8_0", "llmrt"):              # llmrt: `llmrt quantize` to an int4 .llmrt file
        out = tmp_path / (f"big-{outtype}.gguf" if outtype != "llmrt" else "big.llmrt")
        r = subprocess.run([sys.executable, "-c", _SAMPLE_PEAK, str(d), str(out), outtype], capture_output=True,
                           text=True, cwd="/", timeout=300)
        assert r.returncode == 0, r.stderr
        grown = int(r.stdout.strip().splitlines()[-1])
        assert grown < total / 3, (outtype, grown, total)
        if outtype != "llmrt":
            assert len(tensors(out)) == 2 + 1 + 9 * layers
