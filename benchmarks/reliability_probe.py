"""Reliability probe: deadlines and cancellations, reproduced the way the outside probe tried them.

    python benchmarks/reliability_probe.py                     # writes benchmarks/results/reliability_probe.json

An in-process server (so the probe can watch the worker) over the sample index, on loopback:

* **deadlines**: ``--clients`` threads send ``--deadline-queries`` Retrieve calls, each with a
  distinct question and a ``--deadline-ms`` deadline, while the worker is busy. For every call
  that came back DEADLINE_EXCEEDED, did the server start encoding it, or rank it, *after* the
  client had its answer? (The outside probe found 23 of 100 encoded and searched.)
* **cancellations**: ``--cancellations`` calls queued behind a busy worker are cancelled by their
  client. Each must end CANCELLED on the server, be logged below WARNING, and never be encoded.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retriever.encoder import Encoder, EncoderConfig  # noqa: E402
from retriever.sample import ensure_sample_index  # noqa: E402
from retriever.service.config import ServiceConfig  # noqa: E402
from retriever.service.proto import retriever_pb2 as pb  # noqa: E402
from retriever.service.proto import retriever_pb2_grpc  # noqa: E402
from retriever.service.server import RetrieverServer  # noqa: E402


class Watched:
    """The real encoder, recording when each query text started encoding; optionally held at a gate."""

    def __init__(self, inner: Encoder) -> None:
        self.inner = inner
        self.started: dict[str, float] = {}
        self.gate = threading.Event()
        self.gate.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode_queries(self, questions: Any, instructions: Any = None, show_progress: bool = False) -> Any:
        now = time.monotonic()
        for q in questions:
            self.started.setdefault(q, now)
        self.gate.wait(60)
        return self.inner.encode_queries(questions, instructions, show_progress=show_progress)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def probe_deadlines(server: RetrieverServer, watched: Watched, queries: int, clients: int,
                    deadline_ms: float) -> dict[str, Any]:
    assert server.registry is not None
    generation = server.registry.get("")
    ranked: dict[str, float] = {}
    rank = generation.searcher.rank

    def spy(planned: Any, vectors: Any) -> Any:
        now = time.monotonic()
        for p in planned:
            ranked.setdefault(p.query.text, now)
        return rank(planned, vectors)

    generation.searcher.rank = spy  # type: ignore[method-assign]
    answers: dict[str, tuple[str, float]] = {}
    lock = threading.Lock()

    def client(n: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = retriever_pb2_grpc.RetrieverStub(channel)
            stub.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=30)  # connect first
            for i in range(n, queries, clients):
                text = f"deadline probe question {i} about the band and its music"
                try:
                    stub.Retrieve(pb.RetrieveRequest(query=text, top_k=10), timeout=deadline_ms / 1000)
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                with lock:
                    answers[text] = (code, time.monotonic())

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(2.0)  # let the worker drain whatever it still had
    generation.searcher.rank = rank  # type: ignore[method-assign]
    expired = {t: at for t, (code, at) in answers.items() if code == "DEADLINE_EXCEEDED"}
    encoded_after = sum(1 for t, at in expired.items() if t in watched.started and watched.started[t] > at)
    ranked_after = sum(1 for t, at in expired.items() if t in ranked and ranked[t] > at)
    codes: dict[str, int] = {}
    for code, _ in answers.values():
        codes[code] = codes.get(code, 0) + 1
    return {"queries": queries, "clients": clients, "deadline_ms": deadline_ms, "codes": codes,
            "deadline_exceeded": len(expired), "encoding_started_after_the_caller_gave_up": encoded_after,
            "ranked_after_the_caller_gave_up": ranked_after}


def probe_cancellations(server: RetrieverServer, watched: Watched, count: int, records: Records) -> dict[str, Any]:
    assert server.batcher is not None
    before_cancelled = server.batcher.stats.cancelled
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = retriever_pb2_grpc.RetrieverStub(channel)
        watched.gate.clear()
        busy = stub.Retrieve.future(pb.RetrieveRequest(query="keeps the worker busy", top_k=5), timeout=120)
        time.sleep(0.5)
        first_record = len(records.records)
        calls = [stub.Retrieve.future(pb.RetrieveRequest(query=f"cancelled probe {i}", top_k=5), timeout=120)
                 for i in range(count)]
        time.sleep(0.5)
        for call in calls:
            call.cancel()
        time.sleep(0.5)
        watched.gate.set()
        busy.result()
        time.sleep(1.0)
    logged = records.records[first_record:]
    return {
        "cancelled_by_client": count,
        "server_counted_cancelled": server.batcher.stats.cancelled - before_cancelled,
        "encoded": sum(1 for i in range(count) if f"cancelled probe {i}" in watched.started),
        "logged_at_warning_or_above": sum(1 for r in logged if r.levelno >= logging.WARNING),
        "internal_errors_logged": sum(1 for r in logged if "internal error" in r.getMessage()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deadline-queries", type=int, default=100)
    parser.add_argument("--deadline-ms", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--cancellations", type=int, default=18)
    parser.add_argument("--name", default="probe", help="result file: benchmarks/results/reliability_NAME.json")
    args = parser.parse_args(argv)
    records = Records()
    logging.getLogger("retriever").addHandler(records)
    logging.getLogger("retriever").setLevel(logging.DEBUG)
    encoder = Encoder(EncoderConfig(show_progress=False))
    watched = Watched(encoder)
    server = RetrieverServer(ServiceConfig(port=0, use_gpu=False), [("sample", ensure_sample_index(encoder))],
                             encoder=watched)  # type: ignore[arg-type]
    server.start()
    try:
        server.load()
        deadlines = probe_deadlines(server, watched, args.deadline_queries, args.clients, args.deadline_ms)
        cancellations = probe_cancellations(server, watched, args.cancellations, records)
    finally:
        server.stop(grace=0)
    result = {"deadlines": deadlines, "cancellations": cancellations, "cpu_count": os.cpu_count(),
              "load_average": os.getloadavg()}
    out = ROOT / "benchmarks" / "results" / f"reliability_{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    failed = (deadlines["ranked_after_the_caller_gave_up"] or cancellations["encoded"]
              or cancellations["logged_at_warning_or_above"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
