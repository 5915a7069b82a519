"""`llmrt convert MODEL --outfile FILE.gguf --outtype f32|f16|bf16|q8_0 [--peft ADAPTER_DIR] [--force]`."""
from __future__ import annotations

import argparse
import sys


def cmd_convert(args: argparse.Namespace) -> int:
    from llmrt.convert.gguf import convert_to_gguf

    out = convert_to_gguf(args.model, args.outfile, args.outtype, peft=args.peft, force=args.force,
                          progress=not args.quiet)
    print(f"llmrt convert: wrote {out}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("convert", help="Hugging Face directory -> GGUF (llama.cpp's layout and metadata)",
                       description="Convert a Hugging Face llama / mistral / gpt_neox directory to a GGUF file "
                                   "that llama.cpp and llmrt read, one tensor at a time.")
    c.add_argument("model", help="Hugging Face model directory (config.json + safetensors)")
    c.add_argument("--outfile", required=True, help="the GGUF file to write")
    c.add_argument("--outtype", default="f16", choices=("f32", "f16", "bf16", "q8_0"),
                   help="type of the weight matrices (default f16; norms and biases stay f32); q8_0 as llama.cpp's "
                        "converter offers it (`llmrt quantize` writes q4_0 / q4_1 too)")
    c.add_argument("--peft", metavar="ADAPTER_DIR", help="merge this LoRA adapter (peft save_pretrained) first")
    c.add_argument("--force", action="store_true", help="replace OUTFILE if it exists")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_convert)
