"""Shared fixtures: the bundled encoder and a tiny index built once per test session."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from retriever.sample import SAMPLE_CORPUS, data_file

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"

#: Records per source type in the tiny corpus (≈150 units: small tables add a few rows each).
TINY_PER_SOURCE = {"text": 40, "table": 4, "kb": 50, "infobox": 15}


def gpu_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if gpu_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU present")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def sample_records() -> list[dict]:
    with gzip.open(data_file(SAMPLE_CORPUS), "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def edit_manifest(directory: Path, change: Callable[[dict], object]) -> None:
    """Apply ``change`` to an index directory's parsed ``manifest.json`` and write it back."""
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def rehash(directory: Path) -> None:
    """Make every file entry of the manifest agree with the file on disk (a tamperer's last step)."""
    from retriever.index.files import sha256_file

    def change(data: dict) -> None:
        for entry in data["files"]:
            entry["bytes"] = (directory / entry["name"]).stat().st_size
            entry["sha256"] = sha256_file(directory / entry["name"])

    edit_manifest(directory, change)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_records() -> list[dict]:
    taken: dict[str, int] = {}
    out = []
    for record in sample_records():
        source = record["source"]
        if source == "table" and len(record["rows"]) > 12:
            continue
        if taken.get(source, 0) < TINY_PER_SOURCE[source]:
            taken[source] = taken.get(source, 0) + 1
            out.append(record)
    return out


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory, tiny_records: list[dict]) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "tiny.jsonl", tiny_records)


@pytest.fixture(scope="session")
def encoder():
    from retriever.encoder import Encoder, EncoderConfig

    return Encoder(EncoderConfig(show_progress=False))


@pytest.fixture(scope="session")
def zero_shot_encoder():
    """The zero-shot all-MiniLM-L6-v2 (the default model before it was trained), for figures pinned with it."""
    from retriever.bundled import ZERO_SHOT_MODEL
    from retriever.encoder import Encoder, EncoderConfig

    return Encoder(EncoderConfig(model=ZERO_SHOT_MODEL, show_progress=False))


@pytest.fixture(scope="session")
def tiny_index_dir(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path, encoder) -> Path:
    from retriever.index import BuildConfig, build_index

    out = tmp_path_factory.mktemp("indexes") / "tiny"
    build_index(BuildConfig(corpus=tiny_corpus, out=out), encoder)
    return out


@pytest.fixture(scope="session")
def tiny_index(tiny_index_dir: Path):
    from retriever.index import Index

    return Index.load(tiny_index_dir)
