"""chat(): a conversation through the tokenizer's own chat template, reusing the KV cache."""
from __future__ import annotations

from typing import Any

# The template used when a tokenizer has none (SmolLM2 and most small instruct models speak ChatML).
CHATML_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                   "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                   "{% endif %}")


def check_messages(messages: Any) -> list[dict]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise TypeError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise TypeError(f"each message needs a string 'role' and 'content', got {m!r}")
    return list(messages)


def chat_input_ids(messages: Any, tokenizer: Any, chat_template: str | None = None) -> list[int]:
    """The whole conversation, templated and tokenized, ending with the assistant's turn opening."""
    messages = check_messages(messages)
    if not hasattr(tokenizer, "apply_chat_template"):
        raise TypeError(f"tokenizer must be a transformers tokenizer, got {type(tokenizer).__name__}")
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        chat_template = CHATML_TEMPLATE
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         chat_template=chat_template)
    # the template already wrote any BOS token: do not add special tokens again
    return [int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]


def stop_tokens(tokenizer: Any, model_eos: list[int]) -> list[int]:
    """The model's EOS tokens plus the tokenizer's (a chat turn may end with either)."""
    out = list(model_eos)
    tok = getattr(tokenizer, "eos_token_id", None)
    if isinstance(tok, int) and tok not in out:
        out.append(tok)
    return out
