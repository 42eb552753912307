"""The LLM variant: a tiny random decoder, last-token pooling, LoRA, through the three stages."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load_file

from retriever.encoder import Encoder, EncoderConfig
from retriever.errors import ModelError
from retriever.training import config_from_dict, train
from retriever.training.config import LoraConfig, ModelConfig, Pooling
from retriever.training.model import EmbeddingModel
from tests.training.conftest import tiny_config


def test_lora_trains_only_adapters_and_merges(tiny_decoder):
    config = ModelConfig(base=str(tiny_decoder), pooling=Pooling.LASTTOKEN, max_seq_length=32,
                         lora=LoraConfig(enabled=True, r=4, alpha=8, target_modules=("q_proj", "v_proj")))
    model = EmbeddingModel(tiny_decoder, config, "cpu")
    model.start_stage()
    names = [n for n, _ in model.named_trainable_parameters()]
    assert names and all("lora_" in n for n in names)
    model.end_stage()
    assert all("lora_" not in n for n, _ in model.st.named_parameters())


def test_lora_with_unknown_targets_names_the_real_layers(tiny_decoder):
    config = ModelConfig(base=str(tiny_decoder), pooling=Pooling.LASTTOKEN,
                         lora=LoraConfig(enabled=True, target_modules=("query", "value")))
    model = EmbeddingModel(tiny_decoder, config, "cpu")
    with pytest.raises(ModelError, match="q_proj"):
        model.start_stage()


def test_llm_variant_runs_three_stages_and_reloads(tiny_data, tiny_decoder, tmp_path):
    raw = tiny_config(tiny_data, tiny_decoder, tmp_path / "run",
                      model={"pooling": "lasttoken", "max_seq_length": 48,
                             "lora": {"enabled": True, "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}},
                      pretrain={"steps": 2}, align={"steps": 2}, finetune={"steps": 2})
    report = train(config_from_dict(raw))
    assert [s["steps"] for s in report.stages] == [2, 2, 2]
    modules = json.loads((report.model_dir / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    pooling = json.loads((report.model_dir / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode"] == "lasttoken"
    weights = load_file(str(report.model_dir / "model.safetensors"))
    assert not any("lora" in k for k in weights)
    base = load_file(str(tiny_decoder / "model.safetensors"))
    q = next(k for k in weights if k.endswith("layers.0.self_attn.q_proj.weight"))
    k_proj = next(k for k in weights if k.endswith("layers.0.self_attn.k_proj.weight"))
    assert not np.allclose(weights[q].numpy(), base[q].numpy()), "merged LoRA must change q_proj"
    np.testing.assert_array_equal(weights[k_proj].numpy(), base[k_proj].numpy())  # not a LoRA target

    texts = ["Heliodoro Castillo, country, Mexico", "a much longer second text so that padding is needed here"]
    first = Encoder(EncoderConfig(model=str(report.model_dir), show_progress=False))
    again = Encoder(EncoderConfig(model=str(report.model_dir), show_progress=False))
    vectors = first.encode_documents(texts)
    np.testing.assert_array_equal(vectors, again.encode_documents(texts))
    single = np.stack([first.encode_documents([t])[0] for t in texts])
    np.testing.assert_allclose(vectors, single, atol=1e-5)  # last-token pooling ignores padding


def test_llm_variant_plain_merge_lerps_the_two_merged_lora_runs(tiny_data, tiny_decoder, tmp_path):
    raw = tiny_config(tiny_data, tiny_decoder, tmp_path / "run",
                      run={"stages": ["finetune"]},
                      model={"pooling": "lasttoken", "max_seq_length": 48,
                             "lora": {"enabled": True, "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}},
                      finetune={"steps": 2, "source_loss_weight": 1.0, "counterfactual_prob": 0.3,
                                "plain_merge_weight": 0.5})
    report = train(config_from_dict(raw))
    stages = tmp_path / "run" / "stages"
    a = load_file(str(stages / "finetune-instructed" / "model.safetensors"))
    b = load_file(str(stages / "finetune-plain" / "model.safetensors"))
    merged = load_file(str(report.model_dir / "model.safetensors"))
    assert not any("lora" in k for k in merged)
    q = next(k for k in merged if k.endswith("layers.0.self_attn.q_proj.weight"))
    assert not np.array_equal(a[q].numpy(), b[q].numpy())
    for name in a:
        np.testing.assert_allclose(merged[name].numpy(), (0.5 * a[name] + 0.5 * b[name]).numpy(), atol=1e-6)
    vectors = Encoder(EncoderConfig(model=str(report.model_dir), show_progress=False)).encode_documents(["a b c"])
    assert vectors.shape[0] == 1 and np.isfinite(vectors).all()
