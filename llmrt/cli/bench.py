"""`llmrt bench`: prompt-processing and text-generation speed, like llama-bench's pp / tg tests."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from llmrt.cli.common import (UserError, add_quant_args, current_tier, load_model, model_path, positive_int,
                              weights_label)


def cmd_bench(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from llmrt.runtime import compute_threads, default_threads

    if args.n_prompt < 0 or args.n_gen < 0 or args.n_prompt + args.n_gen == 0:
        raise UserError(f"-p and -n must be >= 0 and not both 0, got -p {args.n_prompt} -n {args.n_gen}")
    path = model_path(args.model)
    model = load_model(path, args)
    threads = args.threads or default_threads()
    ctx = max(args.n_prompt + args.n_gen, 2)
    if ctx > model.config.max_position_embeddings:
        raise UserError(f"-p {args.n_prompt} + -n {args.n_gen} exceeds the model's context "
                        f"({model.config.max_position_embeddings} tokens); lower -p or -n")
    rng = np.random.default_rng(args.seed)
    # random ids, like llama-bench: speed does not depend on the text, and no tokenizer is needed
    prompt = rng.integers(0, model.vocab_size, size=args.n_prompt, dtype=np.int64)
    first = int(rng.integers(0, model.vocab_size))
    engine = model.engine

    def one_run() -> tuple[float, float]:
        cache = model.new_cache(ctx)
        pp = tg = 0.0
        tok = first
        if args.n_prompt:
            t0 = time.perf_counter()
            logits = engine.forward(cache, prompt)
            pp = time.perf_counter() - t0
            tok = int(logits[-1].argmax())
        if args.n_gen:
            t0 = time.perf_counter()
            for _ in range(args.n_gen):           # greedy decode continuing after the prompt
                tok = int(engine.forward(cache, [tok])[-1].argmax())
            tg = time.perf_counter() - t0
        return pp, tg

    pp_s, tg_s = [], []
    with compute_threads(threads):
        one_run()           # warm-up, not timed: first-touch of scratch and weights pages
        for _ in tqdm(range(args.reps), desc="bench", unit="rep", file=sys.stderr, disable=args.reps < 2):
            pp, tg = one_run()
            pp_s.append(pp)
            tg_s.append(tg)
    tests = []
    if args.n_prompt:
        tests.append(_stats(f"pp{args.n_prompt}", args.n_prompt, pp_s))
    if args.n_gen:
        tests.append(_stats(f"tg{args.n_gen}", args.n_gen, tg_s))
    result = {"model": Path(path).name, "path": str(path), "format": _format(model), "tier": current_tier(),
              "threads": threads, "reps": args.reps, "seed": args.seed, "tests": tests}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        _print_table(result)
    return 0


def _stats(name: str, n_tokens: int, seconds: list[float]) -> dict:
    rates = [n_tokens / s for s in seconds]
    return {"test": name, "n_tokens": n_tokens, "tokens_per_s": statistics.fmean(rates),
            "tokens_per_s_sd": statistics.stdev(rates) if len(rates) > 1 else 0.0,
            "seconds": seconds}


def _format(model) -> str:
    """How the weights are stored and computed: `q4_1+q8_0 (int8 compute)`, `int4_sym_g32_fp32 (int8 head), int8 compute`."""
    q = model.quant_config
    if model.source.kind == "gguf":
        stored = "+".join(model.source.extra.get("formats", [])) or "f32/f16"
    else:
        stored = weights_label(q)
    return f"{stored}, {q.compute_dtype} compute"


def _print_table(r: dict) -> None:
    rows = [(r["model"], r["format"], r["tier"], str(r["threads"]), t["test"],
             f"{t['tokens_per_s']:.2f} ± {t['tokens_per_s_sd']:.2f}") for t in r["tests"]]
    head = ("model", "format", "tier", "threads", "test", "t/s")
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) if i < 4 else c.rjust(w)  # noqa: E731
                                           for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    print(line(head))
    print("|" + "|".join(("-" * (w + 1) + ":") if i >= 4 else "-" * (w + 2) for i, w in enumerate(widths)) + "|")
    for row in rows:
        print(line(row))


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="prompt-processing and generation speed (tokens/s), like llama-bench",
                       description="pp: one forward pass over -p random token ids; tg: -n greedy single-token "
                                   "decode steps continuing after the prompt. Each rep starts a fresh KV cache; "
                                   "one untimed warm-up run comes first. Reports mean ± sd over the reps.")
    b.add_argument("model", nargs="?", help="HF model dir, .gguf or .llmrt file (default: SmolLM2-135M-Instruct)")
    b.add_argument("-p", "--n-prompt", type=int, default=512, help="prompt tokens of the pp test (0: skip; default 512)")
    b.add_argument("-n", "--n-gen", type=int, default=128, help="generated tokens of the tg test (0: skip; default 128)")
    b.add_argument("-t", "--threads", type=positive_int, default=None, help="threads (default: physical cores)")
    b.add_argument("-r", "--reps", type=positive_int, default=5, help="timed repetitions (default 5)")
    b.add_argument("--seed", type=int, default=0, help="seed of the random prompt ids (default 0)")
    b.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    add_quant_args(b, activation_default="auto")
    b.set_defaults(func=cmd_bench)
