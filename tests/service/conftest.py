"""Service fixtures: real servers on port 0 over the shared tiny index, and real channels."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retriever.service.proto import retriever_pb2_grpc
from retriever.service.server import RetrieverServer
from tests.conftest import sample_records, write_jsonl
from tests.service.helpers import channel_to, running_server, stub_for

#: Records per source type of the "alt" index: none of them is in the tiny corpus.
ALT_PER_SOURCE = {"text": 25, "table": 2, "kb": 25, "infobox": 8}


@pytest.fixture(scope="session")
def alt_index_dir(tmp_path_factory: pytest.TempPathFactory, tiny_records: list[dict], encoder: Any) -> Path:
    """A second small index over records disjoint from the tiny corpus (a distinguishable generation)."""
    from retriever.index import BuildConfig, build_index

    taken = {r["id"] for r in tiny_records}
    counts: dict[str, int] = {}
    chosen = []
    for record in sample_records():
        source = record["source"]
        if record["id"] in taken or (source == "table" and len(record["rows"]) > 12):
            continue
        if counts.get(source, 0) < ALT_PER_SOURCE[source]:
            counts[source] = counts.get(source, 0) + 1
            chosen.append(record)
    root = tmp_path_factory.mktemp("alt")
    out = root / "alt"
    build_index(BuildConfig(corpus=write_jsonl(root / "alt.jsonl", chosen), out=out), encoder)
    return out


@pytest.fixture(scope="module")
def server(encoder: Any, tiny_index_dir: Path) -> Iterator[RetrieverServer]:
    with running_server(encoder, [("tiny", tiny_index_dir)]) as srv:
        yield srv


@pytest.fixture(scope="module")
def stub(server: RetrieverServer) -> Iterator[retriever_pb2_grpc.RetrieverStub]:
    with channel_to(server) as channel:
        yield stub_for(channel)
