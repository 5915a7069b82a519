"""JSON files of model directories (config.json, adapter_config.json, tokenizer files), read with
errors that name the file and say what is wrong."""
from __future__ import annotations

import json
from pathlib import Path

from llmrt.errors import ConfigError
from llmrt.formats.errors import file_error, missing_file_error

_FIX = "fix or remove the file, or download the model again"


def read_json_object(path: Path) -> dict:
    """The JSON object in path; ModelFileError (a ValueError) naming the file when it is unreadable,
    not valid JSON or not an object."""
    try:
        data = json.loads(Path(path).read_bytes())
    except (ValueError, RecursionError) as exc:       # UnicodeDecodeError is a ValueError
        raise file_error(path, f"is not valid JSON ({str(exc)[:200]})", _FIX) from None
    except IsADirectoryError:
        raise file_error(path, "is a directory, not a JSON file", _FIX) from None
    if not isinstance(data, dict):
        raise file_error(path, f"holds a JSON {type(data).__name__}, not an object", _FIX)
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
        raise missing_file_error(model_dir, "has no config.json, so it is not a Hugging Face model directory",
                                 "pass a directory saved by transformers' save_pretrained")
    hf = read_json_object(cfg_file)
    if "model_type" not in hf:
        raise ConfigError(f"{cfg_file}: has no model_type, so the architecture is unknown; add the model_type "
                          f"of the checkpoint (e.g. \"llama\")")
    if not isinstance(hf["model_type"], str):
        raise ConfigError(f"{cfg_file}: model_type is {hf['model_type']!r}, not a string; set it to the "
                          f"architecture's name (e.g. \"llama\")")
    return hf
