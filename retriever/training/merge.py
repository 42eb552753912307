"""Weight-space interpolation of two fine-tuned models of the same architecture (a two-model soup).

Two stage-3 runs from the same stage-2 model sit in one basin, and averaging their weights gives a
model between them that is often better than either on the combined goal (Wortsman et al., "Robust
fine-tuning of zero-shot models", 2022; "Model soups", 2022). Stage 3 uses it to trade the
source-preference term's instruction following against general ranking without retraining
(``[finetune] plain_merge_weight``), and ``retriever merge-models`` exposes it for any two models.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from retriever.errors import InvalidInputError
from retriever.model_dir import model_checksum
from retriever.records import file_fingerprint

logger = logging.getLogger(__name__)

MANIFEST_NAME = "training_manifest.json"
# Files that must match: the same tokenizer and the same module layout.
MUST_MATCH = ("tokenizer.json", "modules.json")
#: tokenizer.json keys that record the tokenizer's last call, not the tokenizer: sentence-transformers
#: sets truncation and padding on every call, so two runs of one recipe can save different values.
TOKENIZER_STATE = ("truncation", "padding")


def _weight_files(model_dir: Path) -> list[str]:
    """The model's safetensors weight files (not its source router, also safetensors)."""
    from retriever.router import ROUTER_FILE

    return sorted(p.name for p in model_dir.glob("*.safetensors") if p.name != ROUTER_FILE)


def _derived_from_weights(root: Path) -> Callable[[str, list[str]], set[str]]:
    """A ``copytree`` filter leaving out what ``root``'s files made from its weights, which would
    not match the merged weights: its source router and its exported copies (``onnx/``,
    ``openvino/``, their manifests)."""
    from retriever.backends import EXPORT_PATHS
    from retriever.router import ROUTER_FILE

    derived = {ROUTER_FILE, *(path.rstrip("/") for path in EXPORT_PATHS)}

    def ignore(directory: str, names: list[str]) -> set[str]:
        return {name for name in names if name in derived} if Path(directory) == root else set()

    return ignore


def _same_file(a: Path, b: Path) -> bool:
    """Byte for byte, except a ``tokenizer.json``'s :data:`TOKENIZER_STATE`."""
    if file_fingerprint(a) == file_fingerprint(b):
        return True
    if a.name != "tokenizer.json":
        return False
    try:
        left, right = (json.loads(path.read_text(encoding="utf-8")) for path in (a, b))
    except (OSError, ValueError):
        return False
    return all(left.get(k) == right.get(k) for k in left.keys() | right.keys() if k not in TOKENIZER_STATE)


def interpolate_models(first: Path, second: Path, weight: float, out: Path) -> Path:
    """Write ``(1 - weight) * first + weight * second`` to ``out``, tensor by tensor.

    Everything but the weights (prompts, pooling, tokenizer, the training manifest) comes from
    ``first``; the manifest gains a ``merge`` entry naming both inputs. Float tensors are averaged
    in float32 and stored in their own dtype; integer buffers must be equal. ``out`` is written
    beside itself and renamed into place, so a failure leaves nothing half-written.

    Raises:
        InvalidInputError: a missing directory, ``weight`` outside [0, 1], or models that differ in
            files, tensor names, shapes, dtypes, tokenizer or module layout.
    """
    if not 0.0 <= weight <= 1.0:
        raise InvalidInputError(f"merge weight must be in [0, 1], got {weight}")
    for path in (first, second):
        if not path.is_dir() or not _weight_files(path):
            raise InvalidInputError(f"{path}: not a model directory with safetensors weights")
    shards = _weight_files(first)
    if shards != _weight_files(second):
        raise InvalidInputError(f"{first} and {second} have different weight files")
    for name in MUST_MATCH:
        a, b = first / name, second / name
        if a.is_file() != b.is_file() or (a.is_file() and not _same_file(a, b)):
            raise InvalidInputError(f"{first} and {second} differ in {name}; only models of one architecture "
                                    "and tokenizer can be merged")

    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(first, tmp, ignore=_derived_from_weights(first))
    try:
        for shard in shards:
            merged, metadata = _merge_shard(first / shard, second / shard, weight)
            save_file(merged, str(tmp / shard), metadata=metadata)
        manifest_path = tmp / MANIFEST_NAME
        manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
        manifest["merge"] = {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "formula": "(1 - weight) * first + weight * second",
            "weight": weight,
            "first": {"path": str(first), "sha256": model_checksum(first)},
            "second": {"path": str(second), "sha256": model_checksum(second)},
        }
        manifest_path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    logger.info("merged %s and %s (weight %.3f on the second) into %s", first, second, weight, out)
    return out


def _merge_shard(first: Path, second: Path, weight: float) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(first), framework="pt") as fa, safe_open(str(second), framework="pt") as fb:
        names = set(fa.keys())
        if names != set(fb.keys()):
            missing = sorted(names ^ set(fb.keys()))[:3]
            raise InvalidInputError(f"{first.name}: the two models have different tensors (e.g. {missing})")
        metadata = fa.metadata() or {"format": "pt"}
        merged: dict[str, torch.Tensor] = {}
        for name in sorted(names):
            a, b = fa.get_tensor(name), fb.get_tensor(name)
            if a.shape != b.shape or a.dtype != b.dtype:
                raise InvalidInputError(f"{first.name}: tensor {name} is {tuple(a.shape)} {a.dtype} in one model "
                                        f"and {tuple(b.shape)} {b.dtype} in the other")
            if a.is_floating_point():
                merged[name] = torch.lerp(a.float(), b.float(), weight).to(a.dtype).contiguous()
            elif torch.equal(a, b):
                merged[name] = a
            else:
                raise InvalidInputError(f"{first.name}: integer tensor {name} differs between the models")
    return merged, metadata

