"""Write the seed inputs of the fuzz harnesses into fuzz/seeds/<harness>/ from one tiny random llama
(the test fixtures' builder: torch and transformers are needed here, not in the harnesses).

    python fuzz/make_seeds.py [--out fuzz/seeds]

Seeds are small on purpose (a few KB): libFuzzer mutates and writes every input, so the rate
falls with the input size.  Each seed starts with the harness's mode byte (see each harness)."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

TINY = dict(hidden_size=32, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, vocab_size=32, tie_word_embeddings=True, max_position_embeddings=64)


def build_tiny(work: Path) -> dict[str, Path]:
    """The tiny llama as an HF directory, Q8_0 and F16 GGUFs, a 2-shard directory and a .llmrt."""
    from conftest import build_tiny_model
    import malformed_files as mf
    from llmrt import AutoModelForCausalLM
    from llmrt.convert.gguf import convert_to_gguf

    hf = work / "hf"
    build_tiny_model(hf, "llama", dict(TINY))
    out = {"hf": hf, "sharded": mf.shard_dir(hf, work / "sharded")}
    for t in ("q8_0", "f16"):
        out[f"gguf_{t}"] = convert_to_gguf(hf, work / f"tiny.{t}.gguf", t, progress=False)
    out["llmrt"] = AutoModelForCausalLM.from_pretrained(hf, progress=False).save(work / "tiny.llmrt")
    return out


def _put(d: Path, name: str, mode: int, data: bytes) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(bytes([mode]) + data)


def write_seeds(files: dict[str, Path], out: Path) -> None:
    import malformed_files as mf

    for t in ("q8_0", "f16"):
        _put(out / "gguf", f"tiny_{t}", 0, files[f"gguf_{t}"].read_bytes())
    raw = files["llmrt"].read_bytes()
    _put(out / "llmrt_file", "raw", 0, raw)
    _put(out / "llmrt_file", "header", 1, json.dumps(mf.llmrt_header(files["llmrt"])).encode())
    st = (files["hf"] / "model.safetensors").read_bytes()
    header, _ = mf.read_safetensors(files["hf"] / "model.safetensors")
    _put(out / "safetensors", "raw", 0, st)
    _put(out / "safetensors", "header", 1, json.dumps(header).encode())
    _put(out / "safetensors", "index", 2, (files["sharded"] / "model.safetensors.index.json").read_bytes())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "seeds")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = build_tiny(Path(tmp))
        # the harnesses rebuild their fixed parts (shards, data regions) from these
        fixtures = args.out / "fixtures"
        fixtures.mkdir(parents=True, exist_ok=True)
        shutil.copy(files["llmrt"], fixtures / "tiny.llmrt")
        shutil.copy(files["hf"] / "model.safetensors", fixtures / "model.safetensors")
        for f in files["sharded"].glob("model-*.safetensors"):
            shutil.copy(f, fixtures / f.name)
        write_seeds(files, args.out)
    for d in sorted(args.out.iterdir()):
        print(d, sum(f.stat().st_size for f in d.iterdir()), "bytes in", len(list(d.iterdir())), "files")


if __name__ == "__main__":
    main()
