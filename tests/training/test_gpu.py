"""CUDA paths of the trainer: mixed precision through all three stages (skipped without a GPU)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from retriever.encoder import Encoder, EncoderConfig
from retriever.training import config_from_dict, train
from retriever.training.config import MixedPrecision
from retriever.training.trainer import resolve_amp
from tests.training.conftest import tiny_config

pytestmark = pytest.mark.gpu


def test_auto_precision_is_bf16_where_supported_and_never_on_cpu() -> None:
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert resolve_amp(MixedPrecision.AUTO, "cuda") is expected
    assert resolve_amp(MixedPrecision.AUTO, "cpu") is None
    assert resolve_amp(MixedPrecision.NO, "cuda") is None


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_three_stages_train_on_cuda_in_mixed_precision(tiny_data, tiny_st_model, tmp_path: Path,
                                                       precision: str) -> None:
    raw = tiny_config(tiny_data, tiny_st_model, tmp_path / "run")
    raw["run"].update(device="cuda", precision=precision)
    for stage in ("pretrain", "align", "finetune"):
        raw[stage]["steps"] = 6
    report = train(config_from_dict(raw))
    assert [s["stage"] for s in report.stages] == ["pretrain", "align", "finetune"]
    for stage in report.stages:
        assert stage["steps"] == 6 and stage["tokens"] > 0
        assert math.isfinite(stage["first_loss"]) and math.isfinite(stage["last_loss"]), stage
    # The saved weights are fp32, finite, changed by training, and load on the CPU as on the GPU.
    texts = ["Heliodoro Castillo, country, Mexico", "The Finkler Question won the 2010 Man Booker Prize."]
    on_cpu = Encoder(EncoderConfig(model=str(report.model_dir), device="cpu", show_progress=False))
    a = on_cpu.encode_documents(texts)
    assert np.isfinite(a).all()
    base = Encoder(EncoderConfig(model=str(tiny_st_model), device="cpu", show_progress=False))
    assert not np.allclose(a, base.encode_documents(texts)), "training did not change the weights"
    on_gpu = Encoder(EncoderConfig(model=str(report.model_dir), device="cuda", show_progress=False))
    np.testing.assert_allclose(on_gpu.encode_documents(texts), a, atol=2e-2)
