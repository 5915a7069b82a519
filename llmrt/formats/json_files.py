"""JSON files of model directories (config.json, adapter_config.json, tokenizer files), read with
errors that name the file and say what is wrong."""
from __future__ import annotations

import json
from pathlib import Path


def read_json_object(path: Path) -> dict:
    """The JSON object in path; ValueError naming the file when it is not valid JSON or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); fix or remove the file") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object; fix or remove the file")
    return data


def read_hf_config(model_dir: Path) -> dict:
    """config.json of a Hugging Face model directory, with errors that say what is missing."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise FileNotFoundError(f"no model directory at {model_dir}")
    if not model_dir.is_dir():
        raise NotADirectoryError(f"{model_dir} is not a directory; pass a Hugging Face model directory")
    cfg_file = model_dir / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json; it is not a Hugging Face model directory")
    hf = read_json_object(cfg_file)
    if "model_type" not in hf:
        raise ValueError(f"{cfg_file} has no model_type; cannot tell the architecture")
    return hf
