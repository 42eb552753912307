"""Weight-space merge of two models, standalone (``merge-models``) and as stage 3's plain merge."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from retriever.cli.main import main
from retriever.errors import InvalidInputError
from retriever.training import config_from_dict, train
from retriever.training.merge import interpolate_models
from tests.training.conftest import tiny_config


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def _perturbed(model_dir: Path, out: Path, scale: float) -> Path:
    shutil.copytree(model_dir, out)
    tensors = _weights(out)
    generator = torch.Generator().manual_seed(3)
    changed = {k: (v + scale * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v)
               for k, v in tensors.items()}
    save_file(changed, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def test_interpolation_is_tensorwise_and_keeps_the_first_models_files(tiny_st_model, tmp_path: Path):
    first = tmp_path / "first"
    shutil.copytree(tiny_st_model, first)
    (first / "router.safetensors").write_bytes(b"made from the first model's weights")
    (first / "openvino").mkdir()
    other = _perturbed(tiny_st_model, tmp_path / "other", 0.1)
    tiny_st_model = first
    out = interpolate_models(tiny_st_model, other, 0.25, tmp_path / "merged")
    a, b, m = _weights(tiny_st_model), _weights(other), _weights(out)
    assert m.keys() == a.keys()
    for name in a:
        expected = 0.75 * a[name].float() + 0.25 * b[name].float() if a[name].is_floating_point() else a[name]
        torch.testing.assert_close(m[name].float(), expected.float(), rtol=1e-6, atol=1e-6)
        assert m[name].dtype == a[name].dtype
    assert (out / "modules.json").read_bytes() == (tiny_st_model / "modules.json").read_bytes()
    # the first model's router and exports were made from its weights, not the merged ones
    assert not (out / "router.safetensors").exists() and not (out / "openvino").exists()
    merge = json.loads((out / "training_manifest.json").read_text())["merge"]
    assert merge["weight"] == 0.25 and merge["first"]["path"] == str(tiny_st_model)
    # weight 0 gives the first model's weights back exactly
    zero = _weights(interpolate_models(tiny_st_model, other, 0.0, tmp_path / "zero"))
    assert all(torch.equal(zero[k], a[k]) for k in a)


def test_mismatched_models_are_refused_and_nothing_is_left_behind(tiny_st_model, tmp_path: Path):
    other = _perturbed(tiny_st_model, tmp_path / "other", 0.1)
    tensors = _weights(other)
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.dim() == 2)
    tensors[name] = tensors[name][:, :-1].contiguous()
    save_file(tensors, str(other / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(InvalidInputError, match=name):
        interpolate_models(tiny_st_model, other, 0.5, tmp_path / "merged")
    assert not (tmp_path / "merged").exists() and not (tmp_path / "merged.tmp").exists()
    with pytest.raises(InvalidInputError, match="between|\\[0, 1\\]"):
        interpolate_models(tiny_st_model, tiny_st_model, 1.5, tmp_path / "merged")
    with pytest.raises(InvalidInputError, match="not a model directory"):
        interpolate_models(tiny_st_model, tmp_path / "missing", 0.5, tmp_path / "merged")


def test_tokenizers_that_differ_only_in_their_last_calls_truncation_merge_and_others_do_not(tiny_st_model,
                                                                                            tmp_path: Path):
    other = _perturbed(tiny_st_model, tmp_path / "other", 0.1)
    tokenizer = json.loads((other / "tokenizer.json").read_text())
    tokenizer["truncation"] = {"direction": "Right", "max_length": 64, "strategy": "LongestFirst", "stride": 0}
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    interpolate_models(tiny_st_model, other, 0.5, tmp_path / "merged")  # two runs of one recipe
    tokenizer["model"]["vocab"]["[unused0]" if "[unused0]" in tokenizer["model"]["vocab"] else "[PAD]"] = 99999
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(InvalidInputError, match="tokenizer.json"):
        interpolate_models(tiny_st_model, other, 0.5, tmp_path / "again")


def test_merge_models_command(tiny_st_model, tmp_path: Path, capsys):
    other = _perturbed(tiny_st_model, tmp_path / "other", 0.1)
    out = tmp_path / "merged"
    assert main(["merge-models", str(tiny_st_model), str(other), "--weight", "0.5", "--out", str(out)]) == 0
    assert "model:" in capsys.readouterr().out and (out / "model.safetensors").is_file()
    assert main(["merge-models", str(tiny_st_model), str(other), "--weight", "0.5", "--out", str(out)]) != 0
    assert "--overwrite" in capsys.readouterr().err


def test_plain_merge_stage_equals_two_standalone_runs_merged(tiny_data, tiny_st_model, tmp_path: Path):
    finetune = {"source_loss_weight": 1.0, "counterfactual_prob": 0.3}
    merged = train(config_from_dict(tiny_config(
        tiny_data, tiny_st_model, tmp_path / "merged", run={"stages": ["finetune"]},
        finetune={**finetune, "plain_merge_weight": 0.4})))
    instructed = train(config_from_dict(tiny_config(
        tiny_data, tiny_st_model, tmp_path / "instructed", run={"stages": ["finetune"]}, finetune=finetune)))
    plain = train(config_from_dict(tiny_config(
        tiny_data, tiny_st_model, tmp_path / "plain", run={"stages": ["finetune"]},
        finetune={"source_loss_weight": 0.0, "counterfactual_prob": 0.0})))

    stages = tmp_path / "merged" / "stages"
    for name, standalone in (("finetune-instructed", instructed), ("finetune-plain", plain)):
        ours, theirs = _weights(stages / name), _weights(standalone.model_dir)
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), f"{name} differs from a standalone run"
    a, b, m = _weights(instructed.model_dir), _weights(plain.model_dir), _weights(merged.model_dir)
    assert any(not torch.equal(a[k], b[k]) for k in a), "the source term changed nothing"
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(m[k], torch.lerp(a[k], b[k], 0.4), rtol=1e-6, atol=1e-6)
    assert [s["stage"] for s in merged.stages] == ["finetune", "finetune-plain"]
    assert merged.stages[0]["merged"]["plain_merge_weight"] == 0.4


def test_plain_merge_resumes_inside_the_plain_run(tiny_data, tiny_st_model, tmp_path: Path):
    from retriever.training import StopRequested

    def raw(out: Path) -> dict:
        return tiny_config(tiny_data, tiny_st_model, out, run={"stages": ["finetune"], "checkpoint_every": 2},
                           finetune={"steps": 4, "source_loss_weight": 1.0, "plain_merge_weight": 0.5})

    full = train(config_from_dict(raw(tmp_path / "full")))
    out = tmp_path / "interrupted"
    calls = {"n": 0}

    def stop_in_plain(step: int) -> bool:
        calls["n"] += 1
        return calls["n"] == 4 + 2  # the instructed run's 4 steps, then the plain run's step 2

    with pytest.raises(StopRequested) as info:
        train(config_from_dict(raw(out)), should_stop=stop_in_plain)
    assert info.value.step == 2 and (out / "checkpoints" / "finetune-plain").is_dir()
    assert not (out / "stages" / "finetune").exists(), "no merged model before both runs finish"
    resumed = train(config_from_dict(raw(out)), resume=True)
    assert resumed.stages[1]["resumed_from_step"] == 2
    a, b = _weights(full.model_dir), _weights(resumed.model_dir)
    for name in a:
        assert (a[name] - b[name]).abs().max() < 1e-6, name


def _toml(raw: dict) -> str:
    """The tiny config as TOML (values are scalars or lists; JSON literals are valid TOML there)."""
    lines = []
    for section, values in raw.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def test_train_command_reports_the_merged_stage(tiny_data, tiny_st_model, tmp_path: Path, capsys):
    raw = tiny_config(tiny_data, tiny_st_model, tmp_path / "run", run={"stages": ["finetune"]},
                      finetune={"source_loss_weight": 1.0, "plain_merge_weight": 0.25})
    config = tmp_path / "train.toml"
    config.write_text(_toml(raw), encoding="utf-8")
    assert main(["train", "--config", str(config), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"model: {tmp_path / 'run' / 'model'}" in out
    finetune = next(line for line in out.splitlines() if line.strip().startswith("finetune "))
    assert "3 steps" in finetune and "merged with finetune-plain, 0.25 on it" in finetune
    assert any(line.strip().startswith("finetune-plain ") for line in out.splitlines())
