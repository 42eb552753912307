"""Bounded loopback load test of the gRPC server: QPS and p50/p99 at 1, 8 and 32 concurrent clients.

    python benchmarks/load_test.py                                   # index_builds/lite
    python benchmarks/load_test.py --index DIR --name tiny --duration 3

In one run, on the same queries:
  * in-process: ``Searcher.search`` one query at a time (the baseline a RAG app gets by wiring
    sentence-transformers and FAISS itself), and in batches of 32 (the throughput ceiling);
  * the server with dynamic batching (``retriever serve --max-batch 32``), then the server with
    one query at a time (``--max-batch 1``), each as a separate process on 127.0.0.1, driven by
    1, 8 and 32 client threads for ``--duration`` seconds per level.

The run stops by itself (every level is time-bounded) and writes
``benchmarks/results/load_<name>.json``. Figures depend on the machine and on what else runs
on it: record ``cpu_count`` and the load average that the JSON carries next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "heteromix"
sys.path.insert(0, str(ROOT))

from retriever.encoder import Encoder, EncoderConfig  # noqa: E402
from retriever.index import Index  # noqa: E402
from retriever.searcher import Query, Searcher  # noqa: E402
from retriever.service.proto import retriever_pb2 as pb  # noqa: E402
from retriever.service.proto import retriever_pb2_grpc  # noqa: E402


def load_queries(path: Path | None, limit: int) -> list[str]:
    if path is None:
        path = DATA / "queries.dev.jsonl"
        if not path.is_file():
            from retriever.sample import SAMPLE_QUERIES, data_file

            path = data_file(SAMPLE_QUERIES)
    texts = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                texts.append(json.loads(line)["text"])
            if len(texts) >= limit:
                break
    if not texts:
        raise SystemExit(f"no queries in {path}")
    return texts


def summary(latencies: list[float], seconds: float, errors: int = 0) -> dict[str, float]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] if ordered else float("nan")
    return {"calls": len(ordered), "errors": errors, "seconds": round(seconds, 3),
            "qps": round(len(ordered) / seconds, 2) if seconds else 0.0,
            "p50_ms": round(statistics.median(ordered) * 1000, 2) if ordered else float("nan"),
            "p99_ms": round(p99 * 1000, 2)}


def in_process(index_dir: Path, queries: list[str], k: int, duration: float) -> dict[str, Any]:
    encoder = Encoder(EncoderConfig(show_progress=False))
    searcher = Searcher(Index.load(index_dir), encoder)
    searcher.search([Query(queries[0])], k=k)  # warm-up
    latencies: list[float] = []
    started = time.perf_counter()
    i = 0
    while time.perf_counter() - started < duration:
        t = time.perf_counter()
        searcher.search([Query(queries[i % len(queries)])], k=k)
        latencies.append(time.perf_counter() - t)
        i += 1
    single = summary(latencies, time.perf_counter() - started)
    batch = 32
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < duration:
        chunk = [Query(queries[(done + j) % len(queries)]) for j in range(batch)]
        searcher.search(chunk, k=k)
        done += batch
    seconds = time.perf_counter() - started
    return {"one_at_a_time": single, "batches_of_32": {"queries": done, "seconds": round(seconds, 3),
                                                       "qps": round(done / seconds, 2)}}


class ServerProcess:
    """``retriever serve`` in a child process on a free loopback port."""

    def __init__(self, index_dir: Path, max_batch: int, max_concurrent: int) -> None:
        cmd = [sys.executable, "-m", "retriever", "serve", "--index", f"bench={index_dir}", "--port", "0",
               "--max-batch", str(max_batch), "--max-concurrent-calls", str(max_concurrent), "--no-progress",
               "--grace", "5"]
        self.process = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.address = f"127.0.0.1:{self._port()}"
        self._wait_serving()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def _port(self, timeout: float = 300.0) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.process.poll() is None:
            for line in list(self.lines):
                found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
                if found:
                    return int(found.group(1))
            time.sleep(0.1)
        raise SystemExit("server did not start:\n" + "".join(self.lines[-20:]))

    def _wait_serving(self, timeout: float = 600.0) -> None:
        end = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < end and self.process.poll() is None:
                try:
                    request = health_pb2.HealthCheckRequest()
                    if health.Check(request, timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise SystemExit("server never became SERVING:\n" + "".join(self.lines[-20:]))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def drive(address: str, queries: list[str], k: int, clients: int, duration: float) -> dict[str, float]:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop_at = time.perf_counter() + duration

    def client(n: int) -> None:
        with grpc.insecure_channel(address) as channel:
            stub = retriever_pb2_grpc.RetrieverStub(channel)
            i = n * 7919
            while time.perf_counter() < stop_at:
                request = pb.RetrieveRequest(query=queries[i % len(queries)], top_k=k)
                t = time.perf_counter()
                try:
                    stub.Retrieve(request, timeout=60)
                    latencies[n].append(time.perf_counter() - t)
                except grpc.RpcError:
                    errors[n] += 1
                i += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summary([x for per in latencies for x in per], time.perf_counter() - started, sum(errors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=ROOT / "index_builds" / "lite")
    parser.add_argument("--name", default=None, help="result name (default: the index directory's name)")
    parser.add_argument("--queries", type=Path, default=None,
                        help="JSONL with a 'text' field (default: HeteroMix dev queries, else the sample queries)")
    parser.add_argument("--limit", type=int, default=2000, help="distinct queries to cycle through")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--levels", default="1,8,32", help="concurrent clients per level")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per level (each mode)")
    parser.add_argument("--max-batch", type=int, default=32, help="dynamic batching size of the batched server")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not (args.index / "manifest.json").is_file():
        raise SystemExit(f"{args.index} is not an index directory; build one or pass --index DIR")
    name = args.name or args.index.name
    levels = [int(x) for x in args.levels.split(",")]
    queries = load_queries(args.queries, args.limit)
    manifest = json.loads((args.index / "manifest.json").read_text())

    result: dict[str, Any] = {
        "index": str(args.index), "units": sum(manifest["counts"].values()), "factory": manifest["factory"],
        "queries": len(queries), "top_k": args.top_k, "duration_per_level_s": args.duration,
        "cpu_count": os.cpu_count(), "load_average_before": os.getloadavg(), "python": platform.python_version(),
        "machine": platform.machine(),
    }
    print(f"in-process ({args.duration:.0f}s each)...", file=sys.stderr)
    result["in_process"] = in_process(args.index, queries, args.top_k, args.duration)
    for mode, max_batch in (("server_batched", args.max_batch), ("server_unbatched", 1)):
        server = ServerProcess(args.index, max_batch, max(levels) + 8)
        try:
            drive(server.address, queries, args.top_k, 1, min(2.0, args.duration))  # warm-up
            result[mode] = {"max_batch": max_batch}
            for clients in levels:
                print(f"{mode}: {clients} clients...", file=sys.stderr)
                result[mode][str(clients)] = drive(server.address, queries, args.top_k, clients, args.duration)
        finally:
            server.stop()
    base = result["in_process"]["one_at_a_time"]["qps"]
    result["ratios"] = {
        "server_batched_over_in_process_qps": {c: round(result["server_batched"][str(c)]["qps"] / base, 3)
                                               for c in levels},
        "batched_over_unbatched_qps": {c: round(result["server_batched"][str(c)]["qps"]
                                                / max(result["server_unbatched"][str(c)]["qps"], 1e-9), 3)
                                       for c in levels},
    }
    result["load_average_after"] = os.getloadavg()
    out = args.out or ROOT / "benchmarks" / "results" / f"load_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
