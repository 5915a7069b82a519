"""StreamingLLM (ctx_size, n_keep, n_discard, shift_roped_k): exact against from-scratch forwards on
tiny models, then on SmolLM2: 10x ctx_size new tokens in flat memory, and perplexity next to a
sliding-window baseline (with and without attention sinks)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from transformers import LogitsProcessor

from conftest import build_tiny_model
from llmrt import AutoModelForCausalLM, WeightOnlyQuantConfig
from llmrt.evaluation import target_log_probs
from llmrt.model import Model

FP32 = WeightOnlyQuantConfig(weight_dtype="fp32", compute_dtype="fp32")
CTX, KEEP = 16, 4


@pytest.fixture(scope="module")
def one_layer(tmp_path_factory):
    """One-layer models: their cached K/V depend only on token and position, so after any shift the
    cache equals a from-scratch forward of the tokens it holds (the reference for the ring buffer)."""
    specs = {
        "llama": ("llama", dict(hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=150)),
        "neox": ("gpt_neox", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                  num_attention_heads=4, vocab_size=140, rotary_pct=0.5)),
        "mistral-window": ("mistral", dict(hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                                           num_attention_heads=4, num_key_value_heads=2, vocab_size=130,
                                           sliding_window=6)),
        # ALiBi: keys carry no position, the bias comes from slot distance
        "bloom": ("bloom", dict(hidden_size=64, n_layer=1, n_head=4, vocab_size=120)),
        "mpt": ("mpt", dict(d_model=96, n_heads=6, n_layers=1, vocab_size=125, max_seq_len=256)),
    }
    out = {}
    for name, (family, over) in specs.items():
        d = tmp_path_factory.mktemp(name)
        ref = build_tiny_model(d, family, dict(over))
        out[name] = (AutoModelForCausalLM.from_pretrained(d, quantization_config=FP32, memory_dtype="f32"), ref)
    return out


def _hf_last_logits(ref, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        return ref(torch.tensor([tokens])).logits[0, -1].numpy()


def _own_last_logits(model: Model, tokens: list[int]) -> np.ndarray:
    return model.engine.forward(model.new_cache(len(tokens)), tokens)[0]


def _ring_window(seq: list[int], n_fed: int, ctx: int, keep: int) -> list[int]:
    """What a ring of ctx keeping `keep` holds after n_fed tokens."""
    if n_fed <= ctx:
        return seq[:n_fed]
    return seq[:keep] + seq[n_fed - (ctx - keep):n_fed]


def _check_steps(out, reference, window) -> None:
    """Each step's logits equal the reference forward of the tokens the cache held."""
    seq = [int(t) for t in out.sequences[0]]
    n_prompt = len(seq) - len(out.logits)
    for i, got in enumerate(out.logits):
        want = reference(window(seq, n_prompt + i))
        np.testing.assert_allclose(got[0], want, rtol=0, atol=1e-4 * np.abs(want).max(), err_msg=f"step {i}")


@pytest.mark.parametrize("name,prompt_len,keep", [("llama", 5, KEEP), ("neox", 5, KEEP), ("llama", 24, KEEP),
                                                  ("neox", 6, 0), ("llama", 5, -1), ("mistral-window", 5, KEEP),
                                                  ("bloom", 5, KEEP), ("mpt", 24, KEEP), ("bloom", 6, 0)])
def test_shift_roped_k_ring_equals_from_scratch(one_layer, name, prompt_len, keep):
    """NeoX-halves rotary (llama, neox partial rotary), a prompt longer than the context, no sinks,
    n_keep=-1 (the whole prompt), a sliding window smaller than the context (moved, not ringed), and
    ALiBi (moved too: slots stay in order, the bias is their distance)."""
    model, ref = one_layer[name]
    prompt = np.random.default_rng(1).integers(3, ref.config.vocab_size, size=(1, prompt_len))
    out = model.generate(prompt, max_new_tokens=6 * CTX, eos_token_id=None, ctx_size=CTX, n_keep=keep,
                         shift_roped_k=True, return_dict_in_generate=True, output_logits=True)
    assert out.sequences.shape[1] == prompt_len + 6 * CTX
    k = prompt_len if keep == -1 else keep
    _check_steps(out, lambda toks: _hf_last_logits(ref, toks), lambda s, n: _ring_window(s, n, CTX, k))


def test_shift_roped_k_with_gptj_interleaved_rotary(one_layer):
    """GPT-J pairs (2i, 2i+1): the same model with interleaved rotary, against its own plain forward."""
    base, ref = one_layer["llama"]
    model = Model(dataclasses.replace(base.config, rotary_interleaved=True), FP32, base._tensors, base.source, "f32")
    prompt = np.random.default_rng(2).integers(3, ref.config.vocab_size, size=(1, 5))
    out = model.generate(prompt, max_new_tokens=5 * CTX, eos_token_id=None, ctx_size=CTX, n_keep=KEEP,
                         shift_roped_k=True, return_dict_in_generate=True, output_logits=True)
    _check_steps(out, lambda toks: _own_last_logits(model, toks), lambda s, n: _ring_window(s, n, CTX, KEEP))
    # the interleaved model really differs from the NeoX-halves one
    assert not np.allclose(out.logits[0], base.generate(prompt, max_new_tokens=1, eos_token_id=None,
                                                        return_dict_in_generate=True, output_logits=True).logits[0])


def _reeval_window(keep: int, discard: int, ctx: int):
    """The tokens a re-evaluating cache holds after n tokens were fed one by one."""
    def window(seq: list[int], n_fed: int) -> list[int]:
        held: list[int] = []
        for t in seq[:n_fed]:
            if len(held) == ctx:
                drop = discard if discard > 0 else (len(held) - keep) // 2
                held = held[:keep] + held[keep + max(drop, 1):]
            held.append(t)
        return held
    return window


@pytest.mark.parametrize("name", ["llama-gqa-tied", "neox-pct25-parallel", "bloom-6heads", "opt-post-ln-projected",
                                  "bigcode-mqa"])
@pytest.mark.parametrize("keep,discard", [(KEEP, -1), (KEEP, 3), (0, -1)])
def test_reevaluation_equals_from_scratch(tiny_models, name, keep, discard):
    """Re-evaluation recomputes the kept window, so even a multi-layer cache equals a fresh forward,
    whatever the positions (rotary, ALiBi, learned)."""
    path, ref = tiny_models(name)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=FP32)
    prompt = np.random.default_rng(3).integers(3, ref.config.vocab_size, size=(1, 7))
    out = model.generate(prompt, max_new_tokens=4 * CTX, eos_token_id=None, ctx_size=CTX, n_keep=keep,
                         n_discard=discard, return_dict_in_generate=True, output_logits=True)
    _check_steps(out, lambda toks: _hf_last_logits(ref, toks), _reeval_window(keep, discard, CTX))


def test_streaming_batches_and_beams(one_layer):
    model, ref = one_layer["neox"]
    rng = np.random.default_rng(4)
    a, b = rng.integers(3, ref.config.vocab_size, size=5), rng.integers(3, ref.config.vocab_size, size=9)
    ids = np.zeros((2, 9), dtype=np.int64)
    ids[0, 4:], ids[1] = a, b
    mask = (np.arange(9)[None] >= np.array([[4], [0]])).astype(np.int64)
    kw = dict(max_new_tokens=3 * CTX, eos_token_id=None, ctx_size=CTX, n_keep=KEEP, shift_roped_k=True)
    out = model.generate(ids, attention_mask=mask, **kw)
    np.testing.assert_array_equal(out[0, 4:], model.generate(a[None], **kw)[0])
    np.testing.assert_array_equal(out[1], model.generate(b[None], **kw)[0])
    beams = model.generate(a[None], num_beams=3, num_return_sequences=2, **kw)
    assert beams.shape == (2, 5 + 3 * CTX)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(a[None], num_beams=2, **dict(kw, max_new_tokens=-1))


@pytest.mark.parametrize("name", ["opt-pre-ln", "bigcode-mha"])
def test_learned_position_families_refuse_shift_roped_k(tiny_models, name):
    path, ref = tiny_models(name)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=FP32)
    assert not model.engine.shifts.can_shift_keys
    with pytest.raises(ValueError, match="learned"):
        model.generate([[5, 6, 7]], max_new_tokens=30, ctx_size=CTX, n_keep=2, shift_roped_k=True)


def test_learned_positions_end_at_the_table(tiny_models):
    """Past the last learned position is a clear error, not a read past the table."""
    path, ref = tiny_models("bigcode-mqa")
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=FP32)
    n = ref.config.n_positions
    with pytest.raises(ValueError, match=f"past the {n} positions"):
        model.engine.forward(model.new_cache(n + 8), np.arange(n + 1) % 100)


def test_learned_positions_refuse_shifts_but_re_evaluate(one_layer):
    base, _ = one_layer["llama"]
    cfg = dataclasses.replace(base.config, rotary_dim=0, positions="learned", max_position_embeddings=CTX)
    table = np.random.default_rng(0).normal(0, 0.1, (CTX, cfg.hidden_size)).astype(np.float32)
    model = Model(cfg, FP32, dict(base._tensors, pos_embed=(table, None)), base.source, "f32")
    with pytest.raises(ValueError, match="learned"):
        model.generate([[5, 6, 7]], max_new_tokens=30, ctx_size=CTX, n_keep=2, shift_roped_k=True)
    # re-evaluation works for any position scheme
    assert model.generate([[5, 6, 7]], max_new_tokens=30, ctx_size=CTX, n_keep=2, eos_token_id=None).shape == (1, 33)


def test_overflow_without_streaming_is_a_clear_error(one_layer):
    model, _ = one_layer["llama"]
    with pytest.raises(ValueError, match="n_keep"):
        model.generate([[5, 6, 7]], max_new_tokens=30, ctx_size=CTX)


# ------------------------------------------------------------------------------------------ SmolLM2
N_NEW, SMOL_CTX = 2560, 256


@pytest.fixture(scope="module")
def smollm2():
    from smollm2_fixtures import smollm2_gguf_path, tutorial_text
    from llmrt.tokenization import load_tokenizer
    path = smollm2_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = load_tokenizer(path)
    text = np.asarray(tok(tutorial_text(), add_special_tokens=False).input_ids, dtype=np.int64)
    assert text.size > N_NEW + 1
    return model, text[:N_NEW + 1]


class ForceText(LogitsProcessor):
    """Teacher forcing through generate(): score the next text token, then make it the only choice."""

    def __init__(self, text: np.ndarray, prompt_len: int):
        self.text, self.p = torch.from_numpy(text), prompt_len
        self.nll: list[float] = []

    def __call__(self, input_ids, scores):
        target = self.text[input_ids.shape[1] - self.p + 1]
        self.nll.append(-float(torch.log_softmax(scores[0].double(), -1)[target]))
        forced = torch.full_like(scores, -float("inf"))
        forced[:, target] = 0.0
        return forced


class RssProbe:
    """A streamer that reads VmRSS after given numbers of new tokens."""

    def __init__(self, at: tuple[int, ...]):
        self.at, self.rss, self.n = at, {}, -1

    def put(self, value) -> None:
        self.n += 1                                    # the first put is the prompt
        if self.n in self.at:
            with open("/proc/self/status") as f:
                self.rss[self.n] = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))

    def end(self) -> None:
        pass


def _stream(model, text: np.ndarray, **kw) -> tuple[float, dict]:
    """2,560 new tokens (the text, teacher-forced) with a 256 context; perplexity of the targets
    after the first context, and RSS (kB) after 256 and 2,560 new tokens."""
    force, probe = ForceText(text, 1), RssProbe((SMOL_CTX, N_NEW))
    out = model.generate(text[None, :1], max_new_tokens=N_NEW, eos_token_id=None, ctx_size=SMOL_CTX,
                         logits_processor=[force], streamer=probe, **kw)
    np.testing.assert_array_equal(out[0], text)
    return float(np.exp(np.mean(force.nll[SMOL_CTX - 1:]))), probe.rss


def _sliding_baseline(model, text: np.ndarray, stride: int = 64) -> float:
    """Windows of 256 recomputed from scratch every `stride` tokens (the last one ending with the
    text); each target is scored by the first window holding it (context 192..255 after the first)."""
    nll = np.full(text.size, np.nan)
    starts = list(range(0, text.size - SMOL_CTX + 1, stride))
    if starts[-1] != text.size - SMOL_CTX:
        starts.append(text.size - SMOL_CTX)
    for start in starts:
        w = text[start:start + SMOL_CTX]
        logp = target_log_probs(model(w[None]).logits[0][:-1], w[1:])   # logp[j - 1]: token j's
        for j in range(1, SMOL_CTX):
            if np.isnan(nll[start + j]):
                nll[start + j] = -logp[j - 1]
    assert not np.isnan(nll[1:]).any()
    return float(np.exp(np.mean(nll[SMOL_CTX:])))


def test_smollm2_long_generation_flat_memory_and_perplexity(smollm2):
    model, text = smollm2
    base = _sliding_baseline(model, text)
    shift, rss_shift = _stream(model, text, n_keep=4, shift_roped_k=True)
    reeval, rss_reeval = _stream(model, text, n_keep=4, n_discard=-1)
    no_sink, _ = _stream(model, text, n_keep=0, shift_roped_k=True)
    print(f"\nSmolLM2 ctx {SMOL_CTX}, {N_NEW} new tokens; perplexity of tokens {SMOL_CTX}..{N_NEW}: "
          f"sliding window (recomputed, stride 64) {base:.3f} | shift_roped_k n_keep=4 {shift:.3f} | "
          f"re-evaluation n_keep=4 {reeval:.3f} | shift_roped_k n_keep=0 {no_sink:.3f}")
    print(f"VmRSS kB after {SMOL_CTX} / {N_NEW} new tokens: shift_roped_k {rss_shift[SMOL_CTX]} / "
          f"{rss_shift[N_NEW]}, re-evaluation {rss_reeval[SMOL_CTX]} / {rss_reeval[N_NEW]}")
    for rss in (rss_shift, rss_reeval):
        assert rss[N_NEW] <= 1.05 * rss[SMOL_CTX], rss
    assert abs(shift / base - 1) <= 0.10
    assert abs(reeval / base - 1) <= 0.10
    assert no_sink > 1.25 * shift          # the attention-sink effect: without kept tokens the ring degrades
