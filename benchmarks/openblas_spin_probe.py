"""Does something spinning after the search slow the next encode? The encoder one query at a time,
called directly and through the server's batcher (encode, exact search, hits; no gRPC), side by side.

    OPENBLAS_THREAD_TIMEOUT=28 python benchmarks/openblas_spin_probe.py --name spin   # OpenBLAS's default
    OPENBLAS_THREAD_TIMEOUT=4 python benchmarks/openblas_spin_probe.py --name timeout4

The variable must be set before numpy loads, so it is taken from the environment, as the
``retriever`` command sets it (``retriever/cli/main.py``). Medians of ``--queries`` calls per round;
writes ``benchmarks/results/openblas_spin_<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retriever.backends import Backend, Precision  # noqa: E402
from retriever.encoder import Encoder, EncoderConfig  # noqa: E402
from retriever.index import Index  # noqa: E402
from retriever.machine import cpu_flags  # noqa: E402
from retriever.query import Query  # noqa: E402
from retriever.searcher import Searcher  # noqa: E402
from retriever.service.batching import Batcher, BoundQuery  # noqa: E402
from retriever.service.registry import Generation  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=ROOT / "index_builds" / "mini-v2")
    parser.add_argument("--queries-file", type=Path, default=ROOT.parent / "shared/data/heteromix/queries.dev.jsonl")
    parser.add_argument("--backend", default="openvino", choices=[b.value for b in Backend])
    parser.add_argument("--precision", default="bfloat16")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    texts = [json.loads(line)["text"] for line in args.queries_file.open()][:args.queries]
    encoder = Encoder(EncoderConfig(show_progress=False, backend=Backend(args.backend),
                                    precision=Precision(args.precision)))
    searcher = Searcher(Index.load(args.index, use_gpu=False), encoder)
    generation = Generation("probe", 1, searcher, "now")
    planned = [searcher.plan(Query(t, "", (), 10, None)) for t in texts]
    encodes: list[float] = []
    original = encoder._encode

    def timed(batch: list[str], show_progress: bool):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        out = original(batch, show_progress)
        encodes.append(time.perf_counter() - started)
        return out

    encoder._encode = timed  # type: ignore[method-assign]
    searches: list[float] = []
    batcher = Batcher(encoder, max_batch=32, on_batch=lambda t: searches.append(t.search_seconds))
    encoder.encode_queries(texts[:3], planned[0].instruction)  # warm-up
    rounds = []
    try:
        for _ in range(args.rounds):
            encodes.clear()
            for p in planned:
                encoder.encode_queries([p.text], p.instruction)
            direct = statistics.median(encodes)
            encodes.clear()
            searches.clear()
            for p in planned:
                batcher.search([BoundQuery(generation, p)], 30)
            rounds.append({"direct_encode_ms": round(1000 * direct, 2),
                           "batcher_encode_ms": round(1000 * statistics.median(encodes), 2),
                           "batcher_search_ms": round(1000 * statistics.median(searches), 2)})
            print(rounds[-1])
    finally:
        batcher.stop()
    result = {"name": args.name, "index": str(args.index), "encoding": f"{args.backend}/{args.precision}",
              "env": {k: os.environ.get(k) for k in ("OPENBLAS_THREAD_TIMEOUT", "OPENBLAS_NUM_THREADS")},
              "queries": len(texts), "rounds": rounds, "cpu": cpu_flags(), "load_average_before": os.getloadavg()}
    out = ROOT / "benchmarks" / "results" / f"openblas_spin_{args.name}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
