"""A quick in-process dev check on a sample: a proxy, not the benchmark.

Candidates are the units of the sampled questions' gold records plus ``distractor_units`` units
drawn from the dev corpus (``mini.ids.txt``); exact inner-product search. Two scenarios:

- ``s1``: general instruction, all sources; record-level MRR@100 (every gold record counts);
- ``s2``: the gold source's instruction, no filter; MRR@100 counting only gold records of that
  source, and the instruction-following rate: share of the top-10 units from the requested source.

The real figures come from ``retriever bench heteromix`` (see docs/TRAINING.md).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retriever.instructions import compose_query, general_instruction, source_instruction
from retriever.questions import Question, read_questions
from retriever.records import Record, read_id_list
from retriever.training.data import TrainingData
from retriever.training.model import EmbeddingModel

logger = logging.getLogger(__name__)


@dataclass
class DevSample:
    questions: list[Question]
    distractor_records: list[str]


def sample_dev(dev_queries: Path, dev_ids: Path, questions: int, distractor_records: int, seed: int) -> DevSample:
    """Draw dev questions balanced over datasets and distractor records of the dev corpus."""
    rng = np.random.default_rng([seed, 11])
    by_dataset: dict[str, list[Question]] = defaultdict(list)
    for q in read_questions(dev_queries):
        by_dataset[q.dataset].append(q)
    per = max(1, questions // max(1, len(by_dataset)))
    chosen: list[Question] = []
    for name in sorted(by_dataset):
        items = by_dataset[name]
        picks = rng.choice(len(items), size=min(per, len(items)), replace=False)
        chosen.extend(items[int(i)] for i in sorted(picks))
    # Distractors: a seeded sample of dev-corpus records (each gives one or more units), so only
    # those records need linearizing.
    corpus_ids = read_id_list(dev_ids)
    gold = {g for q in chosen for g in q.gold}
    others = [r for r in corpus_ids if r not in gold]
    if distractor_records < len(others):
        others = [others[int(i)] for i in sorted(rng.choice(len(others), size=distractor_records, replace=False))]
    return DevSample(chosen, others)


def dev_record_ids(sample: DevSample, records: dict[str, Record]) -> set[str]:
    return {g for q in sample.questions for g in q.gold if g in records} | {
        r for r in sample.distractor_records if r in records}


def evaluate_sample(model: EmbeddingModel, data: TrainingData, sample: DevSample, distractor_units: int,
                    seed: int) -> dict[str, float]:
    """Metrics of ``model`` on the dev sample (pooled and per dataset)."""
    rng = np.random.default_rng([seed, 12])
    gold_units = {i for q in sample.questions for g in q.gold for i in data.units_by_record.get(g, ())}
    others = [i for r in sample.distractor_records for i in data.units_by_record.get(r, ()) if i not in gold_units]
    if distractor_units < len(others):
        others = [others[int(i)] for i in sorted(rng.choice(len(others), size=distractor_units, replace=False))]
    candidates = np.array(sorted(gold_units | set(others)), dtype=np.int64)
    docs = model.encode([data.units[i].text for i in candidates]).numpy()  # [N, d]
    records = [data.units[i].record_id for i in candidates]
    sources = [data.units[i].source for i in candidates]

    metrics: dict[str, list[float]] = defaultdict(list)
    s1 = model.encode([compose_query(general_instruction(), q.text) for q in sample.questions]).numpy()
    for q, vector in zip(sample.questions, s1, strict=True):
        rr = _reciprocal_rank(vector @ docs.T, records, set(q.gold))
        metrics["s1_mrr@100"].append(rr)
        metrics[f"s1_mrr@100/{q.dataset}"].append(rr)
    single = [(q, q.single_source) for q in sample.questions if q.single_source is not None]
    if single:
        s2 = model.encode([compose_query(source_instruction(s), q.text) for q, s in single]).numpy()
        for (q, source), vector in zip(single, s2, strict=True):
            scores = vector @ docs.T
            gold = {g for g in q.gold if g in data.records and data.records[g].source is source}
            rr = _reciprocal_rank(scores, records, gold)
            top = np.argsort(-scores)[:10]
            follow = float(np.mean([sources[i] is source for i in top]))
            for key, value in (("s2_mrr@100", rr), ("s2_follow@10", follow)):
                metrics[key].append(value)
                metrics[f"{key}/{q.dataset}"].append(value)
    out = {k: round(float(np.mean(v)), 4) for k, v in sorted(metrics.items())}
    out["candidates"] = float(len(candidates))
    out["questions"] = float(len(sample.questions))
    logger.info("dev sample (%d questions, %d candidate units): s1 MRR@100 %.3f, s2 MRR@100 %.3f, "
                "s2 follow@10 %.3f", len(sample.questions), len(candidates), out.get("s1_mrr@100", float("nan")),
                out.get("s2_mrr@100", float("nan")), out.get("s2_follow@10", float("nan")))
    return out


def _reciprocal_rank(scores: np.ndarray, records: list[str], gold: set[str], depth: int = 100) -> float:
    if not gold:
        return 0.0
    top = np.argsort(-scores)[:depth]
    for rank, index in enumerate(top, 1):
        if records[index] in gold:
            return 1.0 / rank
    return 0.0
