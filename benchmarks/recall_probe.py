"""How far real questions sit from the units, against the build's recall-gate queries, and the
recall@10 each approximate shard reaches at each nprobe for those questions and for gate queries
made at each noise level as the build makes them (issue 13): the gate's noise should make it
at least as hard as real questions.

    python benchmarks/recall_probe.py --index index_builds/full --model /work/models/heteromix \\
        --backend openvino --precision bfloat16

The questions (HeteroMix dev, ``--queries``) are encoded as the server encodes them (the model's
default instruction). Exact top-10 per shard from the build's kept parts (``--keep-parts``). Writes
``benchmarks/results/recall_probe_<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import faiss  # noqa: E402
import load_test  # noqa: E402
from faiss.contrib.evaluation import knn_intersection_measure  # noqa: E402
from serve_full import kept_vectors  # noqa: E402

from retriever.backends import Backend, Precision  # noqa: E402
from retriever.encoder import Encoder, EncoderConfig  # noqa: E402
from retriever.index.recall import DEFAULT_QUERY_NOISE, held_aside_queries  # noqa: E402
from retriever.index.shard_builder import RECALL_QUERIES  # noqa: E402


def quantiles(x: np.ndarray) -> list[float]:
    return [round(float(v), 3) for v in np.quantile(x, [0.1, 0.5, 0.9])]


def recall_by_nprobe(index: faiss.Index, ivf: faiss.IndexIVF, nprobes: list[int], queries: np.ndarray,
                     truth: np.ndarray) -> dict[str, float]:
    """Recall@10 of ``index`` against ``truth`` at each nprobe."""
    recall = {}
    for nprobe in nprobes:
        ivf.nprobe = nprobe
        _, found = index.search(queries, 10)
        recall[str(nprobe)] = round(float(knn_intersection_measure(found, truth)), 4)
    return recall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=ROOT / "index_builds" / "full")
    parser.add_argument("--name", default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--noise", type=float, nargs="+",
                        default=sorted({DEFAULT_QUERY_NOISE, 0.25, 0.5, 1.0, 1.25, 1.5}))
    parser.add_argument("--nprobe", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64, 128])
    args = parser.parse_args()
    questions = load_test.load_queries(None, args.queries)
    encoder = Encoder(EncoderConfig(model=args.model, backend=Backend(args.backend),
                                    precision=Precision(args.precision), show_progress=False))
    instruction = encoder.default_instruction()
    q = encoder.encode_queries(questions, [instruction] * len(questions))
    _, chunks = kept_vectors(args.index)
    vectors = np.concatenate(list(chunks))
    top1, _ = faiss.knn(q, vectors, 1, metric=faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    sample = vectors[rng.choice(len(vectors), args.queries, replace=False)]
    gate = {}
    for noise in args.noise:
        near, _ = faiss.knn(held_aside_queries(sample, args.queries, 0, noise), vectors, 1,
                            metric=faiss.METRIC_INNER_PRODUCT)
        gate[str(noise)] = quantiles(near[:, 0])
    manifest = json.loads((args.index / "manifest.json").read_text())
    shards = {}
    for shard in manifest["shards"]:
        if shard["factory"] == "Flat":
            continue
        index = faiss.read_index(str(args.index / shard["file"]))
        _, truth = faiss.knn(q, vectors[shard["start"]:shard["start"] + shard["count"]], 10,
                             metric=faiss.METRIC_INNER_PRODUCT)
        own = vectors[shard["start"]:shard["start"] + shard["count"]]
        ivf = faiss.extract_index_ivf(index)

        by_noise = {}
        for noise in args.noise:
            gq = held_aside_queries(own, min(RECALL_QUERIES, len(own)), 1, noise)
            _, gt = faiss.knn(gq, own, 10, metric=faiss.METRIC_INNER_PRODUCT)
            by_noise[str(noise)] = recall_by_nprobe(index, ivf, args.nprobe, gq, gt)
        shards[shard["source"]] = {"factory": shard["factory"], "build_search": shard["search"],
                                   "build_recall_at_10": shard["recall_at_10"],
                                   "question_recall_at_10": recall_by_nprobe(index, ivf, args.nprobe, q, truth),
                                   "gate_recall_at_10_by_noise": by_noise}
    result = {"index": str(args.index), "questions": len(questions),
              "question_top1_cosine_q10_q50_q90": quantiles(top1[:, 0]),
              "gate_query_top1_cosine_q10_q50_q90_by_noise": gate, "default_gate_noise": DEFAULT_QUERY_NOISE,
              "shards": shards}
    out = ROOT / "benchmarks" / "results" / f"recall_probe_{args.name or args.index.name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
