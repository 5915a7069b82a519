"""llmrt's own GGUF tokenizer (llmrt/tokenization/gguf_vocab.py) against llama.cpp.

References:
- llama.cpp's vocab-only GGUFs with their test strings and expected ids (models/ggml-vocab-*.gguf.inp/.out,
  from the llama-cpp-python 0.3.36 sdist on PyPI, fetched once into the test cache). The .out ids come from
  the original HF tokenizers (`encode(text, add_special_tokens=False)`, convert_hf_to_gguf_update.py) and
  llama.cpp's test-tokenizer-0 must reproduce them with add_special=false, parse_special=false — here
  `add_special_tokens=False, split_special_tokens=True`.
- tests/data/gguf_tokens_golden.json: llama.cpp's own ids (llama-cpp-python) for a few KB of the Python
  tutorial, SmolLM2's GGUF included (how it was made: tests/data/make_gguf_tokens_golden.py).
- transformers' GGUF tokenizer for SmolLM2 chat prompts (ASCII, where it agrees with llama.cpp).
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from pathlib import Path

import pytest

from smollm2_fixtures import CACHE, smollm2_gguf_path

LLAMA_CPP_PYTHON = "0.3.36"
VOCAB_DIR = CACHE / f"llama-cpp-python-{LLAMA_CPP_PYTHON}-vocab"
GOLDEN = Path(__file__).parent / "data" / "gguf_tokens_golden.json"
SEPARATOR = "\n__ggml_vocab_test__\n"

# Vocabularies with test pairs that llmrt claims to tokenize exactly as llama.cpp does.
CLAIMED = ["llama-spm", "phi-3", "llama-bpe", "gpt-2", "falcon", "mpt", "starcoder", "refact", "qwen2", "qwen35",
           "deepseek-llm", "deepseek-coder", "command-r"]
# Vocabularies with test pairs that llmrt refuses, and the word its error must name.
REFUSED = {"bert-bge": "bert", "gemma-4": "gemma4"}


def _fetch_sdist(dest: Path) -> Path:
    sdist = os.environ.get("LLMRT_LLAMA_CPP_SDIST")
    if sdist and Path(sdist).is_file():
        return Path(sdist)
    cached = CACHE / "sdist" / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if cached.is_file():
        return cached
    # Only llama-cpp-python itself from source; its build backend's metadata step must not build
    # cmake from source (what --no-binary :all: would do).
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
           f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(dest)]
    if importlib.util.find_spec("scikit_build_core") is not None:
        cmd.insert(4, "--no-build-isolation")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    found = list(dest.glob("llama_cpp_python-*.tar.gz"))
    if r.returncode != 0 or not found:
        pytest.fail(f"could not download the llama-cpp-python {LLAMA_CPP_PYTHON} sdist (its ggml-vocab-*.gguf "
                    f"files are the reference): run `pip download --no-deps --no-binary llama-cpp-python "
                    f"llama-cpp-python=={LLAMA_CPP_PYTHON} -d DIR` and set LLMRT_LLAMA_CPP_SDIST=DIR/"
                    f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz\n{r.stderr[-2000:]}")
    return found[0]


@pytest.fixture(scope="session")
def vocab_dir() -> Path:
    """llama.cpp's models/ggml-vocab-* files, extracted once from the sdist into the test cache."""
    done = VOCAB_DIR / ".complete"
    if done.is_file():
        return VOCAB_DIR
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        sdist = _fetch_sdist(Path(tmp))
        out = Path(tmp) / "vocab"
        out.mkdir()
        prefix = "/vendor/llama.cpp/models/ggml-vocab-"
        with tarfile.open(sdist) as tar:
            for m in tar:
                if m.isfile() and prefix in m.name:
                    (out / Path(m.name).name).write_bytes(tar.extractfile(m).read())
        if not list(out.glob("*.gguf.inp")):
            pytest.fail(f"{sdist} has no vendor/llama.cpp/models/ggml-vocab-*.gguf.inp test files")
        (out / ".complete").write_text(sdist.name + "\n")
        if VOCAB_DIR.exists():
            import shutil
            shutil.rmtree(VOCAB_DIR)
        out.rename(VOCAB_DIR)
    return VOCAB_DIR


@functools.lru_cache(maxsize=None)
def _metadata(path: str) -> dict:
    from llmrt.formats import GGUFFile
    return GGUFFile(path).metadata


@functools.lru_cache(maxsize=None)
def _tokenizer(path: str):
    from llmrt.tokenization import tokenizer_from_gguf_metadata
    return tokenizer_from_gguf_metadata(_metadata(path))


def _cases(gguf: Path) -> list[tuple[str, list[int]]]:
    texts = Path(str(gguf) + ".inp").read_text(encoding="utf-8").split(SEPARATOR)
    assert texts[-1] == "", "each test string of a .inp file ends with the separator"
    lines = Path(str(gguf) + ".out").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""
    texts, lines = texts[:-1], lines[:-1]
    assert len(texts) == len(lines) and len(texts) >= 40, (gguf, len(texts), len(lines))
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines)]


def _encode(tok, text: str) -> list[int]:
    # llama_tokenize(add_special=false, parse_special=false)
    return tok(text, add_special_tokens=False, split_special_tokens=True).input_ids


def test_every_vocab_with_test_pairs_is_claimed_or_refused(vocab_dir):
    names = {p.name[len("ggml-vocab-"):-len(".gguf.inp")] for p in vocab_dir.glob("ggml-vocab-*.gguf.inp")}
    assert names - set(CLAIMED) - set(REFUSED) == set(), f"vocabularies neither claimed nor refused: {names}"


@pytest.mark.parametrize("name", CLAIMED)
def test_llama_cpp_vocab_test_strings(vocab_dir, name):
    gguf = vocab_dir / f"ggml-vocab-{name}.gguf"
    tok = _tokenizer(str(gguf))
    cases = _cases(gguf)
    wrong = [(text, got, want) for text, want in cases if (got := _encode(tok, text)) != want]
    assert not wrong, f"{len(wrong)}/{len(cases)} strings differ:\n" + "\n".join(
        f"  {t!r}\n    got  {g}\n    want {w}" for t, g, w in wrong[:8])
    # decoding is lossless (llama.cpp's test only prints its detokenization, which may clean up spaces)
    undecoded = [(text, d) for text, want in cases if (d := tok.decode(want)) != text]
    assert not undecoded, "decode(ids) != text:\n" + "\n".join(f"  {t!r} -> {d!r}" for t, d in undecoded[:8])


@pytest.mark.parametrize("name,word", sorted(REFUSED.items()))
def test_unsupported_vocab_types_are_refused_by_name(vocab_dir, name, word):
    with pytest.raises(ValueError, match=word):
        _tokenizer(str(vocab_dir / f"ggml-vocab-{name}.gguf"))


def test_unknown_pre_tokenizer_is_a_value_error_naming_it(vocab_dir):
    meta = dict(_metadata(str(vocab_dir / "ggml-vocab-gpt-2.gguf")))
    meta["tokenizer.ggml.pre"] = "no-such-pretokenizer"
    from llmrt.tokenization import tokenizer_from_gguf_metadata
    with pytest.raises(ValueError, match="no-such-pretokenizer"):
        tokenizer_from_gguf_metadata(meta)
    meta["tokenizer.ggml.pre"] = "kimi-k2"  # llama.cpp knows it, but splits it with hand-written code
    with pytest.raises(ValueError, match="kimi-k2.*not supported"):
        tokenizer_from_gguf_metadata(meta)


def test_missing_pre_tokenizer_falls_back_to_default_with_a_warning(vocab_dir):
    from llmrt.tokenization import tokenizer_from_gguf_metadata
    from llmrt.tokenization.pretokenizers import PRE_TOKENIZERS

    meta = dict(_metadata(str(vocab_dir / "ggml-vocab-gpt-2.gguf")))
    del meta["tokenizer.ggml.pre"]
    with pytest.warns(UserWarning, match="default"):
        tok = tokenizer_from_gguf_metadata(meta)
    # llama.cpp's default splits punctuation runs and 3-digit groups apart from the GPT-2 rules
    pieces = [p for p, _ in tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str("a+b 12345")]
    assert pieces == ["a", "+", "b", "Ġ", "123", "45"], pieces
    assert PRE_TOKENIZERS["default"].regexes[0].startswith(r"[\p{P}")


def test_bos_is_added_as_llama_cpp_adds_it(vocab_dir):
    def ids(name):
        return _tokenizer(str(vocab_dir / f"ggml-vocab-{name}.gguf"))("Hello").input_ids

    assert ids("llama-spm")[0] == 1                       # SentencePiece: BOS by default (and in the file)
    assert ids("llama-bpe")[0] == 128000                  # llama3 pre-tokenizer: BOS by default
    assert ids("gpt-2") == [15496]                        # BPE: no BOS unless the file asks
    assert ids("command-r")[0] == 5                       # tokenizer.ggml.add_bos_token = true
    meta = dict(_metadata(str(vocab_dir / "ggml-vocab-llama-spm.gguf")))
    meta["tokenizer.ggml.add_bos_token"] = False
    from llmrt.tokenization import tokenizer_from_gguf_metadata
    assert tokenizer_from_gguf_metadata(meta)("Hello").input_ids == [15043]


def test_a_normal_piece_named_bos_is_not_cut_out_of_text(vocab_dir):
    # llama.cpp's BOS of a gpt2 vocabulary without one is id 11 ("," for GPT-2): added in front, but
    # matched in text only by BPE, as llama.cpp matches only control/user-defined tokens whole.
    from llmrt.tokenization import tokenizer_from_gguf_metadata

    meta = dict(_metadata(str(vocab_dir / "ggml-vocab-gpt-2.gguf")))
    meta.pop("tokenizer.ggml.bos_token_id")
    meta["tokenizer.ggml.add_bos_token"] = True
    tok = tokenizer_from_gguf_metadata(meta)
    plain = _tokenizer(str(vocab_dir / "ggml-vocab-gpt-2.gguf"))
    text = 'x,"y",z'
    assert tok(text).input_ids == [11] + _encode(plain, text)
    assert 11 not in tok.backend_tokenizer.get_added_tokens_decoder()


def _golden() -> dict:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", sorted(_golden()["models"]))
def test_tutorial_text_matches_llama_cpp(name, request):
    golden = _golden()
    entry = golden["models"][name]
    if name == "smollm2":
        path = smollm2_gguf_path()
    else:
        path = request.getfixturevalue("vocab_dir") / entry["file"]
    tok = _tokenizer(str(path))
    text = golden["text"]
    assert len(text) > 4000
    got = _encode(tok, text)
    want = entry["ids"]
    first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    assert got == want, (f"{len(got)} ids vs llama.cpp's {len(want)}, first difference at {first}: "
                         f"{tok.convert_ids_to_tokens(got[first:first + 5])} vs "
                         f"{tok.convert_ids_to_tokens(want[first:first + 5])}")
    assert tok.decode(want) == text
    # add_special=true, parse_special=true: BOS as the file says, control tokens matched whole
    assert tok(entry["special_text"]).input_ids == entry["special_ids"]


@pytest.mark.parametrize("name", sorted(_golden().get("pretokenizers", {})))
def test_pre_tokenizer_matches_llama_cpp(name, vocab_dir):
    """The GPT-2 vocabulary split by each pre-tokenizer (one name per distinct spec), against llama.cpp
    loading the same file with tokenizer.ggml.pre overridden."""
    from llmrt.tokenization import tokenizer_from_gguf_metadata

    golden = _golden()
    meta = dict(_metadata(str(vocab_dir / golden["pre_vocab"])))
    meta["tokenizer.ggml.pre"] = name
    tok = tokenizer_from_gguf_metadata(meta)
    got, want = _encode(tok, golden["pre_text"]), golden["pretokenizers"][name]
    assert got == want, (tok.convert_ids_to_tokens(got), tok.convert_ids_to_tokens(want))
    assert tok.decode(want) == golden["pre_text"]


def test_every_pre_tokenizer_name_splits_text():
    from tokenizers import Regex, pre_tokenizers

    from llmrt.tokenization.pretokenizers import PRE_TOKENIZERS
    golden = _golden()
    covered = {(PRE_TOKENIZERS[n].regexes, PRE_TOKENIZERS[n].ignore_merges) for n in golden["pretokenizers"]}
    assert covered == {(s.regexes, s.ignore_merges) for s in PRE_TOKENIZERS.values()}, "golden file is stale"
    for name, spec in PRE_TOKENIZERS.items():
        split = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r), behavior="isolated") for r in spec.regexes])
        pieces = [p for p, _ in split.pre_tokenize_str(golden["pre_text"])]
        assert "".join(pieces) == golden["pre_text"] and len(pieces) > 50, name


def test_smollm2_golden_covers_the_chat_tokens():
    entry = _golden()["models"]["smollm2"]
    assert entry["special_ids"][:1] == [1] and entry["special_ids"].count(2) == 2  # <|im_start|>, <|im_end|>


def test_smollm2_chat_prompt_matches_transformers_gguf_tokenizer():
    from transformers import AutoTokenizer  # its GGUF reader imports torch (installed here as the reference)

    path = smollm2_gguf_path()
    ours = _tokenizer(str(path))
    theirs = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    chats = [
        [{"role": "user", "content": "hi"}],
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"},
         {"role": "assistant", "content": "4."}, {"role": "user", "content": "And 12345 * 678?\n  Show work."}],
        [{"role": "user", "content": "def f(x):\n    return x**2  # square it\n\n\nprint(f(3))"}],
    ]
    for chat in chats:
        text = ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert text == theirs.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        want = theirs(text, add_special_tokens=False).input_ids
        assert ours(text, add_special_tokens=False).input_ids == want
        assert ours(text).input_ids == want  # the file says no BOS
        assert ours.decode(want) == theirs.decode(want)
        assert ours.decode(want, skip_special_tokens=True) == theirs.decode(want, skip_special_tokens=True)
    assert (ours.bos_token, ours.eos_token, ours.pad_token) == (theirs.bos_token, theirs.eos_token,
                                                                 theirs.pad_token)


def test_load_tokenizer_on_gguf_never_imports_torch():
    path = smollm2_gguf_path()
    code = textwrap.dedent(f"""
        import sys; sys.modules['torch'] = None
        import llmrt
        assert 'transformers' not in sys.modules, 'import llmrt imported transformers'
        from llmrt.tokenization import load_tokenizer
        t = load_tokenizer({str(path)!r})
        text = t.apply_chat_template([{{'role': 'user', 'content': 'hi'}}], tokenize=False,
                                     add_generation_prompt=True)
        print(repr(text))
        print(t(text).input_ids)
        assert sys.modules.get('torch') is None, 'torch was imported'
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=300)
    assert r.returncode == 0, r.stderr
    text, ids = r.stdout.strip().splitlines()[-2:]
    assert eval(text).endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert eval(ids)[-10:] == [1, 4093, 198, 6004, 2, 198, 1, 520, 9531, 198]
