"""Helpers for service tests: servers on port 0, channels, a gated encoder."""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from retriever.service.config import Limits, ServiceConfig
from retriever.service.proto import retriever_pb2 as pb
from retriever.service.proto import retriever_pb2_grpc
from retriever.service.server import RetrieverServer

ADMIN_TOKEN = "admin-token-0123456789abcdef"
#: Call metadata carrying the admin token that :func:`publishing` servers expect on PublishIndex.
ADMIN = (("authorization", f"Bearer {ADMIN_TOKEN}"),)


def python_block(doc: str, marker: str) -> str:
    """The one ```python block of ``doc`` (a path from the repository root) that contains ``marker``."""
    text = (Path(__file__).resolve().parents[2] / doc).read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if marker in b]
    assert len(blocks) == 1, f"{doc} should have one python block with {marker!r}, found {len(blocks)}"
    return blocks[0]


def run_example(block: str, port: int) -> None:
    """Run a documented example as written, against the server on ``port`` instead of 50051."""
    assert "127.0.0.1:50051" in block, "a documented example should talk to the default address"
    exec(block.replace("127.0.0.1:50051", f"127.0.0.1:{port}"), {})  # the docs' own code


def publishing(root: Path) -> dict[str, Any]:
    """Server settings that turn PublishIndex on for indexes under ``root``."""
    return {"admin_token": ADMIN_TOKEN, "publish_roots": (root,)}


class GatedEncoder:
    """Wraps the real encoder; ``encode_queries`` blocks while ``gate`` is clear and records each call."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.calls: list[list[str]] = []
        self.fail: Exception | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode_queries(self, questions: Sequence[str], instructions: Any = None, show_progress: bool = False) -> Any:
        self.calls.append(list(questions))
        self.entered.set()
        if not self.gate.wait(30):
            raise TimeoutError("test gate never opened")
        if self.fail is not None:
            raise self.fail
        return self.inner.encode_queries(questions, instructions)


def occupy_worker(stub: retriever_pb2_grpc.RetrieverStub, gated: GatedEncoder) -> grpc.Future:
    """Close the gate and start one call that holds the batcher's worker until ``gated.gate.set()``."""
    gated.gate.clear()
    gated.entered.clear()
    busy = stub.Retrieve.future(request("keeps the worker busy"), timeout=60)
    if not gated.entered.wait(10):
        raise AssertionError("the worker never picked up the busy call")
    return busy


@contextmanager
def running_server(encoder: Any, indexes: Sequence[tuple[str, Path]], load: bool = True,
                   limits: Limits | None = None, **settings: Any) -> Iterator[RetrieverServer]:
    config = ServiceConfig(port=0, use_gpu=False, limits=limits or Limits(), **settings)
    server = RetrieverServer(config, list(indexes), encoder=encoder)
    server.start()
    try:
        if load:
            server.load()
        yield server
    finally:
        server.stop(grace=0)


@contextmanager
def channel_to(server: RetrieverServer) -> Iterator[grpc.Channel]:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield channel
    finally:
        channel.close()


def stub_for(channel: grpc.Channel) -> retriever_pb2_grpc.RetrieverStub:
    return retriever_pb2_grpc.RetrieverStub(channel)


def request(query: str = "who played in the band", top_k: int = 5, **fields: Any) -> pb.RetrieveRequest:
    return pb.RetrieveRequest(query=query, top_k=top_k, **fields)


def copy_index(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.005) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    import time

    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)
