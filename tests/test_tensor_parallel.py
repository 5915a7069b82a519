"""Tensor parallelism over MPI: `mpiexec -n 2` ranks against the same model loaded whole in this process.

One mpiexec job (tests/tp_worker.py) runs every tiny config of the runner in fp32, int4 and int8, and
the full generation exercise on each family's representative; the tests compare what rank 0 saw with
exercise() on the whole model here.  Faults (a rank killed or raising), the no-pickle rule, a world of
one and the CLI run their own small jobs."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import FAMILY_REPRESENTATIVES, TINY_CONFIGS, max_rel_err
from tp_worker import exercise, quant_config

from llmrt import AutoModelForCausalLM
from llmrt.config import ModelConfig, WeightOnlyQuantConfig
from llmrt.errors import UnsupportedError
from llmrt.parallel import ShardPlan, split_units

import mpi4py  # noqa: F401  (the mpi extra: tensor parallelism is tested, never skipped)

WORKER = Path(__file__).with_name("tp_worker.py")
RANKS = 2
QUANTS = ("fp32", "int4", "int8")


def mpiexec() -> str:
    """The MPI launcher of this environment (MPICH's wheel puts it beside the interpreter)."""
    here = Path(sys.executable).with_name("mpiexec")
    found = str(here) if here.exists() else shutil.which("mpiexec")
    assert found, "mpiexec not found: pip install 'llmrt[mpi]'"
    return found


def run_job(job: dict, tmp: Path, ranks: int = RANKS, timeout: float = 900) -> subprocess.CompletedProcess:
    path = tmp / f"job-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(job))
    # from / so the children import the installed llmrt, not the source tree
    return subprocess.run([mpiexec(), "-n", str(ranks), sys.executable, str(WORKER), str(path)], cwd="/",
                          capture_output=True, text=True, timeout=timeout)


def case_kind(name: str, quant: str) -> str:
    return "full" if quant == "fp32" and name in FAMILY_REPRESENTATIVES else "basic"


@pytest.fixture(scope="module")
def tp_runs(tiny_models, tmp_path_factory):
    """(name, quant) -> what rank 0 saw, from one mpiexec job over every config and quantization."""
    tmp = tmp_path_factory.mktemp("tp")
    cases = []
    for name in sorted(TINY_CONFIGS):
        path, _ = tiny_models(name)
        for quant in QUANTS:
            cases.append({"dir": str(path), "quant": quant, "kind": case_kind(name, quant),
                          "out": str(tmp / f"{name}-{quant}.npz"), "key": [name, quant]})
    proc = run_job({"cases": cases}, tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return {tuple(c["key"]): dict(np.load(c["out"])) for c in cases}


def whole(tiny_models, name: str, quant: str):
    path, _ = tiny_models(name)
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=quant_config(quant), progress=False)


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_fp32_ranks_give_the_single_process_logits_and_tokens(tp_runs, tiny_models, name):
    got = tp_runs[(name, "fp32")]
    want = exercise(whole(tiny_models, name, "fp32"), case_kind(name, "fp32"))
    assert int(got["ranks"][0]) == RANKS
    assert int(got["head_rows"][0]) < want["logits"].shape[-1]          # the head really is split
    assert max_rel_err(got["logits"], want["logits"]) <= 1e-5
    assert set(got) - {"ranks", "head_rows"} == set(want)
    for key in want:
        if key in ("logits", "hidden_last"):
            assert max_rel_err(got[key], want[key]) <= 1e-5, key
        else:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.parametrize("quant", ["int4", "int8"])
@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_quantized_ranks_give_the_single_process_tokens(tp_runs, tiny_models, name, quant):
    got = tp_runs[(name, quant)]
    want = exercise(whole(tiny_models, name, quant), "basic")
    np.testing.assert_array_equal(got["greedy"], want["greedy"])
    # the same weight blocks on both sides, but the all-reduced residual differs in its last bits, and a
    # value at a rounding edge of the next layer's int8 activation blocks moves by one step (as for the
    # dequantized twins of the family tests: 3e-2 with int8 compute)
    assert max_rel_err(got["logits"], want["logits"]) <= 3e-2


def _families_two(tmp: Path) -> dict[str, Path]:
    """Remote-code families (Families II) in their own checkpoint layouts, built by their tests' writers."""
    from test_family_baichuan import CONFIGS as BAICHUAN, _random_weights, write_checkpoint as write_baichuan
    from test_family_chatglm import build_chatglm
    from test_family_qwen import CONFIGS as QWEN, qwen_config, qwen_tensors, write_checkpoint as write_qwen

    dirs = {}
    for name in ("glm2-groups2", "glm-mha-nobias"):
        (tmp / name).mkdir()
        build_chatglm(tmp / name, name)
        dirs[name] = tmp / name
    for name in ("baichuan-13b-6heads", "baichuan2-7b-normhead"):
        (tmp / name).mkdir()
        dirs[name] = write_baichuan(tmp / name, BAICHUAN[name], _random_weights(BAICHUAN[name], seed=3))
    cfg = qwen_config(**QWEN["qwen-6heads-biases"])
    (tmp / "qwen").mkdir()
    dirs["qwen-6heads-biases"] = write_qwen(tmp / "qwen", cfg, qwen_tensors(cfg))
    from safetensors.numpy import save_file
    from test_family_chatglm_v1 import BASE as GLM1, CONFIGS as GLM1_CONFIGS, _weights
    glm1 = {**GLM1, **GLM1_CONFIGS["glm6b-4heads-tied"]}
    (tmp / "glm6b").mkdir()
    save_file(_weights(glm1, seed=2), str(tmp / "glm6b" / "model.safetensors"))
    (tmp / "glm6b" / "config.json").write_text(json.dumps(glm1))
    dirs["glm6b-4heads-tied"] = tmp / "glm6b"
    return dirs


@pytest.fixture(scope="module")
def tp_families_two(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tp2")
    dirs = _families_two(tmp)
    cases = [{"dir": str(d), "quant": q, "kind": "full" if q == "fp32" else "basic",
              "out": str(tmp / f"{name}-{q}.npz"), "key": [name, q]} for name, d in dirs.items() for q in ("fp32", "int4")]
    proc = run_job({"cases": cases}, tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return dirs, {tuple(c["key"]): dict(np.load(c["out"])) for c in cases}


@pytest.mark.parametrize("quant", ["fp32", "int4"])
@pytest.mark.parametrize("name", ["glm2-groups2", "glm-mha-nobias", "glm6b-4heads-tied", "baichuan-13b-6heads",
                                  "baichuan2-7b-normhead", "qwen-6heads-biases"])
def test_families_two_split_like_the_runner(tp_families_two, name, quant):
    dirs, runs = tp_families_two
    got = runs[(name, quant)]
    model = AutoModelForCausalLM.from_pretrained(dirs[name], quantization_config=quant_config(quant), progress=False,
                                                 trust_remote_code=True)
    want = exercise(model, "full" if quant == "fp32" else "basic")
    assert set(got) - {"ranks", "head_rows"} == set(want)
    for key in want:
        if key in ("logits", "hidden_last"):
            assert max_rel_err(got[key], want[key]) <= (1e-5 if quant == "fp32" else 3e-2), key
        else:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_streamer_runs_on_rank_zero_with_the_tokens(tp_runs):
    got = tp_runs[("llama-gqa-tied", "fp32")]
    np.testing.assert_array_equal(got["streamer_log"][-8:], got["streamed"][0, -8:])


# ---------------------------------------------------------------------------- faults
@pytest.mark.parametrize("fault", ["die", "raise"])
def test_a_failing_rank_ends_the_job_naming_it(tiny_models, tmp_path, fault):
    path, _ = tiny_models("llama-gqa-tied")
    t0 = time.monotonic()
    proc = run_job({"cases": [{"dir": str(path), "quant": "fp32", "kind": "basic"}], "fault": fault}, tmp_path,
                   timeout=120)
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0
    assert elapsed < 30, f"the job took {elapsed:.1f} s to end"
    text = proc.stdout + proc.stderr
    pids = dict(re.findall(r"rank (\d+) pid (\d+)", text))
    assert "1" in pids, text[-3000:]
    if fault == "die":
        # MPI's launcher names the dead process by pid; llmrt's start-up line maps that pid to rank 1
        assert f"PID {pids['1']}" in text, text[-3000:]
    else:
        assert "tensor-parallel rank 1 of 2" in text and "deliberate failure on rank 1" in text, text[-3000:]


def test_nothing_is_pickled_on_the_wire(tiny_models, tmp_path):
    """load + every generation path through a communicator that fails on mpi4py's pickling methods."""
    path, _ = tiny_models("neox-pct25-parallel")
    calls = tmp_path / "calls.json"
    proc = run_job({"cases": [{"dir": str(path), "quant": q, "kind": "full", "out": str(tmp_path / f"{q}.npz")}
                              for q in ("fp32", "int4")],
                    "no_pickle": True, "calls_out": str(calls)}, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    used = json.loads(calls.read_text())
    assert used.get("Allreduce", 0) > 0 and used.get("Allgatherv", 0) > 0 and used.get("Bcast", 0) > 0, used


def test_a_world_of_one_runs_the_model_whole(tiny_models, tmp_path):
    path, _ = tiny_models("llama-gqa-tied")
    script = (f"import numpy as np; from llmrt import AutoModelForCausalLM; "
              f"from tp_worker import quant_config; "
              f"m = AutoModelForCausalLM.from_pretrained({str(path)!r}, quantization_config=quant_config('fp32'), "
              f"tensor_parallel=True, progress=False); "
              f"print('tp', m.tp, m.engine.lm_head.n, m.generate(np.arange(3, 8)[None], max_new_tokens=4).shape)")
    proc = subprocess.run([sys.executable, "-c", script], cwd="/", capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(WORKER.parent)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"tp None {TINY_CONFIGS['llama-gqa-tied'][1]['vocab_size']} (1, 9)" in proc.stdout


@pytest.mark.parametrize("command", ["run", "chat"])
def test_the_cli_splits_the_default_model_and_only_rank_zero_prints(command):
    """SmolLM2 (9 heads in 3 KV groups, Q4_1) over two ranks answers as it does whole; chat reads stdin on
    rank 0 and shares each line."""
    llmrt = str(Path(sys.executable).with_name("llmrt"))
    args = [mpiexec(), "-n", "2", llmrt, command, "--tensor_parallel", "-n", "24"]
    proc = subprocess.run(args, cwd="/", capture_output=True, text=True, timeout=300,
                          input="What is the capital of France?\n" if command == "chat" else None)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Paris" in proc.stdout and proc.stdout.count("Paris") <= 3, proc.stdout
    assert proc.stderr.count("[llmrt]") == 1, proc.stderr          # one summary line: rank 0's
    assert "tensor parallelism over 2 ranks" in proc.stderr


# ---------------------------------------------------------------------------- the plan
def _config(**kw) -> ModelConfig:
    base = dict(family="llama", vocab_size=1000, hidden_size=256, num_layers=2, num_heads=8, num_kv_heads=8,
                head_dim=32, intermediate_size=512, max_position_embeddings=128)
    base.update(kw)
    return ModelConfig(**base)


INT4 = WeightOnlyQuantConfig(weight_dtype="int4", group_size=32, compute_dtype="int8")
INT4_G128 = WeightOnlyQuantConfig(weight_dtype="int4", group_size=128, compute_dtype="int8")
FP32 = WeightOnlyQuantConfig(not_quant=True, weight_dtype="fp32", compute_dtype="fp32")


def test_split_units_is_even_where_the_alignment_allows():
    assert split_units(8, 2, 1, 1, "x") == [(0, 4), (4, 8)]
    assert split_units(3, 2, 32, 32, "x") == [(0, 1), (1, 3)]
    assert split_units(96, 2, 1, 32, "x") == [(0, 32), (32, 96)]
    assert split_units(6, 2, 16, 32, "x") == [(0, 2), (2, 6)]
    with pytest.raises(UnsupportedError, match="cannot be split over 4 ranks"):
        split_units(3, 4, 1, 1, "the 3 key/value head groups")
    with pytest.raises(UnsupportedError, match="multiples of 128"):
        split_units(2, 2, 96, 128, "heads")


def test_plans_cover_every_head_unit_and_row_once():
    for cfg, size in ((_config(), 2), (_config(num_kv_heads=2), 4), (_config(num_kv_heads=1), 2),
                      (_config(num_heads=6, num_kv_heads=3, intermediate_size=384), 3)):
        plans = [ShardPlan.make(cfg, INT4, r, size) for r in range(size)]
        assert [p.vocab for p in plans] == list(plans[0].vocab_splits)
        assert plans[0].ff[0] == 0 and plans[-1].ff[1] == cfg.intermediate_size
        assert all(a.ff[1] == b.ff[0] for a, b in zip(plans, plans[1:]))
        heads = [h for p in plans for h in range(*p.heads)]
        assert heads == list(range(cfg.num_heads))
        group = cfg.num_heads // cfg.num_kv_heads
        for p in plans:      # a rank's query heads read its own K/V heads
            assert all(p.kv_heads[0] <= h // group < p.kv_heads[1] for h in range(*p.heads))
            spec = p.block_spec(cfg.block_spec())
            assert spec.n_heads % spec.n_kv_heads == 0


def test_mqa_shares_the_key_value_head():
    plans = [ShardPlan.make(_config(num_kv_heads=1), FP32, r, 2) for r in range(2)]
    assert [p.kv_heads for p in plans] == [(0, 1), (0, 1)]
    assert [p.heads for p in plans] == [(0, 4), (4, 8)]


def test_unsplittable_models_are_refused_by_name():
    with pytest.raises(UnsupportedError, match="multiple of num_key_value_heads"):
        ShardPlan.make(_config(num_kv_heads=2, num_heads=8), FP32, 0, 3)
    with pytest.raises(UnsupportedError, match="at most 8 ranks"):
        ShardPlan.make(_config(num_heads=8, num_kv_heads=8), FP32, 0, 16)
    with pytest.raises(UnsupportedError, match="quantization group"):
        ShardPlan.make(_config(num_heads=2, num_kv_heads=2, head_dim=96, hidden_size=192), INT4_G128, 0, 2)
