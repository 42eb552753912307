"""The training loop shared by the three stages.

A stage is a *task* with ``loss(rng, generator) -> (loss, tokens)`` and its extra trainable
modules. The loop owns the optimizer (AdamW, no decay on biases and norms), the LR schedule
(linear warm-up, linear decay), gradient accumulation, clipping, mixed precision on CUDA,
logging with a tqdm bar (loss, tokens/s) and checkpoints.

Repeatability: every micro-batch draws its data and its masking/dropout randomness from
generators seeded by ``(seed, stage, step, micro)``, so a resumed run sees exactly the
batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from retriever.training.checkpoint import checkpoint_dirs, load_checkpoint, prune_checkpoints, save_checkpoint
from retriever.training.config import MixedPrecision, OptimConfig, RunConfig
from retriever.training.model import EmbeddingModel

logger = logging.getLogger(__name__)

STAGE_SEEDS = {"pretrain": 1, "align": 2, "finetune": 3}
ESTIMATE_BATCHES = 8


class StageTask(Protocol):
    name: str

    def loss(self, rng: np.random.Generator, generator: torch.Generator) -> tuple[torch.Tensor, int]: ...

    def extra_modules(self) -> dict[str, nn.Module]: ...

    def estimate_tokens(self, rng: np.random.Generator, samples: int) -> float: ...


@dataclass
class StageResult:
    stage: str
    steps: int
    tokens: int
    seconds: float
    tokens_per_second: float
    first_loss: float | None
    last_loss: float | None
    resumed_from: int | None = None
    losses: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "steps": self.steps, "tokens": self.tokens, "seconds": round(self.seconds, 1),
                "tokens_per_second": round(self.tokens_per_second, 1), "first_loss": self.first_loss,
                "last_loss": self.last_loss, "resumed_from_step": self.resumed_from}


class StopRequested(Exception):
    """Raised by the loop after it saved a checkpoint because ``should_stop`` said so."""

    def __init__(self, stage: str, step: int, checkpoint: Path) -> None:
        super().__init__(f"stopped during {stage} at step {step}; resume from {checkpoint}")
        self.stage, self.step, self.checkpoint = stage, step, checkpoint


def step_generators(seed: int, stage: str, step: int, micro: int) -> tuple[np.random.Generator, torch.Generator]:
    """The data RNG and the torch RNG of one micro-batch (and reseed torch's global RNG for dropout)."""
    key = [seed, STAGE_SEEDS.get(stage, 0), step, micro]
    rng = np.random.default_rng(key)
    torch_seed = int(np.random.default_rng([*key, 1]).integers(2**62))
    torch.manual_seed(torch_seed)
    generator = torch.Generator().manual_seed(torch_seed)
    return rng, generator


def plan_steps(task: StageTask, config: OptimConfig, seed: int) -> tuple[int, float]:
    """Optimizer steps that spend ``config.tokens`` (estimated from a few drawn batches), or ``config.steps``."""
    if not config.tokens:
        return config.steps, float("nan")
    rng = np.random.default_rng([seed, STAGE_SEEDS.get(task.name, 0), 2**31])
    per_micro = task.estimate_tokens(rng, ESTIMATE_BATCHES)
    per_step = per_micro * config.grad_accum
    return max(1, math.ceil(config.tokens / max(per_step, 1.0))), per_step


def resolve_amp(precision: MixedPrecision, device: str) -> torch.dtype | None:
    """The autocast dtype: mixed precision only on CUDA."""
    if not device.startswith("cuda") or precision is MixedPrecision.NO:
        return None
    if precision is MixedPrecision.FP16:
        return torch.float16
    if precision is MixedPrecision.BF16 or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def run_stage(task: StageTask, model: EmbeddingModel, config: OptimConfig, run: RunConfig, checkpoint_root: Path,
              extra_state: dict[str, Any] | None = None,
              should_stop: Callable[[int], bool] | None = None) -> StageResult:
    """Train one stage to its step budget, resuming from its latest checkpoint when one exists.

    Args:
        task: the stage's batch builder and loss.
        model: the model (LoRA adapters already applied when configured).
        config: the stage's budget and optimizer settings.
        run: seeds, device, precision, logging and checkpointing.
        checkpoint_root: this stage's checkpoint directory.
        extra_state: JSON data stored with each checkpoint (e.g. the config fingerprint).
        should_stop: called after each optimizer step with the number of completed steps; when it
            returns True a checkpoint is written and :class:`StopRequested` is raised.

    Raises:
        StopRequested: ``should_stop`` asked to stop.
    """
    from tqdm.auto import tqdm

    steps, per_step = plan_steps(task, config, run.seed)
    logger.info("%s: %d steps (%s tokens per step estimated, budget %s tokens, batch %d x %d)", task.name, steps,
                "n/a" if math.isnan(per_step) else f"{per_step:.0f}", config.tokens or "n/a", config.batch_size,
                config.grad_accum)
    params = {f"model.{n}": p for n, p in model.named_trainable_parameters()}
    for prefix, module in task.extra_modules().items():
        params.update({f"{prefix}.{n}": p for n, p in module.named_parameters() if p.requires_grad})
    decay = [p for n, p in params.items() if p.ndim >= 2 and "norm" not in n.lower()]
    no_decay = [p for n, p in params.items() if not (p.ndim >= 2 and "norm" not in n.lower())]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    warmup = int(steps * config.warmup_ratio)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (steps - step) / max(1, steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    amp_dtype = resolve_amp(run.precision, model.device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)

    start, tokens, resumed = 0, 0, None
    existing = checkpoint_dirs(checkpoint_root)
    if existing:
        state = load_checkpoint(existing[-1], params, optimizer, scheduler, scaler)
        start, tokens, resumed = state.step, state.tokens, state.step

    for module in (model.st, *task.extra_modules().values()):
        module.train()
    losses: list[float] = []
    started = time.perf_counter()
    session_tokens = 0
    bar = tqdm(total=steps, initial=start, desc=task.name, disable=not run.show_progress, unit="step")
    for step in range(start, steps):
        step_loss = 0.0
        for micro in range(config.grad_accum):
            rng, generator = step_generators(run.seed, task.name, step, micro)
            autocast = (torch.autocast("cuda", dtype=amp_dtype) if amp_dtype is not None
                        else contextlib.nullcontext())
            with autocast:
                loss, n_tokens = task.loss(rng, generator)
            scaler.scale(loss / config.grad_accum).backward()
            step_loss += float(loss.detach()) / config.grad_accum
            tokens += n_tokens
            session_tokens += n_tokens
        if config.max_grad_norm:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(list(params.values()), config.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
        done = step + 1
        elapsed = time.perf_counter() - started
        rate = session_tokens / max(elapsed, 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{rate:.0f}")
        if done % run.log_every == 0 or done == steps:
            logger.info("%s step %d/%d loss %.4f lr %.2e tokens %d (%.0f tokens/s)", task.name, done, steps,
                        float(np.mean(losses[-run.log_every:])), scheduler.get_last_lr()[0], tokens, rate)
        stop = should_stop is not None and should_stop(done)
        if done < steps and (stop or (run.checkpoint_every and done % run.checkpoint_every == 0)):
            path = save_checkpoint(checkpoint_root / f"step-{done:07d}", params, optimizer, scheduler, scaler, done,
                                   tokens, extra_state or {})
            prune_checkpoints(checkpoint_root, run.keep_checkpoints)
            if stop:
                bar.close()
                raise StopRequested(task.name, done, path)
    bar.close()
    elapsed = time.perf_counter() - started
    result = StageResult(task.name, steps, tokens, elapsed, session_tokens / max(elapsed, 1e-9),
                         losses[0] if losses else None, losses[-1] if losses else None, resumed, losses)
    logger.info("%s done: %d steps, %d tokens in %.1fs (%.0f tokens/s)", task.name, steps, tokens, elapsed,
                result.tokens_per_second)
    return result
