"""Helpers of the CLI tests: run `python -m llmrt` in a subprocess (optionally with torch made
unimportable) and a small tokenizer trained locally for the tiny random models."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# `sys.modules["torch"] = None` makes every `import torch` fail and find_spec("torch") say it is absent
_NO_TORCH = "import sys, runpy; sys.modules['torch'] = None; sys.argv[0] = 'llmrt'; runpy.run_module('llmrt', run_name='__main__')"

TEXT = """\
The interpreter acts as a simple calculator: you can type an expression at it and it will write the value.
Expression syntax is straightforward: the operators work just like in most other languages; parentheses
can be used for grouping. The integer numbers have type int, the ones with a fractional part have type float.
Division always returns a floating point number. To do floor division and get an integer result you can use
another operator; to calculate the remainder you can use the modulo operator. Strings can be enclosed in
single quotes or double quotes with the same result. The print function produces a more readable output,
by omitting the enclosing quotes and by printing escaped and special characters. Lists might contain items
of different types, but usually the items all have the same type. Like strings, lists can be indexed and
sliced. All slice operations return a new list containing the requested elements. The interpreter has a
number of functions and types built into it that are always available. The while loop executes as long as
the condition remains true. The body of the loop is indented: indentation is how the interpreter groups
statements. At the interactive prompt, you have to type a tab or spaces for each indented line.
"""


def llmrt(*args: str, torch: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m llmrt ARGS`; torch=False runs it where `import torch` fails."""
    cmd = [sys.executable, "-m", "llmrt", *args] if torch else [sys.executable, "-c", _NO_TORCH, *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd="/", env=dict(os.environ), timeout=timeout)


def word_tokenizer(out: Path, vocab_size: int) -> Path:
    """A BPE tokenizer trained on TEXT with at most vocab_size ids, saved as a transformers directory
    (<pad> 0, <s> 1, </s> 2, <unk> 3, like the tiny models' special ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=vocab_size,
                                                        special_tokens=["<pad>", "<s>", "</s>", "<unk>"]))
    assert tok.get_vocab_size() <= vocab_size
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return out
