"""Resumable checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint directory ``<run>/checkpoints/<stage>/step-000123/`` holds

- ``trainable.safetensors``: the trainable parameters (all weights when fully fine-tuning,
  only the LoRA adapters otherwise) and the stage's extra modules (the RetroMAE decoder);
- ``optimizer.safetensors``: AdamW's per-parameter tensors (``state.<i>.<key>``);
- ``rng.safetensors``: torch's CPU (and CUDA) generator states;
- ``state.json``: step, tokens, the optimizer's param groups and scalar state, the LR scheduler's
  state, numpy/python RNG states, the grad scaler's state, the config fingerprint.

Frozen weights are not saved: on resume they are rebuilt from the stage's starting model.
Directories are written under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from retriever.errors import RetrieverError

logger = logging.getLogger(__name__)

STATE_NAME = "state.json"


class CheckpointError(RetrieverError):
    """A checkpoint is missing, incomplete or does not match the run."""


@dataclass
class CheckpointState:
    step: int
    tokens: int
    extra: dict[str, Any]


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu").contiguous().clone()


def save_checkpoint(directory: Path, parameters: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler | None,
                    step: int, tokens: int, extra: dict[str, Any]) -> Path:
    """Write a checkpoint directory atomically and return its path."""
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({name: _plain(p) for name, p in parameters.items()}, str(tmp / "trainable.safetensors"))

    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in opt["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = _plain(value)
            else:
                scalars.setdefault(str(index), {})[key] = value
    save_file(tensors, str(tmp / "optimizer.safetensors"))

    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"torch_cuda_{i}"] = state
    save_file(rng, str(tmp / "rng.safetensors"))

    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    py_state = random.getstate()
    payload = {
        "step": step,
        "tokens": tokens,
        "param_names": list(parameters),
        "optimizer_param_groups": opt["param_groups"],
        "optimizer_scalars": scalars,
        "scheduler": sched,
        "numpy_rng": _numpy_state(),
        "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "extra": extra,
    }
    (tmp / STATE_NAME).write_text(json.dumps(payload, indent=1, default=_json_default), encoding="utf-8")
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory


def _numpy_state() -> list[Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    return [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint's JSON")


def load_checkpoint(directory: Path, parameters: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler,
                    scaler: torch.amp.GradScaler | None) -> CheckpointState:
    """Restore parameters, optimizer, scheduler, scaler and RNG states from a checkpoint.

    Raises:
        CheckpointError: the checkpoint is incomplete or its parameters differ from the model's.
    """
    state_file = directory / STATE_NAME
    if not state_file.is_file():
        raise CheckpointError(f"{directory}: not a checkpoint (no {STATE_NAME})")
    payload = json.loads(state_file.read_text(encoding="utf-8"))
    if payload["param_names"] != list(parameters):
        missing = set(payload["param_names"]) ^ set(parameters)
        raise CheckpointError(f"{directory}: trainable parameters differ from the model's (e.g. "
                              f"{sorted(missing)[:3]}); was the config changed since the checkpoint?")
    weights = load_file(str(directory / "trainable.safetensors"))
    with torch.no_grad():
        for name, parameter in parameters.items():
            if weights[name].shape != parameter.shape:
                raise CheckpointError(f"{directory}: {name} has shape {tuple(weights[name].shape)}, "
                                      f"the model {tuple(parameter.shape)}")
            parameter.copy_(weights[name].to(parameter.device, parameter.dtype))

    tensors = load_file(str(directory / "optimizer.safetensors"))
    device = next(iter(parameters.values())).device if parameters else torch.device("cpu")
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        # AdamW keeps "step" on the CPU unless capturable/fused; the optimizer casts on load.
        opt_state.setdefault(int(index), {})[name] = value if name == "step" else value.to(device)
    for index, scalars in payload["optimizer_scalars"].items():
        opt_state.setdefault(int(index), {}).update(scalars)
    optimizer.load_state_dict({"state": opt_state, "param_groups": payload["optimizer_param_groups"]})
    scheduler.load_state_dict({**scheduler.state_dict(), **payload["scheduler"]})
    if scaler is not None and payload["scaler"] is not None:
        scaler.load_state_dict(payload["scaler"])

    rng = load_file(str(directory / "rng.safetensors"))
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("torch_cuda_"))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    name, keys, pos, has_gauss, cached = payload["numpy_rng"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = payload["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    logger.info("resumed from %s (step %d)", directory, payload["step"])
    return CheckpointState(step=int(payload["step"]), tokens=int(payload["tokens"]), extra=payload["extra"])


def checkpoint_dirs(stage_dir: Path) -> list[Path]:
    """Complete checkpoints of a stage, oldest first."""
    if not stage_dir.is_dir():
        return []
    return sorted(p for p in stage_dir.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")
                  and (p / STATE_NAME).is_file())


def prune_checkpoints(stage_dir: Path, keep: int) -> None:
    for old in checkpoint_dirs(stage_dir)[:-keep]:
        shutil.rmtree(old)
