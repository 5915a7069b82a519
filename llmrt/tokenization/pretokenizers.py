"""llama.cpp's pre-tokenizers for byte-level BPE vocabularies, keyed by a GGUF file's `tokenizer.ggml.pre`.

llama.cpp splits text with an ordered list of regexes: each one cuts every piece left by the previous ones
into its matches and the text between them, all kept (`tokenizers`' Split with behaviour "isolated").
The patterns here say what llama.cpp's do (`src/llama-vocab.cpp`, `llm_tokenizer_bpe`), written for
Oniguruma (what `tokenizers` runs) — llama.cpp itself rewrites the same patterns for std::regex.
Per name also the flags llama.cpp sets beside the regexes: whole-word vocabulary lookup before merging
(`ignore_merges`), BOS by default, and whether decoding cleans up spaces.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass


@dataclass(frozen=True)
class PreTokenizerSpec:
    regexes: tuple[str, ...]
    ignore_merges: bool = False
    add_bos: bool = False       # llama.cpp's default when the file has no tokenizer.ggml.add_bos_token
    clean_spaces: bool = True   # llama.cpp's clean_up_tokenization_spaces for BPE vocabularies
    has_bos: bool = True        # False: llama.cpp drops the BOS id whatever the file says (GLM)


# English contractions, case-insensitive, spelled as llama.cpp spells them (no inline (?i) group).
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
QWEN2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
         r"|\s+(?!\S)|\s+")
QWEN35 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
JAIS2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
         r"|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)"
         r"|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}")
SEED_CODER = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+")
BAILINGMOE = (r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+")
UFAKZEKA = r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
MINICPM5_WORDS = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
EXAONE_MOE = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+")
_ASCII_PUNCT = "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~]"  # every ASCII punctuation or symbol
DEEPSEEK3_WORDS = (_ASCII_PUNCT + r"[A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
                   r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPARK2_5_WORDS = (_ASCII_PUNCT + r"[A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
                  r"| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+")
# llama.cpp has no \p{Lu}/\p{Ll} in std::regex: "upper" is a letter that is not a-z, "lower" one not A-Z.
_UPPERISH = r"((?=[\p{L}])([^a-z]))"
_LOWERISH = r"((?=[\p{L}])([^A-Z]))"
TEKKEN = (r"[^\r\n\p{L}\p{N}]?" + _UPPERISH + "*" + _LOWERISH + r"+|[^\r\n\p{L}\p{N}]?" + _UPPERISH + "+"
          + _LOWERISH + r"*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT4O = (r"[^\r\n\p{L}\p{N}]?" + _UPPERISH + "*" + _LOWERISH + "+(?:" + _CONTRACTIONS[3:-1] + r")?"
         r"|[^\r\n\p{L}\p{N}]?" + _UPPERISH + "+" + _LOWERISH + "*(?:" + _CONTRACTIONS[3:-1] + r")?"
         r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# llama.cpp reads \p{Lu}, \p{Ll}, \p{Lt}, \p{Lm} and \p{Lo} as any letter (\p{L}): so does this spelling.
_LETTER_OR_MARK = r"[\p{L}\p{M}]"
YOUTU_WORDS = (r"[^\r\n\p{L}\p{N}]?" + _LETTER_OR_MARK + "*" + _LETTER_OR_MARK + "+" + _CONTRACTIONS + "?"
               r"|[^\r\n\p{L}\p{N}]?" + _LETTER_OR_MARK + "+" + _LETTER_OR_MARK + "*" + _CONTRACTIONS + "?"
               r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
YOUTU_CJK = ("[\uac00-\ud7a3\u3131-\u318e]+|[\uff01\u2026\u201c\u201d\u2018\u2019\u2014\uff1a\uff1b\uff0c"
             "\u3001-\u303f\ufe30-\ufe4f]+|[\u3105-\u312f]+|[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+")
BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"

# DeepSeek LLM's hand-listed cased letters (llama.cpp's list), Latin/Greek/Cyrillic/... without CJK.
_DEEPSEEK_LETTERS = (
    "A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373"
    "\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481"
    "\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b"
    "\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b"
    "\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb"
    "\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128"
    "\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4"
    "\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf"
    "\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943"
)
_CJK_HANGUL = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
_HAN_KANA = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"

_DEFAULT = PreTokenizerSpec((r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"))
_LLAMA3 = PreTokenizerSpec((LLAMA3,), ignore_merges=True, add_bos=True)
_GPT2 = PreTokenizerSpec((GPT2,))
_STARCODER = PreTokenizerSpec((r"\p{N}", GPT2))
_QWEN2 = PreTokenizerSpec((QWEN2,), clean_spaces=False)
_DEEPSEEK3 = PreTokenizerSpec((r"\p{N}{1,3}", _HAN_KANA, DEEPSEEK3_WORDS), clean_spaces=False)
_BLOOM = PreTokenizerSpec((BLOOM,))

# tokenizer.ggml.pre -> spec, as llama.cpp's llama_vocab::load maps the names (same groups, same flags).
PRE_TOKENIZERS: dict[str, PreTokenizerSpec] = {
    "default": _DEFAULT,
    "minicpm5": PreTokenizerSpec((r"\p{N}{1,3}", MINICPM5_WORDS), ignore_merges=True),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                     "jina-v5-nano"), _LLAMA3),
    "deepseek-llm": PreTokenizerSpec((r"[\r\n]", r"\s?[" + _DEEPSEEK_LETTERS + "]+",
                                      "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
                                      r"\s+\z", _CJK_HANGUL, r"\p{N}+"), clean_spaces=False),
    "deepseek-coder": PreTokenizerSpec((r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK_HANGUL, r"\p{N}"),
                                       clean_spaces=False),
    "deepseek-v3": _DEEPSEEK3,
    "hunyuan-dense": _DEEPSEEK3,
    "joyai-llm": _DEEPSEEK3,
    "hy_v4": _DEEPSEEK3,
    "spark2_5": PreTokenizerSpec((r"\p{N}{1,3}", _HAN_KANA, SPARK2_5_WORDS, r"\p{N}"), clean_spaces=False),
    "youtu": PreTokenizerSpec((YOUTU_CJK, YOUTU_WORDS), ignore_merges=True, clean_spaces=False),
    "falcon": PreTokenizerSpec((r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]")),
    "mpt": _GPT2,
    "starcoder": _STARCODER,
    **dict.fromkeys(("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0",
                     "mellum", "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe", "exaone4"), _GPT2),
    "jais-2": PreTokenizerSpec((JAIS2,)),
    "refact": _STARCODER,
    "command-r": PreTokenizerSpec((r"\p{N}", GPT2), clean_spaces=False),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2"), _QWEN2),
    "megrez": PreTokenizerSpec((QWEN2,)),
    "qwen35": PreTokenizerSpec((QWEN35,), clean_spaces=False),
    "stablelm2": PreTokenizerSpec((QWEN2,)),
    "olmo": _GPT2,
    "dbrx": PreTokenizerSpec((LLAMA3,)),
    "smaug-bpe": PreTokenizerSpec((LLAMA3,)),
    "poro-chat": PreTokenizerSpec((BLOOM,), clean_spaces=False),
    "chatglm-bpe": PreTokenizerSpec((LLAMA3,), has_bos=False),
    "glm4": PreTokenizerSpec((LLAMA3,), ignore_merges=True, has_bos=False),
    "glm5": PreTokenizerSpec((LLAMA3,), ignore_merges=True, has_bos=False),
    "viking": PreTokenizerSpec((BLOOM, r"\p{N}"), clean_spaces=False),
    "jais": _GPT2,
    "tekken": PreTokenizerSpec((TEKKEN,), ignore_merges=True, add_bos=True, clean_spaces=False),
    "smollm": PreTokenizerSpec((r"\p{N}", GPT2), clean_spaces=False),
    "codeshell": _STARCODER,
    "bloom": _BLOOM,
    "gpt3-finnish": _BLOOM,
    "exaone": _STARCODER,
    "exaone-moe": PreTokenizerSpec((EXAONE_MOE,)),
    "minerva-7b": _STARCODER,
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"),
                    PreTokenizerSpec((GPT4O,), clean_spaces=False)),
    "trillion": PreTokenizerSpec((GPT2,), clean_spaces=False),
    "granite-docling": PreTokenizerSpec((GPT2,), clean_spaces=False),
    **dict.fromkeys(("bailingmoe", "bailingmoe2", "llada-moe"), PreTokenizerSpec((BAILINGMOE,), clean_spaces=False)),
    "seed-coder": PreTokenizerSpec((SEED_CODER,), clean_spaces=False),
    "hunyuan": PreTokenizerSpec((QWEN2,), clean_spaces=False),
    "ufakzeka": PreTokenizerSpec((UFAKZEKA,), clean_spaces=False),
    "grok-2": PreTokenizerSpec((QWEN2,), clean_spaces=False),
    "solar-open": PreTokenizerSpec((QWEN2,), clean_spaces=False),
    "laguna": PreTokenizerSpec((r"[^\n]+|[\n]+", QWEN2), clean_spaces=False),
    "mellum2": _STARCODER,
}

# Names llama.cpp knows whose splitting is hand-written C++ (not a regex) or not byte-level BPE.
UNSUPPORTED = frozenset({"kimi-k2", "afmoe", "tiny_aya", "cohere2moe", "superbpe", "gemma4",
                         "granite-embed-multi-311m", "granite-embed-multi-97m", "sarvam-moe", "whitespace",
                         "chameleon"})


def pre_tokenizer_spec(name: str | None) -> PreTokenizerSpec:
    """The spec for a GGUF `tokenizer.ggml.pre` value; a missing one means "default", as in llama.cpp."""
    if not name:
        # llama.cpp warns and uses its default regexes ("GENERATION QUALITY WILL BE DEGRADED").
        warnings.warn("GGUF file has no tokenizer.ggml.pre; using llama.cpp's 'default' pre-tokenizer, which may "
                      "not match the model's own tokenizer", stacklevel=3)
        return _DEFAULT
    spec = PRE_TOKENIZERS.get(name)
    if spec is not None:
        return spec
    if name in UNSUPPORTED:
        raise ValueError(f"GGUF pre-tokenizer {name!r} is known to llama.cpp but not supported by llmrt "
                         f"(its splitting is not a plain regex)")
    raise ValueError(f"unknown GGUF pre-tokenizer {name!r} (tokenizer.ggml.pre); llama.cpp would refuse it too")
