"""The HeteroMix protocol: scenarios, judgments and the benchmark runner (question files: :mod:`retriever.questions`).

Scenarios (``Scenario``):

* ``all-plain``: the question alone, no filter; every gold record counts.
* ``all``: the general instruction, no filter; every gold record counts (scenario 1).
* ``source-soft``: the instruction for the question's ``gold_source``, no filter; only gold
  records of that source count (scenario 2, does the encoder follow the instruction?).
* ``source-hard``: the same instruction plus an exact filter to that source (scenario 2 with
  the engine's filter).
* ``source-hard-plain``: the question alone plus the exact filter (the data README's
  zero-shot "gold source only" row).

A ``gold_source`` of the form ``a+b`` (e.g. ``text+table``, the answer spans a passage and a
table) requests both sources: the instruction names both ("from text and table sources"),
the hard filter allows both, gold records of either count, and a top-10 unit of either
counts as following the instruction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from tqdm import tqdm

from retriever.evaluation.metrics import (
    DEFAULT_KS,
    DEFAULT_MRR_K,
    Judgment,
    RankedUnits,
    RankingEvaluator,
    mean_metrics,
)
from retriever.evaluation.retrievers import UnitRetriever
from retriever.index.store import SOURCE_ORDER, UnitStore
from retriever.instructions import SOURCE_NAMES, SOURCE_TEMPLATE, instruction_for
from retriever.query import Query
from retriever.questions import Question
from retriever.records import Source
from retriever.searcher import Ranking

logger = logging.getLogger(__name__)

POOLED = "pooled"


class Scenario(StrEnum):
    ALL_PLAIN = "all-plain"
    ALL = "all"
    SOURCE_SOFT = "source-soft"
    SOURCE_HARD = "source-hard"
    SOURCE_HARD_PLAIN = "source-hard-plain"

    @property
    def source_only(self) -> bool:
        return self in (Scenario.SOURCE_SOFT, Scenario.SOURCE_HARD, Scenario.SOURCE_HARD_PLAIN)


DEFAULT_SCENARIOS: tuple[Scenario, ...] = (Scenario.ALL, Scenario.SOURCE_SOFT, Scenario.SOURCE_HARD)


def instruction_for_sources(prompts: Mapping[str, str], sources: Sequence[Source]) -> str:
    """The model's saved prompt for one source; for several, the source template naming them all."""
    if len(sources) == 1:
        return instruction_for(prompts, sources)
    return SOURCE_TEMPLATE.format(source=" and ".join(SOURCE_NAMES[s] for s in sources))


def make_query(question: Question, scenario: Scenario, prompts: Mapping[str, str]) -> Query:
    """The scenario's query for ``question``, carrying its conversation history (if any)."""
    query = _scenario_query(question, scenario, prompts)
    return replace(query, history=question.history) if question.history else query


def _scenario_query(question: Question, scenario: Scenario, prompts: Mapping[str, str]) -> Query:
    if scenario is Scenario.ALL_PLAIN:
        return Query(question.text, instruction="")
    if scenario is Scenario.ALL:
        return Query(question.text, instruction=instruction_for(prompts, ()))
    if scenario is Scenario.SOURCE_HARD_PLAIN:
        return Query(question.text, instruction="", sources=question.gold_sources)
    instruction = instruction_for_sources(prompts, question.gold_sources)
    sources = question.gold_sources if scenario is Scenario.SOURCE_HARD else ()
    return Query(question.text, instruction=instruction, sources=sources)


def judge(question: Question, scenario: Scenario, record_sources: Mapping[str, Source],
          score_unanswerable: bool = False) -> Judgment | None:
    """The judgment for one question; None when it is skipped.

    A question is skipped when the scenario leaves it no gold record to find, or when it has
    no source type under a source scenario; with ``score_unanswerable`` a question without
    gold (CompMix: no evidence holds an answer) is scored instead, as a miss.
    """
    if scenario.source_only and not question.gold_sources:
        return None
    present = [g for g in question.gold if g in record_sources]
    missing = [g for g in question.gold if g not in record_sources]
    if scenario.source_only:
        present = [g for g in present if record_sources[g] in question.gold_sources]
    if not present and not missing:
        if not score_unanswerable:
            return None
        return Judgment(gold=frozenset(), requested=frozenset(question.gold_sources), indexed=0)
    gold = frozenset(present) | frozenset(missing)
    rows = {t: r for t, r in question.gold_rows.items() if t in gold}
    return Judgment(gold=gold, gold_rows=rows, requested=frozenset(question.gold_sources), indexed=len(present))


def record_sources(store: UnitStore) -> dict[str, Source]:
    out: dict[str, Source] = {}
    for rid, code in zip(store.record_ids, store.sources.tolist(), strict=True):
        if rid not in out:
            out[rid] = SOURCE_ORDER[code]
    return out


def ranked_units(store: UnitStore, ranking: Ranking) -> RankedUnits:
    ids = ranking[0].tolist()
    return RankedUnits([store.record_id(i) for i in ids], [store.source_of(i) for i in ids],
                       [int(store.parts[i]) for i in ids])


@dataclass
class RunResult:
    """One method under one scenario: rankings in question order, per-question and aggregate metrics."""

    method: str
    scenario: Scenario
    question_ids: list[str]
    rankings: list[Ranking]
    per_question: list[dict[str, float]]
    metrics: dict[str, dict[str, float]]  # "pooled" and one entry per dataset
    seconds: float
    first_ranks: list[int | None] = field(default_factory=list)  # rank of the first gold record (hit curves)
    datasets: list[str] = field(default_factory=list)  # each judged question's dataset, in question order

    @property
    def label(self) -> str:
        return f"{self.method} / {self.scenario.value}"


@dataclass(frozen=True)
class HeteroConfig:
    """What to compute.

    Attributes:
        scenarios: scenarios to run.
        ks: record-level and row-level cut-offs.
        mrr_k: MRR cut-off.
        depth: units retrieved per query (100, as in CompMix-IR and the HeteroMix reference);
            records are ranked from these units, so ``hit@100`` means "a gold record among
            the records of the top-100 units".
        collapse: rank records (default) or units (the README reference's convention).
        score_unanswerable: score questions left without gold as misses instead of skipping them.
        show_progress: progress bars.
    """

    scenarios: tuple[Scenario, ...] = DEFAULT_SCENARIOS
    ks: tuple[int, ...] = DEFAULT_KS
    mrr_k: int = DEFAULT_MRR_K
    depth: int = 100
    collapse: bool = True
    score_unanswerable: bool = False
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.depth < max(max(self.ks), self.mrr_k):
            raise ValueError(f"depth {self.depth} must be at least the largest cut-off "
                             f"({max(max(self.ks), self.mrr_k)})")


def run_heteromix(questions: Sequence[Question], store: UnitStore, retrievers: Sequence[UnitRetriever],
                  prompts: Mapping[str, str], config: HeteroConfig | None = None) -> list[RunResult]:
    """Rank every question with every retriever under every scenario and score the rankings."""
    config = config or HeteroConfig()
    sources = record_sources(store)
    evaluator = RankingEvaluator(ks=config.ks, mrr_k=config.mrr_k, gold_sources=sources, collapse=config.collapse)
    results = []
    steps = [(r, s) for s in config.scenarios for r in retrievers]
    for retriever, scenario in tqdm(steps, desc="heteromix", unit="run", disable=not config.show_progress):
        started = time.perf_counter()
        judged = [(q, j) for q in questions
                  if (j := judge(q, scenario, sources, config.score_unanswerable)) is not None]
        if len(judged) < len(questions):
            logger.warning("%s: %d questions have no gold record (of their source) and are skipped",
                           scenario.value, len(questions) - len(judged))
        rankings = retriever.rank([make_query(q, scenario, prompts) for q, _ in judged], config.depth)
        ranked = [ranked_units(store, r) for r in rankings]
        per_question = [evaluator(u, j) for (_, j), u in zip(judged, ranked, strict=True)]
        first_ranks = [evaluator.first_rank(u, j) for (_, j), u in zip(judged, ranked, strict=True)]
        metrics = aggregate([q.dataset for q, _ in judged], per_question)
        seconds = time.perf_counter() - started
        logger.info("%s / %s: hit@1 %.3f, mrr@%d %.3f over %d questions (%.1fs)", retriever.name, scenario.value,
                    metrics[POOLED].get("hit@1", 0.0), config.mrr_k,
                    metrics[POOLED].get(f"mrr@{config.mrr_k}", 0.0), len(judged), seconds)
        results.append(RunResult(retriever.name, scenario, [q.id for q, _ in judged], rankings, per_question,
                                 metrics, seconds, first_ranks, [q.dataset for q, _ in judged]))
    return results


def aggregate(datasets: Sequence[str], per_question: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Pooled (every question weighs the same) and per-dataset means."""
    out = {POOLED: mean_metrics(per_question)}
    for name in sorted(set(datasets)):
        out[name] = mean_metrics(m for d, m in zip(datasets, per_question, strict=True) if d == name)
    return out
