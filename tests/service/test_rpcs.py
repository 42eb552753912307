"""Every RPC over a real channel: Retrieve, RetrieveBatch, GetIndexInfo, PublishIndex, and the client."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from retriever.client import RemoteError, RetrieverClient
from retriever.index import Index, Manifest
from retriever.instructions import general_instruction, source_instruction
from retriever.records import Source
from retriever.router import ROUTER_PRIOR
from retriever.service.proto import retriever_pb2 as pb
from tests.service.helpers import (
    ADMIN,
    channel_to,
    copy_index,
    publishing,
    python_block,
    request,
    run_example,
    running_server,
    stub_for,
)


def test_retrieve_returns_sorted_hits_with_generation_and_model(stub, server):
    response = stub.Retrieve(request("what type of music does rick witter make", top_k=7))
    assert len(response.hits) == 7
    scores = [h.score for h in response.hits]
    assert scores == sorted(scores, reverse=True)
    assert len({h.unit_id for h in response.hits}) == 7
    assert response.index == "tiny" and response.generation == 1
    assert response.model == server.registry.encoder.name
    assert response.server_seconds > 0
    assert all(h.text == "" and h.record_id for h in response.hits)
    # The default model saved its prompts, so a query without instruction gets the general one.
    assert server.registry.encoder.instruction_tuned
    assert response.instruction == general_instruction()
    assert list(response.sources) == [] and not response.sources_resolved


def test_with_text_returns_the_embedded_text(stub, tiny_index):
    response = stub.Retrieve(request(top_k=3, with_text=True))
    for hit in response.hits:
        assert hit.text == tiny_index.store.texts[hit.unit_id]
        assert hit.title == tiny_index.store.titles[hit.unit_id]
        assert hit.record_id == tiny_index.store.record_ids[hit.unit_id]


def test_models_without_saved_prompts_get_the_bare_question(stub, server, monkeypatch):
    single = stub.Retrieve(request("population of the city", top_k=3, sources=[pb.SOURCE_INFOBOX]))
    assert single.instruction == source_instruction(Source.INFOBOX)
    monkeypatch.setattr(server.registry.encoder, "instruction_tuned", False)  # as the zero-shot model
    plain = stub.Retrieve(request("population of the city", top_k=3))
    assert plain.instruction == ""
    single = stub.Retrieve(request("population of the city", top_k=3, sources=[pb.SOURCE_INFOBOX]))
    assert single.instruction == ""


def test_sources_filter_exactly(stub):
    response = stub.Retrieve(request("population of the city", top_k=10, sources=[pb.SOURCE_TABLE, pb.SOURCE_KB]))
    assert response.hits and {h.source for h in response.hits} <= {pb.SOURCE_TABLE, pb.SOURCE_KB}
    assert list(response.sources) == [pb.SOURCE_TABLE, pb.SOURCE_KB] and not response.sources_resolved
    single = stub.Retrieve(request("population of the city", top_k=10, sources=[pb.SOURCE_INFOBOX]))
    assert {h.source for h in single.hits} == {pb.SOURCE_INFOBOX}
    assert single.instruction == source_instruction(Source.INFOBOX)


def test_instruction_naming_sources_is_resolved_and_reported(stub):
    response = stub.Retrieve(request("when was he born", top_k=10,
                                     instruction="retrieve evidence from tables and infoboxes"))
    assert list(response.sources) == [pb.SOURCE_TABLE, pb.SOURCE_INFOBOX] and response.sources_resolved
    assert {h.source for h in response.hits} <= {pb.SOURCE_TABLE, pb.SOURCE_INFOBOX}
    assert response.instruction == "retrieve evidence from tables and infoboxes"
    # The bundled model ships a source router, so the default resolution reads with it and says how sure it is.
    assert response.HasField("sources_confidence") and 0.0 < response.sources_confidence <= 1.0


def test_a_router_threshold_set_on_the_server_decides_what_filters(encoder, tiny_index_dir):
    with running_server(encoder, [("tiny", tiny_index_dir)], router_threshold=1.0) as srv, \
            channel_to(srv) as channel:
        response = stub_for(channel).Retrieve(request("when was he born", top_k=5,
                                                      instruction="retrieve evidence from tables and infoboxes"))
    # read as before (the confidence is reported) but never sure enough at 1.0: no filter, the sources
    # read are preferred instead (the default router prior times the confidence)
    assert not response.sources and not response.sources_resolved
    assert response.HasField("sources_confidence") and response.sources_confidence < 1.0
    assert list(response.preferred_sources) == [pb.SOURCE_TABLE, pb.SOURCE_INFOBOX]
    assert response.preferred_bonus == pytest.approx(ROUTER_PRIOR * response.sources_confidence, rel=1e-5)
    with running_server(encoder, [("tiny", tiny_index_dir)], router_threshold=1.0, router_prior=0.0) as srv, \
            channel_to(srv) as channel:
        off = stub_for(channel).Retrieve(request("when was he born", top_k=5,
                                                 instruction="retrieve evidence from tables and infoboxes"))
    assert not off.sources and not off.preferred_sources and off.preferred_bonus == 0.0


def test_rules_resolution_reports_no_confidence(encoder, tiny_index_dir):
    with running_server(encoder, [("tiny", tiny_index_dir)], resolution="rules") as srv, \
            channel_to(srv) as channel:
        response = stub_for(channel).Retrieve(request("when was he born", top_k=5,
                                                      instruction="anything but tables"))
    assert list(response.sources) == [pb.SOURCE_TABLE] and response.sources_resolved  # the regexes miss "but"
    assert not response.HasField("sources_confidence")


def test_sources_confidence_round_trips() -> None:
    from retriever.query import SearchResult
    from retriever.service.convert import result_from_proto, result_to_proto

    generation = SimpleNamespace(name="tiny", number=3)
    for confidence in (0.8125, None):
        result = SearchResult([], (Source.TEXT, Source.KB), True, "anything but tables", sources_confidence=confidence)
        message = pb.RetrieveResponse.FromString(result_to_proto(result, False, generation, "m", 0.1)
                                                 .SerializeToString())
        back = result_from_proto(message)
        assert back.sources_confidence == confidence and back.sources == (Source.TEXT, Source.KB) and back.resolved
        assert back.as_search_result().sources_confidence == confidence
        assert back.preferred_sources == () and back.preferred_bonus == 0.0
    preferring = SearchResult([], (), False, "maybe tables?", sources_confidence=0.625,
                              preferred_sources=(Source.TABLE, Source.INFOBOX), preferred_bonus=0.125)
    back = result_from_proto(pb.RetrieveResponse.FromString(
        result_to_proto(preferring, False, generation, "m", 0.1).SerializeToString()))
    assert back.as_search_result() == preferring


def test_encoder_only_resolution_does_not_filter(encoder, tiny_index_dir):
    with running_server(encoder, [("tiny", tiny_index_dir)], resolution="encoder-only") as srv, \
            channel_to(srv) as channel:
        response = stub_for(channel).Retrieve(request("when was he born", top_k=40,
                                                      instruction="retrieve evidence from tables"))
    assert list(response.sources) == [] and not response.sources_resolved
    assert len({h.source for h in response.hits}) > 1


def test_score_threshold_drops_low_hits(stub):
    full = stub.Retrieve(request(top_k=10))
    cut = full.hits[4].score
    response = stub.Retrieve(request(top_k=10, score_threshold=cut))
    assert [h.unit_id for h in response.hits] == [h.unit_id for h in full.hits if h.score >= cut]
    assert 0 < len(response.hits) < 10


def test_retrieve_batch_answers_in_order_like_single_calls(stub):
    requests = [request("music genre of the band", top_k=3),
                request("table of appearances in 1994", top_k=5, sources=[pb.SOURCE_TABLE]),
                request("spouse of the senator", top_k=2, instruction="from infobox sources", with_text=True)]
    batch = stub.RetrieveBatch(pb.RetrieveBatchRequest(requests=requests))
    assert len(batch.responses) == 3 and batch.server_seconds > 0
    for req, got in zip(requests, batch.responses, strict=True):
        single = stub.Retrieve(req)
        assert [(h.unit_id, h.record_id) for h in got.hits] == [(h.unit_id, h.record_id) for h in single.hits]
        assert [h.score for h in got.hits] == pytest.approx([h.score for h in single.hits], abs=1e-6)
        assert list(got.sources) == list(single.sources)


def test_get_index_info_reports_the_manifest(stub, tiny_index_dir):
    manifest = Manifest.read(tiny_index_dir)
    info = stub.GetIndexInfo(pb.GetIndexInfoRequest())
    assert info.default_index == "tiny" and info.model == manifest.model_name
    (entry,) = info.indexes
    assert entry.name == "tiny" and entry.generation == 1 and entry.is_default
    assert entry.total_units == manifest.total_units
    assert {pb.Source.Name(c.source): c.units for c in entry.counts} == {
        f"SOURCE_{k.upper()}": v for k, v in manifest.counts.items() if v}
    assert dict(entry.prompts) == manifest.prompts
    assert entry.model_checksum == manifest.model_checksum and entry.dimension == manifest.dimension
    assert entry.factory == manifest.factory and entry.corpus_fingerprint == manifest.corpus_fingerprint
    assert len(entry.shards) == len(manifest.shards)
    one = stub.GetIndexInfo(pb.GetIndexInfoRequest(index="tiny"))
    assert [i.name for i in one.indexes] == ["tiny"]
    with pytest.raises(grpc.RpcError) as err:
        stub.GetIndexInfo(pb.GetIndexInfoRequest(index="nope"))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND


def test_publish_new_generation_and_new_name(encoder, tiny_index_dir, alt_index_dir, tmp_path):
    root = Path(os.path.commonpath([tmp_path, alt_index_dir]))
    with running_server(encoder, [("tiny", tiny_index_dir)], **publishing(root)) as srv, channel_to(srv) as channel:
        stub = stub_for(channel)
        copy = copy_index(tiny_index_dir, tmp_path / "tiny-copy")
        published = stub.PublishIndex(pb.PublishIndexRequest(index="tiny", path=str(copy)), metadata=ADMIN)
        assert published.info.generation == 2 and published.previous_generation == 1
        assert published.info.is_default and published.load_seconds > 0
        assert stub.Retrieve(request()).generation == 2
        added = stub.PublishIndex(pb.PublishIndexRequest(index="alt", path=str(alt_index_dir)), metadata=ADMIN)
        assert added.info.generation == 1 and added.previous_generation == 0 and not added.info.is_default
        alt_ids = set(Index.load(alt_index_dir, use_gpu=False).store.record_ids)
        response = stub.Retrieve(request(index="alt", top_k=5))
        assert response.index == "alt" and response.generation == 1
        assert {h.record_id for h in response.hits} <= alt_ids
        assert [i.name for i in stub.GetIndexInfo(pb.GetIndexInfoRequest()).indexes] == ["tiny", "alt"]


def test_client_wraps_every_rpc(server, tiny_index_dir, tmp_path):
    with RetrieverClient(f"127.0.0.1:{server.port}", timeout=30) as client:
        result = client.retrieve("spouse of the senator", sources=["infobox"], top_k=3, with_text=True)
        assert len(result.hits) == 3 and all(h.source is Source.INFOBOX and h.text for h in result.hits)
        assert result.sources == (Source.INFOBOX,) and result.index == "tiny" and result.generation >= 1
        from retriever.query import Query

        batch = client.retrieve_batch([Query("a", k=2), Query("b", sources=(Source.KB,), k=2)])
        assert [len(r.hits) for r in batch] == [2, 2] and batch[1].hits[0].source is Source.KB
        info = client.index_info()
        assert info.indexes[0].name == "tiny"
        with pytest.raises(RemoteError) as err:
            client.retrieve("   ")
        assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT and "query" in err.value.details
        with pytest.raises(RemoteError) as err:
            client.publish("tiny", tmp_path / "missing")
        assert err.value.code is grpc.StatusCode.PERMISSION_DENIED and "admin token" in err.value.details


def test_the_async_client_answers_as_the_sync_one(server, tmp_path):
    import asyncio
    import socket

    from retriever.client import AsyncRetrieverClient
    from retriever.query import Query

    address = f"127.0.0.1:{server.port}"
    queries = [Query("spouse of the senator", sources=(Source.INFOBOX,), k=3), Query("b", sources=(Source.KB,), k=2)]
    with RetrieverClient(address, timeout=30) as client:
        one = client.retrieve("spouse of the senator", sources=["infobox"], top_k=3, with_text=True)
        batch = client.retrieve_batch(queries)

    def ids(results):
        return [[h.unit_id for h in r.hits] for r in results]

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{sock.getsockname()[1]}"

    async def run() -> None:
        async with AsyncRetrieverClient(address, timeout=30) as client:
            info = await client.wait_until_ready(timeout=10)
            assert info.indexes[0].name == "tiny"
            many = await asyncio.gather(*(client.retrieve("spouse of the senator", sources=["infobox"], top_k=3,
                                                          with_text=True) for _ in range(4)))
            assert ids(many) == ids([one] * 4) and many[0].hits[0].text == one.hits[0].text
            assert ids(await client.retrieve_batch(queries)) == ids(batch)
            assert ids([r async for r in client.retrieve_stream(queries)]) == ids(batch)
            async for first in client.retrieve_stream(queries * 16, window=1):  # leaving early cancels the call
                assert ids([first]) == ids(batch[:1])
                break
            with pytest.raises(RemoteError) as err:
                await client.retrieve("   ")
            assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT and "query" in err.value.details
            with pytest.raises(RemoteError) as err:
                await client.publish("tiny", tmp_path / "missing")
            assert err.value.code is grpc.StatusCode.PERMISSION_DENIED
        async with AsyncRetrieverClient(closed, retries=0) as client:
            with pytest.raises(RemoteError) as err:
                await client.wait_until_ready(timeout=60, connect_seconds=1)
            assert err.value.code is grpc.StatusCode.UNAVAILABLE and "cannot connect" in err.value.details

    asyncio.run(run())


def test_the_async_example_in_the_service_docs_runs(server, capsys):
    run_example(python_block("docs/SERVICE.md", "AsyncRetrieverClient("), server.port)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("?")[0] for line in lines] == ["When did the M864 projectile enter service", "Who founded the club"]
    assert all(line.count("'") == 6 for line in lines)  # three record ids each


def test_group_by_record_over_grpc_returns_k_distinct_records(stub, server):
    plain = stub.Retrieve(request("how many goals did he score in the season", top_k=10, sources=[pb.SOURCE_TABLE]))
    assert len({h.record_id for h in plain.hits}) < 10  # rows of one table crowd the plain top-10
    grouped = stub.Retrieve(request("how many goals did he score in the season", top_k=3, sources=[pb.SOURCE_TABLE],
                                    group_by_record=True))
    assert len(grouped.hits) == 3 and len({h.record_id for h in grouped.hits}) == 3
    assert grouped.hits[0].unit_id == plain.hits[0].unit_id  # the best record's best unit leads
    two = stub.Retrieve(request("how many goals did he score in the season", top_k=3, sources=[pb.SOURCE_TABLE],
                                group_by_record=True, max_per_record=2))
    records = list(dict.fromkeys(h.record_id for h in two.hits))
    assert len(records) == 3 and len(two.hits) > 3
    assert all(sum(h.record_id == r for h in two.hits) <= 2 for r in records)


def test_history_resolves_a_follow_up_and_the_response_says_what_was_searched(stub, server):
    follow_up = request("where was she born?", top_k=3, sources=[pb.SOURCE_KB],
                        history=[pb.Turn(question="Tell me about Uta Barth.")])
    response = stub.Retrieve(follow_up)
    assert response.resolved_query == "where was she born? Uta Barth"
    assert response.hits[0].title == "Uta Barth"
    bare = stub.Retrieve(request("where was she born?", top_k=3, sources=[pb.SOURCE_KB]))
    assert bare.resolved_query == "where was she born?" and bare.hits[0].title != "Uta Barth"
    standalone = stub.Retrieve(request("where was Mary Chase born?", top_k=3, sources=[pb.SOURCE_KB],
                                       history=[pb.Turn(question="Tell me about Uta Barth.")]))
    assert standalone.resolved_query == "where was Mary Chase born?"
    batch = stub.RetrieveBatch(pb.RetrieveBatchRequest(requests=[follow_up, follow_up]))
    assert [r.resolved_query for r in batch.responses] == ["where was she born? Uta Barth"] * 2
    assert [h.unit_id for h in batch.responses[0].hits] == [h.unit_id for h in response.hits]
    with RetrieverClient(f"127.0.0.1:{server.port}", timeout=30) as client:
        result = client.retrieve("where was she born?", sources=["kb"], top_k=3,
                                 history=["Who directed it?", ("Tell me about Uta Barth.", "a photographer")])
        assert result.text == "where was she born? Uta Barth" and result.as_search_result().text == result.text
        assert [h.unit_id for h in result.hits] == [h.unit_id for h in response.hits]


def test_wait_until_ready_waits_for_a_loading_server_and_not_for_a_closed_port(encoder, tiny_index_dir):
    import socket
    import threading
    import time

    with running_server(encoder, [("tiny", tiny_index_dir)], load=False) as server:
        with RetrieverClient(f"127.0.0.1:{server.port}", timeout=5, retries=0) as client:
            with pytest.raises(RemoteError) as early:
                client.index_info()
            assert early.value.code == grpc.StatusCode.UNAVAILABLE  # listening, not loaded
            loader = threading.Timer(1.0, server.load)
            loader.start()
            try:
                info = client.wait_until_ready(timeout=60)
            finally:
                loader.join()
            assert [i.name for i in info.indexes] == ["tiny"]
            with pytest.raises(RemoteError):  # still loading after the timeout: the last UNAVAILABLE
                with running_server(encoder, [("tiny", tiny_index_dir)], load=False) as other, \
                        RetrieverClient(f"127.0.0.1:{other.port}", retries=0) as second:
                    second.wait_until_ready(timeout=1.5)

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with RetrieverClient(f"127.0.0.1:{port}", retries=0) as client, pytest.raises(RemoteError) as refused:
        client.wait_until_ready(timeout=120, connect_seconds=2)
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE and "cannot connect" in refused.value.details
    assert time.monotonic() - started < 10
