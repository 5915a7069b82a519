from llmrt.api.transformers import AutoModelForCausalLM, WeightOnlyQuantConfig

__all__ = ["AutoModelForCausalLM", "WeightOnlyQuantConfig"]
