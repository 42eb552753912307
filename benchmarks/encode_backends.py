"""Encoding speed and agreement of each backend x precision, side by side in one run (issue 15).

    python benchmarks/encode_backends.py --model /work/models/minilm --name amd-avx2

The model directory must hold the exports to compare (``retriever export-model DIR --backend onnx``,
``--backend onnx --quantize int8``, ``--backend openvino``). Per option it measures:

- build throughput: units/s encoding the same seeded sample of HeteroMix mini units (default 2,000)
  in one ``encode_documents`` call, which sorts them by length and batches them as a build does;
- query latency at batch 1 (median and p95 over the first ``--latency-queries`` dev.mini questions)
  and query throughput at batch 32;
- worst and mean cosine of its document embeddings against torch float32.

Rounds are interleaved (option A, B, C, then again) so drift in machine load spreads over all
options; each figure is the median over rounds. Speed ratios are against torch float32 of the same
run. Writes ``benchmarks/results/encode_backends_<name>.json`` with the CPU flags and load average.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import statistics
import time
from pathlib import Path

import numpy as np

from retriever.backends import Backend, Precision
from retriever.encoder import Encoder, EncoderConfig
from retriever.index import load_units
from retriever.linearize import WindowBudget
from retriever.machine import cpu_flags

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "heteromix"
DEFAULT_OPTIONS = "torch:float32,torch:bfloat16,onnx:float32,onnx:int8,openvino:float32"
def parse_options(value: str) -> list[tuple[Backend, Precision]]:
    options = []
    for item in value.split(","):
        backend, _, precision = item.partition(":")
        options.append((Backend(backend), Precision(precision or "float32")))
    return options


def versions(*packages: str) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def timed(fn: object) -> float:
    started = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="model directory holding the exports")
    parser.add_argument("--options", default=DEFAULT_OPTIONS,
                        help=f"backend:precision list (default {DEFAULT_OPTIONS})")
    parser.add_argument("--corpus", type=Path, default=DATA / "corpus.jsonl.gz")
    parser.add_argument("--ids", type=Path, default=DATA / "mini.ids.txt")
    parser.add_argument("--queries", type=Path, default=DATA / "queries.dev.mini.jsonl")
    parser.add_argument("--units", type=int, default=2000)
    parser.add_argument("--latency-queries", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per encoder (default: all cores)")
    parser.add_argument("--name", default="local")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    load_before = os.getloadavg()

    options = parse_options(args.options)
    encoders = {opt: Encoder(EncoderConfig(model=str(args.model), backend=opt[0], precision=opt[1],
                                           batch_size=args.batch_size, threads=args.threads, show_progress=False))
                for opt in options}
    reference = encoders.get((Backend.TORCH, Precision.FLOAT32))
    if reference is None:
        raise SystemExit("the options must include torch:float32, the reference")
    _, units = load_units(args.corpus, args.ids, WindowBudget(reference.max_seq_length - 2, reference.count_tokens))
    docs = random.Random(0).sample([u.text for u in units], min(args.units, len(units)))
    questions = [json.loads(line)["text"] for line in args.queries.read_text(encoding="utf-8").splitlines() if line]
    single = questions[: args.latency_queries]
    batched = questions[: 4 * 32]

    build: dict[tuple[Backend, Precision], list[float]] = {opt: [] for opt in options}
    latency: dict[tuple[Backend, Precision], list[float]] = {opt: [] for opt in options}
    batch32: dict[tuple[Backend, Precision], list[float]] = {opt: [] for opt in options}
    vectors: dict[tuple[Backend, Precision], np.ndarray] = {}
    for round_no in range(args.rounds):
        for opt, encoder in encoders.items():
            started = time.perf_counter()
            vectors[opt] = encoder.encode_documents(docs, show_progress=False)
            build[opt].append(len(docs) / (time.perf_counter() - started))
            latency[opt].extend(timed(lambda q=q, e=encoder: e.encode_queries([q])) for q in single)
            seconds = sum(timed(lambda i=i, e=encoder: e.encode_queries(batched[i:i + 32]))
                          for i in range(0, len(batched), 32))
            batch32[opt].append(len(batched) / seconds)
            logging.info("round %d %s:%s: %.1f units/s", round_no, opt[0].value, opt[1].value, build[opt][-1])

    ref_key = (Backend.TORCH, Precision.FLOAT32)
    ref_build, ref_p50 = statistics.median(build[ref_key]), statistics.median(latency[ref_key])
    ref_b32 = statistics.median(batch32[ref_key])
    rows = []
    for opt in options:
        cos = np.sum(vectors[opt] * vectors[ref_key], axis=1)
        p50 = statistics.median(latency[opt])
        rows.append({
            "backend": opt[0].value, "precision": opt[1].value, "export": encoders[opt].export,
            "build_units_per_s": round(statistics.median(build[opt]), 1),
            "build_vs_torch_fp32": round(statistics.median(build[opt]) / ref_build, 3),
            "query_b1_p50_ms": round(1000 * p50, 2),
            "query_b1_p95_ms": round(1000 * float(np.percentile(latency[opt], 95)), 2),
            "query_b1_speedup_vs_torch_fp32": round(ref_p50 / p50, 3),
            "query_b32_per_s": round(statistics.median(batch32[opt]), 1),
            "query_b32_vs_torch_fp32": round(statistics.median(batch32[opt]) / ref_b32, 3),
            "cosine_vs_torch_fp32": {"worst": round(float(cos.min()), 5), "mean": round(float(cos.mean()), 5)},
        })
    result = {
        "name": args.name, "model": str(args.model), "units": len(docs), "rounds": args.rounds,
        "batch_size": args.batch_size, "threads": args.threads or os.cpu_count(),
        "latency_queries": len(single), "batch32_queries": len(batched),
        "cpu": cpu_flags(), "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "versions": {"python": platform.python_version(), **versions("torch", "onnxruntime", "openvino")},
        "options": rows,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"encode_backends_{args.name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
