"""`llmrt quantize --model_file IN --out_file OUT ...`: HF directory / F32-F16 GGUF / .llmrt in;
an .llmrt file (llmrt's group formats) or a GGUF with llama.cpp's q4_0 / q4_1 / q8_0 blocks out."""
from __future__ import annotations

import argparse
import sys


def cmd_quantize(args: argparse.Namespace) -> int:
    from llmrt.convert.quantize import quantize_model

    out = quantize_model(args.model_file, args.out_file, weight_dtype=args.weight_dtype, alg=args.alg,
                         group_size=args.group_size, scale_dtype=args.scale_dtype, compute_dtype=args.compute_dtype,
                         outtype=args.outtype, nthread=args.nthread, force=args.force, progress=not args.quiet)
    print(f"llmrt quantize: wrote {out}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("quantize", help="quantize a model into an .llmrt file or a q4_0/q4_1/q8_0 GGUF",
                       description="Quantize a Hugging Face directory, an F32/F16 GGUF or an .llmrt file, one tensor "
                                   "at a time. OUT ending in .gguf gets llama.cpp's block types (--outtype); any other "
                                   "name gets an llmrt model file.")
    q.add_argument("--model_file", required=True, help="HF model directory, F32/F16 .gguf, or .llmrt file")
    q.add_argument("--out_file", required=True, help="output: NAME.llmrt, or NAME.gguf with --outtype")
    # defaults are applied by the library, so options given with --outtype can be checked against it
    q.add_argument("--weight_dtype", choices=("int4", "int8"), help="default int4")
    q.add_argument("--alg", choices=("sym", "asym"), help="default sym")
    q.add_argument("--group_size", type=int, choices=(32, 128, -1), help="default 32; -1: per channel")
    q.add_argument("--scale_dtype", choices=("fp32", "bf16", "fp16"), help="default fp32 (GGUF blocks: fp16)")
    q.add_argument("--compute_dtype", choices=("int8", "fp32", "bf16"),
                   help="default int8; stored in .llmrt files (GGUF files have none: chosen when loading)")
    q.add_argument("--outtype", choices=("q4_0", "q4_1", "q8_0"),
                   help="GGUF block type (default: the one the weight options name: int4 sym -> q4_0, "
                        "int4 asym -> q4_1, int8 sym -> q8_0, all with group 32)")
    q.add_argument("--nthread", type=int, default=1, help="tensors quantized at once (default 1)")
    q.add_argument("--force", action="store_true", help="replace OUT if it exists")
    q.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_quantize)
