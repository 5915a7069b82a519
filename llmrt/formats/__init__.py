"""Weight formats: block-quantized dtypes with reference quantizers, and the readers/writers of
checkpoints (safetensors / torch), GGUF files and the llmrt model file."""
from llmrt.formats.blocks import (
    F16_DTYPE, F32_DTYPE, Q4_0_DTYPE, Q4_1_DTYPE, Q8_0_DTYPE, QK, KernelWeights, QuantFormat,
    bf16_bits_to_fp32, fp32_to_bf16_bits, group_dtype,
)
from llmrt.formats.checkpoint import (
    Checkpoint, checkpoint_identity, iter_checkpoint, list_checkpoint_tensors, read_tensor,
)
from llmrt.formats.errors import ModelFileError
from llmrt.formats.resident import drop_resident_pages, row_release
from llmrt.formats.gguf_file import (
    GGUFFile, GGUFTensorInfo, is_gguf_file, permute_rotary_rows, unpermute_rotary_rows,
)
from llmrt.formats.model_file import (
    MODEL_FILE_VERSION, ModelFileWriter, is_llmrt_file, load_model_file, read_model_file_metadata,
)

__all__ = [
    "QK", "Q4_0_DTYPE", "Q4_1_DTYPE", "Q8_0_DTYPE", "F32_DTYPE", "F16_DTYPE",
    "QuantFormat", "KernelWeights", "group_dtype", "fp32_to_bf16_bits", "bf16_bits_to_fp32",
    "Checkpoint", "iter_checkpoint", "list_checkpoint_tensors", "read_tensor", "checkpoint_identity",
    "GGUFFile", "GGUFTensorInfo", "is_gguf_file", "unpermute_rotary_rows", "permute_rotary_rows",
    "ModelFileWriter", "load_model_file", "read_model_file_metadata", "is_llmrt_file", "MODEL_FILE_VERSION",
    "ModelFileError", "drop_resident_pages", "row_release",
]
