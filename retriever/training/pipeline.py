"""``train(config)``: run the configured stages and write the model directory and its manifest.

Run directory layout (``[run] output_dir``)::

    run_state.json              completed stages, their results, the config fingerprint
    config.json                 the resolved configuration
    checkpoints/<stage>/step-*  resumable checkpoints of the stage in progress
    stages/<stage>/             the model after each completed stage (sentence-transformers)
    stages/finetune-instructed/, stages/finetune-plain/   stage 3's two runs when merged
    model/                      the final model: safetensors, prompts, training_manifest.json,
                                router.safetensors (the source router, trained after the last stage)
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retriever.encoder import pick_device
from retriever.errors import InvalidInputError
from retriever.instructions import default_prompts
from retriever.linearize import LINEARIZER_VERSION
from retriever.model_dir import model_checksum, resolve_model_dir
from retriever.records import file_fingerprint, read_id_list
from retriever.training.anchors import DataTextPair, read_pairs_file
from retriever.training.config import (
    DeviceChoice,
    FinetuneConfig,
    NegativeMiner,
    StageName,
    TrainConfig,
    config_differences,
)
from retriever.training.data import TrainingData, load_training_data, tokenizer_budget
from retriever.training.devcheck import DevSample, dev_record_ids, evaluate_sample, sample_dev
from retriever.training.merge import MANIFEST_NAME, interpolate_models
from retriever.training.model import EmbeddingModel
from retriever.training.negatives import Mined, interleave_mined, mine_bm25, mine_with_model
from retriever.training.router import train_model_router
from retriever.training.stage1_pretrain import PretrainTask
from retriever.training.stage2_align import AlignTask
from retriever.training.stage3_finetune import FinetuneTask
from retriever.training.trainer import StageTask, run_stage

logger = logging.getLogger(__name__)

RUN_STATE = "run_state.json"
# Stage 3's two runs when [finetune] plain_merge_weight > 0 (merged into stages/finetune).
INSTRUCTED = "finetune-instructed"
PLAIN = "finetune-plain"


@dataclass
class TrainReport:
    model_dir: Path
    stages: list[dict[str, Any]]
    dev_metrics: dict[str, dict[str, float]]
    seconds: float
    router: dict[str, Any] | None = None


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          should_stop: Callable[[int], bool] | None = None) -> TrainReport:
    """Run the configured stages from the base model (or resume them) and save the final model.

    Args:
        config: a validated configuration (:func:`retriever.training.config.load_config`).
        resume: continue a run in ``output_dir`` (completed stages are skipped, the stage in
            progress restarts from its latest checkpoint).
        overwrite: delete an existing ``output_dir`` first.
        should_stop: see :func:`retriever.training.trainer.run_stage`.

    Raises:
        InvalidInputError: ``output_dir`` holds another run, or a resume with a changed config.
        StopRequested: ``should_stop`` asked to stop (a checkpoint was written).
    """
    started = time.perf_counter()
    out = config.run.output_dir
    state = _prepare(out, config, resume, overwrite)
    device = "cpu" if config.run.device is DeviceChoice.CPU else pick_device(
        "cuda" if config.run.device is DeviceChoice.CUDA else None)
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    if not config.run.show_progress:  # transformers' "Loading weights" bars too (a whole-process run)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    random.seed(config.run.seed)
    np.random.seed(config.run.seed % 2**32)
    torch.manual_seed(config.run.seed)

    base_dir = resolve_model_dir(config.model.base)
    completed: dict[str, Any] = state["completed"]
    start_dir = base_dir
    for stage in config.run.stages:
        if stage.value in completed:
            start_dir = out / "stages" / stage.value
    model = EmbeddingModel(start_dir, config.model, device)
    dev: DevSample | None = None
    if config.evaluation.enabled and config.evaluation.dev_queries and config.evaluation.dev_ids:
        dev = sample_dev(config.evaluation.dev_queries, config.evaluation.dev_ids, config.evaluation.questions,
                         config.evaluation.distractor_units, config.run.seed)
    data, window = read_run_data(config, model, dev, with_questions=StageName.FINETUNE in config.run.stages)
    pairs = [p for path in config.data.pairs_files for p in read_pairs_file(path)]

    if dev is not None and config.evaluation.evaluate_base and "base" not in state["dev_metrics"]:
        base_model = EmbeddingModel(base_dir, config.model, device)
        state["dev_metrics"]["base"] = evaluate_sample(base_model, data, dev, config.evaluation.distractor_units,
                                                       config.run.seed)
        del base_model
        _write_state(out, state)

    for stage in config.run.stages:
        if stage.value in completed:
            logger.info("%s already completed in %s; skipping", stage.value, out)
        elif stage is StageName.FINETUNE and config.finetune.plain_merge_weight > 0:
            device_name = model.device
            del model  # the two stage-3 runs load their own copies of the starting model
            model = _finetune_and_merge(device_name, _stage_start(config, stage, out, base_dir), data, config, pairs,
                                        out, state, should_stop)
        else:
            _train_stage(stage.value, stage, model, data, config, pairs, out, state, should_stop)

    model_dir = out / "model"
    model.save(model_dir, default_prompts())
    if dev is not None:
        state["dev_metrics"]["trained"] = evaluate_sample(model, data, dev, config.evaluation.distractor_units,
                                                          config.run.seed)
        _write_state(out, state)
    stages = [completed[s.value] for s in config.run.stages]
    if PLAIN in completed and StageName.FINETUNE in config.run.stages:
        stages.append(completed[PLAIN])
    manifest = _manifest(config, base_dir, stages, state["dev_metrics"], data, device, window)
    (model_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    router = None
    if config.router.enabled:
        # After the last stage, not inside stage 3: the head reads the final weights (stage 3's merge
        # changes them) and trains none of them; it is written last, once the model's checksum is final.
        del model
        _, report = train_model_router(str(model_dir), config.router, config.run.seed, device=device,
                                       threads=config.run.threads or None)
        router = state["router"] = report.to_json()
        _write_state(out, state)
    seconds = time.perf_counter() - started
    logger.info("training finished in %.1fs; model in %s", seconds, model_dir)
    return TrainReport(model_dir, stages, state["dev_metrics"], seconds, router)


def read_run_data(config: TrainConfig, model: EmbeddingModel, dev: DevSample | None,
                  with_questions: bool = True) -> tuple[TrainingData, int]:
    """The corpus units (pool, gold, dev sample) and questions as a run of ``config`` reads them.

    Returns the data and the linearization window in tokens.
    """
    window = config.data.window_tokens or model.saved_max_seq_length - 2
    data = load_training_data(
        config.data.corpus, config.data.train_queries if with_questions else None,
        tokenizer_budget(model.tokenizer, window), config.run.seed, config.data.pool_ids,
        config.data.pool_records, config.data.max_train_queries,
        extra_ids=(lambda records: dev_record_ids(dev, records)) if dev is not None else None,
        lenient=config.data.lenient, link_rows=config.data.link_rows)
    return data, window


def _train_stage(name: str, stage: StageName, model: EmbeddingModel, data: TrainingData, config: TrainConfig,
                 pairs: list[DataTextPair], out: Path, state: dict[str, Any],
                 should_stop: Callable[[int], bool] | None, mined: Mined | None = None) -> None:
    """Train ``model`` through one stage, save it as ``stages/<name>`` and record it in the run state."""
    model.start_stage()
    task = _build_task(stage, model, data, config, pairs, mined)
    result = run_stage(task, model, config.stage(stage), config.run, out / "checkpoints" / name,
                       extra_state={"config_fingerprint": config.fingerprint()}, should_stop=should_stop)
    model.end_stage()
    model.save(out / "stages" / name)
    state["completed"][name] = {**result.to_json(), "stage": name}
    _write_state(out, state)
    shutil.rmtree(out / "checkpoints" / name, ignore_errors=True)


def _stage_start(config: TrainConfig, stage: StageName, out: Path, base_dir: Path) -> Path:
    """The model a stage starts from: the previous listed stage's output, else the base model."""
    index = config.run.stages.index(stage)
    return out / "stages" / config.run.stages[index - 1].value if index else base_dir


def _finetune_and_merge(device: str, start: Path, data: TrainingData, config: TrainConfig,
                        pairs: list[DataTextPair], out: Path, state: dict[str, Any],
                        should_stop: Callable[[int], bool] | None) -> EmbeddingModel:
    """Stage 3 twice from ``start`` (instructed, then plain), merged into ``stages/finetune``.

    Both runs use the stage name ``finetune`` for their per-step seeds and share one set of mined
    negatives, so each is exactly what a standalone ``--stages finetune`` run from ``start`` would
    train. Each completed run is recorded in the run state, so a resume skips it.
    """
    completed: dict[str, Any] = state["completed"]
    settings = config.finetune
    plain_config = replace(config, finetune=replace(settings, source_loss_weight=0.0, counterfactual_prob=0.0))
    mined: Mined | None = None
    for name, run_config in ((INSTRUCTED, config), (PLAIN, plain_config)):
        if name in completed:
            logger.info("%s already completed in %s; skipping", name, out)
            continue
        logger.info("stage 3, %s run (merge weight %.2f on the plain one)", name.partition("-")[2],
                    settings.plain_merge_weight)
        model = EmbeddingModel(start, config.model, device)
        if mined is None:
            mined = _mine(model, data, settings)
        _train_stage(name, StageName.FINETUNE, model, data, run_config, pairs, out, state, should_stop, mined)
        del model
    merged = interpolate_models(out / "stages" / INSTRUCTED, out / "stages" / PLAIN, settings.plain_merge_weight,
                                out / "stages" / StageName.FINETUNE.value)
    completed[StageName.FINETUNE.value] = {**completed[INSTRUCTED], "stage": StageName.FINETUNE.value,
                                           "merged": {"plain_merge_weight": settings.plain_merge_weight,
                                                      "from": [INSTRUCTED, PLAIN]}}
    _write_state(out, state)
    return EmbeddingModel(merged, config.model, device)


def _mine(model: EmbeddingModel, data: TrainingData, settings: FinetuneConfig) -> Mined:
    if settings.miner is NegativeMiner.BM25:
        return mine_bm25(data, settings.mine_depth)
    miner = model
    if settings.miner_model:
        miner = EmbeddingModel(resolve_model_dir(settings.miner_model), model.config, model.device)
        logger.info("mining negatives with %s", settings.miner_model)
    by_model = mine_with_model(data, miner, settings.mine_depth)
    if settings.miner is NegativeMiner.MODEL:
        return by_model
    return interleave_mined(mine_bm25(data, settings.mine_depth), by_model)


def _build_task(stage: StageName, model: EmbeddingModel, data: TrainingData, config: TrainConfig,
                pairs: list[DataTextPair], mined: Mined | None = None) -> StageTask:
    if stage is StageName.PRETRAIN:
        return PretrainTask(model, data, config.pretrain, config.run.seed)
    if stage is StageName.ALIGN:
        return AlignTask(model, data, config.align, pairs)
    return FinetuneTask(model, data, config.finetune, _mine(model, data, config.finetune) if mined is None else mined)


def _prepare(out: Path, config: TrainConfig, resume: bool, overwrite: bool) -> dict[str, Any]:
    state_file = out / RUN_STATE
    if out.exists() and overwrite:
        shutil.rmtree(out)
    if out.exists() and any(out.iterdir()):
        if not resume:
            raise InvalidInputError(f"{out} already holds a run; pass --resume to continue it or --overwrite to "
                                    "start over")
        if not state_file.is_file():
            raise InvalidInputError(f"{out} is not empty and has no {RUN_STATE}; choose another output_dir")
        state: dict[str, Any] = json.loads(state_file.read_text(encoding="utf-8"))
        if state["config_fingerprint"] != config.fingerprint():
            try:
                changes = config_differences(json.loads((out / "config.json").read_text(encoding="utf-8")), config)
            except (OSError, ValueError):
                changes = []
            raise InvalidInputError(
                f"{out} was started with a different configuration"
                + (f" ({'; '.join(changes)})" if changes else f" (see {out}/config.json)")
                + "; resume with the same file and the same --set overrides, or start a new output_dir")
        logger.info("resuming %s: completed stages %s", out, ", ".join(state["completed"]) or "none")
        return state
    out.mkdir(parents=True, exist_ok=True)
    state = {"config_fingerprint": config.fingerprint(), "completed": {}, "dev_metrics": {}}
    (out / "config.json").write_text(json.dumps(config.to_json(), indent=2), encoding="utf-8")
    _write_state(out, state)
    return state


def _write_state(out: Path, state: dict[str, Any]) -> None:
    tmp = out / (RUN_STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
    os.replace(tmp, out / RUN_STATE)


def _manifest(config: TrainConfig, base_dir: Path, stages: list[dict[str, Any]], dev: dict[str, Any],
              data: TrainingData, device: str, window: int) -> dict[str, Any]:
    import sentence_transformers
    import transformers

    d = config.data
    fingerprints: dict[str, Any] = {
        "corpus": {"path": str(d.corpus),
                   "sha256": file_fingerprint(d.corpus, read_id_list(d.pool_ids) if d.pool_ids else None)},
        "train_queries": {"path": str(d.train_queries), "sha256": file_fingerprint(d.train_queries)},
        "pairs_files": [{"path": str(p), "sha256": file_fingerprint(p)} for p in d.pairs_files],
        "pool_units": len(data.pool),
        "training_questions": len(data.questions),
    }
    return {
        "format": 1,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "base_model": {"name": config.model.base, "path": str(base_dir), "sha256": model_checksum(base_dir)},
        "stages": stages,
        "data": fingerprints,
        "linearizer": {"version": LINEARIZER_VERSION, "window_tokens": window, "link_rows": config.data.link_rows},
        "prompts": default_prompts(),
        "config": config.to_json(),
        "dev_metrics": {"kind": "in-process dev sample (a proxy); use `retriever bench heteromix` for the real "
                        "figures", **dev},
        "device": device,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "sentence_transformers": sentence_transformers.__version__},
    }
