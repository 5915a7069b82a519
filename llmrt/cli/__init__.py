"""Command line: `llmrt run | chat | inference | convert | quantize | perplexity | bench | info`.

Each subcommand lives in its own module with a `register(subparsers)` function; modules import
only argparse at import time (heavy imports happen inside the command) so `--help` is instant."""
from __future__ import annotations

import argparse
import os
import sys

from llmrt.cli import bench, common, convert, inference, info, perplexity, quantize, run

# (module, ...) in the order `llmrt --help` lists them
_COMMANDS = (run, inference, convert, quantize, perplexity, bench, info)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmrt", description="INT4/INT8 LLM inference on x86 CPUs")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _COMMANDS:
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    # transformers' advice that PyTorch is missing is noise here: nothing the CLI runs needs it
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except common.USER_ERRORS as e:
        # a user's mistake: one line saying what is wrong and what to do, no traceback
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"llmrt {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"llmrt {args.command}: interrupted", file=sys.stderr)
        return 130


__all__ = ["build_parser", "main"]
