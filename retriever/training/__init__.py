"""The offline trainer: the three-stage UniHGKR recipe (see docs/TRAINING.md)."""

from __future__ import annotations

from retriever.training.config import TrainConfig, TrainConfigError, config_from_dict, load_config
from retriever.training.pipeline import TrainReport, train
from retriever.training.trainer import StopRequested

__all__ = ["StopRequested", "TrainConfig", "TrainConfigError", "TrainReport", "config_from_dict", "load_config",
           "train"]
