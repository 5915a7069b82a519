"""Generation: options, logits processors, greedy / sampling / beam search, stopping criteria,
streamers, KV policies (StreamingLLM) and conversations."""
from llmrt.generation.chat import CHATML_TEMPLATE, chat_input_ids, stop_tokens
from llmrt.generation.generate import generate
from llmrt.generation.kv_policy import ContextPolicy, Sequence
from llmrt.generation.options import GenerationOptions, model_defaults, resolve_options
from llmrt.generation.output import GenerateOutput
from llmrt.generation.processors import (MinNewTokens, MinP, NoRepeatNGram, RepetitionPenalty, Temperature, TopK,
                                         TopP, TypicalP)
from llmrt.generation.session import Session
from llmrt.generation.tokens import as_id_batch

__all__ = ["CHATML_TEMPLATE", "ContextPolicy", "GenerateOutput", "GenerationOptions", "MinNewTokens", "MinP",
           "NoRepeatNGram", "RepetitionPenalty", "Sequence", "Session", "Temperature", "TopK", "TopP", "TypicalP",
           "as_id_batch", "chat_input_ids", "generate", "model_defaults", "resolve_options", "stop_tokens"]
