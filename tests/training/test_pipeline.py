"""End to end: every stage runs a few steps; the saved model reloads and encodes identically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from retriever.encoder import Encoder, EncoderConfig
from retriever.instructions import default_prompts
from retriever.training import config_from_dict, train
from tests.training.conftest import tiny_config


def test_three_stages_write_a_model_that_reloads_and_encodes_identically(tiny_data, tiny_st_model, tmp_path: Path):
    raw = tiny_config(tiny_data, tiny_st_model, tmp_path / "run",
                      evaluation={"enabled": True, "dev_queries": str(tiny_data["dev"]),
                                  "dev_ids": str(tiny_data["dev_ids"]), "questions": 8, "distractor_units": 20})
    report = train(config_from_dict(raw))
    assert [s["stage"] for s in report.stages] == ["pretrain", "align", "finetune"]
    assert all(s["steps"] == 3 and s["tokens"] > 0 for s in report.stages)

    manifest = json.loads((report.model_dir / "training_manifest.json").read_text())
    assert manifest["base_model"]["path"] == str(tiny_st_model)
    assert manifest["prompts"] == default_prompts()
    assert manifest["data"]["corpus"]["sha256"]
    assert {"s1_mrr@100", "s2_mrr@100", "s2_follow@10"} <= set(manifest["dev_metrics"]["trained"])
    assert list(report.model_dir.rglob("*.safetensors"))
    assert not list(report.model_dir.rglob("*.bin"))

    texts = ["Heliodoro Castillo, country, Mexico", "The Finkler Question won the 2010 Man Booker Prize."]
    first = Encoder(EncoderConfig(model=str(report.model_dir), show_progress=False))
    second = Encoder(EncoderConfig(model=str(report.model_dir), show_progress=False))
    assert first.prompts["query_kb"] == default_prompts()["query_kb"]
    a = first.encode_documents(texts)
    np.testing.assert_array_equal(a, second.encode_documents(texts))
    base = Encoder(EncoderConfig(model=str(tiny_st_model), show_progress=False)).encode_documents(texts)
    assert not np.allclose(a, base), "training did not change the weights"
    # The training path (EmbeddingModel.encode) and the serving path agree.
    from retriever.training.config import ModelConfig
    from retriever.training.model import EmbeddingModel

    trained = EmbeddingModel(report.model_dir, ModelConfig(base=str(report.model_dir), max_seq_length=64), "cpu")
    np.testing.assert_allclose(trained.encode(texts).numpy(), a, atol=1e-5)
