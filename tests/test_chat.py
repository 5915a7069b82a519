"""Multi-round chat: interactive=True keeps the KV cache, ignore_prompt, model.chat() through chat
templates, the seed's LLaMA-2 and ChatGLM2 loops, and `llmrt chat`."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, TextIteratorStreamer, TextStreamer

from conftest import FAMILY_REPRESENTATIVES
from llmrt import AutoModelForCausalLM, WeightOnlyQuantConfig
from llmrt.generation import chat_input_ids

FP32 = WeightOnlyQuantConfig(weight_dtype="fp32", compute_dtype="fp32")
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
CHARS = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;?!+-=/[]()'\"\n问答："
                   "Round"))


class CountingEngine:
    """Wraps the engine to count the tokens run through the model."""

    def __init__(self, engine):
        self._engine, self.n = engine, 0

    def forward(self, cache, tokens, *args, **kwargs):
        self.n += int(np.asarray(tokens).size)
        return self._engine.forward(cache, tokens, *args, **kwargs)

    def forward_batch(self, caches, tokens):
        self.n += len(caches)
        return self._engine.forward_batch(caches, tokens)

    def __getattr__(self, name):
        return getattr(self._engine, name)


@pytest.fixture(scope="module")
def char_tokenizer():
    """A character-level Llama-style tokenizer (BOS added) whose ids fit the tiny models."""
    vocab = {t: i for i, t in enumerate(SPECIALS + CHARS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


@pytest.fixture(params=["llama-mha-untied"])
def models_pair(tiny_models, request):
    """A counted model for the conversation and a fresh one for from-scratch answers."""
    path, _ = tiny_models(request.param)
    chat = AutoModelForCausalLM.from_pretrained(path, quantization_config=FP32, memory_dtype="f32")
    chat.engine = CountingEngine(chat.engine)
    fresh = AutoModelForCausalLM.from_pretrained(path, quantization_config=FP32, memory_dtype="f32")
    return chat, fresh


def test_char_tokenizer_round_trips(char_tokenizer):
    text = "[INST]Hi, 2+2?[/INST]\n"
    ids = char_tokenizer(text).input_ids
    assert ids[0] == 1 and len(ids) == len(text) + 1 and char_tokenizer.decode(ids[1:]) == text


def _run_loop(model, fresh, tok, prompts: list[str], capsys) -> None:
    """The seed's loop shape: each turn tokenizes only the new prompt and calls
    generate(inputs, streamer=..., interactive=True, ignore_prompt=True, do_sample=True)."""
    streamer = TextStreamer(tok)
    history: list[int] = []
    for turn, prompt in enumerate(prompts):
        inputs = tok(prompt, return_tensors="pt").input_ids
        before = model.engine.n
        outputs = model.generate(inputs, streamer=streamer, interactive=True, ignore_prompt=True, do_sample=True,
                                 seed=turn, max_new_tokens=10, eos_token_id=None)
        n_new = outputs.shape[1]
        assert n_new == 10
        # only the new turn ran (plus the previous answer's last token, sampled but never run)
        assert model.engine.n - before == inputs.shape[1] + (turn > 0) + (n_new - 1)
        # ... and the answer is the one the whole conversation gives from scratch
        whole = history + inputs[0].tolist()
        again = fresh.generate([whole], ignore_prompt=True, do_sample=True, seed=turn, max_new_tokens=10,
                               eos_token_id=None)
        np.testing.assert_array_equal(outputs, again)
        assert capsys.readouterr().out.strip() == tok.decode(outputs[0]).strip()     # the prompt is not echoed
        history = whole + outputs[0].tolist()


def test_llama2_inst_loop(models_pair, char_tokenizer, capsys):
    model, fresh = models_pair
    prompts = ["[INST]{}[/INST]".format(q) for q in ("Hi there", "What is 2+2?", "Thanks, bye")]
    _run_loop(model, fresh, char_tokenizer, prompts, capsys)


def test_chatglm2_build_prompt_loop(models_pair, char_tokenizer, capsys):
    def build_prompt(query: str, history: list | None = None) -> str:      # ChatGLM2's template
        prompt = ""
        for i, (old_query, response) in enumerate(history or []):
            prompt += "[Round {}]\n\n问：{}\n\n答：{}\n\n".format(i + 1, old_query, response)
        return prompt + "[Round {}]\n\n问：{}\n\n答：".format(len(history or []) + 1, query)

    model, fresh = models_pair
    char_tokenizer.build_prompt = build_prompt
    _run_loop(model, fresh, char_tokenizer, [char_tokenizer.build_prompt(q) for q in ("Hello", "Who are you?")],
              capsys)


def test_interactive_beam_then_greedy_and_reset(models_pair):
    model, fresh = models_pair
    first, second = [5, 6, 7, 8], [9, 10, 11]
    a = model.generate([first], interactive=True, ignore_prompt=True, num_beams=3, max_new_tokens=6,
                       eos_token_id=None)
    np.testing.assert_array_equal(a, fresh.generate([first], ignore_prompt=True, num_beams=3, max_new_tokens=6,
                                                    eos_token_id=None))
    b = model.generate([second], interactive=True, max_new_tokens=6, eos_token_id=None)
    assert b.shape == (1, 3 + 6)                          # ignore_prompt=False: this call's input + new
    whole = first + a[0].tolist() + second
    np.testing.assert_array_equal(b[:, 3:], fresh.generate([whole], max_new_tokens=6, eos_token_id=None)[:, -6:])
    # a call without interactive ends the conversation; the next interactive one starts over
    model.generate([first], max_new_tokens=2, eos_token_id=None)
    before = model.engine.n
    model.generate([second], interactive=True, max_new_tokens=1, eos_token_id=None)
    assert model.engine.n - before == len(second)


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@pytest.mark.parametrize("models_pair", FAMILY_REPRESENTATIVES, indirect=True)
def test_chat_reuses_the_cache_and_matches_from_scratch(models_pair, char_tokenizer):
    """chat() with a tokenizer without a template (ChatML then).  The random model's replies may hold
    special tokens that do not survive templating, and a user may edit an earlier message: either
    way the cache is rewound to the common prefix and only the rest runs."""
    model, fresh = models_pair
    gen = dict(max_new_tokens=12, eos_token_id=None)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    ids1 = chat_input_ids(messages, char_tokenizer)
    g1 = fresh.generate([ids1], ignore_prompt=True, **gen)[0].tolist()
    r1 = model.chat(messages, char_tokenizer, **gen)
    assert r1 == char_tokenizer.decode(g1, skip_special_tokens=True)
    cached = ids1 + g1[:-1]                                # the last new token never ran

    turns = [messages + [{"role": "assistant", "content": r1}, {"role": "user", "content": "And then?"}],
             [messages[0], {"role": "user", "content": "Hey, hi!"}]]          # an edited first message
    for conv in turns:
        ids = chat_input_ids(conv, char_tokenizer)
        before = model.engine.n
        reply = model.chat(conv, char_tokenizer, **gen)
        common = _common(cached, ids)
        assert model.engine.n - before == len(ids) - common + 11
        assert common > 20                                 # at least the system turn was reused
        fresh.reset_conversation()
        g = fresh.generate([ids], ignore_prompt=True, **gen)[0].tolist()
        assert reply == char_tokenizer.decode(g, skip_special_tokens=True)
        cached = ids + g[:-1]
    # without max_new_tokens a turn takes at most what the context (512 here) still holds
    fresh.reset_conversation()
    assert isinstance(fresh.chat(messages, char_tokenizer, eos_token_id=None), str)
    with pytest.raises(TypeError, match="messages"):
        model.chat("Hi!", char_tokenizer)


# ------------------------------------------------------------------------------------------ SmolLM2
@pytest.fixture(scope="module")
def smollm2():
    from smollm2_fixtures import smollm2_gguf_path
    from llmrt.tokenization import load_tokenizer
    path = smollm2_gguf_path()
    # fp32 compute: the answers do not depend on int8 rounding
    return path, load_tokenizer(path)


def test_smollm2_second_turn_processes_only_the_new_turn(smollm2):
    path, tok = smollm2
    model = AutoModelForCausalLM.from_pretrained(path, compute_dtype="fp32")
    model.engine = CountingEngine(model.engine)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids1 = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    r1 = model.chat(messages, tok, max_new_tokens=24)
    assert "Paris" in r1
    n1 = model.engine.n
    gen1 = n1 - len(ids1) + 1                              # new tokens of turn 1 (the last one never ran)
    messages += [{"role": "assistant", "content": r1}, {"role": "user", "content": "And of Germany?"}]
    ids2 = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    r2 = model.chat(messages, tok, max_new_tokens=24, streamer=streamer)
    assert "Berlin" in r2
    assert "".join(streamer) == r2
    processed = model.engine.n - n1
    new_turn = len(ids2) - (len(ids1) + gen1 - 1)          # tokens the cache did not hold
    gen2 = len(tok(r2, add_special_tokens=False)["input_ids"]) + 1        # + <|im_end|>
    assert processed == new_turn + gen2 - 1, (processed, new_turn, gen2)
    assert new_turn < len(ids2) // 3
    scratch = AutoModelForCausalLM.from_pretrained(path, compute_dtype="fp32")
    assert scratch.chat(messages, tok, max_new_tokens=24) == r2


def test_llmrt_chat_cli(smollm2):
    r = subprocess.run([sys.executable, "-m", "llmrt", "chat", "-n", "24", "-t", "2"],
                       input="What is the capital of France?\nAnd of Germany?\n/quit\n", capture_output=True,
                       text=True, cwd="/", env=dict(os.environ), timeout=600)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout and "Berlin" in r.stdout
    assert "turn 2" in r.stderr
