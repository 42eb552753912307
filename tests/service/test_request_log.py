"""Request logs: one structured line per call on ``retriever.requests``; query texts only with log_queries."""

from __future__ import annotations

import json
import logging

import grpc
import pytest

from retriever.service.proto import retriever_pb2 as pb
from tests.service.helpers import GatedEncoder, channel_to, occupy_worker, request, running_server, stub_for, wait_until

QUERY = "which band did rick witter sing in"
INSTRUCTION = "find the musician's band"


def lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "retriever.requests"]


def calls(stub, caplog):
    """One OK Retrieve carrying an x-request-id, then one refused Retrieve; returns their two log records."""
    caplog.clear()
    ok, call = stub.Retrieve.with_call(request(QUERY, top_k=3, instruction=INSTRUCTION),
                                       metadata=(("x-request-id", "client-id-42"),))
    assert ("x-request-id", "client-id-42") in tuple(call.trailing_metadata())
    with pytest.raises(grpc.RpcError) as refused:
        stub.Retrieve(request(QUERY, top_k=0))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error_ids = [v for k, v in refused.value.trailing_metadata() if k == "x-request-id"]
    records = lines(caplog)
    assert len(records) == 2, [r.getMessage() for r in records]
    assert error_ids == [records[1].request["request_id"]]  # type: ignore[attr-defined]
    return ok, records


@pytest.mark.parametrize("log_queries", [False, True])
def test_one_line_per_call_with_fields_and_no_query_text_by_default(encoder, tiny_index_dir, caplog, log_queries):
    caplog.set_level(logging.INFO, logger="retriever.requests")
    with running_server(encoder, [("tiny", tiny_index_dir)], log_queries=log_queries) as server, \
            channel_to(server) as channel:
        ok, (good, bad) = calls(stub_for(channel), caplog)

    assert good.levelno == logging.INFO and bad.levelno == logging.INFO
    fields = json.loads(good.getMessage())
    assert fields == good.request  # type: ignore[attr-defined]
    assert fields["method"] == "Retrieve" and fields["request_id"] == "client-id-42" and fields["code"] == "OK"
    assert fields["index"] == "tiny" and fields["generation"] == 1
    assert fields["k"] == 3 and fields["mode"] == "dense"
    assert fields["sources"] == [] and fields["sources_resolved"] is False
    assert fields["hits"] == len(ok.hits) == 3
    assert 0 < fields["server_ms"] < 60_000
    stages = fields["stages_ms"]
    assert list(stages) == ["admit", "queue", "batch", "reply"] and min(stages.values()) >= 0
    assert sum(stages.values()) == pytest.approx(fields["server_ms"], abs=0.01)  # they split it, rounding aside

    error = json.loads(bad.getMessage())
    assert error["method"] == "Retrieve" and error["code"] == "INVALID_ARGUMENT"
    assert len(error["request_id"]) == 32 and error["request_id"] != "client-id-42"  # generated
    assert "hits" not in error and error["server_ms"] >= 0
    assert "stages_ms" not in error  # refused before it was queued

    if log_queries:
        assert fields["query"] == QUERY and fields["instruction"] == INSTRUCTION
    else:
        for record in (good, bad):
            assert QUERY not in record.getMessage() and INSTRUCTION not in record.getMessage()
            assert "query" not in record.request and "instruction" not in record.request  # type: ignore[attr-defined]


def test_batch_calls_log_one_line_with_per_request_lists(stub, caplog):
    caplog.set_level(logging.INFO, logger="retriever.requests")
    caplog.clear()
    response = stub.RetrieveBatch(pb.RetrieveBatchRequest(requests=[
        request("a", top_k=2), request("b", top_k=4, sources=[pb.SOURCE_KB])]))
    (record,) = lines(caplog)
    fields = json.loads(record.getMessage())
    assert fields["method"] == "RetrieveBatch" and fields["code"] == "OK"
    assert fields["k"] == [2, 4] and fields["index"] == ["tiny", "tiny"] and fields["generation"] == [1, 1]
    assert fields["sources"] == [[], ["kb"]] and fields["hits"] == [len(r.hits) for r in response.responses]


def test_malformed_request_ids_are_replaced(stub, caplog):
    caplog.set_level(logging.INFO, logger="retriever.requests")
    for bad in ("bad id with spaces", "x" * 129, "quote\"d"):
        caplog.clear()
        stub.Retrieve(request(top_k=1), metadata=(("x-request-id", bad),))
        (record,) = lines(caplog)
        assert record.request["request_id"] != bad  # type: ignore[attr-defined]
        assert len(record.request["request_id"]) == 32  # type: ignore[attr-defined]


def test_a_call_queued_behind_a_busy_batch_logs_the_wait_as_its_queue_stage(encoder, tiny_index_dir, caplog):
    import time

    caplog.set_level(logging.INFO, logger="retriever.requests")
    gated = GatedEncoder(encoder)
    with running_server(gated, [("tiny", tiny_index_dir)]) as server, channel_to(server) as channel:
        stub = stub_for(channel)
        busy = occupy_worker(stub, gated)
        caplog.clear()
        queued = stub.Retrieve.future(request(QUERY, top_k=2), metadata=(("x-request-id", "queued-call"),),
                                      timeout=60)
        wait_until(lambda: server.batcher.queued == 1)
        time.sleep(0.3)  # the batch in progress holds the worker this long after the call was queued
        gated.gate.set()
        assert busy.result().hits and queued.result().hits
    (record,) = [r for r in lines(caplog) if r.request["request_id"] == "queued-call"]  # type: ignore[attr-defined]
    stages = record.request["stages_ms"]  # type: ignore[attr-defined]
    assert stages["queue"] >= 300 and stages["queue"] > stages["batch"] and stages["queue"] > stages["admit"]
