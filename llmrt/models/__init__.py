"""Model families: one module per Hugging Face `model_type` family, registered on import."""
from llmrt.models import (baichuan, bloom, chatglm, falcon, gpt_bigcode, gpt_neox, gptj, llama, mpt, opt,  # noqa: F401
                          qwen, qwen2, starcoder2)  # registration
from llmrt.models.base import (Family, family_by_name, family_for_gguf, family_for_hf,
                               supported_model_types)

__all__ = ["Family", "family_by_name", "family_for_gguf", "family_for_hf", "supported_model_types"]
