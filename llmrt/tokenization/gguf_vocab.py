"""A GGUF file's vocabulary as a `tokenizers.Tokenizer` that encodes as llama.cpp does, wrapped as a
transformers `PreTrainedTokenizerFast` (chat templates, decode, streamers) — without importing torch.

Two vocabulary kinds are built, the two llama.cpp's LLM files use most:
- `gpt2`: byte-level BPE with the file's merges, split first by llama.cpp's pre-tokenizer for the file's
  `tokenizer.ggml.pre` (`pretokenizers.py`);
- `llama`: SentencePiece BPE — spaces as U+2581, a leading space, pairs merged by the score of the piece
  they make, bytes of unknown characters as <0xXX> tokens.
Control and unknown tokens become special added tokens (matched in text unless special tokens are split,
llama.cpp's `parse_special`), user-defined tokens plain added tokens (always matched, as in llama.cpp).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from llmrt.tokenization.pretokenizers import PreTokenizerSpec, pre_tokenizer_spec

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Texts llama.cpp treats as control tokens whatever the file says (its end-of-generation, end-of-turn and
# fill-in-the-middle detection by text), so they are matched as special tokens here too.
CONTROL_LOOKING = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
    "_<EOT>", "[EOT]", "[EOS]", "<\uff5cend\u2581of\u2581sentence\uff5c>", "<end_of_utterance>", "<|eom_id|>",
    "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "</s>", "<eos>", "<turn|>", "<|tool_response>", "[e~[",
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\uff5cfim\u2581begin\uff5c>", "<PRE>", "\u2581<PRE>",
    "<|code_prefix|>", "<|prefix|>", "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>",
    "<\uff5cfim\u2581hole\uff5c>", "<SUF>", "\u2581<SUF>", "<|code_suffix|>", "<|suffix|>", "<|fim_middle|>",
    "<fim-middle>", "<fim_middle>", "<\uff5cfim\u2581end\uff5c>", "<MID>", "\u2581<MID>", "<|code_middle|>",
    "<|middle|>", "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", "<|fim_repo|>", "<|repo_name|>",
    "<fim-repo>", "<REPO>", "<reponame>", "<|file_sep|>",
})
# llama.cpp always renders these (gpt-oss) as user-defined tokens.
USER_DEFINED_FORCED = frozenset({"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"})

SPACE = "\u2581"


def _key(meta: dict, name: str, default: Any = None) -> Any:
    return meta.get("tokenizer.ggml." + name, default)


def _token_types(meta: dict, tokens: Sequence[str], vocab: dict[str, int]) -> list[int]:
    types = _key(meta, "token_type")
    if types is None:
        types = [NORMAL] * len(tokens)
    elif len(types) < len(tokens):
        raise ValueError(f"tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
    types = list(types[:len(tokens)])
    for texts, forced in ((CONTROL_LOOKING, CONTROL), (USER_DEFINED_FORCED, USER_DEFINED)):
        for t in texts:  # a few dozen lookups, not a pass over the vocabulary
            i = vocab.get(t)
            if i is not None:
                types[i] = forced
    return types


def _vocab(tokens: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    tokens = list(tokens)
    if "" in tokens:  # llama.cpp renames empty pieces so each id keeps a distinct text
        tokens = [t or f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
    return tokens, dict(zip(tokens, range(len(tokens))))  # a repeated text maps to its last id, as in llama.cpp


def _bpe_model(merges: Sequence[str], vocab: dict[str, int], ignore_merges: bool):
    """BPE from GGUF merges "a b", split at the first space after the first character as llama.cpp splits
    them. `tokenizers` refuses merges whose parts or result are not tokens: those are dropped, checked only
    when it refuses (the check costs as much as building)."""
    from tokenizers import models

    pairs = [tuple(m.split(" ", 1)) for m in merges]
    if any(m[:1] == " " for m in merges):
        pairs = [(m[:i], m[i + 1:]) if (i := m.find(" ", 1)) > 0 else ("", "") for m in merges]
    try:
        return models.BPE(vocab=vocab, merges=pairs, ignore_merges=ignore_merges)
    except Exception:  # tokenizers raises a bare Exception naming the first bad merge
        pairs = [p for p in pairs if len(p) == 2 and p[0] in vocab and p[1] in vocab and p[0] + p[1] in vocab]
        return models.BPE(vocab=vocab, merges=pairs, ignore_merges=ignore_merges)


def _spm_merges(tokens: Sequence[str], scores: Sequence[float], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """llama.cpp's SentencePiece loop merges the adjacent pair whose concatenation is the best-scoring token;
    as BPE merges: every split of a token into two tokens, ranked by the score of the token it makes."""
    scores = list(scores[:len(tokens)])
    # highest score first; sorted() stays stable with reverse=True, so equal scores keep id order
    order = sorted(range(len(tokens)), key=scores.__getitem__, reverse=True)
    merges: list[tuple[str, str]] = []
    extend = merges.extend
    for i in order:
        piece = tokens[i]
        if len(piece) > 1 and vocab[piece] == i:
            extend([(piece[:k], piece[k:]) for k in range(1, len(piece))
                    if piece[:k] in vocab and piece[k:] in vocab])
    return merges


def _added_tokens(tokens: Sequence[str], types: Sequence[int], phi3: bool) -> list:
    from tokenizers import AddedToken

    out = []
    for i in [i for i, ty in enumerate(types) if ty != NORMAL]:
        t, ty = tokens[i], types[i]
        if ty in (CONTROL, UNKNOWN, USER_DEFINED):
            # llama.cpp's Phi-3 fix: its special tokens eat the whitespace after them, except these.
            rstrip = phi3 and t not in ("<unk>", "<s>", "<|endoftext|>")
            out.append(AddedToken(t, special=ty != USER_DEFINED, normalized=False, rstrip=rstrip, lstrip=False,
                                  single_word=False))
    return out


def _byte_level(tokens: list[str], vocab: dict[str, int], meta: dict, spec: PreTokenizerSpec):
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers

    merges = _key(meta, "merges")
    if merges is None:
        raise ValueError("GGUF vocabulary of type gpt2 has no tokenizer.ggml.merges")
    tok = Tokenizer(_bpe_model(merges, vocab, spec.ignore_merges))
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in spec.regexes]
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        splits + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece(tokens: list[str], vocab: dict[str, int], meta: dict, unk: str | None, space_prefix: bool):
    from tokenizers import Tokenizer, decoders, models, normalizers

    scores = _key(meta, "scores")
    if scores is None:
        raise ValueError("GGUF vocabulary of type llama has no tokenizer.ggml.scores")
    if len(scores) < len(tokens):
        raise ValueError(f"tokenizer.ggml.scores has {len(scores)} entries for {len(tokens)} tokens")
    bpe = models.BPE(vocab=vocab, merges=_spm_merges(tokens, scores, vocab), unk_token=unk, byte_fallback=True,
                     fuse_unk=True)
    tok = Tokenizer(bpe)
    # Each piece of text between added tokens gets the leading space, as llama.cpp prefixes every text
    # fragment that starts the input or follows a special token.
    steps = [normalizers.Prepend(SPACE)] if space_prefix else []
    tok.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", SPACE)])
    dec = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if space_prefix:
        dec.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(dec)
    return tok


def _special_id(meta: dict, name: str, default: int | None, n: int) -> int | None:
    v = _key(meta, name, default)
    if v is None or not 0 <= int(v) < n:
        return default if default is not None and 0 <= default < n else None
    return int(v)


def build_gguf_tokenizer(meta: dict) -> tuple[Tokenizer, dict[str, str | None]]:
    """The `tokenizers.Tokenizer` of a GGUF metadata dict, and the texts of its bos/eos/unk/pad tokens
    (None for a token that is missing or is a normal piece)."""
    from tokenizers.processors import TemplateProcessing

    model = _key(meta, "model")
    tokens = _key(meta, "tokens")
    if model is None or tokens is None:
        raise ValueError("GGUF file has no tokenizer (tokenizer.ggml.model / tokenizer.ggml.tokens missing)")
    tokens, vocab = _vocab(tokens)
    types = _token_types(meta, tokens, vocab)
    n = len(tokens)
    if model == "gpt2":
        spec = pre_tokenizer_spec(_key(meta, "pre"))
        bos = _special_id(meta, "bos_token_id", 11, n) if spec.has_bos else None
        eos = _special_id(meta, "eos_token_id", 11, n)
        unk = _special_id(meta, "unknown_token_id", None, n)
        add_bos = bool(_key(meta, "add_bos_token", spec.add_bos))
        tok = _byte_level(tokens, vocab, meta, spec)
    elif model == "llama":
        bos = _special_id(meta, "bos_token_id", 1, n)
        eos = _special_id(meta, "eos_token_id", 2, n)
        unk = _special_id(meta, "unknown_token_id", 0, n)
        add_bos = bool(_key(meta, "add_bos_token", True))
        space_prefix = bool(_key(meta, "add_space_prefix", True))
        tok = _sentencepiece(tokens, vocab, meta, tokens[unk] if unk is not None else None, space_prefix)
    else:
        raise ValueError(f"GGUF tokenizer model {model!r} is not supported by llmrt (only 'gpt2' and 'llama')")
    add_eos = bool(_key(meta, "add_eos_token", False))
    pad = _special_id(meta, "padding_token_id", None, n)

    phi3 = any(s in str(meta.get("general.name", "")).lower() for s in ("phi-3", "phi3"))
    added = _added_tokens(tokens, types, phi3)
    if added:
        tok.add_tokens(added)  # ids stay the file's: each text is already in the model's vocabulary

    if add_bos and bos is None:
        raise ValueError("GGUF file asks for a BOS token (tokenizer.ggml.add_bos_token) but has none")
    if add_eos and eos is None:
        raise ValueError("GGUF file asks for an EOS token (tokenizer.ggml.add_eos_token) but has none")
    single = (["$A"] if not add_bos else [tokens[bos], "$A"]) + ([tokens[eos]] if add_eos else [])
    pair = single + [x if x != "$A" else "$B:1" for x in single]
    specials = {tokens[i]: i for i, on in ((bos, add_bos), (eos, add_eos)) if on}
    tok.post_processor = TemplateProcessing(single=" ".join(single), pair=" ".join(pair),
                                            special_tokens=list(specials.items()))
    # Only tokens llama.cpp matches as whole tokens are named to transformers: it would make any named token
    # a special added token, so a normal piece (llama.cpp's default BOS 11 of a gpt2 vocabulary is often ",")
    # would then be cut out of every text.
    whole = {i for i, ty in ((i, types[i]) for i in (bos, eos, unk, pad) if i is not None)
             if ty in (CONTROL, UNKNOWN, USER_DEFINED)}
    ids = {"bos": bos, "eos": eos, "unk": unk, "pad": pad}
    return tok, {k: (tokens[v] if v in whole else None) for k, v in ids.items()}


def tokenizer_from_gguf_metadata(meta: dict) -> PreTrainedTokenizerFast:
    """A transformers `PreTrainedTokenizerFast` for a GGUF file's metadata (as `GGUFFile(path).metadata`
    gives it): llama.cpp's tokenization of the file's vocabulary, its chat template, BOS as llama.cpp adds it.
    Raises ValueError naming what the file lacks or what llmrt does not support."""
    import transformers

    tok, names = build_gguf_tokenizer(meta)
    kwargs = {f"{k}_token": v for k, v in names.items() if v is not None}
    template = meta.get("tokenizer.chat_template")
    if template is not None:
        kwargs["chat_template"] = template
    # Decoding stays lossless (no clean-up of spaces before punctuation), as llama.cpp's per-token pieces.
    kwargs["clean_up_tokenization_spaces"] = False
    cls = transformers.PreTrainedTokenizerFast
    if int(transformers.__version__.split(".")[0]) >= 5:
        # transformers 5 keeps a backend set before __init__; tokenizer_object= would deep-copy it (a JSON
        # round trip of the whole vocabulary, slower than building it).
        wrapper = cls.__new__(cls)
        wrapper._tokenizer = tok
        wrapper.__init__(**kwargs)
        if wrapper._tokenizer is tok:
            return wrapper
    return cls(tokenizer_object=tok, **kwargs)
