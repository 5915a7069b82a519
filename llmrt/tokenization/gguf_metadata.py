"""A Hugging Face directory's tokenizer as GGUF metadata (what llama.cpp's loader reads).

* ``tokenizer.model`` (SentencePiece) -> ``tokenizer.ggml.model = "llama"``: pieces, scores and
  token types from the model itself (read with the sentencepiece package, no torch).
* ``tokenizer.json`` with a BPE model -> ``"gpt2"``: the byte-level vocabulary as stored, merges
  ("a b" strings) and token types; BPE with byte fallback and no tokenizer.model -> ``"llama"``.
* ``tokenizer_config.json`` / ``config.json``: special token ids, add_bos / add_eos, and the chat
  template (also from ``chat_template.jinja``).

Vocabularies shorter than the model's embedding are padded with ``[PAD{i}]`` tokens of type
UNUSED, as llama.cpp's converter does, so ids and embedding rows line up.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from llmrt.errors import UnsupportedError
from llmrt.formats.json_files import read_json_object

__all__ = ["tokenizer_metadata", "TOKEN_NORMAL", "TOKEN_UNKNOWN", "TOKEN_CONTROL", "TOKEN_USER_DEFINED",
           "TOKEN_UNUSED", "TOKEN_BYTE"]

# llama.cpp's token types (gguf.TokenType)
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

Meta = list[tuple[str, Any, str]]   # (key, value, writer type)


def _token_text(v: Any) -> str | None:
    if isinstance(v, dict):
        return v.get("content")
    return v if isinstance(v, str) else None


def _added_tokens(tok_json: dict, tok_cfg: dict) -> dict[int, tuple[str, bool]]:
    """id -> (content, special) of the added tokens of tokenizer.json and tokenizer_config.json."""
    out: dict[int, tuple[str, bool]] = {}
    for t in tok_json.get("added_tokens") or []:
        out[int(t["id"])] = (t["content"], bool(t.get("special", False)))
    for i, t in (tok_cfg.get("added_tokens_decoder") or {}).items():
        out[int(i)] = (t["content"], bool(t.get("special", False)))
    return out


def _pad(tokens: list[str], scores: list[float] | None, types: list[int], vocab_size: int) -> None:
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]")
        types.append(TOKEN_UNUSED)
        if scores is not None:
            scores.append(-1000.0)


def _spm(path: Path, added: dict[int, tuple[str, bool]], vocab_size: int) -> Meta:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(str(path))
    except (OSError, RuntimeError) as exc:
        raise ValueError(f"{path} is not a SentencePiece model ({exc}); fix or remove the file") from None
    tokens, scores, types = [], [], []
    for i in range(sp.GetPieceSize()):
        tokens.append(sp.IdToPiece(i))
        scores.append(float(sp.GetScore(i)))
        if sp.IsUnknown(i):
            types.append(TOKEN_UNKNOWN)
        elif sp.IsControl(i):
            types.append(TOKEN_CONTROL)
        elif sp.IsUnused(i):
            types.append(TOKEN_UNUSED)
        elif sp.IsByte(i):
            types.append(TOKEN_BYTE)
        else:
            types.append(TOKEN_NORMAL)
    extra = path.parent / "added_tokens.json"
    more = {int(i): (t, False) for t, i in read_json_object(extra).items()} if extra.is_file() else {}
    for i, (content, special) in sorted({**more, **added}.items()):
        if i < len(tokens):
            # tokens the SentencePiece model already has keep their piece; special ones become control
            if special:
                types[i] = TOKEN_CONTROL
            continue
        _pad(tokens, scores, types, i)
        tokens.append(content)
        scores.append(-1000.0)
        types.append(TOKEN_CONTROL if special else TOKEN_USER_DEFINED)
    _check_size(path, len(tokens), vocab_size)
    _pad(tokens, scores, types, vocab_size)
    return [("tokenizer.ggml.model", "llama", "string"), ("tokenizer.ggml.tokens", tokens, "array"),
            ("tokenizer.ggml.scores", scores, "array"), ("tokenizer.ggml.token_type", types, "array")]


def _bpe(path: Path, tok_json: dict, added: dict[int, tuple[str, bool]], vocab_size: int) -> Meta:
    model = tok_json.get("model") or {}
    if model.get("type") != "BPE":
        raise UnsupportedError(f"{path}: tokenizer model type {model.get('type')!r} cannot be written to GGUF "
                                  f"(supported: BPE, or a SentencePiece tokenizer.model)")
    vocab: dict[str, int] = model.get("vocab") or {}
    by_id: dict[int, str] = {int(i): t for t, i in vocab.items()}
    for i, (content, _) in added.items():
        by_id[i] = content
    n = max(by_id) + 1 if by_id else 0
    _check_size(path, n, vocab_size)
    tokens, types = [], []
    for i in range(n):
        tok = by_id.get(i)
        if tok is None:                   # a hole in the ids: keep the numbering
            tokens.append(f"[PAD{i}]")
            types.append(TOKEN_UNUSED)
        elif model.get("byte_fallback") and _is_byte_token(tok):
            tokens.append(tok)
            types.append(TOKEN_BYTE)
        elif i in added:
            tokens.append(tok)
            types.append(TOKEN_CONTROL if added[i][1] else TOKEN_USER_DEFINED)
        else:
            tokens.append(tok)
            types.append(TOKEN_NORMAL)
    _pad(tokens, None, types, vocab_size)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    if model.get("byte_fallback"):
        # SentencePiece-style BPE saved as tokenizer.json: llama.cpp runs it as "llama"; a piece's
        # score orders its merge (earlier id = merged first), as llama.cpp's llama_hf vocab does
        scores = [-float(i) for i in range(len(tokens))]
        return [("tokenizer.ggml.model", "llama", "string"), ("tokenizer.ggml.tokens", tokens, "array"),
                ("tokenizer.ggml.scores", scores, "array"), ("tokenizer.ggml.token_type", types, "array")]
    return [("tokenizer.ggml.model", "gpt2", "string"), ("tokenizer.ggml.pre", "default", "string"),
            ("tokenizer.ggml.tokens", tokens, "array"), ("tokenizer.ggml.token_type", types, "array"),
            ("tokenizer.ggml.merges", merges, "array")]


def _is_byte_token(t: str) -> bool:
    return len(t) == 6 and t.startswith("<0x") and t.endswith(">")


def _check_size(path: Path, n: int, vocab_size: int) -> None:
    if n > vocab_size:
        raise ValueError(f"{path} has {n} tokens but the model's vocab_size is {vocab_size}; the tokenizer "
                         f"does not belong to this model")


def _chat_template(model_dir: Path, tok_cfg: dict) -> str | None:
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    t = tok_cfg.get("chat_template")
    if isinstance(t, list):               # named templates: llama.cpp takes the default one
        named = {d.get("name"): d.get("template") for d in t if isinstance(d, dict)}
        t = named.get("default") or next(iter(named.values()), None)
    return t if isinstance(t, str) else None


def tokenizer_metadata(model_dir: str | Path, vocab_size: int, hf_config: dict | None = None) -> Meta:
    """GGUF tokenizer keys for a model directory; [] when it has no tokenizer files."""
    d = Path(model_dir)
    tok_cfg = read_json_object(d / "tokenizer_config.json") if (d / "tokenizer_config.json").is_file() else {}
    tok_json = read_json_object(d / "tokenizer.json") if (d / "tokenizer.json").is_file() else {}
    added = _added_tokens(tok_json, tok_cfg)
    if (d / "tokenizer.model").is_file():
        meta = _spm(d / "tokenizer.model", added, vocab_size)
    elif tok_json:
        meta = _bpe(d / "tokenizer.json", tok_json, added, vocab_size)
    else:
        return []
    tokens: list[str] = dict((k, v) for k, v, _ in meta)["tokenizer.ggml.tokens"]
    index: dict[str, int] = {}
    for i, t in enumerate(tokens):
        index.setdefault(t, i)
    hf = hf_config or {}
    for kind, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
        text = _token_text(tok_cfg.get(f"{kind}_token"))
        tid = index.get(text) if text is not None else None
        if tid is None:
            v = hf.get(f"{kind}_token_id")
            tid = v[0] if isinstance(v, list) and v else v
        if isinstance(tid, int) and 0 <= tid < len(tokens):
            meta.append((f"tokenizer.ggml.{key}_token_id", tid, "uint32"))
    for flag in ("add_bos_token", "add_eos_token"):
        if isinstance(tok_cfg.get(flag), bool):
            meta.append((f"tokenizer.ggml.{flag}", tok_cfg[flag], "bool"))
    template = _chat_template(d, tok_cfg)
    if template:
        meta.append(("tokenizer.chat_template", template, "string"))
    return meta
