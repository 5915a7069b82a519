"""One tensor-parallel rank of tests/test_tensor_parallel.py: `mpiexec -n 2 python tp_worker.py job.json`.

Every rank loads each case's model with tensor_parallel=True and runs exercise(); rank 0 saves what it
saw (an .npz per case) for the test, which runs the same exercise() on a model loaded whole.  The job's
"fault" makes rank 1 die (SIGKILL) or raise mid-generation; "no_pickle" hands llmrt a communicator
that refuses mpi4py's pickling (lowercase) methods."""
from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np

QUANTS = {
    "fp32": dict(not_quant=True, weight_dtype="fp32", compute_dtype="fp32"),
    "int4": dict(weight_dtype="int4", group_size=32, compute_dtype="int8"),
    "int8": dict(weight_dtype="int8", group_size=32, compute_dtype="int8"),
}


def quant_config(name: str):
    from llmrt import WeightOnlyQuantConfig
    return WeightOnlyQuantConfig(**QUANTS[name])


class TokenLog:
    """A streamer keeping the ids it is sent (what rank 0 would show)."""

    def __init__(self):
        self.ids: list[int] = []

    def put(self, value):
        self.ids.extend(int(t) for t in np.asarray(value).reshape(-1))

    def end(self):
        pass


def prompt_ids(model, n: int, rng) -> np.ndarray:
    """(1, n) random ids; a prefix-LM's (ChatGLM-6B) end with the [gMASK] <sop> its tokenizer adds."""
    prefix = model.engine.spec.prefix_tokens
    if not prefix:
        return rng.integers(3, model.config.vocab_size, size=(1, n))
    body = rng.integers(3, min(prefix), size=n - 2)
    return np.concatenate([body, [prefix[2], prefix[0]]])[None]


def exercise(model, kind: str) -> dict[str, np.ndarray]:
    """What the tests compare between a whole model and its tensor-parallel ranks: logits and greedy
    tokens always; with kind "full" every generation feature."""
    rng = np.random.default_rng(1)
    prefix_lm = bool(model.engine.spec.prefix_tokens)
    ids = prompt_ids(model, 24, rng)
    start = prompt_ids(model, 5, rng)
    out = {"logits": model(ids).logits,
           "greedy": model.generate(start, max_new_tokens=32, eos_token_id=None)}
    if kind != "full":
        return out
    short = prompt_ids(model, 6, rng)
    out["sample"] = model.generate(short, max_new_tokens=16, do_sample=True, temperature=0.9, top_k=20, top_p=0.9,
                                   seed=7, eos_token_id=None)
    out["beam"] = model.generate(short, max_new_tokens=10, num_beams=3, num_return_sequences=2,
                                 eos_token_id=None)
    batch = np.stack([prompt_ids(model, 8, rng)[0], np.concatenate([[0, 0, 0], prompt_ids(model, 5, rng)[0]])])
    mask = np.array([[1] * 8, [0, 0, 0] + [1] * 5])
    out["batch"] = model.generate(batch, attention_mask=mask, max_new_tokens=12, eos_token_id=None, pad_token_id=0)
    out["penalty"] = model.generate(short, max_new_tokens=12, repetition_penalty=1.3, no_repeat_ngram_size=2,
                                    eos_token_id=None)
    log = TokenLog()
    out["streamed"] = model.generate(short, max_new_tokens=8, eos_token_id=None, streamer=log)
    out["streamer_log"] = np.array(log.ids, np.int64)
    # a stopping criterion only rank 0's copy would fire: rank 0 decides for every rank
    out["stopped"] = model.generate(short, max_new_tokens=20, eos_token_id=None,
                                    stopping_criteria=[stops_on_rank_zero_at(short.shape[1] + 7)])
    # a stop token that greedy decoding meets ends the row early
    stop_at = int(out["greedy"][0, 9])
    out["eos"] = model.generate(start, max_new_tokens=32, eos_token_id=stop_at, pad_token_id=0)
    # two turns of one conversation: the second runs only its new tokens
    first = model.generate(short, max_new_tokens=6, interactive=True, eos_token_id=None)
    second = model.generate(ids[:, 6:10], max_new_tokens=6, interactive=True, eos_token_id=None)
    model.reset_conversation()
    out["chat"] = np.concatenate([first, second], axis=1)
    out["hidden_last"] = model(ids, output_hidden_states=True).hidden_states[-1]
    if prefix_lm:                       # 2D positions counted from the context: no StreamingLLM
        return out
    # StreamingLLM past a 16-token context: re-evaluation, and the ring where positions allow it
    out["streaming"] = model.generate(short, max_new_tokens=30, ctx_size=16, n_keep=4, eos_token_id=None)
    if model.engine.shifts.can_shift_keys:
        out["ring"] = model.generate(short, max_new_tokens=30, ctx_size=16, n_keep=4, shift_roped_k=True,
                                     eos_token_id=None)
    return out


def stops_on_rank_zero_at(length: int):
    """A stopping criterion that fires at `length` tokens in the process MPI's launcher calls rank 0 (or
    in a process started alone) and never elsewhere."""
    rank = int(os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))

    def criterion(input_ids, scores):
        return rank == 0 and input_ids.shape[1] >= length
    return criterion


class NoPickleComm:
    """A communicator that lets through mpi4py's buffer methods (capitalized) and fails on the
    pickling ones (lowercase: bcast, allreduce, send, ...), counting the calls it let through."""

    def __init__(self, comm):
        self._comm = comm
        self.calls: dict[str, int] = {}

    def __getattr__(self, name):
        if name[:1].islower():
            raise AssertionError(f"llmrt called the pickling mpi4py method {name!r}")
        attr = getattr(self._comm, name)
        if callable(attr):
            def counted(*args, **kwargs):
                self.calls[name] = self.calls.get(name, 0) + 1
                return attr(*args, **kwargs)
            return counted
        return attr


def _fault_processor(fault: str, rank: int):
    """A logits processor that, on rank 1 at its fourth call, kills the process or raises."""
    state = {"calls": 0}

    def processor(input_ids, scores):
        state["calls"] += 1
        if rank == 1 and state["calls"] == 4:
            if fault == "die":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("deliberate failure on rank 1")
        return scores
    return [processor]


def main(job_path: str) -> int:
    from mpi4py import MPI

    from llmrt import AutoModelForCausalLM

    with open(job_path) as f:
        job = json.load(f)
    comm = MPI.COMM_WORLD
    tp = NoPickleComm(comm) if job.get("no_pickle") else True
    for case in job["cases"]:
        model = AutoModelForCausalLM.from_pretrained(case["dir"], quantization_config=quant_config(case["quant"]),
                                                     tensor_parallel=tp, progress=False)
        if job.get("fault"):
            model.generate(np.arange(3, 9)[None], max_new_tokens=20, eos_token_id=None,
                           logits_processor=_fault_processor(job["fault"], comm.Get_rank()))
            continue
        got = exercise(model, case["kind"])
        if comm.Get_rank() == 0:
            got["ranks"] = np.array([model.tp.size if model.tp else 1])
            got["head_rows"] = np.array([model.engine.lm_head.n])
            np.savez(case["out"], **got)
    if job.get("no_pickle") and comm.Get_rank() == 0:
        with open(job["calls_out"], "w") as f:
            json.dump(tp.calls, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
