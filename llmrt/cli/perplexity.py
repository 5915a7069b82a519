"""`llmrt perplexity`: perplexity over non-overlapping windows of a text, and agreement (mean KL,
top-1) with the logits another run saved, like llama.cpp's perplexity tool with --kl-divergence."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llmrt.cli.common import (UserError, add_quant_args, current_tier, load_model, load_tokenizer, model_path,
                              positive_int)


def cmd_perplexity(args: argparse.Namespace) -> int:
    import numpy as np

    from llmrt import evaluation

    if args.ctx < 2:
        raise UserError(f"--ctx must be at least 2 (one token predicts the next), got {args.ctx}")
    text = _read_text(args)
    ref = _Reference(Path(args.kl_reference)) if args.kl_reference else None   # fail before the long part
    path = model_path(args.model)
    tok = load_tokenizer(path, args.tokenizer)
    ids = np.asarray(tok(text, add_special_tokens=False).input_ids, dtype=np.int64)   # no BOS, as llama.cpp
    try:
        wins = list(evaluation.windows(ids, args.ctx, args.windows))
    except ValueError:
        raise UserError(f"the text has {len(ids)} tokens, less than one window of --ctx {args.ctx}; "
                        f"pass a longer text or a smaller --ctx") from None
    if args.windows is not None and len(wins) < args.windows:
        print(f"llmrt perplexity: the text fills only {len(wins)} windows of {args.ctx} tokens "
              f"(--windows {args.windows} asked)", file=sys.stderr)
    stacked = np.stack(wins)
    if ref is not None:
        ref.check_ids(stacked)
    model = load_model(path, args)
    if args.ctx > model.config.max_position_embeddings:
        raise UserError(f"--ctx {args.ctx} is longer than the model's context ({model.config.max_position_embeddings} "
                        f"tokens); pass a smaller --ctx")
    if ref is not None:
        ref.check_vocab(model.vocab_size)

    compare = evaluation.Comparison() if ref is not None else None
    writer = _LogitsWriter(Path(args.save_logits), stacked) if args.save_logits else None
    index = iter(range(len(wins)))

    def logits_of(window):
        # the one forward per window; saving and comparing ride along with the perplexity loop
        i = next(index)
        logits = model(window[None], threads=args.threads).logits[0]
        if writer is not None:
            writer.add(i, logits)
        if compare is not None:
            compare.add(logits[:-1], ref.logits(i)[:-1], window[1:])
        return logits

    try:
        ppl = evaluation.perplexity(logits_of, wins, progress=True)
    except BaseException:
        if writer is not None:
            writer.close(complete=False)
        raise
    if writer is not None:
        writer.close(complete=True)
    result = {"model": str(path), "text": args.text or "python-docs", "text_tokens": int(len(ids)),
              "ctx": args.ctx, "windows": len(wins), "predicted_tokens": len(wins) * (args.ctx - 1),
              "perplexity": ppl, "isa": current_tier()}
    if writer is not None:
        result["saved_logits"] = str(writer.path)
    if compare is not None:
        result["reference"] = {"file": str(ref.path), "perplexity": compare.ref_perplexity,
                               "ppl_ratio": compare.ppl_ratio, "mean_kl": compare.mean_kl, "top1": compare.top1}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        _print_summary(result)
    return 0


def _read_text(args: argparse.Namespace) -> str:
    if args.python_docs:
        from llmrt.textdata import python_tutorial_text
        return python_tutorial_text()
    p = Path(args.text)
    if not p.is_file():
        raise UserError(f"--text {p}: no such file; pass a UTF-8 text file, or --python-docs")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"--text {p} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _print_summary(r: dict) -> None:
    print(f"{Path(r['model']).name}: perplexity {r['perplexity']:.4f} over {r['windows']} windows x {r['ctx']} "
          f"tokens ({r['predicted_tokens']} predicted tokens, {r['text_tokens']} in the text), isa {r['isa']}")
    if "reference" in r:
        c = r["reference"]
        print(f"against {Path(c['file']).name}: reference perplexity {c['perplexity']:.4f}, ratio {c['ppl_ratio']:.5f}, "
              f"mean KL(ref||model) {c['mean_kl']:.5f}, top-1 agreement {100 * c['top1']:.2f}%")
    if "saved_logits" in r:
        print(f"logits saved to {r['saved_logits']}")


# ------------------------------------------------------------------ the saved-logits file
# An .npz (a zip of .npy members) written one window at a time, so the logits of a long run never
# have to fit in memory: `ids` (windows, ctx) int64, then `logits_00000` ... each (ctx, vocab) float32.

class _LogitsWriter:
    def __init__(self, path: Path, ids) -> None:
        import zipfile

        if path.suffix != ".npz":
            raise UserError(f"--save-logits {path}: the file name must end in .npz")
        if not path.parent.is_dir():
            raise UserError(f"--save-logits {path}: directory {path.parent} does not exist")
        self.path = path
        self._tmp = path.with_name(path.name + ".partial")
        self._zip = zipfile.ZipFile(self._tmp, "w", zipfile.ZIP_STORED, allowZip64=True)
        self._write("ids", ids)

    def _write(self, name: str, arr) -> None:
        import numpy as np

        with self._zip.open(name + ".npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)

    def add(self, i: int, logits) -> None:
        self._write(f"logits_{i:05d}", logits.astype("float32", copy=False))

    def close(self, complete: bool) -> None:
        self._zip.close()
        if complete:
            self._tmp.replace(self.path)      # a reference file is either whole or absent
        else:
            self._tmp.unlink(missing_ok=True)


class _Reference:
    def __init__(self, path: Path) -> None:
        import zipfile

        import numpy as np

        if not path.is_file():
            raise UserError(f"--kl-reference {path}: no such file; write one with --save-logits on the reference model")
        try:
            self._npz = np.load(path, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile):
            raise UserError(f"--kl-reference {path} is not an .npz written by --save-logits") from None
        if "ids" not in self._npz.files:
            raise UserError(f"--kl-reference {path} has no token ids; write it with llmrt perplexity --save-logits")
        self.path = path
        self.ids = self._npz["ids"]

    def check_ids(self, ids) -> None:
        import numpy as np

        if self.ids.shape != ids.shape or not np.array_equal(self.ids, ids):
            raise UserError(f"--kl-reference {self.path} was made from other token ids ({self.ids.shape[0]} windows x "
                            f"{self.ids.shape[1]} tokens); use the same text, tokenizer, --ctx and --windows")
        missing = [i for i in range(len(ids)) if f"logits_{i:05d}" not in self._npz.files]
        if missing:
            raise UserError(f"--kl-reference {self.path} lacks the logits of window {missing[0]}; it is incomplete")

    def check_vocab(self, vocab: int) -> None:
        n = self.logits(0).shape[-1]
        if n != vocab:
            raise UserError(f"--kl-reference {self.path} has logits over {n} tokens, the model {vocab}; "
                            f"the reference must come from a model with the same vocabulary")

    def logits(self, i: int):
        return self._npz[f"logits_{i:05d}"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("perplexity", help="perplexity of a text over fixed windows; KL / top-1 against saved logits",
                       description="Perplexity over non-overlapping windows of --ctx tokens (token ids from the "
                                   "model's tokenizer, no BOS). With --kl-reference also the mean KL(ref||model) per "
                                   "token and the top-1 agreement with logits saved by another run's --save-logits.")
    p.add_argument("model", nargs="?", help="HF model dir, .gguf or .llmrt file (default: SmolLM2-135M-Instruct)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", metavar="FILE", help="UTF-8 text file to measure")
    src.add_argument("--python-docs", action="store_true",
                     help="the Python 3.11 tutorial (reST sources of Debian's python3.11-doc, fetched with "
                          "apt-get download into ~/.cache/llmrt/data; LLMRT_PYDOC_DIR=DIR/_sources overrides)")
    p.add_argument("--ctx", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--windows", type=positive_int, default=None, metavar="N",
                   help="use only the first N windows (default: all the text fills)")
    p.add_argument("--save-logits", metavar="F.npz", default=None,
                   help="write the token ids and every window's logits (float32; windows x ctx x vocab x 4 bytes) "
                        "to F.npz, the reference of a later --kl-reference run")
    p.add_argument("--kl-reference", metavar="F.npz", default=None,
                   help="compare with the logits in F.npz (from --save-logits over the same token ids): "
                        "mean KL(ref||model) per token and top-1 agreement")
    p.add_argument("-t", "--threads", type=positive_int, default=None, help="threads (default: physical cores)")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="tokenizer directory (default: the model's own; needed for .llmrt files)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a summary")
    add_quant_args(p, activation_default="auto")
    p.set_defaults(func=cmd_perplexity)
