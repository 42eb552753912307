"""Bearer-token auth on every method but health, TLS, and the configuration rules."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from retriever.client import AsyncRetrieverClient, RemoteError, RetrieverClient
from retriever.errors import InvalidInputError
from retriever.service.config import ServiceConfig, build_config
from retriever.service.proto import retriever_pb2 as pb
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

TOKEN = "s3cret-token-0123456789abcdef"


@pytest.fixture(scope="module")
def auth_server(encoder, tiny_index_dir):
    with running_server(encoder, [("tiny", tiny_index_dir)], token=TOKEN) as srv:
        yield srv


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer wrong-token-0123456789abcdef"),),
                                      (("authorization", TOKEN),), (("authorization", f"bearer {TOKEN}x"),)],
                         ids=["none", "wrong", "no scheme", "suffix"])
def test_every_method_but_health_needs_the_token(auth_server, metadata):
    with channel_to(auth_server) as channel:
        stub = stub_for(channel)
        calls = [(stub.Retrieve, request()), (stub.RetrieveBatch, pb.RetrieveBatchRequest(requests=[request()])),
                 (stub.GetIndexInfo, pb.GetIndexInfoRequest()),
                 (stub.PublishIndex, pb.PublishIndexRequest(index="tiny", path="/nonexistent"))]
        for call, req in calls:
            with pytest.raises(grpc.RpcError) as err:
                call(req, metadata=metadata, timeout=10)
            assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert TOKEN not in err.value.details()
        raw = channel.unary_unary("/retriever.v1.Retriever/Retrieve", request_serializer=None,
                                  response_deserializer=None)
        with pytest.raises(grpc.RpcError) as err:
            raw(b"\xff\xff", metadata=metadata, timeout=10)
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=metadata, timeout=10)
        with pytest.raises(grpc.RpcError) as err:
            list(reflect)
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_the_right_token_is_accepted(auth_server):
    with RetrieverClient(f"127.0.0.1:{auth_server.port}", token=TOKEN) as client:
        assert client.retrieve("music of the band", top_k=2).hits
    with RetrieverClient(f"127.0.0.1:{auth_server.port}") as client, pytest.raises(RemoteError) as err:
        client.retrieve("music of the band")
    assert err.value.code is grpc.StatusCode.UNAUTHENTICATED


def test_non_loopback_bind_needs_auth_or_insecure():
    with pytest.raises(InvalidInputError, match="--insecure"):
        ServiceConfig(host="0.0.0.0")
    assert ServiceConfig(host="0.0.0.0", insecure=True).host == "0.0.0.0"
    assert ServiceConfig(host="0.0.0.0", token=TOKEN).token == TOKEN
    assert ServiceConfig(host="::1").host == "::1"
    with pytest.raises(InvalidInputError, match="at least 16"):
        ServiceConfig(token="short")


def test_environment_variables_and_flags():
    env = {"RETRIEVER_MAX_TOP_K": "7", "RETRIEVER_PORT": "6000", "RETRIEVER_ADMIN_TOKEN": ADMIN_TOKEN,
           "RETRIEVER_PUBLISH_ROOTS": "/srv/a:/srv/b", "RETRIEVER_RESOLUTION": "encoder-only"}
    config = build_config({"port": 7000, "max_batch": None}, env)
    assert config.limits.max_top_k == 7 and config.port == 7000 and config.admin_token == ADMIN_TOKEN
    assert config.publish_roots == (Path("/srv/a"), Path("/srv/b"))
    with pytest.raises(InvalidInputError, match="RETRIEVER_ALLOW_PUBLISH is no longer read"):
        build_config({}, {"RETRIEVER_ALLOW_PUBLISH": "1"})
    with pytest.raises(InvalidInputError, match="admin token must differ"):
        build_config({"token": TOKEN, "admin_token": TOKEN}, {})
    assert config.resolution.value == "encoder-only"
    with pytest.raises(InvalidInputError, match="RETRIEVER_MAX_TOP_K"):
        build_config({}, {"RETRIEVER_MAX_TOP_K": "many"})
    with pytest.raises(InvalidInputError, match="max_top_k"):
        build_config({"max_top_k": 0}, {})
    with pytest.raises(InvalidInputError, match="unknown service setting"):
        build_config({"max_topk": 3}, {})
    assert config.router_threshold is None
    assert build_config({}, {"RETRIEVER_ROUTER_THRESHOLD": "0.6"}).router_threshold == 0.6
    with pytest.raises(InvalidInputError, match="RETRIEVER_ROUTER_THRESHOLD"):
        build_config({}, {"RETRIEVER_ROUTER_THRESHOLD": "1.5"})
    assert config.router_prior is None and build_config({}, {"RETRIEVER_ROUTER_PRIOR": "0"}).router_prior == 0.0
    with pytest.raises(InvalidInputError, match=r"router prior \(--router-prior, RETRIEVER_ROUTER_PRIOR\) must be"):
        build_config({}, {"RETRIEVER_ROUTER_PRIOR": "-0.1"})


def test_limits_from_config_are_enforced(encoder, tiny_index_dir):
    config = build_config({"port": 0, "use_gpu": False}, {"RETRIEVER_MAX_TOP_K": "3"})
    with running_server(encoder, [("tiny", tiny_index_dir)], limits=config.limits) as srv, \
            channel_to(srv) as channel:
        stub = stub_for(channel)
        assert len(stub.Retrieve(request(top_k=3)).hits) == 3
        with pytest.raises(grpc.RpcError) as err:
            stub.Retrieve(request(top_k=4))
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "between 1 and 3" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.PublishIndex(pb.PublishIndexRequest(index="tiny", path=str(tiny_index_dir)))
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_tls_with_a_self_signed_certificate(encoder, tiny_index_dir, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    done = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                           "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                           "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip("openssl cannot create a test certificate here")
    with running_server(encoder, [("tiny", tiny_index_dir)], tls_cert=cert, tls_key=key, token=TOKEN) as srv:
        with RetrieverClient(f"localhost:{srv.port}", token=TOKEN, root_certificates=cert) as client:
            assert client.retrieve("music of the band", top_k=1).hits
        with RetrieverClient(f"localhost:{srv.port}", token=TOKEN, timeout=5) as plain, \
                pytest.raises(RemoteError) as err:
            plain.retrieve("music of the band")
        assert err.value.code is grpc.StatusCode.UNAVAILABLE


def openssl(*args: str) -> None:
    done = subprocess.run(["openssl", *args], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"openssl cannot create test certificates here: {done.stderr[-200:]!r}")


def signed_pair(tmp_path, name: str, ca: tuple) -> tuple:
    key, csr, cert = tmp_path / f"{name}.key", tmp_path / f"{name}.csr", tmp_path / f"{name}.pem"
    ext = tmp_path / f"{name}.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[1]), "-CAkey", str(ca[0]), "-CAcreateserial",
            "-out", str(cert), "-days", "1", "-extfile", str(ext))
    return key, cert


def test_mutual_tls_requires_a_client_certificate(encoder, tiny_index_dir, tmp_path):
    ca = (tmp_path / "ca.key", tmp_path / "ca.pem")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca[0]), "-out", str(ca[1]),
            "-days", "1", "-subj", "/CN=test-ca")
    server_key, server_cert = signed_pair(tmp_path, "localhost", ca)
    client_key, client_cert = signed_pair(tmp_path, "client", ca)
    with running_server(encoder, [("tiny", tiny_index_dir)], tls_cert=server_cert, tls_key=server_key,
                        tls_client_ca=ca[1]) as srv:
        address = f"localhost:{srv.port}"
        with RetrieverClient(address, root_certificates=ca[1], client_certificate=client_cert,
                             client_key=client_key) as client:
            assert client.retrieve("music of the band", top_k=1).hits

        async def asynchronously() -> int:  # the asyncio client connects the same way
            async with AsyncRetrieverClient(address, root_certificates=ca[1], client_certificate=client_cert,
                                            client_key=client_key) as client:
                return len((await client.retrieve("music of the band", top_k=1)).hits)

        assert asyncio.run(asynchronously()) == 1
        with RetrieverClient(address, root_certificates=ca[1], timeout=5) as anonymous, \
                pytest.raises(RemoteError) as err:
            anonymous.retrieve("music of the band")
        assert err.value.code is grpc.StatusCode.UNAVAILABLE
    with pytest.raises(InvalidInputError, match="need TLS"):
        ServiceConfig(tls_client_ca=ca[1])


def test_publishing_needs_the_admin_token_and_stays_inside_the_publish_roots(encoder, tiny_index_dir, tmp_path):
    root = tmp_path / "builds"
    good = copy_index(tiny_index_dir, root / "g2")
    outside = copy_index(tiny_index_dir, tmp_path / "outside")
    (root / "not-an-index").mkdir()
    (root / "escape").symlink_to(outside)
    with running_server(encoder, [("tiny", tiny_index_dir)], token=TOKEN, **publishing(root)) as srv, \
            channel_to(srv) as channel:
        stub = stub_for(channel)
        query = (("authorization", f"Bearer {TOKEN}"),)

        def publish(path: Path, metadata) -> grpc.RpcError | pb.PublishIndexResponse:
            try:
                return stub.PublishIndex(pb.PublishIndexRequest(index="tiny", path=str(path)), metadata=metadata,
                                         timeout=60)
            except grpc.RpcError as exc:
                return exc

        # the query token does not publish; two authorization headers are refused even if one is right
        for metadata in [query, (), ADMIN + query, query + ADMIN, ADMIN + ADMIN]:
            assert publish(good, metadata).code() is grpc.StatusCode.UNAUTHENTICATED, metadata
        assert stub.Retrieve(request(), metadata=query).hits
        assert stub.Retrieve(request(), metadata=ADMIN).hits  # the admin token also queries
        with pytest.raises(grpc.RpcError) as err:
            stub.Retrieve(request(), metadata=query + query)
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        # missing, not an index, outside the roots (directly or through a link): one answer for all
        answers = [publish(path, ADMIN) for path in (root / "missing", root / "not-an-index", outside,
                                                       root / "escape", Path("/etc"), root / ".." / "outside")]
        assert {(a.code(), a.details()) for a in answers} == {
            (grpc.StatusCode.NOT_FOUND, "no index directory at that path under the server's publish roots")}
        assert publish(good, ADMIN).info.generation == 2


def test_publishing_is_off_without_an_admin_token(encoder, tiny_index_dir):
    with running_server(encoder, [("tiny", tiny_index_dir)], token=TOKEN) as srv, channel_to(srv) as channel:
        with pytest.raises(grpc.RpcError) as err:
            stub_for(channel).PublishIndex(pb.PublishIndexRequest(index="tiny", path=str(tiny_index_dir)),
                                           metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=30)
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED and "admin token" in err.value.details()


def test_metrics_and_log_settings_from_flags_and_variables():
    from retriever.cli.serve_commands import log_level

    assert build_config({}, {}).metrics_port is None and not build_config({}, {}).log_queries
    config = build_config({}, {"RETRIEVER_METRICS_PORT": "9100", "RETRIEVER_LOG_QUERIES": "yes"})
    assert config.metrics_port == 9100 and config.log_queries
    assert build_config({"metrics_port": 9200}, {"RETRIEVER_METRICS_PORT": "9100"}).metrics_port == 9200
    with pytest.raises(InvalidInputError, match="metrics port must differ"):
        build_config({"port": 9300, "metrics_port": 9300}, {})
    with pytest.raises(InvalidInputError, match="metrics port must be in"):
        build_config({"metrics_port": 70000}, {})
    assert log_level(None, {}) is None
    assert log_level(None, {"RETRIEVER_LOG_LEVEL": "warning"}) == "WARNING"
    assert log_level("DEBUG", {"RETRIEVER_LOG_LEVEL": "warning"}) == "DEBUG"
    with pytest.raises(InvalidInputError, match="RETRIEVER_LOG_LEVEL"):
        log_level(None, {"RETRIEVER_LOG_LEVEL": "loud"})


def test_latency_budget_from_flags_and_variables():
    import argparse

    from retriever.cli.serve_commands import parse_budget

    assert build_config({}, {}).latency_budget is None  # off by default
    assert build_config({}, {"RETRIEVER_LATENCY_BUDGET_MS": "auto"}).latency_budget == "auto"
    assert build_config({}, {"RETRIEVER_LATENCY_BUDGET_MS": "250"}).latency_budget == pytest.approx(0.25)
    assert build_config({"latency_budget_ms": "off"}, {"RETRIEVER_LATENCY_BUDGET_MS": "250"}).latency_budget is None
    for bad in ("0", "-5", "soon"):
        with pytest.raises(InvalidInputError, match="RETRIEVER_LATENCY_BUDGET_MS"):
            build_config({}, {"RETRIEVER_LATENCY_BUDGET_MS": bad})
        with pytest.raises(argparse.ArgumentTypeError, match="auto, off or milliseconds"):
            parse_budget(bad)
    with pytest.raises(InvalidInputError, match="latency budget"):
        build_config({"latency_budget_ms": True}, {})
    assert parse_budget("AUTO") == "auto" and parse_budget("120") == 120.0
