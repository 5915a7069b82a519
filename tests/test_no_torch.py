"""The run-time path never needs torch: each check runs in a subprocess where `import torch` fails.

torch is installed here (it is the tests' reference), so "torch is absent" is simulated the way Python
itself allows: `sys.modules["torch"] = None` makes every `import torch` raise ImportError and makes
`importlib.util.find_spec("torch")` say it is not there."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np

BLOCK_TORCH = "import sys; sys.modules['torch'] = None\n"


def _python(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)], capture_output=True,
                          text=True, cwd="/", env=dict(os.environ), timeout=timeout)


def test_import_llmrt_imports_neither_torch_nor_transformers():
    r = _python("""
        import llmrt
        print(sorted(m for m in ('torch', 'transformers', 'gguf', 'tokenizers') if sys.modules.get(m)))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_llmrt_run_answers_without_torch():
    r = _python("""
        from llmrt.cli import main
        code = main(["run", "-n", "16", "-t", "2"])
        assert sys.modules.get("torch") is None, "torch was imported"
        raise SystemExit(code)
    """)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


def test_safetensors_and_llmrt_file_generate_without_torch(tiny_models, tmp_path):
    from llmrt import AutoModelForCausalLM, WeightOnlyQuantConfig

    path, _ = tiny_models("llama-gqa-tied")
    q = WeightOnlyQuantConfig(weight_dtype="int4", group_size=32, compute_dtype="int8")
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=q)
    want = model.generate([[1, 5, 9, 4]], max_new_tokens=6, eos_token_id=None)
    saved = model.save(tmp_path / "tiny.llmrt")
    for source in (path, saved):
        r = _python(f"""
            from llmrt import AutoModelForCausalLM, WeightOnlyQuantConfig
            q = WeightOnlyQuantConfig(weight_dtype="int4", group_size=32, compute_dtype="int8")
            m = AutoModelForCausalLM.from_pretrained({str(source)!r}, quantization_config=q)
            print(m.generate([[1, 5, 9, 4]], max_new_tokens=6, eos_token_id=None).tolist())
            assert sys.modules.get("torch") is None, "torch was imported"
        """)
        assert r.returncode == 0, r.stderr
        assert np.array_equal(np.array(eval(r.stdout.strip().splitlines()[-1])), want), source
