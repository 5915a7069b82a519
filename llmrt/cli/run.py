"""`llmrt run` (load, quantizing if needed, and answer one prompt) and `llmrt chat` (multi-round)."""
from __future__ import annotations

import argparse
import sys
import time

from llmrt.cli.common import (ColorStreamer, add_parallel_arg, add_quant_args, current_tier, is_root,
                              load_model_and_tokenizer, model_path)

DEFAULT_PROMPT = "What is the capital of France?"


def cmd_run(args: argparse.Namespace) -> int:
    path = model_path(args.model)
    t0 = time.perf_counter()
    model, tok = load_model_and_tokenizer(path, args)
    t_load = time.perf_counter() - t0
    prompt = args.prompt
    if not args.no_chat and getattr(tok, "chat_template", None):
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    else:
        text = prompt
    # a chat template already writes every special token; a raw prompt gets what the tokenizer adds
    ids = tok(text, return_tensors="np", add_special_tokens=args.no_chat).input_ids
    streamer = ColorStreamer(tok, color=args.color)
    if args.color and is_root(model):
        sys.stdout.write("\033[33m" + prompt + "\033[0m\n")
    t1 = time.perf_counter()
    out = model.generate(ids, max_new_tokens=args.n_predict, do_sample=args.temperature > 0,
                         temperature=args.temperature if args.temperature > 0 else 1.0, top_k=args.top_k,
                         top_p=args.top_p, repetition_penalty=args.repeat_penalty, seed=args.seed,
                         streamer=streamer, threads=args.threads,
                         ctx_size=args.ctx_size if args.ctx_size else None)
    dt = time.perf_counter() - t1
    n_new = out.shape[1] - ids.shape[1]
    if not is_root(model):
        return 0
    print(f"\n[llmrt] {path.name}: load {t_load:.1f} s, {ids.shape[1]} prompt + {n_new} new tokens in {dt:.2f} s "
          f"({n_new / dt if dt > 0 else 0:.1f} tok/s incl. prefill), isa {current_tier()}", file=sys.stderr)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    """A multi-round conversation on stdin/stdout; the KV cache is kept between turns."""
    path = model_path(args.model)
    model, tok = load_model_and_tokenizer(path, args)
    gen = dict(max_new_tokens=args.n_predict, do_sample=args.temperature > 0,
               temperature=args.temperature if args.temperature > 0 else 1.0, top_k=args.top_k, top_p=args.top_p,
               repetition_penalty=args.repeat_penalty, seed=args.seed)
    if args.ctx_size:
        gen["ctx_size"] = args.ctx_size
    if args.keep is not None or args.shift_roped_k:
        gen.update(n_keep=args.keep if args.keep is not None else -1, shift_roped_k=args.shift_roped_k)
    start = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(start)
    root = is_root(model)
    tty = sys.stdin.isatty() and root
    if tty:
        print("llmrt chat: type a message; /reset starts over, /quit (or Ctrl-D) ends.", file=sys.stderr)
    while True:
        if tty:
            print("> ", end="", flush=True)
        line = sys.stdin.readline() if root else None
        if model.tp is not None:           # rank 0 reads; every rank answers the same line
            line = model.tp.share_text(line if line else None)
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
        streamer = ColorStreamer(tok, color=args.color)
        t0 = time.perf_counter()
        reply = model.chat(messages, tok, streamer=streamer, threads=args.threads, **gen)
        dt = time.perf_counter() - t0
        messages.append({"role": "assistant", "content": reply})
        if root:
            print(f"[llmrt] turn {sum(m['role'] == 'user' for m in messages)}: {dt:.2f} s", file=sys.stderr)
    return 0



def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top_k", type=int, default=40)
    p.add_argument("--top_p", type=float, default=0.95)
    p.add_argument("--repeat_penalty", type=float, default=1.0)


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("run", help="load (quantizing if needed) and generate; default model SmolLM2-135M-Instruct")
    r.add_argument("model", nargs="?", help="HF model dir, .gguf or .llmrt file (default: SmolLM2-135M-Instruct)")
    r.add_argument("-p", "--prompt", default=DEFAULT_PROMPT)
    r.add_argument("-n", "--n_predict", type=int, default=64, help="new tokens to generate")
    r.add_argument("-t", "--threads", type=int, default=None, help="threads (default: physical cores)")
    r.add_argument("-c", "--ctx_size", type=int, default=0, help="context size (default: prompt + n_predict)")
    _add_sampling_args(r)
    r.add_argument("--color", action="store_true", help="color the prompt and the answer")
    r.add_argument("--no_chat", action="store_true", help="do not wrap the prompt in the chat template")
    r.add_argument("--tokenizer", default=None, help="tokenizer directory when the model is an .llmrt file")
    add_quant_args(r)
    add_parallel_arg(r)
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
    _add_sampling_args(c)
    c.add_argument("--color", action="store_true", help="color the answers")
    c.add_argument("--tokenizer", default=None, help="tokenizer directory when the model is an .llmrt file")
    add_quant_args(c)
    add_parallel_arg(c)
    c.set_defaults(func=cmd_chat)
