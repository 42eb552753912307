"""Every status code of the error table, over a real channel, with messages that name the field and limit."""

from __future__ import annotations

import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from retriever.client import RemoteError, RetrieverClient, retry_service_config
from retriever.errors import CorruptIndexError, InvalidInputError, NotFoundError, OverloadedError
from retriever.service.config import Limits
from retriever.service.errors import scrub, status_for
from retriever.service.proto import retriever_pb2 as pb
from tests.service.helpers import (
    GatedEncoder,
    channel_to,
    occupy_worker,
    request,
    running_server,
    stub_for,
    wait_until,
)

RETRIEVE = "/retriever.v1.Retriever/Retrieve"
LIMITS = Limits()

INVALID = [
    ("empty query", request(""), "query"),
    ("whitespace query", request(" \t\n "), "query"),
    ("oversize query", request("x" * (LIMITS.max_query_bytes + 1)), f"{LIMITS.max_query_bytes} bytes"),
    ("oversize multibyte query", request("é" * (LIMITS.max_query_bytes // 2 + 1)), "query"),
    ("oversize instruction", request(instruction="i" * (LIMITS.max_instruction_bytes + 1)), "instruction"),
    ("top_k 0", request(top_k=0), "top_k"),
    ("top_k -1", request(top_k=-1), "top_k"),
    ("top_k max+1", request(top_k=LIMITS.max_top_k + 1), f"between 1 and {LIMITS.max_top_k}"),
    ("top_k 2^31-1", request(top_k=2**31 - 1), "top_k"),
    ("unknown source", request(sources=[9]), "sources[0]: unknown source value 9"),
    ("unspecified source", request(sources=[pb.SOURCE_UNSPECIFIED]), "sources[0]: SOURCE_UNSPECIFIED"),
    ("duplicate source", request(sources=[pb.SOURCE_TABLE, pb.SOURCE_TABLE]), "sources[1]: duplicate"),
    ("NaN threshold", request(score_threshold=math.nan), "score_threshold"),
    ("bad index name", request(index="../etc/passwd"), "index"),
    ("unknown mode", request(mode=7), "mode: unknown value 7"),
    ("fusion without hybrid", request(mode=pb.SEARCH_MODE_BM25, fusion=pb.Fusion(rrf_k=10)),
     "fusion: only for SEARCH_MODE_HYBRID"),
    ("fusion depth max+1", request(mode=pb.SEARCH_MODE_HYBRID, fusion=pb.Fusion(depth=LIMITS.max_fusion_depth + 1)),
     f"fusion.depth: must be between 1 and {LIMITS.max_fusion_depth}"),
    ("negative rrf_k", request(mode=pb.SEARCH_MODE_HYBRID, fusion=pb.Fusion(rrf_k=-1)), "fusion.rrf_k"),
    ("zero weights", request(mode=pb.SEARCH_MODE_HYBRID, fusion=pb.Fusion(dense_weight=0, bm25_weight=0)),
     "must not both be 0"),
    ("mode the index lacks", request(mode=pb.SEARCH_MODE_BM25), "retriever build-lexical"),
    ("max_per_record without grouping", request(max_per_record=2), "max_per_record: only with group_by_record"),
    ("max_per_record 0", request(group_by_record=True, max_per_record=0), "max_per_record: must be between 1"),
    ("max_per_record max+1", request(group_by_record=True, max_per_record=LIMITS.max_top_k + 1),
     f"max_per_record: must be between 1 and {LIMITS.max_top_k}"),
    ("history turns max+1", request(history=[pb.Turn(question="q")] * (LIMITS.max_history_turns + 1)),
     f"history: {LIMITS.max_history_turns + 1} turns exceed the limit of {LIMITS.max_history_turns} "
     "(RETRIEVER_MAX_HISTORY_TURNS)"),
    ("empty history question", request(history=[pb.Turn(question="who?"), pb.Turn(question=" ", answer="a")]),
     "history[1].question: must not be empty"),
    ("oversize history answer", request(history=[pb.Turn(question="q", answer="a" * (LIMITS.max_turn_chars + 1))]),
     f"history[0].answer: {LIMITS.max_turn_chars + 1} characters exceed the limit of {LIMITS.max_turn_chars} "
     "(RETRIEVER_MAX_TURN_CHARS)"),
]


@pytest.mark.parametrize(("case", "req", "needle"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_requests_are_invalid_argument_naming_the_field(stub, case, req, needle):
    started = time.perf_counter()
    with pytest.raises(grpc.RpcError) as err:
        stub.Retrieve(req)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert needle in err.value.details()
    assert time.perf_counter() - started < 5


def test_batch_validation_names_the_request(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.RetrieveBatch(pb.RetrieveBatchRequest(requests=[request(), request(top_k=0)]))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "requests[1].top_k" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.RetrieveBatch(pb.RetrieveBatchRequest())
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "requests" in err.value.details()
    too_many = [request()] * (LIMITS.max_batch_queries + 1)
    with pytest.raises(grpc.RpcError) as err:
        stub.RetrieveBatch(pb.RetrieveBatchRequest(requests=too_many))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert str(LIMITS.max_batch_queries) in err.value.details()


def test_exotic_valid_unicode_is_answered(stub):
    response = stub.Retrieve(request("naïve Ωmega 東京 🙂 \u200b مرحبا", top_k=3, instruction="ℹ️ from tables"))
    assert len(response.hits) == 3


@pytest.mark.parametrize("payload", [b"\xff\xff\xff\xff", b"\x0a\x05ab", b"\x0a\x01\xff\x20\x05", b"\x20\xff"],
                         ids=["garbage", "truncated string", "invalid utf-8", "truncated varint"])
def test_malformed_bytes_are_invalid_argument(server, payload):
    with channel_to(server) as channel:
        raw = channel.unary_unary(RETRIEVE, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as err:
            raw(payload, timeout=10)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed RetrieveRequest" in err.value.details()


def test_unknown_index_is_not_found(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.Retrieve(request(index="missing"))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND and "missing" in err.value.details()


def test_not_ready_is_unavailable(encoder, tiny_index_dir):
    with running_server(encoder, [("tiny", tiny_index_dir)], load=False) as srv, channel_to(srv) as channel:
        stub = stub_for(channel)
        for call, req in ((stub.Retrieve, request()), (stub.GetIndexInfo, pb.GetIndexInfoRequest())):
            with pytest.raises(grpc.RpcError) as err:
                call(req, timeout=10)
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        srv.load()
        assert stub.Retrieve(request(), timeout=30).hits


def test_over_concurrency_cap_is_resource_exhausted_at_once(encoder, tiny_index_dir):
    gated = GatedEncoder(encoder)
    limits = Limits(max_concurrent_calls=2)
    with running_server(gated, [("tiny", tiny_index_dir)], limits=limits) as srv, channel_to(srv) as channel:
        stub = stub_for(channel)
        gated.gate.clear()
        pending = [stub.Retrieve.future(request(f"query {i}"), timeout=60) for i in range(2)]
        wait_until(lambda: srv.batcher.stats.in_flight == 2)
        started = time.perf_counter()
        with pytest.raises(grpc.RpcError) as err:
            stub.Retrieve(request("one too many"), timeout=10)
        rejected_in = time.perf_counter() - started
        gated.gate.set()
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert rejected_in < 1.0  # RELIABILITY C targets 50 ms; bounded loosely on a shared 2-core box
        assert all(f.result().hits for f in pending)


def test_over_queue_bound_is_resource_exhausted(encoder, tiny_index_dir):
    gated = GatedEncoder(encoder)
    limits = Limits(max_queued_queries=4, max_batch_queries=4)
    with running_server(gated, [("tiny", tiny_index_dir)], limits=limits) as srv, channel_to(srv) as channel:
        stub = stub_for(channel)
        busy = occupy_worker(stub, gated)
        queued = stub.RetrieveBatch.future(pb.RetrieveBatchRequest(requests=[request()] * 4), timeout=60)
        wait_until(lambda: srv.batcher.stats.in_flight == 2)
        with pytest.raises(grpc.RpcError) as err:
            stub.Retrieve(request("over the bound"), timeout=10)
        gated.gate.set()
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "limit 4" in err.value.details()
        assert busy.result().hits and len(queued.result().responses) == 4


def test_deadline_passed_in_queue_starts_no_work(encoder, tiny_index_dir):
    gated = GatedEncoder(encoder)
    with running_server(gated, [("tiny", tiny_index_dir)]) as srv, channel_to(srv) as channel:
        stub = stub_for(channel)
        busy = occupy_worker(stub, gated)
        with pytest.raises(grpc.RpcError) as err:
            stub.Retrieve(request("too late to answer"), timeout=0.3)
        assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        gated.gate.set()
        assert busy.result().hits
        wait_until(lambda: srv.batcher.stats.expired == 1)
        assert not any("too late to answer" in q for call in gated.calls for q in call)


def test_unexpected_errors_are_internal_with_an_id_and_no_path(encoder, tiny_index_dir):
    gated = GatedEncoder(encoder)
    with running_server(gated, [("tiny", tiny_index_dir)]) as srv, channel_to(srv) as channel:
        gated.fail = RuntimeError("cannot open /srv/secret/model.safetensors: Traceback (most recent call last)")
        with pytest.raises(grpc.RpcError) as err:
            stub_for(channel).Retrieve(request(), timeout=30)
    details = err.value.details()
    assert err.value.code() is grpc.StatusCode.INTERNAL and "error id" in details
    assert "/srv" not in details and "Traceback" not in details and "safetensors" not in details


def test_status_table_and_scrubbing():
    code, message = status_for(CorruptIndexError("/data/idx/gen7: text.faiss does not match its SHA-256"), "X")
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert message == "<path>: text.faiss does not match its SHA-256"
    assert status_for(NotFoundError("index directory not found: /a/b"), "X") == (
        grpc.StatusCode.NOT_FOUND, "index directory not found: <path>")
    assert status_for(OverloadedError("busy"), "X")[0] is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "tables/infoboxes" in scrub("from tables/infoboxes")
    code, message = status_for(KeyError("/home/user/.ssh/id_rsa"), "X")
    assert code is grpc.StatusCode.INTERNAL and "/home" not in message


def test_message_over_the_size_limit_is_resource_exhausted(encoder, tiny_index_dir):
    with running_server(encoder, [("tiny", tiny_index_dir)], limits=Limits(max_message_bytes=1024)) as srv, \
            channel_to(srv) as channel:
        stub = stub_for(channel)
        assert stub.Retrieve(request("x" * 500, top_k=1), timeout=30).hits
        with pytest.raises(grpc.RpcError) as err:
            stub.Retrieve(request("x" * 2000), timeout=30)
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_cancelled_call_starts_no_work_and_is_not_logged_as_an_error(encoder, tiny_index_dir, caplog):
    gated = GatedEncoder(encoder)
    with running_server(gated, [("tiny", tiny_index_dir)]) as srv, channel_to(srv) as channel:
        stub = stub_for(channel)
        busy = occupy_worker(stub, gated)
        abandoned = stub.Retrieve.future(request("nobody waits for this"), timeout=60)
        wait_until(lambda: srv.batcher.stats.in_flight == 2)
        with caplog.at_level("DEBUG", logger="retriever"):
            assert abandoned.cancel()
            time.sleep(0.2)  # let the server see the cancellation before the worker frees up
            gated.gate.set()
            assert busy.result().hits
            wait_until(lambda: srv.batcher.stats.cancelled == 1)
        assert not any("nobody waits for this" in q for call in gated.calls for q in call)
        assert not [r for r in caplog.records if r.levelname in ("ERROR", "WARNING")], caplog.text


def test_restart_on_the_same_files_gives_identical_results(encoder, tiny_index_dir):
    queries = [request(f"{word} of the band", top_k=8) for word in ("music", "members", "album", "tour")]
    answers = []
    for _ in range(2):
        with running_server(encoder, [("tiny", tiny_index_dir)]) as srv, channel_to(srv) as channel:
            stub = stub_for(channel)
            answers.append([[(h.unit_id, h.score) for h in stub.Retrieve(q).hits] for q in queries])
    assert answers[0] == answers[1]


def test_a_call_over_the_latency_budget_is_refused_before_parsing_and_held_briefly(encoder, tiny_index_dir,
                                                                                   caplog, monkeypatch):
    from retriever.service import requests as request_records

    monkeypatch.setattr(request_records, "refusals", request_records.RefusalSummary(period=3600))
    caplog.set_level(logging.DEBUG, logger="retriever.requests")
    gated = GatedEncoder(encoder)
    # a 1 ms budget: while the worker is busy, every query call is expected to end too late
    hold = Limits(refusal_hold_ms=60)  # not the default 25, so the setting is what is measured
    with running_server(gated, [("tiny", tiny_index_dir)], latency_budget_ms=1.0, limits=hold) as srv, \
            channel_to(srv) as channel:
        stub = stub_for(channel)
        busy = occupy_worker(stub, gated)
        raw = channel.unary_unary("/retriever.v1.Retriever/Retrieve")  # bytes in, bytes out
        for payload in (request("over the budget").SerializeToString(), b"\xff not a message"):
            started = time.perf_counter()
            with pytest.raises(grpc.RpcError) as err:
                raw(payload, timeout=10)
            refused_in = time.perf_counter() - started
            # refused before parsing: the malformed bytes get RESOURCE_EXHAUSTED, not INVALID_ARGUMENT
            assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
            assert "latency budget" in err.value.details()
            assert 0.060 <= refused_in < 1.0  # held, so a client re-sending at once is paced
        assert srv.batcher.stats.over_budget == 2
        # a refusal is one DEBUG line; INFO gets one summary line per period (here: the first refusal)
        refused = [r for r in caplog.records if r.name == "retriever.requests" and "RESOURCE_EXHAUSTED" in r.message]
        assert [r.levelno for r in refused].count(logging.DEBUG) == 2
        assert [r.getMessage() for r in refused if r.levelno == logging.INFO] == [
            "refused 1 call(s) over capacity (RESOURCE_EXHAUSTED), the last a Retrieve; each is logged at DEBUG"]
        gated.gate.set()
        assert busy.result().hits
        wait_until(lambda: srv.batcher.stats.in_flight == 0)  # the worker ends its batch after answering it
        assert stub.Retrieve(request("idle again"), timeout=30).hits  # an idle server admits any call


def test_a_call_admitted_and_then_failed_gives_its_admission_back(encoder, tiny_index_dir):
    # a 1 ms budget: only an idle server admits; an admission still counted makes it not idle
    with running_server(encoder, [("tiny", tiny_index_dir)], latency_budget_ms=1.0) as srv, \
            channel_to(srv) as channel:
        stub = stub_for(channel)
        raw = channel.unary_unary("/retriever.v1.Retriever/Retrieve")
        for _ in range(3):  # admitted at the door (idle), then refused by the parser
            with pytest.raises(grpc.RpcError) as err:
                raw(b"\xff not a message", timeout=10)
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.Retrieve(request("x", top_k=0), timeout=10)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert stub.Retrieve(request("admitted after the failures"), timeout=30).hits
        assert srv.batcher.stats.over_budget == 0
        assert srv.batcher.expected_seconds(1) == pytest.approx(srv.batcher.cost.seconds(1))  # nothing reserved


def test_client_backs_off_and_retries_a_rejected_call(encoder, tiny_index_dir):
    gated = GatedEncoder(encoder)
    with running_server(gated, [("tiny", tiny_index_dir)], limits=Limits(max_concurrent_calls=1)) as srv:
        address = f"127.0.0.1:{srv.port}"
        with RetrieverClient(address, retries=0) as impatient, RetrieverClient(address, retries=4) as patient:
            gated.gate.clear()
            busy = impatient.stub.Retrieve.future(request("keeps the only slot busy"), timeout=60)
            wait_until(lambda: srv.batcher.stats.in_flight == 1)
            with pytest.raises(RemoteError) as err:
                impatient.retrieve("refused at once without retries")
            assert err.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
            # The patient call's first attempt meets the full slot; its retries back off
            # (random waits up to 50, 100, 200, 400 ms) and one lands after the slot frees.
            with ThreadPoolExecutor(1) as pool:
                answer = pool.submit(patient.retrieve, "answered on a retry")
                time.sleep(0.03)
                gated.gate.set()
                assert answer.result(timeout=30).hits
            assert busy.result().hits


def test_retry_policy_covers_reads_only():
    config = json.loads(retry_service_config(9))["methodConfig"][0]
    assert {n["method"] for n in config["name"]} == {"Retrieve", "RetrieveBatch", "RetrieveStream", "GetIndexInfo"}
    assert config["retryPolicy"]["maxAttempts"] == 5
    assert set(config["retryPolicy"]["retryableStatusCodes"]) == {"RESOURCE_EXHAUSTED", "UNAVAILABLE"}


def test_an_expired_call_frees_its_concurrency_slot_at_its_deadline(encoder, tiny_index_dir):
    gated = GatedEncoder(encoder)
    with running_server(gated, [("tiny", tiny_index_dir)], limits=Limits(max_concurrent_calls=2)) as srv, \
            channel_to(srv) as channel:
        stub = stub_for(channel)
        busy = occupy_worker(stub, gated)  # one slot
        with pytest.raises(grpc.RpcError) as err:
            stub.Retrieve(request("expires"), timeout=0.3)  # the second slot, until its deadline
        assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(0.1)
        waiting = stub.Retrieve.future(request("takes the freed slot"), timeout=60)
        time.sleep(0.3)
        assert not waiting.done(), waiting.exception()  # accepted and waiting, not RESOURCE_EXHAUSTED
        gated.gate.set()
        assert busy.result().hits and waiting.result().hits



def test_a_refusal_hold_over_a_second_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="refusal_hold_ms must be at most 1000"):
        Limits(refusal_hold_ms=1001)
    with pytest.raises(InvalidInputError, match="refusal_hold_ms must be a positive integer"):
        Limits(refusal_hold_ms=0)
