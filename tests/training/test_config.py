from __future__ import annotations

from pathlib import Path

import pytest

from retriever.training.config import (
    MixedPrecision,
    NegativeMiner,
    StageName,
    TrainConfigError,
    config_from_dict,
    load_config,
)
from tests.training.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[2]


def test_valid_config_is_typed(tiny_data, tiny_st_model, tmp_path):
    config = config_from_dict(tiny_config(tiny_data, tiny_st_model, tmp_path))
    assert config.run.stages == (StageName.PRETRAIN, StageName.ALIGN, StageName.FINETUNE)
    assert config.run.precision is MixedPrecision.AUTO
    assert config.finetune.miner is NegativeMiner.BM25
    assert config.align.temperature == 0.05
    assert config.data.pairs_files == (tiny_data["pairs"],)


@pytest.mark.parametrize(("section", "key", "message"), [
    ("finetune", "temprature", "unknown key 'temprature' in [finetune] (did you mean 'temperature'?)"),
    ("run", "outptu_dir", "did you mean 'output_dir'?"),
    ("model", "lora_rank", "unknown key 'lora_rank' in [model]"),
])
def test_unknown_keys_are_rejected_with_a_hint(tiny_data, tiny_st_model, tmp_path, section, key, message):
    raw = tiny_config(tiny_data, tiny_st_model, tmp_path)
    raw[section][key] = 1
    with pytest.raises(TrainConfigError, match="valid keys") as info:
        config_from_dict(raw)
    assert message in str(info.value)


def test_unknown_section_is_rejected(tiny_data, tiny_st_model, tmp_path):
    raw = tiny_config(tiny_data, tiny_st_model, tmp_path)
    raw["pretraining"] = {}
    with pytest.raises(TrainConfigError, match="unknown key 'pretraining' in the top level"):
        config_from_dict(raw)


@pytest.mark.parametrize(("section", "values", "message"), [
    ("finetune", {"temperature": "0.02"}, "finetune.temperature: expected a number"),
    ("run", {"precision": "fp8"}, "'fp8' is not one of 'auto', 'no', 'bf16', 'fp16'"),
    ("run", {"stages": ["finetune", "align"]}, "must keep the recipe order"),
    ("align", {"temperature": 0}, "temperature must be in (0, 10]"),
    ("pretrain", {"decoder_mask_ratio": 1.5}, "decoder_mask_ratio must be between 0 and 1"),
    ("pretrain", {"source_weights": {"tables": 1.0}}, "unknown source 'tables'"),
    ("run", {"show_progress": 1}, "expected true or false"),
    ("finetune", {"tokens": 0, "steps": 0}, "set a budget"),
])
def test_bad_values_are_rejected(tiny_data, tiny_st_model, tmp_path, section, values, message):
    raw = tiny_config(tiny_data, tiny_st_model, tmp_path, **{section: values})
    with pytest.raises(TrainConfigError) as info:
        config_from_dict(raw)
    assert message in str(info.value)


def test_listed_stage_needs_its_section(tiny_data, tiny_st_model, tmp_path):
    raw = tiny_config(tiny_data, tiny_st_model, tmp_path)
    del raw["align"]
    with pytest.raises(TrainConfigError, match=r"lists 'align' but the file has no \[align\] section"):
        config_from_dict(raw)
    raw["run"]["stages"] = ["pretrain", "finetune"]
    assert config_from_dict(raw).run.stages == (StageName.PRETRAIN, StageName.FINETUNE)


def test_dev_questions_cannot_be_training_questions(tiny_data, tiny_st_model, tmp_path):
    raw = tiny_config(tiny_data, tiny_st_model, tmp_path, data={"train_queries": str(tiny_data["dev"])})
    with pytest.raises(TrainConfigError, match="looks like a dev file"):
        config_from_dict(raw)


def test_missing_file_names_the_key(tiny_data, tiny_st_model, tmp_path):
    raw = tiny_config(tiny_data, tiny_st_model, tmp_path, data={"corpus": str(tmp_path / "nope.jsonl")})
    with pytest.raises(TrainConfigError, match=r"\[data\] corpus: .*nope.jsonl does not exist"):
        config_from_dict(raw)


def test_toml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\noutput_dir = 'x'\n")
    with pytest.raises(TrainConfigError, match=r"bad\.toml: not valid TOML"):
        load_config(bad)


@pytest.mark.parametrize("name", ["train_cpu.toml", "train_gpu.toml", "train_llm_gpu.toml", "train_smoke.toml"])
def test_shipped_configs_parse(name, monkeypatch):
    data = ROOT.parent / "shared" / "data" / "heteromix"
    if not (data / "corpus.jsonl.gz").is_file():
        pytest.skip("HeteroMix data not present at ../shared/data")
    monkeypatch.chdir(ROOT)
    config = load_config(ROOT / "configs" / name)
    assert config.run.stages
    assert "dev" not in config.data.train_queries.name


def test_cli_overrides_merge_typed_values():
    from retriever.cli.train_commands import _apply_setting

    overrides: dict = {"run": {}}
    _apply_setting(overrides, "finetune.tokens=600000")
    _apply_setting(overrides, "finetune.temperature=0.02")
    _apply_setting(overrides, "run.device=cpu")
    _apply_setting(overrides, "pretrain.source_weights.kb=2.0")
    assert overrides == {"run": {"device": "cpu"}, "finetune": {"tokens": 600000, "temperature": 0.02},
                         "pretrain": {"source_weights": {"kb": 2.0}}}
    for bad in ("tokens=5", "finetune.tokens", ".tokens=1"):
        with pytest.raises(TrainConfigError, match="SECTION.KEY=VALUE"):
            _apply_setting({}, bad)


def test_cli_overrides_reach_the_config(monkeypatch):
    from retriever.cli.train_commands import _apply_setting

    if not (ROOT.parent / "shared" / "data" / "heteromix" / "corpus.jsonl.gz").is_file():
        pytest.skip("HeteroMix data not present at ../shared/data")
    monkeypatch.chdir(ROOT)
    overrides: dict = {"run": {"stages": ["align", "finetune"]}}
    _apply_setting(overrides, "finetune.tokens=1234")
    config = load_config(ROOT / "configs" / "train_cpu.toml", overrides)
    assert [s.value for s in config.run.stages] == ["align", "finetune"]
    assert config.finetune.tokens == 1234
    with pytest.raises(TrainConfigError, match="finetune"):
        load_config(ROOT / "configs" / "train_cpu.toml", {"finetune": {"no_such_key": 1}})


def test_miner_model_needs_a_model_miner_and_leaves_older_runs_resumable(tiny_data, tiny_st_model, tmp_path):
    raw = tiny_config(tiny_data, tiny_st_model, tmp_path)
    before = config_from_dict(raw).fingerprint()
    raw["finetune"]["miner_model"] = str(tiny_st_model)
    with pytest.raises(TrainConfigError, match="miner_model"):
        config_from_dict(raw)
    raw["finetune"]["miner"] = "mixed"
    config = config_from_dict(raw)
    assert config.finetune.miner is NegativeMiner.MIXED and config.fingerprint() != before
    raw["finetune"].pop("miner_model")
    raw["finetune"].pop("miner")
    assert config_from_dict(raw).fingerprint() == before
