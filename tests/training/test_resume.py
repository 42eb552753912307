"""An interrupted run resumes from its checkpoint and ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from safetensors.torch import load_file

from retriever.errors import InvalidInputError
from retriever.training import StopRequested, config_from_dict, train
from retriever.training.checkpoint import checkpoint_dirs
from tests.training.conftest import tiny_config


def _raw(tiny_data, tiny_st_model, out: Path) -> dict:
    return tiny_config(tiny_data, tiny_st_model, out,
                       run={"stages": ["align", "finetune"], "checkpoint_every": 2},
                       align={"steps": 3}, finetune={"steps": 5})


def _weights(model_dir: Path) -> dict:
    return load_file(str(model_dir / "model.safetensors"))


def test_resume_matches_an_uninterrupted_run(tiny_data, tiny_st_model, tmp_path):
    full = train(config_from_dict(_raw(tiny_data, tiny_st_model, tmp_path / "full")))

    out = tmp_path / "interrupted"
    config = config_from_dict(_raw(tiny_data, tiny_st_model, out))
    calls = {"n": 0}

    def stop_in_finetune(step: int) -> bool:
        calls["n"] += 1
        return calls["n"] == 3 + 2  # align's 3 steps, then finetune step 2

    with pytest.raises(StopRequested) as info:
        train(config, should_stop=stop_in_finetune)
    assert info.value.stage == "finetune" and info.value.step == 2
    [checkpoint] = checkpoint_dirs(out / "checkpoints" / "finetune")
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["step"] == 2 and state["tokens"] > 0
    assert state["optimizer_param_groups"][0]["lr"] > 0
    assert state["scheduler"]["last_epoch"] == 2
    assert (out / "stages" / "align" / "model.safetensors").is_file()

    with pytest.raises(InvalidInputError, match="--resume"):
        train(config)
    resumed = train(config, resume=True)
    finetune = resumed.stages[1]
    assert finetune["resumed_from_step"] == 2 and finetune["steps"] == 5
    assert resumed.stages[0] == full.stages[0] | {"seconds": resumed.stages[0]["seconds"],
                                                 "tokens_per_second": resumed.stages[0]["tokens_per_second"]}
    assert finetune["last_loss"] == pytest.approx(full.stages[1]["last_loss"], rel=1e-5)
    a, b = _weights(full.model_dir), _weights(resumed.model_dir)
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max() < 1e-6, name
    assert not (out / "checkpoints" / "finetune").exists(), "checkpoints of a completed stage are removed"


def test_resume_refuses_a_changed_config(tiny_data, tiny_st_model, tmp_path):
    out = tmp_path / "run"
    config = config_from_dict(_raw(tiny_data, tiny_st_model, out))
    with pytest.raises(StopRequested):
        train(config, should_stop=lambda step: True)
    changed = _raw(tiny_data, tiny_st_model, out)
    changed["finetune"]["lr"] = 5e-4
    with pytest.raises(InvalidInputError, match="different configuration") as err:
        train(config_from_dict(changed), resume=True)
    # The message names what changed (a forgotten --set override shows up here), and only that.
    assert re.search(r"\(finetune\.lr: [0-9.e-]+ in the run, 0\.0005 now\); resume with the same file and the "
                     r"same --set overrides", str(err.value)), str(err.value)


def test_config_differences_leave_out_bookkeeping_and_keys_added_at_their_default(tiny_data, tiny_st_model,
                                                                                  tmp_path):
    from retriever.training.config import config_differences

    config = config_from_dict(_raw(tiny_data, tiny_st_model, tmp_path / "run"))
    saved = json.loads(json.dumps(config.to_json()))
    assert config_differences(saved, config) == []
    saved["run"]["log_every"] = 999  # bookkeeping: not part of the fingerprint
    saved["router"] = {"epochs": 99}
    del saved["finetune"]["consistency_weight"]  # a run started before the key existed, now at its default
    assert config_differences(saved, config) == []
    saved["model"]["max_seq_length"] = 256
    saved["run"]["seed"] = config.run.seed + 1
    assert config_differences(saved, config) == [
        f"model.max_seq_length: 256 in the run, {config.model.max_seq_length} now",
        f"run.seed: {config.run.seed + 1} in the run, {config.run.seed} now"]
