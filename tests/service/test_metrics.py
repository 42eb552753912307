"""Prometheus metrics: a server with a metrics port, some calls (one refused), then a real scrape."""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from retriever.service.proto import retriever_pb2 as pb
from tests.service.helpers import channel_to, request, running_server, stub_for


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name → {sorted labels: value} from ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode("utf-8")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_metrics_endpoint_reports_calls_batches_hits_and_state(encoder, tiny_index_dir):
    with running_server(encoder, [("tiny", tiny_index_dir)], metrics_port=0) as server:
        assert server.metrics_port and server.metrics_port != server.port
        with channel_to(server) as channel:
            stub = stub_for(channel)
            ok = [stub.Retrieve(request("who played in the band", top_k=4)) for _ in range(2)]
            tables = stub.Retrieve(request("population of the city", top_k=3,
                                           instruction="retrieve evidence from tables"))
            batch = stub.RetrieveBatch(pb.RetrieveBatchRequest(requests=[request("a", top_k=2), request("b", top_k=3)]))
            stub.GetIndexInfo(pb.GetIndexInfoRequest())
            with pytest.raises(grpc.RpcError) as refused:
                stub.Retrieve(request("   "))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        m = scrape(server.metrics_port)

    assert m["retriever_requests_total"][(("code", "OK"), ("method", "Retrieve"))] == 3
    assert m["retriever_requests_total"][(("code", "INVALID_ARGUMENT"), ("method", "Retrieve"))] == 1
    assert m["retriever_requests_total"][(("code", "OK"), ("method", "RetrieveBatch"))] == 1
    assert m["retriever_requests_total"][(("code", "OK"), ("method", "GetIndexInfo"))] == 1
    assert m["retriever_errors_total"] == {(("code", "INVALID_ARGUMENT"),): 1}
    assert m["retriever_request_seconds_count"][(("method", "Retrieve"),)] == 4
    assert 0 < m["retriever_request_seconds_sum"][(("method", "Retrieve"),)] < 60
    assert m["retriever_request_seconds_count"][(("method", "RetrieveBatch"),)] == 1

    # The canary query at load is a batch too: 1 + 3 Retrieve + 1 RetrieveBatch (2 queries).
    assert m["retriever_batch_size_count"][()] == 5
    assert m["retriever_batch_size_sum"][()] == 6
    assert m["retriever_encode_seconds_count"][()] == 5 and m["retriever_search_seconds_count"][()] == 5
    assert m["retriever_encode_seconds_sum"][()] > 0 and m["retriever_search_seconds_sum"][()] > 0
    # the stages of the 4 calls that reached the batcher (3 Retrieve, 1 RetrieveBatch; not the refused one)
    stages = {labels[0][1]: value for labels, value in m["retriever_call_stage_seconds_count"].items()}
    assert stages == {"admit": 4, "queue": 4, "batch": 4, "reply": 4}
    assert m["retriever_call_stage_seconds_sum"][(("stage", "batch"),)] > 0

    returned: dict[str, int] = {}
    for response in [*ok, tables, *batch.responses]:
        for hit in response.hits:
            name = pb.Source.Name(hit.source).removeprefix("SOURCE_").lower()
            returned[name] = returned.get(name, 0) + 1
    assert {labels[0][1]: value for labels, value in m["retriever_hits_total"].items()} == returned
    assert list(tables.sources) == [pb.SOURCE_TABLE] and tables.sources_resolved
    assert m["retriever_resolved_sources_total"] == {(("source", "table"),): 1}

    assert m["retriever_queue_depth"] == {(): 0}
    assert m["retriever_index_generation"] == {(("index", "tiny"),): 1}
    for name in ("expired", "cancelled", "rejected", "over_budget", "dropped_after_encoding"):
        assert m[f"retriever_batcher_{name}_total"] == {(): 0}, name


def test_each_server_has_its_own_registry(encoder, tiny_index_dir):
    with running_server(encoder, [("a", tiny_index_dir)], metrics_port=0) as first, \
            running_server(encoder, [("b", tiny_index_dir)], metrics_port=0) as second:
        with channel_to(first) as channel:
            stub_for(channel).Retrieve(request(top_k=1))
        assert first.metrics_port and second.metrics_port
        one, two = scrape(first.metrics_port), scrape(second.metrics_port)
    assert one["retriever_requests_total"] == {(("code", "OK"), ("method", "Retrieve")): 1}
    assert "retriever_requests_total" not in two
    assert one["retriever_index_generation"] == {(("index", "a"),): 1}
    assert two["retriever_index_generation"] == {(("index", "b"),): 1}


def test_metrics_are_off_by_default(server):
    assert server.metrics is None and server.metrics_port is None


def test_unauthenticated_refusals_are_counted(encoder, tiny_index_dir):
    token = "query-token-0123456789abcdef"
    with running_server(encoder, [("tiny", tiny_index_dir)], metrics_port=0, token=token) as server:
        with channel_to(server) as channel:
            stub = stub_for(channel)
            for metadata in (None, (("authorization", "Bearer wrong-token-0123456789"),)):
                with pytest.raises(grpc.RpcError) as refused:
                    stub.Retrieve(request(top_k=1), metadata=metadata)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError):
                stub.GetIndexInfo(pb.GetIndexInfoRequest())
            stub.Retrieve(request(top_k=1), metadata=(("authorization", f"Bearer {token}"),))
        assert server.metrics_port
        m = scrape(server.metrics_port)
    assert m["retriever_requests_total"] == {
        (("code", "UNAUTHENTICATED"), ("method", "Retrieve")): 2,
        (("code", "UNAUTHENTICATED"), ("method", "GetIndexInfo")): 1,
        (("code", "OK"), ("method", "Retrieve")): 1}
    assert m["retriever_errors_total"] == {(("code", "UNAUTHENTICATED"),): 3}
    assert m["retriever_request_seconds_count"] == {(("method", "Retrieve"),): 1}  # refusals are not timed
