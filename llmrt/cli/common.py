"""What the subcommands share: the user-error types, model and quantization options, loading a model and
its tokenizer, the streamer that prints generated text, the tier name."""
from __future__ import annotations

import argparse
from pathlib import Path


class UserError(Exception):
    """A mistake on the command line (bad option value, missing file): reported in one line, exit 2."""


# Errors that mean the user gave something wrong; anything else is a bug and keeps its traceback.
USER_ERRORS = (UserError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
               PermissionError, ValueError, NotImplementedError, RuntimeError)


def add_quant_args(p: argparse.ArgumentParser, *, activation_default: str = "high") -> None:
    g = p.add_argument_group("quantization (Hugging Face checkpoints; GGUF files run as stored)")
    g.add_argument("--weight_dtype", default="int4", help="int4 | int8 | fp32 (default int4)")
    g.add_argument("--group_size", type=int, default=32, help="32 | 64 | 128 | -1 (per channel)")
    g.add_argument("--alg", default="sym", help="sym | asym")
    g.add_argument("--scale_dtype", default="fp32", help="fp32 | bf16 | fp16")
    g.add_argument("--compute_dtype", default="int8", help="int8 | fp32 | bf16")
    g.add_argument("--activation_precision", default=activation_default,
                   help=f"int8 | auto | high (default {activation_default}; high: two int8 passes per layer)")
    g.add_argument("--use_cache", action="store_true", help="reuse / write the quantized model cache")


def add_parallel_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tensor_parallel", action="store_true",
                   help="split the model over the ranks of `mpiexec -n N llmrt ...` (each holds 1/N of every "
                        "attention and MLP matrix; only rank 0 reads input and prints); needs llmrt[mpi]")


def is_root(model) -> bool:
    """Whether this process prints: always, except on tensor-parallel ranks other than 0."""
    return model.tp is None or model.tp.is_root


def model_path(arg: str | None) -> Path:
    """The model a command runs: the path given, or the built-in default (SmolLM2-135M-Instruct)."""
    from llmrt.hub import default_model_path

    path = Path(arg) if arg else default_model_path()
    if not path.exists():
        raise FileNotFoundError(f"no model at {path}; pass a Hugging Face model directory, a .gguf or an .llmrt file")
    return path


def quant_config(args: argparse.Namespace):
    """The WeightOnlyQuantConfig the quantization options describe (validated there)."""
    from llmrt import WeightOnlyQuantConfig

    return WeightOnlyQuantConfig(weight_dtype=args.weight_dtype, alg=args.alg, group_size=args.group_size,
                                 scale_dtype=args.scale_dtype, compute_dtype=args.compute_dtype,
                                 activation_precision=args.activation_precision, use_cache=args.use_cache)


def weights_label(q) -> str:
    """How a WeightOnlyQuantConfig stores weights: `int4_sym_g32_fp32 (int8 head)`, `fp32`."""
    if q.not_quant:
        return "fp32"
    from llmrt.formats import QuantFormat

    name = QuantFormat(q.weight_dtype, q.alg, q.group_size, q.scale_dtype).name
    return name if q.head_dtype == q.weight_dtype else f"{name} ({q.head_dtype} head)"


def current_tier() -> str:
    from llmrt._kernels import _ops

    return _ops.current_tier()


def load_model(path: Path, args: argparse.Namespace, memory_dtype: str | None = None):
    """The model at path, quantized (HF checkpoints) or run as stored (GGUF, .llmrt) per the quant options."""
    from llmrt import Model

    return Model.from_pretrained(path, quant_config(args), compute_dtype=args.compute_dtype, memory_dtype=memory_dtype,
                                 tensor_parallel=getattr(args, "tensor_parallel", False))


def load_model_and_tokenizer(path: Path, args: argparse.Namespace, memory_dtype: str | None = None):
    """load_model and load_tokenizer, with transformers imported on a background thread meanwhile.

    That import takes most of a second of pure Python; the model load beside it is mostly NumPy and
    C with the GIL released, so the two overlap and `llmrt run` reaches its first token sooner. The
    thread is joined before anything else imports tokenizers or transformers: two threads importing
    the same packages at once can see each other's half-initialized modules."""
    import threading

    def work() -> None:
        try:
            from transformers import PreTrainedTokenizerFast, TextStreamer  # noqa: F401
        except Exception:       # the import on the main thread reports any problem
            pass

    prefetch = threading.Thread(target=work, name="llmrt-prefetch", daemon=True)
    prefetch.start()
    try:
        model = load_model(path, args, memory_dtype)
    finally:
        prefetch.join()
    return model, load_tokenizer(path, args.tokenizer)


def load_tokenizer(model: Path, tokenizer_dir: str | None = None):
    """The tokenizer of a model: --tokenizer DIR when given, else the model's own (HF dir or GGUF)."""
    from llmrt.tokenization import load_tokenizer as load

    return load(Path(tokenizer_dir) if tokenizer_dir else model)


def positive_int(text: str) -> int:
    """argparse type: an int >= 1 (argparse then reports a bad value in one line, exit 2)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class ColorStreamer:
    """Prints new text as it is generated (prompt skipped), optionally in color."""

    skip_prompt = True          # tells generate(ignore_prompt=True) to send the prompt anyway
    accepts_numpy = True        # TextStreamer takes NumPy ids as they are: no torch import for the CLI

    def __init__(self, tok, color: bool):
        from transformers import TextStreamer

        self._inner = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        self.color = color
        if color:
            self._inner.on_finalized_text = self._colored

    def _colored(self, text: str, stream_end: bool = False) -> None:
        print("\033[32m" + text + "\033[0m", flush=True, end="" if not stream_end else None)

    def put(self, value) -> None:
        self._inner.put(value)

    def end(self) -> None:
        self._inner.end()
