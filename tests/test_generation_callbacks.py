"""transformers' StoppingCriteria, LogitsProcessorList and streamers, used as they are."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import (MaxLengthCriteria, NoBadWordsLogitsProcessor, PreTrainedTokenizerFast,
                          RepetitionPenaltyLogitsProcessor, StoppingCriteria, StoppingCriteriaList,
                          TextIteratorStreamer, TextStreamer)

from llmrt import AutoModelForCausalLM, WeightOnlyQuantConfig
from llmrt.generation import callbacks

FP32 = WeightOnlyQuantConfig(weight_dtype="fp32", compute_dtype="fp32")


@pytest.fixture(scope="module")
def setup(tiny_models):
    path, ref = tiny_models("llama-gqa-tied")
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=FP32, memory_dtype="f32")
    ids = np.array([[17, 42, 99, 5, 230, 61]])
    plain = [int(t) for t in model.generate(ids, max_new_tokens=24, eos_token_id=None)[0, 6:]]
    return model, ref, ids, plain


class StopOnTokens(StoppingCriteria):
    """The common custom criterion (neural-speed's docs, LangChain, ...): look at row 0's last token."""

    def __init__(self, stop_ids: list[int]):
        self.stop_ids = stop_ids
        self.seen_types: set = set()

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        self.seen_types.add(type(input_ids))
        for stop_id in self.stop_ids:
            if input_ids[0][-1] == stop_id:
                return True
        return False


def _fresh_step(plain: list[int], start: int) -> int:
    return next(s for s in range(start, len(plain)) if plain[s] not in plain[:s])


def test_stop_on_tokens_stops_at_the_right_token(setup):
    model, ref, ids, plain = setup
    step = _fresh_step(plain, 5)
    crit = StopOnTokens([plain[step]])
    out = model.generate(ids, max_new_tokens=24, eos_token_id=None, stopping_criteria=StoppingCriteriaList([crit]))
    np.testing.assert_array_equal(out[0], ids[0].tolist() + plain[:step + 1])
    assert crit.seen_types == {torch.Tensor}          # what the criterion was written for
    with torch.no_grad():
        want = ref.generate(torch.from_numpy(ids), max_new_tokens=24, eos_token_id=None, do_sample=False,
                            pad_token_id=0, stopping_criteria=StoppingCriteriaList([StopOnTokens([plain[step]])]))
    np.testing.assert_array_equal(out, want.numpy())


def test_without_torch_criteria_get_numpy(setup, monkeypatch):
    model, _, ids, plain = setup
    monkeypatch.setattr(callbacks, "_TORCH", False)        # as if torch were not installed
    step = _fresh_step(plain, 3)
    crit = StopOnTokens([plain[step]])
    out = model.generate(ids, max_new_tokens=24, eos_token_id=None, stopping_criteria=[crit])
    assert crit.seen_types == {np.ndarray}
    np.testing.assert_array_equal(out[0], ids[0].tolist() + plain[:step + 1])


def test_builtin_transformers_criteria_and_scores_argument(setup):
    model, _, ids, _ = setup
    out = model.generate(ids, max_new_tokens=24, eos_token_id=None,
                         stopping_criteria=StoppingCriteriaList([MaxLengthCriteria(max_length=9)]))
    assert out.shape == (1, 9)
    seen = []

    class Record(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            seen.append(scores if scores is None else len(scores))
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    model.generate(ids, max_new_tokens=3, eos_token_id=None, stopping_criteria=[Record()])
    model.generate(ids, max_new_tokens=3, eos_token_id=None, stopping_criteria=[Record()],
                   return_dict_in_generate=True, output_scores=True)
    # like transformers: the tuple of scores so far when they are kept, else None
    assert seen == [None, None, None, 1, 2, 3]


def test_logits_processor_list_as_in_transformers(setup):
    model, ref, ids, plain = setup
    banned = [[plain[2]], [plain[5]]]
    procs = [NoBadWordsLogitsProcessor(banned, eos_token_id=2)]
    out = model.generate(ids, max_new_tokens=16, eos_token_id=None, logits_processor=procs)
    assert plain[2] not in out[0, 6:] and plain[5] not in out[0, 6:]
    with torch.no_grad():
        want = ref.generate(torch.from_numpy(ids), max_new_tokens=16, eos_token_id=None, do_sample=False,
                            pad_token_id=0, logits_processor=procs)
    np.testing.assert_array_equal(out, want.numpy())
    # a user processor of a built-in's class replaces it (transformers' merge rule)
    custom = [RepetitionPenaltyLogitsProcessor(1.8)]
    out = model.generate(ids, max_new_tokens=16, eos_token_id=None, repetition_penalty=1.2, logits_processor=custom)
    np.testing.assert_array_equal(out, model.generate(ids, max_new_tokens=16, eos_token_id=None,
                                                      repetition_penalty=1.8))
    assert not np.array_equal(out, model.generate(ids, max_new_tokens=16, eos_token_id=None, repetition_penalty=1.2))
    with pytest.raises(TypeError, match="logits_processor"):
        model.generate(ids, max_new_tokens=2, logits_processor=[3])


# --------------------------------------------------------------------------------------- streamers
@pytest.fixture(scope="module")
def word_tokenizer(setup):
    _, ref, _, _ = setup
    vocab = {f"w{i}": i for i in range(ref.config.vocab_size)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    from tokenizers import decoders, pre_tokenizers
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##")          # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tk)


def test_text_iterator_streamer_gives_the_decoded_answer(setup, word_tokenizer):
    model, _, ids, _ = setup
    streamer = TextIteratorStreamer(word_tokenizer, skip_prompt=True)
    result = {}
    worker = threading.Thread(target=lambda: result.update(
        out=model.generate(ids, max_new_tokens=20, eos_token_id=None, streamer=streamer)))
    worker.start()
    text = "".join(streamer)
    worker.join()
    assert text.strip() == word_tokenizer.decode(result["out"][0, 6:]).strip()
    assert len(text.split()) == 20


def test_text_streamer_prints_the_answer(setup, word_tokenizer, capsys):
    model, _, ids, _ = setup
    out = model.generate(ids, max_new_tokens=12, eos_token_id=None, streamer=TextStreamer(word_tokenizer))
    assert capsys.readouterr().out.strip() == word_tokenizer.decode(out[0]).strip()       # prompt included


def test_streamer_batch_sizes_follow_transformers(setup, word_tokenizer):
    model, _, ids, _ = setup
    batch = np.concatenate([ids, ids[:, ::-1]])
    with pytest.raises(ValueError, match="batch size 1"):                 # TextStreamer's own rule
        model.generate(batch, max_new_tokens=3, streamer=TextStreamer(word_tokenizer))

    class Collect:                                                       # a BaseStreamer-style batch streamer
        def __init__(self):
            self.parts, self.ended = [], False

        def put(self, value):
            self.parts.append(value.numpy())

        def end(self):
            self.ended = True

    s = Collect()
    out = model.generate(batch, max_new_tokens=5, eos_token_id=None, streamer=s)
    assert s.ended and s.parts[0].shape == (2, 6) and all(p.shape == (2,) for p in s.parts[1:])
    np.testing.assert_array_equal(np.concatenate([s.parts[0]] + [p[:, None] for p in s.parts[1:]], axis=1), out)
