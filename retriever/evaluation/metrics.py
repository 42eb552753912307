"""Retrieval metrics over ordered lists of units.

A retriever returns units (table rows, passage windows, triples, infoboxes) in rank order.
Every metric here reads that order as given:

* **Ties.** Two units with the same score keep the order the retriever returned them in;
  metrics never re-sort. The project's retrievers break score ties by unit id (ascending),
  so runs are deterministic, but a metric does not rely on that.
* **Record level.** Units are collapsed to their records, each record keeping the rank of
  its first (best) unit; ``hit@k`` asks whether a gold record is among the first ``k``
  distinct records, ``mrr@k`` is ``1 / rank`` of the first gold record within ``k`` (0 when
  none). Collapsing means a table whose rows fill the top of the list occupies one rank.
  With ``collapse=False`` the rank is the unit rank of the first gold unit instead (the
  convention of the HeteroMix README's reference figures; see ``docs/BENCHMARKS.md``).
* **Row level.** The same with table units keyed by ``(record, row)``: a table unit is
  relevant only when its row is one of the question's gold rows for that table; a unit of
  another source is relevant when its record is gold. Only questions that have gold rows
  get row-level metrics.
* **Instruction following.** ``source@10`` is the share of the first 10 *units* (not
  records) whose source is one of the requested sources; with fewer than 10 units returned
  the share is over those returned. An empty list has no share: the question is left out of
  this metric's mean (``n_source@10`` says how many had one).
* **Missing golds.** Gold records that are not in the searched collection can never be
  retrieved. They still count as gold (a question whose golds are all missing scores 0),
  and ``missing_gold`` reports how many there were, so a wrong corpus shows up at once.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from retriever.records import Source

DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 100)
DEFAULT_MRR_K = 100
SOURCE_SHARE_DEPTH = 10


@dataclass(frozen=True)
class RankedUnits:
    """One query's ranked units as parallel, rank-ordered sequences (best first)."""

    record_ids: Sequence[str]
    sources: Sequence[Source]
    parts: Sequence[int]

    def __post_init__(self) -> None:
        if not len(self.record_ids) == len(self.sources) == len(self.parts):
            raise ValueError(f"ranked units need parallel sequences, got lengths {len(self.record_ids)}, "
                             f"{len(self.sources)}, {len(self.parts)}")

    def __len__(self) -> int:
        return len(self.record_ids)


@dataclass(frozen=True)
class Judgment:
    """What counts as relevant for one question under one scenario.

    Attributes:
        gold: record ids that count as relevant.
        gold_rows: for gold tables, the 0-based rows that hold the answer (row level).
        requested: source types the query asked for (instruction following); empty skips it.
        indexed: number of ``gold`` records present in the searched collection; None when unknown.
    """

    gold: frozenset[str]
    gold_rows: Mapping[str, frozenset[int]] = field(default_factory=dict)
    requested: frozenset[Source] = frozenset()
    indexed: int | None = None


def collapse_records(record_ids: Iterable[str]) -> list[str]:
    """Distinct record ids in order of first occurrence (each record keeps its best rank)."""
    return list(dict.fromkeys(record_ids))


def first_relevant_rank(items: Sequence[object], relevant: Collection[object]) -> int | None:
    """1-based rank of the first item in ``relevant``, or None."""
    for rank, item in enumerate(items, 1):
        if item in relevant:
            return rank
    return None


def hit_at(rank: int | None, k: int) -> float:
    return 1.0 if rank is not None and rank <= k else 0.0


def reciprocal_rank(rank: int | None, k: int) -> float:
    return 1.0 / rank if rank is not None and rank <= k else 0.0


def row_level_items(ranked: RankedUnits, collapse: bool = True) -> list[tuple[str, int]]:
    """Row-level keys in rank order: ``(record, row)`` for table units, ``(record, -1)`` else.

    Distinct keys (first occurrence) when ``collapse``; one key per unit otherwise.
    """
    keys = [(rid, part if source is Source.TABLE else -1)
            for rid, source, part in zip(ranked.record_ids, ranked.sources, ranked.parts, strict=True)]
    return list(dict.fromkeys(keys)) if collapse else keys


def row_level_gold(judgment: Judgment, gold_sources: Mapping[str, Source]) -> set[tuple[str, int]] | None:
    """Relevant row-level keys, or None when the question has no gold rows.

    Gold tables contribute their gold rows; gold records of other sources contribute
    ``(record, -1)``. A gold table without listed rows contributes nothing (it cannot be hit
    at row level).
    """
    if not judgment.gold_rows:
        return None
    keys: set[tuple[str, int]] = set()
    for rid in judgment.gold:
        if rid in judgment.gold_rows:
            keys.update((rid, row) for row in judgment.gold_rows[rid])
        elif gold_sources.get(rid) is not Source.TABLE:
            keys.add((rid, -1))
    return keys


def source_share(sources: Sequence[Source], requested: Collection[Source],
                 depth: int = SOURCE_SHARE_DEPTH) -> float | None:
    """Share of the first ``depth`` units whose source is requested (over those returned; None if none)."""
    top = sources[:depth]
    if not top:
        return None
    return sum(1 for s in top if s in requested) / len(top)


@dataclass(frozen=True)
class RankingEvaluator:
    """Scores one ranked list against one judgment; a callable returning ``dict[str, float]``.

    Keys: ``hit@k`` and ``mrr@K`` (record level), ``row_hit@k`` (only when the judgment has
    gold rows), ``source@10`` (only when sources were requested and something was returned), ``missing_gold`` (only
    when ``judgment.indexed`` is known).

    Attributes:
        ks: cut-offs for hit@k.
        mrr_k: cut-off for MRR.
        gold_sources: source type of each gold record (row level needs to know tables).
        collapse: rank records (first occurrence) rather than units.
    """

    ks: tuple[int, ...] = DEFAULT_KS
    mrr_k: int = DEFAULT_MRR_K
    gold_sources: Mapping[str, Source] = field(default_factory=dict)
    collapse: bool = True

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1 or self.mrr_k < 1:
            raise ValueError(f"cut-offs must be >= 1, got ks={self.ks}, mrr_k={self.mrr_k}")

    def first_rank(self, ranked: RankedUnits, judgment: Judgment) -> int | None:
        """Rank of the first gold record (or unit, without collapsing); None when absent."""
        records = collapse_records(ranked.record_ids) if self.collapse else list(ranked.record_ids)
        return first_relevant_rank(records, judgment.gold)

    def __call__(self, ranked: RankedUnits, judgment: Judgment) -> dict[str, float]:
        rank = self.first_rank(ranked, judgment)
        out = {f"hit@{k}": hit_at(rank, k) for k in self.ks}
        out[f"mrr@{self.mrr_k}"] = reciprocal_rank(rank, self.mrr_k)
        row_gold = row_level_gold(judgment, self.gold_sources)
        if row_gold is not None:
            row_rank = first_relevant_rank(row_level_items(ranked, self.collapse), row_gold)
            out.update({f"row_hit@{k}": hit_at(row_rank, k) for k in self.ks})
        share = source_share(ranked.sources, judgment.requested) if judgment.requested else None
        if share is not None:
            out[f"source@{SOURCE_SHARE_DEPTH}"] = share
        if judgment.indexed is not None:
            out["missing_gold"] = float(len(judgment.gold) - judgment.indexed)
        return out


def mean_metrics(rows: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Average each metric over the questions that have it; ``n`` counts questions.

    ``missing_gold`` is summed, not averaged (a count of unreachable gold records), and
    ``n_<metric>`` is added for metrics that not every question has (e.g. row level).
    """
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    n = 0
    for row in rows:
        n += 1
        for key, value in row.items():
            sums[key] = sums.get(key, 0.0) + value
            counts[key] = counts.get(key, 0) + 1
    out: dict[str, float] = {"n": float(n)}
    for key, total in sums.items():
        out[key] = total if key == "missing_gold" else total / counts[key]
        if counts[key] != n and key != "missing_gold":
            out[f"n_{key}"] = float(counts[key])
    return out
