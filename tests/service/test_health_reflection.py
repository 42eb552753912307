"""Health transitions (NOT_SERVING until model, index and canary pass) and server reflection."""

from __future__ import annotations

import threading

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from retriever.errors import NotFoundError
from tests.service.helpers import GatedEncoder, channel_to, running_server, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def check(channel: grpc.Channel, service: str = "") -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def test_health_goes_serving_only_after_the_canary_and_not_serving_on_shutdown(encoder, tiny_index_dir):
    gated = GatedEncoder(encoder)
    gated.gate.clear()  # holds the canary query
    with running_server(gated, [("tiny", tiny_index_dir)], load=False) as srv, channel_to(srv) as channel:
        assert check(channel) == NOT_SERVING and check(channel, "retriever.v1.Retriever") == NOT_SERVING
        loader = threading.Thread(target=srv.load)
        loader.start()
        assert gated.entered.wait(30)  # model and index loaded, canary running
        assert check(channel) == NOT_SERVING
        gated.gate.set()
        loader.join(30)
        assert check(channel) == SERVING and check(channel, "retriever.v1.Retriever") == SERVING

        seen: list[int] = []
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)

        def follow() -> None:
            try:
                for update in watch:
                    seen.append(update.status)
            except grpc.RpcError:
                pass

        follower = threading.Thread(target=follow)
        follower.start()
        wait_until(lambda: seen == [SERVING])
        srv.stop(grace=1)
        follower.join(10)
    assert seen[:2] == [SERVING, NOT_SERVING]


def test_failed_load_stays_not_serving(encoder, tmp_path):
    with running_server(encoder, [("gone", tmp_path / "missing")], load=False) as srv, channel_to(srv) as channel:
        with pytest.raises(NotFoundError):
            srv.load()
        assert check(channel) == NOT_SERVING


def test_reflection_lists_the_service_and_describes_it(server):
    with channel_to(server) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                              timeout=10)
        names = {s.name for r in responses for s in r.list_services_response.service}
        assert {"retriever.v1.Retriever", "grpc.health.v1.Health"} <= names
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        service = pool.FindServiceByName("retriever.v1.Retriever")
        assert [m.name for m in service.methods] == ["Retrieve", "RetrieveBatch", "RetrieveStream", "GetIndexInfo",
                                                    "PublishIndex"]
        source = pool.FindEnumTypeByName("retriever.v1.Source")
        assert source.values_by_number[0].name == "SOURCE_UNSPECIFIED"
