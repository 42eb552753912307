"""Source instructions as users write them: does the model still follow them? (issue 16)

    python benchmarks/phrasing_robustness.py --index index_builds/mini-default --name mini-default

The benchmark's ``source-soft`` scenario asks each question with the model's canonical source
instruction ("Retrieve evidence from table sources that answers the question:"). Here the same
questions are also asked with ``--phrasings`` other instructions naming the same sources, drawn
(seeded, per question) from the held-apart ``dev`` half of the router's grammar
(:func:`retriever.training.instruction_pool.naming_instruction`: "stick to tabular records.",
"Pull the answer from fact lists please."). Neither the encoder's training (stage 3 samples
:mod:`retriever.training.instruction_pool`'s own phrasings) nor the router's fit sees that half;
it chose the router's threshold, so it is a dev set, not a test set.

Each phrasing is asked two ways, dense, no filter in the query:

- ``encoder-only``: the instruction only conditions the query encoder (the harness's
  ``source-soft``);
- ``filter``: the server's default (``--resolve filter``): the model's source router reads the
  instruction and filters when confident; below its threshold the encoder decides, with the
  sources read preferred (``--router-prior``, default :data:`retriever.router.ROUTER_PRIOR`);
- ``filter-no-prior``: the same without the preference (``--router-prior 0``): the encoder alone
  below the threshold.

Reported per way, pooled and per dataset: MRR@100 and the share of the top 10 from the requested
sources, for the canonical instruction, averaged over the phrasings, and **robustness** (the
worst phrasing of each question, averaged over questions, as Promptriever's Robustness@10 takes
the worst instruction per query), with how sure the question set makes them: the phrasings'
mean with a bootstrap 95 % interval, and the gap canonical − phrasings with its paired standard
error and interval (:func:`retriever.evaluation.compare.paired_difference`), and each way's
phrasings mean against ``filter-no-prior``'s, paired over the questions (``<m>/vs_filter-no-prior``
in the pooled block). Writes
``benchmarks/results/phrasing_<name>.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from retriever.cli.index_commands import add_encoder_args, encoder_config, fraction
from retriever.encoder import Encoder
from retriever.evaluation.compare import paired_difference
from retriever.evaluation.heteromix import HeteroConfig, Scenario, run_heteromix
from retriever.evaluation.retrievers import EngineRetriever, QueryVectors, UnitRetriever
from retriever.index import Index
from retriever.query import Mode, Query, SourceResolution
from retriever.questions import Question, read_questions
from retriever.records import Source
from retriever.searcher import Ranking, Searcher
from retriever.training.instruction_pool import naming_instruction

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "heteromix"
METRICS = ("mrr@100", "source@10")


class Phrased:
    """Asks ``inner`` each query with phrasing ``j`` of its question's sources instead of its instruction."""

    def __init__(self, inner: UnitRetriever, j: int, seed: int, sources: Mapping[str, Sequence[Source]]) -> None:
        self.inner, self.j, self.seed, self.sources = inner, j, seed, sources
        self.name = f"dense-p{j}"
        self.asked: dict[str, str] = {}

    def phrasing(self, query: Query, sources: Sequence[Source]) -> str:
        key = int.from_bytes(hashlib.sha256(query.text.encode()).digest()[:8], "little")
        return naming_instruction("dev", sources, np.random.default_rng([self.seed, self.j, key]))

    def rank(self, queries: Sequence[Query], depth: int) -> list[Ranking]:
        phrased = []
        for q in queries:
            text = self.phrasing(q, self.sources[q.text])
            self.asked[q.text] = text
            phrased.append(replace(q, instruction=text))
        return self.inner.rank(phrased, depth)


def summarize(per_question: list[list[dict[str, float]]], datasets: list[str], draws: int = 2000,
              seed: int = 0) -> dict[str, Any]:
    """``per_question[v][i]``: variant v's metrics for question i (v 0 canonical, then the phrasings).

    Besides the means, how sure they are over these questions (``bench compare --paired``'s
    statistics): ``<m>/phrasings_ci95`` for the phrasings' mean and ``<m>/gap`` (canonical minus the
    question's phrasings mean) with its paired standard error and bootstrap 95 % interval.
    """
    rng = np.random.default_rng(seed)

    def block(rows: list[int]) -> dict[str, Any]:
        out: dict[str, Any] = {"questions": len(rows)}
        for m in METRICS:
            canon = [per_question[0][i].get(m, 0.0) for i in rows]
            phr = [[per_question[v][i].get(m, 0.0) for v in range(1, len(per_question))] for i in rows]
            out[f"{m}/canonical"] = round(statistics.fmean(canon), 4)
            out[f"{m}/phrasings_mean"] = round(statistics.fmean(x for p in phr for x in p), 4)
            out[f"{m}/robustness"] = round(statistics.fmean(min(p) for p in phr), 4)
            per_question_mean = np.array([statistics.fmean(p) for p in phr])
            mean = paired_difference(per_question_mean, np.zeros(len(rows)), draws, rng)  # the mean's own interval
            out[f"{m}/phrasings_ci95"] = [round(mean.low, 4), round(mean.high, 4)]
            gap = paired_difference(np.array(canon), per_question_mean, draws, rng)
            out[f"{m}/gap"] = round(gap.diff, 4)
            out[f"{m}/gap_se"] = round(gap.se, 4)
            out[f"{m}/gap_ci95"] = [round(gap.low, 4), round(gap.high, 4)]
        return out

    result = {"pooled": block(list(range(len(datasets))))}
    for name in sorted(set(datasets)):
        result[name] = block([i for i, d in enumerate(datasets) if d == name])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=ROOT / "index_builds" / "mini-default")
    parser.add_argument("--questions", type=Path, default=DATA / "queries.dev.mini.jsonl")
    add_encoder_args(parser, "model (default: the one named in the index manifest)")
    parser.add_argument("--phrasings", type=int, default=4, help="dev-grammar phrasings per question")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--limit", type=int, default=None, help="first N questions only")
    parser.add_argument("--name", default=None, help="result name (default: the index directory's name)")
    parser.add_argument("--router-thresholds", type=fraction, nargs="*", default=[], metavar="P",
                        help="also ask every phrasing with the router filtering at each of these confidences "
                        "(ways 'filter@P'; `--router-threshold` of search and serve)")
    parser.add_argument("--router-priors", type=fraction, nargs="*", default=[], metavar="W",
                        help="also ask every phrasing with the router preferring what it read below its threshold "
                        "by W x confidence (ways 'prior@W'; `--router-prior` of search and serve)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    index = Index.load(args.index)
    encoder = Encoder(replace(encoder_config(args, args.model or index.manifest.model_name, index.manifest.encoding),
                              show_progress=False))
    questions: list[Question] = read_questions(args.questions, args.limit)
    sources = {q.text: q.gold_sources for q in questions}
    config = HeteroConfig(scenarios=(Scenario.SOURCE_SOFT,), show_progress=False)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "index": str(args.index), "questions_file": str(args.questions), "model": encoder.name,
        "encoding": {"backend": encoder.backend.value, "precision": encoder.precision.value},
        "phrasings": args.phrasings, "seed": args.seed, "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "router_threshold": encoder.router.threshold if encoder.router is not None else None,
        "ways": {}, "examples": {}}
    vectors = QueryVectors()
    phrasing_means: dict[str, dict[str, np.ndarray]] = {}  # way -> metric -> each question's phrasings mean
    first_ids: list[str] = []
    ways: list[tuple[str, SourceResolution, float | None, float | None]] = [
        ("encoder-only", SourceResolution.ENCODER_ONLY, None, None), ("filter", SourceResolution.FILTER, None, None),
        ("filter-no-prior", SourceResolution.FILTER, None, 0.0),
        *((f"filter@{p:g}", SourceResolution.FILTER, p, None) for p in args.router_thresholds),
        *((f"prior@{w:g}", SourceResolution.FILTER, None, w) for w in args.router_priors)]
    for way, resolution, threshold, prior in ways:
        searcher = Searcher(index, encoder, resolution, router_threshold=threshold, router_prior=prior)
        dense = EngineRetriever(searcher, Mode.DENSE, vectors=vectors)
        variants: list[UnitRetriever] = [dense]
        variants += [Phrased(dense, j, args.seed, sources) for j in range(args.phrasings)]
        runs = run_heteromix(questions, index.store, variants, encoder.prompts, config)
        ids = runs[0].question_ids
        assert all(r.question_ids == ids for r in runs)
        first_ids = first_ids or ids
        assert ids == first_ids, "every way asks the same questions in the same order (paired below)"
        by_id = {q.id: q for q in questions}
        datasets = [by_id[i].dataset for i in ids]
        result["ways"][way] = summarize([r.per_question for r in runs], datasets)
        phrasing_means[way] = {m: np.array([statistics.fmean(r.per_question[i].get(m, 0.0) for r in runs[1:])
                                            for i in range(len(ids))]) for m in METRICS}
        if not result["examples"]:
            first = [v for v in variants if isinstance(v, Phrased)]
            result["examples"] = {by_id[i].text: [p.asked[by_id[i].text] for p in first] for i in ids[:5]}
        pooled = result["ways"][way]["pooled"]
        logging.info("%s: %s", way, pooled)
    # every way against the previous default (the filter alone), paired over the questions
    rng = np.random.default_rng(0)
    base = phrasing_means["filter-no-prior"]
    for way, means in phrasing_means.items():
        if way == "filter-no-prior":
            continue
        for m in METRICS:
            d = paired_difference(means[m], base[m], 2000, rng)
            result["ways"][way]["pooled"][f"{m}/vs_filter-no-prior"] = {
                "diff": round(d.diff, 4), "se": round(d.se, 4), "ci95": [round(d.low, 4), round(d.high, 4)]}
    result["seconds"] = round(time.perf_counter() - started, 1)
    out = ROOT / "benchmarks" / "results" / f"phrasing_{args.name or args.index.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False))

    datasets = [d for d in result["ways"]["encoder-only"] if d != "pooled"] + ["pooled"]
    for way, table in result["ways"].items():
        print(f"\n{way} (dense, no filter in the query; {len(questions)} questions, {args.phrasings} phrasings each)\n")
        print("| figure | " + " | ".join(datasets) + " |")
        print("|---|" + "---|" * len(datasets))
        for m in METRICS:
            for kind in ("canonical", "phrasings_mean", "robustness"):
                print(f"| {m} {kind} | " + " | ".join(f"{table[d][f'{m}/{kind}']:.3f}" for d in datasets) + " |")
            print(f"| {m} phrasings 95 % interval | " + " | ".join(
                "[{:.3f}, {:.3f}]".format(*table[d][f"{m}/phrasings_ci95"]) for d in datasets) + " |")
            print(f"| {m} gap canonical − phrasings [95 %] | " + " | ".join(
                "{:+.3f} [{:+.3f}, {:+.3f}]".format(table[d][f"{m}/gap"], *table[d][f"{m}/gap_ci95"])
                for d in datasets) + " |")
    print("\nphrasings' mean minus filter-no-prior's, paired over the questions [95 %]\n")
    for way, table in result["ways"].items():
        against = [table["pooled"].get(f"{m}/vs_filter-no-prior") for m in METRICS]
        if all(against):
            print(f"{way}: " + "; ".join("{} {:+.4f} [{:+.4f}, {:+.4f}]".format(m, a["diff"], *a["ci95"])
                                         for m, a in zip(METRICS, against, strict=True)))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
