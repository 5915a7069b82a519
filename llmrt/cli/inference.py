"""`llmrt inference`: neural-speed's scripts/inference.py flags over a converted or quantized model
file: a raw prompt (no chat template) continued and streamed to stdout."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from llmrt.cli.common import ColorStreamer, UserError, current_tier, load_tokenizer, positive_int


def cmd_inference(args: argparse.Namespace) -> int:
    from llmrt import Model

    path = Path(args.model)
    if not path.exists():
        raise UserError(f"-m {path}: no such file; pass a .gguf or .llmrt file (or a Hugging Face model directory)")
    if args.ctx_size < 2:
        raise UserError(f"-c must be at least 2, got {args.ctx_size}")
    if args.n_predict < -1:
        raise UserError(f"-n must be -1 (until EOS or the end of the context) or >= 0, got {args.n_predict}")
    streaming = args.keep is not None or args.shift_roped_k
    if streaming and args.keep is not None and not -1 <= args.keep < args.ctx_size - 1:
        raise UserError(f"--keep {args.keep} must be -1 (the whole prompt) or leave room in -c {args.ctx_size}")
    tok = load_tokenizer(path, args.tokenizer)
    ids = prompt_ids(tok, args.prompt)
    if len(ids) >= args.ctx_size:
        raise UserError(f"the prompt has {len(ids)} tokens, -c {args.ctx_size} holds fewer plus one new token; "
                        f"raise -c")
    if not streaming and args.n_predict > 0 and len(ids) + args.n_predict > args.ctx_size:
        raise UserError(f"prompt ({len(ids)} tokens) + -n {args.n_predict} exceeds -c {args.ctx_size}; raise -c, "
                        f"lower -n, or pass --keep K (optionally --shift-roped-k) to keep generating past a full context")

    t0 = time.perf_counter()
    model = Model.from_pretrained(path, memory_dtype="f32" if args.memory_f32 else "f16",
                                  max_chunk=args.batch_size_truncate)
    t_load = time.perf_counter() - t0
    if args.ctx_size > model.config.max_position_embeddings:
        raise UserError(f"-c {args.ctx_size} is larger than the model's context window "
                        f"({model.config.max_position_embeddings} tokens); pass a smaller -c")

    gen = dict(max_new_tokens=args.n_predict, ctx_size=args.ctx_size, repetition_penalty=args.repeat_penalty,
               do_sample=args.temp > 0, seed=None if args.seed < 0 else args.seed)
    if args.temp > 0:
        gen.update(temperature=args.temp, top_k=args.top_k, top_p=args.top_p)
    if streaming:
        gen.update(n_keep=args.keep if args.keep is not None else 0, shift_roped_k=args.shift_roped_k)
    # the prompt as typed, then the continuation as it is generated
    sys.stdout.write(("\033[33m" + args.prompt + "\033[0m") if args.color else args.prompt)
    sys.stdout.flush()
    t1 = time.perf_counter()
    out = model.generate([ids], streamer=ColorStreamer(tok, color=args.color), threads=args.threads, **gen)
    dt = time.perf_counter() - t1
    n_new = out.shape[1] - len(ids)
    print(f"[llmrt] {path.name}: load {t_load:.1f} s, {len(ids)} prompt + {n_new} new tokens in {dt:.2f} s "
          f"({n_new / dt if dt > 0 else 0:.1f} tok/s incl. prefill), isa {current_tier()}", file=sys.stderr)
    return 0


def prompt_ids(tok, prompt: str) -> list[int]:
    """A raw prompt's ids with what the tokenizer adds itself (e.g. BOS), no chat template; an empty
    prompt starts from BOS."""
    ids = list(tok(prompt, add_special_tokens=True).input_ids)
    if not ids:
        if tok.bos_token_id is None:
            raise UserError("the prompt is empty and the tokenizer has no BOS token to start from; pass -p TEXT")
        ids = [int(tok.bos_token_id)]
    return ids


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inference", help="neural-speed's inference.py: continue a raw prompt from a model file",
                       description="Continue a raw prompt (no chat template) with a converted or quantized model "
                                   "(.gguf or .llmrt file, or a Hugging Face directory quantized at load with "
                                   "the default int4), streaming the text to stdout; timings go to stderr. "
                                   "Flags follow neural-speed's scripts/inference.py.")
    p.add_argument("-m", "--model", required=True, help="the model: .gguf or .llmrt file, or an HF directory")
    p.add_argument("-p", "--prompt", default="", help="prompt to continue (default: empty, i.e. start from BOS)")
    p.add_argument("-n", "--n_predict", type=int, default=-1,
                   help="tokens to generate (default -1: until EOS, or the end of the context without --keep)")
    p.add_argument("-t", "--threads", type=positive_int, default=None, help="threads (default: physical cores)")
    p.add_argument("-b", "--batch_size_truncate", type=positive_int, default=128, metavar="BATCH",
                   help="prompt tokens run through the layers at once (default 128: as fast as larger batches "
                        "on the models measured, with a quarter of the scratch memory of 512)")
    p.add_argument("-c", "--ctx_size", type=int, default=512,
                   help="context size in tokens (default 512; at most the model's context window)")
    p.add_argument("-s", "--seed", type=int, default=-1, help="sampling seed (default -1: random); used with --temp > 0")
    p.add_argument("--repeat_penalty", type=float, default=1.1,
                   help="penalty of tokens already in the context (default 1.1; 1.0 = off)")
    p.add_argument("--temp", type=float, default=0.0,
                   help="sampling temperature (default 0: greedy); > 0 samples with --top_k / --top_p")
    p.add_argument("--top_k", type=int, default=40, help="top-k of sampling (default 40)")
    p.add_argument("--top_p", type=float, default=0.95, help="top-p of sampling (default 0.95)")
    p.add_argument("--color", action="store_true", help="color the prompt (yellow) and the generated text (green)")
    p.add_argument("--keep", type=int, default=None, metavar="K",
                   help="when the context is full keep the first K tokens (-1: the whole prompt) and go on "
                        "(StreamingLLM: the rest is re-evaluated, or shifted with --shift-roped-k); without it "
                        "a full context is an error")
    p.add_argument("--shift-roped-k", dest="shift_roped_k", action="store_true",
                   help="with a full context, use the KV cache as a ring buffer and re-rotate cached keys instead of "
                        "re-evaluating (rotary models; --keep defaults to 0)")
    mem = p.add_mutually_exclusive_group()
    mem.add_argument("--memory-f32", dest="memory_f32", action="store_true", help="keep the KV cache in fp32")
    mem.add_argument("--memory-f16", dest="memory_f16", action="store_true", help="keep the KV cache in fp16 (default)")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="tokenizer directory (default: the model's own; needed for .llmrt files)")
    p.set_defaults(func=cmd_inference)
