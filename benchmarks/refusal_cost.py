"""What one refused call costs the server's processor, and where: grpcio or the servicer.

Under a re-send storm (clients that call again the moment they are refused) the server refuses
hundreds of calls a second, each held ``--refusal-hold-ms`` first so that the clients are paced
(``RetrieverServicer._admit``). Their processor time is taken from the encoder on the same cores.
This measures it three ways, each server refusing every call after the same hold:

- ``grpc-sync``: a minimal grpcio server (thread pool, as ``retriever serve`` uses), a handler
  that sleeps the hold and aborts with RESOURCE_EXHAUSTED: grpcio's own cost per call;
- ``grpc-aio``: the same on ``grpc.aio`` (an ``asyncio.sleep`` hold, no handler threads);
- ``retriever``: the server's own servicer and its generic handler in a server built like
  ``retriever serve``'s (pool and concurrency limits from :class:`Limits`), its batcher refusing
  every call (the latency budget's refusal path: admission, call record, metrics, status);

and, in this process, the servicer's refusal path alone (no gRPC, no hold): microseconds per call.
Each server runs pinned to CPU 0, its ``--clients`` client processes (``load_clients.py``, as
``load_test.py --clients processes``) pinned to CPU 1, so the server's processor seconds (from
/proc) are its own. Writes ``benchmarks/results/refusal_cost_<name>.json``::

    python benchmarks/refusal_cost.py --name epyc
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from load_clients import ClientProcesses, drive  # noqa: E402

from retriever.machine import cpu_flags  # noqa: E402
from retriever.service.config import Limits  # noqa: E402
from retriever.service.server import SPARE_THREADS  # noqa: E402
from retriever.service.servicer import SERVICE_NAME  # noqa: E402

KINDS = ("grpc-sync", "grpc-aio", "retriever")


class _RefusingBatcher:
    """A batcher whose latency budget refuses every call (``Batcher.reserve`` returning None)."""

    def reserve(self, queries: int = 1) -> None:
        return None


def _servicer(hold_ms: int) -> Any:
    from retriever.service.metrics import ServiceMetrics
    from retriever.service.servicer import RetrieverServicer
    servicer = RetrieverServicer(Limits(refusal_hold_ms=hold_ms), metrics=ServiceMetrics())
    servicer.attach(object(), _RefusingBatcher(), "none")  # type: ignore[arg-type]
    servicer.ready.set()
    return servicer


def _serve(kind: str, port: int, hold_ms: int) -> None:
    """Run one server until killed; prints ``ready`` once it listens."""
    hold = hold_ms / 1000
    address = f"127.0.0.1:{port}"
    if kind == "grpc-aio":
        async def refuse_async(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
            await asyncio.sleep(hold)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "over capacity")
            return b""

        async def main() -> None:
            handler = grpc.method_handlers_generic_handler(
                SERVICE_NAME, {"Retrieve": grpc.unary_unary_rpc_method_handler(refuse_async)})
            server = grpc.aio.server(handlers=[handler])
            server.add_insecure_port(address)
            await server.start()
            print("ready", flush=True)
            await server.wait_for_termination()

        asyncio.run(main())
        return
    # the pool and grpcio's cap as `retriever serve` sizes them (server.py)
    workers = 2 * Limits().max_concurrent_calls + SPARE_THREADS
    if kind == "retriever":
        from retriever.service.servicer import generic_handler
        handler = generic_handler(_servicer(hold_ms))
    else:
        def refuse(data: bytes, context: grpc.ServicerContext) -> bytes:
            time.sleep(hold)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "over capacity")
            return b""

        handler = grpc.method_handlers_generic_handler(
            SERVICE_NAME, {"Retrieve": grpc.unary_unary_rpc_method_handler(refuse)})
    server = grpc.server(ThreadPoolExecutor(max_workers=workers), handlers=[handler],
                         maximum_concurrent_rpcs=workers)
    server.add_insecure_port(address)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def servicer_path_us(calls: int) -> float:
    """Processor microseconds per refusal of the servicer's own path, no gRPC and no hold."""

    class Context:
        def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
            return (("user-agent", "grpc-python"),)

        def set_trailing_metadata(self, metadata: Any) -> None:
            pass

        def abort(self, code: grpc.StatusCode, details: str) -> None:
            raise grpc.RpcError(details)

    servicer = _servicer(1)
    servicer._held = 1 << 30  # no hold slot free: refused at once, the path a held refusal also takes
    context = Context()
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for _ in range(calls):
            try:
                servicer.retrieve(b"", context)
            except grpc.RpcError:
                pass
        best = min(best, (time.process_time() - started) / calls * 1e6)
    return round(best, 1)


def measure(kind: str, pool: ClientProcesses, clients: int, seconds: float, hold_ms: int, port: int) -> dict[str, Any]:
    server = subprocess.Popen(["taskset", "--cpu-list", "0", sys.executable, __file__, "--serve", kind,
                               "--port", str(port), "--hold-ms", str(hold_ms)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise SystemExit(f"the {kind} server did not start (exit {server.wait()})")
        address = f"127.0.0.1:{port}"
        drive(address, ["warm-up"], 10, clients, 2.0, pool=pool)
        before, started = cpu_seconds(server.pid), time.monotonic()
        result = drive(address, ["what is refused"], 10, clients, seconds, pool=pool)
        used, elapsed = cpu_seconds(server.pid) - before, time.monotonic() - started
    finally:
        server.kill()
        server.wait()
    refused = result.get("rejected", 0)
    if result["calls"] or result["errors"] or not refused:
        raise SystemExit(f"the {kind} server answered or failed calls instead of refusing them: {result}")
    return {"server": kind, "refused": refused, "refused_per_second": round(refused / seconds, 1),
            "refusal_p50_ms": result["reject_p50_ms"], "refusal_p99_ms": result["reject_p99_ms"],
            "server_cores": round(used / elapsed, 3), "server_cpu_us_per_refusal": round(used / refused * 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", help="results file suffix (required unless --serve)")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--clients", type=int, default=16, help="client processes re-sending at once (default 16)")
    parser.add_argument("--seconds", type=float, default=10.0, help="storm length per server (default 10)")
    parser.add_argument("--hold-ms", type=int, default=Limits().refusal_hold_ms,
                        help="hold before each refusal (default: the server's, %(default)s ms)")
    parser.add_argument("--rounds", type=int, default=2, help="each server this many times, interleaved")
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve, args.port, args.hold_ms)
        return
    if not args.name:
        parser.error("--name is required")
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs two CPUs: the server pinned to one, its clients to the other")
    out: dict[str, Any] = {"clients": args.clients, "seconds": args.seconds, "hold_ms": args.hold_ms,
                           "cpu": cpu_flags(), "grpcio": grpc.__version__,
                           "servicer_path_us_per_refusal": servicer_path_us(20000), "runs": []}
    from load_test import free_port
    with ClientProcesses(args.clients, ["q"], cpus=[1]) as pool:
        for round_ in range(args.rounds):
            for kind in args.kinds:
                run = measure(kind, pool, args.clients, args.seconds, args.hold_ms, free_port())
                out["runs"].append({"round": round_, **run})
                print(json.dumps(out["runs"][-1]), file=sys.stderr)
    path = ROOT / "benchmarks" / "results" / f"refusal_cost_{args.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
