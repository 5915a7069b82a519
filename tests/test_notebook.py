"""examples/inspect_activations.ipynb runs top to bottom on SmolLM2 and computes what it says it does.

The notebook is executed with nbclient from a copy in a temporary directory (the repository's file, with its
saved outputs, is never rewritten), and the kernel starts in that directory.  A cell appended to the copy
reports the notebook's own variables as JSON so the checks below look at the numbers it computed, not at
its printed text.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nbformat               # the notebook extra: a missing dependency is a failure, not a skip
from nbclient import NotebookClient

from smollm2_fixtures import smollm2_gguf_path

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "inspect_activations.ipynb"
CELL_TIMEOUT = 600            # seconds per cell
MARKER = "NOTEBOOK-SUMMARY "

SUMMARY_CELL = f"""
import json as _json
print({MARKER!r} + _json.dumps({{
    "n_layers": int(n_layers), "n_heads": int(n_heads),
    "hook_names": len(model.hook_names()), "cached": len(cache),
    "pattern_shape": list(patterns.shape),
    "pattern_rows_sum_to_1": bool(np.allclose(patterns.sum(-1), 1, atol=1e-5)),
    "lens_last_equals_logits": bool(np.allclose(lens_logits[-1], plain_logits[0, -1], atol=1e-4)),
    "paris_rank": paris_rank.tolist(),
    "dla_shape": list(dla.shape), "top_head": [int(top_l), int(top_h)],
    "top_head_dla": float(dla[top_l, top_h]),
    "ablation_effect_top": float(effect[top_l, top_h]), "noise_floor": float(noise_floor),
    "clean_diff": clean_diff, "corrupt_diff": corrupt_diff,
    "restored": restored.tolist(), "country_pos": country_pos,
    "sea_probs": sea_probs.tolist(),
}}))
"""


def _execute(tmp_path: Path) -> nbformat.NotebookNode:
    copy = tmp_path / NOTEBOOK.name
    shutil.copyfile(NOTEBOOK, copy)
    nb = nbformat.read(copy, as_version=4)
    for cell in nb.cells:                     # check this run's outputs, not the saved ones
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.cells.append(nbformat.v4.new_code_cell(SUMMARY_CELL))
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()                          # a cell that raises fails here (CellExecutionError)
    return nb


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def test_inspect_activations_notebook(tmp_path, monkeypatch):
    smollm2_gguf_path()                       # fails with the install hint when SmolLM2 is missing
    # the kernel inherits this environment: one kernel thread unless told otherwise, so a busy
    # machine (other tests, a fuzz job) does not slow the notebook's ~700 forward passes to a crawl
    monkeypatch.setenv("LLMRT_NUM_THREADS", os.environ.get("LLMRT_NUM_THREADS", "1"))
    nb = _execute(tmp_path)

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(o.output_type != "error" for c in code for o in c.outputs)
    assert all(c.execution_count is not None for c in code)
    plots = [c for c in code if "plt.show()" in c.source]
    assert len(plots) >= 5
    for cell in plots:                        # every figure was drawn, inline, as a PNG
        assert any(o.output_type == "display_data" and "image/png" in o.get("data", {}) for o in cell.outputs), \
            cell.source[:80]
    assert "notebook ran in" in _stdout(code[-2])

    lines = [l for l in _stdout(code[-1]).splitlines() if l.startswith(MARKER)]
    assert len(lines) == 1
    s = json.loads(lines[0][len(MARKER):])
    n_layers, n_heads = s["n_layers"], s["n_heads"]
    assert (n_layers, n_heads) == (30, 9)
    assert s["cached"] == s["hook_names"] == 543        # run_with_cache(ids) captured every point
    assert s["pattern_shape"] == [n_layers, n_heads, 5, 5] and s["pattern_rows_sum_to_1"]
    # logit lens: the last layer through unembed is the model's output, whose top token is " Paris"
    assert s["lens_last_equals_logits"]
    assert len(s["paris_rank"]) == n_layers and s["paris_rank"][-1] == 0
    # the head writing " Paris" most directly also costs the most when zeroed, well above the noise
    assert s["dla_shape"] == [n_layers, n_heads] and s["top_head_dla"] > 0
    assert s["ablation_effect_top"] < -max(1.0, 3 * s["noise_floor"])
    # patching: clean prefers Paris, corrupted Rome; where the prompts agree, patching changes nothing,
    # and the country's residual at layer 0 is the whole difference between the runs
    assert s["clean_diff"] > 0 > s["corrupt_diff"]
    restored, pos = s["restored"], s["country_pos"]
    assert len(restored) == n_layers and all(len(row) == 5 for row in restored)
    assert all(abs(row[p]) < 1e-6 for row in restored for p in range(pos))
    assert abs(restored[0][pos] - 1) < 1e-4
    # steering towards the sea raises the next-token probability of " beach" (coefficient 1 vs 0)
    sea = s["sea_probs"]
    assert sea[2][2] > 2 * sea[0][2]
