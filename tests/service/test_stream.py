"""RetrieveStream: answers equal to Retrieve, in order; validation before work; the window; cancel and deadline."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from retriever.client import AsyncRetrieverClient, RemoteError, RetrieverClient
from retriever.query import Query
from retriever.records import Source
from retriever.service.config import Limits
from retriever.service.proto import retriever_pb2 as pb
from retriever.service.server import RetrieverServer
from tests.service.helpers import GatedEncoder, channel_to, request, running_server, stub_for, wait_until

#: Questions that differ in filter, instruction, k and threshold.
MIXED = [
    request("what type of music does rick witter make", top_k=7),
    request("population of the city", top_k=3, sources=[pb.SOURCE_TABLE, pb.SOURCE_KB]),
    request("when was he born", top_k=10, instruction="retrieve evidence from tables and infoboxes"),
    request("who founded the company", top_k=5, instruction=""),
    request("which team did he play for", top_k=4, score_threshold=0.2),
    request("capital of the country", top_k=6, sources=[pb.SOURCE_INFOBOX], with_text=True),
    request("who played in the band", top_k=2, group_by_record=True, max_per_record=2),
    request("album release date", top_k=8),
]
#: Big answers (every hit with its text), so HTTP/2 flow control holds few of them in the transport.
BIG = {"top_k": 100, "with_text": True}
#: A client channel whose HTTP/2 receive window stays at its initial size (no BDP probing growing
#: it), so what the transport buffers for a client that does not read stays small and fixed.
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0)]


@pytest.fixture(scope="module")
def gated(encoder: Any) -> GatedEncoder:
    return GatedEncoder(encoder)


@pytest.fixture(scope="module")
def gated_server(gated: GatedEncoder, tiny_index_dir: Any) -> Iterator[RetrieverServer]:
    limits = Limits(max_stream_queries=100, max_batch_queries=16, max_queued_queries=64)
    with running_server(gated, [("tiny", tiny_index_dir)], limits=limits, max_batch=8) as srv:
        yield srv


def encoded(gated: GatedEncoder) -> int:
    """Queries handed to the encoder so far (the canaries included)."""
    return sum(len(call) for call in gated.calls)


def stream_of(n: int, window: int | None = None, **fields: Any) -> pb.RetrieveStreamRequest:
    return pb.RetrieveStreamRequest(requests=[request(f"question number {i} about the band", **fields)
                                              for i in range(n)], window=window)


def request_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.request for r in caplog.records if r.name == "retriever.requests"]  # type: ignore[attr-defined]


def test_answers_equal_retrieve_per_query_in_request_order(stub, server):
    messages = list(stub.RetrieveStream(pb.RetrieveStreamRequest(requests=MIXED, window=3), timeout=60))
    assert [m.position for m in messages] == list(range(len(MIXED)))
    for message, single in zip(messages, MIXED, strict=True):
        expected = stub.Retrieve(single, timeout=60)
        got = message.response
        assert [(h.unit_id, h.record_id, h.part, h.text) for h in got.hits] == \
            [(h.unit_id, h.record_id, h.part, h.text) for h in expected.hits]
        assert [h.score for h in got.hits] == pytest.approx([h.score for h in expected.hits], abs=1e-5)
        assert (got.index, got.generation, got.model, got.instruction, list(got.sources), got.sources_resolved) == \
            (expected.index, expected.generation, expected.model, expected.instruction, list(expected.sources),
             expected.sources_resolved)
        assert got.hits and got.server_seconds > 0
    assert len(messages[2].response.sources) == 2 and messages[2].response.sources_resolved
    assert all(h.score >= 0.2 for h in messages[4].response.hits)

    with RetrieverClient(f"127.0.0.1:{server.port}") as client:
        queries = [Query("population of the city", k=3, sources=(Source.TABLE,)), Query("who played in the band")]
        streamed = list(client.retrieve_stream(queries))
        batch = client.retrieve_batch(queries)
    assert [[h.unit_id for h in r.hits] for r in streamed] == [[h.unit_id for h in r.hits] for r in batch]
    assert {h.source for h in streamed[0].hits} == {Source.TABLE} and len(streamed[1].hits) == 10


def test_an_invalid_request_fails_the_call_naming_its_position_before_any_encoding(gated_server, gated):
    with channel_to(gated_server) as channel:
        stub = stub_for(channel)
        before = encoded(gated)
        cases = [
            (pb.RetrieveStreamRequest(requests=[request(), request(), request(), request(top_k=0)]),
             "requests[3].top_k"),
            (pb.RetrieveStreamRequest(requests=[request(), request(), request(mode=pb.SEARCH_MODE_BM25)]),
             "requests[2]: mode bm25 needs"),
            (pb.RetrieveStreamRequest(requests=[request(), request(index="missing")]), "missing"),
            (pb.RetrieveStreamRequest(requests=[]), "requests: must hold at least one request"),
            (stream_of(101), "101 requests exceed the limit of 100 per call (RETRIEVER_MAX_STREAM_QUERIES)"),
            (pb.RetrieveStreamRequest(requests=[request()], window=0), "window: must be between 1 and 16"),
            (pb.RetrieveStreamRequest(requests=[request()], window=17), "window: must be between 1 and 16"),
        ]
        for message, expected in cases:
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.RetrieveStream(message, timeout=30))
            code = grpc.StatusCode.NOT_FOUND if expected == "missing" else grpc.StatusCode.INVALID_ARGUMENT
            assert refused.value.code() == code, refused.value.details()
            assert expected in refused.value.details()
        assert encoded(gated) == before
        # 100 requests are within the limit, and a window of 16 within its bound.
        assert len(list(stub.RetrieveStream(stream_of(100, top_k=1), timeout=60))) == 100


def test_a_slow_reader_keeps_the_server_within_the_window(gated_server, gated):
    window, total = 2, 60
    with grpc.insecure_channel(f"127.0.0.1:{gated_server.port}", options=SMALL_WINDOW) as channel:
        before = encoded(gated)
        calls_before = len(gated.calls)
        responses = stub_for(channel).RetrieveStream(stream_of(total, **BIG, window=window), timeout=60)
        received = [next(responses) for _ in range(3)]
        size = received[0].ByteSize()
        # The reader stops: the server can only get `window` queries ahead of what the transport took.
        stalled = encoded(gated) - before
        for _ in range(20):
            time.sleep(0.1)
            now = encoded(gated) - before
            if now == stalled and gated_server.batcher.stats.in_flight == 0:
                break
            stalled = now
        time.sleep(0.5)
        assert encoded(gated) - before == stalled  # no progress while the reader sleeps
        # Answers taken by the transport beyond the 3 read: the client's 64 KiB stream window of them,
        # the one being written, and one that the client library took ahead of the application.
        # (Seen on this machine: 8 encoded for 3 read, with ~30 KB answers and a window of 2.)
        buffered = 65535 // size + 2
        assert stalled <= 3 + buffered + window < total, (stalled, size)
        received += list(responses)
    assert [m.position for m in received] == list(range(total))
    assert all(len(m.response.hits) == len(received[0].response.hits) for m in received)
    assert max(len(call) for call in gated.calls[calls_before:]) <= window  # never more than the window at once
    assert encoded(gated) - before == total


async def _three_then_leave(address: str, queries: list[Query], window: int, caplog) -> list[Any]:
    """The asyncio client: leave ``async for`` after three answers, and wait (channel still open) for
    the server to log the call's end: the generator's finalization must cancel it."""
    got = []
    async with AsyncRetrieverClient(address) as client:
        async for result in client.retrieve_stream(queries, with_text=True, window=window):
            got.append(result)
            if len(got) == 3:
                break
        for _ in range(200):
            if request_lines(caplog):
                break
            await asyncio.sleep(0.05)
    return got


@pytest.mark.parametrize("client_kind", ["sync", "asyncio"])
def test_cancelling_mid_stream_stops_encoding(gated_server, gated, caplog, client_kind):
    caplog.set_level(logging.INFO, logger="retriever.requests")
    caplog.clear()
    total, window = 60, 2
    before = encoded(gated)
    queries = [Query(f"question {i} about music", k=100) for i in range(total)]
    address = f"127.0.0.1:{gated_server.port}"
    if client_kind == "asyncio":
        got = asyncio.run(_three_then_leave(address, queries, window, caplog))
        assert request_lines(caplog), "leaving the async for did not end the call"
    else:
        with RetrieverClient(address) as client:
            stream = client.retrieve_stream(queries, with_text=True, window=window)
            got = [next(stream) for _ in range(3)]
            stream.close()  # cancels the call
            wait_until(lambda: request_lines(caplog))
    wait_until(lambda: gated_server.batcher.stats.in_flight == 0)
    done = encoded(gated) - before
    time.sleep(0.5)
    assert encoded(gated) - before == done < total
    assert len(got) == 3
    (line,) = request_lines(caplog)
    assert line["method"] == "RetrieveStream" and line["code"] == "CANCELLED"
    assert line["queries"] == total and 3 <= line["answered"] <= done
    assert len(line["hits"]) == line["answered"] and len(line["k"]) == total


def test_a_deadline_mid_stream_keeps_the_answers_sent_and_encodes_no_more(gated_server, gated, caplog):
    caplog.set_level(logging.INFO, logger="retriever.requests")
    caplog.clear()
    total = 40
    before = encoded(gated)
    received = []
    with channel_to(gated_server) as channel:
        responses = stub_for(channel).RetrieveStream(stream_of(total, top_k=3, window=2), timeout=1.5)
        try:
            received.append(next(responses))
            gated.gate.clear()  # the next encoder call blocks past the deadline
            with pytest.raises(grpc.RpcError) as ended:
                for message in responses:
                    received.append(message)
            assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        finally:
            gated.gate.set()
    wait_until(lambda: gated_server.batcher.stats.in_flight == 0)
    wait_until(lambda: request_lines(caplog))
    assert [m.position for m in received] == list(range(len(received)))
    assert encoded(gated) - before < total
    (line,) = request_lines(caplog)
    assert line["code"] == "DEADLINE_EXCEEDED" and line["answered"] >= len(received) >= 1


def test_stream_calls_are_counted_in_metrics_and_logged(encoder, tiny_index_dir, caplog):
    from tests.service.test_metrics import scrape

    caplog.set_level(logging.INFO, logger="retriever.requests")
    caplog.clear()
    with running_server(encoder, [("tiny", tiny_index_dir)], metrics_port=0) as server:
        with channel_to(server) as channel:
            stub = stub_for(channel)
            messages = list(stub.RetrieveStream(pb.RetrieveStreamRequest(requests=MIXED[:5]), timeout=60))
            stub.Retrieve(request(top_k=2))
            with pytest.raises(grpc.RpcError):
                list(stub.RetrieveStream(pb.RetrieveStreamRequest(requests=[request(top_k=0)]), timeout=60))
        assert server.metrics_port is not None
        m = scrape(server.metrics_port)
    assert m["retriever_requests_total"][(("code", "OK"), ("method", "RetrieveStream"))] == 1
    assert m["retriever_requests_total"][(("code", "INVALID_ARGUMENT"), ("method", "RetrieveStream"))] == 1
    assert m["retriever_request_seconds_count"][(("method", "RetrieveStream"),)] == 2
    assert m["retriever_queries_total"][(("method", "RetrieveStream"),)] == 5
    assert m["retriever_queries_total"][(("method", "Retrieve"),)] == 1
    hits = sum(len(msg.response.hits) for msg in messages) + 2
    assert sum(m["retriever_hits_total"].values()) == hits

    ok, refused = (line for line in request_lines(caplog) if line["method"] == "RetrieveStream")
    assert json.loads(json.dumps(ok)) == ok
    assert ok["code"] == "OK" and ok["queries"] == ok["answered"] == 5
    assert ok["k"] == [r.top_k for r in MIXED[:5]] and ok["index"] == ["tiny"] * 5 and ok["generation"] == [1] * 5
    assert ok["hits"] == [len(msg.response.hits) for msg in messages]
    assert refused["code"] == "INVALID_ARGUMENT" and "answered" not in refused


def test_the_client_turns_a_refused_stream_into_a_remote_error(server):
    with RetrieverClient(f"127.0.0.1:{server.port}", retries=0) as client:
        with pytest.raises(RemoteError) as refused:
            list(client.retrieve_stream([Query("fine"), Query("fine", k=0)]))
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and "requests[1].top_k" in refused.value.details


def test_a_stream_holds_one_query_call_slot_until_it_ends(encoder, tiny_index_dir):
    with running_server(encoder, [("tiny", tiny_index_dir)], limits=Limits(max_concurrent_calls=1)) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}", options=SMALL_WINDOW) as channel:
        stub = stub_for(channel)
        responses = stub.RetrieveStream(stream_of(30, **BIG, window=1), timeout=60)
        assert next(responses).position == 0  # the stream is running; its reader stalls
        with pytest.raises(grpc.RpcError) as refused:
            stub.Retrieve(request(top_k=1), timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "calls in flight" in refused.value.details()
        responses.cancel()  # the handler may be parked in a send; the slot comes back anyway

        def retrieve_ok() -> bool:
            try:
                return bool(stub.Retrieve(request(top_k=1), timeout=30).hits)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                return False

        wait_until(retrieve_ok, timeout=10, interval=0.05)
