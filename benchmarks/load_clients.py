"""Load-generating gRPC clients for the benchmarks: threads of this process, or separate processes.

Kept apart from ``load_test.py`` so that client processes import only grpc and the generated
messages (not torch or FAISS). Threads of one Python process share its interpreter lock: when
many of them loop on fast answers (a re-send storm of rejected calls), a thread whose call has
been answered can wait milliseconds for the lock before it reads the clock, so the latency it
records includes the client's own queueing. Client processes (:class:`ClientProcesses`) do not
share a lock; pinned to CPUs of their own they do not take processor time from the server
either, as clients on other machines would not.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retriever.service.proto import retriever_pb2 as pb
from retriever.service.proto import retriever_pb2_grpc


def summary(latencies: list[float], seconds: float, errors: int = 0) -> dict[str, Any]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] if ordered else float("nan")
    return {"calls": len(ordered), "errors": errors, "seconds": round(seconds, 3),
            "qps": round(len(ordered) / seconds, 2) if seconds else 0.0,
            "p50_ms": round(statistics.median(ordered) * 1000, 2) if ordered else float("nan"),
            "p99_ms": round(p99 * 1000, 2)}


def run_clients(client: Callable[[int], None], clients: int) -> float:
    """Run ``client(n)`` for n in range(clients) on as many threads; wall seconds until all return."""
    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def client_loop(address: str, queries: Sequence[str], k: int, n: int, start_at: float, stop_at: float,
                backoff: bool, mode: int) -> tuple[list[float], list[float], int]:
    """Client ``n``: Retrieve back to back from ``start_at`` to ``stop_at`` (``time.monotonic``, which
    is one clock for every process on Linux). Returns the answered calls' latencies, the
    RESOURCE_EXHAUSTED calls' latencies, and the count of other errors.

    With ``backoff`` a rejected client waits like ``RetrieverClient``'s retry policy before its next
    call: a random time up to 50 ms, doubling per consecutive rejection up to 2 s.
    """
    latencies: list[float] = []
    rejections: list[float] = []
    errors = 0
    with grpc.insecure_channel(address) as channel:
        stub = retriever_pb2_grpc.RetrieverStub(channel)
        try:
            grpc.channel_ready_future(channel).result(timeout=30)
        except grpc.FutureTimeoutError:
            pass  # not connected: its calls fail and are counted as errors
        time.sleep(max(0.0, start_at - time.monotonic()))
        i = n * 7919
        ceiling = 0.05
        jitter = random.Random(n)
        while time.monotonic() < stop_at:
            request = pb.RetrieveRequest(query=queries[i % len(queries)], top_k=k, mode=mode)
            t = time.perf_counter()
            try:
                stub.Retrieve(request, timeout=60)
                latencies.append(time.perf_counter() - t)
                ceiling = 0.05
            except grpc.RpcError as exc:
                if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                    rejections.append(time.perf_counter() - t)
                    if backoff:
                        time.sleep(min(jitter.uniform(0, ceiling), max(0.0, stop_at - time.monotonic())))
                        ceiling = min(2.0, ceiling * 2)
                else:
                    errors += 1
            i += 1
    return latencies, rejections, errors


class ClientProcesses:
    """Client processes for :func:`drive`: ``processes`` workers (this file run as a script, so a
    worker imports grpc and the messages only), each pinned to ``cpus`` when given, each running
    one client per :func:`drive` call. They read the queries once, then one job per line on stdin,
    and answer one JSON line per job. Use as a context manager."""

    def __init__(self, processes: int, queries: Sequence[str], cpus: Sequence[int] | None = None) -> None:
        self.size = processes
        self.cpus = sorted(cpus) if cpus else None
        pin = ["taskset", "--cpu-list", ",".join(map(str, self.cpus))] if self.cpus else []
        self._workers = [subprocess.Popen([*pin, sys.executable, __file__], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, text=True) for _ in range(processes)]
        for worker in self._workers:
            assert worker.stdin is not None
            worker.stdin.write(json.dumps(list(queries)) + "\n")
            worker.stdin.flush()

    @property
    def pids(self) -> list[int]:
        return [worker.pid for worker in self._workers]

    def run(self, jobs: Sequence[dict[str, Any]]) -> list[tuple[list[float], list[float], int]]:
        """One job per worker, all at once; their results in job order."""
        if len(jobs) > self.size:
            raise ValueError(f"{len(jobs)} clients need as many processes; the pool has {self.size}")
        for worker, job in zip(self._workers, jobs, strict=False):
            assert worker.stdin is not None
            worker.stdin.write(json.dumps(job) + "\n")
            worker.stdin.flush()
        out = []
        for worker in self._workers[:len(jobs)]:
            assert worker.stdout is not None
            line = worker.stdout.readline()
            if not line:
                raise RuntimeError(f"client process {worker.pid} ended (exit {worker.wait()})")
            latencies, rejections, errors = json.loads(line)
            out.append((latencies, rejections, errors))
        return out

    def __enter__(self) -> ClientProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        for worker in self._workers:
            if worker.stdin is not None:
                worker.stdin.close()
        for worker in self._workers:
            try:
                worker.wait(10)
            except subprocess.TimeoutExpired:
                worker.kill()


def drive(address: str, queries: Sequence[str], k: int, clients: int, duration: float, backoff: bool = False,
          mode: int = pb.SEARCH_MODE_DENSE, pool: ClientProcesses | None = None) -> dict[str, Any]:
    """``clients`` clients call Retrieve (search ``mode``) back to back for ``duration`` seconds:
    threads of this process, or processes of ``pool`` (which must hold at least ``clients``).

    Calls rejected with RESOURCE_EXHAUSTED (over the server's concurrency cap) are counted apart
    from errors, with their own latency (how fast the rejection came back).
    """
    setup = 1.0 if pool is None else 2.0  # time for every client to connect before the common start
    start_at = time.monotonic() + setup
    stop_at = start_at + duration
    jobs = [{"address": address, "k": k, "n": n, "start_at": start_at, "stop_at": stop_at, "backoff": backoff,
             "mode": mode} for n in range(clients)]
    if pool is None:
        results: list[Any] = [None] * clients

        def client(n: int) -> None:
            results[n] = client_loop(queries=queries, **jobs[n])

        run_clients(client, clients)
    else:
        results = pool.run(jobs)
    seconds = max(duration, time.monotonic() - start_at) if results else 0.0
    out: dict[str, Any] = summary([x for r in results for x in r[0]], seconds, sum(r[2] for r in results))
    rejected = sorted(x for r in results for x in r[1])
    if rejected:
        out["rejected"] = len(rejected)
        out["reject_p50_ms"] = round(statistics.median(rejected) * 1000, 2)
        out["reject_p99_ms"] = round(rejected[min(len(rejected) - 1, round(0.99 * (len(rejected) - 1)))] * 1000, 2)
    else:
        out["rejected"] = 0
    return out


def one_client(address: str, queries: Sequence[str], k: int, concurrency: int, duration: float,
               kind: str) -> dict[str, Any]:
    """``concurrency`` callers sharing ONE client for ``duration`` seconds, as an application would:
    ``kind`` "threads" (threads of this process on one ``RetrieverClient``) or "asyncio" (tasks of
    one event loop on one ``AsyncRetrieverClient``). Retries off, so a refusal counts as an error."""
    from retriever.client import AsyncRetrieverClient, RemoteError, RetrieverClient

    latencies: list[float] = []
    errors = [0]
    if kind == "threads":
        with RetrieverClient(address, retries=0, timeout=60) as client:
            stop_at = time.monotonic() + duration

            def caller(n: int) -> None:
                i = n * 7919
                while time.monotonic() < stop_at:
                    t = time.perf_counter()
                    try:
                        client.retrieve(queries[i % len(queries)], top_k=k)
                        latencies.append(time.perf_counter() - t)
                    except RemoteError:
                        errors[0] += 1
                    i += 1

            seconds = run_clients(caller, concurrency)
        return summary(latencies, seconds, errors[0])

    async def run() -> float:
        async with AsyncRetrieverClient(address, retries=0, timeout=60) as client:
            stop_at = time.monotonic() + duration

            async def caller(n: int) -> None:
                i = n * 7919
                while time.monotonic() < stop_at:
                    t = time.perf_counter()
                    try:
                        await client.retrieve(queries[i % len(queries)], top_k=k)
                        latencies.append(time.perf_counter() - t)
                    except RemoteError:
                        errors[0] += 1
                    i += 1

            started = time.perf_counter()
            await asyncio.gather(*(caller(n) for n in range(concurrency)))
            return time.perf_counter() - started

    if kind != "asyncio":
        raise ValueError(f"unknown client kind {kind!r}")
    seconds = asyncio.run(run())
    return summary(latencies, seconds, errors[0])


def _worker() -> None:
    """A client process of :class:`ClientProcesses`: the queries on the first line, then jobs."""
    queries = json.loads(sys.stdin.readline())
    for line in sys.stdin:
        result = client_loop(queries=queries, **json.loads(line))
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _worker()
