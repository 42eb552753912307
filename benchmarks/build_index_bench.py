"""Index-build benchmark: wall time, units/s, peak memory and index size of a corpus build,
plus the project's encoding overhead over calling ``SentenceTransformer.encode`` directly.

    python benchmarks/build_index_bench.py                      # HeteroMix mini (36K units)
    python benchmarks/build_index_bench.py --ids ../shared/data/heteromix/lite.ids.txt --name lite

Writes ``benchmarks/results/build_<name>.json`` and prints it. The overhead comparison
encodes the same seeded sample of units both ways, alternating A/B/B/A in one process so
machine noise hits both sides alike, and reports the ratio of the medians.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import random
import resource
import statistics
import time
from pathlib import Path

import numpy as np

from retriever.encoder import Encoder, EncoderConfig
from retriever.index import BuildConfig, Index, build_index, load_units
from retriever.linearize import WindowBudget

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "heteromix"


def overhead(encoder: Encoder, texts: list[str], rounds: int) -> dict[str, float]:
    """Median seconds of the project's encode_documents vs SentenceTransformer.encode on ``texts``."""
    def run_project() -> np.ndarray:
        return encoder.encode_documents(texts, show_progress=False)

    def run_direct() -> np.ndarray:
        return encoder.model.encode(texts, batch_size=encoder.config.batch_size, convert_to_numpy=True,
                                    normalize_embeddings=True, show_progress_bar=False)

    project: list[float] = []
    direct: list[float] = []
    for i in range(rounds):
        # ABBA order, so drift in machine load does not favour either side.
        order = [(run_project, project), (run_direct, direct)]
        outputs = []
        for fn, times in order if i % 2 == 0 else order[::-1]:
            t = time.perf_counter()
            outputs.append(fn())
            times.append(time.perf_counter() - t)
        if not np.allclose(outputs[0], outputs[1], atol=1e-5):
            raise SystemExit("project and direct encodings differ")
    return {"texts": len(texts), "rounds": rounds, "project_median_s": statistics.median(project),
            "direct_median_s": statistics.median(direct),
            "ratio": statistics.median(project) / statistics.median(direct)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=DATA / "corpus.jsonl.gz")
    parser.add_argument("--ids", type=Path, default=DATA / "mini.ids.txt")
    parser.add_argument("--name", default="mini")
    parser.add_argument("--out", type=Path, default=None, help="index directory (default index_builds/<name>)")
    parser.add_argument("--factory", default="Flat")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--overhead-sample", type=int, default=1000, help="units in the A/B overhead test (0: skip)")
    parser.add_argument("--overhead-rounds", type=int, default=6)
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = args.out or Path("index_builds") / args.name

    encoder = Encoder(EncoderConfig(batch_size=args.batch_size))
    started = time.perf_counter()
    report = build_index(BuildConfig(corpus=args.corpus, out=out, ids_file=args.ids, factory=args.factory,
                                     overwrite=True), encoder)
    wall = time.perf_counter() - started
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    index = Index.load(out)

    result: dict[str, object] = {
        "name": args.name, "corpus": str(args.corpus), "ids": str(args.ids), "factory": args.factory,
        "records": report.records, "units": report.units, "counts": index.manifest.counts,
        "wall_s": round(wall, 1), "encode_s": round(report.encode_seconds, 1),
        "non_encode_share": round(1 - report.encode_seconds / wall, 4),
        "units_per_s": round(report.units / wall, 2), "peak_rss_mb": round(peak_rss_mb, 1),
        "index_mb": round(report.index_bytes / 1e6, 2), "batch_size": args.batch_size,
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version(),
                    "processor": platform.processor()},
    }
    if args.overhead_sample:
        _, units = load_units(args.corpus, args.ids, WindowBudget(encoder.max_seq_length - 2, encoder.count_tokens))
        sample = random.Random(0).sample([u.text for u in units], min(args.overhead_sample, len(units)))
        result["overhead"] = overhead(encoder, sample, args.overhead_rounds)
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"build_{args.name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
