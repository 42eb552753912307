"""`retriever serve` as a real process: SIGTERM drains calls in flight and exits 0; `query` and `publish` CLIs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from retriever.cli.main import main
from retriever.service.proto import retriever_pb2 as pb
from tests.service.helpers import ADMIN_TOKEN, copy_index, request, stub_for

ROOT = Path(__file__).resolve().parents[2]


def wait_serving(address: str, timeout: float = 180.0) -> None:
    end = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < end:
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise AssertionError(f"{address} never became SERVING")


def poll_health_and_queries(channel: grpc.Channel, seen: list[str]) -> None:
    """Every 20 ms: a health check, and a query while health says NOT_SERVING; until the port closes."""
    health = health_pb2_grpc.HealthStub(channel)
    stub = stub_for(channel)
    while True:
        try:
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        except grpc.RpcError:
            seen.append("port closed")
            return
        seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(status))
        if status == health_pb2.HealthCheckResponse.NOT_SERVING:
            try:
                stub.Retrieve(request("during shutdown", top_k=1), timeout=5)
                seen.append("query answered")
            except grpc.RpcError as exc:
                seen.append(f"query {exc.code().name}")
        time.sleep(0.02)


def test_serve_query_publish_and_sigterm_drain(tiny_index_dir, tmp_path, capsys, monkeypatch):
    env = {**os.environ, "RETRIEVER_CACHE_DIR": str(tmp_path / "cache"), "RETRIEVER_MAX_TOP_K": "50",
           "RETRIEVER_ADMIN_TOKEN": ADMIN_TOKEN, "RETRIEVER_PUBLISH_ROOTS": str(tmp_path)}
    monkeypatch.setenv("RETRIEVER_ADMIN_TOKEN", ADMIN_TOKEN)  # read by `retriever publish`
    process = subprocess.Popen(
        [sys.executable, "-m", "retriever", "serve", "--index", f"tiny={tiny_index_dir}", "--port", "0",
         "--grace", "20", "--no-progress"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        end = time.monotonic() + 120
        port = None
        while port is None and time.monotonic() < end and process.poll() is None:
            found = [m for line in list(lines) if (m := re.search(r"listening on 127\.0\.0\.1:(\d+)", line))]
            port = int(found[0].group(1)) if found else None
            time.sleep(0.1)
        assert port, "".join(lines)
        address = f"127.0.0.1:{port}"
        wait_serving(address)

        assert main(["query", "music of the band", "--server", address, "-k", "3", "--json"]) == 0
        hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [h["rank"] for h in hits] == [1, 2, 3] and all(h["record_id"] for h in hits)
        assert main(["query", "population", "--server", address, "--source", "kb", "-k", "2"]) == 0
        out = capsys.readouterr().out
        assert "index tiny generation 1" in out and "sources: kb (requested)" in out
        assert main(["query", "x", "--server", address, "-k", "51"]) == 1  # the env limit (50) applies
        assert main(["publish", "tiny", str(copy_index(tiny_index_dir, tmp_path / "g2")), "--server", address]) == 0
        assert "generation 2 now serving" in capsys.readouterr().out

        with grpc.insecure_channel(address) as channel:
            stub = stub_for(channel)
            # Open the connection first: a call still connecting when SIGTERM lands is refused
            # (UNAVAILABLE, GOAWAY), which is right for the server but not what this test checks.
            stub.Retrieve(request("warm up", top_k=1), timeout=30)
            big = pb.RetrieveBatchRequest(requests=[request(f"question number {i} about music", top_k=50)
                                                    for i in range(256)])
            in_flight = stub.RetrieveBatch.future(big, timeout=60)
            seen: list[str] = []  # a 20 ms health poller and a query sender, through the shutdown
            polling = threading.Thread(target=poll_health_and_queries, args=(channel, seen), daemon=True)
            polling.start()
            time.sleep(0.3)
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            answered = in_flight.result()
            assert process.wait(60) == 0
            exited = time.monotonic() - signalled
            polling.join(10)
        assert len(answered.responses) == 256 and all(r.generation == 2 for r in answered.responses)
        assert any("shutting down" in line for line in lines)
        assert exited < 20 + 5
        # SERVING, then NOT_SERVING while new queries are refused, and only then the port closes
        assert seen[0] == "SERVING" and "NOT_SERVING" in seen, seen
        first_down = seen.index("NOT_SERVING")
        assert "SERVING" not in seen[first_down:] and "query UNAVAILABLE" in seen[first_down:], seen
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
