"""Bounded loopback load test of the gRPC server: QPS and p50/p99 at 1, 8 and 32 concurrent clients.

    python benchmarks/load_test.py                                   # index_builds/lite
    python benchmarks/load_test.py --index DIR --name tiny --duration 3

In one run, on the same queries:
  * in-process: ``Searcher.search`` one query at a time (the baseline a RAG app gets by wiring
    sentence-transformers and FAISS itself), and in batches of 32 (the throughput ceiling);
  * the server with dynamic batching (``retriever serve --max-batch 32``), then the server with
    one query at a time (``--max-batch 1``), each as a separate process on 127.0.0.1, driven by
    1, 8 and 32 client threads for ``--duration`` seconds per level;
  * hybrid (only with ``--modes ...,hybrid``; the index needs ``retriever build-lexical``): the
    batched server again, every request in hybrid mode (BM25 + dense, reciprocal-rank fusion),
    at the same levels, for the served hybrid-against-dense figure;
  * backend (only with ``--modes ...,backend``): the batched server again with ``--backend-flags``
    (default ``--backend auto``: the fastest encoder option that passes the agreement check against
    the index's documents, docs/BACKENDS.md), for the encoder-backend-against-torch figure; with
    ``--backend-index DIR`` it serves DIR, an index built with that backend (int8 queries cannot
    search float32 documents);
  * correctness (RELIABILITY D, only with ``--modes ...,correctness``): 8 clients for 60 s
    against answers computed single-threaded before the run; failed and incorrect calls;
  * stream (only with ``--modes ...,stream``): the ``--limit`` queries once each through one client,
    Retrieve one by one, RetrieveBatch in chunks of ``--max-batch``, and one RetrieveStream; wall
    seconds and QPS of each, and whether they return the same unit ids;
  * client-kinds (only with ``--modes ...,client-kinds``): the batched server driven at each level
    by that many callers sharing one client, as an application holds one: threads on one
    ``RetrieverClient``, then tasks of one event loop on one ``AsyncRetrieverClient``, side by side;
  * overload (RELIABILITY C): a batched server capped at ``--overload-cap`` concurrent calls,
    one client and then twice the cap: the accepted calls' p99 against the single-client p99,
    and how fast the excess comes back RESOURCE_EXHAUSTED; with the latency budget on (auto)
    and off, side by side.

Clients are threads of this process by default. ``--clients processes`` runs each client in a
process of its own (``benchmarks/load_clients.py``; threads share one interpreter lock, so under a
storm of fast refusals the latency a thread records includes waiting for it), and
``--server-cpus 0 --client-cpus 1`` pins the servers and the client processes to separate
processors, as clients on other machines would be (``taskset``; the server's encoder then runs one
thread per processor it may use).

Every served level also records ``where_time_goes``: the server's and the load generator's
processor cores (from /proc), the mean batch, encode and search milliseconds per batch and the
share of the wall time the batcher was encoding or searching (from the server's Prometheus
metrics, which every server of the run exports on a free port). So does every overload phase, with
``server_side`` too: its accepted calls' p50 / p99 inside the server (``server_ms`` of the server's
request log: handler start to answer), to set against what the clients measured.

The run stops by itself (every level is time-bounded) and writes
``benchmarks/results/load_<name>.json``. Figures depend on the machine and on what else runs
on it: record ``cpu_count`` and the load average that the JSON carries next to them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "heteromix"
sys.path.insert(0, str(ROOT))

from load_clients import ClientProcesses, drive, one_client, run_clients, summary  # noqa: E402

from retriever.encoder import Encoder, EncoderConfig  # noqa: E402
from retriever.index import Index  # noqa: E402
from retriever.machine import cpu_flags  # noqa: E402
from retriever.query import Query  # noqa: E402
from retriever.searcher import Searcher  # noqa: E402
from retriever.service.proto import retriever_pb2 as pb  # noqa: E402
from retriever.service.proto import retriever_pb2_grpc  # noqa: E402


def cpu_list(text: str) -> list[int]:
    """``0`` or ``0,2`` or ``0-3``: processor numbers, as taskset's --cpu-list reads them."""
    out: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.partition("-")
            out.update(range(int(first), int(last or first) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a processor list: {text!r} (e.g. 0 or 0,1 or 0-3)") from None
    usable = os.sched_getaffinity(0)
    if not out or not out <= usable:
        raise argparse.ArgumentTypeError(f"processors {sorted(out)} are not all usable here ({sorted(usable)})")
    return sorted(out)


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


def in_process(index_dir: Path, queries: list[str], k: int, duration: float) -> dict[str, Any]:
    encoder = Encoder(EncoderConfig(show_progress=False))
    searcher = Searcher(Index.load(index_dir), encoder)
    searcher.search([Query(queries[0], k=k)])  # warm-up
    latencies: list[float] = []
    started = time.perf_counter()
    i = 0
    while time.perf_counter() - started < duration:
        t = time.perf_counter()
        searcher.search([Query(queries[i % len(queries)], k=k)])
        latencies.append(time.perf_counter() - t)
        i += 1
    single = summary(latencies, time.perf_counter() - started)
    batch = 32
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < duration:
        chunk = [Query(queries[(done + j) % len(queries)], k=k) for j in range(batch)]
        searcher.search(chunk)
        done += batch
    seconds = time.perf_counter() - started
    return {"one_at_a_time": single, "batches_of_32": {"queries": done, "seconds": round(seconds, 3),
                                                       "qps": round(done / seconds, 2)}}


class ServerProcess:
    """``retriever serve`` in a child process on a free loopback port."""

    def __init__(self, index_dir: Path, max_batch: int = 32, max_concurrent: int = 64, name: str = "bench",
                 extra: list[str] | None = None, env: dict[str, str] | None = None,
                 cpus: list[int] | None = None) -> None:
        """Start the server and wait until it is SERVING; ``extra`` flags are appended (a repeated flag wins);
        ``cpus``: pinned to these processors (``taskset``; the encoder then runs as many threads)."""
        pin = ["taskset", "--cpu-list", ",".join(map(str, cpus))] if cpus else []
        self.metrics_port = free_port()  # its batch sizes and encode / search seconds: where the time goes
        cmd = [*pin, sys.executable, "-m", "retriever", "serve", "--index", f"{name}={index_dir}", "--port", "0",
               "--max-batch", str(max_batch), "--max-concurrent-calls", str(max_concurrent), "--no-progress",
               "--grace", "5", "--metrics-port", str(self.metrics_port), *(extra or [])]
        self.process = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                                        env=None if env is None else {**os.environ, **env})
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

    def usage(self) -> dict[str, float]:
        """The server's processor seconds so far (every thread, from /proc) and its batch metrics' sums."""
        out = {"cpu_seconds": process_cpu_seconds(self.process.pid)}
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode("utf-8")
        wanted = {f"retriever_{name}_{part}" for name in ("batch_size", "encode_seconds", "search_seconds")
                  for part in ("sum", "count")}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in wanted:  # summed over labels
                    key = sample.name.removeprefix("retriever_")
                    out[key] = out.get(key, 0.0) + sample.value
        return out

    def stop(self) -> None:
        stop_process(self.process)


def free_port() -> int:
    """A free loopback port (another process may take it before it is used)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def process_cpu_seconds(pid: int) -> float:
    """User + system processor seconds of process ``pid``, all its threads (Linux /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def where_time_goes(before: dict[str, float], after: dict[str, float], seconds: float,
                    client_seconds: float) -> dict[str, float]:
    """What one level cost: server and client processor cores, mean batch, encode / search per batch,
    and the share of the wall time the batcher was encoding or searching."""
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    batches = delta.get("batch_size_count", 0.0) or 1.0
    work = delta.get("encode_seconds_sum", 0.0) + delta.get("search_seconds_sum", 0.0)
    return {"server_cores": round(delta["cpu_seconds"] / seconds, 3),
            "client_cores": round(client_seconds / seconds, 3),
            "batches": int(delta.get("batch_size_count", 0.0)),
            "mean_batch": round(delta.get("batch_size_sum", 0.0) / batches, 2),
            "encode_ms_per_batch": round(1000 * delta.get("encode_seconds_sum", 0.0) / batches, 2),
            "search_ms_per_batch": round(1000 * delta.get("search_seconds_sum", 0.0) / batches, 2),
            "batcher_busy": round(work / seconds, 3)}


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


def server_side(lines: list[str]) -> dict[str, Any]:
    """The accepted (OK) calls' time inside the server, from its request log lines (``server_ms``: from
    the handler's start to its answer; not the gRPC queueing before it nor the reply's transfer), to set
    against what the clients measured; ``stages``: the p50 / p99 of each stage of the lines' ``stages_ms``
    (admit, queue, batch, reply; docs/SERVICE.md, "Request logs"), to show which one makes the tail."""
    ms = []
    stages: dict[str, list[float]] = {}
    for line in lines:
        start = line.find("{")
        try:
            fields = json.loads(line[start:]) if start >= 0 else None
        except ValueError:
            continue
        if isinstance(fields, dict) and fields.get("code") == "OK" and "server_ms" in fields:
            ms.append(float(fields["server_ms"]))
            for stage, value in (fields.get("stages_ms") or {}).items():
                stages.setdefault(stage, []).append(float(value) / 1000)
    if not ms:
        return {"calls": 0}
    same = summary([m / 1000 for m in ms], 0.0)  # the clients' percentiles, the same way
    out: dict[str, Any] = {"calls": same["calls"], "p50_ms": same["p50_ms"], "p99_ms": same["p99_ms"]}
    if stages:
        out["stages"] = {name: {k: summary(values, 0.0)[k] for k in ("p50_ms", "p99_ms")}
                         for name, values in stages.items()}
    return out


def overload(index_dir: Path, queries: list[str], k: int, max_batch: int, cap: int,
             duration: float, budgets: tuple[str, ...] = ("auto", "off"), pool: ClientProcesses | None = None,
             server_cpus: list[int] | None = None, flags: list[str] | None = None) -> dict[str, Any]:
    """RELIABILITY C: a server capped at ``cap`` concurrent calls, driven by 1 and then 2 x cap clients.

    Reports the accepted calls' p99 at 2x capacity against the single-client p99 of the same
    server, and how fast the excess is refused (RESOURCE_EXHAUSTED): clients that re-send at once,
    then clients that back off like ``RetrieverClient``. Once per ``--latency-budget-ms`` value,
    side by side. Clients are threads of this process, or ``pool``'s processes.
    """
    out: dict[str, Any] = {"max_concurrent_calls": cap, "max_batch": max_batch, "serve_flags": flags or []}
    for budget in budgets:
        server = ServerProcess(index_dir, max_batch, cap, extra=[*(flags or []), "--latency-budget-ms", budget],
                               cpus=server_cpus)
        try:
            drive(server.address, queries, k, 1, min(2.0, duration), pool=pool)  # warm-up
            phases = []
            for clients, backoff in ((1, False), (2 * cap, False), (2 * cap, True)):
                logged, before, clients_before = len(server.lines), server.usage(), client_cpu_seconds(pool)
                started = time.monotonic()
                phases.append(drive(server.address, queries, k, clients, duration, backoff=backoff, pool=pool))
                phases[-1]["where_time_goes"] = where_time_goes(before, server.usage(), time.monotonic() - started,
                                                                client_cpu_seconds(pool) - clients_before)
                phases[-1]["server_side"] = server_side(server.lines[logged:])
            single, immediate, backing_off = phases
        finally:
            server.stop()
        out[f"latency_budget_{budget}"] = {
            "single_client": single, "two_x_capacity_immediate_retry": immediate,
            "two_x_capacity_backoff": backing_off,
            "accepted_p99_over_single_p99": {
                "immediate_retry": round(immediate["p99_ms"] / max(single["p99_ms"], 1e-9), 3),
                "backoff": round(backing_off["p99_ms"] / max(single["p99_ms"], 1e-9), 3)}}
    return out


def same_answer(a: Sequence[tuple[Any, float]], b: Sequence[tuple[Any, float]], tolerance: float) -> bool:
    """Equal answers, as lists of ``(unit, score)``: scores position by position within ``tolerance``,
    and the same units in each group of tied scores (within ``tolerance`` of the group's first)
    but the last. Units that tie may come in either order: the last float digits of a score depend
    on the order of a sum (batched encoding pads queries together; a lone query and a batch are
    multiplied by different routines, and a batch may score a bf16 copy first). The last group may
    hold other units of the same scores: the tie may cross the cut-off, where the reference ends.
    Used by the correctness mode and by ``benchmarks/crasher.py``."""
    if len(a) != len(b) or any(abs(x[1] - y[1]) > tolerance for x, y in zip(a, b, strict=True)):
        return False
    groups: list[list[int]] = []
    for i in range(len(a)):
        if groups and abs(b[i][1] - b[groups[-1][0]][1]) <= tolerance:
            groups[-1].append(i)
        else:
            groups.append([i])
    return all({a[i][0] for i in group} == {b[i][0] for i in group} for group in groups[:-1])


def correctness(index_dir: Path, queries: list[str], k: int, clients: int, duration: float,
                max_batch: int, distinct: int = 200, tolerance: float = 1e-4) -> dict[str, Any]:
    """RELIABILITY D: ``clients`` clients for ``duration`` s against answers computed single-threaded first.

    A response is incorrect unless its hits have the expected (record id, part) in the same
    order and every score is within ``tolerance`` of the expected one, up to the order of tied
    scores (:func:`same_answer`).
    """
    encoder = Encoder(EncoderConfig(show_progress=False))
    searcher = Searcher(Index.load(index_dir), encoder)
    sample = queries[:distinct]
    expected = {q: searcher.search([Query(q, k=k)])[0].hits for q in sample}
    del searcher, encoder
    counts = {"calls": 0, "failed": 0, "incorrect": 0}
    examples: list[dict[str, Any]] = []  # the first few incorrect answers, against the expected ones
    worst = [0.0]
    lock = threading.Lock()

    def client(n: int, address: str, stop_at: float) -> None:
        rng = random.Random(n)
        with grpc.insecure_channel(address) as channel:
            stub = retriever_pb2_grpc.RetrieverStub(channel)
            while time.perf_counter() < stop_at:
                q = sample[rng.randrange(len(sample))]
                try:
                    hits = stub.Retrieve(pb.RetrieveRequest(query=q, top_k=k), timeout=60).hits
                except grpc.RpcError:
                    with lock:
                        counts["calls"] += 1
                        counts["failed"] += 1
                    continue
                want = expected[q]
                same = same_answer([((h.record_id, h.part), h.score) for h in hits],
                                   [((h.record_id, h.part), h.score) for h in want], tolerance)
                diff = max((abs(a.score - b.score) for a, b in zip(hits, want, strict=False)), default=0.0)
                with lock:
                    counts["calls"] += 1
                    worst[0] = max(worst[0], diff)
                    if not same:
                        counts["incorrect"] += 1
                        if len(examples) < 5:
                            examples.append({"query": q, "got": [[h.record_id, h.part, h.score] for h in hits],
                                             "expected": [[h.record_id, h.part, h.score] for h in want]})

    server = ServerProcess(index_dir, max_batch, clients + 8)
    try:
        stop_at = time.perf_counter() + duration
        run_clients(lambda n: client(n, server.address, stop_at), clients)
    finally:
        server.stop()
    return {**counts, "clients": clients, "seconds": duration, "distinct_queries": len(sample),
            "max_score_diff": worst[0], "tolerance": tolerance, "examples": examples}


def streaming(index_dir: Path, queries: list[str], k: int, max_batch: int) -> dict[str, Any]:
    """The same queries, once each, through one client: Retrieve one by one, RetrieveBatch in chunks of
    ``max_batch``, and one RetrieveStream (the server's default window, ``max_batch``).

    Each way gets the whole server in turn (one warm-up call first); all three must return the
    same unit ids per query, in order (``mismatched`` counts the queries where they differ).
    """
    requests = [pb.RetrieveRequest(query=q, top_k=k) for q in queries]
    server = ServerProcess(index_dir, max_batch, 8, extra=["--max-stream-queries", str(max(len(queries), 1))])
    ids: dict[str, list[list[int]]] = {}
    out: dict[str, Any] = {"queries": len(queries), "max_batch": max_batch, "window": max_batch}
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = retriever_pb2_grpc.RetrieverStub(channel)
            stub.Retrieve(requests[0], timeout=60)  # warm-up

            def one_by_one() -> list[pb.RetrieveResponse]:
                return [stub.Retrieve(r, timeout=60) for r in requests]

            def in_chunks() -> list[pb.RetrieveResponse]:
                return [response for i in range(0, len(requests), max_batch)
                        for response in stub.RetrieveBatch(
                            pb.RetrieveBatchRequest(requests=requests[i:i + max_batch]), timeout=600).responses]

            def streamed() -> list[pb.RetrieveResponse]:
                messages = list(stub.RetrieveStream(pb.RetrieveStreamRequest(requests=requests), timeout=600))
                if [m.position for m in messages] != list(range(len(requests))):
                    raise SystemExit("RetrieveStream answered out of order")
                return [m.response for m in messages]

            for key, run in (("retrieve_one_by_one", one_by_one), ("retrieve_batch_chunks", in_chunks),
                             ("retrieve_stream", streamed)):
                print(f"stream: {key}...", file=sys.stderr)
                started = time.perf_counter()
                responses = run()
                seconds = time.perf_counter() - started
                ids[key] = [[h.unit_id for h in r.hits] for r in responses]
                out[key] = {"seconds": round(seconds, 3), "qps": round(len(responses) / seconds, 2)}
    finally:
        server.stop()
    base = out["retrieve_one_by_one"]["qps"]
    out["qps_over_one_by_one"] = {key: round(out[key]["qps"] / base, 3)
                                  for key in ("retrieve_batch_chunks", "retrieve_stream")}
    out["mismatched"] = {key: sum(a != b for a, b in zip(ids["retrieve_one_by_one"], ids[key], strict=True))
                         for key in ("retrieve_batch_chunks", "retrieve_stream")}
    return out


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
    parser.add_argument("--overload-cap", type=int, default=8,
                        help="also run the overload check: a server capped at this many concurrent calls, driven "
                        "by twice as many clients (0: skip)")
    parser.add_argument("--latency-budget-ms", default="off",
                        help="the batched and unbatched servers' --latency-budget-ms (default off, the server's "
                             "default: raw throughput); the overload check runs --overload-budgets")
    parser.add_argument("--overload-budgets", default="auto,off",
                        help="the overload check's --latency-budget-ms values, one server each, side by side "
                             "(comma-separated: auto, off or milliseconds)")
    parser.add_argument("--modes", default="in-process,batched,unbatched,overload",
                        help="which parts to run, comma-separated: in-process, batched, unbatched, hybrid, "
                        "overload, correctness, stream, client-kinds (ratios need the first three)")
    parser.add_argument("--serve-flags", default="",
                        help="flags added to every server this run starts (one string, e.g. '--refusal-hold-ms 38')")
    parser.add_argument("--backend-index", type=Path, default=None,
                        help="the index the `backend` mode's server serves (default --index): an index built "
                        "with that backend, when its queries cannot search --index's documents (int8)")
    parser.add_argument("--backend-flags", default="--backend auto",
                        help="serve flags of the `backend` mode's server (one string)")
    parser.add_argument("--correctness-seconds", type=float, default=60.0,
                        help="length of the correctness run (8 clients against single-threaded answers)")
    parser.add_argument("--clients", choices=("threads", "processes"), default="threads",
                        help="load clients as threads of this process (default) or as processes of their own: "
                        "threads share one interpreter lock, so under a storm of fast answers the latency they "
                        "record includes waiting for it (benchmarks/load_clients.py)")
    parser.add_argument("--server-cpus", type=cpu_list, default=None, metavar="LIST",
                        help="pin the servers to these processors (e.g. 0), as `taskset --cpu-list` does")
    parser.add_argument("--client-cpus", type=cpu_list, default=None, metavar="LIST",
                        help="pin the client processes to these processors (e.g. 1; needs --clients processes): "
                        "the load then does not take processor time from the server, as clients on other "
                        "machines would not")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.client_cpus and args.clients != "processes":
        raise SystemExit("--client-cpus pins client processes; add --clients processes")
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
        "machine": platform.machine(), "cpu": cpu_flags(), "clients": args.clients,
        "server_cpus": args.server_cpus, "client_cpus": args.client_cpus, "serve_flags": args.serve_flags,
    }
    modes = {m.strip() for m in args.modes.split(",") if m.strip()}
    unknown = modes - {"in-process", "batched", "unbatched", "hybrid", "backend", "overload", "correctness", "stream",
                       "client-kinds"}
    if unknown:
        raise SystemExit(f"unknown --modes {sorted(unknown)}")
    if "hybrid" in modes and not (args.index / "lexical").is_dir():
        raise SystemExit(f"--modes hybrid: {args.index} has no lexical part; "
                         f"run `retriever build-lexical {args.index}`")
    if "in-process" in modes:
        print(f"in-process ({args.duration:.0f}s each)...", file=sys.stderr)
        result["in_process"] = in_process(args.index, queries, args.top_k, args.duration)
    size = max([*levels, 2 * args.overload_cap if "overload" in modes else 1])
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(ClientProcesses(size, queries, args.client_cpus)) if args.clients == "processes" \
            else None
        served(args, result, modes, levels, queries, pool)
    if "correctness" in modes:
        print(f"correctness: 8 clients for {args.correctness_seconds:.0f}s...", file=sys.stderr)
        result["correctness"] = correctness(args.index, queries, args.top_k, 8, args.correctness_seconds,
                                            args.max_batch)
    if "stream" in modes:
        result["stream"] = streaming(args.index, queries, args.top_k, args.max_batch)
    if {"in-process", "batched", "unbatched"} <= modes:
        base = result["in_process"]["one_at_a_time"]["qps"]
        result["ratios"] = {
            "server_batched_over_in_process_qps": {c: round(result["server_batched"][str(c)]["qps"] / base, 3)
                                                   for c in levels},
            "batched_over_unbatched_qps": {c: round(result["server_batched"][str(c)]["qps"]
                                                    / max(result["server_unbatched"][str(c)]["qps"], 1e-9), 3)
                                           for c in levels},
        }
    if {"batched", "hybrid"} <= modes:
        dense, hybrid = result["server_batched"], result["server_batched_hybrid"]
        result.setdefault("ratios", {})["hybrid_over_dense_qps"] = {
            c: round(hybrid[str(c)]["qps"] / max(dense[str(c)]["qps"], 1e-9), 3) for c in levels}
    if {"batched", "backend"} <= modes:
        torch_qps, other = result["server_batched"], result["server_batched_backend"]
        result.setdefault("ratios", {})["backend_over_torch_qps"] = {
            c: round(other[str(c)]["qps"] / max(torch_qps[str(c)]["qps"], 1e-9), 3) for c in levels}
    result["load_average_after"] = os.getloadavg()
    out = args.out or ROOT / "benchmarks" / "results" / f"load_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"wrote {out}", file=sys.stderr)


def client_cpu_seconds(pool: ClientProcesses | None) -> float:
    """Processor seconds the load generator used so far: this process (thread clients) or the pool's."""
    if pool is None:
        times = os.times()
        return times.user + times.system
    return sum(process_cpu_seconds(pid) for pid in pool.pids)


def client_kinds(args: argparse.Namespace, levels: list[int], queries: list[str]) -> dict[str, Any]:
    """The batched server driven through one shared client per level: threads on a RetrieverClient,
    then asyncio tasks on an AsyncRetrieverClient (one after the other on the same server)."""
    server = ServerProcess(args.index, args.max_batch, max(levels) + 8,
                           extra=["--latency-budget-ms", args.latency_budget_ms, *shlex.split(args.serve_flags)],
                           cpus=args.server_cpus)
    out: dict[str, Any] = {"max_batch": args.max_batch}
    try:
        one_client(server.address, queries, args.top_k, 1, min(2.0, args.duration), "threads")  # warm-up
        for clients in levels:
            out[str(clients)] = {}
            for kind in ("threads", "asyncio"):
                print(f"client kinds: {clients} callers on one {kind} client...", file=sys.stderr)
                out[str(clients)][kind] = one_client(server.address, queries, args.top_k, clients, args.duration,
                                                     kind)
    finally:
        server.stop()
    return out


def served(args: argparse.Namespace, result: dict[str, Any], modes: set[str], levels: list[int], queries: list[str],
           pool: ClientProcesses | None) -> None:
    """The modes that drive a server process, into ``result``."""
    for mode, max_batch, search in (("batched", args.max_batch, pb.SEARCH_MODE_DENSE),
                                    ("unbatched", 1, pb.SEARCH_MODE_DENSE),
                                    ("hybrid", args.max_batch, pb.SEARCH_MODE_HYBRID),
                                    ("backend", args.max_batch, pb.SEARCH_MODE_DENSE)):
        if mode not in modes:
            continue
        key = {"hybrid": "server_batched_hybrid", "backend": "server_batched_backend"}.get(mode, f"server_{mode}")
        flags = shlex.split(args.serve_flags) + (shlex.split(args.backend_flags) if mode == "backend" else [])
        started = time.perf_counter()
        index = args.backend_index if mode == "backend" and args.backend_index else args.index
        server = ServerProcess(index, max_batch, max(levels) + 8,
                               extra=["--latency-budget-ms", args.latency_budget_ms, *flags], cpus=args.server_cpus)
        try:
            start_s = round(time.perf_counter() - started, 1)
            drive(server.address, queries, args.top_k, 1, min(2.0, args.duration), mode=search, pool=pool)  # warm-up
            result[key] = {"max_batch": max_batch, "latency_budget_ms": args.latency_budget_ms,
                           "search_mode": pb.SearchMode.Name(search), "serve_flags": flags, "start_s": start_s,
                           "index": str(index),
                           "encoder": next((line.strip() for line in server.lines if "backend auto:" in line
                                            or "loaded model" in line), None)}
            for clients in levels:
                print(f"{key}: {clients} clients...", file=sys.stderr)
                before, clients_before, started_level = server.usage(), client_cpu_seconds(pool), time.monotonic()
                level = drive(server.address, queries, args.top_k, clients, args.duration, mode=search, pool=pool)
                seconds = time.monotonic() - started_level
                level["where_time_goes"] = where_time_goes(before, server.usage(), seconds,
                                                           client_cpu_seconds(pool) - clients_before)
                result[key][str(clients)] = level
        finally:
            server.stop()
    if "client-kinds" in modes:
        result["client_kinds"] = client_kinds(args, levels, queries)
    if args.overload_cap and "overload" in modes:
        print(f"overload: cap {args.overload_cap}, {2 * args.overload_cap} clients...", file=sys.stderr)
        result["overload"] = overload(args.index, queries, args.top_k, args.max_batch, args.overload_cap,
                                      args.duration, budgets=tuple(args.overload_budgets.split(",")), pool=pool,
                                      server_cpus=args.server_cpus,
                                      flags=shlex.split(args.serve_flags))


if __name__ == "__main__":
    main()
