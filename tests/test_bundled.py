"""Bundled models: packing, unpacking on first use, the shipped default."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from retriever import bundled
from retriever.bundled import (
    DEFAULT_MODEL,
    PACK_FILE,
    PACKED_WEIGHTS,
    PACKS_DIR,
    ZERO_SHOT_MODEL,
    bundled_model_dir,
    bundled_names,
    pack_model,
    unpack,
)
from retriever.encoder import Encoder, EncoderConfig
from retriever.errors import ModelError
from retriever.model_dir import model_checksum
from retriever.router import shipped_router_path

TEXTS = ["Eek! The Cat is an American-Canadian animated series.", "Jenson Button, was born in, Frome",
         "In Rainbows | Released: 10 October 2007 | Length: 42:39", "who founded the club?"]


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RETRIEVER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def zero_shot_pack(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("packs") / "zs"
    return out, pack_model(bundled_model_dir(ZERO_SHOT_MODEL), out, "int8")


def test_pack_is_a_quarter_of_the_weights_and_leaves_the_rest_as_saved(zero_shot_pack) -> None:
    out, meta = zero_shot_pack
    source = bundled_model_dir(ZERO_SHOT_MODEL)
    assert meta["packed_bytes"] < 0.27 * meta["float32_bytes"]
    assert meta["source_checksum"] == model_checksum(source)
    assert not (out / "model.safetensors").exists()
    assert (out / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()
    assert json.loads((out / PACK_FILE).read_text()) == meta


def test_unpack_gives_the_recorded_model_once_and_it_encodes_like_the_source(zero_shot_pack, cache) -> None:
    out, meta = zero_shot_pack
    target = unpack(out)
    assert target.parent == cache / "models" and meta["checksum"].startswith(target.name.rsplit("-", 1)[1])
    assert model_checksum(target) == meta["checksum"]
    mtime = (target / "model.safetensors").stat().st_mtime_ns
    assert unpack(out) == target and (target / "model.safetensors").stat().st_mtime_ns == mtime  # reused
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind
    packed = Encoder(EncoderConfig(model=str(target), show_progress=False)).encode_documents(TEXTS)
    source = Encoder(EncoderConfig(model=ZERO_SHOT_MODEL, show_progress=False)).encode_documents(TEXTS)
    assert float(np.min((packed * source).sum(axis=1))) >= 0.99


def test_a_damaged_pack_is_refused_and_nothing_is_left_in_the_cache(zero_shot_pack, cache, tmp_path) -> None:
    import shutil

    out, _ = zero_shot_pack
    damaged = Path(shutil.copytree(out, tmp_path / "damaged"))
    weights = damaged / PACKED_WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1000] ^= 0x01  # one int8 weight changes
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="damaged"):
        unpack(damaged)
    assert not list((cache / "models").iterdir())


def test_unknown_bundled_names_list_the_bundled_ones() -> None:
    with pytest.raises(ModelError, match="no bundled model 'bundled:nope'") as err:
        bundled_model_dir("bundled:nope")
    assert ZERO_SHOT_MODEL in str(err.value) and DEFAULT_MODEL in str(err.value)


def test_pack_refuses_bad_arguments(tmp_path) -> None:
    with pytest.raises(ModelError, match="quantization"):
        pack_model(bundled_model_dir(ZERO_SHOT_MODEL), tmp_path / "x", "int4")
    with pytest.raises(ModelError, match="no model.safetensors"):
        pack_model(tmp_path, tmp_path / "x")


def test_replacing_a_pack_that_carries_attributions_needs_them_in_the_new_model(tmp_path) -> None:
    model = tmp_path / "model"
    shutil.copytree(bundled_model_dir(ZERO_SHOT_MODEL), model)
    out = tmp_path / "pack"
    pack_model(model, out)
    (out / bundled.NOTICE_FILE).write_text("# attributions\n", encoding="utf-8")
    before = (out / PACKED_WEIGHTS).read_bytes()
    with pytest.raises(ModelError, match="NOTICE.md carries the attributions"):
        pack_model(model, out, overwrite=True)
    assert (out / PACKED_WEIGHTS).read_bytes() == before  # nothing replaced
    (model / bundled.NOTICE_FILE).write_text("# attributions, this model\n", encoding="utf-8")
    pack_model(model, out, overwrite=True)
    assert (out / bundled.NOTICE_FILE).read_text(encoding="utf-8") == "# attributions, this model\n"


def test_the_default_is_shipped_with_its_router_manifest_and_notice(cache) -> None:
    assert bundled_names()[0] == DEFAULT_MODEL
    pack = PACKS_DIR / DEFAULT_MODEL.removeprefix(bundled.PREFIX)
    meta = json.loads((pack / PACK_FILE).read_text())
    assert (pack / "training_manifest.json").is_file()
    notice = (pack / "NOTICE.md").read_text(encoding="utf-8")  # the training data's attributions travel with it
    assert all(name in notice for name in ("all-MiniLM-L6-v2", "OTT-QA", "FeTaQA", "TAT-QA", "InfoTabS", "CompMix"))
    target = bundled_model_dir(None)
    assert model_checksum(target) == meta["checksum"]
    assert shipped_router_path(meta["checksum"]).is_file(), "run `retriever train-router --model bundled:...`"
    prompts = json.loads((target / "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts.get("query"), "the default model is instruction-tuned: it saved its query prompt"
