"""Writes gguf_tokens_golden.json: llama.cpp's own token ids (through llama-cpp-python) for
- a few KB of the Python tutorial, for SmolLM2's GGUF and some of llama.cpp's vocab-only GGUFs;
- a short mixed-script text through the GPT-2 vocabulary with each pre-tokenizer llmrt knows
  (`tokenizer.ggml.pre` overridden at load), one name per distinct spec.
Run with the llama-cpp-python venv (it needs nothing else), e.g.:

    /root/venv-lcpp/bin/python tests/data/make_gguf_tokens_golden.py \
        --docs ~/.cache/llmrt-tests/python3.11-doc/usr/share/doc/python3.11/html/_sources \
        --vocabs ~/.cache/llmrt-tests/llama-cpp-python-0.3.36-vocab \
        --smollm2 "$(python -c 'from llmrt.hub import default_model_path; print(default_model_path())')" \
        > tests/data/gguf_tokens_golden.json

llama-cpp-python 0.3.36 built from its sdist (`pip install llama-cpp-python==0.3.36`, CPU, no CUDA).
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import sys

PRETOKENIZERS_PY = os.path.join(os.path.dirname(__file__), "..", "..", "llmrt", "tokenization", "pretokenizers.py")
# llama.cpp's CHK_TXT (convert_hf_to_gguf_update.py) and a few more scripts, CR LF and trailing spaces
PRE_TEXT = ("\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\U0001f680 (normal) \U0001f636\u200d\U0001f32b\ufe0f "
            "(multiple emojis concatenated) \u2705 \U0001f999\U0001f999 3 33 333 3333 33333 333333 3333333 33333333 "
            "3.3 3..3 3...3 \u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785"
            "\U0001f601 ?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= "
            "\u043d\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 "
            "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make "
            "it, 'D you like some tea? We'Ve a'lL\r\n\u00c0 la carte: na\u00efve caf\u00e9, \u0394\u03a3\u03c9, "
            "\ufb01ne; \ud55c\uad6d\uc5b4 \u30c6\u30b9\u30c8\u3000end  \r\n\tx = f(1_000, y**2)  ")

VOCABS = ["llama-spm", "llama-bpe", "phi-3", "qwen2", "deepseek-llm", "falcon", "command-r"]


def tutorial_excerpt(docs: str) -> str:
    # The same text as tests/smollm2_fixtures.py's tutorial_text(), then two slices of it: prose from the
    # start and code around the first `def fib(n):`.
    files = sorted(glob.glob(os.path.join(docs, "tutorial", "*.txt")))
    text = "\n\n".join(open(f, encoding="utf-8").read() for f in files)
    code = text.index("def fib(n):") - 300
    return text[:2500] + "\n\n" + text[code:code + 2500]


def main() -> None:
    import llama_cpp

    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", required=True)
    ap.add_argument("--vocabs", required=True)
    ap.add_argument("--smollm2", required=True)
    args = ap.parse_args()
    text = tutorial_excerpt(args.docs)
    models = {"smollm2": args.smollm2}
    models.update({v: os.path.join(args.vocabs, f"ggml-vocab-{v}.gguf") for v in VOCABS})
    out = {"llama_cpp_python": llama_cpp.__version__, "text": text, "models": {}}
    for name, path in models.items():
        llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
        eos = llm.detokenize([llm.token_eos()], special=True).decode("utf-8")
        special_text = f"Hello{eos} world\n{eos}\n print(x)"
        if name == "phi-3":  # its special tokens eat the spaces after them (llama.cpp's Phi-3 rule)
            special_text = "<|user|>\n Hello  <|end|>\n<|assistant|> Hi</s> there"
        elif name == "smollm2":
            special_text = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                            "What is 2+2?<|im_end|>\n<|im_start|>assistant\n")
        out["models"][name] = {
            "file": os.path.basename(path),
            # llama_tokenize(add_special=False, parse_special=False): what test-tokenizer-0 does
            "ids": llm.tokenize(text.encode("utf-8"), add_bos=False, special=False),
            # add_special=True, parse_special=True: what llama.cpp does with a chat prompt
            "special_text": special_text,
            "special_ids": llm.tokenize(special_text.encode("utf-8"), add_bos=True, special=True),
        }
    spec = importlib.util.spec_from_file_location("pretokenizers", PRETOKENIZERS_PY)
    pre = importlib.util.module_from_spec(spec)
    sys.modules["pretokenizers"] = pre  # dataclasses look their module up while the file runs
    spec.loader.exec_module(pre)
    seen = set()
    out["pre_text"] = PRE_TEXT
    out["pre_vocab"] = "ggml-vocab-gpt-2.gguf"
    out["pretokenizers"] = {}
    for name, s in pre.PRE_TOKENIZERS.items():
        if (s.regexes, s.ignore_merges) in seen:
            continue
        seen.add((s.regexes, s.ignore_merges))
        llm = llama_cpp.Llama(model_path=os.path.join(args.vocabs, out["pre_vocab"]), vocab_only=True,
                              verbose=False, kv_overrides={"tokenizer.ggml.pre": name})
        out["pretokenizers"][name] = llm.tokenize(PRE_TEXT.encode("utf-8"), add_bos=False, special=False)
    json.dump(out, sys.stdout, ensure_ascii=False, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
