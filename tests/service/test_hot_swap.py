"""Hot swap: corrupt or hostile builds are refused before the swap, and swaps under load lose no call."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import faiss
import grpc
import pytest

from retriever.client import RemoteError, RetrieverClient
from retriever.index import Index
from retriever.index.manifest import Manifest
from retriever.index.store import UNITS_NAME, UnitStore
from retriever.service.proto import retriever_pb2 as pb
from tests.conftest import edit_manifest, rehash
from tests.service.helpers import (
    ADMIN,
    ADMIN_TOKEN,
    channel_to,
    copy_index,
    publishing,
    request,
    running_server,
    stub_for,
)


def truncate(d: Path) -> None:
    f = d / "text.faiss"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def flip_bit(d: Path) -> None:
    f = d / "text.faiss"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x10
    f.write_bytes(bytes(data))


def append_bytes(d: Path) -> None:
    with (d / UNITS_NAME).open("ab") as fh:
        fh.write(b"\0" * 8)


def missing_file(d: Path) -> None:
    (d / "kb.faiss").unlink()


def wrong_hash(d: Path) -> None:
    edit_manifest(d, lambda m: m["files"][0].update(sha256="0" * 64))


def other_model(d: Path) -> None:
    edit_manifest(d, lambda m: m.update(model_checksum="f" * 64))


def wrong_dimension(d: Path) -> None:
    edit_manifest(d, lambda m: m.update(dimension=m["dimension"] * 2))


def malformed_manifest(d: Path) -> None:
    (d / "manifest.json").write_text("{\"format_version\": 1,")


def shuffled_units(d: Path) -> None:
    """Unit store no longer lines up with the shards, though every hash is consistent."""
    store = UnitStore.open(d / UNITS_NAME, Manifest.read(d).total_units)
    units = [store.unit(i) for i in range(len(store))]
    units[0], units[-1] = units[-1], units[0]
    UnitStore.from_units(units).write(d / UNITS_NAME)
    rehash(d)


def evil_source(d: Path) -> None:
    edit_manifest(d, lambda m: m["shards"][2].update(source="evil"))


def negated_kb_vectors(d: Path) -> None:
    """Every kb vector negated, hashes rewritten: only the data canary sees it."""
    index = Index.load(d, use_gpu=False)
    vectors = -index.shards.shards["kb"].flat_vectors()
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    faiss.write_index(flat, str(d / "kb.faiss"))
    rehash(d)


CORRUPTIONS = [truncate, flip_bit, append_bytes, missing_file, wrong_hash, other_model, wrong_dimension,
               malformed_manifest, shuffled_units, evil_source, negated_kb_vectors]


def test_bad_builds_are_refused_and_the_old_generation_keeps_serving(encoder, tiny_index_dir, tmp_path):
    root = Path(os.path.commonpath([tmp_path, tiny_index_dir]))
    with running_server(encoder, [("tiny", tiny_index_dir)], **publishing(root)) as srv, channel_to(srv) as channel:
        stub = stub_for(channel)
        before = [h.unit_id for h in stub.Retrieve(request(top_k=5)).hits]
        for corrupt in CORRUPTIONS:
            bad = copy_index(tiny_index_dir, tmp_path / corrupt.__name__)
            corrupt(bad)
            with pytest.raises(grpc.RpcError) as err:
                stub.PublishIndex(pb.PublishIndexRequest(index="tiny", path=str(bad)), timeout=60, metadata=ADMIN)
            assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION, (corrupt.__name__, err.value.details())
            assert str(tmp_path) not in err.value.details()
            if corrupt is shuffled_units:
                assert "unit store" in err.value.details()
            if corrupt is negated_kb_vectors:
                assert "canary" in err.value.details()
            after = stub.Retrieve(request(top_k=5))
            assert after.generation == 1 and [h.unit_id for h in after.hits] == before, corrupt.__name__
        with pytest.raises(grpc.RpcError) as err:
            stub.PublishIndex(pb.PublishIndexRequest(index="tiny", path=str(tmp_path / "nothing")), timeout=60,
                              metadata=ADMIN)
        assert err.value.code() is grpc.StatusCode.NOT_FOUND and str(tmp_path) not in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.PublishIndex(pb.PublishIndexRequest(index="bad/name", path=str(tiny_index_dir)), timeout=60,
                              metadata=ADMIN)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert stub.GetIndexInfo(pb.GetIndexInfoRequest()).indexes[0].generation == 1


CLIENTS = 8
NEW_GENERATIONS = 5


def test_hot_swap_under_load_loses_no_call_and_never_mixes_generations(encoder, tiny_index_dir, alt_index_dir,
                                                                         tmp_path):
    stores = {"tiny": Index.load(tiny_index_dir, use_gpu=False).store,
              "alt": Index.load(alt_index_dir, use_gpu=False).store}
    assert not set(stores["tiny"].record_ids) & set(stores["alt"].record_ids)
    # generation g serves the tiny build when g is odd, the alt build when even; each publish is a fresh copy.
    plan = {1: "tiny"} | {g: "alt" if g % 2 == 0 else "tiny" for g in range(2, NEW_GENERATIONS + 2)}
    sources = {"tiny": tiny_index_dir, "alt": alt_index_dir}
    words = ["music", "band", "album", "population", "born", "river", "film", "team", "season", "capital"]
    answers: list[tuple[int, list[tuple[int, str]]]] = []
    failures: list[str] = []
    stop = threading.Event()

    def client_loop(seed: int, address: str) -> None:
        rng = random.Random(seed)
        with RetrieverClient(address, timeout=60) as client:
            while not stop.is_set():
                query = " ".join(rng.sample(words, 3))
                chosen = rng.choice([(), ("text",), ("kb", "infobox"), ("table",)])
                try:
                    result = client.retrieve(query, sources=chosen, top_k=rng.randint(1, 10))
                except RemoteError as exc:
                    failures.append(str(exc))
                    continue
                answers.append((result.generation, [(h.unit_id, h.record_id) for h in result.hits]))

    with running_server(encoder, [("tiny", tiny_index_dir)], **publishing(tmp_path)) as srv:
        address = f"127.0.0.1:{srv.port}"
        threads = [threading.Thread(target=client_loop, args=(i, address)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        with RetrieverClient(address, timeout=120, token=ADMIN_TOKEN) as admin:
            for generation in range(2, NEW_GENERATIONS + 2):
                time.sleep(0.4)
                build = copy_index(sources[plan[generation]], tmp_path / f"gen{generation}")
                assert admin.publish("tiny", build).generation == generation
            time.sleep(0.4)
        stop.set()
        for t in threads:
            t.join(60)
        batches = srv.batcher.stats.batches
        queries = srv.batcher.stats.queries

    assert failures == []
    seen = {generation for generation, _ in answers}
    assert len(seen) >= 3, seen
    for generation, hits in answers:
        store = stores[plan[generation]]
        assert all(store.record_ids[unit] == record for unit, record in hits), generation
    assert len(answers) > 50
    assert queries > batches  # concurrent calls were batched together
