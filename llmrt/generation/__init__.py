"""Generation: logits processors, sampling and the token loop."""
from llmrt.generation.generate import as_id_batch, build_processors, generate_one, sample_token
from llmrt.generation.processors import MinP, RepetitionPenalty, Temperature, TopK, TopP

__all__ = ["as_id_batch", "build_processors", "generate_one", "sample_token",
           "MinP", "RepetitionPenalty", "Temperature", "TopK", "TopP"]
