"""Training data: records, units linearized exactly as the index does, and training questions.

Everything the three stages draw from is held in one :class:`TrainingData`:

- ``units``: every unit the run may touch (pool, gold, link targets, dev sample), produced by
  :func:`retriever.linearize.linearize_all` with the same :class:`WindowBudget` as
  ``build-index`` (model tokenizer, model max length - 2 tokens);
- ``pool``: indexes of the units of the sampled pool records (stage 1 and 2 sampling, negatives);
- ``questions``: training questions from ``queries.train.jsonl`` with their gold units per source.

Dev questions are never read here.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from retriever.errors import CorpusError
from retriever.linearize import DEFAULT_LINK_ROWS, Unit, WindowBudget, collect_links, linearize_all
from retriever.questions import Question, read_questions
from retriever.records import (
    InfoboxRecord,
    KbRecord,
    Record,
    Source,
    TableRecord,
    UnknownFields,
    read_id_list,
    read_records,
)

logger = logging.getLogger(__name__)


@dataclass
class TrainingQuestion:
    """A training question with its gold units (indexes into ``TrainingData.units``) per source."""

    question: Question
    positives: dict[Source, list[int]]
    gold_records: frozenset[str]
    #: records holding the same facts as a gold record (kb parent infobox / its kb children)
    related_records: frozenset[str]

    @property
    def sources(self) -> list[Source]:
        return [s for s in Source if self.positives.get(s)]


@dataclass
class TrainingData:
    records: dict[str, Record]
    units: list[Unit]
    units_by_record: dict[str, list[int]]
    pool: np.ndarray  # int64 [n_pool] indexes into units
    questions: list[TrainingQuestion]
    kb_children: dict[str, list[str]]  # infobox id -> kb record ids stating its facts
    fingerprints: dict[str, str] = field(default_factory=dict)

    def pool_by_source(self) -> dict[Source, np.ndarray]:
        """Pool unit indexes grouped by source type."""
        codes = np.array([list(Source).index(self.units[i].source) for i in self.pool], dtype=np.int64)
        return {s: self.pool[codes == k] for k, s in enumerate(Source)}


def tokenizer_budget(tokenizer: object, window_tokens: int) -> WindowBudget:
    """The window budget ``build-index`` uses: the model's tokenizer, no special tokens."""

    from retriever.tokens import count_with

    def count(texts: Sequence[str]) -> list[int]:
        return count_with(tokenizer, texts)

    return WindowBudget(max_tokens=window_tokens, count=count)


def load_training_data(
    corpus: Path,
    train_queries: Path | None,
    budget: WindowBudget,
    seed: int,
    pool_ids: Path | None = None,
    pool_records: int = 0,
    max_train_queries: int = 0,
    extra_ids: Callable[[dict[str, Record]], set[str]] | None = None,
    lenient: bool = False,
    link_rows: int = DEFAULT_LINK_ROWS,
) -> TrainingData:
    """Read the corpus once, select pool and gold records, linearize them and attach questions.

    Args:
        corpus: the corpus file.
        train_queries: training questions (None: stages 1-2 only).
        budget: the linearizer window budget (see :func:`tokenizer_budget`).
        seed: seeds the pool and question samples.
        pool_ids: restrict the pool to these record ids.
        pool_records: sample this many pool records (0: all).
        max_train_queries: sample this many questions (0: all).
        extra_ids: more record ids to linearize (e.g. the dev sample), given all records.
        lenient: skip unknown corpus fields with a warning instead of failing (``--lenient``).
        link_rows: table rows of link context each passage starts with (0: none).
    """
    started = time.perf_counter()
    rng = np.random.default_rng([seed, 7])
    records = {r.id: r for r in read_records(corpus, unknown=UnknownFields.WARN if lenient else UnknownFields.ERROR)}
    logger.info("read %d records from %s in %.1fs", len(records), corpus, time.perf_counter() - started)

    candidates = read_id_list(pool_ids) if pool_ids else list(records)
    missing = [i for i in candidates if i not in records]
    if missing:
        raise CorpusError(str(pool_ids), None, f"{len(missing)} pool ids are not in {corpus} (e.g. {missing[0]})")
    if pool_records and pool_records < len(candidates):
        chosen = rng.choice(len(candidates), size=pool_records, replace=False)
        candidates = [candidates[i] for i in sorted(chosen)]
    pool_set = set(candidates)

    questions: list[Question] = []
    if train_queries is not None:
        questions = read_questions(train_queries)
        if max_train_queries and max_train_queries < len(questions):
            chosen = rng.choice(len(questions), size=max_train_queries, replace=False)
            questions = [questions[i] for i in sorted(chosen)]
        unknown = [g for q in questions for g in q.gold if g not in records]
        if unknown:
            logger.warning("%d gold ids of training questions are not in the corpus (e.g. %s); they are skipped",
                           len(unknown), unknown[0])

    kb_children: dict[str, list[str]] = defaultdict(list)
    for record in records.values():
        if isinstance(record, KbRecord) and record.parent:
            kb_children[record.parent].append(record.id)

    wanted = set(pool_set)
    for q in questions:
        wanted.update(g for g in q.gold if g in records)
    wanted.update(_link_targets(records, pool_set))
    if extra_ids is not None:
        wanted.update(extra_ids(records))
    selected = [records[i] for i in records if i in wanted]  # corpus order
    # passages carry the rows that link to them from every table of the corpus, as a full build makes them
    units = list(linearize_all(selected, replace(budget, links=collect_links(records.values(), link_rows))))
    units_by_record: dict[str, list[int]] = defaultdict(list)
    for index, unit in enumerate(units):
        units_by_record[unit.record_id].append(index)
    pool = np.array([i for i, u in enumerate(units) if u.record_id in pool_set], dtype=np.int64)

    train = [t for t in (_attach(q, records, units, units_by_record, kb_children) for q in questions) if t]
    logger.info("training data: %d records linearized into %d units (%d in the pool), %d questions with gold "
                "units, in %.1fs", len(selected), len(units), len(pool), len(train), time.perf_counter() - started)
    return TrainingData(records=records, units=units, units_by_record=dict(units_by_record), pool=pool,
                        questions=train, kb_children=dict(kb_children))


def _link_targets(records: dict[str, Record], pool: set[str]) -> set[str]:
    """Records linked from pool records: passages in ``row_links`` and the ``parent`` infoboxes."""
    out: set[str] = set()
    for record_id in pool:
        record = records[record_id]
        if isinstance(record, TableRecord) and record.row_links:
            out.update(t for links in record.row_links for t in links if t in records)
        elif isinstance(record, KbRecord) and record.parent and record.parent in records:
            out.add(record.parent)
    return out


def _attach(question: Question, records: dict[str, Record], units: list[Unit],
            units_by_record: dict[str, list[int]], kb_children: dict[str, list[str]]) -> TrainingQuestion | None:
    positives: dict[Source, list[int]] = defaultdict(list)
    related: set[str] = set()
    for record_id in question.gold:
        if record_id not in units_by_record:
            continue
        candidates = units_by_record[record_id]
        rows = question.gold_rows.get(record_id)
        if rows is not None:
            candidates = [i for i in candidates if units[i].part in rows] or candidates
        positives[records[record_id].source].append(best_unit(candidates, units, question.answers))
        record = records[record_id]
        if isinstance(record, KbRecord) and record.parent:
            related.add(record.parent)
        if isinstance(record, InfoboxRecord):
            related.update(kb_children.get(record.id, ()))
    if not positives:
        return None
    gold = frozenset(question.gold)
    return TrainingQuestion(question, dict(positives), gold, frozenset(related - gold))


def best_unit(candidates: list[int], units: list[Unit], answers: Sequence[str]) -> int:
    """The candidate unit that contains an answer string (case-insensitive), else the first."""
    lowered = [a.lower() for a in answers if a.strip()]
    if len(candidates) > 1 and lowered:
        for index in candidates:
            text = units[index].text.lower()
            if any(a in text for a in lowered):
                return index
    return candidates[0]


def sample_weighted(rng: np.random.Generator, groups: dict[Source, np.ndarray], weights: dict[Source, float],
                    size: int) -> list[int]:
    """Draw ``size`` unit indexes: a source type by weight, then a unit of that type uniformly."""
    names = [s for s in groups if len(groups[s]) and weights.get(s, 1.0) > 0]
    if not names:
        raise CorpusError("<pool>", None, "the training pool has no units of the weighted source types")
    p = np.array([weights.get(s, 1.0) for s in names], dtype=np.float64)
    p /= p.sum()
    picks = rng.choice(len(names), size=size, p=p)
    return [int(groups[names[k]][rng.integers(len(groups[names[k]]))]) for k in picks]
