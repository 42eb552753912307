"""Draw the small sample corpus shipped in the package from HeteroMix (run once; output committed).

    python benchmarks/make_sample_corpus.py --data ../shared/data/heteromix --out retriever/data

Picks dev.mini questions per dataset (seeded), keeps their gold records (for OTT-QA and
HybridQA tables, the linked passages of gold rows too), then adds seeded distractors of
every source type, so the sample has all four types and questions that can be answered.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from pathlib import Path

PER_DATASET = {"sq_wikidata": 60, "temptabqa": 25, "infotabs": 15, "fetaqa": 10, "ottqa": 6, "hybridqa": 6}
DISTRACTORS = {"text": 200, "table": 6, "kb": 150, "infobox": 30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/heteromix"))
    parser.add_argument("--out", type=Path, default=Path("retriever/data"))
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    mini = set((args.data / "mini.ids.txt").read_text().split())
    records = {}
    with gzip.open(args.data / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["id"] in mini:
                records[rec["id"]] = rec
    questions = [json.loads(line) for line in (args.data / "queries.dev.mini.jsonl").open()]
    by_dataset: dict[str, list[dict]] = {}
    for q in questions:
        by_dataset.setdefault(q["dataset"], []).append(q)
    chosen: dict[str, dict] = {}
    picked_questions = []
    for dataset, n in PER_DATASET.items():
        pool = [q for q in by_dataset[dataset] if all(g in records for g in q["gold"])]
        for q in rng.sample(pool, min(n, len(pool))):
            picked_questions.append(q)
            for gold in q["gold"]:
                rec = records[gold]
                if rec["source"] == "table" and len(rec["rows"]) > 25:
                    continue  # keep the sample small; the question stays only if all golds fit
                chosen[gold] = rec
                if rec["source"] == "table" and rec.get("row_links"):
                    for row in q.get("gold_rows", {}).get(gold, []):
                        for link in rec["row_links"][row]:
                            if link in records:
                                chosen[link] = records[link]
    picked_questions = [q for q in picked_questions if all(g in chosen for g in q["gold"])]
    for source, n in DISTRACTORS.items():
        pool = sorted(i for i, r in records.items() if r["source"] == source and i not in chosen
                      and (source != "table" or len(r["rows"]) <= 25))
        for rid in rng.sample(pool, n):
            chosen[rid] = records[rid]
    args.out.mkdir(parents=True, exist_ok=True)
    ordered = sorted(chosen.values(), key=lambda r: r["id"])
    with gzip.GzipFile(args.out / "sample_corpus.jsonl.gz", "wb", mtime=0) as gz:
        for rec in ordered:
            gz.write((json.dumps(rec, ensure_ascii=False) + "\n").encode())
    with (args.out / "sample_queries.jsonl").open("w", encoding="utf-8") as fh:
        for q in sorted(picked_questions, key=lambda q: q["id"]):
            fh.write(json.dumps(q, ensure_ascii=False) + "\n")
    counts: dict[str, int] = {}
    units = 0
    for rec in ordered:
        counts[rec["source"]] = counts.get(rec["source"], 0) + 1
        units += len(rec["rows"]) if rec["source"] == "table" else 1
    print(f"{len(ordered)} records ({counts}), ~{units} units, {len(picked_questions)} questions")


if __name__ == "__main__":
    main()
