"""A real index built and served: the full HeteroMix corpus on one machine (issue 13).

    retriever build-index ../shared/data/heteromix/corpus.jsonl.gz --out index_builds/full ...  # first
    python benchmarks/serve_full.py --index index_builds/full --build-log logs/full_build.log \\
        --serve-flags="--model /work/models/heteromix --backend openvino --precision bfloat16"

Reads what the build recorded (manifest: units, build seconds, the factory and build-time recall of
each source shard; ``--build-log``: the wall time and peak RSS that ``/usr/bin/time -v`` printed),
then measures the index as served:

- **recall@10 against exact search**, over gRPC: ``--queries`` dev questions are encoded in-process
  exactly as the server encodes them (the model, ``--backend`` and ``--precision`` of
  ``--serve-flags``, the model's default instruction; not ``--backend auto``), their exact top-10
  comes from every unit's vector in the build's kept parts (``--keep-parts``), and the server's
  top-10 unit ids are compared with it (``faiss.contrib.evaluation``'s measure: the mean share of
  the exact top-10 found);
- **server start** to SERVING, RSS after start and after load;
- **latency** (p50/p99) and QPS of dense Retrieve at each ``--clients`` level (benchmarks/load_test.py).

Writes ``benchmarks/results/serve_<name>.json`` and prints it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import load_test  # noqa: E402
from scale_10m import cpu_info, serve  # noqa: E402

from retriever.backends import Backend, Precision  # noqa: E402
from retriever.encoder import Encoder, EncoderConfig  # noqa: E402
from retriever.index.factory import exact_ground_truth  # noqa: E402
from retriever.index.work import BuildWork, work_dir_for  # noqa: E402

logger = logging.getLogger("serve_full")


def build_log_figures(path: Path | None) -> dict[str, Any]:
    """Wall time and peak RSS from a ``/usr/bin/time -v`` log of the build command."""
    if path is None:
        return {}
    text = path.read_text(encoding="utf-8", errors="replace")
    out: dict[str, Any] = {"log": str(path)}
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text)
    if wall:
        parts = [float(p) for p in wall.group(1).split(":")]
        out["wall_s"] = round(sum(p * 60 ** i for i, p in enumerate(reversed(parts))), 1)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if rss:
        out["peak_rss_bytes"] = int(rss.group(1)) * 1024
    command = re.search(r'Command being timed: "(.*)"', text)
    if command:
        out["command"] = command.group(1)
    return out


def kept_vectors(index_dir: Path):
    """The build's encoded parts in unit-id order (the build must have kept them)."""
    work = BuildWork(work_dir_for(index_dir), -1)
    plan = work.read_plan()
    if plan is None or not work.parts_dir.is_dir():
        raise SystemExit(f"no kept parts for {index_dir} (build it with --keep-parts)")
    specs = sorted(plan.parts, key=lambda p: p.start)
    if specs[0].start != 0 or any(a.start + a.count != b.start for a, b in itertools.pairwise(specs)):
        raise SystemExit("the kept parts do not cover the unit ids contiguously")
    return plan, (work.vectors(spec) for spec in specs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=ROOT / "index_builds" / "full")
    parser.add_argument("--name", default="full")
    parser.add_argument("--build-log", type=Path, default=None, help="/usr/bin/time -v log of the build")
    parser.add_argument("--serve-flags", default="", help="extra `retriever serve` flags (one string)")
    parser.add_argument("--queries", type=int, default=1000, help="dev questions for recall and load")
    parser.add_argument("--clients", default="1,32")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per latency level")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    manifest = json.loads((args.index / "manifest.json").read_text())
    extra = shlex.split(args.serve_flags)
    result: dict[str, Any] = {
        "name": args.name, "index": str(args.index), "cpu": cpu_info(), "load_average_before": os.getloadavg(),
        "serve_flags": extra, "units": sum(manifest["counts"].values()),
        "build": {"manifest_build_seconds": manifest.get("build_seconds"), "encoding": manifest.get("encoding"),
                  **build_log_figures(args.build_log)},
        "shards": manifest.get("shards"),
        "index_bytes": sum(f["bytes"] for f in manifest["files"])}
    questions = load_test.load_queries(None, args.queries)
    def flag(name: str, default: str | None) -> str | None:
        return extra[extra.index(name) + 1] if name in extra else default

    # the questions are encoded as the server will encode them: same model, backend and precision
    encoder = Encoder(EncoderConfig(model=flag("--model", None), backend=Backend(flag("--backend", "torch")),
                                    precision=Precision(flag("--precision", "auto")), show_progress=False))
    instruction = encoder.default_instruction()
    queries = encoder.encode_queries(questions, [instruction] * len(questions))
    del encoder
    plan, chunks = kept_vectors(args.index)
    result["units"] = plan.total_units
    started = time.perf_counter()
    truth = exact_ground_truth(queries, chunks, 10)
    result["exact_search_s"] = round(time.perf_counter() - started, 1)
    expected = {q: [int(u) for u in row] for q, row in zip(questions, truth)}
    clients = [int(c) for c in args.clients.split(",")]
    serving = serve(args.index, questions, expected, clients, args.duration, extra)
    served = serving.pop("grpc_vs_in_process")
    serving["recall_at_10_vs_exact"] = {"queries": served["queries"], "recall": served["mean_overlap_at_10"],
                                        "identical_top10": served["identical_top10"],
                                        "path": "gRPC Retrieve (dense, top_k 10) against exact inner-product "
                                                "search over the kept parts"}
    result["serving"] = serving
    result["load_average_after"] = os.getloadavg()
    out = ROOT / "benchmarks" / "results" / f"serve_{args.name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
