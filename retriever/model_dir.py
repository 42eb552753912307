"""Model directories: which directory a model argument names, whether it is safe to load, its
checksum, and what it saved beside its weights (max sequence length, prompts). Reads small files
only: nothing here loads weights or imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from retriever.backends import EXPORT_PATHS
from retriever.bundled import PACK_FILE, bundled_model_dir, bundled_names, canonical_name
from retriever.errors import ModelError
from retriever.instructions import default_prompts
from retriever.router import ROUTER_FILE


def hub_offline() -> None:
    """Keep Hugging Face libraries off the network: call before the first import of one of them.

    Set where a model loads rather than at import time, so importing the package (the gRPC
    client, the CLI's parser) changes nothing in the caller's environment. A value the caller
    set wins.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def resolve_model_dir(model: str | None) -> Path:
    """Map a model argument (None or ``bundled:NAME``: a bundled model) to a local directory."""
    if canonical_name(model) is not None:
        return bundled_model_dir(model)
    assert model is not None
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ModelError(f"model directory not found: {model} (models load from local directories only; "
                         f"the bundled ones are {', '.join(bundled_names())})")
    return path


def check_model_dir(model: str | None) -> Path:
    """The model's directory, checked without reading its weights: it exists and holds safetensors.

    Raises:
        ModelError: the directory is missing or holds only pickled (or no) weights.
    """
    model_dir = resolve_model_dir(model)
    check_safe(model_dir)
    return model_dir


def model_checksum(model_dir: Path) -> str:
    """SHA-256 over the model's files (names and bytes), so any changed weight is detected.

    Exported copies of the weights (``onnx/``, ``openvino/``, ``exports.json``) are left out: they
    carry their own SHA-256 in ``exports.json`` and the index manifest records which one encoded it.
    The source router (``router.safetensors``) is left out: it reads the embeddings and changes none.
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(model_dir).as_posix()
        skipped = rel.endswith((".md", ".lock")) or rel in ("manifest.json", ROUTER_FILE, PACK_FILE)
        if rel.startswith((".", *EXPORT_PATHS)) or "/." in rel or skipped:
            continue
        digest.update(rel.encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_safe(model_dir: Path) -> None:
    if not any(model_dir.rglob("*.safetensors")):
        raise ModelError(f"{model_dir}: no *.safetensors weights found; pickled weights "
                         "(pytorch_model.bin) are refused. Convert them with safetensors first.")


def saved_max_seq_length(model_dir: Path) -> int:
    """The model's max sequence length as sentence-transformers derives it.

    ``sentence_bert_config.json``'s ``max_seq_length``; when that is null, the smaller of the
    transformer's ``max_position_embeddings`` and the tokenizer's ``model_max_length``.
    """
    saved = _json_field(model_dir / "sentence_bert_config.json", "max_seq_length")
    if saved is not None:
        if not isinstance(saved, int) or saved < 8:
            raise ModelError(f"{model_dir}/sentence_bert_config.json: 'max_seq_length' must be an integer >= 8, "
                             f"got {saved!r}")
        return saved
    limits = [v for v in (_json_field(model_dir / "config.json", "max_position_embeddings"),
                          _json_field(model_dir / "tokenizer_config.json", "model_max_length"))
              if isinstance(v, int) and 8 <= v < 1 << 24]
    if not limits:
        raise ModelError(f"{model_dir}: cannot tell the model's max sequence length (no max_seq_length, "
                         "max_position_embeddings or model_max_length)")
    return min(limits)


def _json_field(path: Path, name: str) -> Any:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable: {exc}") from exc
    return data.get(name) if isinstance(data, dict) else None


def saved_prompts(model_dir: Path) -> dict[str, str]:
    """The non-empty prompts a model saved with it (``config_sentence_transformers.json``)."""
    path = model_dir / "config_sentence_transformers.json"
    if not path.is_file():
        return {}
    try:
        prompts = json.loads(path.read_text(encoding="utf-8")).get("prompts") or {}
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable: {exc}") from exc
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise ModelError(f"{path}: 'prompts' must map names to strings")
    return {str(k): v for k, v in prompts.items() if v}


def model_prompts(model_dir: Path) -> dict[str, str]:
    """The instruction strings a model is used with: the project's templates, overridden by its own."""
    return {**default_prompts(), **saved_prompts(model_dir)}
